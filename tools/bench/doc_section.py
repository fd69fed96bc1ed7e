"""One benchmark's section of a shared results document (docs/results.md), between its own markers.

    write_section(Path("docs/results.md"), "ptq", "tools/bench/ptq.py", markdown_text)

The section is replaced in place (appended at the end the first time); everything outside it, and the hand-written
findings below its findings marker, survive a re-render, so several benchmarks can share one file.
"""

from __future__ import annotations

from pathlib import Path

from edgebin.atomic import atomic_write_text


def markers(name: str, script: str) -> tuple[str, str, str]:
    """(begin, findings, end) markers of the section `name` rendered by `script`."""
    return (f"<!-- {name}: begin, rendered by {script} -->", f"<!-- {name} findings: kept by {script} -->",
            f"<!-- {name}: end -->")


def write_section(doc: Path, name: str, script: str, body: str) -> None:
    """Write `body` as the section `name` of `doc`, keeping its findings and the rest of the file."""
    begin, findings_marker, end = markers(name, script)
    text = doc.read_text() if doc.is_file() else ""
    findings = f"{findings_marker}\n"
    if begin in text and end in text:
        before, rest = text.split(begin, 1)
        old, after = rest.split(end, 1)
        if findings_marker in old:
            findings = findings_marker + old.split(findings_marker, 1)[1]
    else:
        before, after = text.rstrip("\n") + "\n\n" if text else "", "\n"
    atomic_write_text(doc, before + f"{begin}\n{body}\n{findings}{end}" + after)
