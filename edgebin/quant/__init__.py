"""Quantizers, recipes and the INT8 post-training quantization of a captured graph.

    from edgebin.quant import Recipe, quantize_graph, calibrate, freeze
    summary = quantize_graph(gm, Recipe())      # gm from edgebin.capture.capture_graph
    calibrate(gm, x_calibration)
    freeze(gm)                                  # gm is the fake-quant model; export it with edgebin.export

NUPES (b-bit power-exponent weight codes read through an int8 table) continues that flow on the frozen graph:

    nupes.quantize_nupes(gm, Recipe.for_method("nupes", weight_bits=4), x_calibration)   # edgebin.quant.nupes

Quantization-aware training (StatsQ, LSQ, TBT, binary, ternary) lives in `edgebin.quant.qat`:

    model = qat.prepare(model, Recipe.for_method("statsq", weight_bits=2, activation_bits=2))
"""

from edgebin.quant.int8 import LayerRecord, QuantSummary, calibrate, freeze, quantize_graph, weights_bytes
from edgebin.quant.recipe import (
    METHODS,
    BinaryConfig,
    CalibrationConfig,
    FloatConfig,
    Int8Config,
    LsqConfig,
    NupesConfig,
    Recipe,
    StatsQConfig,
    TbtConfig,
    TernaryConfig,
)

__all__ = [
    "METHODS",
    "BinaryConfig",
    "CalibrationConfig",
    "FloatConfig",
    "Int8Config",
    "LayerRecord",
    "LsqConfig",
    "NupesConfig",
    "QuantSummary",
    "Recipe",
    "StatsQConfig",
    "TbtConfig",
    "TernaryConfig",
    "calibrate",
    "freeze",
    "quantize_graph",
    "weights_bytes",
]
