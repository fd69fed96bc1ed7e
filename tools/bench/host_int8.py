"""Benchmark: INT8 PTQ of the bundled checkpoints for the x86 host, next to their FP32 baselines.

    .venv/bin/python tools/bench/host_int8.py                     # all models/*.pt, full test split
    .venv/bin/python tools/bench/host_int8.py --models models/resnet8_fashion.pt --repeat 200

For each model it runs the same `edgebin compress` as the CLI (accuracy of FP32 / fake-quant / onnxruntime /
compiled, agreement, latency of five engines measured in one run, 1 thread, median) and writes one Markdown
page of tables (default docs/host-int8.md) with the command that produced it. Numbers are from this machine
only; the environment section says which.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from edgebin import pipeline
from edgebin.atomic import atomic_write_text

ENGINES = ("pytorch-fp32", "onnxruntime-fp32", "onnxruntime-int8", "tvm-fp32", "edgebin-int8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", type=Path, default=sorted(Path("models").glob("*.pt")))
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--eval-samples", type=int, default=None)
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("out/bench"))
    parser.add_argument("--page", type=Path, default=Path("docs/host-int8.md"))
    args = parser.parse_args()

    reports = {}
    for model in args.models:
        print(f"== {model}", flush=True)
        reports[model.stem] = pipeline.compress(
            model, target="x86", data=args.data, out_dir=args.out / model.stem, eval_samples=args.eval_samples,
            latency_repeat=args.repeat,
        ).to_dict()
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    atomic_write_text(args.page, render(reports, command))
    print(f"wrote {args.page}")
    return 0


def render(reports: dict[str, dict], command: str) -> str:
    lines = ["# INT8 on the x86 host: accuracy and latency next to FP32", "",
             f"Made by `{command}`.", ""]
    lines += ["## Accuracy (fractions of the evaluation split, as %)", "",
              "| model | samples | FP32 | INT8 fake-quant (PyTorch) | INT8 onnxruntime | INT8 compiled (edgebin) "
              "| Δ compiled vs FP32 (points) | top-1 agreement compiled vs onnxruntime | max abs "
              "| weights (INT8 / FP32) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in reports.items():
        a, g, f = r["accuracy"], r["agreement"], r["footprint"]
        lines.append(
            f"| {name} | {a['samples']} | {100 * a['fp32']:.2f} | {100 * a['compressed']:.2f} | "
            f"{100 * a['onnxruntime']:.2f} | {100 * a['compiled']:.2f} | {100 * (a['compiled'] - a['fp32']):+.2f} | "
            f"{100 * g['top1']:.2f} | {g['max_abs']:.4f} | {f['weights_bytes']:,} / {f['fp32_weights_bytes']:,} B |"
        )
    lines += ["", "## Latency (ms per inference, batch 1, 1 thread, median; ratio = onnxruntime-fp32 / engine)", "",
              "| model | " + " | ".join(ENGINES) + " |", "|---|" + "---|" * len(ENGINES)]
    for name, r in reports.items():
        engines = r["latency"]["engines"]
        base = engines["onnxruntime-fp32"]["median_ms"]
        cells = [f"{engines[e]['median_ms']:.3f} ({base / engines[e]['median_ms']:.2f}×)" if e in engines else "—"
                 for e in ENGINES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "edgebin-int8: each int8 conv calls a C micro-kernel once per row of output pixels "
              "(`edgebin/compile/cpu_kernels/edgebin_cpu_kernels.c`: AVX-512 VNNI with the pixels in the vector "
              "lanes, else plain C): a stride-1 conv reads its padded input where it lies (no im2col), other convs "
              "gather a k-major im2col row; gemms call the one-column kernel. The requant epilogue (vectorized along "
              "the row, or for rows under 16 pixels once a layer along each channel's outputs; the residual add in "
              "float32 fused multiply-adds) and the other kernels are TVM's LLVM code; outputs are bit-identical to "
              "the plain loops. "
              "Medians of one run on a shared machine: expect a few percent to tens of percent between runs."]
    env = next(iter(reports.values()))["environment"] if reports else {}
    lines += ["", "## Kernels", "", "| model | kernels by kind | convs and gemms |", "|---|---|---|"]
    for name, r in reports.items():
        lines.append(f"| {name} | {r['kernels']} | {r['ops']} |")
    lines += ["", f"Environment: {env}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
