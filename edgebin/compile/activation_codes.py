"""The input code ranges that edgebin's QAT export metadata gives its layers, carried on the Relax module from the
importer to the Cortex-M build, which picks bit-serial kernels by them (mcu_bitserial).

    codes = activation_codes(onnx_model)    # [ActivationCodes("stack1.conv1", "<fingerprint>", 0, 3), ...]
    mod = with_codes(mod, codes)            # importer.from_onnx
    codes_of(mod)                           # the same list, after any Relax pass that keeps module attributes

A layer is recognised in the compiled module by its int8 weight's values (`lut_weights.fingerprint`: the sorted
values, so any re-layout of the weight matches).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from edgebin.compile.lut_weights import fingerprint

MODULE_ATTR = "edgebin_activation_codes"  # the Relax module attribute that carries the ranges (JSON)


@dataclass(frozen=True)
class ActivationCodes:
    """A QAT layer's input code range, keyed by the fingerprint of its int8 weight codes."""

    layer: str
    fingerprint: str
    qmin: int
    qmax: int


def activation_codes(model: onnx.ModelProto) -> list[ActivationCodes]:
    """The static input code ranges that the export metadata (`edgebin.layers`) gives its QAT layers: a layer with
    int8 weight codes and a uniform activation quantizer without a dynamic offset. Empty for other models."""
    meta = {prop.key: prop.value for prop in model.metadata_props}
    try:
        layers = json.loads(meta.get("edgebin.layers", "[]"))
    except ValueError:
        return []
    initializers = {init.name: init for init in model.graph.initializer}
    found = []
    for layer in layers if isinstance(layers, list) else []:
        weight = layer.get("weight") if isinstance(layer, dict) else None
        act = layer.get("activation") if isinstance(layer, dict) else None
        init = initializers.get(str(weight.get("codes"))) if isinstance(weight, dict) else None
        if init is None or not isinstance(act, dict) or act.get("dynamic_offset") or act.get("pm1"):
            continue
        qmin, qmax = act.get("qmin"), act.get("qmax")
        values = numpy_helper.to_array(init)
        if not isinstance(qmin, int) or not isinstance(qmax, int) or values.dtype != np.int8:
            continue
        found.append(ActivationCodes(str(layer.get("layer")), fingerprint(values), qmin, qmax))
    return found


def with_codes(mod, codes: list[ActivationCodes]):
    """`mod` (a Relax IRModule) carrying `codes` as the attribute MODULE_ATTR."""
    return mod.with_attr(MODULE_ATTR, json.dumps([asdict(c) for c in codes])) if codes else mod


def codes_of(mod) -> list[ActivationCodes]:
    """The code ranges `importer.from_onnx` left on `mod` (empty when the model had none)."""
    text = (mod.attrs or {}).get(MODULE_ATTR) if mod.attrs is not None else None
    return [ActivationCodes(**d) for d in json.loads(str(text))] if text is not None else []


__all__ = ["MODULE_ATTR", "ActivationCodes", "activation_codes", "codes_of", "with_codes"]
