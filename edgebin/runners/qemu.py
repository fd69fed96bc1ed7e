"""Build Cortex-M firmware from an MCU bundle (docs/mcu-bundle.md) and run it under qemu-system-arm.

    runner = QemuRunner(targets.load("cortex-m4"))
    elf = runner.build(Path("out/cortex-m4"), Path("out/cortex-m4/qemu"))   # firmware.elf (+ footprint.elf)
    result = runner.run(elf, x)          # x: (N, ...) float32; many samples per QEMU boot
    result.outputs, result.instructions, result.per_symbol_instructions, result.stack_bytes
    fp = runner.footprint(elf, stack_bytes=result.stack_bytes)              # see runners/footprint.py

`build` compiles the bundle's sources (bundle.json "sources", -O3 like its Makefile) and the harness in
`targets/harness/` with arm-none-eabi-gcc and the target's CPU flags, and links them with picolibc's semihosting
crt0 against the QEMU memory map of the target file. It also links `footprint.elf`: the same model objects with a
bare main and no semihosting, which is what a board build would hold, so flash and RAM figures leave the harness out.

How instructions per inference are counted: the harness calls two marker functions, `edgebin_harness_begin` and
`edgebin_harness_end`, around the model calls of each chunk of samples it has read into RAM. The plugin
(`insncount.c`) is given their addresses and adds up, per translation block, only what executes between them.
Startup, semihosting file I/O and stack painting happen outside the window and are not counted; libc, libm and
libgcc helpers the model calls inside it are (a `memcpy` counts when the model calls it, not when startup does).
The window's counts are attributed to function symbols (`arm-none-eabi-nm`); the harness's own loop (`main`, a
few instructions per sample) is dropped, and the rest divided by N gives `instructions`, and per symbol (so per
layer, through bundle.json `kernels[*].symbol`) `per_symbol_instructions`.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgebin.atomic import atomic_write_text
from edgebin.errors import DeviceError, EdgebinError, InputShapeError, ToolchainMissingError, UsageError
from edgebin.runners.footprint import Footprint, measure_footprint
from edgebin.runners.plugin import build_plugin, qemu_escape, read_counts
from edgebin.runners.result import RunResult
from edgebin.targets import Target

log = logging.getLogger(__name__)

HARNESS_DIR = Path(__file__).resolve().parent.parent / "targets" / "harness"
FIRMWARE = "firmware.elf"
FOOTPRINT = "footprint.elf"
MANIFEST = "firmware.json"
COMPILE_TIMEOUT_S = 600.0  # one gcc call; TVM's kernels.c for a big model takes a while at -O3
TOOL_TIMEOUT_S = 60.0  # nm
# footprint.elf is never run, so it links against room for any model; check_fits compares it with the board.
FOOTPRINT_FLASH_BYTES, FOOTPRINT_RAM_BYTES = 0x1000_0000, 0x0800_0000
HARNESS_SYMBOLS = frozenset({"main", "edgebin_harness_begin", "edgebin_harness_end"})
# Harness exit codes (targets/harness/main.c) and what they mean.
HARNESS_STATUS = {
    2: "inputs.bin could not be opened",
    3: "inputs.bin is not a whole number of samples",
    4: "edgebin_model_run returned an error",
    5: "the model overflowed the stack reserved for it",
    6: "not even one sample fits in the RAM left between .bss and the stack",
    7: "a semihosting read or write came up short",
}
PACKAGES = {
    "arm-none-eabi-gcc": "gcc-arm-none-eabi picolibc-arm-none-eabi",
    "arm-none-eabi-nm": "binutils-arm-none-eabi",
    "qemu-system-arm": "qemu-system-arm",
}


class FirmwareBuildError(DeviceError):
    """arm-none-eabi-gcc rejected the bundle or the harness (the message has the compiler's last lines)."""


class QemuRunner:
    """Build and run a Cortex-M bundle under qemu-system-arm; outputs and counts come back over semihosting.

        runner = QemuRunner(targets.load("cortex-m7"), timeout_s=120)
        result = runner.run(runner.build(bundle_dir, work_dir), x)
    """

    def __init__(self, target: Target, timeout_s: float = 600.0) -> None:
        if target.qemu is None or not target.cflags:
            raise UsageError(f"target {target.name} has no [qemu] machine or cflags; QemuRunner runs Cortex-M targets")
        if timeout_s <= 0:
            raise UsageError(f"QemuRunner: timeout_s must be > 0, got {timeout_s}")
        self.target, self.timeout_s = target, timeout_s

    # ---- build ----

    def build(self, bundle_dir: Path, work_dir: Path) -> Path:
        """Compile the bundle and the harness for this target; returns the firmware ELF for `run`."""
        bundle_dir, work_dir = Path(bundle_dir).resolve(), Path(work_dir).resolve()
        manifest = read_bundle_manifest(bundle_dir)
        sources = [bundle_dir / s for s in manifest.get("sources") or []]
        if not sources:
            sources = sorted(bundle_dir.glob("*.c"))
            log.info("bundle.json lists no sources; compiling every .c file in %s", bundle_dir)
        missing = [str(s) for s in sources if not s.is_file()]
        if missing:
            raise UsageError(f"{bundle_dir}/bundle.json lists sources that are not there: {', '.join(missing)}")
        gcc = _require("arm-none-eabi-gcc")
        qemu = self.target.qemu
        assert qemu is not None  # checked in __init__

        input_elems = int(np.prod(manifest["input"]["shape"]))
        output_elems = int(np.prod(manifest["output"]["shape"]))
        objects = self._compile(gcc, bundle_dir, sources, work_dir / "obj", input_elems, output_elems)

        # footprint.elf first: it links against an oversized map, so it always links and can say what the model
        # needs when the QEMU machine's real memory is too small for firmware.elf.
        bare = work_dir / FOOTPRINT
        self._link(gcc, bare, [objects["footprint_main"], *objects["bundle"]], ["--oslib=dummyhost", "--crt0=minimal"],
                   flash_size=FOOTPRINT_FLASH_BYTES, ram_size=FOOTPRINT_RAM_BYTES)
        elf = work_dir / FIRMWARE
        try:
            self._link(gcc, elf, [objects["main"], *objects["bundle"]], ["--oslib=semihost", "--crt0=semihost"],
                       flash_size=qemu.flash_size, ram_size=qemu.ram_size)
        except FirmwareBuildError as err:
            if "overflowed" not in str(err):
                raise
            need = measure_footprint(bare)
            raise FirmwareBuildError(
                f"{self.target.name}: the model needs {need.flash_bytes:,} B of flash and {need.static_ram_bytes:,} B "
                f"of static RAM, more than QEMU {qemu.machine} offers ({qemu.flash_size:,} B of flash, "
                f"{qemu.ram_size:,} B of RAM with {qemu.stack_size:,} B of stack, see the [qemu] table of its target "
                f"file); {err}") from None

        input_shape = list(manifest["input"]["shape"])
        output_shape = list(manifest["output"]["shape"])
        atomic_write_text(work_dir / MANIFEST, json.dumps({
            "schema_version": 1,
            "target": self.target.name,
            "machine": qemu.machine,
            "bundle": str(bundle_dir),
            "input_shape": input_shape,
            "output_shape": output_shape,
            "input_elems": input_elems,
            "output_elems": output_elems,
            "arena_bytes": manifest.get("arena_bytes"),
            "footprint_elf": FOOTPRINT,
        }, indent=2) + "\n")
        log.info("built %s for %s (%s)", elf, self.target.name, qemu.machine)
        return elf

    def _compile(self, gcc: str, bundle_dir: Path, sources: list[Path], obj_dir: Path, input_elems: int,
                 output_elems: int) -> dict[str, Any]:
        """Bundle sources (-O3 unless the target sets `opt`) into obj/bundle, the harness into obj/harness."""
        (obj_dir / "bundle").mkdir(parents=True, exist_ok=True)
        (obj_dir / "harness").mkdir(parents=True, exist_ok=True)
        common = [*self.target.cflags, "--specs=picolibc.specs", "-ffunction-sections", "-fdata-sections",
                  f"-I{bundle_dir}", f"-I{bundle_dir / 'include'}"]
        checks = [f"-DEDGEBIN_EXPECT_INPUT_ELEMS={input_elems}", f"-DEDGEBIN_EXPECT_OUTPUT_ELEMS={output_elems}"]
        opt = str(self.target.extra.get("opt", "-O3"))  # as the bundle's Makefile: gcc -O2 vs -O3 is ~3x here
        jobs = [(src, obj_dir / "bundle" / f"{src.relative_to(bundle_dir).as_posix().replace('/', '_')}.o", [opt])
                for src in sources]
        jobs += [(HARNESS_DIR / f"{name}.c", obj_dir / "harness" / f"{name}.o", ["-O2", *checks])
                 for name in ("main", "footprint_main")]
        with ThreadPoolExecutor() as pool:
            list(pool.map(lambda job: _gcc([gcc, *common, *job[2], "-c", str(job[0]), "-o", str(job[1])],
                                           f"compiling {job[0].name}"), jobs))
        return {"bundle": [str(obj) for _, obj, _ in jobs[:-2]], "main": str(jobs[-2][1]),
                "footprint_main": str(jobs[-1][1])}

    def _link(self, gcc: str, elf: Path, objects: list[str], runtime: list[str], *, flash_size: int,
              ram_size: int) -> None:
        """Link `elf` (and its .map, which footprint.py reads) with picolibc against this target's QEMU map."""
        qemu = self.target.qemu
        assert qemu is not None
        script = elf.with_suffix(".ld")
        atomic_write_text(script, _linker_script(qemu.flash_base, flash_size, qemu.ram_base, ram_size,
                                                 qemu.stack_size))
        _gcc([gcc, *self.target.cflags, "--specs=picolibc.specs", *runtime, "-T", str(script), "-Wl,--gc-sections",
              f"-Wl,-Map={elf.with_suffix('.map')}", "-o", str(elf), *objects, "-lm"], f"linking {elf.name}")

    # ---- run ----

    def run(self, elf: Path, inputs: np.ndarray, *, count_instructions: bool = True) -> RunResult:
        """Run every sample of `inputs` (N, ...) through the firmware; QEMU boots once per chunk of samples."""
        elf = Path(elf).resolve()
        info = self._firmware_info(elf)
        x = np.ascontiguousarray(inputs, dtype=np.float32)
        n = int(x.shape[0]) if x.ndim else 0
        if n == 0 or x.size != n * info["input_elems"]:
            raise InputShapeError(f"{elf.name} takes samples of {info['input_elems']} float32 "
                                  f"(shape {info['input_shape']}); got an array of shape {tuple(x.shape)}")
        x = x.reshape(n, info["input_elems"])
        qemu = _require("qemu-system-arm")
        plugin = build_plugin() if count_instructions else None
        symbols = _FunctionSymbols.from_elf(elf) if count_instructions else None

        outputs, window, stack = [], Counter(), 0
        done, chunk = 0, 1  # a first boot of one sample measures the speed before committing to a big chunk
        while done < n:
            count = min(chunk, n - done)
            started = time.monotonic()
            out, counts, stack_bytes = self._boot(qemu, elf, x[done:done + count], done, info["output_elems"],
                                                  plugin, symbols)
            seconds = time.monotonic() - started
            outputs.append(out)
            window.update(counts)
            stack = max(stack, stack_bytes)
            done += count
            # Size the next boot to take about half the limit at the speed just seen (startup included, so safe).
            chunk = max(1, int(0.5 * self.timeout_s * count / max(seconds, 1e-3)))

        out_shape = info["output_shape"][1:] if info["output_shape"][:1] == [1] else info["output_shape"]
        result = np.concatenate(outputs).reshape(n, *out_shape)
        if symbols is None:
            return RunResult(outputs=result, stack_bytes=stack)
        by_symbol = Counter()
        for addr, insns in window.items():
            by_symbol[symbols.name_of(addr)] += insns
        model = {name: total for name, total in by_symbol.items() if name not in HARNESS_SYMBOLS}
        per_symbol = {name: round(total / n) for name, total in sorted(model.items(), key=lambda kv: -kv[1])}
        return RunResult(outputs=result, instructions=round(sum(model.values()) / n),
                         per_symbol_instructions=per_symbol, stack_bytes=stack)

    def footprint(self, elf: Path, *, stack_bytes: int | None = None) -> Footprint:
        """Flash and RAM of the model as a board build would hold it (footprint.elf, linked beside `elf`)."""
        elf = Path(elf).resolve()
        info = self._firmware_info(elf)
        return measure_footprint(elf.parent / info["footprint_elf"], arena_bytes=info.get("arena_bytes"),
                                 stack_bytes=stack_bytes)

    def _firmware_info(self, elf: Path) -> dict[str, Any]:
        path = elf.parent / MANIFEST
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            raise UsageError(f"{elf} has no readable {MANIFEST} beside it; build it with QemuRunner.build") from None
        if info.get("target") != self.target.name:
            raise UsageError(f"{elf} was built for {info.get('target')}, not {self.target.name}; "
                             f"run it with QemuRunner(targets.load({info.get('target')!r}))")
        return info

    def _boot(self, qemu: str, elf: Path, x: np.ndarray, first: int, output_elems: int, plugin: Path | None,
              symbols: _FunctionSymbols | None) -> tuple[np.ndarray, Counter, int]:
        """One QEMU boot over samples first.. of the run: outputs, window counts per TB address, stack bytes."""
        machine = self.target.qemu.machine  # type: ignore[union-attr]
        with tempfile.TemporaryDirectory(prefix="edgebin-qemu-") as tmp:
            run_dir = Path(tmp)
            x.tofile(run_dir / "inputs.bin")
            cmd = [qemu, "-M", machine, "-display", "none", "-monitor", "none", "-serial", "null",
                   "-semihosting-config", "enable=on,target=native", "-kernel", str(elf)]
            counts_path = run_dir / "counts.txt"
            if plugin is not None and symbols is not None:
                args = [qemu_escape(str(plugin)), f"out={qemu_escape(str(counts_path))}",
                        f"begin={symbols.address('edgebin_harness_begin'):#x}",
                        f"end={symbols.address('edgebin_harness_end'):#x}"]
                cmd += ["-plugin", ",".join(args)]
            try:
                proc = subprocess.run(cmd, cwd=run_dir, stdin=subprocess.DEVNULL, capture_output=True,
                                      timeout=self.timeout_s, check=False)
            except subprocess.TimeoutExpired:
                raise DeviceError(
                    f"{self.target.name} on QEMU {machine}: {len(x)} sample(s) did not finish within "
                    f"{self.timeout_s:.0f} s (a model that hangs, or one this slow); raise the limit with "
                    f"--timeout (QemuRunner timeout_s)") from None
            result = _read_result(run_dir / "result.txt")
            status = proc.returncode
            if status != 0 or result.get("status") != 0:
                raise DeviceError(self._failure(status, result, proc, first, len(x), elf))
            out = np.fromfile(run_dir / "outputs.bin", dtype=np.float32)
            if out.size != len(x) * output_elems:
                raise DeviceError(f"{machine}: outputs.bin holds {out.size} floats, expected "
                                  f"{len(x)} x {output_elems}")
            counts: Counter = Counter()
            if plugin is not None:
                windows, counts = read_counts(counts_path, machine)
                if windows != result.get("chunks"):
                    raise DeviceError(f"{machine}: the instruction-count plugin saw {windows} counting windows for "
                                      f"{result.get('chunks')} chunks; the marker addresses do not match the ELF")
        return out.reshape(len(x), output_elems), counts, int(result.get("stack_bytes", 0))

    def _failure(self, status: int, result: dict[str, int], proc: subprocess.CompletedProcess, first: int,
                 samples: int, elf: Path) -> str:
        machine = self.target.qemu.machine  # type: ignore[union-attr]
        if status == 0:
            what = "the firmware exited without writing result.txt"
        else:
            what = HARNESS_STATUS.get(status, f"the firmware stopped with exit code {status} (a CPU fault, or QEMU "
                                              f"could not start)")
        if status == 4:
            what += f" ({result.get('model_rc')}) on sample {first + result.get('samples', 0)}"
        output = (proc.stdout + proc.stderr).decode(errors="replace").strip()
        fault = re.search(r"ARM fault: (\w+).*?PC:\s+0x([0-9a-fA-F]+)", output, re.S)  # crt0-semihost's report
        if fault:
            with contextlib.suppress(EdgebinError):
                where = _FunctionSymbols.from_elf(elf).name_of(int(fault.group(2), 16))
                what = f"a {fault.group(1)} in {where} (PC {int(fault.group(2), 16):#x})"
        tail = output.splitlines()[-15:]
        lines = "\n".join(tail) if tail else "(no output)"
        return (f"{self.target.name} on QEMU {machine}, samples {first}..{first + samples - 1}: {what}. "
                f"Last QEMU output:\n{lines}")


def read_bundle_manifest(bundle_dir: Path) -> dict[str, Any]:
    """bundle.json of an MCU bundle, checked for the keys the runner needs."""
    path = Path(bundle_dir) / "bundle.json"
    try:
        manifest = json.loads(path.read_text())
        for key in ("input", "output"):
            [int(d) for d in manifest[key]["shape"]]
    except OSError:
        raise UsageError(f"{bundle_dir} is not an MCU bundle: no bundle.json (make one with "
                         f"`edgebin compile MODEL --target cortex-m4`)") from None
    except (ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{path} is malformed ({type(err).__name__}: {err}); see docs/mcu-bundle.md") from None
    return manifest


@dataclass(frozen=True)
class _FunctionSymbols:
    """Function symbols of an ELF, sorted by address, to name the function a translation block starts in."""

    starts: tuple[int, ...]
    ends: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_elf(cls, elf: Path) -> _FunctionSymbols:
        nm = _require("arm-none-eabi-nm")
        try:
            proc = subprocess.run([nm, "-S", "-n", "--defined-only", str(elf)], capture_output=True, text=True,
                                  timeout=TOOL_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"arm-none-eabi-nm did not read {elf} within {TOOL_TIMEOUT_S:.0f} s") from None
        if proc.returncode != 0:
            raise DeviceError(f"arm-none-eabi-nm could not read {elf}: {proc.stderr.strip()}")
        by_start: dict[int, tuple[int, str]] = {}
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) != 4 or parts[2] not in "tTwW":
                continue
            start, size = int(parts[0], 16) & ~1, int(parts[1], 16)  # bit 0 marks Thumb code, not the address
            name = parts[3]
            # Aliases share a start (memcpy, __aeabi_memcpy4...): keep the plain name.
            if size and (start not in by_start or (name.startswith("_"), name) < (by_start[start][1].startswith("_"),
                                                                                by_start[start][1])):
                by_start[start] = (size, name)
        starts = sorted(by_start)
        return cls(tuple(starts), tuple(s + by_start[s][0] for s in starts), tuple(by_start[s][1] for s in starts))

    def name_of(self, addr: int) -> str:
        i = bisect.bisect_right(self.starts, addr) - 1
        return self.names[i] if i >= 0 and addr < self.ends[i] else "(unknown)"

    def address(self, name: str) -> int:
        try:
            return self.starts[self.names.index(name)]
        except ValueError:
            raise UsageError(f"symbol {name} is not in the firmware; was it built by QemuRunner.build?") from None


def _linker_script(flash: int, flash_size: int, ram: int, ram_size: int, stack_size: int) -> str:
    # Symbols set in a script before picolibc.ld is included are visible to its DEFINED() tests; --defsym ones
    # come too late for __stack_size, which then silently stays 2 KiB.
    return (f"/* edgebin: the QEMU memory map of this target, then picolibc's standard layout. */\n"
            f"__flash = {flash:#x};\n__flash_size = {flash_size:#x};\n"
            f"__ram = {ram:#x};\n__ram_size = {ram_size:#x};\n__stack_size = {stack_size:#x};\n"
            f"INCLUDE picolibc.ld\n")


def _require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise ToolchainMissingError(f"{tool} not found: apt-get install {PACKAGES[tool]} (or make setup)")
    return path


def _gcc(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise FirmwareBuildError(f"arm-none-eabi-gcc took over {COMPILE_TIMEOUT_S:.0f} s {what}") from None
    if proc.returncode != 0:
        if "picolibc.specs" in proc.stderr:
            raise ToolchainMissingError("picolibc for arm-none-eabi not found: apt-get install picolibc-arm-none-eabi "
                                        "(or make setup)")
        tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
        raise FirmwareBuildError(f"arm-none-eabi-gcc failed {what}:\n{tail}")
    if proc.stderr.strip():
        log.debug("arm-none-eabi-gcc %s:\n%s", what, proc.stderr.strip())


def _read_result(path: Path) -> dict[str, int]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return {key: int(value) for key, value in (line.split() for line in lines if line.strip())}

