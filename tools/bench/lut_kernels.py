"""Benchmark: the LUT micro-kernels (b-bit codes into a table) against the int8 micro-kernel, per shape, on QEMU.

    .venv/bin/python tools/bench/lut_kernels.py                          # cortex-m4, b = 2, 3, 4
    .venv/bin/python tools/bench/lut_kernels.py --bits 2 4 6 --target cortex-m33 --decode

One firmware runs, for each shape (K inputs, Cout rows, P columns: the `edgebin_matvec{,2,4}` that the MCU schedule
calls for it) and each b, the int8 kernel `edgebin_matvec{P}_u8s8` on the int8 weights table[codes] and the LUT kernel
`edgebin_lut{b}_matvec{P}_u8s8` on the packed codes, `--calls` times each (the pair table is built by the first call
only, as within a layer), every call in its own `noipa` function (not inlined, not cloned) so that QEMU's
instruction-count plugin counts it alone. Instructions per MAC are printed as a Markdown table; every kernel's sums
are checked against numpy first (exact int32: the LUT kernels' are the int8 kernel's bit for bit). `--decode` adds
the alternative that docs/lut-weights.md rules out at b = 4: decode rows into an int8 stack buffer (a byte -> two
int8 table), then the int8 kernel.

QEMU counts instructions, not cycles (docs/mcu-bundle.md). Not a test: nothing is asserted but the sums.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgebin import targets
from edgebin.compile.lut_weights import pack_codes
from edgebin.compile.mcu_emit import write_driver_bundle
from edgebin.runners.qemu import QemuRunner

# (K, Cout, columns): ResNet-8's convs and gemm as the MCU schedule calls them, and a 9-tap stem.
SHAPES = [(9, 16, 4), (72, 8, 2), (144, 16, 4), (144, 32, 2), (288, 32, 2), (288, 64, 1), (576, 64, 1), (64, 10, 1),
          (400, 120, 1)]
SUFFIX = {1: "", 2: "2", 4: "4"}
DECODE_C = r"""
/* The alternative: rows decoded into an int8 stack buffer (a byte -> two int8 through a 256-entry table), then the
 * int8 kernel. b = 4 only. */
static int16_t dec_pairs[256];
static const int8_t* dec_of;
static inline __attribute__((always_inline)) void dec_rows(const uint8_t* c, const int8_t* t, int32_t k, int32_t rows,
                                                           int8_t* out) {
  if (dec_of != t) {
    for (int i = 0; i < 256; ++i) dec_pairs[i] = (uint8_t)t[i & 15] | (uint16_t)((uint8_t)t[i >> 4] << 8);
    dec_of = t;
  }
  const int32_t rb = (k + 1) >> 1;
  for (int32_t j = 0; j < rows; ++j) {
    const uint8_t* r = c + j * rb;
    int8_t* o = out + j * k;
    int32_t i = 0;
    for (; i + 8 <= k; i += 8) {
      uint32_t v;
      memcpy(&v, r + i / 2, 4);
      uint32_t a = (uint16_t)dec_pairs[v & 255] | (uint32_t)(uint16_t)dec_pairs[(v >> 8) & 255] << 16;
      uint32_t b = (uint16_t)dec_pairs[(v >> 16) & 255] | (uint32_t)(uint16_t)dec_pairs[v >> 24] << 16;
      memcpy(o + i, &a, 4);
      memcpy(o + i + 4, &b, 4);
    }
    for (; i < k; ++i) o[i] = t[(r[i >> 1] >> (4 * (i & 1))) & 15];
  }
}
static inline __attribute__((always_inline)) void dec_matvec(const uint8_t* x, const uint8_t* c, const int8_t* t,
                                                             int32_t k, int32_t n, int32_t* acc, int P) {
  int8_t buf[4 * 640];
  const int32_t rb = (k + 1) >> 1;
  if (P == 1) {
    int32_t j = 0;
    for (; j + 4 <= n; j += 4) {
      dec_rows(c + j * rb, t, k, 4, buf);
      edgebin_matvec_u8s8(x, buf, k, 4, acc + j);
    }
    for (; j < n; ++j) {
      dec_rows(c + j * rb, t, k, 1, buf);
      edgebin_matvec_u8s8(x, buf, k, 1, acc + j);
    }
    return;
  }
  int32_t rows = 2048 / k;
  rows = rows > n ? n : rows < 1 ? 1 : rows;
  for (int32_t j = 0; j < n; j += rows) {
    const int32_t m = n - j < rows ? n - j : rows;
    dec_rows(c + j * rb, t, k, m, buf);
    if (P == 2) edgebin_matvec2_u8s8(x, buf, k, m, acc + j * P);
    else edgebin_matvec4_u8s8(x, buf, k, m, acc + j * P);
  }
}
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4], help="code widths b (2..7)")
    parser.add_argument("--target", default="cortex-m4", help="a Cortex-M target from `edgebin targets`")
    parser.add_argument("--calls", type=int, default=16, help="calls of each kernel (the pair table built once)")
    parser.add_argument("--decode", action="store_true", help="also decode-to-buffer + the int8 kernel (b = 4)")
    args = parser.parse_args()
    if not all(2 <= b <= 7 for b in args.bits):
        parser.error("--bits: the LUT kernels take b = 2..7")
    target = targets.load(args.target)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    source, outputs, expected = firmware_source(args.bits, args.calls, args.decode)
    with tempfile.TemporaryDirectory(prefix="edgebin-lut-bench-") as tmp:
        bundle = write_driver_bundle(Path(tmp) / "bundle", {"lut_bench.c": source}, 1, outputs, target.name)
        runner = QemuRunner(target, timeout_s=600)
        result = runner.run(runner.build(bundle, Path(tmp) / "firmware"), np.zeros((1, 1), np.float32))
    got = result.outputs.reshape(-1)
    for name, (start, want) in expected.items():
        if not np.array_equal(got[start:start + len(want)], want):
            print(f"{name}: sums differ from numpy", file=sys.stderr)
            return 1
    counts = result.per_symbol_instructions or {}
    print(f"Made by `{command}` ({target.name}, QEMU {target.qemu.machine}): instructions per MAC of each kernel "
          f"call alone, {args.calls} calls, sums checked against numpy.\n")
    print(render(counts, args.bits, args.calls, args.decode))
    return 0


def firmware_source(bits: list[int], calls: int, decode: bool) -> tuple[str, int, dict[str, tuple[int, np.ndarray]]]:
    """(the C of `edgebin_model_run`, the number of float outputs, {function: (first output, expected sums)}):
    every function is called `calls` times, then its accumulators are written out as floats (exact below 2^24)."""
    rng = np.random.default_rng(0)
    lines = ["#include <stdint.h>", "#include <string.h>", '#include "edgebin_lut.h"', '#include "model.h"']
    if decode:
        lines.append(DECODE_C)
    body, expected, at = [], {}, 0

    def array(ctype: str, name: str, values: np.ndarray) -> str:
        return f"static const {ctype} {name}[{values.size}] = {{{', '.join(map(str, values.reshape(-1).tolist()))}}};"

    def function(name: str, call: str, want: np.ndarray) -> None:
        nonlocal at
        lines.append(f"__attribute__((noipa)) void {name}(int32_t* acc) {{ {call}; }}")
        body.extend([f"  for (int r = 0; r < {calls}; ++r) {name}(acc);",
                     f"  for (int j = 0; j < {want.size}; ++j) output[o++] = (float)acc[j];"])
        expected[name] = (at, want.astype(np.float32))
        at += want.size

    for i, (k, n, p) in enumerate(SHAPES):
        x = rng.integers(0, 256, p * k).astype(np.uint8)
        lines.append(array("uint8_t", f"x{i}", x))
        columns = x.astype(np.int64).reshape(p, k)
        for b in sorted(set(bits) | ({4} if decode else set())):
            levels = np.sort(rng.integers(-128, 128, 1 << b)).astype(np.int8)
            codes = rng.integers(0, 1 << b, (n, k))
            weights = levels[codes]
            want = (weights.astype(np.int64) @ columns.T).reshape(-1)
            packed = np.concatenate([pack_codes(codes, b).reshape(-1), np.zeros(3, np.uint8)])
            lines += [array("int8_t", f"w{i}_{b}", weights), array("uint8_t", f"c{i}_{b}", packed),
                      array("int8_t", f"t{i}_{b}", levels)]
            if b == max(bits):
                function(f"int8_{i}", f"edgebin_matvec{SUFFIX[p]}_u8s8(x{i}, w{i}_{b}, {k}, {n}, acc)", want)
            if b in bits:
                lut = f"edgebin_lut{b}_matvec{SUFFIX[p]}_u8s8"
                function(f"lut{b}_{i}", f"{lut}(x{i}, c{i}_{b}, t{i}_{b}, {k}, {n}, acc)", want)
            if decode and b == 4:
                function(f"decode_{i}", f"dec_matvec(x{i}, c{i}_4, t{i}_4, {k}, {n}, acc, {p})", want)
    largest = max(n * p for _, n, p in SHAPES)
    lines += [f"static int32_t acc[{largest}];", "int edgebin_model_run(const float* input, float* output) {",
              "  (void)input;", "  int o = 0;", *body, "  return 0;", "}",
              'const char* edgebin_model_name(void) { return "edgebin_lut_bench"; }']
    return "\n".join(lines) + "\n", at, expected


def render(counts: dict[str, int], bits: list[int], calls: int, decode: bool) -> str:
    """A Markdown table: a row per shape, instructions per MAC of the int8 kernel and of each LUT kernel."""
    header = ["K", "Cout", "columns", "int8 kernel", *(f"LUT b = {b}" for b in bits)]
    header += ["decode row to buffer + int8 kernel (b = 4)"] if decode else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for i, (k, n, p) in enumerate(SHAPES):
        macs = k * n * p * calls
        names = [f"int8_{i}", *(f"lut{b}_{i}" for b in bits), *([f"decode_{i}"] if decode else [])]
        cells = [f"{counts[name] / macs:.2f}" if name in counts else "—" for name in names]
        lines.append(f"| {k} | {n} | {p} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
