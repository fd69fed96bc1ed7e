"""Benchmark: edgebin's packed binary convs against onnxruntime's FP32 conv of the same shape, per layer, 1 thread.

    .venv/bin/python tools/bench/binary_layers.py                  # ResNet-8's binary convs (Fashion-MNIST, 28x28)
    .venv/bin/python tools/bench/binary_layers.py --repeat 500 --doc out/binary-layers.md

Each layer is timed in the same run three ways, median of `--repeat` measurements after a warm-up, the lowest
of ROUNDS such medians taken in turns:
- onnxruntime FP32: a one-node Conv model (random float weights) with `intra_op_num_threads=1`, one
  `session.run` per measurement (its per-call overhead included, as a model's single call pays it);
- edgebin pack: `edgebin_bpack_nchw_f32`, the float activation's signs packed to bits (once per layer input);
- edgebin conv: `edgebin_bconv2d`, XNOR/popcount on the packed bits, int32 out.
The C kernels are the shape-specialized ones compiled models link (`binary.c_source`), built here with the host
compiler at -O3 -march=native, as for the host's model.so. Each edgebin measurement is a C loop of `INNER` calls
timed in C, as model.so calls them: no Python in between. The table also gives, per layer, pack + conv as one
ctypes call each (what this script measured before it had the C loop: each call then carries about 0.4 µs of
ctypes overhead that a compiled model does not pay). Outputs are checked against the integer reference first.
Not a test: nothing is asserted about speed.
"""

from __future__ import annotations

import argparse
import ctypes
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from edgebin.compile.binary import (
    KERNEL_DIR,
    binary_conv2d_reference,
    c_source,
    pack_weight_bits,
    specialized_name,
    words_for,
)

# ResNet-8 on 28x28 (edgebin.zoo): (name, C, H, Cout, kernel, stride, pad)
RESNET8 = [
    ("stack1.conv1", 16, 28, 16, 3, 1, 1),
    ("stack1.conv2", 16, 28, 16, 3, 1, 1),
    ("stack2.conv1", 16, 28, 32, 3, 2, 1),
    ("stack2.conv2", 32, 14, 32, 3, 1, 1),
    ("stack2.shortcut", 16, 28, 32, 1, 2, 0),
    ("stack3.conv1", 32, 14, 64, 3, 2, 1),
    ("stack3.conv2", 64, 7, 64, 3, 1, 1),
    ("stack3.shortcut", 32, 14, 64, 1, 2, 0),
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeat", type=int, default=200)
    p.add_argument("--doc", type=Path, help="also write the table to this markdown file")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lib = build_kernels(Path(tmp), RESNET8)
        rows = [time_layer(lib, *layer, repeat=args.repeat) for layer in RESNET8]
    text = markdown(rows, args.repeat)
    print(text)
    if args.doc:
        args.doc.write_text(text)
    return 0


def _names(c: int, h: int, cout: int, k: int, stride: int, pad: int) -> tuple[str, str]:
    oh = (h + 2 * pad - k) // stride + 1
    return (specialized_name("edgebin_bpack_nchw_f32", (1, c, h * h)),
            specialized_name("edgebin_bconv2d", (1, c, h, h, cout, k, k, stride, stride, pad, pad, oh, oh)))


INNER = 20  # kernel calls per timed C loop
ROUNDS = 3  # each figure is the lowest of this many medians, the measurements taking turns

# A C loop timing `reps` calls of a kernel with three pointer arguments (the pack and the int32 conv both take
# three): microseconds per call.
_TIMER_C = """
#include <time.h>
typedef void (*edgebin_bench_kernel)(const void*, const void*, void*);
double edgebin_bench_us(void* kernel, const void* a, const void* b, void* c, int reps) {
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (int r = 0; r < reps; ++r) ((edgebin_bench_kernel)kernel)(a, b, c);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  return ((double)(t1.tv_sec - t0.tv_sec) * 1e6 + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-3) / reps;
}
"""


def build_kernels(tmp: Path, layers: list[tuple]) -> ctypes.CDLL:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        sys.exit("no C compiler (cc or gcc) on PATH")
    (tmp / "kernels.c").write_text(c_source({n for layer in layers for n in _names(*layer[1:])}) + _TIMER_C)
    out = tmp / "libbinary.so"
    subprocess.run([cc, "-O3", "-march=native", "-shared", "-fPIC", f"-I{KERNEL_DIR}", str(tmp / "kernels.c"),
                    "-o", str(out)], check=True, timeout=120)
    lib = ctypes.CDLL(str(out))
    lib.edgebin_bench_us.restype = ctypes.c_double
    lib.edgebin_bench_us.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int]
    return lib


def c_loop_us(lib: ctypes.CDLL, kernel, args: list[ctypes.c_void_p], repeat: int) -> float:
    """Median µs per call of `kernel` over `repeat` C loops of INNER calls each."""
    address = ctypes.cast(kernel, ctypes.c_void_p)
    for _ in range(3):
        lib.edgebin_bench_us(address, *args, INNER)
    return float(np.median([lib.edgebin_bench_us(address, *args, INNER) for _ in range(repeat)]))


def median_us(fn, repeat: int) -> float:
    for _ in range(10):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e6


def time_layer(lib, name: str, c: int, h: int, cout: int, k: int, stride: int, pad: int, *, repeat: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, c, h, h)).astype(np.float32)
    shift = np.zeros(c, np.float32)
    codes = rng.choice(np.array([-1, 1], np.int8), size=(cout, c, k, k))
    oh = (h + 2 * pad - k) // stride + 1
    bits = np.empty((1, h, h, words_for(c)), np.uint32)
    wbits = np.ascontiguousarray(pack_weight_bits(codes))
    out = np.empty((1, cout, oh, oh), np.int32)
    ptr = [ctypes.c_void_p(a.ctypes.data) for a in (x, shift, bits, wbits, out)]
    pack_name, conv_name = _names(c, h, cout, k, stride, pad)
    pack_fn, conv_fn = getattr(lib, pack_name), getattr(lib, conv_name)

    def pack() -> None:
        pack_fn(ptr[0], ptr[1], ptr[2])

    def conv() -> None:
        conv_fn(ptr[2], ptr[3], ptr[4])

    pack()
    conv()
    signs = np.where(x >= 0, 1, -1)
    if not np.array_equal(out, binary_conv2d_reference(signs, codes, (stride, stride), (pad, pad))):
        sys.exit(f"{name}: the packed kernel disagrees with the integer reference")
    session = _ort_conv(rng.standard_normal((cout, c, k, k)).astype(np.float32), stride, pad)
    empty = ort_model(helper.make_node("Identity", ["x"], ["y"]), [])
    feed = {"x": x}
    measure = {"ort_us": lambda: median_us(lambda: session.run(None, feed), repeat),
               "ort_call_us": lambda: median_us(lambda: empty.run(None, feed), repeat),
               "pack_us": lambda: c_loop_us(lib, pack_fn, ptr[:3], repeat),
               "conv_us": lambda: c_loop_us(lib, conv_fn, ptr[2:], repeat),
               "ctypes_us": lambda: median_us(pack, repeat) + median_us(conv, repeat)}
    times: dict[str, float] = {}
    for _ in range(ROUNDS):  # the engines take turns: a slow spell of a shared machine does not favour one
        for key, timed in measure.items():
            times[key] = min(times.get(key, np.inf), timed())
    return {"layer": name, "shape": f"{c}x{h}x{h} -> {cout}x{oh}x{oh}, {k}x{k}/{stride}",
            "macs": cout * oh * oh * c * k * k, **times}


def _ort_conv(weight: np.ndarray, stride: int, pad: int) -> ort.InferenceSession:
    node = helper.make_node("Conv", ["x", "w"], ["y"], strides=[stride] * 2, pads=[pad] * 4)
    return ort_model(node, [numpy_helper.from_array(weight, "w")])


def ort_model(node: onnx.NodeProto, initializers: list) -> ort.InferenceSession:
    """A one-node model x -> y on one thread (an Identity times onnxruntime's own cost of a `session.run`)."""
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def markdown(rows: list[dict], repeat: int) -> str:
    lines = ["# Binary convolutions on the x86 host", "",
             f"Made by `python tools/bench/binary_layers.py --repeat {repeat}` on {platform.processor() or 'x86'}, "
             "1 thread, median µs per call. ResNet-8's binary conv shapes (28x28 Fashion-MNIST input). "
             "onnxruntime: one `session.run` a call; edgebin: the kernels called from a C loop, as model.so calls "
             "them. Speed-up = onnxruntime FP32 conv / (edgebin pack + conv). Last column: pack + conv called from "
             "Python through ctypes, about 0.4 µs of overhead a call that a compiled model does not have. "
             "*Less call overhead*: onnxruntime's time minus that of a one-node Identity model on the same input "
             "(its own cost of a `session.run`, which a conv inside a whole model does not pay per node), the "
             "comparison least favourable to edgebin.", "",
             "| layer | shape | MACs | onnxruntime FP32 | edgebin pack | edgebin XNOR/popcount conv | speed-up | "
             "speed-up, onnxruntime less call overhead | pack + conv via ctypes |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        total = r["pack_us"] + r["conv_us"]
        lines.append(f"| {r['layer']} | {r['shape']} | {r['macs']:,} | {r['ort_us']:.1f} | {r['pack_us']:.2f} | "
                     f"{r['conv_us']:.2f} | {r['ort_us'] / total:.2f}× | "
                     f"{(r['ort_us'] - r['ort_call_us']) / total:.2f}× | {r['ctypes_us']:.2f} "
                     f"({r['ort_us'] / r['ctypes_us']:.2f}×) |")
    ort_sum = sum(r["ort_us"] for r in rows)
    ours = sum(r["pack_us"] + r["conv_us"] for r in rows)
    via_ctypes = sum(r["ctypes_us"] for r in rows)
    ort_net = sum(r["ort_us"] - r["ort_call_us"] for r in rows)
    lines += [f"| all | | {sum(r['macs'] for r in rows):,} | {ort_sum:.1f} | | {ours:.1f} (pack + conv) | "
              f"{ort_sum / ours:.2f}× | {ort_net / ours:.2f}× | {via_ctypes:.1f} ({ort_sum / via_ctypes:.2f}×) |", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
