"""The int8 micro-kernels that host (x86) and Cortex-A libraries link (cpu_kernels/edgebin_cpu_kernels.c), against
an int32 numpy reference: exactly equal, for int8 and uint8 inputs, odd k (vector tails), row counts that leave
row blocks over, and P = 1, 2, 4 columns. Each build the CPU can run: AVX-512 VNNI (-march=native here), AVX2 only
(x86-64-v3) and the header's plain C (x86-64), compiled with the system `cc` and called through ctypes; plus the
aarch64 cross build and the host library's link step, which the compile tests cover end to end.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgebin.compile import host, tvm_adapter
from edgebin.errors import ToolchainMissingError

SHAPES = [(1, 1), (9, 16), (16, 10), (31, 3), (64, 17), (65, 32), (144, 16), (150, 33), (288, 64), (577, 5)]
CPU_FLAGS = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").is_file() else set()
BUILDS = {  # name: (cc flags, the CPU flags the build needs to run)
    "native": (["-march=native"], set()),
    "avx2": (["-march=x86-64-v3"], {"avx2", "fma", "bmi2"}),
    "plain": (["-march=x86-64"], set()),
}

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")


@pytest.fixture(scope="module", params=sorted(BUILDS))
def kernels(request, tmp_path_factory):
    return build_kernels(request.param, tmp_path_factory)


def build_kernels(build: str, tmp_path_factory) -> ctypes.CDLL:
    """host.KERNELS_C compiled as the BUILDS entry `build` (skipped where this CPU cannot run it), loaded."""
    flags, needs = BUILDS[build]
    if not needs <= CPU_FLAGS:
        pytest.skip(f"this CPU lacks {sorted(needs - CPU_FLAGS)}")
    lib = tmp_path_factory.mktemp(build) / "kernels.so"
    subprocess.run(["cc", "-O3", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", *flags, str(host.KERNELS_C),
                    "-o", str(lib)], check=True, timeout=120)
    return ctypes.CDLL(str(lib))


def _call(lib, name: str, x: np.ndarray, w: np.ndarray, k: int, n: int, lanes: int) -> np.ndarray:
    acc = np.full(n * lanes, 0x5A5A5A5A, np.int32)  # overwritten, never added to
    getattr(lib, name)(x.ctypes.data_as(ctypes.c_void_p), w.ctypes.data_as(ctypes.c_void_p), ctypes.c_int32(k),
                       ctypes.c_int32(n), acc.ctypes.data_as(ctypes.c_void_p))
    return acc


@pytest.mark.parametrize("lanes", [1, 2, 4])
@pytest.mark.parametrize("x_dtype", ["int8", "uint8"])
def test_matvec_equals_int32_reference(kernels, lanes, x_dtype):
    rng = np.random.default_rng(lanes)
    suffix = "s8" if x_dtype == "int8" else "u8s8"
    name = f"edgebin_matvec{lanes if lanes > 1 else ''}_{suffix}"
    info = np.iinfo(x_dtype)
    for k, n in SHAPES:
        x = rng.integers(info.min, info.max + 1, (lanes, k)).astype(x_dtype)
        w = rng.integers(-128, 128, (n, k)).astype(np.int8)
        ref = (w.astype(np.int32) @ x.astype(np.int32).T).reshape(-1)  # acc[j * P + p]
        np.testing.assert_array_equal(_call(kernels, name, x, w, k, n, lanes), ref, err_msg=f"{name} k={k} n={n}")
    # the extremes: every product -128 * -128 (or 255 * -128), the largest sums a row can reach
    for value in (info.min, info.max):
        x, w = np.full((lanes, 577), value, x_dtype), np.full((17, 577), -128, np.int8)
        ref = (w.astype(np.int32) @ x.astype(np.int32).T).reshape(-1)
        np.testing.assert_array_equal(_call(kernels, name, x, w, 577, 17, lanes), ref)


def test_kernel_cflags_follow_the_target():
    native = tvm_adapter.make_target({"kind": "llvm", "mcpu": "native"})
    assert host.kernel_cflags(native) == ["-march=native"]
    assert host.kernel_cflags(tvm_adapter.make_target({"kind": "llvm", "mcpu": "skylake-avx512"})) in (
        ["-march=skylake-avx512"], ["-march=native"])
    arm = tvm_adapter.make_target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"})
    assert host.kernel_cflags(arm) == ["-mcpu=cortex-a72"]


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-g++") is None, reason="no aarch64 cross compiler")
def test_kernels_cross_compile_for_aarch64(tmp_path):
    arm = tvm_adapter.make_target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"})
    obj = host.compile_kernels(arm, tmp_path, "aarch64-linux-gnu-g++")
    symbols = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout
    assert all(f" T edgebin_matvec{p}_{t}" in symbols for p in ("", "2", "4", "t", "c") for t in ("s8", "u8s8"))


def test_compiler_errors_are_edgebin_errors(tmp_path):
    bad = tvm_adapter.make_target({"kind": "llvm", "mcpu": "no-such-cpu"})
    with pytest.raises(ToolchainMissingError, match="edgebin_cpu_kernels.c"):
        host.compile_kernels(bad, tmp_path)
    with pytest.raises(ToolchainMissingError, match="no C compiler"):
        host.compile_kernels(bad, tmp_path, "no-such-cc")


JUNK = 0x5A5A5A5A


def _row_acc(n: int, lanes: int, stride: int) -> np.ndarray:
    """A row kernel's accumulators, output channel j at j * stride, filled with junk the kernel must overwrite."""
    return np.full(n * stride, JUNK, np.int32)


def _check_rows(acc: np.ndarray, ref: np.ndarray, lanes: int, stride: int, what: str) -> None:
    """ref (n, lanes) in acc's first `lanes` of each `stride`, and the gaps between them untouched."""
    rows = acc.reshape(-1, stride)
    np.testing.assert_array_equal(rows[:, :lanes], ref.reshape(-1, lanes), err_msg=what)
    assert (rows[:, lanes:] == JUNK).all(), f"{what}: wrote between the rows"


@pytest.mark.parametrize("x_dtype", ["int8", "uint8"])
def test_matvect_takes_k_major_columns(kernels, x_dtype):
    """edgebin_matvect_*: a whole row of P output pixels per call (the host), x k-major (x[i * P + p]), any P and k
    (pixel chunks of 32 and vectors of 8 with tails, k % 4 tails), acc[j * S + p] for S = P (a row's own
    accumulators) and S > P (rows into a layer's NCHW accumulators)."""
    rng = np.random.default_rng(8)
    name = f"edgebin_matvect_{'s8' if x_dtype == 'int8' else 'u8s8'}"
    info = np.iinfo(x_dtype)
    cases = [(lanes, k, n) for lanes in (1, 3, 7, 8, 14, 28, 33, 70) for k, n in [(9, 16), (31, 3), (144, 16),
                                                                                  (577, 5)]]
    cases += [(7, 576, 64), (28, 4099, 3)]  # the plain loops past EDGEBIN_T_MAX_K
    for case, (lanes, k, n) in enumerate(cases):
        x = rng.integers(info.min, info.max + 1, (k, lanes)).astype(x_dtype)
        w = rng.integers(-128, 128, (n, k)).astype(np.int8)
        stride = lanes + (case % 3) * 7  # P, or 7 or 14 past it
        acc = _row_acc(n, lanes, stride)
        getattr(kernels, name)(x.ctypes.data_as(ctypes.c_void_p), w.ctypes.data_as(ctypes.c_void_p),
                               ctypes.c_int32(k), ctypes.c_int32(n), acc.ctypes.data_as(ctypes.c_void_p),
                               ctypes.c_int32(lanes), ctypes.c_int32(stride))
        _check_rows(acc, w.astype(np.int32) @ x.astype(np.int32), lanes, stride, f"{name} P={lanes} S={stride} "
                    f"k={k} n={n}")
    for value in (info.min, info.max):  # the largest sums
        x, w = np.full((577, 9), value, x_dtype), np.full((17, 577), -128, np.int8)
        acc = np.zeros(17 * 9, np.int32)
        getattr(kernels, name)(x.ctypes.data_as(ctypes.c_void_p), w.ctypes.data_as(ctypes.c_void_p),
                               ctypes.c_int32(577), ctypes.c_int32(17), acc.ctypes.data_as(ctypes.c_void_p),
                               ctypes.c_int32(9), ctypes.c_int32(9))
        np.testing.assert_array_equal(acc, (w.astype(np.int32) @ x.astype(np.int32)).reshape(-1))


@pytest.mark.parametrize("x_dtype", ["int8", "uint8"])
def test_matvecc_reads_a_stride_1_conv_input_where_it_lies(kernels, x_dtype):
    """edgebin_matvecc_*: one row of a stride-1 conv's outputs from the (padded) input as it lies, channels cs and
    rows rs bytes apart (a larger buffer: strides wider than the row), against the conv in int32 numpy; output
    channels S = P or more apart."""
    rng = np.random.default_rng(9)
    name = f"edgebin_matvecc_{'s8' if x_dtype == 'int8' else 'u8s8'}"
    info = np.iinfo(x_dtype)
    for cin, kh, kw, width, n, stride in [(16, 3, 3, 28, 16, 28), (32, 3, 3, 14, 32, 196), (64, 3, 3, 7, 64, 49),
                                          (1, 3, 3, 28, 16, 28), (3, 5, 2, 9, 5, 10), (2, 1, 1, 33, 3, 40),
                                          (520, 3, 3, 5, 2, 25)]:  # the last past 4096
        pad = rng.integers(info.min, info.max + 1, (cin, kh + 2, width + kw + 3)).astype(x_dtype)  # rows 1..kh
        w = rng.integers(-128, 128, (n, cin, kh, kw)).astype(np.int8)
        k = cin * kh * kw
        acc = _row_acc(n, width, stride)
        x = pad[:, 1:, 2:]  # the row starts at (row 1, column 2) of the buffer
        getattr(kernels, name)(ctypes.c_void_p(pad.ctypes.data + pad.strides[1] + 2), w.ctypes.data_as(ctypes.c_void_p),
                               ctypes.c_int32(k), ctypes.c_int32(n), acc.ctypes.data_as(ctypes.c_void_p),
                               ctypes.c_int32(width), ctypes.c_int32(stride), ctypes.c_int32(kh), ctypes.c_int32(kw),
                               ctypes.c_int32(pad.strides[0]), ctypes.c_int32(pad.strides[1]))
        cols = np.stack([x[:, :kh, p:p + kw].reshape(-1) for p in range(width)], axis=1).astype(np.int32)  # (k, P)
        ref = w.reshape(n, k).astype(np.int32) @ cols
        _check_rows(acc, ref, width, stride, f"{name} cin={cin} k={kh}x{kw} P={width} S={stride} n={n}")
