"""Remove pruned filters and channels for real: a smaller dense model that computes what the pruned one did.

    result = shrink(model, torch.zeros(1, 1, 28, 28))      # model trained by WGSEF, pruned groups at zero
    result.model                                            # ResNet8 with narrower convs, BatchNorms and head input
    result.layer_widths                                     # {"stack1.conv1": {"out_channels": 8}, ...}
    save_checkpoint(path, result.model, arch="resnet8", arch_kwargs={**kwargs, "layer_widths": result.layer_widths},
                    input_shape=(1, 1, 28, 28))             # load_model rebuilds it with those widths

For every channel space that may be pruned (`edgebin.sparsity.channels`), channel c is dead when its filter
group is zero (every producer row, bias and BatchNorm weight and bias: the channel is 0 wherever it flows) or its
channel group is zero (every consumer's input column: nothing reads it). Dead channels leave every layer of the
space together: the producers' output rows and biases, the BatchNorm's parameters and running statistics, the
depthwise filters, and the consumers' input columns. The spaces are tied through residual adds, so both sides of
an add and everything after it keep the same channels. A space keeps at least one channel (a layer cannot have
width 0): if all are dead, its first stays, still zero. Only exact zeros count; nothing is rounded.

The model's classes stay; only nn.Conv*d, nn.Linear and nn.BatchNorm*d layers are replaced by narrower ones of
the same type (`edgebin.loading.resized_layer`). Filter shapes, single weights and whole layers set to zero are
not removed: they stay zeros in a dense model.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from edgebin.loading import resized_layer
from edgebin.sparsity.channels import ChannelSpace, channel_spaces
from edgebin.sparsity.groups import Slice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShrinkResult:
    """The smaller model, the widths to rebuild it, and the channels each space kept (name: (kept, of))."""

    model: nn.Module
    layer_widths: dict[str, dict[str, int]]
    channels: dict[str, tuple[int, int]]


@torch.no_grad()
def shrink(model: nn.Module, example_input: Tensor) -> ShrinkResult:
    """A copy of `model` without its dead channels (see the module docstring); `model` is left as it is."""
    model = copy.deepcopy(model)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters())
    rows: dict[str, Tensor] = {}  # module -> output channels (or BatchNorm / depthwise channels) kept
    cols: dict[str, Tensor] = {}  # module -> input channels kept
    channels = {}
    for space in channel_spaces(model, example_input):
        if space.fixed is not None or not space.producers:
            continue
        alive = _alive(space, modules, params)
        if not alive.any():
            alive[0] = True
        keep = alive.nonzero().reshape(-1)
        channels[space.name] = (len(keep), space.size)
        if len(keep) == space.size:
            continue
        for name in space.producers + space.per_channel:
            rows[name] = keep
        for name in space.consumers:
            cols[name] = keep
    widths = {}
    for name in sorted(set(rows) | set(cols), key=list(modules).index):
        widths[name] = _replace(model, name, modules[name], rows.get(name), cols.get(name))
    removed = {n: c for n, c in channels.items() if c[0] < c[1]}
    log.info("shrink: %s", ", ".join(f"{n} {k}/{t}" for n, (k, t) in removed.items()) or "nothing to remove")
    return ShrinkResult(model=model, layer_widths=widths, channels=channels)


def _alive(space: ChannelSpace, modules: dict[str, nn.Module], params: dict[str, Tensor]) -> Tensor:
    """Channels whose filter group and channel group are both nonzero somewhere."""
    filters = [Slice(f"{m}.{p}", "rows") for m in space.producers + space.per_channel for p in ("weight", "bias")
               if getattr(modules[m], p, None) is not None]
    readers = [Slice(f"{m}.weight", "cols") for m in space.consumers]
    written = sum(s.totals(params[s.param].detach().abs(), space.size) for s in filters) > 0
    if not readers:
        return written
    read = sum(s.totals(params[s.param].detach().abs(), space.size) for s in readers) > 0
    return written & read


def _replace(model: nn.Module, name: str, old: nn.Module, rows: Tensor | None, cols: Tensor | None) -> dict:
    """Put a narrower copy of layer `name` in place, keeping output `rows` and input `cols`; its new widths."""
    if isinstance(old, nn.modules.batchnorm._BatchNorm):
        widths = {"num_features": len(rows)}
    elif isinstance(old, nn.Linear):
        widths = {"in_features": len(cols) if cols is not None else old.in_features,
                  "out_features": len(rows) if rows is not None else old.out_features}
    elif old.groups > 1:  # depthwise: one filter per channel
        widths = {"in_channels": len(rows), "out_channels": len(rows), "groups": len(rows)}
    else:
        widths = {"in_channels": len(cols) if cols is not None else old.in_channels,
                  "out_channels": len(rows) if rows is not None else old.out_channels}
    new = resized_layer(old, **widths)
    depthwise = isinstance(old, nn.modules.conv._ConvNd) and old.groups > 1
    for pname, tensor in [*old.named_parameters(recurse=False), *old.named_buffers(recurse=False)]:
        value = tensor.detach()
        if rows is not None and value.ndim >= 1:  # not BatchNorm's num_batches_tracked
            value = value.index_select(0, rows)
        if cols is not None and value.ndim >= 2 and not depthwise:
            value = value.index_select(1, cols)
        getattr(new, pname).copy_(value)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)
    return {k: v for k, v in widths.items() if v != getattr(old, k)}
