"""Quantized modules that the INT8 recipe puts into a captured graph.

    act = ActQuant(observer=make_observer("minmax"))   # per-tensor 8-bit (uint8) activation quantizer
    conv = QuantConv2d.from_float(weight, bias, stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1)

Life cycle of a quantized graph: `float` (exactly the float model) -> `observe` (float, observers record
ranges) -> `freeze()` (scales fixed, weights stored as int8 codes, biases as int32) -> fake-quant forward,
identical to the exported QDQ ONNX.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgebin.quant.observers import MinMaxObserver
from edgebin.quant.qdq import dequantize_codes, quantize_dequantize, quantize_lookup_dequantize
from edgebin.quant.uniform import (
    ACT_QMAX,
    ACT_QMIN,
    INT32_MAX,
    affine_qparams,
    quantize_bias,
    quantize_weight,
    symmetric_weight_scales,
)

MODES = ("float", "observe", "quantize")


class ActQuant(nn.Module):
    """Per-tensor asymmetric 8-bit quantizer of an activation; exports as QuantizeLinear -> DequantizeLinear.

    Codes are uint8 (zero point in 0..255), the form onnxruntime's x86 kernels expect: with int8 activations it
    leaves every Conv/Add whose input feeds two consumers in float, so its reference stops being integer
    arithmetic that a compiled model can equal bit for bit. Against int8 codes this only shifts codes and zero
    point by 128: the fake-quant values are the same.

    With `shared_with`, it reuses another quantizer's scale and zero point: used after max-pool, reshape and
    ReLU on already-quantized values, where requantizing would only lose precision.

    `table` (None, or 256 uint8 entries set by `edgebin.quant.power_act`) maps each code before dequantizing:
    NUPES's low-bit and power-grid activations on the same uint8 scale.
    """

    bits = 8

    def __init__(self, observer: MinMaxObserver | None = None, shared_with: ActQuant | None = None) -> None:
        super().__init__()
        self.mode = "float"
        self.observer = observer
        object.__setattr__(self, "shared_with", shared_with)  # a reference, not a submodule
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.uint8))
        self.register_buffer("table", None)

    def source(self) -> ActQuant:
        """The quantizer whose parameters this one uses."""
        src = self
        while src.shared_with is not None:
            src = src.shared_with
        return src

    def freeze(self) -> None:
        """Fix scale and zero point from the observed range (or copy them from the shared quantizer)."""
        if self.shared_with is None:
            lo, hi = self.observer.range() if self.observer is not None else (0.0, 0.0)
            scale, zero_point = affine_qparams(lo, hi, ACT_QMIN, ACT_QMAX)
            self.scale.fill_(scale)
            self.zero_point.fill_(zero_point)
        else:
            src = self.source()
            self.scale.copy_(src.scale)
            self.zero_point.copy_(src.zero_point)
        self.mode = "quantize"

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "observe" and self.observer is not None and self.shared_with is None:
            self.observer.update(x.detach())
        if self.mode != "quantize":
            return x
        if self.table is not None:
            return quantize_lookup_dequantize(x, self.scale, self.zero_point, self.table)
        return quantize_dequantize(x, self.scale, self.zero_point)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, scale={float(self.scale):.6g}, zero_point={int(self.zero_point)}"


class _QuantWeighted(nn.Module):
    """Shared parts of QuantConv2d and QuantLinear: per-channel int8 weights, int32 bias."""

    weight_bits = 8

    def __init__(self, weight: Tensor, bias: Tensor | None) -> None:
        super().__init__()
        self.mode = "float"
        self.weight = nn.Parameter(weight.detach().clone().float())
        out = weight.shape[0]
        self.bias = nn.Parameter(bias.detach().clone().float() if bias is not None else torch.zeros(out))
        object.__setattr__(self, "input_quant", None)  # the ActQuant feeding this layer, set by the recipe
        self.register_buffer("weight_codes", torch.zeros(weight.shape, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.ones(out))
        self.register_buffer("weight_zero_point", torch.zeros(out, dtype=torch.int8))
        self.register_buffer("bias_codes", torch.zeros(out, dtype=torch.int32))
        self.register_buffer("bias_scale", torch.ones(out))
        self.register_buffer("bias_zero_point", torch.zeros(out, dtype=torch.int32))

    def freeze(self) -> None:
        """Store int8 weight codes and int32 bias codes; the bias scale needs the input's scale."""
        if self.input_quant is None:
            raise RuntimeError(f"{type(self).__name__}: no input quantizer linked; the recipe must set it")
        input_scale = float(self.input_quant.source().scale)
        scales = symmetric_weight_scales(self.weight, axis=0)
        # A bias far larger than the accumulator's scale would saturate int32; widen those channels' weight
        # scale until it fits (as onnxruntime's quantizer does). Only degenerate layers ever need this.
        scales = torch.maximum(scales, self.bias.detach().abs() / (input_scale * (INT32_MAX >> 1)))
        self.weight_scale.copy_(scales)
        self.weight_codes.copy_(quantize_weight(self.weight, scales, axis=0))
        codes, bias_scales = quantize_bias(self.bias, input_scale, scales)
        self.bias_codes.copy_(codes)
        self.bias_scale.copy_(bias_scales)
        self.mode = "quantize"

    def quantized_weight_and_bias(self) -> tuple[Tensor, Tensor]:
        if self.mode != "quantize":
            return self.weight, self.bias
        w = dequantize_codes(self.weight_codes, self.weight_scale, self.weight_zero_point, 0)
        b = dequantize_codes(self.bias_codes, self.bias_scale, self.bias_zero_point, 0)
        return w, b

    def weights_bytes(self) -> int:
        """Storage of the deployed layer: 1 byte per int8 weight, 4 per int32 bias (float: 4 and 4)."""
        per_weight = 1 if self.mode == "quantize" else 4
        return self.weight.numel() * per_weight + self.bias.numel() * 4


class QuantConv2d(_QuantWeighted):
    """conv2d with per-output-channel symmetric int8 weights and an int32 bias (BatchNorm already folded)."""

    def __init__(self, weight: Tensor, bias: Tensor | None, stride, padding, dilation, groups: int) -> None:
        super().__init__(weight, bias)
        self.stride, self.padding = tuple(stride), tuple(padding)
        self.dilation, self.groups = tuple(dilation), int(groups)

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.quantized_weight_and_bias()
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        o, i, kh, kw = self.weight.shape
        shape = f"{i * self.groups}->{o}, kernel=({kh}, {kw}), stride={self.stride}"
        return f"{shape}, groups={self.groups}, mode={self.mode}"


class QuantLinear(_QuantWeighted):
    """linear with per-output-feature symmetric int8 weights and an int32 bias."""

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.quantized_weight_and_bias()
        return F.linear(x, w, b)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]}->{self.weight.shape[0]}, mode={self.mode}"
