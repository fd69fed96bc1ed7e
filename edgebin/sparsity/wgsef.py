"""WGSEF, the weighted group sparse envelope function, and its proximal operators: the maths on vectors.

    a = weights * norms                            # one entry per group: w_g · ‖x_g‖₂
    sef(a, k)                                      # S_k(a) = ½ (k-support norm of a)²
    factors = sef_prox_factors(norms, lam, k, weights)   # prox of lam·S_k(w ⊙ ρ(x)): multiply group g by factors[g]
    factors = dc_prox_factors(norms, lam, k, weights)    # prox of lam·(S_k − ½‖·‖²)(w ⊙ ρ(x)), the DC form
    prox_sef(v, lam, k), prox_dc(v, lam, k)        # the same on a vector whose entries are the groups
    keep = hard_select(a, k)                       # H_k: the k largest, ties to the lower index

Refael, Arbel, Huleihel, "Learning k-Level Structured Sparse Neural Networks Using Group Envelope Regularization"
(arXiv:2212.12921), building on the sparse envelope function of Beck & Refael (2022). No official code was found;
the formulas are research/methods.md §5, derived and checked numerically, and docs/sparsity.md sums them up.

S_k is the convex envelope of f_k(x) = ½‖x‖² + δ(‖x‖₀ <= k); S_k(x) >= ½‖x‖², with equality iff x is k-sparse.
Both S_k and its prox reduce to one monotone scalar equation. For b_i >= 0 and c_i >= 0 let

    h(θ) = Σ_i clamp(b_i/θ − c_i, 0, 1),  nonincreasing in θ > 0, from #{b_i > 0} down to 0.

- S_k(a): with q the root of h = k for b = |a|, c = 0: S_k = ½ (Σ_{a_i > q} a_i² + (k − #{a_i > q}) q²).
- prox of λ·S_k(w ⊙ ρ) at group norms ρ: θ the root of h = k for b = w ρ, c = λ w². Group g keeps
  ρ_g/(1 + λ w_g²) if b_g >= (1 + c_g) θ (the top groups: a ridge shrink), ρ_g − λ w_g θ if c_g θ < b_g < (1 + c_g) θ
  (the band: soft-thresholded) and 0 below. Each group is rescaled along its own direction. With w = 1 this is
  methods.md's (r, ℓ) formula: T top entries, a band M, θ = Σ_M a / (λ|M| + r + 1). At least k groups stay nonzero.
- The DC form h = S_k − ½‖·‖² >= 0 is zero exactly on k-sparse points, so unlike S_k it puts no ridge on the k
  groups kept. For λ < 1 (w = 1) prox_λh(v) = prox_{λ/(1−λ)·S_k}(v/(1−λ)): top groups stay as they are, the
  band is soft-thresholded, the rest is zeroed. For λ >= 1 it is H_k: exactly k nonzero groups.

`envelope_level` finds the root without sorting: each round it takes the median of the breakpoints b/(1 + c) and
b/c still inside the bracket, evaluates h there over the undecided entries, halves the bracket and folds the
entries decided for the whole bracket into three sums. Each round halves the breakpoints, so the work is linear in
the number of groups given a linear-time median: numpy's `partition` is introselect, which falls back to
median-of-medians and so stays linear in the worst case. Group counts are small in practice (16 to 512 filters),
so the rounds run in numpy, where a small array op costs about a microsecond. The root is unique where the output
depends on it, so ties need no rule; `hard_select` breaks ties towards the lower index.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

_ROUNDING = 1e-12  # band factors below this are rounding errors of an exact 0


def envelope_level(b: np.ndarray, c: np.ndarray | float, k: int) -> float:
    """The θ > 0 with Σ clamp(b_i/θ − c_i, 0, 1) = k, for b, c >= 0 with more than k entries b_i > 0."""
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    c = np.broadcast_to(np.asarray(c, dtype=np.float64), b.shape)
    live = b > 0
    b, c = b[live], c[live]
    if b.size <= k:
        raise ValueError(f"envelope_level needs more than k={k} positive entries, got {b.size}")
    lo, hi = 0.0, math.inf
    ones, band_b, band_c = 0, 0.0, 0.0  # entries decided for the whole bracket: count at 1, and the band's sums
    upper = b / (1 + c)  # the entry's term is 1 for θ <= upper
    with np.errstate(divide="ignore"):
        lower = np.where(c > 0, b / np.where(c > 0, c, 1), math.inf)  # and 0 for θ >= lower
    while b.size:
        one, zero = upper >= hi, lower <= lo
        band = (upper <= lo) & (lower >= hi)
        ones += int(one.sum())
        band_b += float(b[band].sum())
        band_c += float(c[band].sum())
        undecided = ~(one | zero | band)
        b, c, upper, lower = b[undecided], c[undecided], upper[undecided], lower[undecided]
        if not b.size:
            break
        points = np.concatenate([upper[upper > lo], lower[lower < hi]])  # each undecided entry has one inside
        middle = (points.size - 1) // 2
        pivot = float(np.partition(points, middle)[middle])
        value = ones + band_b / pivot - band_c + float(np.clip(b / pivot - c, 0, 1).sum())
        if value > k:
            lo = pivot
        else:  # h(pivot) = k too: the root is not above the pivot, and may be a whole flat stretch below it
            hi = pivot
    if band_b > 0:  # on the final bracket h(θ) = ones + band_b/θ − band_c; rounding may put the root a hair out
        denominator = k - ones + band_c
        return min(max(band_b / denominator, lo), hi) if denominator > 0 else hi
    # h = k on the whole bracket, so every θ inside gives the same prox; not an end, where an entry sits on its
    # breakpoint and rounding could leave it a hair from zero
    return (lo + hi) / 2 if hi < math.inf else 2 * lo


def sef(a: Tensor | np.ndarray, k: int) -> float:
    """S_k(a) = ½ (k-support norm of a)², the sparse envelope function (signs and order do not matter)."""
    _check_k(k)
    a = np.abs(_numpy(a))
    if int((a > 0).sum()) <= k:
        return 0.5 * float((a * a).sum())
    q = envelope_level(a, 0.0, k)
    top = a > q
    return 0.5 * (float((a[top] ** 2).sum()) + (k - int(top.sum())) * q * q)


def sef_prox_factors(norms: Tensor, lam: float, k: int, weights: Tensor | None = None) -> Tensor:
    """Per-group factors in [0, 1]: prox of lam·S_k(w ⊙ ρ(x)) is x_g · factor_g (see the module docstring)."""
    rho, w = _norms_and_weights(norms, lam, k, weights)
    c = lam * w * w
    factors = _factors(rho, w * rho, c, k, top=1 / (1 + c), band=lambda theta: rho - lam * w * theta)
    return torch.from_numpy(factors).to(norms.device)


def dc_prox_factors(norms: Tensor, lam: float, k: int, weights: Tensor | None = None) -> Tensor:
    """Per-group factors in [0, 1]: prox of lam·h(x), h = S_k(w ⊙ ρ) − ½‖w ⊙ ρ‖² (the DC form), is x_g · factor_g.

    lam·w_g² >= 1 for every g: H_k, the k groups with the largest w_g ρ_g kept whole (the exact prox when the
    weights are equal, as in every set but `layers`; otherwise the hard selection by w_g ρ_g). lam·w_g² < 1 for every g:
    the top groups are left as they are, the band is soft-thresholded to (ρ − lam·w·θ)/(1 − lam·w²), the rest is
    zeroed, θ the root of h = k for b = w ρ/(1 − lam·w²), c = lam·w²/(1 − lam·w²). With w = 1 this is the prox of
    lam/(1−lam)·S_k at x/(1−lam). A mix of the two cases has no closed form here: ValueError.
    """
    rho, w = _norms_and_weights(norms, lam, k, weights)
    c = lam * w * w
    if (c >= 1).all():
        return hard_select(torch.from_numpy(w * rho), k).to(device=norms.device, dtype=torch.float64)
    if (c >= 1).any():
        raise ValueError(f"dc_prox_factors: lam·w² must be below 1 for every group or at least 1 for all, got "
                         f"{c.min():.3g} to {c.max():.3g}")
    factors = _factors(rho, w * rho / (1 - c), c / (1 - c), k, top=np.ones_like(rho),
                       band=lambda theta: (rho - lam * w * theta) / (1 - c))
    return torch.from_numpy(factors).to(norms.device)


def _factors(rho: np.ndarray, b: np.ndarray, c: np.ndarray, k: int, *, top: np.ndarray, band) -> np.ndarray:
    """Top groups (b >= (1 + c)θ) get `top`, the band (cθ < b < (1 + c)θ) band(θ)/ρ, the rest 0."""
    if int((b > 0).sum()) <= k:  # k-sparse already: every nonzero group is a top group
        return np.where(rho > 0, top, 0.0)
    theta = envelope_level(b, c, k)
    with np.errstate(divide="ignore", invalid="ignore"):
        middle = np.clip(band(theta) / rho, 0, 1)
    # h often reaches k exactly at an entry's zero breakpoint, where its factor is 0 in exact arithmetic and
    # rounding leaves ~1e-16: that is a zero group, not a kept one
    middle[middle < _ROUNDING] = 0.0
    return np.where(b >= (1 + c) * theta, top, np.where(b > c * theta, middle, 0.0))


def _norms_and_weights(norms: Tensor, lam: float, k: int, weights: Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    _check_k(k)
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    rho = _numpy(norms)
    w = np.ones_like(rho) if weights is None else _numpy(weights)
    if not (w > 0).all():
        raise ValueError("group weights must be > 0")
    return rho, w


def prox_sef(v: Tensor, lam: float, k: int, weights: Tensor | None = None) -> Tensor:
    """prox of lam·S_k(w ⊙ |·|) at v, every entry its own group: argmin_u lam·S_k(w ⊙ u) + ½‖u − v‖²."""
    return v * sef_prox_factors(v.abs(), lam, k, weights).to(v.dtype).reshape(v.shape)


def prox_dc(v: Tensor, lam: float, k: int, weights: Tensor | None = None) -> Tensor:
    """prox of lam·h, h = S_k(w ⊙ |·|) − ½‖w ⊙ ·‖² >= 0 (zero iff k-sparse), every entry its own group; for
    lam >= 1 (w = 1) it is H_k(v), exactly k nonzero entries (or all of v's, if fewer)."""
    return v * dc_prox_factors(v.abs(), lam, k, weights).to(v.dtype).reshape(v.shape)


def hard_select(a: Tensor, k: int) -> Tensor:
    """Mask of the k largest entries of a, ties broken towards the lower index; O(n) (numpy's introselect)."""
    _check_k(k)
    x = _numpy(a)
    if k >= x.size:
        return torch.ones(x.size, dtype=torch.bool, device=a.device)
    kth = np.partition(x, x.size - k)[x.size - k]  # the k-th largest
    keep = x > kth
    ties = x == kth
    keep |= ties & (np.cumsum(ties) <= k - int(keep.sum()))
    return torch.from_numpy(keep).to(a.device)


def _numpy(t: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(t, np.ndarray):
        return t.astype(np.float64).reshape(-1)
    return t.detach().reshape(-1).to("cpu", torch.float64).numpy()


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
