"""The int8 micro-kernels (`mcu_kernels/edgebin_kernels.h`) and the MCU schedule that calls them.

- `edgebin_matvec_s8`, `edgebin_matvec{2,4}_s8` (one, two or four columns) and their `_u8s8` twins (the same bytes
  read as uint8) against numpy: the plain C path built natively with gcc, and the SMLAD path built for each
  Cortex-M target with DSP and run on QEMU, over shapes that hit every remainder (k % 4, n % 4), several passes of
  the spread buffer and unaligned rows; the accumulators start as junk (the kernels overwrite them);
- the schedule on its own: an int8 matmul becomes one call and asks for its weight transposed; a conv four
  columns per call, without a zeroing loop; without a constant weight, or in float, it keeps plain loops;
- a small int8 model (conftest TinyResNet: padded convs, a residual, a gemm) whose bundle outputs are the same bit
  for bit with and without the micro-kernel schedule, natively and on QEMU, and whose pad kernels are gone: its
  stem runs four columns per call with an unrolled epilogue, its 3x3 convs two, its gemm one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyResNet, randomize_batch_norms  # pytest puts tests/ on sys.path (no __init__.py)

from edgebin import targets
from edgebin.capture import capture_graph
from edgebin.compile.mcu_emit import (
    MICRO_KERNEL_HEADER,
    build_library,
    compile_bundle,
    micro_kernel_headers,
    write_driver_bundle,
)
from edgebin.compile.mcu_schedule import MATVEC, columns_per_call, plain_loops, schedule_kernel
from edgebin.compile.tvm_adapter import collect, tirx, tvm
from edgebin.export import export_onnx
from edgebin.loading import LoadedModel
from edgebin.quant import Recipe, calibrate, freeze, quantize_graph

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None, reason="no gcc/make")
needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
    reason="qemu-system-arm or arm-none-eabi-gcc not installed; run make setup")

# (k, n, x offset, w offset): every k % 4 and n % 4, rows that start at every alignment, the layers' shapes
# (stem 9 x 16, LeNet 25 x 6, 1x1 16 x 32, 3x3 144 x 16, gemm 64 x 10; 576 x 8 and 1000 x 4: several passes of the
# spread buffer).
CASES = [(1, 1, 0, 0), (2, 3, 1, 2), (3, 5, 3, 1), (4, 4, 0, 0), (5, 2, 2, 3), (7, 7, 1, 1), (9, 16, 3, 2),
         (16, 32, 2, 1), (25, 6, 1, 0), (36, 13, 0, 3), (64, 10, 3, 3), (144, 16, 1, 2), (576, 8, 2, 0),
         (1000, 4, 1, 1)]
COLUMNS = (1, 2, 4)  # edgebin_matvec_*, edgebin_matvec2_*, edgebin_matvec4_*
X_BYTES, W_BYTES, ACC = 4004, 4700, 32  # int8 inputs (4 columns of 1000 at most), int8 weights, junk accumulators
IN_ELEMS = X_BYTES + W_BYTES + ACC
OUT_ELEMS = 2 * sum(COLUMNS) * sum(n for _, n, _, _ in CASES)  # int8 x, then the same bytes as uint8 x

DRIVER_C = """#include <stdint.h>
#include "edgebin_kernels.h"

static const int32_t cases[][4] = {CASES};
static int8_t xs[X_BYTES + 4], ws[W_BYTES + 4];

/* The kernel for p columns of int8 (u = 0) or uint8 (u = 1) input. */
static void matvec(int p, int u, const int8_t* x, const int8_t* w, int32_t k, int32_t n, int32_t* acc) {
  if (p == 1 && u) edgebin_matvec_u8s8((const uint8_t*)x, w, k, n, acc);
  else if (p == 1) edgebin_matvec_s8(x, w, k, n, acc);
  else if (p == 2 && u) edgebin_matvec2_u8s8((const uint8_t*)x, w, k, n, acc);
  else if (p == 2) edgebin_matvec2_s8(x, w, k, n, acc);
  else if (u) edgebin_matvec4_u8s8((const uint8_t*)x, w, k, n, acc);
  else edgebin_matvec4_s8(x, w, k, n, acc);
}

/* input: X_BYTES int8 values, W_BYTES int8 values, ACC junk accumulators (/1000);
 * output: for x as int8, then its bytes as uint8: for 1, 2 and 4 columns: every case's accumulators, in order. */
int edgebin_kernels_test(const float* input, float* output) {
  for (int i = 0; i < X_BYTES; ++i) xs[i] = (int8_t)input[i];
  for (int i = 0; i < W_BYTES; ++i) ws[i] = (int8_t)input[X_BYTES + i];
  for (int u = 0; u < 2; ++u)
    for (int p = 1; p <= 4; p *= 2)
      for (unsigned c = 0; c < sizeof(cases) / sizeof(cases[0]); ++c) {
        int32_t k = cases[c][0], n = cases[c][1], acc[4 * 32];
        for (int j = 0; j < n * p; ++j) acc[j] = (int32_t)input[X_BYTES + W_BYTES + j % ACC] * 1000;
        matvec(p, u, xs + cases[c][2], ws + cases[c][3], k, n, acc);
        for (int j = 0; j < n * p; ++j) *output++ = (float)acc[j];  /* |acc| < 2**24: exact */
      }
  return 0;
}
""".replace("CASES", ", ".join(f"{{{k}, {n}, {xo}, {wo}}}" for k, n, xo, wo in CASES)) \
   .replace("X_BYTES", str(X_BYTES)).replace("W_BYTES", str(W_BYTES)).replace("ACC", str(ACC))

NATIVE_MAIN_C = f"""#include <stdio.h>
int edgebin_kernels_test(const float* input, float* output);
static float in[{IN_ELEMS}], out[{OUT_ELEMS}];
int main(void) {{
  while (fread(in, sizeof(float), {IN_ELEMS}, stdin) == {IN_ELEMS}) {{
    edgebin_kernels_test(in, out);
    fwrite(out, sizeof(float), {OUT_ELEMS}, stdout);
  }}
  return 0;
}}
"""


def samples(count: int, seed: int = 0) -> np.ndarray:
    """Random int8 data with the extremes -128 and 127 over-represented (where SXTB16/SMLAD could go wrong)."""
    rng = np.random.default_rng(seed)
    data = rng.integers(-128, 128, size=(count, IN_ELEMS))
    data[rng.random(data.shape) < 0.2] = -128
    data[rng.random(data.shape) < 0.1] = 127
    return data.astype(np.float32)


def reference(x: np.ndarray) -> np.ndarray:
    """What the driver writes: acc[j * p + c] = w[j] . column c, the junk it started with overwritten."""
    outputs = []
    for sample in x.astype(np.int64):
        xs, ws = sample[:X_BYTES], sample[X_BYTES:X_BYTES + W_BYTES]
        row = []
        for x_bytes in (xs, xs % 256):  # int8, then uint8
            for p in COLUMNS:
                for k, n, xo, wo in CASES:
                    weights = ws[wo:wo + n * k].reshape(n, k)
                    columns = x_bytes[xo:xo + p * k].reshape(p, k)
                    row.append((weights @ columns.T).reshape(-1))  # (n, p): row j, then column c
        outputs.append(np.concatenate(row))
    return np.asarray(outputs, dtype=np.float32)


def write_driver(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "kernels_test.c").write_text(DRIVER_C)
    for name, text in micro_kernel_headers(f'#include "{MICRO_KERNEL_HEADER}"').items():
        (directory / name).write_text(text)
    return directory


def test_reference_is_what_the_kernel_promises():
    x = samples(1)
    k, n, xo, wo = CASES[6]
    start = sum(COLUMNS) * sum(nn for _, nn, _, _ in CASES) + sum(nn for _, nn, _, _ in CASES[:6])  # uint8, p = 1
    w = x[0, X_BYTES + wo:X_BYTES + wo + n * k].reshape(n, k)
    by_hand = [float(w[j] @ (x[0, xo:xo + k] % 256)) for j in range(n)]
    np.testing.assert_array_equal(reference(x)[0, start:start + n], np.float32(by_hand))


@needs_gcc
def test_plain_c_matvec_matches_numpy(tmp_path):
    work = write_driver(tmp_path)
    (work / "main.c").write_text(NATIVE_MAIN_C)
    exe = work / "kernels_test"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", f"-I{work}", str(work / "kernels_test.c"), str(work / "main.c"),
                    "-o", str(exe)], check=True, timeout=60)
    x = samples(8)
    out = subprocess.run([str(exe)], input=x.tobytes(), capture_output=True, check=True, timeout=60).stdout
    np.testing.assert_array_equal(np.frombuffer(out, np.float32).reshape(len(x), -1), reference(x))


def write_qemu_bundle(directory: Path) -> Path:
    """The driver as a bundle the QEMU runner takes (docs/mcu-bundle.md): edgebin_model_run calls it."""
    model_c = ('#include "model.h"\nint edgebin_kernels_test(const float* input, float* output);\n'
               "int edgebin_model_run(const float* input, float* output) {\n"
               "  return edgebin_kernels_test(input, output);\n}\n"
               'const char* edgebin_model_name(void) { return "edgebin_kernels_test"; }\n')
    write_driver_bundle(directory, {"model.c": model_c, "kernels_test.c": DRIVER_C}, IN_ELEMS, OUT_ELEMS)
    return directory


@needs_qemu
@pytest.mark.parametrize("name", ["cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55"])
def test_smlad_matvec_matches_numpy_on_each_dsp_core(tmp_path, name):
    from edgebin.runners import QemuRunner

    runner = QemuRunner(targets.load(name), timeout_s=60)
    elf = runner.build(write_qemu_bundle(tmp_path / "bundle"), tmp_path / "build")
    symbols = subprocess.run(["arm-none-eabi-objdump", "-d", str(elf)], capture_output=True, text=True,
                             check=True, timeout=60).stdout
    assert "smlad" in symbols  # the DSP path, not the plain C one
    x = samples(6, seed=1)
    result = runner.run(elf, x, count_instructions=False)
    np.testing.assert_array_equal(result.outputs.reshape(len(x), -1), reference(x))


# --- the schedule ----------------------------------------------------------------------------------------------


def _matmul(dtype: str = "int8"):
    """A legalized (1, 64) x (64, 10) -> int32 matmul PrimFunc with a relu-like epilogue, as FuseTIR makes them."""
    from tvm import te

    x = te.placeholder((1, 64), dtype, name="x")
    w = te.placeholder((64, 10), dtype, name="w")
    k = te.reduce_axis((0, 64), name="k")
    acc_dtype = "int32" if dtype == "int8" else dtype
    acc = te.compute((1, 10), lambda i, j: te.sum(x[i, k].astype(acc_dtype) * w[k, j].astype(acc_dtype), axis=k),
                     name="matmul")
    out = te.compute((1, 10), lambda i, j: te.max(acc[i, j], tirx.const(0, acc_dtype)), name="relu")
    return te.create_prim_func([x, w, out])


def _conv(width: int = 8):
    """A legalized uint8 x int8 3x3 conv (2 -> 4 channels, output 4 x `width`, NCHW) with a relu-like epilogue."""
    from tvm import te

    x = te.placeholder((1, 2, 6, width + 2), "uint8", name="x")
    w = te.placeholder((4, 2, 3, 3), "int8", name="w")
    rc, ry, rx = (te.reduce_axis((0, n), name=name) for n, name in ((2, "rc"), (3, "ry"), (3, "rx")))
    acc = te.compute((1, 4, 4, width), lambda b, f, y, z: te.sum(
        x[b, rc, y + ry, z + rx].astype("int32") * w[f, rc, ry, rx].astype("int32"), axis=[rc, ry, rx]),
        name="conv2d_nchw")
    out = te.compute(acc.shape, lambda *i: te.max(acc(*i), tirx.const(0, "int32")), name="relu")
    return te.create_prim_func([x, w, out])


def _calls(func) -> list[str]:
    return [str(call.args[0].value) for call in collect(func.body, tvm.ir.expr.Call)
            if str(getattr(call.op, "name", "")).endswith("call_extern")]


def _zeroes(func) -> bool:
    """True when some block zeroes a buffer (an init statement or a `C[...] = 0` loop)."""
    zeros = [store for store in collect(func.body, tirx.BufferStore)
             if isinstance(store.value, tirx.IntImm) and int(store.value.value) == 0]
    return bool(zeros)


def test_int8_matmul_becomes_one_call_with_its_weight_transposed():
    func, relayouts = schedule_kernel(_matmul(), constant_params=frozenset({1}))
    assert _calls(func) == [MATVEC] and not _zeroes(func)  # the kernel overwrites its accumulators
    assert [(r.param, r.axes) for r in relayouts] == [(1, (1, 0))]  # (K, N) stored as (N, K)
    assert tuple(int(d) for d in func.params[1].shape) == (10, 64)


def test_int8_conv_takes_four_columns_per_call_where_they_divide_the_row():
    for width, kernel in ((8, "edgebin_matvec4_u8s8"), (6, "edgebin_matvec2_u8s8"), (5, "edgebin_matvec_u8s8")):
        func, relayouts = schedule_kernel(_conv(width), constant_params=frozenset({1}))
        assert _calls(func) == [kernel] and not _zeroes(func) and relayouts == []
        with plain_loops():
            assert _calls(schedule_kernel(_conv(width), constant_params=frozenset({1}))[0]) == []


def test_columns_per_call_fit_the_row_and_the_stack():
    assert [columns_per_call(pixels, 9, 16) for pixels in (28, 14, 7)] == [4, 2, 1]
    assert columns_per_call(28, 576, 64) == 1  # 2 * (576 + 4 * 64) bytes is over COLUMN_BYTES
    assert columns_per_call(14, 288, 32) == 2


def test_matmul_keeps_plain_loops_without_a_constant_weight_or_in_float():
    for func, constants in ((_matmul(), frozenset()), (_matmul("float32"), frozenset({1}))):
        scheduled, relayouts = schedule_kernel(func, constant_params=constants)
        assert _calls(scheduled) == [] and relayouts == []


def test_plain_loops_switch_turns_the_schedule_off():
    with plain_loops():
        func, relayouts = schedule_kernel(_matmul(), constant_params=frozenset({1}))
    assert _calls(func) == [] and relayouts == []


# --- a whole model ---------------------------------------------------------------------------------------------

SHAPE = (1, 1, 28, 28)
CORTEX_M4 = {"name": "cortex-m4", "tvm": {"kind": "c"}, "opt": "-O3",
             "cflags": ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]}
MAIN_C = r"""
#include <stdio.h>
#include "model.h"
int main(int argc, char** argv) {
  static float in[EDGEBIN_INPUT_ELEMS], out[EDGEBIN_OUTPUT_ELEMS];
  FILE* fi = fopen(argv[1], "rb");
  FILE* fo = fopen(argv[2], "wb");
  if (argc != 3 || !fi || !fo) return 2;
  while (fread(in, sizeof(float), EDGEBIN_INPUT_ELEMS, fi) == EDGEBIN_INPUT_ELEMS) {
    if (edgebin_model_run(in, out) != 0) return 3;
    fwrite(out, sizeof(float), EDGEBIN_OUTPUT_ELEMS, fo);
  }
  fclose(fi);
  fclose(fo);
  return 0;
}
"""


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> dict[str, Path]:
    """{"plain": TinyResNet int8 with plain loops, "micro": the same with the micro-kernel schedule}."""
    directory = tmp_path_factory.mktemp("mcu_kernels")
    torch.manual_seed(0)
    model = randomize_batch_norms(TinyResNet())
    gm = capture_graph(LoadedModel(module=model, input_shape=SHAPE, source=Path("tiny.pt"), format="state-dict"))
    summary = quantize_graph(gm, Recipe())
    calibrate(gm, np.random.default_rng(0).standard_normal((64, *SHAPE[1:]), dtype=np.float32))
    freeze(gm)
    onnx_path = directory / "int8.onnx"
    export_onnx(gm, SHAPE, onnx_path, metadata={"edgebin.method": "int8"}, layers=[r.to_dict() for r in summary.layers])
    with plain_loops():
        plain = compile_bundle(onnx_path, CORTEX_M4, directory / "plain")
    return {"plain": plain, "micro": compile_bundle(onnx_path, CORTEX_M4, directory / "micro")}


def _inputs(n: int = 16) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((n, *SHAPE[1:])).astype(np.float32)


def test_micro_kernel_bundle_calls_it_and_has_no_pad_kernels(bundles):
    plain, micro = (json.loads((bundles[name] / "bundle.json").read_text()) for name in ("plain", "micro"))
    assert (bundles["micro"] / MICRO_KERNEL_HEADER).is_file() and not (bundles["plain"] / MICRO_KERNEL_HEADER).exists()
    source = (bundles["micro"] / "kernels.c").read_text()
    # stem (one input channel, 3x3: its windows read from the image), c1 and c2 (14 pixels a row: 2 columns a call),
    # fc (1): uint8 activations, as exported; the convs requantize their own sums (mcu_schedule.fuse_requant), the
    # gemm's float epilogue stays TVM's
    assert [source.count(f"{kernel}(") for kernel in ("conv3x3_u8s8_rq", "matvec2_u8s8_rq", "matvec_u8s8")] == \
        [1, 2, 1]
    assert source.count("edgebin_rq_table(") == 3
    # c1 and c2 read ReLU outputs, whose uint8 zero point is 0: their padding is the conv's own, no pad kernel
    assert [k["ops"] for k in plain["kernels"]].count(["pad"]) == 0
    assert [k["ops"] for k in micro["kernels"]].count(["pad"]) == 0
    assert [(k["layer"], k["macs"]) for k in micro["kernels"] if k["macs"]] == \
        [(k["layer"], k["macs"]) for k in plain["kernels"] if k["macs"]]
    assert micro["weights_bytes"] == plain["weights_bytes"]  # the gemm weight is transposed, not grown
    assert micro["workspace_bytes"] == 0


def _run_native(bundle: Path, x: np.ndarray, tmp_path: Path) -> np.ndarray:
    work = tmp_path / bundle.name
    shutil.copytree(bundle, work)
    library = build_library(work, host=True)
    (work / "main.c").write_text(MAIN_C)
    exe = work / "model_test"
    subprocess.run(["gcc", "-O2", f"-I{work}", str(work / "main.c"), str(library), "-lm", "-o", str(exe)],
                   check=True, timeout=120)
    x.tofile(work / "in.bin")
    subprocess.run([str(exe), str(work / "in.bin"), str(work / "out.bin")], check=True, timeout=120)
    return np.fromfile(work / "out.bin", np.float32).reshape(len(x), -1)


@needs_gcc
def test_micro_kernel_schedule_keeps_native_outputs(bundles, tmp_path):
    x = _inputs()
    np.testing.assert_array_equal(_run_native(bundles["micro"], x, tmp_path),
                                  _run_native(bundles["plain"], x, tmp_path))


@needs_qemu
def test_micro_kernel_schedule_keeps_cortex_m4_outputs_and_saves_instructions(bundles, tmp_path):
    from edgebin.runners import QemuRunner

    runner = QemuRunner(targets.load("cortex-m4"), timeout_s=120)
    x = _inputs(4)
    results = {name: runner.run(runner.build(bundle, tmp_path / name), x) for name, bundle in bundles.items()}
    np.testing.assert_array_equal(results["micro"].outputs, results["plain"].outputs)
    # measured: 0.75x; these 8-channel layers spend most of their time in the requant epilogue, not in MACs
    assert results["micro"].instructions < 0.9 * results["plain"].instructions
