"""report.md: the report as Markdown that reads well in a terminal and renders as tables in a pull request.

    text = render_markdown(report)   # every number next to its FP32 baseline; unknown values show as "—"

The formatting helpers (`percent`, `points`, `times`, `size`, `ms`) are shared with the console summary, so
the terminal and report.md always show a number the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

from edgebin.report.schema import BASELINE_ENGINE, Report

DASH = "—"

# Engines in the order a reader compares them: the speed-up baseline first, then other float, then integer.
ENGINE_ORDER = ("onnxruntime-fp32", "pytorch-fp32", "tvm-fp32", "onnxruntime-int8", "edgebin-int8")
KIND_ORDER = ("int8", "binary", *(f"lut{b}" for b in range(2, 8)), "float", "data")


def percent(fraction: float | None) -> str:
    """0.91234 -> "91.23%"."""
    return DASH if fraction is None else f"{fraction * 100:.2f}%"


def points(value: float | None, baseline: float | None) -> str:
    """Difference of two fractions in percentage points, signed: "-0.25 pts"."""
    return DASH if value is None or baseline is None else f"{(value - baseline) * 100:+.2f} pts"


def times(ratio: float | None) -> str:
    return DASH if ratio is None else f"{ratio:.2f}×"


def ms(value: float | None) -> str:
    return DASH if value is None else f"{value:.3f}"


def size(n_bytes: int | None) -> str:
    """1536 -> "1,536 B (1.5 KiB)"."""
    return DASH if n_bytes is None else f"{n_bytes:,} B ({n_bytes / 1024:.1f} KiB)"


def number(value: float | int | str | None, digits: int = 4) -> str:
    """A plain value: integers with thousands separators, floats with `digits` significant digits."""
    if value is None:
        return DASH
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def ordered_engines(names: Iterable[str]) -> list[str]:
    """Engine names in `ENGINE_ORDER`, then any others alphabetically."""
    names = set(names)
    return [n for n in ENGINE_ORDER if n in names] + sorted(names - set(ENGINE_ORDER))


def title(report: Report) -> str:
    model = report.model.arch or (Path(report.model.path).name if report.model.path else None)
    return f"{model or DASH} → {report.target.name or DASH} · {report.method.name or DASH}"


def render_markdown(report: Report) -> str:
    """The whole report.md, ending in a newline."""
    parts = [
        f"# edgebin report: {title(report)}",
        _overview(report),
        _accuracy(report),
        _sparsity(report),
        _training(report),
        _agreement(report),
        _latency(report),
        _emulator(report),
        _board(report),
        _footprint(report),
        _kernels(report),
        _per_layer(report),
        _warnings(report),
        _timings(report),
        _artefacts(report),
        _environment(report),
        _command(report),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def _overview(r: Report) -> str:
    m, t, q, d = r.model, r.target, r.method, r.dataset
    shape = "×".join(str(n) for n in m.input_shape) if m.input_shape else None
    bits = None
    if q.weight_bits is not None or q.activation_bits is not None:
        bits = f"W{number(q.weight_bits)}A{number(q.activation_bits)}"
    rows = [
        ("Model", _join(m.path and _code(m.path), m.arch, m.format, shape and f"input {shape}",
                        _count(m.parameters, "parameters"))),
        ("Target", _join(t.name, t.kind, t.description)),
        ("Method", _join(q.name, bits, q.estimator and f"estimator {q.estimator}", q.calibration.method and
                         f"calibration {q.calibration.method}", _count(q.calibration.samples, "samples"))),
        ("Dataset", _join(d.name, _count(d.eval_samples, "evaluation samples"),
                          _count(d.calibration_samples, "calibration samples"))),
    ]
    return "\n".join(f"- **{name}:** {value}" for name, value in rows)


def _accuracy(r: Report) -> str:
    a = r.accuracy
    target = r.target.name or "target"
    sp = r.sparsity
    rows = [
        ("FP32 (PyTorch)" + (", pruned" if sp.groups else ""), percent(a.fp32),
         "baseline" if a.fp32 is not None else DASH),
        ("Compressed (PyTorch, fake-quant)", percent(a.compressed), points(a.compressed, a.fp32)),
        ("ONNX Runtime (exported ONNX)", percent(a.onnxruntime), points(a.onnxruntime, a.fp32)),
        (f"Compiled ({target})", percent(a.compiled), points(a.compiled, a.fp32)),
    ]
    if a.compiled_fp32 is not None:
        rows.append((f"FP32 compiled ({target})", percent(a.compiled_fp32), points(a.compiled_fp32, a.fp32)))
    if sp.dense_accuracy is not None and sp.eval_samples == a.samples:
        rows.insert(0, ("FP32 (PyTorch), dense: before pruning", percent(sp.dense_accuracy),
                        points(sp.dense_accuracy, a.fp32)))
    note = f"Top-1 on {number(a.samples)} evaluation samples."
    return "## Accuracy\n\n" + note + "\n\n" + _table(("Model", "Top-1", "Δ vs FP32"), rows, align="lrr")


SPARSITY_GROUPS = {"filters": "filters", "channels": "input channels", "shapes": "filter shapes",
                   "weights": "single weights", "layers": "layers"}


def _sparsity(r: Report) -> str:
    """The WGSEF stage: what was pruned, the FP32 model before and after, and each set's groups kept."""
    sp = r.sparsity
    if sp.groups is None:
        return ""
    what = SPARSITY_GROUPS.get(sp.groups, sp.groups)
    amount = f"{percent(sp.sparsity)} of the {what}" if sp.sparsity is not None else f"all but {sp.keep} {what}"
    how = _join(sp.selection == "l1" and "magnitude (L1) selection", _count(sp.epochs, "epochs with the proximal step"),
                sp.finetune_epochs and _count(sp.finetune_epochs, "masked fine-tune epochs"),
                sp.lam is not None and f"λ {number(sp.lam)}",
                _count(sp.train_samples, "training samples"), sp.seconds is not None and f"{sp.seconds:.0f} s")
    kept = (f"The pruned {what} were removed: {_code(sp.checkpoint)} is the smaller FP32 model that was quantized."
            if sp.shrunk else f"The pruned {what} stay in place as zeros ({_code(sp.checkpoint)}): the model keeps "
            "its size and its dense kernels.")
    note = (f"WGSEF structured sparsity before quantization: {amount} removed in every set ({how}). {kept} "
            f"Top-1 on {number(sp.eval_samples)} evaluation samples.")

    def params(total: int | None, nonzero: int | None) -> str:
        return number(total) + (f" ({number(nonzero)} nonzero)" if nonzero not in (None, total) else "")

    def fewer(before: int | None, after: int | None) -> str:
        return "" if not before or not after or before == after else f" ({times(before / after)} fewer)"

    rows = [(f"Dense ({_code(sp.source)})", percent(sp.dense_accuracy), number(sp.dense_parameters),
             number(sp.dense_macs)),
            ("Pruned", f"{percent(sp.accuracy)} ({points(sp.accuracy, sp.dense_accuracy)})",
             params(sp.parameters, sp.nonzero_parameters) + fewer(sp.dense_parameters, sp.parameters),
             number(sp.macs) + fewer(sp.dense_macs, sp.macs))]
    text = "## Structured sparsity\n\n" + note + "\n\n" + _table(("FP32 model", "Top-1", "Parameters", "MACs"), rows,
                                                                 align="lrrr")
    if sp.sets:
        set_rows = [(_code(x.name), number(x.groups), number(x.kept), number(x.removed)) for x in sp.sets]
        text += "\n\n" + _table(("Group set", "Groups", "Kept", "Removed"), set_rows, align="lrrr")
    return text


def _training(r: Report) -> str:
    t = r.training
    if not t.history:
        return ""
    how = _join(t.stages and " then ".join(t.stages), _count(t.epochs, "epochs"),
                _count(t.cga_epochs, "CGA epochs"), t.batch_size and f"batch {t.batch_size}",
                t.lr and f"peak lr {number(t.lr)}", "distilled from FP32" if t.distill else "no distillation",
                _count(t.train_samples, "training samples"), t.seed is not None and f"seed {t.seed}",
                t.world_size and t.world_size > 1 and f"{t.world_size} processes",
                t.seconds is not None and f"{t.seconds:.0f} s")
    note = (f"Quantization-aware training from the FP32 model: {how}. Evaluation accuracy of the fake-quant model "
            f"after each epoch on {number(t.eval_samples)} evaluation samples (history only: the last epoch is "
            "exported).")
    rows = [(number(e.epoch), e.stage or DASH, e.phase or DASH, number(e.lr, 3), number(e.train_loss),
             percent(e.train_accuracy), percent(e.eval_accuracy), DASH if e.seconds is None else f"{e.seconds:.1f}")
            for e in t.history]
    header = ("Epoch", "Stage", "Phase", "lr", "Train loss", "Train top-1", "Eval top-1", "Seconds")
    text = "## Training\n\n" + note + "\n\n" + _table(header, rows, align="lllrrrrr")
    if t.checkpoint:
        text += (f"\n\nTrained model: {_code(t.checkpoint)}, with its quantizers (`edgebin.loading.load_model` "
                 "rebuilds it in PyTorch).")
    return text


def _agreement(r: Report) -> str:
    g = r.agreement
    note = (f"Outputs of the compiled artefact against {g.reference or DASH} "
            f"on {number(g.samples)} samples.")
    rows = [
        ("Top-1 agreement", percent(g.top1)),
        ("Max abs difference", number(g.max_abs)),
        ("RMSE", number(g.rmse)),
        ("Mean cosine similarity", number(g.cosine, 6)),
    ]
    if g.exact is not None:
        rows.insert(0, ("Bit-exact outputs", percent(g.exact)))
    if g.fp32_top1 is not None:
        rows += [("FP32 compiled: top-1 agreement with FP32 onnxruntime", percent(g.fp32_top1)),
                 ("FP32 compiled: max abs difference", number(g.fp32_max_abs))]
    return "## Agreement\n\n" + note + "\n\n" + _table(("Metric", "Value"), rows, align="lr")


def _latency(r: Report) -> str:
    lat = r.latency
    if not lat.engines:
        if r.board.ms_per_inference is not None:
            return "## Latency\n\nNot timed on this machine: the model ran on a board; see On the board."
        if r.emulator.instructions_per_inference is not None:
            return "## Latency\n\nNot timed: this target ran on an emulator, which has no clock; see Instructions."
        return f"## Latency\n\n{DASH} (not measured)"
    speedup = lat.speedup_vs[BASELINE_ENGINE]
    rows = []
    for name in ordered_engines(lat.engines):
        e = lat.engines[name]
        ratio = times(speedup.get(name)) + (" (baseline)" if name == BASELINE_ENGINE else "")
        rows.append((_code(name), ms(e.median_ms), ms(e.p10_ms), ms(e.p90_ms), number(e.runs), ratio))
    threads = f"{lat.threads} thread{'s' if lat.threads != 1 else ''}" if lat.threads else "mixed threads"
    batch = f"a batch of {lat.batch}" if lat.batch else "one call"
    note = (f"Wall-clock time of {batch} in ms on the machine that made this report, {threads}, all engines "
            f"in the same run; × > 1 is faster than {BASELINE_ENGINE}.")
    header = ("Engine", "Median ms", "p10 ms", "p90 ms", "Runs", f"× vs {BASELINE_ENGINE}")
    return "## Latency\n\n" + note + "\n\n" + _table(header, rows, align="lrrrrr")


def _emulator(r: Report) -> str:
    e = r.emulator
    if e.instructions_per_inference is None:
        return ""
    note = (f"Instructions counted on {e.name or DASH} over {number(e.samples)} inferences (an emulator has no "
            "clock: these are instruction counts, not time).")
    rows = [("Instructions per inference", number(e.instructions_per_inference)), ("MACs per inference",
            number(e.macs)), ("Instructions per MAC", number(e.instructions_per_mac, 3))]
    if e.fp32_instructions_per_inference:
        ratio = e.fp32_instructions_per_inference / e.instructions_per_inference
        rows.append(("FP32 baseline, instructions per inference",
                     f"{number(e.fp32_instructions_per_inference)} ({times(ratio)} the compressed model's)"))
    text = "## Instructions (emulator)\n\n" + note + "\n\n" + _table(("", "Value"), rows, align="lr")
    if e.per_layer:
        layer_rows = [(_code(x.layer or DASH), _code(x.symbol), x.kind or DASH, number(x.instructions),
                       number(x.macs), number(x.instructions_per_mac, 3)) for x in e.per_layer]
        header = ("Layer", "Kernel", "Kind", "Instructions", "MACs", "Instr/MAC")
        text += "\n\n" + _table(header, layer_rows, align="lllrrr")
    return text


BOARD_TIMERS = {
    "cycle-counter": ("its cycle counter", "mean"),
    "runner-mean": ("its clock (CLOCK_MONOTONIC around each inference, after a warm-up)", "mean"),
    "time-evaluator-median": ("TVM's time_evaluator on the board", "median"),
}


def _board(r: Report) -> str:
    b = r.board
    if b.samples is None:
        return ""
    how, stat = BOARD_TIMERS.get(b.timer or "cycle-counter", (b.timer, "mean"))
    rows = [("Device", _code(b.device)), ("Inferences", number(b.samples))]
    if b.cycles_per_inference is not None or b.timer in (None, "cycle-counter"):
        rows.append(("Cycles per inference (mean)", number(b.cycles_per_inference)))
    rows.append((f"ms per inference ({stat} of {number(b.timed_runs)} runs)", ms(b.ms_per_inference)))
    if b.fp32_ms_per_inference is not None:
        ratio = b.fp32_ms_per_inference / b.ms_per_inference if b.ms_per_inference else None
        rows.append(("FP32 baseline, ms per inference", f"{ms(b.fp32_ms_per_inference)} ({times(ratio)} the "
                                                        "compressed model's)"))
    note = f"Measured on real hardware with {how}."
    return "## On the board\n\n" + note + "\n\n" + _table(("", "Value"), rows, align="lr")


def _footprint(r: Report) -> str:
    f = r.footprint
    ratio = times(f.ratio) + (" smaller" if f.ratio is not None else "")
    rows = [
        ("Weights, compressed", size(f.weights_bytes)),
        ("Weights, FP32", size(f.fp32_weights_bytes)),
        ("Compression ratio (FP32 / compressed)", ratio),
        ("Compiled artefact", size(f.artefact_bytes)),
    ]
    if f.runtime_bytes is not None:
        rows.append(("of which the TVM runtime", size(f.runtime_bytes)))
    if f.flash_bytes is not None:
        rows += [
            ("Flash (code + weights + data)", size(f.flash_bytes) + _of(f.flash_bytes, f.board_flash_bytes)),
            ("Flash: code", size(f.flash_code_bytes)),
            ("Flash: weights", size(f.flash_weights_bytes)),
            ("RAM (data + bss + stack reserve)", size(f.ram_bytes) + _of(f.ram_bytes, f.board_ram_bytes)),
            ("RAM: activation arena", size(f.arena_bytes)),
            ("RAM: largest live activation set", size(f.arena_lower_bound_bytes)),
            ("RAM: stack high-water mark", size(f.stack_bytes)),
        ]
    return "## Footprint\n\n" + _table(("", "Size"), rows, align="lr")


def _of(used: int | None, limit: int | None) -> str:
    if used is None or not limit:
        return ""
    return f" — {100 * used / limit:.1f}% of the board's {size(limit)}"


def _kernels(r: Report) -> str:
    parts = ["## Kernels"]
    if r.kernels is None:
        parts.append(f"{DASH} (not compiled)")
    else:
        kinds = [k for k in KIND_ORDER if k in r.kernels] + sorted(set(r.kernels) - set(KIND_ORDER))
        parts.append("Compiled kernels by the arithmetic they run in.\n\n"
                     + _table(("Kind", "Kernels"), [(k, number(r.kernels[k])) for k in kinds], align="lr"))
        lut = _lut_weights(r)
        if lut:
            parts.append(lut)
    if r.fallbacks:
        lines = [f"**Float fallbacks: {len(r.fallbacks)}**", ""]
        for fb in r.fallbacks:
            where = " / ".join(x for x in (fb.layer and f"layer {_code(fb.layer)}",
                                            fb.kernel and f"kernel {_code(fb.kernel)}") if x)
            lines.append(f"- {where or 'unnamed'}: {fb.reason}")
        parts.append("\n".join(lines))
    else:
        parts.append("Float fallbacks: none" + (" recorded (not compiled)" if r.kernels is None else ""))
    if r.ops:
        rows = [(_code(op), _code(arith), number(n))
                for op in sorted(r.ops) for arith, n in sorted(r.ops[op].items())]
        parts.append(_table(("Op", "Arithmetic", "Count"), rows, align="llr"))
    return "\n\n".join(parts)


def _lut_weights(r: Report) -> str:
    """One line on table-coded (NUPES) weights: the kernels that read packed codes, those that expanded them."""
    detail = r.kernels_detail or ()
    packed = [k for k in detail if k.kind.startswith("lut")]
    expanded = [k for k in detail if (k.weights or "").startswith("int8")]
    if not packed and not expanded:
        return ""
    parts = []
    if packed:
        kinds = sorted({k.kind for k in packed})
        parts.append(f"{len(packed)} kernel(s) read packed codes through their table ({', '.join(kinds)})")
    if expanded:
        names = ", ".join(_code(k.name) for k in expanded)
        parts.append(f"{len(expanded)} run them expanded to int8 ({names})")
    return "Table-coded low-bit weights: " + "; ".join(parts) + "."


def _per_layer(r: Report) -> str:
    if not r.method.per_layer:
        return f"## Per layer\n\n{DASH}"
    rows = [(_code(p.layer), number(p.op), number(p.weight_bits), number(p.activation_bits), number(p.method),
             number(p.kind)) for p in r.method.per_layer]
    header = ("Layer", "Op", "Weight bits", "Activation bits", "Method", "Kind")
    if any(p.exponent is not None for p in r.method.per_layer):  # NUPES: the power of each layer's grid
        rows = [(*row, number(p.exponent, 3)) for row, p in zip(rows, r.method.per_layer, strict=True)]
        header = (*header, "Exponent")
    if any(p.activation_exponent is not None for p in r.method.per_layer):  # and of its input's grid
        rows = [(*row, number(p.activation_exponent, 3)) for row, p in zip(rows, r.method.per_layer, strict=True)]
        header = (*header, "Input exponent")
    return "## Per layer\n\n" + _table(header, rows, align="llrrllrr")


def _warnings(r: Report) -> str:
    if not r.warnings:
        return "## Warnings\n\nNone."
    return "## Warnings\n\n" + "\n".join(f"- {_line(w)}" for w in r.warnings)


def _timings(r: Report) -> str:
    rows = [(f.name, DASH if (s := getattr(r.timings_s, f.name)) is None else f"{s:.2f}")
            for f in dataclasses.fields(r.timings_s)]
    return "## Stage timings\n\n" + _table(("Stage", "Seconds"), rows, align="lr")


def _artefacts(r: Report) -> str:
    a = r.artefacts
    rows = [("ONNX (compressed)", _code(a.onnx)), ("ONNX (FP32)", _code(a.fp32_onnx)),
            ("Compiled library", _code(a.library)), ("Recipe", _code(a.recipe))]
    return "## Artefacts\n\nPaths relative to the output directory.\n\n" + _table(("", "File"), rows)


def _environment(r: Report) -> str:
    rows = [(f.name, number(getattr(r.environment, f.name))) for f in dataclasses.fields(r.environment)]
    return "## Environment\n\n" + _table(("", "Version"), rows)


def _command(r: Report) -> str:
    if not r.command:
        return f"## Command\n\n{DASH}"
    return f"## Command\n\n```\n{r.command}\n```"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], align: str = "") -> str:
    """A GitHub-flavoured Markdown table; `align` has one "l" or "r" per column (default left)."""
    rule = ["---:" if a == "r" else "---" for a in align.ljust(len(header), "l")]
    lines = [_row(header), _row(rule)] + [_row(row) for row in rows]
    return "\n".join(lines)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(_line(c).replace("|", "\\|") for c in cells) + " |"


def _line(text: str) -> str:
    return " ".join(str(text).split())


def _code(text: str | None) -> str:
    return DASH if not text else f"`{text}`"


def _count(n: int | None, noun: str) -> str | None:
    return None if n is None else f"{n:,} {noun}"


def _join(*items: str | bool | None) -> str:
    """The truthy items joined by ", ", or "—" when there are none."""
    return ", ".join(str(i) for i in items if i) or DASH
