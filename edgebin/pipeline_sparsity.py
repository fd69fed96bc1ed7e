"""The sparsity branch of `edgebin compress --sparsity 0.5 --groups filters`: train an FP32 checkpoint with WGSEF
to an exact number of groups per layer, remove what was pruned, and write the smaller model as a checkpoint.

    result = sparsify(Path("models/resnet8_fashion.pt"), data="fashion-mnist", out=Path("out/model_sparse.pt"),
                      config=SparsityConfig(sparsity=0.5, groups="filters"))
    result.accuracy, result.dense_accuracy, result.macs, result.dense_macs
    pipeline.compress(result.path, method="int8", target="cortex-m4", data="fashion-mnist", out_dir=Path("out"))

`pipeline.compress(..., sparsity=config)` and `edgebin compress --sparsity 0.5` run exactly this before quantizing,
keep the checkpoint as `out/model_sparse.pt` and put `stage_record`'s summary into recipe.json and the report.

Training (`edgebin.sparsity.proximal`): `epochs` of AdamW with the WGSEF proximal step after every optimizer step,
then the exact step (exactly `keep` groups per set), then `finetune_epochs` with the pruned groups held at zero;
one warm-up and cosine schedule over both, distilling from the FP32 model unless `distill` is off. With
`selection="l1"` (magnitude filter pruning, Li et al., ICLR 2017: the baseline of tools/bench/sparsity.py) the
groups with the largest L1 norms are kept before the first step and all the epochs fine-tune them. Accuracy is
measured on the evaluation split after every epoch and recorded as history only: the last epoch's model is kept.
Filters and channels are then removed (`edgebin.sparsity.shrink`); the checkpoint records the new widths in
`arch_kwargs["layer_widths"]`, so `load_model`, `edgebin export` and `compress --method int8` (or a QAT method)
read it like any checkpoint. Filter shapes, single weights and layers stay zeros in a model of the same size.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgebin.errors import UsageError
from edgebin.sparsity.groups import GROUP_KINDS, build_groups
from edgebin.sparsity.proximal import FORMS

log = logging.getLogger(__name__)

SHRINKABLE = ("filters", "channels")
SELECTIONS = ("wgsef", "l1")
# Default λ: the proximal steps before the exact one add up to Σ lr·λ = 3. A band group loses about lr·λ·θ of its
# norm per step (θ near the k-th largest norm), so a group below the k-th has room to reach zero however long the
# run; tools/bench/sparsity.py measured this on ResNet-8 (docs/sparsity.md).
PROX_STRENGTH = 3.0


@dataclass(frozen=True)
class SparsityConfig:
    """What to prune and how to train: `compress --sparsity/--keep/--groups` and the training flags.

    config = SparsityConfig(sparsity=0.75, groups="filters", epochs=3, finetune_epochs=3)
    """

    groups: str = "filters"
    selection: str = "wgsef"  # or "l1": magnitude pruning, the groups with the largest L1 norms kept from the start
    sparsity: float | None = None  # fraction of the groups of each set removed, rounded half up
    keep: int | None = None  # or: groups kept per set (one of the two)
    tied: bool = True  # also prune channels tied through residual adds (each tied channel is one group)
    lam: float | None = None  # λ of the WGSEF term (the prox step is lr·λ); None: Σ lr·λ = PROX_STRENGTH
    form: str = "dc"  # the proximal step before the exact one: "dc" (S_k − ½‖·‖²) or "envelope" (S_k)
    weighting: str = "sqrt_size"  # w_g = sqrt(parameters in group g); "none": w_g = 1
    epochs: int = 3  # with the WGSEF prox, ending with the exact step
    finetune_epochs: int = 3  # afterwards, pruned groups held at zero
    lr: float = 1e-3
    batch_size: int = 128
    train_samples: int | None = None  # a class-stratified subset of the training split; None: all of it
    distill: bool = True  # from the FP32 model
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.groups not in GROUP_KINDS:
            problems.append(f"groups must be one of {', '.join(GROUP_KINDS)}, got {self.groups!r}")
        if self.selection not in SELECTIONS:
            problems.append(f"selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        if self.form not in FORMS:
            problems.append(f"form must be one of {', '.join(FORMS)}, got {self.form!r}")
        if (self.keep is None) == (self.sparsity is None):
            problems.append("give one of --sparsity (fraction of groups removed) and --keep (groups kept)")
        if self.sparsity is not None and not 0 <= self.sparsity < 1:
            problems.append(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.keep is not None and self.keep < 1:
            problems.append(f"keep must be >= 1, got {self.keep}")
        if (self.lam is not None and self.lam < 0) or self.epochs < 0 or self.finetune_epochs < 0:
            problems.append("lam, epochs and finetune_epochs must be >= 0")
        if self.epochs + self.finetune_epochs < 1:
            problems.append("epochs + finetune_epochs must be >= 1")
        if not self.lr > 0 or self.batch_size < 1:
            problems.append("lr must be > 0 and batch_size >= 1")
        if problems:
            raise UsageError("sparsity: " + "; ".join(problems))

    @property
    def target(self) -> dict[str, Any]:
        """`keep=` or `sparsity=`, for `build_groups`."""
        return {"keep": self.keep} if self.keep is not None else {"sparsity": self.sparsity}


@dataclass(frozen=True)
class SparsityResult:
    """What `sparsify` wrote and measured; accuracies are fractions on the evaluation split."""

    path: Path  # the checkpoint: the shrunk model (filters, channels) or the masked one
    lam: float  # λ used (SparsityConfig.lam, or the default from PROX_STRENGTH)
    dense_accuracy: float
    accuracy: float  # of the written model
    masked_accuracy: float  # before shrinking (equal to `accuracy` up to float rounding)
    parameters: int
    dense_parameters: int
    nonzero_parameters: int  # of the written model: below `parameters` where groups stay as zeros
    macs: int
    dense_macs: int
    sets: dict[str, dict]  # per group set: groups, keep, nonzero (== keep: the target met exactly), ...
    layer_widths: dict[str, dict[str, int]]  # layers the shrink narrowed
    history: list[dict]
    seconds: float
    train_samples: int
    eval_samples: int  # behind the accuracies and the history

    @property
    def exact(self) -> bool:
        """True when every group set has exactly its target number of nonzero groups."""
        return all(s["nonzero"] == s["keep"] for s in self.sets.values())


def sparsify(model_path: Path, *, data: str, out: Path, config: SparsityConfig,
             arch: str | None = None, input_shape: tuple[int, ...] | None = None, trust_pickle: bool = False,
             eval_samples: int | None = None, progress=None) -> SparsityResult:
    """Train `model_path` with WGSEF to `config`'s target, shrink it and write the checkpoint `out`."""
    from edgebin import data as datasets
    from edgebin import loading
    from edgebin.pipeline import SilentProgress, load_for_export
    from edgebin.sparsity.proximal import ProximalWgsef, lr_schedule, steps_per_epoch
    from edgebin.sparsity.shrink import shrink
    from edgebin.train import TrainConfig, TrainHooks, evaluate, train

    progress = progress or SilentProgress()
    start = time.perf_counter()
    loaded, dataset, norm = load_for_export(model_path, data, arch=arch, input_shape=input_shape,
                                            trust_pickle=trust_pickle, progress=progress)
    _check_trainable(loaded, model_path)
    x, y = datasets.training_split(dataset, config.train_samples, config.seed)
    x_eval, y_eval = datasets.evaluation_split(dataset, eval_samples)
    x_eval_t, y_eval_t = torch.from_numpy(norm.apply(x_eval)), torch.from_numpy(y_eval).long()
    fp32 = loaded.module.float().eval()
    model = copy.deepcopy(fp32)
    example = torch.zeros(loaded.input_shape)
    sets = build_groups(model, example, config.groups, tied=config.tied, weighting=config.weighting,
                        **config.target)
    epochs = config.epochs + config.finetune_epochs
    train_config = TrainConfig(epochs=epochs, batch_size=config.batch_size, lr=config.lr,
                               min_lr=min(1e-5, config.lr), warmup_epochs=min(1.0, epochs), seed=config.seed)
    exact_step = config.epochs * steps_per_epoch(train_config, len(y))
    lr_at = lr_schedule(train_config, len(y))
    lam = config.lam if config.lam is not None else PROX_STRENGTH / max(1e-12, sum(map(lr_at, range(exact_step))))
    hook = ProximalWgsef(sets, lam=lam, lr_at=lr_at, exact_step=exact_step, form=config.form)
    if config.selection == "l1":  # magnitude pruning: select now, then every epoch is a masked fine-tune
        hook.exact(model, ord=1)
    torch.manual_seed(config.seed)
    result = train(model, (norm.apply(x), y), (norm.apply(x_eval), y_eval), train_config,
                   teacher=fp32 if config.distill else None, hooks=TrainHooks(after_step=hook), progress=progress)
    if hook.kept is None:  # only if the run took fewer steps than planned; the result must still be exact
        hook.exact(model)
    model.eval()
    params = dict(model.named_parameters())
    set_info = {s.name: {**hook.report[s.name], "nonzero": int((s.norms(params) > 0).sum())} for s in sets}
    masked_accuracy = evaluate(model, x_eval_t, y_eval_t)
    widths, final = {}, model
    if config.groups in SHRINKABLE:
        with progress.stage("Removing pruned channels"):
            shrunk = shrink(model, example)
        final, widths = shrunk.model, shrunk.layer_widths
    accuracy = evaluate(final, x_eval_t, y_eval_t)
    recorded = dict(loaded.arch_kwargs.get(loading.LAYER_WIDTHS) or {})
    for name, w in widths.items():  # a model shrunk before: its earlier widths stay, the new ones win
        recorded[name] = {**recorded.get(name, {}), **w}
    arch_kwargs = {**loaded.arch_kwargs, **({loading.LAYER_WIDTHS: recorded} if recorded else {})}
    history = [asdict(r) for r in result.history]
    record = {**asdict(config), "lam": lam, "sets": set_info, "masked_accuracy": masked_accuracy, "history": history,
              "source": str(model_path)}
    loading.save_checkpoint(Path(out), final, arch=loaded.arch, input_shape=loaded.input_shape,
                            arch_kwargs=arch_kwargs, normalization=norm.to_dict(), dataset=dataset.name,
                            classes=list(dataset.classes), sparsity=record, eval_accuracy=accuracy,
                            eval_samples=int(len(y_eval)))
    dense_accuracy = evaluate(fp32, x_eval_t, y_eval_t)
    return SparsityResult(
        path=Path(out), lam=lam, dense_accuracy=dense_accuracy, accuracy=accuracy, masked_accuracy=masked_accuracy,
        parameters=_parameters(final), dense_parameters=_parameters(fp32),
        nonzero_parameters=int(sum(int(p.count_nonzero()) for p in final.parameters())),
        macs=count_macs(final, loaded.input_shape), dense_macs=count_macs(fp32, loaded.input_shape), sets=set_info,
        layer_widths=widths, history=history, seconds=time.perf_counter() - start, train_samples=int(len(y)),
        eval_samples=int(len(y_eval)))


def stage_record(result: SparsityResult, config: SparsityConfig, *, source: Path, checkpoint: str) -> dict[str, Any]:
    """What recipe.json and the report keep of a sparsity stage before quantization (report.json's `sparsity`)."""
    return {
        "groups": config.groups, "selection": config.selection, "sparsity": config.sparsity, "keep": config.keep,
        "shrunk": config.groups in SHRINKABLE, "epochs": config.epochs, "finetune_epochs": config.finetune_epochs,
        "lam": result.lam, "train_samples": result.train_samples, "dense_accuracy": result.dense_accuracy,
        "accuracy": result.accuracy, "eval_samples": result.eval_samples, "dense_parameters": result.dense_parameters,
        "parameters": result.parameters, "nonzero_parameters": result.nonzero_parameters,
        "dense_macs": result.dense_macs, "macs": result.macs, "seconds": round(result.seconds, 3),
        "source": str(source), "checkpoint": checkpoint,
        "sets": [{"name": name, "groups": s["groups"], "kept": s["nonzero"]} for name, s in result.sets.items()],
        "history": result.history,
    }


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of batch 1 in conv and linear layers."""
    total = 0

    def count(module: nn.Module, inputs, output) -> None:
        nonlocal total
        if isinstance(module, nn.modules.conv._ConvNd):
            per_output = module.in_channels // module.groups * int(torch.tensor(module.kernel_size).prod())
        else:
            per_output = module.in_features
        total += output[0].numel() * per_output  # output[0]: one sample's outputs

    handles = [m.register_forward_hook(count) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    was_training = model.training
    try:
        model.eval()(torch.zeros((1, *input_shape[1:])))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total


def _parameters(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def _check_trainable(loaded, model_path: Path) -> None:
    """WGSEF trains and rebuilds nn.Conv2d/nn.Linear layers of a model whose architecture can be built again."""
    if loaded.metadata.get("qat_method"):
        raise UsageError(f"`{model_path}` is QAT-trained ({loaded.metadata['qat_method']}); sparsify the FP32 "
                         "checkpoint, then quantize the smaller model")
    if loaded.exported is not None or isinstance(loaded.module, torch.jit.ScriptModule):
        raise UsageError(f"`{model_path}` is a {loaded.format} file, which cannot be trained or shrunk: give an "
                         "edgebin checkpoint, or a state_dict with --arch")
    if loaded.arch is None:
        raise UsageError(f"`{model_path}` is a pickled module: the smaller model could not be rebuilt from a "
                         "checkpoint without its architecture; save a state_dict and pass --arch")
