"""The untuned loop schedules for microcontroller kernels: no workspaces, int8 MACs through a C micro-kernel.

    mod = schedule_for_mcu(mod)     # after FuseTIR (and mcu_lower's pad fusion); PrimFuncs rescheduled, and
                                    # main's constants re-laid out where a kernel asks for it

Per kernel, with `tvm.s_tir.Schedule`, one of two schedules:

**int8 conv / matmul** (a block `acc += int32(x) * int32(w)`, an int8 weight that is a constant and an int8 or
uint8 activation), the micro-kernel schedule, when `MICRO_KERNELS` is on (the default):
1. im2col: `reindex` the activation read, so that each output pixel's receptive field becomes one contiguous
   int8 column (C order ci, ky, kx, the order of the OIHW weight rows); the pad block of a fused pad+conv is
   inlined into this gather, so padding costs a bounds test per gathered byte instead of a kernel;
2. loops: output pixels outside, output channels and the reduction inside; the innermost pixel loop is split
   into groups of P = 4 or 2 neighbouring pixels where P divides it and P columns and accumulators fit
   COLUMN_BYTES of stack (`columns_per_call`; else P = 1); the P columns are gathered per group (`compute_at`)
   and the whole epilogue (bias, requant, residual) runs per group after it (`reverse_compute_at`, its P lanes
   unrolled when the reduction is short), reading int32 accumulators from a P x Cout array on the stack;
3. the lane, channel and reduction loops become one call, `edgebin_matvec_s8(col, w, K, Cout, acc)`
   (`edgebin_matvec{2,4}_s8` for P columns, `_u8s8` for a uint8 activation; `tensorize` with an intrinsic
   generated for the shape), the C micro-kernel of `mcu_kernels/edgebin_kernels.h`: two MACs per SMLAD on cores
   with the DSP extension, a plain loop elsewhere. The intrinsic's description includes the zeroing of the
   accumulators (the block's init), which the kernel does by overwriting them: no zeroing loop is left;
4. a weight whose reduction axis is not innermost (matmul's (K, N)) is stored the other way round: the PrimFunc
   parameter with `transform_layout`, the constant in `main` with the same permutation (free: weights are
   constants; same bytes, so flash is unchanged).

**everything else** (and any kernel step 1-4 cannot handle), the plain schedule (compile.md, Appendix B):
inline pads and elementwise blocks into their neighbours, `reverse_compute_at` the epilogue under the reduction's
innermost spatial loop, `decompose_reduction`. gcc then sees `acc += (int32_t)x[...] * (int32_t)w[...]`.

Both compute the same int32 sums in the same requant epilogue, so outputs are identical bit for bit.

The x86 host and the 64-bit Arm boards reuse the micro-kernel schedule (`schedule_module` with their own loop order
for the other kernels, host.schedule_cpu_loops); there the calls go to cpu_kernels/edgebin_cpu_kernels.c, linked
into the library, and `row_calls` changes steps 1-3 (host only; the Cortex-M output is unchanged): one call per row
of output pixels, whatever its width, with the epilogue vectorized along the row after it. A stride-1 conv reads its
padded input where it lies (`_schedule_conv_row`, `edgebin_matvecc_*`: row (ci, ky) from column kx holds the P
inputs of the row's P outputs, so there is no im2col at all); any other conv gathers its columns k-major,
col[ci, ky, kx, p] (`edgebin_matvect_*`), each (ci, ky, kx) a run of neighbouring pixels LLVM copies in vectors.
Those kernels put the pixels in the vector lanes and broadcast the weights: no horizontal sums.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgebin.compile import kernels
from edgebin.compile.requant import FIXED_REQUANT
from edgebin.compile.tvm_adapter import (
    GenericConst,
    IRCall,
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
    tvm_ffi,
    whole_region,
)

log = logging.getLogger(__name__)

MATVEC = "edgebin_matvec_s8"  # the C micro-kernel (mcu_kernels/edgebin_kernels.h)...
MATVEC_U8 = "edgebin_matvec_u8s8"  # ...and its twin for a uint8 activation (edgebin_matvec{2,4}_*: 2 or 4 columns)
COLUMN_BYTES = 1536  # stack for one call's columns and accumulators, P (k + 4 n) bytes, when P > 1 columns
ROW_BYTES = 32768  # the host's whole-row calls (row_calls): stack for a row's columns and accumulators
UNIT, LANE = -1, -2  # matvec_intrin's column axes that are not reduction axes
# With a reduction this short the requant epilogue is a third of a conv's instructions: its P lanes are unrolled
# (for ResNet-8's stem, 9 MACs per output: 3.1 -> 2.8 instructions per MAC), at the price of P - 1 more copies of
# its rare near-tie branch (about 600 bytes of flash each).
UNROLLED_EPILOGUE_K = 32
# The host's rows shorter than this (ResNet-8's 14 and 7 pixels) write straight into the layer's NCHW accumulators,
# and the epilogue runs once after the last row, in vectors along each channel's H*W outputs: per row it ran in
# vectors of 7 or 14 lanes, at 2.5 to 4 times the cost per output of a 28-pixel row's (a perf profile; the whole
# model's gain, 0.0995 -> 0.0953 ms, by alternating runs outside tools/bench).
WHOLE_LAYER_EPILOGUE_WIDTH = 16
# The micro-kernel schedule (and mcu_lower's pad fusion) on or off; EDGEBIN_MCU_MICRO_KERNELS=0 switches it off
# for a run, `with plain_loops():` for a block (a baseline to compare with, or to rule the schedule out).
MICRO_KERNELS = contextvars.ContextVar(
    "edgebin_mcu_micro_kernels", default=os.environ.get("EDGEBIN_MCU_MICRO_KERNELS", "1") != "0")

_SPATIAL, _REDUCE = 0, 2  # tirx.IterVar kinds
_INT8_MATVEC = re.compile(r"edgebin_matvec[24]?_(s8|u8s8)")  # the calls fuse_requant may extend
# fuse_requant builds its table of channel constants once per run: a gemm's single call would pay it for nothing
# (LeNet-5's fc layers: 1.39 -> 1.42 and 1.50 -> 1.56 instructions per MAC).
_FUSED_MIN_CALLS = 8
# The spread form of the table (edgebin_rq_spread): each channel's weights as int16 pairs, spread once per run instead
# of once per call, for rows of at most SPREAD_PAIRS pairs (edgebin_kernels.h, EDGEBIN_RQS_PAIRS) whose table, 4
# (ceil(k / 2) + 5) bytes a channel, fits in SPREAD_TABLE_BYTES of stack (ResNet-8's stack3.shortcut: 5,376).
SPREAD_PAIRS = 32
SPREAD_TABLE_BYTES = 6144


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
    return schedule_module(mod)


def schedule_module(mod, plain: Callable[[Any], Any] | None = None, *, skip: Callable[[Any], bool] | None = None,
                    keep_pads: bool = False, row_calls: bool = False):
    """`mod` with each PrimFunc through `schedule_kernel` (`plain` for the kernels without a micro-kernel call,
    default the MCU's plain schedule; those `skip` says to leave alone keep their loops) and the constants of
    `main` re-laid out where a kernel asks for it. The host's schedule reuses this with its own loop order."""
    constants = constant_arguments(mod)
    relayouts: dict[str, list[Relayout]] = {}
    for gvar, func in list(mod.functions.items()):
        if not isinstance(func, tirx.PrimFunc) or (skip is not None and skip(func)) or _is_opaque_call(func):
            continue
        try:
            mod[gvar], relayouts[gvar.name_hint] = schedule_kernel(func, constants.get(gvar.name_hint, frozenset()),
                                                                   plain=plain, keep_pads=keep_pads,
                                                                   row_calls=row_calls)
        except s_tir.ScheduleError as err:  # pragma: no cover - every legalized op so far schedules
            log.warning("loop schedule failed for %s, default loops kept: %s", gvar.name_hint,
                        str(err).splitlines()[0])
    if any(relayouts.values()):
        mod = _relayout_constants(mod, {name: r for name, r in relayouts.items() if r})
    return mod


def schedule_kernel(func, constant_params: frozenset[int] = frozenset(), *,
                    plain: Callable[[Any], Any] | None = None, keep_pads: bool = False, row_calls: bool = False):
    """(scheduled PrimFunc, the parameter re-layouts its callers must apply to their constants).

    `constant_params` are the parameter indices every caller passes a constant to (the only ones whose layout
    the schedule may change). A kernel without an int8 MAC block the micro-kernel takes gets `plain(func)`
    (default the plain schedule of the module docstring). `keep_pads`: a pad block inside the kernel (a conv's own
    padding) stays a loop nest of its own writing the padded tensor, instead of a bounds test per gathered byte
    (the host: faster, at the price of the padded tensor's memory). `row_calls` (the host): one call per row of
    output pixels, whatever its width (P an argument): a stride-1 conv's input read where it lies
    (`edgebin_matvecc_*`), else columns gathered k-major (`edgebin_matvect_*`), instead of groups of 4, 2 or 1
    pixel-major columns."""
    if MICRO_KERNELS.get():
        try:
            return _schedule_matvec(func, constant_params, keep_pads=keep_pads, row_calls=row_calls)
        except _NotMatvec as why:
            log.debug("plain loops: %s", why)
        except (RuntimeError, ValueError, TypeError) as err:  # ScheduleError, or TVM refusing the tensorize
            log.info("micro-kernel schedule failed (%s); plain loops kept", str(err).strip().splitlines()[0][:200])
    return (plain or _schedule_plain)(func), []


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


def _schedule_matvec(func, constant_params: frozenset[int], *, keep_pads: bool = False, row_calls: bool = False):
    """Steps 1-4 of the module docstring; _NotMatvec (or a ScheduleError) when the kernel does not fit."""
    if row_calls and keep_pads:
        try:
            return _schedule_conv_row(func)
        except _NotMatvec as why:
            log.debug("no direct conv row: %s", why)
        except (RuntimeError, ValueError, TypeError) as err:
            log.debug("direct conv row failed (%s); im2col kept", str(err).strip().splitlines()[0][:200])
    sch = s_tir.Schedule(func)
    block, x, w, reduce_vars, j = _mac_parts(sch)
    relayouts = _weight_rows_first(sch, block, func, w, [j, *reduce_vars], constant_params)
    tail = list(x.indices)[len(x.indices) - len(reduce_vars):]
    gather = None  # 1. im2col, unless the input is already read along the reduction (a matmul's row)
    if not all(isinstance(v, tirx.Var) and v.same_as(r) for v, r in zip(tail, reduce_vars, strict=True)):
        gather = sch.reindex(block, ("read", _read_index(sch.get(block), x.source)))  # col[n, oh, ow, ci, ky, kx]
    keep = {sch.get(gather).name_hint} if gather is not None else set()
    if keep_pads and gather is not None:
        keep |= {name for name in _block_names(sch) if name.startswith("pad_temp") and name not in keep}
    _inline_all(sch, keep=keep)
    call = _place_loops(sch, block, j, gather, row_calls)  # 2.
    sch.tensorize(call.loop, _call_intrinsic(sch.get(block), j, call))  # 3.
    return _drop_tensorized_init(sch.mod["main"]), relayouts


@dataclass(frozen=True)
class _Call:
    """Where the micro-kernel call goes: the loop it replaces, its P columns (and their pixel axis), the output
    channels n and the reduction extents."""

    loop: Any
    lanes: int
    lane_var: Any
    n: int
    extents: tuple[int, ...]
    row: bool = False  # a whole row of pixels, k-major, P passed to edgebin_matvect_*


def _weight_rows_first(sch, block, func, w, rows_first: list, constant_params: frozenset[int]) -> list[Relayout]:
    """Step 4: a weight read (K, N) is stored (N, K), when it is a constant parameter; its Relayout."""
    w_vars = list(w.indices)
    if all(a.same_as(b) for a, b in zip(w_vars, rows_first, strict=True)):
        return []
    param = next((i for i, p in enumerate(func.params) if p.same_as(w.source)), None)
    if param is None or param not in constant_params:
        raise _NotMatvec("a weight with its reduction axes first that is not a constant parameter")
    axes = tuple(next(i for i, v in enumerate(w_vars) if v.same_as(want)) for want in rows_first)
    sch.transform_layout(block, ("read", _read_index(sch.get(block), w.source)), _permutation(axes))
    return [Relayout(param, axes)]


def _place_loops(sch, block, j, gather, row_calls: bool = False) -> _Call:
    """Step 2: pixel (groups) outside, then the lanes, the output channel and the reduction; the gather before
    and the epilogue after the call, per pixel group."""
    loops = sch.get_loops(block)
    node = sch.get(block)
    if len(loops) != len(node.iter_vars):
        raise _NotMatvec("the MAC block's loops are not its own axes")
    axes = list(zip(loops, node.iter_vars, strict=True))
    pixels = [(loop, iv.var) for loop, iv in axes if int(iv.iter_type) == _SPATIAL and not iv.var.same_as(j)]
    j_loop = next(loop for loop, iv in axes if iv.var.same_as(j))
    reduction = [loop for loop, iv in axes if int(iv.iter_type) == _REDUCE]
    if not pixels:
        raise _NotMatvec("no spatial axis besides the output channel")
    n, extents = int(sch.get(j_loop).extent), tuple(int(sch.get(loop).extent) for loop in reduction)
    if n < 2:
        raise _NotMatvec("a single output channel")
    (last, lane_var), pixels = pixels[-1], [loop for loop, _ in pixels]
    out, _, _ = _mac_statement(node)
    lanes, k = 1, int(np.prod(extents))  # P columns: a conv's neighbouring pixels, innermost in the accumulator
    row = False
    if gather is not None and _after([iv.var for iv in node.iter_vars], lane_var, j) and _after(
            list(out.indices), lane_var, j):
        width = int(sch.get(last).extent)
        row = row_calls and len(pixels) > 1 and width > 1 and width * (k + 4 * n) <= ROW_BYTES
        lanes = width if row else columns_per_call(width, k, n)
    inner = []
    if row:
        pixels, inner = pixels[:-1], [last]
    elif lanes > 1:
        pixels[-1], lane_loop = sch.split(last, factors=[None, lanes])
        inner = [lane_loop]
    sch.reorder(*pixels, *inner, j_loop, *reduction)
    if gather is not None:
        sch.compute_at(gather, pixels[-1], preserve_unit_loops=True)
        if row:
            _k_major_columns(sch, block, gather, lane_var, len(pixels))
    for consumer in sch.get_consumers(block):
        if row:
            _row_epilogue(sch, consumer, pixels[-1], lanes)
            continue
        sch.reverse_compute_at(consumer, pixels[-1], preserve_unit_loops=True)
        if lanes > 1 and k <= UNROLLED_EPILOGUE_K:
            sch.unroll(sch.get_loops(consumer)[-1])  # the epilogue's lanes: each channel's constants load once
    return _Call(inner[0] if inner else j_loop, lanes, lane_var if lanes > 1 else None, n, extents, row)


def _row_epilogue(sch, consumer, row_loop, width: int) -> None:
    """The epilogue of a host conv called a row of `width` pixels at a time: after each row, in vectors along the
    row, or (rows shorter than WHOLE_LAYER_EPILOGUE_WIDTH) once after the last row, in vectors along each
    channel's outputs. Contiguous pixels either way: otherwise LLVM vectorizes the channel loop, with scatters."""
    if width >= WHOLE_LAYER_EPILOGUE_WIDTH:
        sch.reverse_compute_at(consumer, row_loop, preserve_unit_loops=True)
        with contextlib.suppress(s_tir.ScheduleError):
            sch.vectorize(sch.get_loops(consumer)[-1])
        return
    loops = sch.get_loops(consumer)
    with contextlib.suppress(s_tir.ScheduleError):
        sch.vectorize(sch.fuse(*loops[-2:]) if len(loops) >= 2 else loops[-1])


def _k_major_columns(sch, block, gather, lane_var, outer: int) -> None:
    """A row's columns k-major, col[.., r.., p] (edgebin_matvect_*): the pixel axis of the gathered buffer moves
    last, and the gather's pixel loop innermost, where each (ci, ky, kx) copies a run of neighbouring pixels."""
    _, x, _ = _mac_statement(sch.get(block))
    at = next(i for i, v in enumerate(x.indices) if isinstance(v, tirx.Var) and v.same_as(lane_var))
    order = [*(i for i in range(len(x.indices)) if i != at), at]
    sch.transform_layout(gather, ("write", 0), _permutation(tuple(order)))
    inner = sch.get_loops(gather)[outer:]
    if len(inner) == len(order):
        sch.reorder(*(inner[i] for i in order))


def _call_intrinsic(node, j, call: _Call) -> str:
    """Step 3: the matvec intrinsic for the MAC block `node` under the call's loop."""
    out, x, _ = _mac_statement(node)
    reduce_vars = [iv.var for iv in node.iter_vars if int(iv.iter_type) == _REDUCE]
    c_axis = next(i for i, v in enumerate(out.indices) if v.same_as(j))
    c_lane = next((i for i, v in enumerate(out.indices) if call.lane_var is not None and v.same_as(call.lane_var)),
                  -1)
    a_axes = tuple(_column_axis(index, reduce_vars, call.lane_var) for index in x.indices)
    looped = [r for r in a_axes if r >= 0]
    columns = a_axes  # the reduction axes last (k-major for a row: then the lane axis after them)
    if call.row:
        if a_axes[-1] != LANE:
            raise _NotMatvec("the row's columns are not k-major")
        columns = a_axes[:-1]
    if looped != sorted(looped) or columns[len(columns) - len(looped):] != tuple(looped) or any(
            extent > 1 and r not in looped for r, extent in enumerate(call.extents)):
        raise _NotMatvec("the column is not contiguous along the reduction")
    return matvec_intrin(call.n, call.extents, len(out.indices), c_axis, a_axes, prim_dtype(j), str(x.source.dtype),
                         lanes=call.lanes, c_lane=c_lane, row=call.row)


def columns_per_call(pixels: int, k: int, n: int) -> int:
    """P, the output pixels per micro-kernel call: 4 or 2 when they divide the innermost pixel loop and the P
    columns (P k bytes) and P n accumulators fit COLUMN_BYTES of stack, else 1."""
    return next((p for p in (4, 2) if pixels % p == 0 and p * (k + 4 * n) <= COLUMN_BYTES), 1)


def _after(variables: list, var, first) -> bool:
    """True when `var` comes after `first` in `variables`, both present."""
    at = [next((i for i, v in enumerate(variables) if v.same_as(x)), -1) for x in (first, var)]
    return 0 <= at[0] < at[1]


def _column_axis(index, reduce_vars: list, lane_var) -> int:
    """What a column index is: reduction axis r (>= 0), the lane axis (LANE) or a unit axis (UNIT)."""
    r = next((r for r, var in enumerate(reduce_vars) if var.same_as(index)), UNIT)
    return LANE if r == UNIT and lane_var is not None and lane_var.same_as(index) else r


def _schedule_conv_row(func):
    """The host's stride-1 convs without im2col: one `edgebin_matvecc_*` call per row of output pixels reads the
    (padded) input where it lies, row (ci, ky) from column kx, whose P pixels are P neighbouring bytes; the
    epilogue after it, per row, vectorized. _NotMatvec when the MAC block is not such a conv."""
    sch = s_tir.Schedule(func)
    block, x, w, reduce_vars, j = _mac_parts(sch)
    if not all(a.same_as(b) for a, b in zip(w.indices, [j, *reduce_vars], strict=True)):
        raise _NotMatvec("the weight's rows are not (output channel, reduction...)")
    _inline_all(sch, keep={name for name in _block_names(sch) if name.startswith("pad_temp")})
    node = sch.get(block)
    out, x, _ = _mac_statement(node)
    loops = sch.get_loops(block)
    if len(loops) != len(node.iter_vars):
        raise _NotMatvec("the MAC block's loops are not its own axes")
    axes = list(zip(loops, node.iter_vars, strict=True))
    pixels = [(loop, iv.var) for loop, iv in axes if int(iv.iter_type) == _SPATIAL and not iv.var.same_as(j)]
    if len(pixels) < 2 or not _after([iv.var for iv in node.iter_vars], pixels[-1][1], j) or not _after(
            list(out.indices), pixels[-1][1], j):
        raise _NotMatvec("no row of pixels after the output channel")
    (last, lane), outer = pixels[-1], [loop for loop, _ in pixels[:-1]]
    extents = [int(sch.get(loop).extent) for loop, iv in axes if int(iv.iter_type) == _REDUCE]
    width, n = int(sch.get(last).extent), int(sch.get(next(lp for lp, iv in axes if iv.var.same_as(j))).extent)
    if width < 2 or n < 2 or len(extents) != 3:
        raise _NotMatvec("not a conv with a row of pixels and (ci, ky, kx) reduction axes")
    kinds = _conv_read(x.indices, reduce_vars, lane, [v for _, v in pixels[:-1]])
    if width * 4 * n > ROW_BYTES:
        raise _NotMatvec("a row's accumulators do not fit ROW_BYTES")
    j_loop = next(lp for lp, iv in axes if iv.var.same_as(j))
    reduction = [loop for loop, iv in axes if int(iv.iter_type) == _REDUCE]
    sch.reorder(*outer, last, j_loop, *reduction)
    for consumer in sch.get_consumers(block):
        _row_epilogue(sch, consumer, outer[-1], width)
    c_axis = next(i for i, v in enumerate(out.indices) if v.same_as(j))
    c_lane = next(i for i, v in enumerate(out.indices) if v.same_as(lane))
    name = convt_intrin(n, tuple(extents), len(out.indices), c_axis, c_lane, kinds, width, prim_dtype(j),
                        str(x.source.dtype))
    sch.tensorize(last, name)
    return _drop_tensorized_init(sch.mod["main"]), []


def _conv_read(indices, reduce_vars: list, lane, outer: list) -> tuple[int, ...]:
    """What each index of a stride-1 conv's input read is: -1 an outer pixel axis or a constant (unit), r a
    reduction axis r (the channel), 3 + r an outer pixel axis plus reduction axis r (a row), 6 + r the lane plus
    reduction axis r (a column run); the reduction axes in order, the lane's the last index."""
    kinds = []
    for index in indices:
        if isinstance(index, tirx.Var) and _among(index, reduce_vars):
            kinds.append(next(r for r, v in enumerate(reduce_vars) if v.same_as(index)))
        elif isinstance(index, tirx.Var | tirx.IntImm) and (not isinstance(index, tirx.Var) or _among(index, outer)):
            kinds.append(-1)
        elif isinstance(index, tirx.Add) and isinstance(index.a, tirx.Var) and isinstance(index.b, tirx.Var) and \
                _among(index.b, reduce_vars) and (index.a.same_as(lane) or _among(index.a, outer)):
            r = next(r for r, v in enumerate(reduce_vars) if v.same_as(index.b))
            kinds.append((6 if index.a.same_as(lane) else 3) + r)
        else:
            raise _NotMatvec("the input is not read as a stride-1 conv's")
    if [k for k in kinds if k >= 0] not in ([0, 1, 8], [0, 4, 8]):
        raise _NotMatvec("the input is not read (ci, row ky, column kx + pixel)")
    return tuple(kinds)


def convt_intrin(n: int, reduction: tuple[int, ...], c_ndim: int, c_axis: int, c_lane: int, kinds: tuple[int, ...],
                 lanes: int, index_dtype: str, x_dtype: str) -> str:
    """A tensor intrinsic for one row of a stride-1 conv: `C[.., j, .., p] = sum_r int32(A[ci, ky, p + kx]) *
    int32(B[j, ci, ky, kx])`, A the input as it lies (any strides), C's channels any distance apart (its lane
    axis last and contiguous), `kinds` from `_conv_read`; the implementation one
    `edgebin_matvecc_*(a, b, k, n, c, P, C's channel stride, kh, kw, A's channel stride, A's row stride)` call."""
    kernel = "edgebin_matvecc_s8" if x_dtype == "int8" else "edgebin_matvecc_u8s8"
    name = (f"{kernel}_{n}x{'x'.join(map(str, reduction))}_p{lanes}_c{c_ndim}{c_axis}{c_lane}"
            f"_a{'_'.join(map(str, kinds))}_{index_dtype}")
    if s_tir.TensorIntrin.get(name, allow_missing=True) is None:
        s_tir.TensorIntrin.register(name, *(_convt_func(kernel, n, reduction, c_ndim, c_axis, c_lane, kinds, lanes,
                                                        index_dtype, x_dtype, impl=impl) for impl in (False, True)))
    return name


def _convt_func(kernel, n, reduction, c_ndim, c_axis, c_lane, kinds, lanes, index_dtype, x_dtype, *, impl: bool):
    IRBuilder, builder = tvm.script.ir_builder.IRBuilder, tvm.script.ir_builder.tirx

    def imm(value):
        return tirx.IntImm(index_dtype, value)

    a_shape = [imm(1) if k < 0 else imm(reduction[k]) if k < 3 else imm(reduction[k % 3] + (lanes - 1 if k >= 6 else 0))
               for k in kinds]
    c_shape = [imm(n) if i == c_axis else imm(lanes) if i == c_lane else imm(1) for i in range(c_ndim)]
    b_shape = [imm(n), *map(imm, reduction)]
    strides = [tirx.Var(f"s{i}", index_dtype) for i in range(len(kinds) - 1)] + [imm(1)]
    c_strides = _lane_last_strides(c_ndim, c_lane, index_dtype)

    def whole(buffer, shape):
        return buffer[tuple(slice(imm(0), extent) for extent in shape)]

    with IRBuilder() as ib:
        with builder.prim_func(s_tir=True):
            builder.func_name(f"{kernel}_{'impl' if impl else 'desc'}")
            handles = [builder.arg(name, builder.handle()) for name in ("a", "b", "c")]
            a = builder.match_buffer(handles[0], a_shape, x_dtype, strides=strides, offset_factor=1)
            b = builder.match_buffer(handles[1], b_shape, "int8", offset_factor=1)
            c = builder.match_buffer(handles[2], c_shape, "int32", strides=c_strides, offset_factor=1)
            with builder.sblock("root"):
                builder.reads(whole(a, a_shape), whole(b, b_shape))
                builder.writes(whole(c, c_shape))
                if impl:
                    channel = next(i for i, k in enumerate(kinds) if k == 0)
                    row = next(i for i, k in enumerate(kinds) if k % 3 == 1 and k >= 0)
                    builder.evaluate(tirx.call_extern(
                        "void", kernel, a.access_ptr("r"), b.access_ptr("r"), int(np.prod(reduction)), n,
                        c.access_ptr("w"), lanes, tirx.Cast("int32", c.strides[c_axis]), reduction[1], reduction[2],
                        tirx.Cast("int32", a.strides[channel]), tirx.Cast("int32", a.strides[row])))
                else:
                    def c_index(vp, vj):
                        return tuple(vj if i == c_axis else vp if i == c_lane else imm(0) for i in range(c_ndim))
                    with builder.init():
                        with builder.grid(imm(lanes), imm(n)) as loops:
                            with builder.sblock("update_init"):
                                vj, vp = _listed(builder.axis.remap("SS", [loops[1], loops[0]], dtype=index_dtype))
                                builder.buffer_store(c, tirx.IntImm("int32", 0), c_index(vp, vj))
                    with builder.grid(imm(lanes), imm(n), *map(imm, reduction)) as loops:
                        with builder.sblock("update"):
                            vj, vp, *vr = _listed(builder.axis.remap("SSRRR", [loops[1], loops[0], *loops[2:]],
                                                                      dtype=index_dtype))
                            ai = [imm(0) if k < 0 else vr[k] if k < 3 else vr[k % 3] + (vp if k >= 6 else imm(0))
                                  for k in kinds]
                            ci = c_index(vp, vj)
                            product = tirx.Cast("int32", a[tuple(ai)]) * tirx.Cast("int32", b[(vj, *vr)])
                            builder.buffer_store(c, c[ci] + product, ci)
    return ib.get()


def _drop_tensorized_init(func):
    """`func` without the init statement of its micro-kernel calls' blocks. The intrinsic describes the zeroing
    and the MACs (the kernel overwrites its accumulators); tensorize keeps the block's init, which would zero them
    first for nothing."""
    def strip(block):
        if block.init is None or not isinstance(block.body, tirx.Evaluate) or not is_matvec_call(block.body.value):
            return block
        return s_tir.SBlock(block.iter_vars, block.reads, block.writes, block.name_hint, block.body, None,
                            block.alloc_buffers, block.match_buffers, block.annotations)
    return tvm_ffi.structural_map(func, (s_tir.SBlock, strip))


def _mac_parts(sch):
    """(block, input load, weight load, reduction variables, output-channel variable) of the kernel's int8 MAC
    block: what both micro-kernel schedules start from."""
    block = _int8_mac_block(sch)
    node = sch.get(block)
    out, x, w = _mac_statement(node)
    reduce_vars = [iv.var for iv in node.iter_vars if int(iv.iter_type) == _REDUCE]
    return block, x, w, reduce_vars, _output_channel(node, out, x, w, reduce_vars)


def _is_opaque_call(func) -> bool:
    """True for a PrimFunc without loops: one C kernel call in one opaque block (binary.py's packed binary
    layers), nothing a schedule could reorder."""
    return not collect(func.body, tirx.For)


def is_matvec_call(expr) -> bool:
    """True for a `T.call_extern` of an `edgebin_matvec*` micro-kernel."""
    return (isinstance(expr, IRCall) and str(getattr(expr.op, "name", "")).endswith("call_extern")
            and str(expr.args[0].value).startswith("edgebin_matvec"))


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
                  index_dtype: str = "int64", x_dtype: str = "int8", *, lanes: int = 1, c_lane: int = -1,
                  row: bool = False) -> str:
    """The name of a tensor intrinsic for `C[.., j, .., p] = sum_r int32(A[.., p, r..]) * int32(B[j, *r])`
    (registered once).

    C is the int32 accumulator, j at `c_axis`, the lane p (one of `lanes` neighbouring output pixels) at `c_lane`
    when lanes > 1, unit extents elsewhere; B the int8 weight rows, (n, *reduction); A the `x_dtype` (int8 or
    uint8) columns: its axis i is reduction axis `a_axes[i]`, the lane axis where that is LANE, or a unit axis
    (UNIT; the reduction axes come last and in order, so each column is contiguous). The description zeroes C
    first: the implementation, one `edgebin_matvec{lanes}_s8` (`_u8s8` for uint8) call, overwrites it; with
    `row`, `edgebin_matvect_*(..., lanes, C's channel stride)`: any number of lanes, A k-major (the lane axis last;
    the host's rows), C's lane axis last and contiguous, its channels any distance apart.
    """
    spec = _Matvec(n, tuple(reduction), c_ndim, c_axis, tuple(a_axes), index_dtype, x_dtype, lanes, c_lane, row)
    name = (f"{spec.kernel}{lanes if row else ''}_{n}x{'x'.join(map(str, reduction))}_c{c_ndim}{c_axis}{c_lane}"
            f"_a{''.join('_' if r == UNIT else 'p' if r == LANE else str(r) for r in a_axes)}_{index_dtype}")
    if s_tir.TensorIntrin.get(name, allow_missing=True) is None:
        s_tir.TensorIntrin.register(name, _matvec_func(spec, impl=False), _matvec_func(spec, impl=True))
    return name


def matvec_kernel(lanes: int, x_dtype: str, row: bool = False) -> str:
    """The C micro-kernel for `lanes` columns of int8 (or uint8) input: edgebin_matvec{,2,4}_{s8,u8s8}, or
    edgebin_matvect_* (k-major columns, P an argument) for a `row`."""
    kernel = MATVEC if x_dtype == "int8" else MATVEC_U8
    return kernel.replace("matvec", "matvect") if row else kernel if lanes == 1 else kernel.replace(
        "matvec", f"matvec{lanes}")


@dataclass(frozen=True)
class _Matvec:
    """One micro-kernel call's shape (matvec_intrin's arguments)."""

    n: int
    reduction: tuple[int, ...]
    c_ndim: int
    c_axis: int
    a_axes: tuple[int, ...]
    index_dtype: str
    x_dtype: str
    lanes: int
    c_lane: int
    row: bool = False

    @property
    def kernel(self) -> str:
        return matvec_kernel(self.lanes, self.x_dtype, self.row)

    @property
    def lane_extents(self) -> list[int]:
        """The lane loop's extent, when there is one (the loops are lane, channel, reduction...)."""
        return [self.lanes] if self.lanes > 1 else []

    def imm(self, value: int):
        return tirx.IntImm(self.index_dtype, value)

    def shapes(self) -> tuple[list, list, list]:
        """The shapes of A (columns), B (weight rows) and C (accumulators)."""
        lanes, imm = self.lanes, self.imm
        a = [imm(1) if r == UNIT else imm(lanes) if r == LANE else imm(self.reduction[r]) for r in self.a_axes]
        c = [imm(self.n) if i == self.c_axis else imm(lanes) if i == self.c_lane else imm(1)
             for i in range(self.c_ndim)]
        return a, [imm(self.n), *map(imm, self.reduction)], c

    def c_index(self, vp, vj) -> tuple:
        return tuple(vj if i == self.c_axis else vp if i == self.c_lane else self.imm(0) for i in range(self.c_ndim))


def _matvec_func(spec: _Matvec, *, impl: bool):
    """The description (the zeroing and the loop nest) or the implementation (the call) of the matvec intrinsic,
    as a PrimFunc."""
    IRBuilder, builder = tvm.script.ir_builder.IRBuilder, tvm.script.ir_builder.tirx

    def whole(buffer, shape):
        return buffer[tuple(slice(spec.imm(0), extent) for extent in shape)]

    shapes = spec.shapes()
    with IRBuilder() as ib:
        with builder.prim_func(s_tir=True):
            builder.func_name(f"{spec.kernel}_{'impl' if impl else 'desc'}")
            handles = [builder.arg(name, builder.handle()) for name in ("a", "b", "c")]
            a = builder.match_buffer(handles[0], shapes[0], spec.x_dtype, offset_factor=1)
            b = builder.match_buffer(handles[1], shapes[1], "int8", offset_factor=1)
            c_strides = _lane_last_strides(spec.c_ndim, spec.c_lane, spec.index_dtype) if spec.row else None
            c = builder.match_buffer(handles[2], shapes[2], "int32", strides=c_strides, offset_factor=1)
            with builder.sblock("root"):
                builder.reads(whole(a, shapes[0]), whole(b, shapes[1]))
                builder.writes(whole(c, shapes[2]))
                if impl:
                    row = [spec.lanes, tirx.Cast("int32", c.strides[spec.c_axis])] if spec.row else []
                    builder.evaluate(tirx.call_extern("void", spec.kernel, a.access_ptr("r"), b.access_ptr("r"),
                                                      int(np.prod(spec.reduction)), spec.n, c.access_ptr("w"), *row))
                else:
                    _describe(builder, spec, a, b, c)
    return ib.get()


def _describe(builder, spec: _Matvec, a, b, c) -> None:
    """The root block's init (C = 0) and loop nest (C += A B) that blockize makes of the schedule's lane,
    channel and reduction loops with their MAC block."""
    lanes, imm = spec.lane_extents, spec.imm
    with builder.init():
        with builder.grid(*map(imm, lanes), imm(spec.n)) as loops:
            with builder.sblock("update_init"):
                axes = _bind_axes(builder, spec, _listed(loops), [*lanes, spec.n], "S" * (len(lanes) + 1))
                builder.buffer_store(c, tirx.IntImm("int32", 0), spec.c_index(axes[0] if lanes else None, axes[-1]))
    with builder.grid(*map(imm, lanes), imm(spec.n), *map(imm, spec.reduction)) as loops:
        with builder.sblock("update"):
            kinds = "S" * (len(lanes) + 1) + "R" * len(spec.reduction)
            axes = _bind_axes(builder, spec, loops, [*lanes, spec.n, *spec.reduction], kinds)
            vp, vj, vr = axes[0] if lanes else None, axes[len(lanes)], axes[len(lanes) + 1:]
            ci = spec.c_index(vp, vj)
            ai = [imm(0) if r == UNIT else vp if r == LANE else vr[r] for r in spec.a_axes]
            product = tirx.Cast("int32", a[tuple(ai)]) * tirx.Cast("int32", b[(vj, *vr)])
            builder.buffer_store(c, c[ci] + product, ci)


def _bind_axes(builder, spec: _Matvec, loops: list, extents: list[int], kinds: str) -> list:
    """The block axes of `loops` (lane, channel, reduction...): those of extent > 1 bound in the MAC block's
    order, the channel before the lane as in an NCHW conv (unit loops bind none, as in blockize); 0 for the rest."""
    order = [1, 0, *range(2, len(loops))] if spec.lanes > 1 else list(range(len(loops)))
    bound = [i for i in order if extents[i] > 1]
    values = _listed(builder.axis.remap("".join(kinds[i] for i in bound), [loops[i] for i in bound],
                                        dtype=spec.index_dtype)) if bound else []
    axes = dict(zip(bound, values, strict=True))
    return [axes.get(i, spec.imm(0)) for i in range(len(loops))]


def _lane_last_strides(ndim: int, lane: int, index_dtype: str) -> list:
    """Strides for a row kernel's accumulators: any for each axis, 1 for the lane axis, which must be the last."""
    if lane != ndim - 1:
        raise _NotMatvec("the accumulators' pixel axis is not their last")
    return [tirx.Var(f"c{i}", index_dtype) for i in range(ndim - 1)] + [tirx.IntImm(index_dtype, 1)]


def _listed(values) -> list:
    """The IR builder's loop or axis variables as a list (it returns a bare Var for one)."""
    return [values] if isinstance(values, tirx.Var) else list(values)


# --- the requant fused into the micro-kernel call (after mcu_lut: the calls it leaves int8) ------------------


@dataclass(frozen=True)
class FusedRequant:
    """edgebin_rq's constants (mcu_kernels/edgebin_kernels.h): sums times 2^s, multipliers times 2^m, F fraction
    bits, the near-tie window, and each channel's Ra = floor(A 2^-sh) + bias."""

    s: int
    m: int
    f: int
    window: int
    sh: int
    bias: int


def fused_requant_constants(info: dict[str, int], k: int, x_dtype: str) -> FusedRequant | None:
    """The largest F (8 to 24) at which edgebin_rq's 32-bit requant cannot overflow, for a fixed requant with the
    constants `info` (requant.FIXED_REQUANT, plus the largest multiplier `grid_max` and addend `offset_max` its
    callers pass) of sums of k products of `x_dtype` codes and int8 weights; else None."""
    if info["clamp"] or not info["narrow"] or info["e"] < 2 or info["grid_max"] <= 0:
        return None
    sum_max = k * (255 if x_dtype == "uint8" else 128) * 128
    s = next((s for s in range(7 if x_dtype == "uint8" else 0, -1, -1) if sum_max << s < 2**31), None)
    if s is None:
        return None
    e, m_max = info["e"], 31 - info["grid_max"].bit_length()
    for f in range(min(e + s + m_max - 32, 24), 7, -1):
        m, sh = f + 32 - e - s, e - f
        if m < 0:  # G 2^m would drop bits of G; a smaller F only makes m smaller
            return None
        window = _ceil_shift(2 * info["reach"], sh) + 2
        bias = 2 + ((info["zy"] - info["plus"]) << f)
        v_max = ((sum_max << s) * (info["grid_max"] << m) >> 32) + _ceil_shift(info["offset_max"], sh) + abs(bias) + 2
        if v_max < 2**31 and window < 2 ** (f - 1):
            return FusedRequant(s, m, f, window, sh, bias)
    return None


def _ceil_shift(value: int, sh: int) -> int:
    """ceil(value 2^-sh) of a non-negative value."""
    return -(-value >> sh) if sh >= 0 else value << -sh


def fuse_requant(mod):
    """`mod` with each int8 micro-kernel call whose epilogue is exactly one fixed requant (requant.FIXED_REQUANT)
    turned into the `_rq` kernel that requantizes its own sums (edgebin_kernels.h, edgebin_rq): no accumulators
    stored and reloaded, channel constants loaded once per call, 5 instructions per output on DSP cores. The
    kernel's table of channel constants is built once per run (edgebin_rq_table); for short rows (at most
    SPREAD_PAIRS int16 pairs, the table within SPREAD_TABLE_BYTES) it holds the weights too, spread once per run
    (edgebin_rq_spread, the spread form), and a 3x3 conv of one input channel reads its windows from the image
    instead of a gather (edgebin_conv3x3_*_rq). Outputs are the same bits."""
    calls: dict[str, list[list]] = {}
    for call in _kernel_calls(mod):
        calls.setdefault(call.args[0].name_hint, []).append(list(call.args[1].fields))
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, tirx.PrimFunc) and gvar.name_hint in calls:
            fused = _fuse_requant(func, lambda buffer, f=func, c=calls[gvar.name_hint]: _largest(f, c, buffer))
            if fused is not None:
                mod[gvar] = fused
    return mod


def _largest(func, calls: list[list], buffer) -> int | None:
    """The largest magnitude of the constants every call passes to `func`'s parameter `buffer`, else None."""
    param = next((i for i, p in enumerate(func.params) if p.same_as(buffer)), None)
    values = [const_array(args[param]) if param is not None else None for args in calls]
    if any(v is None for v in values):
        return None
    return max(int(np.abs(v.astype(np.int64)).max()) for v in values)


@dataclass(frozen=True)
class _Site:
    """One micro-kernel call (its block realize) and the requant epilogue loop nest after it."""

    seq: Any
    at: int
    call_block: Any
    loops: list
    realize: Any


def _requant_sites(func) -> list[_Site]:
    sites = []
    for seq in collect(func.body, tirx.SeqStmt):
        stmts = list(seq.seq)
        for at, (first, then) in enumerate(zip(stmts, stmts[1:], strict=False)):
            call = _int8_matvec_call(first)
            loops, inner = _loop_nest(then)
            if call is not None and isinstance(inner, s_tir.SBlockRealize) and FIXED_REQUANT in inner.block.annotations:
                sites.append(_Site(seq, at, first.block, loops, inner))
    return sites


def _int8_matvec_call(stmt):
    """The int8 `edgebin_matvec{,2,4}_{s8,u8s8}` call that is the whole body of the block `stmt` realizes."""
    if not isinstance(stmt, s_tir.SBlockRealize) or not isinstance(stmt.block.body, tirx.Evaluate):
        return None
    call = stmt.block.body.value
    if is_matvec_call(call) and _INT8_MATVEC.fullmatch(str(call.args[0].value)):
        return call
    return None


def _loop_nest(stmt) -> tuple[list, Any]:
    loops = []
    while isinstance(stmt, tirx.For):
        loops.append(stmt)
        stmt = stmt.body
    return loops, stmt


def _fuse_requant(func, largest: Callable[[Any], int | None]):
    """`func` with its one requant site fused (see fuse_requant), or None where it has none that fits; `largest`
    gives the largest magnitude its callers pass to a parameter buffer (None: not a constant)."""
    sites = _requant_sites(func)
    if len(sites) != 1:
        return None
    site = sites[0]
    call = site.call_block.body.value
    name, k, n = str(call.args[0].value), int(call.args[3]), int(call.args[4])
    lanes = int(name[len("edgebin_matvec")]) if name[len("edgebin_matvec")].isdigit() else 1
    acc = site.call_block.match_buffers[2].source.source
    block = site.realize.block
    others = [r.source for r in block.reads if not r.source.same_as(acc)]
    extents = [int(loop.extent) for loop in site.loops if int(loop.extent) > 1]
    if (k // 4 > 288 // (2 * lanes) or len(others) != 2 or extents != [n, lanes][:len(extents)]
            or len(extents) != (2 if lanes > 1 else 1)):
        return None
    grid, offset = sorted(others, key=lambda b: str(b.dtype))  # int32, int64
    grid_max, offset_max = largest(grid), largest(offset)
    if (str(grid.dtype), str(offset.dtype)) != ("int32", "int64") or grid_max is None or offset_max is None:
        return None
    info = {key: int(value) for key, value in block.annotations[FIXED_REQUANT].items()}
    rq = fused_requant_constants({**info, "grid_max": grid_max, "offset_max": offset_max}, k,
                                 "uint8" if name.endswith("u8s8") else "int8")
    if rq is None:
        return None
    out, strides = _output_base(site)
    calls = int(np.prod([int(d) for d in block.writes[0].source.shape])) // (n * lanes)
    if out is None or (lanes > 1 and strides[1] != 1) or calls < _FUSED_MIN_CALLS:
        return None
    weights = _spread_weights(site.call_block, k, n, info, strides[0])
    window = _window_image(func, site, k, lanes) if weights is not None else None
    table = tirx.decl_buffer((2 * n,), "int32", name="rq_table")
    # The spread form's table (over 1 KB in the shortcuts) is a C array on the stack, edgebin_rq_stack_table: TVM's
    # codegen would make a buffer that size a static workspace, RAM held all the run.
    stack = tirx.call_extern("handle", "edgebin_rq_stack") if weights is not None else None
    constants = [offset.access_ptr("r"), _step(offset, n), rq.s, rq.m, rq.f, rq.window, info["e"],
                 tirx.const(info["addend"], "int64"), info["zy"], info["lo"], info["hi"]]
    columns = site.call_block.match_buffers[0].source.source
    if window is not None:  # the columns read from the image: no gather, no buffer for them
        image, row = window
        fused = tirx.call_extern("void", f"edgebin_conv3x3_{name.rsplit('_', 1)[1]}_rq", tirx.address_of(image), row,
                                 n, stack, out, strides[0], *constants)
        reads = [*[r for r in site.call_block.reads if not r.source.same_as(columns)], whole_region(image.source),
                 whole_region(offset)]
        matched, first = site.call_block.match_buffers[1:2], site.at - 1
    else:
        fused = tirx.call_extern("void", f"{name}_rq", call.args[1], call.args[2], k, n,
                                 table.access_ptr("r") if stack is None else stack, out, strides[0], *constants,
                                 int(stack is not None))
        reads = [*site.call_block.reads, *[whole_region(b) for b in ((table, offset) if stack is None else (offset,))]]
        matched, first = site.call_block.match_buffers[:2], site.at
    new_block = s_tir.SBlock(site.call_block.iter_vars, reads, [whole_region(block.writes[0].source)],
                             site.call_block.name_hint, tirx.Evaluate(fused), None, site.call_block.alloc_buffers,
                             matched, site.call_block.annotations)
    realize = site.seq.seq[site.at]
    stmts = list(site.seq.seq)
    stmts[first:site.at + 2] = [s_tir.SBlockRealize(realize.iter_values, realize.predicate, new_block)]
    body = _replace_seq(func.body, site.seq, stmts)
    prepare = [tirx.call_extern("void", "edgebin_rq_table", grid.access_ptr("r"), _step(grid, n),
                                offset.access_ptr("r"), _step(offset, n), n, rq.m, rq.sh, rq.bias,
                                table.access_ptr("w") if stack is None else stack)]
    bound = rq.window << (32 - rq.f)
    if window is not None:
        prepare.append(tirx.call_extern("void", "edgebin_rq_spread_3x3", weights, n, rq.s, bound, stack))
    elif stack is not None:
        prepare.append(tirx.call_extern("void", "edgebin_rq_spread", weights, k, n, rq.s, bound, lanes, stack))
    if stack is not None:
        prepare.insert(0, tirx.call_extern("void", "edgebin_rq_stack_table", n * _spread_record(k)))
    root = body.block
    dropped = [acc] + ([columns] if window is not None else [])
    allocs = [b for b in root.alloc_buffers if not any(b.same_as(d) for d in dropped)]
    root = s_tir.SBlock(root.iter_vars, root.reads, root.writes, root.name_hint,
                        tirx.SeqStmt([*map(tirx.Evaluate, prepare), root.body]), root.init,
                        allocs + ([table] if stack is None else []), root.match_buffers, root.annotations)
    return func.with_body(s_tir.SBlockRealize(body.iter_values, body.predicate, root))


def _replace_seq(body, seq, stmts: list):
    """`body` with the statements of `seq` replaced by `stmts`; one statement in the loop that held `seq` (TVM
    refuses a SeqStmt of one, and a SeqStmt's map must give a SeqStmt)."""
    if len(stmts) > 1:
        return tvm_ffi.structural_map(body, (tirx.SeqStmt, lambda s: tirx.SeqStmt(stmts) if s.same_as(seq) else s))

    def loop(node):
        if not node.body.same_as(seq):
            return node
        return tirx.For(node.loop_var, node.min, node.extent, node.kind, stmts[0], node.thread_binding,
                        node.annotations, node.step)
    return tvm_ffi.structural_map(body, (tirx.For, loop))


def _spread_weights(call_block, k: int, n: int, info: dict[str, int], stride: int):
    """The address of the call's weights (n rows of k, the same every call) where its table can take the spread form
    (edgebin_rq_spread: the kernel's channel loop in asm, which takes a USAT or SSAT clip and adds two channels'
    output stride as an immediate), else None."""
    if ((k + 1) // 2 > SPREAD_PAIRS or 4 * n * _spread_record(k) > SPREAD_TABLE_BYTES or not 0 < stride < 2048
            or (info["lo"], info["hi"]) not in ((0, 255), (-128, 127))):
        return None
    region = call_block.match_buffers[1].source
    fixed = [(iv.var, iv.dom.min) for iv in call_block.iter_vars if int(iv.dom.extent) == 1]
    starts = [_substitute(r.min, fixed) for r in region.region]
    if any(collect(start, tirx.Var) for start in starts):  # weights that move from call to call
        return None
    return tirx.address_of(tirx.BufferLoad(region.source, starts))


def _spread_record(k: int) -> int:
    """Words of a channel's record in the spread form's table (edgebin_kernels.h, EDGEBIN_RECORD)."""
    return (k + 1) // 2 + 5


def _window_image(func, site: _Site, k: int, lanes: int):
    """(the image pixel at the call's first window, bytes an image row) where the call's 4 columns are 3x3 windows
    of one input channel on by one pixel, gathered without padding by the loop nest just before the call and read
    by nothing else: edgebin_conv3x3_*_rq reads them from the image itself. Else None."""
    if k != 9 or lanes != 4 or site.at == 0:
        return None
    loops, inner = _loop_nest(site.seq.seq[site.at - 1])
    store = inner.block.body if isinstance(inner, s_tir.SBlockRealize) else None
    columns = site.call_block.match_buffers[0].source
    if (not loops or not isinstance(store, tirx.BufferStore) or not store.buffer.same_as(columns.source)
            or not isinstance(store.value, TensorLoad) or not _only_gathered(func.body, store.buffer)):
        return None
    bound = list(zip([iv.var for iv in inner.block.iter_vars], inner.iter_values, strict=True))
    column = [_substitute(index, bound) for index in store.indices]
    image = store.value.source
    pixel = [_substitute(index, bound) for index in store.value.indices]
    realize = site.seq.seq[site.at]
    called = list(zip([iv.var for iv in site.call_block.iter_vars], realize.iter_values, strict=True))
    start = [_substitute(r.min, called) for r in columns.region]
    variables = [loop.loop_var for loop in loops]
    outer = [v for v in collect([*column, *pixel, *start], tirx.Var) if not any(v.same_as(u) for u in variables)]
    found = []
    for at in (0, 1):  # the outer loops at 0 (where the gather fills the call's columns), and at 1: the same shape
        fixed = [(v, at) for v in outer]
        first = _flat(column, store.buffer, fixed) if at else _flat(start, store.buffer, fixed)
        offsets = {}
        for point in itertools.product(*[range(int(loop.extent)) for loop in loops]):
            pairs = fixed + list(zip(variables, point, strict=True))
            where, source = _flat(column, store.buffer, pairs), _flat(pixel, image, pairs)
            if where is None or source is None or first is None:
                return None
            offsets[where - first] = source
        found.append(offsets)
    row = found[0].get(3, 0) - found[0].get(0, 0)
    expected = {9 * p + i: p + (i // 3) * row + i % 3 for p in range(4) for i in range(9)}
    if not 6 <= row < 2046:  # the kernel's rows are immediate offsets
        return None
    if any(sorted(offsets) != sorted(expected) or any(offsets[q] - offsets[0] != expected[q] for q in expected)
           for offsets in found):
        return None
    zero = [(v, tirx.const(0, prim_dtype(v))) for v in variables]
    return tirx.BufferLoad(image, [_substitute(i, zero) for i in pixel]), row


def _only_gathered(body, buffer) -> bool:
    """Whether `body` stores to `buffer` in one place (the gather) and reads it in one (the call's match buffer)."""
    stores = [s for s in collect(body, tirx.BufferStore) if s.buffer.same_as(buffer)]
    loads = [load for load in collect(body, TensorLoad) if load.source.same_as(buffer)]
    matched = [m for m in collect(body, s_tir.MatchBufferRegion) if m.source.source.same_as(buffer)]
    return len(stores) == 1 and not loads and len(matched) == 1


def _flat(indices: list, buffer, pairs: list) -> int | None:
    """The row-major element offset of `indices` into `buffer`, the variables of `pairs` set (others 0)."""
    values = [_evaluate(index, pairs) for index in indices]
    if None in values:
        return None
    shape = [int(d) for d in buffer.shape]
    return sum(v * int(np.prod(shape[i + 1:])) for i, v in enumerate(values))


def _step(buffer, n: int) -> int:
    """1 for a per-channel constant (n elements), 0 for one shared by all channels."""
    size = int(np.prod([int(d) for d in buffer.shape]))
    if size not in (1, n):
        raise ValueError(f"requant constant {buffer.name} has {size} elements for {n} channels")
    return int(size == n)


def _output_base(site: _Site) -> tuple[Any, tuple[int, int]]:
    """(the address of the epilogue's output at channel 0, lane 0 of the call, its (channel, lane) strides in
    elements), or (None, _) when the output index is not affine in the epilogue's loops."""
    block = site.realize.block
    store = block.body
    if not isinstance(store, tirx.BufferStore):
        return None, (0, 0)
    bound = list(zip([iv.var for iv in block.iter_vars], site.realize.iter_values, strict=True))
    indices = [_substitute(index, bound) for index in store.indices]
    base = [_substitute(index, [(loop.loop_var, tirx.const(0, prim_dtype(loop.loop_var))) for loop in site.loops])
            for index in indices]
    shape = [int(d) for d in store.buffer.shape]
    varying = [loop.loop_var for loop in site.loops if int(loop.extent) > 1] + [None]
    flat = []
    for point in ((0, 0), (1, 0), (0, 1), (1, 1)):  # the loops around the call at 0: only differences matter
        values = [_evaluate(index, list(zip(varying[:2], point, strict=True))) for index in indices]
        if None in values:
            return None, (0, 0)
        flat.append(sum(v * int(np.prod(shape[i + 1:])) for i, v in enumerate(values)))
    if flat[3] - flat[0] != (flat[1] - flat[0]) + (flat[2] - flat[0]):
        return None, (0, 0)
    return tirx.address_of(tirx.BufferLoad(store.buffer, base)), (flat[1] - flat[0], flat[2] - flat[0])


def _substitute(expr, pairs: list):
    """`expr` with each variable of `pairs` ((var, value)) replaced by its value."""
    def replace(var):
        return next((value for v, value in pairs if v is not None and v.same_as(var)), var)
    return tvm_ffi.structural_map(expr, (tirx.Var, replace))


_ARITH = {"Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b,
          "FloorDiv": lambda a, b: a // b, "FloorMod": lambda a, b: a % b}


def _evaluate(expr, pairs: list) -> int | None:
    """The integer value of an index expression, the variables of `pairs` ((var, int)) set, every other one 0;
    None for an operation it does not know."""
    if isinstance(expr, tirx.IntImm):
        return int(expr.value)
    if isinstance(expr, tirx.Var):
        return next((value for v, value in pairs if v is not None and v.same_as(expr)), 0)
    if isinstance(expr, tirx.Cast):
        return _evaluate(expr.value, pairs)
    op = _ARITH.get(type(expr).__name__)
    if op is None:
        return None
    a, b = _evaluate(expr.a, pairs), _evaluate(expr.b, pairs)
    return None if a is None or b is None else op(a, b)


# --- pad kernels fused into the convs that gather them (mcu_lower and the host) -----------------------


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

    @mutator
    class _CallGroups(PyExprMutator):
        def visit_call_(self, call):
            if call in pairs:
                name, pad_call = pairs[call]
                args = list(pad_call.args[1].fields) + list(call.args[1].fields)[1:]
                return relax.Call(groups[name], [self.visit_expr(arg) for arg in args])
            return super().visit_call_(call)

    mod["main"] = relax.analysis.remove_all_unused(_CallGroups(mod).visit_expr(mod["main"]))
    mod = tvm.transform.Sequential([
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
    if isinstance(expr, relax.Call) and call_op_name(expr) == "relax.call_tir":
        return expr.args[0], list(expr.args[1].fields)
    return None


def _is_int8_conv(record: dict[str, Any] | None) -> bool:
    return record is not None and record.get("kind") == "int8" and "conv2d" in record.get("ops", [])


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


def _block_names(sch) -> list[str]:
    return [sch.get(block).name_hint for block in sch.get_child_blocks(sch.get_sblock("root"))]


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


__all__ = ["MATVEC", "MATVEC_U8", "MICRO_KERNELS", "FusedRequant", "Relayout", "constant_arguments",
           "fuse_requant", "fused_requant_constants", "matvec_intrin", "plain_loops", "fuse_pads_into_convs",
           "is_matvec_call", "schedule_for_mcu", "schedule_kernel", "schedule_module", "uses_micro_kernel"]
