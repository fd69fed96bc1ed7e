"""The host's float kernels around the integer ones: a BatchNorm left in the graph, a global average pool."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgebin.compile import compile_onnx
from edgebin.compile.batch_norm import affine_of
from edgebin.compile.tvm_adapter import const

LLVM = {"kind": "llvm", "mcpu": "native", "num-cores": 1}


def _model(tmp_path, nodes, initializers, out_shape):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 5, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], initializers)
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_batch_norm_folds_into_onnxruntimes_scale_and_shift():
    class Graph:
        def value(self, expr):
            return expr

    class Attrs:
        training, scale, center, epsilon = False, True, True, 0.25

    class Norm:  # batch_norm(x, gamma, beta, mean, var) with constant parameters, as affine_of reads it
        attrs = Attrs()
        args = [None] + [_const(v) for v in ([2.0, -1.0], [0.5, 0.0], [1.0, 3.0], [0.75, 3.75])]

    scale, shift = affine_of(Norm(), Graph())
    # s = gamma / sqrt(var + eps): 2 / 1, -1 / 2; t = beta - mean * s: 0.5 - 2, 0 + 1.5
    np.testing.assert_array_equal(scale, np.array([2.0, -0.5], np.float32))
    np.testing.assert_array_equal(shift, np.array([-1.5, 1.5], np.float32))
    assert scale.dtype == shift.dtype == np.float32


def _const(values):
    return const(np.array(values, np.float32))


def test_compiled_batch_norm_is_one_multiply_and_add_per_element(tmp_path):
    rng = np.random.default_rng(0)
    gamma, beta, mean = (rng.standard_normal(4).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.5, 2.0, 4).astype(np.float32)
    params = [numpy_helper.from_array(a, n) for a, n in zip((gamma, beta, mean, var), ("g", "b", "m", "v"),
                                                              strict=True)]
    node = helper.make_node("BatchNormalization", ["input", "g", "b", "m", "v"], ["y"], epsilon=1e-5)
    artefact = compile_onnx(_model(tmp_path, [node], params, [1, 4, 5, 6]), LLVM, tmp_path / "out", integer=False)
    assert not any("divide" in k["ops"] for k in artefact.kernels)  # Relax's own decomposition divides
    x = rng.standard_normal((3, 4, 5, 6)).astype(np.float32)
    s = (np.float32(1) / np.sqrt(var + np.float32(1e-5))) * gamma
    t = beta - mean * s
    expected = x * s.reshape(1, 4, 1, 1) + t.reshape(1, 4, 1, 1)  # onnxruntime's arithmetic, float32 throughout
    np.testing.assert_allclose(artefact.run(x), expected, rtol=0, atol=2e-6)


@pytest.mark.parametrize("op", ["GlobalAveragePool", "ReduceMean"])
def test_global_average_pool_sums_each_channel_in_order(tmp_path, op):
    node = helper.make_node(op, ["input"], ["y"], **({"axes": [2, 3]} if op == "ReduceMean" else {}))
    artefact = compile_onnx(_model(tmp_path, [node], [], [1, 4, 1, 1]), LLVM, tmp_path / "out", integer=False)
    x = np.random.default_rng(1).standard_normal((2, 4, 5, 6)).astype(np.float32) * 100
    # the channels' sums interleave (schedule), but each sums its 30 values in memory order: float32 cumsum's last
    in_order = np.cumsum(x.reshape(2, 4, 30), axis=2, dtype=np.float32)[..., -1] / np.float32(30)
    np.testing.assert_array_equal(artefact.run(x).reshape(2, 4), in_order)
