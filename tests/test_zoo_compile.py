"""Every zoo architecture goes through INT8 PTQ, QDQ export and the host compiler, and the compiled artefact
agrees with onnxruntime; what stays float is listed, never hidden."""

from pathlib import Path

import numpy as np
import pytest
import torch

from edgebin import zoo
from edgebin.capture import capture_graph
from edgebin.compile import compile_onnx
from edgebin.export import export_onnx
from edgebin.loading import LoadedModel
from edgebin.metrics import run_onnxruntime
from edgebin.quant import Recipe, calibrate, freeze, quantize_graph

SHAPE = (1, 1, 28, 28)
HOST = {"kind": "llvm", "mcpu": "native", "num-cores": 1}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ds_cnn", "mobilenet_v1_025", "tiny_vit"])
def test_zoo_model_compiles_to_int8_and_agrees_with_onnxruntime(name, tmp_path):
    torch.manual_seed(0)
    model = zoo.create(name, input_size=28).eval()
    gm = capture_graph(LoadedModel(module=model, input_shape=SHAPE, source=Path(name), format="state-dict"))
    summary = quantize_graph(gm, Recipe())
    x = np.random.default_rng(0).standard_normal((48, *SHAPE[1:])).astype(np.float32)
    calibrate(gm, x[:32])
    freeze(gm)
    export_onnx(gm, SHAPE, tmp_path / "model.onnx")
    artefact = compile_onnx(tmp_path / "model.onnx", HOST, tmp_path / "x86")
    expected, got = run_onnxruntime(tmp_path / "model.onnx", x[32:]), artefact.run(x[32:])
    assert (expected.argmax(1) == got.argmax(1)).mean() == 1.0
    np.testing.assert_allclose(got, expected, atol=0.05 * np.abs(expected).max())
    convs = artefact.op_counts().get("conv2d", {})
    assert set(convs) == {"uint8xint8->int32"}
    if name == "tiny_vit":  # attention (softmax, layer norm, activation x activation matmul) stays float
        assert artefact.kernel_counts()["float"] > 0
        ops = {r.op for r in summary.fallbacks()}
        assert {"softmax", "layer_norm", "matmul"} <= ops
    else:
        assert artefact.kernel_counts()["float"] == 0 and summary.fallbacks() == []
