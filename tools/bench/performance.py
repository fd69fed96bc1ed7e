"""Benchmark: what compression buys on each target, in one run: ResNet-8 in FP32, INT8, INT4, ternary and W1A1.

    .venv/bin/python tools/bench/performance.py                         # writes docs/performance.md
    .venv/bin/python tools/bench/performance.py --repeat 200 --mcu-target cortex-m33 --samples 4

One run measures, on this machine:
- host latency (x86, 1 thread, batch 1; per engine the lowest of 5 medians of `--repeat` runs, the engines taking
  turns so that a slow spell of a shared machine does not favour one, with the medians' spread and the speed-up
  over onnxruntime FP32 round by round; two timings: the engine alone, edgebin by TVM's timer around its VM and
  onnxruntime's `session.run` less that of a one-node Identity model, and a Python call from a numpy input to a
  numpy output, each engine paying its binding's overhead), whole model: onnxruntime FP32,
  onnxruntime INT8 (the QDQ model), TVM FP32 (the FP32 ONNX compiled untuned), edgebin INT8 (the QDQ model
  compiled: int8 micro-kernels), edgebin INT4 and ternary (their weights stay packed at 4 and 2 bits in model.so
  and each kernel decodes its weight to int8 once a run, then INT8's kernels: docs/lut-weights.md "Host"),
  onnxruntime on the W1A1 graph (the exported float form of the binary model) and edgebin W1A1 (binary convs on
  packed bits, XNOR/popcount);
- host latency per binary conv layer against onnxruntime's FP32 conv of the same shape (`binary_layers.py`);
- Cortex-M instructions per inference on QEMU (`--mcu-target`, default cortex-m4: since commit 5a6cf64 the W1A1
  model needs 107,748 B of RAM at 28x28, stack included, within cortex-m4's 128 KiB; docs/performance.md's last
  run used cortex-m33, then the default) for FP32 (the FP32 ONNX compiled to a float32 C bundle: TVM's plain
  loops on the FPU, the baseline), INT8, INT4, ternary and W1A1, per conv layer (instructions per MAC), and the
  weights' flash bytes (INT4 and ternary weights stay packed at 4 and 2 bits through the LUT kernels).
The INT8 model is `edgebin export`'s PTQ of models/resnet8_fashion.pt, INT4 its data-free NUPES W4A8 (PowerQuant
exponents, table-coded 4-bit weights), ternary a TWN QAT with 8-bit activations and W1A1 a binary QAT, both trained
for `--epochs` on `--train-samples` images (enough for timing, which does not depend on the weights;
accuracy is docs/results.md's business). Emulator figures are instruction counts, never milliseconds.
Not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import helper

sys.path.insert(0, str(Path(__file__).parent))
import binary_layers  # noqa: E402  (the per-layer table, same directory)

from edgebin import pipeline, targets  # noqa: E402
from edgebin.atomic import atomic_write_text  # noqa: E402
from edgebin.compile import host  # noqa: E402
from edgebin.compile.importer import load_onnx  # noqa: E402
from edgebin.compile.mcu_emit import compile_bundle  # noqa: E402
from edgebin.compile.mcu_manifest import layer_weights  # noqa: E402
from edgebin.pipeline_qat import TrainingOptions  # noqa: E402
from edgebin.quant import Recipe  # noqa: E402
from edgebin.report.schema import cpu_name  # noqa: E402
from edgebin.runners import QemuRunner  # noqa: E402

CHECKPOINT = Path("models/resnet8_fashion.pt")
HOST = {"kind": "llvm", "mcpu": "native", "num-cores": 1}
ROUNDS = 5  # host latency: the lowest of this many medians, the engines taking turns


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=100, help="timed host runs per engine (median)")
    p.add_argument("--mcu-target", default="cortex-m4", help="Cortex-M target for the QEMU counts")
    p.add_argument("--samples", type=int, default=2, help="inferences per model on QEMU")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--train-samples", type=int, default=2000)
    p.add_argument("--doc", type=Path, default=Path("docs/performance.md"))
    args = p.parse_args()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    host.set_threads(1)
    with tempfile.TemporaryDirectory(prefix="edgebin-perf-") as tmp:
        work = Path(tmp)
        int8 = pipeline.export(CHECKPOINT, data="fashion-mnist", out_dir=work / "int8").out_dir
        training = TrainingOptions(epochs=args.epochs, train_samples=args.train_samples, distill=False)
        int4 = pipeline.export(CHECKPOINT, data="fashion-mnist", out_dir=work / "int4",
                               recipe=pipeline.make_recipe("nupes", bits=4, data_free=True)).out_dir
        ternary = pipeline.export(CHECKPOINT, data="fashion-mnist", out_dir=work / "ternary",
                                  recipe=Recipe.for_method("ternary", activation_bits=8), training=training).out_dir
        binary = pipeline.export(CHECKPOINT, data="fashion-mnist", out_dir=work / "binary",
                                 recipe=Recipe.for_method("binary", estimator="ste"), training=training).out_dir
        models = {"INT8": int8, "INT4": int4, "ternary": ternary, "W1A1": binary}
        latency, python = _host_latency(models, work, args.repeat)
        with tempfile.TemporaryDirectory() as lib_dir:
            lib = binary_layers.build_kernels(Path(lib_dir), binary_layers.RESNET8)
            layers = [binary_layers.time_layer(lib, *layer, repeat=args.repeat) for layer in binary_layers.RESNET8]
        onnx = {"FP32": int8 / pipeline.FP32_ONNX} | {name: path / pipeline.MODEL_ONNX for name, path in models.items()}
        mcu = {name: _mcu(path, args.mcu_target, args.samples, work / f"mcu-{name}") for name, path in onnx.items()}
    text = markdown(latency, python, layers, mcu, args, command)
    atomic_write_text(args.doc, text)
    print(text)
    return 0


def _ort(path: Path, x: np.ndarray):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})


def _host_latency(models: dict[str, Path], work: Path,
                  repeat: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per engine, its median ms in each of ROUNDS rounds (the engines taking turns within a round): (the engine
    alone, a Python call from numpy to numpy)."""
    x = np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32)
    int8, binary = models["INT8"], models["W1A1"]
    compiled = {"TVM FP32": host.compile_onnx(int8 / pipeline.FP32_ONNX, HOST, work / "tvm-fp32", integer=False)}
    for name, folder in models.items():
        compiled[f"edgebin {name}"] = host.compile_onnx(folder / pipeline.MODEL_ONNX, HOST, work / f"edgebin-{name}")
    engines = {
        "onnxruntime FP32": _ort(int8 / pipeline.FP32_ONNX, x),
        "onnxruntime INT8": _ort(int8 / pipeline.MODEL_ONNX, x),
        "onnxruntime W1A1 graph (float)": _ort(binary / pipeline.MODEL_ONNX, x),
    }
    empty = binary_layers.ort_model(helper.make_node("Identity", ["x"], ["y"]), [])  # a session.run's own cost
    engines |= {name: (lambda artefact=artefact: artefact.run(x)) for name, artefact in compiled.items()}
    python: dict[str, list[float]] = {name: [] for name in engines}
    alone: dict[str, list[float]] = {name: [] for name in engines}
    for _ in range(ROUNDS):  # engines take turns, so a slow spell of this shared machine hits them all
        call = binary_layers.median_us(lambda: empty.run(None, {"x": x}), repeat) / 1e3
        for name, run in engines.items():
            python[name].append(binary_layers.median_us(run, repeat) / 1e3)
            alone[name].append(float(np.median(compiled[name].latency_s(x, repeat=repeat))) * 1e3
                               if name in compiled else python[name][-1] - call)
    return alone, python


def _mcu(onnx_path: Path, target_name: str, samples: int, work: Path) -> dict:
    target = targets.load(target_name)
    bundle = compile_bundle(onnx_path, target, work / "bundle")
    manifest = json.loads((bundle / "bundle.json").read_text())
    runner = QemuRunner(target)
    x = np.random.default_rng(0).standard_normal((samples, 1, 28, 28)).astype(np.float32)
    result = runner.run(runner.build(bundle, work / "firmware"), x)
    per_symbol = result.per_symbol_instructions or {}
    calls: dict[str, int] = {}
    for kernel in manifest["kernels"]:
        calls[kernel["symbol"]] = calls.get(kernel["symbol"], 0) + 1
    elements = layer_weights(load_onnx(onnx_path))
    layers = [{"layer": k["layer"], "kind": k["kind"], "macs": k["macs"],
               "instructions": per_symbol.get(k["symbol"], 0) / calls[k["symbol"]],
               "weights": _summed(elements, k["layer"]), "packed_weight_bytes": k.get("packed_weight_bytes")}
              for k in manifest["kernels"] if k["macs"]]
    return {"instructions": result.instructions, "macs": manifest["macs"], "weights_bytes": manifest["weights_bytes"],
            "arena_bytes": manifest["arena_bytes"], "layers": layers, "target": target.name}


def markdown(rounds: dict[str, list[float]], python: dict[str, list[float]], layers: list[dict],
             mcu: dict[str, dict], args, command: str) -> str:
    latency = {name: min(ms) for name, ms in rounds.items()}
    base = latency["onnxruntime FP32"]
    lines = ["# Performance: ResNet-8 in FP32, INT8, INT4, ternary and W1A1", "",
             f"Made by `{command}` on {platform.machine()} ({cpu_name()}), one run. Host: 1 thread, batch 1, "
             "ms per "
             f"inference, the lowest of {ROUNDS} medians of {args.repeat} runs (engines taking turns); speed-up = "
             "onnxruntime FP32 / engine. "
             f"{mcu['INT8']['target']}: QEMU instruction counts, never milliseconds; fewer than FP32 = FP32's "
             "instructions / the model's.", "",
             "## Host, whole model", "",
             "*ms*: the engine alone: edgebin by TVM's timer around its VM (as `edgebin compress` reports), "
             "onnxruntime's `session.run` less that of a one-node Identity model in the same round (its own cost of a "
             "call), the comparison least favourable to edgebin. *Python call*: one call from a numpy input to a "
             "numpy output, `session.run` or `HostArtefact.run`, each engine paying its binding's overhead. "
             f"*Spread*: the lowest and highest of the {ROUNDS} medians; *per round*: onnxruntime FP32's median over "
             "the engine's in the same round, lowest and highest, how far the speed-up moves with the machine.", "",
             "| engine | ms | speed-up vs onnxruntime FP32 | spread (ms) | speed-up per round | Python call (ms) | "
             "speed-up, Python call |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    python_base = min(python["onnxruntime FP32"])
    for name, ms in latency.items():
        ratios = [b / m for b, m in zip(rounds["onnxruntime FP32"], rounds[name], strict=True)]
        lines.append(f"| {name} | {ms:.3f} | {base / ms:.2f}× | {min(rounds[name]):.3f}–{max(rounds[name]):.3f} | "
                     f"{min(ratios):.2f}–{max(ratios):.2f}× | {min(python[name]):.3f} | "
                     f"{python_base / min(python[name]):.2f}× |")
    lines += ["", "## Host, binary conv layers", "",
              "Each binary conv as edgebin runs it (pack the float input's signs, then XNOR/popcount; the kernels "
              "called from a C loop, as model.so calls them) against onnxruntime's FP32 conv of the same shape as a "
              "one-node model, one `session.run` a call. *Less call overhead* subtracts from onnxruntime's time "
              "that of a one-node Identity model on the same input, its own cost of a call, which a conv inside a "
              "whole model does not pay per node: the comparison least favourable to edgebin. The last column "
              "calls edgebin's pack and conv from Python through ctypes (about 0.4 µs a call of overhead).", "",
              binary_layers.markdown(layers, args.repeat).split("\n\n", 2)[2], "",
              f"## {mcu['INT8']['target']} (QEMU)", "",
              "| model | instructions per inference | fewer than FP32 | MACs | instructions per MAC | "
              "weights (flash) | arena (RAM) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for name, m in mcu.items():
        lines.append(f"| {name} | {m['instructions']:,} | {mcu['FP32']['instructions'] / m['instructions']:.2f}× | "
                     f"{m['macs']:,} | {m['instructions'] / m['macs']:.2f} | {m['weights_bytes']:,} B | "
                     f"{m['arena_bytes']:,} B |")
    others = [name for name in mcu if name not in ("FP32", "W1A1")]  # FP32's ONNX names its nodes /Conv, /Conv_1...
    lines += ["", "Per conv and gemm layer (instructions per MAC, the kernel kind in brackets where not int8; a binary "
              "MAC is one ±1 × ±1 product):", "",
              "| layer | " + " | ".join(others) + " | W1A1 | W1A1 kernel |",
              "|---|" + "---:|" * (len(others) + 1) + "---|"]
    by_layer = {name: {r["layer"]: r for r in mcu[name]["layers"]} for name in others}
    for r in mcu["W1A1"]["layers"]:
        cells = [_per_mac(_joined(by_layer[name], r["layer"])) for name in others]
        lines.append(f"| {r['layer']} | " + " | ".join(cells) + f" | {r['instructions'] / r['macs']:.3f} | "
                     f"{r['kind']} |")
        parts = (r["layer"] or "").split(" + ")
        for part in parts if len(parts) > 1 else []:  # the other variants' own layers, which W1A1 runs as one
            lines.append(f"| ↳ {part} | " + " | ".join(_per_mac(by_layer[name].get(part)) for name in others)
                         + " | (above) | |")
    binary = [r for r in mcu["W1A1"]["layers"] if r["kind"] == "binary"]
    if binary:
        instructions, macs = sum(r["instructions"] for r in binary), sum(r["macs"] for r in binary)
        packed, weights = sum(r["packed_weight_bytes"] or 0 for r in binary), sum(r["weights"] or 0 for r in binary)
        lines += ["", f"W1A1's binary convs together: {instructions:,.0f} instructions for {macs:,} binary MACs, "
                  f"{instructions / macs:.2f} per binary MAC. Their weight bits as the kernels read them (bundle.json "
                  f"`packed_weight_bytes`): {packed:,} B for {weights:,} binary weights, "
                  f"{packed / (weights / 8):.2f}× parameters / 8 ({weights // 8:,} B)."]
    return "\n".join(lines) + "\n"


def _summed(elements: dict[str, int], layer: str | None) -> int | None:
    """Weight elements of a layer, or of each layer a kernel computes ("stack2.conv2 + stack2.shortcut")."""
    found = [elements.get(name) for name in (layer or "").split(" + ")]
    return None if layer is None or None in found else sum(found)


def _joined(rows: dict[str, dict], layer: str | None) -> dict | None:
    """A variant's row of `layer`; for layers W1A1 computes in one kernel ("a + b"), their rows summed."""
    found = [rows.get(name) for name in (layer or "").split(" + ")]
    if layer is None or None in found:
        return None
    return {"instructions": sum(r["instructions"] for r in found), "macs": sum(r["macs"] for r in found),
            "kind": found[0]["kind"]}


def _per_mac(r: dict | None) -> str:
    if r is None:
        return ""
    kind = "" if r["kind"] == "int8" else f" ({r['kind']})"
    return f"{r['instructions'] / r['macs']:.2f}{kind}"


if __name__ == "__main__":
    sys.exit(main())
