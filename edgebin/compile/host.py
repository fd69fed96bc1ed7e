"""Compile an ONNX model for this machine (x86 LLVM), save it, load it back, run it and time it.

    artefact = compile_onnx(Path("out/model.onnx"), {"kind": "llvm", "mcpu": "native", "num-cores": 1}, Path("out"))
    artefact.kernel_counts()          # {"int8": 9, "float": 0, "convert": 1, "data": 2}
    logits = artefact.run(x)          # (N, ...) float32 in, (N, classes) out, one sample at a time
    artefact = load_artefact(Path("out"))   # later, from out/model.so + out/artefact.json

Integer models: each int8 conv and matmul kernel calls a C micro-kernel for its multiply-accumulates, from
cpu_kernels/edgebin_cpu_kernels.c (AVX-512 VNNI, else plain C that gcc vectorizes), compiled for the target and
linked into model.so (`export_executable`): the schedule of `mcu_schedule` with whole rows of output pixels per call
(`row_calls`): a stride-1 conv's `edgebin_matvecc_*` reads its padded input where it lies (no im2col), other convs
gather a k-major im2col row for `edgebin_matvect_*`, gemms keep `edgebin_matvec_*`. The requant epilogue stays in
TIR, per row and vectorized; the sums are exact, so outputs are those of the plain loops bit for bit. Every other
kernel keeps `schedule_cpu_loops`' loop order. ResNet-8: 0.18 -> 0.10 ms (docs/host-int8.md).

Low-bit weights stay packed in the library (`pack_low_bit_weights`, mcu_lut's pass as on Cortex-M): a table-coded
(NUPES) weight of 2 to 4 bits, and an int8 weight of at most 16 values (a palette: QAT's W4, W2, ternary) wherever
that is smaller, whose kernel calls an int8 micro-kernel become b-bit codes and a table, which the kernel decodes
into its int8 weight once at its start (`edgebin_lut{b}_decode`, cpu_kernels/edgebin_cpu_lut.c) for the int8 calls:
the same sums. ResNet-8 NUPES W4: weights 79,840 -> 41,502 bytes, 2 % slower (docs/lut-weights.md). artefact.json's
`lut_weights` says which are packed ("form": "lut4") and why others are not ("int8" and the reason). The Cortex-A
TVM build (`lower_and_build`) does the same. EDGEBIN_HOST_LUT=0 keeps them all int8, EDGEBIN_PALETTE=0 the palettes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgebin.atomic import atomic_write_text
from edgebin.compile import binary, importer, kernels, lut_weights, mcu_lut, mcu_schedule
from edgebin.compile import tvm_adapter as tvm_api
from edgebin.compile.batch_norm import BatchNormAsAffine
from edgebin.compile.qdq_to_int import REQUANT_MODES, QdqToInt8, is_quantized
from edgebin.compile.tune import TuneConfig, TuneSummary, tune_kernels
from edgebin.errors import InputShapeError, ModelLoadError, ToolchainMissingError, UsageError

log = logging.getLogger(__name__)

LIBRARY = "model.so"
MANIFEST = "artefact.json"
FORMAT = "edgebin.host/1"
KERNELS_C = Path(__file__).parent / "cpu_kernels" / "edgebin_cpu_kernels.c"  # includes ../mcu_kernels/*.h
KERNELS_CFLAGS = ("-O3", "-fPIC", "-std=gnu11")
COMPILE_TIMEOUT_S = 120
# int8 convs call their micro-kernel once per row of output pixels (edgebin_matvecc_* on the input as it lies for
# stride-1 convs, edgebin_matvect_* on a k-major im2col row otherwise), not per 4, 2 or 1 pixels as on Cortex-M;
# EDGEBIN_HOST_ROW_CALLS=0 for the Cortex-M grouping (a baseline to compare with).
HOST_ROW_CALLS = os.environ.get("EDGEBIN_HOST_ROW_CALLS", "1") != "0"

# Low-bit weights (table-coded, and palettes of at most 16 values) kept as b-bit codes, decoded by their kernel;
# EDGEBIN_HOST_LUT=0 for int8 weights everywhere (the earlier build, a baseline to compare with).
HOST_LUT = os.environ.get("EDGEBIN_HOST_LUT", "1") != "0"
# The decode is one C function for every layer, not LUT loops inlined into each kernel as on Cortex-M, so a packed
# palette adds no code: it is packed whenever its codes and table take fewer bytes than the int8 weight.
HOST_PALETTE_MIN_SAVING = 1
# Why a table-coded weight is int8 when no LUT pass ran: the kernels keep TVM's loops (`lower(schedule=False)`,
# before tuning or after a schedule TVM could not build), or a C bundle without LUT kernels (the Cortex-A C runtime).
LUT_INT8_REASON = "built without the LUT micro-kernels (TVM's loops, or the Cortex-A C runtime)"
HOST_LUT_OFF_REASON = "EDGEBIN_HOST_LUT=0: low-bit weights as int8"

relax = tvm_api.relax


@dataclass(frozen=True)
class Lowered:
    """A Relax module lowered to fused TIR kernels (ready for tvm.compile) and what it computes."""

    mod: Any
    ops: dict[str, dict[str, int]]  # kernels.op_census, read before legalization
    kernels: list[dict[str, Any]]  # kernels.kernel_census
    weights_bytes: int
    macs: dict[str, int] = field(default_factory=dict)  # multiply-accumulates per call, by kernel, before scheduling
    lut_layers: list[dict[str, Any]] = field(default_factory=list)  # low-bit weights: packed or int8 (mcu_lut)


def lower(mod, *, integer: bool, requant: str = "float", schedule: bool = True) -> Lowered:
    """Import-level Relax -> fused TIR kernels; call inside `with target:`. The build order, step by step."""
    tables = lut_weights.tables_of(mod)  # table-coded weights the importer folded to int8, packed again below
    if integer:
        software_popcount = tvm_api.tvm.target.Target.current().kind.name == "c"  # the MCU bundle's C target
        mod = binary.BinaryToPacked(dense=software_popcount)(mod)  # W1A1 convs -> XNOR/popcount on packed bits;
        mod = QdqToInt8(requant)(mod)  # before any fold. Q/DQ -> int8 ops, int32 accumulators; needs DQ(int8 weights)
    ops = kernels.op_census(mod)  # conv/matmul operand dtypes, before legalization hides the ops
    mod = tvm_api.tvm.transform.Sequential([
        relax.transform.DeadCodeElimination(),  # drop the float subgraphs the rewrite orphaned
        BatchNormAsAffine(),  # a BatchNorm the rewrites left (W1A1's stem): x * s + t, onnxruntime's arithmetic
        relax.transform.DecomposeOpsForInference(),  # any other batch_norm & co. into arithmetic
        relax.transform.CanonicalizeBindings(),  # its (y, mean, var)[0] -> y: a tuple stops FuseOps at the BatchNorm
        relax.transform.LegalizeOps(),  # Relax ops -> TIR PrimFuncs
        relax.transform.AnnotateTIROpPattern(),  # op patterns FuseOps needs
        relax.transform.FoldConstant(),  # weight-side arithmetic left by the import (transposes, reshapes)
        relax.transform.FuseOps(),  # each conv/matmul with its elementwise epilogue (bias, requant)
    ], name="edgebin.lower")(mod)
    ops_by_kernel = kernels.fused_ops(mod)  # FuseTIR keeps kernel names but forgets their ops
    mod = tvm_api.tvm.transform.Sequential([
        relax.transform.FuseTIR(),  # one PrimFunc per fused group
        relax.transform.DeadCodeElimination(),  # drop the per-op PrimFuncs FuseTIR replaced
    ], name="edgebin.fuse")(mod)
    census = kernels.kernel_census(mod, ops_by_kernel)
    # Pads are not fused into the convs' im2col gathers here (mcu_lower does, to save RAM), and a conv's own pad
    # stays a loop nest (schedule_cpu_loops' keep_pads): a gather from a padded tensor tests no bounds per byte.
    # Measured on ResNet-8: 0.32 -> 0.22 ms (int8 activations), 0.27 -> 0.18 ms (uint8).
    macs = _kernel_macs(mod)  # before the micro-kernel calls hide the MAC blocks
    if schedule:
        mod = schedule_cpu_loops(mod)  # int8 MACs -> micro-kernel calls, the rest an untuned loop order; same results
        mod, census, lut_layers = pack_low_bit_weights(mod, census, tables)  # int8 weights -> codes where they fit
    else:
        census, lut_layers = lut_weights.expanded_layers(mod, census, tables, LUT_INT8_REASON) if tables else (
            census, [])
    return Lowered(mod, ops, census, _constant_bytes(mod), macs, lut_layers)


def pack_low_bit_weights(mod, census: list[dict[str, Any]],
                         tables: list[lut_weights.LutTable]) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    """(`mod`, census, lut records) with the low-bit weights that the host's micro-kernel calls read packed as codes
    into a table (mcu_lut.pack_lut_weights on the host schedule, `decode`: 2- to 4-bit codes, every palette that
    shrinks), the census marking their kernels "lutB"; with HOST_LUT off, all int8 (table-coded ones recorded so)."""
    if not HOST_LUT:
        return (mod, *lut_weights.expanded_layers(mod, census, tables, HOST_LUT_OFF_REASON)) if tables else (
            mod, census, [])
    mod, records = mcu_lut.pack_lut_weights(mod, tables, palette=mcu_lut.PALETTE.get(),
                                            min_saving=HOST_PALETTE_MIN_SAVING, bits=mcu_lut.HOST_BITS, decode=True)
    return mod, mcu_lut.lut_census(census, records), records


def tune_lowered(lowered: Lowered, target, tune: TuneConfig, *, progress: Any = None) -> tuple[Lowered, TuneSummary]:
    """Kernels of `lowered` (from `lower(..., schedule=False)`, inside `with target`) with schedules from the
    tuning database, tuned first up to `tune.trials`; the kernels it has none for get `schedule_cpu_loops`."""
    tuned_mod, summary = tune_kernels(lowered.mod, target, tune, progress=progress)
    mod, census, lut_layers = pack_low_bit_weights(schedule_cpu_loops(tuned_mod), lowered.kernels,
                                                   lut_weights.tables_of(lowered.mod))
    return replace(lowered, mod=mod, kernels=census, weights_bytes=_constant_bytes(mod), lut_layers=lut_layers), summary


def schedule_cpu_loops(mod):
    """Give every kernel a better untuned CPU loop order than TVM's default loop nest.

    An int8 conv or matmul (an int8 x int8 -> int32 MAC block with a constant weight) gets the micro-kernel
    schedule of `mcu_schedule` with `row_calls` (one `edgebin_matvec*` call per row of output pixels, the epilogue
    after it, vectorized along the row; its constants in `main` re-laid out where it asks), unless
    `mcu_schedule.plain_loops()` is on. Any other
    kernel: fold the elementwise epilogue (bias, ReLU, requant) into one block computed per output row, and (see
    `_worth_reordering`) move the innermost output axis, contiguous in memory, inside the reduction loops, where
    LLVM vectorizes it. Kernels the schedule cannot handle keep their default loops. No tuning: MetaSchedule
    does better on the float kernels, at minutes per model; tuned kernels are left as they are.
    """
    _vectorizable_nearbyint()
    return mcu_schedule.schedule_module(mod, _schedule_or_keep, skip=_tuned, keep_pads=True,
                                        row_calls=HOST_ROW_CALLS)


def _vectorizable_nearbyint() -> None:
    """Let TVM vectorize `nearbyint` (the requant's rounding) like `round`: LLVM has it for vectors, and TVM's op
    lacks the TVectorizable flag, so a vectorized requant epilogue came out scalar and LLVM vectorized it across
    channels with scatters instead. Same instruction per lane (vroundps), so the same results."""
    op = tvm_api.tvm.ir.Op.get("tirx.nearbyint")
    if op.get_attr("TVectorizable") is None:
        tvm_api.tvm.ir.register_op_attr("tirx.nearbyint", "TVectorizable", True)


SUM_GROUP = 4  # outputs of a global pool summed side by side (`_interleave_sums`)


def _schedule_or_keep(func):
    try:
        return _schedule_kernel(func)
    except tvm_api.s_tir.ScheduleError as err:
        log.debug("default loops kept: %s", str(err).splitlines()[0])
        return func


def _schedule_kernel(func):
    sch = tvm_api.s_tir.Schedule(func)
    root = sch.get_sblock("root")
    inlined = True
    while inlined:  # epilogue chain -> one block (pads stay: inlining them puts a branch in the MAC loop)
        inlined = False
        for block in sch.get_child_blocks(root):
            if sch.get(block).init is None:
                with contextlib.suppress(tvm_api.s_tir.ScheduleError):
                    sch.reverse_compute_inline(block)
                    inlined = True
                    break
    for block in sch.get_child_blocks(root):
        node = sch.get(block)
        loops = sch.get_loops(block)
        if node.init is None or len(loops) != len(node.iter_vars):
            continue
        kinds = [int(iv.iter_type) for iv in node.iter_vars]  # 0 spatial, 2 reduction
        spatial = [loop for loop, kind in zip(loops, kinds, strict=True) if kind == 0]
        reduction = [loop for loop, kind in zip(loops, kinds, strict=True) if kind == 2]
        if not reduction or len(spatial) < 2 or len(spatial) + len(reduction) != len(loops):
            continue
        if int(sch.get(spatial[-1]).extent) == 1:  # a reduction into unit axes (keepdims): a global pool
            _interleave_sums(sch, block, spatial, reduction)
            continue
        if _worth_reordering(sch, spatial, reduction, integer=_is_integer_kernel(func)):
            sch.reorder(*spatial[:-1], *reduction, spatial[-1])
            sch.decompose_reduction(block, reduction[0])
        for consumer in sch.get_consumers(block):
            with contextlib.suppress(tvm_api.s_tir.ScheduleError):
                sch.reverse_compute_at(consumer, spatial[-2])
    return sch.mod["main"]


@dataclass
class HostArtefact:
    """A model compiled for this machine: `model.so` (Relax VM executable) and `artefact.json` in `directory`.

    >>> artefact = load_artefact(Path("out"))
    >>> artefact.run(np.zeros((4, *artefact.input_shape[1:]), np.float32)).shape
    (4, 10)
    """

    directory: Path
    input_name: str
    input_shape: tuple[int, ...]
    input_dtype: str
    output_shape: tuple[int, ...]
    kernels: list[dict[str, Any]]
    ops: dict[str, dict[str, int]] = field(default_factory=dict)
    constants_bytes: int = 0
    integer: bool = False
    requant: str | None = None
    target: dict[str, Any] = field(default_factory=dict)
    tuning: dict[str, Any] = field(default_factory=dict)  # tune.TuneSummary.to_dict(); empty when untuned
    lut_layers: list[dict[str, Any]] = field(default_factory=list)  # low-bit weights: packed ("lut4") or int8
    _per_thread: threading.local = field(default_factory=threading.local, init=False, repr=False, compare=False)

    def kernel_counts(self) -> dict[str, int]:
        """Kernels per arithmetic kind: {"int8": 9, "float": 0, "convert": 1, "data": 2}."""
        return kernels.kind_counts(self.kernels)

    def op_counts(self) -> dict[str, dict[str, int]]:
        """Convs and matmuls by operand dtypes: {"conv2d": {"int8xint8->int32": 3}, "matmul": {...}}."""
        return self.ops

    def weights_bytes(self) -> int:
        """Bytes of the constants embedded in the library (int8 weights count 1 byte each)."""
        return self.constants_bytes

    def run(self, x: np.ndarray) -> np.ndarray:
        """Outputs for a batch `x` of shape (N, *input_shape[1:]), run one sample at a time (static batch 1)."""
        x = np.asarray(x, dtype=self.input_dtype)
        if x.shape[1:] != self.input_shape[1:]:
            raise InputShapeError(
                f"{self.directory}: input shape {x.shape} does not fit the model's {self.input_shape} (batch first)"
            )
        main, staging, tensor = self._entry()
        outputs = []
        for i in range(x.shape[0]):
            np.copyto(staging, x[i : i + 1])
            outputs.append(tvm_api.to_numpy(main(tensor)))
        out = outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=0)
        return out.astype(np.float32, copy=False)

    def latency_s(self, x1: np.ndarray, *, warmup: int = 5, repeat: int = 50) -> list[float]:
        """Seconds per inference of one sample `x1` (shape input_shape), one thread, `repeat` runs."""
        x1 = np.asarray(x1, dtype=self.input_dtype).reshape(self.input_shape)
        set_threads(1)
        return tvm_api.time_function(self._load(), "main", [tvm_api.to_tensor(x1)], warmup=warmup, repeat=repeat)

    def _load(self) -> Any:
        """This thread's VM (a Relax VM called from two threads at once crashes), loaded on first use."""
        local = self._per_thread
        if getattr(local, "vm", None) is None:
            local.vm = tvm_api.load_vm(self.directory / LIBRARY)
        return local.vm

    def _entry(self) -> tuple[Any, np.ndarray, Any]:
        """(this thread's VM's main, its input array, the tensor sharing that array's memory): `run` copies each
        sample in, where a fresh tensor a call cost more than the copy (tvm_adapter.to_tensor)."""
        local = self._per_thread
        if getattr(local, "tensor", None) is None:
            local.main = self._load()["main"]
            local.array, local.tensor = tvm_api.staging_tensor(self.input_shape, self.input_dtype)
        return local.main, local.array, local.tensor

    def manifest(self) -> dict[str, Any]:
        """What `artefact.json` holds (stable keys)."""
        return {
            "format": FORMAT,
            "library": LIBRARY,
            "input": {"name": self.input_name, "shape": list(self.input_shape), "dtype": self.input_dtype},
            "output_shape": list(self.output_shape),
            "integer": self.integer,
            "requant": self.requant,
            "target": self.target,
            "tuning": self.tuning,
            "weights_bytes": self.constants_bytes,
            "kernel_counts": self.kernel_counts(),
            "ops": self.ops,
            "kernels": self.kernels,
            **({"lut_weights": self.lut_layers} if self.lut_layers else {}),
        }


def lower_and_build(model, shapes, target, *, integer: bool, requant: str, tune: TuneConfig | None = None,
                    progress: Any = None, mod=None):
    """(lowered, executable, tuning record) of an imported ONNX `model` for an LLVM `target` (host or Arm).

    Lowers in the host's order (`lower`), tunes first when `tune` is given, and builds; if edgebin's CPU loop
    schedule gives a kernel TVM cannot build, lowers again with TVM's default loops (and the tuning database's
    schedules, without new trials) and builds that. `mod` is `model` already imported, when the caller has it.
    """
    mod = importer.from_onnx(model, shapes) if mod is None else mod
    with target:
        lowered = lower(mod, integer=integer, requant=requant, schedule=tune is None)
    tuning = None
    if tune is not None:
        lowered, tuning = tune_lowered(lowered, target, tune, progress=progress)
    try:
        return lowered, tvm_api.build(lowered.mod, target), tuning
    except Exception as err:  # TVM raises its own error types; a bad loop schedule is the known cause
        log.warning("the CPU loop schedule produced a kernel TVM cannot build (%s); using TVM's default loops",
                    str(err).strip().splitlines()[-1][:200])
    with target:
        lowered = lower(importer.from_onnx(model, shapes), integer=integer, requant=requant, schedule=False)
    if tune is not None:  # the database again (no new trials): only the untuned kernels lose their loop order
        lowered = replace(lowered, mod=tune_kernels(lowered.mod, target, tune)[0])
    return lowered, tvm_api.build(lowered.mod, target), tuning


def compile_onnx(
    onnx_path: Path,
    target_tvm: dict[str, Any] | Any,
    out_dir: Path,
    *,
    integer: bool = True,
    requant: str = "float",
    tune: TuneConfig | None = None,
    progress: Any = None,
) -> HostArtefact:
    """Compile an ONNX file for the host into `out_dir` (model.so + artefact.json).

    With `integer` (the default) a QDQ model runs in int8 (QdqToInt8); a float model, or `integer=False`,
    compiles as it is: the "TVM FP32" baseline, or TVM's own float fake-quant for a QDQ model.
    `target_tvm` is a target record's `tvm` dict (or the record itself), e.g. {"kind": "llvm", "mcpu": "native"}.
    With `tune`, MetaSchedule tunes the kernels first (`edgebin.compile.tune`; the trials its database lacks) and
    the kernels it has schedules for use them; `progress` (a `pipeline.Progress`) then shows the tuning bar.
    """
    if requant not in REQUANT_MODES:
        raise UsageError(f"unknown requant mode {requant!r}; valid: {', '.join(REQUANT_MODES)}")
    target_spec = dict(getattr(target_tvm, "tvm", target_tvm))
    model = importer.load_onnx(Path(onnx_path))
    shapes = importer.input_shapes(model)
    if len(shapes) != 1:
        raise InputShapeError(f"{onnx_path}: the host artefact takes one input, the model has {list(shapes)}")
    (input_name, input_shape), = shapes.items()
    mod = importer.from_onnx(model, shapes)
    quantized = is_quantized(mod)
    if integer and not quantized:
        log.info("%s has no QuantizeLinear/DequantizeLinear; compiling it in float", onnx_path)
    lowered, executable, tuning = lower_and_build(model, shapes, tvm_api.make_target(target_spec),
                                                  integer=integer and quantized, requant=requant, tune=tune,
                                                  progress=progress, mod=mod)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    artefact = HostArtefact(
        directory=out_dir,
        input_name=input_name,
        input_shape=tuple(input_shape),
        input_dtype=_input_dtype(model, input_name),
        output_shape=_output_shape(lowered.mod),
        kernels=lowered.kernels,
        ops=lowered.ops,
        constants_bytes=lowered.weights_bytes,
        integer=integer and quantized,
        requant=requant if integer and quantized else None,
        target=target_spec,
        tuning=tuning.to_dict() if tuning is not None else {},
        lut_layers=lowered.lut_layers,
    )
    _export_atomic(executable, out_dir / LIBRARY, tvm_api.make_target(target_spec), lowered.mod)
    atomic_write_text(out_dir / MANIFEST, json.dumps(artefact.manifest(), indent=1) + "\n")
    log.info("compiled %s -> %s: kernels %s", onnx_path, out_dir, artefact.kernel_counts())
    return artefact


def load_artefact(directory: Path) -> HostArtefact:
    """Reload a compiled artefact from `directory` (artefact.json + model.so)."""
    directory = Path(directory)
    manifest_path, library = directory / MANIFEST, directory / LIBRARY
    if not manifest_path.is_file() or not library.is_file():
        raise ModelLoadError(
            f"{directory}: no compiled host artefact ({MANIFEST} and {LIBRARY}); run `edgebin compile`"
        )
    try:
        data = json.loads(manifest_path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT!r}")
        return HostArtefact(
            directory=directory,
            input_name=data["input"]["name"],
            input_shape=tuple(data["input"]["shape"]),
            input_dtype=data["input"]["dtype"],
            output_shape=tuple(data["output_shape"]),
            kernels=data["kernels"],
            ops=data["ops"],
            constants_bytes=int(data["weights_bytes"]),
            integer=bool(data["integer"]),
            requant=data["requant"],
            target=data["target"],
            tuning=data.get("tuning") or {},
            lut_layers=data.get("lut_weights") or [],
        )
    except (ValueError, KeyError, TypeError) as err:
        raise ModelLoadError(f"{manifest_path} is damaged ({err}); compile again") from None


def set_threads(n: int) -> None:
    """Use `n` CPU threads in the TVM runtime (1 for latency measurements)."""
    if n < 1:
        raise UsageError(f"thread count must be >= 1, got {n}")
    tvm_api.set_num_threads(n)


def _worth_reordering(sch, spatial, reduction, *, integer: bool) -> bool:
    """Reduction outside the innermost output axis: always for float; for int8 only with a long reduction and
    row, where measured faster (int8 3x3 convs with one input channel or 7-wide rows ran slower reordered)."""
    if not integer:
        return True
    extent = 1
    for loop in reduction:
        extent *= int(sch.get(loop).extent)
    return extent >= 32 and int(sch.get(spatial[-1]).extent) >= 8


def _interleave_sums(sch, block, spatial: list, reduction: list) -> None:
    """Outputs of a reduction over the trailing axes (a global average pool) in groups of SUM_GROUP, their sums
    interleaved and unrolled: each output's sum is otherwise one chain of dependent adds. Every output keeps its own
    order of additions, so the results are bit-identical. Measured on ResNet-8's 64x7x7 float pool (a throwaway
    script timing the kernel alone): 2.1 -> 0.76 us a call; with the channel loop innermost LLVM gathered across
    channels (1.7 us), and groups of 8 or 16 came out at 0.85 and 0.95 us."""
    wide = [loop for loop in spatial if int(sch.get(loop).extent) > 1]
    extent = int(sch.get(wide[-1]).extent) if wide else 1
    group = SUM_GROUP if extent % SUM_GROUP == 0 else 2 if extent % 2 == 0 else 1
    if group == 1:
        return
    outer, inner = sch.split(wide[-1], [None, group])
    sch.reorder(outer, *reduction, inner)
    sch.decompose_reduction(block, reduction[0])
    sch.unroll(inner)
    for consumer in sch.get_consumers(block):
        with contextlib.suppress(tvm_api.s_tir.ScheduleError):
            sch.reverse_compute_at(consumer, outer)


def _tuned(func) -> bool:
    """A kernel MetaSchedule's database scheduled (MetaScheduleApplyDatabase marks it)."""
    return bool(func.attrs is not None and func.attrs.get("tirx.is_scheduled", False))


def _is_integer_kernel(func) -> bool:
    return str(func.params[0].dtype).startswith(("int", "uint"))


def _export_atomic(executable, path: Path, target, mod) -> None:
    """export_executable to a temporary name beside `path`, then rename: never a half-written library."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        export_executable(executable, Path(tmp), target, mod)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _constant_bytes(mod) -> int:
    """Bytes of the distinct constants `main` passes to its kernels."""
    seen: dict[Any, int] = {}
    for const in tvm_api.collect(mod["main"].body, tvm_api.GenericConst):
        seen.setdefault(const, tvm_api.const_array(const).nbytes)  # keyed by object: one tensor per constant
    return sum(seen.values())


def _output_shape(mod) -> tuple[int, ...]:
    shape = tvm_api.tensor_shape(mod["main"].body.body) or tvm_api.tensor_shape(mod["main"].body)
    if shape is None:
        raise InputShapeError("the model's output shape is not static; export with static shapes")
    return shape


def _input_dtype(model, name: str) -> str:
    import onnx

    for value in model.graph.input:
        if value.name == name:
            return str(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
    return "float32"


# --- the micro-kernels in the library ------------------------------------------------------------------------


def uses_micro_kernels(mod) -> bool:
    """True when a kernel of `mod` calls an `edgebin_matvec*` micro-kernel (then the library must link them; a
    kernel that decodes packed weights, `edgebin_lut{b}_decode`, calls one too)."""
    return any(isinstance(func, tvm_api.tirx.PrimFunc) and any(
        mcu_schedule.is_matvec_call(call) for call in tvm_api.collect(func.body, tvm_api.IRCall))
        for func in mod.functions.values())


def export_executable(executable, path: Path, target, mod, *, compiler: str | None = None,
                      options: Sequence[str] = ()) -> None:
    """Link `executable` into a shared library at `path`, with the C kernels that `mod`'s kernels call: the int8
    micro-kernels (`uses_micro_kernels`) and the shape-specialized binary kernels (`binary.c_source`).

    `compiler`: a cross compiler's g++ (`aarch64-linux-gnu-g++`, with link `options`), or None for this machine
    (TVM's default linker; the kernels with `cc`). The kernels are compiled for `target`'s CPU (`kernel_cflags`).
    """
    with tempfile.TemporaryDirectory(prefix="edgebin-kernels-") as tmp:
        addons = [compile_kernels(target, Path(tmp), compiler)] if uses_micro_kernels(mod) else []
        names = binary.binary_kernel_names(mod)
        if names:
            source = Path(tmp) / "edgebin_binary_kernels.c"
            source.write_text(binary.c_source(names))
            addons.append(compile_c(source, target, Path(tmp), compiler, includes=[binary.KERNEL_DIR]))
        if compiler is None:
            tvm_api.export_library(executable, path, addons=addons)
        else:
            tvm_api.export_library_cross(executable, path, compiler, options, addons=addons)


def compile_kernels(target, directory: Path, compiler: str | None = None) -> Path:
    """cpu_kernels/edgebin_cpu_kernels.c compiled for `target` into `directory`: the object file's path."""
    return compile_c(KERNELS_C, target, directory, compiler)


def compile_c(source: Path, target, directory: Path, compiler: str | None = None, *,
              includes: Sequence[Path] = ()) -> Path:
    """One C file compiled for `target` into `directory` (an object beside the others): the object's path.

    `compiler` is a C or C++ driver (`-x c` makes g++ compile C), default `cc`; errors become
    ToolchainMissingError naming the command."""
    compiler = compiler or os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise ToolchainMissingError(f"no C compiler {compiler!r} to build edgebin's C kernels; install gcc "
                                    f"(or set CC)")
    obj = directory / f"{source.stem}.o"
    command = [compiler, "-x", "c", *KERNELS_CFLAGS, *kernel_cflags(target), *(f"-I{d}" for d in includes), "-c",
               str(source), "-o", str(obj)]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ToolchainMissingError(f"{' '.join(command)} took over {COMPILE_TIMEOUT_S} s") from None
    except subprocess.CalledProcessError as err:
        message = (err.stderr or err.stdout or "").strip()[-800:]
        raise ToolchainMissingError(f"{' '.join(command)} failed: {message}") from None
    return obj


def kernel_cflags(target) -> list[str]:
    """The compiler flags that match an LLVM `target`'s CPU: `-march=native` for this machine's CPU (gcc may
    not know LLVM's newest names, "znver4" in gcc 12), `-march=<mcpu>` for another x86, `-mcpu=<mcpu>` for Arm."""
    mcpu = str(target.attrs.get("mcpu", "") or "")
    triple = str(target.attrs.get("mtriple", "") or "")
    if not mcpu:
        return []
    if triple.startswith(("aarch64", "arm")):
        return [f"-mcpu={mcpu}"]
    return ["-march=native"] if mcpu == tvm_api.host_cpu() else [f"-march={mcpu}"]


def _kernel_macs(mod) -> dict[str, int]:
    """Multiply-accumulates per call of each PrimFunc (mcu_lower.kernel_macs), read before scheduling."""
    from edgebin.compile.mcu_lower import kernel_macs  # mcu_lower imports this module

    return {gvar.name_hint: kernel_macs(func) for gvar, func in mod.functions.items()
            if isinstance(func, tvm_api.tirx.PrimFunc)}
