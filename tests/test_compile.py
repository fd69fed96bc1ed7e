"""Host compilation of small torch models, checked against onnxruntime on the same ONNX files.

Models: a CNN (3 x conv-BN-ReLU + linear) and a residual block (add, maxpool, depthwise conv, global average pool),
exported with torch.onnx (opset 17) and quantized with onnxruntime's quantize_static (QDQ, int8, per channel).
Error bound for int8: the QDQ graph's last op is quantized, so outputs are multiples of its scale; the compiled
model may differ from onnxruntime by at most 2 of those LSBs (measured: 0, bit-exact, on these models).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from torch import nn

from edgebin.compile import HostArtefact, compile_onnx, from_onnx, load_artefact, supported_ops
from edgebin.compile.importer import load_onnx
from edgebin.errors import InputShapeError, ModelLoadError, UnsupportedOpsError

LLVM = {"kind": "llvm", "mcpu": "native", "num-cores": 1}


class SmallCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers = []
        for cin, cout, stride in ((1, 8, 1), (8, 16, 2), (16, 32, 2)):
            layers += [nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


class ResidualNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 1, 1))
        self.pool = nn.MaxPool2d(2)
        self.dw = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=16), nn.ReLU6(), nn.Conv2d(16, 24, 1))
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        x = self.stem(x)
        x = self.pool(torch.relu(x + self.block(x)))
        return self.head(torch.flatten(self.dw(x).mean((2, 3), keepdim=True), 1))


MODELS = {"cnn": (SmallCnn, (1, 1, 28, 28)), "residual": (ResidualNet, (1, 3, 16, 16))}


class _RandomData(CalibrationDataReader):
    def __init__(self, shape, n: int = 16) -> None:
        rng = np.random.default_rng(0)
        self.batches = iter([{"input": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)])

    def get_next(self):
        return next(self.batches, None)


def _export(name: str, directory) -> tuple:
    make, shape = MODELS[name]
    torch.manual_seed(0)
    model = make().eval()
    for module in model.modules():  # non-trivial BN statistics, folded into the convs by the exporter
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    fp32, qdq = directory / f"{name}.onnx", directory / f"{name}_qdq.onnx"
    torch.onnx.export(model, torch.randn(*shape), str(fp32), opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["logits"])
    quantize_static(str(fp32), str(qdq), _RandomData(shape), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return model, fp32, qdq


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """{name: (torch model, fp32 path, qdq path, int8 artefact)}, plus the cnn's fp32 artefact."""
    directory = tmp_path_factory.mktemp("models")
    out = {}
    for name in MODELS:
        model, fp32, qdq = _export(name, directory)
        out[name] = (model, fp32, qdq, compile_onnx(qdq, LLVM, directory / f"{name}_int8"))
    out["cnn_fp32"] = compile_onnx(out["cnn"][1], LLVM, directory / "cnn_fp32")
    return out


def _onnxruntime(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])


def _inputs(artefact: HostArtefact, n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *artefact.input_shape[1:])).astype(np.float32)


def _output_scale(path) -> float:
    """Scale of the DequantizeLinear that produces the graph output."""
    model = onnx.load(str(path))
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    last = next(n for n in model.graph.node if n.output[0] == model.graph.output[0].name)
    assert last.op_type == "DequantizeLinear"
    return float(init[last.input[1]])


@pytest.mark.parametrize("name", list(MODELS))
def test_int8_artefact_agrees_with_onnxruntime(compiled, name):
    _, _, qdq, artefact = compiled[name]
    x = _inputs(artefact, 100)
    ours, ref = artefact.run(x), _onnxruntime(qdq, x)
    assert ours.shape == (100, 10) and ours.dtype == np.float32
    assert (ours.argmax(1) == ref.argmax(1)).mean() >= 0.99
    assert np.abs(ours - ref).max() <= 2 * _output_scale(qdq) + 1e-6


@pytest.mark.parametrize("name", list(MODELS))
def test_int8_convs_and_gemms_compute_int8xint8_to_int32(compiled, name):
    artefact = compiled[name][3]
    convs = {"cnn": 3, "residual": 5}[name]
    # the first conv reads the quantized input as uint8 (code + 128): the host's row kernels take unsigned inputs
    assert artefact.op_counts() == {"conv2d": {"uint8xint8->int32": 1, "int8xint8->int32": convs - 1},
                                    "matmul": {"int8xint8->int32": 1}}
    assert artefact.kernel_counts()["float"] == 0
    assert artefact.kernel_counts()["convert"] == 1  # the float input is quantized once
    macs = [k for k in artefact.kernels if {"conv2d", "matmul"} & set(k["ops"])]
    assert macs and all(k["kind"] == "int8" for k in macs)


def test_int8_weights_are_stored_in_one_byte(compiled):
    model, _, _, artefact = compiled["cnn"]
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    channels = sum(m.bias.numel() for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))
    # int8 weights + int32 bias + one float32 requant multiplier per output channel
    assert artefact.weights_bytes() == weights + 4 * channels + 4 * channels
    assert compiled["cnn_fp32"].weights_bytes() == 4 * (weights + channels)


def test_fp32_artefact_matches_onnxruntime(compiled):
    artefact = compiled["cnn_fp32"]
    x = _inputs(artefact, 20)
    np.testing.assert_allclose(artefact.run(x), _onnxruntime(compiled["cnn"][1], x), atol=1e-4, rtol=1e-4)
    assert artefact.kernel_counts()["int8"] == 0
    assert artefact.op_counts()["conv2d"] == {"float32xfloat32->float32": 3}


def test_artefact_round_trips_through_disk(compiled):
    artefact = compiled["residual"][3]
    loaded = load_artefact(artefact.directory)
    assert (loaded.input_shape, loaded.output_shape, loaded.kernels) == (
        artefact.input_shape, artefact.output_shape, artefact.kernels)
    x = _inputs(artefact, 5)
    np.testing.assert_array_equal(loaded.run(x), artefact.run(x))
    manifest = json.loads((artefact.directory / "artefact.json").read_text())
    assert manifest["kernel_counts"] == artefact.kernel_counts() and manifest["integer"] is True
    assert not list(artefact.directory.glob(".model.so.*"))  # no temporary left behind


def test_run_outputs_are_fresh_copies_from_any_thread(compiled):
    """run() reuses one staging input a thread (tvm_adapter.staging_tensor) and copies outputs out of the VM's
    memory: an earlier result survives later calls, one sample equals its row of a batch, threads do not mix."""
    artefact = compiled["residual"][3]
    x = _inputs(artefact, 6, seed=3)
    batch = artefact.run(x)
    first = artefact.run(x[:1])
    artefact.run(x[1:2])
    np.testing.assert_array_equal(first, batch[:1])  # not overwritten by the next call
    first[:] = 0
    np.testing.assert_array_equal(artefact.run(x[:1]), batch[:1])  # nor does writing into it reach the VM
    with ThreadPoolExecutor(3) as pool:
        rows = list(pool.map(lambda i: [artefact.run(x[i : i + 1]) for _ in range(20)], range(6)))
    for i, outputs in enumerate(rows):
        for out in outputs:
            np.testing.assert_array_equal(out, batch[i : i + 1])


def test_latency_is_measured_per_run(compiled):
    artefact = compiled["cnn"][3]
    times = artefact.latency_s(_inputs(artefact, 1)[0], warmup=1, repeat=3)
    assert len(times) == 3 and all(0 < t < 1 for t in times)


def test_wrong_input_shape_is_rejected(compiled):
    artefact = compiled["cnn"][3]
    with pytest.raises(InputShapeError, match=r"\(1, 1, 28, 28\)"):
        artefact.run(np.zeros((2, 3, 28, 28), np.float32))


def test_every_unsupported_op_is_listed_with_its_nodes():
    nodes = [
        helper.make_node("LSTM", ["x", "w", "r"], ["y1"], name="/rnn/LSTM", hidden_size=4),
        helper.make_node("LSTM", ["y1s", "w", "r"], ["y2"], name="/rnn2/LSTM", hidden_size=4),
        helper.make_node("FancyOp", ["x"], ["z"], name="/fancy", domain="com.example"),
        helper.make_node("Relu", ["x"], ["r1"], name="/relu"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3])],
                              [helper.make_tensor_value_info("r1", TensorProto.FLOAT, [1, 2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    with pytest.raises(UnsupportedOpsError) as err:
        from_onnx(model, {"x": [1, 2, 3]})
    message = str(err.value)
    assert "LSTM (nodes /rnn/LSTM, /rnn2/LSTM)" in message
    assert "com.example.FancyOp (node /fancy)" in message
    assert "Relu" not in message and "edgebin compile --list-ops" in message
    assert err.value.exit_code == 6


def test_supported_ops_lists_the_frontend_converters():
    ops = supported_ops()
    assert {"Conv", "Gemm", "QuantizeLinear", "DequantizeLinear", "Add"} <= set(ops)
    assert "LSTM" not in ops and ops == sorted(ops)


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\xff")
    with pytest.raises(ModelLoadError, match="model.onnx"):
        load_onnx(bad)
    with pytest.raises(ModelLoadError, match="missing.onnx"):
        load_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ModelLoadError, match="no compiled host artefact"):
        load_artefact(tmp_path)
