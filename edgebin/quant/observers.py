"""Range observers for activation calibration: what range of values the int8 grid must cover.

    obs = make_observer("percentile", percentile=99.99)
    for batch in calibration: obs.update(activation)
    lo, hi = obs.range()

`minmax` keeps the extremes seen; `percentile` clips outliers at the given two-sided percentile, computed over
a deterministic subsample (every k-th value, at most `max_samples` kept) so memory stays bounded.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

from edgebin.errors import UsageError, unknown_name

CALIBRATION_METHODS = ("minmax", "percentile")


class MinMaxObserver:
    """The smallest and largest value seen."""

    def __init__(self) -> None:
        self.lo = float("inf")
        self.hi = float("-inf")

    def update(self, x: Tensor) -> None:
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))

    def seen(self) -> bool:
        return self.lo <= self.hi

    def range(self) -> tuple[float, float]:
        return (self.lo, self.hi) if self.seen() else (0.0, 0.0)


class PercentileObserver(MinMaxObserver):
    """The `percentile`-th and (100 - `percentile`)-th percentiles of the values seen."""

    def __init__(self, percentile: float = 99.99, max_samples: int = 1 << 21) -> None:
        super().__init__()
        if not 50.0 < percentile <= 100.0:
            raise UsageError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile
        self.max_samples = max_samples
        self._chunks: list[np.ndarray] = []
        self._kept = 0

    def update(self, x: Tensor) -> None:
        super().update(x)
        flat = x.detach().reshape(-1).float().numpy()
        stride = max(1, flat.size // max(1, self.max_samples // 16))
        sample = flat[::stride].copy()
        self._chunks.append(sample)
        self._kept += sample.size
        if self._kept > self.max_samples:  # thin everything kept so far by 2, deterministically
            self._chunks = [c[::2] for c in self._chunks]
            self._kept = sum(c.size for c in self._chunks)

    def range(self) -> tuple[float, float]:
        if not self._chunks:
            return super().range()
        values = np.concatenate(self._chunks)
        lo, hi = np.percentile(values, [100.0 - self.percentile, self.percentile])
        return float(lo), float(hi)


def make_observer(method: str, percentile: float = 99.99) -> MinMaxObserver:
    """An observer by calibration method name."""
    if method == "minmax":
        return MinMaxObserver()
    if method == "percentile":
        return PercentileObserver(percentile)
    raise unknown_name("calibration method", method, list(CALIBRATION_METHODS))
