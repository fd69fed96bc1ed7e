"""Benchmark: the bit-serial micro-kernels against the int8 and the 2-bit LUT micro-kernels, per shape, on QEMU
and on the host.

    .venv/bin/python tools/bench/bitserial.py                    # cortex-m4 (QEMU) and the x86 host
    .venv/bin/python tools/bench/bitserial.py --no-host --target cortex-m55 --planes 1x1 2x2

Shapes are ResNet-8's convs as the MCU schedule calls them (K inputs, Cout rows, P columns: the
`edgebin_matvec{,2,4}_u8s8` call). For each, one firmware runs `--calls` times each: the int8 kernel
`edgebin_matvec{P}_u8s8`, the LUT kernel `edgebin_lut2_matvec{P}_u8s8` on ternary weights packed at 2 bits
(mcu_lut.packed_constants), and the bit-serial kernel `edgebin_bs_matvec{P}_u8s8` at each (weight planes, activation
planes) of `--planes` (weights: 1 plane binary {-1, 1}, 2 ternary, 3 {-4..3}; uint8 activations of A bits, their
largest code present), every call in its own `noipa` function so that QEMU's instruction-count plugin counts it
alone; instructions per MAC are printed as a Markdown table, every kernel's sums checked against numpy first. The
host part compiles the same calls natively (gcc -O3 -march=native, the headers' plain C paths, one thread) into a
timing loop: the median over `--samples` samples of ns per call, each sample at least 0.2 ms of calls, the sums of
each bit-serial call checked against the int8 kernel's on the same weights.

`--model` measures a whole model instead: a StatsQ W2A2 ResNet-8 (2-bit weights and activations, 8-bit stem and
head; its quantizers set on random data, as the counts do not depend on training) compiled for `--target` with the
bit-serial mode off (the 2-bit LUT and int8 kernels), on (every low-bit layer bit-serial) and auto (the compiler's
rule, mcu_bitserial), run on QEMU: instructions per inference, per layer per MAC, and whether the outputs agree.

QEMU counts instructions, not cycles (docs/mcu-bundle.md). Not a test: nothing is asserted but the sums.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from edgebin import targets
from edgebin.compile.bitserial import pack_planes, weight_form
from edgebin.compile.mcu_emit import write_driver_bundle
from edgebin.compile.mcu_lut import packed_constants, palette_table
from edgebin.runners.qemu import QemuRunner

SHAPES = [(144, 16, 4), (288, 32, 2), (576, 64, 1)]  # (K, Cout, columns): ResNet-8's stacks 1-3 3x3 convs
PLANES = ["1x1", "2x1", "1x2", "1x3", "2x2", "1x4", "2x8"]  # weight planes x activation planes
LEVELS = {1: (-1, 1), 2: (-1, 0, 1), 3: tuple(range(-4, 4))}
SUFFIX = {1: "", 2: "2", 4: "4"}
HEADERS = ("edgebin_kernels.h", "edgebin_lut.h", "edgebin_bitserial.h")
HOST_MAIN = r"""
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e9 + t.tv_nsec;
}

static int by_value(const void* a, const void* b) {
  const double x = *(const double*)a, y = *(const double*)b;
  return (x > y) - (x < y);
}

/* The median over `samples` samples of ns per call of f, each sample at least 0.2 ms of calls. */
static double median_ns(void (*f)(int32_t*), int32_t* acc, int samples) {
  int reps = 1;
  for (double t0 = now_ns(); now_ns() - t0 < 2e5; reps *= 2)
    for (int r = 0; r < reps; ++r) f(acc);
  double* ns = malloc(sizeof(double) * samples);
  for (int s = 0; s < samples; ++s) {
    const double t0 = now_ns();
    for (int r = 0; r < reps; ++r) f(acc);
    ns[s] = (now_ns() - t0) / reps;
  }
  qsort(ns, samples, sizeof(double), by_value);
  const double m = ns[samples / 2];
  free(ns);
  return m;
}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--planes", nargs="+", default=PLANES, help="weight x activation planes, e.g. 1x2 (1-3 x 1-8)")
    parser.add_argument("--target", default="cortex-m4", help="a Cortex-M target from `edgebin targets`")
    parser.add_argument("--calls", type=int, default=4, help="QEMU: calls of each kernel")
    parser.add_argument("--samples", type=int, default=25, help="host: timing samples a kernel (median)")
    parser.add_argument("--no-qemu", action="store_true", help="skip the QEMU part")
    parser.add_argument("--no-host", action="store_true", help="skip the host part")
    parser.add_argument("--model", action="store_true", help="a whole W2A2 ResNet-8 in each bit-serial mode instead")
    args = parser.parse_args()
    if args.model:
        print(f"Made by `python {' '.join(shlex.quote(a) for a in sys.argv)}`.\n")
        print(whole_model(targets.load(args.target)))
        return 0
    try:
        configs = [tuple(int(v) for v in p.split("x")) for p in args.planes]
    except ValueError:
        parser.error("--planes: weight x activation planes, e.g. 1x2")
    if not all(wb in LEVELS and 1 <= a <= 8 for wb, a in configs):
        parser.error("--planes: 1-3 weight planes, 1-8 activation planes")
    print(f"Made by `python {' '.join(shlex.quote(a) for a in sys.argv)}`.\n")
    data = make_data(configs)
    if not args.no_qemu:
        counts = run_qemu(data, configs, targets.load(args.target), args.calls)
        if counts is None:
            return 1
        print(f"{args.target} (QEMU): instructions per MAC of each kernel call alone, {args.calls} calls, sums "
              "checked against numpy.\n")
        print(render(counts, configs, "{:.2f}"))
    if not args.no_host:
        times = run_host(data, configs, args.samples)
        if times is None:
            return 1
        print("Host (x86, gcc -O3 -march=native, 1 thread): ns per call, median of "
              f"{args.samples} samples, bit-serial sums checked against the int8 kernel's.\n")
        print(render(times, configs, "{:,.0f}"))
    return 0


def make_data(configs: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Per shape i: x{i}_{A} (P columns of A-bit uint8 codes), w{i}_{wb} (int8 weights of a wb-plane form), their
    planes bs{i}_{wb} and form f{i}_{wb}, and the ternary weights' 2-bit codes c{i} and table t{i}."""
    rng = np.random.default_rng(0)
    data = {}
    for i, (k, n, p) in enumerate(SHAPES):
        for a in sorted({a for _, a in configs}):
            x = rng.integers(0, 1 << a, p * k)
            x[:p] = (1 << a) - 1
            data[f"x{i}_{a}"] = x.astype(np.uint8)
        for wb in sorted({wb for wb, _ in configs} | {2}):
            w = rng.choice(np.array(LEVELS[wb], np.int8), (n, k))
            form = weight_form(w)
            assert form is not None and form.planes == wb
            data[f"w{i}_{wb}"], data[f"bs{i}_{wb}"], data[f"f{i}_{wb}"] = w, pack_planes(w, form), form.constant()
        table = palette_table(data[f"w{i}_2"])
        assert table is not None and table.bits == 2
        data[f"c{i}"], data[f"t{i}"] = packed_constants(data[f"w{i}_2"], table)
    return data


def calls(configs: list[tuple[int, int]]) -> list[tuple[str, str, str, str]]:
    """(function name, call, x array, weight array) of every kernel call: per shape int8, lut2, then bit-serial."""
    out = []
    for i, (k, n, p) in enumerate(SHAPES):
        a0 = configs[0][1]
        out.append((f"int8_{i}", f"edgebin_matvec{SUFFIX[p]}_u8s8(x{i}_{a0}, w{i}_2, {k}, {n}, acc)", f"x{i}_{a0}",
                    f"w{i}_2"))
        out.append((f"lut2_{i}", f"edgebin_lut2_matvec{SUFFIX[p]}_u8s8(x{i}_{a0}, c{i}, t{i}, {k}, {n}, acc)",
                    f"x{i}_{a0}", f"w{i}_2"))
        for wb, a in configs:
            out.append((f"bs{wb}x{a}_{i}", f"edgebin_bs_matvec{SUFFIX[p]}_u8s8(x{i}_{a}, bs{i}_{wb}, f{i}_{wb}, {k}, "
                        f"{n}, acc)", f"x{i}_{a}", f"w{i}_{wb}"))
    return out


def c_arrays(data: dict[str, np.ndarray]) -> list[str]:
    kinds = {np.dtype(np.uint8): "uint8_t", np.dtype(np.int8): "int8_t", np.dtype(np.uint32): "uint32_t",
             np.dtype(np.int32): "int32_t"}
    return [f"static const {kinds[a.dtype]} {name}[{a.size}] = {{{', '.join(map(str, a.reshape(-1).tolist()))}}};"
            for name, a in data.items()]


def c_prelude(data: dict[str, np.ndarray]) -> list[str]:
    largest = max(n * p for _, n, p in SHAPES)
    return ["#include <stdint.h>", "#include <string.h>", '#include "edgebin_lut.h"', '#include "edgebin_bitserial.h"',
            *c_arrays(data), f"static int32_t acc[{largest}];"]


def write_headers(directory: Path) -> None:
    kernels = resources.files("edgebin.compile").joinpath("mcu_kernels")
    for name in HEADERS:
        (directory / name).write_text(kernels.joinpath(name).read_text())


def run_qemu(data: dict[str, np.ndarray], configs: list[tuple[int, int]], target, repeat: int) -> dict | None:
    """{function: instructions per MAC}, or None (a message printed) when a kernel's sums differ from numpy."""
    lines, body, expected, at = c_prelude(data), [], {}, 0
    for name, call, x, w in calls(configs):
        shape = SHAPES[int(name.rsplit("_", 1)[1])]
        lines.append(f"__attribute__((noipa)) void {name}(int32_t* acc) {{ {call}; }}")
        want = (data[w].astype(np.int64) @ data[x].astype(np.int64).reshape(shape[2], -1).T).reshape(-1)
        body += [f"  for (int r = 0; r < {repeat}; ++r) {name}(acc);",
                 f"  for (int j = 0; j < {want.size}; ++j) output[o++] = (float)acc[j];"]
        expected[name] = (at, want.astype(np.float32))
        at += want.size
    lines += ['#include "model.h"', "int edgebin_model_run(const float* input, float* output) {", "  (void)input;",
              "  int o = 0;", *body, "  return 0;", "}",
              'const char* edgebin_model_name(void) { return "edgebin_bitserial_bench"; }']
    with tempfile.TemporaryDirectory(prefix="edgebin-bs-bench-") as tmp:
        bundle = write_driver_bundle(Path(tmp) / "bundle", {"bs_bench.c": "\n".join(lines) + "\n"}, 1, at,
                                     target.name)
        write_headers(bundle)
        runner = QemuRunner(target, timeout_s=600)
        result = runner.run(runner.build(bundle, Path(tmp) / "firmware"), np.zeros((1, 1), np.float32))
    got = result.outputs.reshape(-1)
    for name, (start, want) in expected.items():
        if not np.array_equal(got[start:start + len(want)], want):
            print(f"{name}: sums differ from numpy", file=sys.stderr)
            return None
    counts = result.per_symbol_instructions or {}
    return {name: counts[name] / (np.prod(SHAPES[int(name.rsplit("_", 1)[1])]) * repeat) for name in expected
            if name in counts}


def run_host(data: dict[str, np.ndarray], configs: list[tuple[int, int]], samples: int) -> dict | None:
    """{function: ns per call} on this machine, or None when gcc is missing or a bit-serial call's sums differ."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        print("host: no C compiler", file=sys.stderr)
        return None
    lines, body = [*c_prelude(data), HOST_MAIN], []
    for name, call, x, w in calls(configs):
        if name.startswith("lut2"):  # the LUT kernels are Cortex-M only (the host runs palettes as int8)
            continue
        lines.append(f"__attribute__((noipa)) void {name}(int32_t* acc) {{ {call}; }}")
        if name.startswith("bs"):  # the int8 kernel on the same weights gives the reference sums
            k, n, p = SHAPES[int(name.rsplit("_", 1)[1])]
            body.append(f"  {{ int32_t want[{n * p}]; edgebin_matvec{SUFFIX[p]}_u8s8({x}, {w}, {k}, {n}, want);\n"
                        f"    {name}(acc);\n"
                        f"    if (memcmp(want, acc, sizeof(want))) {{ printf(\"{name} differs\\n\"); return 1; }} }}")
        body.append(f'  printf("{name} %.1f\\n", median_ns({name}, acc, {samples}));')
    lines += ["int main(void) {", *body, "  return 0;", "}"]
    with tempfile.TemporaryDirectory(prefix="edgebin-bs-host-") as tmp:
        work = Path(tmp)
        write_headers(work)
        (work / "bench.c").write_text("\n".join(lines) + "\n")
        subprocess.run([cc, "-O3", "-march=native", "-I", str(work), str(work / "bench.c"), "-o", str(work / "bench")],
                       check=True, timeout=600)
        run = subprocess.run([str(work / "bench")], capture_output=True, text=True, timeout=1200)
    if run.returncode:
        print(f"host: {run.stdout.strip()}", file=sys.stderr)
        return None
    return {name: float(value) for name, value in (line.split() for line in run.stdout.splitlines())}


def render(values: dict[str, float], configs: list[tuple[int, int]], fmt: str) -> str:
    """A Markdown table: a row per shape, the int8 and lut2 kernels, then bit-serial at each weight x act planes."""
    header = ["K", "Cout", "columns", "int8 kernel", "LUT b = 2 (ternary)",
              *(f"bit-serial {wb} x {a}" for wb, a in configs)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for i, (k, n, p) in enumerate(SHAPES):
        names = [f"int8_{i}", f"lut2_{i}", *(f"bs{wb}x{a}_{i}" for wb, a in configs)]
        cells = [fmt.format(values[name]) if name in values else "—" for name in names]
        lines.append(f"| {k} | {n} | {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def whole_model(target) -> str:
    """The W2A2 ResNet-8 on QEMU with bit-serial off, on and auto: a Markdown summary and per-layer table."""
    import json

    import torch

    from edgebin import zoo
    from edgebin.compile.mcu_emit import compile_bundle
    from edgebin.export.qat import export_qat
    from edgebin.quant import Recipe, qat

    torch.manual_seed(0)
    model = qat.prepare(zoo.create("resnet8", input_size=28),
                        Recipe.for_method("statsq", weight_bits=2, activation_bits=2))
    qat.init_quantizers(model, torch.randn(32, 1, 28, 28))
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    runner, found = QemuRunner(target), {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        export_qat(model.eval(), (1, 1, 28, 28), work / "model.onnx")
        for mode in ("off", "on", "auto"):
            bundle = compile_bundle(work / "model.onnx", target, work / mode, bitserial=mode)
            manifest = json.loads((bundle / "bundle.json").read_text())
            result = runner.run(runner.build(bundle, work / f"firmware-{mode}"), x)
            per_symbol, calls = result.per_symbol_instructions or {}, {}
            for kernel in manifest["kernels"]:
                calls[kernel["symbol"]] = calls.get(kernel["symbol"], 0) + 1
            layers = {k["layer"]: (k["kind"], k["macs"], per_symbol.get(k["symbol"], 0) / calls[k["symbol"]])
                      for k in manifest["kernels"] if k["macs"]}
            found[mode] = (result.instructions, manifest["weights_bytes"], layers, result.outputs)
    same = {mode: np.array_equal(found[mode][3], found["off"][3]) for mode in ("on", "auto")}
    lines = [f"{target.name} (QEMU), one inference: off {found['off'][0]:,}, on {found['on'][0]:,}, auto "
             f"{found['auto'][0]:,} instructions; weights {found['off'][1]:,} / {found['on'][1]:,} / "
             f"{found['auto'][1]:,} B; outputs equal to off's: on {same['on']}, auto {same['auto']}.",
             "", "| layer | MACs | off: kernel | per MAC | on: per MAC | auto: kernel | per MAC |",
             "|---|---:|---|---:|---:|---|---:|"]
    for layer, (kind, macs, count) in found["off"][2].items():
        on, auto = found["on"][2][layer], found["auto"][2][layer]
        lines.append(f"| {layer} | {macs:,} | {kind} | {count / macs:.2f} | {on[2] / macs:.2f} | {auto[0]} | "
                     f"{auto[2] / macs:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
