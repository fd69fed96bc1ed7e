"""BinaryToPacked: run the binary (W1A1) convolutions of an exported QAT model on packed bits, XNOR and popcount.

edgebin exports a binary layer (`edgebin.export.qat`) as plain ONNX that any runtime runs in float:

    Where(GreaterOrEqual(Add(x, shift), 0), 1, -1) -> Conv(., DequantizeLinear(codes in {-1, +1}, scale[co]))

After import that is `conv2d(where(greater_equal(add(x, shift), 0), 1, -1), dequantize(codes, scale))`. This
pass (run right after import, before QdqToInt8 and FoldConstant, which would fold the weight's dequantize) turns
each such conv into

    bits = call_tir(edgebin_bpack_nchw_f32: x, shift)          # one bit per channel, 32 channels per word
    acc  = call_tir(edgebin_bconv2d: bits, weight bits)         # int32: taps·C - 2·popcount(a XOR w)
    y    = astype(acc, float32) * scale[co]                     # fused by TVM with what follows (BN, ReLU, add)

with the weight codes packed to bits at compile time (`pack_weight_bits`, 1 bit per weight: parameters / 8
bytes). The kernels are C (`binary_kernels/edgebin_binary.h`), called through `T.call_extern` from thin TIR
wrappers, so every target compiles the same integer code with its own popcount. The pattern is recognised
structurally (constant ±1 int8 codes, a per-output-channel scale, a zero zero point, a sign with +1 at 0), so
it needs no side channel; anything else (grouped or dilated convs, a non-constant weight) stays float and is
logged. The accumulator is exact; the float graph sums ±scale terms in float and can differ from
`scale · acc` by float rounding (relative 1e-7), which the next binarization sees only at exact ties.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgebin.compile.kernels import extern_calls
from edgebin.compile.tvm_adapter import (
    PyExprMutator,
    call_op_name,
    const,
    const_array,
    mutator,
    relax,
    tensor_shape,
    tirx,
    tvm,
)

log = logging.getLogger(__name__)

KERNEL_DIR = Path(__file__).with_name("binary_kernels")
HEADER = KERNEL_DIR / "edgebin_binary.h"
WORD_BITS = 32
KERNELS = frozenset({"edgebin_bpack_nchw_f32", "edgebin_bconv2d"})  # the C functions of HEADER


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


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod, func: relax.Function) -> None:
        super().__init__(mod)
        self.var2val = relax.analysis.get_var2val(func)
        self.rewritten: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()

    def value(self, expr):
        while isinstance(expr, relax.Var) and expr in self.var2val:
            expr = self.var2val[expr]
        return expr

    def visit_call_(self, call):
        if call_op_name(call) == "relax.nn.conv2d":
            conv = self._match_conv(call)
            if conv is not None:
                self.rewritten["conv2d"] += 1
                return self._emit_conv(conv)
        return super().visit_call_(call)

    def _scalar(self, expr) -> float | None:
        array = const_array(self.value(expr))
        return float(array) if array is not None and array.size == 1 else None

    def _sign_input(self, expr) -> tuple[relax.Expr, np.ndarray | None] | None:
        """(x, shift or None) when `expr` is where(greater_equal(x [+ shift], 0), 1, -1)."""
        where = self.value(expr)
        if call_op_name(where) != "relax.where":
            return None
        if self._scalar(where.args[1]) != 1.0 or self._scalar(where.args[2]) != -1.0:
            return None
        test = self.value(where.args[0])
        if call_op_name(test) != "relax.greater_equal" or self._scalar(test.args[1]) != 0.0:
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

    def _emit_conv(self, conv: _BinaryConv):
        x = self.visit_expr(conv.x)
        n, c, h, w = tensor_shape(conv.x)
        cout, _, kh, kw = conv.codes.shape
        _, _, oh, ow = conv.out_shape
        words = words_for(c)
        te = tvm.te

        def pack(x_t, shift_t):
            return te.extern((n, h, w, words), [x_t, shift_t], lambda ins, outs: tirx.call_extern(
                "void", "edgebin_bpack_nchw_f32", ins[0].access_ptr("r"), ins[1].access_ptr("r"), n, c, h * w,
                outs[0].access_ptr("w")), dtype="uint32", name="binary_pack")

        def bconv(bits_t, w_t):
            (sh, sw), (ph, pw) = conv.stride, conv.padding
            return te.extern((n, cout, oh, ow), [bits_t, w_t], lambda ins, outs: tirx.call_extern(
                "void", "edgebin_bconv2d", ins[0].access_ptr("r"), ins[1].access_ptr("r"), n, c, h, w, cout, kh, kw,
                sh, sw, ph, pw, oh, ow, outs[0].access_ptr("w")), dtype="int32", name="binary_conv2d")

        bits = self.builder_.emit_te(pack, x, const(conv.shift), primfunc_name_hint="edgebin_binary_pack")
        acc = self.builder_.emit_te(bconv, bits, const(pack_weight_bits(conv.codes)),
                                    primfunc_name_hint="edgebin_binary_conv2d")
        as_float = self.builder_.emit(relax.op.astype(acc, "float32"))
        return relax.op.multiply(as_float, const(conv.scale.reshape(1, cout, 1, 1)))


@tvm.ir.transform.module_pass(opt_level=0, name="BinaryToPacked")
class BinaryToPacked:
    """Rewrite binary convs into packed XNOR/popcount kernel calls (see the module docstring)."""

    def transform_module(self, mod, ctx):
        for gvar, func in list(mod.functions.items()):
            if not isinstance(func, relax.Function) or func.attrs is not None and "Primitive" in func.attrs:
                continue
            rewriter = _Rewriter(mod, func)
            func = relax.analysis.remove_all_unused(rewriter.visit_expr(func))
            mod = rewriter.builder_.get()
            mod[gvar] = func
            if rewriter.rewritten or rewriter.skipped:
                log.info("BinaryToPacked rewrote %s; left in float: %s", dict(rewriter.rewritten),
                         dict(rewriter.skipped) or "nothing")
        return mod


def uses_binary_kernels(mod) -> bool:
    """True when some PrimFunc of `mod` calls a kernel of edgebin_binary.h (so the build must link it)."""
    return any(isinstance(func, tirx.PrimFunc) and extern_calls(func) & KERNELS for func in mod.functions.values())


__all__ = ["HEADER", "BinaryToPacked", "binary_conv2d_reference", "pack_activation_bits", "pack_weight_bits",
           "uses_binary_kernels", "words_for"]
