"""QAT layers: the stock conv and linear plus a weight quantizer and an input (activation) quantizer.

    layer = QATConv2d.from_float(conv, weight_quantizer=StatsQWeight(2), input_quantizer=LsqActivation(2))
    y = layer(x)                     # conv2d(input_quantizer(x), weight_quantizer(weight), bias)
    info = layer.export_info()       # LayerQuantInfo for the ONNX exporter

With both quantizers None a QAT layer is exactly the float layer. The latent float weight stays the trained
parameter; the quantized weight is recomputed in every forward. Biases stay float (the exporter folds them
into the int32 accumulator).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from edgebin.quant.qat.quantizer import ActivationQuantizer, QuantInfo, WeightQuantizer
from edgebin.quant.recipe import LayerConfig


@dataclass(frozen=True, eq=False)
class LayerQuantInfo:
    """What the exporter needs for one layer: its weight and its input; None means float."""

    layer: str
    op: str
    weight: QuantInfo | None
    activation: QuantInfo | None


class _QATLayer:
    """Shared parts of QATConv2d and QATLinear (a mixin on the stock module)."""

    weight: nn.Parameter
    weight_quantizer: WeightQuantizer | None
    input_quantizer: ActivationQuantizer | None
    config: LayerConfig | None

    def _attach(self, weight_quantizer, input_quantizer, config) -> None:
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer
        self.config = config

    def quantized_weight(self) -> Tensor:
        return self.weight if self.weight_quantizer is None else self.weight_quantizer(self.weight)

    def quantized_input(self, x: Tensor) -> Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def weight_codes(self) -> Tensor | None:
        """The integer level of every weight (None for float weights): what oscillation counts compare."""
        return None if self.weight_quantizer is None else self.weight_quantizer.codes(self.weight)

    def export_info(self, name: str = "") -> LayerQuantInfo:
        weight = None if self.weight_quantizer is None else self.weight_quantizer.export_info(self.weight)
        act = None if self.input_quantizer is None else self.input_quantizer.export_info()
        return LayerQuantInfo(name, type(self).__name__, weight, act)


class QATConv2d(_QATLayer, nn.Conv2d):
    """nn.Conv2d with `weight_quantizer` and `input_quantizer`; shares the float layer's parameters."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, weight_quantizer: WeightQuantizer | None = None,
                   input_quantizer: ActivationQuantizer | None = None, config: LayerConfig | None = None) -> QATConv2d:
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  conv.groups, conv.bias is not None, conv.padding_mode, device="meta")
        new.weight, new.bias = conv.weight, conv.bias
        new._attach(weight_quantizer, input_quantizer, config)
        return new.train(conv.training)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.quantized_input(x), self.quantized_weight(), self.bias)


class QATLinear(_QATLayer, nn.Linear):
    """nn.Linear with `weight_quantizer` and `input_quantizer`; shares the float layer's parameters."""

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_quantizer: WeightQuantizer | None = None,
                   input_quantizer: ActivationQuantizer | None = None, config: LayerConfig | None = None) -> QATLinear:
        new = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        new.weight, new.bias = linear.weight, linear.bias
        new._attach(weight_quantizer, input_quantizer, config)
        return new.train(linear.training)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.quantized_input(x), self.quantized_weight(), self.bias)
