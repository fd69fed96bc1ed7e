"""The bit-packed binary kernels (binary_kernels/edgebin_binary.h) against integer references, and their packing."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgebin.compile import binary_slice
from edgebin.compile.binary import (
    HEADER,
    KERNEL_DIR,
    binary_conv2d_reference,
    c_source,
    pack_activation_bits,
    pack_dense_weight_bits,
    pack_weight_bits,
    relu_folded_shift,
    sign_thresholds,
    specialized_name,
    tap_sums,
    words_for,
)
from edgebin.compile.mst import mst_plan

CC = shutil.which("cc") or shutil.which("gcc")


def test_pack_weight_bits_matches_hand_values():
    codes = np.array([1, -1, 1], dtype=np.int8).reshape(1, 3, 1, 1)  # +1 -> bit 1, channel i -> bit i
    assert pack_weight_bits(codes).tolist() == [[[[0b101]]]]
    codes = np.ones((2, 33, 1, 1), dtype=np.int8)
    codes[1, 32] = -1
    bits = pack_weight_bits(codes)  # (1, 1, words = 2, Cout = 2): word 1 holds channel 32
    assert bits.shape == (1, 1, 2, 2)
    assert bits[0, 0, :, 0].tolist() == [0xFFFFFFFF, 1] and bits[0, 0, :, 1].tolist() == [0xFFFFFFFF, 0]
    with pytest.raises(ValueError, match="-1 or \\+1"):
        pack_weight_bits(np.zeros((1, 1, 1, 1), dtype=np.int8))


def test_pack_activation_bits_puts_sign_zero_on_the_plus_side():
    x = np.array([-0.5, 0.0, 0.25], dtype=np.float32).reshape(1, 3, 1, 1)
    shift = np.array([0.5, 0.0, -0.5], dtype=np.float32)  # x + shift = 0, 0, -0.25
    assert pack_activation_bits(x, shift).tolist() == [[[[0b011]]]]


def test_xnor_popcount_identity_on_one_word():
    a, w = np.array([1, -1, -1, 1]), np.array([1, 1, -1, -1])
    xor = int(np.sum((a > 0) != (w > 0)))
    assert len(a) - 2 * xor == int(a @ w) == 0


# The host kernels' compile variants: the AVX-512 core (-march=native on a CPU with AVX-512 VPOPCNTDQ and BITALG),
# the portable core with the popcount instruction, and the software count that Cortex-M builds use (-mno-popcnt).
VARIANTS = {"avx512": ["-march=native"], "portable": ["-march=native", "-DEDGEBIN_NO_AVX512"], "swar": ["-mno-popcnt"]}


def _defines(flags: list[str]) -> str:
    """The C compiler's predefined macros with `flags`."""
    return subprocess.run([CC, *flags, "-dM", "-E", "-x", "c", "-"], input="", capture_output=True, text=True,
                          check=True, timeout=60).stdout


def _avx512_cpu() -> bool:
    features = ("BW", "VPOPCNTDQ", "BITALG")  # what EDGEBIN_BINARY_AVX512 needs
    return CC is not None and all(f"__AVX512{f}__" in _defines(["-march=native"]) for f in features)


def _variant_flags(variant: str) -> list[str]:
    if CC is None:
        pytest.skip("no C compiler")
    if variant == "avx512" and not _avx512_cpu():
        pytest.skip("this CPU has no AVX-512 VPOPCNTDQ and BITALG")
    return VARIANTS[variant]


@pytest.fixture(scope="module", params=list(VARIANTS))
def kernels(request, tmp_path_factory) -> ctypes.CDLL:
    """edgebin_binary.c (the generic kernels, shapes as arguments) as a shared library, per compile variant."""
    flags = _variant_flags(request.param)
    out = tmp_path_factory.mktemp(request.param) / "libbinary.so"
    subprocess.run([CC, "-O2", "-shared", "-fPIC", *flags, str(HEADER.with_suffix(".c")), "-o", str(out)],
                   check=True, timeout=120)
    return ctypes.CDLL(str(out))


def test_avx512_core_is_compiled_where_the_cpu_has_it():
    if not _avx512_cpu():
        pytest.skip("this CPU has no AVX-512 VPOPCNTDQ and BITALG")
    probe = '#include "edgebin_binary.h"\n#ifndef EDGEBIN_BINARY_AVX512\n#error no AVX-512 core\n#endif\n'
    for flags, compiled in ((VARIANTS["avx512"], True), (VARIANTS["portable"], False), (VARIANTS["swar"], False)):
        done = subprocess.run([CC, *flags, f"-I{KERNEL_DIR}", "-fsyntax-only", "-x", "c", "-"], input=probe,
                              capture_output=True, text=True, timeout=60)
        assert (done.returncode == 0) == compiled, flags


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


SHAPES = [  # n, c, h, w, cout, k, stride, pad
    (1, 16, 7, 7, 16, 3, 1, 1),
    (2, 40, 5, 6, 70, 3, 2, 1),  # two words (the second partial), more outputs than one block, a non-square image
    (1, 3, 4, 4, 5, 1, 1, 0),
    (1, 64, 9, 9, 8, 3, 2, 1),
    (1, 32, 6, 6, 4, 5, 1, 2),  # a border wider than one tap
]
# The AVX-512 core's cases on top: 16-bit lanes (c <= 16) and 32-bit lanes; blocks of consecutive pixels across rows
# (a "same" conv, its planes as wide as its output rows) or within one row (no padding); a short last block pixel by
# pixel; strides 1 to 3 (its input planes: copied, de-interleaved, or element by element); and shapes past its stack
# buffers, which go to the portable core.
HOST_SHAPES = SHAPES + [
    (1, 16, 28, 28, 16, 3, 1, 1),  # ResNet-8's stack1: blocks of 32 pixels across rows, a last block of 16
    (1, 16, 28, 28, 32, 3, 2, 1),  # ResNet-8's stack2.conv1: six blocks, then 4 pixels one by one
    (2, 16, 10, 10, 32, 3, 2, 1),  # 16-bit lanes, stride 2, one block of 25 pixels an image
    (1, 64, 7, 7, 64, 3, 1, 1),  # two words a pixel, two output words a pixel, then 1 pixel alone
    (1, 32, 14, 14, 64, 3, 2, 1),  # ResNet-8's stack3.conv1
    (1, 32, 5, 40, 8, 3, 1, 1),  # rows of 40 across blocks of 16 lanes
    (1, 12, 4, 37, 3, 3, 1, 1),  # rows of 37, c < 16
    (1, 16, 10, 11, 8, 3, 3, 1),  # stride 3: planes filled element by element
    (1, 16, 6, 6, 8, 3, 1, 0),  # no padding, rows of 4: every pixel alone
    (1, 16, 20, 40, 8, 3, 1, 0),  # no padding, rows of 38: a block of 32 and 6 pixels alone a row
    (1, 20, 12, 30, 8, 3, 1, 0),  # no padding, 32-bit lanes: blocks of 16 and 12 a row
    (1, 16, 28, 28, 32, 1, 2, 0),  # a strided 1x1 shortcut
    (1, 512, 3, 3, 4, 3, 1, 1),  # 144 tap vectors: past the AVX-512 core's 64, so the portable core
    (1, 8, 140, 130, 2, 1, 1, 0),  # an input past its plane buffer: the portable core
]


@pytest.mark.parametrize(("n", "c", "h", "w", "cout", "k", "stride", "pad"), HOST_SHAPES)
def test_c_kernels_equal_the_integer_reference(kernels, n, c, h, w, cout, k, stride, pad):
    rng = np.random.default_rng(c * 100 + cout)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    x[0, 0, 0, 0] = 0.0  # sign(0) = +1 on both sides
    shift = rng.standard_normal(c).astype(np.float32) * 0.3
    codes = rng.choice(np.array([-1, 1], dtype=np.int8), size=(cout, c, k, k))
    bits = np.empty((n, h, w, words_for(c)), dtype=np.uint32)
    kernels.edgebin_bpack_nchw_f32(_ptr(x), _ptr(shift), n, c, h * w, _ptr(bits))
    np.testing.assert_array_equal(bits, pack_activation_bits(x, shift))

    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    out = np.empty((n, cout, oh, ow), dtype=np.int32)
    wbits = np.ascontiguousarray(pack_weight_bits(codes))
    kernels.edgebin_bconv2d(_ptr(bits), _ptr(wbits), n, c, h, w, cout, k, k, stride, stride, pad, pad, oh, ow,
                            _ptr(out))
    signs = np.where(x + shift.reshape(1, c, 1, 1) >= 0, 1, -1)
    np.testing.assert_array_equal(out, binary_conv2d_reference(signs, codes, (stride, stride), (pad, pad)))


def test_reference_conv_matches_a_float_conv():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    signs = rng.choice([-1, 1], size=(1, 5, 6, 6))
    codes = rng.choice([-1, 1], size=(3, 5, 3, 3))
    as_float = {"dtype": torch.float64}
    want = torch.nn.functional.conv2d(torch.tensor(signs, **as_float), torch.tensor(codes, **as_float), stride=2,
                                      padding=1)
    np.testing.assert_array_equal(binary_conv2d_reference(signs, codes, (2, 2), (1, 1)), want.numpy().astype(np.int64))


def test_header_is_shipped_beside_its_c_file():
    assert HEADER.is_file() and Path(HEADER.with_suffix(".c")).is_file()


def _geometry(n: int, c: int, h: int, w: int, cout: int, k: int, stride: int, pad: int) -> tuple[int, ...]:
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    return (n, c, h, w, cout, k, k, stride, stride, pad, pad, oh, ow)


def _specialized_library(tmp: Path, names: set[str], flags: tuple[str, ...] = ("-O2",),
                         timeout: int = 120) -> ctypes.CDLL:
    """The specialized kernels `names` (`c_source`, as a model links them) built natively into tmp/lib.so, loaded."""
    (tmp / "kernels.c").write_text(c_source(names))
    subprocess.run([CC, "-shared", "-fPIC", *flags, f"-I{KERNEL_DIR}", str(tmp / "kernels.c"), "-o",
                    str(tmp / "lib.so")], check=True, timeout=timeout)
    return ctypes.CDLL(str(tmp / "lib.so"))


@pytest.fixture(scope="module", params=list(VARIANTS))
def host_kernels(request, tmp_path_factory) -> ctypes.CDLL:
    """The shape-specialized host kernels of HOST_SHAPES (`c_source`, as a model links them), per compile variant."""
    flags = _variant_flags(request.param)
    names = {specialized_name("edgebin_bpack_nchw_f32", (s[0], s[1], s[2] * s[3])) for s in HOST_SHAPES}
    for kernel in ("edgebin_bconv2d", "edgebin_bconv2d_affine", "edgebin_bconv2d_residual", "edgebin_bconv2d_bits"):
        names |= {specialized_name(kernel, _geometry(*s)) for s in HOST_SHAPES}
    return _specialized_library(tmp_path_factory.mktemp(f"host-{request.param}"), names, ("-O3", *flags), 300)


def _assert_affine(got: np.ndarray, sums: np.ndarray, mul: np.ndarray, add: np.ndarray,
                   res: np.ndarray | None = None) -> None:
    """Each float equals sum · mul + add [then + res and ReLU] rounded as the C compiler may: twice (a multiply,
    then an add) or once (an FMA, which -march=native contracts it into and the AVX-512 core uses; the product is
    exact in float64)."""
    mul, add = mul.reshape(1, -1, 1, 1), add.reshape(1, -1, 1, 1)
    twice = sums.astype(np.float32) * mul + add
    once = (sums.astype(np.float64) * mul.astype(np.float64) + add.astype(np.float64)).astype(np.float32)
    if res is not None:
        twice, once = np.maximum(twice + res, 0), np.maximum(once + res, 0)
    assert ((got == twice) | (got == once)).all(), np.abs(got - twice).max()


@pytest.mark.parametrize("shape", HOST_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_shape_specialized_kernels_equal_the_reference(host_kernels, shape):
    """Packing and the three conv epilogues (int32 sums, float sum · mul + add, the next layer's bits with
    `sign_thresholds`, negative scales and constant channels included) against the integer reference."""
    n, c, h, w, cout, k, stride, pad = shape
    geometry = _geometry(*shape)
    oh, ow = geometry[-2:]
    rng = np.random.default_rng(c * 100 + cout + h)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    shift = rng.standard_normal(c).astype(np.float32) * 0.3
    codes = rng.choice(np.array([-1, 1], dtype=np.int8), size=(cout, c, k, k))
    bits = np.empty((n, h, w, words_for(c)), dtype=np.uint32)
    getattr(host_kernels, specialized_name("edgebin_bpack_nchw_f32", (n, c, h * w)))(_ptr(x), _ptr(shift), _ptr(bits))
    np.testing.assert_array_equal(bits, pack_activation_bits(x, shift))
    wbits = np.ascontiguousarray(pack_weight_bits(codes))
    want = binary_conv2d_reference(np.where(x + shift.reshape(1, c, 1, 1) >= 0, 1, -1), codes, (stride, stride),
                                   (pad, pad))

    out = np.empty((n, cout, oh, ow), dtype=np.int32)
    getattr(host_kernels, specialized_name("edgebin_bconv2d", geometry))(_ptr(bits), _ptr(wbits), _ptr(out))
    np.testing.assert_array_equal(out, want)

    mul, add = rng.standard_normal(cout).astype(np.float32), rng.standard_normal(cout).astype(np.float32)
    out_f = np.empty((n, cout, oh, ow), dtype=np.float32)
    getattr(host_kernels, specialized_name("edgebin_bconv2d_affine", geometry))(_ptr(bits), _ptr(wbits), _ptr(mul),
                                                                               _ptr(add), _ptr(out_f))
    _assert_affine(out_f, want, mul, add)
    res = rng.standard_normal((n, cout, oh, ow)).astype(np.float32)  # a ResNet block's skip input
    getattr(host_kernels, specialized_name("edgebin_bconv2d_residual", geometry))(_ptr(bits), _ptr(wbits), _ptr(mul),
                                                                                 _ptr(add), _ptr(res), _ptr(out_f))
    _assert_affine(out_f, want, mul, add, res)

    scale = rng.uniform(0.01, 0.1, cout) * rng.choice([-1, 1], cout)
    scale[:1] = 0.0  # a channel the BatchNorm zeroed: a constant bit
    offset = rng.standard_normal(cout) + 0.37  # off the integer grid: no sum sits exactly on a threshold
    next_shift = rng.standard_normal(cout) * 0.2
    direction, threshold = (np.ascontiguousarray(a) for a in sign_thresholds(scale, offset, next_shift, relu=True))
    out_b = np.empty((n, oh, ow, words_for(cout)), dtype=np.uint32)
    getattr(host_kernels, specialized_name("edgebin_bconv2d_bits", geometry))(_ptr(bits), _ptr(wbits), _ptr(direction),
                                                                             _ptr(threshold), _ptr(out_b))
    y = np.maximum(want * scale.reshape(1, -1, 1, 1) + offset.reshape(1, -1, 1, 1), 0)
    np.testing.assert_array_equal(out_b, pack_activation_bits(y, next_shift))


# (n, c, hw): two words a pixel with the second partial and an odd pixel count, pixels not a multiple of 4, one word,
# and a longer run of pixels (the AVX-512 kernel goes 16 at a time)
PACK_SHAPES = [(2, 40, 21), (1, 16, 30), (1, 32, 8), (1, 16, 100)]
PACK_KERNELS = ("edgebin_bpack_nchw_f32", "edgebin_bpack_add_nchw_f32")


def _pack_case(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y (N, C, HW) and a shift with the edges of a sign read off the sum: sums of exactly 0 (x = -shift, x = -y),
    -0.0 in x, y and the shift, +inf shifts (a folded ReLU)."""
    n, c, hw = shape
    rng = np.random.default_rng(c * 7 + hw)
    x = rng.standard_normal((n, c, hw)).astype(np.float32)
    y = rng.standard_normal((n, c, hw)).astype(np.float32)
    shift = (rng.standard_normal(c) * 0.3).astype(np.float32)
    shift[:3] = (-0.0, 0.0, np.inf)
    x[:, 3:, ::5] = -shift[3:, None]  # x + shift == 0
    y[:, :, 1::4] = -x[:, :, 1::4]  # x + y == 0
    x[:, :, 2::7] = -0.0
    y[:, :, 2::7] = -0.0
    return x, y, shift


def _packed(x: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """pack_activation_bits of an (N, C, HW) tensor: (N, HW, words)."""
    n, c, hw = x.shape
    return pack_activation_bits(x.reshape(n, c, hw, 1), shift)[:, :, 0]


def test_relu_folds_into_the_packing_shift():
    rng = np.random.default_rng(5)
    shift = np.array([-0.5, -0.0, 0.0, 0.25, -1e-30], np.float32)
    v = rng.standard_normal((1, 5, 40)).astype(np.float32)
    v[0, :, :5] = -shift[:, None]  # v + shift == 0
    v[0, :, 5] = 0.0
    want = pack_activation_bits(np.maximum(v, 0).reshape(1, 5, 5, 8), shift)
    assert (want[..., 0] >> 1 & 7 == 7).all()  # channels 1-3, shifts >= 0: always set
    np.testing.assert_array_equal(pack_activation_bits(v.reshape(1, 5, 5, 8), relu_folded_shift(shift)), want)


@pytest.mark.parametrize("variant", ["avx512", "portable"])
def test_packing_kernels_equal_the_reference(tmp_path, variant):
    """edgebin_bpack_nchw_f32 and edgebin_bpack_add_nchw_f32 on the sums' edge cases, in portable C and AVX-512
    (which compares x >= -shift where the shift is finite)."""
    names = {specialized_name(k, s) for s in PACK_SHAPES for k in PACK_KERNELS}
    lib = _specialized_library(tmp_path, names, ("-O2", *_variant_flags(variant)))
    for shape in PACK_SHAPES:
        n, c, hw = shape
        x, y, shift = _pack_case(shape)
        bits = np.empty((n, hw, words_for(c)), dtype=np.uint32)
        getattr(lib, specialized_name("edgebin_bpack_nchw_f32", shape))(_ptr(x), _ptr(shift), _ptr(bits))
        np.testing.assert_array_equal(bits, _packed(x, shift))
        getattr(lib, specialized_name("edgebin_bpack_add_nchw_f32", shape))(_ptr(x), _ptr(y), _ptr(shift), _ptr(bits))
        np.testing.assert_array_equal(bits, _packed(x + y, shift))


def test_c_source_rejects_other_kernels():
    with pytest.raises(ValueError, match="not a specialized kernel"):
        c_source({"edgebin_matvec_s8__1_2"})


@pytest.mark.parametrize("popcount", ["builtin", "swar"])
@pytest.mark.parametrize(("n", "c", "h", "w", "cout", "k", "stride", "pad"), SHAPES)
def test_dense_column_kernels_equal_the_reference(tmp_path, popcount, n, c, h, w, cout, k, stride, pad):
    """The Cortex-M kernels (dense receptive-field columns, border taps fixed by tap sums), with the software
    count of those cores (-mno-popcnt) and with the popcount instruction."""
    if CC is None:
        pytest.skip("no C compiler")
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    geometry = (n, c, h, w, cout, k, k, stride, stride, pad, pad, oh, ow)
    plain = specialized_name("edgebin_bconv2d_dense", geometry)
    affine = specialized_name("edgebin_bconv2d_dense_affine", geometry)
    tree = specialized_name("edgebin_bconv2d_dense_mst", geometry)
    flags = ("-O2", "-march=native" if popcount == "builtin" else "-mno-popcnt")
    lib = _specialized_library(tmp_path, {plain, affine, tree}, flags)
    rng = np.random.default_rng(c + 7 * cout)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    shift = np.zeros(c, dtype=np.float32)
    codes = rng.choice(np.array([-1, 1], dtype=np.int8), size=(cout, c, k, k))
    bits = pack_activation_bits(x, shift)
    wbits = np.ascontiguousarray(pack_dense_weight_bits(codes))
    sums = np.ascontiguousarray(tap_sums(codes))
    out = np.empty((n, cout, oh, ow), dtype=np.int32)
    getattr(lib, plain)(_ptr(bits), _ptr(wbits), _ptr(sums), _ptr(out))
    want = binary_conv2d_reference(np.where(x >= 0, 1, -1), codes, (stride, stride), (pad, pad))
    np.testing.assert_array_equal(out, want)
    nodes, edges = (np.ascontiguousarray(a) for a in mst_plan(codes).kernel_tables())  # MST-compression: exact
    out_tree = np.empty_like(out)
    getattr(lib, tree)(_ptr(bits), _ptr(wbits), _ptr(sums), _ptr(nodes), _ptr(edges), _ptr(out_tree))
    np.testing.assert_array_equal(out_tree, want)
    mul, add = np.full(cout, 0.5, np.float32), np.arange(cout, dtype=np.float32)
    out_f = np.empty((n, cout, oh, ow), dtype=np.float32)
    getattr(lib, affine)(_ptr(bits), _ptr(wbits), _ptr(sums), _ptr(mul), _ptr(add), _ptr(out_f))
    np.testing.assert_array_equal(out_f, want * 0.5 + np.arange(cout, dtype=np.float32).reshape(1, -1, 1, 1))


def test_dense_weight_bits_follow_the_tap_major_order():
    codes = -np.ones((1, 2, 1, 2), dtype=np.int8)
    codes[0, 1, 0, 0] = 1  # channel 1 of tap 0 -> bit 0 * 2 + 1
    codes[0, 0, 0, 1] = 1  # channel 0 of tap 1 -> bit 1 * 2 + 0
    assert pack_dense_weight_bits(codes).tolist() == [[0b0110]]
    assert tap_sums(codes).tolist() == [[0, 0]] and tap_sums(codes).dtype == np.int8  # the kernel reads int8


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_threshold_epilogue_writes_the_next_layers_bits(tmp_path, dense, relu):
    """edgebin_bconv2d[_dense]_bits with `sign_thresholds`: the packed signs of [relu](sum · mul + add) + shift,
    as the packing kernel would write them from the float output (negative scales and constant channels too)."""
    if CC is None:
        pytest.skip("no C compiler")
    n, c, h, w, cout, k, stride, pad = 1, 16, 6, 6, 40, 3, 1, 1
    geometry = (n, c, h, w, cout, k, k, stride, stride, pad, pad, h, w)
    name = specialized_name("edgebin_bconv2d_dense_bits" if dense else "edgebin_bconv2d_bits", geometry)
    lib = _specialized_library(tmp_path, {name})
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    codes = rng.choice(np.array([-1, 1], dtype=np.int8), size=(cout, c, k, k))
    mul = rng.uniform(0.01, 0.1, cout) * rng.choice([-1, 1], cout)
    mul[:2] = 0.0  # a channel the BatchNorm zeroed: a constant bit
    add = rng.standard_normal(cout) + 0.37  # off the integer grid: no sum sits exactly on a threshold
    shift = rng.standard_normal(cout) * 0.2
    direction, threshold = (np.ascontiguousarray(a) for a in sign_thresholds(mul, add, shift, relu=relu))
    bits = pack_activation_bits(x, np.zeros(c, np.float32))
    weights = [pack_dense_weight_bits(codes), tap_sums(codes)] if dense else [pack_weight_bits(codes)]
    weights = [np.ascontiguousarray(a) for a in weights]
    out = np.empty((n, h, w, words_for(cout)), dtype=np.uint32)
    getattr(lib, name)(_ptr(bits), *(_ptr(a) for a in weights), _ptr(direction), _ptr(threshold), _ptr(out))
    sums = binary_conv2d_reference(np.where(x >= 0, 1, -1), codes, (stride, stride), (pad, pad)).astype(np.float64)
    y = sums * mul.reshape(1, -1, 1, 1) + add.reshape(1, -1, 1, 1)
    y = np.maximum(y, 0) if relu else y
    np.testing.assert_array_equal(out, pack_activation_bits(y, shift))


def test_sign_thresholds_match_hand_values():
    # s * 0.5 + 1 + 0 >= 0  <=>  s >= -2;  s * -0.5 + 1 >= 0  <=>  s <= 2  <=>  -s >= -2
    direction, threshold = sign_thresholds(np.array([0.5, -0.5]), np.array([1.0, 1.0]), np.zeros(2), relu=False)
    assert direction.tolist() == [1, -1] and threshold.tolist() == [-2, -2]
    # with ReLU and a non-negative shift every sum gives +1: 0 * s >= 0
    direction, threshold = sign_thresholds(np.array([0.5]), np.array([-3.0]), np.array([0.1]), relu=True)
    assert direction.tolist() == [0] and threshold.tolist() == [0]


# --- the dense kernels on Cortex-M cores, under QEMU ----------------------------------------------------------------

# n, c, h, w, cout, k, stride, pad: a 16-channel column (4.5 words), a 1x1 stride-2 shortcut (half a word), one and
# two 32-bit words per tap with odd and non-multiple-of-32 output channels, a column of 5.6 words (c = 20), a batch.
M_SHAPES = [(1, 16, 6, 6, 16, 3, 1, 1), (1, 16, 8, 8, 32, 1, 2, 0), (1, 32, 5, 5, 7, 3, 2, 1),
            (1, 64, 4, 4, 34, 3, 1, 1), (1, 20, 5, 4, 5, 3, 1, 1), (2, 40, 3, 3, 3, 1, 1, 0)]
M_KERNELS = ("edgebin_bconv2d_dense", "edgebin_bconv2d_dense_affine", "edgebin_bconv2d_dense_bits",
             "edgebin_bconv2d_dense_mst")


def _float_literal(v: float) -> str:
    """v as an exact C float literal (hexadecimal; infinities by gcc's builtin)."""
    return ("-" if v < 0 else "") + "__builtin_inff()" if np.isinf(v) else v.hex() + "f"


def _c_array(name: str, a: np.ndarray) -> str:
    """A static const C array of `a`'s values, exactly (floats as hexadecimal literals)."""
    kind = {np.dtype(np.uint32): "uint32_t", np.dtype(np.int32): "int32_t", np.dtype(np.int8): "int8_t",
            np.dtype(np.float32): "float"}[a.dtype]
    flat = a.ravel()
    suffix = "u" * (kind == "uint32_t")
    values = [_float_literal(float(v)) if kind == "float" else f"{int(v)}{suffix}" for v in flat]
    return f"static const {kind} {name}[{max(len(values), 1)}] = {{{', '.join(values) or '0'}}};"


def _qemu_outputs(tmp_path: Path, target: str, names: set[str], arrays: list[str], calls: list[str],
                  total: int) -> np.ndarray:
    """Run kernel calls on QEMU: a bundle whose model.c defines the specialized kernels `names`, the C arrays and an
    edgebin_model_run of `calls` writing `total` floats; those floats."""
    from edgebin import targets
    from edgebin.compile.mcu_emit import write_driver_bundle
    from edgebin.runners import QemuRunner

    driver = (c_source(names) + "\n".join(arrays) + "\n\nint edgebin_model_run(const float* input, float* out) {\n"
              "  (void)input;\n" + "".join(calls) + "  return 0;\n}\n"
              'const char* edgebin_model_name(void) { return "edgebin_kernel_test"; }\n')
    bundle = write_driver_bundle(tmp_path / "bundle", {"model.c": driver}, 1, total, target=target)
    runner = QemuRunner(targets.load(target), timeout_s=120)
    return runner.run(runner.build(bundle, tmp_path / "build"), np.zeros((1, 1), np.float32),
                      count_instructions=False).outputs.ravel()


def _dense_case(index: int, shape: tuple[int, ...]) -> tuple[list[str], str, int, dict]:
    """C arrays, driver statements and output size of one shape's four kernel calls, and what they must give."""
    n, c, h, w, cout, k, stride, pad = shape
    geometry = _geometry(*shape)
    oh, ow = geometry[-2:]
    rng = np.random.default_rng(index + 11)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    codes = rng.choice(np.array([-1, 1], dtype=np.int8), size=(cout, c, k, k))
    sums = binary_conv2d_reference(np.where(x >= 0, 1, -1), codes, (stride, stride), (pad, pad))
    mul, add = rng.standard_normal(cout).astype(np.float32), rng.standard_normal(cout).astype(np.float32)
    scale = rng.uniform(0.01, 0.1, cout) * rng.choice([-1, 1], cout)
    scale[:1] = 0.0  # a constant bit
    offset, next_shift = rng.standard_normal(cout) + 0.37, rng.standard_normal(cout) * 0.2
    direction, threshold = sign_thresholds(scale, offset, next_shift, relu=True)
    y = np.maximum(sums * scale.reshape(1, -1, 1, 1) + offset.reshape(1, -1, 1, 1), 0)
    nodes, edges = mst_plan(codes).kernel_tables()
    arrays = {"bits": pack_activation_bits(x, np.zeros(c, np.float32)), "w": pack_dense_weight_bits(codes),
              "ts": tap_sums(codes), "mul": mul, "add": add, "dir": direction.astype(np.int32),
              "thr": threshold.astype(np.int32), "nodes": nodes.astype(np.int32), "edges": edges.astype(np.uint32)}
    lines = [_c_array(f"{name}{index}", np.ascontiguousarray(a)) for name, a in arrays.items()]
    plain, affine, bits, tree = (specialized_name(kernel, geometry) for kernel in M_KERNELS)
    size, words = n * cout * oh * ow, n * oh * ow * words_for(cout)
    p = f"{index}"
    calls = (f"  {{ static int32_t s[{size}]; {plain}(bits{p}, w{p}, ts{p}, s);\n"
             f"    for (int i = 0; i < {size}; ++i) *out++ = (float)s[i]; }}\n"
             f"  {{ static float f[{size}]; {affine}(bits{p}, w{p}, ts{p}, mul{p}, add{p}, f);\n"
             f"    for (int i = 0; i < {size}; ++i) *out++ = f[i]; }}\n"
             f"  {{ static uint32_t b[{words}]; {bits}(bits{p}, w{p}, ts{p}, dir{p}, thr{p}, b);\n"
             f"    for (int i = 0; i < {words}; ++i) {{\n"
             f"      *out++ = (float)(b[i] & 0xFFFFu);\n      *out++ = (float)(b[i] >> 16);\n    }} }}\n"
             f"  {{ static int32_t s[{size}]; {tree}(bits{p}, w{p}, ts{p}, nodes{p}, edges{p}, s);\n"
             f"    for (int i = 0; i < {size}; ++i) *out++ = (float)s[i]; }}\n")
    want = {"sums": sums, "mul": mul, "add": add, "bits": pack_activation_bits(y, next_shift)}
    return lines, calls, 3 * size + 2 * words, want


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                    reason="needs qemu-system-arm and arm-none-eabi-gcc (make setup)")
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m55"])
def test_dense_kernels_on_cortex_m_equal_the_reference(tmp_path, target):
    """The Cortex-M build of the dense kernels (Thumb-2 SWAR count, USADA8, two channels a pass, the threshold
    epilogue's bits gathered in a register) against the integer reference, every epilogue and MST-compression."""
    cases = [_dense_case(i, shape) for i, shape in enumerate(M_SHAPES)]
    names = {specialized_name(kernel, _geometry(*shape)) for shape in M_SHAPES for kernel in M_KERNELS}
    total = sum(size for _, _, size, _ in cases)
    got = _qemu_outputs(tmp_path, target, names, [line for lines, _, _, _ in cases for line in lines],
                        [calls for _, calls, _, _ in cases], total)
    at = 0
    for shape, (_, _, size, want) in zip(M_SHAPES, cases, strict=True):
        sums, n_sums = want["sums"], want["sums"].size
        np.testing.assert_array_equal(got[at : at + n_sums].reshape(sums.shape), sums, err_msg=f"{shape} sums")
        _assert_affine(got[at + n_sums : at + 2 * n_sums].reshape(sums.shape), sums, want["mul"], want["add"])
        halves = got[at + 2 * n_sums : at + size - n_sums].astype(np.uint32)
        np.testing.assert_array_equal((halves[0::2] | halves[1::2] << 16).reshape(want["bits"].shape), want["bits"],
                                      err_msg=f"{shape} bits")
        np.testing.assert_array_equal(got[at + size - n_sums : at + size].reshape(sums.shape), sums,
                                      err_msg=f"{shape} MST")
        at += size


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                    reason="needs qemu-system-arm and arm-none-eabi-gcc (make setup)")
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m55"])
def test_packing_kernels_on_cortex_m_equal_the_reference(tmp_path, target):
    """The Thumb-2 packing (each bit the sum's sign bit, four pixels a step in assembly) on the edge cases."""
    lines, calls, wants = [], [], []
    for i, shape in enumerate(PACK_SHAPES):
        n, c, hw = shape
        x, y, shift = _pack_case(shape)
        lines += [_c_array(f"x{i}", x), _c_array(f"y{i}", y), _c_array(f"s{i}", shift)]
        size = n * hw * words_for(c)
        plain, added = (specialized_name(k, shape) for k in PACK_KERNELS)
        for call, want in ((f"{plain}(x{i}, s{i}, b)", _packed(x, shift)),
                           (f"{added}(x{i}, y{i}, s{i}, b)", _packed(x + y, shift))):
            calls.append(f"  {{ static uint32_t b[{size}]; {call};\n"
                         f"    for (int i = 0; i < {size}; ++i) {{\n"
                         f"      *out++ = (float)(b[i] & 0xFFFFu);\n      *out++ = (float)(b[i] >> 16);\n    }} }}\n")
            wants.append(want)
    names = {specialized_name(k, s) for s in PACK_SHAPES for k in PACK_KERNELS}
    got = _qemu_outputs(tmp_path, target, names, lines, calls, sum(2 * w.size for w in wants))
    at = 0
    for want in wants:
        halves = got[at : at + 2 * want.size].astype(np.uint32)
        np.testing.assert_array_equal((halves[0::2] | halves[1::2] << 16).reshape(want.shape), want)
        at += 2 * want.size


# --- the bit-sliced threshold kernel (Cortex-M) ------------------------------------------------------------------

# c % 16 == 0, cout % 32 == 0: one and two 16-channel blocks a word, three blocks over two words (c = 48), two groups
# of lanes, stride 2, a batch, a 1x1 conv and a 5x5 one whose borders leave 1 to 25 taps inside.
# The last: 576 products, counts past 255 at inner pixels (the Thumb-2 float epilogue's C path) and below at the rim
SLICE_SHAPES = [(1, 16, 7, 6, 32, 3, 2, 1), (2, 32, 5, 5, 64, 3, 1, 1), (1, 48, 4, 5, 32, 3, 1, 1),
                (1, 16, 8, 8, 32, 1, 2, 0), (1, 16, 5, 6, 32, 5, 1, 2), (1, 64, 4, 4, 32, 3, 1, 1)]


def _threshold_case(rng: np.random.Generator, shape: tuple[int, ...], relu: bool) -> tuple[np.ndarray, ...]:
    """A binary conv's float input, codes and exact sums; a threshold epilogue's (dir, thr) from `sign_thresholds`,
    with constant channels, thresholds beyond every sum (the same bit at every pixel) and, with relu, a channel
    relu holds at a constant 0; and the next layer's bits they must give."""
    n, c, h, w, cout, k, stride, pad = shape
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    codes = rng.choice(np.array([-1, 1], dtype=np.int8), size=(cout, c, k, k))
    sums = binary_conv2d_reference(np.where(x >= 0, 1, -1), codes, (stride, stride), (pad, pad))
    scale = rng.uniform(0.01, 0.1, cout) * rng.choice([-1, 1], cout)
    scale[:2] = 0.0  # constant channels
    scale[2:4] = [1e-4, -1e-4]  # thresholds beyond every sum: the same bit at every pixel
    offset, next_shift = rng.standard_normal(cout) + 0.37, rng.standard_normal(cout) * 0.2
    if relu:
        offset[1] = -1.0  # with shift -1 below: relu(-1) - 1 < 0, a constant 0
        next_shift[1] = -1.0
    direction, threshold = sign_thresholds(scale, offset, next_shift, relu=relu)
    y = sums * scale.reshape(1, -1, 1, 1) + offset.reshape(1, -1, 1, 1)
    return x, codes, sums, direction, threshold, pack_activation_bits(np.maximum(y, 0) if relu else y, next_shift)


def _slice_case(index: int, shape: tuple[int, ...]) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """The bits kernel's inputs for one shape (thresholds from `sign_thresholds`, with constant channels both ways
    and limits no count reaches) and the bits it must write, from the reference; and the affine kernel's mul and add
    with the exact sums."""
    n, c, h, w, cout, k, stride, pad = shape
    rng = np.random.default_rng(index + 40)
    x, codes, sums, direction, threshold, want = _threshold_case(rng, shape, relu=True)
    geometry = _geometry(*shape)
    counts = binary_slice.tap_counts(h, w, k, k, (stride, stride), (pad, pad), *geometry[-2:])
    slot, lim = binary_slice.slice_limits(direction, threshold, c, k * k, counts)
    inputs = {"bits": pack_activation_bits(x, np.zeros(c, np.float32)),
              "w": binary_slice.pack_sliced_weight_bits(codes), "slot": slot, "lim": lim}
    affine = {"mul": rng.standard_normal(cout).astype(np.float32), "add": rng.standard_normal(cout).astype(np.float32),
              "sums": sums}
    return {name: np.ascontiguousarray(a) for name, a in inputs.items()}, want, affine


def _check_bits_and_affine(lib: ctypes.CDLL, names: tuple[str, str], inputs: dict[str, np.ndarray], want: np.ndarray,
                           affine: dict[str, np.ndarray], affine_args: list[np.ndarray]) -> None:
    """A bit-sliced kernel pair built natively: the threshold kernel's bits (called on `inputs`) equal `want`, the
    float kernel's outputs (called on the input bits, the weights and `affine_args`) sum · mul + add."""
    bits_name, affine_name = names
    out = np.empty(want.shape, dtype=np.uint32)
    getattr(lib, bits_name)(*(_ptr(a) for a in inputs.values()), _ptr(out))
    np.testing.assert_array_equal(out, want)
    out_f = np.empty(affine["sums"].shape, dtype=np.float32)
    getattr(lib, affine_name)(_ptr(inputs["bits"]), _ptr(inputs["w"]), *(_ptr(a) for a in affine_args), _ptr(out_f))
    _assert_affine(out_f, affine["sums"], affine["mul"], affine["add"])


@pytest.mark.parametrize("shape", SLICE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_slice_kernels_equal_the_reference(tmp_path, shape):
    """The portable C build of edgebin_bconv2d_slice_{bits,affine} (a ripple add per input) against the
    reference: the threshold epilogue's bits, and the floats sum · mul + add."""
    if CC is None:
        pytest.skip("no C compiler")
    bits_name, affine_name = (specialized_name(f"edgebin_bconv2d_slice{kind}", _geometry(*shape))
                              for kind in ("_bits", "_affine"))
    inputs, want, affine = _slice_case(0, shape)
    _check_bits_and_affine(_specialized_library(tmp_path, {bits_name, affine_name}), (bits_name, affine_name),
                           inputs, want, affine, [affine["mul"], affine["add"]])


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                    reason="needs qemu-system-arm and arm-none-eabi-gcc (make setup)")
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m55"])
def test_slice_kernels_on_cortex_m_equal_the_reference(tmp_path, target):
    """The Thumb-2 build (carry-save adders in assembly, LDM weight words, SBFX masks) on QEMU, every shape, both
    epilogues."""
    lines, calls, wants = [], [], []
    for i, shape in enumerate(SLICE_SHAPES):
        inputs, want, affine = _slice_case(i, shape)
        lines += [_c_array(f"{name}{i}", a) for name, a in [*inputs.items(), ("mul", affine["mul"]),
                                                               ("add", affine["add"])]]
        bits_name, affine_name = (specialized_name(f"edgebin_bconv2d_slice{kind}", _geometry(*shape))
                                  for kind in ("_bits", "_affine"))
        size = affine["sums"].size
        calls.append(f"  {{ static uint32_t b[{want.size}]; {bits_name}(bits{i}, w{i}, slot{i}, lim{i}, b);\n"
                     f"    for (int i = 0; i < {want.size}; ++i) {{\n"
                     f"      *out++ = (float)(b[i] & 0xFFFFu);\n      *out++ = (float)(b[i] >> 16);\n    }} }}\n"
                     f"  {{ static float f[{size}]; {affine_name}(bits{i}, w{i}, mul{i}, add{i}, f);\n"
                     f"    for (int i = 0; i < {size}; ++i) *out++ = f[i]; }}\n")
        wants.append((want, affine))
    names = {specialized_name(f"edgebin_bconv2d_slice{kind}", _geometry(*shape)) for shape in SLICE_SHAPES
             for kind in ("_bits", "_affine")}
    total = sum(2 * want.size + affine["sums"].size for want, affine in wants)
    got = _qemu_outputs(tmp_path, target, names, lines, calls, total)
    at = 0
    for shape, (want, affine) in zip(SLICE_SHAPES, wants, strict=True):
        halves = got[at : at + 2 * want.size].astype(np.uint32)
        np.testing.assert_array_equal((halves[0::2] | halves[1::2] << 16).reshape(want.shape), want,
                                      err_msg=f"{shape}")
        at += 2 * want.size
        sums = affine["sums"]
        _assert_affine(got[at : at + sums.size].reshape(sums.shape), sums, affine["mul"], affine["add"])
        at += sums.size


def test_sliced_weight_bits_put_output_channels_in_lanes():
    codes = -np.ones((32, 2, 1, 2), dtype=np.int8)
    codes[0, 1, 0, 0] = 1  # channel 0, input 1, tap 0 -> word [0, 0, 1] bit 0
    codes[31, 0, 0, 1] = 1  # channel 31, input 0, tap 1 -> word [0, 1, 0] bit 31
    words = binary_slice.pack_sliced_weight_bits(codes)
    assert words.shape == (1, 2, 2) and words.tolist() == [[[0, 1], [1 << 31, 0]]]
    with pytest.raises(ValueError, match="multiple of 32"):
        binary_slice.pack_sliced_weight_bits(np.ones((16, 1, 1, 1), dtype=np.int8))


def test_slice_limits_match_hand_values():
    # c = 4, one tap inside of 9: sums 4 - 2 count. dir +1, thr 0: count <= 2. dir -1, thr 0: -sum >= 0 <=> count
    # >= 2 <=> not count <= 1. dir 0, thr 0: always 1. dir +1, thr 5: never (the lane stays 0 in every mask).
    direction, threshold = np.zeros(32, np.int32), np.zeros(32, np.int32)
    direction[:2], direction[3] = [1, -1], 1
    threshold[3] = 5
    slot, lim = binary_slice.slice_limits(direction, threshold, 4, 9, {1})
    assert slot.tolist() == [-1, 0, -1, -1, -1, -1, -1, -1, -1, -1]
    planes, le, gt, one = lim[0, 0, :10], lim[0, 0, 10], lim[0, 0, 11], lim[0, 0, 12]
    assert planes[0] == 0b10 and planes[1] == 0b01 and not planes[2:].any()  # L = 2 on lane 0, 1 on lane 1
    assert (le, gt) == (0b1, 0b10) and one == ((1 << 32) - 1) & ~0b1011
    assert binary_slice.inside_counts(5, 3, 1, 1, 5) == {2, 3} and binary_slice.inside_counts(4, 1, 2, 0, 2) == {1}
    assert binary_slice.fits(16, 32, 9) and not binary_slice.fits(8, 32, 9) and not binary_slice.fits(16, 16, 9)
    assert binary_slice.fits(32, 32, 9, "_affine") and binary_slice.fits(16, 32, 1, "_affine")  # 288; 16 (a shortcut)
    assert not binary_slice.fits(32, 32, 9, "")  # int32 sums: the dense kernels


# --- the paired kernel (16 output channels, two pixels a word) -----------------------------------------------------

# 3x3 same padding over an even and an odd width (the last pair's second pixel missing), stride 2, c = 48 over two
# words, a batch, a 1x1 conv and a 5x5 one whose borders leave a pixel of a pair with fewer taps than its neighbour.
PAIR_SHAPES = [(1, 16, 6, 6, 16, 3, 1, 1), (2, 16, 5, 7, 16, 3, 1, 1), (1, 32, 7, 8, 16, 3, 2, 1),
               (1, 48, 4, 5, 16, 3, 1, 1), (1, 16, 4, 6, 16, 1, 1, 0), (1, 16, 6, 7, 16, 5, 1, 2),
               (1, 64, 4, 4, 16, 3, 1, 1)]  # the last as SLICE_SHAPES' last


def _pair_case(index: int, shape: tuple[int, ...]) -> tuple[dict[str, np.ndarray], np.ndarray, dict]:
    """The paired bits kernel's inputs for one shape (thresholds as `_slice_case`'s, constant channels included) and
    the bits it must write, from the reference; and the affine kernel's slot, base, mul and add with the exact
    sums."""
    n, c, h, w, cout, k, stride, pad = shape
    rng = np.random.default_rng(index + 70)
    x, codes, sums, direction, threshold, want = _threshold_case(rng, shape, relu=False)
    oh, ow = _geometry(*shape)[-2:]
    slot, lim = binary_slice.pair_limits(direction, threshold, codes, h, w, (stride, stride), (pad, pad), oh, ow)
    inputs = {"bits": pack_activation_bits(x, np.zeros(c, np.float32)),
              "w": binary_slice.pack_paired_weight_bits(codes), "slot": slot, "lim": lim}
    slot_f, base = binary_slice.pair_bases(codes, h, w, (stride, stride), (pad, pad), oh, ow)
    affine = {"slot_f": slot_f, "base": base, "mul": rng.standard_normal(cout).astype(np.float32),
              "add": rng.standard_normal(cout).astype(np.float32)}
    return ({name: np.ascontiguousarray(a) for name, a in inputs.items()}, want,
            {**{name: np.ascontiguousarray(a) for name, a in affine.items()}, "sums": sums})


@pytest.mark.parametrize("shape", PAIR_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_pair_kernel_equals_the_reference(tmp_path, shape):
    """The portable C build of edgebin_bconv2d_pair_{bits,affine} against the reference: the next layer's bits, and
    the floats sum · mul + add."""
    if CC is None:
        pytest.skip("no C compiler")
    assert binary_slice.pair_fits(shape[1], shape[4], shape[5], shape[5], shape[6], _geometry(*shape)[-1])
    name, affine_name = (specialized_name(f"edgebin_bconv2d_pair{kind}", _geometry(*shape))
                         for kind in ("_bits", "_affine"))
    inputs, want, affine = _pair_case(0, shape)
    _check_bits_and_affine(_specialized_library(tmp_path, {name, affine_name}), (name, affine_name), inputs, want,
                           affine, [affine[k] for k in ("slot_f", "base", "mul", "add")])


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                    reason="needs qemu-system-arm and arm-none-eabi-gcc (make setup)")
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m55"])
def test_pair_kernel_on_cortex_m_equals_the_reference(tmp_path, target):
    """The Thumb-2 build (LDRD of weight and mask words, carry-save adders in assembly) on QEMU, every shape, both
    epilogues."""
    lines, calls, wants, names = [], [], [], set()
    for i, shape in enumerate(PAIR_SHAPES):
        inputs, want, affine = _pair_case(i, shape)
        lines += [_c_array(f"{name}{i}", a) for name, a in [*inputs.items(), *list(affine.items())[:-1]]]
        name, affine_name = (specialized_name(f"edgebin_bconv2d_pair{kind}", _geometry(*shape))
                             for kind in ("_bits", "_affine"))
        names |= {name, affine_name}
        size = affine["sums"].size
        calls.append(f"  {{ static uint32_t b[{want.size}]; {name}(bits{i}, w{i}, slot{i}, lim{i}, b);\n"
                     f"    for (int i = 0; i < {want.size}; ++i) *out++ = (float)b[i]; }}\n"
                     f"  {{ static float f[{size}];\n"
                     f"    {affine_name}(bits{i}, w{i}, slot_f{i}, base{i}, mul{i}, add{i}, f);\n"
                     f"    for (int i = 0; i < {size}; ++i) *out++ = f[i]; }}\n")
        wants.append((want, affine))
    total = sum(want.size + affine["sums"].size for want, affine in wants)
    got = _qemu_outputs(tmp_path, target, names, lines, calls, total)
    at = 0
    for shape, (want, affine) in zip(PAIR_SHAPES, wants, strict=True):
        np.testing.assert_array_equal(got[at : at + want.size].astype(np.uint32).reshape(want.shape), want,
                                      err_msg=f"{shape}")
        at += want.size
        sums = affine["sums"]
        _assert_affine(got[at : at + sums.size].reshape(sums.shape), sums, affine["mul"], affine["add"])
        at += sums.size


# (block conv, (shortcut channels, input height, width, stride)): ResNet-8's downsampling blocks at small sizes (16
# and 32 shortcut channels, stride 2, an odd input), a batch, and a conv of 576 products whose counts pass 255
# (the C epilogue) beside a stride-1 shortcut over three 16-channel blocks.
SHORTCUT_SHAPES = [((1, 32, 7, 7, 32, 3, 1, 1), (16, 14, 13, 2)), ((2, 32, 5, 5, 64, 3, 1, 1), (32, 9, 10, 2)),
                   ((1, 64, 4, 4, 32, 3, 1, 1), (48, 4, 4, 1))]


def _shortcut_case(index: int, shape: tuple[int, ...], short: tuple[int, ...]) -> tuple[dict[str, np.ndarray],
                                                                                        dict[str, np.ndarray]]:
    """`edgebin_bconv2d_slice_shortcut`'s inputs in call order, and the exact sums of both convs with mul, smul and
    the combined add."""
    inputs, _, affine = _slice_case(index, shape)
    n, cout = shape[0], shape[4]
    sc, sh, sw, stride = short
    rng = np.random.default_rng(index + 90)
    signs = np.where(rng.standard_normal((n, sc, sh, sw)) >= 0, 1, -1)
    codes = np.where(rng.standard_normal((cout, sc, 1, 1)) >= 0, 1, -1).astype(np.int8)
    ssums = binary_conv2d_reference(signs, codes, (stride, stride), (0, 0))
    assert ssums.shape == affine["sums"].shape
    call = {"bits": inputs["bits"], "w": inputs["w"],
            "sbits": pack_activation_bits(signs.astype(np.float32), np.zeros(sc, np.float32)),
            "sweights": binary_slice.pack_sliced_weight_bits(codes), "mul": affine["mul"],
            "smul": rng.standard_normal(cout).astype(np.float32), "add": affine["add"]}
    return ({name: np.ascontiguousarray(a) for name, a in call.items()},
            {"sums": affine["sums"], "ssums": ssums})


def _shortcut_name(shape: tuple[int, ...], short: tuple[int, ...]) -> str:
    return specialized_name("edgebin_bconv2d_slice_shortcut", (*_geometry(*shape), *short[:3], short[3], short[3]))


def _assert_shortcut_sum(got: np.ndarray, call: dict[str, np.ndarray], sums: dict[str, np.ndarray]) -> None:
    """Each float equals (sum · mul + add) + shortcut sum · smul, each step rounded once (an FMA) or twice."""
    def steps(acc: np.ndarray, s: np.ndarray, m: np.ndarray) -> list[np.ndarray]:
        m = m.reshape(1, -1, 1, 1)
        return [acc + s.astype(np.float32) * m,
                (acc.astype(np.float64) + s.astype(np.float64) * m.astype(np.float64)).astype(np.float32)]

    zero = np.zeros_like(sums["sums"], np.float32)
    firsts = steps(zero + call["add"].reshape(1, -1, 1, 1), sums["sums"], call["mul"])
    ok = np.zeros(got.shape, bool)
    for first in firsts:
        for want in steps(first, sums["ssums"], call["smul"]):
            ok |= got == want
    assert ok.all(), f"{(~ok).sum()} of {ok.size} floats differ"


@pytest.mark.parametrize(("shape", "short"), SHORTCUT_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_shortcut_kernel_equals_the_reference(tmp_path, shape, short):
    """The portable C build of edgebin_bconv2d_slice_shortcut: a block's conv and its 1x1 shortcut in one kernel."""
    if CC is None:
        pytest.skip("no C compiler")
    assert binary_slice.shortcut_fits(short[0], 1, 1, (0, 0))
    name = _shortcut_name(shape, short)
    call, sums = _shortcut_case(0, shape, short)
    out = np.empty(sums["sums"].shape, dtype=np.float32)
    getattr(_specialized_library(tmp_path, {name}), name)(*(_ptr(a) for a in call.values()), _ptr(out))
    _assert_shortcut_sum(out, call, sums)


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                    reason="needs qemu-system-arm and arm-none-eabi-gcc (make setup)")
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m55"])
def test_shortcut_kernel_on_cortex_m_equals_the_reference(tmp_path, target):
    """The Thumb-2 build (the float epilogue's two counts in assembly) on QEMU, every shape."""
    lines, calls, cases, names = [], [], [], set()
    for i, (shape, short) in enumerate(SHORTCUT_SHAPES):
        call, sums = _shortcut_case(i, shape, short)
        lines += [_c_array(f"{name}{i}", a) for name, a in call.items()]
        name = _shortcut_name(shape, short)
        names.add(name)
        size = sums["sums"].size
        calls.append(f"  {{ static float f[{size}]; {name}({', '.join(f'{k}{i}' for k in call)}, f);\n"
                     f"    for (int i = 0; i < {size}; ++i) *out++ = f[i]; }}\n")
        cases.append((call, sums))
    got = _qemu_outputs(tmp_path, target, names, lines, calls, sum(s["sums"].size for _, s in cases))
    at = 0
    for call, sums in cases:
        size = sums["sums"].size
        _assert_shortcut_sum(got[at : at + size].reshape(sums["sums"].shape), call, sums)
        at += size




# The paired kernel's shapes of at most 255 products (its counts in a byte), and one of stride 2.
COUNT_SHAPES = [PAIR_SHAPES[0], PAIR_SHAPES[1], PAIR_SHAPES[4], (1, 16, 7, 8, 16, 3, 2, 1)]


def _pair_add_case(index: int, shape: tuple[int, ...]) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    """`edgebin_bconv2d_pair_counts`' inputs for one shape; the counts it must give, (taps · c - sum) / 2 as (N, 16,
    OH, OW); a residual; and `edgebin_bpack_pair_add`'s (mul, add) per channel, interleaved (add never -0.0)."""
    n, c, h, w, cout, k, stride, pad = shape
    x, codes, sums, *_ = _threshold_case(np.random.default_rng(index + 110), shape, relu=False)
    oh, ow = _geometry(*shape)[-2:]
    slot, delta = binary_slice.pair_deltas(codes, h, w, (stride, stride), (pad, pad), oh, ow)
    inputs = {"bits": pack_activation_bits(x, np.zeros(c, np.float32)),
              "w": binary_slice.pack_paired_weight_bits(codes), "slot": slot, "delta": delta}
    rng = np.random.default_rng(index + 111)
    res = rng.standard_normal(sums.shape).astype(np.float32)
    ma = (np.stack([rng.standard_normal(cout), rng.standard_normal(cout)], axis=1) * [0.05, 1]).astype(np.float32)
    return ({name: np.ascontiguousarray(a) for name, a in inputs.items()}, (k * k * c - sums) // 2, res,
            np.ascontiguousarray(ma + np.float32(0.0)))


def _pair_count_bytes(words: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    """(N, OH, pairs, 8) words of `edgebin_bconv2d_pair_counts` -> counts (N, 16, OH, OW): lane j of a pair is byte
    j // 8 of word j % 8, lanes 0-15 its first pixel's channels, 16-31 its second's."""
    n, cout, oh, ow = shape
    lanes = np.arange(32)
    counts = (words[..., lanes % 8] >> (8 * (lanes // 8)).astype(np.uint32)) & 255  # (N, OH, pairs, 32)
    pixels = counts.reshape(n, oh, -1, 2, cout).transpose(0, 4, 1, 2, 3).reshape(n, cout, oh, -1)
    return pixels[..., :ow]


def _pair_add_bits(counts: np.ndarray, res: np.ndarray, ma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bits `edgebin_bpack_pair_add` must write, (count · mul + res) + add >= 0, its first step rounded twice or
    once (an FMA)."""
    mul, add = (ma[:, j].reshape(1, -1, 1, 1) for j in (0, 1))
    twice = counts.astype(np.float32) * mul + res
    once = (counts.astype(np.float64) * mul.astype(np.float64) + res.astype(np.float64)).astype(np.float32)
    return tuple(pack_activation_bits(v + add, np.zeros(res.shape[1], np.float32)) for v in (twice, once))


def _check_pair_add(got_words: np.ndarray, got_bits: np.ndarray, counts: np.ndarray, res: np.ndarray,
                    ma: np.ndarray) -> None:
    np.testing.assert_array_equal(_pair_count_bytes(got_words, counts.shape), counts)
    twice, once = _pair_add_bits(counts, res, ma)
    assert ((got_bits == twice) | (got_bits == once)).all()


@pytest.mark.parametrize("shape", COUNT_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_pair_counts_and_their_packing_equal_the_reference(tmp_path, shape):
    """The portable C build of edgebin_bconv2d_pair_counts (each pixel's mismatches moved to an interior pixel's)
    and of edgebin_bpack_pair_add on its output."""
    if CC is None:
        pytest.skip("no C compiler")
    n, c, h, w, cout, k, stride, pad = shape
    geometry = _geometry(*shape)
    counts_name = specialized_name("edgebin_bconv2d_pair_counts", geometry)
    pack_name = specialized_name("edgebin_bpack_pair_add", (n, cout, *geometry[-2:]))
    lib = _specialized_library(tmp_path, {counts_name, pack_name})
    inputs, counts, res, ma = _pair_add_case(0, shape)
    oh, ow = geometry[-2:]
    words = np.zeros((n, oh, (ow + 1) // 2, 8), np.uint32)
    getattr(lib, counts_name)(*(_ptr(a) for a in inputs.values()), _ptr(words))
    bits = np.zeros((n, oh, ow, 1), np.uint32)
    getattr(lib, pack_name)(_ptr(words), _ptr(res), _ptr(ma), _ptr(bits))
    _check_pair_add(words, bits, counts, res, ma)


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                    reason="needs qemu-system-arm and arm-none-eabi-gcc (make setup)")
@pytest.mark.parametrize("target", ["cortex-m4", "cortex-m55"])
def test_pair_counts_and_their_packing_on_cortex_m_equal_the_reference(tmp_path, target):
    """The Thumb-2 build (UADD8 border corrections, the packing's signs in assembly) on QEMU."""
    lines, calls, cases, names = [], [], [], set()
    for i, shape in enumerate(COUNT_SHAPES):
        n, c, h, w, cout, k, stride, pad = shape
        geometry = _geometry(*shape)
        oh, ow = geometry[-2:]
        counts_name = specialized_name("edgebin_bconv2d_pair_counts", geometry)
        pack_name = specialized_name("edgebin_bpack_pair_add", (n, cout, oh, ow))
        names |= {counts_name, pack_name}
        inputs, counts, res, ma = _pair_add_case(i, shape)
        lines += [_c_array(f"{name}{i}", a) for name, a in [*inputs.items(), ("res", res), ("ma", ma)]]
        words, bits = n * oh * ((ow + 1) // 2) * 8, n * oh * ow
        calls.append(f"  {{ static uint32_t c[{words}], b[{bits}];\n"
                     f"    {counts_name}(bits{i}, w{i}, slot{i}, delta{i}, c); {pack_name}(c, res{i}, ma{i}, b);\n"
                     f"    for (int i = 0; i < {words}; ++i) {{\n"
                     f"      *out++ = (float)(c[i] & 0xFFFFu);\n      *out++ = (float)(c[i] >> 16);\n    }}\n"
                     f"    for (int i = 0; i < {bits}; ++i) *out++ = (float)b[i]; }}\n")
        cases.append((shape, counts, res, ma, words, bits))
    got = _qemu_outputs(tmp_path, target, names, lines, calls, sum(2 * c[4] + c[5] for c in cases))
    at = 0
    for shape, counts, res, ma, words, bits in cases:
        halves = got[at : at + 2 * words].astype(np.uint32)
        at += 2 * words
        oh, ow = counts.shape[2:]
        got_words = (halves[0::2] | halves[1::2] << 16).reshape(shape[0], oh, (ow + 1) // 2, 8)
        got_bits = got[at : at + bits].astype(np.uint32).reshape(shape[0], oh, ow, 1)
        at += bits
        _check_pair_add(got_words, got_bits, counts, res, ma)
