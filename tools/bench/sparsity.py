"""Benchmark: WGSEF structured sparsity against magnitude (L1) filter pruning, ResNet-8 on Fashion-MNIST, written
to its own section of docs/results.md.

    .venv/bin/python tools/bench/sparsity.py                               # 25/50/75 % filters, WGSEF and L1
    .venv/bin/python tools/bench/sparsity.py --sparsities 0.5 --train-samples 10000 --epochs 2 --finetune-epochs 1
    .venv/bin/python tools/bench/sparsity.py --render                      # the doc section from the saved runs only
    .venv/bin/python tools/bench/sparsity.py --scaling                     # prox time at 1e3..1e6 groups only

Every run starts from models/resnet8_fashion.pt and trains with `edgebin.pipeline_sparsity.sparsify` at the same
seed, training subset, learning rate and number of epochs, distilling from the FP32 model: WGSEF takes `--epochs`
with the proximal step, the exact step, then `--finetune-epochs` with the pruned filters held at zero; L1 keeps the
filters with the largest L1 norms before the first step (Li et al., ICLR 2017) and fine-tunes for all the epochs.
Both remove the pruned filters (edgebin.sparsity.shrink). Each shrunk checkpoint and the dense one are then
quantized as `edgebin export` does (INT8 PTQ) and measured in the same invocation: FP32 and INT8 (onnxruntime, QDQ)
top-1 on the whole test split, parameters, MACs, host latency of the INT8 model compiled by edgebin (TVM, 1 thread,
batch 1, the lowest of 5 medians of `--repeat` runs, the models taking turns), and on cortex-m4 (QEMU) the
instructions per inference, weights (flash) and arena (RAM) bytes. Speed-ups are against the dense model of the
same invocation. Records go to `--results` (one JSON object per run, kept between invocations) and are rendered
between this script's markers in `--doc`; hand-written findings below its findings marker in that section survive a
re-render, and nothing outside the section is touched. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from doc_section import write_section  # noqa: E402  (same directory)

from edgebin import data as datasets
from edgebin import metrics, pipeline, targets
from edgebin.compile import host
from edgebin.compile.mcu_emit import compile_bundle
from edgebin.loading import load_model
from edgebin.pipeline_sparsity import SparsityConfig, count_macs, sparsify
from edgebin.report.schema import cpu_name
from edgebin.runners import QemuRunner
from edgebin.sparsity import sef_prox_factors

CHECKPOINT = Path("models/resnet8_fashion.pt")
HOST = {"kind": "llvm", "mcpu": "native", "num-cores": 1}
ROUNDS = 5  # host latency: the lowest of this many medians, the models taking turns


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    p.add_argument("--selections", nargs="+", default=["wgsef", "l1"], choices=["wgsef", "l1"])
    p.add_argument("--epochs", type=int, default=SparsityConfig.epochs, help="WGSEF epochs before the exact step")
    p.add_argument("--finetune-epochs", type=int, default=SparsityConfig.finetune_epochs,
                   help="masked epochs after it (L1: all are masked)")
    p.add_argument("--lam", type=float, default=None, help="default: Σ lr·λ over the WGSEF steps = 3")
    p.add_argument("--form", default=SparsityConfig.form, choices=["dc", "envelope"])
    p.add_argument("--untied", action="store_true", help="only channels not tied through residual adds")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-samples", type=int, default=30000, help="class-stratified training subset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads for training")
    p.add_argument("--repeat", type=int, default=100, help="timed host runs per model (median)")
    p.add_argument("--samples", type=int, default=2, help="inferences per model on QEMU")
    p.add_argument("--target", default="cortex-m4")
    p.add_argument("--label", default="", help="appended to each run's name, so another schedule gets its own row")
    p.add_argument("--results", type=Path, default=Path("tools/bench/sparsity_results.jsonl"))
    p.add_argument("--doc", type=Path, default=Path("docs/results.md"))
    p.add_argument("--render", action="store_true", help="only render --doc from --results")
    p.add_argument("--scaling", action="store_true", help="only time the prox at 1e3..1e6 groups")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    if args.scaling:
        _save(args.results, {"run": "scaling", "rows": prox_scaling(), "command": command, "cpu": cpu_name()})
    elif not args.render:
        torch.set_num_threads(args.threads)
        host.set_threads(1)
        with tempfile.TemporaryDirectory(prefix="edgebin-sparsity-") as tmp:
            for record in _measure_all(args, Path(tmp)):
                _save(args.results, {**record, "command": command})
    render(args.results, args.doc)
    return 0


def _measure_all(args, work: Path) -> list[dict]:
    """Train every (selection, sparsity) run, then measure them and the dense model in one go."""
    models = {"dense": (CHECKPOINT, {"run": "dense", "selection": "dense", "sparsity": 0.0})}
    for sparsity in args.sparsities:
        for selection in args.selections:
            name = f"{selection}-{round(100 * sparsity)}" + (f" ({args.label})" if args.label else "")
            config = SparsityConfig(sparsity=sparsity, selection=selection, lam=args.lam, form=args.form,
                                    tied=not args.untied, epochs=args.epochs, finetune_epochs=args.finetune_epochs,
                                    lr=args.lr, train_samples=args.train_samples, seed=args.seed)
            started = time.perf_counter()
            result = sparsify(CHECKPOINT, data="fashion-mnist", out=work / f"{name}.pt", config=config)
            info = {"run": name, "selection": selection, "sparsity": sparsity, "epochs": args.epochs,
                    "finetune_epochs": args.finetune_epochs, "lam": result.lam if selection == "wgsef" else None,
                    "form": args.form if selection == "wgsef" else None, "tied": not args.untied, "lr": args.lr,
                    "train_samples": args.train_samples, "seed": args.seed, "exact": result.exact,
                    "sets": result.sets, "train_seconds": round(time.perf_counter() - started, 1),
                    "history": result.history}
            models[name] = (result.path, info)
    ds = datasets.load_dataset("fashion-mnist")
    measured = {name: _static(path, ds, work / name.replace(" ", "_")) for name, (path, _) in models.items()}
    latency = _host_latency({name: m["artefact"] for name, m in measured.items()}, args.repeat)
    target = targets.load(args.target)
    records = []
    for name, (_, info) in models.items():
        m = measured[name]
        mcu = _mcu(m["onnx"], target, args.samples, work / f"mcu-{name.replace(' ', '_')}")
        records.append({**info, **{k: v for k, v in m.items() if k not in ("artefact", "onnx")}, **mcu,
                        "host_ms": latency[name], "target": target.name, "cpu": cpu_name()})
    dense = records[0]
    for r in records:
        r["host_speedup"] = dense["host_ms"] / r["host_ms"]
        r["instructions_ratio"] = dense["instructions"] / r["instructions"]
    return records


def _static(path: Path, ds, work: Path) -> dict:
    """Accuracies, size and MACs of a checkpoint, its INT8 export and the host library compiled from it."""
    loaded = load_model(path)
    norm = datasets.Normalization.from_dict(loaded.normalization)
    x_test = norm.apply(ds.x_test).astype(np.float32)
    fp32 = metrics.accuracy(metrics.run_torch(loaded.module, x_test, batch=1000), ds.y_test)
    exported = pipeline.export(path, data="fashion-mnist", out_dir=work / "export")
    onnx_path = exported.out_dir / pipeline.MODEL_ONNX
    int8 = metrics.accuracy(metrics.run_onnxruntime(onnx_path, x_test), ds.y_test)
    artefact = host.compile_onnx(onnx_path, HOST, work / "host")
    return {"accuracy": fp32, "int8_accuracy": int8, "parameters": sum(p.numel() for p in loaded.module.parameters()),
            "macs": count_macs(loaded.module, loaded.input_shape), "onnx": onnx_path, "artefact": artefact}


def _host_latency(artefacts: dict, repeat: int) -> dict[str, float]:
    """ms per inference of each compiled model: the lowest of ROUNDS medians, the models taking turns."""
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    result: dict[str, float] = {}
    for _ in range(ROUNDS):
        for name, artefact in artefacts.items():
            ms = float(np.median(artefact.latency_s(x, repeat=repeat))) * 1e3
            result[name] = min(result.get(name, np.inf), ms)
    return result


def _mcu(onnx_path: Path, target, samples: int, work: Path) -> dict:
    bundle = compile_bundle(onnx_path, target, work / "bundle")
    manifest = json.loads((bundle / "bundle.json").read_text())
    runner = QemuRunner(target)
    x = np.random.default_rng(0).standard_normal((samples, 1, 28, 28)).astype(np.float32)
    result = runner.run(runner.build(bundle, work / "firmware"), x)
    return {"instructions": result.instructions, "bundle_macs": manifest["macs"],
            "weights_bytes": manifest["weights_bytes"], "arena_bytes": manifest["arena_bytes"]}


def prox_scaling(sizes: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000), repeat: int = 5) -> list[dict]:
    """Seconds of one group prox (k = n/2, the DC and envelope forms share the solver) at each number of groups."""
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        norms = torch.from_numpy(np.abs(rng.standard_normal(n)) * rng.uniform(0.1, 10, n))
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            sef_prox_factors(norms, 0.5, n // 2)
            times.append(time.perf_counter() - start)
        rows.append({"groups": n, "seconds": min(times)})
    return rows


def _save(results: Path, record: dict) -> None:
    with results.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k not in ("history", "sets")}), flush=True)


def render(results: Path, doc: Path) -> None:
    """Write this benchmark's section of `doc` (doc_section.write_section), keeping its findings."""
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()] \
        if results.is_file() else []
    latest: dict[str, dict] = {}
    for r in records:  # a later record of the same run replaces the earlier one
        latest[r["run"]] = r
    write_section(doc, "sparsity", "tools/bench/sparsity.py", markdown(latest))
    print(f"wrote {doc} ({len(latest)} records)")


def markdown(latest: dict[str, dict]) -> str:
    from edgebin.report.markdown import percent

    runs = [r for name, r in latest.items() if name != "scaling"]
    lines = [
        "# Structured sparsity: WGSEF against magnitude pruning, ResNet-8 on Fashion-MNIST",
        "",
        "Made by `tools/bench/sparsity.py` (commands below the table). Every run fine-tunes models/resnet8_fashion.pt",
        "with `edgebin.pipeline_sparsity.sparsify` at the same seed, training subset, learning rate, epochs and",
        "distillation from the FP32 model, then removes the pruned filters; sparsity is the fraction of filters",
        "removed in every prunable set (ResNet-8: each residual block's first conv, and, tied, the channels of each",
        "residual stream), met exactly. WGSEF trains with the proximal step for `epochs`, takes the exact step, then",
        "fine-tunes `ft` epochs masked; L1 keeps the filters with the largest L1 norms from the start and fine-tunes",
        "for all the epochs. Top-1 on the whole test split (10,000 images): FP32 of the shrunk model in PyTorch, and",
        "INT8 (PTQ as `edgebin export` does it) in onnxruntime. Host: the INT8 model compiled by edgebin, 1 thread,",
        "batch 1, the lowest of 5 medians (models taking turns); cortex-m4: QEMU instruction counts, never",
        "milliseconds. Speed-ups are against the dense model measured in the same invocation. **Reduced schedule",
        "on a shared 2-core CPU** (a few epochs), so the accuracies understate what longer fine-tuning gives.",
        "",
        "| Run | Selection | Sparsity | Epochs (+ft) | λ | Top-1 FP32 | Top-1 INT8 | Δ INT8 vs dense | Parameters | "
        "MACs | Host ms | Host speed-up | M4 instructions | M4 ratio | Flash (weights) | RAM (arena) | Exact |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| --- |",
    ]
    dense = latest.get("dense")
    for r in sorted(runs, key=lambda r: (r["sparsity"], r["selection"] != "wgsef", r["run"])):
        delta = "" if dense is None or r is dense else f"{100 * (r['int8_accuracy'] - dense['int8_accuracy']):+.2f}"
        epochs = "" if r["selection"] == "dense" else f"{r['epochs']} (+{r['finetune_epochs']})"
        cells = [r["run"], r["selection"], f"{100 * r['sparsity']:.0f} %", epochs,
                 f"{r['lam']:g}" if r.get("lam") is not None else "", percent(r["accuracy"]),
                 percent(r["int8_accuracy"]), delta, f"{r['parameters']:,}", f"{r['macs']:,}",
                 f"{r['host_ms']:.3f}", f"{r['host_speedup']:.2f}×", f"{r['instructions']:,}",
                 f"{r['instructions_ratio']:.2f}×", f"{r['weights_bytes']:,} B", f"{r['arena_bytes']:,} B",
                 "" if r["selection"] == "dense" else ("yes" if r.get("exact") else "no")]
        lines.append("| " + " | ".join(cells) + " |")
    wgsef = [r for r in runs if r["selection"] == "wgsef"]
    if wgsef:
        lines += ["", "What the exact step removed (WGSEF): the share of each set's squared norm in the filters it "
                  "zeroed, i.e. what the proximal steps had not already moved out.", "",
                  "| Run | " + " | ".join(wgsef[0]["sets"]) + " |", "| --- |" + " ---: |" * len(wgsef[0]["sets"])]
        for r in wgsef:
            lines.append(f"| {r['run']} | " + " | ".join(f"{s['norm_removed']:.3f} ({s['keep']}/{s['groups']})"
                                                         for s in r["sets"].values()) + " |")
    scaling = latest.get("scaling")
    if scaling:
        lines += ["", f"Prox time against the number of groups (k = n/2, one call, best of 5, {scaling['cpu']}):", "",
                  "| Groups | Seconds | ns per group |", "| ---: | ---: | ---: |"]
        for row in scaling["rows"]:
            lines.append(f"| {row['groups']:,} | {row['seconds']:.4f} | {1e9 * row['seconds'] / row['groups']:.0f} |")
    commands = sorted({r["command"] for r in latest.values() if r.get("command")})
    lines += ["", "Commands:", "", *[f"    {c}" for c in commands], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
