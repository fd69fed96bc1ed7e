"""QuantizeLinear / DequantizeLinear as autograd Functions that export to exactly those ONNX nodes.

The PyTorch forward computes what onnxruntime computes for the node, so the fake-quant model and the exported
QDQ graph agree; `symbolic` tells the TorchScript ONNX exporter (`torch.onnx.export(..., dynamo=False)`) to
emit the standard node instead of the arithmetic, which is what lets compilers see int8 tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from edgebin.quant.uniform import ACT_QMAX, ACT_QMIN, INT8_MAX, INT8_MIN, _FakeQuantizeSTE


def _broadcast(v: Tensor, like: Tensor, axis: int) -> Tensor:
    if v.dim() == 0:
        return v
    shape = [1] * like.dim()
    shape[axis] = -1
    return v.view(shape)


class QuantizeDequantize(torch.autograd.Function):
    """Per-tensor 8-bit fake quantization of an activation (uint8 or int8 codes, the zero point's dtype); exports
    as QuantizeLinear -> DequantizeLinear.

    Gradient: straight-through inside [qmin, qmax], zero outside.
    """

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
        qmin, qmax = (ACT_QMIN, ACT_QMAX) if zero_point.dtype == torch.uint8 else (INT8_MIN, INT8_MAX)
        return _FakeQuantizeSTE.forward(ctx, x, scale, zero_point.float(), qmin, qmax)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return _FakeQuantizeSTE.backward(ctx, grad)[:3]

    @staticmethod
    def symbolic(g, x, scale, zero_point):
        q = g.op("QuantizeLinear", x, scale, zero_point)
        return g.op("DequantizeLinear", q, scale, zero_point)


class QuantizeLookupDequantize(torch.autograd.Function):
    """Per-tensor uint8 fake quantization whose codes pass through a 256-entry uint8 table before dequantizing
    (NUPES low-bit and power-grid activations, `edgebin.quant.power_act`); exports as
    QuantizeLinear -> Cast(int32) -> Gather(table) -> DequantizeLinear.

    Gradient: straight-through inside [0, 255], zero outside, as QuantizeDequantize.
    """

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero_point: Tensor, table: Tensor) -> Tensor:
        zp = zero_point.float()
        q = torch.round(x / scale) + zp
        ctx.save_for_backward((q >= ACT_QMIN) & (q <= ACT_QMAX))
        codes = table[torch.clamp(q, ACT_QMIN, ACT_QMAX).long()]
        return (codes.float() - zp) * scale

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None

    @staticmethod
    def symbolic(g, x, scale, zero_point, table):
        q = g.op("QuantizeLinear", x, scale, zero_point)
        index = g.op("Cast", q, to_i=6)  # TensorProto.INT32
        return g.op("DequantizeLinear", g.op("Gather", table, index, axis_i=0), scale, zero_point)


class DequantizeCodes(torch.autograd.Function):
    """Integer codes (int8 weights, int32 biases) to float along `axis`; exports as DequantizeLinear."""

    @staticmethod
    def forward(ctx, codes: Tensor, scale: Tensor, zero_point: Tensor, axis: int) -> Tensor:
        zp = _broadcast(zero_point.float(), codes, axis)
        return (codes.float() - zp) * _broadcast(scale, codes, axis)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, None, None, None

    @staticmethod
    def symbolic(g, codes, scale, zero_point, axis):
        return g.op("DequantizeLinear", codes, scale, zero_point, axis_i=axis)


def quantize_dequantize(x: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """Fake-quantize `x` (per tensor); `zero_point` is a uint8 (or int8) 0-d tensor."""
    return QuantizeDequantize.apply(x, scale, zero_point)


def quantize_lookup_dequantize(x: Tensor, scale: Tensor, zero_point: Tensor, table: Tensor) -> Tensor:
    """Fake-quantize `x` to uint8 codes u, then to the codes table[u] (a uint8 tensor of 256 entries)."""
    return QuantizeLookupDequantize.apply(x, scale, zero_point, table)


def dequantize_codes(codes: Tensor, scale: Tensor, zero_point: Tensor, axis: int = 0) -> Tensor:
    """Float values of integer `codes` with per-channel `scale` along `axis`."""
    return DequantizeCodes.apply(codes, scale, zero_point, axis)
