"""Low-bit weights kept packed on the LLVM targets: cpu_kernels/edgebin_cpu_lut.c's decode and mcu_lut's pass on the
host schedule (`host.pack_low_bit_weights`).

The decode natively, each build the CPU runs (as test_cpu_kernels: AVX-512 VNNI, AVX2, plain C), and the aarch64
(NEON) build under qemu-aarch64, against numpy for b = 2, 3, 4, rows that end on whole bytes or not, k odd and short
(9); then the int8 kernels of every host call form on its output (edgebin_matvec{,2,4,t,c}_{s8,u8s8}, P = 1..40
pixels) against an int64 reference. Then models:
table-coded (NUPES) and palette weights compiled for the host, and for rpi4's TVM runtime, give the int8 build's
outputs bit for bit, and artefact.json / bundle.json say which weights stay packed.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from test_cpu_kernels import BUILDS, build_kernels  # the same three builds
from test_lut_weights import LUT_LAYERS, make_models, to_nupes  # test_lut_weights' models, their NUPES form

from edgebin.compile import host, importer, lut_weights, mcu_lut, tvm_adapter
from edgebin.compile.kernels import extern_calls
from edgebin.compile.lut_weights import pack_codes

BITS = mcu_lut.HOST_BITS
LLVM = {"kind": "llvm", "mcpu": "native", "num-cores": 1}


@pytest.fixture(scope="module", params=sorted(BUILDS))
def kernels(request, tmp_path_factory) -> ctypes.CDLL:
    if shutil.which("cc") is None:
        pytest.skip("no C compiler")
    return build_kernels(request.param, tmp_path_factory)


def _ptr(array: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(array.ctypes.data)


def packed(bits: int, n: int, k: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes as mcu_lut packs them, rows of ceil(k b / 8) bytes and CODES_PADDING; the 2^b-entry table; the int8
    weights table[codes]). Every code occurs, the table holds -128 and 127."""
    levels = rng.integers(-128, 128, 2 ** bits).astype(np.int8)
    levels[0], levels[-1] = -128, 127
    codes = rng.integers(0, 2 ** bits, (n, k))
    stream = np.concatenate([pack_codes(codes, bits).reshape(-1), np.zeros(mcu_lut.CODES_PADDING, np.uint8)])
    return stream, levels, levels[codes]


def decode(lib, bits: int, codes: np.ndarray, table: np.ndarray, k: int, n: int) -> np.ndarray:
    """edgebin_lut{b}_decode's (n, k) int8 weights; the 64 bytes after them must stay as they were."""
    out = np.full(n * k + 64, 0x5A, np.int8)
    getattr(lib, f"edgebin_lut{bits}_decode")(_ptr(codes), _ptr(table), ctypes.c_int32(k), ctypes.c_int32(n),
                                               _ptr(out))
    assert (out[n * k:] == 0x5A).all(), f"lut{bits} k={k} n={n} wrote past its n k bytes"
    return out[:n * k].reshape(n, k)


@pytest.mark.parametrize("bits", BITS)
def test_decode_gives_the_table_values_of_the_codes(kernels, bits):
    """Rows that end on whole bytes (one stream: k b % 8 == 0) and rows with padding bits, every length of the
    32-code vector steps' tails, a 3x3 conv of one channel (k = 9)."""
    rng = np.random.default_rng(bits)
    shapes = [(1, 1), (9, 16), (9, 13), (8, 3), (16, 5), (31, 3), (32, 7), (33, 17), (63, 2), (64, 10), (72, 8),
              (144, 16), (150, 7), (576, 64), (577, 5)]
    shapes += [(k, 3) for k in range(1, 70)]
    for k, n in shapes:
        codes, table, w = packed(bits, n, k, rng)
        np.testing.assert_array_equal(decode(kernels, bits, codes, table, k, n), w, err_msg=f"lut{bits} k={k} n={n}")


def _int8_kernel(lib, name: str, x: np.ndarray, w: np.ndarray, k: int, n: int, size: int, *extra: int) -> np.ndarray:
    """acc of the int8 kernel `name`(x, w, k, n, acc, *extra); acc starts as junk, which it overwrites."""
    acc = np.full(size, 0x5A5A5A5A, np.int32)
    getattr(lib, name)(_ptr(x), _ptr(w), ctypes.c_int32(k), ctypes.c_int32(n), _ptr(acc), *map(ctypes.c_int32, extra))
    return acc


def _inputs(rng, x_dtype: str, size: int) -> np.ndarray:
    info = np.iinfo(x_dtype)
    x = rng.integers(info.min, info.max + 1, size).astype(x_dtype)
    x[:2] = (info.min, info.max)[:size]
    return x


def conv_columns(x: np.ndarray, channels: int, kh: int, kw: int, cs: int, rs: int, lanes: int) -> np.ndarray:
    """(k, lanes): row i = (ci kh + ky) kw + kx of a stride-1 conv's input as it lies, pixel p at
    x[ci cs + ky rs + kx + p]."""
    return np.stack([x[ci * cs + ky * rs + kx:][:lanes] for ci in range(channels) for ky in range(kh)
                     for kx in range(kw)]).astype(np.int64)


@pytest.mark.parametrize("x_dtype", ["int8", "uint8"])
@pytest.mark.parametrize("bits", BITS)
def test_decoded_weights_in_every_host_call_form_equal_numpy(kernels, bits, x_dtype):
    """What a packed kernel runs: the decode, then its int8 call, edgebin_matvec{,2,4}_* (P columns side by side),
    edgebin_matvect_* (a row of P pixels, k-major) or edgebin_matvecc_* (the conv input where it lies), P = 1..40,
    against the int64 product of the weights table[codes]."""
    rng = np.random.default_rng(10 * bits + (x_dtype == "uint8"))
    suffix = "s8" if x_dtype == "int8" else "u8s8"
    for lanes in (1, 2, 4):  # gemms
        for k, n in [(9, 13), (33, 17), (577, 5)]:
            codes, table, w = packed(bits, n, k, rng)
            x = _inputs(rng, x_dtype, lanes * k)
            got = _int8_kernel(kernels, f"edgebin_matvec{lanes if lanes > 1 else ''}_{suffix}", x,
                               decode(kernels, bits, codes, table, k, n), k, n, n * lanes)
            np.testing.assert_array_equal(got, (w.astype(np.int64) @ x.astype(np.int64).reshape(lanes, k).T).ravel())
    for lanes in range(1, 41):  # rows of pixels: 3x3 convs of 2 channels (k = 18), 13 output channels
        channels, n = 2, 13
        k = 9 * channels
        codes, table, w = packed(bits, n, k, rng)
        weights = decode(kernels, bits, codes, table, k, n)
        x = _inputs(rng, x_dtype, k * lanes)  # k-major: x[i P + p]
        got = _int8_kernel(kernels, f"edgebin_matvect_{suffix}", x, weights, k, n, n * lanes, lanes, lanes)
        np.testing.assert_array_equal(got, (w.astype(np.int64) @ x.astype(np.int64).reshape(k, lanes)).ravel())
        rs = lanes + 2 + 3  # the padded row and a gap; channels a gap apart too
        cs = 3 * rs + 5
        x = _inputs(rng, x_dtype, channels * cs)
        got = _int8_kernel(kernels, f"edgebin_matvecc_{suffix}", x, weights, k, n, n * lanes, lanes, lanes, 3, 3, cs,
                           rs)
        want = w.astype(np.int64) @ conv_columns(x, channels, 3, 3, cs, rs, lanes)
        np.testing.assert_array_equal(got, want.ravel(), err_msg=f"lut{bits} matvecc P={lanes}")


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None, reason="no aarch64 cross compiler")
def test_decode_cross_compiles_for_aarch64(tmp_path):
    arm = tvm_adapter.make_target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"})
    obj = host.compile_kernels(arm, tmp_path, "aarch64-linux-gnu-g++")
    symbols = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout
    assert all(f" T edgebin_lut{b}_decode" in symbols for b in BITS)


AARCH64_DRIVER = """#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
void edgebin_lut2_decode(const uint8_t*, const int8_t*, int32_t, int32_t, int8_t*);
void edgebin_lut3_decode(const uint8_t*, const int8_t*, int32_t, int32_t, int8_t*);
void edgebin_lut4_decode(const uint8_t*, const int8_t*, int32_t, int32_t, int8_t*);

/* stdin: cases of int32 b, k, n, codes bytes, then the codes and the 2^b table; stdout: each case's n k weights */
int main(void) {
  int32_t head[4];
  while (fread(head, 4, 4, stdin) == 4) {
    uint8_t* codes = malloc(head[3]);
    int8_t table[16], *w = malloc((size_t)head[1] * head[2]);
    if (fread(codes, 1, head[3], stdin) != (size_t)head[3] || fread(table, 1, 1 << head[0], stdin) != 1u << head[0])
      return 1;
    (head[0] == 2 ? edgebin_lut2_decode : head[0] == 3 ? edgebin_lut3_decode : edgebin_lut4_decode)(
        codes, table, head[1], head[2], w);
    fwrite(w, 1, (size_t)head[1] * head[2], stdout);
    free(codes), free(w);
  }
  return 0;
}
"""


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None,
                    reason="no aarch64 cross gcc / qemu-aarch64 (make setup)")
def test_decode_on_aarch64_under_qemu_equals_numpy(tmp_path):
    """The NEON decode (what Cortex-A's TVM runtime links), one static program under qemu-aarch64 for every case."""
    (tmp_path / "driver.c").write_text(AARCH64_DRIVER)
    program = tmp_path / "decode"
    subprocess.run(["aarch64-linux-gnu-gcc", "-O3", "-mcpu=cortex-a72", "-static", "-Wall", "-Werror",
                    str(tmp_path / "driver.c"), str(host.KERNELS_C), "-o", str(program)], check=True, timeout=120)
    rng = np.random.default_rng(30)
    cases = [(bits, k, n) for bits in BITS for k, n in [(9, 13), (32, 7), (33, 17), (72, 8), (576, 64), (577, 5)]]
    cases += [(bits, k, 3) for bits in BITS for k in range(1, 70)]
    stdin, want = [], []
    for bits, k, n in cases:
        codes, table, w = packed(bits, n, k, rng)
        stdin += [np.array([bits, k, n, codes.size], np.int32).tobytes(), codes.tobytes(), table.tobytes()]
        want.append(w.astype(np.int8).ravel())
    done = subprocess.run(["qemu-aarch64", str(program)], input=b"".join(stdin), capture_output=True, check=True,
                          timeout=300)
    np.testing.assert_array_equal(np.frombuffer(done.stdout, np.int8), np.concatenate(want))


# --- table-coded (NUPES) weights: test_lut_weights' TinyResNet, c1, c2 and fc at 4 bits ----------------------------

SHAPE = (1, 1, 28, 28)


@pytest.fixture(scope="module")
def nupes_models(tmp_path_factory) -> dict[str, Path]:
    """test_lut_weights' models: {"int8": TinyResNet as int8 QDQ, "lut4": its c1, c2 and fc 4-bit table-coded,
    "folded": lut4's numbers as int8 initializers}."""
    return make_models(tmp_path_factory.mktemp("host_lut_models"))


def compile_pair(path: Path, out: Path, monkeypatch) -> tuple[host.HostArtefact, host.HostArtefact]:
    """(`path` compiled for the host with its low-bit weights packed, and with them int8: EDGEBIN_HOST_LUT=0)."""
    packed_build = host.compile_onnx(path, LLVM, out / "packed")
    with monkeypatch.context() as patch:
        patch.setattr(host, "HOST_LUT", False)
        int8_build = host.compile_onnx(path, LLVM, out / "int8")
    return packed_build, int8_build


def test_host_keeps_table_coded_weights_packed_with_the_int8_outputs(nupes_models, tmp_path, monkeypatch):
    lut4, int8 = compile_pair(nupes_models["lut4"], tmp_path, monkeypatch)
    x = np.random.default_rng(3).standard_normal((16, *SHAPE[1:])).astype(np.float32)
    np.testing.assert_array_equal(lut4.run(x), int8.run(x))
    # without the tables, its 15-value weights are palettes (sorted levels, the same b): packed as well
    folded = host.compile_onnx(nupes_models["folded"], LLVM, tmp_path / "folded")
    np.testing.assert_array_equal(lut4.run(x), folded.run(x))
    assert [(r["form"], r["source"]) for r in folded.lut_layers] == [("lut4", "palette")] * 3
    assert folded.weights_bytes() == lut4.weights_bytes()

    manifest = json.loads((tmp_path / "packed" / host.MANIFEST).read_text())
    records = manifest["lut_weights"]
    assert [(r["layer"], r["form"], r["source"], r["reason"]) for r in records] == [
        ("c1", "lut4", "nupes", None), ("c2", "lut4", "nupes", None), ("fc", "lut4", "nupes", None)]
    assert manifest["kernel_counts"]["lut4"] == 3
    kinds = {k["name"]: (k["kind"], k.get("weights")) for k in manifest["kernels"]}
    assert all(kinds[r["kernel"]] == ("lut4", "lut4") for r in records)
    # model.so's constants: each table-coded weight's int8 bytes become its codes at 4 bits and a 16-byte table
    params = sum(r["weights"] for r in records)
    assert [r["codes_bytes"] for r in records] == [8 * 36 + 3, 8 * 36 + 3, 10 * 4 + 3]
    assert lut4.weights_bytes() == int8.weights_bytes() - params + sum(r["codes_bytes"] + 16 for r in records)
    assert [(r["form"], r["reason"]) for r in int8.lut_layers] == [("int8", host.HOST_LUT_OFF_REASON)] * 3
    np.testing.assert_array_equal(host.load_artefact(tmp_path / "packed").run(x), int8.run(x))


def test_kernels_on_tvm_loops_keep_table_coded_weights_int8(nupes_models):
    """`lower(schedule=False)` (before tuning; the fallback when a schedule does not build): no micro-kernel calls,
    so no decode either; the weights stay int8 and say why."""
    mod = importer.from_onnx(importer.load_onnx(nupes_models["lut4"]))
    with tvm_adapter.make_target({"kind": "llvm"}):
        lowered = host.lower(mod, integer=True, schedule=False)
    assert [(r["form"], r["reason"]) for r in lowered.lut_layers] == [("int8", host.LUT_INT8_REASON)] * 3
    with tvm_adapter.make_target({"kind": "llvm"}):
        lowered = host.lower(mod, integer=True)
    assert [r["form"] for r in lowered.lut_layers] == ["lut4"] * 3
    assert lut_weights.tables_of(lowered.mod)  # still there for tune_lowered's pass


# --- palettes on every host call form, int8 and uint8 activations ------------------------------------------------

PALETTE_SHAPE = (1, 3, 12, 12)
# per conv / gemm in graph order: 16 values (b = 4), ternary and 4 values (b = 2), 6 values (b = 3)
PALETTES = {"stem.0": tuple(range(-120, 121, 16)), "block.0": (-64, 0, 96), "block.2": (-90, -30, 30, 90),
            "down.0": (-100, -60, -20, 0, 30, 80), "down.2": (-127, 0, 127), "down.4": tuple(range(-120, 121, 16)),
            "head": (-70, -10, 50, 110)}
PALETTE_BITS = {"stem.0": 4, "block.0": 2, "block.2": 2, "down.0": 3, "down.4": 4, "head": 2}  # down.2: plain loops


class Net(torch.nn.Module):
    """Rows of 12 pixels (stride-1 3x3 convs: edgebin_matvecc), a strided conv and a 1x1 conv (edgebin_matvect), a
    depthwise conv (plain loops: its palette stays int8, unrecorded), a linear layer (edgebin_matvec)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 1, 1), torch.nn.ReLU())
        self.block = torch.nn.Sequential(torch.nn.Conv2d(16, 16, 3, 1, 1), torch.nn.ReLU(),
                                         torch.nn.Conv2d(16, 16, 3, 1, 1))
        self.down = torch.nn.Sequential(torch.nn.Conv2d(16, 24, 3, 2, 1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(24, 24, 3, 1, 1, groups=24), torch.nn.ReLU(),
                                        torch.nn.Conv2d(24, 20, 1))
        self.head = torch.nn.Linear(20 * 6 * 6, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(torch.flatten(self.down(x), 1))


class _Calibration(CalibrationDataReader):
    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.batches = iter([{"input": rng.standard_normal(PALETTE_SHAPE).astype(np.float32)} for _ in range(8)])

    def get_next(self):
        return next(self.batches, None)


def to_palettes(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with each layer's int8 weight initializer (onnxruntime names it `{layer}.weight_quantized`) rounded
    to the nearest of its PALETTES values."""
    for init in model.graph.initializer:
        layer = init.name.removesuffix(".weight_quantized")
        if layer in PALETTES:
            levels = np.asarray(PALETTES[layer], np.int32)
            w = numpy_helper.to_array(init).astype(np.int32)
            init.CopyFrom(numpy_helper.from_array(levels[np.abs(w[..., None] - levels).argmin(-1)].astype(np.int8),
                                                  init.name))
    return model


@pytest.fixture(scope="module", params=["int8", "uint8"])
def palette_model(request, tmp_path_factory) -> Path:
    """Net quantized by onnxruntime (QDQ, int8 or uint8 activations), its weights rounded to PALETTES."""
    directory = tmp_path_factory.mktemp(f"palette_{request.param}")
    torch.manual_seed(0)
    fp32, qdq = directory / "fp32.onnx", directory / "qdq.onnx"
    torch.onnx.export(Net().eval(), torch.randn(*PALETTE_SHAPE), str(fp32), opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["logits"])
    activations = QuantType.QInt8 if request.param == "int8" else QuantType.QUInt8
    quantize_static(str(fp32), str(qdq), _Calibration(), quant_format=QuantFormat.QDQ, activation_type=activations,
                    weight_type=QuantType.QInt8, per_channel=True)
    path = directory / "palette.onnx"
    onnx.save(to_palettes(onnx.load(qdq)), path)
    return path


def test_host_packs_palettes_in_every_call_form_with_the_int8_outputs(palette_model, tmp_path, monkeypatch):
    packed_build, int8_build = compile_pair(palette_model, tmp_path, monkeypatch)
    x = np.random.default_rng(5).standard_normal((8, *PALETTE_SHAPE[1:])).astype(np.float32)
    got = packed_build.run(x)
    np.testing.assert_array_equal(got, int8_build.run(x))
    session = ort.InferenceSession(str(palette_model), providers=["CPUExecutionProvider"])
    want = np.concatenate([session.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    np.testing.assert_allclose(got, want, atol=2 * np.abs(want).max() / 127)  # test_compile's 2 LSB

    records = packed_build.lut_layers
    assert [(r["form"], r["source"]) for r in records] == [(f"lut{b}", "palette") for b in PALETTE_BITS.values()]
    kernels = {k["name"]: k for k in packed_build.kernels}
    assert all(kernels[r["kernel"]]["kind"] == r["form"] for r in records)
    assert sum(r["weights"] for r in records) == 16 * 27 + 2 * 16 * 144 + 24 * 144 + 20 * 24 + 10 * 720
    saved = sum(r["weights"] - r["codes_bytes"] - r["table_bytes"] for r in records)
    assert packed_build.weights_bytes() == int8_build.weights_bytes() - saved
    assert not int8_build.lut_layers  # palettes are not recorded where nothing packs them


def test_packed_kernels_decode_once_for_every_call_form(palette_model):
    """Each packed kernel calls its b's decode and then its int8 micro-kernel, of each form: gemm, rows of a strided
    conv (k-major), rows of a stride-1 conv (in place)."""
    mod = importer.from_onnx(importer.load_onnx(palette_model))
    with tvm_adapter.make_target(LLVM):
        lowered = host.lower(mod, integer=True)
    calls = {r["kernel"]: sorted(extern_calls(lowered.mod[r["kernel"]])) for r in lowered.lut_layers}
    suffix = "u8s8" if "uint8" in palette_model.parent.name else "s8"  # the fixture's folder: palette_{dtype}N
    suffixes = ["u8s8"] + [suffix] * 5  # the stem reads the quantized model input as uint8 (code + 128)
    assert sorted(calls.values()) == sorted([f"edgebin_lut{b}_decode", f"edgebin_matvec{form}_{x}"] for b, form, x in
                                            zip(PALETTE_BITS.values(), ("c", "c", "c", "t", "t", ""), suffixes,
                                                strict=True))


def test_palette_weights_off_leaves_palettes_int8_on_the_host(palette_model):
    mod = importer.from_onnx(importer.load_onnx(palette_model))
    with tvm_adapter.make_target(LLVM), mcu_lut.palette_weights(False):
        lowered = host.lower(mod, integer=True)
    assert not lowered.lut_layers and not any(k["kind"].startswith("lut") for k in lowered.kernels)


# --- Cortex-A: rpi4's TVM runtime (the host's build order for aarch64) ----------------------------------------------


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
                    reason="no aarch64 cross g++ / qemu-aarch64 (make setup)")
def test_rpi4_tvm_bundle_keeps_table_coded_weights_packed(nupes_models, tmp_path):
    from edgebin.compile.cortex_a import compile_cortex_a
    from edgebin.errors import ToolchainMissingError
    from edgebin.runners.qemu_user import QemuUserRunner
    from edgebin.runtime_wheels import runtime_libraries
    from edgebin.targets import load

    try:
        runtime_libraries("manylinux_2_28_aarch64", timeout_s=300)
    except ToolchainMissingError as err:
        pytest.skip(f"the aarch64 TVM runtime wheels cannot be fetched: {err}")
    bundle = compile_cortex_a(nupes_models["lut4"], "rpi4", tmp_path / "rpi4")
    assert [(r["layer"], r["form"]) for r in bundle.manifest["lut_weights"]] == [("c1", "lut4"), ("c2", "lut4"),
                                                                               ("fc", "lut4")]
    x = np.random.default_rng(7).standard_normal((8, *SHAPE[1:])).astype(np.float32)
    got = QemuUserRunner(load("rpi4")).run(bundle.directory, x, count_instructions=False).outputs
    session = ort.InferenceSession(str(nupes_models["lut4"]), providers=["CPUExecutionProvider"])
    want = np.concatenate([session.run(None, {"input": x[i:i + 1]})[0] for i in range(len(x))])
    np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_host_leaves_5_to_7_bit_codes_int8(nupes_models, tmp_path):
    """The host decodes 2 to 4 bits (HOST_BITS); a 6-bit table-coded weight stays int8 and says why."""
    six = to_nupes(onnx.load(nupes_models["int8"]), LUT_LAYERS, bits=6)
    mod = importer.from_onnx(six)
    with tvm_adapter.make_target(LLVM):
        lowered = host.lower(mod, integer=True)
    assert [(r["bits"], r["form"], r["reason"]) for r in lowered.lut_layers] == [
        (6, "int8", "this target packs 2- to 4-bit codes")] * 3
    assert all(k["kind"] == "int8" for k in lowered.kernels if k.get("weights"))
