"""Compilation targets: one TOML file per board or core in this folder; adding a board is adding a file.

    from edgebin import targets
    x86 = targets.load("x86")        # also by alias: targets.load("host")
    x86.tvm                          # the TVM target as a dict, e.g. {"kind": "llvm", "mcpu": "native"}

Each file holds `name`, `kind` (host, cortex-m or cortex-a), `description`, `runner` (how the artefact is
executed), the `[tvm]` target and, for boards, their flash and RAM in bytes. The files live inside the package
(not at the repository root) so that an installed edgebin finds them.

A Cortex-M file also names the `board` its limits come from, the gcc CPU flags (`cflags`), and a `[qemu]` table:
the qemu-system-arm machine that stands in for it and the memory map its firmware links against there.

    m4 = targets.load("cortex-m4")
    m4.cflags                        # ("-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16")
    m4.qemu.machine                  # "mps2-an386"

A Cortex-A (Raspberry Pi) file adds the board's `cores` and a `[linux]` table: the GNU cross toolchain's triple,
the qemu-user binary and sysroot that run its programs here, the Debian packages for both, and how the model runs
on the board (`runtime`: "tvm" for a TVM library with the runtime from TVM's wheels, or "c" for the runtime-free C
bundle). `cflags` are then the cross gcc's CPU flags for the C bundle.

    pi4 = targets.load("rpi4")
    pi4.linux.qemu, pi4.linux.sysroot   # "qemu-aarch64", "/usr/aarch64-linux-gnu"
    pi4.linux.tool("g++")              # "aarch64-linux-gnu-g++"
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from edgebin.errors import UsageError, unknown_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

TARGET_DIR = Path(__file__).parent
KINDS = ("host", "cortex-m", "cortex-a")


@dataclass(frozen=True)
class QemuMachine:
    """A qemu-system-arm machine and where firmware for it goes (the QEMU memory, not the real board's)."""

    machine: str
    flash_base: int
    flash_size: int
    ram_base: int
    ram_size: int
    stack_size: int = 0x10000


@dataclass(frozen=True)
class LinuxToolchain:
    """How edgebin builds programs for an Arm Linux board and runs them here under qemu-user."""

    triple: str  # GNU triple, the prefix of the cross tools: "aarch64-linux-gnu"
    sysroot: str  # the cross C library qemu-user loads (-L): "/usr/aarch64-linux-gnu"
    qemu: str  # "qemu-aarch64" or "qemu-arm"
    qemu_cpu: str  # the -cpu model that stands in for the board's core
    packages: tuple[str, ...]  # Debian packages providing the cross compilers, the sysroot and qemu-user
    runtime: str = "tvm"  # "tvm": model.so + the TVM runtime; "c": the runtime-free C bundle
    wheel_platform: str | None = None  # wheel tag of TVM's runtime libraries for the board (runtime "tvm")

    def tool(self, name: str) -> str:
        """The cross tool called `name` ("gcc", "g++", "nm"), e.g. "aarch64-linux-gnu-gcc"."""
        return f"{self.triple}-{name}"


RUNTIMES = ("tvm", "c")


@dataclass(frozen=True)
class Target:
    """One compilation target, as read from its TOML file."""

    name: str
    kind: str
    description: str
    runner: str
    tvm: dict[str, Any]
    aliases: tuple[str, ...] = ()
    flash_bytes: int | None = None
    ram_bytes: int | None = None
    board: str | None = None
    cflags: tuple[str, ...] = ()
    qemu: QemuMachine | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    cores: int | None = None
    linux: LinuxToolchain | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "description": self.description}


def _parse(path: Path) -> Target:
    try:
        data = tomllib.loads(path.read_text())
        known = {"name", "kind", "description", "runner", "tvm", "aliases", "flash_bytes", "ram_bytes", "board",
                 "cflags", "qemu", "cores", "linux"}
        linux = data.get("linux")
        target = Target(
            name=data["name"],
            kind=data["kind"],
            description=data["description"],
            runner=data["runner"],
            tvm=dict(data["tvm"]),
            aliases=tuple(data.get("aliases", ())),
            flash_bytes=data.get("flash_bytes"),
            ram_bytes=data.get("ram_bytes"),
            board=data.get("board"),
            cflags=tuple(data.get("cflags", ())),
            qemu=QemuMachine(**data["qemu"]) if "qemu" in data else None,
            extra={k: v for k, v in data.items() if k not in known},
            cores=data.get("cores"),
            linux=None if linux is None else LinuxToolchain(**{**linux, "packages": tuple(linux["packages"])}),
        )
    except (KeyError, TypeError, tomllib.TOMLDecodeError) as err:
        raise UsageError(f"target file {path} is malformed: {err}") from None
    if target.kind not in KINDS:
        raise UsageError(f"target file {path}: kind {target.kind!r} is not one of {', '.join(KINDS)}")
    if target.runner == "qemu" and target.kind == "cortex-m" and (target.qemu is None or not target.cflags):
        raise UsageError(f"target file {path}: a Cortex-M target run by qemu needs `cflags` and a [qemu] table")
    if target.kind == "cortex-a":
        if target.linux is None:
            raise UsageError(f"target file {path}: a Cortex-A target needs a [linux] table (cross tools, qemu-user)")
        if target.linux.runtime not in RUNTIMES:
            raise UsageError(f"target file {path}: [linux] runtime {target.linux.runtime!r} is not one of "
                             f"{', '.join(RUNTIMES)}")
        if target.linux.runtime == "tvm" and not target.linux.wheel_platform:
            raise UsageError(f"target file {path}: [linux] runtime 'tvm' needs the wheel_platform of TVM's runtime")
    return target


@cache
def all_targets() -> tuple[Target, ...]:
    """Every target file in this folder, sorted by name."""
    return tuple(sorted((_parse(p) for p in TARGET_DIR.glob("*.toml")), key=lambda t: t.name))


def names() -> tuple[str, ...]:
    return tuple(t.name for t in all_targets())


def load(name: str) -> Target:
    """The target called `name` (or one of its aliases); UsageError listing the valid names otherwise."""
    for target in all_targets():
        if name == target.name or name in target.aliases:
            return target
    raise unknown_name("target", name, list(names()))
