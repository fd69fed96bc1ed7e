"""Cortex-M: a low-bit weight times low-bit activations as bit-serial sums, where the export metadata says the
activations are narrow enough for that to take fewer instructions than the int8 (or LUT) micro-kernel.

    codes = activation_codes.codes_of(mod)           # what the importer read from the export metadata
    mod, records = pack_bitserial_weights(mod, codes)  # after schedule_for_mcu, before mcu_lut
    records[0]  # {"layer": "stack3.conv2", "kernel": "fused_conv2d6_requant6", "form": "bitserial",
                #  "weight_planes": 2, "activation_planes": 2, "weights": 36864, "planes_bytes": 9216, "reason": null}

The MCU schedule turned each int8 conv or gemm into a call of `edgebin_matvec{,2,4}_{s8,u8s8}(col, w, K, Cout,
acc)` with the int8 weight constant rows-first. A weight whose values are few and evenly spaced (binary, ternary,
2-3-bit QAT codes: `bitserial.weight_form`) can be given as bit planes; the kernel `edgebin_bs_matvec*`
(mcu_kernels/edgebin_bitserial.h) slices each input column into the bit planes it really uses and sums
coef · 2^a · popcount(weight plane & activation plane) over the pairs: its sums equal the int8 kernel's bit for bit,
for any input, and its work grows with weight planes × activation planes.

Which weights (the mode: `bitserial_kernels("auto" | "on" | "off")`, or EDGEBIN_BITSERIAL):
- `auto` (the default): a weight of a QAT layer whose export metadata gives its input a static code range
  [qmin, qmax] (`edgebin.layers`: "activation" qmin / qmax, no dynamic offset), matched to its kernel by the
  weight's values (`lut_weights.fingerprint`), where its reduction K >= MIN_K and weight planes × activation planes
  is at most MAX_PAIRS[columns of its call]: where the bit-serial kernel was measured to take fewer instructions
  than the int8 kernel (docs/bitserial.md; a W2A2 ResNet-8's one-column stack3 convs, 2.1 % fewer for the model);
- `on`: every weight with a bit-plane form, whatever its activations (to measure the kernel where it loses);
- `off`: none.
A layer the metadata names but which stays on the int8 / LUT path gets a record with the reason. Every call of a
kernel must take the bit-serial form (calls share the kernel's code), with the planes of the widest form.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from edgebin.compile import bitserial
from edgebin.compile.activation_codes import ActivationCodes
from edgebin.compile.lut_weights import fingerprint
from edgebin.compile.mcu_lut import _MCU_MATVEC, _calls, _matvec_call, _weight_param, _whole
from edgebin.compile.tvm_adapter import (
    GenericConst,
    PyExprMutator,
    call_op_name,
    collect,
    const,
    const_array,
    mutator,
    relax,
    s_tir,
    tirx,
    tvm,
    tvm_ffi,
    whole_region,
)
from edgebin.errors import UsageError

log = logging.getLogger(__name__)

HEADER = "edgebin_bitserial.h"  # mcu_kernels/: the bit-serial micro-kernels
MODES = ("auto", "on", "off")
_ENV_MODE = os.environ.get("EDGEBIN_BITSERIAL", "auto")  # checked where it is used: a bad value names the variable
MODE = contextvars.ContextVar("edgebin_bitserial", default=_ENV_MODE)
# `auto` takes a layer where weight planes x activation planes is at most this for its kernel's columns a call (1,
# 2, 4): the break-even of the bit-serial kernel against the int8 kernel on cortex-m4 at K = 144-576
# (docs/bitserial.md: 4 columns 0.93 at 2 pairs against 0.95, 2 columns 1.20 at 3 against 1.15, 1 column 1.35 at
# 4 against 1.37), and of a reduction of at least MIN_K: ResNet-8's 1x1 shortcuts (K = 16, 32) took 2-3 times the
# instructions of their int8 or LUT kernel (splitting a column costs the same for fewer rows of sums).
MAX_PAIRS = {4: 2, 2: 3, 1: 4}
MIN_K = 144


@contextlib.contextmanager
def bitserial_kernels(mode: str) -> Iterator[None]:
    """Within the block, Cortex-M bundles pick bit-serial kernels by `mode` ("auto", "on" or "off")."""
    check_mode(mode)
    token = MODE.set(mode)
    try:
        yield
    finally:
        MODE.reset(token)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UsageError(f"bit-serial mode must be one of {', '.join(MODES)}, got {mode!r} "
                         "(EDGEBIN_BITSERIAL or --bitserial)")
    return mode


# kernel -> (its bit-serial PrimFunc, the weight parameter, the planes all its calls take)
_Rewrites = dict[str, tuple[Any, int, int]]


def pack_bitserial_weights(mod, codes: list[ActivationCodes], mode: str | None = None,
                           max_pairs: dict[int, int] | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """(`mod` with the chosen weights as bit planes read by the bit-serial kernels, one record per metadata layer
    whose weight has a bit-plane form (and, mode "on", per other such weight)). Runs on `main`'s call_tir
    bindings after the MCU schedule."""
    mode = check_mode(MODE.get() if mode is None else mode)
    if mode == "off" or (mode == "auto" and not codes):
        return mod, []
    max_pairs = MAX_PAIRS if max_pairs is None else max_pairs
    by_print = {c.fingerprint: c for c in codes}
    calls: dict[str, list[tuple[list, dict[str, Any]]]] = defaultdict(list)  # kernel -> (arguments, record)
    for call in _calls(mod):
        name, args = call.args[0].name_hint, list(call.args[1].fields)
        param = _weight_param(mod[name])
        values = const_array(args[param]) if param is not None and isinstance(args[param], GenericConst) else None
        form = bitserial.weight_form(values) if values is not None else None
        if form is None:
            continue
        act = by_print.get(fingerprint(values))
        if act is None and mode == "auto":
            continue
        matvec = _matvec_call_of(mod[name])
        kernel, k = str(matvec.args[0].value), int(matvec.args[3])
        if not _MCU_MATVEC.fullmatch(kernel):  # a host row call (edgebin_matvec{t,c}_*): no bit-serial form
            continue
        columns = _columns(kernel)
        planes = _activation_planes(act, kernel.endswith("_s8")) if act is not None else None
        reason = None
        if mode == "auto" and k < MIN_K:
            reason = f"K = {k}: below the {MIN_K} at which bit-serial was measured to win (docs/bitserial.md)"
        elif mode == "auto" and form.planes * planes > max_pairs.get(columns, 0):
            reason = (f"{form.planes} weight x {planes} activation planes at {columns} column(s) a call: more than "
                      f"the {max_pairs.get(columns, 0)} pairs at which bit-serial beats the int8 kernel "
                      "(docs/bitserial.md)")
        calls[name].append((args, {"layer": act.layer if act else None, "kernel": name, "form": "bitserial",
                                   "weight_planes": form.planes, "activation_planes": planes,
                                   "weights": int(values.size), "planes_bytes": None, "reason": reason}))

    rewritten: _Rewrites = {}
    for name, found in calls.items():
        records = [record for _, record in found]
        reason = next((r["reason"] for r in records if r["reason"]), None)
        if reason is None and len(found) < _call_count(mod, name):
            reason = "its kernel is shared with layers that stay int8"
        func = None
        if reason is None:
            wb = max(r["weight_planes"] for r in records)
            func, reason = _bitserial_primfunc(mod[name], _weight_param(mod[name]), wb)
            if func is not None:
                rewritten[name] = (func, _weight_param(mod[name]), wb)
        for record in records:
            record.update(form="bitserial" if func is not None else "int8", reason=reason)
            if reason:
                log.info("%s: %d-plane weight stays on the int8 path (%s)", record["layer"] or name,
                         record["weight_planes"], reason)
    records = [record for found in calls.values() for _, record in found]
    if rewritten:
        mod = _rewrite_calls(mod, rewritten, records)
        log.info("Cortex-M: %d layer(s) run bit-serial (%s)", sum(r["form"] == "bitserial" for r in records),
                 ", ".join(sorted(rewritten)))
    return mod, records


def _columns(matvec: str) -> int:
    """Columns a call of the int8 micro-kernel takes: edgebin_matvec4_u8s8 -> 4, edgebin_matvec_s8 -> 1."""
    digits = re.fullmatch(r"edgebin_matvec(\d?)_\w+", matvec)
    return int(digits.group(1) or 1) if digits else 1


def _activation_planes(act: ActivationCodes, signed: bool) -> int:
    """The planes the kernel takes for the layer's inputs: from the metadata's code range, or all 8 where the int8
    graph holds the codes in another type than the range suggests."""
    try:
        return bitserial.activation_planes(act.qmin, act.qmax, signed)
    except ValueError:
        return 8


def _call_count(mod, name: str) -> int:
    return sum(call.args[0].name_hint == name for call in _calls(mod))


def _matvec_call_of(func):
    return next(_matvec_call(block) for block in collect(func.body, s_tir.SBlock) if _matvec_call(block) is not None)


def _bitserial_primfunc(func, param: int, wb: int) -> tuple[Any, str | None]:
    """(`func` reading bit planes and a form instead of its int8 weight parameter `param`, None), or (None, the
    reason it cannot): the weight must be read whole by exactly one micro-kernel call."""
    weight = func.params[param]
    sites = [block for block in collect(func.body, s_tir.SBlock) if _matvec_call(block) is not None]
    reads = [block for block in collect(func.body, s_tir.SBlock) if block.name_hint != "root"
             and any(region.source.same_as(weight) for region in [*block.reads, *block.writes])]
    if len(sites) != 1 or reads != sites:
        return None, "its micro-kernel call does not read the whole weight"
    site, call = sites[0], _matvec_call(sites[0])
    matched = [m for m in site.match_buffers if m.source.source.same_as(weight)]
    k, n = int(call.args[3]), int(call.args[4])
    if len(matched) != 1 or not _whole(matched[0].source, weight, site) \
            or k * n != int(np.prod([int(d) for d in weight.shape])):
        return None, "its micro-kernel call does not read the whole weight"
    words = n * wb * ((k + 31) // 32)
    i64 = "int64"
    planes = tirx.decl_buffer((tirx.IntImm(i64, words),), "uint32", name=f"{weight.name}_planes")
    form = tirx.decl_buffer((tirx.IntImm(i64, 2 + wb),), "int32", name=f"{weight.name}_form")

    def rewrite(block):
        if not block.same_as(site):
            return block
        args = list(call.args)
        bs_call = tirx.call_extern("void", bitserial.kernel_name(str(args[0].value)), args[1],
                                   planes.access_ptr("r"), form.access_ptr("r"), *args[3:])
        reads = [region for region in block.reads if not region.source.same_as(weight)]
        reads += [whole_region(planes), whole_region(form)]
        return s_tir.SBlock(block.iter_vars, reads, block.writes, block.name_hint, tirx.Evaluate(bs_call),
                            block.init, block.alloc_buffers,
                            [m for m in block.match_buffers if not m.same_as(matched[0])], block.annotations)

    body = tvm_ffi.structural_map(func.body, (s_tir.SBlock, rewrite))
    params = [*func.params[:param], planes, form, *func.params[param + 1:]]
    return tirx.PrimFunc(params, body, func.ret_type, func.attrs), None


def widened(form: bitserial.BitForm, wb: int) -> bitserial.BitForm:
    """`form` with `wb` planes: the planes it lacks are all zero bits, so any coefficient keeps the sums."""
    extra = tuple(form.coef[0] << t for t in range(form.planes, wb))
    return replace(form, planes=wb, coef=(*form.coef, *extra))


def _rewrite_calls(mod, rewritten: _Rewrites, records: list[dict[str, Any]]):
    """`mod` with the rewritten kernels under fresh GlobalVars and their calls passing planes and form constants
    in place of the int8 weight; the records of packed layers get their planes' bytes."""
    functions = {gvar: func for gvar, func in mod.functions.items() if gvar.name_hint not in rewritten}
    builder = relax.BlockBuilder(tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos))
    fresh = {name: builder.add_func(func, name) for name, (func, *_) in rewritten.items()}
    pending = {name: [r for r in records if r["kernel"] == name] for name in rewritten}

    @mutator
    class _PassPlanes(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call_op_name(call) != "relax.call_tir" or call.args[0].name_hint not in rewritten:
                return call
            name, args = call.args[0].name_hint, list(call.args[1].fields)
            _, param, wb = rewritten[name]
            values = const_array(args[param])
            rows = values.reshape(values.shape[0], -1)
            form = widened(bitserial.weight_form(values), wb)
            planes = bitserial.pack_planes(rows, form)
            pending[name].pop(0)["planes_bytes"] = int(planes.nbytes)
            args[param:param + 1] = [const(planes), const(form.constant())]
            return relax.Call(call.op, [fresh[name], relax.Tuple(args), *call.args[2:]], call.attrs, call.ty_args)

    new = builder.get()
    new["main"] = _PassPlanes(new).visit_expr(mod["main"])
    return new


def is_bitserial_call(name: str) -> bool:
    return name.startswith("edgebin_bs_")


__all__ = ["HEADER", "MAX_PAIRS", "MODES", "bitserial_kernels", "check_mode", "is_bitserial_call",
           "pack_bitserial_weights", "widened"]
