"""Run a Raspberry Pi bundle (edgebin.compile.cortex_a) on this machine under qemu-user, as the board would.

    runner = QemuUserRunner(targets.load("rpi4"))
    result = runner.run(Path("out/rpi4"), x)     # x: (N, ...) float32; one qemu-aarch64 process per chunk
    result.outputs                               # (N, classes), in input order
    result.instructions                          # guest instructions per inference (mean over the N samples)
    result.per_symbol_instructions               # per kernel symbol, plus the TVM runtime and libc

The bundle's own `runner` executes under `qemu-aarch64` (`qemu-arm` for 32-bit Pi OS) with the cross C library as
sysroot (`-L /usr/aarch64-linux-gnu`) and the `-cpu` model of the target file, so an instruction the board's core
lacks fails here too. Inputs and outputs go through files, many samples per process.

How instructions per inference are counted: the runner calls two marker functions, `edgebin_runner_begin` and
`edgebin_runner_end`, around each inference (after one untimed warm-up inference, which sizes the VM's memory
pool). It is linked without PIE, so `nm` gives their run-time addresses, and edgebin's QEMU plugin
(`insncount.c`, the one the Cortex-M runner uses) counts, per translation block, only what executes between them:
loading the libraries, reading inputs and writing outputs are left out; the Relax VM's own work between kernels,
the allocator and libc calls made by the model are in. The runner's own few instructions per sample (`main` and
the markers) are dropped, and the rest divided by N is `instructions`. That is exact, where subtracting a
1-sample run from an N-sample run would also cancel startup but leave the warm-up and the per-sample file I/O in,
and cost a second emulator run. The runner copies its memory map (/proc/self/maps, which qemu-user writes in
guest addresses) to a file, so each counted block is attributed to its library, and in the runner and model.so
to a function symbol (`nm`); a kernel's `<name>_compute_` body counts as its `__tvm_ffi_<name>` symbol, the one
bundle.json lists.

The wall time of a qemu-user run says nothing about the board: it is never reported. Instruction counts are a
proxy too (no cycle model: a Cortex-A72 retires up to three instructions a cycle, and cache misses are not seen).
"""

from __future__ import annotations

import bisect
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgebin.compile.cortex_a import CortexABundle, load_bundle
from edgebin.errors import DeviceError, InputShapeError, ToolchainMissingError, UsageError
from edgebin.runners.plugin import build_plugin, qemu_escape, read_counts
from edgebin.runners.result import RunResult
from edgebin.targets import Target

log = logging.getLogger(__name__)

TOOL_TIMEOUT_S = 60.0  # nm
FIRST_CHUNK = 16  # samples in the first process; later chunks are sized from its speed
MAX_CHUNK = 256  # and capped, so that a machine that gets busier mid-run stays far from the time limit
MARKERS = ("edgebin_runner_begin", "edgebin_runner_end")
HARNESS_SYMBOLS = frozenset({"main", *MARKERS})  # the runner's own loop: a few instructions, not the model's
# Runner exit codes (compile/pi_runner/runner.cc, c_runner.c) and what they mean.
RUNNER_STATUS = {
    2: "bad command line",
    3: "input.txt (the input's dtype and shape) is missing or malformed",
    4: "inputs.bin could not be read or has the wrong size",
    5: "model.so could not be loaded (missing library, or a TVM runtime of another version)",
    6: "the model failed on a sample",
    7: "outputs.bin could not be written",
    127: "a shared library the runner needs is missing (libtvm_runtime.so or libtvm_ffi.so beside it)",
}


class QemuUserRunner:
    """Run a Cortex-A bundle under qemu-user: outputs from a file, instructions per inference from the plugin.

        runner = QemuUserRunner(targets.load("rpi4-armv7"), timeout_s=120)
        result = runner.run(bundle_dir, x)
    """

    def __init__(self, target: Target, timeout_s: float = 600.0) -> None:
        if target.kind != "cortex-a" or target.linux is None:
            raise UsageError(f"target {target.name} is {target.kind}; QemuUserRunner runs Cortex-A (Raspberry Pi) "
                             f"bundles")
        if timeout_s <= 0:
            raise UsageError(f"QemuUserRunner: timeout_s must be > 0, got {timeout_s}")
        self.target, self.timeout_s = target, timeout_s

    def run(self, bundle_dir: Path, inputs: np.ndarray, *, count_instructions: bool = True) -> RunResult:
        """Run every sample of `inputs` (N, ...) through the bundle's runner, one qemu-user process per chunk."""
        bundle = load_bundle(Path(bundle_dir).resolve())
        bundle_dir, manifest = bundle.directory, bundle.manifest
        if bundle.target != self.target.name:
            raise UsageError(f"{bundle_dir} was compiled for {bundle.target}, not {self.target.name}; run it "
                             f"with QemuUserRunner(targets.load({bundle.target!r}))")
        in_shape, out_shape = list(manifest["input"]["shape"]), list(manifest["output"]["shape"])
        per_sample = int(np.prod(in_shape))
        x = np.ascontiguousarray(inputs, dtype=manifest["input"]["dtype"])
        n = int(x.shape[0]) if x.ndim else 0
        if n == 0 or x.size != n * per_sample:
            raise InputShapeError(f"{bundle_dir.name} takes samples of shape {in_shape} "
                                  f"({manifest['input']['dtype']}); got an array of shape {tuple(np.shape(inputs))}")
        x = x.reshape(n, per_sample)
        qemu = self._require_emulator()
        plugin = build_plugin() if count_instructions else None
        symbols = _Symbols(self._nm(), bundle_dir) if count_instructions else None

        outputs, window = [], Counter()
        done, chunk = 0, min(FIRST_CHUNK, n)
        while done < n:
            count = min(chunk, n - done)
            started = time.monotonic()
            out, counts = self._process(qemu, bundle, x[done:done + count], plugin, symbols)
            seconds = time.monotonic() - started  # only to size the next chunk, never reported
            outputs.append(out)
            window.update(counts)
            done += count
            chunk = max(1, min(MAX_CHUNK, int(0.25 * self.timeout_s * count / max(seconds, 1e-3))))

        out_dims = out_shape[1:] if out_shape[:1] == [1] else out_shape
        result = np.concatenate(outputs).reshape(n, *out_dims)
        if symbols is None:
            return RunResult(outputs=result)
        model = {name: total for name, total in window.items() if name not in HARNESS_SYMBOLS}
        per_symbol = {name: round(total / n) for name, total in sorted(model.items(), key=lambda kv: -kv[1])}
        return RunResult(outputs=result, instructions=round(sum(model.values()) / n),
                         per_symbol_instructions=per_symbol)

    def _process(self, qemu: str, bundle: CortexABundle, x: np.ndarray, plugin: Path | None,
                 symbols: _Symbols | None) -> tuple[np.ndarray, Counter]:
        """One qemu-user process over the samples `x`: their outputs and the window counts per symbol."""
        linux = self.target.linux
        assert linux is not None
        bundle_dir, manifest = bundle.directory, bundle.manifest
        with tempfile.TemporaryDirectory(prefix="edgebin-qemu-user-") as tmp:
            work = Path(tmp)
            x.tofile(work / "inputs.bin")
            argv = bundle.command(str(work / "inputs.bin"), str(work / "outputs.bin"), len(x), absolute=True)
            cmd = [qemu, "-L", linux.sysroot, "-cpu", linux.qemu_cpu]
            if plugin is not None and symbols is not None:
                begin, end = (symbols.runner_address(name) for name in MARKERS)
                cmd += ["-plugin", f"{qemu_escape(str(plugin))},out={qemu_escape(str(work / 'counts.txt'))},"
                                   f"begin={begin:#x},end={end:#x}"]
            env = {**os.environ, "EDGEBIN_MAPS": str(work / "maps.txt"), "TVM_NUM_THREADS": "1"}
            try:
                proc = subprocess.run([*cmd, *argv], cwd=work, env=env, stdin=subprocess.DEVNULL,
                                      capture_output=True, text=True, timeout=self.timeout_s, check=False)
            except subprocess.TimeoutExpired:
                raise DeviceError(f"{self.target.name} on {linux.qemu}: {len(x)} sample(s) did not finish within "
                                  f"{self.timeout_s:.0f} s; raise the limit with --timeout (QemuUserRunner "
                                  f"timeout_s)") from None
            if proc.returncode != 0:
                raise DeviceError(self._failure(proc, bundle_dir))
            info = dict(line.split(maxsplit=1) for line in proc.stdout.splitlines() if " " in line)
            dtype = info.get("output_dtype", manifest["output"]["dtype"])
            out = np.fromfile(work / "outputs.bin", dtype=dtype)
            expected = len(x) * int(np.prod(manifest["output"]["shape"]))
            if out.size != expected:
                raise DeviceError(f"{bundle_dir.name}: the runner wrote {out.size} output values for {len(x)} "
                                  f"samples, expected {expected}")
            counts = Counter()
            if plugin is not None and symbols is not None:
                windows, by_address = read_counts(work / "counts.txt", linux.qemu)
                if windows != len(x):
                    raise DeviceError(f"{linux.qemu}: the plugin saw {windows} inference windows for {len(x)} "
                                      f"samples; was the runner built by edgebin (markers {', '.join(MARKERS)})?")
                counts = symbols.attribute(by_address, (work / "maps.txt").read_text())
            return out.astype(np.float32, copy=False), counts

    def _failure(self, proc: subprocess.CompletedProcess, bundle_dir: Path) -> str:
        linux = self.target.linux
        assert linux is not None
        stderr = proc.stderr.strip()
        if f"{linux.qemu}: Could not open" in stderr:  # the dynamic loader itself, from the sysroot
            return (f"{linux.qemu} could not start the runner: the {linux.triple} C library is not under "
                    f"{linux.sysroot} ({stderr.splitlines()[-1]}); apt-get install {' '.join(linux.packages)}")
        meaning = RUNNER_STATUS.get(proc.returncode, "the runner crashed (a signal from the emulated CPU: an "
                                                      "instruction the core lacks, or a bad memory access)")
        tail = "\n".join(stderr.splitlines()[-5:])
        return f"{bundle_dir.name} on {linux.qemu}: exit {proc.returncode}, {meaning}:\n{tail}"

    def _require_emulator(self) -> str:
        linux = self.target.linux
        assert linux is not None
        path = shutil.which(linux.qemu)
        if path is None:
            raise ToolchainMissingError(f"{linux.qemu} not found (needed to run {self.target.name} bundles here): "
                                        f"apt-get install qemu-user (or make setup)")
        loader = next(Path(linux.sysroot).glob("lib/ld-linux*.so*"), None)
        if loader is None:
            raise ToolchainMissingError(f"no {linux.triple} C library in {linux.sysroot}: apt-get install "
                                        f"{' '.join(linux.packages)} (or make setup)")
        return path

    def _nm(self) -> str:
        linux = self.target.linux
        assert linux is not None
        tool = linux.tool("nm")
        path = shutil.which(tool)
        if path is None:
            raise ToolchainMissingError(f"{tool} not found (it reads the runner's marker addresses): apt-get install "
                                        f"{' '.join(linux.packages)} (or make setup)")
        return path


@dataclass
class _ElfSymbols:
    """Function symbols of one ELF file (link-time addresses), sorted, to name the function an address is in."""

    starts: list[int]
    ends: list[int]
    names: list[str]

    def name_of(self, addr: int) -> str | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        return self.names[i] if i >= 0 and addr < self.ends[i] else None


class _Symbols:
    """Names for the addresses a qemu-user run executed: per function in the runner and model.so, else per library."""

    def __init__(self, nm: str, bundle_dir: Path) -> None:
        self.nm, self.bundle_dir = nm, bundle_dir
        self.elves = {name: self._read(bundle_dir / name) for name in ("runner", "model.so")
                      if (bundle_dir / name).is_file()}

    def runner_address(self, name: str) -> int:
        runner = self.elves.get("runner")
        if runner is None or name not in runner.names:
            raise UsageError(f"{self.bundle_dir}/runner has no symbol {name}; compile the bundle again with edgebin")
        return runner.starts[runner.names.index(name)]

    def attribute(self, by_address: Counter, maps_text: str) -> Counter:
        """Window counts per TB address -> counts per symbol (kernels by their bundle.json symbol) or library."""
        regions = []  # (start, end, file name, load base)
        bases: dict[str, int] = {}
        for line in maps_text.splitlines():
            parts = line.split(maxsplit=5)
            if len(parts) < 6:
                continue
            start, end = (int(v, 16) for v in parts[0].split("-"))
            path = parts[5].strip()
            name = Path(path).name
            if int(parts[2], 16) == 0:
                bases.setdefault(path, start)  # the lowest mapping with file offset 0: where the ELF is loaded
            regions.append((start, end, name, path))
        regions.sort()
        starts = [r[0] for r in regions]
        counts: Counter = Counter()
        for addr, insns in by_address.items():
            i = bisect.bisect_right(starts, addr) - 1
            if i < 0 or addr >= regions[i][1]:
                counts["(unknown)"] += insns
                continue
            _, _, name, path = regions[i]
            elf = self.elves.get(name) if Path(path).parent == self.bundle_dir else None
            symbol = None
            if elf is not None:
                offset = 0 if name == "runner" else bases.get(path, 0)  # the runner is not PIE: addresses are final
                symbol = elf.name_of(addr - offset)
            counts[_kernel_symbol(symbol) if symbol else name] += insns
        return counts

    def _read(self, elf: Path) -> _ElfSymbols:
        try:
            proc = subprocess.run([self.nm, "-S", "-n", "--defined-only", str(elf)], capture_output=True, text=True,
                                  timeout=TOOL_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{Path(self.nm).name} did not read {elf} within {TOOL_TIMEOUT_S:.0f} s") from None
        if proc.returncode != 0:
            raise DeviceError(f"{Path(self.nm).name} could not read {elf}: {proc.stderr.strip()}")
        found: dict[int, tuple[int, str]] = {}
        for line in proc.stdout.splitlines():
            parts = line.split()
            if len(parts) != 4 or parts[2] not in "tTwW":
                continue
            start, size = int(parts[0], 16) & ~1, int(parts[1], 16)  # bit 0 marks Thumb code on 32-bit Arm
            if size and start not in found:
                found[start] = (size, parts[3])
        ordered = sorted(found)
        return _ElfSymbols(ordered, [s + found[s][0] for s in ordered], [found[s][1] for s in ordered])


def _kernel_symbol(symbol: str) -> str:
    """TVM's LLVM build splits a kernel into `__tvm_ffi_<name>` (argument unpacking) and `<name>_compute_`."""
    if symbol.endswith("_compute_") and not symbol.startswith("__tvm_ffi_"):
        return f"__tvm_ffi_{symbol.removesuffix('_compute_')}"
    return symbol
