"""Read a lowered Relax `main` into a static graph for the C emitter, refusing anything it cannot translate.

    graph = read_graph(lowered.mod)          # UnsupportedOpsError listing every binding it cannot translate
    graph.calls[0].symbol                    # "__tvm_ffi_fused_quantize_pad"
    plan = plan_memory(graph.buffers(in_place_outputs(graph, lowered.mod)))  # lifetimes; outputs written in place

Understood bindings (the whole of what mcu_lower's pipeline produces for a static-shape model):

| binding                                   | becomes                                                           |
|-------------------------------------------|-------------------------------------------------------------------|
| `v = w` (a variable)                      | an alias                                                          |
| `R.memory.alloc_storage(static size)`     | nothing: StaticPlanBlockMemory's storages are ignored, see below  |
| `R.memory.alloc_tensor(storage, ...)`     | an activation tensor, placed in the arena by `plan_memory`        |
| `R.builtin.alloc_tensor(...)`             | the caller's output buffer if returned, else an arena tensor      |
| `R.reshape(t, shape)`                     | a view of `t` (same bytes, new shape)                             |
| `kernel(args..., outs...)` (a PrimFunc)   | a call to `__tvm_ffi_kernel` with static DLTensors                |

Arguments may be tensors, views, the function's one input, or constants (deduplicated by content). Anything else
(call_packed, memory.view, tuples, match_cast, dynamic shapes, a second input or output) is an error naming the
binding. Each alloc_tensor gets its own buffer and lifetime (first to last call that touches it); the planner packs
those, which beats StaticPlanBlockMemory's per-storage sum because buffers of different sizes share space too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgebin.compile.memory_plan import Buffer
from edgebin.compile.tvm_adapter import GenericConst, call_op_name, const_array, relax, tensor_dtype, tensor_shape, tirx
from edgebin.errors import UnsupportedOpsError

INPUT, OUTPUT, ARENA, CONST = "input", "output", "arena", "const"
_IGNORED = object()  # a storage: nothing to emit


@dataclass(frozen=True)
class View:
    """What a kernel argument points at: `base` (a tensor or constant name) seen with `shape` and `dtype`."""

    base: str
    kind: str  # INPUT, OUTPUT, ARENA or CONST
    shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(_np_dtype(self.dtype)).itemsize


@dataclass(frozen=True)
class KernelCall:
    """One destination-passing call: the outputs are the arguments it writes first (freshly allocated)."""

    kernel: str  # PrimFunc name
    symbol: str  # the C function, `__tvm_ffi_<global_symbol>`
    args: tuple[View, ...]
    outputs: tuple[int, ...]  # indices into args


@dataclass
class Graph:
    """A static dataflow graph: tensors with byte sizes, deduplicated constants, calls in order."""

    input: View
    output: View  # what main returns; kind OUTPUT when a kernel writes the caller's buffer directly
    tensor_bytes: dict[str, int] = field(default_factory=dict)  # arena tensors
    constants: dict[str, np.ndarray] = field(default_factory=dict)  # C name -> value
    calls: list[KernelCall] = field(default_factory=list)

    def lifetimes(self) -> dict[str, tuple[int, int]]:
        """(first, last) call index touching each arena tensor; a returned arena tensor lives to the end."""
        spans: dict[str, tuple[int, int]] = {}
        for step, call in enumerate(self.calls):
            for view in call.args:
                if view.kind == ARENA:
                    first, _ = spans.get(view.base, (step, step))
                    spans[view.base] = (first, step)
        if self.output.kind == ARENA:
            first, _ = spans.get(self.output.base, (len(self.calls), len(self.calls)))
            spans[self.output.base] = (first, len(self.calls))
        return spans

    def buffers(self, reuses: dict[str, str] | None = None) -> list[Buffer]:
        """The arena tensors as planner buffers (a tensor no call touches is not allocated at all); `reuses`
        (in_place.in_place_outputs) names the outputs written over an input that dies at their call."""
        reuses = reuses or {}
        return [Buffer(name, self.tensor_bytes[name], first, last, reuses=reuses.get(name))
                for name, (first, last) in self.lifetimes().items()]

    def weights_bytes(self) -> int:
        return sum(int(array.nbytes) for array in self.constants.values())


def read_graph(mod) -> Graph:
    """The static graph of `mod["main"]` after mcu_lower; UnsupportedOpsError lists every binding it cannot read."""
    return _Reader(mod).read()


class _Reader:
    def __init__(self, mod) -> None:
        self.mod = mod
        self.func = mod["main"]
        self.values: dict[relax.Var, object] = {}  # var -> View, _IGNORED, or None (after an error)
        self.builtin: set[str] = set()
        self.problems: list[str] = []
        self.const_names: dict[tuple[str, bytes], str] = {}
        self.graph: Graph | None = None

    def read(self) -> Graph:
        params = list(self.func.params)
        input_view = self._input(params)
        self.graph = Graph(input=input_view, output=input_view)
        for block in self.func.body.blocks:
            for binding in block.bindings:
                self._binding(binding)
        self.graph.output = self._output(self.func.body.body)
        if self.problems:
            raise UnsupportedOpsError(
                f"the MCU emitter cannot translate {len(self.problems)} binding(s) of main: " + "; ".join(self.problems)
            )
        return self.graph

    # --- function boundary ---------------------------------------------------------------------------------------

    def _input(self, params) -> View:
        if len(params) != 1:
            self.problems.append(f"main takes {len(params)} inputs; the bundle API takes one float32 tensor")
        param = params[0] if params else relax.Var("input", relax.TensorType((1,), "float32"))
        view = View(param.name, INPUT, tensor_shape(param) or (), tensor_dtype(param) or "?")
        if tensor_shape(param) is None or view.dtype != "float32":
            self.problems.append(f"input {param.name!r} is {param.ty}; the bundle API takes a static float32 "
                                 "tensor (export with a static shape and a float input)")
        for p in params:
            self.values[p] = view
        return view

    def _output(self, expr) -> View:
        value = self.values.get(expr) if isinstance(expr, relax.Var) else None
        if not isinstance(value, View):
            if not (isinstance(expr, relax.Var) and expr in self.values):  # else its binding is already reported
                self.problems.append(f"main returns {_short(expr)}; the bundle API returns one float32 tensor "
                                     "(a tuple means several outputs: not supported)")
            return View("?", OUTPUT, (), "?")
        if value.dtype != "float32":
            self.problems.append(f"main returns a {value.dtype} tensor; the bundle API returns float32")
        if value.kind == ARENA and value.base in self.builtin:  # a kernel writes the caller's buffer directly
            value = View(value.base, OUTPUT, value.shape, value.dtype)
            self.graph.calls = [_as_output(call, value.base) for call in self.graph.calls]
            self.graph.tensor_bytes.pop(value.base)
        return value

    # --- bindings ------------------------------------------------------------------------------------------------

    def _binding(self, binding) -> None:
        var, value = binding.var, getattr(binding, "value", None)
        if not isinstance(binding, relax.VarBinding):
            self._reject(var, f"{type(binding).__name__} `{var.name}` (match_cast needs dynamic shapes)")
        elif isinstance(value, relax.Var):
            self.values[var] = self.values.get(value)
        elif isinstance(value, relax.Call) and isinstance(value.op, relax.GlobalVar):
            self._kernel_call(var, value)
        elif isinstance(value, relax.Call) and call_op_name(value) is not None:
            self._op_call(var, value, call_op_name(value))
        elif isinstance(value, relax.Call) and isinstance(value.op, relax.ExternFunc):
            self._reject(var, f"`{var.name} = call_packed({value.op.global_symbol!r}, ...)`: a packed "
                              "function from a runtime registry, which a bare-metal bundle does not have")
        elif isinstance(value, relax.Tuple):
            self._reject(var, f"`{var.name} = {_short(value)}`: a tuple (several outputs?); the bundle API has one "
                              "input and one output")
        else:
            self._reject(var, f"`{var.name} = {_short(value)}` ({type(value).__name__})")

    def _op_call(self, var, call, name: str) -> None:
        if name == "relax.memory.alloc_storage":
            size = call.args[0]
            if not (isinstance(size, relax.ShapeExpr) and all(isinstance(d, tirx.IntImm) for d in size.values)):
                return self._reject(var, f"`{var.name} = R.memory.alloc_storage({_short(size)})`: dynamic size")
            self.values[var] = _IGNORED
        elif name in ("relax.memory.alloc_tensor", "relax.builtin.alloc_tensor"):
            shape, dtype = tensor_shape(var), tensor_dtype(var)
            if shape is None or dtype is None or _np_dtype(dtype) is None:
                return self._reject(var, f"`{var.name} = {name}(...)` of type {var.ty}: dynamic shape or "
                                         "unsupported dtype")
            if name == "relax.memory.alloc_tensor" and self.values.get(call.args[0]) is not _IGNORED:
                return self._reject(var, f"`{var.name} = {name}(...)` on an unknown storage")
            name, n = var.name, 0
            while name in self.graph.tensor_bytes:  # Relax names are hints, not unique
                name, n = f"{var.name}_{n + 1}", n + 1
            view = View(name, ARENA, shape, dtype)
            self.graph.tensor_bytes[view.base] = view.nbytes
            if name == "relax.builtin.alloc_tensor":
                self.builtin.add(view.base)
            self.values[var] = view
        elif name == "relax.reshape":
            source, shape = self._arg(var, call.args[0]), tensor_shape(var)
            if source is None:
                return self._poison(var)
            if shape is None:
                return self._reject(var, f"`{var.name} = R.reshape(...)` to a dynamic shape")
            self.values[var] = View(source.base, source.kind, shape, source.dtype)
        else:
            why = _WHY_NOT.get(name, "not a static allocation, reshape or kernel call")
            self._reject(var, f"`{var.name} = {name}(...)`: {why}")

    def _kernel_call(self, var, call) -> None:
        gvar = call.op
        func = self.mod[gvar] if gvar in self.mod.functions else None
        if not isinstance(func, tirx.PrimFunc):
            return self._reject(var, f"call to {gvar.name_hint}, which is not a TIR kernel")
        args = [self._arg(var, arg) for arg in call.args]
        if any(arg is None for arg in args):
            return self._poison(var)
        written = {view.base for c in self.graph.calls for view in c.args} | {self.graph.input.base}
        outputs = tuple(i for i, view in enumerate(args) if view.kind == ARENA and view.base not in written)
        symbol = str((func.attrs or {}).get("global_symbol", gvar.name_hint))
        self.graph.calls.append(KernelCall(gvar.name_hint, f"__tvm_ffi_{symbol}", tuple(args), outputs))
        self.values[var] = _IGNORED

    def _arg(self, var, expr) -> View | None:
        """The view an argument denotes, or None (and a problem, unless one was already reported)."""
        if isinstance(expr, GenericConst):
            return self._constant(var, expr)
        if isinstance(expr, relax.Var) and expr in self.values:
            value = self.values[expr]
            if value is _IGNORED:
                self._reject(var, f"`{var.name}` takes `{expr.name}`, a storage or a call result, not a tensor")
                return None
            return value  # a View, or None when its binding was already reported
        self._reject(var, f"`{var.name}` takes argument {_short(expr)} ({type(expr).__name__}); only tensors "
                          "and constants are supported")
        return None

    def _constant(self, var, expr) -> View | None:
        array = const_array(expr)
        dtype = str(array.dtype) if array.dtype != np.bool_ else "bool"
        if _np_dtype(dtype) is None:
            self._reject(var, f"`{var.name}` takes a {dtype} constant, which the C emitter does not support")
            return None
        array = np.ascontiguousarray(array)
        key = (dtype, array.tobytes())
        name = self.const_names.setdefault(key, f"edgebin_w{len(self.const_names)}")
        self.graph.constants.setdefault(name, array)
        return View(name, CONST, tuple(int(d) for d in array.shape), dtype)

    def _reject(self, var, problem: str) -> None:
        self.problems.append(problem)
        self._poison(var)

    def _poison(self, var) -> None:
        self.values[var] = None  # known but untranslatable: later uses are not reported again


def _as_output(call: KernelCall, base: str) -> KernelCall:
    args = tuple(View(v.base, OUTPUT, v.shape, v.dtype) if v.base == base else v for v in call.args)
    return KernelCall(call.kernel, call.symbol, args, call.outputs)


_WHY_NOT = {
    "relax.memory.view": "a view with its own offset and dtype, which the emitter does not model",
    "relax.memory.kill_storage": "explicit frees: the planner decides lifetimes itself",
    "relax.memory.kill_tensor": "explicit frees: the planner decides lifetimes itself",
}
_NP_DTYPES = {"bool": "uint8", "int8": "int8", "uint8": "uint8", "int16": "int16", "uint16": "uint16",
              "int32": "int32", "uint32": "uint32", "int64": "int64", "uint64": "uint64", "float32": "float32",
              "float64": "float64"}


def _np_dtype(dtype: str) -> str | None:
    return _NP_DTYPES.get(dtype)


def _short(expr, limit: int = 80) -> str:
    text = " ".join(str(expr).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


__all__ = ["ARENA", "CONST", "INPUT", "OUTPUT", "Graph", "KernelCall", "View", "read_graph"]
