"""QAT of an FP32 model by a recipe: swap in the quantizers, then train in the method's stages with `edgebin.train`.

    model = load_model(Path("models/resnet8_fashion.pt")).module
    teacher = copy.deepcopy(model).eval()
    recipe = Recipe.for_method("binary", estimator="biper")
    result = train_qat(model, recipe, (x, y), (x_test, y_test), TrainConfig(epochs=9), teacher=teacher,
                       example_input=x[:1])
    [s.name for s in result.stages]        # ['biper-stage1', 'biper-stage2']: 6 + 3 epochs

Stages, from research/methods.md:
- BiPer (§6): stage 1 trains with sin(ωW) weights ("real weights, binary features", not yet a binary network),
  stage 2 with sign(sin(ωW)), starting from the stage-1 weights with a fresh optimizer. The official CIFAR
  scripts run 600 + 300 epochs, stage 2 at 0.0037 / 0.021 ≈ 0.18 of the learning rate, 0.1 of the weight decay
  and no warm-up, adding τ · Σ mean(sin²(ωW)) to the loss (τ = 0.037, then 0.0468). edgebin splits
  `config.epochs` 2 : 1 the same way (stage 2 gets at least one epoch) and copies the ratios and τ; the
  papers' SGD becomes edgebin's AdamW, and distillation applies when a teacher is given (BiPer uses none).
- StatsQ (§1): `config.epochs` of QAT, then `config.cga_epochs` of CGA (train.py's second phase).
- Every other method: one stage; `cga_epochs` must be 0 (CGA freezes StatsQ weights only).

Each stage resumes from its own training-state file (`<checkpoint>.stage1.pt`, ...) when `config.resume`; a
stage that had finished is read back, not rerun. Activation quantizers are initialised from the first batch of
the first stage only; later stages continue from the trained values.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from edgebin.errors import UsageError
from edgebin.quant.qat import (
    biper_regularizer,
    cga_frozen_masks,
    init_quantizers,
    on_phase,
    param_groups,
    prepare,
    set_biper_stage,
    set_progress,
)
from edgebin.quant.recipe import BinaryConfig, Recipe, StatsQConfig
from edgebin.train import Progress, TrainConfig, TrainHooks, TrainResult, train

BIPER_STAGE2_LR = 0.0037 / 0.021  # official CIFAR scripts: stage-2 lr / stage-1 lr
BIPER_STAGE2_WEIGHT_DECAY = 1.6e-4 / 1.6e-3
BIPER_TAU = (0.037, 0.0468)  # the regulariser's weight in stage 1 and stage 2 (CIFAR scripts)


@dataclass(frozen=True)
class Stage:
    """One call of `edgebin.train.train`: its name, config and BiPer stage (None: no BiPer layer)."""

    name: str
    config: TrainConfig
    biper_stage: int | None = None
    tau: float = 0.0  # BiPer regulariser weight


@dataclass(frozen=True)
class StageResult:
    name: str
    result: TrainResult
    seconds: float


@dataclass(frozen=True)
class QatResult:
    """Every stage's history; `eval_accuracy` is the last epoch's."""

    stages: tuple[StageResult, ...]

    @property
    def eval_accuracy(self) -> float | None:
        return self.stages[-1].result.eval_accuracy if self.stages else None

    @property
    def epochs(self) -> int:
        return sum(len(s.result.history) for s in self.stages)

    @property
    def world_size(self) -> int:
        return self.stages[-1].result.world_size if self.stages else 1

    def history(self) -> list[dict]:
        """Every epoch of every stage, numbered across stages, as plain dicts with a `stage` key."""
        rows, done = [], 0
        for s in self.stages:
            for r in s.result.history:
                rows.append({**dataclasses.asdict(r), "epoch": done + r.epoch, "stage": s.name})
            done += len(s.result.history)
        return rows


def uses_biper(recipe: Recipe) -> bool:
    """True when some layer of `recipe` is binary with the BiPer estimator."""
    return any(isinstance(c, BinaryConfig) and c.estimator == "biper" for c in _configs(recipe))


def uses_statsq(recipe: Recipe) -> bool:
    return any(isinstance(c, StatsQConfig) for c in _configs(recipe))


def _configs(recipe: Recipe) -> list:
    return [recipe.default, *recipe.overrides.values()]


def stages(recipe: Recipe, config: TrainConfig) -> list[Stage]:
    """The training stages `recipe` needs (see the module docstring)."""
    if config.cga_epochs and not uses_statsq(recipe):
        raise UsageError(f"--cga-epochs applies to StatsQ weights only; --method {recipe.method} has none "
                         "(use --cga-epochs 0)")
    if not uses_biper(recipe):
        return [Stage("qat", config)]
    if config.epochs < 2:
        raise UsageError(f"BiPer trains in two stages (sine, then sign of sine): give at least 2 epochs, got "
                         f"{config.epochs}")
    second = max(1, config.epochs // 3)
    first = config.epochs - second
    state = config.checkpoint

    def part(i: int, **changes) -> TrainConfig:
        path = state.with_suffix(f".stage{i}{state.suffix}") if state is not None else None
        return dataclasses.replace(config, checkpoint=path, **changes)

    stage1 = part(1, epochs=first, warmup_epochs=min(config.warmup_epochs, first), cga_epochs=0)
    lr2 = config.lr * BIPER_STAGE2_LR
    stage2 = part(2, epochs=second, warmup_epochs=0.0, lr=lr2, min_lr=min(config.min_lr, lr2),
                  weight_decay=config.weight_decay * BIPER_STAGE2_WEIGHT_DECAY)
    return [Stage("biper-stage1", stage1, biper_stage=1, tau=BIPER_TAU[0]),
            Stage("biper-stage2", stage2, biper_stage=2, tau=BIPER_TAU[1])]


def hooks_for(stage: Stage, *, first: bool, after_step: Callable[[nn.Module, int], None] | None = None) -> TrainHooks:
    """edgebin.quant.qat's hooks for one stage: quantizer init only in the first."""
    extra = None
    if stage.tau:
        tau = stage.tau

        def extra(model: nn.Module) -> Tensor:
            return tau * biper_regularizer(model)

    return TrainHooks(init=init_quantizers if first else None, param_groups=param_groups,
                      set_progress=set_progress, on_phase=on_phase, frozen_masks=cga_frozen_masks, extra_loss=extra,
                      after_step=after_step)


def train_qat(model: nn.Module, recipe: Recipe, train_data: tuple, eval_data: tuple | None, config: TrainConfig, *,
              teacher: nn.Module | None = None, example_input: Tensor | None = None, augment=None,
              progress: Progress | None = None, prepared: bool = False,
              after_step: Callable[[nn.Module, int], None] | None = None) -> QatResult:
    """Prepare `model` by `recipe` (unless `prepared`) and train it in place through the recipe's stages."""
    if not prepared:
        prepare(model, recipe, example_input=example_input)
    results = []
    for i, stage in enumerate(stages(recipe, config)):
        if stage.biper_stage is not None:
            set_biper_stage(model, stage.biper_stage)
        started = time.perf_counter()
        result = train(model, train_data, eval_data, stage.config, teacher=teacher,
                       hooks=hooks_for(stage, first=i == 0, after_step=after_step), augment=augment,
                       progress=progress)
        results.append(StageResult(stage.name, result, time.perf_counter() - started))
    return QatResult(tuple(results))


__all__ = ["QatResult", "Stage", "StageResult", "hooks_for", "stages", "train_qat", "uses_biper", "uses_statsq"]
