"""Small helpers to read and edit a captured ATen-level `torch.fx.GraphModule`.

A captured graph (see `edgebin.capture`) holds parameters as `get_attr` nodes and computes with
`torch.ops.aten.*` calls; these helpers name the op families the quantizer cares about in one place.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

aten = torch.ops.aten

CONV = {aten.conv2d.default}
LINEAR = {aten.linear.default}
BATCH_NORM = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}
ACTIVATION = {aten.relu.default, aten.relu_.default, aten.hardtanh.default, aten.hardtanh_.default}
ADD = {aten.add.Tensor, aten.add_.Tensor}
AVERAGE = {aten.avg_pool2d.default, aten.adaptive_avg_pool2d.default, aten.mean.dim}
PASS_THROUGH = {
    aten.max_pool2d.default,
    aten.flatten.using_ints,
    aten.view.default,
    aten.reshape.default,
    aten._unsafe_view.default,
}
NO_OPS = {aten.clone.default, aten.contiguous.default, aten.alias.default, aten.detach.default}
DROPOUT = {aten.dropout.default, aten.feature_dropout.default}


def fetch_attr(gm: fx.GraphModule, target: str) -> torch.Tensor:
    """The tensor behind a `get_attr` target such as 'layer1.0.conv1.weight'."""
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def attr_tensor(gm: fx.GraphModule, node: fx.Node | None) -> torch.Tensor | None:
    """The tensor a `get_attr` node refers to, or None for a missing optional argument."""
    if node is None:
        return None
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        raise ValueError(f"expected a parameter, got {node}")
    return fetch_attr(gm, node.target).detach()


def is_tensor(node: fx.Node) -> bool:
    """Whether the node produces one tensor (from the fake value torch.export recorded)."""
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor)


def layer_name(node: fx.Node) -> str:
    """A readable layer name: the weight's module path for conv/linear ('layer1.0.conv1'), else the node name."""
    if node.target in CONV | LINEAR and len(node.args) > 1:
        weight = node.args[1]
        if isinstance(weight, fx.Node) and weight.op == "get_attr":
            return weight.target.rsplit(".", 1)[0]
    return node.name


def op_name(node: fx.Node) -> str:
    """'conv2d', 'linear', 'add', ... for an ATen call; the module class name for call_module."""
    if node.op == "call_function":
        if node.target is operator.getitem:
            return "getitem"
        return getattr(node.target, "__name__", str(node.target)).split(".")[0]
    return node.op


def remove_no_ops(gm: fx.GraphModule) -> None:
    """Drop copies and inference-mode dropout, which change nothing but hide patterns from later passes."""
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        inert_dropout = node.target in DROPOUT and len(node.args) > 2 and node.args[2] is False
        if node.target in NO_OPS or inert_dropout:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
