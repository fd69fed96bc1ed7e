"""The report of a run: report.json (stable, documented keys), report.md and a console summary.

    report = Report(model=ModelInfo(arch="resnet8"), accuracy=Accuracy(fp32=0.912, compiled=0.909))
    write_report(report, out_dir)        # out_dir/report.json and out_dir/report.md, each written atomically
    report = read_report(out_dir)        # what `edgebin report out/` starts from
    console.print(summary_table(report)) # in the CLI only

`docs/report.md` documents every key of report.json; within schema_version 1 keys are only ever added.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgebin.atomic import atomic_write_text
from edgebin.errors import UsageError
from edgebin.report.console import summary_table
from edgebin.report.markdown import render_markdown
from edgebin.report.schema import (
    BASELINE_ENGINE,
    SCHEMA_VERSION,
    Accuracy,
    Agreement,
    Artefacts,
    Calibration,
    DatasetInfo,
    EngineLatency,
    Environment,
    Fallback,
    Footprint,
    KernelInfo,
    Latency,
    LayerPrecision,
    MethodInfo,
    ModelInfo,
    Report,
    Sparsity,
    SparsitySet,
    TargetInfo,
    Timings,
    Training,
    TrainingEpoch,
)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"


def write_report(report: Report, out_dir: str | Path) -> tuple[Path, Path]:
    """Write report.md, then report.json, into `out_dir`; return their paths.

    Both texts are rendered before anything is written, and each file replaces the old one in one rename, so
    a failure leaves the previous report (or none) in place and no temporary files. report.json goes last:
    when it is present, report.md is at least as new.
    """
    out_dir = Path(out_dir)
    text_json = json.dumps(report.to_dict(), indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False)
    text_md = render_markdown(report)
    md_path, json_path = out_dir / REPORT_MD, out_dir / REPORT_JSON
    atomic_write_text(md_path, text_md)
    atomic_write_text(json_path, text_json + "\n")
    return json_path, md_path


def read_report(out_dir: str | Path) -> Report:
    """The report in `out_dir` (or in the report.json file given); UsageError if missing or malformed."""
    path = Path(out_dir)
    if path.is_dir() or path.name != REPORT_JSON:
        path = path / REPORT_JSON
    shown = f"{path.parent}/"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"no report in {shown}: run `edgebin validate {shown}` first") from None
    except OSError as err:
        raise UsageError(f"{path}: cannot read it ({err.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON (line {err.lineno}: {err.msg}); "
                         f"run `edgebin validate {shown}` again") from None
    try:
        return Report.from_dict(data)
    except ValueError as err:
        raise UsageError(f"{path} is not an edgebin report: {err}; "
                         f"run `edgebin validate {shown}` again") from None


__all__ = [
    "BASELINE_ENGINE", "REPORT_JSON", "REPORT_MD", "SCHEMA_VERSION", "Accuracy", "Agreement", "Artefacts",
    "Calibration", "DatasetInfo", "EngineLatency", "Environment", "Fallback", "Footprint", "KernelInfo",
    "Latency", "LayerPrecision", "MethodInfo", "ModelInfo", "Report", "Sparsity", "SparsitySet", "TargetInfo",
    "Timings", "Training", "TrainingEpoch", "read_report", "render_markdown", "summary_table", "write_report",
]
