"""The one place edgebin touches Apache TVM (0.27, Relax only).

TVM 0.27 renamed much of its Python API (`tvm.tir` -> `tvm.tirx`, schedules in `tvm.s_tir`, `struct_info` ->
`.ty`, `relax.Constant` -> `tvm.ir.expr.GenericConst`, `tvm.contrib.cc` -> `tvm.support.cc`). Every other module
in `edgebin.compile` imports TVM names and small helpers from here, so the next rename is a one-file change:

    from edgebin.compile.tvm_adapter import relax, const_array, tensor_dtype
    scale = const_array(call.args[1])       # numpy array, or None when the argument is not a constant
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgebin.errors import ToolchainMissingError

_PIP = "pip install apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1"

try:
    import tvm
    import tvm.s_tir as s_tir
    import tvm.tirx as tirx
    import tvm_ffi
    from tvm import relax
    from tvm.ir.expr import GenericConst
    from tvm.relax.expr_functor import PyExprMutator, mutator
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ToolchainMissingError(f"Apache TVM is not installed ({err}); run `{_PIP}`") from None

__all__ = [
    "GenericConst",
    "IRCall",
    "PyExprMutator",
    "TensorLoad",
    "build",
    "export_library",
    "call_op_name",
    "collect",
    "const",
    "const_array",
    "function_pass",
    "host_cpu",
    "is_llvm_fma",
    "llvm_fma",
    "load_vm",
    "make_target",
    "mutator",
    "onnx_convert_map_ops",
    "onnx_to_relax",
    "prim_dtype",
    "region_buffer_name",
    "relax",
    "s_tir",
    "set_num_threads",
    "staging_tensor",
    "tensor_dtype",
    "tensor_shape",
    "time_function",
    "to_numpy",
    "to_tensor",
    "tirx",
    "tvm",
    "tvm_ffi",
    "whole_region",
]

function_pass = relax.transform.function_pass
TensorLoad = tvm.ir.expr.TensorLoad  # a TIR buffer load (tirx.BufferLoad is only a constructor in 0.27)
IRCall = tvm.ir.expr.Call  # one Call class for Relax and TIR calls in 0.27


# --- reading Relax expressions -------------------------------------------------------------------------------


def tensor_dtype(expr: Any) -> str | None:
    """The dtype of a Relax tensor expression (`"int8"`), or None when it is not a tensor."""
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType):
        return None
    return str(ty.dtype)


def tensor_shape(expr: Any) -> tuple[int, ...] | None:
    """The static shape of a Relax tensor expression, or None when unknown or symbolic."""
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    dims = []
    for dim in ty.shape.values:
        if not isinstance(dim, tirx.IntImm):
            return None
        dims.append(int(dim.value))
    return tuple(dims)


def prim_dtype(node: Any) -> str:
    """The dtype of a TIR expression (`"int32"`, `"float32"`); 0.27 keeps it in `.dtype` or in `.ty`."""
    dtype = getattr(node, "dtype", None)
    if dtype is None:
        dtype = getattr(node, "ty", None)
    return str(dtype)


def region_buffer_name(region: Any) -> str:
    """Name of the buffer a block reads or writes (0.27: `TensorRegion.source`; before: `BufferRegion.buffer`)."""
    buffer = region.source if hasattr(region, "source") else region.buffer
    return str(buffer.name)


def whole_region(buffer: Any) -> Any:
    """The region of a TIR buffer that covers all of it, for a block's reads and writes."""
    zero = tirx.IntImm("int64", 0)
    return buffer[tuple(slice(zero, extent) for extent in buffer.shape)]


def const_array(expr: Any) -> np.ndarray | None:
    """The numpy value of a Relax constant, or None when `expr` is not a constant."""
    if isinstance(expr, GenericConst):
        return expr.value.numpy()
    return None


def const(value: np.ndarray | float | int, dtype: str | None = None) -> relax.Expr:
    """A Relax constant from a numpy array or a Python scalar, keeping the array's dtype (even int64)."""
    array = np.asarray(value, dtype=dtype)
    return relax.const(array, str(array.dtype))  # relax.const alone narrows int64 arrays to int32


def collect(node: Any, types: type | tuple[type, ...]) -> list[Any]:
    """Every sub-node of `node` (a TIR or Relax tree) that is an instance of `types`, in post-order."""
    found: list[Any] = []
    tvm_ffi.structural_walk(node, (types, found.append))
    return found


def call_op_name(expr: Any) -> str | None:
    """`"relax.nn.conv2d"` for a call to a Relax operator, else None."""
    if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
        return str(expr.op.name)
    return None


# --- ONNX front end ------------------------------------------------------------------------------------------


def onnx_convert_map_ops() -> list[str]:
    """ONNX operator types the Relax ONNX front end has a converter for."""
    from tvm.relax.frontend.onnx import onnx_frontend

    return sorted(set(onnx_frontend._get_convert_map()) | {"Constant", "If"})


def onnx_to_relax(model: Any, shape_dict: dict[str, list[int]], keep_params_in_input: bool) -> tvm.IRModule:
    """Relax module of an ONNX ModelProto (weights as constants unless `keep_params_in_input`)."""
    import warnings

    from tvm.relax.frontend.onnx import from_onnx

    with warnings.catch_warnings():  # the front end re-runs onnx.checker and warns; edgebin checked already
        warnings.simplefilter("ignore")
        return from_onnx(model, shape_dict=shape_dict, keep_params_in_input=keep_params_in_input)


# --- targets, build, runtime ---------------------------------------------------------------------------------


def host_cpu() -> str:
    """LLVM's name for this machine's CPU (`"znver4"`, `"skylake-avx512"`)."""
    return str(tvm.target.codegen.llvm_get_system_cpu())


def make_target(spec: dict[str, Any]) -> tvm.target.Target:
    """A TVM Target from a target file's `tvm` dict; `"mcpu": "native"` becomes the host CPU's name."""
    spec = dict(spec)
    if spec.get("mcpu") == "native":
        spec["mcpu"] = host_cpu()
    return tvm.target.Target(spec)


def build(mod: tvm.IRModule, target: tvm.target.Target) -> Any:
    """The default Relax build pipeline (memory planning, VM lowering), the VM's program compiled to machine code
    (`exec_mode="compiled"`) rather than bytecode the VM interprets call by call: a W1A1 ResNet-8 inference,
    about 20 kernel calls of a few microseconds each, took 5 % less time (0.0392 -> 0.0373 ms in one alternating
    run of a throwaway script), with identical outputs."""
    return relax.build(mod, target=target, exec_mode="compiled")


def export_library(executable: Any, path: Path, addons: Sequence[Path] = ()) -> None:
    """Link the executable into a shared library at `path` (x86 host: the system C++ compiler), with the object
    files `addons` (the micro-kernels its kernels call as external symbols)."""
    executable.export_library(str(path), addons=[str(a) for a in addons] or None)


def load_vm(path: Path) -> Any:
    """A Relax VirtualMachine on the CPU for a library written by `export_library`."""
    lib = tvm.runtime.load_module(str(path))
    return relax.VirtualMachine(lib, tvm.cpu())


TENSOR_ALIGNMENT = 64  # bytes: TVM's own tensors', and the alignment its kernels may assume of a buffer


def llvm_fma(x, y, z):
    """x * y + z rounded once (LLVM's `llvm.fma`; TIR's own `fma` is LLVM's fmuladd, which may round twice)."""
    return tirx.call_llvm_pure_intrin(prim_dtype(x), "llvm.fma", x, y, z)


def is_llvm_fma(expr) -> bool:
    """True for a TIR call made by `llvm_fma`."""
    return isinstance(expr, IRCall) and str(getattr(expr.op, "name", "")).endswith("call_llvm_pure_intrin") and \
        int(expr.args[0].value) == _llvm_fma_id()


@functools.cache
def _llvm_fma_id() -> int:
    return int(tvm.target.codegen.llvm_lookup_intrinsic_id("llvm.fma"))


def to_tensor(array: np.ndarray) -> Any:
    """A TVM runtime tensor holding a copy of `array` on the CPU (through `staging_tensor`: about 1 µs for a small
    input, where `tvm.runtime.tensor(array)` allocates through TVM's Python API in about 26 µs, a quarter of a
    ResNet-8 inference; timed by hand with timeit on the x86 host, not by a command in tools/bench)."""
    array = np.asarray(array)
    view, tensor = staging_tensor(array.shape, array.dtype)
    np.copyto(view, array)
    return tensor


def staging_tensor(shape: Sequence[int], dtype: Any) -> tuple[np.ndarray, Any]:
    """(numpy array, TVM CPU tensor) sharing one 64-byte-aligned buffer: write inputs into the array, pass the
    tensor. The tensor takes the memory over through DLPack, which keeps the array alive."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + TENSOR_ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % TENSOR_ALIGNMENT
    view = raw[start:start + nbytes].view(dtype).reshape(shape)
    return view, tvm_ffi.from_dlpack(view)


def to_numpy(tensor: Any) -> np.ndarray:
    """A numpy copy of a CPU tensor, through DLPack: about 1 µs, where `tensor.numpy()` takes about 10 µs (timeit,
    by hand)."""
    return np.array(np.from_dlpack(tensor), copy=True)


def time_function(vm: Any, name: str, args: Sequence[Any], *, warmup: int, repeat: int,
                  device: Any = None) -> list[float]:
    """Seconds per call of `vm[name](*args)`, one number per run, after `warmup` untimed runs.

    `device` is where the VM runs (default this CPU; a remote CPU for a VM loaded over RPC, timed on the board).
    """
    evaluator = vm.time_evaluator(name, device or tvm.cpu(), number=1, repeat=repeat, min_repeat_ms=0)
    for _ in range(warmup):
        vm[name](*args)
    return [float(t) for t in evaluator(*args).results]


def set_num_threads(n: int) -> None:
    """Size TVM's CPU thread pool to `n` threads (also for pools started later, via TVM_NUM_THREADS)."""
    os.environ["TVM_NUM_THREADS"] = str(n)
    config = tvm.get_global_func("runtime.config_threadpool", allow_missing=True)
    if config is not None:
        config(0, n)  # 0 = kBig affinity, the runtime's default


# --- C kernels for microcontrollers (the Cortex-M bundle) ----------------------------------------------------


def build_c_source(tir_mod: tvm.IRModule, spec: dict[str, Any]) -> str:
    """C source of a module of PrimFuncs from TVM's C codegen (`{"kind": "c"}`), runtime asserts compiled out."""
    target = make_target(spec)
    with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
        return str(tirx.build(tir_mod, target=target).inspect_source())


def c_include_dirs() -> list[Path]:
    """Where the C headers that TVM-generated kernels include live in the installed wheels (tvm-ffi, then tvm)."""
    return [Path(tvm_ffi.__file__).parent / "include", Path(tvm.__file__).parent / "include"]


__all__ += ["build_c_source", "c_include_dirs"]


# --- Arm Linux boards (the Cortex-A bundle) ------------------------------------------------------------------


def export_library_cross(executable: Any, path: Path, compiler: str, options: Sequence[str] = (),
                         addons: Sequence[Path] = ()) -> None:
    """Link the executable into a shared library for another machine with a cross compiler (`aarch64-linux-gnu-g++`),
    with the object files `addons` (built by the same compiler).

    0.27 moved `tvm.contrib.cc` to `tvm.support.cc`; `cross_compiler` wraps the given g++ for `export_library`.
    """
    from tvm.support import cc

    executable.export_library(str(path), fcompile=cc.cross_compiler(compiler, options=list(options)),
                              addons=[str(a) for a in addons] or None)


def ffi_include_dir() -> Path:
    """The tvm-ffi C++ headers (and dlpack) installed with the wheel: all a Python-free runner may include."""
    return Path(tvm_ffi.__file__).parent / "include"


__all__ += ["export_library_cross", "ffi_include_dir"]


# --- TVM RPC: a board running TVM's RPC server, directly or behind a tracker ----------------------------------


def rpc_connect(host: str, port: int, *, session_timeout_s: float = 0) -> Any:
    """A session with the RPC server at host:port (`python -m tvm.exec.rpc_server` on the board)."""
    from tvm import rpc

    return rpc.connect(host, port, session_timeout=int(session_timeout_s))


def rpc_tracker_queue(host: str, port: int) -> dict[str, dict[str, int]]:
    """The tracker's devices: key -> {"free": servers idle, "pending": requests waiting}."""
    from tvm import rpc

    tracker = rpc.connect_tracker(host, port)
    try:
        return {str(k): dict(v) for k, v in tracker.summary()["queue_info"].items()}
    finally:
        tracker.close()


def rpc_request(host: str, port: int, key: str, *, session_timeout_s: float = 0) -> Any:
    """A session with a server the tracker at host:port hands out for `key` (waits while all are busy)."""
    from tvm import rpc

    tracker = rpc.connect_tracker(host, port)
    try:
        return tracker.request(key, priority=1, session_timeout=int(session_timeout_s), max_retry=1)
    finally:
        tracker.close()


def rpc_load_vm(session: Any, library: Path, remote_name: str) -> tuple[Any, Any]:
    """Upload a library from `export_library` and load it into a Relax VM on the remote CPU: (vm, device)."""
    session.upload(str(library), target=remote_name)
    device = session.cpu()
    return relax.VirtualMachine(session.load_module(remote_name), device), device


def tensor_on(array: np.ndarray, device: Any) -> Any:
    """A copy of `array` on `device` (a remote one over RPC too)."""
    return tvm.runtime.tensor(np.ascontiguousarray(array), device)


__all__ += ["rpc_connect", "rpc_load_vm", "rpc_request", "rpc_tracker_queue", "tensor_on"]


# --- MetaSchedule tuning (0.27: `tvm.s_tir.meta_schedule`, formerly `tvm.meta_schedule`) ---------------------

meta_schedule = s_tir.meta_schedule
derived_object = tvm.ir.utils.derived_object  # subclassing MetaSchedule's Py* classes (PyMeasureCallback)


def load_tensor_intrinsics(target: tvm.target.Target) -> None:
    """Register the tensor intrinsics MetaSchedule may tensorize with on `target`'s CPU, and no others.

    MetaSchedule's TuneContext and default builder run `import tvm.s_tir.tensor_intrin`, which parses the
    intrinsics of every backend from TVMScript: ~80 s on a 2-core machine (CUDA alone ~50 s), in the main process
    and again in every builder worker, so that builds hit their 30 s timeout. Putting the bare package in
    `sys.modules` first makes that import a no-op; the CPU's own module (x86 VNNI, Arm dot products) still loads.
    """
    _load_intrinsics(intrinsic_modules(target))


def _load_intrinsics(names: Sequence[str]) -> None:
    import importlib
    import importlib.util
    import sys

    package = "tvm.s_tir.tensor_intrin"
    if package not in sys.modules:
        spec = importlib.util.find_spec(package)
        if spec is None:  # pragma: no cover - a TVM without tensor intrinsics
            return
        sys.modules[package] = importlib.util.module_from_spec(spec)  # __path__ set, __init__ not run
        s_tir.tensor_intrin = sys.modules[package]
    for name in names:
        importlib.import_module(f"{package}.{name}")


def intrinsic_modules(target: tvm.target.Target) -> tuple[str, ...]:
    """The `tvm.s_tir.tensor_intrin` modules for `target`'s CPU: ("x86",), ("arm_cpu",), ("riscv_cpu",) or ()."""
    import platform

    triple = str(target.attrs.get("mtriple", "") or platform.machine()).lower()
    if triple.startswith(("aarch64", "arm64", "arm", "thumb")):
        return ("arm_cpu",)
    if triple.startswith("riscv"):
        return ("riscv_cpu",)
    if triple.startswith(("x86_64", "amd64", "i386", "i686")):
        return ("x86",)
    return ()


def tuning_worker_init(intrinsics: tuple[str, ...], threads: int) -> None:
    """Start of a MetaSchedule builder or runner process: the target's intrinsics only, and `threads` threads."""
    _load_intrinsics(intrinsics)
    if threads > 0:
        set_num_threads(threads)


def build_candidate(mod: tvm.IRModule, target: tvm.target.Target, _params: Any) -> Any:
    """MetaSchedule's `default_build` without its import of every backend's intrinsics."""
    from tvm.driver import build as build_tir  # a runtime Module; tvm.compile returns an Executable
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return build_tir(mod, target=target)


def export_candidate_cross(compiler: str, rt_mod: Any) -> str:
    """A shared library of a tuning candidate linked by a cross compiler, for a board's RPC server to load."""
    import tempfile

    from tvm.support import cc

    path = os.path.join(tempfile.mkdtemp(prefix="edgebin-tune-"), "candidate.so")
    rt_mod.export_library(path, fcompile=cc.cross_compiler(compiler))
    return path


def structural_hash(node: Any) -> int:
    """A content hash of a TIR or Relax node, equal for structurally equal nodes (0.27: in tvm_ffi)."""
    return int(tvm_ffi.structural_hash(node))


def rpc_connect_direct(config: Any) -> Any:
    """MetaSchedule `f_create_session` for a server without a tracker (its host and port ride in RPCConfig)."""
    from tvm import rpc

    return rpc.connect(config.tracker_host, int(config.tracker_port), session_timeout=config.session_timeout_sec)


__all__ += ["build_candidate", "derived_object", "export_candidate_cross", "intrinsic_modules",
            "load_tensor_intrinsics", "meta_schedule",
            "rpc_connect_direct", "structural_hash", "tuning_worker_init"]
