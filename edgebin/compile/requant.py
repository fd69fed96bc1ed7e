"""Requantization that reproduces onnxruntime's integer kernels bit for bit, in float or in integers only.

QdqToInt8 hands every requant to a `Requantizer`, which emits Relax through the rewriter's BlockBuilder:

    rq = Requantizer(builder, mode="fixed")              # "float" for the host, "fixed" for cores without an FPU
    y = rq.linear(acc, multipliers, y_qp, lo, hi)        # conv / matmul / average pool: int32 -> int8
    y = rq.add(a, a_qp, b, b_qp, y_qp, lo, hi)           # residual add of two int8 tensors
    y = rq.table(x, x_qp, y_qp, lo, hi)                  # Q(DQ(x)) with new qparams, as a 256-entry lookup

The specification is what onnxruntime's CPU EP computes on x86-64 (MLAS, AVX2/AVX-512 with FMA), checked
exhaustively against onnxruntime 1.32; `rne` is round half to even, `sat` the clip to [lo, hi]:

| kernel                              | onnxruntime computes                                                     |
|-------------------------------------|--------------------------------------------------------------------------|
| QLinearConv, QGemm, QLinearGlobalAP | sat(rne(f32(acc) * M) + zy), M = f32(sx * sw) / sy (GAP: sx / (sy * N)) |
| QLinearAdd (raw codes a, b)         | sat(rne(fma(a, ra, fma(b, rb, F)))), ra = sa / sc, rb = sb / sc,        |
|                                     | F = zc - fma(za, ra, rb * zb): the b term first, the zero points folded  |
| DQ -> op -> Q, scale changes        | sat(rne((f32(x - zx) * sx) / sy) + zy)                                   |

Every product, sum and quotient above is rounded to float32. `"float"` evaluates these formulas as written, the
add's two fma in LLVM's `llvm.fma` (one instruction with FMA3 or on aarch64; never split into a multiply and an
add, which TIR's own `fma` may be); off an LLVM target the add takes the integer form below. `"fixed"`
is integer only: each float32 is m * 2**-e, so the last rounding's argument is an int64 `p` on the grid 2**-e, and
`round_f32_half_even` reproduces rne(f32(p * 2**-e)): float32 rounding matters only within half an ulp of a tie
q + 1/2, where it makes the tie exact, which then goes to the even neighbour. (Plain fixed point, `+2**(r-1) >> r`,
differs there and on every exact tie: about once per 10**5 outputs of a real layer.) The fixed add rounds the exact
a * ra + b * rb + offset the same way and patches the few code pairs (0 to 5 of 65536) that onnxruntime's inner
float32 rounding moves; all pairs are checked when the model compiles. One case stays float32 in "fixed", with a
warning: a multiplier below about 2**-16, where accumulators beyond 2**24 (which f32(acc) rounds) still matter.
Limits: ARM builds of onnxruntime use other QLinearAdd arithmetic; and x86 onnxruntime runs an int8 add either as
QLinearAdd on uint8 codes x + 128 or in float (DQ, Add, Q), depending on how many consumers its tensors have. Both
differ from the int8-code formula here on at most a few of the 65536 code pairs.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import operator as op
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from edgebin.compile.tvm_adapter import const, llvm_fma, prim_dtype, relax, tirx, tvm

REQUANT_MODES = ("float", "fixed")
F32 = np.float32
_MANY_PATCHES = 16  # a fixed QLinearAdd usually patches 0 to 5 of its 65536 code pairs
# Bind the fixed linear requant's t = acc * M 2**e + addend once, in a TIR Let (`let_bound_requant`).
_LET_BOUND = contextvars.ContextVar("edgebin_requant_let_bound", default=False)
# The block annotation a fixed linear requant carries: its constants, for mcu_schedule.fuse_requant (a micro-kernel
# that requantizes its own sums).
FIXED_REQUANT = "edgebin_fixed_requant"

log = logging.getLogger(__name__)


# --- float32 as exact dyadic rationals ---------------------------------------------------------------------------


def f32_dyadic(value) -> tuple[int, int]:
    """(m, e) with the float32 `value` == m * 2**-e exactly; e >= 0 for the magnitudes requant sees."""
    num, den = Fraction(float(F32(value))).as_integer_ratio()
    return num, den.bit_length() - 1  # den is a power of two


def round_to_f32(m: int, e: int) -> tuple[int, int]:
    """m * 2**-e rounded half to even to 24 significant bits (float32, no overflow or subnormals here)."""
    drop = abs(m).bit_length() - 24
    if drop <= 0:
        return m, e
    q, rem = divmod(abs(m), 1 << drop)
    half = 1 << (drop - 1)
    q += rem > half or (rem == half and q % 2 == 1)
    return (q if m >= 0 else -q) << drop, e


def fma_f32(x, y, z) -> tuple[int, int]:
    """f32(x * y + z) rounded once, for float32 values or (m, e) pairs."""
    (mx, ex), (my, ey), (mz, ez) = (v if isinstance(v, tuple) else f32_dyadic(v) for v in (x, y, z))
    e = max(ex + ey, ez)
    return round_to_f32((mx * my << (e - ex - ey)) + (mz << (e - ez)), e)


def on_grid(values: list[tuple[int, int]], e: int) -> np.ndarray:
    """Dyadics (m_i, e_i), all with e_i <= e, as int64 multiples of 2**-e."""
    return np.array([m << (e - ei) for m, ei in values], np.int64)


@dataclass(frozen=True)
class QLinearAddSpec:
    """onnxruntime's QLinearAdd for one set of qparams, as exact dyadics: ra, rb, F and fma(b, rb, F) per code b."""

    ra: tuple[int, int]
    rb: tuple[int, int]
    fixed: tuple[int, int]  # F = f32(zc - fma(za, ra, f32(rb * zb)))
    code0: int  # the smallest code: 0 (uint8) or -128 (int8)
    b_terms: tuple[tuple[int, int], ...]  # fma(b, rb, F) for b = code0 ... code0 + 255

    @classmethod
    def of(cls, a_qp, b_qp, y_qp) -> QLinearAddSpec:
        ra, rb = (f32_dyadic(F32(qp.scale) / F32(y_qp.scale)) for qp in (a_qp, b_qp))
        za, zb, zc = int(a_qp.zero_point), int(b_qp.zero_point), int(y_qp.zero_point)
        inner = fma_f32((za, 0), ra, fma_f32((zb, 0), rb, (0, 0)))
        fixed = round_to_f32((zc << inner[1]) - inner[0], inner[1])
        code0 = int(np.iinfo(b_qp.dtype).min)
        return cls(ra, rb, fixed, code0, tuple(fma_f32((b, 0), rb, fixed) for b in range(code0, code0 + 256)))

    @property
    def grid(self) -> int:
        """The exponent e of the grid 2**-e that holds a * ra + fma(b, rb, F) exactly."""
        return max(self.ra[1], *(e for _, e in self.b_terms))

    def reference(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """rne(fma(a, ra, fma(b, rb, F))) for int arrays of codes, exactly (before saturation)."""
        e = self.grid
        p = a.astype(np.int64) * (self.ra[0] << (e - self.ra[1])) + on_grid(list(self.b_terms), e)[b - self.code0]
        return round_f32_half_even(p, e, NumpyOps())


# --- the integer emulation, written once for numpy and for Relax --------------------------------------------------


def tie_reach(e: int, patch_reach: int = 0) -> int:
    """How far (units 2**-e) from a tie `round_f32_half_even` takes its exact branch: beyond 2**(e - 17) no
    float32 rounding reaches the tie (half an ulp is at most 2**(e - 17) below 256), and every patched value."""
    return max(1 << max(e - 17, 0), patch_reach)


def round_f32_half_even(p, e: int, ops, patch=None, patch_reach: int = 0, t=None, plus: int = 0, finish=None):
    """rne(f32(p * 2**-e)) of an int64 `p`; exact where the result is within [-255, 255], saturating beyond.

    q = floor(|p| 2**-e) and d = frac - 1/2 (units 2**-e). The float32 rounding lands on the tie q + 1/2 iff
    |d| <= w, half an ulp of q + 1/2: 2**(floor(log2 q) - 24), or 2**-25 above q = 0; both are 2**(k - 25) with
    k = bit_length(q). Then an odd q rounds up unless d < -w, an even q only if d > w. That branch is exact for
    every p; values with |d| <= max(2**(e - 17), patch_reach) must take it (`patch(result)` may edit it), and so
    do the few others the test below lets in; the rest (all but about 2**-16 of them) take floor(p 2**-e + 1/2).
    `t`, when given, must be p + 2**(e - 1) + tie_reach(e, patch_reach) + (plus << e), which a caller can often
    form with one add of a precomputed constant; the result is then rne(...) + plus (a zero point, free on the
    common branch). `finish`, when given, is applied to each branch's result (the clip and cast of a requant):
    the C compiler then sees one short path for the common branch.
    """
    if e < 1:
        raise ValueError(f"round_f32_half_even: the grid exponent must be >= 1, got {e}")
    u = ops.abs(p)
    q = ops.shr(u, e)
    d = ops.sub(ops.band(u, (1 << e) - 1), 1 << (e - 1))
    k = ops.cast(ops.ge(q, 1))
    for bit in range(1, 8):  # q > 255 saturates whichever way it rounds
        k = ops.add(k, ops.cast(ops.ge(q, 1 << bit)))
    w = ops.shl(1 << max(e - 25, 0), k) if e >= 25 else ops.shr(ops.shl(1, k), 25 - e)
    near = ops.add(q, ops.cast(ops.where(ops.eq(ops.band(q, 1), 1), ops.ge(d, ops.neg(w)), ops.gt(d, w))))
    near = ops.where(ops.lt(p, 0), ops.neg(near), near)
    reach = tie_reach(e, patch_reach)  # >= w
    if t is None:
        t = ops.add(p, (1 << (e - 1)) + reach + (plus << e))
    is_near = ops.le(ops.band(t, (1 << near_window(e, reach)) - 1), 2 * reach)  # |d| <= reach (or more), no |p|
    far = ops.shr(t, e)  # = floor(p 2**-e + 1/2) + plus, rne away from ties, wherever is_near is false
    near = near if patch is None else patch(near)
    if plus:
        near = ops.add(near, plus)
    if finish is not None:
        near, far = finish(near), finish(far)
    return ops.lazy_where(is_near, near, far)


def near_window(e: int, reach: int) -> int:
    """The low bits of t that round_f32_half_even's near-tie test reads: e, or 32 where e > 32 and
    2 reach < 2**32. Any t with t mod 2**e <= 2 reach then has t mod 2**32 = t mod 2**e, so the test only lets more
    values into the exact branch (exact for all), and on a 32-bit core it is one compare of t's low word."""
    return 32 if e > 32 and 2 * reach < 2**32 else e


class NumpyOps:
    """The integer operations of `round_f32_half_even`, on int64 numpy arrays (the tests' reference)."""

    lt, le, ge, gt, eq = (staticmethod(f) for f in (np.less, np.less_equal, np.greater_equal, np.greater, np.equal))
    add, sub, shr, shl = (staticmethod(f) for f in (np.add, np.subtract, np.right_shift, np.left_shift))
    where, lazy_where, abs, neg = (staticmethod(f) for f in (np.where, np.where, np.abs, np.negative))
    band, bor = staticmethod(np.bitwise_and), staticmethod(np.bitwise_or)
    cast = staticmethod(lambda x: x.astype(np.int64))


def _on_tir(fn):
    """A TirOps method: `fn` on TIR expressions, Python ints made int64 constants."""
    return lambda self, *args: fn(*(tirx.const(a, "int64") if isinstance(a, int | np.integer) else a for a in args))


class TirOps:
    """The same on scalar TIR expressions, for the one `te.compute` of a fixed requant (about 100 nodes)."""

    lt, le, ge, gt, add, sub = map(_on_tir, (op.lt, op.le, op.ge, op.gt, op.add, op.sub))
    shr, shl, neg, eq, where = map(_on_tir, (op.rshift, op.lshift, op.neg, tirx.EQ, tirx.Select))
    lazy_where = _on_tir(tirx.if_then_else)  # only the branch taken runs: the rare near-tie one costs nothing
    abs = _on_tir(lambda x: tirx.Select(x < tirx.const(0, "int64"), -x, x))
    band = _on_tir(lambda x, y: tirx.And(x, y) if prim_dtype(x) == "bool" else x & y)
    bor = _on_tir(lambda x, y: tirx.Or(x, y) if prim_dtype(x) == "bool" else x | y)
    cast = _on_tir(lambda x: x.astype("int64"))


@contextlib.contextmanager
def let_bound_requant():
    """Within the block, a fixed linear requant binds its t once (a TIR Let) that both of its branches read:
    without it TVM's simplifier spreads t = acc * grid + addend into each use, and a 32-bit core's C compiler
    multiplies and adds apart (SMULL, ADDS, ADC) instead of one SMLAL. The MCU build only: LLVM's vectorizer
    copies a Let, which TVM's bound analysis then rejects."""
    token = _LET_BOUND.set(True)
    try:
        yield
    finally:
        _LET_BOUND.reset(token)


# --- what QdqToInt8 calls ------------------------------------------------------------------------------------------


class Requantizer:
    """Emits onnxruntime's requant arithmetic (module docstring) in `mode` through a Relax BlockBuilder.

    A fixed requant is one elementwise `te.compute` (one TIR block): FuseOps fuses a conv's into its epilogue;
    an add's stays a kernel of its own (`_opaque`).
    """

    def __init__(self, builder, mode: str) -> None:
        if mode not in REQUANT_MODES:
            raise ValueError(f"requant must be one of {REQUANT_MODES}, got {mode!r}")
        self.builder, self.mode = builder, mode

    def emit(self, expr):
        return self.builder.emit(expr)

    def linear(self, acc, multipliers: np.ndarray, y_qp, lo: int, hi: int, bias: np.ndarray | None = None):
        """sat(rne(f32(acc + bias) * M) + zy) for an int32 `acc` and an optional int32 constant `bias`;
        `multipliers` are float32; both broadcast to acc. The fixed form folds the bias into its rounding constant.
        """
        zy, mults = int(y_qp.zero_point), np.asarray(multipliers, F32)
        parts = [f32_dyadic(m) for m in mults.reshape(-1)]
        e = max(ei for _, ei in parts)  # one grid 2**-e for every channel
        acc_reach = (max(hi - zy, zy - lo) + 1) / float(mults.min())  # |acc| beyond this saturates
        if bias is not None and (self.mode == "float" or e > 53 or acc_reach >= 2**24):
            acc, bias = self.emit(relax.op.add(acc, const(np.asarray(bias, np.int32)))), None
        if self.mode == "float" or e > 53 or acc_reach >= 2**24:
            if self.mode == "fixed":  # M < 2**-16: f32(acc) drops bits of accumulators that matter; no int64 grid
                log.warning("requant multiplier %s is too small for the fixed-point requant; float32 for this layer",
                            float(mults.min()))
            scaled = self.emit(relax.op.multiply(self.emit(relax.op.astype(acc, "float32")), const(mults)))
            value = self.emit(relax.op.add(self.emit(relax.op.round(scaled)), const(float(zy), "float32")))
            return relax.op.astype(self.emit(relax.op.clip(value, lo, hi)), y_qp.dtype)
        grid = on_grid(parts, e).reshape(mults.shape or (1,))  # M * 2**e
        bound = np.minimum(2**62 // grid, 2**31 - 1).astype(np.int32)  # |acc| * M * 2**e < 2**62 below it...
        clamp = bool(bound.min() < 2**31 - 1)  # ...and beyond it, as e <= 53, the output saturates anyway
        # Narrower types where they are exact: an int32 grid (half the constant's bytes, and a 32x64-bit multiply
        # for the C compiler); M < 1 keeps the rounded value within int32, so the clip is 32-bit.
        narrow = int(grid.max()) < 2**31
        small = float(mults.max()) < 1.0
        if narrow:
            grid = grid.astype(np.int32)
        if bias is not None and clamp:  # the clamp bounds acc + bias: add it first
            acc, bias = self.emit(relax.op.add(acc, const(np.asarray(bias, np.int32)))), None
        # t = (acc + bias) * grid + 2**(e - 1) + reach + (zy << e) = acc * grid + addend: one multiply and one add
        # per output (the cheap path of round_f32_half_even), whose t >> e is the output before the clip.
        # |acc * grid| <= 2**62 as clamp is False; the zero point joins the addend where t and the int32 output
        # stay in range (M < 1 bounds |rne(acc * M)| by about 2**31 - 128, not by 2**31 - 1 - |zy|).
        scaled_bias = None if bias is None else np.asarray(bias, np.int64) * grid.astype(np.int64)
        in_range = scaled_bias is None or int(np.abs(scaled_bias).max()) + (abs(zy) << e) < 2**62  # so |t| < 2**63
        plus = zy if in_range and (not small or abs(zy) + float(mults.max()) * 2**31 + 1 < 2**31) else 0
        addend = (1 << (e - 1)) + tie_reach(e) + (plus << e)
        offset = None if scaled_bias is None else scaled_bias + addend

        let_bound = _LET_BOUND.get()

        def index(idx, shape):
            return [i if n != 1 else 0 for i, n in zip(idx[len(idx) - len(shape):], shape, strict=True)]

        def requant(acc_t, grid_t, *extra):
            offset_t, bound_t = (extra[0], None) if offset is not None else (None, extra[0] if extra else None)

            def element(*idx):
                at = index(idx, grid.shape) if mults.ndim else [0]
                x = acc_t(*idx).astype("int64")
                if clamp:  # a channel whose multiplier is far above the others' (all-zero weights: scale 1)
                    x = tirx.max(tirx.min(x, bound_t(*at).astype("int64")), -bound_t(*at).astype("int64"))
                product = x * grid_t(*at).astype("int64")
                added = tirx.const(addend, "int64") if offset_t is None else offset_t(*index(idx, offset.shape))
                t = tirx.Var("t", "int64") if let_bound else product + added
                value = round_f32_half_even(t - tirx.const(addend, "int64"), e, TirOps(), t=t, plus=plus,
                                            finish=finish)
                return (tirx.Let(t, product + added, value) if let_bound else value).astype(y_qp.dtype)

            def finish(value):
                kind = "int32" if small else "int64"
                value = value.astype(kind) if plus == zy else value.astype(kind) + tirx.const(zy, kind)
                return self._clip(value, lo, hi)
            return tvm.te.compute(acc_t.shape, element, name="requant", attrs={FIXED_REQUANT: constants})

        # only what the TIR already holds: kernels that differ in their constant arguments alone stay one kernel
        constants = {"e": e, "zy": zy, "plus": plus, "lo": lo, "hi": hi, "addend": addend, "reach": tie_reach(e),
                     "clamp": int(clamp), "narrow": int(narrow)}
        extra = [const(offset)] if offset is not None else [const(bound)] if clamp else []
        return self.builder.call_te(requant, acc, const(grid), *extra)

    def add(self, a, a_qp, b, b_qp, y_qp, lo: int, hi: int):
        """QLinearAdd: sat(rne(fma(a, ra, fma(b, rb, F)))) on the raw codes `a`, `b` (int8 or uint8)."""
        spec, out = QLinearAddSpec.of(a_qp, b_qp, y_qp), y_qp.dtype
        (ma, ea), (mb, eb), (mf, ef) = spec.ra, spec.rb, spec.fixed
        if self.mode == "float" and _llvm_target():  # the float32 formula itself, in fused multiply-adds
            t = self._fused_fma(b, mb * 2.0**-eb, mf * 2.0**-ef)
            value = self.emit(relax.op.round(self._fused_fma(a, ma * 2.0**-ea, t)))
            return relax.op.astype(self.emit(relax.op.clip(value, lo, hi)), out)
        e = max(ea, eb, 1)
        a_step, b_step = ma << (e - ea), mb << (e - eb)
        offset = (int(y_qp.zero_point) << e) - int(a_qp.zero_point) * a_step - int(b_qp.zero_point) * b_step
        if 256 * (abs(a_step) + abs(b_step)) + abs(offset) >= 2**62:
            raise ValueError(f"QLinearAdd scales {a_qp.scale}, {b_qp.scale} are 2**30 apart: no int64 requant")
        codes = np.arange(spec.code0, spec.code0 + 256)
        a_all, b_all = (v.ravel() for v in np.meshgrid(codes, codes, indexing="ij"))
        p_all = a_all * a_step + b_all * b_step + offset
        exact, reference = round_f32_half_even(p_all, e, NumpyOps()), spec.reference(a_all, b_all)
        wrong = np.flatnonzero(np.clip(exact, lo, hi) != np.clip(reference, lo, hi))
        if len(wrong) > _MANY_PATCHES:
            log.warning("QLinearAdd to scale %s: %d code pairs patched one by one", float(y_qp.scale), len(wrong))
        patches = [(int(a_all[i]), int(b_all[i]), int(reference[i])) for i in wrong]
        reach = int(np.abs((np.abs(p_all[wrong]) & ((1 << e) - 1)) - (1 << (e - 1))).max(initial=0))  # all near ties

        def qlinear_add(a_t, b_t):
            def element(*idx):
                x, y = a_t(*idx).astype("int64"), b_t(*idx).astype("int64")

                def patch(value):
                    for pa, pb, patched in patches:
                        hit = tirx.And(tirx.EQ(x, tirx.const(pa, "int64")), tirx.EQ(y, tirx.const(pb, "int64")))
                        value = tirx.Select(hit, tirx.const(patched, "int64"), value)
                    return value

                p = x * tirx.const(a_step, "int64") + y * tirx.const(b_step, "int64") + tirx.const(offset, "int64")
                return self._clip(round_f32_half_even(p, e, TirOps(), patch, reach), lo, hi).astype(out)
            return tvm.te.compute(a_t.shape, element, name="qlinear_add")

        return self._opaque(self.builder.call_te(qlinear_add, a, b))

    def _fused_fma(self, codes, factor: float, addend):
        """fma(f32(codes), factor, addend) in float32, rounded once: LLVM's `llvm.fma`, one instruction where the
        CPU has FMA (x86 with FMA3, aarch64), a correctly rounded library call elsewhere, never a multiply and an
        add apart (TIR's own `fma` is LLVM's fmuladd, which may split). `addend`: a float or a float32 tensor that
        broadcasts against `codes`. About half the time of the exact float64 form it replaced (a perf profile of
        ResNet-8's stack1 residual epilogue, not repeated by a command in tools/bench), and its tensors between
        kernels are float32."""
        def fma(codes_t, *rest):
            shape = _broadcast_shape(codes_t.shape, *(t.shape for t in rest))

            def element(*idx):
                code = codes_t(*_broadcast_index(idx, codes_t.shape, shape)).astype("float32")
                add = rest[0](*_broadcast_index(idx, rest[0].shape, shape)) if rest else tirx.const(addend, "float32")
                return llvm_fma(code, tirx.const(factor, "float32"), add)
            return tvm.te.compute(shape, element, name="fma")

        return self.emit(self.builder.call_te(fma, codes) if isinstance(addend, float) else
                         self.builder.call_te(fma, codes, addend))

    def table(self, x, x_qp, y_qp, lo: int, hi: int):
        """DQ -> Q with new qparams as a lookup: sat(rne((f32(x - zx) * sx) / sy) + zy) for every code of x."""
        codes = np.arange(np.iinfo(x_qp.dtype).min, np.iinfo(x_qp.dtype).max + 1)
        real = ((codes - int(x_qp.zero_point)).astype(F32) * F32(x_qp.scale)).astype(F32)
        values = np.rint((real / F32(y_qp.scale)).astype(F32)).astype(np.int64) + int(y_qp.zero_point)
        index = self.emit(relax.op.subtract(self.emit(relax.op.astype(x, "int32")), const(int(codes[0]), "int32")))
        return relax.op.take(const(np.clip(values, lo, hi).astype(y_qp.dtype)), index, axis=0)

    def _opaque(self, call):
        """Keep a kernel out of FuseOps: TIR's buffer analysis stalls on a requant inlined into another."""
        gvar = call.args[0]
        self.builder.update_func(gvar, self.builder.get()[gvar].with_attr("op_pattern", 8))
        return call

    @staticmethod
    def _clip(value, lo: int, hi: int):
        kind = prim_dtype(value)
        return tirx.max(tirx.min(value, tirx.const(hi, kind)), tirx.const(lo, kind))


def _llvm_target() -> bool:
    """True inside `with target:` for an LLVM target (host, Cortex-A), where `llvm.fma` exists."""
    target = tvm.target.Target.current(allow_none=True)
    return target is not None and target.kind.name == "llvm"


def _broadcast_shape(*shapes) -> list:
    """The numpy broadcast of static TE shapes."""
    rank = max(len(shape) for shape in shapes)
    padded = [[1] * (rank - len(shape)) + [int(n) for n in shape] for shape in shapes]
    return [max(sizes) for sizes in zip(*padded, strict=True)]


def _broadcast_index(idx, shape, out_shape) -> list:
    """The index into a tensor of `shape` that broadcasts to the output index `idx` of `out_shape` (right-aligned;
    only a dimension that is broadcast reads 0, so FuseOps sees an elementwise op where nothing is)."""
    tail = zip(idx[len(idx) - len(shape):], shape, out_shape[len(out_shape) - len(shape):], strict=True)
    return [i if int(n) == int(m) else 0 for i, n, m in tail]
