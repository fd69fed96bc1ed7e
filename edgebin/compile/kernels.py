"""What a compiled model computes in integers and what stays float: the census the report shows.

Two views, both plain dicts ready for JSON:

    op_census(mod)             # Relax graph before legalization:
                               # {"conv2d": {"int8xint8->int32": 7}, "matmul": {"int8xint8->int32": 1}}
    kernel_census(mod, ops)    # every PrimFunc kernel after fusion, with its arithmetic kind:
                               # [{"name": "fused_conv2d_add_...", "ops": ["conv2d", "add", ...],
                               #   "inputs": ["int8"], "constants": ["int8", "int32", "float32"],
                               #   "outputs": ["int8"], "kind": "int8", "calls": 1}, ...]

Kinds, decided from the kernel's TIR blocks, first match wins:
- `data`: pure data movement (copy, reshape, transpose, pad, cast), no arithmetic on values.
- `float`: a float multiply-accumulate or reduction (conv, matmul, softmax, mean, max-pool in float), or a QDQ
  fake-quant left in float (quantize/dequantize fused with float arithmetic), or float maths on float activations.
- `int8`: an integer multiply-accumulate or reduction (int8 x int8 -> int32 conv/matmul, int32 sum, int8 max), or
  elementwise work whose activations are all integer (requantization, the int8 residual add).
- `convert`: only quantize/dequantize of a float tensor: the graph input, the float output, or the edge of a
  float fallback. Counted apart so a fully integer model reads `float: 0`. Packing a float tensor's signs into
  bits for a binary layer (`edgebin_bpack_nchw_f32`) is a conversion too; adding two float tensors before packing
  (`edgebin_bpack_add_nchw_f32`, a binary ResNet's residual add) is `float`.
- `binary`: a binary conv on packed bits (XNOR/popcount, `edgebin_bconv2d` of binary_kernels/edgebin_binary.h),
  counted only when a model has one.
- `lut4` (`lut2` .. `lut7`): an int8-activation conv or gemm whose weights stay b-bit codes into a table of int8
  levels, decoded in the kernel (mcu_lut): by the LUT micro-kernel in Cortex-M bundles (`edgebin_lut4_matvec*`,
  mcu_kernels/edgebin_lut.h), once per run in the host's and Cortex-A's libraries (`edgebin_lut4_decode`,
  cpu_kernels/edgebin_cpu_lut.c; b = 2..4). A table-coded layer that runs on int8 weights instead is `int8`; its
  census record then carries `"weights": "int8 (lut4)"`.
- `bitserial`: an integer conv or gemm whose low-bit weight is bit planes, summed against the bit planes of its
  input codes (`edgebin_bs_matvec*`, mcu_kernels/edgebin_bitserial.h; Cortex-M bundles, mcu_bitserial).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from edgebin.compile.tvm_adapter import (
    GenericConst,
    IRCall,
    TensorLoad,
    call_op_name,
    collect,
    is_llvm_fma,
    prim_dtype,
    region_buffer_name,
    relax,
    s_tir,
    tensor_dtype,
    tirx,
)

KINDS = ("int8", "float", "convert", "data")  # always counted; "binary" too when present
_EXTERN_KINDS = {  # C kernels (binary_kernels/edgebin_binary.h) by what they do, by name prefix
    "edgebin_bconv2d": "binary", "edgebin_bpack_nchw_f32": "convert", "edgebin_bpack_add_nchw_f32": "float",
    "edgebin_bpack_pair_add": "float", "edgebin_bs_": "bitserial"}
_QDQ_BLOCKS = ("quantized", "dequantized")
_EXACT_CALLS = ("round", "nearbyint", "if_then_else")  # not float maths in the census sense


def op_census(mod) -> dict[str, dict[str, int]]:
    """Count conv2d and matmul calls by operand dtypes, e.g. {"conv2d": {"int8xint8->int32": 3}}."""
    counts: dict[str, Counter] = {"conv2d": Counter(), "matmul": Counter()}
    for func in mod.functions.values():
        if not isinstance(func, relax.Function):
            continue
        for call in collect(func.body, relax.Call):
            name = call_op_name(call)
            key = {"relax.nn.conv2d": "conv2d", "relax.nn.conv1d": "conv2d", "relax.matmul": "matmul"}.get(name)
            if key is None:
                continue
            signature = f"{tensor_dtype(call.args[0])}x{tensor_dtype(call.args[1])}->{tensor_dtype(call)}"
            counts[key][signature] += 1
    return {key: dict(counter) for key, counter in counts.items()}


def fused_ops(mod) -> dict[str, list[str]]:
    """Relax ops inside each fused function, read after FuseOps and before FuseTIR (which keeps the names)."""
    ops = {}
    for gvar, func in mod.functions.items():
        if isinstance(func, relax.Function) and func.attrs is not None and "Primitive" in func.attrs:
            ops[gvar.name_hint] = [
                _op_name(call.args[0].name_hint)
                for call in collect(func.body, relax.Call)
                if call_op_name(call) == "relax.call_tir"
            ]
    return ops


def kernel_census(mod, ops: dict[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """One record per PrimFunc that `main` calls, in call order; see the module docstring for `kind`."""
    ops = ops or {}
    records: dict[str, dict[str, Any]] = {}
    for call in collect(mod["main"].body, relax.Call):
        if call_op_name(call) != "relax.call_tir":
            continue
        gvar, args = call.args[0], list(call.args[1].fields)
        name = gvar.name_hint
        if name in records:
            records[name]["calls"] += 1
            continue
        func = mod[gvar]
        n_in = len(args)
        dtypes = [str(param.dtype) for param in func.params]
        is_const = [isinstance(arg, GenericConst) for arg in args]
        inputs = [d for d, c in zip(dtypes[:n_in], is_const, strict=True) if not c]
        constants = [d for d, c in zip(dtypes[:n_in], is_const, strict=True) if c]
        outputs = dtypes[n_in:]
        kind = classify(func, activation_dtypes=inputs + outputs)
        records[name] = {
            "name": name,
            "ops": ["binary_conv2d"] if kind == "binary" else ops.get(name, [_op_name(name)]),
            "inputs": inputs,
            "constants": constants,
            "outputs": outputs,
            "kind": kind,
            "calls": 1,
        }
    return list(records.values())


def kind_counts(kernels: list[dict[str, Any]]) -> dict[str, int]:
    """{"int8": 9, "float": 0, "convert": 1, "data": 2}: kernels (not calls) per kind."""
    counts = Counter(kernel["kind"] for kernel in kernels)
    return {kind: counts.get(kind, 0) for kind in (*KINDS, *sorted(set(counts) - set(KINDS)))}


def classify(func, activation_dtypes: list[str]) -> str:
    """The arithmetic kind of one PrimFunc (see the module docstring)."""
    externs = {name.split("__", 1)[0] for name in extern_calls(func)}  # shape-specialized names: kernel__shape
    for prefix, kind in _EXTERN_KINDS.items():
        if any(name.startswith(prefix) for name in externs):
            return kind
    lut = sorted(name for name in externs if name.startswith("edgebin_lut"))
    if lut:
        return lut[0].split("_")[1]  # edgebin_lut4_matvec2_u8s8 -> "lut4"
    blocks = [block for block in collect(func.body, s_tir.SBlock) if block.name_hint != "root"]
    roles = [_block_role(block) for block in blocks]
    kinds = {role for role, _ in roles}
    if kinds <= {"data"}:
        return "data"
    if ("mac", "float") in roles or ("reduce", "float") in roles or ("math", "transcendental") in roles:
        return "float"
    if _computes_on_dequantized(blocks, roles):
        return "float"  # a fake-quant fallback: float arithmetic between dequantize and quantize
    if ("mac", "int") in roles or ("reduce", "int") in roles:
        return "int8"
    if "qdq" in kinds:
        return "convert"
    return "int8" if all(_is_int(d) for d in activation_dtypes) else "float"


def extern_calls(func) -> set[str]:
    """Names of the C functions a PrimFunc calls through `T.call_extern`."""
    return {str(call.args[0].value) for call in collect(func.body, IRCall)
            if str(getattr(call.op, "name", "")).endswith("call_extern")}


def _computes_on_dequantized(blocks, roles) -> bool:
    """True when an arithmetic block reads (through data movement) what a `dequantized` block wrote."""
    tainted: set[str] = set()
    for block, (role, _) in zip(blocks, roles, strict=True):  # blocks are in program order
        reads = {region_buffer_name(region) for region in block.reads}
        if role == "qdq" and block.name_hint.startswith("dequantized") or role == "data" and reads & tainted:
            tainted |= {region_buffer_name(region) for region in block.writes}
        elif role in ("math", "mac", "reduce") and reads & tainted:
            return True
    return False


def _block_role(block) -> tuple[str, str]:
    """("data"|"mac"|"reduce"|"math"|"qdq", "int"|"float"|"transcendental") for one TIR block."""
    if block.name_hint.rstrip("0123456789_").endswith(_QDQ_BLOCKS):
        return "qdq", "float"
    stores = collect(block.body, tirx.BufferStore)
    if not stores:
        return "data", "int"
    store = stores[-1]
    reduction = block.init is not None or any(int(iv.iter_type) == 2 for iv in block.iter_vars)
    ops, loads = _value_ops(store.value)
    if reduction:  # the loads are the operands and the accumulator: int8/int32 for an integer MAC
        role = "mac" if any(op == "Mul" for op, _ in ops) else "reduce"
        return role, "int" if loads and all(_is_int(d) for d in loads) else "float"
    if not ops:
        return "data", "int"
    if any(op.startswith("call:") and op[5:] not in _EXACT_CALLS and dtype.startswith("float") for op, dtype in ops):
        return "math", "transcendental"
    if all(_is_int(dtype) for _, dtype in ops) and all(_is_int(d) for d in loads):
        return "math", "int"
    return "math", "float"


def _value_ops(expr) -> tuple[list[tuple[str, str]], list[str]]:
    """Arithmetic on values (not on indices or conditions) in `expr`: ([(op, dtype)], [loaded dtypes])."""
    ops: list[tuple[str, str]] = []
    loads: list[str] = []

    def visit(node) -> None:
        if isinstance(node, TensorLoad):
            loads.append(prim_dtype(node))
        elif isinstance(node, tirx.IntImm | tirx.FloatImm | tirx.Var):
            pass
        elif isinstance(node, tirx.Cast):
            visit(node.value)
        elif isinstance(node, tirx.Select):
            visit(node.true_value)
            visit(node.false_value)
        elif isinstance(node, IRCall):
            name = str(getattr(node.op, "name", node.op)).rsplit(".", 1)[-1]  # "prim.if_then_else" in 0.27
            args = list(node.args)[1:] if name in ("if_then_else", "call_llvm_pure_intrin") else list(node.args)
            if is_llvm_fma(node):  # requant.Requantizer's fused multiply-add: arithmetic, like Mul and Add
                ops.append(("FMA", prim_dtype(node)))
            elif name != "if_then_else":
                ops.append((f"call:{name}", prim_dtype(node)))
            for arg in args:
                visit(arg)
        elif hasattr(node, "a") and hasattr(node, "b"):
            ops.append((type(node).__name__, prim_dtype(node)))
            visit(node.a)
            visit(node.b)
        else:  # unknown node: count it as arithmetic, never as free data movement
            ops.append((type(node).__name__, prim_dtype(node)))

    visit(expr)
    return ops, loads


def _is_int(dtype: str) -> bool:
    return dtype.startswith(("int", "uint", "bool"))


def _op_name(func_name: str) -> str:
    """`conv2d1` -> `conv2d`, `tir_round4` -> `round`, `fused_x` -> `fused_x` (legalized PrimFunc names)."""
    return (func_name.rstrip("0123456789") or func_name).removeprefix("tir_")
