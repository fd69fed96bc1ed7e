"""CGA, confidence-guided annealing: OFQ's fine-tuning phase after StatsQ QAT (`nbasyl/OFQ` cga.py).

    cga = ConfidenceGuidedAnnealing(model, boundary_range=0.005)
    for x, y in loader:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        cga.freeze_gradients()        # recompute the masks, zero the frozen weights' gradients
        optimizer.step()
        cga.restore_frozen()          # put frozen weights back: AdamW's decay and moments cannot move them
    cga.close()

`edgebin.train` does the zeroing and restoring itself: it calls `cga_frozen_masks(model)` after backward and
`on_phase(model, "cga")` at the start of the phase (edgebin.quant.qat.training).

A StatsQ weight keeps training only while it lies within `boundary_range` quantization steps of a rounding
threshold (low confidence); every confidently rounded weight is frozen. The masks are recomputed every step
because the statistics scale drifts as the trainable weights move. With BR = 0.005 about 1% of the weights
train. Inside a QKR product matrix the out-of-boundary entries are detached in the forward instead; W_q and W_k
themselves are not frozen (as the code). The official phase runs 30 epochs at a constant learning rate of 1e-5
(timm's cosine schedule past its end); the schedule is the trainer's to choose.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from edgebin.quant.qat.modules import QATConv2d, QATLinear
from edgebin.quant.qat.qkr import QKRAttention
from edgebin.quant.qat.statsq import StatsQWeight, cga_trainable

BOUNDARY_RANGE = 0.005  # OFQ's scripts; its help text says 0.005 or 0.007 work best


def _statsq_layers(model: nn.Module) -> dict[str, QATConv2d | QATLinear]:
    return {name: m for name, m in model.named_modules()
            if isinstance(m, (QATConv2d, QATLinear)) and isinstance(m.weight_quantizer, StatsQWeight)}


def cga_frozen_masks(model: nn.Module, boundary_range: float = BOUNDARY_RANGE) -> dict[str, Tensor]:
    """{parameter name: True where frozen} for every StatsQ weight, from the current weights (call after backward).

    The trainer zeroes those gradients and, after the optimizer step, writes the frozen values back.
    """
    return {f"{name}.weight": ~cga_trainable(m.weight, m.weight_quantizer.bits, boundary_range)
            for name, m in _statsq_layers(model).items()}


def set_qkr_annealing(model: nn.Module, boundary_range: float | None) -> None:
    """Detach out-of-boundary entries of every QKR product matrix in training (None: stop)."""
    for m in model.modules():
        if isinstance(m, QKRAttention) and isinstance(m.qk_quantizer, StatsQWeight):
            m.qk_quantizer.cga_boundary_range = boundary_range


class ConfidenceGuidedAnnealing:
    """Freezes confidently quantized StatsQ weights of `model`, step by step (see the module docstring)."""

    def __init__(self, model: nn.Module, boundary_range: float = BOUNDARY_RANGE) -> None:
        if not 0 < boundary_range < 0.5:
            raise ValueError(f"CGA: boundary_range must be in (0, 0.5), got {boundary_range}")
        self.model, self.boundary_range = model, boundary_range
        self.layers = _statsq_layers(model)
        set_qkr_annealing(model, boundary_range)
        self._saved: dict[str, tuple[Tensor, Tensor]] = {}

    def masks(self) -> dict[str, Tensor]:
        """True where a weight is still trainable, per layer name, for the current weights."""
        return {name: cga_trainable(m.weight, m.weight_quantizer.bits, self.boundary_range)
                for name, m in self.layers.items()}

    @torch.no_grad()
    def freeze_gradients(self) -> None:
        """Call after backward: zero the frozen weights' gradients and remember their values."""
        for name, trainable in self.masks().items():
            weight = self.layers[name].weight
            frozen = ~trainable
            if weight.grad is not None:
                weight.grad.masked_fill_(frozen, 0.0)
            self._saved[name] = (frozen, weight.detach().clone())

    @torch.no_grad()
    def restore_frozen(self) -> None:
        """Call after optimizer.step(): frozen weights get back their pre-step values, bit for bit."""
        for name, (frozen, before) in self._saved.items():
            weight = self.layers[name].weight
            weight.copy_(torch.where(frozen, before, weight))
        self._saved.clear()

    def frozen_fraction(self) -> float:
        """The fraction of CGA-managed weights that the current masks freeze."""
        masks = self.masks().values()
        total = sum(m.numel() for m in masks)
        return 1.0 - sum(int(m.sum()) for m in masks) / total if total else 0.0

    def close(self) -> None:
        """Stop detaching inside QKR product matrices (the end of the CGA phase)."""
        set_qkr_annealing(self.model, None)
