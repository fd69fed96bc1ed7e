"""Capture one ATen-level `torch.fx.GraphModule` from any loaded model, whatever file it came from.

    loaded = load_model(Path("model.pt"))
    gm = capture_graph(loaded)          # eval-mode graph of aten ops; its weights are its own copies
    gm(torch.zeros(loaded.input_shape))

How each source becomes a graph (torch 2.13):

- nn.Module (edgebin checkpoint, state_dict + --arch, pickled module): `torch.export.export(strict=False)`.
- TorchScript: `torch._export.converter.TS2EPConverter`, which walks the TorchScript IR.
- `.pt2`: the program's own graph, `ExportedProgram.module()`.

All three give the pre-dispatch ATen ops below; they differ only where marked, and `normalize_aten` (which
`capture_graph` runs) removes those differences:

| layer                     | aten op in the graph                                                 |
|---------------------------|----------------------------------------------------------------------|
| Conv1d / Conv2d           | `conv1d.default` / `conv2d.default` (x, w, b or None, stride, ...) (*)|
| Linear                    | `linear.default`                                                     |
| BatchNorm2d (eval)        | `batch_norm.default(x, w, b, mean, var, False, momentum, eps, False)` |
| ReLU / ReLU(inplace=True) | `relu.default` / `relu_.default`                                     |
| ReLU6                     | `hardtanh.default` / `hardtanh_.default` (min 0, max 6)              |
| residual `a + b` / `+=`   | `add.Tensor` / `add_.Tensor`                                         |
| MaxPool2d, AvgPool2d      | `max_pool2d.default`, `avg_pool2d.default`                           |
| AdaptiveAvgPool2d         | `adaptive_avg_pool2d.default` (`x.mean((2, 3))` is `mean.dim`)       |
| flatten / view            | `flatten.using_ints` / `view.default` (batch fixed: `[1, -1]`)       |

(*) A *traced* TorchScript model (`torch.jit.trace`) gives `convolution.default(x, w, b, stride, padding,
dilation, transposed, output_padding, groups)` instead; a scripted one gives `conv2d`. `normalize_aten`
rewrites every non-transposed `convolution` into `conv1d`/`conv2d`/`conv3d`.

`normalize_aten` also turns an in-place op (`relu_`, `hardtanh_`, `add_`) into its functional form where the
tensor it would overwrite has no other reader, so passes need not track aliasing; where another node reads it
the in-place op stays. Weights are `get_attr` nodes on submodule attributes (`conv.weight`), for every source.
Each node's `meta["nn_module_stack"]` names its layer for nn.Module and `.pt2` sources; TorchScript sources
lose it (every node sits under one wrapper), so there the weight names are the way to find the layer.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from edgebin.errors import ModelLoadError
from edgebin.loading import LoadedModel, complaint

log = logging.getLogger(__name__)

aten = torch.ops.aten

_CONV_BY_RANK = {1: aten.conv1d.default, 2: aten.conv2d.default, 3: aten.conv3d.default}
_FUNCTIONAL = {  # in-place op -> the same op without the write
    aten.relu_.default: aten.relu.default,
    aten.hardtanh_.default: aten.hardtanh.default,
    aten.add_.Tensor: aten.add.Tensor,
    aten.mul_.Tensor: aten.mul.Tensor,
    aten.sigmoid_.default: aten.sigmoid.default,
    aten.hardswish_.default: aten.hardswish.default,
    aten.clamp_.default: aten.clamp.default,
}


def capture_graph(loaded: LoadedModel) -> torch.fx.GraphModule:
    """An eval-mode ATen GraphModule computing what `loaded.module` computes, with its own weight copies."""
    example = torch.zeros(loaded.input_shape)
    if loaded.exported is not None:
        gm = loaded.exported.module()
    elif isinstance(loaded.module, torch.jit.ScriptModule):
        gm = _from_torchscript(loaded, example)
    else:
        gm = _from_module(loaded, example)
    _drop_guards(gm)
    for name in ("train", "eval"):  # ep.module() stubs these to raise; the graph is inference-only already
        gm.__dict__.pop(name, None)
    gm.eval()
    _own_weights(gm)  # quantization passes edit weights in place; the FP32 model must stay as it was
    normalize_aten(gm)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def normalize_aten(gm: torch.fx.GraphModule) -> None:
    """Rewrite `gm` in place so every source spells a layer the same way (see the module docstring)."""
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function":
            continue
        if node.target is aten.convolution.default:
            _convolution_to_convnd(graph, node)
        elif node.target in _FUNCTIONAL and _written_in_private(node):
            node.target = _FUNCTIONAL[node.target]
    graph.lint()
    gm.recompile()


def _written_in_private(node: torch.fx.Node) -> bool:
    """True if no one but `node` can see the tensor it writes to: a fresh op result with one reader.

    A view, an alias or an input could share memory with tensors read elsewhere, so those writes stay.
    """
    target = node.args[0]
    if not isinstance(target, torch.fx.Node) or target.op != "call_function" or len(target.users) != 1:
        return False
    op = target.target
    return isinstance(op, torch._ops.OpOverload) and all(r.alias_info is None for r in op._schema.returns)


def _convolution_to_convnd(graph: torch.fx.Graph, node: torch.fx.Node) -> None:
    x, w, b, stride, padding, dilation, transposed, _output_padding, groups = node.args
    if transposed or len(stride) not in _CONV_BY_RANK:
        log.debug("%s: transposed or %dd convolution left as aten.convolution", node.name, len(stride))
        return
    with graph.inserting_before(node):
        conv = graph.call_function(_CONV_BY_RANK[len(stride)], (x, w, b, stride, padding, dilation, groups))
    conv.meta = dict(node.meta)
    node.replace_all_uses_with(conv)
    graph.erase_node(node)


def _from_module(loaded: LoadedModel, example: torch.Tensor) -> torch.fx.GraphModule:
    """Export with a dynamic batch dimension where the model allows it, so calibration and evaluation can run
    in batches; a model that fixes its batch (`x.view(1, -1)`) is exported for batch 1 instead."""
    module = loaded.module.eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    pair = example.expand(2, *example.shape[1:]).contiguous()  # a size-1 example would specialise the batch
    with _torch_chatter_to_debug():
        try:
            return torch.export.export(module, (pair,), dynamic_shapes=({0: batch},), strict=False).module()
        except Exception as err:  # torch.export raises many types; retry with the recorded static shape
            log.debug("dynamic-batch export failed (%s); exporting for batch 1", complaint(err))
        try:
            program = torch.export.export(module, (example,), strict=False)
        except Exception as err:  # each type means this model cannot be traced
            raise _capture_error(loaded, "torch.export", err) from None
    return program.module()


def batch_size_limit(gm: torch.fx.GraphModule, input_shape: tuple[int, ...]) -> int:
    """How many samples the graph takes per call: 1 for graphs captured with a fixed batch, else a big number."""
    with torch.no_grad():
        try:
            gm(torch.zeros((2, *input_shape[1:])))
        except Exception:  # a fixed-batch graph fails in shape checks or in a hard-coded view
            return 1
    return 256


def _from_torchscript(loaded: LoadedModel, example: torch.Tensor) -> torch.fx.GraphModule:
    from torch._export.converter import TS2EPConverter

    try:
        with _torch_chatter_to_debug():
            program = TS2EPConverter(loaded.module, (example,)).convert()
    except Exception as err:
        raise _capture_error(loaded, "the TorchScript converter", err) from None
    return program.module()


@contextlib.contextmanager
def _torch_chatter_to_debug() -> Iterator[None]:
    """Send torch's warnings during capture to our debug log: they describe its internals, not the user's model.

    The TorchScript converter warns about unused BN counters and specialised batch sizes on every model.
    """
    chatty = logging.getLogger("torch._export")
    level = chatty.level
    chatty.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        chatty.setLevel(level)
    for warning in caught:
        log.debug("torch during capture: %s", warning.message)


def _capture_error(loaded: LoadedModel, tool: str, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"cannot capture a graph of `{loaded.source}` with {tool}: {complaint(err)}; save the weights as a "
        "state_dict and pass --arch with a model torch.export can trace, or save a .pt2 with torch.export.save"
    )


def _drop_guards(gm: torch.fx.GraphModule) -> None:
    """Remove the input checks `ExportedProgram.module()` adds: later passes and ONNX export trip on them.

    They are a `_guards_fn` submodule called first in the graph, and a forward pre-hook that re-checks the input
    against the graph's fake tensors once `_guards_fn` is gone (under the ONNX tracer that recurses forever);
    `validate_inputs = False` is torch's switch for the hook. Shapes were checked when the model was loaded.
    """
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and node.target == "_guards_fn":
            gm.graph.erase_node(node)
    if hasattr(gm, "_guards_fn"):
        gm.delete_submodule("_guards_fn")
    if hasattr(gm, "validate_inputs"):
        gm.validate_inputs = False


def _own_weights(gm: torch.fx.GraphModule) -> None:
    """Give `gm` its own copy of every parameter, buffer and tensor constant (shared ones stay shared)."""
    copies: dict[int, torch.Tensor] = {}

    def copy_of(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in copies:
            clone = t.detach().clone()
            copies[id(t)] = nn.Parameter(clone, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else clone
        return copies[id(t)]

    for module in gm.modules():
        for store in (module._parameters, module._buffers):
            for name, tensor in store.items():
                if tensor is not None:
                    store[name] = copy_of(tensor)
    for node in gm.graph.nodes:  # constants that are plain attributes, neither parameter nor buffer
        if node.op == "get_attr":
            owner_name, _, attr = node.target.rpartition(".")
            owner = gm.get_submodule(owner_name) if owner_name else gm
            value = getattr(owner, attr, None)
            if isinstance(value, torch.Tensor) and attr not in owner._parameters and attr not in owner._buffers:
                setattr(owner, attr, copy_of(value))
