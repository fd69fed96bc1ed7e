"""The pipeline and CLI for Raspberry Pi targets: `edgebin compress --target rpi4` builds the bundle, runs the
evaluation samples under qemu-aarch64 next to the FP32 model's bundle, and reports instructions (never time).
The model is the conftest TinyResNet on 8x8 digits. The runtime-free C bundle of the 32-bit targets goes through
the same code (tests/test_ssh_runner.py deploys one; tests/test_cortex_a.py runs one under qemu-arm)."""

from __future__ import annotations

import json
import shutil

import pytest

from edgebin import pipeline
from edgebin.cli import main
from edgebin.errors import ToolchainMissingError, UsageError
from edgebin.runtime_wheels import runtime_libraries

needs_aarch64 = pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-g++") is None or shutil.which("qemu-aarch64") is None,
    reason="no aarch64 cross g++ / qemu-aarch64 (make setup)")


def _cli(args, capsys) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as done:
        code = done.code
    printed = capsys.readouterr()
    return code, printed.out, printed.err


@needs_aarch64
def test_rpi4_run_counts_instructions_next_to_fp32(tiny_digits_run, tmp_path, capsys):
    try:
        runtime_libraries("manylinux_2_28_aarch64", timeout_s=300)
    except ToolchainMissingError as err:
        pytest.skip(f"the aarch64 TVM runtime wheels cannot be fetched: {err}")
    out = tmp_path / "out"
    shutil.copytree(tiny_digits_run, out)
    code, printed, err = _cli(["compile", out / "model.onnx", "--target", "rpi4"], capsys)
    assert code == 0, err
    assert "edgebin deploy" in " ".join(printed.split()) and (out / "rpi4" / "bundle.json").is_file()
    code, _, err = _cli(["validate", out, "--eval-samples", "40"], capsys)  # the target is the one in out/
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    emulator, agreement, accuracy = report["emulator"], report["agreement"], report["accuracy"]
    assert report["target"] == {"name": "rpi4", "kind": "cortex-a", "description": report["target"]["description"]}
    assert emulator["name"] == "qemu-aarch64 -cpu cortex-a72" and emulator["samples"] == 40
    assert emulator["instructions_per_inference"] > 10_000 and emulator["fp32_instructions_per_inference"] > 10_000
    convs = [layer for layer in emulator["per_layer"] if layer["macs"]]
    assert len(convs) == 4 and all(layer["instructions"] > 0 for layer in convs)  # 3 convs and the linear layer
    assert agreement["exact"] >= 0.99 and agreement["top1"] >= 0.99 and agreement["fp32_top1"] == 1.0
    assert accuracy["samples"] == 40 and accuracy["compiled_fp32"] == accuracy["fp32"]  # FP32 build = FP32 ONNX
    assert report["latency"]["engines"] == {} and report["board"]["ms_per_inference"] is None  # no clock
    footprint = report["footprint"]
    assert footprint["runtime_bytes"] > 4_000_000 and footprint["artefact_bytes"] > footprint["runtime_bytes"]
    assert report["kernels"].get("float", 0) == 0 and report["fallbacks"] == []
    assert report["artefacts"]["library"] == "rpi4/"
    assert "Not timed" in (out / "report.md").read_text()


def test_target_choice_and_device_errors(tiny_digits_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(tiny_digits_run, out)
    for name in ("rpi4", "x86"):  # fake artefacts: only the folder names matter here
        (out / name).mkdir()
        (out / name / ("bundle.json" if name == "rpi4" else "artefact.json")).write_text("{}")
    with pytest.raises(UsageError, match="artefacts for rpi4, x86: pass --target"):
        pipeline.validate(out)
    with pytest.raises(UsageError, match="deploy copies over SSH"):
        pipeline.deploy(out, to="rpc://board:9090")
    with pytest.raises(UsageError, match="SSH runs Raspberry Pi bundles"):
        pipeline.validate(out, target="x86", device="ssh://pi@board", eval_samples=2)
