"""Benchmark: post-training quantization of the weights below 8 bits, uniform against PowerQuant (data-free) and
NUPES (data-driven), on Fashion-MNIST, written to its own section of docs/results.md.

    nice -n 5 .venv/bin/python tools/bench/ptq.py                          # ResNet-8 and the tiny ViT, W8/W6/W4/W3
    nice -n 5 .venv/bin/python tools/bench/ptq.py --models tiny_vit --bits 4 3
    nice -n 5 .venv/bin/python tools/bench/ptq.py --models resnet8 --bits 4 --act-bits 4 3 --grids uniform power
    .venv/bin/python tools/bench/ptq.py --render                          # the doc section from the saved runs only

Every run starts from the same FP32 checkpoint (models/resnet8_fashion.pt, models/tiny_vit_fashion.pt) and the
int8 PTQ flow of `edgebin export`: capture, `quantize_graph`, activation ranges by min/max on the same
`--calibration-samples` training images (`calibration_split`, seed 0; 8-bit activations unless `--act-bits`), `freeze`.
Then the weight step, on every conv and linear layer (first and last included):

- **uniform**: the exponent a = 1 and no learning, i.e. round-to-nearest symmetric b-bit weights on int8 PTQ's
  per-channel scales (at 8 bits this is int8 PTQ bit for bit);
- **powerquant**: `NupesConfig(mode="data-free")`, each layer's exponent by the bounded search on its weights;
- **nupes**: `NupesConfig(mode="data-driven")`, codes and exponents fitted block by block on the same images.

With `--act-bits` below 8 the input of every conv and linear layer but the first takes that many bits
(`edgebin.quant.power_act`), before the weight step: `--grids uniform` on a uniform b-bit grid, `power` on a power
grid whose exponent is searched per quantizer on the calibration activations (`--power-activations`).

Per run: top-1 on the whole test split of the PyTorch fake-quant model and of the exported ONNX (table-coded
weights, `edgebin.export.lut`) in onnxruntime, their argmax agreement, the wall time of the weight step (the
shared calibration is timed once per model and bit width), and the weight flash as `nupes.weights_bytes` counts it
(b bits per weight packed, one (2N + 1)-byte table per layer, int32 biases). Torch runs on `--threads` threads
(default 1: on the shared 2-core machine two threads spin in OpenMP barriers). Records go to `--results` (one JSON
object per run, kept between invocations; a later record of the same model, method and bits replaces the earlier
one) and are rendered between this script's markers in `--doc`, appended at the end of the file if absent, so
tools/bench/qat.py's re-render (which keeps everything after its findings marker) leaves the section alone;
hand-written findings below its findings marker in the section survive a re-render. Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from doc_section import write_section  # noqa: E402  (same directory)

from edgebin import capture, metrics
from edgebin import data as datasets
from edgebin.export import export_onnx
from edgebin.export.lut import lut_layers, rewrite_lut_onnx
from edgebin.loading import load_model
from edgebin.pipeline import make_recipe
from edgebin.quant import calibrate, freeze, nupes, power_act, quantize_graph

CHECKPOINTS = {"resnet8": Path("models/resnet8_fashion.pt"), "tiny_vit": Path("models/tiny_vit_fashion.pt")}
METHODS = ("uniform", "powerquant", "nupes")
GRIDS = ("uniform", "power")  # activation grids below 8 bits


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(CHECKPOINTS), choices=list(CHECKPOINTS))
    p.add_argument("--bits", nargs="+", type=int, default=[8, 6, 4, 3])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--act-bits", nargs="+", type=int, default=[8], help="activation bits (below 8: NUPES inputs)")
    p.add_argument("--grids", nargs="+", default=["uniform"], choices=GRIDS,
                   help="activation grids below 8 bits")
    p.add_argument("--calibration-samples", type=int, default=1024)
    p.add_argument("--iterations", type=int, default=400, help="NUPES Adam steps per block")
    p.add_argument("--eval-samples", type=int, default=None, help="test images (default: all 10,000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--results", type=Path, default=Path("tools/bench/ptq_results.jsonl"))
    p.add_argument("--doc", type=Path, default=Path("docs/results.md"))
    p.add_argument("--render", action="store_true", help="only render --doc from --results")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    if not args.render:
        torch.set_num_threads(args.threads)
        ds = datasets.load_dataset("fashion-mnist")
        for model in args.models:
            for record in _runs(model, ds, args):
                _save(args.results, {**record, "command": command, "machine": _machine(args.threads),
                                     "load_avg": round(os.getloadavg()[0], 1)})
    render(args.results, args.doc)
    return 0


def _runs(model_name: str, ds, args):
    """One record per (bits, method) of `model_name`, after its FP32 reference."""
    loaded = load_model(CHECKPOINTS[model_name])
    norm = datasets.Normalization.from_dict(loaded.normalization) if loaded.normalization else ds.normalization()
    x_test, y_test = datasets.evaluation_split(ds, args.eval_samples)
    x_test = norm.apply(x_test)
    x_calib = norm.apply(datasets.calibration_split(ds, args.calibration_samples))
    fp32_graph = capture.capture_graph(loaded)
    batch = min(64, capture.batch_size_limit(fp32_graph, loaded.input_shape))
    fp32_accuracy = metrics.accuracy(metrics.run_torch(fp32_graph, x_test), y_test)
    fp32_bytes = sum(p.numel() * 4 for p in fp32_graph.parameters())
    logging.info("%s: FP32 top-1 %.4f on %d test images", model_name, fp32_accuracy, len(y_test))
    for bits in args.bits:
        recipe = make_recipe("nupes", calibration_samples=args.calibration_samples, bits=bits)
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's pytree notice during the copy
            calibrated = copy.deepcopy(fp32_graph)
        summary = quantize_graph(calibrated, recipe)
        calibrate(calibrated, x_calib, batch_size=batch)
        freeze(calibrated)
        calibration_s = time.perf_counter() - started
        activations = [(a, grid) for a in args.act_bits for grid in (args.grids if a < 8 else ["uniform"])]
        for (act_bits, grid), method in ((act, method) for act in activations for method in args.methods):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                gm = copy.deepcopy(calibrated)
            run_recipe = make_recipe("nupes", calibration_samples=args.calibration_samples, bits=bits,
                                     data_free=method == "powerquant", iterations=args.iterations,
                                     act_bits=act_bits, power_activations=grid == "power")
            started = time.perf_counter()
            tables = power_act.quantize_activations(gm, run_recipe, x_calib, batch_size=batch)
            activation_s = time.perf_counter() - started
            started = time.perf_counter()
            if method == "uniform":
                for module, layer_bits in nupes.nupes_layers(gm, run_recipe).values():
                    nupes.set_lut_weight(module, nupes.make_lut_weight(module, 1.0, layer_bits))
            else:
                nupes.quantize_nupes(gm, run_recipe, x_calib, batch_size=batch)
            weight_step_s = time.perf_counter() - started
            torch_logits = metrics.run_torch(gm, x_test)
            with tempfile.TemporaryDirectory(prefix="edgebin-ptq-") as tmp:
                path = Path(tmp) / "model.onnx"
                layers = nupes.layer_dicts(gm, [r.to_dict() for r in summary.layers])
                export_onnx(gm, loaded.input_shape, path, layers=layers)
                rewrite_lut_onnx(path, lut_layers(gm))
                onnx_logits = metrics.run_onnxruntime(path, x_test)
            exponents = [lut.exponent for m in gm.modules() if (lut := nupes.lut_weight_of(m)) is not None]
            record = {
                "model": model_name, "method": method, "weight_bits": bits, "activation_bits": act_bits,
                "activation_grid": grid, "activation_s": round(activation_s, 2),
                "activation_exponents": [t.exponent for t in tables],
                "calibration_samples": int(len(x_calib)), "iterations": args.iterations if method == "nupes" else 0,
                "eval_samples": int(len(y_test)), "fp32_accuracy": fp32_accuracy,
                "accuracy": metrics.accuracy(torch_logits, y_test), "onnx_accuracy": metrics.accuracy(onnx_logits,
                                                                                                     y_test),
                "onnx_argmax_equal": float(np.mean(torch_logits.argmax(1) == onnx_logits.argmax(1))),
                "calibration_s": round(calibration_s, 2), "weight_step_s": round(weight_step_s, 2),
                "weights_bytes": nupes.weights_bytes(gm), "fp32_weights_bytes": int(fp32_bytes),
                "layers": len(exponents), "exponent_min": round(min(exponents), 4),
                "exponent_max": round(max(exponents), 4),
            }
            logging.info("%s W%dA%d (%s) %s: %.2f%% (onnxruntime %.2f%%), weight step %.1f s", model_name, bits,
                         act_bits, grid, method, 100 * record["accuracy"], 100 * record["onnx_accuracy"],
                         weight_step_s)
            yield record


def _machine(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return f"{cpu}, {os.cpu_count()} cores, {threads} torch thread{'s' if threads > 1 else ''}"


def _save(results: Path, record: dict) -> None:
    with results.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def render(results: Path, doc: Path) -> None:
    """Write this benchmark's section of `doc` (doc_section.write_section), keeping its findings."""
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()] \
        if results.is_file() else []
    latest: dict[tuple, dict] = {}
    for r in records:  # a later record of the same run replaces the earlier one
        latest[_key(r)] = r
    write_section(doc, "ptq", "tools/bench/ptq.py", markdown(list(latest.values())))
    print(f"wrote {doc} ({len(latest)} records)")


def markdown(records: list[dict]) -> str:
    from edgebin.report.markdown import percent

    lines = [
        "# Post-training quantization below 8 bits: uniform, PowerQuant and NUPES on Fashion-MNIST",
        "",
        "Made by `tools/bench/ptq.py` (commands below each table). Every run starts from the same FP32 checkpoint,",
        "calibrates 8-bit activations on the same 1,024 training images and then quantizes the weights of every conv",
        "and linear layer to b bits: **uniform** (exponent 1, round to nearest on int8 PTQ's per-channel scales, no",
        "learning; at 8 bits this is `--method int8`), **PowerQuant** (`--method nupes --data-free`: each layer's",
        "exponent searched on its weights) or **NUPES** (`--method nupes`: codes and exponents fitted by block-wise",
        "reconstruction on the same images, N Adam steps per block). Top-1 is on the whole test split, for the",
        "PyTorch fake-quant model and the exported ONNX in onnxruntime. *Weight step* is the wall time of that",
        "step alone; *calibration* (shared by the three methods) is the int8 PTQ flow before it. *Weights* is the",
        "flash the quantized weights need: b bits per weight, one (2^b − 1)-byte table per layer, int32 biases.",
        "*Activations* below 8 bits apply to the input of every conv and linear layer but the first, on a uniform",
        "grid or on a power grid whose exponent a is searched per quantizer on the calibration activations",
        "(`--act-bits b --power-activations`; the range of a's is shown); they are fitted before the weight step.",
        "",
    ]
    for model in sorted({r["model"] for r in records}):
        rows = sorted((r for r in records if r["model"] == model),
                      key=lambda r: (-r["weight_bits"], -r["activation_bits"], GRIDS.index(_grid(r)),
                                     METHODS.index(r["method"])))
        fp32 = rows[0]["fp32_accuracy"]
        lines += [f"## {model} (FP32 {percent(fp32)})", "",
                  "| Bits | Method | Activations | Top-1 (onnxruntime) | Δ vs FP32 | Top-1 (PyTorch) "
                  "| ONNX argmax = PyTorch | Weight exponents | Weight step | Calibration | Weights |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in rows:
            low, high = f"{r['exponent_min']:.2f}", f"{r['exponent_max']:.2f}"
            exponents = low if low == high else f"{low}–{high}"
            lines.append(
                f"| W{r['weight_bits']}A{r['activation_bits']} | {_method(r)} | {_activations(r)} | "
                f"{percent(r['onnx_accuracy'])} | "
                f"{100 * (r['onnx_accuracy'] - fp32):+.2f} | {percent(r['accuracy'])} | "
                f"{percent(r['onnx_argmax_equal'])} | {exponents} | {r['weight_step_s']:.2f} s | "
                f"{r['calibration_s']:.1f} s | {r['weights_bytes']:,} B |")
        first = rows[0]
        lines += ["", f"{first['layers']} layers; FP32 weights {first['fp32_weights_bytes']:,} B; "
                  f"{first['eval_samples']:,} test images; {first['calibration_samples']:,} calibration images.", ""]
        commands = sorted({r["command"] for r in rows})
        machines = ", ".join(sorted({r["machine"] for r in rows}))
        loads = [r["load_avg"] for r in rows if r.get("load_avg") is not None]
        shown = f"; 1-minute load average {min(loads):.1f}–{max(loads):.1f} around the runs" if loads else ""
        lines += ["Commands (each under `nice -n 5`):", "", *[f"    {c}" for c in commands], "",
                  f"Machine: {machines}{shown} (other benchmarks shared it: wall times are a rough guide).", ""]
    return "\n".join(lines) + "\n"


def _key(r: dict) -> tuple:
    return r["model"], r["method"], r["weight_bits"], r["activation_bits"], _grid(r)


def _grid(r: dict) -> str:
    return r.get("activation_grid", "uniform")  # records before --act-bits: 8-bit uniform


def _activations(r: dict) -> str:
    """'8-bit', '4-bit uniform' or '4-bit power, a 0.52–0.81' (the searched input exponents)."""
    if r["activation_bits"] == 8 and _grid(r) == "uniform":
        return "8-bit"
    exponents = r.get("activation_exponents") or []
    shown = f", a {min(exponents):.2f}–{max(exponents):.2f}" if exponents and _grid(r) == "power" else ""
    return f"{r['activation_bits']}-bit {_grid(r)}{shown}"


def _method(r: dict) -> str:
    return {"uniform": "uniform", "powerquant": "PowerQuant", "nupes": f"NUPES, N = {r['iterations']}"}[r["method"]]


if __name__ == "__main__":
    sys.exit(main())
