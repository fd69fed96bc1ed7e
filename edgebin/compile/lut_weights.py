"""Low-bit weights given as codes into a table of int8 levels (NUPES): folded to int8 for every target, recorded so
that the Cortex-M bundle and the host and Cortex-A libraries can keep them packed.

    model, tables = fold_lut_weights(onnx.load("out/model.onnx"))
    tables[0].layer, tables[0].bits, tables[0].levels   # "c1", 4, int8 levels[0..14]
    tables[0].values                                    # the int8 weight, levels[codes]: what QdqToInt8 sees
    packed = pack_codes(codes_2d, bits=4)               # rows of ceil(K * 4 / 8) bytes, 4 bits a code

edgebin exports a NUPES weight (opset 17) as

    codes (uint8, the weight's shape, values 0..2N) -> Cast(to=INT32) -> Gather(levels (int8 [2N + 1]), axis=0)
      -> DequantizeLinear(scale[O], zero_point 0, axis=0) -> the weight of a Conv / Gemm / MatMul

with N = 2^(b-1) - 1 and b = 2..8, so the weight's int8 value is levels[codes] and the model is an ordinary int8
QDQ model. `fold_lut_weights` replaces each Gather by the int8 initializer levels[codes]: QdqToInt8, the host, the
Cortex-A and the Cortex-M builds then compile it as the int8 model it is. The pattern is recognised structurally;
the model's `edgebin.lut_weights` metadata is informative only. `importer.from_onnx` folds every model it imports
and leaves the tables on the Relax module (`tables_of(mod)`): the Cortex-M build, and the LLVM builds (x86 host,
Cortex-A's TVM runtime; b = 2..4), put the codes back, packed at b bits, for every layer whose int8 weight the matvec
micro-kernel reads (`mcu_lut`); any other layer, and the builds without LUT kernels (TVM's own loops, the Cortex-A
C runtime), run the int8 weight, and the artefact says so (`expanded_layers`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgebin.compile.tvm_adapter import GenericConst, call_op_name, collect, const_array, relax

log = logging.getLogger(__name__)

MODULE_ATTR = "edgebin_lut_weights"  # the Relax module attribute that carries the tables (JSON)
MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class LutTable:
    """One folded weight: its layer, code width, table of int8 levels and the fingerprint of its int8 values.

    The fingerprint hashes the sorted values, so a kernel's weight is recognised after any re-layout (a transpose)."""

    layer: str
    bits: int
    levels: tuple[int, ...]
    shape: tuple[int, ...]
    fingerprint: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def codes_for(self, values: np.ndarray) -> np.ndarray | None:
        """Codes c with levels[c] == values (the first such code where levels repeat); None if a value is not a
        level."""
        return codes_for(values, np.asarray(self.levels, np.int8))

    def to_dict(self) -> dict:
        return {"layer": self.layer, "bits": self.bits, "levels": list(self.levels), "shape": list(self.shape),
                "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class LutWeight:
    """A folded weight with its arrays: `codes` (uint8, the weight's shape) and `levels` (int8)."""

    layer: str
    bits: int
    codes: np.ndarray
    levels: np.ndarray

    @property
    def values(self) -> np.ndarray:
        """The int8 weight, levels[codes]."""
        return self.levels[self.codes.astype(np.int64)]

    def table(self) -> LutTable:
        return LutTable(self.layer, self.bits, tuple(int(v) for v in self.levels), tuple(self.codes.shape),
                        fingerprint(self.values))


def bits_for(levels: int) -> int:
    """The code width b of a table of `levels` entries: the smallest b with 2^b - 1 >= levels."""
    return max(MIN_BITS, int(levels).bit_length())


def fingerprint(values: np.ndarray) -> str:
    """A hash of the sorted int8 values: equal for any permutation of the same weight."""
    data = np.sort(np.asarray(values, np.int8).reshape(-1)).tobytes()
    return hashlib.sha1(data).hexdigest()[:16]


def codes_for(values: np.ndarray, levels: np.ndarray) -> np.ndarray | None:
    """Inverse lookup: uint8 codes c with levels[c] == values, or None when some value is not in `levels`."""
    levels = np.asarray(levels, np.int8)
    first = {}
    for code, level in enumerate(levels.tolist()):
        first.setdefault(level, code)
    lookup = np.full(256, -1, np.int16)
    for level, code in first.items():
        lookup[level + 128] = code
    codes = lookup[np.asarray(values, np.int16) + 128]
    if (codes < 0).any():
        return None
    return codes.astype(np.uint8)


def row_bytes(k: int, bits: int) -> int:
    """Bytes of one packed row of k codes."""
    return -(-k * bits // 8)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """(rows, k) codes -> (rows, ceil(k * bits / 8)) uint8: per row a little-endian bit stream, code i in bits
    [i * bits, (i + 1) * bits), the last byte zero-padded (edgebin_lut.h reads it so)."""
    codes = np.asarray(codes)
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"pack_codes: bits must be {MIN_BITS}..{MAX_BITS}, got {bits}")
    if codes.size and int(codes.max()) >= 1 << bits:
        raise ValueError(f"pack_codes: code {int(codes.max())} does not fit {bits} bits")
    rows, k = codes.shape
    bit_planes = (codes.astype(np.uint8)[:, :, None] >> np.arange(bits, dtype=np.uint8)) & 1  # (rows, k, bits)
    stream = bit_planes.reshape(rows, k * bits)
    stream = np.pad(stream, ((0, 0), (0, row_bytes(k, bits) * 8 - k * bits)))
    return np.packbits(stream, axis=1, bitorder="little")


def unpack_codes(packed: np.ndarray, bits: int, k: int) -> np.ndarray:
    """The inverse of `pack_codes`: (rows, k) uint8 codes."""
    packed = np.asarray(packed, np.uint8)
    stream = np.unpackbits(packed, axis=1, bitorder="little")[:, :k * bits].reshape(len(packed), k, bits)
    return (stream.astype(np.uint16) << np.arange(bits, dtype=np.uint16)).sum(axis=2).astype(np.uint8)


# --- the ONNX fold -------------------------------------------------------------------------------------------


def fold_lut_weights(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[LutWeight]]:
    """(a copy of `model` with every codes -> Cast -> Gather(levels) -> DequantizeLinear weight replaced by the int8
    initializer levels[codes], one LutWeight per folded weight). A model without the pattern comes back as it is."""
    found = list(_lut_gathers(model))
    if not found:
        return model, []
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    names = layer_names(model)
    consumers = _consumers(graph)
    weights, dropped = [], set()
    for gather_at, _, codes, levels in found:
        gather = graph.node[gather_at]
        layer = _layer_of(gather.output[0], consumers, names) or gather.output[0]
        weight = LutWeight(layer, bits_for(len(levels)), codes, levels)
        graph.initializer.append(numpy_helper.from_array(weight.values, gather.output[0]))
        dropped.add(gather_at)
        weights.append(weight)
    folded = {graph.node[at].output[0] for at in dropped}
    for _, cast_at, _, _ in found:  # a Cast that something else reads too stays
        if all(reader.output[0] in folded for reader in consumers[graph.node[cast_at].output[0]]):
            dropped.add(cast_at)
    kept = [_copy(node) for at, node in enumerate(graph.node) if at not in dropped]
    sources = {graph.node[at].input[0] for _, at, _, _ in found} | {graph.node[at].input[0] for at, _, _, _ in found}
    del graph.node[:]
    graph.node.extend(kept)
    used = {name for node in kept for name in node.input} | {out.name for out in graph.output}
    unused = [init for init in graph.initializer if init.name in sources and init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    log.info("folded %d table-coded weight(s) to int8: %s", len(weights),
             ", ".join(f"{w.layer} ({w.bits}-bit)" for w in weights))
    return model, weights


def _lut_gathers(model: onnx.ModelProto):
    """(Gather node index, Cast node index, codes, levels) of every codes -> Cast(INT32) -> Gather(levels, axis 0)
    whose output only DequantizeLinear nodes read, with int8 levels and uint8 codes within the table."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    producers = {out: at for at, node in enumerate(graph.node) for out in node.output}
    consumers = _consumers(graph)
    for at, node in enumerate(graph.node):
        if node.op_type != "Gather" or len(node.input) != 2 or _int_attr(node, "axis", 0) != 0:
            continue
        levels_init, cast_at = inits.get(node.input[0]), producers.get(node.input[1])
        cast = graph.node[cast_at] if cast_at is not None else None
        if levels_init is None or cast is None or cast.op_type != "Cast" or _int_attr(cast, "to") not in (
                onnx.TensorProto.INT32, onnx.TensorProto.INT64):
            continue
        codes_init = inits.get(cast.input[0])
        readers = consumers.get(node.output[0], [])
        if codes_init is None or not readers or any(r.op_type != "DequantizeLinear" or r.input[0] != node.output[0]
                                                    for r in readers):
            continue
        levels, codes = numpy_helper.to_array(levels_init), numpy_helper.to_array(codes_init)
        if levels.dtype != np.int8 or levels.ndim != 1 or codes.dtype != np.uint8:
            log.info("%s: a table lookup, but not int8 levels and uint8 codes; left as it is", node.name)
            continue
        if not MIN_BITS <= bits_for(len(levels)) <= MAX_BITS or (codes.size and int(codes.max()) >= len(levels)):
            log.warning("%s: %d levels or codes past the table; left as it is", node.name, len(levels))
            continue
        yield at, cast_at, codes, levels


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copied = onnx.NodeProto()
    copied.CopyFrom(node)
    return copied


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _layer_of(tensor: str, consumers: dict, names: dict[str, str]) -> str | None:
    """The layer name of the Conv / Gemm / MatMul that reads `tensor` through its DequantizeLinear."""
    for dq in consumers.get(tensor, []):
        for node in consumers.get(dq.output[0], []):
            if node.op_type in ("Conv", "Gemm", "MatMul"):
                return names.get(node.name, node.name or None)
    return None


def layer_names(model: onnx.ModelProto) -> dict[str, str]:
    """ONNX node name -> edgebin layer name, from the export metadata (empty for other exporters)."""
    meta = {prop.key: prop.value for prop in model.metadata_props}
    try:
        layers = json.loads(meta.get("edgebin.layers", "[]"))
    except ValueError:
        return {}
    return {node: layer["layer"] for layer in layers if isinstance(layer, dict) and "layer" in layer
            for node in layer.get("onnx_nodes", [])}


def _int_attr(node: onnx.NodeProto, name: str, default: int | None = None) -> int | None:
    for attr in node.attribute:
        if attr.name == name:
            return int(helper.get_attribute_value(attr))
    return default


# --- the tables on the Relax module ---------------------------------------------------------------------------


def with_tables(mod, tables: list[LutTable]):
    """`mod` (a Relax IRModule) carrying `tables` as the attribute MODULE_ATTR."""
    if not tables:
        return mod
    return mod.with_attr(MODULE_ATTR, json.dumps([t.to_dict() for t in tables]))


def tables_of(mod) -> list[LutTable]:
    """The tables `importer.from_onnx` left on `mod` (empty when the model had none)."""
    text = (mod.attrs or {}).get(MODULE_ATTR) if mod.attrs is not None else None
    if text is None:
        return []
    return [LutTable(d["layer"], int(d["bits"]), tuple(d["levels"]), tuple(d["shape"]), d["fingerprint"])
            for d in json.loads(str(text))]


def match_table(values: np.ndarray, tables: list[LutTable]) -> LutTable | None:
    """The table whose folded weight has exactly these int8 values (any layout), else None."""
    values = np.asarray(values)
    if values.dtype != np.int8:
        return None
    candidates = [t for t in tables if t.size == values.size]
    if not candidates:
        return None
    key = fingerprint(values)
    return next((t for t in candidates if t.fingerprint == key), None)


def weight_kernels(mod, tables: list[LutTable]) -> dict[str, LutTable]:
    """Kernel name -> the table whose folded int8 weight `main` passes it as a constant (after FuseTIR)."""
    found = {}
    for call in collect(mod["main"].body, relax.Call):
        if call_op_name(call) != "relax.call_tir":
            continue
        for arg in call.args[1].fields:
            table = match_table(const_array(arg), tables) if isinstance(arg, GenericConst) else None
            if table is not None:
                found[call.args[0].name_hint] = table
    return found


def expanded_layers(mod, census: list[dict], tables: list[LutTable], reason: str) -> tuple[list[dict], list[dict]]:
    """(census with each kernel that reads a table-coded weight as int8 marked `"weights": "int8 (lutB)"`, one
    record per table: it runs as int8, and why). For the builds that do not pack them (TVM's loops, the Cortex-A C
    runtime, EDGEBIN_HOST_LUT=0)."""
    kernels = weight_kernels(mod, tables)
    marked = [{**record, "weights": f"int8 (lut{kernels[record['name']].bits})"} if record["name"] in kernels
              else record for record in census]
    by_layer = {table.layer: name for name, table in kernels.items()}
    records = [{"layer": t.layer, "bits": t.bits, "form": "int8", "source": "nupes", "kernel": by_layer.get(t.layer),
                "weights": t.size, "codes_bytes": None, "table_bytes": None, "reason": reason} for t in tables]
    return marked, records


__all__ = ["LutTable", "LutWeight", "MODULE_ATTR", "bits_for", "codes_for", "expanded_layers", "fingerprint",
           "fold_lut_weights", "layer_names", "match_table", "pack_codes", "row_bytes", "tables_of", "unpack_codes",
           "weight_kernels", "with_tables"]
