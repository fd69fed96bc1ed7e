"""Requantization equals onnxruntime's integer kernels bit for bit, in float32 and in integers only.

The references are float32 arithmetic as numpy computes it and onnxruntime itself (its QLinearAdd kernel on every
pair of codes, and a small uint8 QDQ model that its CPU EP runs entirely with QLinearConv, QLinearAdd,
QLinearGlobalAveragePool and QGemm), never the code's own earlier output.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgebin.compile import host
from edgebin.compile import tvm_adapter as tvm_api
from edgebin.compile.qdq_to_int import QParams
from edgebin.compile.requant import (
    NumpyOps,
    QLinearAddSpec,
    Requantizer,
    round_f32_half_even,
)
from edgebin.compile.tvm_adapter import const, relax

LLVM = {"kind": "llvm", "mcpu": "native", "num-cores": 1}
E = 25  # grid 2**-25: below 4.0, half a float32 ulp is exactly 2**-23 (four grid steps) or less


def _rounded(values) -> list[int]:
    return round_f32_half_even(np.asarray(values, np.int64), E, NumpyOps()).tolist()


# --- the rounding, by hand ---------------------------------------------------------------------------------------


def test_exact_ties_go_to_the_even_neighbour():
    ties = [int(v * 2**E) for v in (0.5, 1.5, 2.5, 3.5, -0.5, -2.5, -3.5)]
    assert _rounded(ties) == [0, 2, 2, 4, 0, -2, -4]


def test_values_within_half_a_float32_ulp_of_a_tie_round_as_the_tie():
    # 2.5 + 2**-23 is half an ulp (2**-22 in [2, 4)) above 2.5, whose mantissa is even: float32 rounds it to 2.5,
    # then to 2. Exactly it is above the tie (3). One grid step further it is a float32 of its own: 3.
    above = int(2.5 * 2**E) + 4
    assert _rounded([above, above + 1]) == [2, 3]
    # 3.5 - 2**-23 becomes 3.5 in float32, then 4 (odd 3 rounds up); one step lower stays below: 3.
    below = int(3.5 * 2**E) - 4
    assert _rounded([below, below - 1]) == [4, 3]
    # Above 0.5 the ulp is 2**-24: 0.5 + 2**-25 ties to 0.5 (then 0), 0.5 + 2**-24 is a float32 (then 1).
    assert _rounded([int(0.5 * 2**E) + 1, int(0.5 * 2**E) + 2]) == [0, 1]
    exact = np.array([above, above + 1, below, below - 1], np.float64) * 2.0**-E
    assert np.rint(exact.astype(np.float32)).tolist() == [2, 3, 4, 3]  # numpy's float32 agrees


@pytest.mark.parametrize("e", [20, 24, 25, 31, 44])
def test_rounding_matches_float32_near_every_tie(e):
    rng = np.random.default_rng(e)
    q = rng.integers(-256, 256, 100_000)
    p = ((2 * q + 1) << (e - 1)) + rng.integers(-(1 << max(e - 14, 1)), 1 << max(e - 14, 1), q.size)
    expected = np.rint((p.astype(np.float64) * 2.0**-e).astype(np.float32))  # p < 2**53: one rounding to float32
    got = round_f32_half_even(p, e, NumpyOps())
    inside = np.abs(expected) <= 255
    np.testing.assert_array_equal(got[inside], expected[inside])


def test_error_paths():
    with pytest.raises(ValueError, match="requant must be one of"):
        Requantizer(relax.BlockBuilder(), "double")
    with pytest.raises(ValueError, match="grid exponent"):
        round_f32_half_even(np.array([3]), 0, NumpyOps())


# --- QLinearAdd, on all 65536 pairs of codes -----------------------------------------------------------------------

ADD_CASES = [  # (sa, za, sb, zb, sc, zc, dtype); the first is ResNet-8's first residual add, 4 pairs off plain rne
    (0.06770966, 143, 0.032508004, 0, 0.03587515, 0, "uint8"),
    (0.010164487, 194, 0.092128526, 117, 0.10064406, 95, "uint8"),
    (0.10253866, -9, 0.028209571, -66, 0.063927196, -128, "int8"),  # ResNet-8's last add, int8 codes
]


def _all_pairs(dtype: str) -> tuple[np.ndarray, np.ndarray]:
    info = np.iinfo(dtype)
    a, b = np.meshgrid(np.arange(info.min, info.max + 1), np.arange(info.min, info.max + 1), indexing="ij")
    return a.astype(dtype), b.astype(dtype)


def _onnxruntime_qlinear_add(a, b, sa, za, sb, zb, sc, zc, dtype) -> np.ndarray:
    elem = TensorProto.UINT8 if dtype == "uint8" else TensorProto.INT8
    params = [("sa", sa, np.float32), ("za", za, dtype), ("sb", sb, np.float32), ("zb", zb, dtype),
              ("sc", sc, np.float32), ("zc", zc, dtype)]
    graph = helper.make_graph(
        [helper.make_node("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], ["c"], domain="com.microsoft")],
        "qladd", [helper.make_tensor_value_info(n, elem, list(a.shape)) for n in "ab"],
        [helper.make_tensor_value_info("c", elem, list(a.shape))],
        [numpy_helper.from_array(np.array(v, t), n) for n, v, t in params])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets).SerializeToString()
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"a": a, "b": b})[0]


def _compiled_add(a, b, sa, za, sb, zb, sc, zc, dtype, requant) -> np.ndarray:
    """dequantize(a) + dequantize(b) -> quantize, through QdqToInt8 and the host build, run on the VM."""
    bb = relax.BlockBuilder()
    va, vb = (relax.Var(n, relax.TensorType(a.shape, dtype)) for n in "ab")
    with bb.function("main", [va, vb]):
        with bb.dataflow():
            da = bb.emit(relax.op.dequantize(va, const(sa, "float32"), const(za, dtype), axis=0))
            db = bb.emit(relax.op.dequantize(vb, const(sb, "float32"), const(zb, dtype), axis=0))
            total = bb.emit(relax.op.add(da, db))
            out = bb.emit_output(relax.op.quantize(total, const(sc, "float32"), const(zc, dtype), axis=0,
                                                   out_dtype=dtype))
        bb.emit_func_output(out)
    target = tvm_api.make_target(LLVM)
    with target:
        lowered = host.lower(bb.get(), integer=True, requant=requant)
    assert all(k["kind"] != "float" for k in lowered.kernels)
    if requant == "fixed":
        assert not any(d.startswith("float") for k in lowered.kernels for d in k["constants"] + k["outputs"])
    vm = relax.VirtualMachine(tvm_api.build(lowered.mod, target), tvm_api.tvm.cpu())
    return vm["main"](tvm_api.to_tensor(a), tvm_api.to_tensor(b)).numpy()


@pytest.mark.parametrize("case", ADD_CASES, ids=["resnet8", "uint8", "int8"])
def test_qlinear_add_spec_is_onnxruntime_on_every_pair(case):
    a, b = _all_pairs(case[-1])
    sa, za, sb, zb, sc, zc, dtype = case
    qparams = [QParams(np.float32(s), np.int64(z), 0, dtype) for s, z in ((sa, za), (sb, zb), (sc, zc))]
    info = np.iinfo(dtype)
    ours = np.clip(QLinearAddSpec.of(*qparams).reference(a.astype(np.int64), b.astype(np.int64)), info.min, info.max)
    np.testing.assert_array_equal(ours, _onnxruntime_qlinear_add(a, b, *case))


@pytest.mark.parametrize("requant", ["float", "fixed"])
@pytest.mark.parametrize("case", ADD_CASES[::2], ids=["resnet8", "int8"])
def test_compiled_add_is_onnxruntime_on_every_pair(case, requant):
    a, b = _all_pairs(case[-1])
    np.testing.assert_array_equal(_compiled_add(a, b, *case, requant), _onnxruntime_qlinear_add(a, b, *case))


# --- a whole model: conv + residual add + global average pool + gemm ---------------------------------------------


def _uint8_model(seed: int = 0) -> onnx.ModelProto:
    """uint8 activations, int8 per-channel weights: onnxruntime fuses every DQ -> op -> Q into an integer kernel.

    Power-of-two scales on the first conv and the add make exact ties common (about 2% of their outputs), where
    half-up fixed point would differ from onnxruntime's round half to even.
    """
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def init(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def qdq(x, name, scale, zp):
        s, z = init(f"{name}_s", np.float32(scale)), init(f"{name}_z", np.uint8(zp))
        nodes.append(helper.make_node("QuantizeLinear", [x, s, z], [f"{name}_q"]))
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", s, z], [name]))
        return name

    def weights(name, shape, sx, ws=None):
        w = rng.integers(-127, 128, shape).astype(np.int8)
        ws = rng.random(shape[0]) * 0.01 + 0.002 if ws is None else np.full(shape[0], ws)
        ws = ws.astype(np.float32)
        b = rng.integers(-3000, 3000, shape[0]).astype(np.int32)
        zeros = init(f"{name}_wz", np.zeros(shape[0], np.int8))
        bias = [init(f"{name}_b", b), init(f"{name}_bs", np.float32(sx) * ws), init(f"{name}_bz", np.zeros_like(b))]
        nodes.append(helper.make_node("DequantizeLinear", [init(f"{name}_w", w), init(f"{name}_ws", ws), zeros],
                                      [f"{name}_wd"], axis=0))
        nodes.append(helper.make_node("DequantizeLinear", bias, [f"{name}_bd"], axis=0))
        return f"{name}_wd", f"{name}_bd"

    x = qdq("input", "x", 2**-5, 131)
    nodes.append(helper.make_node("Conv", [x, *weights("c1", (8, 3, 3, 3), 2**-5, 2**-7)], ["c1"], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"]))
    a = qdq("r1", "a", 2**-6, 0)  # requant multiplier 2**-6: acc = 32 mod 64 is an exact tie
    nodes.append(helper.make_node("Conv", [a, *weights("c2", (8, 8, 3, 3), 2**-6)], ["c2"], pads=[1, 1, 1, 1]))
    b = qdq("c2", "b", 2**-5, 119)
    nodes.append(helper.make_node("Add", [a, b], ["sum"]))
    nodes.append(helper.make_node("Relu", ["sum"], ["r2"]))
    r = qdq("r2", "r", 2**-4, 0)  # (a - za) / 4 + (b - zb) / 2: a tie whenever that sum is 2 mod 4
    nodes.append(helper.make_node("GlobalAveragePool", [r], ["gap"]))
    g = qdq("gap", "g", 0.0217, 3)
    nodes.append(helper.make_node("Flatten", [g], ["flat"], axis=1))
    f = qdq("flat", "f", 0.0217, 3)
    nodes.append(helper.make_node("Gemm", [f, *weights("fc", (10, 8), 0.0217)], ["logits"], transB=1))
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 10, 10])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])]
    graph = helper.make_graph(nodes, "uint8_qdq", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def uint8_model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("requant")
    path = directory / "model.onnx"
    onnx.save(_uint8_model(), str(path))
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(directory / "optimized.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fused = {node.op_type for node in onnx.load(str(directory / "optimized.onnx")).graph.node}
    assert fused.isdisjoint({"Conv", "Add", "GlobalAveragePool", "Gemm"}), fused  # integer kernels only
    x = np.random.default_rng(1).standard_normal((256, 3, 10, 10)).astype(np.float32) * 1.5
    reference = np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
    return path, x, reference


@pytest.mark.parametrize("requant", ["float", "fixed"])
def test_small_qdq_model_equals_onnxruntime_bit_for_bit(uint8_model, tmp_path, requant):
    path, x, reference = uint8_model
    artefact = host.compile_onnx(path, LLVM, tmp_path / requant, requant=requant)
    assert artefact.kernel_counts()["float"] == 0
    np.testing.assert_array_equal(artefact.run(x), reference)


# --- the linear requant on its own, far beyond what a conv produces -------------------------------------------


def _requantized(acc: np.ndarray, mults: np.ndarray, y_qp: QParams, requant: str) -> np.ndarray:
    bb = relax.BlockBuilder()
    x = relax.Var("acc", relax.TensorType(acc.shape, "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(Requantizer(bb, requant).linear(x, mults, y_qp, -128, 127))
        bb.emit_func_output(out)
    target = tvm_api.make_target(LLVM)
    with target:
        mod = relax.transform.LegalizeOps()(bb.get())
    vm = relax.VirtualMachine(tvm_api.build(mod, target), tvm_api.tvm.cpu())
    return vm["main"](tvm_api.to_tensor(acc)).numpy()


def _linear_case(mults, seed: int = 0) -> tuple[np.ndarray, np.ndarray, QParams, np.ndarray]:
    """int32 accumulators (random, and right at every tie of the output range) and f32(acc) * M, rne, + zy."""
    mults = np.array(mults, np.float32).reshape(1, -1)
    rng = np.random.default_rng(seed)
    ties = (np.arange(-260, 260) + 0.5)[:, None] / mults.astype(np.float64)  # real values right at .5
    acc = np.concatenate([rng.integers(-(2**31), 2**31, (20_000, mults.size)), np.rint(ties).clip(-(2**31), 2**31 - 1),
                          rng.integers(-300, 300, (20_000, mults.size))]).astype(np.int32)
    y_qp = QParams(np.float32(0.05), np.int64(-3), 0, "int8")
    return acc, mults, y_qp, np.clip(np.rint(acc.astype(np.float32) * mults) - 3, -128, 127)


@pytest.mark.parametrize("requant", ["float", "fixed"])
def test_linear_requant_is_float32_arithmetic_for_any_accumulator(requant, caplog):
    """Multipliers 5e4 apart (an all-zero channel gets weight scale 1): int32 accumulators up to 2**31."""
    acc, mults, y_qp, expected = _linear_case([3.7e-5, 2.9e-3, 0.7, 1.9])
    np.testing.assert_array_equal(_requantized(acc, mults, y_qp, requant), expected)
    assert "float32 for this layer" not in caplog.text


def test_tiny_multipliers_fall_back_to_float32_requant(caplog):
    """Below 2**-16 a multiplier makes accumulators over 2**24 matter, which float32 rounds first: kept float."""
    acc, mults, y_qp, expected = _linear_case([1.1e-7, 2.9e-3], seed=1)
    np.testing.assert_array_equal(_requantized(acc, mults, y_qp, "fixed"), expected)
    assert "float32 for this layer" in caplog.text
