"""The untuned loop schedule for microcontroller kernels: no workspaces, one accumulator per output.

    mod = schedule_for_mcu(mod)     # after FuseTIR; every PrimFunc rescheduled, the Relax graph untouched

Per kernel (compile.md, Appendix B), with `tvm.s_tir.Schedule`:
1. inline every elementwise and pad block into its neighbours (`compute_inline`, `reverse_compute_inline`), so no
   intermediate tensor is materialised: pads become a bounds test on the load, requant chains one expression;
2. `reverse_compute_at` what is left after a reduction (the bias/requant epilogue) under the reduction's innermost
   spatial loop, so the conv/matmul result shrinks to a single int32 (or float) held in a register;
3. `decompose_reduction`, which hoists the accumulator's zero out of the reduction loops.

The inner loop that gcc sees for an int8 conv is then `acc += (int32_t)x[...] * (int32_t)w[...]` over (ci, ky, kx)
with affine indices: no requant, no div/mod, no branch (the int8 path pads in a separate kernel). Kernel
workspaces (TVMBackendAllocWorkspace) disappear, which matters more on a 64 KB MCU than the extra bounds test
the float path pays for an inlined pad.
"""

from __future__ import annotations

import contextlib
import logging

from edgebin.compile.tvm_adapter import s_tir, tirx

log = logging.getLogger(__name__)

_SPATIAL, _REDUCE = 0, 2  # tirx.IterVar kinds


def schedule_for_mcu(mod):
    """Reschedule every PrimFunc of `mod` (see the module docstring); a kernel that resists keeps its loops."""
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, tirx.PrimFunc):
            try:
                mod[gvar] = schedule_kernel(func)
            except s_tir.ScheduleError as err:  # pragma: no cover - every legalized op so far schedules
                log.warning("MCU schedule failed for %s, default loops kept: %s", gvar.name_hint,
                            str(err).splitlines()[0])
    return mod


def schedule_kernel(func):
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


def _inline_all(sch) -> None:
    """Inline blocks until none can be: producers into consumers first, then consumers into producers."""
    root = sch.get_sblock("root")
    changed = True
    while changed:
        changed = False
        for block in sch.get_child_blocks(root):
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


__all__ = ["schedule_for_mcu", "schedule_kernel"]
