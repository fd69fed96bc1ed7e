"""TBT: statistics-based ternary and binary weights and elastic activations (Liu et al., ACL 2023), with BiT's
learnable per-channel shift (Liu et al., NeurIPS 2022) as an option.

    wq = TbtWeight(bits=2)                                  # ternary {-α, 0, +α} per output row
    aq = ElasticActivation(bits=2)                          # 3 levels, one learned α
    aq = ElasticActivation(bits=1, channels=64, shift=True)  # BiT: sign(x + shift) · α, shift per channel

Weights, per output channel (as `facebookresearch/Ternary_Binary_Transformer` `QuantizeLinear`), STE-id:
    ternary (bits=2): α = 4/3·mean|W_c| (sg),  Ŵ = α·round(clamp(W/α, -1, 1));  0 iff |W| <= α/2
    binary  (bits=1): α = mean|W_c| (sg),      Ŵ = α·sign(W)
`center=True` binarizes W - mean(W_c) instead (the paper's and BiT's form; the released TBT code does not).

Elastic activations, one learned α per quantizer (γ = 1/sqrt(numel·Qp), X' = X - β):
    signed   b=1: α·sign(X)                      b=2: α·clamp(round(X/α), -1, 1)
    unsigned b=1: α·clamp(round(X/α), 0, 1)      b=2: α·clamp(round(X'/α), 0, 2) + β,  β = min(X) (no grad)
    ∂/∂X = g·1[Qn <= X'/α <= Qp]
    ∂/∂α = γ·Σ g·{Qn if X'/α < Qn; Qp if X'/α > Qp; round(X'/α) - X'/α otherwise}   (b=1 signed: γ·Σ g·sign(X))
    init: signed α = 2·mean|X|; unsigned α = 4·mean|X|/sqrt(2^b - 1); α clamped to >= 1e-5 in the forward.
"2-bit" activations have 3 levels, signed and unsigned. β is computed in tensor ops (the code's `.item()`
breaks graph capture). sign(0) = +1 here; the code's torch.sign gives 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from edgebin.quant.qat.quantizer import (
    ActivationQuantizer,
    QuantInfo,
    WeightQuantizer,
    channel_mean_abs,
    per_channel,
    sign,
    straight_through,
)


def tbt_ternary(w: Tensor) -> tuple[Tensor, Tensor]:
    """(codes in {-1, 0, 1}, α = 4/3·mean|W_c|) of a weight, no gradient."""
    alpha = 4.0 / 3.0 * channel_mean_abs(w.detach())
    alpha = torch.where(alpha > 0, alpha, torch.ones_like(alpha))
    return torch.round(torch.clamp(w.detach() / alpha, -1.0, 1.0)), alpha


def tbt_binary(w: Tensor, center: bool = False) -> tuple[Tensor, Tensor]:
    """(codes in {-1, +1}, α = mean|W_c|) of a weight, no gradient; `center` binarizes W - mean(W_c)."""
    w = w.detach()
    alpha = channel_mean_abs(w)
    if center:
        w = w - w.mean(dim=tuple(range(1, w.dim())), keepdim=True)
    return sign(w), alpha


class TbtWeight(WeightQuantizer):
    """TBT ternary (bits=2) or binary (bits=1) weights with a per-output-channel statistics scale, STE-id."""

    def __init__(self, bits: int, center: bool = False) -> None:
        super().__init__()
        if bits not in (1, 2):
            raise ValueError(f"TbtWeight: bits must be 1 (binary) or 2 (ternary), got {bits}")
        self.bits, self.center = bits, center

    def _codes_and_scale(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        return tbt_ternary(weight) if self.bits == 2 else tbt_binary(weight, self.center)

    def forward(self, weight: Tensor) -> Tensor:
        codes, alpha = self._codes_and_scale(weight)
        return straight_through(alpha * codes, weight)

    def codes(self, weight: Tensor) -> Tensor:
        return self._codes_and_scale(weight)[0]

    def export_info(self, weight: Tensor) -> QuantInfo:
        codes, alpha = self._codes_and_scale(weight)
        kind = "ternary" if self.bits == 2 else "binary"
        return QuantInfo(kind, self.bits, scale=alpha.reshape(-1), codes=codes.to(torch.int8), qmin=-1, qmax=1,
                         pm1=self.bits == 1)

    def extra_repr(self) -> str:
        return f"bits={self.bits}" + (", center=True" if self.center else "")


class _ElasticQuantize(torch.autograd.Function):
    """α·clamp(round(x/α), qn, qp), or α·sign(x) when `binary_signed`; the TBT backward."""

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor, qn: int, qp: int, binary_signed: bool) -> Tensor:
        gamma = 1.0 / math.sqrt(x.numel() * qp)
        u = x / alpha
        q = sign(u) if binary_signed else torch.clamp(torch.round(u), qn, qp)
        ctx.save_for_backward(u, q)
        ctx.gamma, ctx.qn, ctx.qp, ctx.binary_signed = gamma, qn, qp, binary_signed
        return q * alpha

    @staticmethod
    def backward(ctx, grad: Tensor):
        u, q = ctx.saved_tensors
        below, above = u < ctx.qn, u > ctx.qp
        grad_x = grad * (~below & ~above)
        if ctx.binary_signed:
            d_alpha = sign(u)
        else:
            d_alpha = torch.where(below, float(ctx.qn), torch.where(above, float(ctx.qp), q - u))
        grad_alpha = (grad * d_alpha).sum().reshape(1) * ctx.gamma
        return grad_x, grad_alpha, None, None, None


def elastic_quantize(x: Tensor, alpha: Tensor, bits: int, signed: bool) -> Tensor:
    """The TBT elastic quantizer (module docstring); `alpha` is a 1-element tensor."""
    alpha = alpha + (alpha.clamp(min=1e-5) - alpha).detach()
    if signed:
        return _ElasticQuantize.apply(x, alpha, -1, 1, bits == 1)
    if bits == 1:
        return _ElasticQuantize.apply(x, alpha, 0, 1, False)
    beta = x.detach().amin()
    return _ElasticQuantize.apply(x - beta, alpha, 0, 2, False) + beta


class ElasticActivation(ActivationQuantizer):
    """TBT elastic activations at 1 or 2 bits; `shift=True` adds BiT's learnable per-channel shift first.

    aq = ElasticActivation(bits=1)                 # signed input: ±α; unsigned (post-ReLU): {0, α}
    The shift is added before quantizing and not added back (BiT `LearnableBias` `move`, init 0).
    """

    def __init__(self, bits: int, channels: int = 0, channel_dim: int = -1, shift: bool = False,
                 signed: bool | None = None) -> None:
        super().__init__(bits, signed)
        if bits not in (1, 2):
            raise ValueError(f"ElasticActivation: bits must be 1 or 2, got {bits}")
        if shift and channels < 1:
            raise ValueError("ElasticActivation: shift=True needs the channel count")
        self.channel_dim = channel_dim
        self.alpha = nn.Parameter(torch.ones(1))
        self.shift = nn.Parameter(torch.zeros(channels)) if shift else None

    def _init_from(self, x: Tensor) -> None:
        if self.shift is not None:
            x = x + per_channel(self.shift, self.channel_dim)
        mean_abs = x.abs().mean()
        alpha = 2 * mean_abs / math.sqrt(max(2 ** (self.bits - 1) - 1, 1)) if self.is_signed \
            else 4 * mean_abs / math.sqrt(2**self.bits - 1)
        self.alpha.data.fill_(float(alpha))

    def quantize(self, x: Tensor) -> Tensor:
        if self.shift is not None:
            x = x + per_channel(self.shift, self.channel_dim)
        return elastic_quantize(x, self.alpha, self.bits, self.is_signed)

    def export_info(self) -> QuantInfo:
        alpha = self.alpha.detach().clamp(min=1e-5).reshape(())
        qmin, qmax = (-1, 1) if self.is_signed else (0, 1 if self.bits == 1 else 2)
        binary_signed = self.is_signed and self.bits == 1
        kind = "binary" if self.bits == 1 else "ternary" if self.is_signed else "uniform"
        shift = None if self.shift is None else per_channel(self.shift, self.channel_dim).detach().clone()
        return QuantInfo(kind, self.bits, scale=alpha, qmin=qmin, qmax=qmax, signed=self.is_signed, shift=shift,
                         dynamic_offset=not self.is_signed and self.bits == 2, pm1=binary_signed,
                         note="code = sign(x + shift)" if binary_signed
                         else "code = clamp(round((x + shift - offset) / scale), qmin, qmax)")
