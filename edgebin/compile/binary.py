"""BinaryToPacked: run the binary (W1A1) convolutions of an exported QAT model on packed bits, XNOR and popcount.

edgebin exports a binary layer (`edgebin.export.qat`) as plain ONNX that any runtime runs in float:

    Where(GreaterOrEqual(Add(x, shift), 0), 1, -1) -> Conv(., DequantizeLinear(codes in {-1, +1}, scale[co]))

After import that is `conv2d(where(greater_equal(add(x, shift), 0), 1, -1), dequantize(codes, scale))`. This
pass (run right after import, before QdqToInt8 and FoldConstant, which would fold the weight's dequantize) turns
each such conv into

    bits = call_tir(edgebin_bpack_nchw_f32: x, shift)          # one bit per channel, 32 channels per word
    acc  = call_tir(edgebin_bconv2d: bits, weight bits)         # int32: taps·C - 2·popcount(a XOR w)
    y    = astype(acc, float32) * scale[co]                     # fused by TVM with what follows (ReLU, add)

and a conv that a BatchNorm follows (as in every binary ResNet) into one `edgebin_bconv2d_affine`, whose float
epilogue `acc · mul[co] + add[co]` applies the scale and the BatchNorm in the same pass. Where that result (after
an optional ReLU) feeds only the next binary conv's sign, the threshold epilogue `edgebin_bconv2d_bits` writes
that conv's packed input bits directly, `[max(0,] acc · mul + add [)] + shift >= 0` as one integer comparison
per channel (`sign_thresholds`): no float tensor, no packing kernel, no ReLU kernel in between.

A conv plus a per-channel constant (a ResNet shortcut's bias) becomes one affine kernel with mul = scale and add =
bias (on a Cortex-M the shortcut's cast, multiply and bias add then leave TVM's elementwise kernel that follows).
With the per-tap kernels (host, Raspberry Pi; not the dense Cortex-M ones, whose float output the memory planner
reuses in place) `relu(batch_norm(conv)[0] + res)` (a ResNet block's second conv, its residual add and ReLU)
becomes `edgebin_bconv2d_residual`, which reads `res` in its epilogue. TVM's untuned elementwise kernels for those
adds took longer than the binary convs themselves (LLVM vectorized them with gathers and scatters). With the dense
kernels instead, a block's `[relu](a + b)` that feeds binary convs is packed by `edgebin_bpack_add_nchw_f32`, the sum
never written and the ReLU folded into the shift (`relu_folded_shift`); where a is a paired conv's BatchNorm, the conv
writes its counts and `edgebin_bpack_pair_add` applies the BatchNorm as it packs (`_counted_sum`); and a downsampling
block's `batch_norm(conv2) + shortcut` runs as one kernel, `edgebin_bconv2d_slice_shortcut` (`_shortcut_sum`).

with the weight codes packed to bits at compile time (`pack_weight_bits`, 1 bit per weight: parameters / 8
bytes). The kernels are C (`binary_kernels/edgebin_binary.h`), called through `T.call_extern` from thin TIR
wrappers, so every target compiles the same integer code with its own popcount. Each call names a
shape-specialized kernel (`specialized_name`); `c_source(binary_kernel_names(mod))` writes the C that defines
them, which the build compiles and links beside TVM's kernels. The pattern is recognised
structurally (constant ±1 int8 codes, a per-output-channel scale, a zero zero point, a sign with +1 at 0), so
it needs no side channel; anything else (grouped or dilated convs, a non-constant weight) stays float and is
logged. The accumulator is exact; the float graph sums ±scale terms in float and can differ from
`scale · acc` by float rounding (relative 1e-7), which the next binarization sees only at exact ties.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgebin.compile import binary_slice
from edgebin.compile.batch_norm import batch_norm_params
from edgebin.compile.kernels import extern_calls
from edgebin.compile.mst import mst_plan
from edgebin.compile.qdq_to_int import BindingGraph
from edgebin.compile.tvm_adapter import (
    PyExprMutator,
    call_op_name,
    const,
    const_array,
    mutator,
    relax,
    tensor_dtype,
    tensor_shape,
    tirx,
    tvm,
)

log = logging.getLogger(__name__)

KERNEL_DIR = Path(__file__).with_name("binary_kernels")
HEADER = KERNEL_DIR / "edgebin_binary.h"
WORD_BITS = 32
_POINTERS = {  # each kernel of HEADER: its pointer parameters before its integer shape ones, and its output
    "edgebin_bpack_nchw_f32": (("const float* x", "const float* shift"), "uint32_t* out"),
    "edgebin_bpack_add_nchw_f32": (("const float* x", "const float* y", "const float* shift"), "uint32_t* out"),
    "edgebin_bconv2d": (("const uint32_t* bits", "const uint32_t* w"), "int32_t* out"),
    "edgebin_bconv2d_affine": (("const uint32_t* bits", "const uint32_t* w", "const float* mul", "const float* add"),
                               "float* out"),
    "edgebin_bconv2d_residual": (("const uint32_t* bits", "const uint32_t* w", "const float* mul", "const float* add",
                                  "const float* res"), "float* out"),
    "edgebin_bconv2d_dense": (("const uint32_t* bits", "const uint32_t* w", "const int8_t* tapsum"), "int32_t* out"),
    "edgebin_bconv2d_dense_affine": (("const uint32_t* bits", "const uint32_t* w", "const int8_t* tapsum",
                                      "const float* mul", "const float* add"), "float* out"),
    "edgebin_bconv2d_bits": (("const uint32_t* bits", "const uint32_t* w", "const int32_t* dir", "const int32_t* thr"),
                             "uint32_t* out"),
    "edgebin_bconv2d_dense_bits": (("const uint32_t* bits", "const uint32_t* w", "const int8_t* tapsum",
                                    "const int32_t* dir", "const int32_t* thr"), "uint32_t* out"),
    "edgebin_bconv2d_slice_bits": (("const uint32_t* bits", "const uint32_t* w", "const int8_t* slot",
                                    "const uint32_t* lim"), "uint32_t* out"),
    "edgebin_bconv2d_pair_bits": (("const uint32_t* bits", "const uint32_t* w", "const int8_t* slot",
                                   "const uint32_t* lim"), "uint32_t* out"),
    "edgebin_bconv2d_pair_affine": (("const uint32_t* bits", "const uint32_t* w", "const int8_t* slot",
                                     "const int32_t* base", "const float* mul", "const float* add"), "float* out"),
    "edgebin_bconv2d_slice_affine": (("const uint32_t* bits", "const uint32_t* w", "const float* mul",
                                      "const float* add"), "float* out"),
    "edgebin_bconv2d_pair_counts": (("const uint32_t* bits", "const uint32_t* w", "const int8_t* slot",
                                     "const uint32_t* delta"), "uint32_t* out"),
    "edgebin_bpack_pair_add": (("const uint32_t* counts", "const float* res", "const float* ma"), "uint32_t* out"),
    "edgebin_bconv2d_slice_shortcut": (("const uint32_t* bits", "const uint32_t* w", "const uint32_t* sbits",
                                        "const uint32_t* sweights", "const float* mul", "const float* smul",
                                        "const float* add"), "float* out"),
}
for _kernel in ("edgebin_bconv2d_dense", "edgebin_bconv2d_dense_affine", "edgebin_bconv2d_dense_bits"):
    _inputs, _output = _POINTERS[_kernel]  # MST-compression: the tree's tables after tapsum
    _POINTERS[_kernel.replace("_dense", "_dense_mst")] = (
        (*_inputs[:3], "const int32_t* nodes", "const uint32_t* edges", *_inputs[3:]), _output)
MST_CHANNELS = 512  # EDGEBIN_MST_CHANNELS: the most output channels an MST-compressed conv may have
MST = contextvars.ContextVar("edgebin_binary_mst", default=os.environ.get("EDGEBIN_BINARY_MST", "0") == "1")


@contextlib.contextmanager
def mst_compression(on: bool = True) -> Iterator[None]:
    """Within the block, BinaryToPacked compiles binary convs with MST-compression (edgebin.compile.mst);
    EDGEBIN_BINARY_MST=1 sets the default."""
    token = MST.set(on)
    try:
        yield
    finally:
        MST.reset(token)
# The bit-sliced threshold kernel (binary_slice) on or off for dense targets: on for Cortex-M; off where the C target
# has a popcount instruction (a Raspberry Pi's runtime-free C bundle: NEON), which the dense kernels use.
SLICED = contextvars.ContextVar("edgebin_binary_sliced", default=True)


@contextlib.contextmanager
def bit_sliced(on: bool = True) -> Iterator[None]:
    """Within the block, BinaryToPacked's dense targets take the bit-sliced threshold kernel where it fits (`on`,
    the default) or always the dense kernels."""
    token = SLICED.set(on)
    try:
        yield
    finally:
        SLICED.reset(token)


DENSE_COLUMN_WORDS = 64  # EDGEBIN_BCOL_WORDS: the longest dense column the dense kernels take
DENSE_MAX_CHANNELS = 127  # their per-tap weight sums are int8
KERNELS = frozenset(_POINTERS)


def specialized_name(kernel: str, shape: tuple[int, ...]) -> str:
    """`edgebin_bconv2d__1_16_28_...`: the name of `kernel` with its shape parameters fixed (see `c_source`)."""
    return f"{kernel}__" + "_".join(str(int(v)) for v in shape)


def kernel_of(name: str) -> str:
    """The generic kernel a specialized name calls: `edgebin_bconv2d__1_16_...` -> `edgebin_bconv2d`."""
    return name.split("__", 1)[0]


def c_source(names: set[str] | frozenset[str], linkage: str = "") -> str:
    """C that defines each specialized kernel name as a call of the header's generic kernel with constant shape
    arguments. The header is included static inline, so the compiler specializes every loop for its layer (known
    trip counts: about twice as fast as the generic kernel on x86). Compile with -I KERNEL_DIR. `linkage`
    prefixes each definition: "" for a library that TVM's kernels link against (the host's model.so), `INLINE`
    where the definitions share a file with their callers (an MCU bundle's kernels.c), so that each inlines into
    the kernel that calls it and an instruction profile charges the layer with its work."""
    lines = ["/* Generated by edgebin (compile/binary.py): the model's binary kernels, one per layer shape. */",
             '#include "edgebin_binary.h"', "", "#ifdef __cplusplus", 'extern "C" {', "#endif", ""]
    for name in sorted(names):
        kernel = kernel_of(name)
        if kernel not in KERNELS:
            raise ValueError(f"c_source: {name} is not a specialized kernel of {HEADER.name}")
        shape = name.split("__", 1)[1].split("_")
        inputs, output = _POINTERS[kernel]
        params = ", ".join((*inputs, output))
        args = ", ".join((*(p.rsplit("*", 1)[1].strip() for p in inputs), *shape, "out"))
        lines += [f"{linkage + ' ' if linkage else ''}void {name}({params}) {{ {kernel}({args}); }}", ""]
    lines += ["#ifdef __cplusplus", "}", "#endif", ""]
    return "\n".join(lines)


def words_for(channels: int) -> int:
    """32-bit words per pixel for `channels` packed channels."""
    return -(-channels // WORD_BITS)


def pack_weight_bits(codes: np.ndarray) -> np.ndarray:
    """(Cout, C, KH, KW) codes in {-1, +1} -> uint32 bits laid out (KH, KW, words, Cout), +1 -> bit 1."""
    cout, c, kh, kw = codes.shape
    if not np.isin(codes, (-1, 1)).all():
        raise ValueError("pack_weight_bits: codes must all be -1 or +1")
    bits = np.zeros((kh, kw, words_for(c) * WORD_BITS, cout), dtype=np.uint64)
    bits[:, :, :c, :] = (codes > 0).transpose(2, 3, 1, 0)
    lanes = bits.reshape(kh, kw, -1, WORD_BITS, cout)
    weights = np.uint64(1) << np.arange(WORD_BITS, dtype=np.uint64).reshape(1, 1, 1, WORD_BITS, 1)
    return (lanes * weights).sum(axis=3).astype(np.uint32)


def pack_dense_weight_bits(codes: np.ndarray) -> np.ndarray:
    """(Cout, C, KH, KW) codes in {-1, +1} -> uint32 rows (Cout, words): bit t·C + ch of row co is
    codes[co, ch, ky, kx] > 0 with t = ky·KW + kx, the dense receptive-field order of `edgebin_bconv2d_dense`."""
    cout, c, kh, kw = codes.shape
    if not np.isin(codes, (-1, 1)).all():
        raise ValueError("pack_dense_weight_bits: codes must all be -1 or +1")
    flat = (codes > 0).transpose(0, 2, 3, 1).reshape(cout, kh * kw * c)
    words = words_for(kh * kw * c)
    bits = np.zeros((cout, words * WORD_BITS), dtype=np.uint64)
    bits[:, : flat.shape[1]] = flat
    lanes = bits.reshape(cout, words, WORD_BITS)
    return (lanes << np.arange(WORD_BITS, dtype=np.uint64)).sum(axis=-1).astype(np.uint32)


def tap_sums(codes: np.ndarray) -> np.ndarray:
    """(Cout, KH·KW) int8: each tap's sum of ±1 weights over the input channels (|sum| <= C <= DENSE_MAX_CHANNELS),
    the dense kernels' border fix."""
    cout, _, kh, kw = codes.shape
    if codes.shape[1] > DENSE_MAX_CHANNELS:
        raise ValueError(f"tap_sums: {codes.shape[1]} input channels; int8 sums hold at most {DENSE_MAX_CHANNELS}")
    return codes.astype(np.int8).sum(axis=1, dtype=np.int8).reshape(cout, kh * kw)


def sign_thresholds(mul: np.ndarray, add: np.ndarray, shift: np.ndarray, *, relu: bool) -> tuple[np.ndarray,
                                                                                              np.ndarray]:
    """(dir, thr) int32 per channel with `dir · s >= thr` ⇔ `[relu](s · mul + add) + shift >= 0` for every integer
    sum s: the threshold epilogue. Without ReLU the condition is s · mul >= r with r = -shift - add; with ReLU the
    same when shift < 0, and always true when shift >= 0 (relu(v) >= 0 >= -shift). mul > 0: s >= ceil(r / mul);
    mul < 0: -s >= -floor(r / mul); mul = 0: a constant (dir 0, thr 0 for true, 1 for false). Worked in float64,
    so a sum exactly at a threshold may go the other way than the float32 graph's rounding takes it."""
    mul, add, shift = (np.asarray(a, np.float64).reshape(-1) for a in (mul, add, shift))
    r = -shift - add
    direction = np.sign(mul).astype(np.int32)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = r / mul
    threshold = np.where(mul > 0, np.ceil(ratio), np.where(mul < 0, -np.floor(ratio), np.where(0 >= r, 0, 1)))
    if relu:  # relu(v) + shift >= 0 holds for every s when shift >= 0
        direction = np.where(shift >= 0, 0, direction)
        threshold = np.where(shift >= 0, 0, threshold)
    limit = 2**30  # beyond any sum a layer can reach: keeps the comparison in int32
    return direction.astype(np.int32), np.clip(threshold, -limit, limit).astype(np.int32)


def relu_folded_shift(shift: np.ndarray) -> np.ndarray:
    """The shift with which v's packed bits are relu(v)'s with `shift`: relu(v) + shift >= 0 holds for every v when
    shift >= 0 (+inf then), and is v + shift >= 0 when shift < 0 (float32 rounding keeps the sign of v + shift)."""
    shift = np.asarray(shift, np.float32)
    return np.where(shift >= 0, np.float32(np.inf), shift).astype(np.float32)


def pack_activation_bits(x: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The reference of `edgebin_bpack_nchw_f32`: (N, C, H, W) float -> (N, H, W, words) uint32."""
    n, c, h, w = x.shape
    on = (x.astype(np.float32) + shift.astype(np.float32).reshape(1, c, 1, 1)) >= 0
    bits = np.zeros((n, h, w, words_for(c) * WORD_BITS), dtype=np.uint64)
    bits[..., :c] = on.transpose(0, 2, 3, 1)
    lanes = bits.reshape(n, h, w, -1, WORD_BITS)
    return (lanes << np.arange(WORD_BITS, dtype=np.uint64)).sum(axis=-1).astype(np.uint32)


def binary_conv2d_reference(signs: np.ndarray, codes: np.ndarray, stride: tuple[int, int],
                            padding: tuple[int, int]) -> np.ndarray:
    """int64 conv of ±1 activations (N, C, H, W) with ±1 codes (Cout, C, KH, KW), zero padding: the exact sums."""
    n, c, h, w = signs.shape
    cout, _, kh, kw = codes.shape
    (sh, sw), (ph, pw) = stride, padding
    padded = np.pad(signs.astype(np.int64), ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    out = np.zeros((n, cout, oh, ow), dtype=np.int64)
    for ky in range(kh):
        for kx in range(kw):
            window = padded[:, :, ky : ky + sh * oh : sh, kx : kx + sw * ow : sw]
            out += np.einsum("nchw,oc->nohw", window, codes[:, :, ky, kx].astype(np.int64))
    return out


@dataclass(frozen=True)
class _BinaryConv:
    """A recognised binary conv: the float input before the sign, the shift, codes, scales and geometry."""

    x: relax.Expr
    shift: np.ndarray  # (C,) float32
    codes: np.ndarray  # (Cout, C, KH, KW) int8 in {-1, +1}
    scale: np.ndarray  # (Cout,) float32
    stride: tuple[int, int]
    padding: tuple[int, int]
    out_shape: tuple[int, ...]

    def geometry(self) -> tuple[int, ...]:
        """(n, c, h, w, cout, kh, kw, sh, sw, ph, pw, oh, ow): the shape parameters of every conv kernel."""
        cout, _, kh, kw = self.codes.shape
        return (*tensor_shape(self.x), cout, kh, kw, *self.stride, *self.padding, *self.out_shape[2:])


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod, func: relax.Function, dense: bool, mst: bool) -> None:
        super().__init__(mod)
        self.dense, self.mst = dense, mst
        self.fuse = not dense and not mst  # the residual epilogue: the per-tap kernels (host, Raspberry Pi)
        self.mst_layers: list[tuple[str, dict, relax.Var]] = []  # (kernel, work the tree saves, its call's result)
        self.bits_of: dict = {}  # (input variable, shift bytes) -> the packed-bits tensor already emitted
        self.graph = BindingGraph(func, mod)
        self.value = self.graph.value
        self.rewritten: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()

    def visit_call_(self, call):
        op = call_op_name(call)
        if op == "relax.nn.conv2d" and not self._folded_into_batch_norm(call) and not self._folded_into_bias(call):
            conv = self._match_conv(call)
            if conv is not None:
                self.rewritten["conv2d"] += 1
                return self._emit_conv(conv)
        if op == "relax.add" and not self.mst:
            fused = self._shortcut_sum(call)
            if fused is not None:
                self.rewritten["conv2d+batch_norm+shortcut+add"] += 1
                return self._emit_shortcut_sum(*fused)
            biased = self._biased_conv(call)
            if biased is not None and not self._folded_into_shortcut_sum(call):
                self.rewritten["conv2d+bias"] += 1
                conv, bias = biased
                return self._emit_conv(conv, (conv.scale, bias))
        if op == "relax.nn.relu" and self.fuse:
            residual = self._residual(call)
            if residual is not None:
                self.rewritten["conv2d+batch_norm+add+relu"] += 1
                conv, (mul, add), _, res = residual
                return self._conv_call(conv, self._input_bits(conv), "_residual",
                                       [const(mul), const(add), self.visit_expr(res)])
        return super().visit_call_(call)

    def _biased_conv(self, call) -> tuple[_BinaryConv, np.ndarray] | None:
        """(conv, bias) when `call` is add(binary conv, per-channel constant) and the conv is used only there: one
        affine kernel with mul = the weight scale and add = the bias (a ResNet shortcut's conv)."""
        for conv_var, other in (call.args, reversed(call.args)):
            conv_call = self.value(conv_var)
            if not isinstance(conv_var, relax.Var) or not self.graph.single_use(conv_var) or call_op_name(
                    conv_call) != "relax.nn.conv2d":
                continue
            conv = self._match_conv(conv_call)
            bias = None if conv is None else self._channel_constant(other, conv.codes.shape[0])
            if bias is not None and tensor_shape(call) == conv.out_shape:
                return conv, bias
        return None

    def _shortcut_sum(self, call) -> tuple[_BinaryConv, tuple[np.ndarray, np.ndarray], _BinaryConv,
                                           tuple[np.ndarray, np.ndarray]] | None:
        """(conv, its BatchNorm as mul/add, shortcut, its mul/add) when `call`, on a dense target with the sliced
        kernels, is add(batch_norm(binary conv)[0], 1x1 binary conv [+ bias, or its BatchNorm]), each addend used only
        there and both convs fitting `binary_slice.shortcut_fits`: a downsampling ResNet block's end, which
        `edgebin_bconv2d_slice_shortcut` computes as one kernel (its two counts, one float epilogue). The shortcut's
        own kernel cost 0.82 and 0.55 instructions per binary MAC on the cortex-m4 (16 and 32 products a sum)."""
        if not self.dense or self.mst or not SLICED.get() or call_op_name(call) != "relax.add":
            return None
        for normed, other in (call.args, reversed(call.args)):
            main = self._normed_conv(normed)
            short = self._shortcut_conv(other)
            if main is None or short is None:
                continue
            (conv, affine), (shortcut, saffine) = main, short
            n, c, _, _ = tensor_shape(conv.x)
            cout, _, kh, kw = conv.codes.shape
            _, sc, _, _ = tensor_shape(shortcut.x)
            if (conv.out_shape == shortcut.out_shape == tensor_shape(call) and binary_slice.fits(c, cout, kh * kw,
                    "_affine") and binary_slice.shortcut_fits(sc, *shortcut.codes.shape[2:], shortcut.padding)):
                return conv, affine, shortcut, saffine
        return None

    def _normed_conv(self, expr) -> tuple[_BinaryConv, tuple[np.ndarray, np.ndarray]] | None:
        """(conv, its BatchNorm as mul/add) when `expr` is a variable bound to batch_norm(binary conv)[0] and used
        once."""
        item = self.value(expr)
        if not isinstance(expr, relax.Var) or not self.graph.single_use(expr) or not isinstance(
                item, relax.TupleGetItem) or item.index != 0:
            return None
        norm = self.value(item.tuple_value)
        if call_op_name(norm) != "relax.nn.batch_norm" or call_op_name(self.value(norm.args[0])) != "relax.nn.conv2d":
            return None
        conv = self._match_conv(self.value(norm.args[0]))
        affine = self._batch_norm(norm, conv)
        return None if conv is None or affine is None else (conv, affine)

    def _shortcut_conv(self, expr) -> tuple[_BinaryConv, tuple[np.ndarray, np.ndarray]] | None:
        """(conv, mul/add) when `expr` is a variable used once and bound to a binary conv plus a bias (mul the
        weight scale) or to its BatchNorm."""
        if not isinstance(expr, relax.Var) or not self.graph.single_use(expr):
            return None
        value = self.value(expr)
        if call_op_name(value) == "relax.add":
            biased = self._biased_conv(value)
            return None if biased is None else (biased[0], (biased[0].scale, biased[1]))
        return self._normed_conv(expr)

    def _folded_into_shortcut_sum(self, expr) -> bool:
        """True when `expr` (a BatchNorm's output or a biased conv) is an addend `_shortcut_sum` fuses."""
        var = self.graph.var_of.get(expr)
        users = self.graph.users.get(var, []) if var is not None else []
        return len(users) == 1 and self._shortcut_sum(users[0]) is not None

    def _emit_shortcut_sum(self, conv: _BinaryConv, affine: tuple[np.ndarray, np.ndarray], shortcut: _BinaryConv,
                           saffine: tuple[np.ndarray, np.ndarray]):
        """One `edgebin_bconv2d_slice_shortcut` call: sum · mul + shortcut sum · smul + (add + shortcut add)."""
        _, sc, sh_in, sw_in = tensor_shape(shortcut.x)
        shape = (*conv.geometry(), sc, sh_in, sw_in, *shortcut.stride)
        inputs = [self._input_bits(conv), const(binary_slice.pack_sliced_weight_bits(conv.codes)),
                  self._input_bits(shortcut), const(binary_slice.pack_sliced_weight_bits(shortcut.codes)),
                  const(affine[0]), const(saffine[0]), const((affine[1] + saffine[1]).astype(np.float32))]
        return self._extern("edgebin_bconv2d_slice_shortcut", shape, inputs, tuple(conv.out_shape), "float32",
                            "binary_conv2d_shortcut")

    def _folded_into_bias(self, call) -> bool:
        """True when the conv's only user is a bias add that `_biased_conv` folds it into (see
        `_folded_into_batch_norm`)."""
        if self.mst:
            return False
        var = self.graph.var_of.get(call)
        users = self.graph.users.get(var, []) if var is not None else []
        return len(users) == 1 and call_op_name(users[0]) == "relax.add" and self._biased_conv(users[0]) is not None

    def _channel_constant(self, expr, channels: int) -> np.ndarray | None:
        """A constant (or reshaped constant) of `channels` values along axis 1 as a float32 vector, else None."""
        value = self.value(expr)
        shape = tensor_shape(value)
        if shape is None or list(shape) not in ([1, channels, 1, 1], [channels, 1, 1]):
            return None
        if call_op_name(value) == "relax.reshape":
            value = self.value(value.args[0])
        array = const_array(value)
        if array is None or array.size != channels:
            return None
        return np.ascontiguousarray(array.astype(np.float32).reshape(-1))

    def _residual(self, relu) -> tuple[_BinaryConv, tuple[np.ndarray, np.ndarray], relax.Var, relax.Expr] | None:
        """(conv, its BatchNorm as mul/add, the BatchNorm's output variable, the other addend) when `relu` is
        relu(batch_norm(binary conv)[0] + res), the BatchNorm output and the sum used only there: a ResNet block's
        second conv, whose residual add and ReLU then run in its epilogue (`edgebin_bconv2d_residual`)."""
        added = self.value(relu.args[0])
        if call_op_name(added) != "relax.add" or not self.graph.single_use(relu.args[0]):
            return None
        for normed, res in (added.args, reversed(added.args)):
            main = self._normed_conv(normed)
            if main is not None and tensor_shape(res) == main[0].out_shape and tensor_dtype(res) == "float32":
                return main[0], main[1], normed, res
        return None

    def _block_sum(self, item) -> tuple[relax.Var, relax.Var, relax.Var | None] | None:
        """(item's variable, the variable of the one call using it, that variable's ReLU's or None): where a
        BatchNorm output used once goes, for the `_folded_into_*` checks of the block-end fusions."""
        var = self.graph.var_of.get(item)
        if var is None or not self.graph.single_use(var):
            return None
        added = self.graph.var_of.get(self.graph.users.get(var, [None])[0])
        if added is None:
            return None
        users = self.graph.users.get(added, [])
        relu = users[0] if len(users) == 1 and call_op_name(users[0]) == "relax.nn.relu" else None
        return var, added, None if relu is None else self.graph.var_of.get(relu)

    def _folded_into_residual(self, item) -> bool:
        """True when `item` (a BatchNorm's output) is the one that `_residual` fuses into a later ReLU's kernel."""
        found = self._block_sum(item) if self.fuse else None
        if found is None or found[2] is None:
            return False
        var, _, relu = found
        residual = self._residual(self.value(relu))
        return residual is not None and residual[2].same_as(var)

    def _folded_into_batch_norm(self, call) -> bool:
        """True when the conv's only user is a BatchNorm that `visit_tuple_getitem_` folds it into: rewriting it
        here too would build a kernel (and an MST plan) only to drop it."""
        var = self.graph.var_of.get(call)
        users = self.graph.users.get(var, []) if var is not None else []
        if self.graph.uses.get(var, 0) != 1 or len(users) != 1 or call_op_name(users[0]) != "relax.nn.batch_norm":
            return False
        return self._batch_norm(users[0], self._match_conv(call)) is not None

    def visit_tuple_getitem_(self, op):
        """batch_norm(binary conv)[0]: one conv kernel with the BatchNorm folded into its float epilogue (the conv
        rewritten on its own before is then unused and dropped)."""
        norm = self.value(op.tuple_value)
        if op.index == 0 and call_op_name(norm) == "relax.nn.batch_norm" and call_op_name(
                self.value(norm.args[0])) == "relax.nn.conv2d" and not self._folded_into_residual(
                op) and not self._folded_into_shortcut_sum(op) and not self._folded_into_counted_sum(op):
            conv = self._match_conv(self.value(norm.args[0]))
            affine = self._batch_norm(norm, conv)
            if conv is not None and affine is not None:
                self.rewritten["conv2d+batch_norm"] += 1
                return self._emit_conv(conv, affine)
        return super().visit_tuple_getitem_(op)

    def _batch_norm(self, norm, conv: _BinaryConv | None) -> tuple[np.ndarray, np.ndarray] | None:
        """(mul, add) with mul = scale·γ/√(σ²+ε) and add = β - μ·γ/√(σ²+ε) per output channel, or None."""
        if conv is None or int(norm.attrs.axis) != 1:
            return None
        params = batch_norm_params(norm, self.value)
        if params is None or any(p.size != conv.codes.shape[0] for p in params):
            return None
        gamma, beta, mean, var = params
        inv = gamma / np.sqrt(var + float(norm.attrs.epsilon))
        return (conv.scale * inv).astype(np.float32), (beta - mean * inv).astype(np.float32)

    def _sign_input(self, expr) -> tuple[relax.Expr, np.ndarray | None] | None:
        """(x, shift or None) when `expr` is where(greater_equal(x [+ shift], 0), 1, -1)."""
        where = self.value(expr)
        if call_op_name(where) != "relax.where":
            return None
        if self.graph.scalar(where.args[1]) != 1.0 or self.graph.scalar(where.args[2]) != -1.0:
            return None
        test = self.value(where.args[0])
        if call_op_name(test) != "relax.greater_equal" or self.graph.scalar(test.args[1]) != 0.0:
            return None
        x = test.args[0]
        added = self.value(x)
        if call_op_name(added) == "relax.add":
            shift = const_array(self.value(added.args[1]))
            if shift is not None:
                return added.args[0], shift
        return x, None

    def _match_conv(self, call) -> _BinaryConv | None:
        attrs = call.attrs
        if (int(attrs.groups) != 1 or [int(d) for d in attrs.dilation] != [1, 1] or attrs.data_layout != "NCHW"
                or attrs.kernel_layout != "OIHW" or attrs.out_layout != "NCHW"):
            return None
        sign = self._sign_input(call.args[0])
        weight = self.value(call.args[1])
        if sign is None or call_op_name(weight) != "relax.dequantize":
            return None
        codes, scale, zero = (const_array(self.value(a)) for a in weight.args)
        x, shift = sign
        x_shape, out_shape = tensor_shape(x), tensor_shape(call)
        if codes is None or scale is None or zero is None or x_shape is None or out_shape is None:
            return None
        cout, c = codes.shape[:2]
        if codes.ndim != 4 or not np.isin(codes, (-1, 1)).all() or np.any(zero != 0) or int(weight.attrs.axis) != 0:
            self.skipped["weights not ±1 codes with a per-output-channel scale"] += 1
            return None
        pad = [int(p) for p in attrs.padding]
        if pad[0] != pad[2] or pad[1] != pad[3]:
            self.skipped["asymmetric padding"] += 1
            return None
        if shift is None:
            shift = np.zeros(c, np.float32)
        shift = np.broadcast_to(shift.astype(np.float32).reshape(-1), (c,)) if shift.size in (1, c) else None
        if shift is None or len(x_shape) != 4 or x_shape[1] != c:
            self.skipped["shift not per channel"] += 1
            return None
        scale = np.broadcast_to(scale.astype(np.float32).reshape(-1), (cout,))
        return _BinaryConv(x, np.ascontiguousarray(shift), codes.astype(np.int8), np.ascontiguousarray(scale),
                           (int(attrs.strides[0]), int(attrs.strides[1])), (pad[0], pad[1]), out_shape)

    def _emit_conv(self, conv: _BinaryConv, affine: tuple[np.ndarray, np.ndarray] | None = None):
        """The conv's kernel call on its input's bits: int32 sums times the scale, or floats with `affine`."""
        bits = self._input_bits(conv)
        if affine is not None:
            return self._conv_call(conv, bits, "_affine", [const(affine[0]), const(affine[1])])
        acc = self._conv_call(conv, bits, "", [])
        as_float = self.builder_.emit(relax.op.astype(acc, "float32"))
        cout = conv.codes.shape[0]
        return relax.op.multiply(as_float, const(conv.scale.reshape(1, cout, 1, 1)))

    def _input_bits(self, conv: _BinaryConv):
        """The packed signs of `conv`'s input: straight from the binary conv that computes it, when that conv (with
        its BatchNorm and an optional ReLU) feeds nothing else (the threshold epilogue); else a packing kernel."""
        key = (conv.x, conv.shift.tobytes())  # a conv and its BatchNorm are visited twice; emit the bits once
        if key not in self.bits_of:
            self.bits_of[key] = self._emit_input_bits(conv)
        return self.bits_of[key]

    def _emit_input_bits(self, conv: _BinaryConv):
        producer = self._bits_producer(conv.x)
        if producer is not None:
            source, (mul, add), relu = producer
            self.rewritten["threshold epilogue"] += 1
            direction, threshold = sign_thresholds(mul, add, conv.shift, relu=relu)
            return self._conv_call(source, self._input_bits(source), "_bits", [const(direction), const(threshold)])
        n, c, h, w = tensor_shape(conv.x)
        counted = self._counted_sum(conv.x)
        if counted is not None:  # a block's end after a paired conv: its counts, then BatchNorm, add, ReLU and sign
            source, (mul, add), res, relu = counted
            self.rewritten["conv2d+batch_norm+add+relu+pack" if relu else "conv2d+batch_norm+add+pack"] += 1
            shift = (relu_folded_shift(conv.shift) if relu else conv.shift).astype(np.float64)
            products = source.codes[0].size  # c · kh · kw: sum = products - 2 count'
            ma = np.stack([-2.0 * mul, products * mul.astype(np.float64) + add + shift], axis=1)
            return self._extern("edgebin_bpack_pair_add", (n, c, h, w),
                                [self._pair_counts(source), self.visit_expr(res),
                                 const(ma.astype(np.float32) + np.float32(0.0))],  # + 0.0: no -0.0 (its sign bit)
                                (n, h, w, words_for(c)), "uint32", "binary_pack_pair_add")
        summed = self._packed_sum(conv.x) if self.dense else None
        if summed is not None:  # a residual block's end: its add (and ReLU) go into the packing kernel
            addends, relu = summed
            shift = relu_folded_shift(conv.shift) if relu else conv.shift
            if len(addends) == 1:  # the sum is a conv + shortcut kernel's output: the ReLU alone goes
                self.rewritten["relu+pack" if relu else "pack"] += 1
                return self._extern("edgebin_bpack_nchw_f32", (n, c, h * w),
                                    [self.visit_expr(addends[0]), const(shift)], (n, h, w, words_for(c)), "uint32",
                                    "binary_pack")
            self.rewritten["add+relu+pack" if relu else "add+pack"] += 1
            return self._extern("edgebin_bpack_add_nchw_f32", (n, c, h * w),
                                [self.visit_expr(a) for a in addends] + [const(shift)],
                                (n, h, w, words_for(c)), "uint32", "binary_pack_add")
        return self._extern("edgebin_bpack_nchw_f32", (n, c, h * w), [self.visit_expr(conv.x), const(conv.shift)],
                            (n, h, w, words_for(c)), "uint32", "binary_pack")

    def _counted_sum(self, x) -> tuple[_BinaryConv, tuple[np.ndarray, np.ndarray], relax.Expr, bool] | None:
        """(conv, its BatchNorm as mul/add, res, ReLU?) when `x`, which only signs read, is [relu](batch_norm(binary
        conv)[0] + res) on a dense target and the conv runs on the paired kernel with at most 255 products a sum (a
        ResNet block's second conv of 16 channels): the conv then writes its counts (`edgebin_bconv2d_pair_counts`)
        and `edgebin_bpack_pair_add` does the BatchNorm, the residual add, the ReLU (in the shift) and the sign. Its
        float epilogue cost about 0.05 instructions per binary MAC on the cortex-m4 (the float kernel's 582,711 less
        the threshold kernel's 485,503 on stack1's shape, mcu_layers.py), its output 4 bytes an element."""
        if not self.dense or self.mst or not SLICED.get() or not isinstance(x, relax.Var) or not self._only_signs(x):
            return None
        value, relu = self.value(x), False
        if call_op_name(value) == "relax.nn.relu":
            if not self.graph.single_use(value.args[0]):
                return None
            value, relu = self.value(value.args[0]), True
        if call_op_name(value) != "relax.add":
            return None
        for normed, res in (value.args, reversed(value.args)):
            main = self._normed_conv(normed)
            if (main is None or tensor_shape(res) != tensor_shape(x) or tensor_dtype(res) != "float32"
                    or const_array(self.value(res)) is not None):
                continue
            conv, affine = main
            c, kh, kw = conv.codes.shape[1:]
            if c * kh * kw < 256 and binary_slice.pair_fits(c, conv.codes.shape[0], kh, kw, conv.stride[1],
                                                            conv.out_shape[3], "_affine"):
                return conv, affine, res, relu
        return None

    def _only_signs(self, x) -> bool:
        """True when every user of `x` compares it, or it plus a constant, with 0: a binarization's sign."""
        for user in self.graph.users.get(x, []):
            if call_op_name(user) == "relax.add" and const_array(self.value(user.args[1])) is not None:
                var = self.graph.var_of.get(user)
                users = self.graph.users.get(var, []) if var is not None else [None]
                if any(call_op_name(u) != "relax.greater_equal" for u in users):
                    return False
            elif call_op_name(user) != "relax.greater_equal":
                return False
        return True

    def _folded_into_counted_sum(self, item) -> bool:
        """True when `item` (a BatchNorm's output) is the one a `_counted_sum` packing reads as counts."""
        found = self._block_sum(item) if self.dense else None
        if found is None:
            return False
        var, added, relu = found
        counted = self._counted_sum(relu if relu is not None else added)
        return counted is not None and not counted[2].same_as(var)  # the add's other addend is the residual

    def _pair_counts(self, conv: _BinaryConv):
        """`conv`'s counts, (c · kh · kw - sum) / 2, as `edgebin_bconv2d_pair_counts` writes them (emitted once)."""
        key = (conv.x, conv.shift.tobytes(), "counts")
        if key not in self.bits_of:
            n, _, h, w, _, _, _, _, _, _, _, oh, ow = shape = conv.geometry()
            slot, delta = binary_slice.pair_deltas(conv.codes, h, w, conv.stride, conv.padding, oh, ow)
            self.bits_of[key] = self._extern(
                "edgebin_bconv2d_pair_counts", shape, [self._input_bits(conv),
                                                       const(binary_slice.pack_paired_weight_bits(conv.codes)),
                                                       const(slot), const(delta)],
                (n, oh, (ow + 1) // 2, 8), "uint32", "binary_conv2d_counts")
        return self.bits_of[key]

    def _packed_sum(self, x) -> tuple[tuple[relax.Expr, ...], bool] | None:
        """((a, b), ReLU?) when `x` is [relu](a + b) of two float tensors of x's shape (a ResNet block's residual
        add): `edgebin_bpack_add_nchw_f32` then packs the sum's signs without writing it, the ReLU folded into the
        shift (`relu_folded_shift`). The add and ReLU stay for other users, if any; on Cortex-M TVM's kernel for
        them took about 10 instructions an element. ((sum,), ReLU?) when a conv + shortcut kernel computes the add
        (`_shortcut_sum`): the plain packing kernel then reads its output, the ReLU folded the same way."""
        value, relu = self.value(x), False
        if call_op_name(value) == "relax.nn.relu":
            added, value, relu = value.args[0], self.value(value.args[0]), True
        else:
            added = x
        if call_op_name(value) != "relax.add":
            return None
        if self._shortcut_sum(value) is not None:
            return (added,), relu
        shape = tensor_shape(x)
        if any(tensor_shape(a) != shape or tensor_dtype(a) != "float32" or const_array(self.value(a)) is not None
               for a in value.args):
            return None
        return (value.args[0], value.args[1]), relu

    def _bits_producer(self, x) -> tuple[_BinaryConv, tuple[np.ndarray, np.ndarray], bool] | None:
        """(conv, its BatchNorm as mul/add, ReLU?) when `x` is [relu](batch_norm(binary conv)[0]), used only here."""
        if not isinstance(x, relax.Var) or not self.graph.single_use(x):
            return None
        value, relu = self.value(x), False
        if call_op_name(value) == "relax.nn.relu":
            value, relu = self.value(value.args[0]), True
        if not isinstance(value, relax.TupleGetItem) or value.index != 0:
            return None
        norm = self.value(value.tuple_value)
        if call_op_name(norm) != "relax.nn.batch_norm" or call_op_name(self.value(norm.args[0])) != "relax.nn.conv2d":
            return None
        conv = self._match_conv(self.value(norm.args[0]))
        affine = self._batch_norm(norm, conv)
        return None if conv is None or affine is None else (conv, affine, relu)

    def _conv_call(self, conv: _BinaryConv, bits, epilogue: str, extra: list):
        """One specialized conv kernel call: `epilogue` "" (int32), "_affine" (float) or "_bits" (the next layer's
        packed signs); the dense-column kernel where the target counts bits in software, or there the bit-sliced
        one where the channels fit its lanes, or for 16 output channels the paired one (binary_slice)."""
        n, c, h, w, cout, kh, kw, _, sw, _, _, oh, ow = shape = conv.geometry()
        dense_ok = words_for(c * kh * kw) <= DENSE_COLUMN_WORDS and c <= DENSE_MAX_CHANNELS
        if self.mst and dense_ok and cout <= MST_CHANNELS:
            plan = mst_plan(conv.codes)
            nodes, edges = plan.kernel_tables()
            kernel = "edgebin_bconv2d_dense_mst"
            weights = [const(pack_dense_weight_bits(conv.codes)), const(tap_sums(conv.codes)), const(nodes),
                       const(edges)]
            words, plain_words = plan.word_ops()
            work = {"bit_ops": plan.bit_ops, "plain_bit_ops": plan.plain_bit_ops, "word_ops": words,
                    "plain_word_ops": plain_words, "depth": plan.depth}
        elif self.dense and SLICED.get() and binary_slice.pair_fits(c, cout, kh, kw, sw, ow, epilogue):
            kernel, weights = "edgebin_bconv2d_pair", [const(binary_slice.pack_paired_weight_bits(conv.codes))]
            if epilogue == "_bits":
                slot, lim = binary_slice.pair_limits(const_array(extra[0]), const_array(extra[1]), conv.codes, h, w,
                                                     conv.stride, conv.padding, oh, ow)
                extra = [const(slot), const(lim)]
            else:
                slot, base = binary_slice.pair_bases(conv.codes, h, w, conv.stride, conv.padding, oh, ow)
                weights += [const(slot), const(base)]
        elif self.dense and SLICED.get() and binary_slice.fits(c, cout, kh * kw, epilogue):
            kernel, weights = "edgebin_bconv2d_slice", [const(binary_slice.pack_sliced_weight_bits(conv.codes))]
            if epilogue == "_bits":
                counts = binary_slice.tap_counts(h, w, kh, kw, conv.stride, conv.padding, oh, ow)
                slot, lim = binary_slice.slice_limits(const_array(extra[0]), const_array(extra[1]), c, kh * kw,
                                                      counts)
                extra = [const(slot), const(lim)]
        elif (self.dense or self.mst) and dense_ok:
            kernel, weights = "edgebin_bconv2d_dense", [const(pack_dense_weight_bits(conv.codes)),
                                                       const(tap_sums(conv.codes))]
        else:
            kernel, weights = "edgebin_bconv2d", [const(pack_weight_bits(conv.codes))]
        if epilogue == "_bits":
            out = self._extern(kernel + epilogue, shape, [bits, *weights, *extra], (n, oh, ow, words_for(cout)),
                               "uint32", "binary_conv2d_bits")
        else:
            dtype = "float32" if epilogue in ("_affine", "_residual") else "int32"
            out = self._extern(kernel + epilogue, shape, [bits, *weights, *extra], (n, cout, oh, ow), dtype,
                               "binary_conv2d" + epilogue)
        if kernel == "edgebin_bconv2d_dense_mst":
            self.mst_layers.append((specialized_name(kernel + epilogue, shape), work, out))
        return out

    def _extern(self, kernel: str, shape: tuple[int, ...], inputs: list, out_shape: tuple[int, ...], dtype: str,
                hint: str):
        """A call_tir of a PrimFunc whose body is one call of the specialized C kernel `kernel__shape`."""
        name = specialized_name(kernel, shape)

        def extern(*tensors):
            return tvm.te.extern(out_shape, list(tensors), lambda ins, outs: tirx.call_extern(
                "void", name, *(t.access_ptr("r") for t in ins), outs[0].access_ptr("w")), dtype=dtype, name=hint)

        return self.builder_.emit_te(extern, *inputs, primfunc_name_hint=f"edgebin_{hint}")


@tvm.ir.transform.module_pass(opt_level=0, name="BinaryToPacked")
class BinaryToPacked:
    """Rewrite binary convs into packed XNOR/popcount kernel calls (see the module docstring). `dense`: the
    dense-column kernels, for targets that count bits in software (Cortex-M). `mst`: MST-compression (dense
    kernels; default `MST`, see `mst_compression`); afterwards `mst_layers` holds the work each conv saves.
    Without either, bias adds and residual add + ReLU go into the conv kernels' epilogues."""

    def __init__(self, dense: bool = False, mst: bool | None = None) -> None:
        self.dense = dense
        self.mst = MST.get() if mst is None else mst
        self.mst_layers: list[tuple[str, dict]] = []  # after the pass: (kernel, work saved) per MST conv

    def transform_module(self, mod, ctx):
        for gvar, func in list(mod.functions.items()):
            if not isinstance(func, relax.Function) or func.attrs is not None and "Primitive" in func.attrs:
                continue
            rewriter = _Rewriter(mod, func, self.dense, self.mst)
            func = relax.analysis.remove_all_unused(rewriter.visit_expr(func))
            mod = rewriter.builder_.get()
            mod[gvar] = func
            live = {b.var for block in func.body.blocks for b in block.bindings}  # not the calls a fold made dead
            kept = [(name, work) for name, work, var in rewriter.mst_layers if var in live]
            self.mst_layers += kept
            for name, work in kept:
                log.info("MST-compression %s: %d of %d words counted per output pixel (%.1f%% skipped), %d of %d "
                         "bit products, tree depth %d", name, work["word_ops"], work["plain_word_ops"],
                         100 * (1 - work["word_ops"] / work["plain_word_ops"]), work["bit_ops"],
                         work["plain_bit_ops"], work["depth"])
            if rewriter.rewritten or rewriter.skipped:
                log.info("BinaryToPacked rewrote %s; left in float: %s", dict(rewriter.rewritten),
                         dict(rewriter.skipped) or "nothing")
        return mod


_CONVS = tuple(k for k in _POINTERS if k.startswith("edgebin_bconv2d"))
INLINE = "static inline __attribute__((always_inline))"
_BINARY_CALL = re.compile(r"\b(edgebin_b\w+?__[0-9_]+)\(")


def binary_parts(name: str) -> tuple[tuple[int, int], ...]:
    """(binary MACs, weight elements) of each conv one call of a specialized conv kernel computes (padding taps
    included, as for any conv): one, or two for `edgebin_bconv2d_slice_shortcut` (the block's conv, then its 1x1
    shortcut); none for the packing kernels and anything else."""
    if kernel_of(name) not in _CONVS:
        return ()
    n, c, _, _, cout, kh, kw, _, _, _, _, oh, ow, *shortcut = (int(v) for v in name.split("__", 1)[1].split("_"))
    parts = [(n * cout * oh * ow * c * kh * kw, cout * c * kh * kw)]
    if shortcut:
        parts.append((n * cout * oh * ow * shortcut[0], cout * shortcut[0]))
    return tuple(parts)


def binary_macs(name: str) -> int:
    """Binary multiply-accumulates of one call of a specialized conv kernel (`binary_parts`); 0 for the packing
    kernels and anything else."""
    return sum(macs for macs, _ in binary_parts(name))


def called_in_source(source: str) -> frozenset[str]:
    """The specialized binary kernels that C source (TVM's C codegen of the kernels) calls."""
    return frozenset(name for name in _BINARY_CALL.findall(source) if kernel_of(name) in KERNELS)


def binary_kernel_names(mod) -> frozenset[str]:
    """The specialized binary kernels the PrimFuncs of `mod` call: what `c_source` must define for the build."""
    return frozenset(name for func in mod.functions.values() if isinstance(func, tirx.PrimFunc)
                     for name in extern_calls(func) if kernel_of(name) in KERNELS)


def uses_binary_kernels(mod) -> bool:
    """True when some PrimFunc of `mod` calls a kernel of edgebin_binary.h (so the build must link it)."""
    return bool(binary_kernel_names(mod))


__all__ = ["BinaryToPacked", "DENSE_COLUMN_WORDS", "HEADER", "KERNEL_DIR", "binary_conv2d_reference",
           "binary_kernel_names", "binary_macs", "binary_parts", "c_source", "called_in_source", "kernel_of",
           "pack_activation_bits", "pack_dense_weight_bits", "pack_weight_bits", "relu_folded_shift",
           "specialized_name", "tap_sums", "uses_binary_kernels", "words_for"]
