"""Cortex-M: table-coded (NUPES) weights stay packed at b bits, decoded through their table inside the micro-kernel.

    mod, layers = pack_lut_weights(mod, lut_weights.tables_of(imported))  # after schedule_for_mcu (mcu_lower)
    layers[0]  # {"layer": "c1", "bits": 4, "form": "lut4", "kernel": "fused_conv2d1_requant1", "codes_bytes": 291,
               #  "table_bytes": 16, "weights": 576, "reason": null}

The importer folded each table-coded weight to its int8 values (`lut_weights`), so the MCU schedule turned its conv
or gemm into a call of the int8 micro-kernel `edgebin_matvec{,2,4}_{s8,u8s8}(col, w, K, Cout, acc)` reading the
weight constant rows-first, (Cout, K). Here, for each kernel whose weight constant has exactly the values of one
recorded table's weight (same multiset: `lut_weights.match_table`), the codes are recovered by inverse lookup
(correct by value equality, whichever code a repeated level had) and

- in `main`, the int8 constant becomes the codes packed at b bits (`lut_weights.pack_codes`: rows of
  ceil(K b / 8) bytes, 3 bytes of padding after the last row, which the kernel may read), followed by the table
  (int8, 2^b entries, zero-padded): both are weights in flash, counted in bundle.json's `weights_bytes`;
- in the kernel, the weight parameter becomes those two buffers and the call
  `edgebin_lut{b}_matvec{,2,4}_{s8,u8s8}(col, codes, table, K, Cout, acc)` (mcu_kernels/edgebin_lut.h), whose sums
  are those of the int8 call bit for bit.

A layer stays int8, logged and recorded with its reason, when its kernel has no micro-kernel call (plain loops:
a depthwise conv), when b = 8 (the codes would take as much flash as the int8 weight), or when its int8 weight is
not a kernel constant any more.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from typing import Any

import numpy as np

from edgebin.compile.lut_weights import LutTable, match_table, pack_codes, row_bytes
from edgebin.compile.tvm_adapter import (
    GenericConst,
    IRCall,
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
)

log = logging.getLogger(__name__)

HEADER = "edgebin_lut.h"  # mcu_kernels/: the LUT micro-kernels
PACKED_BITS = range(2, 8)  # b = 8 codes take a byte each, as the int8 weight: nothing to gain
CODES_PADDING = 3  # bytes after the last row: the kernel loads whole words
_MCU_MATVEC = re.compile(r"edgebin_matvec[24]?_(s8|u8s8)")  # the int8 micro-kernels a LUT kernel replaces


def lut_kernel(matvec: str, bits: int) -> str:
    """`edgebin_matvec2_u8s8`, 4 -> `edgebin_lut4_matvec2_u8s8`."""
    return f"edgebin_lut{bits}_{matvec.removeprefix('edgebin_')}"


def pack_lut_weights(mod, tables: list[LutTable]) -> tuple[Any, list[dict[str, Any]]]:
    """(`mod` with every table-coded weight its micro-kernel reads packed, one record per table: packed ("lutB")
    or left int8 with the reason). Runs on `main`'s call_tir bindings, after the MCU schedule."""
    if not tables:
        return mod, []
    uses: dict[str, list[tuple[int | None, LutTable | None]]] = defaultdict(list)  # kernel -> per call
    for call in _calls(mod):
        name, args = call.args[0].name_hint, list(call.args[1].fields)
        hits = [(i, match_table(const_array(arg), tables)) for i, arg in enumerate(args)
                if isinstance(arg, GenericConst)]
        hits = [(i, table) for i, table in hits if table is not None]
        uses[name].append(hits[0] if len(hits) == 1 else (None, None))

    records: dict[str, dict[str, Any]] = {}
    rewritten: dict[str, tuple[Any, int]] = {}  # kernel -> (new PrimFunc, weight parameter)
    for name, found in uses.items():
        matched = [table for _, table in found if table is not None]
        if not matched:
            continue
        params, bits = {param for param, _ in found}, {table.bits for table in matched}
        reason = None
        if len(matched) < len(found) or len(params) != 1 or len(bits) != 1:
            reason = "its kernel is shared with layers of other weights"
        elif matched[0].bits not in PACKED_BITS:
            reason = f"{matched[0].bits}-bit codes take as much flash as the int8 weight"
        else:
            func, reason = _lut_primfunc(mod[name], next(iter(params)), matched[0].bits)
            if func is not None:
                rewritten[name] = (func, next(iter(params)))
        for table in matched:
            records[table.layer] = _record(table, name, reason)
    for table in tables:
        records.setdefault(table.layer, _record(table, None, "its int8 weight is not a constant of any kernel"))
    for record in records.values():
        if record["form"] == "int8":
            log.info("%s: %d-bit table-coded weight runs as int8 (%s)", record["layer"], record["bits"],
                     record["reason"])
    if rewritten:
        mod = _rewrite_calls(mod, rewritten, tables, records)
    return mod, [records[table.layer] for table in tables]


def _record(table: LutTable, kernel: str | None, reason: str | None) -> dict[str, Any]:
    return {"layer": table.layer, "bits": table.bits, "form": "int8" if reason else f"lut{table.bits}",
            "kernel": kernel, "weights": table.size, "codes_bytes": None, "table_bytes": None, "reason": reason}


def _calls(mod) -> list:
    return [call for call in collect(mod["main"].body, relax.Call) if call_op_name(call) == "relax.call_tir"]


def packed_constants(values: np.ndarray, table: LutTable) -> tuple[np.ndarray, np.ndarray]:
    """(codes, table) constants for a weight read rows-first, values (Cout, ...): codes packed per row plus
    CODES_PADDING bytes, the levels zero-padded to 2^b."""
    rows = np.asarray(values).reshape(values.shape[0], -1)
    codes = table.codes_for(rows)
    assert codes is not None, f"{table.layer}: a weight that matched its table has a value outside it"
    packed = np.concatenate([pack_codes(codes, table.bits).reshape(-1), np.zeros(CODES_PADDING, np.uint8)])
    levels = np.zeros(1 << table.bits, np.int8)
    levels[:len(table.levels)] = table.levels
    return packed, levels


def _rewrite_calls(mod, rewritten: dict[str, tuple[Any, int]], tables: list[LutTable],
                   records: dict[str, dict[str, Any]]):
    """`mod` with the rewritten kernels under fresh GlobalVars (a GlobalVar keeps the signature it was made with)
    and their calls passing the packed codes and the table instead of the int8 weight."""
    functions = {gvar: func for gvar, func in mod.functions.items() if gvar.name_hint not in rewritten}
    builder = relax.BlockBuilder(tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos))
    fresh = {name: builder.add_func(func, name) for name, (func, _) in rewritten.items()}

    @mutator
    class _PassCodes(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call_op_name(call) != "relax.call_tir" or call.args[0].name_hint not in rewritten:
                return call
            name, args = call.args[0].name_hint, list(call.args[1].fields)
            _, param = rewritten[name]
            values = const_array(args[param])
            table = match_table(values, tables)
            codes, levels = packed_constants(values, table)
            records[table.layer].update(codes_bytes=int(codes.nbytes), table_bytes=int(levels.nbytes))
            args[param:param + 1] = [const(codes), const(levels)]
            return relax.Call(call.op, [fresh[name], relax.Tuple(args), *call.args[2:]], call.attrs, call.ty_args)

    new = builder.get()
    new["main"] = _PassCodes(new).visit_expr(mod["main"])
    return new


# --- the kernel -----------------------------------------------------------------------------------------------


def _lut_primfunc(func, param: int, bits: int) -> tuple[Any, str | None]:
    """(`func` reading codes and table instead of its int8 weight parameter `param`, None), or (None, the reason it
    cannot): the weight must be read by exactly one micro-kernel call, whole."""
    weight = func.params[param]
    sites = [block for block in collect(func.body, s_tir.SBlock) if _matvec_call(block) is not None]
    if not sites:
        return None, "its kernel keeps plain loops (no matvec micro-kernel: a depthwise conv, or a shape it skips)"
    reads = [block for block in collect(func.body, s_tir.SBlock) if block.name_hint != "root"
             and any(region.source.same_as(weight) for region in [*block.reads, *block.writes])]
    site = sites[0]
    matched = [m for m in site.match_buffers if m.source.source.same_as(weight)]
    call = _matvec_call(site)
    if len(sites) != 1 or reads != [site] or len(matched) != 1 or not _whole(matched[0].source, weight, site):
        return None, "its micro-kernel call does not read the whole weight"
    k, n = int(call.args[3]), int(call.args[4])
    if k * n != int(np.prod([int(d) for d in weight.shape])):
        return None, "its micro-kernel call does not read the whole weight"
    if not _points_into(call.args[2], matched[0].buffer):
        return None, "its micro-kernel call does not read the weight through its match buffer"
    i64 = "int64"
    codes = tirx.decl_buffer((tirx.IntImm(i64, n * row_bytes(k, bits) + CODES_PADDING),), "uint8",
                             name=f"{weight.name}_codes")
    table = tirx.decl_buffer((tirx.IntImm(i64, 1 << bits),), "int8", name=f"{weight.name}_table")

    def rewrite(block):
        if not block.same_as(site):
            return block
        args = list(call.args)
        lut_call = tirx.call_extern("void", lut_kernel(str(args[0].value), bits), args[1], codes.access_ptr("r"),
                                    table.access_ptr("r"), *args[3:])
        reads = [region for region in block.reads if not region.source.same_as(weight)]
        reads += [_whole_region(codes), _whole_region(table)]
        return s_tir.SBlock(block.iter_vars, reads, block.writes, block.name_hint, tirx.Evaluate(lut_call),
                            block.init, block.alloc_buffers, [m for m in block.match_buffers if m is not matched[0]
                                                              and not m.same_as(matched[0])], block.annotations)

    body = tvm_ffi.structural_map(func.body, (s_tir.SBlock, rewrite))
    params = [*func.params[:param], codes, table, *func.params[param + 1:]]
    return tirx.PrimFunc(params, body, func.ret_type, func.attrs), None


def _matvec_call(block):
    """The `edgebin_matvec{,2,4}_{s8,u8s8}` call_extern that is the whole body of `block`, else None."""
    body = block.body
    if not isinstance(body, tirx.Evaluate) or not isinstance(body.value, IRCall):
        return None
    call = body.value
    if not str(getattr(call.op, "name", "")).endswith("call_extern"):
        return None
    return call if _MCU_MATVEC.fullmatch(str(call.args[0].value)) else None


def _points_into(ptr, buffer) -> bool:
    """True when `ptr` is `T.tvm_access_ptr(.., buffer.data, ..)`."""
    data = ptr.args[1] if isinstance(ptr, IRCall) and len(ptr.args) > 1 else None
    return isinstance(data, IRCall) and len(data.args) == 1 and data.args[0].same_as(buffer)


def _whole(region, buffer, block) -> bool:
    """True when `region` covers all of `buffer`: each range starts at 0 (a constant, or an axis of `block` whose
    only value is 0: a 1x1 conv's unit reduction axes) and spans the buffer's extent."""
    zeros = [iv.var for iv in block.iter_vars if isinstance(iv.dom.min, tirx.IntImm) and int(iv.dom.min) == 0
             and isinstance(iv.dom.extent, tirx.IntImm) and int(iv.dom.extent) == 1]
    for r, extent in zip(region.region, buffer.shape, strict=True):
        start = isinstance(r.min, tirx.IntImm) and int(r.min) == 0 or any(r.min.same_as(v) for v in zeros)
        if not start or not isinstance(r.extent, tirx.IntImm) or int(r.extent) != int(extent):
            return False
    return True


def _whole_region(buffer):
    zero = tirx.IntImm("int64", 0)
    return buffer[tuple(slice(zero, extent) for extent in buffer.shape)]


__all__ = ["HEADER", "PACKED_BITS", "lut_kernel", "pack_lut_weights", "packed_constants"]
