"""Benchmark: instructions per MAC and weight flash of every layer of a model compiled for a Cortex-M target, on QEMU.

    .venv/bin/python tools/bench/mcu_layers.py                                  # models/*.pt on cortex-m4
    .venv/bin/python tools/bench/mcu_layers.py --models models/lenet5_fashion.pt --target cortex-m7 --baseline
    .venv/bin/python tools/bench/mcu_layers.py --models out/model.onnx          # a QDQ ONNX from `edgebin export`
    .venv/bin/python tools/bench/mcu_layers.py --models out/model.onnx --palette  # low-bit weights packed vs int8

For each model: a checkpoint is quantized as `edgebin export` does (PTQ int8, calibrated on the data set), the
ONNX is compiled into the C bundle for the target (`compile_bundle`), the firmware runs `--samples` images of the
test split (random normal inputs for an ONNX file) on QEMU with edgebin's instruction-count plugin, and one table
is printed per model: every kernel call in execution order with its layer, MACs, instructions per inference,
instructions per MAC and weight bytes in flash (int8: one a weight; packed low-bit weights: their codes and table,
docs/lut-weights.md), then totals, the conv or gemm layer with the most instructions per MAC, and per bundle its
weights, firmware flash, static RAM with the activation arena in it, and RAM with the measured stack
(`QemuRunner.footprint`: what the target's fit check compares with its RAM). Instructions are
those of the kernel's function, so a conv's row includes its im2col gather (and padding), its micro-kernel calls
(inlined) and its requant epilogue; a kernel called several times has its count shared equally between its calls.
`--baseline` also builds the bundle with plain C loops (`mcu_schedule.plain_loops`, the schedule before the
micro-kernels), prints both, and checks that the two firmwares give the same outputs bit for bit. `--palette` does
the same with a bundle whose int8 weights of at most 16 values stay int8 (`mcu_lut.palette_weights(False)`, as
EDGEBIN_PALETTE=0), against the default that packs them (QAT models: W4, W2, ternary).

QEMU counts instructions, not cycles (no pipeline model); see docs/mcu-bundle.md. Not a test: nothing is asserted
but the bit-for-bit check of `--baseline` and `--palette`, which makes the exit status 1 when outputs differ.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shlex
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from edgebin import targets
from edgebin.compile.importer import load_onnx
from edgebin.compile.mcu_emit import compile_bundle
from edgebin.compile.mcu_lut import palette_weights
from edgebin.compile.mcu_manifest import layer_weights
from edgebin.compile.mcu_schedule import plain_loops
from edgebin.runners.qemu import QemuRunner


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", type=Path, default=sorted(Path("models").glob("*.pt")),
                        help="checkpoints (.pt, quantized here) or QDQ ONNX files; default models/*.pt")
    parser.add_argument("--target", default="cortex-m4", help="a Cortex-M target from `edgebin targets`")
    parser.add_argument("--samples", type=int, default=20, help="inferences run on QEMU per model")
    parser.add_argument("--data", default="fashion-mnist", help="data set for calibration and the test inputs")
    parser.add_argument("--baseline", action="store_true", help="also plain C loops; compare outputs bit for bit")
    parser.add_argument("--palette", action="store_true",
                        help="also int8 weights where the default packs a palette; compare outputs bit for bit")
    parser.add_argument("--out", type=Path, default=None, help="keep the ONNX files and bundles here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    target = targets.load(args.target)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    print(f"Made by `{command}` ({target.name}, QEMU {target.qemu.machine}, {args.samples} samples).\n")
    same = True
    with tempfile.TemporaryDirectory(prefix="edgebin-bench-") as tmp:
        out = args.out or Path(tmp)
        for model in args.models:
            onnx_path, x = _model_and_inputs(model, args.data, args.samples, out / model.stem)
            variants = {"micro-kernels": contextlib.nullcontext}
            if args.palette:
                variants = {"int8 weights": lambda: palette_weights(False), **variants}
            if args.baseline:
                variants = {"plain loops": plain_loops, **variants}
            weights = layer_weights(load_onnx(onnx_path))
            runs = {}
            for name, context in variants.items():
                bundle_dir = out / model.stem / target.name / name.replace(" ", "-")
                with context():
                    bundle = compile_bundle(onnx_path, target, bundle_dir)
                runner = QemuRunner(target)
                elf = runner.build(bundle, bundle_dir / "firmware")
                result = runner.run(elf, x)
                manifest = json.loads((bundle / "bundle.json").read_text())
                runs[name] = (manifest, result, runner.footprint(elf, stack_bytes=result.stack_bytes),
                              weight_bytes(manifest, weights))
            print(render(model.name if model.name != "model.onnx" else f"{model.parent.name}/{model.name}", runs))
            if args.baseline or args.palette:
                outputs = [result.outputs for _, result, _, _ in runs.values()]
                identical = all(np.array_equal(outputs[0], o) for o in outputs[1:])
                same &= identical
                print(f"Outputs of the {len(x)} samples: {'identical bit for bit' if identical else 'DIFFERENT'}.\n")
    print(f"Reproduce: {command}")
    return 0 if same else 1


def _model_and_inputs(model: Path, data: str, samples: int, work: Path) -> tuple[Path, np.ndarray]:
    """(QDQ ONNX, float32 inputs): a checkpoint is exported with PTQ; its inputs are the normalised test split."""
    if model.suffix == ".onnx":
        from edgebin.compile import importer

        shape = next(iter(importer.input_shapes(importer.load_onnx(model)).values()))
        return model, np.random.default_rng(0).standard_normal((samples, *shape[1:])).astype(np.float32)
    from edgebin import data as datasets
    from edgebin import pipeline
    from edgebin.data import Normalization

    exported = pipeline.export(model, data=data, out_dir=work / "export")
    dataset = datasets.load_dataset(data)
    x, _ = datasets.evaluation_split(dataset, samples)
    norm = Normalization.from_dict(exported.run_info["normalization"])
    return exported.out_dir / pipeline.MODEL_ONNX, norm.apply(x).astype(np.float32)


def weight_bytes(manifest: dict, weights: dict[str, int]) -> list[int | None]:
    """Flash bytes of each kernel call's weight: a packed low-bit weight's codes and table (bundle.json
    `lut_weights`), a binary conv's packed bits (`packed_weight_bytes`), an int8 layer's weight elements
    (`weights`: layer -> elements); None for other kernels."""
    packed = {r["kernel"]: r["codes_bytes"] + r["table_bytes"] for r in manifest.get("lut_weights", [])
              if r["form"] != "int8"}
    found: list[int | None] = []
    for kernel in manifest["kernels"]:
        if kernel["name"] in packed:
            found.append(packed[kernel["name"]])
        elif "packed_weight_bytes" in kernel:
            found.append(kernel["packed_weight_bytes"])
        elif kernel["macs"] and kernel["kind"] == "int8" and kernel["layer"] in weights:
            found.append(weights[kernel["layer"]])
        else:
            found.append(None)
    return found


def render(title: str, runs: dict) -> str:
    """One Markdown table: a row per kernel call, a column triple (instructions, per MAC, weight bytes) per variant,
    totals; then a line per variant with its bundle's weights, firmware flash and static RAM."""
    names = list(runs)
    manifest = runs[names[-1]][0]
    lines = [f"### {title}", "",
             "| # | layer | kernel | MACs | " + " | ".join(f"instructions ({n}) | per MAC ({n}) | weight B ({n})"
                                                         for n in names) + " |",
             "|---:|---|---|---:|" + "---:|---:|---:|" * len(names)]
    per_call = {name: _per_call(m, r.per_symbol_instructions or {}) for name, (m, r, _, _) in runs.items()}
    rows = _aligned_calls(runs)
    for step, (layer, kernel, macs, counts) in enumerate(rows):
        cells = []
        for name in names:
            count = None if counts[name] is None else per_call[name][counts[name]]
            weight = None if counts[name] is None else runs[name][3][counts[name]]
            cells.append("—" if count is None else f"{count:,.0f}")
            cells.append(f"{count / macs:.2f}" if count is not None and macs else "—")
            cells.append("—" if weight is None else f"{weight:,}")
        short = kernel if len(kernel) <= 48 else kernel[:47] + "…"
        lines.append(f"| {step} | {layer or '—'} | `{short}` | {macs:,} | " + " | ".join(cells) + " |")
    macs = int(manifest["macs"])
    totals, linear = [], []
    for name, (m, result, _, weights) in runs.items():
        linear_count = sum(c for (k, c) in zip(m["kernels"], per_call[name], strict=True)
                           if k["macs"] or k.get("ops") == ["pad"])
        totals += [f"{result.instructions:,}", f"{result.instructions / macs:.2f}", f"{m['weights_bytes']:,}"]
        linear += [f"{linear_count:,.0f}", f"{linear_count / macs:.2f}",
                   f"{sum(w for w in weights if w is not None):,}"]
    lines.append(f"| | **conv + gemm kernels, pads included** | | {macs:,} | " + " | ".join(linear) + " |")
    lines.append(f"| | **whole inference** (weight B: all constants) | | {macs:,} | " + " | ".join(totals) + " |")
    worst = [_worst_layer(m, per_call[name]) for name, (m, _, _, _) in runs.items()]
    lines += ["", "Most instructions per MAC of one conv or gemm layer: " + "; ".join(
        f"{count:.2f} ({layer or kernel}, {name})" for name, (count, layer, kernel) in zip(names, worst, strict=True))
        + ".", ""]
    for name, (m, result, footprint, _) in runs.items():
        packed = [r for r in m.get("lut_weights", []) if r["form"] != "int8"]
        forms = ", ".join(f"{r['layer'] or r['kernel']} {r['form']}" for r in packed) or "none"
        lines.append(f"- {name}: {result.instructions:,} instructions ({result.instructions / macs:.2f} per MAC), "
                     f"weights {m['weights_bytes']:,} B, firmware flash {footprint.flash_bytes:,} B "
                     f"(code {footprint.code_bytes:,} B), static RAM {footprint.static_ram_bytes:,} B (arena "
                     f"{m['arena_bytes']:,} B{_in_place(m)}), RAM with the stack {footprint.ram_bytes:,} B; "
                     f"packed low-bit weights: {forms}.")
    return "\n".join(lines) + "\n"


def _in_place(manifest: dict) -> str:
    """", 3 outputs written over an input" when the planner wrote outputs in place (bundle.json `in_place_of`)."""
    count = sum("in_place_of" in t for t in manifest["tensors"])
    return f", {count} output{'s' if count != 1 else ''} written over an input" if count else ""


def _worst_layer(manifest: dict, per_call: list[float]) -> tuple[float, str | None, str]:
    """(instructions per MAC, layer, kernel name) of the conv/gemm call with the most instructions per MAC."""
    return max((count / kernel["macs"], kernel["layer"], kernel["name"])
               for kernel, count in zip(manifest["kernels"], per_call, strict=True) if kernel["macs"])


def _per_call(manifest: dict, per_symbol: dict[str, int]) -> list[float]:
    """Instructions of each kernel call: its symbol's count, shared equally by the calls of that symbol."""
    calls = Counter(k["symbol"] for k in manifest["kernels"])
    return [per_symbol.get(k["symbol"], 0) / calls[k["symbol"]] for k in manifest["kernels"]]


def _aligned_calls(runs: dict) -> list[tuple]:
    """Rows (layer, kernel name, MACs, {variant: call index or None}): the last variant's calls, each MAC kernel
    matched by layer name in the others, and the other variants' extra kernels (pads) listed where they ran."""
    names = list(runs)
    last = runs[names[-1]][0]["kernels"]
    rows = []
    for other in names[:-1]:  # kernels only the baseline has (its pads), before the call that follows them
        kernels = runs[other][0]["kernels"]
        for i, kernel in enumerate(kernels):
            if not kernel["macs"] and kernel["name"] not in {k["name"] for k in last}:
                rows.append((i, (None, kernel["name"], 0, {n: (i if n == other else None) for n in names})))
    by_layer = {name: {k["layer"]: i for i, k in enumerate(runs[name][0]["kernels"]) if k["macs"] and k["layer"]}
                for name in names}
    by_name: dict[str, dict[str, list[int]]] = {name: {} for name in names}  # kernel name -> its calls, in order
    for name in names:
        for i, kernel in enumerate(runs[name][0]["kernels"]):
            by_name[name].setdefault(kernel["name"], []).append(i)
    seen: Counter = Counter()
    for i, kernel in enumerate(last):
        counts = {}
        occurrence = seen[kernel["name"]]
        seen[kernel["name"]] += 1
        for name in names:
            if name == names[-1]:
                counts[name] = i
            elif kernel["macs"] and kernel["layer"]:
                counts[name] = by_layer[name].get(kernel["layer"])
            else:
                calls = by_name[name].get(kernel["name"], [])
                counts[name] = calls[occurrence] if occurrence < len(calls) else None
        position = counts[names[0]] if counts[names[0]] is not None else i
        rows.append((position + 0.5, (kernel["layer"], kernel["name"], int(kernel["macs"]), counts)))
    return [row for _, row in sorted(rows, key=lambda item: item[0])]


if __name__ == "__main__":
    raise SystemExit(main())
