"""What the C bundle says about itself: `bundle.json` and the quantization defines of `model.h`.

    manifest = bundle_manifest(model, target_cfg, graph, plan, lowered, workspace, SOURCES)
    manifest["kernels"][0]   # {"symbol": "__tvm_ffi_fused_...", "macs": 56448, "layer": "stem", ...}

Kernels are listed per call, in execution order (a kernel called twice appears twice, same symbol). `macs`
counts the multiply-accumulates of conv and matmul kernels only (a layer norm's sum of squares is not a MAC here).
A call's `layer` pairs it with an ONNX Conv/Gemm/MatMul node of the same MACs and weight size, keeping both in
order (`match_layers`); edgebin's layer name replaces the node name when the export metadata (`edgebin.layers`)
has one.
A kernel paired with no node (an average pool that the int8 rewrite turned into a depthwise conv, say) gets `null`.
Low-bit weights: `lut_weights` lists each table-coded (NUPES) layer and each int8 weight of at most 16 values that
a matvec kernel reads (mcu_lut) with the form it runs in, packed b-bit codes ("lut4", its kernel's `kind` too) or
"int8" with the reason, and the kernel reading it says so in `weights`; a palette record gets its kernel's layer.
`bitserial` lists each low-bit weight that mcu_bitserial considered: "bitserial" (its kernel's `kind` too) with
its weight and activation planes and `planes_bytes`, or "int8" with the reason.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from edgebin.compile.lut_weights import layer_names
from edgebin.compile.mcu_graph import CONST, Graph
from edgebin.compile.memory_plan import Plan

SCHEMA_VERSION = 1
_LINEAR_OPS = ("conv1d", "conv2d", "conv3d", "conv2d_transpose", "matmul", "dense", "batch_matmul", "binary_conv2d")


def bundle_manifest(model: onnx.ModelProto, target_cfg: dict, graph: Graph, plan: Plan, lowered: Any,
                    workspace_bytes: int, sources: tuple[str, ...]) -> dict[str, Any]:
    """The bundle.json record of docs/mcu-bundle.md (stable keys)."""
    census = {record["name"]: record for record in lowered.kernels}
    luts = {r["kernel"]: r for r in getattr(lowered, "lut_layers", []) if r["kernel"] is not None}
    luts |= {r["kernel"]: r for r in getattr(lowered, "bitserial_layers", []) if r["form"] != "int8"}
    lifetimes = graph.lifetimes()
    parts = getattr(lowered, "layer_parts", {})
    macs_per_call, keys = [], []
    for call in graph.calls:
        ops = census.get(call.kernel, {}).get("ops", [])
        macs = int(lowered.macs.get(call.kernel, 0)) if any(op in _LINEAR_OPS for op in ops) else 0
        weight = max((math.prod(v.shape) for v in call.args if v.kind == CONST), default=0)  # the largest constant
        if call.kernel in luts:  # its weight is packed (codes and a table, bit planes): the ONNX weight's elements
            weight = luts[call.kernel]["weights"]
        macs_per_call.append(macs)
        keys.append(parts.get(call.kernel) or [(macs, weight) if macs else None])  # binary: the ONNX weights' elements
    layers = _joined_layers(keys, match_layers([key for call_keys in keys for key in call_keys],
                                               _onnx_linear_layers(model)))
    kernels = []
    for step, (call, macs, layer) in enumerate(zip(graph.calls, macs_per_call, layers, strict=True)):
        record = census.get(call.kernel, {})
        kernels.append({
            "symbol": call.symbol,
            "name": call.kernel,
            "kind": record.get("kind", "data"),
            "ops": record.get("ops", []),
            "macs": macs,
            "layer": layer,
            "output_bytes": sum(call.args[i].nbytes for i in call.outputs),
            "live_bytes": sum(graph.tensor_bytes[name] for name, (first, last) in lifetimes.items()
                              if first <= step <= last and not (name in plan.reuses and first == step)),
            **({"weights": record["weights"]} if "weights" in record else {}),
            **({"packed_weight_bytes": _packed_weight_bytes(call, len(parts.get(call.kernel, [0])))}
               if record.get("ops") == ["binary_conv2d"] else {}),
        })
    graph_input, graph_output = _real_inputs(model)[0], model.graph.output[0]
    return {
        "schema_version": SCHEMA_VERSION,
        "target": str(target_cfg.get("name", "cortex-m")),
        "input": {"name": graph_input.name, "shape": list(graph.input.shape), "dtype": graph.input.dtype},
        "output": {"name": graph_output.name, "shape": list(graph.output.shape), "dtype": graph.output.dtype},
        "arena_bytes": plan.arena_bytes,
        "arena_lower_bound_bytes": plan.lower_bound_bytes,
        "workspace_bytes": workspace_bytes,
        "weights_bytes": graph.weights_bytes(),
        "integer": bool(lowered.integer),
        "requant": "fixed" if lowered.integer else None,
        "macs": sum(k["macs"] for k in kernels),
        "kernels": kernels,
        "tensors": [{"name": name, "offset": plan.offsets[name], "bytes": graph.tensor_bytes[name],
                     "first_call": first, "last_call": last,
                     **({"in_place_of": plan.reuses[name]} if name in plan.reuses else {})}
                    for name, (first, last) in lifetimes.items()],
        "sources": list(sources),
        **({"lut_weights": _named(lowered.lut_layers, kernels)} if getattr(lowered, "lut_layers", None) else {}),
        **({"bitserial": _named(lowered.bitserial_layers, kernels)}
           if getattr(lowered, "bitserial_layers", None) else {}),
    }


def _joined_layers(keys: list[list[tuple | None]], layers: list[str | None]) -> list[str | None]:
    """Per call, the layer names `match_layers` gave its keys (one per ONNX conv it computes), joined by " + " (a
    binary conv and its shortcut), or None where one is unnamed."""
    joined, at = [], 0
    for call_keys in keys:
        names = layers[at : at + len(call_keys)]
        at += len(call_keys)
        joined.append(None if None in names else " + ".join(names))
    return joined


def _packed_weight_bytes(call, weights: int) -> int:
    """A binary conv call's packed weight bits in flash: its first `weights` constants (binary.py passes the input
    bits and the weights of each conv it computes before the epilogue's tables)."""
    return sum(int(v.nbytes) for v in [v for v in call.args if v.kind == CONST][:weights])


def _named(lut_layers: list[dict[str, Any]], kernels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The low-bit weight records, each palette one (`layer` null: mcu_lut sees kernels, one record per call in
    `main`'s order) named by the layer of its kernel's call, the calls of a kernel taken in order."""
    layers: dict[str, list[str | None]] = {}
    for kernel in kernels:
        layers.setdefault(kernel["name"], []).append(kernel["layer"])
    named = []
    for record in lut_layers:
        if record["layer"] is None and layers.get(record["kernel"]):
            record = {**record, "layer": layers[record["kernel"]].pop(0)}
        named.append(record)
    return named


def match_layers(keys: list[tuple | None], nodes: list[tuple[str, tuple]]) -> list[str | None]:
    """Layer name per call: the longest order-preserving pairing of calls and ONNX nodes with equal keys (LCS),
    then any key left unpaired on exactly one call and one node (a shortcut conv emitted out of ONNX order).

    A key is (MACs, weight elements); a call with key None (no MACs) is never paired."""
    n, m = len(keys), len(nodes)
    best = [[0] * (m + 1) for _ in range(n + 1)]  # best[i][j]: most pairs within calls[i:] and nodes[j:]
    for i in range(n - 1, -1, -1):
        for j in range(m - 1, -1, -1):
            pair = best[i + 1][j + 1] + 1 if keys[i] is not None and keys[i] == nodes[j][1] else 0
            best[i][j] = max(pair, best[i + 1][j], best[i][j + 1])
    layers: list[str | None] = [None] * n
    i = j = 0
    while i < n and j < m:
        if keys[i] is not None and keys[i] == nodes[j][1] and best[i][j] == best[i + 1][j + 1] + 1:
            layers[i], i, j = nodes[j][0], i + 1, j + 1
        elif best[i + 1][j] >= best[i][j + 1]:
            i += 1
        else:
            j += 1
    paired = set(layers)
    left = [(name, key) for name, key in nodes if name not in paired]
    for i, key in enumerate(keys):
        calls = [k for k, other in enumerate(keys) if other == key and layers[k] is None]
        names = [name for name, other in left if other == key]
        if key is not None and layers[i] is None and len(calls) == 1 and len(names) == 1:
            layers[i] = names[0]
    return layers


def quant_defines(model: onnx.ModelProto) -> str:
    """`#define EDGEBIN_INPUT_SCALE ...` lines for a quantized input and a dequantized output ('' for float)."""
    consts = _constants(model)
    graph_input, graph_output = _real_inputs(model)[0].name, model.graph.output[0].name
    lines = []
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] == graph_input:
            lines += _qparam_lines("INPUT", node, consts, "input quantization: q = round(x / scale) + zero_point")
        elif node.op_type == "DequantizeLinear" and node.output[0] == graph_output:
            lines += _qparam_lines("OUTPUT", node, consts, "output quantization: y = scale * (q - zero_point)")
    return "\n".join(lines) + "\n" if lines else ""


def _qparam_lines(which: str, node, consts: dict[str, np.ndarray], meaning: str) -> list[str]:
    scale = consts.get(node.input[1])
    zero = consts.get(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.int8)
    if scale is None or zero is None or scale.size != 1 or zero.size != 1:
        return []  # per-channel or computed at run time: nothing simple to publish
    return [f"/* {meaning}, q in {zero.dtype} */",
            f"#define EDGEBIN_{which}_SCALE {float(scale):.9g}f",
            f"#define EDGEBIN_{which}_ZERO_POINT ({int(zero)})"]


def _onnx_linear_layers(model: onnx.ModelProto) -> list[tuple[str, tuple[int, int]]]:
    """(layer name, (MACs, constant weight elements)) of every Conv/Gemm/MatMul node with known shapes, in order."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)  # data_prop: through Shape -> Reshape
    shapes: dict[str, list[int]] = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [int(d.dim_value) for d in dims]
    shapes.update({init.name: list(init.dims) for init in model.graph.initializer})
    producers = {out: node for node in model.graph.node for out in node.output}
    names = layer_names(model)
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or node.output[0] not in shapes:
            continue
        out, a, w = shapes[node.output[0]], shapes.get(node.input[0]), shapes.get(node.input[1])
        if node.op_type == "Conv" and w is not None:
            per_output = math.prod(w[1:])
        elif node.op_type == "Gemm" and a is not None:
            trans_a = any(attr.name == "transA" and attr.i for attr in node.attribute)
            per_output = a[0] if trans_a else a[-1]
        elif node.op_type == "MatMul" and a is not None:
            per_output = a[-1]
        else:
            continue
        weight = math.prod(w) if w is not None and _is_constant(node.input[1], producers, shapes, model) else 0
        found.append((names.get(node.name, node.name), (math.prod(out) * per_output, weight)))
    return found


def layer_weights(model: onnx.ModelProto) -> dict[str, int]:
    """Layer name -> elements of its constant weight, for every Conv/Gemm/MatMul node with known shapes (the int8
    bytes of the weight: a table-coded one counted as its expanded int8 weight)."""
    return {name: weight for name, (_, weight) in _onnx_linear_layers(model)}


def _is_constant(name: str, producers: dict, shapes: dict, model: onnx.ModelProto) -> bool:
    """True when `name` is an initializer, or one seen through DequantizeLinear/Transpose/Reshape/Identity/Cast, or
    a Gather of constants (a table-coded weight, lut_weights)."""
    initializers = {init.name for init in model.graph.initializer}
    while name not in initializers:
        node = producers.get(name)
        if node is None or node.op_type not in ("DequantizeLinear", "Transpose", "Reshape", "Identity", "Constant",
                                                "Cast", "Gather"):
            return False
        if node.op_type == "Constant":
            return True
        if node.op_type == "Gather" and not _is_constant(node.input[1], producers, shapes, model):
            return False
        name = node.input[0]
    return True


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    consts = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    consts[node.output[0]] = numpy_helper.to_array(attr.t)
    return consts


def _real_inputs(model: onnx.ModelProto) -> list:
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


__all__ = ["SCHEMA_VERSION", "bundle_manifest", "layer_weights", "match_layers", "quant_defines"]
