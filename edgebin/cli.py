"""The `edgebin` command: a thin typer layer over `edgebin.pipeline` (each command calls the function of the
same name), rich progress bars, and one line on stderr plus a documented exit code for every user error
(see `edgebin.errors`)."""

from __future__ import annotations

import contextlib
import logging
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgebin import __version__, pipeline, targets
from edgebin.errors import EdgebinError, UsageError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    help="Compress trained PyTorch models, compile them with TVM for edge targets, and validate them.\n\n"
    "Quick start: `edgebin compress models/resnet8_fashion.pt --target x86 --data fashion-mnist -o out/`\n\n"
    "Exit codes: 0 ok, 1 internal error, 2 bad option, 3 unreadable model, 4 untrusted pickle, 5 input shape, "
    "6 unsupported operator, 7 missing toolchain, 8 data set, 9 device.",
)

_state = {"debug": False}

ModelArg = Annotated[Path, typer.Argument(help="Model file: edgebin checkpoint, state_dict (+ --arch), "
                                          "TorchScript archive, torch.export program (.pt2), or a pickled module "
                                          "(+ --trust-pickle).", show_default=False)]
TargetOpt = Annotated[str, typer.Option("--target", "-t", help="A target from `edgebin targets`: x86 (this host, "
                                        "timed in ms), cortex-m4/m7/m33/m55 (C bundle run on QEMU, counted in "
                                        "instructions) or a Raspberry Pi: rpi3, rpi-zero2, rpi4, rpi5, rpi3-armv7, "
                                        "rpi4-armv7 (run on qemu-user, counted in instructions).")]
CompiledTargetOpt = Annotated[str | None, typer.Option("--target", "-t", help="The target whose artefact in OUT to "
                                                       "use (default: the only one there).")]
DataOpt = Annotated[str, typer.Option("--data", "-d", help="digits | mnist | fashion-mnist | file.npz (arrays x, y) "
                                      "| a folder of class sub-folders of images.")]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder (written atomically).")]
MethodOpt = Annotated[str, typer.Option("--method", "-m", help="Post-training quantization, from the FP32 model and "
                                        "the calibration samples, no training: int8 (W8A8, seconds) or nupes (NUPES: "
                                        "--bits 2-8 weights on a power-law grid that is dense near 0, 8-bit "
                                        "activations; learns each layer's exponent and codes block by block, about a "
                                        "minute for ResNet-8 on a laptop; --data-free: PowerQuant's exponent search "
                                        "only, seconds). "
                                        "Quantization-aware training from the FP32 model (minutes): statsq (OFQ, 2-8 "
                                        "bit weights, then a CGA epoch), lsq (learned step), tbt (TBT/BiT "
                                        "statistics-based ternary weights, elastic activations), binary (W1A1, "
                                        "--estimator), ternary (TWN weights).")]
_QAT = "Quantization-aware training (--method statsq | lsq | tbt | binary | ternary)"
BitsOpt = Annotated[int | None, typer.Option("--bits", min=1, max=8, help="Weight bits: nupes 2-8 (default 4); "
                                             "statsq/lsq 2-8, tbt 1-2, ternary 2, binary 1 (default 2; binary 1).")]
_NUPES = "NUPES post-training quantization (--method nupes)"
DataFreeOpt = Annotated[bool, typer.Option("--data-free", rich_help_panel=_NUPES, help="Only search each layer's "
                                           "power exponent on its weights (PowerQuant), no reconstruction on the "
                                           "calibration data: seconds instead of minutes, usually less accurate.")]
IterationsOpt = Annotated[int | None, typer.Option("--iterations", min=0, rich_help_panel=_NUPES, help="Adam steps "
                                                   "per block of the reconstruction (default 400; fewer: faster, "
                                                   "usually less accurate).", show_default=False)]
PowerActOpt = Annotated[bool, typer.Option("--power-activations", rich_help_panel=_NUPES, help="Put the input of "
                                            "each NUPES layer (not the network input) on a power grid whose "
                                            "exponent is searched on the calibration activations, at --act-bits; "
                                            "it runs as one integer table lookup per value.")]
ActBitsOpt = Annotated[int | None, typer.Option("--act-bits", min=1, max=32, rich_help_panel=_QAT, help="Activation "
                                                "bits: QAT default 2 (binary 1; 32 keeps layer inputs float); nupes "
                                                "2-8, default 8 (below 8: the inputs of its layers, not the "
                                                "network input).")]
EstimatorOpt = Annotated[str | None, typer.Option("--estimator", rich_help_panel=_QAT, help="Gradient of sign() for "
                                                  "--method binary: ste (clipped, default), reste (ReSTE's power "
                                                  "schedule) or biper (BiPer's sine, two training stages).")]
FirstLastOpt = Annotated[int, typer.Option("--first-last-bits", min=0, max=8, rich_help_panel=_QAT, help="Bits of "
                                           "the first and last layers (0: they follow --method too).")]
_TRAIN = "Training (QAT methods and --sparsity)"
EpochsOpt = Annotated[int, typer.Option("--epochs", min=1, rich_help_panel=_TRAIN, help="Training epochs. QAT: all "
                                        "of them (BiPer: split 2:1 between its stages). --sparsity: WGSEF's, half "
                                        "with the proximal step and half of masked fine-tuning (6: 3 + 3; an odd "
                                        "count gives the extra one to the proximal steps); with a QAT method too, "
                                        "each trains this many. ResNet-8 takes about 30 s per 30,000 Fashion-MNIST "
                                        "images on 2 CPU cores (epoch times: tools/bench/qat_results.jsonl).")]
CgaOpt = Annotated[int | None, typer.Option("--cga-epochs", min=0, rich_help_panel=_QAT, help="CGA epochs after QAT "
                                            "(statsq only; default 1 for statsq).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, rich_help_panel=_TRAIN, help="Training batch.")]
LrOpt = Annotated[float | None, typer.Option("--lr", min=0.0, rich_help_panel=_TRAIN, help="Peak AdamW learning "
                                             "rate, warm-up then cosine decay (default 5e-4 for QAT, 1e-3 for "
                                             "--sparsity).", show_default=False)]
TrainNOpt = Annotated[int | None, typer.Option("--train-samples", min=1, rich_help_panel=_TRAIN, help="Train on a "
                                               "class-stratified subset of the training split (default: all).")]
DistillOpt = Annotated[bool, typer.Option("--distill/--no-distill", rich_help_panel=_TRAIN, help="Distil from the "
                                          "FP32 model.")]
SeedOpt = Annotated[int, typer.Option("--seed", rich_help_panel=_TRAIN, help="Seed of the shuffling and of the "
                                      "quantizers' initialisation.")]
_SPARSE = "Structured sparsity (--sparsity FRACTION or --keep K)"
SparsityOpt = Annotated[float | None, typer.Option("--sparsity", rich_help_panel=_SPARSE, help="Before quantizing, "
                                                   "remove this fraction of the groups of every layer (0.5: half of "
                                                   "each layer's filters) with WGSEF, the weighted group sparse "
                                                   "envelope (arXiv:2212.12921): the FP32 model trains for --epochs "
                                                   "(minutes, like QAT), a proximal step after each optimizer step "
                                                   "pulling the weakest groups to exactly zero, then an exact step to "
                                                   "the target and a masked fine-tune, distilling from the FP32 "
                                                   "model. Filters and "
                                                   "channels are then physically removed, so the model gets smaller "
                                                   "and faster; the other --groups only become zeros. The pruned "
                                                   "FP32 model is written to OUT/model_sparse.pt.", show_default=False)]
KeepOpt = Annotated[int | None, typer.Option("--keep", min=1, rich_help_panel=_SPARSE, help="Instead of --sparsity: "
                                             "keep K groups of every layer (of every set of --groups).",
                                             show_default=False)]
GroupsOpt = Annotated[str | None, typer.Option("--groups", rich_help_panel=_SPARSE, help="What one group is: "
                                               "filters (output channels; default), channels (input channels): "
                                               "both removed; shapes (also filter-shapes: one kernel position "
                                               "across a conv's filters), weights (single weights), layers (whole "
                                               "layers): zeroed in place.", show_default=False)]
ResumeOpt = Annotated[bool, typer.Option("--resume", rich_help_panel=_QAT, help="Continue an interrupted training "
                                         "run from OUT/train-state*.pt.")]
ArchOpt = Annotated[str | None, typer.Option(help="Architecture for a plain state_dict: a zoo name (lenet5, resnet8, "
                                             "ds_cnn, mobilenet_v1_025, tiny_vit) or path/to/file.py:ClassName.")]
ShapeOpt = Annotated[str | None, typer.Option("--input-shape", help="Input shape with batch 1, e.g. 1x1x28x28, when "
                                              "the file does not record it.")]
TrustOpt = Annotated[bool, typer.Option("--trust-pickle", help="Allow unpickling a fully pickled module. Pickles "
                                        "can run arbitrary code: only for files you made.")]
CalibOpt = Annotated[str, typer.Option("--calibration", help="Activation range calibration: minmax | percentile.")]
CalibNOpt = Annotated[int | None, typer.Option("--calibration-samples", min=1, help="Calibration samples from "
                                               "the training split (≥ 256 recommended; default 512, nupes 1,024, "
                                               "its maximum).", show_default=False)]
PctOpt = Annotated[float, typer.Option("--percentile", help="Percentile for --calibration percentile.")]
RecipeOpt = Annotated[Path | None, typer.Option("--recipe", help="A recipe.json (overrides --method and calibration "
                                                "flags), e.g. from an earlier out/.")]
EvalOpt = Annotated[int | None, typer.Option("--eval-samples", min=1, help="Evaluate on this many test samples "
                                             "(default: the whole test split on the host, 1,000 on QEMU for "
                                             "microcontrollers, 500 for Raspberry Pis and boards over SSH or RPC).")]
RepeatOpt = Annotated[int, typer.Option("--repeat", min=5, help="Timed runs per engine (median reported).")]
TuneOpt = Annotated[int, typer.Option("--tune", min=0, help="MetaSchedule tuning trials for the whole model (0: none; "
                                      "a few hundred take minutes). The database in OUT/TARGET/tuning/ is reused.")]
TuneDeviceOpt = Annotated[str | None, typer.Option("--tune-device", help="Where a board's tuning candidates run: "
                                                   "rpc://HOST:9090 or rpc-tracker://HOST:9190/KEY.")]


class RichProgress:
    """pipeline.Progress drawn as rich progress bars on stderr."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @contextlib.contextmanager
    def stage(self, description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        if not self.enabled:
            yield lambda done: None
            return
        columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn()]
        with Progress(*columns, console=err_console, transient=False) as bar:
            task = bar.add_task(description, total=total)
            yield lambda done: bar.update(task, completed=done)
            bar.update(task, completed=total if total is not None else 1, total=total or 1)


def _progress() -> RichProgress:
    return RichProgress(enabled=err_console.is_terminal or _state.get("progress", False))


def _shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    from edgebin.loading import parse_input_shape

    return parse_input_shape(text)


def _training(epochs: int, cga_epochs: int | None, batch_size: int, lr: float | None, train_samples: int | None,
              distill: bool, seed: int, resume: bool) -> pipeline.TrainingOptions:
    """The QAT flags that `compress` and `export` share."""
    return pipeline.TrainingOptions(epochs=epochs, cga_epochs=cga_epochs, batch_size=batch_size,
                                    lr=pipeline.TrainingOptions.lr if lr is None else lr,
                                    train_samples=train_samples, distill=distill, seed=seed, resume=resume)


def _sparsity(sparsity: float | None, keep: int | None, groups: str | None, epochs: int, batch_size: int,
              lr: float | None, train_samples: int | None, distill: bool, seed: int):
    """The --sparsity/--keep/--groups flags with the shared training flags (None: no sparsity stage)."""
    return pipeline.make_sparsity(sparsity, keep, groups, epochs=epochs, lr=lr, batch_size=batch_size,
                                  train_samples=train_samples, distill=distill, seed=seed)


def _command_line() -> str:
    return "edgebin " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _print_report(report, out: Path) -> None:
    from edgebin.report.console import summary_table

    console.print(summary_table(report))
    console.print(f"Report: {out / 'report.md'} and {out / 'report.json'}")


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-v, -vv).")] = 0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Force progress bars on or off "
                                           "(default: on in a terminal).")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        console.print(f"edgebin {__version__}")
        raise typer.Exit()
    _state["debug"] = debug
    _state["progress"] = progress
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def compress(
    model: ModelArg,
    target: TargetOpt = "x86",
    method: MethodOpt = "int8",
    data: DataOpt = "fashion-mnist",
    out: OutOpt = Path("out"),
    arch: ArchOpt = None,
    input_shape: ShapeOpt = None,
    trust_pickle: TrustOpt = False,
    calibration: CalibOpt = "minmax",
    calibration_samples: CalibNOpt = None,
    percentile: PctOpt = 99.99,
    recipe: RecipeOpt = None,
    eval_samples: EvalOpt = None,
    repeat: RepeatOpt = 50,
    tune: TuneOpt = 0,
    tune_device: TuneDeviceOpt = None,
    bits: BitsOpt = None,
    act_bits: ActBitsOpt = None,
    estimator: EstimatorOpt = None,
    first_last_bits: FirstLastOpt = 8,
    epochs: EpochsOpt = 6,
    cga_epochs: CgaOpt = None,
    batch_size: BatchOpt = 128,
    lr: LrOpt = None,
    train_samples: TrainNOpt = None,
    distill: DistillOpt = True,
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
    data_free: DataFreeOpt = False,
    iterations: IterationsOpt = None,
    power_activations: PowerActOpt = False,
    sparsity: SparsityOpt = None,
    keep: KeepOpt = None,
    groups: GroupsOpt = None,
) -> None:
    """Compress MODEL, compile it for TARGET, validate it on DATA and write a report to OUT.

    With --sparsity or --keep, WGSEF first trains whole filters (or other groups) of the FP32 model to zero and
    removes them, then the smaller model is quantized by --method.

    Examples: `edgebin compress models/resnet8_fashion.pt --target x86 --method int8 --data fashion-mnist -o out/` ·
    `edgebin compress models/resnet8_fashion.pt --method binary --estimator biper --epochs 9 -o out/` ·
    `edgebin compress models/resnet8_fashion.pt --method statsq --bits 2 --act-bits 2 --target cortex-m4 -o out/` ·
    `edgebin compress models/resnet8_fashion.pt --method nupes --bits 4 -o out/` ·
    `edgebin compress models/resnet8_fashion.pt --method nupes --bits 4 --act-bits 4 --power-activations -o out/` ·
    `edgebin compress models/resnet8_fashion.pt --sparsity 0.5 --groups filters --method int8 --target cortex-m4
    -o out/`
    """
    sparse = _sparsity(sparsity, keep, groups, epochs, batch_size, lr, train_samples, distill, seed)
    rec = pipeline.make_recipe(method, calibration, calibration_samples, percentile, recipe, bits=bits,
                               act_bits=act_bits, estimator=estimator, first_last_bits=first_last_bits or None,
                               data_free=data_free, iterations=iterations, power_activations=power_activations)
    training = _training(epochs, cga_epochs, batch_size, lr, train_samples, distill, seed, resume)
    report = pipeline.compress(model, target=target, method=method, data=data, out_dir=out, arch=arch,
                               input_shape=_shape(input_shape), trust_pickle=trust_pickle, recipe=rec,
                               eval_samples=eval_samples, latency_repeat=repeat, progress=_progress(),
                               command=_command_line(), tune=tune, tune_device=tune_device, training=training,
                               sparsity=sparse)
    _print_report(report, out)


@app.command()
def export(
    model: ModelArg,
    data: DataOpt = "fashion-mnist",
    out: OutOpt = Path("out"),
    method: MethodOpt = "int8",
    arch: ArchOpt = None,
    input_shape: ShapeOpt = None,
    trust_pickle: TrustOpt = False,
    calibration: CalibOpt = "minmax",
    calibration_samples: CalibNOpt = None,
    percentile: PctOpt = 99.99,
    recipe: RecipeOpt = None,
    bits: BitsOpt = None,
    act_bits: ActBitsOpt = None,
    estimator: EstimatorOpt = None,
    first_last_bits: FirstLastOpt = 8,
    epochs: EpochsOpt = 6,
    cga_epochs: CgaOpt = None,
    batch_size: BatchOpt = 128,
    lr: LrOpt = None,
    train_samples: TrainNOpt = None,
    distill: DistillOpt = True,
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
    data_free: DataFreeOpt = False,
    iterations: IterationsOpt = None,
    power_activations: PowerActOpt = False,
    sparsity: SparsityOpt = None,
    keep: KeepOpt = None,
    groups: GroupsOpt = None,
) -> None:
    """Quantize MODEL (int8 and nupes: calibrating on DATA; QAT methods: training on DATA) and export
    OUT/model.onnx and OUT/model_fp32.onnx (with --sparsity or --keep: of the model WGSEF pruned first).

    Examples: `edgebin export models/lenet5_fashion.pt --data fashion-mnist -o out/` ·
    `edgebin export models/resnet8_fashion.pt --method nupes --bits 4 -o out/` ·
    `edgebin export models/resnet8_fashion.pt --method statsq --bits 2 --act-bits 2 -o out/` ·
    `edgebin export models/resnet8_fashion.pt --sparsity 0.5 --groups filters -o out/`
    """
    sparse = _sparsity(sparsity, keep, groups, epochs, batch_size, lr, train_samples, distill, seed)
    rec = pipeline.make_recipe(method, calibration, calibration_samples, percentile, recipe, bits=bits,
                               act_bits=act_bits, estimator=estimator, first_last_bits=first_last_bits or None,
                               data_free=data_free, iterations=iterations, power_activations=power_activations)
    training = _training(epochs, cga_epochs, batch_size, lr, train_samples, distill, seed, resume)
    result = pipeline.export(model, data=data, out_dir=out, recipe=rec, arch=arch, input_shape=_shape(input_shape),
                             trust_pickle=trust_pickle, progress=_progress(), training=training, sparsity=sparse)
    pruned = result.run_info.get("sparsity")
    if pruned:
        console.print(f"Pruned {pruned['groups']} with WGSEF: FP32 top-1 {100 * pruned['dense_accuracy']:.2f}% -> "
                      f"{100 * pruned['accuracy']:.2f}%, MACs {pruned['dense_macs']:,} -> {pruned['macs']:,}; wrote "
                      f"{out / pipeline.SPARSE_CHECKPOINT}")
    training_info = result.run_info.get("training")
    if training_info:
        last = training_info["history"][-1]["eval_accuracy"] if training_info["history"] else None
        shown = "" if last is None else f", evaluation accuracy {100 * last:.2f}%"
        console.print(f"Trained {rec.method} for {len(training_info['history'])} epochs{shown}; wrote "
                      f"{out / pipeline.MODEL_ONNX} and {out / pipeline.FP32_ONNX}")
        return
    n_int8, n_float = result.summary.count("int8"), result.summary.count("float")
    nupes = [r["exponent"] for r in result.run_info["layers"] if r.get("method") == "nupes"]
    shown = (f"; {len(nupes)} NUPES layers at {rec.default.weight_bits} bits, exponents "
             f"{min(nupes):.2f}-{max(nupes):.2f}") if nupes else ""
    console.print(f"Wrote {out / pipeline.MODEL_ONNX} ({n_int8} int8 ops, {n_float} float{shown}) and "
                  f"{out / pipeline.FP32_ONNX}")


@app.command("compile")
def compile_command(
    model: Annotated[Path, typer.Argument(help="ONNX model, e.g. out/model.onnx from `edgebin export`.")],
    target: TargetOpt = "x86",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder (default: the model's folder).")]
    = None,
    tune: TuneOpt = 0,
    tune_device: TuneDeviceOpt = None,
) -> None:
    """Compile an ONNX MODEL for TARGET with TVM; QDQ models become int8 kernels.

    Host targets get a shared library; Cortex-M targets a self-contained C bundle (checked to fit the board).

    Examples: `edgebin compile out/model.onnx --target cortex-m4` · `edgebin compile out/model_fp32.onnx --tune 256`
    """
    out = out or model.parent
    artefact = pipeline.compile(model, target=target, out_dir=out, progress=_progress(), tune=tune,
                                tune_device=tune_device)
    if isinstance(artefact, Path):  # a microcontroller C bundle
        console.print(f"Compiled {model} for {target}: C bundle in {artefact} (build it with `make -C {artefact}`; "
                      f"run it on QEMU with `edgebin validate {out} --target {target}`)")
        return
    if hasattr(artefact, "runtime"):  # a Raspberry Pi bundle
        counts = ", ".join(f"{n} {kind}" for kind, n in artefact.kernel_counts().items())
        console.print(f"Compiled {model} for {target}: bundle in {artefact.directory} (kernels: {counts}); run it "
                      f"under qemu-user with `edgebin validate {out} --target {target}`, on the board with "
                      f"`edgebin deploy {out} --to ssh://USER@BOARD`")
        return
    counts = ", ".join(f"{n} {kind}" for kind, n in artefact.kernel_counts().items())
    tuned = artefact.tuning  # empty when untuned
    note = f"; {len(tuned['tuned_kernels'])} tuned, {tuned['trials_run']} new trials" if tuned else ""
    console.print(f"Compiled {model} for {target}: {artefact.directory} (kernels: {counts}{note})")


@app.command()
def validate(
    out: Annotated[Path, typer.Argument(help="An output folder holding model.onnx, model_fp32.onnx and a compiled "
                                        "artefact.")],
    data: Annotated[str | None, typer.Option("--data", "-d", help="Data set (default: the one in recipe.json).")]
    = None,
    target: CompiledTargetOpt = None,
    eval_samples: EvalOpt = None,
    repeat: RepeatOpt = 50,
    device: Annotated[str | None, typer.Option("--device", help="Where the model runs: qemu (default for "
                                               "microcontrollers and Raspberry Pis), serial:///dev/ttyACM0?baud="
                                               "115200 for a microcontroller flashed with the serial firmware "
                                               "(docs/serial-protocol.md), ssh://USER@HOST[:PORT] for a Raspberry Pi "
                                               "bundle, rpc://HOST:9090 or rpc-tracker://HOST:9190/KEY for a TVM "
                                               "library on a board's TVM RPC server (docs/raspberry-pi.md).")]
    = None,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="Seconds to wait for the emulator or board.")]
    = 600.0,
) -> None:
    """Measure accuracy, agreement with onnxruntime and speed of the artefacts in OUT; write the report.

    Examples: `edgebin validate out/ --data fashion-mnist` · `edgebin validate out/ --target cortex-m4` ·
    `edgebin validate out/ --target cortex-m4 --device serial:///dev/ttyACM0` ·
    `edgebin validate out/ --target rpi4 --device rpc://raspberrypi.local:9090`
    """
    report = pipeline.validate(out, data=data, target=target, eval_samples=eval_samples, latency_repeat=repeat,
                               progress=_progress(), command=_command_line(), device=device, timeout_s=timeout)
    _print_report(report, out)


@app.command()
def deploy(
    out: Annotated[Path, typer.Argument(help="An output folder holding a Raspberry Pi bundle (from `edgebin compress "
                                        "--target rpi4` or `edgebin compile --target rpi4`).")],
    to: Annotated[str, typer.Option("--to", help="ssh://USER@HOST[:PORT][/remote/folder][?identity=KEY&config=FILE]: "
                                    "the board, reached with the system ssh and a key (no password prompts).",
                                    show_default=False)],
    target: CompiledTargetOpt = None,
    data: Annotated[str | None, typer.Option("--data", "-d", help="Data set (default: the one in recipe.json).")]
    = None,
    eval_samples: EvalOpt = None,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="Seconds the board may take for all samples.")]
    = 600.0,
) -> None:
    """Copy the bundle in OUT to a board over SSH, run the evaluation samples there and write the report with the
    board's milliseconds (next to the FP32 model's on the same board).

    Example: `edgebin deploy out/ --to ssh://pi@raspberrypi.local`
    """
    report = pipeline.deploy(out, to=to, target=target, data=data, eval_samples=eval_samples, timeout_s=timeout,
                             progress=_progress(), command=_command_line())
    _print_report(report, out)


@app.command("report")
def report_command(
    out: Annotated[Path, typer.Argument(help="An output folder with report.json.")] = Path("out"),
    markdown: Annotated[bool, typer.Option("--markdown", help="Print report.md instead of the summary.")] = False,
) -> None:
    """Print the report of an earlier run.  Example: `edgebin report out/`"""
    report = pipeline.report(out)
    if markdown:
        from edgebin.report.markdown import render_markdown

        console.print(render_markdown(report), markup=False, highlight=False)
    else:
        _print_report(report, out)


@app.command("targets")
def targets_command() -> None:
    """List the compilation targets.  Example: `edgebin targets`"""
    table = Table(title="edgebin targets")
    for column in ("name", "kind", "aliases", "description"):
        table.add_column(column)
    for t in targets.all_targets():
        table.add_row(t.name, t.kind, ", ".join(t.aliases), t.description)
    console.print(table)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; map EdgebinError to one stderr line and its exit code."""
    try:
        app(args=argv, standalone_mode=False)
    except EdgebinError as err:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        _exit(err.exit_code, argv)
    except typer.Exit as done:
        _exit(done.exit_code, argv)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        _exit(130, argv)
    except typer.TyperException as err:  # bad flags, missing arguments: typer has printed nothing yet
        show = getattr(err, "show", None)
        if show is not None:
            show(file=sys.stderr)
        else:
            err_console.print(f"[bold red]error:[/] {err.format_message()}", highlight=False)
        _exit(UsageError.exit_code, argv)
    except Exception as err:
        if _state["debug"]:
            raise
        err_console.print(f"[bold red]internal error:[/] {type(err).__name__}: {err} (rerun with --debug for the "
                          "traceback, and please report it)", highlight=False, soft_wrap=True)
        _exit(1, argv)
    _exit(0, argv)
    return 0


def _exit(code: int, argv: list[str] | None) -> None:
    if argv is None:
        raise SystemExit(code)
    if code:
        raise SystemExit(code)
