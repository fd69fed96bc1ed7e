"""MetaSchedule tuning on the host: the database lands in the output folder, the tuned artefact still computes what
onnxruntime does, and compiling again takes the schedules from the database instead of tuning."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgebin import pipeline
from edgebin.compile import compile_onnx
from edgebin.compile.tune import TuneConfig, tune_config
from edgebin.errors import UsageError

HOST = {"kind": "llvm", "mcpu": "native", "num-cores": 1}


class ConvDense(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


@pytest.fixture(scope="module")
def conv_dense_onnx(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tune") / "conv_dense.onnx"
    torch.onnx.export(ConvDense().eval(), (torch.randn(1, 1, 8, 8),), str(path), input_names=["input"],
                      output_names=["logits"], opset_version=17, dynamo=False)
    return path


def test_tuned_artefact_matches_onnxruntime_and_second_compile_reuses_the_database(conv_dense_onnx, tmp_path):
    config = TuneConfig(trials=3, work_dir=tmp_path / "x86" / "tuning", strategy="replay-trace")
    first = compile_onnx(conv_dense_onnx, HOST, tmp_path / "x86", tune=config)

    for name in ("database_workload.json", "database_tuning_record.json", "budget.json"):
        assert (config.work_dir / name).stat().st_size > 0, name
    assert first.tuning["trials_before"] == 0 and first.tuning["trials_run"] >= 3
    assert any("conv2d" in k for k in first.tuning["tuned_kernels"])
    x = np.random.default_rng(1).standard_normal((3, 1, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(str(conv_dense_onnx), providers=["CPUExecutionProvider"])
    reference = np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
    np.testing.assert_allclose(first.run(x), reference, rtol=1e-5, atol=1e-5)

    again = compile_onnx(conv_dense_onnx, HOST, tmp_path / "again", tune=config)  # same database, no new trials
    assert again.tuning["trials_run"] == 0
    assert again.tuning["trials_before"] >= 3
    assert again.tuning["tuned_kernels"] == first.tuning["tuned_kernels"]
    np.testing.assert_allclose(again.run(x), reference, rtol=1e-5, atol=1e-5)


def test_tune_options_are_checked(conv_dense_onnx, tmp_path):
    with pytest.raises(UsageError, match="--tune-device rpc://"):  # a board's candidates must run on the board
        pipeline.compile(conv_dense_onnx, target="rpi4", out_dir=tmp_path, tune=8)
    with pytest.raises(UsageError, match="trials >= 0"):
        TuneConfig(trials=-1, work_dir=tmp_path)
    with pytest.raises(UsageError, match="evolutionary"):
        TuneConfig(trials=8, work_dir=tmp_path, strategy="annealing")
    assert tune_config(0, tmp_path / "tuning") is None  # no --tune and no database: compile untuned
    assert tune_config(8, tmp_path / "tuning").trials == 8


@pytest.mark.slow
def test_rpc_runner_times_candidates_on_a_tvm_rpc_server(conv_dense_onnx, tmp_path):
    """The board's path with the host standing in: candidates uploaded to TVM's RPC server on loopback, timed there."""
    import socket

    from tvm import rpc

    from edgebin.compile.tune import rpc_runner

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = rpc.Server(host="127.0.0.1", port=port, port_end=port + 1, silent=True)
    try:
        config = TuneConfig(trials=3, work_dir=tmp_path / "tuning", runner=rpc_runner("127.0.0.1", port),
                            strategy="replay-trace")
        artefact = compile_onnx(conv_dense_onnx, HOST, tmp_path / "x86", tune=config)
    finally:
        server.terminate()
    assert artefact.tuning["trials_run"] >= 3
    assert artefact.tuning["tuned_kernels"]  # only candidates that ran on the server give a schedule
    x = np.random.default_rng(2).standard_normal((2, 1, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(str(conv_dense_onnx), providers=["CPUExecutionProvider"])
    reference = np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
    np.testing.assert_allclose(artefact.run(x), reference, rtol=1e-5, atol=1e-5)
