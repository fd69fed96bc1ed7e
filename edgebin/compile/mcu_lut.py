"""Low-bit weights stay packed at b bits, decoded through a table of int8 levels in the kernel: in Cortex-M bundles
(mcu_lower) by the LUT micro-kernel, in the LLVM targets' libraries (x86 host, Cortex-A; host.pack_low_bit_weights,
`decode`) once per run of the kernel.

    mod, layers = pack_lut_weights(mod, lut_weights.tables_of(imported), palette=True)  # after schedule_for_mcu
    layers[0]  # {"layer": "c1", "bits": 4, "form": "lut4", "source": "nupes", "kernel": "fused_conv2d1_requant1",
               #  "codes_bytes": 291, "table_bytes": 16, "weights": 576, "reason": null}
    census = lut_census(census, layers)  # the packed kernels' kind "lut4", the others' weights "int8 (lut4)"

The MCU schedule turned each int8 conv or gemm into a call of the int8 micro-kernel
`edgebin_matvec{,2,4}_{s8,u8s8}(col, w, K, Cout, acc)` reading its weight constant rows-first, (Cout, K); the
host's schedule (row_calls) into that call for a gemm, and `edgebin_matvect_*(.., P, S)` or
`edgebin_matvecc_*(.., P, S, kh, kw, cs, rs)`, the same w, K and Cout, for a conv's row of pixels. Two kinds of weight
go back to codes into a table:

- **table-coded (NUPES)** weights, `"source": "nupes"`: the importer folded them to int8 (`lut_weights`); a kernel
  whose weight constant has exactly the values of one recorded table's weight (same multiset:
  `lut_weights.match_table`) gets the codes back by inverse lookup, at the table's b;
- **palettes**, `"source": "palette"` (with `palette`, the Cortex-M and host default): any other int8 weight
  constant of a matvec kernel with at most 16 distinct values, as QAT exports them (StatsQ / LSQ W4: 16 values, W2
  and ternary: 4 and 3, binary weights: 2), becomes codes into its sorted distinct values at the smallest b of 2, 3,
  4 that holds them (`palette_table`), when the flash this saves, the int8 weight less the codes and the table, is
  at least `min_saving` bytes: on Cortex-M `PALETTE_MIN_SAVING`, about the most code a LUT kernel was measured to
  add (docs/lut-weights.md); on the host 1 (any saving), as its decode is one function for all layers.

Correct by value equality either way (whichever code a repeated level had). For each such kernel

- in `main`, the int8 constant becomes the codes packed at b bits (`lut_weights.pack_codes`: rows of
  ceil(K b / 8) bytes, 3 bytes of padding after the last row, which the kernel may read), followed by the table
  (int8, 2^b entries, zero-padded): both are weights in flash, counted in bundle.json's (artefact.json's)
  `weights_bytes`;
- in the kernel, the weight parameter becomes those two buffers, and the call
  `edgebin_lut{b}_matvec{,2,4}_{s8,u8s8}(col, codes, table, K, Cout, acc)` (mcu_kernels/edgebin_lut.h), whose sums
  are those of the int8 call bit for bit; or, with `decode` (the host, where RAM is no concern and the calls are
  many: one per row of output pixels), the weight becomes a buffer of the kernel that
  `edgebin_lut{b}_decode(codes, table, K, Cout, w)` (cpu_kernels/edgebin_cpu_lut.c) fills at its start, and the int8
  calls stay as they were.

A weight stays int8, logged and recorded with its reason, when its kernel has no micro-kernel call (plain loops:
a depthwise conv; a palette is only looked for in kernels with one), when b = 8 (the codes would take as much flash
as the int8 weight) or b is not one of `bits` (the host decodes 2 to 4), when its int8 weight is not a kernel
constant any more, or (palettes) when packing saves less than `min_saving` bytes. A palette record's `layer` is
null here; bundle.json names it (mcu_manifest).
`palette_weights(False)`, `palette=False` or EDGEBIN_PALETTE=0 leave every palette int8 (and unrecorded).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterator
from typing import Any

import numpy as np

from edgebin.compile.lut_weights import LutTable, fingerprint, match_table, pack_codes, row_bytes
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
    whole_region,
)

log = logging.getLogger(__name__)

HEADER = "edgebin_lut.h"  # mcu_kernels/: the LUT micro-kernels
PACKED_BITS = range(2, 8)  # b = 8 codes take a byte each, as the int8 weight: nothing to gain
HOST_BITS = (2, 3, 4)  # the b that cpu_kernels/edgebin_cpu_lut.c decodes (the LLVM targets: 2- to 4-bit weights)
PALETTE_BITS = (2, 3, 4)  # a palette of up to 16 values; more (an 8-bit layer) stays int8
# A palette is packed only when it saves at least this much flash (int8 bytes - codes - table): each LUT kernel's
# loops are inlined into its conv or gemm kernel in place of the int8 kernel's, -0.6 to +0.4 KB of code per kernel
# at ResNet-8's shapes and up to +1.0 KB at K = 72 on cortex-m4 (docs/lut-weights.md, "Code a LUT kernel adds").
# The first packed layer also adds its table of pairs to RAM (.bss: 1 KB at b = 3, 4; 2 KB at b = 2), not weighed.
PALETTE_MIN_SAVING = 1024
# Palettes packed or not (the Cortex-M and host builds' default); EDGEBIN_PALETTE=0 switches them off for a run,
# `with palette_weights(False):` for a block, `compile_bundle(..., palette=False)` for one bundle.
PALETTE = contextvars.ContextVar("edgebin_palette", default=os.environ.get("EDGEBIN_PALETTE", "1") != "0")
CODES_PADDING = 3  # bytes after the last row: the kernel loads whole words
_MCU_MATVEC = re.compile(r"edgebin_matvec[24]?_(s8|u8s8)")  # the int8 micro-kernels a LUT kernel replaces
# The int8 micro-kernels whose weight can be packed: those, and the host's for a row of pixels, edgebin_matvec{t,c}_*
# (whose weight `decode` packs: the LUT kernels take Cortex-M's call forms only).
_MATVEC = re.compile(r"edgebin_matvec[24tc]?_(s8|u8s8)")


@contextlib.contextmanager
def palette_weights(on: bool = True) -> Iterator[None]:
    """Within the block, Cortex-M bundles and host libraries pack (or, off, leave int8) the int8 weights with at most
    16 values."""
    token = PALETTE.set(on)
    try:
        yield
    finally:
        PALETTE.reset(token)


def lut_kernel(matvec: str, bits: int) -> str:
    """`edgebin_matvec2_u8s8`, 4 -> `edgebin_lut4_matvec2_u8s8`."""
    return f"edgebin_lut{bits}_{matvec.removeprefix('edgebin_')}"


def palette_table(values: np.ndarray, name: str = "", min_bits: int = PALETTE_BITS[0]) -> LutTable | None:
    """The table of an int8 weight's distinct values, sorted, at the smallest b >= `min_bits` of PALETTE_BITS that
    holds them (2^b entries: no zero level is needed, the kernel reads only codes of weights), or None: not int8, or
    more than 16 values."""
    values = np.asarray(values)
    if values.dtype != np.int8 or not values.size:
        return None
    levels = np.unique(values)
    bits = next((b for b in PALETTE_BITS if b >= min_bits and len(levels) <= 1 << b), None)
    if bits is None:
        return None
    return LutTable(name, bits, tuple(int(v) for v in levels), tuple(values.shape), fingerprint(values))


def packed_bytes(table: LutTable, k: int, n: int) -> int:
    """Flash of a weight packed for the LUT kernel: n rows of k codes, the padding and the 2^b-entry table."""
    return n * row_bytes(k, table.bits) + CODES_PADDING + (1 << table.bits)


# kernel -> (its LUT PrimFunc, the weight parameter, {weight fingerprint: [(table, record) of each call]})
_Rewrites = dict[str, tuple[Any, int, dict[str, list[tuple[LutTable, dict[str, Any]]]]]]


def pack_lut_weights(mod, tables: list[LutTable], *, palette: bool = False, min_saving: int | None = None,
                     bits: Collection[int] = PACKED_BITS, decode: bool = False) -> tuple[Any, list[dict[str, Any]]]:
    """(`mod` with every low-bit weight its micro-kernel reads packed, one record per table-coded weight, then one
    per palette weight of a matvec kernel's call: packed ("lutB") or left int8 with the reason). Runs on `main`'s
    call_tir bindings, after the MCU schedule (or the host's). `palette`: also pack int8 weights of at most 16 values
    where the calls of their kernel save at least `min_saving` bytes of flash (None: PALETTE_MIN_SAVING). `bits`:
    the code widths the target's LUT kernels take (HOST_BITS on the host). `decode` (the host): each packed kernel
    decodes its weight once at its start and keeps its int8 micro-kernel calls (`_decoded_at_start`)."""
    if not tables and not palette:
        return mod, []
    min_saving = PALETTE_MIN_SAVING if min_saving is None else min_saving
    uses: dict[str, list[tuple[int | None, LutTable | None]]] = defaultdict(list)  # kernel -> per call
    arguments: dict[str, list[list]] = defaultdict(list)  # kernel -> each call's arguments
    for call in _calls(mod):
        name, args = call.args[0].name_hint, list(call.args[1].fields)
        hits = [(i, match_table(const_array(arg), tables)) for i, arg in enumerate(args)
                if isinstance(arg, GenericConst)] if tables else []
        hits = [(i, table) for i, table in hits if table is not None]
        uses[name].append(hits[0] if len(hits) == 1 else (None, None))
        arguments[name].append(args)

    records: dict[str, dict[str, Any]] = {}  # table-coded layer -> record
    palettes: list[dict[str, Any]] = []
    rewritten: _Rewrites = {}
    for name, found in uses.items():
        matched = [table for _, table in found if table is not None]
        if not matched:
            if palette:
                palettes += _pack_palettes(mod[name], name, arguments[name], min_saving, rewritten, decode)
            continue
        params, widths = {param for param, _ in found}, {table.bits for table in matched}
        reason, func = None, None
        if len(matched) < len(found) or len(params) != 1 or len(widths) != 1:
            reason = "its kernel is shared with layers of other weights"
        elif matched[0].bits not in PACKED_BITS:
            reason = f"{matched[0].bits}-bit codes take as much flash as the int8 weight"
        elif matched[0].bits not in bits:
            reason = f"this target packs {min(bits)}- to {max(bits)}-bit codes"
        else:
            func, reason, _ = _lut_primfunc(mod[name], next(iter(params)), matched[0].bits, decode)
        for table in matched:
            records[table.layer] = _record(table, name, reason, "nupes")
        if func is not None:
            rewritten[name] = (func, next(iter(params)), _entries([(t, records[t.layer]) for t in matched]))
    for table in tables:
        records.setdefault(table.layer, _record(table, None, "its int8 weight is not a constant of any kernel",
                                                "nupes"))
    for record in [*records.values(), *palettes]:
        if record["form"] == "int8":
            log.info("%s: %d-bit %s weight runs as int8 (%s)", record["layer"] or record["kernel"], record["bits"],
                     "palette" if record["source"] == "palette" else "table-coded", record["reason"])
    if palettes:
        packed = [r for r in palettes if r["form"] != "int8"]
        log.info("%d of %d int8 weight(s) with at most 16 values packed (%s)", len(packed), len(palettes),
                 ", ".join(f"{r['kernel']} {r['form']}" for r in packed) or "none saves enough flash")
    if rewritten:
        mod = _rewrite_calls(mod, rewritten)
    return mod, [*(records[table.layer] for table in tables), *palettes]


def _pack_palettes(func, name: str, calls: list[list], min_saving: int, rewritten: _Rewrites,
                   decode: bool) -> list[dict[str, Any]]:
    """The records of kernel `name`'s palette weights, one per call, packed (into `rewritten`) or int8 with the
    reason; none when its micro-kernel's weight is not an int8 constant of at most 16 values in every call. Calls
    of one kernel share its code, so they take one b (the largest they need) and one saving."""
    param = _weight_param(func)
    if param is None or not all(isinstance(args[param], GenericConst) for args in calls):
        return []
    weights = [const_array(args[param]) for args in calls]
    found = [palette_table(values) for values in weights]
    if any(table is None for table in found):
        return []
    bits = max(table.bits for table in found)
    found = [palette_table(values, min_bits=bits) for values in weights]
    lut_func, reason, shape = _lut_primfunc(func, param, bits, decode)
    if lut_func is not None:
        saving = sum(table.size - packed_bytes(table, *shape) for table in found)
        if saving < min_saving:  # (on the host, min_saving 1: the packed weight is no smaller)
            lut_func, reason = None, (f"packing saves {saving} B of flash, less than the {min_saving} B of code a "
                                      "LUT kernel may add" if min_saving > 1 else
                                      f"the codes and table are no smaller than the int8 weight (saves {saving} B)")
    records = [_record(table, name, reason, "palette") for table in found]
    if lut_func is not None:
        rewritten[name] = (lut_func, param, _entries(list(zip(found, records, strict=True))))
    return records


def _entries(pairs: list[tuple[LutTable, dict[str, Any]]]) -> dict[str, list[tuple[LutTable, dict[str, Any]]]]:
    """{fingerprint: [(table, record), ...]}: how a call's weight finds its table and record when it is rewritten."""
    found: dict[str, list[tuple[LutTable, dict[str, Any]]]] = defaultdict(list)
    for table, record in pairs:
        found[table.fingerprint].append((table, record))
    return dict(found)


def _record(table: LutTable, kernel: str | None, reason: str | None, source: str) -> dict[str, Any]:
    return {"layer": table.layer or None, "bits": table.bits, "form": "int8" if reason else f"lut{table.bits}",
            "source": source, "kernel": kernel, "weights": table.size, "codes_bytes": None, "table_bytes": None,
            "reason": reason}


def lut_census(census: list[dict[str, Any]], lut_layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Census records with the kernels that read packed codes as kind "lutB", and each low-bit layer's kernel
    noting its weight form ("lut4", or "int8" for a 4-bit layer expanded to int8: `weights` "int8 (lut4)")."""
    forms = {r["kernel"]: r for r in lut_layers if r["kernel"] is not None}
    updated = []
    for record in census:
        lut = forms.get(record["name"])
        if lut is None:
            updated.append(record)
        elif lut["form"] == "int8":
            updated.append({**record, "weights": f"int8 (lut{lut['bits']})"})
        else:
            updated.append({**record, "kind": lut["form"], "weights": lut["form"]})
    return updated


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


def _rewrite_calls(mod, rewritten: _Rewrites):
    """`mod` with the rewritten kernels and their calls passing the packed codes and the table instead of the int8
    weight; each record gets its bytes."""

    def codes_and_table(name: str, values: np.ndarray) -> list[np.ndarray]:
        same = rewritten[name][2][fingerprint(values)]  # weights of equal values: one entry each, in turn
        table, record = same.pop(0) if len(same) > 1 else same[0]
        codes, levels = packed_constants(values, table)
        record.update(codes_bytes=int(codes.nbytes), table_bytes=int(levels.nbytes))
        return [codes, levels]

    return swap_weight_constants(mod, {name: (func, param) for name, (func, param, _) in rewritten.items()},
                                 codes_and_table)


def swap_weight_constants(mod, kernels: dict[str, tuple[Any, int]],
                          constants: Callable[[str, np.ndarray], list[np.ndarray]]):
    """`mod` with each kernel of `kernels` (name -> (its new PrimFunc, the int8 weight parameter it replaced)) under
    a fresh GlobalVar (a GlobalVar keeps the signature it was made with), and each of its calls passing
    `constants(name, the int8 weight)` in that parameter's place, in `main`'s order."""
    functions = {gvar: func for gvar, func in mod.functions.items() if gvar.name_hint not in kernels}
    builder = relax.BlockBuilder(tvm.IRModule(functions, attrs=mod.attrs, global_infos=mod.global_infos))
    fresh = {name: builder.add_func(func, name) for name, (func, _) in kernels.items()}

    @mutator
    class _PassConstants(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call_op_name(call) != "relax.call_tir" or call.args[0].name_hint not in kernels:
                return call
            name, args = call.args[0].name_hint, list(call.args[1].fields)
            param = kernels[name][1]
            args[param:param + 1] = [const(value) for value in constants(name, const_array(args[param]))]
            return relax.Call(call.op, [fresh[name], relax.Tuple(args), *call.args[2:]], call.attrs, call.ty_args)

    new = builder.get()
    new["main"] = _PassConstants(new).visit_expr(mod["main"])
    return new


# --- the kernel -----------------------------------------------------------------------------------------------


def _weight_param(func) -> int | None:
    """The parameter of `func` that its one matvec micro-kernel call reads as the weight, else None."""
    sites = [block for block in collect(func.body, s_tir.SBlock) if _matvec_call(block) is not None]
    if len(sites) != 1:
        return None
    ptr = _matvec_call(sites[0]).args[2]
    sources = [m.source.source for m in sites[0].match_buffers if _points_into(ptr, m.buffer)]
    found = [i for i, p in enumerate(func.params) for source in sources if p.same_as(source)]
    return found[0] if len(found) == 1 else None


def weight_site(func, param: int) -> tuple[Any, Any, Any, int, int] | str:
    """(the block of `func`'s one micro-kernel call, the match buffer through which the call reads the int8 weight
    parameter `param`, the call, its K and Cout), or the reason there is none: the weight must be read by exactly
    one micro-kernel call, whole."""
    weight = func.params[param]
    sites = [block for block in collect(func.body, s_tir.SBlock) if _matvec_call(block) is not None]
    if not sites:
        return "its kernel keeps plain loops (no matvec micro-kernel: a depthwise conv, or a shape it skips)"
    reads = [block for block in collect(func.body, s_tir.SBlock) if block.name_hint != "root"
             and any(region.source.same_as(weight) for region in [*block.reads, *block.writes])]
    site = sites[0]
    matched = [m for m in site.match_buffers if m.source.source.same_as(weight)]
    call = _matvec_call(site)
    if len(sites) != 1 or reads != [site] or len(matched) != 1 or not _whole(matched[0].source, weight, site):
        return "its micro-kernel call does not read the whole weight"
    k, n = int(call.args[3]), int(call.args[4])
    if k * n != int(np.prod([int(d) for d in weight.shape])):
        return "its micro-kernel call does not read the whole weight"
    if not _points_into(call.args[2], matched[0].buffer):
        return "its micro-kernel call does not read the weight through its match buffer"
    return site, matched[0], call, k, n


def _lut_primfunc(func, param: int, bits: int, decode: bool = False) -> tuple[Any, str | None, tuple[int, int]]:
    """(`func` reading codes and table instead of its int8 weight parameter `param`, None, the call's (K, Cout)),
    or (None, the reason it cannot, (0, 0)): see `weight_site`. The call becomes the LUT kernel's; with `decode`
    (the host), the weight a buffer of the kernel that `edgebin_lut{b}_decode` fills at its start, the call staying
    as it is."""
    found = weight_site(func, param)
    if isinstance(found, str):
        return None, found, (0, 0)
    site, matched, call, k, n = found
    if not decode and not _MCU_MATVEC.fullmatch(str(call.args[0].value)):
        return None, f"no LUT micro-kernel for its {call.args[0].value} call", (0, 0)
    weight = func.params[param]
    i64 = "int64"
    codes = tirx.decl_buffer((tirx.IntImm(i64, n * row_bytes(k, bits) + CODES_PADDING),), "uint8",
                             name=f"{weight.name}_codes")
    table = tirx.decl_buffer((tirx.IntImm(i64, 1 << bits),), "int8", name=f"{weight.name}_table")
    if decode:
        body = _decoded_at_start(func.body, weight, codes, table, bits, k, n)
    else:
        body = swap_weight_call(func.body, site, matched, [codes, table], lut_kernel(str(call.args[0].value), bits))
    params = [*func.params[:param], codes, table, *func.params[param + 1:]]
    return tirx.PrimFunc(params, body, func.ret_type, func.attrs), None, (k, n)


def swap_weight_call(body, site, matched, buffers: list, kernel: str):
    """`body` with the micro-kernel call of block `site` a call of `kernel` reading `buffers` in place of the
    weight its match buffer `matched` gave it (the other arguments as they were)."""
    weight = matched.source.source

    def rewrite(block):
        if not block.same_as(site):
            return block
        args = list(_matvec_call(block).args)
        new_call = tirx.call_extern("void", kernel, args[1], *(b.access_ptr("r") for b in buffers), *args[3:])
        reads = [region for region in block.reads if not region.source.same_as(weight)]
        reads += [whole_region(b) for b in buffers]
        return s_tir.SBlock(block.iter_vars, reads, block.writes, block.name_hint, tirx.Evaluate(new_call),
                            block.init, block.alloc_buffers, [m for m in block.match_buffers if m is not matched
                                                              and not m.same_as(matched)], block.annotations)

    return tvm_ffi.structural_map(body, (s_tir.SBlock, rewrite))


def _decoded_at_start(body, weight, codes, table, bits: int, k: int, n: int):
    """The root block `body` with `weight` one of its buffers instead of a parameter, filled first by
    `edgebin_lut{b}_decode(codes, table, K, Cout, weight)` (cpu_kernels/edgebin_cpu_lut.c): once per run of the
    kernel, for all its micro-kernel calls (the host makes one per row of output pixels)."""
    decode = tirx.call_extern("void", f"edgebin_lut{bits}_decode", codes.access_ptr("r"), table.access_ptr("r"), k, n,
                              weight.access_ptr("w"))
    first = s_tir.SBlockRealize([], True, s_tir.SBlock([], [whole_region(codes), whole_region(table)],
                                                       [whole_region(weight)], f"{weight.name}_decode",
                                                       tirx.Evaluate(decode)))
    root = body.block
    rest = list(root.body.seq) if isinstance(root.body, tirx.SeqStmt) else [root.body]
    root = s_tir.SBlock(root.iter_vars, root.reads, root.writes, root.name_hint, tirx.SeqStmt([first, *rest]),
                        root.init, [*root.alloc_buffers, weight], root.match_buffers, root.annotations)
    return s_tir.SBlockRealize(body.iter_values, body.predicate, root)


def _matvec_call(block):
    """The int8 `edgebin_matvec{,2,4,t,c}_{s8,u8s8}` call_extern that is the whole body of `block`, else None."""
    body = block.body
    if not isinstance(body, tirx.Evaluate) or not isinstance(body.value, IRCall):
        return None
    call = body.value
    if not str(getattr(call.op, "name", "")).endswith("call_extern"):
        return None
    return call if _MATVEC.fullmatch(str(call.args[0].value)) else None


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


__all__ = ["HEADER", "HOST_BITS", "PACKED_BITS", "PALETTE", "PALETTE_BITS", "PALETTE_MIN_SAVING", "lut_census",
           "lut_kernel", "pack_lut_weights", "packed_bytes", "packed_constants", "palette_table", "palette_weights",
           "swap_weight_call", "swap_weight_constants", "weight_site"]
