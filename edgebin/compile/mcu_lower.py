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
from dataclasses import dataclass
from typing import Any

from edgebin.compile import host, kernels, requant
from edgebin.compile import tvm_adapter as tvm_api
from edgebin.compile.mcu_schedule import MICRO_KERNELS, constant_arguments, schedule_for_mcu, uses_micro_kernel

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


def lower_for_mcu(mod, *, integer: bool, target_spec: dict[str, Any] | None = None) -> McuLowered:
    """Imported Relax -> fused, MCU-scheduled kernels and a `main` of static allocations. The build order."""
    target = tvm_api.make_target(target_spec or {"kind": "c"})
    with target:
        # QdqToInt8(fixed) -> legalize -> fuse, exactly as for the host, minus the host loop schedule.
        with requant.let_bound_requant():  # one SMLAL per output in the requant epilogues
            lowered = host.lower(mod, integer=integer, requant="fixed", schedule=False)
        mod, census = lowered.mod, lowered.kernels
        if MICRO_KERNELS.get():
            mod, census = fuse_pads_into_convs(mod, census)  # the conv's im2col gather pads: no pad kernels
        macs = {gvar.name_hint: kernel_macs(func) for gvar, func in mod.functions.items()
                if isinstance(func, tvm_api.tirx.PrimFunc)}  # before scheduling splits the reduction blocks
        mod = schedule_for_mcu(mod)  # int8 conv/matmul -> micro-kernel calls; the rest plain loops; no workspaces
        mod = tvm_api.tvm.transform.Sequential([
            relax.transform.RewriteDataflowReshape(),  # reshape kernels -> R.reshape views (no copy)
            relax.transform.ToNonDataflow(),  # one flat binding list for the emitter
            relax.transform.RemovePurityChecking(),  # the passes below need impure-allowed functions
            relax.transform.CallTIRRewrite(),  # call_tir -> explicit alloc_tensor + destination-passing call
            relax.transform.StaticPlanBlockMemory(),  # static shapes and dtypes for every tensor
            relax.transform.AttachGlobalSymbol(),  # tirx.build needs a global_symbol on each PrimFunc
        ], name="edgebin.mcu")(mod)
    return McuLowered(mod=mod, kernels=census, ops=lowered.ops, macs=macs, integer=integer)


def fuse_pads_into_convs(mod, census: list[dict[str, Any]]) -> tuple[Any, list[dict[str, Any]]]:
    """Fuse each pad kernel whose only user is an int8 conv kernel that the micro-kernel schedule takes into that
    kernel; (module, new census).

    QdqToInt8 pads with the input zero point in a kernel of its own, which FuseOps leaves alone (a conv does not
    take injective producers). Here each (pad, conv) pair of calls becomes a two-call Primitive function that
    FuseTIR merges into one PrimFunc, `fused_<pad>_<conv>`; the MCU schedule then inlines the pad into the conv's
    im2col gather. A conv that keeps plain loops (depthwise) keeps its pad kernel too: inlined into its MAC loop,
    the pad would cost a bounds test per MAC. Census records follow: the fused kernel's ops are the pad's and the
    conv's.
    """
    records = {record["name"]: record for record in census}
    main = mod["main"]
    bindings = [b for block in main.body.blocks for b in block.bindings]
    value_of = {b.var: b.value for b in bindings}
    uses: dict[Any, int] = {}
    for expr in [b.value for b in bindings] + [main.body.body]:
        for var in relax.analysis.free_vars(expr):
            uses[var] = uses.get(var, 0) + 1
    constants = constant_arguments(mod)
    pairs = {}  # conv call -> (group name, pad call)
    for binding in bindings:
        conv = _call_tir(binding.value)
        if conv is None or not _is_int8_conv(records.get(conv[0].name_hint)) or not conv[1] or not uses_micro_kernel(
                mod[conv[0]], constants.get(conv[0].name_hint, frozenset())):
            continue
        padded = conv[1][0]
        pad = _call_tir(value_of.get(padded)) if isinstance(padded, relax.Var) else None
        if pad is None or records.get(pad[0].name_hint, {}).get("ops") != ["pad"] or uses.get(padded) != 1:
            continue
        name = f"fused_{pad[0].name_hint}_{conv[0].name_hint.removeprefix('fused_')}"
        pairs[binding.value] = (name, value_of[padded])
    if not pairs:
        return mod, census

    builder = relax.BlockBuilder(mod)
    groups = {}
    for conv_call, (name, pad_call) in pairs.items():
        if name in groups:
            continue
        pad_args, conv_args = list(pad_call.args[1].fields), list(conv_call.args[1].fields)[1:]
        params = [relax.Var(f"p{i}", arg.ty) for i, arg in enumerate(pad_args + conv_args)]
        with builder.function(name, params, attrs={"Primitive": True}, private=True):
            with builder.dataflow():
                padded = builder.emit(relax.call_tir(pad_call.args[0], params[:len(pad_args)], pad_call.ty))
                out = builder.emit_output(relax.call_tir(conv_call.args[0], [padded, *params[len(pad_args):]],
                                                         conv_call.ty))
            groups[name] = builder.emit_func_output(out)
    mod = builder.get()

    @tvm_api.mutator
    class _CallGroups(tvm_api.PyExprMutator):
        def visit_call_(self, call):
            if call in pairs:
                name, pad_call = pairs[call]
                args = list(pad_call.args[1].fields) + list(call.args[1].fields)[1:]
                return relax.Call(groups[name], [self.visit_expr(arg) for arg in args])
            return super().visit_call_(call)

    mod["main"] = relax.analysis.remove_all_unused(_CallGroups(mod).visit_expr(mod["main"]))
    mod = tvm_api.tvm.transform.Sequential([
        relax.transform.FuseTIR(),  # each group -> one PrimFunc named after it
        relax.transform.DeadCodeElimination(),  # the pad and conv PrimFuncs no call uses any more
    ], name="edgebin.fuse_pads")(mod)
    ops = {name: record.get("ops", []) for name, record in records.items()}
    for conv_call, (name, pad_call) in pairs.items():
        ops[name] = records[pad_call.args[0].name_hint]["ops"] + records[conv_call.args[0].name_hint]["ops"]
    log.info("fused %d pad kernel call(s) into their int8 convs", len(pairs))
    return mod, kernels.kernel_census(mod, ops)


def _call_tir(expr) -> tuple[Any, list] | None:
    """(kernel GlobalVar, arguments) of a `call_tir`, else None."""
    if isinstance(expr, relax.Call) and tvm_api.call_op_name(expr) == "relax.call_tir":
        return expr.args[0], list(expr.args[1].fields)
    return None


def _is_int8_conv(record: dict[str, Any] | None) -> bool:
    return record is not None and record.get("kind") == "int8" and "conv2d" in record.get("ops", [])


def kernel_macs(func) -> int:
    """Multiply-accumulates of one call: the iteration-space size of every reduction block that multiplies."""
    total = 0
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
