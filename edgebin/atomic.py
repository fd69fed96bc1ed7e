"""Write outputs so that a crash or an error never leaves a half-written file or directory behind.

    with staged_dir(out_dir) as stage:      # everything goes into a hidden sibling first
        (stage / "model.onnx").write_bytes(...)
    # only now does out_dir hold the new files; on an exception it is left as it was
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def staged_dir(out_dir: Path) -> Iterator[Path]:
    """Yield a staging directory; on success move its files into `out_dir`, on failure delete it.

    Files already in `out_dir` that the stage does not replace are kept, so `edgebin validate out/` can add a
    report next to the artefacts of an earlier `edgebin compile`.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield stage
        out_dir.mkdir(exist_ok=True)
        for item in sorted(stage.rglob("*")):
            dest = out_dir / item.relative_to(stage)
            if item.is_dir():
                if dest.exists() and not dest.is_dir():
                    dest.unlink()
                dest.mkdir(exist_ok=True)
            else:
                os.replace(item, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
