"""Bit-serial weights (compile/bitserial.py) and their micro-kernels (mcu_kernels/edgebin_bitserial.h).

- `weight_form`, `pack_planes`, `kernel_name`, `activation_planes` against hand-computed values;
- every kernel (1, 2, 4 columns; int8 and uint8 activations) against the numpy sums, exactly: natively (the
  portable C, x86 POPCNT and PMOVMSKB, the SWAR count) and on QEMU (cortex-m4 and cortex-m55: the DSP path's
  assembly), for weight forms of 1, 2 and 3 planes, activations of 1, 2, 3, 4, 5 and 8 bits (full-range int8 and
  uint8 among them, and columns of fewer bits or all zeros beside them), reductions k that end inside, at and just
  past a word and run several passes of the stack buffer, row counts that are not multiples of 4, all-bits-set
  weights and activations at the assembly's byte-lane limits, and calls with k and n constants (the assembly's
  constant-remainder code) as well as variables; the columns' scan (their planes and sums) on both. One firmware per
  core runs every case.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from edgebin import targets
from edgebin.compile.bitserial import (
    BitForm,
    activation_planes,
    bitserial_matvec_reference,
    kernel_name,
    pack_planes,
    weight_form,
)
from edgebin.compile.mcu_emit import write_driver_bundle

HEADER = "edgebin_bitserial.h"
CC = shutil.which("cc") or shutil.which("gcc")
needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
    reason="qemu-system-arm or arm-none-eabi-gcc not installed; run make setup")


# --- the forms and the packing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "form"), [
    ([-1, 1, 1, -1], BitForm(1, -1, (2,))),              # binary
    ([-1, 0, 1, 0], BitForm(2, -1, (1, 2))),             # ternary
    ([-3, -1, 1, 3], BitForm(2, -3, (2, 4))),            # StatsQ W2
    ([5, 5, 5], BitForm(1, 5, (1,))),                    # one value: one plane of zeros
    ([0, 1, 1], BitForm(1, 0, (1,))),
    ([-128, 127], BitForm(1, -128, (255,))),
    ([-4, 3, 0, 1], BitForm(3, -4, (1, 2, 4))),
    ([10, 40, 70], BitForm(2, 10, (30, 60))),
])
def test_weight_form_takes_the_fewest_planes(values, form):
    assert weight_form(np.array(values, np.int8)) == form


def test_weight_form_refuses_what_it_cannot_take():
    assert weight_form(np.arange(-4, 5, dtype=np.int8)) is None  # codes 0..8: 4 planes
    assert weight_form(np.array([-1, 1], np.int32)) is None       # not int8
    assert weight_form(np.zeros(0, np.int8)) is None


def test_form_constant_is_the_kernels_form_argument():
    constant = BitForm(2, -3, (2, 4)).constant()
    assert constant.dtype == np.int32 and constant.tolist() == [2, -3, 2, 4]


def test_pack_planes_matches_hand_values():
    ternary = BitForm(2, -1, (1, 2))
    rows = np.zeros((2, 34), np.int8)  # codes 1 (weight 0) everywhere but the first four of row 0
    rows[0, :4] = (-1, 0, 1, 1)
    words = pack_planes(rows, ternary)
    assert words.dtype == np.uint32 and words.shape == (2 * 2 * 2,)
    # row 0: plane 0 (code bit 0: weights 0) bits 1 and 4..33; plane 1 (weights 1) bits 2, 3; row 1: plane 0 full
    assert words.tolist() == [0xFFFFFFF2, 0x3, 0xC, 0x0, 0xFFFFFFFF, 0x3, 0x0, 0x0]
    binary = pack_planes(np.array([[1, -1, 1, 1, -1]], np.int8), BitForm(1, -1, (2,)))
    assert binary.tolist() == [0b01101]
    w2 = pack_planes(np.array([[-3, -1, 1, 3]], np.int8), BitForm(2, -3, (2, 4)))
    assert w2.tolist() == [0b1010, 0b1100]


def test_pack_planes_refuses_values_outside_the_form():
    with pytest.raises(ValueError, match="not beta"):
        pack_planes(np.array([[-1, 0]], np.int8), BitForm(1, -1, (2,)))
    with pytest.raises(ValueError, match="not beta"):
        pack_planes(np.array([[3]], np.int8), BitForm(1, 0, (1,)))


def test_kernel_name_and_activation_planes():
    assert kernel_name("edgebin_matvec2_u8s8") == "edgebin_bs_matvec2_u8s8"
    assert kernel_name("edgebin_matvec_s8") == "edgebin_bs_matvec_s8"
    with pytest.raises(ValueError):
        kernel_name("edgebin_lut4_matvec_s8")
    assert [activation_planes(0, q, False) for q in (0, 1, 3, 4, 255)] == [0, 1, 2, 3, 8]
    assert [activation_planes(lo, hi, True) for lo, hi in ((0, 0), (-1, 0), (-2, 1), (-8, 7), (-3, 0), (-128, 127),
                                                           (0, 127), (-128, 0))] == [1, 1, 2, 4, 3, 8, 8, 8]
    with pytest.raises(ValueError):
        activation_planes(-1, 3, False)


def test_activation_planes_is_what_the_kernel_takes():
    """The bound is the largest the kernel's rule (bit length of the OR, of x ^ (x >> 7) for int8) gives."""
    for signed in (False, True):
        low, high = (-128, 127) if signed else (0, 255)
        for qmin in range(low, high + 1, 7):
            for qmax in range(qmin, high + 1, 11):
                x = np.arange(qmin, qmax + 1)
                bits = np.bitwise_or.reduce(x ^ (x >> 7) if signed else x)
                assert activation_planes(qmin, qmax, signed) == int(bits).bit_length() + signed


# --- the kernels against numpy ---------------------------------------------------------------------------------

KS = (9, 31, 32, 33, 144, 330, 576)
ROWS = {9: 13, 31: 7, 32: 5, 33: 3, 144: 7, 330: 5, 576: 5, 1032: 3}  # n, never a multiple of 4
FORMS = ((-1, 1), (-100, 27), (-1, 0, 1), (-3, -1, 1, 3), tuple(range(-7, 8, 2)))  # 1, 1, 2, 2, 3 planes
ACTIVATION_BITS = (1, 2, 3, 4, 5, 8)
COLUMNS = (1, 2, 4)
# (k, form index, activation bits, u) with every weight at its largest code and every activation at all its bits
# set: the most the assembly's byte lanes hold (two planes in pairs over 10 words; one plane over 30 words, 1032 = 33
# words a pass of 30 and one of 3).
SATURATED = ((576, 3, 2, 1), (576, 0, 2, 1), (576, 4, 8, 1), (576, 0, 4, 0), (1032, 0, 1, 1), (1032, 3, 1, 1))
# (k, columns, u, form index, activation bits), each called with k and n constants, as the compiled models call them
# (the assembly then has the words % 3 of k as a constant: 0, 1, 2 below, with and without whole groups of three
# words after them; four columns take planes in pairs).
CONSTANT_CASES = ((96, 4, 1, 0, 2), (128, 4, 0, 2, 3), (144, 4, 1, 4, 4), (96, 2, 0, 1, 8), (128, 1, 1, 3, 2),
                  (144, 2, 1, 0, 1), (144, 1, 0, 2, 3), (16, 2, 1, 0, 2), (40, 4, 1, 3, 2), (9, 1, 0, 2, 3),
                  (64, 4, 0, 4, 1))
CONSTANT_ROWS = 6
DISPATCH_C = """#include <stdint.h>
#include "edgebin_bitserial.h"

/* edgebin_bs_matvec{p}_{s8 if u == 0, u8s8 if u == 1}; never inlined into the driver's calls (k, n constant there:
 * one specialized copy of the kernels per call would make the firmware large and slow to build). */
__attribute__((noipa)) int edgebin_bs_test(int p, int u, const void* x, const uint32_t* planes, const int32_t* form,
                                           int32_t k, int32_t n, int32_t* acc) {
  if (p == 1 && u) edgebin_bs_matvec_u8s8((const uint8_t*)x, planes, form, k, n, acc);
  else if (p == 1) edgebin_bs_matvec_s8((const int8_t*)x, planes, form, k, n, acc);
  else if (p == 2 && u) edgebin_bs_matvec2_u8s8((const uint8_t*)x, planes, form, k, n, acc);
  else if (p == 2) edgebin_bs_matvec2_s8((const int8_t*)x, planes, form, k, n, acc);
  else if (p == 4 && u) edgebin_bs_matvec4_u8s8((const uint8_t*)x, planes, form, k, n, acc);
  else if (p == 4) edgebin_bs_matvec4_s8((const int8_t*)x, planes, form, k, n, acc);
  else return 1;
  return 0;
}

/* The activation planes the kernels take for the column of k values at x, and its sum. */
__attribute__((noipa)) int edgebin_bs_test_planes(const void* x, int32_t k, int u, int32_t* sum) {
  if (u) return edgebin_bs_planes(edgebin_bs_scan((const uint8_t*)x, k, sum, 1), 1);
  return edgebin_bs_planes(edgebin_bs_scan((const uint8_t*)x, k, sum, 0), 0);
}
"""


def header_text() -> str:
    return resources.files("edgebin.compile").joinpath("mcu_kernels", HEADER).read_text()


def weight_case(k: int, levels: tuple[int, ...], seed: int, full: bool = False) -> tuple[np.ndarray, ...]:
    """(int8 rows (n, k) using every level, or `full`: all at the largest, their planes, their form constant)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(np.array(levels, np.int8), size=(ROWS[k], k))
    rows.reshape(-1)[:len(levels)] = levels
    if full:
        rows[:] = max(levels)
        rows[0, :2] = sorted(levels)[:2]  # the form's beta and step
    form = weight_form(rows)
    assert form is not None and form.planes == max(1, (len(levels) - 1).bit_length()), levels
    return rows, pack_planes(rows, form), form.constant()


def activation_case(k: int, bits: int, u: int, seed: int, full: bool = False) -> np.ndarray:
    """4 columns of k bytes: columns 0-2 of `bits`-bit values with both extremes (uint8: 0..2^b - 1; int8:
    -2^(b-1)..2^(b-1) - 1), column 3 of half as many bits (0: all zeros, or for int8 -1 and 0). `full`: every
    column's values all bits set (uint8: 2^b - 1; int8: -1, one -2^(b-1) for the bit length)."""
    rng = np.random.default_rng(seed)
    columns = []
    for b in (bits, bits, bits, bits // 2):
        low, high = (0, (1 << b) - 1) if u else (-(1 << max(b, 1) >> 1), (1 << max(b, 1) >> 1) - 1)
        column = rng.integers(low, high + 1, k)
        column[rng.permutation(k)[:2]] = (low, high)
        if full:
            column[:] = high if u else -1
            column[0] = high if u else low
        columns.append(column)
    return np.concatenate(columns).astype(np.uint8 if u else np.int8).view(np.uint8)


def expected(x: np.ndarray, rows: np.ndarray, p: int, u: int) -> np.ndarray:
    """acc[j p + c] = rows[j] . column c."""
    k = rows.shape[1]
    columns = x[:p * k].view(np.uint8 if u else np.int8).reshape(p, k)
    return bitserial_matvec_reference(columns, rows).T.reshape(-1)


def planes_and_sums(x: np.ndarray, k: int, u: int) -> np.ndarray:
    """Per column of x: the activation planes the kernel's rule gives (bit length of the OR, of x ^ (x >> 7) for
    int8, plus the sign plane) and the column's sum, interleaved."""
    out = []
    for column in x.view(np.uint8 if u else np.int8).astype(np.int64).reshape(4, k):
        bits = np.bitwise_or.reduce(column if u else column ^ (column >> 7))
        out += [int(bits).bit_length() + (not u), int(column.sum())]
    return np.array(out)


def cases():
    """(k, form index, activation bits, u, seed of the weights, seed of the activations, saturated)."""
    for i, k in enumerate(KS):
        for f in range(len(FORMS)):
            for b in ACTIVATION_BITS:
                for u in (0, 1):
                    yield k, f, b, u, 10 * i + f, 1000 + 100 * i + 2 * b + u, False
    for i, (k, f, b, u) in enumerate(SATURATED):
        yield k, f, b, u, 2000 + i, 3000 + i, True


def _build(work: Path, name: str, flags: list[str]) -> ctypes.CDLL:
    (work / HEADER).write_text(header_text())
    (work / "bs_test.c").write_text(DISPATCH_C)
    subprocess.run([CC, "-O2", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", *flags, f"-I{work}",
                    str(work / "bs_test.c"), "-o", str(work / name)], check=True, timeout=120)
    return ctypes.CDLL(str(work / name))


NATIVE = {"portable": ["-DEDGEBIN_NO_SIMD"], "default": [], "native": ["-march=native"]}


@pytest.fixture(scope="module", params=list(NATIVE))
def native(request, tmp_path_factory) -> ctypes.CDLL:
    """The plain C path as a shared library: portable (SWAR count, multiply gather), the compiler's defaults (x86:
    SSE2 gather, SWAR count), -march=native (AVX2 gather, POPCNT)."""
    if CC is None:
        pytest.skip("no C compiler")
    return _build(tmp_path_factory.mktemp(f"bitserial_{request.param}"), f"{request.param}.so", NATIVE[request.param])


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


def test_kernels_natively_equal_numpy(native):
    weights, xs = {}, {}
    for k, f, b, u, wseed, xseed, full in cases():
        rows, planes, form = weights.setdefault((k, f, full), weight_case(k, FORMS[f], wseed, full))
        x = xs.setdefault((k, b, u, full), activation_case(k, b, u, xseed, full))
        for p in COLUMNS:
            acc = np.full(ROWS[k] * p, 12345, np.int32)  # junk: the kernel overwrites it
            assert native.edgebin_bs_test(p, u, _ptr(x), _ptr(planes), _ptr(form), k, ROWS[k], _ptr(acc)) == 0
            np.testing.assert_array_equal(acc, expected(x, rows, p, u),
                                          err_msg=f"k={k} form={FORMS[f]} bits={b} u={u} p={p} full={full}")


def test_columns_take_the_planes_of_the_rule_and_their_sums(native):
    for (k, b, u, full), x in {(k, b, u, full): activation_case(k, b, u, xseed, full)
                               for k, _, b, u, _, xseed, full in cases()}.items():
        got, total = [], ctypes.c_int32()
        for c in range(4):
            got += [native.edgebin_bs_test_planes(_ptr(x[c * k:]), k, u, ctypes.byref(total)), total.value]
        np.testing.assert_array_equal(got, planes_and_sums(x, k, u), err_msg=f"k={k} bits={b} u={u} full={full}")


def test_zero_length_reduction_gives_zero_sums(native):
    planes, form, x = np.zeros(1, np.uint32), BitForm(1, -1, (2,)).constant(), np.zeros(4, np.uint8)
    for p in COLUMNS:
        for u in (0, 1):
            acc = np.full(3 * p, 7, np.int32)
            native.edgebin_bs_test(p, u, _ptr(x), _ptr(planes), _ptr(form), 0, 3, _ptr(acc))
            assert not acc.any()


def _array(ctype: str, name: str, values: np.ndarray) -> str:
    return f"static const {ctype} {name}[{values.size}] = {{{', '.join(map(str, values.reshape(-1).tolist()))}}};"


def _table_cases(lines: list[str], want: list[np.ndarray]) -> tuple[list[str], list[str]]:
    """The arrays of every case() (into `lines`), their sums (into `want`), the rows of the driver's table of
    calls (k and n variables: the kernels' generic code), then for each activation array its columns' planes and
    sums (edgebin_bs_test_planes: the DSP scan) and the driver's rows of those."""
    table, scans, weights, xs = [], [], {}, {}
    for k, f, b, u, wseed, xseed, full in cases():
        w, x = f"w{k}_{f}_{int(full)}", f"x{k}_{b}_{u}_{int(full)}"
        if (k, f, full) not in weights:
            _, planes, form = weights[k, f, full] = weight_case(k, FORMS[f], wseed, full)
            lines += [_array("uint32_t", w, planes), _array("int32_t", f"f{w}", form)]
        if (k, b, u, full) not in xs:
            xs[k, b, u, full] = activation_case(k, b, u, xseed, full)
            lines.append(_array("uint8_t", x, xs[k, b, u, full]))
            scans.append(f"  {{{x}, {k}, {u}}},")
        for p in COLUMNS:
            table.append(f"  {{{p}, {u}, {x}, {w}, f{w}, {k}, {ROWS[k]}}},")
            want.append(expected(xs[k, b, u, full], weights[k, f, full][0], p, u))
    want += [planes_and_sums(x, k, u) for (k, _, u, _), x in xs.items()]
    return table, scans


def _constant_cases(lines: list[str], want: list[np.ndarray]) -> list[str]:
    """The arrays and a function of each CONSTANT_CASES call, k and n constants in it (into `lines`), their sums
    (into `want`), and the driver's statements that call them."""
    calls = []
    for i, (k, p, u, f, b) in enumerate(CONSTANT_CASES):
        rows = np.random.default_rng(500 + i).choice(np.array(FORMS[f], np.int8), size=(CONSTANT_ROWS, k))
        form, x = weight_form(rows), activation_case(k, b, u, 600 + i)
        kernel, xtype = f"edgebin_bs_matvec{'' if p == 1 else p}_{'u8s8' if u else 's8'}", "uint8_t" if u else "int8_t"
        lines += [_array("uint32_t", f"cw{i}", pack_planes(rows, form)), _array("int32_t", f"cf{i}", form.constant()),
                  _array("uint8_t", f"cx{i}", x), f"__attribute__((noipa)) static void constant{i}(int32_t* acc) {{",
                  f"  {kernel}((const {xtype}*)cx{i}, cw{i}, cf{i}, {k}, {CONSTANT_ROWS}, acc);", "}"]
        calls += [f"  for (int j = 0; j < {CONSTANT_ROWS * p}; ++j) acc[j] = 12345;", f"  constant{i}(acc);",
                  f"  for (int j = 0; j < {CONSTANT_ROWS * p}; ++j) *output++ = (float)acc[j];"]
        want.append(expected(x, rows, p, u))
    return calls


def qemu_bundle(directory: Path, target: str) -> tuple[Path, np.ndarray]:
    """A bundle whose `edgebin_model_run` runs every case (data compiled in: a table of calls, then the constant ones)
    and writes the accumulators as floats (exact: |acc| < 2^24 for these forms); and the numpy reference of those
    outputs."""
    lines, want = [DISPATCH_C], []
    (table, scans), constant_calls = _table_cases(lines, want), _constant_cases(lines, want)
    reference = np.concatenate(want)
    assert np.abs(reference).max() < 1 << 24
    lines += ["typedef struct { int p, u; const uint8_t* x; const uint32_t* w; const int32_t* f; int32_t k, n; } call;",
              "static const call calls[] = {", *table, "};",
              "typedef struct { const uint8_t* x; int32_t k; int u; } scan;",
              "static const scan scans[] = {", *scans, "};", '#include "model.h"',
              f"static int32_t acc[{4 * max(ROWS.values())}];",
              "int edgebin_model_run(const float* input, float* output) {",
              "  (void)input;",
              "  for (unsigned c = 0; c < sizeof(calls) / sizeof(calls[0]); ++c) {",
              "    const call* t = &calls[c];",
              "    for (int j = 0; j < t->n * t->p; ++j) acc[j] = 12345;  /* junk: the kernel overwrites it */",
              "    if (edgebin_bs_test(t->p, t->u, t->x, t->w, t->f, t->k, t->n, acc)) return 1;",
              "    for (int j = 0; j < t->n * t->p; ++j) *output++ = (float)acc[j];",
              "  }",
              "  for (unsigned c = 0; c < sizeof(scans) / sizeof(scans[0]); ++c)",
              "    for (int p = 0; p < 4; ++p) {",
              "      int32_t sum;",
              "      const scan* t = &scans[c];",
              "      *output++ = (float)edgebin_bs_test_planes(t->x + p * t->k, t->k, t->u, &sum);",
              "      *output++ = (float)sum;",
              "    }",
              *constant_calls,
              "  return 0;",
              "}", 'const char* edgebin_model_name(void) { return "edgebin_bitserial_test"; }']
    bundle = write_driver_bundle(directory, {"bs_test.c": "\n".join(lines) + "\n"}, 1, reference.size, target)
    (bundle / HEADER).write_text(header_text())
    return bundle, reference.astype(np.float32)


@needs_qemu
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m55"])
def test_dsp_kernels_on_cortex_m_equal_numpy(tmp_path, target):
    from edgebin.runners import QemuRunner

    bundle, want = qemu_bundle(tmp_path / "bundle", target)
    runner = QemuRunner(targets.load(target), timeout_s=120)
    elf = runner.build(bundle, tmp_path / "build")
    disassembly = subprocess.run(["arm-none-eabi-objdump", "-d", str(elf)], capture_output=True, text=True,
                                 check=True, timeout=60).stdout
    assert "usada8" in disassembly and "0xaaaaaaaa" in disassembly  # the DSP path's SWAR count
    got = runner.run(elf, np.zeros((1, 1), np.float32), count_instructions=False).outputs.reshape(-1)
    np.testing.assert_array_equal(got, want)
