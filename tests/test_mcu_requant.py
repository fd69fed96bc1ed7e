"""The requant fused into the int8 micro-kernels (`edgebin_matvec{,2,4}_{s8,u8s8}_rq`, edgebin_kernels.h) against
requant.py's integer reference, bit for bit: natively (plain C) and on QEMU for each DSP core (SMMLA, USAT).

Each case fixes a requant (grid exponent e, zero point, clip) and draws inputs, weights, multipliers G and biases;
`mcu_schedule.fused_requant_constants` picks the kernel's constants as the schedule does. The reference is
`requant.round_f32_half_even` on t = sum G + A, the computation of the TVM epilogue the kernel replaces. Cases
cover exact and near ties (G = 2^(e-3): sums 4 mod 8 are ties), saturation on both sides, int8 outputs
(SSAT), a ReLU-like clip [zy, 255] (plain compares), a zero point folded apart from the rounding constant
(plus = 0), every k % 4 and k < 4, n odd, even and a multiple of 4 (one, two and four channels a pass of the spread
form's loop), output strides past an immediate, and 1, 2 and 4 columns. Every case runs with the table in its first
form, then in the spread form (edgebin_rq_spread) twice, the second call meeting its near ties in the table's cache;
the 3x3 cases (`image`) run edgebin_conv3x3_*_rq on an image whose windows are the columns.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edgebin import targets
from edgebin.compile.mcu_emit import MICRO_KERNEL_HEADER, micro_kernel_headers, write_driver_bundle
from edgebin.compile.mcu_schedule import fused_requant_constants
from edgebin.compile.requant import NumpyOps, round_f32_half_even, tie_reach

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="no gcc")
needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
    reason="qemu-system-arm or arm-none-eabi-gcc not installed; run make setup")


@dataclass(frozen=True)
class Case:
    k: int
    n: int
    lanes: int
    e: int
    zy: int
    lo: int = 0
    hi: int = 255
    x_dtype: str = "uint8"
    ties: bool = False  # G = 2^(e-3) and small codes: an eighth of the outputs are exact ties
    grid_bits: tuple[int, int] = (12, 6)  # otherwise G from 2^(e-12) to 2^(e-6)
    plus_apart: bool = False  # the zero point added after the rounding (requant.py's plus = 0)
    seed: int = 0
    out_stride: int = 0  # bytes from one channel's outputs to the next; 0: the lanes (dense)
    image: int = 0  # k = 9, 4 lanes: the columns are 3x3 windows of a 3-row image this wide (edgebin_conv3x3_*_rq)

    @property
    def stride(self) -> int:
        return self.out_stride or self.lanes

    def data(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        lo, hi = (0, 256) if self.x_dtype == "uint8" else (-128, 128)
        shape = (3, self.image) if self.image else (self.lanes, self.k)
        x = rng.integers(lo // 16 if self.ties else lo, hi // 16 if self.ties else hi, shape)
        image = x
        if self.image:  # the windows start at column 1: x[p, 3 ky + kx] = image[ky, 1 + p + kx]
            x = np.stack([image[:, 1 + p:4 + p].reshape(-1) for p in range(4)])
        w = rng.integers(-128, 128, (self.n, self.k))
        w[rng.random(w.shape) < 0.1] = -128  # the extreme SXTB16 and SMLAD see most
        if self.ties:
            w = rng.integers(-2, 3, (self.n, self.k))
        low, high = (1 << (self.e - b) for b in self.grid_bits)
        grid = np.full(self.n, 1 << (self.e - 3)) if self.ties else rng.integers(low, high, self.n)
        bias = rng.integers(-3000, 3000, self.n)
        return {"x": x, "image": image, "w": w, "grid": grid, "offset": bias * grid + self.addend}

    @property
    def plus(self) -> int:
        return 0 if self.plus_apart else self.zy

    @property
    def addend(self) -> int:
        return (1 << (self.e - 1)) + tie_reach(self.e) + (self.plus << self.e)

    def info(self, data: dict[str, np.ndarray]) -> dict[str, int]:
        return {"e": self.e, "zy": self.zy, "plus": self.plus, "lo": self.lo, "hi": self.hi, "addend": self.addend,
                "reach": tie_reach(self.e), "grid_max": int(data["grid"].max()), "clamp": 0, "narrow": 1,
                "offset_max": int(np.abs(data["offset"]).max())}

    def reference(self, data: dict[str, np.ndarray]) -> np.ndarray:
        """(n, lanes) outputs as the TVM epilogue computes them (requant.Requantizer.linear, fixed)."""
        sums = data["w"] @ data["x"].T
        t = sums * data["grid"][:, None] + data["offset"][:, None]
        value = round_f32_half_even(t - self.addend, self.e, NumpyOps(), t=t, plus=self.plus)
        return np.clip(value + (self.zy - self.plus), self.lo, self.hi)


CASES = [
    Case(9, 16, 4, 33, 0),  # the stem's shape
    Case(9, 16, 4, 33, 0, ties=True, seed=1),
    Case(16, 32, 2, 32, 165),  # stack2.shortcut
    Case(16, 22, 2, 33, 120, ties=True, seed=2),
    Case(32, 13, 1, 33, 62, seed=3),  # stack3.shortcut, 4 rows and a remainder of 1
    Case(35, 29, 1, 33, 10, ties=True, seed=4),
    Case(25, 6, 4, 31, 0, lo=40, seed=5),  # a clip that is no USAT
    Case(26, 5, 2, 33, 3, lo=-128, hi=127, x_dtype="int8", grid_bits=(16, 12), seed=6),  # int8 in and out: SSAT
    Case(27, 4, 1, 36, -7, lo=-128, hi=127, x_dtype="int8", grid_bits=(16, 13), seed=7),
    Case(144, 16, 4, 34, 143, plus_apart=True, seed=8),
    Case(10, 11, 4, 33, 128, ties=True, plus_apart=True, seed=9),
    Case(9, 16, 4, 33, 0, out_stride=784, seed=10),  # the stem's output stride: four channels' stores up to 2,355 on
    Case(3, 7, 4, 33, 5, seed=11),  # k < 4: the tail is the whole row
    Case(2, 5, 2, 33, 5, seed=12),
    Case(1, 6, 1, 33, 5, seed=13),
    Case(14, 9, 2, 33, 7, out_stride=196, seed=14),  # k % 4 = 2: one pair for the tail's two bytes
    Case(13, 10, 2, 33, 7, ties=True, seed=15),
    Case(6, 8, 4, 33, 7, lo=-128, hi=127, x_dtype="int8", grid_bits=(16, 12), seed=16),
    Case(18, 6, 1, 33, 9, out_stride=49, seed=17),
    Case(9, 16, 4, 33, 0, image=30, out_stride=784, seed=18),  # the stem, its windows read from the image
    Case(9, 11, 4, 33, 120, ties=True, image=7, seed=19),
    Case(9, 5, 4, 33, 3, lo=-128, hi=127, x_dtype="int8", grid_bits=(16, 12), image=9, seed=20),
    Case(9, 6, 4, 31, 0, lo=40, image=8, seed=21),  # no USAT: plain C
    Case(40, 8, 1, 33, 5, seed=22),  # 20 pairs: two channels a pass, not four
    Case(9, 12, 4, 33, 5, ties=True, out_stride=1100, seed=23),  # four channels' stride past an immediate: two
    Case(13, 12, 2, 33, 7, ties=True, seed=24),
    Case(14, 6, 1, 33, 7, ties=True, seed=27),
    Case(7, 4, 4, 33, 9, ties=True, seed=26),
]


def _c_array(name: str, ctype: str, values: np.ndarray) -> str:
    body = ", ".join(f"{int(v)}ll" if ctype == "int64_t" else str(int(v)) for v in values.reshape(-1))
    return f"static const {ctype} {name}[] = {{{body}}};\n"


def _call(case: Case, index: int, data: dict[str, np.ndarray], spread: int) -> str:
    """C that runs case `index` with the table in its first (spread = 0) or spread form and appends its n x lanes
    outputs (channel-major) to `output`; the spread form twice, as a kernel run calls it: the second call finds its
    near ties in the table's cache."""
    rq = fused_requant_constants(case.info(data), case.k, case.x_dtype)
    assert rq is not None
    xt, suffix = ("uint8_t", "u8s8") if case.x_dtype == "uint8" else ("int8_t", "s8")
    kernel = f"edgebin_matvec{case.lanes if case.lanes > 1 else ''}_{suffix}_rq"
    name, words = f"{index}_{spread}", ((case.k + 1) // 2 + 5 if spread else 2)
    arrays = "" if spread else (
        _c_array(f"x{index}", xt, data["x"]) + (_c_array(f"i{index}", xt, data["image"]) if case.image else "")
        + _c_array(f"w{index}", "int8_t", data["w"]) + _c_array(f"g{index}", "int32_t", data["grid"])
        + _c_array(f"a{index}", "int64_t", data["offset"]))
    bound = rq.window << (32 - rq.f)
    constants = (f"{rq.s}, {rq.m}, {rq.f}, {rq.window}, {case.e}, {case.addend}ll, {case.zy}, {case.lo}, "
                 f"{case.hi}")
    if spread and case.image:  # the columns read from the image
        spread_table = f"  edgebin_rq_spread_3x3(w{index}, {case.n}, {rq.s}, {bound}, table);\n"
        call = (f"  edgebin_conv3x3_{suffix}_rq(i{index} + 1, {case.image}, {case.n}, table, out{name}, "
                f"{case.stride}, a{index}, 1, {constants});\n")
    else:
        spread_table = (f"  edgebin_rq_spread(w{index}, {case.k}, {case.n}, {rq.s}, {bound}, {case.lanes}, table);\n"
                        if spread else "")
        call = (f"  {kernel}(x{index}, w{index}, {case.k}, {case.n}, table, out{name}, {case.stride}, a{index}, 1, "
                f"{constants}, {spread});\n")
    copy = (f"  for (int j = 0; j < {case.n}; ++j)\n    for (int p = 0; p < {case.lanes}; ++p)\n"
            f"      *output++ = {'(float)' if case.lo >= 0 else '(float)(int8_t)'}out{name}[j * {case.stride} + p];\n")
    again = f"  memset(out{name}, 0, sizeof(out{name}));\n{call}{copy}" if spread else ""
    return (arrays + f"static uint8_t out{name}[{case.n * case.stride}];\n"
            f"static float* run{name}(float* output) {{\n"
            f"  int32_t table[{words * case.n}];\n"
            f"  edgebin_rq_table(g{index}, 1, a{index}, 1, {case.n}, {rq.m}, {rq.sh}, {rq.bias}, table);\n"
            + spread_table + call + copy + again + "  return output;\n}\n")


def driver_c() -> str:
    """edgebin_requant_test(input, output): every case's outputs, in order, with the table in its first form, then
    in the spread form, twice a case (the input is not read)."""
    data = [case.data() for case in CASES]
    runs = "".join(_call(case, i, d, spread) for spread in (0, 1)
                   for i, (case, d) in enumerate(zip(CASES, data, strict=True)))
    calls = "".join(f"  output = run{i}_{spread}(output);\n" for spread in (0, 1) for i in range(len(CASES)))
    return (f'#include <stdint.h>\n#include <string.h>\n#include "{MICRO_KERNEL_HEADER}"\n\n{runs}\n'
            f"int edgebin_requant_test(const float* input, float* output) {{\n  (void)input;\n{calls}  return 0;\n}}\n")


def reference() -> np.ndarray:
    """What driver_c() writes: the two forms of the table give the same bits."""
    outputs = [case.reference(case.data()).reshape(-1).astype(np.float32) for case in CASES]
    return np.concatenate(outputs + [o for output in outputs for o in (output, output)])


OUT_ELEMS = 3 * sum(case.n * case.lanes for case in CASES)


def test_cases_hit_ties_saturation_and_every_clip():
    outputs = [case.reference(case.data()) for case in CASES]
    assert all(fused_requant_constants(case.info(case.data()), case.k, case.x_dtype) for case in CASES)
    tied = [case for case in CASES if case.ties]
    sums = [(c.data()["w"] @ c.data()["x"].T) % 8 for c in tied]
    assert all((s == 4).any() for s in sums)  # exact ties: rne goes to the even neighbour
    assert any((o == c.lo).any() for o, c in zip(outputs, CASES, strict=True))
    assert any((o == c.hi).any() for o, c in zip(outputs, CASES, strict=True))
    assert sum(((o > c.lo) & (o < c.hi)).sum() for o, c in zip(outputs, CASES, strict=True)) > 100


def test_constants_refuse_what_32_bits_cannot_hold():
    info = {"e": 33, "zy": 0, "plus": 0, "lo": 0, "hi": 255, "addend": 1 << 32, "reach": 1 << 16,
            "grid_max": 1 << 24, "clamp": 0, "narrow": 1, "offset_max": 1 << 33}
    assert fused_requant_constants(info, 9, "uint8") is not None
    assert fused_requant_constants({**info, "clamp": 1}, 9, "uint8") is None  # a clamped accumulator
    assert fused_requant_constants({**info, "narrow": 0}, 9, "uint8") is None  # an int64 grid
    assert fused_requant_constants({**info, "grid_max": (1 << 31) - 1, "e": 36}, 1 << 20, "uint8") is None


@needs_gcc
def test_plain_c_fused_requant_matches_the_reference(tmp_path):
    for name, text in micro_kernel_headers(f'#include "{MICRO_KERNEL_HEADER}"').items():
        (tmp_path / name).write_text(text)
    (tmp_path / "requant_test.c").write_text(driver_c())
    (tmp_path / "main.c").write_text(
        f"#include <stdio.h>\nint edgebin_requant_test(const float* input, float* output);\n"
        f"static float out[{OUT_ELEMS}];\nint main(void) {{\n  edgebin_requant_test(0, out);\n"
        f"  fwrite(out, sizeof(float), {OUT_ELEMS}, stdout);\n  return 0;\n}}\n")
    exe = tmp_path / "requant_test"
    subprocess.run(["gcc", "-O2", "-Wall", "-Werror", f"-I{tmp_path}", str(tmp_path / "requant_test.c"),
                    str(tmp_path / "main.c"), "-o", str(exe)], check=True, timeout=60)
    out = subprocess.run([str(exe)], capture_output=True, check=True, timeout=60).stdout
    np.testing.assert_array_equal(np.frombuffer(out, np.float32), reference())


@needs_qemu
@pytest.mark.parametrize("name", ["cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55"])
def test_fused_requant_matches_the_reference_on_each_dsp_core(tmp_path, name):
    from edgebin.runners import QemuRunner

    model_c = ('#include "model.h"\nint edgebin_requant_test(const float* input, float* output);\n'
               "int edgebin_model_run(const float* input, float* output) {\n"
               "  return edgebin_requant_test(input, output);\n}\n"
               'const char* edgebin_model_name(void) { return "edgebin_requant_test"; }\n')
    bundle = write_driver_bundle(tmp_path / "bundle", {"model.c": model_c, "requant_test.c": driver_c()}, 1,
                                 OUT_ELEMS)
    runner = QemuRunner(targets.load(name), timeout_s=60)
    elf = runner.build(Path(bundle), tmp_path / "build")
    disassembly = subprocess.run(["arm-none-eabi-objdump", "-d", str(elf)], capture_output=True, text=True,
                                 check=True, timeout=60).stdout
    assert "smmla" in disassembly and "usat" in disassembly  # the DSP path, not the plain C one
    result = runner.run(elf, np.zeros((1, 1), np.float32), count_instructions=False)
    np.testing.assert_array_equal(result.outputs.reshape(-1), reference())
