"""ONNX -> a Relax `main` of static allocations and kernel calls, plus the kernels as C: the MCU build order.

    lowered = lower_for_mcu(importer.from_onnx(model, shapes), integer=True)
    lowered.mod["main"]            # alloc_storage / alloc_tensor / calls to PrimFuncs, nothing else (mcu_graph)
    source = build_kernels_c(lowered.mod, ["fused_conv2d_add_..."])   # kernels.c, TVM's C codegen

Between fusion and scheduling, each zero-point pad kernel that feeds an int8 conv is fused into it
(`fuse_pads_into_convs`), so that the MCU schedule's im2col gather does the padding; the schedule then turns int8
convs and matmuls into calls of the C micro-kernels `edgebin_matvec*_s8` (mcu_schedule, mcu_kernels/).
`mcu_schedule.plain_loops()` (or EDGEBIN_MCU_MICRO_KERNELS=0) turns both off: the earlier plain loops.

Integer models use the fixed-point requant (`QdqToInt8(requant="fixed")`): conv, matmul, add and pooling
kernels compute in int8/int32/int64 only, so the bundle runs on cores without an FPU. Float stays in exactly two
places of a QDQ model: the kernel that quantizes the float input (`round(x / s) + z`, a float divide and
`nearbyintf`) and the float multiply that dequantizes the logits in the last kernel (when the ONNX graph ends in
float). The C target lowers `round` to `nearbyintf` (half to even, as onnxruntime), and the fixed requant rounds
as onnxruntime's float32 arithmetic does, in integers (`requant.py`), each output's t = acc * grid + addend bound
once (`requant.let_bound_requant`: one SMLAL on a Cortex-M); the float requant is not used here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from edgebin.compile import binary, host, kernels, lut_weights, requant
from edgebin.compile import tvm_adapter as tvm_api
from edgebin.compile.activation_codes import codes_of
from edgebin.compile.mcu_bitserial import pack_bitserial_weights
from edgebin.compile.mcu_lut import PALETTE, lut_census, pack_lut_weights
from edgebin.compile.mcu_schedule import MICRO_KERNELS, fuse_pads_into_convs, fuse_requant, schedule_for_mcu

log = logging.getLogger(__name__)

relax = tvm_api.relax


@dataclass(frozen=True)
class McuLowered:
    """`main` ready for the C emitter and what each kernel computes."""

    mod: Any
    kernels: list[dict[str, Any]]  # kernels.kernel_census records (name, ops, kind), one per kernel
    ops: dict[str, dict[str, int]]  # conv/matmul operand dtypes (kernels.op_census)
    macs: dict[str, int]  # multiply-accumulates per call, by kernel name
    integer: bool
    lut_layers: list[dict[str, Any]] = field(default_factory=list)  # low-bit weights: packed or int8 (mcu_lut)
    bitserial_layers: list[dict[str, Any]] = field(default_factory=list)  # bit-plane weights (mcu_bitserial)
    # the binary conv kernels: (MACs, weight elements) of each ONNX conv one computes (two: a block's conv + shortcut)
    layer_parts: dict[str, list[tuple[int, int]]] = field(default_factory=dict)


def lower_for_mcu(mod, *, integer: bool, target_spec: dict[str, Any] | None = None,
                  lut_kernels: bool = True, palette: bool | None = None,
                  bitserial: str | None = None) -> McuLowered:
    """Imported Relax -> fused, MCU-scheduled kernels and a `main` of static allocations. The build order.

    `lut_kernels`: table-coded weights go back to packed codes read by the LUT micro-kernels (mcu_lut), where the
    int8 micro-kernel reads them; off, they run as int8 (the Cortex-A C bundle, whose cores lack the kernels).
    `palette` (None: `mcu_lut.PALETTE`, on unless EDGEBIN_PALETTE=0; only with `lut_kernels`): so do the other int8
    weights of at most 16 values (QAT's W4, W2, ternary) where packing saves flash (`mcu_lut.PALETTE_MIN_SAVING`).
    `bitserial` (None: `mcu_bitserial.MODE`, "auto" unless EDGEBIN_BITSERIAL says otherwise): low-bit weights whose
    inputs the export metadata gives few bits run as bit planes (mcu_bitserial), before the LUT packing."""
    target = tvm_api.make_target(target_spec or {"kind": "c"})
    tables = lut_weights.tables_of(mod)  # the importer's table-coded weights, folded to int8 until mcu_lut
    codes = codes_of(mod)  # the QAT layers' input code ranges, from the export metadata
    with target:
        # QdqToInt8(fixed) -> legalize -> fuse, exactly as for the host, minus the host loop schedule.
        with requant.let_bound_requant():  # one SMLAL per output in the requant epilogues
            lowered = host.lower(mod, integer=integer, requant="fixed", schedule=False)
        mod, census = lowered.mod, lowered.kernels
        if MICRO_KERNELS.get():
            mod, census = fuse_pads_into_convs(mod, census)  # the conv's im2col gather pads: no pad kernels
        macs = {gvar.name_hint: kernel_macs(func) for gvar, func in mod.functions.items()
                if isinstance(func, tvm_api.tirx.PrimFunc)}  # before scheduling splits the reduction blocks
        parts = {gvar.name_hint: [part for name in kernels.extern_calls(func) for part in binary.binary_parts(name)]
                 for gvar, func in mod.functions.items() if isinstance(func, tvm_api.tirx.PrimFunc)}
        mod = schedule_for_mcu(mod)  # int8 conv/matmul -> micro-kernel calls; the rest plain loops; no workspaces
        lut_layers = lowered.lut_layers  # int8, as host.lower notes them
        mod, bitserial_layers = pack_bitserial_weights(mod, codes, bitserial)  # before mcu_lut claims the weights
        census = lut_census(census, [r for r in bitserial_layers if r["form"] != "int8"])
        if lut_kernels:  # low-bit weights as packed codes read by the LUT micro-kernels
            mod, lut_layers = pack_lut_weights(mod, tables, palette=PALETTE.get() if palette is None else palette)
            census = lut_census(census, lut_layers)
        if MICRO_KERNELS.get():
            mod = fuse_requant(mod)  # after mcu_lut: the int8 calls it left requantize their own sums
        mod = tvm_api.tvm.transform.Sequential([
            relax.transform.RewriteDataflowReshape(),  # reshape kernels -> R.reshape views (no copy)
            relax.transform.ToNonDataflow(),  # one flat binding list for the emitter
            relax.transform.RemovePurityChecking(),  # the passes below need impure-allowed functions
            relax.transform.CallTIRRewrite(),  # call_tir -> explicit alloc_tensor + destination-passing call
            relax.transform.StaticPlanBlockMemory(),  # static shapes and dtypes for every tensor
            relax.transform.AttachGlobalSymbol(),  # tirx.build needs a global_symbol on each PrimFunc
        ], name="edgebin.mcu")(mod)
    return McuLowered(mod=mod, kernels=census, ops=lowered.ops, macs=macs, integer=integer, lut_layers=lut_layers,
                      bitserial_layers=bitserial_layers,
                      layer_parts={name: found for name, found in parts.items() if found})


def kernel_macs(func) -> int:
    """Multiply-accumulates of one call: the iteration-space size of every reduction block that multiplies, or,
    for a packed binary conv (a C kernel call), its binary MACs."""
    total = sum(binary.binary_macs(name) for name in kernels.extern_calls(func))
    for block in tvm_api.collect(func.body, tvm_api.s_tir.SBlock):
        if block.init is None:
            continue
        stores = tvm_api.collect(block.body, tvm_api.tirx.BufferStore)
        if not any(_multiplies(store.value) for store in stores):
            continue  # a sum or a max: no multiply of values
        size = 1
        for iv in block.iter_vars:
            size *= int(iv.dom.extent)
        total += size
    return total


def _multiplies(expr) -> bool:
    """True when `expr` multiplies loaded values (a MAC), not counting the index arithmetic inside loads."""
    if isinstance(expr, tvm_api.TensorLoad):
        return False
    if isinstance(expr, tvm_api.tirx.Mul):
        return True
    children = [getattr(expr, name, None) for name in ("a", "b", "value", "true_value", "false_value")]
    children += list(getattr(expr, "args", None) or [])
    return any(_multiplies(child) for child in children if child is not None)


def build_kernels_c(mod, names: list[str], target_spec: dict[str, Any] | None = None) -> str:
    """C source of the PrimFuncs `names` (those `main` calls), from TVM's C codegen, with asserts off."""
    kernels = {gvar: func for gvar, func in mod.functions.items() if gvar.name_hint in set(names)}
    missing = set(names) - {gvar.name_hint for gvar in kernels}
    assert not missing, f"main calls kernels the module lacks: {sorted(missing)}"
    return tvm_api.build_c_source(tvm_api.tvm.IRModule(kernels), target_spec or {"kind": "c"})


__all__ = ["McuLowered", "build_kernels_c", "fuse_pads_into_convs", "kernel_macs", "lower_for_mcu"]
