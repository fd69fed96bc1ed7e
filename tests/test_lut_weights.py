"""Table-coded (NUPES) low-bit weights: the ONNX fold to int8, the b-bit packing, the LUT micro-kernels
(mcu_kernels/edgebin_lut.h) against an integer numpy reference, and a Cortex-M bundle that keeps the codes packed.

The NUPES-form models are made here: conftest's TinyResNet quantized to int8 QDQ as `edgebin export` does, then
chosen layers' int8 weights re-quantized to a table of 2^b - 1 levels and written as the export contract has them,
codes (uint8) -> Cast(INT32) -> Gather(levels, int8) -> DequantizeLinear. Numerically that is an int8 QDQ model, so
its bundle must equal onnxruntime and the plain int8 bundle of the folded model bit for bit.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import TinyResNet, randomize_batch_norms  # pytest puts tests/ on sys.path (no __init__.py)
from onnx import TensorProto, helper, numpy_helper

from edgebin import targets
from edgebin.capture import capture_graph
from edgebin.compile import host, importer, lut_weights, mcu_lut
from edgebin.compile.lut_weights import codes_for, fold_lut_weights, pack_codes, row_bytes, unpack_codes
from edgebin.compile.mcu_emit import compile_bundle, micro_kernel_headers, write_driver_bundle
from edgebin.compile.mcu_lut import palette_table
from edgebin.compile.mcu_schedule import plain_loops
from edgebin.compile.tvm_adapter import make_target
from edgebin.export import export_onnx
from edgebin.loading import LoadedModel
from edgebin.quant import Recipe, calibrate, freeze, quantize_graph

SHAPE = (1, 1, 28, 28)
CORTEX_M4 = {"name": "cortex-m4", "tvm": {"kind": "c"}, "opt": "-O3",
             "cflags": ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]}
LUT_LAYERS = ("q_c1.weight_codes", "q_c2.weight_codes", "q_fc.weight_codes")  # the stem stays int8
CC = shutil.which("cc") or shutil.which("gcc")
needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
    reason="qemu-system-arm or arm-none-eabi-gcc not installed; run make setup")


def nupes_levels(bits: int, exponent: float = 1.5) -> np.ndarray:
    """levels[c] = round(127 sign(c - N) |(c - N) / N|^(1 / a)), N = 2^(b-1) - 1: the export contract's table."""
    n = 2 ** (bits - 1) - 1
    c = np.arange(2 * n + 1) - n
    return np.round(127 * np.sign(c) * np.abs(c / n) ** (1 / exponent)).astype(np.int8)


def to_nupes(model: onnx.ModelProto, weights: tuple[str, ...], bits: int) -> onnx.ModelProto:
    """`model` with each int8 weight initializer in `weights` re-quantized to the nearest level of a b-bit table and
    written as codes -> Cast -> Gather(levels) in front of its DequantizeLinear."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph, levels = model.graph, nupes_levels(bits)
    inits = {init.name: init for init in graph.initializer}
    for name in weights:
        w = numpy_helper.to_array(inits[name]).astype(np.int32)
        codes = np.abs(w[..., None] - levels.astype(np.int32)).argmin(-1).astype(np.uint8)
        graph.initializer.remove(inits[name])
        graph.initializer.extend([numpy_helper.from_array(codes, f"{name}.codes"),
                                  numpy_helper.from_array(levels, f"{name}.levels")])
        at = next(i for i, node in enumerate(graph.node) if name in node.input)
        graph.node.insert(at, helper.make_node("Gather", [f"{name}.levels", f"{name}.index"], [name], axis=0,
                                               name=f"{name}.gather"))
        graph.node.insert(at, helper.make_node("Cast", [f"{name}.codes"], [f"{name}.index"], to=TensorProto.INT32,
                                               name=f"{name}.cast"))
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return make_models(tmp_path_factory.mktemp("lut_models"))


def make_models(directory: Path) -> dict[str, Path]:
    """{"int8": TinyResNet as int8 QDQ, "lut4": its c1, c2 and fc weights 4-bit table-coded, "folded": lut4 folded
    back to int8 initializers (the plain int8 model of the same numbers)}, written into `directory`."""
    torch.manual_seed(0)
    model = randomize_batch_norms(TinyResNet())
    gm = capture_graph(LoadedModel(module=model, input_shape=SHAPE, source=Path("tiny.pt"), format="state-dict"))
    summary = quantize_graph(gm, Recipe())
    calibrate(gm, np.random.default_rng(0).standard_normal((64, *SHAPE[1:]), dtype=np.float32))
    freeze(gm)
    paths = {name: directory / f"{name}.onnx" for name in ("int8", "lut4", "folded")}
    export_onnx(gm, SHAPE, paths["int8"], metadata={"edgebin.method": "int8"},
                layers=[r.to_dict() for r in summary.layers])
    nupes = to_nupes(onnx.load(paths["int8"]), LUT_LAYERS, bits=4)
    onnx.save(nupes, paths["lut4"])
    onnx.save(fold_lut_weights(nupes)[0], paths["folded"])
    return paths


def _inputs(n: int = 8) -> np.ndarray:
    return np.random.default_rng(3).standard_normal((n, *SHAPE[1:])).astype(np.float32)


def _onnxruntime(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])


# --- the fold and the packing ----------------------------------------------------------------------------------


def test_fold_replaces_each_lookup_by_the_int8_initializer_levels_of_codes(models):
    nupes = onnx.load(models["lut4"])
    folded, weights = fold_lut_weights(nupes)
    assert [(w.layer, w.bits) for w in weights] == [("c1", 4), ("c2", 4), ("fc", 4)]
    assert not [n for n in folded.graph.node if n.op_type in ("Gather", "Cast")]
    inits = {init.name: numpy_helper.to_array(init) for init in folded.graph.initializer}
    source = {init.name: numpy_helper.to_array(init) for init in nupes.graph.initializer}
    for name in LUT_LAYERS:
        value = inits[name]
        assert value.dtype == np.int8
        np.testing.assert_array_equal(value, source[f"{name}.levels"][source[f"{name}.codes"]])
        assert f"{name}.codes" not in inits and f"{name}.levels" not in inits
    onnx.checker.check_model(folded)
    x = _inputs(4)
    np.testing.assert_array_equal(_onnxruntime(models["lut4"], x), _onnxruntime(models["folded"], x))


def test_fold_leaves_other_models_and_other_gathers_alone(models):
    int8 = onnx.load(models["int8"])
    assert fold_lut_weights(int8) == (int8, [])
    nupes = onnx.load(models["lut4"])  # a lookup whose output also feeds a non-DequantizeLinear node stays
    nupes.graph.node.append(helper.make_node("Identity", [LUT_LAYERS[0]], ["extra"]))
    _, weights = fold_lut_weights(nupes)
    assert [w.layer for w in weights] == ["c2", "fc"]


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_packed_codes_round_trip(bits):
    codes = np.random.default_rng(bits).integers(0, 2 ** bits - 1, size=(5, 13))
    packed = pack_codes(codes, bits)
    assert packed.shape == (5, row_bytes(13, bits)) == (5, -(-13 * bits // 8))
    np.testing.assert_array_equal(unpack_codes(packed, bits, 13), codes)


def test_packing_is_a_little_endian_bit_stream_per_row():
    assert pack_codes(np.array([[1, 2, 3]]), 4).tolist() == [[0x21, 0x03]]  # first code in the low nibble
    assert pack_codes(np.array([[1, 2, 3, 0, 3]]), 2).tolist() == [[0b00111001, 0b11]]
    assert pack_codes(np.array([[5, 7, 1]]), 3).tolist() == [[0b01111101, 0b0]]  # 101, 111, 001 from bit 0
    with pytest.raises(ValueError, match="does not fit 4 bits"):
        pack_codes(np.array([[16]]), 4)
    with pytest.raises(ValueError, match="bits must be 2..8"):
        pack_codes(np.array([[0]]), 1)


def test_inverse_lookup_takes_a_code_of_each_value_and_refuses_others():
    levels = np.array([-127, -3, 0, 0, 3, 127], np.int8)  # repeated levels, as at 6-8 bits
    codes = codes_for(np.array([[0, 3, -127]], np.int8), levels)
    np.testing.assert_array_equal(levels[codes], [[0, 3, -127]])
    assert codes_for(np.array([5], np.int8), levels) is None


def test_importer_leaves_the_tables_on_the_module_and_tvm_loops_run_them_as_int8(models):
    mod = importer.from_onnx(importer.load_onnx(models["lut4"]))
    tables = lut_weights.tables_of(mod)
    assert [(t.layer, t.bits, t.shape) for t in tables] == [("c1", 4, (8, 8, 3, 3)), ("c2", 4, (8, 8, 3, 3)),
                                                            ("fc", 4, (10, 8))]
    with make_target({"kind": "llvm"}):  # no micro-kernel schedule, so nothing reads codes (packed: test_host_lut)
        lowered = host.lower(mod, integer=True, schedule=False)
    assert [(r["layer"], r["form"]) for r in lowered.lut_layers] == [("c1", "int8"), ("c2", "int8"), ("fc", "int8")]
    marked = [k for k in lowered.kernels if k.get("weights")]
    assert len(marked) == 3 and all(k["kind"] == "int8" and k["weights"] == "int8 (lut4)" for k in marked)


# --- the LUT micro-kernels against numpy -----------------------------------------------------------------------

# (k, n): every k % 4 and n parity, several passes of the spread buffer (k = 144 at 4 columns), a conv's shapes.
KERNEL_SHAPES = [(1, 1), (5, 3), (6, 2), (7, 5), (9, 16), (36, 13), (72, 8), (144, 16), (150, 7)]
KERNEL_BITS = (2, 3, 4, 5, 6, 7)
DISPATCH_C = """#include <stdint.h>
#include "edgebin_lut.h"

#define LUT_CASE(B)                                                                                   \\
  case B:                                                                                             \\
    if (p == 1 && u) edgebin_lut##B##_matvec_u8s8((const uint8_t*)x, codes, table, k, n, acc);        \\
    else if (p == 1) edgebin_lut##B##_matvec_s8((const int8_t*)x, codes, table, k, n, acc);           \\
    else if (p == 2 && u) edgebin_lut##B##_matvec2_u8s8((const uint8_t*)x, codes, table, k, n, acc);  \\
    else if (p == 2) edgebin_lut##B##_matvec2_s8((const int8_t*)x, codes, table, k, n, acc);          \\
    else if (u) edgebin_lut##B##_matvec4_u8s8((const uint8_t*)x, codes, table, k, n, acc);            \\
    else edgebin_lut##B##_matvec4_s8((const int8_t*)x, codes, table, k, n, acc);                      \\
    return 0;

/* edgebin_lut{b}_matvec{p}_{s8 if u == 0, u8s8 if u == 1}. */
int edgebin_lut_test(int b, int p, int u, const void* x, const uint8_t* codes, const int8_t* table, int32_t k,
                     int32_t n, int32_t* acc) {
  switch (b) { LUT_CASE(2) LUT_CASE(3) LUT_CASE(4) LUT_CASE(5) LUT_CASE(6) LUT_CASE(7) }
  return 1;
}
"""


def kernel_case(bits: int, k: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x bytes for 4 columns, packed codes + padding, the table of 2^b levels, the int8 weights). Every code is
    used, the last one too: a palette fills its table (a NUPES table leaves the last entry 0)."""
    rng = np.random.default_rng(seed)
    levels = rng.integers(-128, 128, 2 ** bits).astype(np.int8)
    levels[0], levels[-1] = -128, 127  # the extremes, where a sign or pair extension could go wrong
    codes = rng.integers(0, 2 ** bits, size=(n, k))
    x = rng.integers(0, 256, 4 * k).astype(np.uint8)
    x[:2] = (128, 255)  # -128 and -1 as int8, 128 and 255 as uint8
    packed = np.concatenate([pack_codes(codes, bits).reshape(-1), np.zeros(3, np.uint8)])
    return x, packed, levels, levels[codes].astype(np.int64)


def reference(x: np.ndarray, w: np.ndarray, p: int, u: int) -> np.ndarray:
    """acc[j * p + c] = w[j] . column c (the columns read as uint8 when u, else int8)."""
    columns = x[:p * w.shape[1]].astype(np.uint8 if u else np.int8).astype(np.int64).reshape(p, -1)
    return (w @ columns.T).reshape(-1)


def _all_cases():
    for bits in KERNEL_BITS:
        for index, (k, n) in enumerate(KERNEL_SHAPES):
            for p in (1, 2, 4):
                for u in (0, 1):
                    yield bits, k, n, p, u, 100 * bits + index


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory) -> ctypes.CDLL:
    """edgebin_lut.h's plain C path (the host has no SIMD32) as a shared library."""
    if CC is None:
        pytest.skip("no C compiler")
    work = tmp_path_factory.mktemp("lut_kernels")
    (work / "lut_test.c").write_text(DISPATCH_C)
    for name, text in micro_kernel_headers('#include "edgebin_lut.h"').items():
        (work / name).write_text(text)
    subprocess.run([CC, "-O2", "-Wall", "-Werror", "-shared", "-fPIC", f"-I{work}", str(work / "lut_test.c"), "-o",
                    str(work / "lut_test.so")], check=True, timeout=60)
    return ctypes.CDLL(str(work / "lut_test.so"))


def test_plain_c_lut_kernels_match_numpy(host_kernels):
    for bits, k, n, p, u, seed in _all_cases():
        x, packed, levels, w = kernel_case(bits, k, n, seed)
        acc = np.full(n * p, 12345, np.int32)  # junk: the kernel overwrites it
        rc = host_kernels.edgebin_lut_test(bits, p, u, *(ctypes.c_void_p(a.ctypes.data) for a in (x, packed, levels)),
                                           k, n, ctypes.c_void_p(acc.ctypes.data))
        assert rc == 0
        np.testing.assert_array_equal(acc, reference(x, w, p, u), err_msg=f"b={bits} k={k} n={n} p={p} u={u}")


def _qemu_driver(directory: Path) -> tuple[Path, np.ndarray]:
    """A bundle the QEMU runner takes whose `edgebin_model_run` runs every case (data compiled in) and writes the
    accumulators as floats (exact: |acc| < 2^24); and the numpy reference of those outputs."""
    lines, calls, expected = [DISPATCH_C], [], []
    for bits, k, n, p, u, i in _all_cases():
        x, packed, levels, w = kernel_case(bits, k, n, i)
        if p == 1 and u == 0:  # the case's data, once for its six calls
            for name, ctype, array in (("x", "uint8_t", x), ("c", "uint8_t", packed), ("t", "int8_t", levels)):
                lines.append(f"static const {ctype} {name}{i}[] = {{{', '.join(map(str, array.tolist()))}}};")
        calls.append(f"  for (int j = 0; j < {n * p}; ++j) acc[j] = 12345;\n"
                     f"  edgebin_lut_test({bits}, {p}, {u}, x{i}, c{i}, t{i}, {k}, {n}, acc);\n"
                     f"  for (int j = 0; j < {n * p}; ++j) *output++ = (float)acc[j];")
        expected.append(reference(x, w, p, u))
    outputs = sum(len(e) for e in expected)
    lines += ['#include "model.h"', "static int32_t acc[64];",
              "int edgebin_model_run(const float* input, float* output) {", "  (void)input;", *calls, "  return 0;",
              "}", 'const char* edgebin_model_name(void) { return "edgebin_lut_test"; }']
    write_driver_bundle(directory, {"lut_test.c": "\n".join(lines) + "\n"}, 1, outputs)
    return directory, np.concatenate(expected).astype(np.float32)


@needs_qemu
def test_smlad_lut_kernels_match_numpy_on_cortex_m4(tmp_path):
    from edgebin.runners import QemuRunner

    bundle, expected = _qemu_driver(tmp_path / "bundle")
    runner = QemuRunner(targets.load("cortex-m4"), timeout_s=120)
    elf = runner.build(bundle, tmp_path / "build")
    disassembly = subprocess.run(["arm-none-eabi-objdump", "-d", str(elf)], capture_output=True, text=True,
                                 check=True, timeout=60).stdout
    assert "smlad" in disassembly and "pkhbt" in disassembly  # the DSP path
    result = runner.run(elf, np.zeros((1, 1), np.float32), count_instructions=False)
    np.testing.assert_array_equal(result.outputs.reshape(-1), expected)


# --- the Cortex-M bundle ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundles(models, tmp_path_factory) -> dict[str, Path]:
    """{"lut4": the table-coded model's bundle, "int8": the folded model's (int8 weights; palettes off, or its
    15-value weights would be palettes), "plain": lut4 with plain loops (no micro-kernel, so no LUT kernel either)}."""
    directory = tmp_path_factory.mktemp("lut_bundles")
    with plain_loops():
        plain = compile_bundle(models["lut4"], CORTEX_M4, directory / "plain")
    return {"lut4": compile_bundle(models["lut4"], CORTEX_M4, directory / "lut4"),
            "int8": compile_bundle(models["folded"], CORTEX_M4, directory / "int8", palette=False), "plain": plain}


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "bundle.json").read_text())


def test_bundle_keeps_the_codes_packed_and_says_so(bundles, models):
    lut4, int8 = _manifest(bundles["lut4"]), _manifest(bundles["int8"])
    assert [(r["layer"], r["form"]) for r in lut4["lut_weights"]] == [("c1", "lut4"), ("c2", "lut4"), ("fc", "lut4")]
    layers = {k["layer"]: (k["kind"], k.get("weights")) for k in lut4["kernels"] if k["macs"]}
    assert layers == {"stem": ("int8", None), "c1": ("lut4", "lut4"), "c2": ("lut4", "lut4"), "fc": ("lut4", "lut4")}
    kernels_c = (bundles["lut4"] / "kernels.c").read_text()
    assert kernels_c.count("edgebin_lut4_matvec2_u8s8(") == 2 and kernels_c.count("edgebin_lut4_matvec_u8s8(") == 1
    assert (bundles["lut4"] / "edgebin_lut.h").is_file() and (bundles["lut4"] / "edgebin_kernels.h").is_file()
    # flash: the int8 bundle's weights, less each table-coded weight's bytes, plus its codes at 4 bits and the table
    # (the three layers share one: model.c deduplicates constants by content)
    params = sum(r["weights"] for r in lut4["lut_weights"])
    expected = int8["weights_bytes"] - params + params * 4 / 8 + 16
    assert abs(lut4["weights_bytes"] - expected) <= 0.1 * expected
    assert lut4["weights_bytes"] < int8["weights_bytes"] - 0.4 * params
    assert "lut_weights" not in int8


def test_layers_the_micro_kernel_does_not_take_run_as_int8_and_say_why(bundles):
    plain = _manifest(bundles["plain"])
    assert [(r["layer"], r["form"]) for r in plain["lut_weights"]] == [("c1", "int8"), ("c2", "int8"), ("fc", "int8")]
    assert all("plain loops" in r["reason"] for r in plain["lut_weights"])
    marked = [k for k in plain["kernels"] if k.get("weights")]
    assert len(marked) == 3 and all(k["kind"] == "int8" and k["weights"] == "int8 (lut4)" for k in marked)


@needs_qemu
def test_lut4_bundle_on_qemu_equals_the_int8_bundle_and_onnxruntime(bundles, models, tmp_path):
    from edgebin.runners import QemuRunner

    runner = QemuRunner(targets.load("cortex-m4"), timeout_s=300)
    x = _inputs()
    got = {name: runner.run(runner.build(bundles[name], tmp_path / name), x, count_instructions=False).outputs
           for name in ("lut4", "int8")}
    want = _onnxruntime(models["lut4"], x)
    np.testing.assert_array_equal(got["lut4"].reshape(want.shape), want)
    np.testing.assert_array_equal(got["lut4"], got["int8"])


# --- palettes: int8 weights of at most 16 values (QAT's W4, W2, ternary), packed on Cortex-M -------------------

PALETTE_SHAPE = (1, 1, 16, 16)
# StatsQ W4 exports odd codes 2k + 1 in [-15, 15] (no zero level: an int8 grid with an offset), here times 8 so that
# the layers keep the int8 model's magnitudes; "ternary" has asymmetric levels, "six" needs b = 3.
STATSQ_W4 = tuple(8 * (2 * k + 1) for k in range(-8, 8))
TERNARY = (-64, 0, 96)
SIX = (-100, -60, -20, 0, 30, 80)
PALETTES = {"w4": {"c1": STATSQ_W4, "c2": STATSQ_W4, "c3": STATSQ_W4, "fc": STATSQ_W4},
            "low": {"c1": TERNARY, "c2": SIX, "c3": TERNARY, "fc": TERNARY}}


class WideNet(torch.nn.Module):
    """Layers wide enough for packing to pay (c1: 4,608 weights, c2 and c3: 9,216), a stem and a gemm too small to.
    With c3's scales made c2's (`same_scales`), c2 and c3 call one kernel."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.c1 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.c2 = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.c3 = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.max_pool2d(torch.relu(self.stem(x)), 2)
        x = torch.nn.functional.max_pool2d(torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))), 2)
        return self.fc(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1))


def to_palette(model: onnx.ModelProto, layers: dict[str, tuple[int, ...]]) -> onnx.ModelProto:
    """`model` with each named layer's int8 weight initializer rounded to the nearest of its palette's values: an
    int8 QDQ model whose weights take a few values, as a QAT export's do."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {init.name: init for init in model.graph.initializer}
    for layer, levels in layers.items():
        init = inits[f"q_{layer}.weight_codes"]
        w, palette = numpy_helper.to_array(init).astype(np.int32), np.asarray(levels, np.int32)
        rounded = palette[np.abs(w[..., None] - palette).argmin(-1)].astype(np.int8)
        init.CopyFrom(numpy_helper.from_array(rounded, init.name))
    return model


def same_scales(model: onnx.ModelProto) -> onnx.ModelProto:
    """WideNet's QDQ model with c3's weight, bias, input and output scales set to c2's: the two convs then compile
    to one kernel (its constants are parameters), as QAT models' equal blocks do."""
    inits = {init.name: init for init in model.graph.initializer}
    for target, source in (("aq_relu_2.scale", "aq_relu_1.scale"), ("aq_relu_3.scale", "aq_relu_1.scale"),
                           ("q_c3.weight_scale", "q_c2.weight_scale"), ("q_c3.bias_scale", "q_c2.bias_scale")):
        inits[target].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(inits[source]), target))
    return model


@pytest.fixture(scope="module")
def palette_models(tmp_path_factory) -> dict[str, Path]:
    """{"w4": WideNet int8 QDQ with c1, c2, c3, fc at the 16 StatsQ W4 values, "low": c1, c3 and fc ternary, c2 six
    values}; the stem keeps its int8 weight (more than 16 values)."""
    directory = tmp_path_factory.mktemp("palette_models")
    torch.manual_seed(0)
    gm = capture_graph(LoadedModel(module=WideNet().eval(), input_shape=PALETTE_SHAPE, source=Path("wide.pt"),
                                   format="state-dict"))
    summary = quantize_graph(gm, Recipe())
    calibrate(gm, np.random.default_rng(0).standard_normal((64, *PALETTE_SHAPE[1:]), dtype=np.float32))
    freeze(gm)
    int8 = directory / "int8.onnx"
    export_onnx(gm, PALETTE_SHAPE, int8, metadata={"edgebin.method": "int8"},
                layers=[r.to_dict() for r in summary.layers])
    paths = {name: directory / f"{name}.onnx" for name in PALETTES}
    for name, layers in PALETTES.items():
        onnx.save(to_palette(same_scales(onnx.load(int8)), layers), paths[name])
    return paths


@pytest.fixture(scope="module")
def palette_bundles(palette_models, tmp_path_factory) -> dict[str, Path]:
    """{"w4", "low": palettes packed (the default), "w4-int8": palettes off (`palette=False`)}."""
    directory = tmp_path_factory.mktemp("palette_bundles")
    bundles = {name: compile_bundle(path, CORTEX_M4, directory / name) for name, path in palette_models.items()}
    bundles["w4-int8"] = compile_bundle(palette_models["w4"], CORTEX_M4, directory / "w4-int8", palette=False)
    return bundles


def test_palette_table_takes_the_smallest_b_that_holds_the_values():
    for count, bits in ((1, 2), (2, 2), (4, 2), (5, 3), (8, 3), (9, 4), (16, 4)):
        values = np.arange(count, dtype=np.int8) * 7 - 50
        table = palette_table(np.repeat(values, 3)[::-1])
        assert (table.bits, table.levels) == (bits, tuple(sorted(values.tolist()))), count
    assert palette_table(np.arange(17, dtype=np.int8)) is None  # an 8-bit layer stays int8
    assert palette_table(np.arange(3, dtype=np.int32)) is None


def test_palette_bundles_pack_the_low_bit_layers_and_say_so(palette_bundles):
    int8 = _manifest(palette_bundles["w4-int8"])
    assert "lut_weights" not in int8
    params = {"c1": 16 * 9 * 32, "c2": 32 * 9 * 32, "c3": 32 * 9 * 32}
    # c2 and c3 share one kernel, so one b: in "low", ternary c3 takes c2's 3 bits
    for name, bits in (("w4", {"c1": 4, "c2": 4, "c3": 4}), ("low", {"c1": 2, "c2": 3, "c3": 3})):
        manifest = _manifest(palette_bundles[name])
        records = {r["layer"]: r for r in manifest["lut_weights"]}
        assert [(r["layer"], r["form"], r["source"]) for r in manifest["lut_weights"]] == [
            *((layer, f"lut{b}", "palette") for layer, b in bits.items()), ("fc", "int8", "palette")]
        assert records["c2"]["kernel"] == records["c3"]["kernel"] != records["c1"]["kernel"]
        assert "less than the 1024 B" in records["fc"]["reason"]  # 320 weights: the LUT kernel's code would eat it
        layers = {k["layer"]: (k["kind"], k.get("weights")) for k in manifest["kernels"] if k["macs"]}
        assert layers == {"stem": ("int8", None), **{layer: (f"lut{b}",) * 2 for layer, b in bits.items()},
                          "fc": ("int8", f"int8 (lut{records['fc']['bits']})")}
        kernels_c = (palette_bundles[name] / "kernels.c").read_text()
        assert all(f"edgebin_lut{b}_matvec" in kernels_c for b in bits.values())
        # flash: each packed layer's int8 bytes become about params * b / 8, plus its 2^b-byte table
        packed = sum(params[layer] * b / 8 + 2 ** b for layer, b in bits.items())
        expected = int8["weights_bytes"] - sum(params.values()) + packed
        assert abs(manifest["weights_bytes"] - expected) <= 0.02 * expected, name
        for layer, b in bits.items():
            assert records[layer]["codes_bytes"] == params[layer] * b // 8 + mcu_lut.CODES_PADDING
            assert records[layer]["table_bytes"] == 2 ** b


def test_edgebin_palette_0_restores_the_int8_bundle(palette_models, palette_bundles, tmp_path):
    script = ("import sys; from edgebin.compile.mcu_emit import compile_bundle; "
              f"compile_bundle(sys.argv[1], {CORTEX_M4!r}, sys.argv[2])")
    subprocess.run([sys.executable, "-c", script, str(palette_models["w4"]), str(tmp_path / "off")], check=True,
                   timeout=300, env={**os.environ, "EDGEBIN_PALETTE": "0"})
    for name in ("kernels.c", "model.c"):
        assert (tmp_path / "off" / name).read_text() == (palette_bundles["w4-int8"] / name).read_text()
    assert _manifest(tmp_path / "off")["weights_bytes"] == _manifest(palette_bundles["w4-int8"])["weights_bytes"]


@needs_qemu
def test_palette_bundles_on_qemu_equal_onnxruntime_and_the_int8_bundle(palette_bundles, palette_models, tmp_path):
    from edgebin.runners import QemuRunner

    runner = QemuRunner(targets.load("cortex-m4"), timeout_s=300)
    x = np.random.default_rng(3).standard_normal((4, *PALETTE_SHAPE[1:])).astype(np.float32)
    got = {name: runner.run(runner.build(bundle, tmp_path / name), x, count_instructions=False).outputs
           for name, bundle in palette_bundles.items()}
    for name in PALETTES:
        want = _onnxruntime(palette_models[name], x)
        np.testing.assert_array_equal(got[name].reshape(want.shape), want, err_msg=name)
    np.testing.assert_array_equal(got["w4"], got["w4-int8"])
