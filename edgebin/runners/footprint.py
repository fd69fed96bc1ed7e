"""Flash and RAM of a linked Cortex-M image, and whether it fits the target board.

    fp = measure_footprint(Path("build/footprint.elf"), arena_bytes=13472, stack_bytes=result.stack_bytes)
    fp.flash_bytes, fp.weights_bytes, fp.code_bytes, fp.ram_bytes
    check_fits(fp, targets.load("cortex-m4"))   # DoesNotFitError naming what overflows, by how many bytes

Flash is every allocated section with contents: code, read-only data and the initial values of .data, which the
image stores in flash and startup copies to RAM. Weights are read from the linker map (`<elf>.map`): the
`.rodata.edgebin_weights` section the emitter puts its constant arrays in, or for a bundle without it, every named
`.rodata` section of the bundle's own objects; code is the rest of flash (tensor descriptors, libc/libm helpers
and startup included). RAM is .data + .bss (the activation arena lives in .bss) plus the stack high-water mark
measured in a run, when there is one. `QemuRunner.footprint` measures `footprint.elf`, the model linked with a
bare main, so the QEMU harness is not counted.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path

from edgebin.errors import UsageError
from edgebin.targets import Target

SHT_NOBITS, SHF_ALLOC, PT_LOAD = 8, 0x2, 1
WEIGHTS_SECTION = ".rodata.edgebin_weights"  # where the MCU emitter's model.c puts its constant arrays
# Sections of picolibc.ld that are not static data: the stack reservation, and the TLS template that .tbss_space
# already allocates.
RESERVATIONS = frozenset({".stack", ".heap", ".tbss"})


class DoesNotFitError(UsageError):
    """The compiled model needs more flash or RAM than the target board has."""


@dataclass(frozen=True)
class Footprint:
    """Bytes of flash and RAM an image needs; weights and arena are parts of flash and RAM, not additions."""

    flash_bytes: int
    weights_bytes: int
    static_ram_bytes: int  # .data + .bss, the arena included
    arena_bytes: int | None = None
    stack_bytes: int | None = None  # measured high-water mark; None when the model has not been run

    @property
    def code_bytes(self) -> int:
        return self.flash_bytes - self.weights_bytes

    @property
    def ram_bytes(self) -> int:
        return self.static_ram_bytes + (self.stack_bytes or 0)

    def to_dict(self) -> dict[str, int | None]:
        return {"flash_bytes": self.flash_bytes, "weights_bytes": self.weights_bytes, "code_bytes": self.code_bytes,
                "ram_bytes": self.ram_bytes, "static_ram_bytes": self.static_ram_bytes,
                "arena_bytes": self.arena_bytes, "stack_bytes": self.stack_bytes}


def measure_footprint(elf: Path, *, arena_bytes: int | None = None, stack_bytes: int | None = None) -> Footprint:
    """Read flash and RAM from the ELF's section and program headers and the weights from its linker map."""
    elf = Path(elf)
    sections, segments = _headers(elf)
    flash = ram = 0
    for name, sh_type, flags, addr, size in sections:
        if not flags & SHF_ALLOC or not size or name in RESERVATIONS:
            continue
        if sh_type == SHT_NOBITS:
            ram += size  # .bss
            continue
        flash += size  # contents are stored in flash...
        load = next((paddr + addr - vaddr for vaddr, paddr, memsz in segments if vaddr <= addr < vaddr + memsz), addr)
        if load != addr:
            ram += size  # ...and copied to RAM at startup when they run from elsewhere (.data)
    map_path = elf.with_suffix(".map")
    try:
        weights = weights_from_map(map_path.read_text())
    except OSError:
        raise UsageError(f"{map_path} is missing: link {elf.name} with -Wl,-Map so its weights can be told "
                         f"from its code") from None
    return Footprint(flash_bytes=flash, weights_bytes=weights, static_ram_bytes=ram, arena_bytes=arena_bytes,
                     stack_bytes=stack_bytes)


def check_fits(footprint: Footprint, target: Target) -> None:
    """Raise DoesNotFitError listing every memory the model overflows on `target`; no-op for boardless targets."""
    board = f"{target.name} ({target.board})" if target.board else target.name
    problems, hints = [], []
    fp = footprint
    if target.flash_bytes is not None and fp.flash_bytes > target.flash_bytes:
        problems.append(f"model needs {fp.flash_bytes:,} B of flash (weights {fp.weights_bytes:,} B, code "
                        f"{fp.code_bytes:,} B) but {board} has {target.flash_bytes:,} B: "
                        f"{fp.flash_bytes - target.flash_bytes:,} B too much")
        hints.append("try a smaller model or --method binary")
    if target.ram_bytes is not None and fp.ram_bytes > target.ram_bytes:
        arena = fp.arena_bytes or 0
        stack = f"stack {fp.stack_bytes:,} B" if fp.stack_bytes is not None else "stack not measured"
        problems.append(f"model needs {fp.ram_bytes:,} B of RAM (arena {arena:,} B, {stack}, other static "
                        f"{fp.static_ram_bytes - arena:,} B) but {board} has {target.ram_bytes:,} B: "
                        f"{fp.ram_bytes - target.ram_bytes:,} B too much")
        hints.append("a smaller input or narrower layers shrink the arena")
    if problems:
        raise DoesNotFitError("; ".join(problems + hints))


def weights_from_map(text: str) -> int:
    """Bytes of weights in a linker map: the emitter's weights section if the link has one, else own .rodata."""
    body = text.split("Linker script and memory map", 1)[-1]
    dedicated = generic = 0
    found_dedicated, pending = False, None
    for line in body.splitlines():
        if pending is not None:
            match = re.match(r"\s+0x[0-9a-fA-F]+\s+0x([0-9a-fA-F]+)\s+(\S.*)$", line)
            section, pending = pending, None
            if not match:
                continue
            size, origin = int(match.group(1), 16), match.group(2)
        else:
            match = re.match(r" (\.rodata\S*)(?:\s+0x[0-9a-fA-F]+\s+0x([0-9a-fA-F]+)\s+(\S.*))?$", line)
            if not match:
                continue
            if match.group(2) is None:
                pending = match.group(1)  # a long section name: address, size and object follow on the next line
                continue
            section, size, origin = match.group(1), int(match.group(2), 16), match.group(3)
        if section == WEIGHTS_SECTION or section.startswith(WEIGHTS_SECTION + "."):
            found_dedicated, dedicated = True, dedicated + size
        elif _own_constant(section, origin):
            generic += size
    return dedicated if found_dedicated else generic


def _own_constant(section: str, origin: str) -> bool:
    if section.startswith((".rodata.str", ".rodata.cst")):  # merged string and literal constants, not arrays
        return False
    path = Path(origin.strip())
    # Not an archive member (libc, libm, libgcc), startup code, or the runner's harness.
    return "(" not in origin and not path.name.startswith("crt0") and path.parent.name != "harness"


def _headers(elf: Path) -> tuple[list[tuple[str, int, int, int, int]], list[tuple[int, int, int]]]:
    """Sections as (name, type, flags, address, size) and PT_LOAD segments as (vaddr, paddr, memsz).

    Read straight from the ELF headers (32- or 64-bit, little-endian), so no binutils are needed.
    """
    try:
        data = elf.read_bytes()
    except OSError as err:
        raise UsageError(f"cannot read {elf}: {err.strerror}") from None
    if data[:4] != b"\x7fELF" or data[5] != 1:
        raise UsageError(f"{elf} is not a little-endian ELF file")
    if data[4] == 1:
        (phoff,) = struct.unpack_from("<I", data, 28)
        shoff, phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<I6xHHHHH", data, 32)
        section_fmt = "<IIIIII"  # name, type, flags, addr, offset, size
        segment_fmt, segment_fields = "<IIIIII", (2, 3, 5)  # type, offset, vaddr, paddr, filesz, memsz
    else:
        phoff, shoff = struct.unpack_from("<QQ", data, 32)
        phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", data, 54)
        section_fmt = "<IIQQQQ"
        segment_fmt, segment_fields = "<IIQQQQQ", (3, 4, 6)  # type, flags, offset, vaddr, paddr, filesz, memsz
    headers = [struct.unpack_from(section_fmt, data, shoff + i * shentsize) for i in range(shnum)]
    strtab = headers[shstrndx][4]

    def name(offset: int) -> str:
        return data[strtab + offset:data.index(b"\0", strtab + offset)].decode()

    sections = [(name(h[0]), h[1], h[2], h[3], h[5]) for h in headers]
    segments = []
    for i in range(phnum):
        fields = struct.unpack_from(segment_fmt, data, phoff + i * phentsize)
        if fields[0] == PT_LOAD:
            segments.append(tuple(fields[j] for j in segment_fields))
    return sections, segments
