"""Training with WGSEF by proximal gradient: a `TrainHooks.after_step` hook for `edgebin.train` (and so for QAT).

    sets = build_groups(model, example, "filters", sparsity=0.5)
    config = TrainConfig(epochs=6, lr=1e-3)
    spe = steps_per_epoch(config, len(y))
    hook = ProximalWgsef(sets, lam=5.0, lr_at=lr_schedule(config, len(y)), exact_step=4 * spe)
    train(model, (x, y), None, config, hooks=TrainHooks(after_step=hook))    # or train_qat(..., after_step=hook)
    hook.kept["stack1.conv1"]                                               # the 8 filters left, exactly

Schedule, by optimizer step (counting from 1):
1. steps < exact_step: after AdamW's step on the loss, each group set takes a proximal step of size η·λ, η the
   step's learning rate (methods.md §5 (b); on the post-step weights, never as a gradient). `form="dc"` (the
   default) is the prox of η·λ·(S_k − ½‖·‖²): the k top groups are left alone, the band is soft-thresholded
   towards 0, the rest zeroed. `form="envelope"` is the prox of η·λ·S_k, the convex envelope: the same, but the top
   groups also shrink by 1/(1 + η·λ), a ridge that costs accuracy at the λ needed to empty the other groups (in
   BatchNorm networks the BatchNorm weights and biases feel it; docs/sparsity.md has the measurements). Both keep
   at least k groups nonzero.
2. step == exact_step: after that step's proximal step, the exact step: the DC form's prox with λ >= 1, which is
   H_k: the k groups with the largest w_g·ρ_g are kept unchanged and the others set to zero; exactly k per set
   (ties: the lower index). `report` records how many groups were nonzero before it and the fraction of the
   squared norm it removed: what the proximal steps had not already done.
3. steps > exact_step: the masked fine-tune. The pruned groups are written back to zero after every step, so
   AdamW's decay and momentum never revive them and every forward pass sees the pruned model.

`exact(model)` runs step 2 at any time; with `ord=1` it selects by L1 norm instead, which is magnitude filter
pruning (Li et al., ICLR 2017) when called before training: the benchmark's baseline. The masks are kept in the
hook, not in the training state: after a resume past the exact step, the first call reselects from the weights,
whose pruned groups are zero already, so it finds the same groups.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from edgebin.errors import UsageError, unknown_name
from edgebin.sparsity.groups import GroupSet
from edgebin.sparsity.wgsef import dc_prox_factors, hard_select, sef_prox_factors
from edgebin.train import TrainConfig, learning_rate

log = logging.getLogger(__name__)

FORMS = {"dc": dc_prox_factors, "envelope": sef_prox_factors}


def steps_per_epoch(config: TrainConfig, samples: int, world: int | None = None) -> int:
    """Optimizer steps per epoch as `edgebin.train` takes them (DistributedSampler with drop_last, then batches)."""
    if world is None:
        dist = torch.distributed
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else \
            int(os.environ.get("WORLD_SIZE", "1"))
    return (samples // world) // (config.batch_size // world)


def lr_schedule(config: TrainConfig, samples: int) -> Callable[[int], float]:
    """lr of 0-based optimizer step `step` under `config`, as `edgebin.train` sets it."""
    spe = steps_per_epoch(config, samples)
    return lambda step: learning_rate(config, step, spe)


class ProximalWgsef:
    """The WGSEF proximal step after every optimizer step, then the exact step and the masks (module docstring)."""

    def __init__(self, sets: Sequence[GroupSet], *, lam: float, lr_at: Callable[[int], float], exact_step: int,
                 form: str = "dc") -> None:
        if lam < 0:
            raise UsageError(f"lam must be >= 0, got {lam}")
        if form not in FORMS:
            raise unknown_name("WGSEF form", form, tuple(FORMS))
        self.sets, self.lam, self.lr_at, self.exact_step = list(sets), lam, lr_at, exact_step
        self.form = form
        self.kept: dict[str, Tensor] | None = None  # set name -> bool mask of its groups, once the exact step ran
        self.report: dict[str, dict] = {}  # set name -> what the exact step found

    def __call__(self, model: nn.Module, step: int) -> None:
        if self.kept is not None:
            self.apply_masks(model)
            return
        self.proximal(model, self.lr_at(step - 1) * self.lam)
        if step >= self.exact_step:
            self.exact(model)

    @torch.no_grad()
    def proximal(self, model: nn.Module, lam: float) -> None:
        """Every set's prox of lam·(S_k − ½‖·‖²) or lam·S_k (by `form`), at w ⊙ ρ: at least k groups stay nonzero."""
        params = dict(model.named_parameters())
        factors = FORMS[self.form]
        for s in self.sets:
            s.scale_(params, factors(s.norms(params), lam, s.keep, s.weights))

    @torch.no_grad()
    def exact(self, model: nn.Module, ord: int = 2) -> dict[str, Tensor]:
        """Keep the k groups of each set with the largest w_g·‖x_g‖ (ord=1: L1 norm), zero the rest; the masks."""
        params = dict(model.named_parameters())
        self.kept = {}
        for s in self.sets:
            norms = s.norms(params, ord)
            keep = hard_select(s.weights.to(norms) * norms, s.keep)
            squares = s.norms(params).pow(2)
            self.report[s.name] = {"groups": s.size, "keep": s.keep, "nonzero_before": int((norms > 0).sum()),
                                   "norm_removed": float(squares[~keep].sum() / squares.sum().clamp_min(1e-300))}
            s.scale_(params, keep.double())
            self.kept[s.name] = keep
        log.info("exact step: %s", ", ".join(f"{n} {r['nonzero_before']}->{r['keep']}/{r['groups']}"
                                             for n, r in self.report.items()))
        return self.kept

    @torch.no_grad()
    def apply_masks(self, model: nn.Module) -> None:
        """Write zeros back into the pruned groups."""
        assert self.kept is not None
        params = dict(model.named_parameters())
        for s in self.sets:
            s.scale_(params, self.kept[s.name].double())
