"""Low-bit and power-quantized activations for NUPES: a staircase on the 8-bit activation codes.

    records = quantize_activations(gm, recipe, x_calibration)   # after calibrate(gm, x) and freeze(gm)

NUPES layers may take their input at `activation_bits` b < 8, and with `power_activations` on a power grid
(PowerQuant's operator on activations). edgebin does this on top of the uint8 activation that int8 PTQ already
has: the input quantizer of each such layer maps its uint8 code u through a 256-entry table,

    r = u - zp,  q = round(N·f_a(r / M)),  T[u] = zp + round(M·f_{1/a}(q / N))

with M the larger side of the code range and N = 2^b - 1 (non-negative input, as after ReLU) or 2^(b-1) - 1
(signed). So the activation takes at most N + 1 (2N + 1) values, spaced as the power grid, each rounded onto the
uint8 grid. Why this form: the power is spent offline on a table, the tensor stays uint8 with the same scale and
zero point, and the next layer is the usual int8 x uint8 -> int32 MAC; onnxruntime runs it as
QuantizeLinear -> Cast -> Gather(T) -> DequantizeLinear, and a compiler sees one integer lookup per element.
At a = 1, b = 8 and zp = 0 the table is the identity; a = 1 with b < 8 is plain uniform b-bit activations.

The cost of the form: values are first rounded to the uint8 grid, then to a power level, then that level back
to the uint8 grid, so levels closer together than one uint8 step merge (`levels` counts what is left). The
network input keeps 8-bit uniform codes (it is the data, and the stem reads it once).

The exponent of each quantizer minimises the squared error between the 8-bit code and its table value over the
calibration activations (`search_table`): a histogram of 256 codes makes every evaluation cheap, so the search
is a dense grid over [A_MIN, 1], robust to the step-shaped error curve. Quantizers are fitted in graph order,
each on activations that the already-fitted ones before it have shaped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx

from edgebin.quant.modules import ActQuant, _QuantWeighted
from edgebin.quant.nupes import A_MIN
from edgebin.quant.nupes import power as power_of
from edgebin.quant.recipe import NupesConfig, Recipe
from edgebin.quant.uniform import ACT_QMAX, ACT_QMIN

EXPONENT_GRID = np.round(np.arange(A_MIN, 1.0 + 1e-9, 0.01), 2)  # A_MIN as for weights: few levels below it


def _power(x: np.ndarray, a: float) -> np.ndarray:
    return power_of(torch.from_numpy(x), a).numpy()


def activation_table(zero_point: int, bits: int, exponent: float, signed: bool) -> np.ndarray:
    """uint8 T[u] for u = 0..255: code u requantized to a b-bit power grid, back on the uint8 grid."""
    r = np.arange(ACT_QMIN, ACT_QMAX + 1, dtype=np.float64) - zero_point
    if signed:
        m, n, q_lo = max(zero_point, ACT_QMAX - zero_point), 2 ** (bits - 1) - 1, -(2 ** (bits - 1) - 1)
    else:
        m, n, q_lo = ACT_QMAX - zero_point, 2**bits - 1, 0
    if m == 0:  # a constant-zero range: every code is the zero point
        return np.full(ACT_QMAX + 1, zero_point, dtype=np.uint8)
    q = np.clip(np.round(n * _power(r / m, exponent)), q_lo, n)
    value = np.round(m * _power(q / n, 1.0 / exponent)) + zero_point
    return np.clip(value, ACT_QMIN, ACT_QMAX).astype(np.uint8)


def table_error(hist: np.ndarray, table: np.ndarray) -> float:
    """Σ_u hist[u]·(T[u] - u)², in uint8 steps squared."""
    return float(np.sum(hist * (table.astype(np.float64) - np.arange(hist.size)) ** 2))


def search_table(hist: np.ndarray, zero_point: int, bits: int, power: bool) -> tuple[float, bool, np.ndarray]:
    """(exponent, signed, table) for a histogram of uint8 codes; exponent 1 (uniform) unless `power`."""
    signed = bool(hist[:zero_point].sum() > 0)
    if not power:
        return 1.0, signed, activation_table(zero_point, bits, 1.0, signed)
    errors = [table_error(hist, activation_table(zero_point, bits, float(a), signed)) for a in EXPONENT_GRID]
    best = float(EXPONENT_GRID[int(np.argmin(errors))])
    if table_error(hist, activation_table(zero_point, bits, 1.0, signed)) <= min(errors):
        best = 1.0  # uniform is no worse: keep the simpler grid
    return best, signed, activation_table(zero_point, bits, best, signed)


@dataclass(frozen=True)
class ActivationTable:
    """One fitted input quantizer: which layers read it, its bits, exponent, range kind and distinct levels."""

    quantizer: str
    layers: tuple[str, ...]
    bits: int
    exponent: float
    signed: bool
    levels: int

    def to_dict(self) -> dict:
        return {"quantizer": self.quantizer, "layers": list(self.layers), "bits": self.bits,
                "exponent": round(self.exponent, 4), "signed": self.signed, "levels": self.levels}


def table_inputs(gm: fx.GraphModule, recipe: Recipe) -> dict[str, tuple[ActQuant, tuple[str, ...], int, bool]]:
    """Quantizer name -> (quantizer, layers it feeds, bits, power) for the NUPES layers that want a table, in
    graph order; the network input's quantizer is left at 8 bits. A quantizer feeding several such layers takes
    the widest bits any of them asks for."""
    names = {id(m): name for name, m in gm.named_modules()}
    input_quants = {id(gm.get_submodule(n.target)) for n in gm.graph.nodes
                    if n.op == "call_module" and n.args and getattr(n.args[0], "op", "") == "placeholder"
                    and isinstance(gm.get_submodule(n.target), ActQuant)}
    out: dict[str, tuple[ActQuant, tuple[str, ...], int, bool]] = {}
    for node in gm.graph.nodes:
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        if not isinstance(module, _QuantWeighted) or module.input_quant is None:
            continue
        config = recipe.config_for(node.meta.get("edgebin_layer", node.target))
        if not isinstance(config, NupesConfig) or not (config.activation_bits < 8 or config.power_activations):
            continue
        act = module.input_quant
        if id(act) in input_quants or id(act.source()) in input_quants:
            continue
        name = names[id(act)]
        layer = node.meta.get("edgebin_layer", node.target)
        if name in out:
            _, layers, bits, power = out[name]
            out[name] = (act, (*layers, layer), max(bits, config.activation_bits), power or config.power_activations)
        else:
            out[name] = (act, (layer,), config.activation_bits, config.power_activations)
    return out


@torch.no_grad()
def code_histogram(gm: fx.GraphModule, act: ActQuant, x: np.ndarray, batch_size: int) -> np.ndarray:
    """How often each uint8 code leaves `act` over the inputs `x` (its table, if any, not yet applied)."""
    hist = np.zeros(ACT_QMAX + 1, dtype=np.int64)

    def count(module: ActQuant, args: tuple, output: torch.Tensor) -> None:
        codes = torch.round(output / module.scale) + module.zero_point.float()
        hist[:] += np.bincount(codes.clamp(ACT_QMIN, ACT_QMAX).to(torch.int64).flatten().numpy(),
                               minlength=ACT_QMAX + 1)

    handle = act.register_forward_hook(count)
    try:
        for start in range(0, len(x), batch_size):
            gm(torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size])))
    finally:
        handle.remove()
    return hist


def quantize_activations(gm: fx.GraphModule, recipe: Recipe, x: np.ndarray, *, batch_size: int = 64,
                         progress: Callable[[int], None] | None = None) -> list[ActivationTable]:
    """Give the input quantizer of every NUPES layer that asks for it its b-bit (power) table, in place."""
    fitted = []
    for done, (name, (act, layers, bits, power)) in enumerate(table_inputs(gm, recipe).items(), start=1):
        if act.mode != "quantize":
            raise RuntimeError(f"{name}: activation tables need a frozen graph (calibrate and freeze first)")
        act.table = None
        hist = code_histogram(gm, act, x, batch_size)
        exponent, signed, table = search_table(hist, int(act.zero_point), bits, power)
        act.table = torch.from_numpy(table)
        fitted.append(ActivationTable(name, layers, bits, exponent, signed, int(np.unique(table).size)))
        if progress is not None:
            progress(done)
    return fitted


def count_inputs(gm: fx.GraphModule, recipe: Recipe) -> int:
    """How many quantizers `quantize_activations` fits (0: the recipe keeps 8-bit uniform activations)."""
    return len(table_inputs(gm, recipe))
