"""Which kernel outputs may be written over one of the kernel's inputs, in the arena, proven from the kernel's TIR.

    reuses = in_place_outputs(graph, lowered.mod)   # {"alloc5": "alloc4"}: alloc5 is written over alloc4
    plan = plan_memory(graph.buffers(reuses))       # the two share an offset

An output tensor O may take the bytes of an input tensor I of the same call when I dies at that call and the kernel
reads each element of I only to compute the element of O at the same index, before writing it. `writes_in_place`
proves that on the kernel's final TIR (after scheduling, as the C is made from it):

- I and O have the same shape and element size, so an index names the same bytes in both;
- O is written by exactly one BufferStore and never read; every load of I is inside that store's value, at the
  store's own indices (so it is read before the write that overwrites it: the value is computed first);
- the store runs once per index: its indices are a bijective affine map (`detect_iter_map`) of the loops and block
  iterators around it, and only loops (serial, unrolled or vectorized), blocks, conditions and lets surround it;
- neither tensor is used any other way (a pointer handed to a micro-kernel, a matched sub-buffer).

That covers elementwise kernels (a residual add and ReLU between two float tensors) and the epilogue of a conv whose
fused residual add reads the skip tensor at the output's index. A vectorized store loads its lanes before storing
them, and TVM's C codegen declares no pointer `restrict`, so the aliased call is well defined C.
"""

from __future__ import annotations

import logging

from edgebin.compile.mcu_graph import ARENA, Graph
from edgebin.compile.tvm_adapter import TensorLoad, collect, s_tir, tirx, tvm, tvm_ffi

log = logging.getLogger(__name__)

# Loop kinds whose iterations run one after another, each to its end (vectorized: loads of all lanes, then stores).
_SEQUENTIAL = (tirx.ForKind.SERIAL, tirx.ForKind.UNROLLED, tirx.ForKind.VECTORIZED)


def in_place_outputs(graph: Graph, mod) -> dict[str, str]:
    """{output tensor: input tensor it is written over} for every call where `writes_in_place` proves it safe."""
    lifetimes = graph.lifetimes()
    reuses: dict[str, str] = {}
    taken: set[str] = set()
    for step, call in enumerate(graph.calls):
        func = None
        for out in call.outputs:
            target = call.args[out]
            if target.kind != ARENA or lifetimes[target.base][0] != step:
                continue
            for i, source in enumerate(call.args):
                if i in call.outputs or source.kind != ARENA or source.base in taken:
                    continue
                if lifetimes[source.base][1] != step or sum(a.base == source.base for a in call.args) != 1:
                    continue  # still needed after this call, or passed twice (loads through the other go unseen)
                if graph.tensor_bytes[source.base] != graph.tensor_bytes[target.base]:
                    continue
                func = func if func is not None else mod[call.kernel]
                if writes_in_place(func, read=i, write=out):
                    reuses[target.base] = source.base
                    taken.add(source.base)
                    log.debug("%s: %s written over %s", call.kernel, target.base, source.base)
                    break
    return reuses


def writes_in_place(func, *, read: int, write: int) -> bool:
    """True when PrimFunc `func` may be called with parameter `write` at the address of parameter `read` (the
    module docstring lists what is proven)."""
    src, dst = func.params[read], func.params[write]
    if not _same_layout(src, dst):
        return False
    stores = [s for s in collect(func.body, tirx.BufferStore) if s.buffer.same_as(dst)]
    all_loads = collect(func.body, TensorLoad)
    if len(stores) != 1 or any(load.source.same_as(dst) for load in all_loads):
        return False  # written twice, or read back (it would see the input's bytes, not its own)
    store = stores[0]
    loads = [load for load in all_loads if load.source.same_as(src)]
    in_value = [load for load in collect(store.value, TensorLoad) if load.source.same_as(src)]
    if len(in_value) != len(loads) or not all(_same_indices(load.indices, store.indices) for load in loads):
        return False  # the input is read elsewhere, or at another element
    if any(_is_pointer_call(call) for call in collect(store.value, tvm.ir.expr.Call)):
        return False  # address_of(I[i]) hands out a pointer: the callee could read other elements
    regions = _region_mentions(func.body, (src, dst))
    if regions is None:
        return False  # a block matches a sub-buffer of one of them
    # Every mention of either is a load, the store, or a block's T.reads/T.writes annotation: nothing else (a
    # pointer passed to a micro-kernel, `I.data` in a tvm_access_ptr, mentions the variable once more).
    mentions = [sum(var.same_as(v) for var in collect(func.body, tirx.Var)) for v in (src, dst)]
    if mentions != [len(loads) + regions[0], 1 + regions[1]]:
        return False
    return _runs_once_per_index(func.body, store)


def _same_layout(a, b) -> bool:
    shape_a, shape_b = getattr(a, "shape", None), getattr(b, "shape", None)
    if shape_a is None or shape_b is None or len(shape_a) != len(shape_b):
        return False
    if not all(isinstance(x, tirx.IntImm) and isinstance(y, tirx.IntImm) and int(x) == int(y)
               for x, y in zip(shape_a, shape_b, strict=True)):
        return False
    return tvm.DataType(str(a.dtype)).bits == tvm.DataType(str(b.dtype)).bits


def _same_indices(a, b) -> bool:
    return len(a) == len(b) and all(tvm_ffi.structural_equal(x, y) for x, y in zip(a, b, strict=True))


def _is_pointer_call(call) -> bool:
    op = getattr(call, "op", None)
    return isinstance(op, tvm.ir.Op) and str(op.name) in ("tirx.address_of", "tirx.tvm_access_ptr")


def _region_mentions(body, buffers) -> tuple[int, ...] | None:
    """How many block read/write annotations name each buffer; None if a block matches a sub-buffer of one."""
    counts = [0] * len(buffers)
    for block in collect(body, s_tir.SBlock):
        for match in block.match_buffers:
            if any(match.source.source.same_as(b) for b in buffers):
                return None
        for region in [*block.reads, *block.writes]:
            for k, b in enumerate(buffers):
                counts[k] += bool(region.source.same_as(b))
    return tuple(counts)


def _runs_once_per_index(body, store) -> bool:
    """True when `store` executes at most once per value of its indices (see the module docstring)."""
    path = _path_to(body, store)
    if path is None:
        return False
    domain: dict = {}  # the iterators in scope: loop variables, then a block's own iterators
    for node in path:
        if isinstance(node, tirx.For):
            if node.kind not in _SEQUENTIAL:
                return False
            domain[node.loop_var] = tvm.ir.Range.from_min_extent(node.min, node.extent)
        elif isinstance(node, s_tir.SBlockRealize) and len(node.block.iter_vars):
            if not _bijective(list(node.iter_values), domain):
                return False  # two iterations of the loops would run the same block instance
            domain = {iv.var: iv.dom for iv in node.block.iter_vars}
    return _bijective(list(store.indices), domain)


def _bijective(indices: list, domain: dict) -> bool:
    """`indices` is a one-to-one affine map of the iterators of `domain` (all of them used) and nothing else."""
    free = [v for index in indices for v in collect(index, tirx.Var)]
    if any(not any(v.same_as(d) for d in domain) for v in free):
        return False  # a let variable or an outer name: not provably distinct per iteration
    if not domain:
        return True
    result = tvm.sym.detect_iter_map(indices, domain, check_level="bijective")
    return len(result.indices) == len(indices)


# Statements the path to the store may pass through (anything else, a While loop say, rules the store out).
_PASSING = ("SeqStmt", "SBlockRealize", "SBlock", "For", "IfThenElse", "LetStmt", "AttrStmt", "DeclBuffer",
            "AllocBuffer", "Bind")


def _path_to(stmt, target) -> list | None:
    """The statements from `stmt` down to `target` (exclusive), or None when it is not reachable through _PASSING."""
    if stmt.same_as(target):
        return []
    if type(stmt).__name__ not in _PASSING:
        return None
    children = list(stmt.seq) if type(stmt).__name__ == "SeqStmt" else []
    for name in ("block", "body", "then_case", "else_case"):
        child = getattr(stmt, name, None)
        if child is not None:
            children.append(child)
    for child in children:
        found = _path_to(child, target)
        if found is not None:
            return [stmt, *found]
    return None


__all__ = ["in_place_outputs", "writes_in_place"]
