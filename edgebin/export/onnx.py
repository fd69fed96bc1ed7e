"""Export a (possibly fake-quantized) module to ONNX opset 17 with static shapes.

Quantized modules export themselves as QuantizeLinear/DequantizeLinear through autograd-Function symbolics
(`edgebin.quant.qdq`), so the graph is the QDQ form that onnxruntime and edgebin's compiler both understand:
int8 weight initializers, int32 biases, Q/DQ pairs on activations. The TorchScript exporter is used
(`dynamo=False`): it needs no onnxscript and honours those symbolics.

Metadata (`model.metadata_props`) carries what the compiler and the report need and ONNX cannot say:
`edgebin.version`, `edgebin.method`, `edgebin.recipe` (JSON) and `edgebin.layers` (JSON list of per-layer
method and bit widths, with the ONNX node names of each layer).
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path

import onnx
import torch

from edgebin import __version__
from edgebin.atomic import atomic_write_bytes
from edgebin.errors import ModelLoadError, UsageError

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(
    module: torch.nn.Module,
    input_shape: tuple[int, ...],
    path: Path,
    *,
    metadata: dict[str, str] | None = None,
    layers: list[dict] | None = None,
) -> onnx.ModelProto:
    """Export `module` for one input of `input_shape`; write it atomically to `path` and return it."""
    model = trace_onnx(module, input_shape)
    props = {"edgebin.version": __version__, **(metadata or {})}
    if layers is not None:
        props["edgebin.layers"] = json.dumps(_with_node_names(model, layers))
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    model.producer_name, model.producer_version = "edgebin", __version__
    onnx.checker.check_model(model, full_check=True)
    atomic_write_bytes(Path(path), model.SerializeToString())
    return model


def trace_onnx(module: torch.nn.Module, input_shape: tuple[int, ...]) -> onnx.ModelProto:
    """The TorchScript export of `module` at opset 17, with Identity copies of initializers removed (not checked)."""
    example = torch.zeros(tuple(input_shape), dtype=torch.float32)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice is not for our users
        try:
            torch.onnx.export(
                module,
                (example,),
                buffer,
                opset_version=OPSET,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                do_constant_folding=True,
            )
        except Exception as err:  # the exporter raises many types; the first line is what a user needs
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(f"ONNX export failed: {first}") from err
    model = onnx.load_from_string(buffer.getvalue())
    _drop_identity_of_initializers(model)
    return model


def read_metadata(path: Path) -> dict[str, str]:
    """The `metadata_props` of an ONNX file as a dict (ModelLoadError if it is not ONNX)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise ModelLoadError(f"no such file: {path}") from None
    except Exception as err:
        raise ModelLoadError(f"{path} is not an ONNX model ({type(err).__name__})") from None
    return {p.key: p.value for p in model.metadata_props}


def _drop_identity_of_initializers(model: onnx.ModelProto) -> None:
    """The exporter emits `Identity(initializer)` for tensors reached under two names; point users at the source."""
    initializers = {i.name for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    rename: dict[str, str] = {}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in outputs:
            rename[node.output[0]] = node.input[0]
        else:
            keep.append(node)
    if not rename:
        return
    del model.graph.node[:]
    model.graph.node.extend(keep)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = rename.get(name, name)


def _with_node_names(model: onnx.ModelProto, layers: list[dict]) -> list[dict]:
    """Attach the ONNX node names of each layer (the exporter names nodes '/<module>/<Op>')."""
    out = []
    for layer in layers:
        module = layer.get("module")
        nodes = [n.name for n in model.graph.node if module and n.name.startswith(f"/{module}/")]
        out.append({**layer, "onnx_nodes": nodes})
    return out
