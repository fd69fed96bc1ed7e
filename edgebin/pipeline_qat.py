"""The QAT branch of `edgebin export` and `compress`: train the FP32 model by a QAT recipe, then export it.

    options = TrainingOptions(epochs=6)
    exported = export_trained(Path("models/resnet8_fashion.pt"), data="fashion-mnist", out_dir=Path("out"),
                              recipe=Recipe.for_method("binary", estimator="biper"), options=options)

Training follows `edgebin.train_qat` (the method's stages, BiPer's two) from the FP32 checkpoint, distilling
from the FP32 model unless `options.distill` is off. Evaluation accuracy after each epoch is measured on the
evaluation split and recorded as history only; the last epoch's model is exported, never the best one, so the
test split does not choose the model. `out/` receives `model.onnx` (edgebin.export.qat), `model_fp32.onnx`,
`model_qat.pt` (a checkpoint that `edgebin export`/`load_model` read back with its quantizers) and `recipe.json`
with the training history. The training state lives in `out/train-state*.pt` while training runs, so
`--resume` continues an interrupted run; it is deleted when the export is written.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from edgebin.atomic import atomic_write_text, staged_dir
from edgebin.errors import UsageError
from edgebin.quant import Recipe

QAT_CHECKPOINT = "model_qat.pt"
TRAIN_STATE = "train-state.pt"


@dataclass(frozen=True)
class TrainingOptions:
    """How `compress --method statsq|lsq|tbt|binary|ternary` trains (the CLI's training flags)."""

    epochs: int = 6
    cga_epochs: int | None = None  # None: 1 for StatsQ (OFQ's CGA phase), 0 for the others
    batch_size: int = 128
    lr: float = 5e-4
    train_samples: int | None = None  # a class-stratified subset of the training split; None: all of it
    distill: bool = True  # from the FP32 model
    seed: int = 0
    resume: bool = False  # continue from out/train-state*.pt if an earlier run left it


def export_trained(model_path: Path, *, data: str, out_dir: Path, recipe: Recipe, options: TrainingOptions,
                   arch: str | None = None, input_shape: tuple[int, ...] | None = None, trust_pickle: bool = False,
                   eval_samples: int | None = None, progress=None):
    """Load, quantize by `recipe`, train, export; returns the pipeline's ExportResult (see the module docstring)."""
    from edgebin import data as datasets
    from edgebin import loading
    from edgebin.export import export_onnx
    from edgebin.export.qat import export_qat, initializer_bytes
    from edgebin.pipeline import (
        FP32_ONNX,
        MODEL_ONNX,
        RECIPE_JSON,
        ExportResult,
        SilentProgress,
        load_for_export,
        run_info_for,
    )
    from edgebin.quant.qat import summarize
    from edgebin.train import TrainConfig
    from edgebin.train_qat import train_qat, uses_statsq

    progress = progress or SilentProgress()
    start = time.perf_counter()
    loaded, dataset, norm = load_for_export(model_path, data, arch=arch, input_shape=input_shape,
                                            trust_pickle=trust_pickle, progress=progress)
    _check_trainable(loaded, model_path)
    x, y = datasets.training_split(dataset, options.train_samples, options.seed)
    x_eval, y_eval = datasets.evaluation_split(dataset, eval_samples)
    fp32 = loaded.module.float().eval()
    model = copy.deepcopy(fp32)
    cga = options.cga_epochs if options.cga_epochs is not None else int(uses_statsq(recipe))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(epochs=options.epochs, cga_epochs=cga, batch_size=options.batch_size, lr=options.lr,
                         min_lr=min(1e-5, options.lr), warmup_epochs=min(1.0, options.epochs), seed=options.seed,
                         checkpoint=out_dir / TRAIN_STATE, resume=options.resume)
    torch.manual_seed(options.seed)
    example = torch.zeros(loaded.input_shape)
    result = train_qat(model, recipe, (norm.apply(x), y), (norm.apply(x_eval), y_eval), config,
                       teacher=fp32 if options.distill else None, example_input=example, progress=progress)
    model.eval()
    records = [r.to_dict() for r in summarize(model)]
    training = {**asdict(options), "cga_epochs": cga, "train_samples": int(len(y)), "eval_samples": int(len(y_eval)),
                "world_size": result.world_size, "seconds": round(sum(s.seconds for s in result.stages), 3),
                "stages": [s.name for s in result.stages], "history": result.history(),
                "checkpoint": QAT_CHECKPOINT if loaded.arch is not None else None}
    run_info = {**run_info_for(model_path, data, loaded, dataset, norm, recipe,
                               [{**r, "method": r["kind"]} for r in records]), "training": training}
    meta = {"edgebin.recipe": json.dumps(recipe.to_dict()), "edgebin.normalization": json.dumps(norm.to_dict())}
    with progress.stage("Exporting ONNX"), staged_dir(out_dir) as stage:
        export_onnx(fp32, loaded.input_shape, stage / FP32_ONNX, metadata={"edgebin.method": "fp32"})
        onnx_model = export_qat(model, loaded.input_shape, stage / MODEL_ONNX, metadata=meta)
        if loaded.arch is not None:  # a pickled module has no architecture name to rebuild it from
            loading.save_checkpoint(stage / QAT_CHECKPOINT, model, arch=loaded.arch, input_shape=loaded.input_shape,
                                    arch_kwargs=loaded.arch_kwargs, normalization=norm.to_dict(),
                                    dataset=run_info["dataset"], classes=run_info["classes"],
                                    qat_method=recipe.method, qat_recipe=recipe.to_dict(),
                                    eval_accuracy=result.eval_accuracy, train_history=training["history"])
        atomic_write_text(stage / RECIPE_JSON, json.dumps(run_info, indent=2) + "\n")
    for state in out_dir.glob("train-state*.pt"):
        state.unlink()
    fp32_bytes = sum(p.numel() * 4 for p in fp32.parameters())
    return ExportResult(out_dir, loaded, fp32, model, records, recipe, run_info, initializer_bytes(onnx_model),
                        fp32_bytes, time.perf_counter() - start, batch=1024)


def _check_trainable(loaded, model_path: Path) -> None:
    """QAT swaps nn.Conv2d/nn.Linear modules: a TorchScript archive or a torch.export program cannot be trained,
    and a model trained by QAT already has its quantizers (and no FP32 weights to compare with)."""
    if loaded.metadata.get("qat_method"):
        raise UsageError(f"`{model_path}` is already QAT-trained ({loaded.metadata['qat_method']}); its ONNX is the "
                         "model.onnx written beside it. Start from the FP32 checkpoint to train again, or pass "
                         "--resume to continue an interrupted run")
    if loaded.exported is not None or isinstance(loaded.module, torch.jit.ScriptModule) \
            or not isinstance(loaded.module, nn.Module):
        raise UsageError(f"`{model_path}` is a {loaded.format} file, which QAT cannot train: give an edgebin "
                         "checkpoint or a state_dict with --arch (or use --method int8, post-training quantization)")

