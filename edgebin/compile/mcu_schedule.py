"""The untuned loop schedules for microcontroller kernels: no workspaces, int8 MACs through a C micro-kernel.

    mod = schedule_for_mcu(mod)     # after FuseTIR (and mcu_lower's pad fusion); PrimFuncs rescheduled, and
                                    # main's constants re-laid out where a kernel asks for it

Per kernel, with `tvm.s_tir.Schedule`, one of two schedules:

**int8 conv / matmul** (a block `acc += int32(x) * int32(w)`, an int8 weight that is a constant and an int8 or
uint8 activation), the micro-kernel schedule, when `MICRO_KERNELS` is on (the default):
1. im2col: `reindex` the activation read, so that each output pixel's receptive field becomes one contiguous
   int8 column (C order ci, ky, kx, the order of the OIHW weight rows); the pad block of a fused pad+conv is
   inlined into this gather, so padding costs a bounds test per gathered byte instead of a kernel;
2. loops: output pixels outside, output channels and the reduction inside; the column is gathered per pixel
   (`compute_at`) and the whole epilogue (bias, requant, residual) runs per pixel after it (`reverse_compute_at`),
   reading int32 accumulators from a Cout-element array on the stack;
3. the channel and reduction loops become one call, `edgebin_matvec_s8(col, w, K, Cout, acc)` (or `_u8s8` for a
   uint8 activation; `tensorize` with an intrinsic generated for the shape), the C micro-kernel of
   `mcu_kernels/edgebin_kernels.h`: two MACs per SMLAD on cores with the DSP extension, a plain loop elsewhere;
4. a weight whose reduction axis is not innermost (matmul's (K, N)) is stored the other way round: the PrimFunc
   parameter with `transform_layout`, the constant in `main` with the same permutation (free: weights are
   constants; same bytes, so flash is unchanged).

**everything else** (and any kernel step 1-4 cannot handle), the plain schedule (compile.md, Appendix B):
inline pads and elementwise blocks into their neighbours, `reverse_compute_at` the epilogue under the reduction's
innermost spatial loop, `decompose_reduction`. gcc then sees `acc += (int32_t)x[...] * (int32_t)w[...]`.

Both compute the same int32 sums in the same requant epilogue, so outputs are identical bit for bit.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from dataclasses import dataclass

import numpy as np

from edgebin.compile.tvm_adapter import (
    GenericConst,
    PyExprMutator,
    TensorLoad,
    call_op_name,
    collect,
    const,
    const_array,
    mutator,
    prim_dtype,
    relax,
    s_tir,
    tirx,
    tvm,
)

log = logging.getLogger(__name__)

MATVEC = "edgebin_matvec_s8"  # the C micro-kernel (mcu_kernels/edgebin_kernels.h)...
MATVEC_U8 = "edgebin_matvec_u8s8"  # ...and its twin for a uint8 activation
# The micro-kernel schedule (and mcu_lower's pad fusion) on or off; EDGEBIN_MCU_MICRO_KERNELS=0 switches it off
# for a run, `with plain_loops():` for a block (a baseline to compare with, or to rule the schedule out).
MICRO_KERNELS = contextvars.ContextVar(
    "edgebin_mcu_micro_kernels", default=os.environ.get("EDGEBIN_MCU_MICRO_KERNELS", "1") != "0")

_SPATIAL, _REDUCE = 0, 2  # tirx.IterVar kinds


@contextlib.contextmanager
def plain_loops():
    """Within the block, MCU kernels keep plain C loops: no micro-kernel calls, no pad fusion."""
    token = MICRO_KERNELS.set(False)
    try:
        yield
    finally:
        MICRO_KERNELS.reset(token)


@dataclass(frozen=True)
class Relayout:
    """A kernel stores its parameter `param` transposed: every constant passed there becomes
    `np.transpose(value, axes)`."""

    param: int
    axes: tuple[int, ...]


class _NotMatvec(Exception):
    """The kernel has no int8 MAC block the micro-kernel schedule understands (the reason is the message)."""


def schedule_for_mcu(mod):
    """Reschedule every PrimFunc of `mod` (see the module docstring) and re-lay out the constants they ask for."""
    constants = constant_arguments(mod)
    relayouts: dict[str, list[Relayout]] = {}
    for gvar, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc):
            continue
        try:
            mod[gvar], relayouts[gvar.name_hint] = schedule_kernel(func, constants.get(gvar.name_hint, frozenset()))
        except s_tir.ScheduleError as err:  # pragma: no cover - every legalized op so far schedules
            log.warning("MCU schedule failed for %s, default loops kept: %s", gvar.name_hint,
                        str(err).splitlines()[0])
    if any(relayouts.values()):
        mod = _relayout_constants(mod, {name: r for name, r in relayouts.items() if r})
    return mod


def schedule_kernel(func, constant_params: frozenset[int] = frozenset()):
    """(scheduled PrimFunc, the parameter re-layouts its callers must apply to their constants).

    `constant_params` are the parameter indices every caller passes a constant to (the only ones whose layout
    the schedule may change)."""
    if MICRO_KERNELS.get():
        try:
            return _schedule_matvec(func, constant_params)
        except _NotMatvec as why:
            log.debug("plain loops: %s", why)
        except (RuntimeError, ValueError, TypeError) as err:  # ScheduleError, or TVM refusing the tensorize
            log.info("micro-kernel schedule failed (%s); plain loops kept", str(err).strip().splitlines()[0][:200])
    return _schedule_plain(func), []


def uses_micro_kernel(func, constant_params: frozenset[int] = frozenset()) -> bool:
    """True when `schedule_kernel` turns `func`'s int8 MAC block into a micro-kernel call."""
    if not MICRO_KERNELS.get():
        return False
    try:
        _schedule_matvec(func, constant_params)
    except (_NotMatvec, RuntimeError, ValueError, TypeError):
        return False
    return True


# --- the micro-kernel schedule -------------------------------------------------------------------------------


def _schedule_matvec(func, constant_params: frozenset[int]):
    """Steps 1-4 of the module docstring; _NotMatvec (or a ScheduleError) when the kernel does not fit."""
    sch = s_tir.Schedule(func)
    block = _int8_mac_block(sch)
    node = sch.get(block)
    out, x, w = _mac_statement(node)
    reduce_vars = [iv.var for iv in node.iter_vars if int(iv.iter_type) == _REDUCE]
    j = _output_channel(node, out, x, w, reduce_vars)

    relayouts = []
    w_vars, rows_first = list(w.indices), [j, *reduce_vars]
    if not all(a.same_as(b) for a, b in zip(w_vars, rows_first, strict=True)):  # matmul (K, N): store it (N, K)
        param = next((i for i, p in enumerate(func.params) if p.same_as(w.source)), None)
        if param is None or param not in constant_params:
            raise _NotMatvec("a weight with its reduction axes first that is not a constant parameter")
        axes = tuple(next(i for i, v in enumerate(w_vars) if v.same_as(want)) for want in rows_first)
        sch.transform_layout(block, ("read", _read_index(node, w.source)), _permutation(axes))
        relayouts.append(Relayout(param, axes))
        node = sch.get(block)

    gather = None  # 1. im2col, unless the input is already read along the reduction (a matmul's row)
    tail = list(x.indices)[len(x.indices) - len(reduce_vars):]
    if not all(isinstance(v, tirx.Var) and v.same_as(r) for v, r in zip(tail, reduce_vars, strict=True)):
        gather = sch.reindex(block, ("read", _read_index(node, x.source)))  # col[n, oh, ow, ci, ky, kx]
    _inline_all(sch, keep={sch.get(gather).name_hint} if gather is not None else set())

    loops = sch.get_loops(block)  # 2. pixels outside, then the output channel, then the reduction
    node = sch.get(block)
    if len(loops) != len(node.iter_vars):
        raise _NotMatvec("the MAC block's loops are not its own axes")
    axes = list(zip(loops, node.iter_vars, strict=True))
    pixels = [loop for loop, iv in axes if int(iv.iter_type) == _SPATIAL and not iv.var.same_as(j)]
    j_loop = next(loop for loop, iv in axes if iv.var.same_as(j))
    reduction = [loop for loop, iv in axes if int(iv.iter_type) == _REDUCE]
    if not pixels:
        raise _NotMatvec("no spatial axis besides the output channel")
    sch.reorder(*pixels, j_loop, *reduction)
    if gather is not None:
        sch.compute_at(gather, pixels[-1], preserve_unit_loops=True)
    for consumer in sch.get_consumers(block):
        sch.reverse_compute_at(consumer, pixels[-1], preserve_unit_loops=True)
    sch.decompose_reduction(block, j_loop)  # the zeroing loop; the micro-kernel accumulates

    node = sch.get(block)  # 3. the channel and reduction loops -> edgebin_matvec_s8
    out, x, _ = _mac_statement(node)
    n, extents = int(sch.get(j_loop).extent), tuple(int(sch.get(loop).extent) for loop in reduction)
    if n < 2:
        raise _NotMatvec("a single output channel")
    reduce_vars = [iv.var for iv in node.iter_vars if int(iv.iter_type) == _REDUCE]
    c_axis = next(i for i, v in enumerate(out.indices) if isinstance(v, tirx.Var) and v.same_as(j))
    a_axes = tuple(next((r for r, var in enumerate(reduce_vars) if var.same_as(index)), -1)
                   for index in x.indices)  # which reduction axis each column index is (-1: a pixel axis)
    looped = [r for r in a_axes if r >= 0]
    if looped != sorted(looped) or a_axes[len(a_axes) - len(looped):] != tuple(looped) or any(
            extent > 1 and r not in looped for r, extent in enumerate(extents)):
        raise _NotMatvec("the column is not contiguous along the reduction")
    sch.tensorize(j_loop, matvec_intrin(n, extents, len(out.indices), c_axis, a_axes, prim_dtype(j),
                                        str(x.source.dtype)))
    return sch.mod["main"], relayouts


def _int8_mac_block(sch):
    """The one reduction block whose statement is `C[...] = C[...] + int32(A[...]) * int32(B[...])`: int8 B,
    int8 or uint8 A."""
    found = [block for block in sch.get_child_blocks(sch.get_sblock("root"))
             if sch.get(block).init is not None and _mac_loads(sch.get(block).body) is not None]
    if len(found) != 1:
        raise _NotMatvec(f"{len(found)} int8 MAC blocks")
    return found[0]


def _output_channel(node, out, x, w, reduce_vars):
    """The output channel axis j of the MAC block: the one spatial axis the weight is indexed by, with the
    reduction axes (in any order); the accumulator is indexed by spatial axes, j once; the input not by j."""
    spatial = [iv.var for iv in node.iter_vars if int(iv.iter_type) == _SPATIAL]
    w_vars, out_vars = _plain_vars(w.indices, "weight"), _plain_vars(out.indices, "accumulator")
    j_vars = [v for v in w_vars if _among(v, spatial)]
    if len(j_vars) != 1 or not _same_vars(w_vars, [j_vars[0], *reduce_vars]):
        raise _NotMatvec("the weight is not indexed by one output axis and the reduction axes")
    j = j_vars[0]
    if not all(_among(v, spatial) for v in out_vars) or sum(v.same_as(j) for v in out_vars) != 1:
        raise _NotMatvec("the accumulator is not indexed by the spatial axes")
    if any(v.same_as(j) for index in x.indices for v in collect(index, tirx.Var)):
        raise _NotMatvec("the input depends on the output channel (a grouped or depthwise conv)")
    return j


def _mac_statement(node):
    """(store, x load, w load) of the MAC block `node`; _NotMatvec if scheduling changed its statement."""
    found = _mac_loads(node.body)
    if found is None:
        raise _NotMatvec(f"block {node.name_hint} is no longer `C += int32(x) * int32(w)`")
    return found


def _mac_loads(stmt):
    """(store, x load, w load) of `C[i] = C[i] + int32(x) * int32(w)` with an int8 w, an int8 or uint8 x and an
    int32 C (the operands in either order), else None."""
    if not isinstance(stmt, tirx.BufferStore) or str(stmt.buffer.dtype) != "int32":
        return None
    value = stmt.value
    if not (isinstance(value, tirx.Add) and isinstance(value.a, TensorLoad) and value.a.source.same_as(stmt.buffer)
            and isinstance(value.b, tirx.Mul)):
        return None
    loads = []
    for operand in (value.b.a, value.b.b):
        if not (isinstance(operand, tirx.Cast) and prim_dtype(operand) == "int32"
                and isinstance(operand.value, TensorLoad) and str(operand.value.source.dtype) in ("int8", "uint8")):
            return None
        loads.append(operand.value)
    if str(loads[1].source.dtype) != "int8":
        loads.reverse()
    if str(loads[1].source.dtype) != "int8":
        return None
    return stmt, loads[0], loads[1]


def _plain_vars(indices, what: str) -> list:
    if not all(isinstance(i, tirx.Var) for i in indices):
        raise _NotMatvec(f"the {what} has computed indices")
    return list(indices)


def _among(var, variables: list) -> bool:
    return any(var.same_as(v) for v in variables)


def _same_vars(found: list, wanted: list) -> bool:
    """True when `found` holds each variable of `wanted` exactly once, in any order."""
    return len(found) == len(wanted) and all(sum(v.same_as(w) for v in found) == 1 for w in wanted)


def _read_index(node, buffer) -> int:
    return next(i for i, region in enumerate(node.reads) if region.source.same_as(buffer))


def _permutation(axes: tuple[int, ...]):
    return lambda *index: tuple(index[a] for a in axes)


def matvec_intrin(n: int, reduction: tuple[int, ...], c_ndim: int, c_axis: int, a_axes: tuple[int, ...],
                  index_dtype: str = "int64", x_dtype: str = "int8") -> str:
    """The name of a tensor intrinsic for `C[.., j, ..] += int32(A[..]) * int32(B[j, *r])` (registered once).

    C is the int32 accumulator, j at `c_axis` and unit extents elsewhere; B the int8 weight rows, (n, *reduction);
    A the `x_dtype` (int8 or uint8) column: its axis i is reduction axis `a_axes[i]`, or a unit axis where that is
    -1 (the reduction axes come last and in order, so the column is contiguous). The implementation is one
    `edgebin_matvec_s8` (`_u8s8` for uint8).
    """
    kernel = MATVEC if x_dtype == "int8" else MATVEC_U8
    name = (f"{kernel}_{n}x{'x'.join(map(str, reduction))}_c{c_ndim}{c_axis}"
            f"_a{''.join('_' if r < 0 else str(r) for r in a_axes)}_{index_dtype}")
    if s_tir.TensorIntrin.get(name, allow_missing=True) is None:
        desc, impl = (_matvec_func(n, reduction, c_ndim, c_axis, a_axes, index_dtype, x_dtype, impl=flag)
                      for flag in (False, True))
        s_tir.TensorIntrin.register(name, desc, impl)
    return name


def _matvec_func(n, reduction, c_ndim, c_axis, a_axes, index_dtype, x_dtype, *, impl: bool):
    """The description (a loop nest) or the implementation (the call) of the matvec intrinsic, as a PrimFunc."""
    IRBuilder, builder = tvm.script.ir_builder.IRBuilder, tvm.script.ir_builder.tirx

    def imm(value: int):
        return tirx.IntImm(index_dtype, value)

    c_shape = [imm(n) if axis == c_axis else imm(1) for axis in range(c_ndim)]
    a_shape = [imm(1) if r < 0 else imm(reduction[r]) for r in a_axes]
    b_shape = [imm(n)] + [imm(r) for r in reduction]

    def whole(buffer, shape):
        return buffer[tuple(slice(imm(0), extent) for extent in shape)]

    with IRBuilder() as ib:
        with builder.prim_func(s_tir=True):
            kernel = MATVEC if x_dtype == "int8" else MATVEC_U8
            builder.func_name(f"{kernel}_{'impl' if impl else 'desc'}")
            handles = [builder.arg(name, builder.handle()) for name in ("a", "b", "c")]
            a, b, c = (builder.match_buffer(handle, shape, dtype, offset_factor=1)
                       for handle, shape, dtype in zip(handles, (a_shape, b_shape, c_shape),
                                                       (x_dtype, "int8", "int32"), strict=True))
            with builder.sblock("root"):
                builder.reads(whole(c, c_shape), whole(a, a_shape), whole(b, b_shape))
                builder.writes(whole(c, c_shape))
                if impl:
                    builder.evaluate(tirx.call_extern("void", kernel, a.access_ptr("r"), b.access_ptr("r"),
                                                      int(np.prod(reduction)), n, c.access_ptr("rw")))
                else:  # blockize binds no unit loop to the inner block: neither does the description
                    with builder.grid(imm(n), *map(imm, reduction)) as loops:
                        with builder.sblock("update"):
                            bound = [loops[0]] + [loop for loop, r in zip(loops[1:], reduction, strict=True) if r > 1]
                            vj, *looped = builder.axis.remap("S" + "R" * (len(bound) - 1), bound, dtype=index_dtype)
                            looped = iter(looped)
                            vr = [next(looped) if r > 1 else imm(0) for r in reduction]
                            ci = [vj if axis == c_axis else imm(0) for axis in range(c_ndim)]
                            ai = [imm(0) if r < 0 else vr[r] for r in a_axes]
                            product = tirx.Cast("int32", a[tuple(ai)]) * tirx.Cast("int32", b[(vj, *vr)])
                            builder.buffer_store(c, c[tuple(ci)] + product, ci)
    return ib.get()


# --- re-laid-out constants in main ---------------------------------------------------------------------------


def constant_arguments(mod) -> dict[str, frozenset[int]]:
    """Kernel name -> the parameter indices that every call in `main` passes a constant to."""
    found: dict[str, frozenset[int]] = {}
    for call in _kernel_calls(mod):
        name, args = call.args[0].name_hint, list(call.args[1].fields)
        params = frozenset(i for i, arg in enumerate(args) if isinstance(arg, GenericConst))
        found[name] = found[name] & params if name in found else params
    return found


def _kernel_calls(mod) -> list:
    return [call for call in collect(mod["main"].body, relax.Call) if call_op_name(call) == "relax.call_tir"]


def _relayout_constants(mod, relayouts: dict[str, list[Relayout]]):
    """`mod` with each re-laid-out kernel's constant arguments in `main` permuted to match its new parameters.

    The kernels are re-added under fresh GlobalVars: a GlobalVar keeps the signature it was created with, and
    CallTIRRewrite checks the arguments against it."""
    functions = {gvar: func for gvar, func in mod.functions.items() if gvar.name_hint not in relayouts}
    builder = relax.BlockBuilder(tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos))
    fresh = {name: builder.add_func(mod[name], name) for name in relayouts}

    @mutator
    class _Permute(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call_op_name(call) != "relax.call_tir" or call.args[0].name_hint not in relayouts:
                return call
            name, args = call.args[0].name_hint, list(call.args[1].fields)
            for relayout in relayouts[name]:
                args[relayout.param] = const(np.ascontiguousarray(
                    np.transpose(const_array(args[relayout.param]), relayout.axes)))
            return relax.Call(call.op, [fresh[name], relax.Tuple(args), *call.args[2:]], call.attrs, call.ty_args)

    new = builder.get()
    new["main"] = _Permute(new).visit_expr(mod["main"])
    return new


# --- the plain schedule --------------------------------------------------------------------------------------


def _schedule_plain(func):
    """One PrimFunc with pads and elementwise blocks inlined and epilogues moved under the reduction."""
    sch = s_tir.Schedule(func)
    _inline_all(sch)
    for block in _reductions(sch):
        loops = sch.get_loops(block)
        n_spatial = _n_spatial(sch, block)
        if n_spatial == 0:
            continue
        for consumer in sch.get_consumers(block):
            with contextlib.suppress(s_tir.ScheduleError):
                sch.reverse_compute_at(consumer, loops[n_spatial - 1])
    for block in _reductions(sch):
        loops = sch.get_loops(block)
        n_spatial = _n_spatial(sch, block)
        if n_spatial < len(loops):
            sch.decompose_reduction(block, loops[n_spatial])
    return sch.mod["main"]


def _inline_all(sch, keep: set[str] = frozenset()) -> None:
    """Inline blocks until none can be: producers into consumers first, then consumers into producers.
    Blocks named in `keep` stay (the im2col gather)."""
    root = sch.get_sblock("root")
    changed = True
    while changed:
        changed = False
        for block in sch.get_child_blocks(root):
            if sch.get(block).name_hint in keep:
                continue
            for inline in (sch.compute_inline, sch.reverse_compute_inline):
                try:
                    inline(block)
                except s_tir.ScheduleError:
                    continue
                changed = True
                break
            if changed:
                break  # the block list changed; start over


def _reductions(sch) -> list:
    """Top-level blocks with an init statement whose loops are the block's own axes, spatial ones first."""
    found = []
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        node = sch.get(block)
        kinds = [int(iv.iter_type) for iv in node.iter_vars]
        n_spatial = kinds.count(_SPATIAL)
        if (node.init is not None and len(sch.get_loops(block)) == len(kinds)
                and kinds == [_SPATIAL] * n_spatial + [_REDUCE] * (len(kinds) - n_spatial)):
            found.append(block)
    return found


def _n_spatial(sch, block) -> int:
    return sum(1 for iv in sch.get(block).iter_vars if int(iv.iter_type) == _SPATIAL)


__all__ = ["MATVEC", "MATVEC_U8", "MICRO_KERNELS", "Relayout", "constant_arguments", "matvec_intrin", "plain_loops",
           "schedule_for_mcu", "schedule_kernel", "uses_micro_kernel"]
