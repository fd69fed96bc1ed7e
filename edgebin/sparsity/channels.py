"""Which channels of a model can be removed, and which must go together: the channel spaces of its graph.

    spaces = channel_spaces(model, torch.zeros(1, 1, 28, 28))
    [(s.name, s.size, s.fixed) for s in spaces]
    # ResNet-8: ('stem.conv+stack1.conv2', 16, None), ('stack1.conv1', 16, None), ...,
    #           ('head', 10, 'model output'), ('input', 1, 'model input')

A channel space is a set of channels that flow together from the conv or linear layers that write them
(`producers`: their output rows) through per-channel layers (BatchNorm, depthwise conv: `per_channel`) and
zero-preserving ops (ReLU, pooling, dropout, flatten of a 1×1 map) to the conv or linear layers that read them
(`consumers`: their input columns). A residual add ties the spaces of its two inputs into one: channel c of the
sum exists as long as channel c of either side does. If every producer row and per-channel parameter of channel c
is zero, the channel is zero everywhere it flows (a BatchNorm with zero weight and bias outputs 0, ReLU(0) = 0,
0 + 0 = 0), so removing it, with the consumers' input columns, changes nothing.

A space is `fixed` (never pruned) when it is the model's input or output, reaches an op not listed above (a
product, a concatenation, a reshape that mixes channels, a BatchNorm without affine parameters), or touches a
module called more than once. The graph comes from `torch.fx.symbolic_trace` of a float model (before QAT
layers are swapped in); a model fx cannot trace raises UsageError.
"""

from __future__ import annotations

import logging
import math
import operator
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.fx.passes.shape_prop import ShapeProp

from edgebin.errors import UsageError

log = logging.getLogger(__name__)

# Modules and functions f with f(0) = 0 channel by channel: a zero channel stays zero and stays separate.
ZERO_PRESERVING_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Hardtanh, nn.GELU, nn.SiLU, nn.Hardswish, nn.Tanh,
                           nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                           nn.AdaptiveMaxPool2d)
ZERO_PRESERVING_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.hardtanh, F.gelu, F.silu, F.hardswish,
                             torch.tanh, F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                             F.adaptive_max_pool2d}
ZERO_PRESERVING_METHODS = {"relu", "contiguous", "tanh"}
_ADD = {operator.add, torch.add, operator.iadd}


@dataclass
class ChannelSpace:
    """Channels that are kept or removed together; `fixed` says why they cannot be removed (None: they can)."""

    size: int
    producers: list[str] = field(default_factory=list)  # conv / linear modules writing these channels (rows)
    per_channel: list[str] = field(default_factory=list)  # BatchNorm / depthwise conv modules on each channel
    consumers: list[str] = field(default_factory=list)  # conv / linear modules reading them (input columns)
    fixed: str | None = None

    @property
    def name(self) -> str:
        return "+".join(self.producers) or "input"


def channel_spaces(model: nn.Module, example_input: Tensor) -> list[ChannelSpace]:
    """The channel spaces of `model` in graph order (see the module docstring)."""
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as err:  # data-dependent control flow and the like: fx's own message says where
        raise UsageError(f"cannot trace {type(model).__name__} with torch.fx to find its channels "
                         f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); structured "
                         "pruning needs a model without data-dependent control flow") from None
    was_training = model.training
    gm.eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(example_input)
    model.train(was_training)
    return _Tracer(gm).run()


class _Tracer:
    """One pass over the fx graph with a union-find over spaces."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        self.gm = gm
        self.parent: list[int] = []
        self.spaces: list[ChannelSpace] = []
        self.space_of: dict[torch.fx.Node, int] = {}
        self.calls: Counter = Counter()
        self.touched: dict[str, list[int]] = {}  # module -> spaces it reads or writes

    def run(self) -> list[ChannelSpace]:
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                self._new(node, fixed="model input")
            elif node.op == "call_module":
                self._module(node, self.gm.get_submodule(node.target))
            elif node.op == "call_function":
                self._function(node)
            elif node.op == "call_method":
                self._method(node)
            elif node.op == "get_attr":
                self._new(node, fixed=f"constant {node.target}")
            elif node.op == "output":
                self._fix_inputs(node, "model output")
        for name, count in self.calls.items():
            if count > 1:
                for s in self.touched.get(name, []):
                    self._fix(s, f"{name} is called {count} times")
        roots: dict[int, ChannelSpace] = {}
        for i in range(len(self.spaces)):
            roots.setdefault(self._find(i), self.spaces[self._find(i)])
        order = {name: i for i, name in enumerate(self.calls)}  # graph order, for stable names
        for space in roots.values():
            for names in (space.producers, space.per_channel, space.consumers):
                names.sort(key=order.__getitem__)
        return list(roots.values())

    # --- union-find ----------------------------------------------------------------------------------------

    def _find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def _union(self, i: int, j: int) -> int:
        a, b = self._find(i), self._find(j)
        if a == b:
            return a
        sa, sb = self.spaces[a], self.spaces[b]
        if sa.size != sb.size:  # broadcasting add: channel c is not matched to channel c
            self._fix(a, "broadcast add")
            self._fix(b, "broadcast add")
        sa.producers += sb.producers
        sa.per_channel += sb.per_channel
        sa.consumers += sb.consumers
        sa.fixed = sa.fixed or sb.fixed
        self.parent[b] = a
        return a

    def _fix(self, i: int, why: str) -> None:
        space = self.spaces[self._find(i)]
        space.fixed = space.fixed or why

    # --- spaces of nodes -----------------------------------------------------------------------------------

    def _new(self, node: torch.fx.Node, *, fixed: str | None = None, producer: str | None = None) -> int | None:
        shape = _shape(node)
        if shape is None:  # not a tensor (x.size(0), a tuple): carries no channels
            return None
        space = ChannelSpace(size=shape[1] if len(shape) > 1 else 1, fixed=fixed)
        if producer is not None:
            space.producers.append(producer)
        self.spaces.append(space)
        self.parent.append(len(self.parent))
        self.space_of[node] = len(self.spaces) - 1
        return self.space_of[node]

    def _input_spaces(self, node: torch.fx.Node) -> list[int]:
        return [self._find(self.space_of[n]) for n in node.all_input_nodes if n in self.space_of]

    def _fix_inputs(self, node: torch.fx.Node, why: str) -> None:
        for s in self._input_spaces(node):
            self._fix(s, why)

    def _unsupported(self, node: torch.fx.Node, what: str) -> None:
        self._fix_inputs(node, what)
        self._new(node, fixed=what)

    def _pass(self, node: torch.fx.Node, source: torch.fx.Node) -> int | None:
        """`node` carries the channels of `source` unchanged."""
        if source not in self.space_of:
            self._unsupported(node, f"{node.name} on a non-tensor")
            return None
        self.space_of[node] = self._find(self.space_of[source])
        return self.space_of[node]

    # --- ops -----------------------------------------------------------------------------------------------

    def _module(self, node: torch.fx.Node, module: nn.Module) -> None:
        name = str(node.target)
        self.calls[name] += 1
        source = node.args[0] if node.args and isinstance(node.args[0], torch.fx.Node) else None
        if source is None or source not in self.space_of:
            self._unsupported(node, f"{name} has no tensor input")
            return
        in_space = self._find(self.space_of[source])
        if isinstance(module, nn.Conv2d) and type(module).forward is nn.Conv2d.forward:
            if module.groups == 1:
                self.spaces[in_space].consumers.append(name)
                out = self._new(node, producer=name)
            elif module.groups == module.in_channels == module.out_channels:  # depthwise: channel by channel
                self.spaces[in_space].per_channel.append(name)
                out = self._pass(node, source)
            else:
                self._unsupported(node, f"grouped conv {name}")
                return
            self.touched[name] = [in_space, out]
        elif isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward:
            if len(_shape(source) or ()) != 2:  # a linear layer over tokens: its features are not dimension 1
                self._unsupported(node, f"{name} on a {len(_shape(source) or ())}-d input")
                return
            self.spaces[in_space].consumers.append(name)
            self.touched[name] = [in_space, self._new(node, producer=name)]
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if not module.affine:
                self._unsupported(node, f"{name} has no affine parameters")
                return
            self.spaces[in_space].per_channel.append(name)
            self.touched[name] = [self._pass(node, source)]
        elif isinstance(module, ZERO_PRESERVING_MODULES):
            self.touched[name] = [self._pass(node, source)]
        elif isinstance(module, nn.Flatten):
            if _flattens_1x1(source, module.start_dim, module.end_dim):
                self._pass(node, source)
            else:
                self._unsupported(node, f"{name} mixes channels with positions")
        else:
            self._unsupported(node, f"{type(module).__name__} {name}")
            self.touched[name] = [in_space]

    def _function(self, node: torch.fx.Node) -> None:
        target = node.target
        tensors = [a for a in node.args if isinstance(a, torch.fx.Node) and a in self.space_of]
        if target in _ADD and len(tensors) == 2 and len(node.args) == 2 and not node.kwargs:
            self.space_of[node] = self._union(self.space_of[tensors[0]], self.space_of[tensors[1]])
        elif target in ZERO_PRESERVING_FUNCTIONS and tensors and node.args[0] is tensors[0]:
            self._pass(node, tensors[0])
        elif target is torch.flatten and tensors and _flattens_1x1(tensors[0], *_flatten_dims(node)):
            self._pass(node, tensors[0])
        elif target is getattr and node.args[1] in ("shape",):
            return
        else:
            self._unsupported(node, f"{getattr(target, '__name__', target)}")

    def _method(self, node: torch.fx.Node) -> None:
        source = node.args[0]
        if node.target in ("size", "dim"):
            return
        if node.target in ZERO_PRESERVING_METHODS and isinstance(source, torch.fx.Node):
            self._pass(node, source)
        elif node.target == "flatten" and _flattens_1x1(source, *_flatten_dims(node)):
            self._pass(node, source)
        elif node.target in ("view", "reshape") and _keeps_channels(source, node):
            self._pass(node, source)
        else:
            self._unsupported(node, f".{node.target}()")


def _shape(node: object) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def _flatten_dims(node: torch.fx.Node) -> tuple[int, int]:
    args = list(node.args[1:]) + [None, None]
    start = node.kwargs.get("start_dim", args[0] if args[0] is not None else 0)
    end = node.kwargs.get("end_dim", args[1] if args[1] is not None else -1)
    return start, end


def _flattens_1x1(source: object, start: int, end: int) -> bool:
    """True when flatten(start, end) of `source` keeps channel c at feature c: (N, C, 1, 1) -> (N, C)."""
    shape = _shape(source)
    return shape is not None and len(shape) >= 2 and start == 1 and end in (-1, len(shape) - 1) \
        and math.prod(shape[2:]) == 1


def _keeps_channels(source: object, node: torch.fx.Node) -> bool:
    """A view or reshape of (N, C, 1, ..., 1) into (N, C)."""
    before, after = _shape(source), _shape(node)
    return before is not None and after is not None and len(after) == 2 and len(before) >= 2 \
        and after[:2] == before[:2] and math.prod(before[2:]) == 1
