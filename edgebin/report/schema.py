"""The report as frozen dataclasses: what report.json holds, with types checked on the way in.

    report = Report(model=ModelInfo(arch="resnet8"), accuracy=Accuracy(fp32=0.912, compiled=0.909))
    report = dataclasses.replace(report, latency=Latency.from_stats([ort_fp32, edgebin_int8]))
    data = report.to_dict()              # plain JSON types, every documented key present (null if unknown)
    assert Report.from_dict(data) == report

Every section defaults to "not measured" (all values None), so a stage fills in only what it knows and
`edgebin compile` alone still writes a valid report. `from_dict` accepts a missing or null section, ignores
keys it does not know (a newer edgebin may add some within schema_version 1) and rejects a value of the
wrong type with the key's path. Derived numbers (`latency.speedup_vs`, `footprint.ratio`) are computed, not
stored. `docs/report.md` is the reference for every key.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import math
import numbers
import os
import platform
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgebin.metrics import LatencyStat

SCHEMA_VERSION = 1
BASELINE_ENGINE = "onnxruntime-fp32"  # latency.speedup_vs is measured against this engine


class _Section:
    """Shared behaviour of the report's records: types are checked and normalised on construction."""

    def __post_init__(self) -> None:
        _normalise(self, type(self).__name__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Any:
        """Build from plain JSON data; raises ValueError naming the key whose value has the wrong type."""
        return _coerce(data, cls, cls.__name__)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _encode(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class ModelInfo(_Section):
    """The model that went in: its file, architecture, file format, input shape and parameter count."""

    path: str | None = None
    arch: str | None = None
    format: str | None = None
    input_shape: tuple[int, ...] | None = None
    parameters: int | None = None


@dataclass(frozen=True)
class TargetInfo(_Section):
    """The target it was compiled for (a name from `edgebin targets`)."""

    name: str | None = None
    kind: str | None = None
    description: str | None = None


@dataclass(frozen=True)
class Calibration(_Section):
    method: str | None = None
    samples: int | None = None


@dataclass(frozen=True)
class LayerPrecision(_Section):
    """How one layer was compressed; `kind` is the arithmetic it runs in ("int8", "float")."""

    layer: str
    op: str | None = None
    weight_bits: int | None = None
    activation_bits: int | None = None
    method: str | None = None
    kind: str | None = None
    estimator: str | None = None
    exponent: float | None = None  # NUPES: the power of the layer's weight grid (1: uniform)
    activation_exponent: float | None = None  # NUPES --act-bits/--power-activations: its input's grid (1: uniform)


@dataclass(frozen=True)
class MethodInfo(_Section):
    """The compression method with its default bit widths, calibration and the per-layer outcome."""

    name: str | None = None
    weight_bits: int | None = None
    activation_bits: int | None = None
    estimator: str | None = None  # binary methods: ste, reste or biper
    calibration: Calibration = field(default_factory=Calibration)
    per_layer: tuple[LayerPrecision, ...] = ()


@dataclass(frozen=True)
class DatasetInfo(_Section):
    name: str | None = None
    eval_samples: int | None = None
    calibration_samples: int | None = None


@dataclass(frozen=True)
class TrainingEpoch(_Section):
    """One epoch of quantization-aware training; accuracies are fractions."""

    epoch: int
    stage: str | None = None  # "qat", or "biper-stage1" / "biper-stage2"
    phase: str | None = None  # "qat" or "cga"
    lr: float | None = None
    train_loss: float | None = None
    train_accuracy: float | None = None
    eval_accuracy: float | None = None  # the fake-quant model on the evaluation split, after the epoch
    seconds: float | None = None


@dataclass(frozen=True)
class Training(_Section):
    """How a QAT method trained (empty for int8, which is post-training quantization)."""

    epochs: int | None = None  # QAT epochs over all stages, CGA excluded
    cga_epochs: int | None = None
    stages: tuple[str, ...] = ()
    batch_size: int | None = None
    lr: float | None = None
    distill: bool | None = None  # from the FP32 model
    seed: int | None = None
    train_samples: int | None = None
    eval_samples: int | None = None
    world_size: int | None = None  # training processes (torchrun)
    seconds: float | None = None
    checkpoint: str | None = None  # the trained QAT model, relative to the output directory
    history: tuple[TrainingEpoch, ...] = ()


@dataclass(frozen=True)
class SparsitySet(_Section):
    """One set WGSEF pruned to an exact count: the filters (or channels) of the layers in `name`, joined by "+"
    where residual adds tie them; one layer's filter shapes or weights; or "layers", the model's layers."""

    name: str
    groups: int
    kept: int

    @property
    def removed(self) -> int:
        return self.groups - self.kept

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "removed": self.removed}


@dataclass(frozen=True)
class Sparsity(_Section):
    """Structured sparsity (WGSEF) trained into the FP32 model before quantization; all null without it."""

    groups: str | None = None  # filters, channels, shapes, weights or layers
    selection: str | None = None  # "wgsef", or "l1" (magnitude pruning, Python API only)
    sparsity: float | None = None  # fraction of each set's groups removed (or `keep`)
    keep: int | None = None
    shrunk: bool | None = None  # the pruned filters or channels were removed; else they stay zeros in place
    epochs: int | None = None  # with the proximal step, ending with the exact step
    finetune_epochs: int | None = None  # masked, after it
    lam: float | None = None
    train_samples: int | None = None
    dense_accuracy: float | None = None  # the FP32 model that went in, on `eval_samples`
    accuracy: float | None = None  # the pruned FP32 model, on the same samples
    eval_samples: int | None = None
    dense_parameters: int | None = None
    parameters: int | None = None
    nonzero_parameters: int | None = None
    dense_macs: int | None = None
    macs: int | None = None
    seconds: float | None = None
    source: str | None = None  # the dense model file
    checkpoint: str | None = None  # the pruned FP32 checkpoint, relative to the output directory
    sets: tuple[SparsitySet, ...] = ()
    history: tuple[TrainingEpoch, ...] = ()


@dataclass(frozen=True)
class Accuracy(_Section):
    """Top-1 accuracy as fractions in [0, 1] on the same `samples` evaluation samples."""

    fp32: float | None = None  # the float PyTorch model
    compressed: float | None = None  # the fake-quant PyTorch model
    onnxruntime: float | None = None  # the exported ONNX in onnxruntime
    compiled: float | None = None  # the compiled artefact on the target or its stand-in
    samples: int | None = None
    compiled_fp32: float | None = None  # the FP32 model compiled for the same target, run the same way (Cortex-A)


@dataclass(frozen=True)
class Agreement(_Section):
    """Outputs of the compiled artefact against `reference`, as `edgebin.metrics.agreement` computes them."""

    top1: float | None = None
    max_abs: float | None = None
    rmse: float | None = None
    cosine: float | None = None
    samples: int | None = None
    reference: str | None = "onnxruntime"
    exact: float | None = None  # fraction of samples whose outputs equal the reference's bit for bit
    fp32_top1: float | None = None  # the FP32 model compiled for the target against onnxruntime FP32 (Cortex-A)
    fp32_max_abs: float | None = None


@dataclass(frozen=True)
class EngineLatency(_Section):
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    threads: int | None = None


@dataclass(frozen=True)
class Latency(_Section):
    """Wall-clock latency per engine in ms, all measured in the same run; see `BASELINE_ENGINE`."""

    engines: dict[str, EngineLatency] = field(default_factory=dict)
    threads: int | None = None
    batch: int | None = None  # samples per timed call

    @classmethod
    def from_stats(cls, stats: Iterable[LatencyStat], batch: int | None = None) -> Latency:
        """Collect `edgebin.metrics.LatencyStat`s; `threads` is their common thread count (None if mixed)."""
        stats = list(stats)
        engines = {s.engine: EngineLatency(s.median_ms, s.p10_ms, s.p90_ms, s.runs, s.threads) for s in stats}
        threads = {s.threads for s in stats}
        return cls(engines=engines, threads=threads.pop() if len(threads) == 1 else None, batch=batch)

    @property
    def speedup_vs(self) -> dict[str, dict[str, float]]:
        """{BASELINE_ENGINE: {engine: baseline median / engine median}}; > 1 is faster than the baseline."""
        base = self.engines.get(BASELINE_ENGINE)
        if base is None:
            return {BASELINE_ENGINE: {}}
        return {BASELINE_ENGINE: {name: base.median_ms / e.median_ms
                                  for name, e in sorted(self.engines.items()) if e.median_ms > 0}}

    def to_dict(self) -> dict[str, Any]:
        return {"unit": "ms", **super().to_dict(), "speedup_vs": self.speedup_vs}


@dataclass(frozen=True)
class Footprint(_Section):
    """Sizes in bytes: compressed weights, the same weights in FP32, and the compiled artefact file."""

    weights_bytes: int | None = None
    fp32_weights_bytes: int | None = None
    artefact_bytes: int | None = None
    # Microcontroller targets (null elsewhere): flash and RAM of the firmware as linked, and the board's limits.
    flash_bytes: int | None = None  # code + weights + initialised data
    flash_code_bytes: int | None = None
    flash_weights_bytes: int | None = None
    ram_bytes: int | None = None  # data + bss (arena included) + stack reserve
    runtime_bytes: int | None = None  # Raspberry Pi TVM bundles: libtvm_runtime.so + libtvm_ffi.so in the artefact
    arena_bytes: int | None = None  # the one static activation arena, as planned
    arena_lower_bound_bytes: int | None = None  # largest set of simultaneously live activations
    stack_bytes: int | None = None  # stack high-water mark measured on the emulator
    board_flash_bytes: int | None = None
    board_ram_bytes: int | None = None

    @property
    def ratio(self) -> float | None:
        """fp32_weights_bytes / weights_bytes: how many times smaller the weights became."""
        if not self.weights_bytes or self.fp32_weights_bytes is None:
            return None
        return self.fp32_weights_bytes / self.weights_bytes

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "ratio": self.ratio}


@dataclass(frozen=True)
class LayerInstructions(_Section):
    """Instructions one kernel executes per inference on the emulator, and its multiply-accumulates."""

    symbol: str
    instructions: int
    layer: str | None = None
    kind: str | None = None
    macs: int | None = None

    @property
    def instructions_per_mac(self) -> float | None:
        return self.instructions / self.macs if self.macs else None

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "instructions_per_mac": self.instructions_per_mac}


@dataclass(frozen=True)
class Emulator(_Section):
    """Instruction counts from an emulator (QEMU): counts, never times, because an emulator has no clock."""

    name: str | None = None  # e.g. "qemu-system-arm -M mps2-an386"
    samples: int | None = None  # inferences counted
    instructions_per_inference: int | None = None
    macs: int | None = None  # multiply-accumulates per inference
    fp32_instructions_per_inference: int | None = None  # the FP32 model compiled the same way, same emulator
    per_layer: tuple[LayerInstructions, ...] = ()

    @property
    def instructions_per_mac(self) -> float | None:
        if not self.macs or self.instructions_per_inference is None:
            return None
        return self.instructions_per_inference / self.macs

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "instructions_per_mac": self.instructions_per_mac}


@dataclass(frozen=True)
class Board(_Section):
    """Measurements on a real board: over a serial port (its cycle counter), SSH or TVM RPC (its clock)."""

    device: str | None = None  # e.g. "serial:///dev/ttyACM0?baud=115200", "ssh://pi@raspberrypi.local"
    samples: int | None = None
    cycles_per_inference: int | None = None  # mean over the samples, from DWT->CYCCNT
    ms_per_inference: float | None = None  # see `timer`; null if the board did not report its clock
    fp32_ms_per_inference: float | None = None  # the FP32 model compiled for the same target, same board and timer
    timer: str | None = None  # "cycle-counter", "runner-mean" (SSH) or "time-evaluator-median" (TVM RPC)
    timed_runs: int | None = None  # inferences behind ms_per_inference


@dataclass(frozen=True)
class KernelInfo(_Section):
    """One compiled kernel: its name, arithmetic kind ("int8", "float", "data", "lut4") and the ops fused in it;
    for a layer with table-coded (NUPES) weights, their form: "lut4" (packed codes) or "int8 (lut4)" (expanded)."""

    name: str
    kind: str
    ops: tuple[str, ...] = ()
    weights: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if data["weights"] is None:  # only table-coded layers have it
            del data["weights"]
        return data


@dataclass(frozen=True)
class Fallback(_Section):
    """A layer (from compression) or a kernel (from compilation) left in float, and why."""

    reason: str
    layer: str | None = None
    kernel: str | None = None


@dataclass(frozen=True)
class Environment(_Section):
    """Versions and machine the report was made with; `date` is ISO 8601 in UTC."""

    edgebin: str | None = None
    torch: str | None = None
    tvm: str | None = None
    onnxruntime: str | None = None
    python: str | None = None
    cpu: str | None = None
    date: str | None = None

    @classmethod
    def current(cls) -> Environment:
        """This machine and these package versions, now (reads package metadata; imports nothing heavy)."""
        from edgebin import __version__

        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return cls(edgebin=__version__, torch=_dist_version("torch"), tvm=_dist_version("apache-tvm"),
                   onnxruntime=_dist_version("onnxruntime"), python=platform.python_version(),
                   cpu=cpu_name(), date=now)


@dataclass(frozen=True)
class Timings(_Section):
    """Wall time per pipeline stage in seconds."""

    compress: float | None = None
    export: float | None = None  # QAT methods and sparsity: training included
    train: float | None = None
    sparsify: float | None = None  # WGSEF training and shrinking, part of `export`
    compile: float | None = None
    validate: float | None = None


@dataclass(frozen=True)
class Artefacts(_Section):
    """Files in the output directory, as paths relative to it."""

    onnx: str | None = None
    fp32_onnx: str | None = None
    library: str | None = None
    recipe: str | None = None


@dataclass(frozen=True)
class Report(_Section):
    """Everything one run measured; each stage fills in its sections with `dataclasses.replace`.

        report = Report(target=TargetInfo(name="x86"), accuracy=Accuracy(fp32=0.91, compiled=0.90))
        report = dataclasses.replace(report, warnings=(*report.warnings, "calibrated on 64 samples"))
        report.to_dict()["accuracy"]["compiled"]  # 0.9
    """

    model: ModelInfo = field(default_factory=ModelInfo)
    target: TargetInfo = field(default_factory=TargetInfo)
    method: MethodInfo = field(default_factory=MethodInfo)
    dataset: DatasetInfo = field(default_factory=DatasetInfo)
    training: Training = field(default_factory=Training)
    sparsity: Sparsity = field(default_factory=Sparsity)
    accuracy: Accuracy = field(default_factory=Accuracy)
    agreement: Agreement = field(default_factory=Agreement)
    latency: Latency = field(default_factory=Latency)
    emulator: Emulator = field(default_factory=Emulator)
    board: Board = field(default_factory=Board)
    footprint: Footprint = field(default_factory=Footprint)
    kernels: dict[str, int] | None = None  # compiled kernels per arithmetic kind; None before compile
    kernels_detail: tuple[KernelInfo, ...] | None = None
    ops: dict[str, dict[str, int]] | None = None  # op -> {"int8xint8->int32": count, ...}
    fallbacks: tuple[Fallback, ...] = ()
    warnings: tuple[str, ...] = ()
    environment: Environment = field(default_factory=Environment)
    timings_s: Timings = field(default_factory=Timings)
    artefacts: Artefacts = field(default_factory=Artefacts)
    command: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data; a NaN or infinite number becomes null and adds a line to `warnings`."""
        data = {"schema_version": SCHEMA_VERSION, **super().to_dict()}
        bad = list(_non_finite(data, ""))
        if bad:
            notes = [f"{path} was {value}; written as null" for path, value in bad]
            data["warnings"] = [*data["warnings"], *notes]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Report:
        """Build from report.json data; raises ValueError for another schema_version or a mistyped value."""
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            hint = " (upgrade edgebin)" if isinstance(version, int) and version > SCHEMA_VERSION else ""
            raise ValueError(f"schema_version is {version!r}; this edgebin reads {SCHEMA_VERSION}{hint}")
        return _coerce(data, cls, "report")


# --- typed decoding and encoding shared by every record -----------------------------------------------------


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """`value` checked against the annotation `tp` and normalised (lists -> tuples, ints -> floats)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, path)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ValueError(f"{path}: expected an object, got {_shown(value)}")
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _coerce_field(tp, f.name, value[f.name], f"{path}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ValueError(f"{path}.{f.name}: missing")
        return tp(**kwargs)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{path}: expected a list, got {_shown(value)}")
        return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ValueError(f"{path}: expected an object with string keys, got {_shown(value)}")
        return {k: _coerce(v, args[1], f"{path}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)  # numpy scalars are accepted and stored as Python numbers
    if tp is int and isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if tp is str and isinstance(value, (str, os.PathLike)):
        return os.fspath(value)  # a Path given in Python is stored as its string
    if tp is bool and isinstance(value, bool):
        return value
    names = {float: "a number", int: "an integer", str: "a string", bool: "true or false"}
    raise ValueError(f"{path}: expected {names.get(tp, tp)}, got {_shown(value)}")


def _coerce_field(cls: type, name: str, value: Any, path: str) -> Any:
    """`_coerce` for one field of `cls`, plus the [0, 1] range check for fractions."""
    value = _coerce(value, _hints(cls)[name], path)
    if name in _FRACTIONS.get(cls, ()) and value is not None and not 0.0 <= value <= 1.0:
        if not math.isnan(value):
            hint = " (a percentage?)" if 1.0 < value <= 100.0 else ""
            raise ValueError(f"{path}: expected a fraction in [0, 1], got {value}{hint}")
    return value


def _normalise(record: Any, path: str) -> None:
    for f in dataclasses.fields(record):
        value = _coerce_field(type(record), f.name, getattr(record, f.name), f"{path}.{f.name}")
        object.__setattr__(record, f.name, value)


def _encode(value: Any) -> Any:
    if isinstance(value, _Section):
        return value.to_dict()
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _non_finite(data: Any, path: str) -> Iterable[tuple[str, float]]:
    """Yield (path, value) for each NaN/inf in `data` and replace it by None in place."""
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for key, value in list(items):
        sub = f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"
        if isinstance(value, float) and not math.isfinite(value):
            data[key] = None
            yield sub.lstrip("."), value
        elif isinstance(value, (dict, list)):
            yield from _non_finite(value, sub)


_HINTS: dict[type, dict[str, Any]] = {}
_FRACTIONS: dict[type, tuple[str, ...]] = {  # fields checked to lie in [0, 1]
    Accuracy: ("fp32", "compressed", "onnxruntime", "compiled", "compiled_fp32"),
    Agreement: ("top1", "fp32_top1"),
    Sparsity: ("sparsity", "dense_accuracy", "accuracy"),
}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_name() -> str | None:
    """The CPU's model name from /proc/cpuinfo (x86 'model name', Arm boards 'Model'), else the platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or None
