"""Compile an ONNX model for a Raspberry Pi (Cortex-A, Linux): a folder to copy to the board and run there.

    bundle = compile_cortex_a(Path("out/model.onnx"), targets.load("rpi4"), Path("out/rpi4"))
    bundle.kernel_counts()             # {"int8": 9, "float": 0, "convert": 1, "data": 2}
    # on the board: ./run.sh inputs.bin outputs.bin N      here: QemuUserRunner(rpi4).run(bundle.directory, x)

Two kinds of bundle, chosen by the target file's `[linux] runtime` (or `runtime=`):

- "tvm" (64-bit Pi OS): the host build order (`host.lower`: QdqToInt8 with float requant, which Cortex-A's FPU
  runs exactly, legalize, fuse, CPU loop order, 2- to 4-bit weights kept packed and decoded once per kernel run,
  docs/lut-weights.md "Host"), `tvm.compile` for the Arm LLVM target and `export_library` with the cross g++,
  giving `model.so`, a Relax VM executable. Beside it: `libtvm_runtime.so` and `libtvm_ffi.so` from TVM's aarch64
  wheels (`edgebin.runtime_wheels`, the versions installed here) and `runner`, `pi_runner/runner.cc` cross-built
  against them with RUNPATH $ORIGIN (cached: it does not depend on the model).
- "c" (32-bit Pi OS, for which TVM publishes no runtime; or any Pi without a TVM runtime): the Cortex-M emitter's
  runtime-free C (`mcu_emit.compile_bundle`: int8 with fixed-point requant, static arena) in `src/`, linked with
  `pi_runner/c_runner.c` into one `runner` by the cross gcc with the target's `cflags`.

Both get `run.sh`, `bundle.json` (shapes, target, kernel census, how to run it) and a README for the board. The
runner reads N samples from a file, runs them one at a time and writes N outputs; `edgebin.runners.qemu_user`
runs it here under qemu-user and counts instructions between the markers it calls around each inference.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgebin import targets
from edgebin.atomic import staged_dir
from edgebin.errors import DeviceError, InputShapeError, ModelLoadError, ToolchainMissingError, UsageError
from edgebin.targets import RUNTIMES, Target

log = logging.getLogger(__name__)

FORMAT = "edgebin.cortex-a/1"
MANIFEST = "bundle.json"
RUNNER_DIR = Path(__file__).with_name("pi_runner")
COMPILE_TIMEOUT_S = 900.0  # one cross gcc call: kernels.c of a big model at -O3 takes a while on a small machine
INPUTS, OUTPUTS, SAMPLES = "{inputs}", "{outputs}", "{n}"  # placeholders of bundle.json "run"


@dataclass(frozen=True)
class CortexABundle:
    """A compiled Cortex-A bundle: the folder and what its bundle.json says.

    >>> bundle = load_bundle(Path("out/rpi4"))
    >>> bundle.runtime, bundle.input_shape, bundle.kernel_counts()
    ("tvm", (1, 1, 28, 28), {"int8": 9, "float": 0, "convert": 1, "data": 2})
    """

    directory: Path
    manifest: dict[str, Any]

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def runtime(self) -> str:
        return self.manifest["runtime"]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["input"]["shape"])

    @property
    def output_shape(self) -> tuple[int, ...]:
        return tuple(self.manifest["output"]["shape"])

    @property
    def kernels(self) -> list[dict[str, Any]]:
        return self.manifest["kernels"]

    def kernel_counts(self) -> dict[str, int]:
        """Kernels per arithmetic kind, as the host artefact counts them."""
        counts = dict.fromkeys(("int8", "float", "convert", "data"), 0)
        for kernel in self.kernels:
            counts[kernel.get("kind", "data")] = counts.get(kernel.get("kind", "data"), 0) + 1
        return counts

    def weights_bytes(self) -> int:
        return int(self.manifest["weights_bytes"])

    def command(self, inputs: str, outputs: str, n: int, *, absolute: bool = False) -> list[str]:
        """The runner's command line for `n` samples: bundle files relative to the folder, or `absolute` paths."""
        values = {INPUTS: inputs, OUTPUTS: outputs, SAMPLES: str(n)}
        return [values[arg] if arg in values else str(self.directory / arg) if absolute else arg
                for arg in self.manifest["run"]]


def compile_cortex_a(onnx_path: Path, target: Target | str, out_dir: Path, *, integer: bool = True,
                     runtime: str | None = None, requant: str = "float", tune: Any = None,
                     progress: Any = None) -> CortexABundle:
    """Compile `onnx_path` for a Cortex-A `target` into the bundle folder `out_dir` (written atomically).

    `tune` (a `tune.TuneConfig`, TVM runtime only): kernels tuned on the board over RPC, or taken from its database.

    With `integer` (the default) a QDQ model computes in int8; a float model, or `integer=False`, in float32.
    `runtime` overrides the target file's: "tvm" (model.so + TVM runtime) or "c" (runtime-free C). `requant` is
    QdqToInt8's for the TVM bundle ("float", or "fixed": int64 fixed point); the C bundle always uses fixed point.
    """
    from edgebin.compile.qdq_to_int import REQUANT_MODES

    if requant not in REQUANT_MODES:
        raise UsageError(f"unknown requant mode {requant!r}; valid: {', '.join(REQUANT_MODES)}")
    target = targets.load(target) if isinstance(target, str) else target
    if target.kind != "cortex-a" or target.linux is None:
        raise UsageError(f"target {target.name} is {target.kind}, not a Cortex-A board; valid: "
                         f"{', '.join(t.name for t in targets.all_targets() if t.kind == 'cortex-a')}")
    runtime = runtime or target.linux.runtime
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    if runtime == "tvm" and not target.linux.wheel_platform:
        raise UsageError(f"target {target.name}: TVM publishes no runtime for it (no {target.linux.triple} wheels); "
                         f"use runtime 'c', the runtime-free C bundle")
    if runtime == "c" and tune is not None:
        if tune.trials:
            raise UsageError(f"--tune tunes TVM kernels; {target.name}'s runtime-free C bundle has none")
        tune = None  # a database from an earlier TVM bundle: nothing to apply it to
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if not onnx_path.is_file():
        raise ModelLoadError(f"no such ONNX file: {onnx_path}")
    require_tool(target, "g++" if runtime == "tvm" else "gcc")  # before minutes of compiling
    with staged_dir(out_dir) as stage:
        build = _build_tvm if runtime == "tvm" else _build_c
        tuning = {"tune": tune, "progress": progress} if tune is not None else {}  # checked: tvm runtime
        manifest = build(onnx_path, target, stage, integer=integer, requant=requant, **tuning)
        manifest.update(_board_record(target, runtime))
        manifest["kernel_counts"] = CortexABundle(stage, manifest).kernel_counts()
        (stage / "run.sh").write_text(_run_script(manifest))
        (stage / "run.sh").chmod(0o755)
        (stage / "README.md").write_text(_readme(onnx_path, target, manifest))
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    log.info("Cortex-A bundle for %s (%s, runtime %s) in %s: kernels %s", onnx_path.name, target.name, runtime,
             out_dir, CortexABundle(out_dir, manifest).kernel_counts())
    return CortexABundle(out_dir, manifest)


def load_bundle(directory: Path) -> CortexABundle:
    """Read a bundle folder written by `compile_cortex_a` (UsageError when it is not one)."""
    directory = Path(directory)
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"format {manifest.get('format')!r}, expected {FORMAT!r}")
        for key in ("input", "output"):
            [int(d) for d in manifest[key]["shape"]]
        missing = [key for key in ("run", "kernels", "target") if key not in manifest]
        if missing:
            raise KeyError(", ".join(missing))
    except OSError:
        raise UsageError(f"{directory} is not a Cortex-A bundle: no {MANIFEST} (make one with "
                         f"`edgebin compile MODEL --target rpi4`)") from None
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{path} is malformed ({type(err).__name__}: {err}); compile again") from None
    return CortexABundle(directory, manifest)


# --- runtime "tvm": model.so, the TVM runtime from the wheels, runner.cc -------------------------------------


def _build_tvm(onnx_path: Path, target: Target, stage: Path, *, integer: bool, requant: str, tune: Any = None,
               progress: Any = None) -> dict[str, Any]:
    from edgebin.compile import importer
    from edgebin.compile import tvm_adapter as tvm_api
    from edgebin.compile.host import export_executable, lower_and_build
    from edgebin.compile.qdq_to_int import is_quantized
    from edgebin.runtime_wheels import runtime_libraries

    assert target.linux is not None and target.linux.wheel_platform  # checked by compile_cortex_a
    libs = runtime_libraries(target.linux.wheel_platform)  # first: a failed download should not cost a build
    model = importer.load_onnx(onnx_path)
    shapes = importer.input_shapes(model)
    if len(shapes) != 1:
        raise InputShapeError(f"{onnx_path}: a Cortex-A bundle takes one input, the model has {list(shapes)}")
    mod = importer.from_onnx(model, shapes)  # UnsupportedOpsError listing every unknown op
    integer = integer and is_quantized(mod)
    # the host's build order for the Arm LLVM target; MetaSchedule (over RPC on the board, or its database)
    lowered, executable, tuning = lower_and_build(model, shapes, tvm_api.make_target(target.tvm), integer=integer,
                                                  requant=requant, tune=tune, progress=progress, mod=mod)
    export_executable(executable, stage / "model.so", tvm_api.make_target(target.tvm), lowered.mod,
                      compiler=require_tool(target, "g++"))  # with the C kernels that the kernels call

    shutil.copy2(libs.runtime, stage / "libtvm_runtime.so")
    shutil.copy2(libs.ffi, stage / "libtvm_ffi.so")
    shutil.copy2(runner_binary(target, libs.directory), stage / "runner")
    shutil.copy2(RUNNER_DIR / "runner.cc", stage / "runner.cc")  # to rebuild on the board (README)
    (input_name, input_shape), = shapes.items()
    input_dtype = _onnx_dtype(model, input_name)
    (stage / "input.txt").write_text(f"{input_dtype} {' '.join(map(str, input_shape))}\n")

    kernels = [{"symbol": f"__tvm_ffi_{record['name']}", **record,
                "macs": lowered.macs.get(record["name"], 0) * int(record.get("calls", 1))}
               for record in lowered.kernels]
    return {
        "format": FORMAT,
        "input": {"name": input_name, "shape": list(input_shape), "dtype": input_dtype},
        "output": _onnx_output(model),
        "integer": integer,
        "requant": requant if integer else None,
        "weights_bytes": int(lowered.weights_bytes),
        "macs": sum(k["macs"] for k in kernels),
        "ops": lowered.ops,
        "kernels": kernels,
        "run": ["./runner", "model.so", INPUTS, OUTPUTS, SAMPLES],
        "files": ["model.so", "libtvm_runtime.so", "libtvm_ffi.so", "runner", "input.txt", "run.sh", "runner.cc"],
        "tvm_target": dict(target.tvm),
        "tuning": tuning.to_dict() if tuning is not None else {},
        "tvm_runtime": {"platform": libs.platform, "apache-tvm": libs.tvm_version,
                        "apache-tvm-ffi": libs.ffi_version},
        **({"lut_weights": lowered.lut_layers} if lowered.lut_layers else {}),
    }


def kernel_macs(func) -> int:
    """Multiply-accumulates of one call of a PrimFunc: the iteration space of every reduction block whose stores
    multiply loaded values (with or without its init split off by the loop schedule)."""
    from edgebin.compile import tvm_adapter as tvm_api

    def multiplies(expr) -> bool:
        if isinstance(expr, tvm_api.TensorLoad):
            return False  # index arithmetic inside a load is not a MAC
        if isinstance(expr, tvm_api.tirx.Mul):
            return True
        children = [getattr(expr, name, None) for name in ("a", "b", "value", "true_value", "false_value")]
        return any(multiplies(c) for c in [*children, *(getattr(expr, "args", None) or [])] if c is not None)

    total = 0
    for block in tvm_api.collect(func.body, tvm_api.s_tir.SBlock):
        if not any(int(iv.iter_type) == 2 for iv in block.iter_vars):  # 2: a reduction axis
            continue
        if any(multiplies(store.value) for store in tvm_api.collect(block.body, tvm_api.tirx.BufferStore)):
            total += int(np.prod([int(iv.dom.extent) for iv in block.iter_vars]))
    return total


def runner_binary(target: Target, lib_dir: Path) -> Path:
    """runner.cc cross-built for `target` against the runtime in `lib_dir`; cached, as it does not depend on the
    model (keyed by the source, the compiler and the runtime folder, which names the TVM versions)."""
    assert target.linux is not None
    cxx = require_tool(target, "g++")
    source = RUNNER_DIR / "runner.cc"
    key = hashlib.sha256(source.read_bytes() + f"{cxx}\0{lib_dir}".encode()).hexdigest()[:16]
    from edgebin.runtime_wheels import cache_dir

    path = cache_dir() / "pi-runner" / f"{target.linux.triple}-{key}" / "runner"
    if path.is_file():
        return path
    from edgebin.compile.tvm_adapter import ffi_include_dir

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".runner.", dir=path.parent)
    os.close(fd)
    try:
        # -no-pie: the marker functions keep their `nm` addresses at run time (the instruction counter needs them).
        # --no-as-needed: model.so calls into libtvm_runtime.so without naming it, so the runner must load it.
        _cross_compile([cxx, "-std=c++17", "-O2", "-no-pie", str(source), f"-I{ffi_include_dir()}",
                        f"-L{lib_dir}", "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-Wl,--as-needed",
                        "-Wl,-rpath,$ORIGIN", "-o", tmp], "building the runner")
        os.chmod(tmp, 0o755)  # mkstemp made it 0600
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


# --- runtime "c": the Cortex-M emitter's C and c_runner.c in one executable ----------------------------------


def _build_c(onnx_path: Path, target: Target, stage: Path, *, integer: bool, requant: str) -> dict[str, Any]:
    from edgebin.compile import binary
    from edgebin.compile.mcu_emit import compile_bundle

    src = stage / "src"
    config = {"name": target.name, "tvm": {"kind": "c"}, "cflags": list(target.cflags),
              "opt": str(target.extra.get("opt", "-O3"))}
    with binary.bit_sliced(False):  # the dense binary kernels count with NEON; no LUT kernels (weights int8)
        compile_bundle(onnx_path, config, src, integer=integer, lut_kernels=False)
    c_manifest = json.loads((src / "bundle.json").read_text())
    shutil.copy2(RUNNER_DIR / "c_runner.c", src / "c_runner.c")
    sources = [src / name for name in c_manifest.get("sources") or ("model.c", "kernels.c", "runtime.c")]
    # -O3 as the bundle's Makefile (TVM's C loops rely on the compiler to unroll and hoist); -no-pie for the markers.
    _cross_compile([require_tool(target, "gcc"), *target.cflags, config["opt"], "-no-pie", "-ffunction-sections",
                    "-fdata-sections", "-Wl,--gc-sections", f"-I{src}", f"-I{src / 'include'}",
                    *map(str, sources), str(src / "c_runner.c"), "-lm", "-o", str(stage / "runner")],
                   "building the C bundle")
    keep = ("input", "output", "integer", "requant", "weights_bytes", "arena_bytes", "arena_lower_bound_bytes",
            "workspace_bytes", "macs", "kernels")
    return {
        "format": FORMAT,
        **{key: c_manifest.get(key) for key in keep},
        **({"lut_weights": c_manifest["lut_weights"]} if c_manifest.get("lut_weights") else {}),
        "ops": _ops_from_kernels(c_manifest.get("kernels", [])),
        "run": ["./runner", INPUTS, OUTPUTS, SAMPLES],
        "files": ["runner", "run.sh", "src/"],
        "cflags": [*target.cflags, config["opt"]],
    }


def _ops_from_kernels(kernels: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """conv2d/matmul calls per arithmetic kind (the C bundle records kinds, not operand dtypes)."""
    counts: dict[str, dict[str, int]] = {"conv2d": {}, "matmul": {}}
    for kernel in kernels:
        for op in ("conv2d", "matmul"):
            if op in kernel.get("ops", []):
                counts[op][kernel.get("kind", "data")] = counts[op].get(kernel.get("kind", "data"), 0) + 1
    return counts


# --- shared ----------------------------------------------------------------------------------------------------


def require_tool(target: Target, name: str) -> str:
    """The path of the target's cross tool `name` ("gcc", "g++", "nm"); ToolchainMissingError naming the package."""
    assert target.linux is not None
    tool = target.linux.tool(name)
    path = shutil.which(tool)
    if path is None:
        raise ToolchainMissingError(f"{tool} not found (needed for {target.name}): apt-get install "
                                    f"{' '.join(target.linux.packages)} (or make setup)")
    return path


def _cross_compile(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise DeviceError(f"{Path(cmd[0]).name} took over {COMPILE_TIMEOUT_S:.0f} s {what}") from None
    if proc.returncode != 0:  # generated code or runner source that does not compile is an edgebin bug
        raise RuntimeError(f"{Path(cmd[0]).name} failed {what}:\n{proc.stderr.strip()[-4000:]}")


def _board_record(target: Target, runtime: str) -> dict[str, Any]:
    linux = target.linux
    assert linux is not None
    return {
        "schema_version": 1,
        "target": target.name,
        "board": target.board,
        "cores": target.cores,
        "ram_bytes": target.ram_bytes,
        "runtime": runtime,
        "linux": {"triple": linux.triple, "sysroot": linux.sysroot, "qemu": linux.qemu, "qemu_cpu": linux.qemu_cpu},
    }


def _onnx_dtype(model, name: str) -> str:
    import onnx

    for value in model.graph.input:
        if value.name == name:
            return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)))
    return "float32"


def _onnx_output(model) -> dict[str, Any]:
    import onnx

    if len(model.graph.output) != 1:
        raise InputShapeError(f"a Cortex-A bundle has one output; the model has {len(model.graph.output)}")
    out = model.graph.output[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in out.type.tensor_type.shape.dim]
    if any(d is None or d <= 0 for d in dims):
        raise InputShapeError(f"the model's output {out.name!r} has no static shape ({dims}); export with static "
                              f"shapes")
    dtype = str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(out.type.tensor_type.elem_type)))
    return {"name": out.name, "shape": dims, "dtype": dtype}


def _run_script(manifest: dict[str, Any]) -> str:
    """run.sh: the runner's command line with the files beside the script and the user's three arguments."""
    words = {INPUTS: '"$1"', OUTPUTS: '"$2"', SAMPLES: '"$3"'}
    args = [words.get(arg, f'"$here/{arg.removeprefix("./")}"') for arg in manifest["run"]]
    return "\n".join([
        "#!/bin/sh",
        "# Run the model on N samples on the board: ./run.sh inputs.bin outputs.bin N (see README.md)",
        "set -e",
        "[ $# -eq 3 ] || { echo 'usage: ./run.sh inputs.bin outputs.bin N' >&2; exit 2; }",
        'here=$(dirname "$0")',
        f"exec {' '.join(args)}",
        "",
    ])


def _readme(onnx_path: Path, target: Target, manifest: dict[str, Any]) -> str:
    shape_in = "x".join(map(str, manifest["input"]["shape"]))
    shape_out = "x".join(map(str, manifest["output"]["shape"]))
    lines = [
        f"# {onnx_path.name} for {target.board or target.name} ({target.name})",
        "",
        f"Compiled by edgebin: {target.description}.",
        "",
        "## Run it on the board",
        "",
        "Copy this folder to the board (`scp -r` it) and, in it:",
        "",
        "    ./run.sh inputs.bin outputs.bin N",
        "",
        f"- `inputs.bin`: N samples of the input, {manifest['input']['dtype']} {shape_in} each (row-major, already "
        "normalised the way the model was trained), back to back.",
        f"- `outputs.bin`: written with N outputs, {manifest['output']['dtype']} {shape_out} each.",
        "- stdout: `samples`, `output_elems`, `output_dtype` and `seconds_per_inference` (the mean over the N samples "
        "after one untimed warm-up run), one `key value` per line.",
        "",
        "Samples run one at a time on one core.",
        "",
    ]
    if manifest["runtime"] == "tvm":
        tvm_rt = manifest["tvm_runtime"]
        lines += [
            "## What is here",
            "",
            "- `model.so`: the model, compiled by Apache TVM (a Relax VM executable) for "
            f"`{target.tvm.get('mtriple')}` / `{target.tvm.get('mcpu')}`.",
            f"- `libtvm_runtime.so`, `libtvm_ffi.so`: the TVM runtime (apache-tvm {tvm_rt['apache-tvm']}, "
            f"apache-tvm-ffi {tvm_rt['apache-tvm-ffi']}, from their {tvm_rt['platform']} wheels). They must be the "
            "versions model.so was compiled with.",
            "- `runner`: loads model.so through the runtime (found beside it: RUNPATH `$ORIGIN`); `runner.cc` is its "
            "source; `input.txt` gives it the input's dtype and shape.",
            "",
            "Needs 64-bit Raspberry Pi OS 12 (bookworm) or newer: the runner was built against glibc 2.36 and "
            "libstdc++ 12 (it uses GLIBC_2.34 and GLIBCXX_3.4.29 symbols); the TVM libraries need glibc 2.27. On an "
            "older system, rebuild the runner on the board:",
            "",
            "    pip install apache-tvm-ffi==" + tvm_rt["apache-tvm-ffi"] + "   # for its C++ headers",
            "    g++ -std=c++17 -O2 -no-pie runner.cc -I\"$(python3 -c 'import tvm_ffi, os; "
            "print(os.path.dirname(tvm_ffi.__file__))')/include\" \\",
            "        -L. -Wl,--no-as-needed -ltvm_runtime -ltvm_ffi -Wl,--as-needed -Wl,-rpath,'$ORIGIN' -o runner",
            "",
        ]
    else:
        lines += [
            "## What is here",
            "",
            "- `runner`: the model and a small main in one executable, with no TVM runtime: the same C as edgebin's "
            "Cortex-M bundles (`src/`: `model.c`, `kernels.c`, `runtime.c`, see `src/README.md`), built with "
            f"`{target.linux.tool('gcc') if target.linux else 'gcc'} {' '.join(manifest.get('cflags', []))}`.",
            "- `src/c_runner.c`: the main. To rebuild on the board: `gcc "
            f"{' '.join(manifest.get('cflags', []))} -Isrc -Isrc/include src/*.c -lm -o runner`.",
            "",
            f"The activations live in one static arena of {manifest.get('arena_bytes')} bytes; weights are "
            f"{manifest.get('weights_bytes')} bytes.",
            "",
        ]
    lines += ["`bundle.json` records the shapes, the target and every kernel (its arithmetic kind and MACs).", ""]
    return "\n".join(lines)
