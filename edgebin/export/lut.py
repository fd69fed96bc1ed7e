"""NUPES weights in ONNX: b-bit codes and a per-layer int8 table instead of an int8 weight initializer.

    export_onnx(gm, shape, path, metadata=meta, layers=records)   # int8 PTQ form: DequantizeLinear(int8 weight)
    rewrite_lut_onnx(path, lut_layers(gm))                        # codes -> Cast -> Gather(levels) -> same DQ

Each NUPES layer's weight becomes

    codes  (uint8 initializer, the weight's shape, values 0..2N)
    levels (int8 initializer, [2N + 1])
    Cast(codes, to=INT32) -> Gather(levels, ·, axis=0) -> DequantizeLinear(x_scale = s_c/127, int8 zero points, axis=0)

exactly where int8 PTQ has DequantizeLinear(int8 initializer), so onnxruntime computes the same weights and a
compiler sees a table lookup on constants ahead of the usual int8 weight. `torch.onnx.export` would fold
Cast + Gather of two constants back into one int8 initializer, hence this rewrite after export. The model's
metadata gains `edgebin.lut_weights`, a JSON list of {"layer", "module", "bits", "exponent", "levels",
"codes_initializer", "levels_initializer"}, and the two new nodes join the layer's `onnx_nodes` in
`edgebin.layers`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from torch import fx

from edgebin.atomic import atomic_write_bytes
from edgebin.quant.nupes import lut_weight_of

LUT_KEY = "edgebin.lut_weights"


@dataclass(frozen=True)
class LutLayer:
    """One NUPES layer to rewrite: names, exponent and the arrays that replace its int8 weight."""

    layer: str  # edgebin's layer name ('stack1.conv1')
    module: str  # the graph module, whose ONNX nodes are named '/<module>/...'
    bits: int
    exponent: float
    codes: np.ndarray  # uint8
    levels: np.ndarray  # int8


def lut_layers(gm: fx.GraphModule) -> list[LutLayer]:
    """The NUPES layers of a quantized graph (those with a LutWeight), in graph order."""
    out = []
    for node in gm.graph.nodes:
        lut = lut_weight_of(gm.get_submodule(node.target)) if node.op == "call_module" else None
        if lut is not None:
            out.append(LutLayer(node.meta.get("edgebin_layer", node.target), node.target, lut.bits, lut.exponent,
                                lut.codes.numpy(), lut.levels.numpy()))
    return out


def rewrite_lut_onnx(path: Path, layers: list[LutLayer]) -> onnx.ModelProto:
    """Rewrite the ONNX file at `path` (from `export_onnx`) in place, check it and write it atomically."""
    model = onnx.load(str(path))
    rewrite_lut_weights(model, layers)
    onnx.checker.check_model(model, full_check=True)
    atomic_write_bytes(Path(path), model.SerializeToString())
    return model


def rewrite_lut_weights(model: onnx.ModelProto, layers: list[LutLayer]) -> None:
    """Replace each layer's int8 weight initializer with Cast(codes) -> Gather(levels); add the metadata."""
    if not layers:
        return
    graph = model.graph
    before: dict[str, list[onnx.NodeProto]] = {}  # DequantizeLinear name -> nodes to insert before it
    entries = []
    for layer in layers:
        dq = _weight_dequantize(model, layer)
        old, prefix = dq.input[0], f"/{layer.module}/"
        codes_name, levels_name = f"{layer.module}.lut_codes", f"{layer.module}.lut_levels"
        graph.initializer.extend([numpy_helper.from_array(layer.codes.astype(np.uint8), codes_name),
                                  numpy_helper.from_array(layer.levels.astype(np.int8), levels_name)])
        cast = helper.make_node("Cast", [codes_name], [f"{prefix}LutCast_output_0"], name=f"{prefix}LutCast",
                                to=TensorProto.INT32)
        gather = helper.make_node("Gather", [levels_name, cast.output[0]], [f"{prefix}LutGather_output_0"],
                                  name=f"{prefix}LutGather", axis=0)
        before[dq.name] = [cast, gather]
        dq.input[0] = gather.output[0]
        _drop_unused_initializer(graph, old)
        entries.append({"layer": layer.layer, "module": layer.module, "bits": layer.bits,
                        "exponent": layer.exponent, "levels": [int(v) for v in layer.levels],
                        "codes_initializer": codes_name, "levels_initializer": levels_name})
    nodes = [new for node in graph.node for new in (*before.get(node.name, []), node)]
    del graph.node[:]
    graph.node.extend(nodes)
    props = {p.key: p for p in model.metadata_props}
    _add_layer_nodes(props.get("edgebin.layers"), layers)
    entry = props.get(LUT_KEY) or model.metadata_props.add()
    entry.key, entry.value = LUT_KEY, json.dumps(entries)


def _weight_dequantize(model: onnx.ModelProto, layer: LutLayer) -> onnx.NodeProto:
    """The layer's DequantizeLinear of an int8 initializer shaped like its weight, holding levels[codes]."""
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        init = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if (init is not None and node.name.startswith(f"/{layer.module}/") and init.data_type == TensorProto.INT8
                and tuple(init.dims) == layer.codes.shape):
            if not np.array_equal(numpy_helper.to_array(init), layer.levels[layer.codes.astype(np.int64)]):
                raise RuntimeError(f"{layer.layer}: the exported int8 weight is not levels[codes]")
            return node
    raise RuntimeError(f"{layer.layer}: no DequantizeLinear of an int8 weight under /{layer.module}/ in the export")


def _drop_unused_initializer(graph: onnx.GraphProto, name: str) -> None:
    if any(name in node.input for node in graph.node):
        return
    for i, init in enumerate(graph.initializer):
        if init.name == name:
            del graph.initializer[i]
            return


def _add_layer_nodes(prop: onnx.StringStringEntryProto | None, layers: list[LutLayer]) -> None:
    """Append the Cast and Gather node names to each rewritten layer's `onnx_nodes` in `edgebin.layers`."""
    if prop is None:
        return
    records = json.loads(prop.value)
    names = {layer.module: [f"/{layer.module}/LutCast", f"/{layer.module}/LutGather"] for layer in layers}
    for record in records:
        if record.get("module") in names:
            record["onnx_nodes"] = names[record["module"]] + list(record.get("onnx_nodes", []))
    prop.value = json.dumps(records)
