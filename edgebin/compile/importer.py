"""ONNX -> Relax, after one scan that reports every operator edgebin cannot compile.

    model = load_onnx(Path("out/model.onnx"))          # ModelLoadError naming the file if it is not ONNX
    mod = from_onnx(model, {"input": [1, 1, 28, 28]})  # UnsupportedOpsError listing every unsupported op

Table-coded low-bit weights (NUPES: codes -> Cast -> Gather(levels) -> DequantizeLinear) are folded to their int8
values before the conversion, so every target compiles them as int8; their tables ride on the module
(`lut_weights.tables_of(mod)`) for the Cortex-M build, which packs them again; so do the QAT layers' input code
ranges from the export metadata (`activation_codes.codes_of(mod)`), which choose its bit-serial kernels.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import onnx

from edgebin.compile import activation_codes, lut_weights
from edgebin.compile import tvm_adapter as tvm_api
from edgebin.errors import InputShapeError, ModelLoadError, UnsupportedOpsError

log = logging.getLogger(__name__)

_ONNX_DOMAINS = ("", "ai.onnx")


def supported_ops() -> list[str]:
    """ONNX operator types (default domain) that the importer can convert, sorted."""
    return tvm_api.onnx_convert_map_ops()


def load_onnx(path: Path) -> onnx.ModelProto:
    """Read and check an ONNX file; ModelLoadError naming the file if it is missing, not ONNX or invalid."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf raises DecodeError, RuntimeWarning or ValueError depending on the damage
        raise ModelLoadError(f"{path} is not an ONNX model ({type(err).__name__}: {err})") from None
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else "invalid model"
        raise ModelLoadError(f"{path} fails onnx.checker: {first_line}") from None
    return model


def input_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    """Static shapes of the graph inputs (initializers excluded); InputShapeError for a symbolic dimension."""
    initializers = {init.name for init in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if any(not dim.HasField("dim_value") for dim in dims):
            names = [str(dim.dim_value) if dim.HasField("dim_value") else dim.dim_param or "?" for dim in dims]
            raise InputShapeError(
                f"input {value.name!r} has a symbolic shape [{', '.join(names)}]; export with a static shape"
            )
        shapes[value.name] = [int(dim.dim_value) for dim in dims]
    return shapes


def check_supported(model: onnx.ModelProto) -> None:
    """Raise one UnsupportedOpsError listing every unsupported operator type and the nodes that use it."""
    supported = set(supported_ops())
    missing: dict[str, list[str]] = {}
    for node in _all_nodes(model.graph):
        op = node.op_type if node.domain in _ONNX_DOMAINS else f"{node.domain}.{node.op_type}"
        if op not in supported:
            missing.setdefault(op, []).append(node.name or "<unnamed>")
    if missing:
        parts = [
            f"{op} ({'node' if len(nodes) == 1 else 'nodes'} {', '.join(nodes)})"
            for op, nodes in sorted(missing.items())
        ]
        raise UnsupportedOpsError(
            f"unsupported ONNX operators: {'; '.join(parts)}; supported: see `edgebin compile --list-ops`"
        )


def from_onnx(
    model: onnx.ModelProto,
    shape_dict: dict[str, list[int]] | None = None,
    keep_params_in_input: bool = False,
) -> tvm_api.tvm.IRModule:
    """Relax module of `model`; weights become constants unless `keep_params_in_input`. Table-coded weights are
    folded to int8 first, their tables left on the module (lut_weights), with the input code ranges of QAT layers
    (activation_codes)."""
    check_supported(model)
    shapes = shape_dict if shape_dict is not None else input_shapes(model)
    model, folded = lut_weights.fold_lut_weights(model)
    log.debug("importing ONNX graph with inputs %s", shapes)
    mod = tvm_api.onnx_to_relax(model, shapes, keep_params_in_input)
    mod = activation_codes.with_codes(mod, activation_codes.activation_codes(model))
    return lut_weights.with_tables(mod, [weight.table() for weight in folded])


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of `graph`, including those in subgraphs (If / Loop bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _all_nodes(sub)
