"""INT8 post-training quantization of a captured graph: fold BatchNorm, swap in quantized layers, place
activation quantizers, calibrate, freeze.

    summary = quantize_graph(gm, recipe)        # in place; returns what became int8 and what stayed float
    calibrate(gm, x_calibration)                # observers record activation ranges (float forward)
    freeze(gm)                                  # scales fixed; gm is now the fake-quant model

Where quantizers go (the form onnxruntime's QDQ tools produce, so compilers recognise it): the graph input,
and the output of every op whose consumers compute in int8. A conv, linear or add followed only by ReLU or
ReLU6 is quantized after the activation, so the activation folds into the requantization clamp. Max-pool,
reshape/flatten and ReLU of quantized values keep their input's scale. Any other op (softmax, layer norm,
GELU, activation x activation matmul, ...) computes in float and is listed as a fallback.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx

from edgebin.quant import graph as g
from edgebin.quant.modules import ActQuant, QuantConv2d, QuantLinear, _QuantWeighted
from edgebin.quant.observers import make_observer
from edgebin.quant.recipe import Int8Config, NupesConfig, Recipe

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LayerRecord:
    """How one op of the graph is computed after quantization."""

    layer: str
    op: str
    kind: str  # "int8" or "float"
    weight_bits: int | None = None
    activation_bits: int | None = None
    reason: str = ""
    module: str = ""  # the quantized submodule's name in the graph, which prefixes its ONNX node names

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "op": self.op,
            "kind": self.kind,
            "weight_bits": self.weight_bits,
            "activation_bits": self.activation_bits,
            "method": "int8" if self.kind == "int8" else "float",
            "reason": self.reason,
            "module": self.module,
        }


@dataclass
class QuantSummary:
    """What `quantize_graph` did: one record per computing op, in graph order."""

    layers: list[LayerRecord] = field(default_factory=list)

    def fallbacks(self) -> list[LayerRecord]:
        return [r for r in self.layers if r.kind == "float"]

    def count(self, kind: str) -> int:
        return sum(r.kind == kind for r in self.layers)


def quantize_graph(gm: fx.GraphModule, recipe: Recipe) -> QuantSummary:
    """Turn `gm` (captured, eval mode) into an int8 fake-quant graph in `float` mode, ready to calibrate."""
    g.remove_no_ops(gm)
    summary = QuantSummary()
    _swap_weighted_layers(gm, recipe, summary)
    _place_act_quants(gm, recipe, summary)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.graph.lint()
    gm.recompile()
    return summary


def _swap_weighted_layers(gm: fx.GraphModule, recipe: Recipe, summary: QuantSummary) -> None:
    """conv2d (+ a following BatchNorm, folded) and linear nodes become QuantConv2d / QuantLinear modules."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in g.CONV | g.LINEAR:
            continue
        name = g.layer_name(node)
        config = recipe.config_for(name)
        weight = g.attr_tensor(gm, node.args[1])
        bias = g.attr_tensor(gm, node.args[2] if len(node.args) > 2 else None)
        replaced = node
        if node.target in g.CONV:
            stride, padding, dilation, groups = (list(node.args[3:]) + [None] * 4)[:4]
            bn = _single_batch_norm_user(node)
            if bn is not None:
                weight, bias, replaced = _fold_batch_norm(gm, bn, weight, bias)
            module = QuantConv2d(
                weight, bias, stride or (1, 1), padding or (0, 0), dilation or (1, 1), groups or 1
            )
        else:
            module = QuantLinear(weight, bias)
        # NUPES layers compute as int8 layers; their int8 weights come from a table later (quant.nupes)
        module.mode_wanted = "int8" if isinstance(config, (Int8Config, NupesConfig)) else "float"
        module_name = _unique_name(gm, "q_" + name.replace(".", "_"))
        gm.add_submodule(module_name, module)
        with graph.inserting_before(node):
            new = graph.call_module(module_name, (node.args[0],))
        new.meta = dict(replaced.meta)
        new.meta["edgebin_layer"] = name
        replaced.replace_all_uses_with(new)
        for dead in dict.fromkeys((replaced, node)):  # the BatchNorm (if any) before the conv it reads
            graph.erase_node(dead)
        op = "conv2d" if isinstance(module, QuantConv2d) else "linear"
        if module.mode_wanted == "int8":
            record = LayerRecord(name, op, "int8", config.weight_bits, config.activation_bits, module=module_name)
        else:
            record = LayerRecord(name, op, "float", reason="kept in float by the recipe", module=module_name)
        summary.layers.append(record)


def _single_batch_norm_user(conv: fx.Node) -> fx.Node | None:
    users = list(conv.users)
    if len(users) == 1 and users[0].op == "call_function" and users[0].target in g.BATCH_NORM:
        return users[0]
    return None


def _fold_batch_norm(gm, bn: fx.Node, weight, bias):
    """w' = w * gamma / sqrt(var + eps); b' = (b - mean) * gamma / sqrt(var + eps) + beta."""
    if bn.target == torch.ops.aten.batch_norm.default:
        _, gamma, beta, mean, var, training, _momentum, eps = bn.args[:8]
        out = bn
    else:  # _native_batch_norm_legit_no_training returns (out, save_mean, save_invstd)
        _, gamma, beta, mean, var, _momentum, eps = bn.args[:7]
        training = False
        getitems = [u for u in bn.users if u.args[1] == 0]
        if len(getitems) != 1 or len(bn.users) != 1:
            raise ValueError(f"unexpected BatchNorm uses at {bn.name}")
        out = getitems[0]
    if training:
        raise ValueError(f"BatchNorm {bn.name} is in training mode; call model.eval() before compressing")
    mean, var = g.attr_tensor(gm, mean), g.attr_tensor(gm, var)
    gamma = g.attr_tensor(gm, gamma) if gamma is not None else torch.ones_like(mean)
    beta = g.attr_tensor(gm, beta) if beta is not None else torch.zeros_like(mean)
    factor = gamma / torch.sqrt(var + eps)
    bias = torch.zeros_like(mean) if bias is None else bias
    new_weight = weight * factor.view(-1, *([1] * (weight.dim() - 1)))
    new_bias = (bias - mean) * factor + beta
    if out is not bn:  # erase the getitem first; the caller erases the BN via `replaced`
        out.replace_all_uses_with(bn)
        gm.graph.erase_node(out)
    return new_weight, new_bias, bn


def _unique_name(gm: fx.GraphModule, base: str) -> str:
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    return name


def _weighted(gm: fx.GraphModule, node: fx.Node) -> _QuantWeighted | None:
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, _QuantWeighted):
            return module
    return None


def _is_int8_add(node: fx.Node) -> bool:
    if node.op != "call_function" or node.target not in g.ADD or len(node.args) < 2:
        return False
    a, b = node.args[:2]
    alpha = node.kwargs.get("alpha", 1)
    tensors = all(isinstance(x, fx.Node) and x.op != "get_attr" and g.is_tensor(x) for x in (a, b))
    return tensors and alpha == 1


def _kind(gm: fx.GraphModule, node: fx.Node) -> str:
    """'compute' (requantizes its output), 'pass' (keeps its input's scale), 'act', or 'float'."""
    weighted = _weighted(gm, node)
    if weighted is not None:
        return "compute" if weighted.mode_wanted == "int8" else "float"
    if node.op != "call_function":
        return "float"
    if node.target in g.AVERAGE or _is_int8_add(node):
        return "compute"
    if node.target in g.ACTIVATION:
        return "act"
    if node.target in g.PASS_THROUGH:
        return "pass"
    return "float"


def _wants_int8_input(gm: fx.GraphModule, user: fx.Node) -> bool:
    return user.op in ("call_module", "call_function") and _kind(gm, user) != "float"


def _place_act_quants(gm: fx.GraphModule, recipe: Recipe, summary: QuantSummary) -> None:
    graph = gm.graph
    calib = recipe.calibration
    for node in list(graph.nodes):
        if node.op not in ("placeholder", "call_module", "call_function") or not g.is_tensor(node):
            continue
        if isinstance(_module(gm, node), ActQuant):
            continue
        kind = "input" if node.op == "placeholder" else _kind(gm, node)
        users = [u for u in node.users if u.op != "output"]
        if kind == "float" and node.op != "placeholder":
            _record_float_op(gm, node, summary)
        if kind in ("compute",) and node.target in g.AVERAGE | g.ADD:
            summary.layers.append(LayerRecord(g.layer_name(node), g.op_name(node), "int8", None, 8))
        if not any(_wants_int8_input(gm, u) for u in users):
            continue
        if kind in ("compute",) and len(users) == 1 and _kind(gm, users[0]) == "act":
            continue  # quantize after the activation instead
        source = _input_act_quant(gm, node) if kind in ("pass", "act") else None
        if source is not None:
            act = ActQuant(shared_with=source)
        else:
            act = ActQuant(observer=make_observer(calib.method, calib.percentile))
        name = _unique_name(gm, f"aq_{node.name}")
        gm.add_submodule(name, act)
        with graph.inserting_after(node):
            qnode = graph.call_module(name, (node,))
        qnode.meta = {"val": node.meta.get("val")}
        node.replace_all_uses_with(qnode, delete_user_cb=lambda u, q=qnode: u is not q and u.op != "output")
    for node in graph.nodes:  # link each int8 layer to the quantizer of its input, for the int32 bias scale
        weighted = _weighted(gm, node)
        if weighted is None or weighted.mode_wanted != "int8":
            continue
        source = _module(gm, node.args[0])
        if not isinstance(source, ActQuant):
            raise RuntimeError(f"int8 layer {node.meta.get('edgebin_layer')} has no quantized input")
        object.__setattr__(weighted, "input_quant", source)


def _module(gm: fx.GraphModule, node) -> torch.nn.Module | None:
    if isinstance(node, fx.Node) and node.op == "call_module":
        return gm.get_submodule(node.target)
    return None


def _input_act_quant(gm: fx.GraphModule, node: fx.Node) -> ActQuant | None:
    src = _module(gm, node.args[0]) if node.args else None
    return src if isinstance(src, ActQuant) else None


_SHAPE_ONLY = {"getitem", "sym_size", "size", "expand", "unsqueeze", "squeeze", "permute", "transpose"}


def _record_float_op(gm: fx.GraphModule, node: fx.Node, summary: QuantSummary) -> None:
    op = g.op_name(node)
    if node.op == "call_module" or op in _SHAPE_ONLY:
        return  # weighted layers kept in float were recorded when swapped; shape ops compute nothing
    summary.layers.append(LayerRecord(g.layer_name(node), op, "float", reason=f"no int8 kernel for aten.{op}"))


def set_mode(gm: fx.GraphModule, mode: str) -> None:
    for module in gm.modules():
        if isinstance(module, ActQuant):
            module.mode = mode


@torch.no_grad()
def calibrate(gm: fx.GraphModule, x: np.ndarray, batch_size: int = 64, progress=None) -> None:
    """Run the calibration inputs through the float graph so every activation observer sees its range."""
    set_mode(gm, "observe")
    for start in range(0, len(x), batch_size):
        gm(torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])))
        if progress is not None:
            progress(min(len(x), start + batch_size))
    set_mode(gm, "float")


@torch.no_grad()
def freeze(gm: fx.GraphModule) -> None:
    """Fix every scale: activation quantizers first (shared ones after their source), then weights."""
    acts = [m for m in gm.modules() if isinstance(m, ActQuant)]
    for act in sorted(acts, key=lambda a: a.shared_with is not None):
        act.freeze()
    for module in _weighted_modules(gm.modules()):
        if module.mode_wanted == "int8":
            module.freeze()


def _weighted_modules(modules: Iterable[torch.nn.Module]) -> list[_QuantWeighted]:
    return [m for m in modules if isinstance(m, _QuantWeighted)]


def weights_bytes(gm: fx.GraphModule) -> int:
    """Bytes of conv/linear weights as deployed (int8 codes count 1 byte, float and biases 4)."""
    return sum(m.weights_bytes() for m in _weighted_modules(gm.modules()))
