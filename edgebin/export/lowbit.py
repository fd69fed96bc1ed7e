"""The ONNX form of trained QAT quantizers: frozen modules whose PyTorch forward is the fake-quant arithmetic
and whose trace is standard opset-17 ONNX.

    frozen, parts = freeze_quantizers(model)   # a deep copy: quantizers -> FrozenWeight / FrozenActivation
    torch.onnx.export(frozen, ...)      # dynamo=False: the autograd Functions below emit their `symbolic`

A weight becomes constant int8 codes and a per-output-channel scale, `value = scale[c] * (code + code_offset)`,
exported as DequantizeLinear (+ Add of scale · code_offset, for 8-bit StatsQ only: FrozenWeight says why).
An activation `code = Q(x + shift)`, `value = scale * code + offset` becomes, by the QuantInfo it was built from:

    binary (pm1)          Add(shift) -> Where(GreaterOrEqual(x, 0), 1, -1) -> Mul(scale)       sign(0) = +1
    uniform / ternary     Add(shift) -> QuantizeLinear -> Clip(qmin, qmax) on codes -> DequantizeLinear -> Add(offset)
    dynamic offset (TBT)  ReduceMin -> Sub -> (the uniform chain) -> Add                       offset = min(x)
    codes beyond 8 bits   Div -> Round -> Clip -> Mul                                           (none today)

The Clip sits between Q and DQ, on the uint8/int8 codes, and only when [qmin, qmax] is narrower than the code
type, so the graph states the code range exactly (and per-token scales need no per-token bounds). ONNX `Sign`
is never used: it maps 0 to 0. The PyTorch forward of every Function computes what onnxruntime computes for the
node (QuantizeLinear divides and rounds half to even, as torch.round), so `freeze_quantizers(model)` can be
checked against the fake-quant model in PyTorch before any ONNX is written.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from edgebin.errors import UsageError
from edgebin.quant.qat import QATConv2d, QATLinear, QKRAttention, QuantInfo
from edgebin.quant.qat.quantizer import ActivationQuantizer, WeightQuantizer, sign
from edgebin.quant.qdq import dequantize_codes

log = logging.getLogger(__name__)

CODE_TYPES = {torch.uint8: (0, 255), torch.int8: (-128, 127)}  # what QuantizeLinear can emit in opset 17


def _along(v: Tensor, like: Tensor, axis: int) -> Tensor:
    """A 0-d or 1-D tensor shaped to broadcast against `like` at `axis`."""
    if v.dim() == 0:
        return v
    shape = [1] * like.dim()
    shape[axis] = -1
    return v.view(shape)


class QuantizeClipDequantize(torch.autograd.Function):
    """scale · clamp(round(x / scale), qmin, qmax); exports as QuantizeLinear -> [Clip] -> DequantizeLinear.

    The zero point's dtype (uint8 or int8) is the code type; the Clip on the codes is emitted only when
    [qmin, qmax] is narrower than that type. `axis` is the axis of a 1-D scale (per token); ignored for 0-d.
    """

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int, axis: int) -> Tensor:
        s = _along(scale, x, axis)
        return torch.clamp(torch.round(x / s), qmin, qmax) * s

    @staticmethod
    def symbolic(g, x, scale, zero_point, qmin: int, qmax: int, axis: int):
        q = g.op("QuantizeLinear", x, scale, zero_point, axis_i=axis)
        code_type = torch.uint8 if qmin >= 0 else torch.int8
        if (qmin, qmax) != CODE_TYPES[code_type]:
            lo = g.op("Constant", value_t=torch.tensor(qmin, dtype=code_type))
            hi = g.op("Constant", value_t=torch.tensor(qmax, dtype=code_type))
            q = g.op("Clip", q, lo, hi)
        return g.op("DequantizeLinear", q, scale, zero_point, axis_i=axis)


class SignPm1(torch.autograd.Function):
    """sign(x) in {-1, +1} with sign(0) = +1; exports as Where(GreaterOrEqual(x, 0), 1, -1)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return sign(x)

    @staticmethod
    def symbolic(g, x):
        def const(v: float):
            return g.op("Constant", value_t=torch.tensor(v, dtype=torch.float32))

        return g.op("Where", g.op("GreaterOrEqual", x, const(0.0)), const(1.0), const(-1.0))


class FrozenWeight(nn.Module):
    """Constant int8 codes with one scale per output channel, `value = scale[c] · (code + code_offset)`; the
    latent weight passed to forward is ignored.

    fw = FrozenWeight(StatsQWeight(2).export_info(w))
    fw(w)   # == scale[c] * codes, exported as DequantizeLinear of an int8 initializer

    `code_offset` is 0 except for 8-bit StatsQ, whose odd codes 2k+1 reach ±255: it stores k (int8) with scale
    s/n and code_offset 0.5, exported as DequantizeLinear + Add(scale · 0.5). Opset 17 dequantizes no int16,
    and the alternatives fail in onnxruntime 1.32: int16 -> Cast -> Mul is folded to a float weight that its
    WeightBiasQuantization requantizes to int8 (half the resolution), and int16 -> Cast(int32) ->
    DequantizeLinear is fused into a QLinearConv that rejects int32 weights.
    """

    def __init__(self, info: QuantInfo) -> None:
        super().__init__()
        assert info.codes is not None and info.scale is not None, "a quantized weight has codes and scales"
        self.kind, self.bits = info.kind, info.bits
        codes, scale = info.codes.detach().to(torch.int32), info.scale.detach().float().reshape(-1)
        self.code_offset = 0.0
        if not (-128 <= info.qmin and info.qmax <= 127):
            if not bool((codes % 2 == 1).all()):
                raise ValueError(f"{info.kind} weight codes in [{info.qmin}, {info.qmax}] do not fit int8")
            codes, scale, self.code_offset = torch.div(codes - 1, 2, rounding_mode="floor"), 2 * scale, 0.5
        self.register_buffer("codes", codes.to(torch.int8))
        self.register_buffer("scale", scale.clone())
        self.register_buffer("zero_point", torch.zeros(codes.shape[0], dtype=torch.int8))
        half = (scale * self.code_offset).view(-1, *[1] * (codes.dim() - 1))
        self.register_buffer("scaled_offset", half if self.code_offset else None)

    def forward(self, weight: Tensor | None = None) -> Tensor:
        w = dequantize_codes(self.codes, self.scale, self.zero_point, 0)
        return w if self.scaled_offset is None else w + self.scaled_offset


class FrozenActivation(nn.Module):
    """`value = scale · Q(x + shift) + offset` with constant parameters (module docstring for the ONNX form).

    fa = FrozenActivation(LsqActivation(4).export_info())   # after the quantizer was initialised
    """

    def __init__(self, info: QuantInfo) -> None:
        super().__init__()
        self.kind, self.bits, self.pm1, self.dynamic_offset = info.kind, info.bits, info.pm1, info.dynamic_offset
        self.qmin, self.qmax = info.qmin, info.qmax
        scale = info.scale.detach().float()
        self.register_buffer("scale", (scale.reshape(()) if scale.numel() == 1 else scale).clone())
        self.register_buffer("shift", None if info.shift is None else info.shift.detach().float().clone())
        self.register_buffer("offset", None if info.offset is None else info.offset.detach().float().clone())
        code_type = next((t for t, (lo, hi) in CODE_TYPES.items() if lo <= self.qmin and self.qmax <= hi), None)
        zp = None if code_type is None else torch.zeros(self.scale.shape, dtype=code_type)
        self.register_buffer("zero_point", zp)
        self.unit_scale = self.scale.numel() == 1 and float(self.scale) == 1.0

    def forward(self, x: Tensor) -> Tensor:
        if self.shift is not None:
            x = x + self.shift
        if self.pm1:
            y = SignPm1.apply(x)
            return y if self.unit_scale and self.offset is None else self._offset(y * self.scale)
        beta = x.min() if self.dynamic_offset else None
        if beta is not None:
            x = x - beta
        axis = x.dim() - 2 if self.scale.dim() == 1 else 0  # 1-D scales are per token (dim -2)
        if self.zero_point is not None:
            y = QuantizeClipDequantize.apply(x, self.scale, self.zero_point, self.qmin, self.qmax, axis)
        else:
            s = _along(self.scale, x, axis)
            y = torch.clamp(torch.round(x / s), self.qmin, self.qmax) * s
        return self._offset(y if beta is None else y + beta)

    def _offset(self, y: Tensor) -> Tensor:
        return y if self.offset is None else y + self.offset


@dataclass(frozen=True, eq=False)
class FrozenPart:
    """One quantized tensor of the frozen model: the layer it belongs to, which of its parts, and how."""

    layer: str  # module name of the QAT layer or QKR block
    part: str  # "weight", "activation" (the layer's input), or a QKR part: "qk", "t", "attn", "v_out"
    module: str  # module name of the frozen quantizer (its ONNX node scope)
    info: QuantInfo
    frozen: nn.Module | None  # the FrozenWeight or FrozenActivation; None where the weight stays float


_QKR_WEIGHTS = {"qk_quantizer": "qk"}
_QKR_ACTIVATIONS = {"input_quantizer": "activation", "t_quantizer": "t", "attn_quantizer": "attn",
                    "v_quantizer": "v_out"}


def freeze_quantizers(model: nn.Module) -> tuple[nn.Module, list[FrozenPart]]:
    """An eval-mode deep copy of `model` with every quantizer frozen, and one record per frozen tensor.

    Weights whose QuantInfo is "float" (BiPer stage 1) keep their quantizer, which traces as float maths.
    UsageError, naming every layer, if an activation quantizer was never initialised.
    """
    frozen = copy.deepcopy(model).eval()
    uninitialised = [n for n, m in frozen.named_modules() if isinstance(m, ActivationQuantizer) and not m._ready]
    if uninitialised:
        raise UsageError(f"activation quantizers never saw data: {', '.join(uninitialised)}; run "
                         f"edgebin.quant.qat.init_quantizers(model, batch) (or train) before exporting")
    parts: list[FrozenPart] = []
    with torch.no_grad():
        for name, m in list(frozen.named_modules()):
            if isinstance(m, (QATConv2d, QATLinear)):
                weights, acts, latent = {"weight_quantizer": "weight"}, {"input_quantizer": "activation"}, m.weight
            elif isinstance(m, QKRAttention):
                weights, acts, latent = _QKR_WEIGHTS, _QKR_ACTIVATIONS, m.qk_weight()
            else:
                continue
            for attr, part in weights.items():
                q: WeightQuantizer | None = getattr(m, attr)
                if q is None:
                    continue
                info = q.export_info(latent)
                new = None if info.kind == "float" else FrozenWeight(info)
                if new is None:
                    log.warning("%s: weights stay float in the export (%s)", name, info.note)
                else:
                    setattr(m, attr, new)
                parts.append(FrozenPart(name, part, f"{name}.{attr}", info, new))
            for attr, part in acts.items():
                q: ActivationQuantizer | None = getattr(m, attr)
                if q is not None:
                    info = q.export_info()
                    setattr(m, attr, new := FrozenActivation(info))
                    parts.append(FrozenPart(name, part, f"{name}.{attr}", info, new))
    return frozen, parts
