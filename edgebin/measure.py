"""Measurements of a compiled model outside this process, as report sections for `pipeline.validate`.

    sections = measure.under_qemu_user(out_dir, targets.load("rpi4"), ev, progress, timeout_s=600)
    sections = measure.over_ssh(out_dir, tgt, ev, "ssh://pi@raspberrypi.local", progress, timeout_s=600)
    sections = measure.over_rpc(out_dir, tgt, ev, "rpc://raspberrypi.local:9090", progress, timeout_s=600)

`under_qemu_user` runs a Raspberry Pi bundle here under qemu-aarch64 / qemu-arm and counts instructions per
inference (an emulator has no clock: never milliseconds). `over_ssh` copies the bundle to the board and runs it
there (milliseconds from the board's clock); `over_rpc` uploads the model library to TVM's RPC server on the board,
directly or through a tracker, and times it with `time_evaluator` on the board.

Each also compiles the FP32 model for the same target and runs it on the same samples, the same way: that is the
baseline every number stands next to, and its predictions are checked against onnxruntime's FP32 ones.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgebin.errors import UsageError
from edgebin.pipeline import FP32_ONNX, _dir_bytes, _kernel_sections


def on_device(out_dir: Path, tgt, ev, device: str, progress, timeout_s: float, repeat: int) -> dict[str, Any]:
    """`over_ssh` for ssh:// URLs, `over_rpc` for rpc:// and rpc-tracker:// ones."""
    if device.startswith("ssh://"):
        if tgt.kind != "cortex-a":
            raise UsageError(f"--device {device}: SSH runs Raspberry Pi bundles; {tgt.name} is {tgt.kind} (compile "
                             f"for a Pi target such as rpi4, or use --device rpc://HOST:9090 for a TVM library)")
        return over_ssh(out_dir, tgt, ev, device, progress, timeout_s)
    if tgt.kind == "cortex-m":
        raise UsageError(f"--device {device}: TVM's RPC runs TVM libraries on Linux boards; {tgt.name} is a "
                         f"microcontroller (use --device serial://PORT)")
    return over_rpc(out_dir, tgt, ev, device, progress, timeout_s, repeat)


def under_qemu_user(out_dir: Path, tgt, ev, progress, timeout_s: float) -> dict[str, Any]:
    """Every sample through the bundle and its FP32 twin under qemu-user; outputs and instructions per inference."""
    from edgebin.compile.cortex_a import load_bundle
    from edgebin.runners.qemu_user import QemuUserRunner

    bundle = load_bundle(Path(out_dir) / tgt.name)
    runner = QemuUserRunner(tgt, timeout_s=timeout_s)
    emulator = f"{tgt.linux.qemu} -cpu {tgt.linux.qemu_cpu}"
    with progress.stage(f"Running {len(ev.x)} samples under {emulator}"):
        result = runner.run(bundle.directory, ev.x)
    with tempfile.TemporaryDirectory(prefix="edgebin-fp32-") as tmp:
        with progress.stage(f"FP32 baseline: the float model for {tgt.name}, same samples, same emulator"):
            fp32 = _fp32_bundle(out_dir, tgt, bundle.runtime, Path(tmp))
            fp32_result = runner.run(fp32.directory, ev.x)
    per_symbol = result.per_symbol_instructions or {}
    per_layer = [{"symbol": k["symbol"], "layer": k.get("layer"), "kind": k.get("kind"), "macs": k.get("macs"),
                  "instructions": int(per_symbol.get(k["symbol"], 0))} for k in bundle.kernels]
    return {
        **_bundle_sections(bundle, tgt, result.outputs, ev),
        "fp32_compiled": fp32_result.outputs,
        "emulator": {"name": emulator, "samples": len(ev.x), "instructions_per_inference": result.instructions,
                     "macs": bundle.manifest.get("macs"), "per_layer": per_layer,
                     "fp32_instructions_per_inference": fp32_result.instructions},
    }


def over_ssh(out_dir: Path, tgt, ev, url: str, progress, timeout_s: float) -> dict[str, Any]:
    """Copy the bundle (and its FP32 twin) to the board over SSH, run every sample there, time on the board."""
    from edgebin.compile.cortex_a import load_bundle
    from edgebin.runners.ssh import SshRunner

    bundle = load_bundle(Path(out_dir) / tgt.name)
    runner = SshRunner(url, timeout_s=timeout_s)
    folder = runner.remote_folder(bundle)
    with progress.stage(f"Copying {tgt.name} to {runner.dest.login}:{folder} and running {len(ev.x)} samples"):
        result = runner.run(bundle.directory, ev.x)
    with tempfile.TemporaryDirectory(prefix="edgebin-fp32-") as tmp:
        with progress.stage(f"FP32 baseline: the float model for {tgt.name}, on the same board"):
            fp32 = _fp32_bundle(out_dir, tgt, bundle.runtime, Path(tmp))
            fp32_result = SshRunner(url, timeout_s=timeout_s, folder=f"{folder}-fp32").run(fp32.directory, ev.x)
    return {
        **_bundle_sections(bundle, tgt, result.outputs, ev),
        "fp32_compiled": fp32_result.outputs,
        "board": {"device": url, "samples": len(ev.x), "ms_per_inference": _ms(result.seconds),
                  "fp32_ms_per_inference": _ms(fp32_result.seconds), "timer": "runner-mean",
                  "timed_runs": len(ev.x)},
    }


def over_rpc(out_dir: Path, tgt, ev, url: str, progress, timeout_s: float, repeat: int = 50) -> dict[str, Any]:
    """Run the model library (and the FP32 one) on a board through TVM's RPC; median ms from time_evaluator."""
    from edgebin.runners.rpc import RpcRunner

    runner = RpcRunner(url, timeout_s=timeout_s)
    folder = Path(out_dir) / tgt.name
    if tgt.kind == "host":
        from edgebin.compile import load_artefact

        artefact = load_artefact(folder)
        sections = {"footprint": {"weights_bytes": artefact.weights_bytes(), "artefact_bytes": _dir_bytes(folder)},
                    "kernels": artefact.kernel_counts(), "kernels_detail": artefact.kernels,
                    "ops": artefact.op_counts(), "library": f"{tgt.name}/model.so"}
    else:
        from edgebin.compile.cortex_a import load_bundle

        bundle = load_bundle(folder)
        if bundle.runtime != "tvm":
            raise UsageError(f"{folder} is a runtime-free C bundle ({tgt.name}): TVM's RPC runs TVM libraries only; "
                             f"run it with --device ssh://USER@BOARD instead")
        sections = {**_bundle_sections(bundle, tgt, None, ev), "library": f"{tgt.name}/model.so"}
    with progress.stage(f"Running {len(ev.x)} samples on {url} and timing one {repeat} times there"):
        result = runner.run(folder / "model.so", ev.x, repeat=repeat)
    with tempfile.TemporaryDirectory(prefix="edgebin-fp32-") as tmp:
        with progress.stage(f"FP32 baseline: the float model for {tgt.name}, on the same board"):
            fp32_library = _fp32_library(out_dir, tgt, Path(tmp))
            fp32_result = runner.run(fp32_library, ev.x, repeat=repeat)
    return {
        **sections,
        "compiled": result.outputs,
        "exact": _exact(result.outputs, ev.outputs["onnxruntime"]),
        "fp32_compiled": fp32_result.outputs,
        "board": {"device": url, "samples": len(ev.x), "ms_per_inference": _ms(result.seconds),
                  "fp32_ms_per_inference": _ms(fp32_result.seconds), "timer": "time-evaluator-median",
                  "timed_runs": repeat},
    }


def _bundle_sections(bundle, tgt, outputs: np.ndarray | None, ev) -> dict[str, Any]:
    """Outputs, bit-exactness, footprint and kernel census of a Cortex-A bundle."""
    from edgebin.runners.ssh import board_files

    manifest, directory = bundle.manifest, bundle.directory
    runtime = [directory / name for name in ("libtvm_runtime.so", "libtvm_ffi.so") if (directory / name).is_file()]
    files = board_files(bundle)
    shipped = sum(_dir_bytes(p) if p.is_dir() else p.stat().st_size for p in files)
    return {
        "compiled": outputs,
        "exact": None if outputs is None else _exact(outputs, ev.outputs["onnxruntime"]),
        "footprint": {"weights_bytes": bundle.weights_bytes(), "artefact_bytes": shipped,
                      "runtime_bytes": sum(p.stat().st_size for p in runtime) if runtime else None,
                      "arena_bytes": manifest.get("arena_bytes"),
                      "arena_lower_bound_bytes": manifest.get("arena_lower_bound_bytes"),
                      "board_ram_bytes": tgt.ram_bytes},
        **_kernel_sections(bundle.kernels, manifest),
        "library": f"{tgt.name}/",
    }


def _fp32_bundle(out_dir: Path, tgt, runtime: str, tmp: Path):
    from edgebin.compile.cortex_a import compile_cortex_a

    return compile_cortex_a(Path(out_dir) / FP32_ONNX, tgt, tmp / "fp32", integer=False, runtime=runtime)


def _fp32_library(out_dir: Path, tgt, tmp: Path) -> Path:
    """The FP32 model compiled for the target as a TVM library (host: for this CPU)."""
    if tgt.kind == "host":
        from edgebin.compile import compile_onnx

        compile_onnx(Path(out_dir) / FP32_ONNX, tgt.tvm, tmp / "fp32", integer=False)
        return tmp / "fp32" / "model.so"
    return _fp32_bundle(out_dir, tgt, "tvm", tmp).directory / "model.so"


def _exact(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of samples whose outputs equal the reference's bit for bit."""
    n = len(reference)
    return float(np.mean(np.all(outputs.reshape(n, -1) == reference.reshape(n, -1), axis=1)))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3
