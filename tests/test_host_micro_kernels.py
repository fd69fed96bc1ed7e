"""Host int8 kernels through the C micro-kernels (host.schedule_cpu_loops + cpu_kernels/): outputs bit-identical to
the plain loops (`mcu_schedule.plain_loops()`) and within test_compile's 2 LSB of onnxruntime, for int8 and uint8
activations; the kernels still counted as int8, and the library carrying the micro-kernels it calls.
"""

from __future__ import annotations

import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from torch import nn

from edgebin.compile import compile_onnx, host, importer, mcu_schedule
from edgebin.compile import tvm_adapter as tvm_api

LLVM = {"kind": "llvm", "mcpu": "native", "num-cores": 1}
SHAPE = (1, 3, 12, 12)


class Net(nn.Module):
    """Rows of 12 pixels (stride-1 convs: one edgebin_matvecc call a row), a strided conv and a 1x1 conv
    (edgebin_matvect on a gathered row of 6), a depthwise conv (plain loops), a residual add and a linear layer
    (edgebin_matvec, one column)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 1, 1))
        self.down = nn.Sequential(nn.Conv2d(16, 24, 3, 2, 1), nn.ReLU(), nn.Conv2d(24, 24, 3, 1, 1, groups=24),
                                  nn.ReLU(), nn.Conv2d(24, 20, 1))
        self.head = nn.Linear(20 * 6 * 6, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(torch.flatten(self.down(x), 1))


class _Data(CalibrationDataReader):
    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.batches = iter([{"input": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(8)])

    def get_next(self):
        return next(self.batches, None)


@pytest.fixture(scope="module", params=["int8", "uint8"])
def qdq(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    fp32, path = directory / "fp32.onnx", directory / "qdq.onnx"
    torch.onnx.export(Net().eval(), torch.randn(*SHAPE), str(fp32), opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["logits"])
    activations = QuantType.QInt8 if request.param == "int8" else QuantType.QUInt8
    quantize_static(str(fp32), str(path), _Data(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=activations, weight_type=QuantType.QInt8)
    return path


def test_micro_kernels_are_bit_identical_to_plain_loops_and_onnxruntime(qdq, tmp_path):
    artefact = compile_onnx(qdq, LLVM, tmp_path / "micro")
    with mcu_schedule.plain_loops():
        plain = compile_onnx(qdq, LLVM, tmp_path / "plain")
    x = np.random.default_rng(1).standard_normal((16, *SHAPE[1:])).astype(np.float32)
    ours = artefact.run(x)
    np.testing.assert_array_equal(ours, plain.run(x))
    session = ort.InferenceSession(str(qdq), providers=["CPUExecutionProvider"])
    ref = np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
    last = onnx.load(str(qdq)).graph
    scale = next(onnx.numpy_helper.to_array(t) for t in last.initializer
                 if t.name == next(n for n in last.node if n.output[0] == last.output[0].name).input[1])
    assert np.abs(ours - ref).max() <= 2 * float(scale) + 1e-6  # onnxruntime: a tie may round the other way
    assert artefact.kernel_counts() == plain.kernel_counts() and artefact.kernel_counts()["float"] == 0
    assert sum(artefact.op_counts()["conv2d"].values()) == 6
    symbols = subprocess.run(["nm", "-D", str(tmp_path / "micro" / host.LIBRARY)], capture_output=True, text=True,
                             check=True).stdout
    assert all(f" T edgebin_{name}_" in symbols for name in ("matvecc", "matvect", "matvec"))
    assert "edgebin_matvec" not in subprocess.run(["nm", "-D", str(tmp_path / "plain" / host.LIBRARY)],
                                                  capture_output=True, text=True, check=True).stdout


def test_every_dense_int8_conv_and_gemm_calls_a_micro_kernel(qdq):
    model = importer.load_onnx(qdq)
    with tvm_api.make_target(LLVM):
        lowered = host.lower(importer.from_onnx(model, importer.input_shapes(model)), integer=True)
    calls = {gvar.name_hint: [str(c.args[0].value) for c in tvm_api.collect(func.body, tvm_api.IRCall)
                              if mcu_schedule.is_matvec_call(c)]
             for gvar, func in lowered.mod.functions.items() if isinstance(func, tvm_api.tirx.PrimFunc)}
    dense = {name for name, found in calls.items() if found}
    convs = [r["name"] for r in lowered.kernels if "conv2d" in r["ops"] or "matmul" in r["ops"]]
    assert len(dense) == len(convs) - 1  # all but the depthwise conv
    kinds = {call.split("_")[1] for found in calls.values() for call in found}
    assert kinds == {"matvecc", "matvect", "matvec"}  # stride-1 convs, the strided and 1x1 ones, the gemm
    assert sum(lowered.macs[name] for name in convs) > 0 and all(r["kind"] != "float" for r in lowered.kernels)
