"""ONNX export: plain ONNX that onnxruntime runs, with edgebin's low-bit facts in its metadata.

    export_onnx(gm, (1, 1, 28, 28), out / "model.onnx", metadata={"edgebin.method": "int8"})   # PTQ int8 graph
    export_qat(model, (1, 1, 28, 28), out / "model.onnx")       # a model from edgebin.quant.qat.prepare
"""

from edgebin.export.onnx import INPUT_NAME, OPSET, OUTPUT_NAME, export_onnx, read_metadata
from edgebin.export.qat import close_samples, export_qat, initializer_bytes

__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAME", "close_samples", "export_onnx", "export_qat", "initializer_bytes",
           "read_metadata"]
