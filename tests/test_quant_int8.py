"""INT8 PTQ on a captured graph: where quantizers go, BatchNorm folding, calibration, and the QDQ export that
onnxruntime must run with the fake-quant model's results."""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgebin.capture import capture_graph
from edgebin.export import export_onnx, read_metadata
from edgebin.loading import LoadedModel
from edgebin.quant import FloatConfig, Recipe, calibrate, freeze, quantize_graph, weights_bytes
from edgebin.quant.modules import ActQuant, QuantConv2d, QuantLinear

SHAPE = (1, 1, 28, 28)


def _capture(model):
    return capture_graph(LoadedModel(module=model, input_shape=SHAPE, source=Path("tiny.pt"), format="state-dict"))


def _calibration(n=64, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *SHAPE[1:]), dtype=np.float32)


def _quantized(model, recipe=None):
    gm = _capture(model)
    summary = quantize_graph(gm, recipe or Recipe())
    return gm, summary


def test_layers_are_swapped_and_batch_norm_folded_exactly(tiny_resnet):
    gm, summary = _quantized(tiny_resnet)
    x = torch.from_numpy(_calibration(4))
    with torch.no_grad():  # before calibration the graph is the float model with BN folded into the convs
        torch.testing.assert_close(gm(x[:1]), tiny_resnet(x[:1]), atol=1e-5, rtol=1e-5)
    targets = {str(n.target) for n in gm.graph.nodes}
    assert not any("batch_norm" in t for t in targets)
    convs = [m for m in gm.modules() if isinstance(m, QuantConv2d)]
    assert len(convs) == 3 and len([m for m in gm.modules() if isinstance(m, QuantLinear)]) == 1
    assert [r.layer for r in summary.layers if r.op in ("conv2d", "linear")] == ["stem", "c1", "c2", "fc"]
    assert summary.fallbacks() == []


def test_quantizers_sit_where_integer_kernels_need_them(tiny_resnet):
    gm, _ = _quantized(tiny_resnet)
    order = [(n.op, str(n.target)) for n in gm.graph.nodes if n.op in ("call_module", "call_function")]
    names = [t if op == "call_function" else type(gm.get_submodule(t)).__name__ for op, t in order]
    # input quantized; conv -> relu -> quantizer (ReLU folds into the clamp); max-pool shares its input's scale;
    # the residual branch's conv output is quantized before the add; the logits stay float.
    assert names == [
        "ActQuant", "QuantConv2d", "aten.relu.default", "ActQuant", "aten.max_pool2d.default", "ActQuant",
        "QuantConv2d", "aten.relu.default", "ActQuant", "QuantConv2d", "ActQuant", "aten.add.Tensor",
        "aten.relu.default", "ActQuant", "aten.adaptive_avg_pool2d.default", "ActQuant",
        "aten.flatten.using_ints", "ActQuant", "QuantLinear",
    ]
    acts = [gm.get_submodule(t) for op, t in order if op == "call_module" and isinstance(gm.get_submodule(t), ActQuant)]
    shared = [a for a in acts if a.shared_with is not None]
    assert len(shared) == 2  # after max-pool and flatten


def test_recipe_can_keep_a_layer_in_float(tiny_resnet):
    gm, summary = _quantized(tiny_resnet, Recipe(overrides={"fc": FloatConfig()}))
    assert [r.layer for r in summary.fallbacks()] == ["fc"]
    calibrate(gm, _calibration())
    freeze(gm)
    fc = [m for m in gm.modules() if isinstance(m, QuantLinear)][0]
    assert fc.mode == "float"


def test_calibrated_model_is_close_to_float_and_weights_are_int8(tiny_resnet):
    gm, _ = _quantized(tiny_resnet)
    fp32_bytes = sum(p.numel() * 4 for p in gm.parameters())
    calibrate(gm, _calibration(128))
    freeze(gm)
    x = torch.from_numpy(_calibration(16, seed=1))
    with torch.no_grad():
        ref, out = tiny_resnet(x), gm(x)
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    conv = [m for m in gm.modules() if isinstance(m, QuantConv2d)][0]
    assert conv.weight_codes.dtype == torch.int8 and conv.weight_codes.abs().max() == 127
    assert weights_bytes(gm) < 0.3 * fp32_bytes


def test_qdq_onnx_runs_in_onnxruntime_like_the_fake_quant_model(tiny_resnet, tmp_path):
    gm, summary = _quantized(tiny_resnet)
    calibrate(gm, _calibration())
    freeze(gm)
    path = tmp_path / "model.onnx"
    model = export_onnx(gm, SHAPE, path, metadata={"edgebin.method": "int8"},
                        layers=[r.to_dict() for r in summary.layers])
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    assert model.opset_import[0].version >= 17
    ops = [n.op_type for n in model.graph.node]
    assert "Identity" not in ops and ops.count("QuantizeLinear") == 8 and "Conv" in ops
    dtypes = {i.name: i.data_type for i in model.graph.initializer}
    assert dtypes["q_stem.weight_codes"] == onnx.TensorProto.INT8
    assert dtypes["q_stem.bias_codes"] == onnx.TensorProto.INT32
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = _calibration(8, seed=2)
    with torch.no_grad():
        for i in range(len(x)):
            expected = gm(torch.from_numpy(x[i : i + 1])).numpy()
            got = session.run(None, {"input": x[i : i + 1]})[0]
            np.testing.assert_allclose(got, expected, atol=1e-5)
    meta = read_metadata(path)
    assert meta["edgebin.method"] == "int8"
    layers = __import__("json").loads(meta["edgebin.layers"])
    assert layers[0]["layer"] == "stem" and layers[0]["onnx_nodes"]


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_both_calibration_methods_give_valid_scales(tiny_resnet, method):
    from edgebin.quant import CalibrationConfig

    gm, _ = _quantized(tiny_resnet, Recipe(calibration=CalibrationConfig(method=method, percentile=99.9)))
    calibrate(gm, _calibration())
    freeze(gm)
    for act in (m for m in gm.modules() if isinstance(m, ActQuant)):
        assert float(act.scale) > 0 and act.zero_point.dtype == torch.uint8  # codes 0..255
