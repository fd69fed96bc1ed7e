"""Quantization-aware training (or plain fine-tuning): AdamW with warm-up and cosine decay, optional distillation
from the FP32 teacher, the CGA phase, progress bars, per-epoch checkpoints with exact resume, and DDP.

    from edgebin.quant import qat
    teacher = copy.deepcopy(model).eval()               # the FP32 model, before quantizers are swapped in
    qat.prepare(model, qat.make_recipe("statsq", bits=2, act_bits=2))
    hooks = TrainHooks(init=qat.init_quantizers, param_groups=qat.param_groups, set_progress=qat.set_progress,
                       on_phase=qat.on_phase, frozen_masks=qat.cga_frozen_masks)
    config = TrainConfig(epochs=30, lr=5e-4, cga_epochs=3, checkpoint=Path("out/train-state.pt"), resume=True)
    result = train(model, (x_train, y_train), (x_test, y_test), config, teacher=teacher, hooks=hooks)
    result.history[-1].eval_accuracy

Data are (x, y) pairs of tensors or NumPy arrays, x already normalised as the model expects it; `augment(x, gen)`
(for example `random_shift_flip`) changes each training batch. Quantizers plug in through `TrainHooks`: `init`
(data-dependent initialisation from the first batch), `param_groups`, `set_progress(model, fraction)` for their
schedules, `on_phase(model, "qat" | "cga")`, `frozen_masks(model)` for CGA, `extra_loss` and `after_step`. The
model is trained in place; the training state goes to `config.checkpoint` after every epoch, and with `resume`
a run continues from it when it exists (and starts afresh when it does not, so a restarted job reruns as is).

Several processes: `torchrun --standalone --nproc_per_node 2 -m edgebin.train ...`. `train` sees torchrun's
environment (WORLD_SIZE, RANK, MASTER_ADDR, ...), starts a gloo process group unless one is running, wraps the
model in DistributedDataParallel and splits each epoch with a DistributedSampler. `batch_size` is the global
batch; each of the W processes takes batch_size / W. Each rank keeps BatchNorm running statistics of its own
batches and after every epoch they are averaged over the ranks (SyncBatchNorm needs a GPU); then the ranks check
that they hold the same weights and buffers. Only rank 0 writes checkpoints and reports progress.

Choices, from research/methods.md §1 (b) OFQ and §2 (b) TBT:
- AdamW; decoupled weight decay on conv and linear weights only: biases, norms, 1-D quantizer parameters and
  DeiT's `pos_embed`/`cls_token` get none (timm's `filter_bias_and_bn`, which OFQ uses).
- lr per step: linear warm-up to `lr`, then cosine decay to `min_lr`. OFQ (timm) steps per epoch and warms up
  from 1e-6; per step suits runs of a few epochs. TBT uses a linear decay with 5 % warm-up and wd 0.
- Distillation: loss = CE(student, y) + weight · T² · KL(softmax(teacher/T) ‖ softmax(student/T)). OFQ and TBT
  both use CE + 1 · soft-CE against the teacher's softmax at T = 1; KL differs from that soft-CE by the
  teacher's entropy, a constant, so the gradients are the same and the KD term reads 0 when they agree. T² keeps
  the gradient scale of T ≠ 1 comparable (Hinton et al., 2015).
- CGA (OFQ's cga.py): after the `epochs` QAT epochs, `cga_epochs` more at a constant `cga_lr` (default `min_lr`,
  which is what timm's scheduler returns in cga.py; the paper calls it annealing, `cga_anneal=True` decays it
  to 0 by cosine instead). Each step `hooks.frozen_masks` names the frozen entries; their gradients are zeroed
  and, after the AdamW step, their old values are written back, so neither weight decay nor Adam's moments move
  them (zeroing the gradient alone is not enough with AdamW, methods.md §1 (f)).
- BatchNorm re-estimation (Nagel et al., "Overcoming Oscillations in QAT", ICML 2022, §4.1): after every
  epoch the running statistics are recomputed as the plain average over `bn_reestimate_batches` training
  batches (no augmentation) with the epoch's final weights. The running averages collected during the epoch
  mix many weight states; when weights flip sign from step to step (binary and 2-bit weights, BiPer's stage 2
  most of all), they describe none of them, and eval-mode accuracy falls far below train-mode accuracy (BiPer
  W1A1 on ResNet-8, 9 epochs, tools/bench/qat.py: 55.86 % without, 84.83 % with re-estimation). Training never
  reads the running statistics, so the trajectory is unchanged; 0 turns it off. Under DDP each rank averages
  its own batches and `_average_buffers` merges the ranks.
- Exact resume: each epoch reseeds Python, NumPy and torch from (seed, epoch, rank); the sampler shuffles with
  (seed, epoch); the lr is a function of the step. So a checkpoint needs only the model (with its buffers), the
  optimizer state and the step to continue bit for bit on every rank, even though only rank 0 writes it.
  Results depend on the thread count and the number of processes. State a hook keeps outside the model is not
  saved.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import copy
import dataclasses
import functools
import io
import logging
import math
import os
import random
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from edgebin.atomic import atomic_write_bytes
from edgebin.errors import DataError, EdgebinError, ModelLoadError, UsageError

log = logging.getLogger(__name__)

STATE_VERSION = 1  # of the training-state file that `resume` reads
NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token")  # DeiT/timm `no_weight_decay()` names
# Fields that do not change the trajectory, so a resumed run may differ in them.
_RESUMABLE_FIELDS = ("checkpoint", "resume", "eval_batch_size")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """How to train: epochs and batch, AdamW and its schedule, distillation, the CGA phase, checkpoints.

    config = TrainConfig(epochs=10, lr=5e-4, cga_epochs=2, checkpoint=Path("out/train-state.pt"))
    """

    epochs: int = 10  # QAT (or fine-tuning) epochs, before the CGA phase
    batch_size: int = 128  # global: split evenly over the DDP processes
    lr: float = 5e-4  # peak, reached at the end of warm-up
    min_lr: float = 1e-5  # end of the cosine decay
    weight_decay: float = 0.05  # decoupled (AdamW), conv and linear weights only
    warmup_epochs: float = 1.0
    seed: int = 0
    distill_weight: float = 1.0  # weight of the KD term; used only when a teacher is given
    distill_temperature: float = 1.0
    cga_epochs: int = 0  # CGA phase after the QAT epochs; needs hooks.frozen_masks
    cga_lr: float | None = None  # None: min_lr, as in OFQ's cga.py
    cga_anneal: bool = False  # cosine-decay cga_lr to 0 over the phase instead of holding it
    checkpoint: Path | None = None  # training state, rewritten atomically after every epoch
    resume: bool = False  # continue from `checkpoint` if it exists
    eval_batch_size: int = 1000
    channels_last: bool = True  # several times faster for convolutions on CPU
    deterministic: bool = True  # torch.use_deterministic_algorithms during training
    bn_reestimate_batches: int = 32  # after every epoch, BatchNorm statistics recomputed over this many batches

    def __post_init__(self) -> None:
        problems = [
            *(f"{name} must be >= 0, got {getattr(self, name)}"
              for name in ("epochs", "cga_epochs", "min_lr", "weight_decay", "warmup_epochs", "distill_weight",
                           "bn_reestimate_batches")
              if getattr(self, name) < 0),
            *(f"{name} must be >= 1, got {getattr(self, name)}"
              for name in ("batch_size", "eval_batch_size") if getattr(self, name) < 1),
        ]
        if self.epochs + self.cga_epochs < 1:
            problems.append("epochs + cga_epochs must be >= 1")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        elif self.min_lr > self.lr:
            problems.append(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if self.epochs and self.warmup_epochs > self.epochs:  # warm-up is part of the QAT epochs
            problems.append(f"warmup_epochs ({self.warmup_epochs}) must not exceed epochs ({self.epochs})")
        if not self.distill_temperature > 0:
            problems.append(f"distill_temperature must be > 0, got {self.distill_temperature}")
        if self.cga_lr is not None and not self.cga_lr > 0:
            problems.append(f"cga_lr must be > 0, got {self.cga_lr}")
        if self.resume and self.checkpoint is None:
            problems.append("resume needs a checkpoint path")
        if problems:
            raise UsageError("TrainConfig: " + "; ".join(problems))


@dataclass(frozen=True)
class TrainHooks:
    """Where quantizers plug into the loop; every hook gets the bare model, never the DDP wrapper.

    hooks = TrainHooks(init=qat.init_quantizers, param_groups=qat.param_groups, set_progress=qat.set_progress,
                       on_phase=qat.on_phase, frozen_masks=qat.cga_frozen_masks)
    """

    # Once, on a fresh start (not on resume), before the optimizer and DDP: this rank's first training batch.
    init: Callable[[nn.Module, Tensor], None] | None = None
    # AdamW parameter groups for (model, weight_decay), instead of this module's `param_groups`.
    param_groups: Callable[[nn.Module, float], list[dict]] | None = None
    # Before every step: the fraction of the QAT steps done, in [0, 1); 1.0 throughout the CGA phase.
    set_progress: Callable[[nn.Module, float], None] | None = None
    # At the start of each phase ("qat", "cga") in this process, also after a resume. Must not add parameters.
    on_phase: Callable[[nn.Module, str], None] | None = None
    # CGA phase, after backward: {parameter name: bool tensor of its shape, True = frozen}.
    frozen_masks: Callable[[nn.Module], Mapping[str, Tensor]] | None = None
    # Added to every step's loss (a regularizer such as BiPer's τ · Σ mean sin²(ωW)).
    extra_loss: Callable[[nn.Module], Tensor] | None = None
    # After every optimizer step, with the number of steps done (for oscillation counts and the like).
    after_step: Callable[[nn.Module, int], None] | None = None


class Progress(Protocol):
    """Where the loop reports progress: the protocol of `edgebin.pipeline.Progress` (`cli.RichProgress` draws it)."""

    def stage(self, description: str, total: int | None = None) -> contextlib.AbstractContextManager[
        Callable[[int], None]
    ]: ...


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch did; accuracies are fractions."""

    epoch: int  # 1-based, counting the CGA epochs after the QAT ones
    phase: str  # "qat" or "cga"
    lr: float  # at the epoch's last step
    train_loss: float  # mean over the epoch's batches (CE + KD when distilling)
    train_accuracy: float
    eval_accuracy: float | None
    seconds: float


@dataclass(frozen=True)
class TrainResult:
    """The epochs run (including those a resume skipped), the steps taken and the number of processes."""

    history: tuple[EpochRecord, ...]
    steps: int
    resumed_epochs: int  # epochs read from the checkpoint instead of run
    world_size: int

    @property
    def eval_accuracy(self) -> float | None:
        """Evaluation accuracy after the last epoch."""
        return self.history[-1].eval_accuracy if self.history else None


# --- the pieces: schedule, loss, parameter groups, augmentation, evaluation --------------------------------


def warmup_cosine_lr(step: int, *, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float = 0.0) -> float:
    """lr for 0-based `step`: peak·(step+1)/warmup during warm-up, then min + ½(peak − min)(1 + cos(π·t))
    with t = (step − warmup)/(total − warmup)."""
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + 0.5 * (peak_lr - min_lr) * (1 + math.cos(math.pi * t))


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """lr for global `step`: warm-up and cosine over the QAT epochs, then the CGA phase's lr."""
    qat_steps = config.epochs * steps_per_epoch
    if step < qat_steps:
        warmup = round(config.warmup_epochs * steps_per_epoch)
        return warmup_cosine_lr(step, total_steps=qat_steps, warmup_steps=warmup, peak_lr=config.lr,
                                min_lr=config.min_lr)
    cga_lr = config.min_lr if config.cga_lr is None else config.cga_lr
    if config.cga_anneal:
        return warmup_cosine_lr(step - qat_steps, total_steps=config.cga_epochs * steps_per_epoch, warmup_steps=0,
                                peak_lr=cga_lr)
    return cga_lr


def distillation_loss(student: Tensor, teacher: Tensor, labels: Tensor, *, temperature: float = 1.0,
                      weight: float = 1.0) -> Tensor:
    """CE(student, labels) + weight · T² · KL(softmax(teacher/T) ‖ softmax(student/T)), batch mean."""
    hard = F.cross_entropy(student, labels)
    soft = F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    return hard + weight * temperature**2 * soft


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on trainable parameters with 2+ dims, none on the rest and on NO_DECAY_NAMES.

    A model's timm-style `no_weight_decay()` names are honoured too. A quantized model should use its quantizer
    package's groups (`TrainHooks.param_groups`), which know which parameters are latent weights. Entries that
    CGA freezes need no per-entry decay mask: `train` writes them back after every step.
    """
    extra = getattr(model, "no_weight_decay", None)
    skip = set(extra()) if callable(extra) else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name in skip or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES:
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def random_shift_flip(x: Tensor, generator: torch.Generator, *, shift_px: int = 2, flip: bool = True,
                      fill: Sequence[float] | None = None) -> Tensor:
    """Shift each (N, C, H, W) image by up to `shift_px` pixels and, with `flip`, mirror half of them left-right.

    The uncovered border takes `fill` per channel (default 0): pass the normalised value of black when `x` is
    already normalised.
    """
    n, c, h, w = x.shape
    if fill is None:
        padded = F.pad(x, (shift_px,) * 4)
    else:
        padded = x.new_tensor(fill).view(1, c, 1, 1).expand(n, c, h + 2 * shift_px, w + 2 * shift_px).clone()
        padded[:, :, shift_px : shift_px + h, shift_px : shift_px + w] = x
    dy = torch.randint(0, 2 * shift_px + 1, (n, 1, 1), generator=generator)
    dx = torch.randint(0, 2 * shift_px + 1, (n, 1, 1), generator=generator)
    rows = dy + torch.arange(h).view(1, h, 1)
    cols = dx + torch.arange(w).view(1, 1, w)
    shifted = padded.permute(0, 2, 3, 1)[torch.arange(n).view(n, 1, 1), rows, cols].permute(0, 3, 1, 2)
    if not flip:
        return shifted
    mirrored = torch.rand(n, generator=generator) < 0.5
    return torch.where(mirrored.view(n, 1, 1, 1), shifted.flip(3), shifted)


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1000, channels_last: bool = True) -> float:
    """Top-1 accuracy as a fraction, in eval mode; under DDP each rank takes every W-th sample and they add up."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if _distributed() else (0, 1)
    was_training = model.training
    model.eval()
    xs, ys = x[rank::world], y[rank::world]
    correct = 0
    for i in range(0, len(xs), batch_size):
        logits = model(_layout(xs[i : i + batch_size], channels_last))
        correct += int((logits.argmax(1) == ys[i : i + batch_size]).sum())
    model.train(was_training)
    counts = torch.tensor([correct, len(xs)], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(counts)
    return float(counts[0] / counts[1])


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, x: Tensor, batches: int, batch_size: int, *,
                         channels_last: bool = True) -> int:
    """Recompute every BatchNorm's running mean and variance as the average of the batch statistics of the first
    `batches` batches of `x`, with the weights as they are now; returns the batches used (0: no BatchNorm)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the plain mean over the batches
    was_training = model.training
    model.train()
    used = 0
    try:
        for i in range(0, min(len(x), batches * batch_size), batch_size):
            model(_layout(x[i : i + batch_size], channels_last))
            used += 1
    finally:
        model.train(was_training)
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
    return used


# --- the loop -----------------------------------------------------------------------------------------------


def train(
    model: nn.Module,
    train_data: tuple[Tensor | np.ndarray, Tensor | np.ndarray],
    eval_data: tuple[Tensor | np.ndarray, Tensor | np.ndarray] | None,
    config: TrainConfig,
    *,
    teacher: nn.Module | None = None,
    hooks: TrainHooks | None = None,
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train `model` in place (see the module docstring); returns the per-epoch history."""
    hooks = hooks or TrainHooks()
    if config.cga_epochs and hooks.frozen_masks is None:
        raise UsageError("cga_epochs > 0 needs the quantizer's CGA freeze (TrainHooks.frozen_masks)")
    x, y = _tensors(train_data, "training data")
    x_eval, y_eval = _tensors(eval_data, "evaluation data") if eval_data is not None else (None, None)
    rank, world = _join_process_group()
    with _training_mode(config):
        return _Run(model, x, y, x_eval, y_eval, config, teacher, hooks, augment, progress, rank, world).run()


class _Run:
    """One call of `train`: the state the epochs share."""

    def __init__(self, model, x, y, x_eval, y_eval, config: TrainConfig, teacher, hooks: TrainHooks, augment,
                 progress, rank: int, world: int) -> None:
        self.model, self.config, self.teacher, self.hooks, self.augment = model, config, teacher, hooks, augment
        self.x, self.y, self.x_eval, self.y_eval = x, y, x_eval, y_eval
        self.rank, self.world = rank, world
        self.progress = progress if progress is not None and rank == 0 else _NoProgress()
        if config.batch_size % world:
            raise UsageError(f"batch_size {config.batch_size} does not split evenly over {world} processes")
        self.batch = config.batch_size // world
        self.sampler = DistributedSampler(range(len(x)), num_replicas=world, rank=rank, shuffle=True,
                                          seed=config.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // self.batch
        if self.steps_per_epoch == 0:
            raise DataError(f"{len(x)} training samples make no batch of {config.batch_size}; lower batch_size")
        self.total_epochs = config.epochs + config.cga_epochs

    def run(self) -> TrainResult:
        model, config, hooks = self.model, self.config, self.hooks
        fmt = torch.channels_last if config.channels_last else torch.contiguous_format
        model.to(memory_format=fmt)
        if self.teacher is not None:
            self.teacher.to(memory_format=fmt).eval()
        state = self._load_state()
        if state is None and hooks.init:
            self.sampler.set_epoch(0)
            first = torch.tensor(list(self.sampler)[: self.batch], dtype=torch.long)
            hooks.init(model, _layout(self.x[first], config.channels_last))
        groups = (hooks.param_groups or param_groups)(model, config.weight_decay)
        optimizer = torch.optim.AdamW(groups, lr=config.lr)
        start_epoch, step, history = 0, 0, []
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            start_epoch, step = int(state["epoch"]), int(state["step"])
            history = [EpochRecord(**r) for r in state["history"]]
        # Each rank keeps its own BatchNorm statistics during the epoch (training uses batch statistics);
        # `_average_buffers` merges them at the end, a better estimate than DDP's copies of rank 0's.
        net = DistributedDataParallel(model, forward_sync_buffers=False) if self.world > 1 else model
        phase = None
        try:
            for epoch in range(start_epoch, self.total_epochs):
                if self._phase(epoch) != phase:
                    phase = self._phase(epoch)
                    if hooks.on_phase:
                        hooks.on_phase(model, phase)
                step, record = self._epoch(net, optimizer, epoch, step)
                history.append(record)
                self._save(optimizer, epoch + 1, step, history)
        finally:
            model.to(memory_format=torch.contiguous_format)
            if self.teacher is not None:
                self.teacher.to(memory_format=torch.contiguous_format)
        return TrainResult(history=tuple(history), steps=step, resumed_epochs=start_epoch, world_size=self.world)

    def _phase(self, epoch: int) -> str:
        return "qat" if epoch < self.config.epochs else "cga"

    def _epoch(self, net: nn.Module, optimizer, epoch: int, step: int) -> tuple[int, EpochRecord]:
        config, model, hooks = self.config, self.model, self.hooks
        phase, started = self._phase(epoch), time.perf_counter()
        _reseed(config.seed, epoch, self.rank)
        generator = torch.Generator().manual_seed(_seed_of(config.seed, epoch, self.rank, 1))
        self.sampler.set_epoch(epoch)
        order = torch.tensor(list(self.sampler), dtype=torch.long)
        qat_steps = config.epochs * self.steps_per_epoch
        sums = torch.zeros(3, dtype=torch.float64)  # loss · n, correct, n
        net.train()
        title = f"{phase.upper()} epoch {epoch + 1}/{self.total_epochs}"
        with self.progress.stage(title, total=self.steps_per_epoch) as advance:
            for b in range(self.steps_per_epoch):
                idx = order[b * self.batch : (b + 1) * self.batch]
                xb, yb = self.x[idx], self.y[idx]
                if self.augment is not None:
                    xb = self.augment(xb, generator)
                xb = _layout(xb, config.channels_last)
                lr = learning_rate(config, step, self.steps_per_epoch)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if hooks.set_progress:
                    hooks.set_progress(model, step / qat_steps if step < qat_steps else 1.0)
                logits = net(xb)
                loss = self._loss(logits, xb, yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                frozen = _freeze(model, hooks.frozen_masks(model)) if phase == "cga" else []
                optimizer.step()
                _restore(frozen)
                step += 1
                if hooks.after_step:
                    hooks.after_step(model, step)
                sums += torch.tensor([float(loss.detach()) * len(yb), int((logits.argmax(1) == yb).sum()), len(yb)],
                                     dtype=torch.float64)
                advance(b + 1)
        if config.bn_reestimate_batches:
            reestimate_batchnorm(model, self.x[order[: config.bn_reestimate_batches * self.batch]],
                                 config.bn_reestimate_batches, self.batch,
                                 channels_last=config.channels_last)
        if self.world > 1:
            dist.all_reduce(sums)
            _average_buffers(model)  # BatchNorm statistics over all ranks' batches, not only rank 0's
            _check_replicas(model)
        eval_acc = None
        if self.x_eval is not None:
            eval_acc = evaluate(model, self.x_eval, self.y_eval, batch_size=config.eval_batch_size,
                                channels_last=config.channels_last)
        record = EpochRecord(epoch=epoch + 1, phase=phase, lr=lr, train_loss=float(sums[0] / sums[2]),
                             train_accuracy=float(sums[1] / sums[2]), eval_accuracy=eval_acc,
                             seconds=time.perf_counter() - started)
        if self.rank == 0:
            shown = "-" if eval_acc is None else f"{eval_acc:.2%}"
            log.info("%s: loss %.4f, train %.2f%%, eval %s, lr %.3g, %.1f s", title, record.train_loss,
                     100 * record.train_accuracy, shown, lr, record.seconds)
        return step, record

    def _loss(self, logits: Tensor, xb: Tensor, yb: Tensor) -> Tensor:
        if self.teacher is None:
            loss = F.cross_entropy(logits, yb)
        else:
            with torch.no_grad():
                target = self.teacher(xb)
            loss = distillation_loss(logits, target, yb, temperature=self.config.distill_temperature,
                                     weight=self.config.distill_weight)
        return loss + self.hooks.extra_loss(self.model) if self.hooks.extra_loss else loss

    def _save(self, optimizer, epochs_done: int, step: int, history: list[EpochRecord]) -> None:
        path = self.config.checkpoint
        if path is None:
            return
        if self.rank == 0:
            state = {
                "edgebin_train_state": STATE_VERSION,
                "epoch": epochs_done,
                "step": step,
                "steps_per_epoch": self.steps_per_epoch,
                "world_size": self.world,
                "config": _trajectory_fields(self.config),
                "model": self.model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "history": [dataclasses.asdict(r) for r in history],
            }
            buffer = io.BytesIO()
            torch.save(state, buffer)
            atomic_write_bytes(Path(path), buffer.getvalue())
        if self.world > 1:
            dist.barrier()

    def _load_state(self) -> dict | None:
        """With `resume`, the checkpoint's state after loading its model weights; None for a fresh start."""
        path = self.config.checkpoint
        if not self.config.resume or path is None:
            return None
        path = Path(path)
        if not path.exists():
            log.info("no training state at %s yet; starting from epoch 1", path)
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("edgebin_train_state") != STATE_VERSION:
                raise KeyError("edgebin_train_state")
        except Exception as err:
            raise ModelLoadError(f"`{path}` is not an edgebin training state ({err}); delete it or pass another "
                                 "checkpoint path") from None
        want, have = _trajectory_fields(self.config), state["config"]
        differ = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
        if differ:
            shown = ", ".join(f"{k}={have.get(k)!r} (now {want.get(k)!r})" for k in differ)
            raise UsageError(f"`{path}` was written with {shown}; resume with the same settings or start afresh "
                             "without resume")
        if state["steps_per_epoch"] != self.steps_per_epoch:
            raise UsageError(f"`{path}` had {state['steps_per_epoch']} steps per epoch, this run has "
                             f"{self.steps_per_epoch}; use the same data, batch size and number of processes")
        if state["world_size"] != self.world:
            log.warning("%s was written by %d process(es), this run has %d: the run will not repeat bit for bit",
                        path, state["world_size"], self.world)
        try:
            self.model.load_state_dict(state["model"])  # before the optimizer: quantizers may reshape parameters
        except RuntimeError as err:
            raise ModelLoadError(f"`{path}` holds the state of a different model: {str(err).splitlines()[0]}") from None
        if self.rank == 0:
            log.info("resuming from %s after epoch %d of %d", path, state["epoch"], self.total_epochs)
        return state


def _freeze(model: nn.Module, masks: Mapping[str, Tensor]) -> list[tuple[Tensor, Tensor, Tensor]]:
    """Zero the gradient of frozen entries; return (parameter, mask, values now) for `_restore`."""
    params = dict(model.named_parameters())
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise ValueError(f"frozen_masks named parameters the model does not have: {', '.join(unknown)}")
    frozen = []
    for name, mask in masks.items():
        p = params[name]
        if mask.shape != p.shape or mask.dtype != torch.bool:
            raise ValueError(f"frozen mask for {name} must be bool {tuple(p.shape)}, got {mask.dtype} "
                             f"{tuple(mask.shape)}")
        if p.grad is not None:
            p.grad.masked_fill_(mask, 0.0)
        frozen.append((p, mask, p.detach().clone()))
    return frozen


@torch.no_grad()
def _restore(frozen: list[tuple[Tensor, Tensor, Tensor]]) -> None:
    """Write the frozen entries' pre-step values back, undoing weight decay and Adam's momentum on them."""
    for p, mask, before in frozen:
        p.copy_(torch.where(mask, before, p))


def _trajectory_fields(config: TrainConfig) -> dict:
    """The config fields that decide the result, as builtins for the checkpoint."""
    fields = dataclasses.asdict(config)
    return {k: v for k, v in fields.items() if k not in _RESUMABLE_FIELDS}


def _tensors(data, what: str) -> tuple[Tensor, Tensor]:
    try:
        x, y = data
    except (TypeError, ValueError):
        raise DataError(f"{what} must be a pair (x, y), got {type(data).__name__}") from None
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if len(x) != len(y) or len(x) == 0:
        raise DataError(f"{what}: {len(x)} inputs and {len(y)} labels; need the same number, at least one")
    if not x.is_floating_point() or y.dtype not in (torch.int64, torch.int32, torch.uint8, torch.int16):
        raise DataError(f"{what}: need float inputs and integer labels, got {x.dtype} and {y.dtype}")
    return x, y.long()


def _layout(x: Tensor, channels_last: bool) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


def _seed_of(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _reseed(seed: int, epoch: int, rank: int) -> None:
    """Python, NumPy and torch RNGs as a function of (seed, epoch, rank), so a resumed epoch draws the same."""
    s = _seed_of(seed, epoch, rank)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _join_process_group() -> tuple[int, int]:
    """(rank, world size) of the running process group, or of one started from torchrun's environment.

    A group started here stays up until the process exits: gloo cannot reliably start a second one in the same
    process, and a script may call `train` more than once.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    dist.init_process_group("gloo")  # torchrun set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
    atexit.register(lambda: dist.destroy_process_group() if dist.is_initialized() else None)
    return dist.get_rank(), dist.get_world_size()


@contextlib.contextmanager
def _training_mode(config: TrainConfig) -> Iterator[None]:
    """Deterministic kernels for the run; the caller's RNG state and determinism setting come back afterwards."""
    before = torch.are_deterministic_algorithms_enabled()
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.use_deterministic_algorithms(config.deterministic)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(before)
            random.setstate(py_state)
            np.random.set_state(np_state)


@torch.no_grad()
def _average_buffers(model: nn.Module) -> None:
    """BatchNorm running statistics become the mean over the ranks; every other buffer becomes rank 0's."""
    stats = {id(t) for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
             for t in (m.running_mean, m.running_var) if t is not None}
    world = dist.get_world_size()
    for buf in model.buffers():
        flat = buf.contiguous()
        if id(buf) in stats:
            dist.all_reduce(flat)
            flat /= world
        else:
            dist.broadcast(flat, 0)
        if flat.data_ptr() != buf.data_ptr():
            buf.copy_(flat)


@torch.no_grad()
def _check_replicas(model: nn.Module) -> None:
    """RuntimeError on every rank unless all ranks hold the same parameters and buffers."""
    mine = torch.cat([t.detach().reshape(-1).double() for t in (*model.parameters(), *model.buffers())])
    rank0 = mine.clone()
    dist.broadcast(rank0, 0)
    differ = torch.tensor([float(not torch.equal(mine.nan_to_num(), rank0.nan_to_num()))])
    dist.all_reduce(differ)
    if differ.item():
        raise RuntimeError(f"DDP replicas diverged: {int(differ.item())} rank(s) differ from rank 0")


class _NoProgress:
    @contextlib.contextmanager
    def stage(self, description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        yield lambda done: None


# --- `python -m edgebin.train`: QAT of a zoo model on a data set, also under torchrun --------------------------


def main(argv: list[str] | None = None) -> int:
    """Command line: see `python -m edgebin.train --help`. Returns the exit code."""
    args = _parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s")
    try:
        return _main(args, rank, sys.argv[1:] if argv is None else argv)
    except EdgebinError as err:
        print(f"error (rank {rank}): {err}" if rank else f"error: {err}", file=sys.stderr)
        return err.exit_code


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m edgebin.train",
        description="QAT (or fine-tuning) of a model on a data set; runs under torchrun too.",
        epilog="Example: torchrun --standalone --nproc_per_node 2 -m edgebin.train --checkpoint "
        "models/resnet8_fashion.pt --data fashion-mnist --method statsq --bits 2 --epochs 10 --cga-epochs 1 "
        "--out out/resnet8_w2.pt",
    )
    p.add_argument("--checkpoint", type=Path, help="FP32 model to start from (edgebin checkpoint, or state_dict "
                   "with --arch); also the distillation teacher")
    p.add_argument("--arch", help="zoo name or path/to/file.py:Class; without --checkpoint: fresh weights")
    p.add_argument("--data", default="fashion-mnist", help="digits | mnist | fashion-mnist | file.npz | folder")
    p.add_argument("--out", type=Path, help="where rank 0 writes the trained model (edgebin checkpoint)")
    p.add_argument("--state", type=Path, help="training state for --resume (default: OUT with .state.pt)")
    p.add_argument("--resume", action="store_true", help="continue from --state if it exists")
    p.add_argument("--method", help="QAT method, passed to edgebin.quant.qat (statsq, lsq, tbt, binary, ternary)")
    p.add_argument("--bits", type=int, help="weight bits, passed to the method")
    p.add_argument("--act-bits", type=int, help="activation bits, passed to the method")
    p.add_argument("--estimator", help="binary estimator (ste, reste, biper), passed to the method")
    p.add_argument("--no-distill", action="store_true", help="no distillation from the FP32 checkpoint")
    d = TrainConfig()
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--cga-epochs", type=int, default=d.cga_epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch, split over the processes")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--min-lr", type=float, default=d.min_lr)
    p.add_argument("--cga-lr", type=float, default=d.cga_lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    p.add_argument("--temperature", type=float, default=d.distill_temperature)
    p.add_argument("--distill-weight", type=float, default=d.distill_weight)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--augment", choices=("auto", "none", "shift", "shift-flip"), default="auto",
                   help="auto: shift-flip on fashion-mnist, shift elsewhere")
    p.add_argument("--train-samples", type=int, help="train on a class-stratified subset")
    p.add_argument("--eval-samples", type=int, help="evaluate on a class-stratified subset of the test split")
    p.add_argument("--threads", type=int, help="torch CPU threads per process (torchrun sets 1)")
    return p


def _main(args: argparse.Namespace, rank: int, argv: list[str]) -> int:
    from edgebin.data import Normalization, check_shape, evaluation_split, load_dataset, training_split
    from edgebin.loading import save_checkpoint

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # fresh weights and quantizer initialisation
    ds = load_dataset(args.data)
    model, arch, arch_kwargs, norm_dict = _model_from_args(args, ds)
    c, h, w = ds.image_shape
    check_shape(ds, (1, c, h, w))
    norm = Normalization.from_dict(norm_dict) if norm_dict else ds.normalization()
    x, y = training_split(ds, args.train_samples, args.seed)
    x_eval, y_eval = evaluation_split(ds, args.eval_samples)
    distill = args.checkpoint is not None and args.method is not None and not args.no_distill
    teacher = copy.deepcopy(model).eval() if distill else None
    augment = _augment(args.augment, ds.name, norm)
    state = args.state or (args.out.with_suffix(".state.pt") if args.out else None)
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, min_lr=args.min_lr,
        weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, seed=args.seed,
        distill_weight=args.distill_weight, distill_temperature=args.temperature, cga_epochs=args.cga_epochs,
        cga_lr=args.cga_lr, checkpoint=state, resume=args.resume,
    )
    progress = None
    if rank == 0:
        from edgebin.cli import RichProgress, err_console

        progress = RichProgress(enabled=err_console.is_terminal)
    train_data, eval_data = (norm.apply(x), y), (norm.apply(x_eval), y_eval)
    recipe, qat_fields = None, {}
    if args.method:
        from edgebin.quant.recipe import Recipe
        from edgebin.train_qat import train_qat

        recipe = Recipe.for_method(args.method, weight_bits=args.bits, activation_bits=args.act_bits,
                                   estimator=args.estimator)
        qat_result = train_qat(model, recipe, train_data, eval_data, config, teacher=teacher,
                               example_input=torch.zeros(1, c, h, w), augment=augment, progress=progress)
        accuracy, world, history = qat_result.eval_accuracy, qat_result.world_size, qat_result.history()
        qat_fields = {"qat_method": args.method, "qat_recipe": recipe.to_dict()}
    else:
        result = train(model, train_data, eval_data, config, teacher=teacher, augment=augment, progress=progress)
        accuracy, world = result.eval_accuracy, result.world_size
        history = [dataclasses.asdict(r) for r in result.history]
    if rank == 0 and args.out:
        launcher = f"torchrun --nproc_per_node {world} -m edgebin.train" if world > 1 else "python -m edgebin.train"
        save_checkpoint(
            args.out, model, arch=arch, arch_kwargs=arch_kwargs, input_shape=(1, c, h, w),
            normalization=norm.to_dict(), dataset=ds.name, classes=list(ds.classes), **qat_fields,
            eval_accuracy=accuracy, eval_samples=len(y_eval), train_history=history,
            trained_with=f"{launcher} {shlex.join(argv)}", torch_version=str(torch.__version__),
        )
        log.info("eval accuracy %.2f%% on %d images; wrote %s", 100 * (accuracy or 0), len(y_eval), args.out)
    return 0


def _model_from_args(args, ds) -> tuple[nn.Module, str, dict, dict | None]:
    """(model, arch, arch_kwargs, normalization or None) from --checkpoint and/or --arch."""
    from edgebin.loading import load_model, resolve_arch

    if args.checkpoint is None:
        if args.arch is None:
            raise UsageError("give --checkpoint (an FP32 model) or --arch (train from fresh weights)")
        c, h, _ = ds.image_shape
        kwargs = {"in_channels": c, "num_classes": len(ds.classes), "input_size": h}
        return resolve_arch(args.arch, **kwargs), args.arch, kwargs, None
    loaded = load_model(args.checkpoint, arch=args.arch)
    if loaded.arch is None or loaded.format not in ("edgebin-checkpoint", "state-dict"):
        raise UsageError(f"`{args.checkpoint}` is a {loaded.format} file; training needs an edgebin checkpoint or a "
                         "state_dict with --arch")
    if loaded.metadata.get("qat_method"):
        raise UsageError(f"`{args.checkpoint}` is already QAT-trained ({loaded.metadata['qat_method']}): start from "
                         "the FP32 checkpoint, or continue an interrupted run with --resume")
    return loaded.module.float(), loaded.arch, loaded.arch_kwargs, loaded.normalization


def _augment(choice: str, dataset: str, norm) -> Callable[[Tensor, torch.Generator], Tensor] | None:
    if choice == "auto":
        choice = "shift-flip" if dataset == "fashion-mnist" else "shift"
    if choice == "none":
        return None
    black = norm.apply(np.zeros((1, len(norm.mean), 1, 1), np.float32)).reshape(-1).tolist()
    return functools.partial(random_shift_flip, shift_px=2, flip=choice == "shift-flip", fill=black)


if __name__ == "__main__":
    sys.exit(main())
