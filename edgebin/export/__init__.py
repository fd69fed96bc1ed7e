"""ONNX export: plain ONNX that onnxruntime runs, with edgebin's low-bit facts in its metadata.

    export_onnx(gm, (1, 1, 28, 28), out / "model.onnx", metadata={"edgebin.method": "int8"})
"""

from edgebin.export.onnx import INPUT_NAME, OPSET, OUTPUT_NAME, export_onnx, read_metadata

__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAME", "export_onnx", "read_metadata"]
