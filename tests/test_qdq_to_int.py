"""QdqToInt8: the rewrite's IR, and its numerics against onnxruntime on hand-made QDQ graphs.

The graphs are built with onnx.helper in the exact form edgebin's exporter writes (activations int8 per tensor,
weights int8 per channel with zero point 0, int32 bias at scale sx*sw, ReLU/Clip kept between op and Q, float
logits out). onnxruntime's default session runs them with its integer kernels (QLinearConv, QGemm, ...), which is
the reference here: with float requant the compiled artefact must match it exactly.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgebin.compile import host
from edgebin.compile.qdq_to_int import QdqToInt8
from edgebin.compile.tvm_adapter import const, relax, tvm

LLVM = {"kind": "llvm", "mcpu": "native", "num-cores": 1}


class QdqGraph:
    """Builds an ONNX graph in edgebin's QDQ form, one layer per call."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.count = 0

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def init(self, array, prefix: str = "c") -> str:
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def qdq(self, x: str, scale: float, zp: int) -> str:
        s, z = self.init(np.float32(scale), "s"), self.init(np.int8(zp), "z")
        return self.node("DequantizeLinear", [self.node("QuantizeLinear", [x, s, z]), s, z])

    def dq_const(self, array, scale, zp, axis: int = 0) -> str:
        return self.node("DequantizeLinear", [self.init(array, "w"), self.init(scale, "s"), self.init(zp, "z")],
                         axis=axis)

    def weights(self, shape) -> tuple[np.ndarray, np.ndarray]:
        return (self.rng.integers(-127, 128, shape).astype(np.int8),
                (self.rng.random(shape[0]) * 0.02 + 0.002).astype(np.float32))

    def bias(self, sx: float, ws: np.ndarray) -> str:
        b = self.rng.integers(-2000, 2000, ws.size).astype(np.int32)
        return self.dq_const(b, (np.float32(sx) * ws).astype(np.float32), np.zeros(ws.size, np.int32))

    def conv(self, x, sx, cin, cout, *, k=3, group=1, act=None, sy=0.05, zy=-20, w_zp=None) -> str:
        w, ws = self.weights((cout, cin // group, k, k))
        w_zp = np.zeros(cout, np.int8) if w_zp is None else w_zp
        y = self.node("Conv", [x, self.dq_const(w, ws, w_zp), self.bias(sx, ws)], pads=[k // 2] * 4, group=group)
        if act == "relu":
            y = self.node("Relu", [y])
        elif act == "relu6":
            y = self.node("Clip", [y, self.init(np.float32(0)), self.init(np.float32(6))])
        return self.qdq(y, sy, zy)

    def linear(self, x, sx, k, n, *, matmul=False) -> str:
        w, ws = self.weights((n, k))
        if matmul:  # MatMul + Add: weight stored (K, N), per-channel along axis 1
            wt = self.dq_const(np.ascontiguousarray(w.T), ws, np.zeros(n, np.int8), axis=1)
            return self.node("Add", [self.node("MatMul", [x, wt]), self.bias(sx, ws)])
        return self.node("Gemm", [x, self.dq_const(w, ws, np.zeros(n, np.int8)), self.bias(sx, ws)], transB=1)

    def model(self, out: str, in_shape, out_shape) -> onnx.ModelProto:
        inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, in_shape)]
        outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, out_shape)]
        graph = helper.make_graph(self.nodes, "qdq", inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def edgebin_form_model(*, matmul: bool = False, w_zp=None, fallback: str | None = None) -> onnx.ModelProto:
    """conv+ReLU, conv, residual add+ReLU, maxpool, depthwise conv+ReLU6, 1x1 conv, GAP, flatten, linear."""
    g = QdqGraph()
    x = g.qdq("input", 0.0413, 5)
    a = g.conv(x, 0.0413, 3, 8, act="relu", sy=0.0291, zy=-128, w_zp=w_zp)
    b = g.conv(a, 0.0291, 8, 8, sy=0.0537, zy=4)
    r = g.qdq(g.node("Relu", [g.node("Add", [a, b])]), 0.0619, -128)
    if fallback:
        r = g.qdq(g.node(fallback, [r]), 0.0071, -128)
    p = g.qdq(g.node("MaxPool", [r], kernel_shape=[2, 2], strides=[2, 2]), 0.0619 if not fallback else 0.0071, -128)
    d = g.conv(p, 0.0619 if not fallback else 0.0071, 8, 8, group=8, act="relu6", sy=6 / 255, zy=-128)
    c = g.conv(d, 6 / 255, 8, 16, k=1, act="relu", sy=0.0493, zy=-128)
    m = g.qdq(g.node("GlobalAveragePool", [c]), 0.0217, -100)
    f = g.qdq(g.node("Flatten", [m], axis=1), 0.0217, -100)
    return g.model(g.linear(f, 0.0217, 16, 10, matmul=matmul), [1, 3, 12, 12], [1, 10])


def onnxruntime_outputs(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def compile_model(model: onnx.ModelProto, tmp_path, name: str, **kwargs):
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path, host.compile_onnx(path, LLVM, tmp_path / name, **kwargs)


# --- the rewrite, as IR ------------------------------------------------------------------------------------------


def _conv_relu_before() -> tvm.IRModule:
    """What the ONNX front end makes of DQ(x) -> Conv(DQ(W), DQ(b)) -> Relu -> Q -> DQ (zx = 3, padding 1)."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 1, 4, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            xq = bb.emit(relax.op.quantize(x, const(0.5, "float32"), const(3, "int8"), axis=1))
            dx = bb.emit(relax.op.dequantize(xq, const(0.5, "float32"), const(3, "int8"), axis=1))
            dw = bb.emit(relax.op.dequantize(const(W), const(W_SCALE), const(np.zeros(2, np.int8)), axis=0))
            conv = bb.emit(relax.op.nn.conv2d(dx, dw, padding=[1, 1, 1, 1]))
            db = bb.emit(relax.op.dequantize(const(B), const(np.float32(0.5) * W_SCALE), const(np.zeros(2, np.int32)),
                                             axis=0))
            biased = bb.emit(relax.op.add(conv, bb.emit(relax.op.reshape(db, (1, 2, 1, 1)))))
            yq = bb.emit(relax.op.quantize(bb.emit(relax.op.nn.relu(biased)), const(0.75, "float32"),
                                           const(-5, "int8"), axis=1))
            out = bb.emit_output(relax.op.dequantize(yq, const(0.75, "float32"), const(-5, "int8"), axis=1))
        bb.emit_func_output(out)
    return bb.get()


def _conv_relu_expected() -> tvm.IRModule:
    """pad with zx, int8 conv -> int32, bias - zx*sum(W), float requant, ReLU as the lower clip bound zy. The
    input, quantized from the function's float parameter, comes as uint8 with zx = 3 + 128 (the codes + 128)."""
    bias = (B.astype(np.int64) - 131 * W.astype(np.int64).sum(axis=(1, 2, 3))).astype(np.int32).reshape(1, 2, 1, 1)
    mult = ((np.float32(0.5) * W_SCALE) / np.float32(0.75)).astype(np.float32).reshape(1, 2, 1, 1)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 1, 4, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            xq = bb.emit(relax.op.quantize(x, const(0.5, "float32"), const(np.array(131, np.uint8)), axis=1,
                                           out_dtype="uint8"))
            padded = bb.emit(relax.op.nn.pad(xq, [0, 0, 0, 0, 1, 1, 1, 1], pad_value=131.0))
            acc = bb.emit(relax.op.nn.conv2d(padded, const(W), padding=[0, 0, 0, 0], out_dtype="int32"))
            acc = bb.emit(relax.op.add(acc, const(bias)))
            scaled = bb.emit(relax.op.multiply(bb.emit(relax.op.astype(acc, "float32")), const(mult)))
            shifted = bb.emit(relax.op.add(bb.emit(relax.op.round(scaled)), const(-5.0, "float32")))
            yq = bb.emit(relax.op.astype(bb.emit(relax.op.clip(shifted, -5, 127)), "int8"))
            out = bb.emit_output(relax.op.dequantize(yq, const(0.75, "float32"), const(-5, "int8"), axis=1))
        bb.emit_func_output(out)
    return bb.get()


W = np.arange(-9, 9, dtype=np.int8).reshape(2, 1, 3, 3)
W_SCALE = np.array([0.25, 0.125], np.float32)
B = np.array([10, -4], np.int32)


def test_conv_relu_becomes_int8_conv_with_folded_zero_point():
    after = relax.transform.DeadCodeElimination()(QdqToInt8()(_conv_relu_before()))
    tvm.ir.assert_structural_equal(after, _conv_relu_expected())


def test_unknown_requant_mode_is_rejected():
    with pytest.raises(ValueError, match="requant must be one of"):
        QdqToInt8(requant="double")


# --- numerics against onnxruntime's integer kernels --------------------------------------------------------------


@pytest.mark.parametrize("matmul", [False, True], ids=["gemm", "matmul_add"])
def test_edgebin_form_matches_onnxruntime_exactly(tmp_path, matmul):
    path, artefact = compile_model(edgebin_form_model(matmul=matmul), tmp_path, "m")
    x = np.random.default_rng(1).standard_normal((100, 3, 12, 12)).astype(np.float32)
    np.testing.assert_array_equal(artefact.run(x), onnxruntime_outputs(path, x))
    # the first conv reads the quantized model input as uint8 (code + 128)
    assert artefact.op_counts() == {"conv2d": {"uint8xint8->int32": 1, "int8xint8->int32": 3},
                                    "matmul": {"int8xint8->int32": 1}}
    assert artefact.kernel_counts()["float"] == 0


def test_fixed_point_requant_matches_onnxruntime_exactly(tmp_path):
    path, artefact = compile_model(edgebin_form_model(), tmp_path, "m", requant="fixed")
    x = np.random.default_rng(2).standard_normal((100, 3, 12, 12)).astype(np.float32)
    np.testing.assert_array_equal(artefact.run(x), onnxruntime_outputs(path, x))
    assert {"int32"} <= {d for k in artefact.kernels for d in k["constants"]}  # integer multipliers
    convs = [k for k in artefact.kernels if "conv2d" in k["ops"]]
    assert convs and not any("float32" in k["constants"] for k in convs)


def _tie_model() -> onnx.ModelProto:
    """1x1 conv with sx = sw = 1, sy = 2: every odd accumulator is an exact .5 tie after requant."""
    g = QdqGraph()
    x = g.qdq("input", 1.0, 0)
    w = g.dq_const(np.ones((1, 1, 1, 1), np.int8), np.ones(1, np.float32), np.zeros(1, np.int8))
    b = g.dq_const(np.zeros(1, np.int32), np.ones(1, np.float32), np.zeros(1, np.int32))
    y = g.qdq(g.node("Conv", [x, w, b]), 2.0, 0)
    return g.model(y, [1, 1, 1, 8], [1, 1, 1, 8])


@pytest.mark.parametrize("requant", ["float", "fixed"])
def test_ties_round_half_to_even_like_quantizelinear(tmp_path, requant):
    path, artefact = compile_model(_tie_model(), tmp_path, "tie", requant=requant)
    x = np.array([[[[-5, -3, -1, 1, 3, 5, 7, 9]]]], np.float32)
    ours, ref = artefact.run(x).ravel(), onnxruntime_outputs(path, x).ravel()
    assert ref.tolist() == [-4, -4, 0, 0, 4, 4, 8, 8]  # x/2 rounded half to even, times sy = 2
    assert ours.tolist() == ref.tolist()


def test_asymmetric_weights_stay_float_and_say_why(tmp_path, caplog):
    w_zp = np.array([1, 0, 0, 0, 0, 0, 0, 0], np.int8)
    with caplog.at_level(logging.INFO, logger="edgebin.compile.qdq_to_int"):
        path, artefact = compile_model(edgebin_form_model(w_zp=w_zp), tmp_path, "asym")
    assert "asymmetric int8 weights" in caplog.text
    assert artefact.op_counts()["conv2d"] == {"float32xfloat32->float32": 1, "int8xint8->int32": 3}
    assert artefact.kernel_counts()["float"] >= 1
    x = np.random.default_rng(3).standard_normal((20, 3, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(artefact.run(x), onnxruntime_outputs(path, x), atol=0.0217 * 127 * 0.022 * 2)


def test_float_fallback_op_is_counted_as_float(tmp_path):
    path, artefact = compile_model(edgebin_form_model(fallback="Sigmoid"), tmp_path, "fallback")
    float_kernels = [k for k in artefact.kernels if k["kind"] == "float"]
    assert len(float_kernels) == 1 and "sigmoid" in float_kernels[0]["ops"]
    assert all(sig in ("int8xint8->int32", "uint8xint8->int32") for op in artefact.op_counts().values() for sig in op)
    x = np.random.default_rng(4).standard_normal((20, 3, 12, 12)).astype(np.float32)
    ours, ref = artefact.run(x), onnxruntime_outputs(path, x)
    assert (ours.argmax(1) == ref.argmax(1)).mean() >= 0.95
