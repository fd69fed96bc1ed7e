"""The whole job and each of its stages, as the CLI runs them and as Python users call them.

    report = pipeline.compress("models/resnet8_fashion.pt", target="x86", data="fashion-mnist", out_dir="out")

`compress` = `export` (load, INT8 PTQ, ONNX) + `compile` (TVM) + `validate` (accuracy, agreement, latency) +
report. Every stage writes into `out_dir` through a staging folder, so a failure leaves nothing half-written.

Output folder:
    model.onnx        the compressed model in QDQ form (onnxruntime runs it; metadata says how it was made)
    model_fp32.onnx   the FP32 original, the reference for every comparison
    recipe.json       recipe, normalisation, input shape, data set: enough to reproduce or validate the run
    <target>/         the compiled artefact (model.so + artefact.json for the host)
    report.json, report.md
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from edgebin import __version__, targets
from edgebin.atomic import atomic_write_text, staged_dir
from edgebin.errors import ToolchainMissingError, UsageError
from edgebin.quant import Recipe

log = logging.getLogger(__name__)

FP32_ONNX = "model_fp32.onnx"
MODEL_ONNX = "model.onnx"
RECIPE_JSON = "recipe.json"


class Progress(Protocol):
    """Where long stages report progress; the CLI draws rich progress bars, the default does nothing."""

    def stage(self, description: str, total: int | None = None) -> contextlib.AbstractContextManager[
        Callable[[int], None]
    ]: ...


class SilentProgress:
    """Progress that reports nothing (library default)."""

    @contextlib.contextmanager
    def stage(self, description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        log.info("%s", description)
        yield lambda done: None


@dataclass
class ExportResult:
    """What `export` produced and learned, for the later stages of `compress`."""

    out_dir: Path
    loaded: Any  # edgebin.loading.LoadedModel
    fp32_graph: torch.nn.Module
    quant_graph: torch.nn.Module
    summary: Any  # edgebin.quant.QuantSummary
    recipe: Recipe
    run_info: dict[str, Any]
    weights_bytes: int
    fp32_weights_bytes: int
    seconds: float
    batch: int  # samples per call the captured graph accepts (1 if the model fixes its batch)


@dataclass
class Timings:
    """Wall time per stage, for the report."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def measure(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[stage] = round(time.perf_counter() - start, 3)


def make_recipe(method: str = "int8", calibration: str = "minmax", calibration_samples: int = 512,
                percentile: float = 99.99, recipe_file: Path | None = None) -> Recipe:
    """The recipe from CLI flags, or from a recipe file (which then wins)."""
    from edgebin.quant import CalibrationConfig

    if recipe_file is not None:
        return Recipe.from_file(recipe_file)
    calib = CalibrationConfig(method=calibration, samples=calibration_samples, percentile=percentile)
    return Recipe(method=method, calibration=calib)


def export(model_path: Path, *, data: str, out_dir: Path, recipe: Recipe | None = None, arch: str | None = None,
           input_shape: tuple[int, ...] | None = None, trust_pickle: bool = False,
           progress: Progress | None = None) -> ExportResult:
    """Load the model, quantize it to INT8 (PTQ on calibration data) and write both ONNX files and the recipe."""
    from edgebin import capture, loading
    from edgebin import data as datasets
    from edgebin.export import export_onnx
    from edgebin.quant import calibrate, freeze, quantize_graph, weights_bytes

    progress = progress or SilentProgress()
    recipe = recipe or Recipe()
    start = time.perf_counter()
    with progress.stage("Loading model"):
        loaded = loading.load_model(Path(model_path), arch=arch, input_shape=input_shape, trust_pickle=trust_pickle)
        loading.check_input_shape(loaded.module, loaded.input_shape)
    with progress.stage(f"Loading data set {data}"):
        dataset = datasets.load_dataset(data)
        datasets.check_shape(dataset, loaded.input_shape)
    norm = _normalization(loaded, dataset)
    with progress.stage("Capturing the graph"):
        fp32_graph = capture.capture_graph(loaded)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's pytree deprecation notice during the copy
            quant_graph = copy.deepcopy(fp32_graph)
        summary = quantize_graph(quant_graph, recipe)
    x_calib = norm.apply(datasets.calibration_split(dataset, recipe.calibration.samples))
    batch = capture.batch_size_limit(fp32_graph, loaded.input_shape)
    with progress.stage(f"Calibrating on {len(x_calib)} samples", total=len(x_calib)) as advance:
        calibrate(quant_graph, x_calib, batch_size=min(64, batch), progress=advance)
        freeze(quant_graph)
    run_info = {
        "recipe": recipe.to_dict(),
        "normalization": norm.to_dict(),
        "input_shape": list(loaded.input_shape),
        "dataset": dataset.name if data in datasets.DATASETS else str(data),
        "classes": list(dataset.classes),
        "model": {"path": str(model_path), "arch": loaded.arch, "format": loaded.format,
                  "parameters": _parameters(loaded.module)},
        "layers": [r.to_dict() for r in summary.layers],
    }
    meta = {"edgebin.method": recipe.method, "edgebin.recipe": json.dumps(recipe.to_dict()),
            "edgebin.normalization": json.dumps(norm.to_dict())}
    with progress.stage("Exporting ONNX"), staged_dir(Path(out_dir)) as stage:
        export_onnx(fp32_graph, loaded.input_shape, stage / FP32_ONNX, metadata={"edgebin.method": "fp32"})
        export_onnx(quant_graph, loaded.input_shape, stage / MODEL_ONNX, metadata=meta,
                    layers=[r.to_dict() for r in summary.layers])
        atomic_write_text(stage / RECIPE_JSON, json.dumps(run_info, indent=2) + "\n")
    fp32_bytes = sum(p.numel() * 4 for p in fp32_graph.parameters())
    return ExportResult(Path(out_dir), loaded, fp32_graph, quant_graph, summary, recipe, run_info,
                        weights_bytes(quant_graph), fp32_bytes, time.perf_counter() - start, batch)


def compile(onnx_path: Path, *, target: str = "x86", out_dir: Path, integer: bool = True,
            progress: Progress | None = None):
    """Compile an ONNX model for `target` into `out_dir/<target>/`; returns the artefact."""
    from edgebin.compile import compile_onnx

    progress = progress or SilentProgress()
    tgt = targets.load(target)
    if tgt.kind != "host":
        raise UsageError(f"target {tgt.name} ({tgt.kind}) is not supported yet; available now: x86")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise UsageError(f"no such ONNX file: {onnx_path}")
    _require_host_compiler()
    with progress.stage(f"Compiling for {tgt.name} with TVM"), staged_dir(Path(out_dir)) as stage:
        compile_onnx(onnx_path, tgt.tvm, stage / tgt.name, integer=integer)
    from edgebin.compile import load_artefact

    return load_artefact(Path(out_dir) / tgt.name)


def validate(out_dir: Path, *, data: str | None = None, target: str = "x86", eval_samples: int | None = None,
             latency_repeat: int = 50, progress: Progress | None = None, exported: ExportResult | None = None,
             timings: Timings | None = None, command: str = "", started: float | None = None):
    """Measure accuracy, agreement and latency of everything in `out_dir`; write report.json and report.md."""
    from edgebin import data as datasets
    from edgebin import metrics
    from edgebin.compile import compile_onnx, load_artefact, set_threads
    from edgebin.report import Report, write_report

    progress = progress or SilentProgress()
    timings = timings or Timings()
    out_dir = Path(out_dir)
    run_info = _read_run_info(out_dir)
    tgt = targets.load(target)
    artefact_dir = out_dir / tgt.name
    if not (artefact_dir / "artefact.json").is_file():
        raise UsageError(f"no compiled artefact in {artefact_dir}: run `edgebin compile {out_dir / MODEL_ONNX} "
                         f"--target {tgt.name} -o {out_dir}` first")
    data = data or run_info.get("dataset")
    if not data:
        raise UsageError("no data set given and none recorded in recipe.json; pass --data")
    norm = datasets.Normalization.from_dict(run_info["normalization"])
    set_threads(1)
    with timings.measure("validate"):
        with progress.stage(f"Loading data set {data}"):
            dataset = datasets.load_dataset(data)
        x_raw, y = datasets.evaluation_split(dataset, eval_samples)
        x = norm.apply(x_raw)
        artefact = load_artefact(artefact_dir)
        fp32_onnx, int8_onnx = out_dir / FP32_ONNX, out_dir / MODEL_ONNX
        outputs: dict[str, np.ndarray] = {}
        with progress.stage("Running ONNX Runtime (FP32, INT8)"):
            outputs["onnxruntime-fp32"] = metrics.run_onnxruntime(fp32_onnx, x)
            outputs["onnxruntime"] = metrics.run_onnxruntime(int8_onnx, x)
        if exported is not None:
            with progress.stage("Running PyTorch (FP32, fake-quant)"):
                outputs["fp32"] = metrics.run_torch(exported.fp32_graph, x, batch=exported.batch)
                outputs["compressed"] = metrics.run_torch(exported.quant_graph, x, batch=exported.batch)
        with progress.stage(f"Running the compiled artefact on {len(x)} samples", total=len(x)) as advance:
            outputs["compiled"] = _run_with_progress(artefact, x, advance)
        accuracy = {
            "fp32": metrics.accuracy(outputs.get("fp32", outputs["onnxruntime-fp32"]), y),
            "compressed": metrics.accuracy(outputs["compressed"], y) if "compressed" in outputs else None,
            "onnxruntime": metrics.accuracy(outputs["onnxruntime"], y),
            "compiled": metrics.accuracy(outputs["compiled"], y),
            "samples": int(len(y)),
        }
        agreement = {**metrics.agreement(outputs["onnxruntime"], outputs["compiled"]), "reference": "onnxruntime"}
        x1 = x[:1]
        engines: dict[str, Any] = {}
        with progress.stage("Timing engines (1 thread)", total=5) as advance:
            if exported is not None:
                engines["pytorch-fp32"] = metrics.time_torch(exported.loaded.module, x1, repeat=latency_repeat)
            advance(1)
            engines["onnxruntime-fp32"] = metrics.time_onnxruntime(fp32_onnx, x1, repeat=latency_repeat)
            engines["onnxruntime-int8"] = metrics.time_onnxruntime(int8_onnx, x1, repeat=latency_repeat)
            advance(3)
            with tempfile.TemporaryDirectory(prefix="edgebin-tvm-fp32-") as tmp:
                fp32_art = compile_onnx(fp32_onnx, tgt.tvm, Path(tmp) / "fp32", integer=False)
                engines["tvm-fp32"] = _artefact_latency("tvm-fp32", fp32_art, x1, latency_repeat)
            advance(4)
            engines["edgebin-int8"] = _artefact_latency("edgebin-int8", artefact, x1, latency_repeat)
            advance(5)
    fp32_bytes = exported.fp32_weights_bytes if exported else _onnx_weight_bytes(fp32_onnx)
    weights = artefact.weights_bytes()
    kernels = artefact.kernel_counts()
    detail = artefact.kernels
    fallbacks = [{"layer": r["layer"], "reason": r["reason"]} for r in run_info.get("layers", [])
                 if r.get("kind") == "float"]
    fallbacks += [{"kernel": k["name"], "reason": "compiled in float32"} for k in detail if k.get("kind") == "float"]
    notes: list[str] = []
    if accuracy["fp32"] - accuracy["compiled"] > 0.01:
        notes.append(f"compiled accuracy is {100 * (accuracy['fp32'] - accuracy['compiled']):.2f} points "
                     "below FP32; try --calibration percentile or more calibration samples")
    if agreement["top1"] < 0.99:
        notes.append(f"compiled artefact agrees with onnxruntime on only {100 * agreement['top1']:.2f}% "
                     "of samples")
    recipe = run_info.get("recipe", {})
    calibration = recipe.get("calibration", {})
    report_dict = {
        "schema_version": 1,
        "command": command,
        "model": {**run_info.get("model", {}), "input_shape": run_info.get("input_shape")},
        "target": tgt.to_dict(),
        "method": {
            "name": recipe.get("method", "int8"),
            "weight_bits": 8,
            "activation_bits": 8,
            "calibration": {"method": calibration.get("method"), "samples": calibration.get("samples")},
            "per_layer": [{k: r.get(k) for k in ("layer", "op", "weight_bits", "activation_bits", "method", "kind")}
                          for r in run_info.get("layers", [])],
        },
        "dataset": {"name": data, "eval_samples": int(len(y)), "calibration_samples": calibration.get("samples")},
        "accuracy": accuracy,
        "agreement": agreement,
        "latency": {
            "unit": "ms",
            "threads": 1,
            "engines": {name: stat.to_dict() for name, stat in engines.items()},
            "speedup_vs": _speedups(engines, "onnxruntime-fp32"),
        },
        "footprint": {
            "weights_bytes": int(weights),
            "fp32_weights_bytes": int(fp32_bytes),
            "ratio": round(weights / fp32_bytes, 4) if fp32_bytes else None,
            "artefact_bytes": _dir_bytes(artefact_dir),
        },
        "kernels": kernels,
        "kernels_detail": detail,
        "ops": artefact.op_counts(),
        "fallbacks": fallbacks,
        "warnings": notes,
        "environment": _environment(),
        "timings_s": timings.seconds,
        "artefacts": {"onnx": MODEL_ONNX, "fp32_onnx": FP32_ONNX, "library": f"{tgt.name}/model.so",
                      "recipe": RECIPE_JSON},
    }
    if started is not None:
        timings.seconds["compress"] = round(time.perf_counter() - started, 3)
    report = Report.from_dict(report_dict)
    write_report(report, out_dir)
    return report


def compress(model_path: Path, *, target: str = "x86", method: str = "int8", data: str = "fashion-mnist",
             out_dir: Path = Path("out"), arch: str | None = None, input_shape: tuple[int, ...] | None = None,
             trust_pickle: bool = False, recipe: Recipe | None = None, eval_samples: int | None = None,
             latency_repeat: int = 50, progress: Progress | None = None, command: str = ""):
    """The whole job: export, compile, validate, report. Returns the report."""
    tgt = targets.load(target)  # fail on a bad target before any heavy work
    if tgt.kind != "host":
        raise UsageError(f"target {tgt.name} ({tgt.kind}) is not supported yet; available now: x86")
    recipe = recipe or make_recipe(method)
    timings = Timings()
    start = time.perf_counter()
    with timings.measure("export"):
        exported = export(model_path, data=data, out_dir=out_dir, recipe=recipe, arch=arch, input_shape=input_shape,
                          trust_pickle=trust_pickle, progress=progress)
    with timings.measure("compile"):
        compile(Path(out_dir) / MODEL_ONNX, target=tgt.name, out_dir=out_dir, progress=progress)
    timings.seconds["compress"] = 0.0  # filled in by validate's report: the whole job's wall time
    return validate(out_dir, data=data, target=tgt.name, eval_samples=eval_samples, latency_repeat=latency_repeat,
                    progress=progress, exported=exported, timings=timings, command=command, started=start)


def report(out_dir: Path):
    """The report of an earlier run, read back from `out_dir/report.json`."""
    from edgebin.report import read_report

    return read_report(Path(out_dir))


def _require_host_compiler() -> None:
    """TVM links the host library with $CXX, $CC or the first of g++/gcc/clang++/clang/c++/cc on PATH."""
    import os
    import shutil

    chosen = os.environ.get("CXX") or os.environ.get("CC")
    if chosen:
        if shutil.which(chosen) is None:
            raise ToolchainMissingError(f"the C++ compiler {chosen!r} named by $CXX/$CC is not installed; install "
                                        "it, or unset CXX/CC to use g++ (Debian package g++)")
        return
    if not any(shutil.which(cc) for cc in ("g++", "gcc", "clang++", "clang", "c++", "cc")):
        raise ToolchainMissingError("no C/C++ compiler found to link the host library: run `apt-get install g++` "
                                    "(or `make setup`)")


def _normalization(loaded, dataset):
    from edgebin.data import Normalization

    if loaded.normalization:
        return Normalization.from_dict(loaded.normalization)
    log.info("no normalisation recorded in the model file; using the data set's mean and std")
    return dataset.normalization()


def _read_run_info(out_dir: Path) -> dict[str, Any]:
    path = out_dir / RECIPE_JSON
    if not path.is_file():
        raise UsageError(f"{out_dir} holds no {RECIPE_JSON}: run `edgebin export` or `edgebin compress` into it first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({err}); re-run `edgebin export`") from None


def _parameters(module: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _run_with_progress(artefact, x: np.ndarray, advance: Callable[[int], None], chunk: int = 500) -> np.ndarray:
    parts = []
    for start in range(0, len(x), chunk):
        parts.append(artefact.run(x[start : start + chunk]))
        advance(min(len(x), start + chunk))
    return np.concatenate(parts)


def _artefact_latency(engine: str, artefact, x1: np.ndarray, repeat: int):
    from edgebin.metrics import LatencyStat

    runs_s = artefact.latency_s(x1, repeat=repeat)
    ms = np.asarray(runs_s) * 1e3
    return LatencyStat(engine=engine, median_ms=float(np.median(ms)), p10_ms=float(np.percentile(ms, 10)),
                       p90_ms=float(np.percentile(ms, 90)), runs=len(ms))


def _speedups(engines: dict[str, Any], baseline: str) -> dict[str, float]:
    if baseline not in engines:
        return {}
    base = engines[baseline].median_ms
    return {name: round(base / stat.median_ms, 3) for name, stat in engines.items() if stat.median_ms > 0}


def _onnx_weight_bytes(path: Path) -> int:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    return int(sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer))


def _dir_bytes(path: Path) -> int:
    return int(sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()))


def _environment() -> dict[str, Any]:
    import onnxruntime
    import tvm

    return {
        "edgebin": __version__,
        "torch": torch.__version__,
        "tvm": tvm.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": sys.version.split()[0],
        "cpu": _cpu_name(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()
