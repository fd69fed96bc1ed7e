"""Build the QEMU instruction-count plugin (`insncount.c`, beside this file) into edgebin's cache.

    from edgebin.runners.plugin import build_plugin
    so = build_plugin()              # $EDGEBIN_CACHE/qemu-plugin/libinsncount.so, rebuilt when insncount.c is newer

Debian's QEMU 7.2 has plugin support but ships neither plugins nor the plugin header, so edgebin compiles its own
with the host gcc. `make setup` runs `python -m edgebin.runners.plugin`; QemuRunner calls `build_plugin()` when
the library is missing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

from edgebin.errors import DeviceError, ToolchainMissingError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("insncount.c")
LIBRARY_NAME = "libinsncount.so"


def cache_dir() -> Path:
    """$EDGEBIN_CACHE if set, else ~/.cache/edgebin."""
    env = os.environ.get("EDGEBIN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgebin"


def plugin_path() -> Path:
    return cache_dir() / "qemu-plugin" / LIBRARY_NAME


def build_plugin(*, force: bool = False, timeout_s: float = 120.0) -> Path:
    """The plugin library, compiled first if it is missing or older than its source."""
    path = plugin_path()
    if not force and path.exists() and path.stat().st_mtime >= SOURCE.stat().st_mtime:
        return path
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ToolchainMissingError("gcc not found (needed to build the QEMU instruction-count plugin): "
                                    "apt-get install gcc (or make setup)")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Compile to a temporary name and rename, so a concurrent run never loads a half-written library.
    fd, tmp = tempfile.mkstemp(prefix=f".{LIBRARY_NAME}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    cmd = [gcc, "-shared", "-fPIC", "-O2", "-Wall", "-o", tmp, str(SOURCE)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        if proc.returncode != 0:
            raise DeviceError(f"gcc could not build the QEMU plugin from {SOURCE}:\n{proc.stderr.strip()[-2000:]}")
        os.replace(tmp, path)
    except subprocess.TimeoutExpired:
        raise DeviceError(f"gcc did not build the QEMU plugin within {timeout_s:.0f} s") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    log.info("built the QEMU instruction-count plugin: %s", path)
    return path

def qemu_escape(text: str) -> str:
    return text.replace(",", ",,")  # QEMU option values escape a comma by doubling it


def read_counts(path: Path, machine: str) -> tuple[int, Counter]:
    """The plugin's file: (windows seen, instructions inside windows per TB start address)."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        raise DeviceError(f"{machine}: the instruction-count plugin wrote no {path.name}; does this QEMU load "
                          f"plugins (QEMU 7.2 with --enable-plugins)?") from None
    header = dict(field.split("=") for field in lines[0].split()[3:]) if lines else {}
    counts: Counter = Counter()
    for line in lines[1:]:
        addr, _, window = line.split()
        if window != "0":
            counts[int(addr, 16)] += int(window)
    return int(header.get("windows", 0)), counts


if __name__ == "__main__":  # `make setup`
    print(build_plugin())
