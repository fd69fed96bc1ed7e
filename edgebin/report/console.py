"""A compact rich table of the report's key numbers, for the CLI to print after a run.

    console.print(summary_table(report))   # the CLI prints; this module only builds the renderable

Numbers are formatted by the same helpers as report.md; unknown values show as "—".
"""

from __future__ import annotations

from rich.table import Table

from edgebin.report.markdown import (
    DASH,
    KIND_ORDER,
    ms,
    number,
    ordered_engines,
    percent,
    points,
    size,
    times,
    title,
)
from edgebin.report.schema import BASELINE_ENGINE, Report


def summary_table(report: Report) -> Table:
    """Accuracy, agreement, latency, footprint, kernels, fallbacks and warnings, each beside its baseline."""
    table = Table(title=f"edgebin · {title(report)}", title_justify="left", show_edge=False, pad_edge=False)
    table.add_column("", style="bold")
    table.add_column("", no_wrap=True)
    table.add_column("value", justify="right")
    table.add_column("vs baseline", justify="right")

    a = report.accuracy
    table.add_row("accuracy", "FP32", percent(a.fp32), DASH if a.fp32 is None else "baseline")
    table.add_row("", "compressed", percent(a.compressed), points(a.compressed, a.fp32))
    table.add_row("", "onnxruntime", percent(a.onnxruntime), points(a.onnxruntime, a.fp32))
    table.add_row("", "compiled", percent(a.compiled), points(a.compiled, a.fp32), end_section=a.compiled_fp32 is None)
    if a.compiled_fp32 is not None:
        table.add_row("", "compiled FP32", percent(a.compiled_fp32), points(a.compiled_fp32, a.fp32),
                      end_section=True)

    sp = report.sparsity
    if sp.groups is not None:
        table.add_row("sparsity", f"{sp.groups}: pruned FP32", percent(sp.accuracy),
                      f"{points(sp.accuracy, sp.dense_accuracy)} vs dense")
        fewer = times(sp.dense_macs / sp.macs) + " fewer" if sp.dense_macs and sp.macs else DASH
        table.add_row("", "MACs", number(sp.macs), fewer, end_section=True)

    g = report.agreement
    table.add_row("agreement", f"top-1 vs {g.reference or DASH}", percent(g.top1), "")
    table.add_row("", "max abs", number(g.max_abs), "", end_section=True)

    engines = report.latency.engines
    speedup = report.latency.speedup_vs[BASELINE_ENGINE]
    if not engines and report.emulator.instructions_per_inference is not None:
        engines_rows: list[str] = []
    else:
        engines_rows = ordered_engines(engines) or [DASH]
    for i, name in enumerate(engines_rows):
        median = ms(engines[name].median_ms) + " ms" if name in engines else DASH
        table.add_row("latency" if i == 0 else "", name, median, times(speedup.get(name)),
                      end_section=i == max(len(engines) - 1, 0))

    e = report.emulator
    if e.instructions_per_inference is not None:
        vs_fp32 = (f"FP32: {times(e.fp32_instructions_per_inference / e.instructions_per_inference)} as many"
                   if e.fp32_instructions_per_inference else "")
        table.add_row("emulator", "instructions / inference", number(e.instructions_per_inference), vs_fp32)
        table.add_row("", "instructions / MAC", number(e.instructions_per_mac, 3), "", end_section=True)

    b = report.board
    if b.ms_per_inference is not None:
        vs_fp32 = (f"FP32: {times(b.fp32_ms_per_inference / b.ms_per_inference)} as long"
                   if b.fp32_ms_per_inference and b.ms_per_inference else "")
        table.add_row("board", "ms / inference", ms(b.ms_per_inference) + " ms", vs_fp32, end_section=True)

    f = report.footprint
    if f.flash_bytes is not None:
        table.add_row("memory", "flash", size(f.flash_bytes), _share(f.flash_bytes, f.board_flash_bytes))
        table.add_row("", "RAM", size(f.ram_bytes), _share(f.ram_bytes, f.board_ram_bytes))
    table.add_row("footprint", "weights", size(f.weights_bytes),
                  DASH if f.ratio is None else f"{times(f.ratio)} smaller")
    table.add_row("", "artefact", size(f.artefact_bytes), "", end_section=True)

    kernels = report.kernels
    if kernels is None:
        counts = DASH
    else:
        kinds = [k for k in KIND_ORDER if k in kernels] + sorted(set(kernels) - set(KIND_ORDER))
        counts = " · ".join(f"{k} {kernels[k]}" for k in kinds) or "0"
    n_fallbacks = len(report.fallbacks)
    table.add_row("kernels", "by kind", counts, "")
    shown = f"[yellow]{n_fallbacks}[/]" if n_fallbacks else DASH if kernels is None else "none"
    table.add_row("", "float fallbacks", shown, "")
    if report.warnings:
        table.add_row("warnings", "", f"[yellow]{len(report.warnings)}[/]", "see report.md")
    return table


def _share(used: int | None, limit: int | None) -> str:
    return f"{100 * used / limit:.1f}% of board" if used is not None and limit else ""
