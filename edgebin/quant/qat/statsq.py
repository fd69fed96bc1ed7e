"""StatsQ: weights quantized with a scale computed from their own statistics (OFQ, Liu et al., ICML 2023).

    wq = StatsQWeight(bits=2)
    w_hat = wq(linear.weight)        # 2^b levels per output row, no zero level, identity gradient

As in `nbasyl/OFQ` `StatsQuantizer` (methods.md §1), per output channel c:

    s_c = 2 · mean|W_c|                         (detached: no gradient reaches the scale)
    k   = round(clamp(W / s, -1, 1 - 1e-6) · n - 0.5),   n = 2^(b-1),   k ∈ {-n, ..., n-1}
    Ŵ   = s · (k + 0.5) / n                     forward
    ∂L/∂W = ∂L/∂Ŵ                               backward: STE-id, also in the clipped region

Levels are s·{±1/2n, ±3/2n, ..., ±(2n-1)/2n}; decision thresholds sit where W/s·n is an integer. The scale is
not learned, so a weight cannot oscillate through scale updates, which is the paper's point. For conv weights
the mean runs over (in, kh, kw) of each output channel; OFQ only quantizes linear layers this way.

Choices: an all-zero channel gets s = 1 instead of a division by zero (the official code divides). With
`cga_boundary_range` set (by ConfidenceGuidedAnnealing, for a QKR product matrix only) the pre-round value of
entries farther than that from a threshold is detached in training, as OFQ's
`StatsQuantizer_specific_4_qkreparam_cga`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from edgebin.quant.qat.quantizer import QuantInfo, WeightQuantizer, channel_mean_abs, straight_through

CLIP_TOP = 1 - 1e-6  # keeps k <= n - 1


def statsq_scale(w: Tensor) -> Tensor:
    """s = 2·mean|W_c| per output channel, detached, shaped to broadcast against `w`; 0 becomes 1."""
    s = 2 * channel_mean_abs(w.detach())
    return torch.where(s > 0, s, torch.ones_like(s))


def statsq_levels(w: Tensor, bits: int) -> Tensor:
    """The integer level k ∈ {-n, ..., n-1} of each weight (no gradient)."""
    n = 2 ** (bits - 1)
    c = torch.clamp(w.detach() / statsq_scale(w), -1.0, CLIP_TOP)
    return torch.round(c * n - 0.5)


def statsq_quantize(w: Tensor, bits: int) -> Tensor:
    """Ŵ = s·(k + 0.5)/n with the identity gradient to W."""
    n = 2 ** (bits - 1)
    return straight_through(statsq_scale(w) * (statsq_levels(w, bits) + 0.5) / n, w)


def boundary_distance(w: Tensor, bits: int) -> tuple[Tensor, Tensor, Tensor]:
    """b̃ = clamp(W/s, -1, 1-1e-6)·n - 0.5 and the range [lo, hi) of thresholds i + 0.5 that CGA considers."""
    n = 2 ** (bits - 1)
    b = torch.clamp(w.detach() / statsq_scale(w), -1.0, CLIP_TOP) * n - 0.5
    r = torch.round(b)
    return b, r.min(), r.max()


def cga_trainable(w: Tensor, bits: int, boundary_range: float) -> Tensor:
    """True where W lies within `boundary_range` quantization steps of a rounding threshold (OFQ cga.py).

    trainable = OR over i in [min round(b̃), max round(b̃)) of |b̃ - i - 0.5| <= boundary_range
    """
    b, lo, hi = boundary_distance(w, bits)
    trainable = torch.zeros_like(b, dtype=torch.bool)
    for i in range(int(lo), int(hi)):
        trainable |= (b - i - 0.5).abs() <= boundary_range
    return trainable


class StatsQWeight(WeightQuantizer):
    """StatsQ at 2-8 bits, per output channel; see the module docstring for the maths.

    wq = StatsQWeight(bits=3)
    wq(torch.randn(4, 16)).unique().numel() <= 4 * 8     # at most 2^b levels per row
    """

    def __init__(self, bits: int) -> None:
        super().__init__()
        if not 2 <= bits <= 8:
            raise ValueError(f"StatsQWeight: bits must be in 2..8, got {bits}")
        self.bits = bits
        self.cga_boundary_range: float | None = None

    def forward(self, weight: Tensor) -> Tensor:
        if self.training and self.cga_boundary_range is not None:
            keep = cga_trainable(weight, self.bits, self.cga_boundary_range)
            weight = torch.where(keep, weight, weight.detach())
        return statsq_quantize(weight, self.bits)

    def codes(self, weight: Tensor) -> Tensor:
        return statsq_levels(weight, self.bits)

    def export_info(self, weight: Tensor) -> QuantInfo:
        """Odd integer codes 2k + 1 with per-channel scale s / 2n (levels (k + 0.5)·s/n are not integers).

        The codes lie in [-(2n - 1), 2n - 1]: int8 up to 7 bits; 8-bit StatsQ needs int16 codes.
        """
        n = 2 ** (self.bits - 1)
        codes = 2 * statsq_levels(weight, self.bits) + 1
        scale = (statsq_scale(weight) / (2 * n)).reshape(-1)
        dtype = torch.int8 if self.bits < 8 else torch.int16
        return QuantInfo("uniform", self.bits, scale=scale, codes=codes.to(dtype), qmin=-(2 * n - 1),
                         qmax=2 * n - 1, note="odd codes 2k+1: no zero level")

    def extra_repr(self) -> str:
        return f"bits={self.bits}"
