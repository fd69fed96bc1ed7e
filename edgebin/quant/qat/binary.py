"""Binary weights and activations with three estimators: clipped STE, ReSTE and BiPer.

    wq = BinaryWeight(ReSTESign(), scale="tensor")        # ReSTE: m·sign(W), m = mean|W| with gradient
    aq = BinaryActivation(ReSTESign(), channels=64, channel_dim=1)   # sign(x); o follows set_progress()
    wq = BinaryWeight(BiPerSign(omega=20), scale="learned", channels=64)
    aq = BinaryActivation(ApproxSign(), channels=64, channel_dim=1, normalize=True)   # BiPer's activation

Every binarizer maps 0 to +1 (the official codes use torch.sign, which gives 0; a 0 cannot be packed into one
bit). The estimators, as functions with the maths and as thin modules that hold their arguments:

- `ste_sign`: gradient 1 on |x| <= clip (1), else 0 (BNN, arXiv:1602.02830).
- `reste_sign`: gradient (1/o)|x|^((1-o)/o) on ε < |x| <= t, ε^(1/o)/ε on |x| <= ε, 0 beyond t, with t = 1.5,
  ε = 0.1 and o = 1 + (o_end - 1)(1 - cos(π/2 · progress)) (ReSTE, ICCV 2023, `DravenALG/ReSTE`).
- `approx_sign`: gradient max(0, 2 - 2|x|) (Bi-Real's ApproxSign; BiPer, ReCU, ReActNet activations).
- `biper_binarize`: stage 1 sin(ωW) (real valued), stage 2 sign(sin(ωW)) with gradient ω·cos(ωW) (identity
  through the sign); ω = 20 as in every BiPer script (BiPer, CVPR 2024, `edmav4/BiPer`).

Weight scales (`BinaryWeight(scale=...)`): "channel" α_c = mean|W_c| detached (XNOR/DoReFa as in BiBench),
"tensor" m = mean|W| not detached (ReSTE's code), "learned" a per-channel α initialised U[0, 1) (BiPer's code
applies it to the conv output; on the weights it is the same map), "none" (BNN).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from edgebin.quant.qat.quantizer import (
    ActivationQuantizer,
    QuantInfo,
    Quantizer,
    WeightQuantizer,
    channel_mean_abs,
    per_channel,
    sign,
)

SCALES = ("channel", "tensor", "learned", "none")


def ste_sign(x: Tensor, clip: float = 1.0) -> Tensor:
    """sign(x), sign(0) = +1; gradient 1 where |x| <= clip, else 0."""
    soft = x.clamp(-clip, clip)
    return soft + (sign(x) - soft).detach()


class _ReSTESign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, o: float, t: float, eps: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.o, ctx.t, ctx.eps = o, t, eps
        return sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        o, t, eps = ctx.o, ctx.t, ctx.eps
        a = x.abs()
        power = a.clamp(min=eps).pow((1 - o) / o) / o
        slope = torch.where(a <= eps, eps ** (1 / o) / eps, power)
        return grad * torch.where(a <= t, slope, 0.0), None, None, None


def reste_sign(x: Tensor, o: float, t: float = 1.5, eps: float = 0.1) -> Tensor:
    """sign(x) with the rectified power-function gradient of ReSTE (module docstring)."""
    return _ReSTESign.apply(x, o, t, eps)


def reste_power(progress: float, o_end: float = 3.0) -> float:
    """o = 1 + (o_end - 1)·(1 - cos(π/2·progress)): 1 at the start of training, o_end at the end."""
    return 1 + (o_end - 1) * (1 - math.cos(math.pi / 2 * progress))


class _ApproxSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (x,) = ctx.saved_tensors
        return grad * (2 - 2 * x.abs()).clamp(min=0)


def approx_sign(x: Tensor) -> Tensor:
    """sign(x) with gradient max(0, 2 - 2|x|) (Bi-Real ApproxSign)."""
    return _ApproxSign.apply(x)


def biper_binarize(w: Tensor, omega: float, stage: int) -> Tensor:
    """Stage 1: sin(ωW). Stage 2: sign(sin(ωW)) with the identity through the sign, so ∂/∂W = ω·cos(ωW)."""
    wave = torch.sin(omega * w)
    return wave if stage == 1 else wave + (sign(wave) - wave).detach()


def biper_penalty(w: Tensor, omega: float) -> Tensor:
    """mean(sin²(ωW)) = mean(½ - ½cos(2ωW)): BiPer's CIFAR regulariser, to be multiplied by τ."""
    return torch.sin(omega * w).pow(2).mean()


class SteSign(Quantizer):
    """sign with the clipped straight-through estimator."""

    bits = 1

    def __init__(self, clip: float = 1.0) -> None:
        super().__init__()
        if clip <= 0:
            raise ValueError(f"SteSign: clip must be > 0, got {clip}")
        self.clip = clip

    def forward(self, x: Tensor) -> Tensor:
        return ste_sign(x, self.clip)


class ReSTESign(Quantizer):
    """sign with ReSTE's estimator; `set_progress(fraction)` moves o along its cosine schedule."""

    bits = 1

    def __init__(self, o_end: float = 3.0, t: float = 1.5, eps: float = 0.1) -> None:
        super().__init__()
        if o_end < 1:
            raise ValueError(f"ReSTESign: o_end must be >= 1, got {o_end}")
        self.o_end, self.t, self.eps = o_end, t, eps
        self.register_buffer("o", torch.tensor(1.0))

    def set_progress(self, fraction: float) -> None:
        self.o.fill_(reste_power(min(max(fraction, 0.0), 1.0), self.o_end))

    def forward(self, x: Tensor) -> Tensor:
        return reste_sign(x, float(self.o), self.t, self.eps)

    def extra_repr(self) -> str:
        return f"o={float(self.o):.4g}, o_end={self.o_end}, t={self.t}"


class ApproxSign(Quantizer):
    """sign with the ApproxSign estimator max(0, 2 - 2|x|)."""

    bits = 1

    def forward(self, x: Tensor) -> Tensor:
        return approx_sign(x)


class BiPerSign(Quantizer):
    """BiPer's weight binarizer sign(sin(ωW)); stage 1 (sin only) is not binary. `stage` is in the state_dict."""

    bits = 1

    def __init__(self, omega: float = 20.0, stage: int = 1) -> None:
        super().__init__()
        if omega <= 0:
            raise ValueError(f"BiPerSign: omega must be > 0, got {omega}")
        self.omega = omega
        self.register_buffer("stage", torch.tensor(1))
        self.set_stage(stage)

    def set_stage(self, stage: int) -> None:
        if stage not in (1, 2):
            raise ValueError(f"BiPerSign: stage must be 1 (sine) or 2 (sign of sine), got {stage}")
        self.stage.fill_(stage)

    def forward(self, x: Tensor) -> Tensor:
        return biper_binarize(x, self.omega, int(self.stage))

    def extra_repr(self) -> str:
        return f"omega={self.omega}, stage={int(self.stage)}"


class BinaryWeight(WeightQuantizer):
    """Ŵ = scale · binarizer(W): SteSign, ReSTESign or BiPerSign times a channel, tensor or learned scale.

    wq = BinaryWeight(SteSign(), scale="channel")     # XNOR-style α_c·sign(W), α_c detached
    """

    bits = 1

    def __init__(self, binarizer: nn.Module, scale: str = "channel", channels: int = 0) -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"BinaryWeight: scale must be one of {', '.join(SCALES)}, got {scale!r}")
        if scale == "learned" and channels < 1:
            raise ValueError("BinaryWeight: scale='learned' needs the channel count")
        self.binarizer, self.scale_mode = binarizer, scale
        self.alpha = nn.Parameter(torch.rand(channels)) if scale == "learned" else None

    def scale(self, weight: Tensor) -> Tensor | None:
        """The scale tensor, broadcastable against the weight (None for scale='none')."""
        if self.scale_mode == "channel":
            return channel_mean_abs(weight).detach()
        if self.scale_mode == "tensor":
            return weight.abs().mean()
        if self.scale_mode == "learned":
            return self.alpha.view(-1, *([1] * (weight.dim() - 1)))
        return None

    @property
    def is_binary(self) -> bool:
        return not isinstance(self.binarizer, BiPerSign) or int(self.binarizer.stage) == 2

    def forward(self, weight: Tensor) -> Tensor:
        b = self.binarizer(weight)
        scale = self.scale(weight)
        return b if scale is None else b * scale

    def codes(self, weight: Tensor) -> Tensor:
        w = weight.detach()
        return sign(torch.sin(self.binarizer.omega * w)) if isinstance(self.binarizer, BiPerSign) else sign(w)

    def export_info(self, weight: Tensor) -> QuantInfo:
        if not self.is_binary:
            return QuantInfo("float", 32, note="BiPer stage 1 (sin) weights are real valued; train stage 2 first")
        scale = self.scale(weight)
        scale = torch.ones_like(weight) if scale is None else scale.detach().expand_as(weight)
        scale = scale.reshape(weight.shape[0], -1)[:, 0].clone()
        return QuantInfo("binary", 1, scale=scale, codes=self.codes(weight).to(torch.int8), qmin=-1, qmax=1, pm1=True)

    def extra_repr(self) -> str:
        return f"scale={self.scale_mode}"


class BinaryActivation(ActivationQuantizer):
    """sign(x + shift) ∈ {-1, +1} through a binarizer (SteSign, ReSTESign or ApproxSign).

    aq = BinaryActivation(ApproxSign(), channels=16, channel_dim=1, normalize=True)  # BiPer: x / sqrt(var + 1e-5)
    An input found non-negative on the first batch (post-ReLU) would binarize to a constant +1; its shift is
    set to minus the channel means of that batch, so sign splits each channel at its mean (ReActNet's RSign
    threshold). `learnable_shift=True` trains the shift (RSign/BiT); otherwise it is a fixed buffer.
    """

    def __init__(self, binarizer: nn.Module, channels: int, channel_dim: int = -1, normalize: bool = False,
                 learnable_shift: bool = False, signed: bool | None = None) -> None:
        super().__init__(1, signed)
        self.binarizer, self.normalize, self.channel_dim = binarizer, normalize, channel_dim
        shift = torch.zeros(channels)
        if learnable_shift:
            self.shift = nn.Parameter(shift)
        else:
            self.register_buffer("shift", shift)

    def _init_from(self, x: Tensor) -> None:
        if not self.is_signed:
            dims = [d for d in range(x.dim()) if d != self.channel_dim % x.dim()]
            self.shift.data.copy_(-x.mean(dim=dims))

    def quantize(self, x: Tensor) -> Tensor:
        x = x + per_channel(self.shift, self.channel_dim)
        if self.normalize and self.training:
            dims = tuple(range(1, x.dim()))
            x = x / torch.sqrt(x.var(dim=dims, keepdim=True) + 1e-5)
        return self.binarizer(x)

    def export_info(self) -> QuantInfo:
        shift = per_channel(self.shift, self.channel_dim).detach().clone()
        return QuantInfo("binary", 1, scale=torch.tensor(1.0), qmin=-1, qmax=1, signed=True, shift=shift, pm1=True,
                         note="code = sign(x + shift), sign(0) = +1")
