"""edgebin.metrics against hand-computed values and an independent reference (numpy on the same weights)."""

import math

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edgebin.errors import InputShapeError, ModelLoadError
from edgebin.metrics import (
    LatencyStat,
    accuracy,
    agreement,
    run_onnxruntime,
    run_torch,
    time_callable,
    time_onnxruntime,
    time_torch,
)

REFERENCE = np.array([[1, 2, 3, 4], [0, 0, 0, 0], [2, 0, 0, 0]], dtype=np.float32)
CANDIDATE = np.array([[1, 2, 3, 5], [0, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32)
WEIGHT = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def test_accuracy_counts_argmax_hits():
    # argmax per row: 3, 0 (first of the ties), 0; labels 3, 0, 1 -> two hits of three
    assert accuracy(REFERENCE, np.array([3, 0, 1])) == pytest.approx(2 / 3)


def test_accuracy_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="logits must be"):
        accuracy(REFERENCE, np.array([0, 1]))
    with pytest.raises(ValueError, match="no samples"):
        accuracy(np.zeros((0, 4)), np.zeros(0))


def test_agreement_matches_hand_computed_values():
    got = agreement(REFERENCE, CANDIDATE)
    # by hand: argmax 3/3, 0/0, 0/1 -> 2 of 3 agree
    assert got["top1"] == pytest.approx(2 / 3)
    # differences: [0,0,0,-1], [0,0,0,0], [2,-1,0,0]
    assert got["max_abs"] == pytest.approx(2.0)
    assert got["rmse"] == pytest.approx(math.sqrt((1 + 4 + 1) / 12))
    # row 0: 34 / (sqrt(30) sqrt(39)); row 1: both zero -> 1; row 2: orthogonal -> 0
    assert got["cosine"] == pytest.approx((34 / math.sqrt(30 * 39) + 1 + 0) / 3)
    assert got["samples"] == 3


def test_agreement_cosine_of_zero_vectors():
    zero, one = np.zeros((1, 4)), np.array([[0.0, 1.0, 0.0, 0.0]])
    assert agreement(zero, zero)["cosine"] == 1.0
    assert agreement(zero, one)["cosine"] == 0.0


def test_agreement_flattens_each_sample_and_checks_shapes():
    a = REFERENCE.reshape(3, 2, 2)
    assert agreement(a, CANDIDATE.reshape(3, 2, 2)) == agreement(REFERENCE, CANDIDATE)
    with pytest.raises(ValueError, match="differ in shape"):
        agreement(REFERENCE, CANDIDATE[:2])


def test_latency_stat_from_known_durations():
    stat = LatencyStat.from_seconds([0.005, 0.001, 0.003, 0.002, 0.004], engine="x")
    # sorted ms 1..5: median 3; p10 at index 0.4 -> 1.4; p90 at index 3.6 -> 4.6
    assert (stat.median_ms, stat.p10_ms, stat.p90_ms, stat.runs) == pytest.approx((3.0, 1.4, 4.6, 5))
    assert stat.to_dict() == {"engine": "x", "unit": "ms", "median_ms": stat.median_ms, "p10_ms": stat.p10_ms,
                              "p90_ms": stat.p90_ms, "runs": 5, "threads": 1}


def test_time_callable_times_each_run_after_warmup():
    ticks = iter([10.0, 10.001, 20.0, 20.003, 30.0, 30.002])  # runs of 1, 3 and 2 ms
    calls = []
    stat = time_callable(lambda: calls.append(1), warmup=2, repeat=3, engine="fake", clock=lambda: next(ticks))
    assert len(calls) == 5
    assert stat.median_ms == pytest.approx(2.0)
    assert (stat.engine, stat.runs, stat.threads) == ("fake", 3, 1)
    with pytest.raises(ValueError, match="repeat >= 1"):
        time_callable(lambda: None, repeat=0)


def test_torch_helpers_restore_threads_and_mode():
    layer = torch.nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(WEIGHT.T))
    layer.train()
    threads = torch.get_num_threads()
    x = np.random.default_rng(0).normal(size=(5, 4))  # float64 in, run as float32
    np.testing.assert_allclose(run_torch(layer, x, batch=2), x.astype(np.float32) @ WEIGHT, rtol=1e-5, atol=1e-6)
    stat = time_torch(layer, x[:1], warmup=1, repeat=3)
    assert (stat.engine, stat.runs, stat.threads) == ("pytorch", 3, 1)
    assert layer.training and torch.get_num_threads() == threads


def _matmul_onnx(path, batch_dim):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 3])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "matmul", [x], [y],
                              initializer=[numpy_helper.from_array(WEIGHT, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("batch_dim", ["N", 1, 2])  # dynamic batch, one by one, fixed batch of 2 with padding
def test_run_onnxruntime_matches_numpy(tmp_path, batch_dim):
    path = _matmul_onnx(tmp_path / "model.onnx", batch_dim)
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_allclose(run_onnxruntime(path, x, batch=2), x @ WEIGHT, rtol=1e-5, atol=1e-6)


def test_time_onnxruntime_on_one_thread(tmp_path):
    path = _matmul_onnx(tmp_path / "model.onnx", "N")
    stat = time_onnxruntime(path, np.ones((1, 4), np.float32), warmup=1, repeat=4, engine="onnxruntime-fp32")
    assert (stat.engine, stat.runs, stat.threads) == ("onnxruntime-fp32", 4, 1)
    assert 0 < stat.p10_ms <= stat.median_ms <= stat.p90_ms


def test_onnxruntime_errors_name_the_file(tmp_path):
    garbage = tmp_path / "model.onnx"
    garbage.write_bytes(b"not a protobuf \x00\xff")
    with pytest.raises(ModelLoadError, match=r"model\.onnx: onnxruntime cannot load it: .*INVALID_PROTOBUF"):
        run_onnxruntime(garbage, np.ones((1, 4), np.float32))
    with pytest.raises(ModelLoadError, match="missing.onnx: no such ONNX file"):
        run_onnxruntime(tmp_path / "missing.onnx", np.ones((1, 4), np.float32))
    good = _matmul_onnx(tmp_path / "good.onnx", "N")
    with pytest.raises(InputShapeError, match=r"takes \(N, 4\), got samples of shape \(2, 5\)"):
        run_onnxruntime(good, np.ones((2, 5), np.float32))
