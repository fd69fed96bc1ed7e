"""LSQ: uniform quantization with a learned step size (Esser et al., ICLR 2020, arXiv:1902.08153).

    wq = LsqWeight(bits=4, weight=conv.weight)        # per-output-channel steps, learned
    aq = LsqActivation(bits=4)                         # step set from the first batch, then learned
    y = F.conv2d(aq(x), wq(conv.weight))

The baseline of OFQ's comparison (its weights oscillate; StatsQ's do not) and the activation quantizer of every
OFQ model, as in `nbasyl/OFQ` `LsqQuantizer`:

    x̂ = round_ste(clamp(x / ŝ, Qn, Qp)) · ŝ,   ŝ = grad_scale(max(s, 1e-5), g),   g = 1 / sqrt(Qp · n_s)

with n_s the number of elements that share one step (all elements of the batch, as the code counts them).
Signed ranges are [-2^(b-1), 2^(b-1) - 1], unsigned [0, 2^b - 1]. Gradients: ∂x̂/∂x = 1 inside the range and 0
outside; ∂x̂/∂s = g · (round(x/s) - x/s) inside, g · Qn or g · Qp outside.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from edgebin.quant.qat.quantizer import ActivationQuantizer, QuantInfo, WeightQuantizer, per_channel


def grad_scale(x: Tensor, g: float) -> Tensor:
    """x in the forward pass, gradient multiplied by g."""
    return (x - x * g).detach() + x * g


def round_ste(x: Tensor) -> Tensor:
    """round half to even, identity gradient."""
    return (x.round() - x).detach() + x


def signed_range(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def unsigned_range(bits: int) -> tuple[int, int]:
    return 0, 2**bits - 1


def lsq_quantize(x: Tensor, step: Tensor, qmin: int, qmax: int, g: float) -> Tensor:
    """x̂ = round(clamp(x/ŝ, qmin, qmax))·ŝ with ŝ = grad_scale(max(step, 1e-5) through an STE, g)."""
    step = step + (step.clamp(min=1e-5) - step).detach()
    s = grad_scale(step, g)
    return round_ste(torch.clamp(x / s, qmin, qmax)) * s


class LsqWeight(WeightQuantizer):
    """Signed LSQ weights with one learned step per output channel (or one per tensor).

    wq = LsqWeight(bits=2, weight=layer.weight)   # step init 2·mean|W_c| / sqrt(Qp), as LSQ
    """

    def __init__(self, bits: int, weight: Tensor, per_channel: bool = True) -> None:
        super().__init__()
        if not 2 <= bits <= 8:
            raise ValueError(f"LsqWeight: bits must be in 2..8, got {bits}")
        self.bits, self.per_channel = bits, per_channel
        self.qmin, self.qmax = signed_range(bits)
        w = weight.detach()
        mean_abs = w.abs().flatten(1).mean(1) if per_channel else w.abs().mean().reshape(1)
        self.step = nn.Parameter(2 * mean_abs / math.sqrt(self.qmax))
        self.g = 1.0 / math.sqrt(self.qmax * (w[0].numel() if per_channel else w.numel()))

    def _step(self, weight: Tensor) -> Tensor:
        return self.step.view(-1, *([1] * (weight.dim() - 1)))

    def forward(self, weight: Tensor) -> Tensor:
        return lsq_quantize(weight, self._step(weight), self.qmin, self.qmax, self.g)

    def codes(self, weight: Tensor) -> Tensor:
        step = self._step(weight).detach().clamp(min=1e-5)
        return torch.clamp(torch.round(weight.detach() / step), self.qmin, self.qmax)

    def export_info(self, weight: Tensor) -> QuantInfo:
        scale = self.step.detach().clamp(min=1e-5).expand(weight.shape[0]).clone()
        return QuantInfo("uniform", self.bits, scale=scale, codes=self.codes(weight).to(torch.int8),
                         qmin=self.qmin, qmax=self.qmax)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}"


class LsqActivation(ActivationQuantizer):
    """LSQ activations as OFQ uses them: `Q(x + β₁) + β₂`, with per-channel learnable biases (init 0).

    aq = LsqActivation(bits=4, channels=64, channel_dim=-1)    # OFQ form, for a linear layer's input
    aq = LsqActivation(bits=4, bias=False)                     # plain LSQ

    `per_token=True` gives one step per position of dim -2 (OFQ's "per channel" for (B, N, C) inputs, which
    ties the model to one token count); the default is one step per tensor.
    """

    def __init__(self, bits: int, channels: int = 0, channel_dim: int = -1, bias: bool = False,
                 per_token: bool = False, signed: bool | None = None) -> None:
        super().__init__(bits, signed)
        if not 2 <= bits <= 8:
            raise ValueError(f"LsqActivation: bits must be in 2..8, got {bits}")
        if bias and channels < 1:
            raise ValueError("LsqActivation: bias=True needs the channel count")
        self.per_token, self.channel_dim = per_token, channel_dim
        self.step = nn.Parameter(torch.ones(1))
        self.bias_in = nn.Parameter(torch.zeros(channels)) if bias else None
        self.bias_out = nn.Parameter(torch.zeros(channels)) if bias else None

    def _bias(self, which: str) -> Tensor | None:
        b = getattr(self, which)
        return None if b is None else per_channel(b, self.channel_dim)

    @property
    def range(self) -> tuple[int, int]:
        return signed_range(self.bits) if self.is_signed else unsigned_range(self.bits)

    def _init_from(self, x: Tensor) -> None:
        if self.bias_in is not None:
            x = x + self._bias("bias_in")
        _, qmax = self.range
        mean_abs = x.abs().transpose(-2, -1).flatten(0, -2).mean(0) if self.per_token else x.abs().mean().reshape(1)
        factor = 2.0 if self.is_signed else 4.0
        self.step.data = (factor * mean_abs / math.sqrt(qmax)).to(self.step.device)

    def _step(self, x: Tensor) -> Tensor:
        return self.step.view(-1, 1) if self.per_token else self.step

    def quantize(self, x: Tensor) -> Tensor:
        if self.bias_in is not None:
            x = x + self._bias("bias_in")
        qmin, qmax = self.range
        g = 1.0 / math.sqrt(qmax * x.numel() / self.step.numel())
        y = lsq_quantize(x, self._step(x), qmin, qmax, g)
        return y + self._bias("bias_out") if self.bias_out is not None else y

    def export_info(self) -> QuantInfo:
        qmin, qmax = self.range
        scale = self.step.detach().clamp(min=1e-5)
        return QuantInfo("uniform", self.bits, scale=scale if self.per_token else scale.reshape(()),
                         qmin=qmin, qmax=qmax, signed=self.is_signed,
                         shift=None if self.bias_in is None else self._bias("bias_in").detach().clone(),
                         offset=None if self.bias_out is None else self._bias("bias_out").detach().clone(),
                         note="per-token scales along dim -2" if self.per_token else "")
