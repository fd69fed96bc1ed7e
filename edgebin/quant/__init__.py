"""Quantizers, recipes and the INT8 post-training quantization of a captured graph.

    from edgebin.quant import Recipe, quantize_graph, calibrate, freeze
    summary = quantize_graph(gm, Recipe())      # gm from edgebin.capture.capture_graph
    calibrate(gm, x_calibration)
    freeze(gm)                                  # gm is the fake-quant model; export it with edgebin.export
"""

from edgebin.quant.int8 import LayerRecord, QuantSummary, calibrate, freeze, quantize_graph, weights_bytes
from edgebin.quant.recipe import METHODS, CalibrationConfig, FloatConfig, Int8Config, Recipe

__all__ = [
    "METHODS",
    "CalibrationConfig",
    "FloatConfig",
    "Int8Config",
    "LayerRecord",
    "QuantSummary",
    "Recipe",
    "calibrate",
    "freeze",
    "quantize_graph",
    "weights_bytes",
]
