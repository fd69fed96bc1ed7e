"""QemuRunner on a hand-made bundle that follows docs/mcu-bundle.md, on every Cortex-M target's QEMU machine.

The toy model doubles its 64 inputs and multiplies them by a constant 10 x 64 matrix of halves. With integer
inputs every product and sum is exact in float32, so the firmware must give numpy's answer bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgebin import targets
from edgebin.errors import DeviceError, InputShapeError, ToolchainMissingError, UsageError
from edgebin.runners import FirmwareBuildError, QemuRunner, measure_footprint
from edgebin.runners.plugin import SOURCE, build_plugin

IN, OUT = 64, 10
WEIGHTS = np.array([[((i * 7 + j * 3) % 5 - 2) * 0.5 for i in range(IN)] for j in range(OUT)], dtype=np.float32)

needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
    reason="qemu-system-arm or arm-none-eabi-gcc not installed; run make setup")

MODEL_H = f"""#ifndef EDGEBIN_MODEL_H
#define EDGEBIN_MODEL_H
#define EDGEBIN_INPUT_ELEMS {IN}
#define EDGEBIN_OUTPUT_ELEMS {OUT}
#define EDGEBIN_ARENA_BYTES 256
int edgebin_model_run(const float* input, float* output);
const char* edgebin_model_name(void);
#endif
"""
KERNELS_C = """#include <stdint.h>
#include "model.h"
int32_t __tvm_ffi_fused_dense(const float* x, const float* w, float* y) {
  for (int j = 0; j < EDGEBIN_OUTPUT_ELEMS; j++) {
    float acc = 0.0f;
    for (int i = 0; i < EDGEBIN_INPUT_ELEMS; i++) acc += x[i] * w[j * EDGEBIN_INPUT_ELEMS + i];
    y[j] = acc;
  }
  return 0;
}
"""
MODEL_C = """#include <stdint.h>
#include "model.h"
int32_t __tvm_ffi_fused_dense(const float* x, const float* w, float* y);
static uint8_t arena[EDGEBIN_ARENA_BYTES] __attribute__((aligned(16)));
static const float weights[] __attribute__((aligned(16))) = {%s};
int edgebin_model_run(const float* input, float* output) {
  float* doubled = (float*)arena;
  %s
  for (int i = 0; i < EDGEBIN_INPUT_ELEMS; i++) doubled[i] = input[i] * 2.0f;
  return __tvm_ffi_fused_dense(doubled, weights, output);
}
const char* edgebin_model_name(void) { return "toy"; }
"""


def write_toy_bundle(directory: Path, *, prologue: str = "") -> Path:
    """A bundle per the contract; `prologue` is C run at the top of edgebin_model_run (to make it misbehave)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "model.h").write_text(MODEL_H)
    (directory / "kernels.c").write_text(KERNELS_C)
    (directory / "model.c").write_text(MODEL_C % (", ".join(f"{w:.1f}f" for w in WEIGHTS.ravel()), prologue))
    (directory / "bundle.json").write_text(json.dumps({
        "schema_version": 1, "target": "cortex-m4",
        "input": {"name": "input", "shape": [1, IN], "dtype": "float32"},
        "output": {"name": "logits", "shape": [1, OUT], "dtype": "float32"},
        "arena_bytes": 256, "weights_bytes": WEIGHTS.nbytes,
        "kernels": [{"symbol": "__tvm_ffi_fused_dense", "name": "fused_dense", "kind": "float", "ops": ["dense"],
                     "macs": IN * OUT, "layer": "fc"}],
        "sources": ["model.c", "kernels.c"],
    }))
    return directory


def samples(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-8, 9, size=(n, IN)).astype(np.float32)


def reference(x: np.ndarray) -> np.ndarray:
    return ((2 * x.astype(np.float64)) @ WEIGHTS.T.astype(np.float64)).astype(np.float32)


@pytest.fixture(scope="module")
def m4_firmware(tmp_path_factory) -> tuple[QemuRunner, Path]:
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc not installed; run make setup")
    root = tmp_path_factory.mktemp("m4")
    runner = QemuRunner(targets.load("cortex-m4"), timeout_s=60)
    return runner, runner.build(write_toy_bundle(root / "bundle"), root / "build")


@needs_qemu
def test_cortex_m4_outputs_match_numpy_and_instructions_are_counted(m4_firmware):
    runner, elf = m4_firmware
    x = samples(20)
    result = runner.run(elf, x)
    assert result.outputs.shape == (20, OUT) and result.outputs.dtype == np.float32
    np.testing.assert_array_equal(result.outputs, reference(x))
    per_symbol = result.per_symbol_instructions
    assert {"edgebin_model_run", "__tvm_ffi_fused_dense"} <= set(per_symbol)
    assert "main" not in per_symbol and "edgebin_harness_begin" not in per_symbol  # the harness is not the model
    # 640 multiply-adds need at least 640 instructions; a plain loop stays well under 10 per MAC.
    assert IN * OUT <= per_symbol["__tvm_ffi_fused_dense"] < 10 * IN * OUT
    assert abs(sum(per_symbol.values()) - result.instructions) <= len(per_symbol)  # per-symbol means are rounded
    assert result.seconds is None
    assert 0 < result.stack_bytes < 4096


@needs_qemu
def test_instruction_count_excludes_startup_and_file_io(m4_firmware):
    runner, elf = m4_firmware
    one = runner.run(elf, samples(1))
    many = runner.run(elf, samples(20, seed=1))
    # The toy's work does not depend on the data, so per-inference counts agree whatever N was.
    assert one.instructions == many.instructions
    assert one.per_symbol_instructions == many.per_symbol_instructions


@needs_qemu
def test_run_without_counting_returns_outputs_only(m4_firmware):
    runner, elf = m4_firmware
    x = samples(3, seed=2)
    result = runner.run(elf, x.reshape(3, 1, IN), count_instructions=False)
    np.testing.assert_array_equal(result.outputs, reference(x))
    assert result.instructions is None and result.per_symbol_instructions is None


@needs_qemu
@pytest.mark.parametrize("name", ["cortex-m7", "cortex-m33", "cortex-m55"])
def test_other_cortex_m_targets_build_and_run(tmp_path, name):
    runner = QemuRunner(targets.load(name), timeout_s=60)
    elf = runner.build(write_toy_bundle(tmp_path / "bundle"), tmp_path / "build")
    x = samples(1, seed=3)
    result = runner.run(elf, x)
    np.testing.assert_array_equal(result.outputs, reference(x))
    assert result.instructions > IN * OUT


@needs_qemu
def test_model_that_hangs_times_out(tmp_path):
    runner = QemuRunner(targets.load("cortex-m4"), timeout_s=3)
    elf = runner.build(write_toy_bundle(tmp_path / "bundle", prologue='for (;;) __asm__ volatile("");'),
                       tmp_path / "build")
    with pytest.raises(DeviceError, match=r"mps2-an386.*within 3 s.*--timeout"):
        runner.run(elf, samples(2), count_instructions=False)


@needs_qemu
def test_model_error_names_the_sample(tmp_path):
    runner = QemuRunner(targets.load("cortex-m4"), timeout_s=60)
    elf = runner.build(write_toy_bundle(tmp_path / "bundle", prologue="if (input[0] > 5.0f) return -3;"),
                       tmp_path / "build")
    x = samples(10)
    x[:, 0] = 0.0
    x[6, 0] = 7.0
    with pytest.raises(DeviceError, match=r"returned an error \(-3\) on sample 6"):
        runner.run(elf, x, count_instructions=False)


@needs_qemu
def test_cpu_fault_names_the_function(tmp_path):
    runner = QemuRunner(targets.load("cortex-m4"), timeout_s=60)
    elf = runner.build(write_toy_bundle(tmp_path / "bundle", prologue="__builtin_trap();"), tmp_path / "build")
    with pytest.raises(DeviceError, match=r"hardfault in edgebin_model_run"):
        runner.run(elf, samples(1), count_instructions=False)


def test_model_too_big_for_the_qemu_machine_says_what_it_needs(tmp_path):
    if shutil.which("arm-none-eabi-gcc") is None:
        pytest.skip("arm-none-eabi-gcc not installed; run make setup")
    bundle = write_toy_bundle(tmp_path / "bundle", prologue="extern const float big[]; output[0] = big[input[0] > 0];")
    (bundle / "big.c").write_text("const float big[160000] = {1.0f};\n")  # 640,000 B: more than M55's 512 KiB ITCM
    manifest = json.loads((bundle / "bundle.json").read_text())
    (bundle / "bundle.json").write_text(json.dumps({**manifest, "sources": ["model.c", "kernels.c", "big.c"]}))
    runner = QemuRunner(targets.load("cortex-m55"))
    with pytest.raises(FirmwareBuildError, match=r"needs 6\d\d,\d\d\d B of flash .* mps3-an547 offers \(524,288 B"):
        runner.build(bundle, tmp_path / "build")
    assert measure_footprint(tmp_path / "build" / "footprint.elf").weights_bytes == 640_000 + WEIGHTS.nbytes


def test_missing_cross_compiler_names_the_debian_package(tmp_path, monkeypatch):
    bundle = write_toy_bundle(tmp_path / "bundle")
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolchainMissingError, match="apt-get install gcc-arm-none-eabi picolibc-arm-none-eabi") as err:
        QemuRunner(targets.load("m4")).build(bundle, tmp_path / "build")
    assert err.value.exit_code == 7


@needs_qemu
def test_missing_qemu_names_the_debian_package(m4_firmware, tmp_path, monkeypatch):
    runner, elf = m4_firmware
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ToolchainMissingError, match="apt-get install qemu-system-arm"):
        runner.run(elf, samples(1))


def test_bad_bundle_and_bad_inputs_are_rejected(m4_firmware, tmp_path):
    runner, elf = m4_firmware
    with pytest.raises(UsageError, match="no bundle.json"):
        runner.build(tmp_path, tmp_path / "build")
    with pytest.raises(InputShapeError, match="64 float32"):
        runner.run(elf, np.zeros((2, 63), np.float32))
    with pytest.raises(UsageError, match="built for cortex-m4"):
        QemuRunner(targets.load("cortex-m7")).run(elf, samples(1))
    with pytest.raises(UsageError, match="no \\[qemu\\] machine"):
        QemuRunner(targets.load("x86"))


def test_cortex_m_target_files():
    expected = {"cortex-m4": "mps2-an386", "cortex-m7": "mps2-an500", "cortex-m33": "mps2-an505",
                "cortex-m55": "mps3-an547"}
    for name, machine in expected.items():
        target = targets.load(name)
        assert (target.kind, target.runner, target.tvm["kind"], target.qemu.machine) == ("cortex-m", "qemu", "c",
                                                                                         machine)
        assert f"-mcpu={name}" in target.cflags and target.board in target.description
        assert target.flash_bytes > 0 and target.ram_bytes > 0
    assert targets.load("cortex-m").name == targets.load("m4").name == "cortex-m4"
    assert targets.load("cortex-m4").flash_bytes == 512 * 1024  # STM32F446RE


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed; run make setup")
def test_plugin_is_built_into_the_cache_and_rebuilt_when_stale(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEBIN_CACHE", str(tmp_path))
    path = build_plugin()
    assert path == tmp_path / "qemu-plugin" / "libinsncount.so"
    assert path.read_bytes()[:4] == b"\x7fELF"
    os.utime(path, (1, 1))  # older than insncount.c
    assert build_plugin().stat().st_mtime >= SOURCE.stat().st_mtime
    built = path.stat().st_mtime_ns
    assert build_plugin().stat().st_mtime_ns == built  # up to date: not rebuilt
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    with pytest.raises(ToolchainMissingError, match="apt-get install gcc"):
        build_plugin(force=True)
