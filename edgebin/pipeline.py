"""The whole job and each of its stages, as the CLI runs them and as Python users call them.

    report = pipeline.compress("models/resnet8_fashion.pt", target="x86", data="fashion-mnist", out_dir="out")

`compress` = `export` (load, [WGSEF structured sparsity], PTQ (int8, nupes) or QAT, ONNX) + `compile` (TVM) +
`validate` (accuracy, agreement, latency) + report. Every stage writes into `out_dir` through a staging folder, so
a failure leaves nothing half-written.

Output folder:
    model.onnx        the compressed model in QDQ form (onnxruntime runs it; metadata says how it was made)
    model_fp32.onnx   the FP32 original, the reference for every comparison
    recipe.json       recipe, normalisation, input shape, data set: enough to reproduce or validate the run
    model_sparse.pt   with `sparsity=`: the pruned FP32 checkpoint that was quantized (smaller for filters, channels)
    <target>/         the compiled artefact (model.so + artefact.json for the host)
    report.json, report.md
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

from edgebin import __version__, targets
from edgebin.atomic import atomic_write_text, staged_dir
from edgebin.errors import ToolchainMissingError, UsageError
from edgebin.pipeline_qat import TrainingOptions
from edgebin.quant import Recipe

if TYPE_CHECKING:
    from edgebin.pipeline_sparsity import SparsityConfig

log = logging.getLogger(__name__)

FP32_ONNX = "model_fp32.onnx"
MODEL_ONNX = "model.onnx"
RECIPE_JSON = "recipe.json"
SPARSE_CHECKPOINT = "model_sparse.pt"


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


def make_recipe(method: str = "int8", calibration: str = "minmax", calibration_samples: int | None = None,
                percentile: float = 99.99, recipe_file: Path | None = None, *, bits: int | None = None,
                act_bits: int | None = None, estimator: str | None = None,
                first_last_bits: int | None = 8, data_free: bool = False,
                iterations: int | None = None, power_activations: bool = False) -> Recipe:
    """The recipe from CLI flags, or from a recipe file (which then wins).

    int8 and nupes are post-training quantization (calibration flags apply; `calibration_samples` defaults to
    512, for nupes to 1,024, its maximum); nupes takes `bits` (default 4), `data_free`, `iterations` (Adam steps
    per block), `act_bits` (default 8) and `power_activations`. The QAT methods take `bits`, `act_bits`,
    `estimator` (binary) and `first_last_bits` (None: the first and last layers follow the method too).
    """
    from edgebin.quant import CalibrationConfig
    from edgebin.quant.recipe import NUPES_MAX_SAMPLES, NupesConfig

    if recipe_file is not None:
        return Recipe.from_file(recipe_file)
    if (data_free or iterations is not None or power_activations) and method != "nupes":
        raise UsageError(f"--data-free, --iterations and --power-activations apply to --method nupes, not "
                         f"{method!r}")
    samples = calibration_samples or (NUPES_MAX_SAMPLES if method == "nupes" else 512)
    calib = CalibrationConfig(method=calibration, samples=samples, percentile=percentile)
    if method == "int8":
        if bits not in (None, 8) or act_bits not in (None, 8) or estimator is not None:
            raise UsageError("--method int8 is W8A8 post-training quantization: --bits/--act-bits must be 8 and "
                             "--estimator applies to --method binary; for other widths use --method nupes, statsq "
                             "or lsq")
        return Recipe(method=method, calibration=calib)
    if method == "nupes":
        if act_bits not in (None, 2, 3, 4, 5, 6, 7, 8) or estimator is not None:
            raise UsageError("--method nupes quantizes weights to --bits 2-8 and activations to --act-bits 2-8 "
                             "(default 8); --estimator is for --method binary")
        steps = {} if iterations is None else {"iterations": iterations}
        config = NupesConfig(weight_bits=4 if bits is None else bits, mode="data-free" if data_free else "data-driven",
                             activation_bits=8 if act_bits is None else act_bits,
                             power_activations=power_activations, **steps)
        return Recipe(method=method, default=config, calibration=calib, first_last_bits=None)
    return Recipe.for_method(method, weight_bits=bits, activation_bits=act_bits, estimator=estimator,
                             calibration=calib, first_last_bits=first_last_bits)


def make_sparsity(sparsity: float | None = None, keep: int | None = None, groups: str | None = None, *,
                  epochs: int = 6, lr: float | None = None, batch_size: int = 128, train_samples: int | None = None,
                  distill: bool = True, seed: int = 0) -> SparsityConfig | None:
    """The sparsity stage from CLI flags (None when neither `sparsity` nor `keep` is given).

    `epochs` are split between the WGSEF proximal steps and the masked fine-tune after the exact step, half and half
    (6: 3 + 3, `SparsityConfig`'s defaults; an odd count gives the extra epoch to the proximal steps); `lr` None:
    SparsityConfig's 1e-3. `groups` defaults to filters; "filter-shapes" is accepted for "shapes".
    """
    from edgebin.pipeline_sparsity import SparsityConfig
    from edgebin.sparsity.groups import GROUP_KINDS

    if sparsity is None and keep is None:
        if groups is not None:
            raise UsageError(f"--groups {groups} says what to prune but not how much: add --sparsity FRACTION "
                             "(e.g. --sparsity 0.5, half of each layer's groups removed) or --keep K")
        return None
    if sparsity is not None and keep is not None:
        raise UsageError(f"--sparsity {sparsity} and --keep {keep} both set the groups kept per set: give one")
    if sparsity is not None and not 0 <= sparsity < 1:
        hint = f" (a percentage? use {sparsity / 100:g})" if 1 <= sparsity < 100 else ""
        raise UsageError(f"--sparsity {sparsity}: the fraction of groups removed must be in [0, 1){hint}")
    kind = {"filter-shapes": "shapes"}.get(groups or "filters", groups or "filters")
    if kind not in GROUP_KINDS:
        raise UsageError(f"--groups {groups}: expected one of {', '.join(GROUP_KINDS)}")
    return SparsityConfig(groups=kind, sparsity=sparsity, keep=keep, epochs=(epochs + 1) // 2,
                          finetune_epochs=epochs // 2, batch_size=batch_size, train_samples=train_samples,
                          distill=distill, seed=seed, **({} if lr is None else {"lr": lr}))


def export(model_path: Path, *, data: str, out_dir: Path, recipe: Recipe | None = None, arch: str | None = None,
           input_shape: tuple[int, ...] | None = None, trust_pickle: bool = False,
           progress: Progress | None = None, training: TrainingOptions | None = None,
           eval_samples: int | None = None, sparsity: SparsityConfig | None = None) -> ExportResult:
    """Load the model, quantize it (int8: PTQ on calibration data; nupes: the same, then b-bit weight codes and
    exponents fitted on that data; the other methods: QAT with `training`, see `edgebin.pipeline_qat`) and write
    both ONNX files and the recipe. With `sparsity`, WGSEF prunes the FP32 model first (`_export_sparse`)."""
    from edgebin import capture
    from edgebin import data as datasets
    from edgebin.export import export_onnx
    from edgebin.quant import calibrate, freeze, quantize_graph, weights_bytes
    from edgebin.quant.recipe import QAT_METHODS

    progress = progress or SilentProgress()
    recipe = recipe or Recipe()
    if sparsity is not None:
        return _export_sparse(model_path, sparsity, data=data, out_dir=out_dir, recipe=recipe, arch=arch,
                              input_shape=input_shape, trust_pickle=trust_pickle, progress=progress,
                              training=training, eval_samples=eval_samples)
    if recipe.method in QAT_METHODS:
        from edgebin.pipeline_qat import export_trained

        return export_trained(model_path, data=data, out_dir=out_dir, recipe=recipe,
                              options=training or TrainingOptions(), arch=arch, input_shape=input_shape,
                              trust_pickle=trust_pickle, eval_samples=eval_samples, progress=progress)
    start = time.perf_counter()
    loaded, dataset, norm = load_for_export(model_path, data, arch=arch, input_shape=input_shape,
                                            trust_pickle=trust_pickle, progress=progress)
    if loaded.metadata.get("qat_method"):
        raise UsageError(f"`{model_path}` holds a QAT model ({loaded.metadata['qat_method']}); export it with "
                         f"--method {loaded.metadata['qat_method']}, or start int8 from the FP32 checkpoint")
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
    layers, quant_bytes = [r.to_dict() for r in summary.layers], weights_bytes(quant_graph)
    if recipe.method == "nupes":
        layers = _fit_activation_tables(quant_graph, recipe, x_calib, min(64, batch), layers, progress)
        layers, quant_bytes = _fit_nupes(quant_graph, recipe, x_calib, min(64, batch), layers, progress)
    run_info = run_info_for(model_path, data, loaded, dataset, norm, recipe, layers)
    meta = {"edgebin.method": recipe.method, "edgebin.recipe": json.dumps(recipe.to_dict()),
            "edgebin.normalization": json.dumps(norm.to_dict())}
    with progress.stage("Exporting ONNX"), staged_dir(Path(out_dir)) as stage:
        export_onnx(fp32_graph, loaded.input_shape, stage / FP32_ONNX, metadata={"edgebin.method": "fp32"})
        export_onnx(quant_graph, loaded.input_shape, stage / MODEL_ONNX, metadata=meta, layers=layers)
        if recipe.method == "nupes":
            from edgebin.export.lut import lut_layers, rewrite_lut_onnx

            rewrite_lut_onnx(stage / MODEL_ONNX, lut_layers(quant_graph))
        atomic_write_text(stage / RECIPE_JSON, json.dumps(run_info, indent=2) + "\n")
    fp32_bytes = sum(p.numel() * 4 for p in fp32_graph.parameters())
    return ExportResult(Path(out_dir), loaded, fp32_graph, quant_graph, summary, recipe, run_info,
                        quant_bytes, fp32_bytes, time.perf_counter() - start, batch)


def _export_sparse(model_path: Path, config: SparsityConfig, *, out_dir: Path, eval_samples: int | None,
                   progress: Progress, **export_args) -> ExportResult:
    """WGSEF before quantization: prune (and for filters or channels shrink) the FP32 model in a scratch folder,
    export the result as usual, then move the checkpoint into `out_dir` with recipe.json's `sparsity` record.
    The model that went in stays `model.path`; `model_fp32.onnx` and the FP32 baseline are the pruned model."""
    from edgebin.pipeline_sparsity import sparsify, stage_record

    input_shape, trust_pickle = export_args.pop("input_shape"), export_args.pop("trust_pickle")
    with tempfile.TemporaryDirectory(prefix="edgebin-sparse-") as tmp:
        sparse = sparsify(model_path, data=export_args["data"], out=Path(tmp) / SPARSE_CHECKPOINT, config=config,
                          arch=export_args["arch"], input_shape=input_shape, trust_pickle=trust_pickle,
                          eval_samples=eval_samples, progress=progress)
        log.info("sparsity: FP32 top-1 %.4f -> %.4f, MACs %d -> %d", sparse.dense_accuracy, sparse.accuracy,
                 sparse.dense_macs, sparse.macs)
        # the checkpoint records its arch and shape; `arch` again, because a file.py:Class one is read only when
        # the user names it
        result = export(sparse.path, out_dir=out_dir, eval_samples=eval_samples, progress=progress, **export_args)
        run_info = {**result.run_info, "model": {**result.run_info["model"], "path": str(model_path)},
                    "sparsity": stage_record(sparse, config, source=model_path, checkpoint=SPARSE_CHECKPOINT)}
        with staged_dir(Path(out_dir)) as stage:
            shutil.copy2(sparse.path, stage / SPARSE_CHECKPOINT)
            atomic_write_text(stage / RECIPE_JSON, json.dumps(run_info, indent=2) + "\n")
    result.run_info = run_info
    result.seconds += sparse.seconds
    return result


def _fit_activation_tables(quant_graph, recipe: Recipe, x_calib: np.ndarray, batch: int, layers: list[dict],
                           progress: Progress) -> list[dict]:
    """NUPES inputs below 8 bits or on a power grid (`edgebin.quant.power_act`), before the weights are fitted to
    them: each layer record gains its input's bits, exponent and level count."""
    from edgebin.quant import power_act

    count = power_act.count_inputs(quant_graph, recipe)
    if not count:
        return layers
    with progress.stage("Searching activation exponents", total=count) as advance:
        tables = power_act.quantize_activations(quant_graph, recipe, x_calib, batch_size=batch, progress=advance)
    by_layer = {layer: t for t in tables for layer in t.layers}
    out = []
    for r in layers:
        t = by_layer.get(r["layer"])
        if t is not None:
            r = {**r, "activation_bits": t.bits, "activation_exponent": t.exponent, "activation_levels": t.levels}
        elif r.get("weight_bits") is not None:
            r = {**r, "activation_bits": 8}  # the network input (or a layer kept at int8) reads 8-bit codes
        out.append(r)
    return out


def _fit_nupes(quant_graph, recipe: Recipe, x_calib: np.ndarray, batch: int, layers: list[dict],
               progress: Progress) -> tuple[list[dict], int]:
    """The NUPES weight step on a calibrated int8 graph: (per-layer records with exponents, weight bytes)."""
    from edgebin.quant import nupes

    steps = nupes.total_steps(quant_graph, recipe)
    title = "Fitting NUPES exponents and codes" if steps else "Searching power exponents (data-free)"
    with progress.stage(title, total=steps or None) as advance:
        nupes.quantize_nupes(quant_graph, recipe, x_calib, batch_size=batch, progress=advance)
    return nupes.layer_dicts(quant_graph, layers), nupes.weights_bytes(quant_graph)


def load_for_export(model_path: Path, data: str, *, arch: str | None, input_shape: tuple[int, ...] | None,
                    trust_pickle: bool, progress: Progress):
    """(loaded model, data set, normalisation) that an export starts from, the model's input checked against both."""
    from edgebin import data as datasets
    from edgebin import loading

    with progress.stage("Loading model"):
        loaded = loading.load_model(Path(model_path), arch=arch, input_shape=input_shape, trust_pickle=trust_pickle)
        loading.check_input_shape(loaded.module, loaded.input_shape)
    with progress.stage(f"Loading data set {data}"):
        dataset = datasets.load_dataset(data)
        datasets.check_shape(dataset, loaded.input_shape)
    return loaded, dataset, _normalization(loaded, dataset)


def run_info_for(model_path: Path, data: str, loaded, dataset, norm, recipe: Recipe, layers: list[dict]) -> dict:
    """What recipe.json records of an export: recipe, normalisation, shapes, data set, model and per-layer outcome."""
    from edgebin import data as datasets

    return {
        "recipe": recipe.to_dict(),
        "normalization": norm.to_dict(),
        "input_shape": list(loaded.input_shape),
        "dataset": dataset.name if data in datasets.DATASETS else str(data),
        "classes": list(dataset.classes),
        "model": {"path": str(model_path), "arch": loaded.arch, "format": loaded.format,
                  "parameters": _parameters(loaded.module)},
        "layers": layers,
    }


def compile(onnx_path: Path, *, target: str = "x86", out_dir: Path, integer: bool = True,
            progress: Progress | None = None, tune: int = 0, tune_device: str | None = None):
    """Compile an ONNX model for `target` into `out_dir/<target>/`.

    `tune` trials of MetaSchedule tuning (`edgebin.compile.tune`), on this machine or, for a board, on its TVM RPC
    server at `tune_device`; the database stays in `out_dir/<target>/tuning/` and later compiles reuse it.

    Host: a shared library run by the Relax VM (returns the HostArtefact). Cortex-M: a self-contained C bundle;
    its firmware is linked once to check that it fits the board (returns the bundle folder). Cortex-A (Raspberry
    Pi): a folder to copy to the board, with the TVM library and runtime or runtime-free C (a CortexABundle).
    """
    progress = progress or SilentProgress()
    tgt = targets.load(target)
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise UsageError(f"no such ONNX file: {onnx_path}")
    if tgt.kind == "host":
        from edgebin.compile import compile_onnx, load_artefact

        _require_host_compiler()
        with progress.stage(f"Compiling for {tgt.name} with TVM"), staged_dir(Path(out_dir)) as stage:
            compile_onnx(onnx_path, tgt.tvm, stage / tgt.name, integer=integer,
                         tune=_tuning(tgt, out_dir, tune, tune_device), progress=progress)
        return load_artefact(Path(out_dir) / tgt.name)
    if tgt.kind == "cortex-m":
        from edgebin.runners.footprint import check_fits

        with staged_dir(Path(out_dir)) as stage:
            with progress.stage(f"Generating the C bundle for {tgt.name} with TVM"):
                bundle = _emit_bundle(onnx_path, tgt, stage / tgt.name, integer=integer)
            with progress.stage(f"Linking firmware for {tgt.name} to check that it fits"), \
                    tempfile.TemporaryDirectory(prefix="edgebin-fit-") as tmp:
                from edgebin.runners.qemu import QemuRunner

                runner = QemuRunner(tgt)
                check_fits(runner.footprint(runner.build(bundle, Path(tmp))), tgt)
        return Path(out_dir) / tgt.name
    if tgt.kind == "cortex-a":
        from edgebin.compile.cortex_a import compile_cortex_a

        with progress.stage(f"Compiling for {tgt.name} with TVM and the {tgt.linux.triple} toolchain"):
            return compile_cortex_a(onnx_path, tgt, Path(out_dir) / tgt.name, integer=integer,  # written atomically
                                    tune=_tuning(tgt, out_dir, tune, tune_device), progress=progress)
    raise UsageError(f"target {tgt.name} has kind {tgt.kind}, which edgebin cannot compile for")


def _tuning(tgt, out_dir: Path, trials: int, device: str | None):
    """`--tune N [--tune-device URL]` -> the TuneConfig to compile with (None: no trials, no database to apply)."""
    from edgebin.compile.tune import cross_builder, rpc_runner, tune_config

    work_dir = Path(out_dir) / tgt.name / "tuning"
    if device is None:
        if trials and tgt.kind != "host":
            raise UsageError(f"--tune for {tgt.name} times candidates on the board: add --tune-device "
                             "rpc://HOST:9090 (or rpc-tracker://HOST:9190/KEY)")
        return tune_config(trials, work_dir)
    from edgebin.compile.cortex_a import require_tool
    from edgebin.runners.rpc import parse_rpc_url

    rpc = parse_rpc_url(device)
    builder = cross_builder(require_tool(tgt, "g++")) if tgt.kind == "cortex-a" else None
    return tune_config(trials, work_dir, runner=rpc_runner(rpc.host, rpc.port, rpc.key), builder=builder)


def _emit_bundle(onnx_path: Path, tgt, out_dir: Path, *, integer: bool = True) -> Path:
    from edgebin.compile.mcu_emit import compile_bundle

    config = {"name": tgt.name, "tvm": dict(tgt.tvm), "cflags": list(tgt.cflags), "opt": tgt.extra.get("opt", "-O3")}
    return compile_bundle(onnx_path, config, out_dir, integer=integer)


@dataclass
class _Evaluation:
    """The evaluation inputs and every reference model's outputs on them."""

    data: str
    x: np.ndarray
    y: np.ndarray
    outputs: dict[str, np.ndarray]


def validate(out_dir: Path, *, data: str | None = None, target: str | None = None, eval_samples: int | None = None,
             latency_repeat: int = 50, progress: Progress | None = None, exported: ExportResult | None = None,
             timings: Timings | None = None, command: str = "", started: float | None = None,
             device: str | None = None, timeout_s: float = 600.0):
    """Measure accuracy, agreement and speed of everything in `out_dir`; write report.json and report.md.

    Host targets are timed in milliseconds next to PyTorch, onnxruntime and TVM FP32; Cortex-M targets run on QEMU
    and are measured in instructions, next to the FP32 model's bundle on the same emulator; with
    `device="serial://PORT"` they run on a real board flashed with the bundle's serial firmware instead.
    Cortex-A bundles run under qemu-user (instructions), or on the board with `device="ssh://USER@HOST"`; TVM
    libraries (Cortex-A or host) on a board's TVM RPC server with `device="rpc://HOST:PORT"` or
    `"rpc-tracker://HOST:PORT/KEY"` (milliseconds measured there). `target` defaults to the one compiled in `out_dir`.
    """
    progress = progress or SilentProgress()
    timings = timings or Timings()
    out_dir = Path(out_dir)
    run_info = _read_run_info(out_dir)
    tgt = targets.load(target or _compiled_target(out_dir))
    manifest = "artefact.json" if tgt.kind == "host" else "bundle.json"
    if not (out_dir / tgt.name / manifest).is_file():
        raise UsageError(f"no compiled artefact in {out_dir / tgt.name}: run `edgebin compile "
                         f"{out_dir / MODEL_ONNX} --target {tgt.name} -o {out_dir}` first")
    scheme = device.split("://", 1)[0] if device and "://" in device else None
    if eval_samples is None:
        eval_samples = _default_eval_samples(tgt, scheme)
    with timings.measure("validate"):
        ev = _evaluate_references(out_dir, run_info, data, eval_samples, exported, progress)
        if scheme in REMOTE_DEVICES:
            from edgebin import measure

            sections = measure.on_device(out_dir, tgt, ev, device, progress, timeout_s, latency_repeat)
        elif device and device != "qemu":
            if tgt.kind != "cortex-m":
                raise UsageError(f"--device {device}: only Cortex-M targets run on a board so far; "
                                 f"{tgt.name} runs here")
            sections = _measure_board(out_dir, tgt, ev, device, timeout_s, progress)
        elif tgt.kind == "host":
            sections = _measure_host(out_dir, tgt, ev, exported, latency_repeat, progress)
        elif tgt.kind == "cortex-a":
            from edgebin import measure

            sections = measure.under_qemu_user(out_dir, tgt, ev, progress, timeout_s)
        else:
            sections = _measure_mcu(out_dir, tgt, ev, progress, timeout_s)
    if started is not None:
        timings.seconds["compress"] = round(time.perf_counter() - started, 3)
    report = _assemble_report(out_dir, run_info, tgt, ev, sections, exported, timings, command)
    from edgebin.report import write_report

    with staged_dir(out_dir) as stage:
        for name, path in sections.get("keep", {}).items():
            (stage / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, stage / name)
        write_report(report, stage)
    return report


MCU_EVAL_SAMPLES = 1000  # QEMU runs ~100 inferences a second: 1,000 samples keep validation near a minute
REMOTE_DEVICES = ("ssh", "rpc", "rpc-tracker")  # boards over the network, measured by edgebin.measure
REMOTE_EVAL_SAMPLES = 500  # Raspberry Pi bundles: qemu-user runs ResNet-8 at ~11 inferences a second


def _default_eval_samples(tgt, scheme: str | None = None) -> int | None:
    """Evaluation samples when none are asked for: the whole test split (None) on the host, fewer on emulators
    and boards."""
    if tgt.kind == "cortex-m":
        return MCU_EVAL_SAMPLES
    if tgt.kind == "cortex-a" or scheme in REMOTE_DEVICES:
        return REMOTE_EVAL_SAMPLES
    return None


def _compiled_target(out_dir: Path) -> str:
    """The target `out_dir` holds a compiled artefact for, when it is only one (else x86, the old default)."""
    found = sorted(p.parent.name for p in Path(out_dir).glob("*/*.json")
                   if p.name in ("artefact.json", "bundle.json") and p.parent.name in targets.names())
    if len(found) > 1:
        raise UsageError(f"{out_dir} holds artefacts for {', '.join(found)}: pass --target")
    return found[0] if found else "x86"


def deploy(out_dir: Path, *, to: str, target: str | None = None, data: str | None = None,
           eval_samples: int | None = None, timeout_s: float = 600.0, progress: Progress | None = None,
           command: str = ""):
    """Copy the Raspberry Pi bundle in `out_dir` to the board at `to` (ssh://USER@HOST[:PORT]), run the evaluation
    samples there and write the report with the board's milliseconds. Returns the report."""
    from edgebin.runners.ssh import parse_ssh_url

    if not to.startswith("ssh://"):
        raise UsageError(f"--to {to!r}: deploy copies over SSH, expected ssh://USER@HOST[:PORT] (for TVM's RPC use "
                         f"`edgebin validate {out_dir} --device {to}`)")
    parse_ssh_url(to)  # a malformed URL fails before any work
    return validate(out_dir, data=data, target=target, eval_samples=eval_samples, progress=progress,
                    command=command, device=to, timeout_s=timeout_s)


def _evaluate_references(out_dir: Path, run_info: dict[str, Any], data: str | None, eval_samples: int | None,
                         exported: ExportResult | None, progress: Progress) -> _Evaluation:
    from edgebin import data as datasets
    from edgebin import metrics

    data = data or run_info.get("dataset")
    if not data:
        raise UsageError("no data set given and none recorded in recipe.json; pass --data")
    norm = datasets.Normalization.from_dict(run_info["normalization"])
    with progress.stage(f"Loading data set {data}"):
        dataset = datasets.load_dataset(data)
    x_raw, y = datasets.evaluation_split(dataset, eval_samples)
    x = norm.apply(x_raw)
    outputs: dict[str, np.ndarray] = {}
    with progress.stage("Running ONNX Runtime (FP32, INT8)"):
        outputs["onnxruntime-fp32"] = metrics.run_onnxruntime(out_dir / FP32_ONNX, x)
        outputs["onnxruntime"] = metrics.run_onnxruntime(out_dir / MODEL_ONNX, x)
    if exported is not None:
        with progress.stage("Running PyTorch (FP32, fake-quant)"):
            outputs["fp32"] = metrics.run_torch(exported.fp32_graph, x, batch=exported.batch)
            outputs["compressed"] = metrics.run_torch(exported.quant_graph, x, batch=exported.batch)
    return _Evaluation(data, x, y, outputs)


def _measure_host(out_dir: Path, tgt, ev: _Evaluation, exported: ExportResult | None, repeat: int,
                  progress: Progress) -> dict[str, Any]:
    """Run the host artefact on every sample and time five engines on one sample, 1 thread each."""
    from edgebin import metrics
    from edgebin.compile import compile_onnx, load_artefact, set_threads

    set_threads(1)
    artefact_dir = out_dir / tgt.name
    artefact = load_artefact(artefact_dir)
    with progress.stage(f"Running the compiled artefact on {len(ev.x)} samples", total=len(ev.x)) as advance:
        compiled = _run_with_progress(artefact, ev.x, advance)
    x1 = ev.x[:1]
    engines: dict[str, Any] = {}
    with progress.stage("Timing engines (1 thread)", total=5) as advance:
        if exported is not None:
            engines["pytorch-fp32"] = metrics.time_torch(exported.loaded.module, x1, repeat=repeat)
        advance(1)
        engines["onnxruntime-fp32"] = metrics.time_onnxruntime(out_dir / FP32_ONNX, x1, repeat=repeat)
        engines["onnxruntime-int8"] = metrics.time_onnxruntime(out_dir / MODEL_ONNX, x1, repeat=repeat)
        advance(3)
        with tempfile.TemporaryDirectory(prefix="edgebin-tvm-fp32-") as tmp:
            fp32_art = compile_onnx(out_dir / FP32_ONNX, tgt.tvm, Path(tmp) / "fp32", integer=False)
            engines["tvm-fp32"] = _artefact_latency("tvm-fp32", fp32_art, x1, repeat)
        advance(4)
        engines["edgebin-int8"] = _artefact_latency("edgebin-int8", artefact, x1, repeat)
        advance(5)
    return {
        "compiled": compiled,
        "latency": {"unit": "ms", "threads": 1, "engines": {name: st.to_dict() for name, st in engines.items()}},
        "footprint": {"weights_bytes": int(artefact.weights_bytes()), "artefact_bytes": _dir_bytes(artefact_dir)},
        "kernels": artefact.kernel_counts(),
        "kernels_detail": artefact.kernels,
        "ops": artefact.op_counts(),
        "library": f"{tgt.name}/model.so",
    }


def _measure_board(out_dir: Path, tgt, ev: _Evaluation, device: str, timeout_s: float,
                   progress: Progress) -> dict[str, Any]:
    """Run every sample on a real board over the serial protocol; cycles and time come from the board."""
    from edgebin.runners.qemu import read_bundle_manifest
    from edgebin.runners.serial import SerialRunner

    bundle = out_dir / tgt.name
    manifest = read_bundle_manifest(bundle)
    with progress.stage(f"Running {len(ev.x)} samples on the board at {device}"):
        result = SerialRunner(device, timeout_s=timeout_s).run(bundle, ev.x)
    ort = ev.outputs["onnxruntime"]
    outputs = result.outputs.reshape(len(ort), -1)
    kernels = manifest.get("kernels", [])
    return {
        "compiled": outputs,
        "exact": float(np.mean(np.all(outputs == ort.reshape(len(ort), -1), axis=1))),
        "board": {"device": device, "samples": len(ev.x), "cycles_per_inference": result.cycles,
                  "ms_per_inference": None if result.seconds is None else result.seconds * 1e3,
                  "timer": "cycle-counter", "timed_runs": len(ev.x)},
        "footprint": {"weights_bytes": manifest.get("weights_bytes"), "arena_bytes": manifest.get("arena_bytes"),
                      "arena_lower_bound_bytes": manifest.get("arena_lower_bound_bytes")},
        **_kernel_sections(kernels, manifest),
        "library": f"{tgt.name}/",
    }


def _kernel_sections(kernels: list[dict[str, Any]], manifest: dict[str, Any]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for k in kernels:
        counts[k.get("kind", "other")] = counts.get(k.get("kind", "other"), 0) + 1
    detail = [{"name": k.get("name", k["symbol"]), "kind": k.get("kind", "other"), "ops": list(k.get("ops", [])),
               **({"weights": k["weights"]} if "weights" in k else {})}  # table-coded weights: packed or expanded
              for k in kernels]
    return {"kernels": counts, "kernels_detail": detail, "ops": manifest.get("ops")}


def _measure_mcu(out_dir: Path, tgt, ev: _Evaluation, progress: Progress, timeout_s: float) -> dict[str, Any]:
    """Run the bundle's firmware on QEMU for every sample; count instructions, next to the FP32 bundle's."""
    from edgebin.runners.footprint import check_fits
    from edgebin.runners.qemu import QemuRunner, read_bundle_manifest

    bundle = out_dir / tgt.name
    manifest = read_bundle_manifest(bundle)
    runner = QemuRunner(tgt, timeout_s=timeout_s)
    keep: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="edgebin-qemu-") as tmp:
        tmp = Path(tmp)
        with progress.stage(f"Building firmware for {tgt.name}"):
            elf = runner.build(bundle, tmp / "int8")
        with progress.stage(f"Running {len(ev.x)} samples on QEMU {tgt.qemu.machine}"):
            result = runner.run(elf, ev.x)
        footprint = runner.footprint(elf, stack_bytes=result.stack_bytes)
        check_fits(footprint, tgt)
        with progress.stage("FP32 baseline: same model in float on the same emulator"):
            fp32_bundle = _emit_bundle(out_dir / FP32_ONNX, tgt, tmp / "fp32-bundle", integer=False)
            fp32_elf = runner.build(fp32_bundle, tmp / "fp32")
            fp32_result = runner.run(fp32_elf, ev.x[:FP32_BASELINE_SAMPLES])
        stash = Path(tempfile.mkdtemp(prefix="edgebin-firmware-"))
        for name in ("firmware.elf", "firmware.map", "firmware.json"):
            if (elf.parent / name).is_file():
                shutil.copy2(elf.parent / name, stash / name)
                keep[f"{tgt.name}/firmware/{name}"] = stash / name
    kernels = manifest.get("kernels", [])
    per_symbol = result.per_symbol_instructions or {}
    per_layer = [{"symbol": k["symbol"], "layer": k.get("layer"), "kind": k.get("kind"), "macs": k.get("macs"),
                  "instructions": int(per_symbol.get(k["symbol"], 0))} for k in kernels]
    macs = int(sum(k.get("macs") or 0 for k in kernels))
    ort = ev.outputs["onnxruntime"]
    exact = float(np.mean(np.all(result.outputs.reshape(len(ort), -1) == ort.reshape(len(ort), -1), axis=1)))
    return {
        "compiled": result.outputs.reshape(len(ort), -1),
        "exact": exact,
        "emulator": {"name": f"qemu-system-arm -M {tgt.qemu.machine}", "samples": len(ev.x),
                     "instructions_per_inference": result.instructions, "macs": macs, "per_layer": per_layer,
                     "fp32_instructions_per_inference": fp32_result.instructions},
        "footprint": {"weights_bytes": int(manifest.get("weights_bytes") or footprint.weights_bytes),
                      "artefact_bytes": _dir_bytes(bundle), "flash_bytes": footprint.flash_bytes,
                      "flash_code_bytes": footprint.code_bytes, "flash_weights_bytes": footprint.weights_bytes,
                      "ram_bytes": footprint.ram_bytes, "arena_bytes": manifest.get("arena_bytes"),
                      "arena_lower_bound_bytes": manifest.get("arena_lower_bound_bytes"),
                      "stack_bytes": result.stack_bytes, "board_flash_bytes": tgt.flash_bytes,
                      "board_ram_bytes": tgt.ram_bytes},
        **_kernel_sections(kernels, manifest),
        "library": f"{tgt.name}/",
        "keep": keep,
    }


FP32_BASELINE_SAMPLES = 10  # instruction counts do not depend on the input: a few samples suffice


def _assemble_report(out_dir: Path, run_info: dict[str, Any], tgt, ev: _Evaluation, sections: dict[str, Any],
                     exported: ExportResult | None, timings: Timings, command: str):
    from edgebin import metrics
    from edgebin.report import Report

    y, outputs, compiled = ev.y, ev.outputs, sections["compiled"]
    accuracy = {
        "fp32": metrics.accuracy(outputs.get("fp32", outputs["onnxruntime-fp32"]), y),
        "compressed": metrics.accuracy(outputs["compressed"], y) if "compressed" in outputs else None,
        "onnxruntime": metrics.accuracy(outputs["onnxruntime"], y),
        "compiled": metrics.accuracy(compiled, y),
        "samples": int(len(y)),
    }
    agreement = {**metrics.agreement(outputs["onnxruntime"], compiled), "reference": "onnxruntime",
                 "exact": sections.get("exact")}
    fp32_compiled = sections.get("fp32_compiled")  # the FP32 model built and run the same way (Cortex-A, RPC)
    if fp32_compiled is not None:
        accuracy["compiled_fp32"] = metrics.accuracy(fp32_compiled, y)
        fp32_agreement = metrics.agreement(outputs["onnxruntime-fp32"], fp32_compiled)
        agreement.update(fp32_top1=fp32_agreement["top1"], fp32_max_abs=fp32_agreement["max_abs"])
    fallbacks = [{"layer": r["layer"], "reason": r["reason"]} for r in run_info.get("layers", [])
                 if r.get("kind") == "float"]
    fallbacks += [{"kernel": k["name"], "reason": "compiled in float32"} for k in sections["kernels_detail"]
                  if k.get("kind") == "float"]
    notes: list[str] = []
    if accuracy["fp32"] - accuracy["compiled"] > 0.01:
        hint = ("train longer (--epochs) or keep more layers at 8 bits (--first-last-bits, a recipe file)"
                if run_info.get("training") else "try --calibration percentile or more calibration samples")
        notes.append(f"compiled accuracy is {100 * (accuracy['fp32'] - accuracy['compiled']):.2f} points "
                     f"below FP32; {hint}")
    if agreement["top1"] < 0.99:
        notes.append(f"compiled artefact agrees with onnxruntime on only {100 * agreement['top1']:.2f}% "
                     "of samples")
    exact = sections.get("exact")
    if exact is not None and exact < 0.999:
        notes.append(f"only {100 * exact:.2f}% of the samples give outputs bit-identical to onnxruntime's; the rest "
                     "differ in the last bits where the integer requantization rounds a tie differently")
    recipe = run_info.get("recipe", {})
    calibration = recipe.get("calibration", {}) if recipe.get("method", "int8") in ("int8", "nupes") else {}
    training = {k: v for k, v in run_info.get("training", {}).items() if k in _TRAINING_KEYS}
    if training.get("seconds") is not None:
        timings.seconds["train"] = training["seconds"]
    sparsity = run_info.get("sparsity", {})
    if sparsity.get("seconds") is not None:
        timings.seconds["sparsify"] = sparsity["seconds"]
    fp32_bytes = exported.fp32_weights_bytes if exported else _onnx_weight_bytes(out_dir / FP32_ONNX)
    footprint = {**sections["footprint"], "fp32_weights_bytes": int(fp32_bytes)}
    report_dict = {
        "schema_version": 1,
        "command": command,
        "model": {**run_info.get("model", {}), "input_shape": run_info.get("input_shape")},
        "target": tgt.to_dict(),
        "method": {
            "name": recipe.get("method", "int8"),
            "weight_bits": recipe.get("default", {}).get("weight_bits", 8),
            "activation_bits": recipe.get("default", {}).get("activation_bits", 8),
            "estimator": recipe.get("default", {}).get("estimator"),
            "calibration": {"method": calibration.get("method"), "samples": calibration.get("samples")},
            "per_layer": [{k: r.get(k) for k in ("layer", "op", "weight_bits", "activation_bits", "method", "kind",
                                                     "estimator", "exponent", "activation_exponent")}
                          for r in run_info.get("layers", [])],
        },
        "dataset": {"name": ev.data, "eval_samples": int(len(y)),
                    "calibration_samples": None if training else calibration.get("samples")},
        "training": training,
        "sparsity": sparsity,
        "accuracy": accuracy,
        "agreement": agreement,
        "latency": sections.get("latency", {}),
        "emulator": sections.get("emulator", {}),
        "board": sections.get("board", {}),
        "footprint": footprint,
        "kernels": sections["kernels"],
        "kernels_detail": sections["kernels_detail"],
        "ops": sections["ops"],
        "fallbacks": fallbacks,
        "warnings": notes,
        "environment": _environment(),
        "timings_s": timings.seconds,
        "artefacts": {"onnx": MODEL_ONNX, "fp32_onnx": FP32_ONNX, "library": sections["library"],
                      "recipe": RECIPE_JSON},
    }
    return Report.from_dict(report_dict)


_TRAINING_KEYS = ("epochs", "cga_epochs", "stages", "batch_size", "lr", "distill", "seed", "train_samples",
                  "eval_samples", "world_size", "seconds", "checkpoint", "history")


def compress(model_path: Path, *, target: str = "x86", method: str = "int8", data: str = "fashion-mnist",
             out_dir: Path = Path("out"), arch: str | None = None, input_shape: tuple[int, ...] | None = None,
             trust_pickle: bool = False, recipe: Recipe | None = None, eval_samples: int | None = None,
             latency_repeat: int = 50, progress: Progress | None = None, command: str = "", tune: int = 0,
             tune_device: str | None = None, training: TrainingOptions | None = None,
             sparsity: SparsityConfig | None = None):
    """The whole job: export (with `sparsity`: WGSEF prunes the FP32 model first; QAT methods: train, with
    `training`), compile (with `tune` MetaSchedule trials), validate, report. Returns the report.

    Training (QAT, sparsity) evaluates on the samples validation uses, so the report's accuracies compare."""
    tgt = targets.load(target)  # fail on a bad target before any heavy work
    recipe = recipe or make_recipe(method)
    eval_samples = eval_samples if eval_samples is not None else _default_eval_samples(tgt)
    timings = Timings()
    start = time.perf_counter()
    with timings.measure("export"):
        exported = export(model_path, data=data, out_dir=out_dir, recipe=recipe, arch=arch, input_shape=input_shape,
                          trust_pickle=trust_pickle, progress=progress, training=training, eval_samples=eval_samples,
                          sparsity=sparsity)
    with timings.measure("compile"):
        compile(Path(out_dir) / MODEL_ONNX, target=tgt.name, out_dir=out_dir, progress=progress, tune=tune,
                tune_device=tune_device)
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

    from edgebin.report.schema import cpu_name

    return {
        "edgebin": __version__,
        "torch": torch.__version__,
        "tvm": tvm.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": sys.version.split()[0],
        "cpu": cpu_name(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }

