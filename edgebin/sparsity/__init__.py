"""Structured sparsity: WGSEF training to an exact number of groups per layer, then physical removal.

    sets = build_groups(model, example, "filters", sparsity=0.5)
    hook = ProximalWgsef(sets, lam=5.0, lr_at=lr_schedule(config, len(y)), exact_step=exact)
    train(model, data, None, config, hooks=TrainHooks(after_step=hook))
    smaller = shrink(model, example).model

`wgsef` holds the maths (S_k and its proximal operators), `channels` finds which channels go together,
`groups` makes the group sets, `proximal` is the training hook and `shrink` removes what was pruned;
`edgebin.pipeline_sparsity.sparsify` runs it all on a checkpoint. docs/sparsity.md explains the choices.
"""

from edgebin.sparsity.channels import ChannelSpace, channel_spaces
from edgebin.sparsity.groups import GROUP_KINDS, GroupSet, Slice, build_groups, keep_count
from edgebin.sparsity.proximal import ProximalWgsef, lr_schedule, steps_per_epoch
from edgebin.sparsity.shrink import ShrinkResult, shrink
from edgebin.sparsity.wgsef import envelope_level, hard_select, prox_dc, prox_sef, sef, sef_prox_factors

__all__ = [
    "GROUP_KINDS", "ChannelSpace", "GroupSet", "ProximalWgsef", "ShrinkResult", "Slice", "build_groups",
    "channel_spaces", "envelope_level", "hard_select", "keep_count", "lr_schedule", "prox_dc", "prox_sef", "sef",
    "sef_prox_factors", "shrink", "steps_per_epoch",
]
