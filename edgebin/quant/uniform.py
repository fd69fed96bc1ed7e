"""Uniform affine int8 quantization: the maths of the INT8 PTQ baseline, as plain functions.

Forward semantics are ONNX's, so the fake-quant PyTorch model, onnxruntime and the compiled artefact agree:

    q    = clamp(round_half_even(x / scale) + zero_point, qmin, qmax)     # QuantizeLinear
    x'   = (q - zero_point) * scale                                      # DequantizeLinear

Activations are per-tensor and asymmetric (int8, zero point anywhere in [-128, 127], 0.0 always exact);
weights are per-channel and symmetric on the narrow range [-127, 127] (zero point 0); biases are int32 with
scale `input_scale * weight_scale`. The gradient of `fake_quantize` is the straight-through estimator inside
the clamp range (Bengio et al., arXiv:1308.3432), which QAT builds on.
"""

from __future__ import annotations

import torch
from torch import Tensor

INT8_MIN, INT8_MAX = -128, 127
ACT_QMIN, ACT_QMAX = 0, 255  # activations: uint8 codes (see quant.modules.ActQuant)
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
WEIGHT_QMAX = 127  # symmetric narrow range: -127..127, so -w is representable whenever w is


def quantize(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """QuantizeLinear: round half to even (torch.round), add the zero point, saturate. Returns float codes."""
    return torch.clamp(torch.round(x / scale) + zero_point, qmin, qmax)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """DequantizeLinear: (q - zero_point) * scale."""
    return (q - zero_point) * scale


class _FakeQuantizeSTE(torch.autograd.Function):
    """Quantize then dequantize; straight-through gradient where the input was not clamped."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
        q = torch.round(x / scale) + zero_point
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return (torch.clamp(q, qmin, qmax) - zero_point) * scale

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int = INT8_MIN, qmax: int = INT8_MAX) -> Tensor:
    """dequantize(quantize(x)) with the straight-through estimator for the gradient."""
    return _FakeQuantizeSTE.apply(x, scale, zero_point, qmin, qmax)


def affine_qparams(lo: float, hi: float, qmin: int = INT8_MIN, qmax: int = INT8_MAX) -> tuple[float, int]:
    """Scale and zero point that map [lo, hi] (widened to contain 0) onto [qmin, qmax].

    0.0 is exactly representable, so zero padding and ReLU stay exact in integer arithmetic.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-12:
        return 1.0, 0
    scale = (hi - lo) / (qmax - qmin)
    zero_point = int(round(qmin - lo / scale))
    return scale, max(qmin, min(qmax, zero_point))


def symmetric_weight_scales(weight: Tensor, axis: int = 0) -> Tensor:
    """Per-channel scales max|w| / 127 along `axis` (the output channels); all-zero channels get scale 1."""
    dims = [d for d in range(weight.dim()) if d != axis]
    amax = weight.detach().abs().amax(dim=dims) if dims else weight.detach().abs()
    return torch.where(amax > 0, amax / WEIGHT_QMAX, torch.ones_like(amax)).float()


def quantize_weight(weight: Tensor, scales: Tensor, axis: int = 0) -> Tensor:
    """int8 codes of `weight` with per-channel `scales` along `axis` (narrow range)."""
    shape = [1] * weight.dim()
    shape[axis] = -1
    codes = torch.clamp(torch.round(weight / scales.view(shape)), -WEIGHT_QMAX, WEIGHT_QMAX)
    return codes.to(torch.int8)


def quantize_bias(bias: Tensor, input_scale: float, weight_scales: Tensor) -> tuple[Tensor, Tensor]:
    """int32 bias codes and their per-channel scale input_scale * weight_scale (the accumulator's scale)."""
    scales = (input_scale * weight_scales).float()
    codes = torch.clamp(torch.round(bias.detach() / scales), INT32_MIN, INT32_MAX).to(torch.int32)
    return codes, scales
