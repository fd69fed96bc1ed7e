"""QKR: query-key reparameterization of self-attention (OFQ, Liu et al., ICML 2023, `QAttention_qkreparam`).

    attn = QKRAttention.from_attention(block.attn, qk_quantizer=StatsQWeight(2), ...)

Per head h, (X W_q^hᵀ)(X W_k^hᵀ)ᵀ = X (W_q^hᵀ W_k^h) Xᵀ, so the two interdependent weights and the q/k
activations are replaced by one C×C product W_qk^h = W_q^hᵀ W_k^h per head, quantized as a (H·C, C) matrix with
one StatsQ scale per row; gradients reach the latent W_q and W_k through the product. Forward:

    X̂ = Qx(X);  T_h = Qt(X̂ Q(W_qk^h));  A_h = Qa(softmax(T_h X̂ᵀ / sqrt(d)));  V = Qv(X̂ W_vᵀ + b_v)
    out = proj(concat_h(A_h V_h))

The deployed W_qk has H·C² entries against 2·C² for W_q and W_k (H/2 times as many).

The official code builds W_q, W_k without bias, so the pretrained q/k biases are dropped. The k bias never
changes the softmax (it adds a constant along each row). The q bias adds b_q^hᵀ W_k^h X̂ᵀ to each row:
`keep_q_bias=True` keeps that exactly by adding u_h = b_q^hᵀ W_k^h to T_h before Qt (default False: as the code).

Activation steps are per tensor unless the config asks for `per_token` (one step per token for X̂, T, V and
one per query row for A). OFQ's code uses per-token steps for X̂ and A, per (token, head) for T and per
channel for V, and puts learnable biases around every quantizer (`activation_bias`; none around A here).
"""

from __future__ import annotations

from torch import Tensor, nn

from edgebin.quant.qat.modules import LayerQuantInfo, QATLinear
from edgebin.quant.qat.quantizer import ActivationQuantizer, WeightQuantizer


def is_attention(module: nn.Module) -> bool:
    """Duck-typed match for edgebin.zoo.tiny_vit.Attention: q, k, v, proj linears, `heads` and `scale`."""
    parts = ("q", "k", "v", "proj")
    return all(isinstance(getattr(module, p, None), nn.Linear) for p in parts) and hasattr(module, "heads") \
        and hasattr(module, "scale")


def qk_product(q_weight: Tensor, k_weight: Tensor, heads: int) -> Tensor:
    """W_qk^h = W_q^hᵀ W_k^h for every head: (H, C, C) from two (H·d, C) weights."""
    hd, c = q_weight.shape
    d = hd // heads
    return q_weight.view(heads, d, c).transpose(1, 2) @ k_weight.view(heads, d, c)


class QKRAttention(nn.Module):
    """Self-attention through the quantized product W_qk; `v` and `proj` are QAT linears."""

    def __init__(self, q_weight: Tensor, k_weight: Tensor, q_bias: Tensor | None, v: QATLinear, proj: QATLinear,
                 heads: int, scale: float, qk_quantizer: WeightQuantizer | None = None,
                 input_quantizer: ActivationQuantizer | None = None, t_quantizer: ActivationQuantizer | None = None,
                 attn_quantizer: ActivationQuantizer | None = None, v_quantizer: ActivationQuantizer | None = None,
                 keep_q_bias: bool = False) -> None:
        super().__init__()
        self.heads, self.scale, self.keep_q_bias = heads, scale, keep_q_bias
        self.q_weight = q_weight if isinstance(q_weight, nn.Parameter) else nn.Parameter(q_weight)
        self.k_weight = k_weight if isinstance(k_weight, nn.Parameter) else nn.Parameter(k_weight)
        self.q_bias = nn.Parameter(q_bias.detach().clone()) if keep_q_bias and q_bias is not None else None
        self.v, self.proj = v, proj
        self.qk_quantizer, self.input_quantizer = qk_quantizer, input_quantizer
        self.t_quantizer, self.attn_quantizer, self.v_quantizer = t_quantizer, attn_quantizer, v_quantizer
        self.config = None

    @classmethod
    def from_attention(cls, attn: nn.Module, v: QATLinear | None = None, proj: QATLinear | None = None,
                       **quantizers_and_flags) -> QKRAttention:
        """From a zoo Attention (q, k, v, proj, heads, scale); v and proj default to unquantized QAT linears."""
        return cls(attn.q.weight, attn.k.weight, attn.q.bias, v or QATLinear.from_float(attn.v),
                   proj or QATLinear.from_float(attn.proj), attn.heads, attn.scale, **quantizers_and_flags)

    def qk_weight(self) -> Tensor:
        """The (H·C, C) product matrix, one row per (head, input channel)."""
        h = self.heads
        return qk_product(self.q_weight, self.k_weight, h).reshape(-1, self.q_weight.shape[1])

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        h = self.heads
        xq = x if self.input_quantizer is None else self.input_quantizer(x)
        wqk = self.qk_weight()
        if self.qk_quantizer is not None:
            wqk = self.qk_quantizer(wqk)
        t = xq.unsqueeze(1) @ wqk.view(h, c, c)                       # (B, H, N, C) = X W_qᵀ W_k per head
        if self.q_bias is not None:
            d = c // h
            u = self.q_bias.view(h, 1, d) @ self.k_weight.view(h, d, c)  # (H, 1, C) = b_qᵀ W_k per head
            t = t + u
        if self.t_quantizer is not None:
            t = self.t_quantizer(t)
        attn = ((t @ xq.unsqueeze(1).transpose(-2, -1)) * self.scale).softmax(dim=-1)
        if self.attn_quantizer is not None:
            attn = self.attn_quantizer(attn)
        v = nn.functional.linear(xq, self.v.quantized_weight(), self.v.bias)
        if self.v_quantizer is not None:
            v = self.v_quantizer(v)
        v = v.reshape(b, n, h, c // h).transpose(1, 2)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))

    def weight_codes(self) -> Tensor | None:
        return None if self.qk_quantizer is None else self.qk_quantizer.codes(self.qk_weight())

    def export_info(self, name: str = "") -> dict[str, LayerQuantInfo]:
        """Per part: "qk" and "v" (weights; their input is the shared X̂), the activations "t", "attn" and
        "v_out", and "proj"."""
        def act(q: ActivationQuantizer | None):
            return None if q is None else q.export_info()

        wqk = self.qk_weight()
        qk = LayerQuantInfo(f"{name}.qk", "QKRMatMul",
                            None if self.qk_quantizer is None else self.qk_quantizer.export_info(wqk),
                            act(self.input_quantizer))
        v_weight = None if self.v.weight_quantizer is None else self.v.weight_quantizer.export_info(self.v.weight)
        return {"qk": qk, "t": LayerQuantInfo(f"{name}.t", "Activation", None, act(self.t_quantizer)),
                "attn": LayerQuantInfo(f"{name}.attn", "Activation", None, act(self.attn_quantizer)),
                "v": LayerQuantInfo(f"{name}.v", "Linear", v_weight, act(self.input_quantizer)),
                "v_out": LayerQuantInfo(f"{name}.v_out", "Activation", None, act(self.v_quantizer)),
                "proj": self.proj.export_info(f"{name}.proj")}
