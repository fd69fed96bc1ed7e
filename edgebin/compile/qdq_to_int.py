"""QdqToInt8: turn the QuantizeLinear/DequantizeLinear patterns of a QDQ ONNX model into integer Relax compute.

The ONNX front end imports a QDQ model as float fake-quant: `quantize -> dequantize -> float op -> quantize`.
This pass rewrites each pattern it fully understands so that the op runs on the int8 tensors:

    mod = importer.from_onnx(model, shapes)
    mod = QdqToInt8(requant="float")(mod)     # before LegalizeOps; host.lower() runs the whole build order

| pattern (after import)                                 | becomes                                                |
|--------------------------------------------------------|--------------------------------------------------------|
| q(clamp?(conv2d/matmul(dq(x), dq(W)) + dq(b)))         | int8 x int8 -> int32 (+ int32 bias) -> requant -> int8 |
| conv2d/matmul(dq(x), dq(W)) + dq(b), output not quant. | int8 x int8 -> int32 (+ bias) -> one float multiply    |
| q(clamp?(dq(a) + dq(b)))                               | int8 + int8 -> int8, QLinearAdd's arithmetic           |
| q(mean(dq(x))), q(avg_pool2d(dq(x)))                   | int32 sum -> requant                                   |
| q(max_pool2d(dq(x))), q(dq(x))                         | int8 max-pool / identity; a lookup if qparams change   |

`clamp` is ReLU, Clip or Maximum/Minimum with constant bounds; it folds into the requant's saturation bounds.
Shape-only ops (reshape, flatten, transpose, squeeze) between the op and its quantize move onto the int8 result.
Anything else keeps its float fake-quant form and is reported as a float fallback by `kernels.py`. A pattern that
matches only in part (asymmetric weights, a per-channel activation scale, an unusual layout) is left in float too,
and the reason is logged: the pass never trades correctness for coverage.

Input zero point. Conv pads the int8 input with `zx` (the quantized real zero) and then convolves without padding;
matmul needs no padding. Both compute `sum(xq * w)` and fold `-zx * sum(w)` into the int32 bias, which is exact in
int32 and costs nothing at run time.

Requantization is `requant.py`'s: each rule hands it the int32 accumulator (or the int8 operands) and the
float32 scales, and it emits onnxruntime's own arithmetic (QLinearConv, QLinearAdd, QLinearGlobalAveragePool),
in float32 (`requant="float"`) or exactly in int64 (`requant="fixed"`, no float at all): both modes give the int8
codes of onnxruntime's integer kernels bit for bit. Where onnxruntime leaves a DQ -> op -> Q group in float
its result can differ from every integer kernel, by float accumulation order: on x86 it does so for int8
activations wherever a Q feeds two consumers (it converts int8 to uint8 only for single-consumer Qs, and fuses a
group only if its types then agree). edgebin exports uint8 activations, which it fuses everywhere.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from edgebin.compile.requant import REQUANT_MODES, Requantizer
from edgebin.compile.tvm_adapter import (
    PyExprMutator,
    call_op_name,
    collect,
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

_INT_ACTIVATIONS = ("int8", "uint8")
_SHAPE_OPS = ("relax.reshape", "relax.permute_dims", "relax.squeeze", "relax.expand_dims", "relax.flatten")
_BIAS_SCALE_RTOL = 1e-5


@dataclass(frozen=True)
class QParams:
    """Scale and zero point of a quantize/dequantize: per tensor (shape ()) or per channel along `axis`."""

    scale: np.ndarray  # float32
    zero_point: np.ndarray  # int64
    axis: int
    dtype: str  # the integer side's dtype

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1 and self.zero_point.size == 1

    def same_as(self, other: QParams) -> bool:
        return (self.per_tensor and other.per_tensor and self.dtype == other.dtype
                and float(self.scale) == float(other.scale) and int(self.zero_point) == int(other.zero_point))


def _qrange(dtype: str) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


class BindingGraph:
    """Read-only view of a function: what each variable is bound to and how often it is used (QdqToInt8's and
    BinaryToPacked's pattern matching)."""

    def __init__(self, func: relax.Function, mod) -> None:
        self.mod = mod
        self.var2val = relax.analysis.get_var2val(func)
        self.uses: dict[relax.Var, int] = {}
        self.users: dict[relax.Var, list] = {}
        self.var_of: dict = {}
        for block in func.body.blocks:
            for binding in block.bindings:
                self.var_of[binding.value] = binding.var
                for var in relax.analysis.free_vars(binding.value):
                    self.uses[var] = self.uses.get(var, 0) + 1
                    self.users.setdefault(var, []).append(binding.value)
        for var in relax.analysis.free_vars(func.body.body):
            self.uses[var] = self.uses.get(var, 0) + 1

    def value(self, expr):
        """The expression a variable is bound to (through var-to-var bindings), or `expr` itself."""
        while isinstance(expr, relax.Var) and expr in self.var2val:
            expr = self.var2val[expr]
        return expr

    def single_use(self, expr) -> bool:
        return not isinstance(expr, relax.Var) or self.uses.get(expr, 0) == 1

    def qparams(self, call) -> QParams | None:
        """Constant scale/zero point of a quantize or dequantize call, else None."""
        scale, zp = const_array(self.value(call.args[1])), const_array(self.value(call.args[2]))
        if scale is None or zp is None:
            return None
        int_side = call.attrs.out_dtype if call_op_name(call) == "relax.quantize" else tensor_dtype(call.args[0])
        return QParams(scale.astype(np.float32), zp.astype(np.int64), int(call.attrs.axis), str(int_side))

    def dequantized(self, expr) -> tuple[relax.Expr, QParams] | None:
        """(integer tensor, qparams) when `expr` is `dequantize(integer tensor)` with constant qparams."""
        call = self.value(expr)
        if call_op_name(call) != "relax.dequantize":
            return None
        qp = self.qparams(call)
        return None if qp is None else (call.args[0], qp)

    def scalar(self, expr) -> float | None:
        """A scalar constant, seen through the `where(isnan(c), inf, c)` the ONNX Clip converter emits."""
        expr = self.value(expr)
        if isinstance(expr, tirx.IntImm | tirx.FloatImm):
            return float(expr.value)
        array = const_array(expr)
        if array is not None:
            return float(array) if array.size == 1 else None
        if call_op_name(expr) == "relax.where" and call_op_name(self.value(expr.args[0])) == "relax.isnan":
            inner, chosen = self.scalar(self.value(expr.args[0]).args[0]), self.scalar(expr.args[2])
            if inner is not None and chosen is not None and inner == chosen and not math.isnan(inner):
                return chosen
        return None

    def clamp(self, expr) -> tuple[relax.Expr, float, float] | None:
        """(input, lo, hi) when `expr` is ReLU, Clip, or Maximum/Minimum with a constant scalar bound."""
        call = self.value(expr)
        name = call_op_name(call)
        if name == "relax.nn.relu":
            return call.args[0], 0.0, math.inf
        if name == "relax.clip":
            lo, hi = self.scalar(call.args[1]), self.scalar(call.args[2])
            return None if lo is None or hi is None else (call.args[0], lo, hi)
        if name in ("relax.maximum", "relax.minimum"):
            kind, args = name.removeprefix("relax."), call.args
        elif name == "relax.call_tir":
            kind, args = self._elementwise_tir(call.args[0]), call.args[1].fields
        else:
            return None
        if kind not in ("maximum", "minimum") or len(args) != 2:
            return None
        bound = self.scalar(args[1])
        if bound is None:
            return None
        return (args[0], bound, math.inf) if kind == "maximum" else (args[0], -math.inf, bound)

    def _elementwise_tir(self, gvar) -> str | None:
        """"maximum"/"minimum" for a PrimFunc whose only store is max/min of two loads (topi.maximum/minimum)."""
        func = self.mod[gvar] if gvar in self.mod.functions else None
        if not isinstance(func, tirx.PrimFunc):
            return None
        stores = collect(func.body, tirx.BufferStore)
        if len(stores) != 1:
            return None
        value = stores[0].value
        if isinstance(value, tirx.Max):
            return "maximum"
        if isinstance(value, tirx.Min):
            return "minimum"
        return None


def _channel_shape(values: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """Reshape per-channel `values` (or a scalar) to broadcast along `axis` of an `ndim`-d tensor."""
    if values.size == 1:
        return values.reshape(())
    shape = [1] * ndim
    shape[axis] = values.size
    return values.reshape(shape)


@dataclass(frozen=True)
class _Linear:
    """A conv2d or matmul whose activation and weight are dequantized int8, ready to emit in integers."""

    call: relax.Call  # the float conv2d / matmul
    x: relax.Expr  # int8 activation
    x_qp: QParams
    weight: np.ndarray  # int8, conv OIHW or matmul (K, N)
    w_scale: np.ndarray  # float32, per output channel (Cout or N)
    channel_axis: int  # of the output
    out_ndim: int

    @property
    def is_conv(self) -> bool:
        return call_op_name(self.call) == "relax.nn.conv2d"


@mutator
class _Rewriter(PyExprMutator):
    """Emits the integer form of each recognised pattern; `stage` picks the anchors (see QdqToInt8)."""

    def __init__(self, mod, func: relax.Function, requant: str, stage: str) -> None:
        super().__init__(mod)
        self.graph = BindingGraph(func, mod)
        self.requant = Requantizer(self.builder_, requant)
        self.stage = stage
        self.rewritten: Counter[str] = Counter()

    # --- anchors ---------------------------------------------------------------------------------------------

    def visit_call_(self, call):
        if self._is_table_lookup(call):
            # a lookup in a constant table (NUPES activation tables, indexed by uint8 codes): "clip" instead of
            # the importer's "fast" mode, equal for the in-range indices it has, and TOPI does not warn about it
            self.rewritten["table_lookup"] += 1
            index = self._unsigned_index(call.args[1])
            return relax.op.take(self.visit_expr(call.args[0]), self.visit_expr(index), call.attrs.axis, "clip")
        new = self._rewrite_quantize(call) if self.stage == "quantized" else self._rewrite_float_output(call)
        if new is None:
            return super().visit_call_(call)
        return new

    def _unsigned_index(self, index):
        """The uint8 codes u themselves for the importer's `where(i < 0, i + n, i)` with i = astype(u, int32): u is
        never negative, and indexing with it directly keeps a 4-byte index tensor out of memory."""
        fixup = self.graph.value(index)
        cast = self.graph.value(fixup.args[2]) if call_op_name(fixup) == "relax.where" else fixup
        if call_op_name(cast) == "relax.astype" and tensor_dtype(cast.args[0]) == "uint8":
            return cast.args[0]
        return index

    def _is_table_lookup(self, call) -> bool:
        return (call_op_name(call) == "relax.take" and call.attrs.mode == "fast"
                and const_array(self.graph.value(call.args[0])) is not None)

    def _rewrite_quantize(self, call):
        if call_op_name(call) != "relax.quantize":
            return None
        y_qp = self.graph.qparams(call)
        if y_qp is None or not y_qp.per_tensor or y_qp.dtype not in _INT_ACTIVATIONS:
            return None
        # Peel clamps and shape-only ops off the top: quantize is elementwise and monotone, so
        # quantize(reshape(clamp(v))) == reshape(clip(quantize(v), q(lo), q(hi))).
        body, c_lo, c_hi, shape_ops = call.args[0], -math.inf, math.inf, []
        while self.graph.single_use(body):
            if (clamped := self.graph.clamp(body)) is not None:
                body, c_lo, c_hi = clamped[0], max(c_lo, clamped[1]), min(c_hi, clamped[2])
            elif call_op_name(self.graph.value(body)) in _SHAPE_OPS:
                shape_ops.append(self.graph.value(body))
                body = shape_ops[-1].args[0]
            else:
                break
        if not self.graph.single_use(body):
            return None
        lo, hi = _qrange(y_qp.dtype)
        sy, zy = np.float32(y_qp.scale), int(y_qp.zero_point)
        if c_lo > -math.inf:
            lo = max(lo, zy + int(np.rint(np.float32(c_lo) / sy)))
        if c_hi < math.inf:
            hi = min(hi, zy + int(np.rint(np.float32(c_hi) / sy)))
        for rule in (self._quantized_linear, self._quantized_add, self._quantized_average, self._quantized_max_pool,
                     self._requantized):
            new = rule(body, y_qp, lo, hi)
            if new is not None:
                self.rewritten[rule.__name__.lstrip("_")] += 1
                for op in reversed(shape_ops):
                    new = relax.Call(op.op, [self._emit(new), *op.args[1:]], op.attrs)
                return new
        return None

    def _rewrite_float_output(self, call):
        """Linear layers whose output stays float (the logits): integer MACs, then one float multiply."""
        name = call_op_name(call)
        if name not in ("relax.add", "relax.nn.conv2d", "relax.matmul") or self._bias_add_follows(call):
            return None
        found = self._linear_with_bias(call)
        if found is None:
            return None
        linear, bias_int = found
        scale = (np.float32(linear.x_qp.scale) * linear.w_scale).astype(np.float32)
        acc = self._emit(relax.op.astype(self._accumulate(linear, bias_int), "float32"))
        self.rewritten["float_output_linear"] += 1
        return relax.op.multiply(acc, const(_channel_shape(scale, linear.out_ndim, linear.channel_axis)))

    def _bias_add_follows(self, call) -> bool:
        """True for a linear whose only user is a bias add: that add is the anchor, bias included."""
        var = self.graph.var_of.get(call)
        users = self.graph.users.get(var, []) if var is not None else []
        return (call_op_name(call) != "relax.add" and len(users) == 1
                and call_op_name(users[0]) == "relax.add" and self._linear_with_bias(users[0]) is not None)

    # --- pattern rules (each returns the new expression or None) ---------------------------------------------

    def _quantized_linear(self, body, y_qp: QParams, lo: int, hi: int):
        found = self._linear_with_bias(body)
        if found is None:
            return None
        linear, bias_int = found
        acc, bias = self._accumulate(linear, bias_int, add_bias=False)  # the requant adds it, cheaper
        mult = (np.float32(linear.x_qp.scale) * linear.w_scale).astype(np.float32) / np.float32(y_qp.scale)
        mult = _channel_shape(mult.astype(np.float32), linear.out_ndim, linear.channel_axis)
        return self.requant.linear(acc, mult, y_qp, lo, hi, bias=bias)

    def _quantized_add(self, body, y_qp: QParams, lo: int, hi: int):
        add = self.graph.value(body)
        if call_op_name(add) != "relax.add":
            return None
        operands = [self.graph.dequantized(arg) for arg in add.args]
        if any(op is None or not op[1].per_tensor or op[1].dtype not in _INT_ACTIVATIONS for op in operands):
            return None
        (a, a_qp), (b, b_qp) = operands
        return self.requant.add(self.visit_expr(a), a_qp, self.visit_expr(b), b_qp, y_qp, lo, hi)

    def _quantized_average(self, body, y_qp: QParams, lo: int, hi: int):
        call = self.graph.value(body)
        name = call_op_name(call)
        if name not in ("relax.mean", "relax.nn.avg_pool2d"):
            return None
        dq = self.graph.dequantized(call.args[0])
        if dq is None or not dq[1].per_tensor or dq[1].dtype not in _INT_ACTIVATIONS:
            return None
        xq, x_qp = self.visit_expr(dq[0]), dq[1]
        shape = tensor_shape(call.args[0])
        if shape is None:
            return None
        zx = int(x_qp.zero_point)
        if name == "relax.mean":
            axes = [a % len(shape) for a in call.attrs.axis] if call.attrs.axis is not None else range(len(shape))
            count = int(np.prod([shape[a] for a in axes]))
            total = self._emit(relax.op.sum(relax.op.astype(xq, "int32"), call.attrs.axis, call.attrs.keepdims))
        else:
            total, count = self._window_sum(call, xq, shape, zx)
            if total is None:
                return None
        centred = self._emit(relax.op.subtract(total, const(count * zx, "int32"))) if zx else total
        mult = np.float32(x_qp.scale) / (np.float32(count) * np.float32(y_qp.scale))  # MLAS's order
        return self.requant.linear(centred, mult, y_qp, lo, hi)

    def _quantized_max_pool(self, body, y_qp: QParams, lo: int, hi: int):
        """max_pool2d on the int8 tensor; requant (monotone, so it commutes with max) only if the scale changes."""
        call = self.graph.value(body)
        dq = self.graph.dequantized(call.args[0]) if call_op_name(call) == "relax.nn.max_pool2d" else None
        if dq is None or not dq[1].per_tensor or dq[1].dtype not in _INT_ACTIVATIONS:
            return None
        pooled = self._emit(relax.Call(call.op, [self.visit_expr(dq[0]), *call.args[1:]], call.attrs))
        return self._requantize_tensor(pooled, dq[1], y_qp, lo, hi)

    def _requantized(self, body, y_qp: QParams, lo: int, hi: int):
        """quantize(dequantize(x)): x itself when the qparams agree, else a requant."""
        dq = self.graph.dequantized(body)
        if dq is None or not dq[1].per_tensor or dq[1].dtype not in _INT_ACTIVATIONS:
            return None
        return self._requantize_tensor(self.visit_expr(dq[0]), dq[1], y_qp, lo, hi)

    def _requantize_tensor(self, xq, x_qp: QParams, y_qp: QParams, lo: int, hi: int):
        if x_qp.same_as(y_qp):
            return relax.op.clip(xq, lo, hi) if (lo, hi) != _qrange(y_qp.dtype) else xq
        return self.requant.table(xq, x_qp, y_qp, lo, hi)

    # --- linear layers ---------------------------------------------------------------------------------------

    def _linear_with_bias(self, expr) -> tuple[_Linear, np.ndarray] | None:
        """(linear, int32 bias) for `conv2d/matmul(dq(x), dq(W))`, alone or plus a bias; else None."""
        linear = self._linear(expr)
        if linear is not None:
            return linear, np.zeros(linear.w_scale.shape, np.int64)
        add = self.graph.value(expr)
        if call_op_name(add) != "relax.add":
            return None
        for lin, bias in ((add.args[0], add.args[1]), (add.args[1], add.args[0])):
            linear = self._linear(lin) if self.graph.single_use(lin) else None
            bias_int = self._bias(linear, bias) if linear is not None else None
            if bias_int is not None:
                return linear, bias_int
        return None

    def _linear(self, expr) -> _Linear | None:
        call = self.graph.value(expr)
        name = call_op_name(call)
        if name not in ("relax.nn.conv2d", "relax.matmul"):
            return None
        dq_x = self.graph.dequantized(call.args[0])
        if dq_x is None:
            return None
        x, x_qp = dq_x
        if not x_qp.per_tensor or x_qp.dtype not in _INT_ACTIVATIONS:
            log.info("QdqToInt8: %s input has %s per-channel/unsupported qparams; left in float", name, x_qp.dtype)
            return None
        weight = self._weight(call.args[1], transposed_ok=name == "relax.matmul")
        if weight is None:
            return None
        w, w_scale, w_zp, w_axis = weight
        if np.any(w_zp != 0):
            log.info("QdqToInt8: %s has asymmetric int8 weights (zero point != 0); left in float", name)
            return None
        if name == "relax.nn.conv2d":
            attrs = call.attrs
            if (attrs.data_layout, attrs.kernel_layout, attrs.out_layout or "NCHW") != ("NCHW", "OIHW", "NCHW"):
                log.info("QdqToInt8: conv2d layout %s/%s; left in float", attrs.data_layout, attrs.kernel_layout)
                return None
            if w_axis != 0 and w_scale.size > 1:
                return None
            channels = w.shape[0]
            channel_axis, out_ndim = 1, 4
        else:
            if w.ndim != 2 or (w_axis % 2 != 1 and w_scale.size > 1):
                return None
            channels = w.shape[1]
            out_ndim = len(tensor_shape(call) or (1, 1))
            channel_axis = out_ndim - 1
        w_scale = np.broadcast_to(w_scale.reshape(-1), (channels,)).astype(np.float32)
        return _Linear(call, x, x_qp, w, w_scale, channel_axis, out_ndim)

    def _weight(self, expr, transposed_ok: bool):
        """(int8 weight, scale, zero point, axis) of a dequantized constant weight, seen through a transpose."""
        transpose = False
        value = self.graph.value(expr)
        if transposed_ok and call_op_name(value) == "relax.permute_dims":
            axes = value.attrs.axes
            if axes is not None and [int(a) for a in axes] != [1, 0]:
                return None
            transpose, expr = True, value.args[0]
        dq = self.graph.dequantized(expr)
        if dq is None:
            return None
        data = const_array(self.graph.value(dq[0]))
        if data is None or data.dtype != np.int8:
            if data is not None:
                log.info("QdqToInt8: weight of dtype %s is not int8; left in float", data.dtype)
            return None
        qp = dq[1]
        axis = qp.axis % data.ndim
        if transpose:
            data, axis = data.T, 1 - axis
        return data, qp.scale, qp.zero_point, axis

    def _bias(self, linear: _Linear, expr) -> np.ndarray | None:
        """The int32 bias at the accumulator scale `sx * sw`, or None when `expr` is not a per-channel bias."""
        value, reshaped = self.graph.value(expr), False
        if call_op_name(value) == "relax.reshape":
            value, reshaped = self.graph.value(value.args[0]), True
        channels = linear.w_scale.size
        dq = self.graph.dequantized(value)
        if dq is not None:
            data = const_array(self.graph.value(dq[0]))
            if data is None or data.dtype not in (np.int32, np.int8) or np.any(dq[1].zero_point != 0):
                return None
            bias_scale = np.broadcast_to(dq[1].scale.reshape(-1), data.shape).astype(np.float64)
            bias_real = data.astype(np.float64) * bias_scale
        else:
            data = const_array(value)
            if data is None or data.dtype.kind != "f":
                return None
            bias_real, bias_scale = data.astype(np.float64), None
        if bias_real.size != channels:
            return None
        shape = tensor_shape(expr)
        if linear.is_conv and not reshaped and shape is not None and len(shape) != 4:
            return None  # a conv bias must broadcast along the channel axis
        acc_scale = np.float32(linear.x_qp.scale) * linear.w_scale.astype(np.float64)
        if bias_scale is not None and np.allclose(bias_scale.reshape(-1), acc_scale, rtol=_BIAS_SCALE_RTOL, atol=0):
            return data.reshape(-1).astype(np.int64)
        log.info("QdqToInt8: bias is not at the accumulator scale sx*sw; requantized to it (error <= 0.5 LSB)")
        return np.rint(bias_real.reshape(-1) / acc_scale).astype(np.int64)

    def _accumulate(self, linear: _Linear, bias_int: np.ndarray, *, add_bias: bool = True):
        """int32 accumulator of `sum((x - zx) * w) + bias`; `-zx * sum(w)` is folded into the bias constant.

        With `add_bias=False`: (the accumulator without the bias, the int32 bias broadcastable to it, or None).
        """
        (xq, zx), w = self._unsigned_input(linear), linear.weight
        if linear.is_conv:  # OIHW
            attrs = linear.call.attrs
            padding = [int(p) for p in attrs.padding]
            if zx != 0 and any(padding):
                top, left, bottom, right = padding
                xq = self._emit(relax.op.nn.pad(xq, [0, 0, 0, 0, top, bottom, left, right], pad_value=float(zx)))
                padding = [0, 0, 0, 0]
            acc = self._emit(relax.op.nn.conv2d(
                xq, const(w), strides=[int(s) for s in attrs.strides], padding=padding,
                dilation=[int(d) for d in attrs.dilation], groups=int(attrs.groups), out_dtype="int32"))
            weight_sums = w.astype(np.int64).sum(axis=(1, 2, 3))
        else:  # matmul, (K, N)
            acc = self._emit(relax.op.matmul(xq, const(np.ascontiguousarray(w)), out_dtype="int32"))
            weight_sums = w.astype(np.int64).sum(axis=0)
        bias = bias_int - zx * weight_sums
        if np.any(np.abs(bias) >= 2**31):
            raise ValueError("int32 bias overflow in QdqToInt8; the bias scale is not sx*sw")
        bias_c = _channel_shape(bias.astype(np.int32), linear.out_ndim, linear.channel_axis) if np.any(bias) else None
        if not add_bias:
            return acc, bias_c
        return acc if bias_c is None else self._emit(relax.op.add(acc, const(bias_c)))

    def _unsigned_input(self, linear: _Linear) -> tuple[relax.Expr, int]:
        """(activation, its zero point) for `_accumulate`. An int8 activation quantized straight from a float
        function parameter (the model's input; a quantize of anything else is a pattern the other rules rewrite)
        and read only by this linear is quantized to uint8 with zero point + 128 instead: the same codes + 128
        exactly, so the same int32 sums once the bias takes the new zero point. The host's VNNI row kernels multiply
        unsigned activations; an int8 one costs them 128 * sum(w) per weight row on every call (ResNet-8's stem:
        about a fifth of its kernel's time in a perf profile)."""
        quantize, zx = self.graph.value(linear.x), int(linear.x_qp.zero_point)
        if (linear.x_qp.dtype == "int8" and call_op_name(quantize) == "relax.quantize"
                and isinstance(quantize.args[0], relax.Var) and quantize.args[0] not in self.graph.var2val
                and tensor_dtype(quantize.args[0]) == "float32" and self.graph.single_use(linear.x)
                and self.graph.single_use(linear.call.args[0])):
            unsigned = relax.op.quantize(self.visit_expr(quantize.args[0]), quantize.args[1],
                                         const(np.array(zx + 128, np.uint8)), int(quantize.attrs.axis), "uint8")
            self.rewritten["int8_input_as_uint8"] += 1
            return self._emit(unsigned), zx + 128
        return self.visit_expr(linear.x), zx

    def _window_sum(self, call, xq, shape, zx):
        """(int32 window sums, window size) of an avg_pool2d, as a depthwise conv with an all-ones kernel."""
        attrs = call.attrs
        padding = [int(p) for p in attrs.padding]
        if attrs.layout != "NCHW" or attrs.ceil_mode or (any(padding) and not attrs.count_include_pad):
            log.info("QdqToInt8: avg_pool2d with layout/ceil_mode/excluded padding; left in float")
            return None, 0
        kh, kw = (int(k) for k in attrs.pool_size)
        if any(padding):
            top, left, bottom, right = padding
            xq = self._emit(relax.op.nn.pad(xq, [0, 0, 0, 0, top, bottom, left, right], pad_value=float(zx)))
        ones = np.ones((shape[1], 1, kh, kw), np.int8)
        total = self._emit(relax.op.nn.conv2d(
            xq, const(ones), strides=[int(s) for s in attrs.strides], padding=[0, 0, 0, 0],
            dilation=[int(d) for d in attrs.dilation], groups=shape[1], out_dtype="int32"))
        return total, kh * kw

    def _emit(self, expr):
        return self.builder_.emit(expr)


@tvm.ir.transform.module_pass(opt_level=0, name="QdqToInt8")
class QdqToInt8:
    """Rewrite QDQ fake-quant patterns of an imported ONNX model into int8 x int8 -> int32 Relax compute.

    Preconditions: run right after import, before LegalizeOps and FoldConstant (it reads the `dequantize` of
    constant int8 weights, which FoldConstant would turn into float constants); static shapes; NCHW convs.
    Patterns it does not fully recognise keep their float form (see the module docstring). A module pass:
    the fixed requant adds its TIR kernels to the module.
    """

    def __init__(self, requant: str = "float") -> None:
        if requant not in REQUANT_MODES:
            raise ValueError(f"QdqToInt8: requant must be one of {REQUANT_MODES}, got {requant!r}")
        self.requant = requant

    def transform_module(self, mod, ctx):
        for gvar, func in list(mod.functions.items()):
            if not isinstance(func, relax.Function) or func.attrs is not None and "Primitive" in func.attrs:
                continue
            counts: Counter[str] = Counter()
            for stage in ("quantized", "float_output"):  # the second stage sees only linears the first left float
                rewriter = _Rewriter(mod, func, self.requant, stage)
                func = relax.analysis.remove_all_unused(rewriter.visit_expr(func))
                mod = rewriter.builder_.get()  # with the kernels the fixed requant added
                mod[gvar] = func
                counts += rewriter.rewritten
            log.info("QdqToInt8 (%s requant) rewrote %s", self.requant, dict(counts) or "nothing")
        return mod


def is_quantized(mod) -> bool:
    """True when a Relax module holds any quantize/dequantize call (a QDQ model)."""
    found = []

    def visit(expr) -> None:
        if call_op_name(expr) in ("relax.quantize", "relax.dequantize"):
            found.append(expr)

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return bool(found)


__all__ = ["QParams", "QdqToInt8", "REQUANT_MODES", "is_quantized"]
