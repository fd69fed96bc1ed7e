"""What a QAT training loop calls on a prepared model: initialisation, schedules, optimizer groups, counters.

    init_quantizers(model, first_batch)           # before the optimizer (and before DDP wraps the model)
    opt = torch.optim.AdamW(param_groups(model, weight_decay=0.05), lr=5e-4)
    tracker = OscillationTracker(model)
    for epoch in range(epochs):
        set_progress(model, epoch / epochs)        # ReSTE's power o; the other quantizers ignore it
        for x, y in loader:
            loss = criterion(model(x), y) + tau * biper_regularizer(model)   # tau: BiPer CIFAR runs only
            opt.zero_grad(); loss.backward(); opt.step()
            tracker.update()                       # integer level flips since the last step
    set_biper_stage(model, 2)                      # BiPer stage 2: sign(sin(ωW)), from the stage-1 weights
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn

from edgebin.quant.qat.binary import BinaryWeight, BiPerSign, biper_penalty
from edgebin.quant.qat.cga import BOUNDARY_RANGE, set_qkr_annealing
from edgebin.quant.qat.qkr import QKRAttention
from edgebin.quant.qat.quantizer import ActivationQuantizer, Quantizer


def quantizers(model: nn.Module) -> Iterator[tuple[str, Quantizer]]:
    """Every quantizer in the model (weight, activation and the sign functions inside them), by name."""
    for name, m in model.named_modules():
        if isinstance(m, Quantizer):
            yield name, m


def set_progress(model: nn.Module, fraction: float) -> None:
    """Tell scheduled quantizers how far training is (0 at the start, 1 at the end); ReSTE's o follows it."""
    for _, q in quantizers(model):
        if hasattr(q, "set_progress"):
            q.set_progress(fraction)


def set_biper_stage(model: nn.Module, stage: int) -> int:
    """Switch every BiPer weight binarizer to `stage` (1: sin, 2: sign of sin); returns how many changed."""
    signs = [q for _, q in quantizers(model) if isinstance(q, BiPerSign)]
    for q in signs:
        q.set_stage(stage)
    return len(signs)


def init_quantizers(model: nn.Module, x: Tensor) -> None:
    """Set every activation quantizer's data-dependent parameters from batch `x` (one eval-mode forward).

    Call it before building the optimizer. Under torch.distributed every rank must call it (it is collective):
    rank 0's values are broadcast, so the replicas start equal even from different batches. Without it, each
    quantizer initialises itself on the first batch it sees, which under DDP would differ between ranks.
    """
    acts = [q for _, q in quantizers(model) if isinstance(q, ActivationQuantizer)]
    for q in acts:
        q._ready, q._broadcast_after = False, True
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        model.train(was_training)
        for q in acts:
            q._broadcast_after = False
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        with torch.no_grad():
            for q in acts:
                for t in [*q.parameters(recurse=False), *q.buffers(recurse=False)]:
                    dist.broadcast(t.data, src=0)


def on_phase(model: nn.Module, phase: str) -> None:
    """Start of a training phase: "qat", or "cga" (QKR product matrices detach their confident entries)."""
    if phase not in ("qat", "cga"):
        raise ValueError(f"on_phase: phase must be 'qat' or 'cga', got {phase!r}")
    set_qkr_annealing(model, BOUNDARY_RANGE if phase == "cga" else None)


def biper_regularizer(model: nn.Module) -> Tensor:
    """Σ over BiPer layers of mean(sin²(ωW)); BiPer's CIFAR runs add τ times this (τ 0.037, stage 2: 0.0468)."""
    total = torch.zeros(())
    for m in model.modules():
        wq = getattr(m, "weight_quantizer", None)
        if isinstance(wq, BinaryWeight) and isinstance(wq.binarizer, BiPerSign):
            total = total.to(m.weight.device) + biper_penalty(m.weight, wq.binarizer.omega)
    return total


def _latent_weights(model: nn.Module) -> list[nn.Parameter]:
    weights = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            weights.append(m.weight)
        elif isinstance(m, QKRAttention):
            weights += [m.q_weight, m.k_weight]
    return weights


def param_groups(model: nn.Module, weight_decay: float, quantizer_lr: float | None = None) -> list[dict]:
    """Optimizer groups: conv/linear weights decay; biases, norms, embeddings and quantizer parameters do not.

    `quantizer_lr` gives quantizer parameters (LSQ steps, elastic α, shifts, BiPer α) their own learning rate
    (BiT trains α at 1e-4). Only parameters that require gradients are included.
    """
    decay = {id(p): p for p in _latent_weights(model) if p.requires_grad}
    quant = {id(p): p for _, q in quantizers(model) for p in q.parameters() if p.requires_grad}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in decay and id(p) not in quant]
    groups = [{"params": list(decay.values()), "weight_decay": weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    quant_group: dict = {"params": list(quant.values()), "weight_decay": 0.0}
    if quantizer_lr is not None:
        quant_group["lr"] = quantizer_lr
    return [g for g in [*groups, quant_group] if g["params"]]


class OscillationTracker:
    """Counts integer level flips of quantized weights between calls of `update()` (after each optimizer step).

    A flip is any change of a weight's integer level; an oscillation is a flip in the direction opposite to
    that weight's previous flip (Nagel et al., "Overcoming oscillations in QAT", ICML 2022). OFQ's claim:
    StatsQ weights oscillate less than LSQ's, whose learned scale moves the thresholds. `max_bits` leaves out
    wider layers (max_bits=4 skips the 8-bit first and last layers, so a W2 comparison counts W2 weights only).
    """

    def __init__(self, model: nn.Module, max_bits: int | None = None) -> None:
        def bits(m: nn.Module) -> int:
            q = getattr(m, "weight_quantizer", None) or getattr(m, "qk_quantizer", None)
            return q.bits

        self.layers = {name: m for name, m in model.named_modules()
                       if hasattr(m, "weight_codes") and m.weight_codes() is not None
                       and (max_bits is None or bits(m) <= max_bits)}
        self._prev = {name: m.weight_codes() for name, m in self.layers.items()}
        self._direction = {name: torch.zeros_like(c, dtype=torch.int8) for name, c in self._prev.items()}
        self.flips = dict.fromkeys(self.layers, 0)
        self.oscillations = dict.fromkeys(self.layers, 0)
        self.steps = 0

    @torch.no_grad()
    def update(self) -> None:
        for name, m in self.layers.items():
            codes = m.weight_codes()
            step = torch.sign(codes - self._prev[name]).to(torch.int8)
            moved = step != 0
            last = self._direction[name]
            self.flips[name] += int(moved.sum())
            self.oscillations[name] += int((moved & (last != 0) & (step != last)).sum())
            self._direction[name] = torch.where(moved, step, last)
            self._prev[name] = codes
        self.steps += 1

    def totals(self) -> dict[str, int]:
        """Flips and oscillations summed over layers, the number of weights tracked and of updates."""
        return {"flips": sum(self.flips.values()), "oscillations": sum(self.oscillations.values()),
                "weights": sum(c.numel() for c in self._prev.values()), "steps": self.steps}
