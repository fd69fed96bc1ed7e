"""Benchmark: how much MetaSchedule tuning (`--tune N`) speeds up TVM's FP32 ResNet-8 on this x86 host.

    .venv/bin/python tools/bench/tune_host.py                              # resnet8_fashion, 256 trials
    .venv/bin/python tools/bench/tune_host.py --trials 512 --page docs/tuning.md

Exports the FP32 ONNX once (`edgebin export`), compiles it for the x86 target twice, untuned (edgebin's CPU loop
order, what `edgebin compile` gives) and tuned with a fresh MetaSchedule database of `--trials` trials (what
`edgebin compile --tune N` gives), then times both and onnxruntime FP32 on one sample, 1 thread, in the same run.
The engines take turns over `--rounds` rounds, so that load from other processes falls on all of them alike.
Prints a Markdown table (and writes it to `--page` if given) with the tuning time and the machine's load.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgebin import metrics, pipeline, targets
from edgebin.atomic import atomic_write_text
from edgebin.compile import compile_onnx, set_threads
from edgebin.compile.tune import TuneConfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/resnet8_fashion.pt"))
    parser.add_argument("--onnx", type=Path, default=None, help="an FP32 ONNX file instead of exporting --model")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--trials", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=200, help="timed runs per engine and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--page", type=Path, default=None, help="also write the Markdown here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="edgebin-tune-bench-") as tmp:
        out = args.out or Path(tmp)
        onnx_path = args.onnx or _export(args.model, args.data, out / "export")
        spec = targets.load("x86").tvm
        print(f"compiling {onnx_path} untuned and with {args.trials} tuning trials ...", file=sys.stderr, flush=True)
        untuned = compile_onnx(onnx_path, spec, out / "untuned", integer=False)
        start = time.perf_counter()
        tuned = compile_onnx(onnx_path, spec, out / "tuned", integer=False,
                             tune=TuneConfig(args.trials, out / "tuned" / "tuning"))
        tune_s = time.perf_counter() - start

        x = np.random.default_rng(0).standard_normal((8, *untuned.input_shape[1:])).astype(np.float32)
        session = metrics.onnxruntime_session(onnx_path, threads=1)
        feed_name = session.get_inputs()[0].name
        reference = np.concatenate([session.run(None, {feed_name: x[i : i + 1]})[0] for i in range(len(x))])
        max_abs = {name: float(np.abs(art.run(x) - reference).max())
                   for name, art in (("untuned", untuned), ("tuned", tuned))}

        set_threads(1)
        x1 = x[:1]
        runs: dict[str, list[float]] = {"untuned": [], "tuned": [], "ort": []}
        load_before = os.getloadavg()
        for _ in range(args.rounds):  # engines take turns: a burst of load hits each of them
            runs["untuned"] += untuned.latency_s(x1, warmup=10, repeat=args.repeat)
            runs["tuned"] += tuned.latency_s(x1, warmup=10, repeat=args.repeat)
            runs["ort"] += _time_ort(session, {feed_name: x1}, args.repeat)
        load_after = os.getloadavg()

    stats = {name: metrics.LatencyStat.from_seconds(seconds, engine=name) for name, seconds in runs.items()}
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    page = render(args, tuned.tuning, tune_s, stats, max_abs, (load_before, load_after), command)
    print(page)
    if args.page:
        atomic_write_text(args.page, page)
        print(f"wrote {args.page}", file=sys.stderr)
    return 0


def _export(model: Path, data: str, out: Path) -> Path:
    print(f"exporting {model} ...", file=sys.stderr, flush=True)
    pipeline.export(model, data=data, out_dir=out)
    return out / pipeline.FP32_ONNX


def _time_ort(session, feed: dict, repeat: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        session.run(None, feed)
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, feed)
        seconds.append(time.perf_counter() - start)
    return seconds


def render(args, tuning: dict, tune_s: float, stats: dict, max_abs: dict, loads: tuple, command: str) -> str:
    base = stats["untuned"].median_ms
    label = {"untuned": "TVM FP32, untuned (`edgebin compile`)",
             "tuned": f"TVM FP32, tuned (`edgebin compile --tune {args.trials}`)",
             "ort": "onnxruntime FP32"}
    lines = [f"| engine ({args.model.stem if args.onnx is None else args.onnx.name}, 1 thread) | median ms | "
             "p10 ms | p90 ms | speed-up vs untuned | max abs diff vs onnxruntime |",
             "|---|---|---|---|---|---|"]
    for name in ("untuned", "tuned", "ort"):
        st = stats[name]
        diff = f"{max_abs[name]:.1e}" if name in max_abs else "—"
        lines.append(f"| {label[name]} | {st.median_ms:.3f} | {st.p10_ms:.3f} | {st.p90_ms:.3f} | "
                     f"{base / st.median_ms:.2f}× | {diff} |")
    lines += ["",
              f"Tuning: {tuning.get('trials_run', 0)} trials over {tuning.get('tasks', 0)} kernels in {tune_s:.0f} s "
              f"(compile included); {len(tuning.get('tuned_kernels', []))} kernels use tuned schedules. "
              f"{args.rounds} rounds × {args.repeat} runs per engine, taking turns.",
              f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"load average {loads[0][0]:.1f} before timing and {loads[1][0]:.1f} after.",
              f"Command: `{command}`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
