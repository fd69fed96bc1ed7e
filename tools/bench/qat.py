"""Benchmark: small-scale reproduction of the QAT methods on Fashion-MNIST, written to docs/results.md.

    .venv/bin/python tools/bench/qat.py                                # ResNet-8, every method, reduced schedule
    .venv/bin/python tools/bench/qat.py --models tiny_vit --runs fp32 w2a2-statsq w2a2-lsq w1a1-ste
    .venv/bin/python tools/bench/qat.py --render                       # docs/results.md from the saved runs only
    .venv/bin/python tools/bench/qat.py --trained w2a2-statsq-torchrun=out/r8_w2a2.pt   # a `python -m edgebin.train`
                                                                       # checkpoint (torchrun), measured the same way

Each run starts from the same FP32 model (models/resnet8_fashion.pt, models/tiny_vit_fashion.pt; a model without
a checkpoint is trained here from fresh weights for `--fp32-epochs`, the "fp32" run) and trains with
`edgebin.train_qat` at the same seed, epochs, batch, learning rate and training subset, distilling from the FP32
model. The first and last layers stay at 8 bits (LSQ W8A8) as in OFQ. Per run: the fake-quant model's top-1 on
the whole test split after the last epoch, the exported ONNX model's top-1 in onnxruntime and its argmax
agreement with PyTorch, wall time, and weight-level flips and oscillations of the low-bit layers
(`OscillationTracker`, counted from the second optimizer step on; 8-bit layers are left out so that W2 runs compare
W2 weights). Results go to `--results` (one JSON object per run, kept between invocations, so runs can be added)
and are rendered into `--doc`. Not a test: nothing is asserted. The schedule is far shorter than the papers'
(hundreds of epochs on GPUs); the doc says so.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgebin import data as datasets
from edgebin import metrics
from edgebin.export.qat import export_qat
from edgebin.loading import load_model
from edgebin.quant import Recipe
from edgebin.quant.qat import OscillationTracker
from edgebin.train import TrainConfig, evaluate, train
from edgebin.train_qat import train_qat
from edgebin.zoo import create

RUNS = {  # name: (method, weight bits, activation bits, estimator)
    "fp32": None,
    "w2a2-statsq": ("statsq", 2, 2, None),
    "w2a2-lsq": ("lsq", 2, 2, None),
    "w1a1-ste": ("binary", 1, 1, "ste"),
    "w1a1-reste": ("binary", 1, 1, "reste"),
    "w1a1-biper": ("binary", 1, 1, "biper"),
    "ternary": ("ternary", 2, 2, None),
    "w4a4-statsq": ("statsq", 4, 4, None),
    "w4a4-lsq": ("lsq", 4, 4, None),
    "w8a8-statsq": ("statsq", 8, 8, None),
    "w8a8-lsq": ("lsq", 8, 8, None),
    "w2a2-tbt": ("tbt", 2, 2, None),
}
NOTES_MARKER = "<!-- findings: kept by --render -->"
CHECKPOINTS = {"resnet8": Path("models/resnet8_fashion.pt"), "tiny_vit": Path("models/tiny_vit_fashion.pt")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet8"], help="resnet8 and/or tiny_vit")
    p.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    p.add_argument("--epochs", type=int, default=6, help="QAT epochs per run (BiPer: split 2:1 over its stages)")
    p.add_argument("--cga-epochs", type=int, default=1, help="CGA epochs after StatsQ runs")
    p.add_argument("--train-samples", type=int, default=20000, help="class-stratified training subset")
    p.add_argument("--fp32-epochs", type=int, default=10,
                   help="FP32 training from fresh weights, for a model without a checkpoint")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=Path("tools/bench/qat_results.jsonl"))
    p.add_argument("--doc", type=Path, default=Path("docs/results.md"))
    p.add_argument("--label", default="", help="appended to each run's name, so a longer schedule of a run gets "
                   "its own row instead of replacing the equal-budget one (e.g. --label '15 epochs')")
    p.add_argument("--render", action="store_true", help="only render --doc from --results")
    p.add_argument("--trained", nargs="+", default=[], metavar="NAME=PATH",
                   help="also measure QAT checkpoints trained elsewhere (python -m edgebin.train, torchrun)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    if args.trained:
        ds = datasets.load_dataset("fashion-mnist")
        for item in args.trained:
            name, _, path = item.partition("=")
            _save(args.results, {**_measure_trained(name, Path(path), ds), "command": command})
        args.render = True
    if not args.render:
        ds = datasets.load_dataset("fashion-mnist")
        for model_name in args.models:
            fp32, norm = _fp32_model(model_name, ds, args)
            for run in args.runs:
                record = _run(model_name, run, fp32, norm, ds, args)
                _save(args.results, {**record, "command": command})
    _render(args.results, args.doc)
    return 0


def _save(results: Path, record: dict) -> None:
    with results.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "history"}), flush=True)


def _measure_trained(name: str, path: Path, ds) -> dict:
    """A QAT checkpoint written by `python -m edgebin.train` (under torchrun or not), measured as `_run` does."""
    loaded = load_model(path)
    meta, model = loaded.metadata, loaded.module.eval()
    recipe = meta["qat_recipe"]["default"]
    history = meta.get("train_history") or []
    norm = datasets.Normalization.from_dict(loaded.normalization)
    record = _accuracies(model, norm.apply(ds.x_test), ds.y_test)
    launcher = meta.get("trained_with", "")
    return {"model": loaded.arch, "run": name, "method": meta["qat_method"], "weight_bits": recipe["weight_bits"],
            "activation_bits": recipe["activation_bits"], "estimator": recipe.get("estimator"),
            "epochs": sum(h["phase"] == "qat" for h in history),
            "cga_epochs": sum(h["phase"] == "cga" for h in history),
            "train_samples": None, "lr": None, "seconds": round(sum(h["seconds"] for h in history), 1),
            "trained_with": launcher, **record, "history": history}


def _accuracies(model: torch.nn.Module, x_test: np.ndarray, y_test: np.ndarray) -> dict:
    """Top-1 of the fake-quant model and of its ONNX export in onnxruntime, and their argmax agreement."""
    torch_logits = metrics.run_torch(model, x_test, batch=1000)
    with tempfile.TemporaryDirectory() as tmp:
        export_qat(model, (1, *x_test.shape[1:]), Path(tmp) / "model.onnx")
        onnx_logits = metrics.run_onnxruntime(Path(tmp) / "model.onnx", x_test)
    return {"accuracy": metrics.accuracy(torch_logits, y_test), "onnx_accuracy": metrics.accuracy(onnx_logits, y_test),
            "onnx_argmax_equal": float(np.mean(onnx_logits.argmax(1) == torch_logits.argmax(1)))}


def _fp32_model(name: str, ds, args) -> tuple[torch.nn.Module, datasets.Normalization]:
    if name in CHECKPOINTS:
        loaded = load_model(CHECKPOINTS[name])
        return loaded.module.float().eval(), datasets.Normalization.from_dict(loaded.normalization)
    norm = ds.normalization()
    torch.manual_seed(args.seed)
    model = create(name, in_channels=1, num_classes=10, input_size=28)
    x, y = _subset(ds, args)
    config = TrainConfig(epochs=args.fp32_epochs, lr=1e-3, batch_size=args.batch_size, seed=args.seed)
    train(model, (norm.apply(x), y), None, config)
    return model.eval(), norm


def _subset(ds, args) -> tuple[np.ndarray, np.ndarray]:
    return datasets.training_split(ds, args.train_samples, args.seed)


def _run(model_name: str, run: str, fp32: torch.nn.Module, norm, ds, args) -> dict:
    x, y = _subset(ds, args)
    x_test, y_test = norm.apply(ds.x_test), ds.y_test
    name = f"{run} ({args.label})" if args.label else run
    record = {"model": model_name, "run": name, "epochs": 0, "cga_epochs": 0, "train_samples": len(y),
              "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed, "threads": torch.get_num_threads()}
    if RUNS[run] is None:
        acc = evaluate(fp32, torch.from_numpy(x_test), torch.from_numpy(y_test))
        epochs = args.fp32_epochs if model_name not in CHECKPOINTS else None
        return {**record, "accuracy": acc, "onnx_accuracy": None, "epochs": epochs, "seconds": None}
    method, bits, act_bits, estimator = RUNS[run]
    recipe = Recipe.for_method(method, weight_bits=bits, activation_bits=act_bits, estimator=estimator)
    model = copy.deepcopy(fp32)
    cga = args.cga_epochs if method == "statsq" else 0
    config = TrainConfig(epochs=args.epochs, cga_epochs=cga, lr=args.lr, min_lr=1e-5, batch_size=args.batch_size,
                         seed=args.seed)
    tracker: list[OscillationTracker] = []

    def count(m: torch.nn.Module, step: int) -> None:
        if not tracker:
            tracker.append(OscillationTracker(m, max_bits=max(4, bits)))
        else:
            tracker[0].update()

    torch.manual_seed(args.seed)
    started = time.perf_counter()
    result = train_qat(model, recipe, (norm.apply(x), y), None, config, teacher=fp32,
                       example_input=torch.zeros(1, 1, 28, 28), after_step=count)
    seconds = time.perf_counter() - started
    osc = tracker[0].totals() if tracker else {}
    return {**record, "method": method, "weight_bits": bits, "activation_bits": act_bits, "estimator": estimator,
            "epochs": args.epochs, "cga_epochs": cga, "stages": [s.name for s in result.stages],
            **_accuracies(model.eval(), x_test, y_test), "seconds": round(seconds, 1), "oscillations": osc,
            "history": result.history()}


def _render(results: Path, doc: Path) -> None:
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()] \
        if results.is_file() else []
    latest: dict[tuple[str, str], dict] = {}
    for r in records:  # a later run of the same (model, run) replaces the earlier one
        latest[(r["model"], r["run"])] = r
    notes = ""  # hand-written findings below the marker survive a re-render
    if doc.is_file() and NOTES_MARKER in doc.read_text():
        notes = doc.read_text()[doc.read_text().index(NOTES_MARKER):]
    doc.write_text(_markdown(list(latest.values())) + ("\n" + notes if notes else ""))
    print(f"wrote {doc} ({len(latest)} runs)")


def _markdown(records: list[dict]) -> str:
    from edgebin.report.markdown import percent

    lines = [
        "# QAT results: small-scale reproduction on Fashion-MNIST",
        "",
        "Made by `tools/bench/qat.py` (the exact commands are listed under each table). Every quantized run starts",
        "from the same FP32 model and trains with `edgebin.train_qat` on a class-stratified subset of the training",
        "split, at the same seed, batch, peak learning rate (AdamW, warm-up then cosine) and epochs, distilling from",
        "the FP32 model; first and last layers stay at 8 bits. Accuracy is top-1 on the whole Fashion-MNIST test",
        "split (10,000 images) after the last epoch, of the PyTorch fake-quant model and of the exported ONNX in",
        "onnxruntime. **This is a reduced schedule on 2 CPU cores** (a few epochs where the papers train hundreds",
        "on GPUs), so absolute numbers understate every method, most of all the binary ones; the comparisons",
        "between methods are at equal budget.",
        "",
        "Oscillations (Nagel et al. 2022, as OFQ counts them): a weight's integer level moving opposite to its",
        "previous move, summed over the low-bit layers and all optimizer steps (StatsQ's include its CGA epoch);",
        "flips count every level change. Wall times come from a shared 2-core machine with other jobs running, so",
        "they are only a rough guide.",
        "",
    ]
    for model in sorted({r["model"] for r in records}):
        rows = [r for r in records if r["model"] == model]
        fp32 = next((r["accuracy"] for r in rows if r["run"] == "fp32"), None)
        header = ["Run", "Method", "W/A bits", "Estimator", "Epochs (+CGA)", "Training samples", "Peak lr",
                  "Top-1 (PyTorch)", "Δ vs FP32", "Top-1 (onnxruntime)", "ONNX argmax = PyTorch", "Wall time",
                  "Flips", "Oscillations", "Oscillations per step"]
        lines += [f"## {model}", "", "| " + " | ".join(header) + " |",
                  "| " + " | ".join(["---"] * 4 + ["---:"] * (len(header) - 4)) + " |"]
        def order(r: dict) -> tuple[int, str]:
            base = r["run"].split(" (")[0]
            return (list(RUNS).index(base) if base in RUNS else 99, r["run"])

        for r in sorted(rows, key=order):
            osc = r.get("oscillations") or {}
            delta = "" if fp32 is None or r["run"] == "fp32" else f"{100 * (r['accuracy'] - fp32):+.2f}"
            epochs = "" if r.get("epochs") is None else str(r["epochs"]) + (
                f" (+{r['cga_epochs']})" if r.get("cga_epochs") else "")
            quantized = r["run"] != "fp32"
            samples = "" if r.get("train_samples") is None or r.get("epochs") is None else f"{r['train_samples']:,}"
            cells = [r["run"], r.get("method", "fp32"), f"W{r['weight_bits']}A{r['activation_bits']}" if quantized
                     else "", r.get("estimator") or "", epochs, samples,
                     f"{r['lr']:g}" if quantized and r.get("lr") else "", percent(r["accuracy"]), delta,
                     percent(r.get("onnx_accuracy")), percent(r.get("onnx_argmax_equal")),
                     "" if r.get("seconds") is None else f"{r['seconds']:.0f} s",
                     f"{osc['flips']:,}" if osc else "", f"{osc['oscillations']:,}" if osc else "",
                     f"{osc['oscillations'] / max(1, osc['steps']):.1f}" if osc else ""]
            lines.append("| " + " | ".join(c if c not in (None, "—") else "" for c in cells) + " |")
        commands = sorted({c for r in rows for c in (r.get("command"), r.get("trained_with")) if c})
        lines += ["", "Commands:", "", *[f"    {c}" for c in commands], ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
