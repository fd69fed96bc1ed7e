"""Export a QAT model (StatsQ, LSQ, TBT, binary, ternary; `edgebin.quant.qat.prepare`) to ONNX that onnxruntime runs.

    qat.init_quantizers(model, batch)                  # or train; BiPer: set_biper_stage(model, 2) first
    export_qat(model, (1, 1, 28, 28), out / "model.onnx", metadata={"edgebin.recipe": json.dumps(recipe.to_dict())})
    layers = json.loads(read_metadata(out / "model.onnx")["edgebin.layers"])

The graph is standard opset 17 (`edgebin.export.lowbit` gives the form of each quantizer): weights are int8
initializers of their integer codes, dequantized with one scale per output channel (StatsQ: odd codes 2k+1 with
scale s/2n; at 8 bits, where 2k+1 reaches ±255, k with scale s/n and a code offset of 0.5); activations are the
exact fake-quant arithmetic, QuantizeLinear/DequantizeLinear with a Clip on the codes where the quantizer is
uniform, `Where(x >= 0, 1, -1)` where it is binary (ONNX `Sign` maps 0 to 0; every edgebin binarizer maps it
to +1). Biases, BatchNorm and unquantized layers stay float. A binary layer's weights take 1 byte each in the
file (a quarter of FP32); packing them to 1 bit is the compiler's job, and the metadata says which tensors can be.

Metadata (`model.metadata_props`): `edgebin.version`, `edgebin.method` (statsq, lsq, tbt, binary, ternary, or
"mixed"; 8-bit first/last layers count as LSQ and are not the method), `edgebin.estimator` (binary only),
`edgebin.sign_convention`, and `edgebin.layers`, a JSON list with one object per QAT layer:

    {"layer": "stack1.conv1", "module": "stack1.conv1", "op": "conv2d", "kind": "binary", "method": "binary",
     "estimator": "ste", "weight_bits": 1, "activation_bits": 1, "compute_node": "/stack1/conv1/Conv",
     "onnx_nodes": [...],
     "weight": {"kind": "binary", "bits": 1, "pm1": true, "sign_zero": 1, "qmin": -1, "qmax": 1, "scale": [...16],
                "scale_axis": 0, "code_offset": 0.0, "codes": "<int8 initializer>", "dtype": "int8",
                "tensor": "<dequantized weight>", "node": "<its producer>", ...},
     "activation": {"kind": "binary", "bits": 1, "pm1": true, "sign_zero": 1, "scale": 1.0, "shift": [...16],
                    "shift_axis": -3, "offset": null, "dynamic_offset": false, "tensor": "<conv input>", ...}}

QKR attention blocks give one record with the parts "qk" (a weight), "activation", "t", "attn" and "v_out".

A weight is scale[c] · (code + code_offset). A tensor with `pm1` true holds scale · c with c in {-1, +1}
(weights: scale per output channel; activations: c = sign(x + shift), sign(0) = +1), so it packs one bit per
element, bit 1 = +1. Ternary tensors hold codes in {-1, 0, +1}. Other activations: code = clamp(round((x +
shift - offset) / scale), qmin, qmax), value = scale · code + offset; `dynamic_offset` means offset =
min(x + shift) over the whole input tensor, batch included, at run time (TBT's unsigned 2-bit activations, as
in PyTorch). Axes count from the end of the input (-3: channels of NCHW, -1: features); a 1-D activation scale
is per token along dim -2. The nodes and weight initializers of binary and ternary layers also carry a doc
string with the same facts.

Tolerance: onnxruntime and the PyTorch fake-quant model in eval mode compute the same arithmetic on the same
constants (`freeze_quantizers(model)` reproduces the model in PyTorch to the last bit, 8-bit StatsQ weights to
1 ulp), so they differ only by float summation order inside conv and matmul kernels, about 1e-7 relative
(measured on the test models: at most 2e-6 absolute, logits up to 5). Where onnxruntime runs a DequantizeLinear
-> Conv -> QuantizeLinear group as one integer QLinearConv (a conv feeding the next quantizer directly), its
exact integer sum and float requantization stay within the same bound. The documented agreement, which
`close_samples` checks and the tests assert:

- argmax equal on every input of the evaluation set;
- on at least CLOSE_FRACTION (95 %) of the inputs, every logit within LOGIT_TOLERANCE · (1 + max |logit|),
  LOGIT_TOLERANCE = 1e-4.

Why not every input: a summation difference can move a pre-activation across a rounding threshold of the next
quantizer (or across 0 before a sign), which changes that activation by a whole quantization step, so that
input's logits can move by a few percent. It takes a pre-activation within ~1e-7 of a threshold, so it touches
few inputs (none in 28 runs of 64 random inputs over the seven tested methods; one input in one other TBT W2A2
run), more often at low activation precision, where a step is large. It cannot be removed: the PyTorch
reference itself sums in float.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from edgebin import __version__
from edgebin.atomic import atomic_write_bytes
from edgebin.export.lowbit import FrozenPart, FrozenWeight, freeze_quantizers
from edgebin.export.onnx import trace_onnx
from edgebin.quant.qat import QATConv2d, QATLinear, QKRAttention
from edgebin.quant.qat.quantizer import SIGN_ZERO
from edgebin.quant.recipe import Int8Config

log = logging.getLogger(__name__)

LOGIT_TOLERANCE = 1e-4  # per logit, times 1 + max |logit| of the sample; see the module docstring
CLOSE_FRACTION = 0.95  # samples within LOGIT_TOLERANCE; the others had an activation code flipped by float rounding
SIGN_CONVENTION = "sign(0) = +1; a tensor with pm1 = true packs one bit per element, bit 1 = +1"
_COMPUTE_OPS = ("Conv", "Gemm", "MatMul")


def export_qat(model: nn.Module, input_shape: tuple[int, ...], path: Path, *,
               metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """Export the QAT-prepared `model` (eval-mode semantics) for one input of `input_shape`; write it atomically
    to `path` and return it. `metadata` entries are added to (and override) edgebin's own."""
    frozen, parts = freeze_quantizers(model)
    scopes = _call_scopes(frozen, input_shape)
    onnx_model = trace_onnx(frozen, input_shape)
    layers = _layer_records(frozen, parts, onnx_model, scopes)
    _annotate(onnx_model, layers)
    props = {"edgebin.version": __version__, **_method(layers), "edgebin.sign_convention": SIGN_CONVENTION,
             "edgebin.layers": json.dumps(layers), **(metadata or {})}
    for key, value in props.items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx_model.producer_name, onnx_model.producer_version = "edgebin", __version__
    onnx.checker.check_model(onnx_model, full_check=True)
    atomic_write_bytes(Path(path), onnx_model.SerializeToString())
    return onnx_model


def _unqualified(name: str) -> str:
    """The exporter's scope name of a module: its qualified name from the last non-numeric atom on."""
    atoms = name.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isnumeric():
            return ".".join(atoms[i:])
    return name


def _call_scopes(module: nn.Module, input_shape: tuple[int, ...]) -> dict[str, str]:
    """Module name -> the prefix of its ONNX node names ('/stack1/conv1/'), from the call stack of one forward."""
    names = {id(m): n for n, m in module.named_modules() if n}
    stack: list[str] = []
    scopes: dict[str, str] = {}

    def enter(m: nn.Module, _: object) -> None:
        stack.append(_unqualified(names[id(m)]))
        scopes.setdefault(names[id(m)], "/" + "/".join(stack) + "/")

    def leave(*_: object) -> None:
        stack.pop()

    hooks = [h for n, m in module.named_modules() if n
             for h in (m.register_forward_pre_hook(enter), m.register_forward_hook(leave))]
    try:
        with torch.no_grad():
            module(torch.zeros(tuple(input_shape)))
    finally:
        for h in hooks:
            h.remove()
    return scopes


def _values(t: Tensor | None) -> float | list[float] | None:
    """A tensor as JSON numbers, each the shortest decimal that reads back as the same float32."""
    if t is None:
        return None
    values = [float(str(v)) for v in t.detach().float().reshape(-1).numpy()]
    return values[0] if t.dim() == 0 else values


def _tensor_record(part: FrozenPart, nodes: list[onnx.NodeProto]) -> dict:
    """The metadata of one quantized tensor (see the module docstring)."""
    info = part.info
    rec: dict = {"kind": info.kind, "bits": info.bits, "note": info.note}
    if part.frozen is None:
        return rec
    rec.update(pm1=info.pm1, sign_zero=SIGN_ZERO, qmin=info.qmin, qmax=info.qmax, signed=info.signed,
               scale=_values(part.frozen.scale), tensor=nodes[-1].output[0] if nodes else None,
               node=nodes[-1].name if nodes else None)
    if isinstance(part.frozen, FrozenWeight):
        codes = next((n.input[0] for n in nodes if n.op_type == "DequantizeLinear"), None)
        rec.update(scale_axis=0, code_offset=part.frozen.code_offset, codes=codes, dtype="int8")
    else:
        scale_axis = -2 if info.scale is not None and info.scale.dim() == 1 else None  # None: per tensor
        rec.update(scale_axis=scale_axis, shift=_values(info.shift), offset=_values(info.offset),
                   shift_axis=None if info.shift is None else -info.shift.dim(),
                   offset_axis=None if info.offset is None else -info.offset.dim(),
                   dynamic_offset=info.dynamic_offset)
    return rec


def _layer_records(frozen: nn.Module, parts: list[FrozenPart], model: onnx.ModelProto,
                   scopes: dict[str, str]) -> list[dict]:
    """One metadata record per QAT layer or QKR block, in the order `freeze_quantizers` met them."""
    def nodes_in(module: str) -> list[onnx.NodeProto]:
        prefix = scopes.get(module)
        return [n for n in model.graph.node if prefix and n.name.startswith(prefix)]

    layers: dict[str, dict] = {}
    for part in parts:
        if part.layer not in layers:
            layers[part.layer] = _layer_header(frozen, part.layer, nodes_in(part.layer), scopes)
        rec, part_nodes = layers[part.layer], nodes_in(part.module)
        rec[part.part] = _tensor_record(part, part_nodes)
        # a QKR block calls its `v` layer's weight quantizer but not the layer: its nodes come from its parts
        rec["onnx_nodes"] += [n.name for n in part_nodes if n.name not in rec["onnx_nodes"]]
    order = {n.name: i for i, n in enumerate(model.graph.node)}
    for rec in layers.values():
        rec["onnx_nodes"].sort(key=order.__getitem__)
    missing = [name for name, rec in layers.items() if not rec["onnx_nodes"]]
    if missing:
        log.warning("no ONNX nodes found for %s; their metadata has no node names", ", ".join(missing))
    return list(layers.values())


def _layer_header(frozen: nn.Module, name: str, nodes: list[onnx.NodeProto], scopes: dict[str, str]) -> dict:
    module = frozen.get_submodule(name)
    config = getattr(module, "config", None)
    kind = "custom" if config is None else "lsq" if isinstance(config, Int8Config) else config.kind
    op = "conv2d" if isinstance(module, QATConv2d) else "linear" if isinstance(module, QATLinear) \
        else "attention" if isinstance(module, QKRAttention) else type(module).__name__
    own = [n for n in nodes if n.op_type in _COMPUTE_OPS
           and not any(n.name.startswith(p) for m, p in scopes.items() if m.startswith(f"{name}."))]
    act_bits = getattr(config, "activation_bits", None)
    return {"layer": name, "module": name, "op": op, "kind": kind, "method": kind,
            "estimator": getattr(config, "estimator", None), "weight_bits": getattr(config, "weight_bits", None),
            "activation_bits": act_bits if act_bits != 32 else None,
            "compute_node": own[0].name if len(own) == 1 else None, "onnx_nodes": [n.name for n in nodes]}


def _method(layers: list[dict]) -> dict[str, str]:
    """edgebin.method (and edgebin.estimator): the kind of the layers that are not 8-bit first/last layers."""
    inner = {rec["kind"] for rec in layers if not (rec["kind"] == "lsq" and rec["weight_bits"] == 8)}
    kinds = inner or {rec["kind"] for rec in layers} or {"float"}
    props = {"edgebin.method": kinds.pop() if len(kinds) == 1 else "mixed"}
    estimators = sorted({rec["estimator"] for rec in layers if rec["estimator"]})
    if estimators:
        props["edgebin.estimator"] = ",".join(estimators)
    return props


def _describe(rec: dict) -> str:
    if rec.get("pm1"):
        return f"{rec['bits']}-bit binary: scale * c, c in {{-1, +1}}, sign(0) = +1 (bit 1 = +1)"
    if rec["kind"] == "ternary":
        return "ternary: scale * c, c in {-1, 0, +1}"
    return f"{rec['kind']} {rec['bits']}-bit codes in [{rec.get('qmin')}, {rec.get('qmax')}]"


def _annotate(model: onnx.ModelProto, layers: list[dict]) -> None:
    """Doc strings on the nodes and codes of binary and ternary layers: what `edgebin.layers` says about them."""
    nodes = {n.name: n for n in model.graph.node}
    inits = {i.name: i for i in model.graph.initializer}
    for rec in layers:
        tensors = {k: v for k, v in rec.items() if isinstance(v, dict) and v.get("kind") in ("binary", "ternary")}
        if not tensors:
            continue
        summary = "; ".join(f"{part} {_describe(t)}" for part, t in tensors.items())
        if rec["compute_node"]:
            nodes[rec["compute_node"]].doc_string = f"edgebin {rec['layer']}: {summary}"
        for part, t in tensors.items():
            if t.get("node"):
                nodes[t["node"]].doc_string = f"edgebin {rec['layer']} {part}: {_describe(t)}"
            if t.get("codes") in inits:
                inits[t["codes"]].doc_string = f"edgebin {rec['layer']} {part} codes: {_describe(t)}"


def close_samples(onnx_logits: np.ndarray, torch_logits: np.ndarray) -> np.ndarray:
    """Per sample (row), whether every ONNX logit is within LOGIT_TOLERANCE · (1 + max |PyTorch logit|) of PyTorch's."""
    onnx_logits, torch_logits = (np.asarray(a).reshape(len(a), -1) for a in (onnx_logits, torch_logits))
    tolerance = LOGIT_TOLERANCE * (1 + np.abs(torch_logits).max(axis=1, keepdims=True))
    return (np.abs(onnx_logits - torch_logits) <= tolerance).all(axis=1)


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all initializers (weights, scales, BatchNorm parameters) as stored in the file."""
    return sum(numpy_helper.to_array(i).nbytes for i in model.graph.initializer)


__all__ = ["CLOSE_FRACTION", "LOGIT_TOLERANCE", "SIGN_CONVENTION", "close_samples", "export_qat", "initializer_bytes"]
