"""The numbers every report shows, computed one way: accuracy, output agreement and latency.

    acc = accuracy(logits, labels)                               # fraction in [0, 1]
    agree = agreement(ort_logits, compiled_logits)               # top1, max_abs, rmse, cosine, samples
    stat = time_onnxruntime("out/model.onnx", x[:1], engine="onnxruntime-int8")
    stat.median_ms, stat.to_dict()                               # {"engine": ..., "unit": "ms", ...}

Latency is wall-clock time from `time.perf_counter` on one thread (intra- and inter-op), so the engines are
compared on the same footing as a single-core edge CPU; the median of `repeat` runs after `warmup` runs is
the headline, p10 and p90 show the spread. `run_onnxruntime` and `run_torch` produce outputs for a whole
evaluation set, in batches where the model allows it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgebin.errors import InputShapeError, ModelLoadError, ToolchainMissingError

if TYPE_CHECKING:
    import onnxruntime
    import torch

# onnxruntime's input type names -> the numpy dtype a feed must have.
_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose argmax over the last axis equals the label, in [0, 1]."""
    logits, labels = np.asarray(logits), np.asarray(labels).reshape(-1)
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ValueError(f"accuracy: logits must be (N, classes) with N = {labels.shape[0]} labels, "
                         f"got {logits.shape}")
    if labels.shape[0] == 0:
        raise ValueError("accuracy: no samples")
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """How closely `candidate` reproduces `reference`, sample by sample (axis 0 is the sample axis).

    top1: fraction of samples with the same argmax; max_abs: max |a - b|; rmse: sqrt(mean((a - b)^2));
    cosine: mean over samples of a.b / (|a| |b|), 1.0 where both vectors are zero and 0.0 where only one is;
    samples: N. Computed in float64; a NaN in either input shows up as NaN in max_abs, rmse and cosine.
    """
    a, b = np.asarray(reference), np.asarray(candidate)
    if a.shape != b.shape:
        raise ValueError(f"agreement: reference {a.shape} and candidate {b.shape} differ in shape")
    if a.ndim == 0 or a.shape[0] == 0:
        raise ValueError(f"agreement: need at least one sample along axis 0, got shape {a.shape}")
    n = a.shape[0]
    a, b = a.reshape(n, -1).astype(np.float64), b.reshape(n, -1).astype(np.float64)
    diff = a - b
    norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    both_zero, one_zero = (norm_a == 0) & (norm_b == 0), (norm_a == 0) ^ (norm_b == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.einsum("ij,ij->i", a, b) / (norm_a * norm_b)
    cos = np.where(both_zero, 1.0, np.where(one_zero, 0.0, cos))
    return {
        "top1": float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1))),
        "max_abs": float(np.max(np.abs(diff))),
        "rmse": float(np.sqrt(np.mean(diff * diff))),
        "cosine": float(np.mean(cos)),
        "samples": n,
    }


@dataclass(frozen=True)
class LatencyStat:
    """Wall-clock latency of one engine in milliseconds: median and the 10th/90th percentiles of `runs` runs.

        stat = LatencyStat.from_seconds([0.0010, 0.0012, 0.0011], engine="onnxruntime-fp32")
        stat.median_ms  # 1.1
    """

    engine: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    threads: int = 1

    @classmethod
    def from_seconds(cls, samples_s: Sequence[float], *, engine: str = "", threads: int = 1) -> LatencyStat:
        """Summarise per-run durations given in seconds (percentiles interpolate linearly, as numpy does)."""
        if len(samples_s) == 0:
            raise ValueError(f"LatencyStat: no timing samples for engine {engine!r}")
        ms = np.asarray(samples_s, dtype=np.float64) * 1e3
        p10, median, p90 = np.percentile(ms, [10, 50, 90])
        return cls(engine, float(median), float(p10), float(p90), len(ms), threads)

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "unit": "ms", "median_ms": self.median_ms, "p10_ms": self.p10_ms,
                "p90_ms": self.p90_ms, "runs": self.runs, "threads": self.threads}


def time_callable(fn: Callable[[], object], *, warmup: int = 5, repeat: int = 50, engine: str = "",
                  threads: int = 1, clock: Callable[[], float] = time.perf_counter) -> LatencyStat:
    """Call `fn` `warmup` times untimed, then `repeat` times timed one by one; `threads` is only recorded."""
    if warmup < 0 or repeat < 1:
        raise ValueError(f"time_callable: need warmup >= 0 and repeat >= 1, got {warmup} and {repeat}")
    for _ in range(warmup):
        fn()
    samples_s = []
    for _ in range(repeat):
        start = clock()
        fn()
        samples_s.append(clock() - start)
    return LatencyStat.from_seconds(samples_s, engine=engine, threads=threads)


def time_torch(module: torch.nn.Module, x: np.ndarray, **kw: Any) -> LatencyStat:
    """Time `module(x)` in eval mode under no_grad on one thread; thread count and mode are restored after.

    Keyword arguments go to `time_callable` (`warmup`, `repeat`, `engine`, default engine "pytorch").
    """
    import torch

    kw.setdefault("engine", "pytorch")
    inputs = _torch_input(x)
    threads_before, was_training = torch.get_num_threads(), module.training
    torch.set_num_threads(1)
    module.eval()
    try:
        with torch.no_grad():
            return time_callable(lambda: module(inputs), threads=1, **kw)
    finally:
        torch.set_num_threads(threads_before)
        module.train(was_training)


def time_onnxruntime(onnx_path: str | Path, x: np.ndarray, **kw: Any) -> LatencyStat:
    """Time one onnxruntime run of `x` on a single-threaded, sequential CPU session.

    Keyword arguments go to `time_callable` (`warmup`, `repeat`, `engine`, default engine "onnxruntime").
    """
    kw.setdefault("engine", "onnxruntime")
    session = onnxruntime_session(onnx_path, threads=1)
    inp = session.get_inputs()[0]
    feed = {inp.name: _ort_feed(inp, np.asarray(x), onnx_path)}
    return time_callable(lambda: session.run(None, feed), threads=1, **kw)


def onnxruntime_session(onnx_path: str | Path, threads: int = 1) -> onnxruntime.InferenceSession:
    """A CPU InferenceSession: `threads` intra-op threads, one inter-op thread, sequential execution."""
    ort = _import_onnxruntime()
    if not Path(onnx_path).is_file():
        raise ModelLoadError(f"{onnx_path}: no such ONNX file")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # errors only: onnxruntime's own warnings would go straight to stderr
    try:
        return ort.InferenceSession(str(onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own classes, all derived from Exception
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelLoadError(f"{onnx_path}: onnxruntime cannot load it: {first_line}") from None


def run_onnxruntime(onnx_path: str | Path, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """The first output of the model for every sample of `x`, stacked along axis 0.

    A model with a dynamic batch axis runs `batch` samples at a time; one with a fixed batch size B runs B at
    a time (one by one when B = 1), padding the last chunk and dropping the padding from the output.
    """
    session = onnxruntime_session(onnx_path, threads=1)
    inp = session.get_inputs()[0]
    x = np.asarray(x)
    fixed = inp.shape[0] if inp.shape and isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None
    step = fixed or batch
    x = _ort_feed(inp, x, onnx_path)
    outputs = []
    for start in range(0, len(x), step):
        chunk = x[start:start + step]
        n = len(chunk)
        if fixed and n < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), chunk.dtype)])
        outputs.append(session.run(None, {inp.name: chunk})[0][:n])
    return np.concatenate(outputs)


def run_torch(module: torch.nn.Module, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """The module's output (the first one, if it returns several) for every sample of `x`, in eval mode."""
    import torch

    x = np.asarray(x)
    if len(x) == 0:
        raise ValueError("run_torch: no samples")
    was_training = module.training
    module.eval()
    outputs = []
    try:
        with torch.no_grad():
            for start in range(0, len(x), batch):
                out = module(_torch_input(x[start:start + batch]))
                if isinstance(out, (tuple, list)):
                    out = out[0]
                outputs.append(out.detach().cpu().numpy())
    finally:
        module.train(was_training)
    return np.concatenate(outputs)


def _torch_input(x: np.ndarray) -> torch.Tensor:
    """A tensor for `x`; float inputs become float32, the dtype edgebin's models are trained in."""
    import torch

    x = np.ascontiguousarray(x)
    return torch.from_numpy(x.astype(np.float32) if np.issubdtype(x.dtype, np.floating) else x)


def _ort_feed(inp: Any, x: np.ndarray, onnx_path: str | Path) -> np.ndarray:
    """`x` in the dtype the session expects, after checking its non-batch dims against the model's."""
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"{onnx_path}: no samples to run")
    want = list(inp.shape[1:]) if inp.shape else []
    if len(want) != x.ndim - 1 or any(
        isinstance(w, int) and w > 0 and w != got for w, got in zip(want, x.shape[1:], strict=True)
    ):
        shown = ["N" if not isinstance(d, int) or d <= 0 else str(d) for d in inp.shape or []]
        raise InputShapeError(f"{onnx_path}: input {inp.name!r} takes ({', '.join(shown)}), "
                              f"got samples of shape {tuple(x.shape)}")
    dtype = _ORT_DTYPES.get(inp.type)
    return np.ascontiguousarray(x, dtype=dtype) if dtype is not None else x


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ToolchainMissingError("onnxruntime is not installed; run `make setup` "
                                    "(or `pip install onnxruntime==1.32.0`)") from None
    return onnxruntime


__all__ = ["LatencyStat", "accuracy", "agreement", "onnxruntime_session", "run_onnxruntime", "run_torch",
           "time_callable", "time_onnxruntime", "time_torch"]
