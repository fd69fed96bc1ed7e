"""Raspberry Pi bundles, built with the cross toolchains and run here under qemu-user, against onnxruntime.

Models: the conftest TinyResNet, once INT8 through edgebin's own pipeline (capture, quantize, calibrate, export
QDQ) and once exported in FP32. The 64-bit bundle (rpi4) is TVM's aarch64 library run by the Relax VM from TVM's
aarch64 wheels under qemu-aarch64; its int8 output must equal onnxruntime's (float requant on an FPU rounds as
onnxruntime does on these inputs: measured bit-exact on all 50). The 32-bit one (rpi4-armv7) is the runtime-free
C bundle run under qemu-arm. Tests that need the aarch64 TVM runtime skip, saying so, when its wheels cannot be
fetched (no network and nothing cached).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from conftest import TinyResNet, randomize_batch_norms  # pytest puts tests/ on sys.path (no __init__.py)

from edgebin import targets
from edgebin.capture import capture_graph
from edgebin.compile.cortex_a import compile_cortex_a, load_bundle
from edgebin.errors import DeviceError, EdgebinError, InputShapeError, ToolchainMissingError, UsageError
from edgebin.export import export_onnx
from edgebin.loading import LoadedModel
from edgebin.quant import Recipe, calibrate, freeze, quantize_graph
from edgebin.runners.qemu_user import QemuUserRunner
from edgebin.runtime_wheels import runtime_libraries

SHAPE = (1, 1, 28, 28)
N_INPUTS = 50
PI_TARGETS = ("rpi3", "rpi-zero2", "rpi4", "rpi5", "rpi3-armv7", "rpi4-armv7")

needs_aarch64 = pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
    reason="no aarch64 cross g++ / qemu-aarch64 (make setup)")
needs_armhf = pytest.mark.skipif(
    shutil.which("arm-linux-gnueabihf-gcc") is None or shutil.which("qemu-arm") is None,
    reason="no arm-linux-gnueabihf-gcc / qemu-arm (make setup)")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """{"int8": QDQ ONNX from edgebin's pipeline, "fp32": the same network in float}."""
    directory = tmp_path_factory.mktemp("pi_models")
    torch.manual_seed(0)
    model = randomize_batch_norms(TinyResNet())
    gm = capture_graph(LoadedModel(module=model, input_shape=SHAPE, source=Path("tiny.pt"), format="state-dict"))
    summary = quantize_graph(gm, Recipe())
    calibrate(gm, np.random.default_rng(0).standard_normal((64, *SHAPE[1:]), dtype=np.float32))
    freeze(gm)
    export_onnx(gm, SHAPE, directory / "int8.onnx", metadata={"edgebin.method": "int8"},
                layers=[r.to_dict() for r in summary.layers])
    torch.onnx.export(model, torch.randn(*SHAPE), str(directory / "fp32.onnx"), opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["logits"])
    return {"int8": directory / "int8.onnx", "fp32": directory / "fp32.onnx"}


@pytest.fixture(scope="module")
def aarch64_runtime():
    try:
        return runtime_libraries("manylinux_2_28_aarch64", timeout_s=300)
    except ToolchainMissingError as err:
        pytest.skip(f"the aarch64 TVM runtime wheels cannot be fetched: {err}")


@pytest.fixture(scope="module")
def rpi4_bundles(models, aarch64_runtime, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("rpi4")
    return {name: compile_cortex_a(path, "rpi4", out / name).directory for name, path in models.items()}


def _inputs(n: int = N_INPUTS) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((n, *SHAPE[1:])).astype(np.float32)


def _onnxruntime(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])


def test_pi_target_files():
    for name in PI_TARGETS:
        target = targets.load(name)
        assert target.kind == "cortex-a" and target.cores == 4 and target.ram_bytes >= 512 * 2**20
        assert target.linux is not None and target.runner == "qemu-user"
        if name.endswith("armv7"):
            assert target.linux.runtime == "c" and target.linux.qemu == "qemu-arm"
            assert target.tvm["mtriple"] == "armv7l-linux-gnueabihf" and "-mfloat-abi=hard" in target.cflags
        else:
            assert target.linux.runtime == "tvm" and target.linux.tool("g++") == "aarch64-linux-gnu-g++"
            assert target.tvm["mtriple"] == "aarch64-linux-gnu" and target.linux.wheel_platform
    assert [targets.load(n).tvm["mcpu"] for n in ("rpi3", "rpi-zero2", "rpi4", "rpi5")] == [
        "cortex-a53", "cortex-a53", "cortex-a72", "cortex-a76"]


@needs_aarch64
def test_rpi4_int8_equals_onnxruntime_under_qemu_aarch64(models, rpi4_bundles):
    x = _inputs()
    result = QemuUserRunner(targets.load("rpi4")).run(rpi4_bundles["int8"], x)
    ref = _onnxruntime(models["int8"], x)
    assert result.outputs.shape == ref.shape == (N_INPUTS, 10)
    exact = np.mean(np.all(result.outputs == ref, axis=1))
    assert exact >= 0.999, f"only {exact:.1%} of samples equal onnxruntime"  # measured: 100%


@needs_aarch64
def test_rpi4_fp32_agrees_with_onnxruntime(models, rpi4_bundles):
    x = _inputs()
    result = QemuUserRunner(targets.load("rpi4")).run(rpi4_bundles["fp32"], x, count_instructions=False)
    ref = _onnxruntime(models["fp32"], x)
    assert (result.outputs.argmax(1) == ref.argmax(1)).all()
    np.testing.assert_allclose(result.outputs, ref, atol=1e-4, rtol=0)  # summation order only
    assert result.instructions is None


@needs_aarch64
def test_instructions_are_counted_per_inference_and_per_kernel(rpi4_bundles):
    bundle = load_bundle(rpi4_bundles["int8"])
    runner = QemuUserRunner(targets.load("rpi4"))
    one, many = runner.run(bundle.directory, _inputs(1)), runner.run(bundle.directory, _inputs(8))
    assert one.instructions > 50_000  # three int8 convs of 28x28 and 14x14 maps: ~280 k MACs
    assert abs(many.instructions - one.instructions) < 0.02 * one.instructions  # per inference: N cancels out
    per_symbol = many.per_symbol_instructions
    convs = [k["symbol"] for k in bundle.kernels if "conv2d" in k["ops"]]
    assert convs and all(per_symbol.get(symbol, 0) > 0 for symbol in convs)
    assert "libtvm_runtime.so" in per_symbol  # the Relax VM between kernels is counted, and named
    assert abs(sum(per_symbol.values()) - many.instructions) <= len(per_symbol)  # rounding only


@needs_aarch64
def test_rpi4_bundle_holds_what_the_board_needs(rpi4_bundles):
    directory = rpi4_bundles["int8"]
    bundle = load_bundle(directory)
    for name in ("model.so", "libtvm_runtime.so", "libtvm_ffi.so", "runner", "run.sh", "input.txt", "README.md"):
        assert (directory / name).is_file(), name
    for name in ("model.so", "libtvm_runtime.so", "libtvm_ffi.so", "runner"):
        header = (directory / name).read_bytes()[:20]
        assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183, name  # EM_AARCH64
    assert b"$ORIGIN" in (directory / "runner").read_bytes()  # finds the runtime beside itself on the board
    assert os.access(directory / "run.sh", os.X_OK) and os.access(directory / "runner", os.X_OK)
    assert (directory / "input.txt").read_text().split() == ["float32", "1", "1", "28", "28"]
    assert bundle.runtime == "tvm" and bundle.input_shape == SHAPE and bundle.output_shape == (1, 10)
    assert bundle.kernel_counts()["float"] == 0 and bundle.manifest["integer"] is True
    assert bundle.manifest["macs"] == 8 * 9 * 28 * 28 + 2 * 8 * 8 * 9 * 14 * 14 + 8 * 10  # stem, block, fc
    assert json.loads((directory / "bundle.json").read_text())["tvm_target"]["mcpu"] == "cortex-a72"


@needs_armhf
def test_rpi4_armv7_c_bundle_runs_under_qemu_arm(models, tmp_path):
    bundle = compile_cortex_a(models["int8"], "rpi4-armv7", tmp_path / "armv7")
    assert bundle.runtime == "c" and (bundle.directory / "src" / "model.c").is_file()
    assert not (bundle.directory / "libtvm_runtime.so").exists()
    header = (bundle.directory / "runner").read_bytes()[:20]
    assert int.from_bytes(header[18:20], "little") == 40  # EM_ARM: a 32-bit executable
    x = _inputs()
    result = QemuUserRunner(targets.load("rpi4-armv7")).run(bundle.directory, x)
    ref = _onnxruntime(models["int8"], x)
    assert np.mean(np.all(result.outputs == ref, axis=1)) >= 0.999  # fixed-point requant: measured 100%
    assert result.instructions > 50_000
    assert all(result.per_symbol_instructions.get(k["symbol"], 0) > 0 for k in bundle.kernels
               if "conv2d" in k["ops"])


def test_error_paths(models, tmp_path, monkeypatch):
    rpi4 = targets.load("rpi4")
    with pytest.raises(UsageError, match="not a Cortex-A board"):
        compile_cortex_a(models["int8"], "cortex-m4", tmp_path / "m4")
    with pytest.raises(UsageError, match="TVM publishes no runtime"):
        compile_cortex_a(models["int8"], "rpi4-armv7", tmp_path / "x", runtime="tvm")
    with pytest.raises(UsageError, match="Cortex-A"):
        QemuUserRunner(targets.load("cortex-m4"))
    with pytest.raises(UsageError, match="not a Cortex-A bundle"):
        QemuUserRunner(rpi4).run(tmp_path, _inputs(1))
    with pytest.raises(ToolchainMissingError, match="no TVM runtime wheels exist for manylinux_2_28_armv7l"):
        runtime_libraries("manylinux_2_28_armv7l")
    monkeypatch.setenv("EDGEBIN_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(ToolchainMissingError, match="make pi-runtime"):
        runtime_libraries("manylinux_2_28_aarch64", fetch=False)
    monkeypatch.setattr(sys, "executable", shutil.which("false") or "/bin/false")  # pip that fails, offline-like
    with pytest.raises(ToolchainMissingError, match="could not download .* put libtvm_runtime.so, libtvm_ffi.so"):
        runtime_libraries("manylinux_2_28_aarch64")
    assert not any((tmp_path / "empty-cache").rglob("*.so"))
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no cross compilers, no qemu
    with pytest.raises(ToolchainMissingError, match="apt-get install gcc-aarch64-linux-gnu g\\+\\+-aarch64-linux-gnu"):
        compile_cortex_a(models["int8"], rpi4, tmp_path / "out")
    with pytest.raises(ToolchainMissingError, match="gcc-arm-linux-gnueabihf"):
        compile_cortex_a(models["int8"], "rpi3-armv7", tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing half-written


@needs_aarch64
def test_emulator_errors(rpi4_bundles, tmp_path, monkeypatch):
    bundle = rpi4_bundles["int8"]
    with pytest.raises(UsageError, match="compiled for rpi4, not rpi5"):
        QemuUserRunner(targets.load("rpi5")).run(bundle, _inputs(1))
    with pytest.raises(InputShapeError, match="samples of shape"):
        QemuUserRunner(targets.load("rpi4")).run(bundle, np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(DeviceError, match="did not finish within"):
        QemuUserRunner(targets.load("rpi4"), timeout_s=0.01).run(bundle, _inputs(4))
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    (broken / "libtvm_runtime.so").unlink()
    with pytest.raises(DeviceError, match="exit 127|could not be loaded"):
        QemuUserRunner(targets.load("rpi4")).run(broken, _inputs(1), count_instructions=False)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(ToolchainMissingError, match="qemu-aarch64 not found.*apt-get install qemu-user"):
        QemuUserRunner(targets.load("rpi4")).run(bundle, _inputs(1))
    assert issubclass(ToolchainMissingError, EdgebinError)
