"""BatchNormAsAffine: an inference BatchNorm with constant statistics as one multiply and one add per element.

Relax's `DecomposeOpsForInference` writes `batch_norm` as `(x - mean) / sqrt(var + eps) * gamma + beta`, a float
division per element that LLVM may not turn into a multiply. onnxruntime's BatchNormalization kernel folds the
statistics once, in float32, and computes

    s = gamma * (1 / sqrt(var + eps)),  t = beta - mean * s,  y = x * s + t

which this pass emits, so a BatchNorm the export left in the graph (W1A1's int8 stem, whose conv output stays float
for the residual) follows onnxruntime's arithmetic and costs a multiply and an add. Run it after the rewrites that
fold BatchNorms into their kernels (`BinaryToPacked`) and before `DecomposeOpsForInference`, which then has none
left of this kind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from edgebin.compile.qdq_to_int import BindingGraph
from edgebin.compile.tvm_adapter import (
    PyExprMutator,
    call_op_name,
    const,
    const_array,
    mutator,
    relax,
    tensor_shape,
    tvm,
)

log = logging.getLogger(__name__)


def batch_norm_params(norm, value: Callable) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(gamma, beta, mean, var) in float64, flat, of an inference `batch_norm` call whose parameters `value` (a
    binding lookup) resolves to constants; gamma 1 and beta 0 where the call does not scale or center. Else None."""
    if norm.attrs.training:
        return None
    params = [const_array(value(a)) for a in norm.args[1:5]]
    if any(p is None for p in params):
        return None
    gamma, beta, mean, var = (p.astype(np.float64).reshape(-1) for p in params)
    return (gamma if norm.attrs.scale else np.ones_like(var), beta if norm.attrs.center else np.zeros_like(var),
            mean, var)


def affine_of(norm, graph: BindingGraph) -> tuple[np.ndarray, np.ndarray] | None:
    """(s, t), float32 per channel, of an inference `batch_norm` call with constant parameters, else None."""
    params = batch_norm_params(norm, graph.value)
    if params is None:
        return None
    gamma, beta, mean, var = (p.astype(np.float32) for p in params)  # exact: the values were float32
    inv_std = np.float32(1) / np.sqrt(var + np.float32(norm.attrs.epsilon))
    scale = (inv_std * gamma).astype(np.float32)
    return scale, (beta - mean * scale).astype(np.float32)


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod, func: relax.Function) -> None:
        super().__init__(mod)
        self.graph = BindingGraph(func, mod)
        self.rewritten = 0

    def visit_tuple_getitem_(self, op):
        norm = self.graph.value(op.tuple_value)
        shape = tensor_shape(norm.args[0]) if call_op_name(norm) == "relax.nn.batch_norm" else None
        found = affine_of(norm, self.graph) if op.index == 0 and shape is not None else None
        if found is None:
            return super().visit_tuple_getitem_(op)
        axis = int(norm.attrs.axis) % len(shape)
        channel_shape = [shape[axis] if i == axis else 1 for i in range(len(shape))]
        scale, shift = (const(v.reshape(channel_shape)) for v in found)
        self.rewritten += 1
        x = self.visit_expr(norm.args[0])
        return relax.op.add(self.builder_.emit(relax.op.multiply(x, scale)), shift)


@tvm.ir.transform.module_pass(opt_level=0, name="BatchNormAsAffine")
class BatchNormAsAffine:
    """Rewrite `batch_norm(x, gamma, beta, mean, var)[0]` (inference, constant parameters) into `x * s + t` with
    onnxruntime's float32 constants. Other BatchNorms stay for `DecomposeOpsForInference`."""

    def transform_module(self, mod, ctx):
        for gvar, func in list(mod.functions.items()):
            if not isinstance(func, relax.Function) or func.attrs is not None and "Primitive" in func.attrs:
                continue
            rewriter = _Rewriter(mod, func)
            func = relax.analysis.remove_all_unused(rewriter.visit_expr(func))
            mod = rewriter.builder_.get()
            mod[gvar] = func
            if rewriter.rewritten:
                log.info("BatchNormAsAffine rewrote %d BatchNorm(s)", rewriter.rewritten)
        return mod


__all__ = ["BatchNormAsAffine", "affine_of", "batch_norm_params"]
