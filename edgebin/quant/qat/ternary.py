"""Ternary weights as in Ternary Weight Networks (Li, Zhang & Liu, arXiv:1605.04711), the ternary baseline.

    wq = TernaryWeight()
    w_hat = wq(conv.weight)          # α_c·{-1, 0, +1}, identity gradient

Per output channel c (the paper uses one threshold per layer; per-channel matches every other edgebin method):

    Δ_c = 0.7·mean|W_c|,   codes = sign(W)·1[|W| > Δ_c],   α_c = mean of |W| over the entries with |W| > Δ_c

TWN's threshold 0.7·E|W| approximates the optimum for Gaussian or uniform weights; TBT's ternary rule
(`TbtWeight(bits=2)`) zeroes |W| <= (2/3)·mean|W| instead and uses α = 4/3·mean|W|. Backward: STE-id.
"""

from __future__ import annotations

import torch
from torch import Tensor

from edgebin.quant.qat.quantizer import QuantInfo, WeightQuantizer, channel_mean_abs, sign, straight_through

TWN_THRESHOLD = 0.7


def twn_ternary(w: Tensor, threshold: float = TWN_THRESHOLD) -> tuple[Tensor, Tensor]:
    """(codes in {-1, 0, 1}, α per channel) of a weight, no gradient; an all-zero channel gets α = 1."""
    w = w.detach()
    delta = threshold * channel_mean_abs(w)
    keep = w.abs() > delta
    dims = tuple(range(1, w.dim()))
    count = keep.sum(dim=dims, keepdim=True)
    alpha = (w.abs() * keep).sum(dim=dims, keepdim=True) / count.clamp(min=1)
    alpha = torch.where(count > 0, alpha, torch.ones_like(alpha))
    return sign(w) * keep, alpha


class TernaryWeight(WeightQuantizer):
    """TWN ternary weights {-α_c, 0, +α_c} with the identity gradient."""

    bits = 2

    def __init__(self, threshold: float = TWN_THRESHOLD) -> None:
        super().__init__()
        if not 0 < threshold < 2:
            raise ValueError(f"TernaryWeight: threshold must be in (0, 2), got {threshold}")
        self.threshold = threshold

    def forward(self, weight: Tensor) -> Tensor:
        codes, alpha = twn_ternary(weight, self.threshold)
        return straight_through(alpha * codes, weight)

    def codes(self, weight: Tensor) -> Tensor:
        return twn_ternary(weight, self.threshold)[0]

    def export_info(self, weight: Tensor) -> QuantInfo:
        codes, alpha = twn_ternary(weight, self.threshold)
        return QuantInfo("ternary", 2, scale=alpha.reshape(-1), codes=codes.to(torch.int8), qmin=-1, qmax=1)

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}"
