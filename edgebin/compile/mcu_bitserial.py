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
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from edgebin.compile import bitserial
from edgebin.compile.activation_codes import ActivationCodes
from edgebin.compile.lut_weights import fingerprint
from edgebin.compile.mcu_lut import (
    _MCU_MATVEC,
    _calls,
    _matvec_call,
    _weight_param,
    swap_weight_call,
    swap_weight_constants,
    weight_site,
)
from edgebin.compile.tvm_adapter import GenericConst, collect, const_array, s_tir, tirx
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
                         "(compile_bundle bitserial=, or EDGEBIN_BITSERIAL)")
    return mode


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
    counts = Counter(call.args[0].name_hint for call in _calls(mod))
    params = {name: _weight_param(mod[name]) for name in counts}  # the weight its one micro-kernel call reads
    matvecs = {name: next(_matvec_call(b) for b in collect(mod[name].body, s_tir.SBlock)
                      if _matvec_call(b) is not None)
               for name, param in params.items() if param is not None}  # that call
    records: dict[str, list[dict[str, Any]]] = defaultdict(list)  # kernel -> one record per call, main's order
    for call in _calls(mod):
        name, args = call.args[0].name_hint, list(call.args[1].fields)
        param = params[name]
        if param is None or not isinstance(args[param], GenericConst):
            continue
        values = const_array(args[param])
        form, act = bitserial.weight_form(values), by_print.get(fingerprint(values))
        kernel, k = str(matvecs[name].args[0].value), int(matvecs[name].args[3])
        if form is None or (act is None and mode == "auto") or not _MCU_MATVEC.fullmatch(kernel):
            continue  # not low-bit, not a metadata layer, or a host row call (edgebin_matvec{t,c}_*)
        planes = _activation_planes(act, kernel.endswith("_s8")) if act is not None else None
        records[name].append({"layer": act.layer if act else None, "kernel": name, "form": "bitserial",
                              "weight_planes": form.planes, "activation_planes": planes, "weights": int(values.size),
                              "planes_bytes": None,
                              "reason": _why_not(form.planes, planes, k, _columns(kernel), max_pairs)
                              if mode == "auto" else None})

    rewritten: dict[str, tuple[Any, int]] = {}  # kernel -> (its bit-serial PrimFunc, the weight parameter)
    widths: dict[str, int] = {}  # kernel -> the planes all its calls take
    for name, found in records.items():
        reason = next((r["reason"] for r in found if r["reason"]), None)
        if reason is None and len(found) < counts[name]:
            reason = "its kernel is shared with layers that stay int8"
        if reason is None:
            site = weight_site(mod[name], params[name])
            reason = site if isinstance(site, str) else None
        if reason is None:
            widths[name] = max(r["weight_planes"] for r in found)
            rewritten[name] = (_bitserial_primfunc(mod[name], params[name], site, widths[name]), params[name])
        for record in found:
            record.update(form="int8" if reason else "bitserial", reason=reason)
            if reason:
                log.info("%s: %d-plane weight stays on the int8 path (%s)", record["layer"] or name,
                         record["weight_planes"], reason)
    if rewritten:
        pending = {name: list(records[name]) for name in rewritten}

        def planes_and_form(name: str, values: np.ndarray) -> list[np.ndarray]:
            form = widened(bitserial.weight_form(values), widths[name])
            planes = bitserial.pack_planes(values.reshape(values.shape[0], -1), form)
            pending[name].pop(0)["planes_bytes"] = int(planes.nbytes)
            return [planes, form.constant()]

        mod = swap_weight_constants(mod, rewritten, planes_and_form)
        log.info("Cortex-M: %d layer(s) run bit-serial (%s)", sum(len(records[name]) for name in rewritten),
                 ", ".join(sorted(rewritten)))
    return mod, [record for found in records.values() for record in found]


def _why_not(weight_planes: int, planes: int, k: int, columns: int, max_pairs: dict[int, int]) -> str | None:
    """Why `auto` leaves a layer to the int8 or LUT kernel, or None when bit-serial is measured to win there."""
    if k < MIN_K:
        return f"K = {k}: below the {MIN_K} at which bit-serial was measured to win (docs/bitserial.md)"
    if weight_planes * planes > max_pairs.get(columns, 0):
        return (f"{weight_planes} weight x {planes} activation planes at {columns} column(s) a call: more than the "
                f"{max_pairs.get(columns, 0)} pairs at which bit-serial beats the int8 kernel (docs/bitserial.md)")
    return None


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


def _bitserial_primfunc(func, param: int, site: tuple, wb: int):
    """`func` reading bit planes (`wb` a row) and a form instead of its int8 weight parameter `param`, which its one
    micro-kernel call `site` (mcu_lut.weight_site) reads whole."""
    block, matched, call, k, n = site
    weight = func.params[param]
    i64 = "int64"
    planes = tirx.decl_buffer((tirx.IntImm(i64, n * wb * bitserial.plane_words(k)),), "uint32",
                              name=f"{weight.name}_planes")
    form = tirx.decl_buffer((tirx.IntImm(i64, 2 + wb),), "int32", name=f"{weight.name}_form")
    body = swap_weight_call(func.body, block, matched, [planes, form], bitserial.kernel_name(str(call.args[0].value)))
    params = [*func.params[:param], planes, form, *func.params[param + 1:]]
    return tirx.PrimFunc(params, body, func.ret_type, func.attrs)


def widened(form: bitserial.BitForm, wb: int) -> bitserial.BitForm:
    """`form` with `wb` planes: the planes it lacks are all zero bits, so any coefficient keeps the sums."""
    extra = tuple(form.coef[0] << t for t in range(form.planes, wb))
    return replace(form, planes=wb, coef=(*form.coef, *extra))


__all__ = ["HEADER", "MAX_PAIRS", "MIN_K", "MODES", "bitserial_kernels", "check_mode", "pack_bitserial_weights",
           "widened"]
