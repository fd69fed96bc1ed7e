"""The groups WGSEF selects or nullifies in a model: filters, channels, filter shapes, layers or single weights.

    sets = build_groups(model, torch.zeros(1, 1, 28, 28), "filters", sparsity=0.5)
    for s in sets:                                  # one prox problem each: s.keep of s.size groups survive
        params = dict(model.named_parameters())
        s.scale_(params, sef_prox_factors(s.norms(params), lam, s.keep, s.weights))

| groups     | one group is                                                           | one set per    | shrink |
|------------|------------------------------------------------------------------------|----------------|--------|
| `filters`  | output channel c of a channel space: its producers' rows and biases,   | prunable space | yes    |
|            | and its BatchNorms' weight and bias                                    |                |        |
| `channels` | input channel c of a channel space: its consumers' columns             | prunable space | yes    |
| `shapes`   | one (input channel, ky, kx) position across a conv's filters           | prunable layer | no     |
| `weights`  | one weight                                                             | prunable layer | no     |
| `layers`   | a whole prunable layer's weight and bias                               | the model      | no     |

Channel spaces come from `edgebin.sparsity.channels`. A space is prunable unless it is fixed (model input or
output, so never the classifier's outputs); with `tied=False` spaces that several layers write through a residual
add are left alone too (ResNet-8: only the first conv of each residual block). The prunable layers (for shapes,
weights and layers) are the convs and linears whose outputs are not fixed. Filter groups include the BatchNorm's
weight and bias because a zero filter followed by BatchNorm outputs the BatchNorm's bias, not zero.

Target per set: `keep = n − round(sparsity · n)`, rounding halves up, at least 1 (16 filters at 0.5: 8; at 0.75:
4; 32 at 0.25: 24), or `keep=K` (at most n). Group weights: w_g ∝ √d_g, d_g the number of parameters in group g
(the group-lasso convention, Yuan & Lin 2006; the paper's exact weighting is unverified, methods.md §5), scaled so
that the mean of w_g² over the set is 1. λ then means the same in every set, and in a set of equal-sized groups
(filters, channels, shapes, weights: all but `layers`) every w_g is 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from edgebin.errors import UsageError, unknown_name
from edgebin.sparsity.channels import ChannelSpace, channel_spaces

GROUP_KINDS = ("filters", "channels", "shapes", "weights", "layers")
WEIGHTINGS = ("sqrt_size", "none")


@dataclass(frozen=True)
class Slice:
    """One parameter's share of a set's groups: `rows` (dim 0), `cols` (dim 1), `positions` (all but dim 0),
    `entries` (each entry), or `whole` (the whole tensor is group `index`)."""

    param: str
    axis: str
    index: int = 0

    def totals(self, values: Tensor, n: int) -> Tensor:
        """Σ of `values` (this parameter's entries transformed, e.g. squared) over its part of each of the n groups."""
        if self.axis == "rows":
            return values.reshape(values.shape[0], -1).sum(1)
        if self.axis == "cols":
            return values.transpose(0, 1).reshape(values.shape[1], -1).sum(1)
        if self.axis == "positions":
            return values.sum(0).reshape(-1)
        if self.axis == "entries":
            return values.reshape(-1)
        out = torch.zeros(n, dtype=values.dtype, device=values.device)
        out[self.index] = values.sum()
        return out

    def scale_(self, p: Tensor, factors: Tensor) -> None:
        """Multiply this parameter's part of group g by factors[g], in place."""
        f = factors.to(device=p.device, dtype=p.dtype)
        if self.axis == "rows":
            p.mul_(f.reshape(-1, *[1] * (p.ndim - 1)))
        elif self.axis == "cols":
            p.mul_(f.reshape(1, -1, *[1] * (p.ndim - 2)))
        elif self.axis == "positions":
            p.mul_(f.reshape(1, *p.shape[1:]))
        elif self.axis == "entries":
            p.mul_(f.reshape(p.shape))
        else:
            p.mul_(f[self.index])


@dataclass(frozen=True, eq=False)
class GroupSet:
    """n groups of parameter slices of which `keep` should survive: one WGSEF prox problem."""

    name: str
    kind: str
    size: int  # n
    keep: int  # k
    members: tuple[Slice, ...]
    weights: Tensor = field(repr=False)  # w_g > 0
    space: ChannelSpace | None = field(default=None, repr=False)  # filters / channels: what shrink removes

    def norms(self, params: Mapping[str, Tensor], ord: int = 2) -> Tensor:
        """‖x_g‖₂ of every group (ord=1: Σ|x_g|, for magnitude pruning), float64."""
        if ord not in (1, 2):
            raise ValueError(f"ord must be 1 or 2, got {ord}")
        total = sum(m.totals(_entries(params[m.param], ord), self.size) for m in self.members)
        return total if ord == 1 else total.sqrt()

    @torch.no_grad()
    def scale_(self, params: Mapping[str, Tensor], factors: Tensor) -> None:
        for m in self.members:
            m.scale_(params[m.param], factors)


def _entries(p: Tensor, ord: int) -> Tensor:
    x = p.detach().double()
    return x.abs() if ord == 1 else x * x


def keep_count(n: int, sparsity: float | None = None, keep: int | None = None) -> int:
    """Groups to keep out of n: n − round(sparsity·n) rounding halves up, at least 1; or `keep`, at most n."""
    if keep is not None:
        return min(keep, n)
    assert sparsity is not None
    return max(1, n - math.floor(sparsity * n + 0.5))


def build_groups(model: nn.Module, example_input: Tensor, kind: str = "filters", *, sparsity: float | None = None,
                 keep: int | None = None, tied: bool = True, weighting: str = "sqrt_size") -> list[GroupSet]:
    """The group sets of `model` for `kind` (see the module docstring), each with its target `keep`."""
    if kind not in GROUP_KINDS:
        raise unknown_name("group kind", kind, GROUP_KINDS)
    if weighting not in WEIGHTINGS:
        raise unknown_name("group weighting", weighting, WEIGHTINGS)
    if (sparsity is None) == (keep is None):
        raise UsageError("give either a sparsity (fraction of groups removed) or keep (groups kept), not both")
    if sparsity is not None and not 0 <= sparsity < 1:
        raise UsageError(f"sparsity must be in [0, 1), got {sparsity}")
    if keep is not None and keep < 1:
        raise UsageError(f"keep must be >= 1, got {keep}")
    spaces = channel_spaces(model, example_input)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    prunable = [s for s in spaces if s.fixed is None and s.producers and (tied or len(s.producers) == 1)]
    layers = [p for s in spaces if s.fixed is None for p in s.producers]
    sets: list[tuple[str, int, list[Slice], ChannelSpace | None]] = []
    if kind == "filters":
        for s in prunable:
            rows = [Slice(f"{m}.{p}", "rows") for m in s.producers + s.per_channel for p in ("weight", "bias")
                    if getattr(modules[m], p, None) is not None]
            sets.append((s.name, s.size, rows, s))
    elif kind == "channels":
        for s in prunable:
            if s.consumers:
                sets.append((s.name, s.size, [Slice(f"{m}.weight", "cols") for m in s.consumers], s))
    elif kind in ("shapes", "weights"):
        for m in layers:
            w = modules[m].weight
            n = w[0].numel() if kind == "shapes" else w.numel()
            sets.append((m, n, [Slice(f"{m}.weight", "positions" if kind == "shapes" else "entries")], None))
    elif layers:
        whole = [Slice(f"{m}.{p}", "whole", i) for i, m in enumerate(layers) for p in ("weight", "bias")
                 if getattr(modules[m], p, None) is not None]
        sets.append(("layers", len(layers), whole, None))
    if not sets:
        fixed = "; ".join(f"{s.name}: {s.fixed}" for s in spaces if s.fixed)
        raise UsageError(f"{type(model).__name__} has no {kind} that can be pruned ({fixed or 'no conv or linear'})")
    result = []
    for name, n, members, space in sets:
        sizes = sum(m.totals(torch.ones_like(params[m.param], dtype=torch.float64), n) for m in members)
        weights = (sizes / sizes.mean()).sqrt() if weighting == "sqrt_size" else torch.ones(n, dtype=torch.float64)
        result.append(GroupSet(name=name, kind=kind, size=n, keep=keep_count(n, sparsity, keep),
                               members=tuple(members), weights=weights, space=space))
    return result
