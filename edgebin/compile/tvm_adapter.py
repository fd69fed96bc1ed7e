"""The one place edgebin touches Apache TVM (0.27, Relax only).

TVM 0.27 renamed much of its Python API (`tvm.tir` -> `tvm.tirx`, schedules in `tvm.s_tir`, `struct_info` ->
`.ty`, `relax.Constant` -> `tvm.ir.expr.GenericConst`, `tvm.contrib.cc` -> `tvm.support.cc`). Every other module
in `edgebin.compile` imports TVM names and small helpers from here, so the next rename is a one-file change:

    from edgebin.compile.tvm_adapter import relax, const_array, tensor_dtype
    scale = const_array(call.args[1])       # numpy array, or None when the argument is not a constant
"""

from __future__ import annotations

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
    "tensor_dtype",
    "tensor_shape",
    "time_function",
    "to_tensor",
    "tirx",
    "tvm",
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
    """`tvm.compile` with the default Relax build pipeline (memory planning, VM lowering)."""
    return tvm.compile(mod, target=target)


def export_library(executable: Any, path: Path) -> None:
    """Link the executable into a shared library at `path` (x86 host: the system C++ compiler)."""
    executable.export_library(str(path))


def load_vm(path: Path) -> Any:
    """A Relax VirtualMachine on the CPU for a library written by `export_library`."""
    lib = tvm.runtime.load_module(str(path))
    return relax.VirtualMachine(lib, tvm.cpu())


def to_tensor(array: np.ndarray) -> Any:
    """A TVM runtime tensor holding a copy of `array` on the CPU."""
    return tvm.runtime.tensor(np.ascontiguousarray(array), tvm.cpu())


def time_function(vm: Any, name: str, args: Sequence[Any], *, warmup: int, repeat: int) -> list[float]:
    """Seconds per call of `vm[name](*args)`, one number per run, after `warmup` untimed runs."""
    evaluator = vm.time_evaluator(name, tvm.cpu(), number=1, repeat=repeat, min_repeat_ms=0)
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


def export_library_cross(executable: Any, path: Path, compiler: str, options: Sequence[str] = ()) -> None:
    """Link the executable into a shared library for another machine with a cross compiler (`aarch64-linux-gnu-g++`).

    0.27 moved `tvm.contrib.cc` to `tvm.support.cc`; `cross_compiler` wraps the given g++ for `export_library`.
    """
    from tvm.support import cc

    executable.export_library(str(path), fcompile=cc.cross_compiler(compiler, options=list(options)))


def ffi_include_dir() -> Path:
    """The tvm-ffi C++ headers (and dlpack) installed with the wheel: all a Python-free runner may include."""
    return Path(tvm_ffi.__file__).parent / "include"


__all__ += ["export_library_cross", "ffi_include_dir"]
