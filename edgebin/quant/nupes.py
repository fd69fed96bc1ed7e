"""NUPES / PowerQuant: non-uniform b-bit weights through the power automorphism f_a(x) = sign(x)·|x|^a.

    summary = quantize_graph(gm, recipe)         # recipe = Recipe.for_method("nupes", weight_bits=4)
    calibrate(gm, x_calibration); freeze(gm)     # the int8 PTQ flow: activation scales, int8 weight scales
    fits = quantize_nupes(gm, recipe, x_calibration)   # in place: b-bit codes, exponents, int8 weight tables

Operator (PowerQuant, ICLR 2023; NUPES, arXiv:2308.05600), per output channel with s = max|W| and N = 2^(b-1) - 1:
q = clip(round(N·f_a(W/s)), -N, N) and Ŵ = s·f_{1/a}(q/N). a = 1 is symmetric uniform quantization; a < 1 puts
more levels near 0, where bell-shaped weights are. Because f_a(xy) = f_a(x)·f_a(y), products of such values are
powers of integer products (`power_product`), but edgebin does not compute that way: deployed, the power is
applied offline to a table. Each layer keeps uint8 codes c = q + N in [0, 2N] and an int8 table

    levels[c] = round(127·f_{1/a}((c - N)/N)),   Ŵ = (s_c / 127)·levels[codes]

so the int8 weight is levels[code], the scale is int8 PTQ's per-channel s_c/127, and a conv is the same
int8 x uint8 -> int32 MAC as int8 PTQ (at a = 1, b = 8 the two are identical bit for bit). The exported ONNX reads
the table with Cast -> Gather before the weight's DequantizeLinear (`edgebin.export.lut`).

Data-free (PowerQuant): a is found by a bounded 1-D search (Brent / golden section) minimising the weight
reconstruction error, per layer or one for the network. Data-driven (NUPES): starting there, a latent z per
weight (code units, free to cross the whole grid) and a per-layer exponent are learned with Adam to reconstruct
each block's FP32 output from the already-quantized previous blocks (BRECQ-style; `edgebin.quant.blocks` says
where the graph is cut). What is optimised is the deployed form: the level is rounded to the int8 grid with a
straight-through estimator. Gradients:
    a: exact given the codes (through 127·f_{1/a}(q/N); `power` keeps ln|x| out of x = 0), with
       a = a_min + (1 - a_min)·sigmoid(θ) in (a_min, 1) so it never leaves the valid range;
    z: straight-through with the float table's local slope (L[q+1] - L[q-1]) / 2 at the hard code q, which,
       unlike d|x|^(1/a)/dx, does not vanish at q = 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar
from torch import Tensor, fx

from edgebin.errors import RecipeError, UsageError
from edgebin.quant.blocks import BlockRunner, find_blocks, float_mode
from edgebin.quant.modules import _QuantWeighted
from edgebin.quant.recipe import NUPES_MAX_SAMPLES, NupesConfig, Recipe
from edgebin.quant.uniform import WEIGHT_QMAX

log = logging.getLogger(__name__)

A_MIN = 0.25  # smallest exponent searched or learned: below it, 4-bit tables lose their smallest levels to 0
LR_CODES, LR_EXPONENT = 0.005, 0.002  # Adam on z (code units) and on the exponent's logit (ResNet-8 tuned)
BATCH = 32  # reconstruction mini-batch
CHECK_EVERY, CHECK_SAMPLES = 25, 256  # every 25 steps the block is evaluated on 256 samples; the best state is kept


def power(x: Tensor, a: float | Tensor) -> Tensor:
    """f_a(x) = sign(x)·|x|^a, the continuous automorphisms of (R, x): f_a(xy) = f_a(x)·f_a(y), f_a^-1 = f_{1/a}.

    d/da = f_a(x)·ln|x| is -inf·0 at x = 0; the power is taken of 1 there instead of 0 (sign(0) = 0 still makes
    the value 0), so both gradients stay finite at 0 and every other value is exact.
    """
    magnitude = x.abs()
    return torch.sign(x) * torch.where(magnitude > 0, magnitude, torch.ones_like(magnitude)).pow(a)


def _levels_count(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _channel_max(w: Tensor) -> Tensor:
    """max|W| per output channel, shaped to broadcast against w; all-zero channels get 1 (their codes are 0)."""
    amax = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)
    return torch.where(amax > 0, amax, torch.ones_like(amax)).view(-1, *([1] * (w.dim() - 1)))


def power_codes(w: Tensor, a: float, bits: int) -> Tensor:
    """q = clip(round(N·f_a(W/s)), -N, N) per output channel, s = max|W| (float tensor of integers)."""
    n = _levels_count(bits)
    return torch.clamp(torch.round(n * power(w / _channel_max(w), a)), -n, n)


def power_quantize(w: Tensor, a: float, bits: int) -> Tensor:
    """The float operator Ŵ = s·f_{1/a}(q/N), per output channel (PowerQuant / NUPES, no int8 table)."""
    n = _levels_count(bits)
    return _channel_max(w) * power(power_codes(w, a, bits) / n, 1.0 / a)


def power_product(qw: Tensor, qx: Tensor, sw: float, sx: float, a: float, bits: int) -> Tensor:
    """Ŵ·X̂ computed from integer codes alone: s_w·s_x·f_{1/a}(q_w·q_x / N²), the automorphism at work."""
    n = _levels_count(bits)
    return sw * sx * power(qw * qx / n**2, 1.0 / a)


def level_table(a: float, bits: int) -> Tensor:
    """int8 levels[c] = round(127·f_{1/a}((c - N)/N)) for codes c = 0..2N (float64, then rounded)."""
    n = _levels_count(bits)
    k = torch.arange(-n, n + 1, dtype=torch.float64)
    return torch.round(WEIGHT_QMAX * power(k / n, 1.0 / a)).to(torch.int8)


def lut_codes(w: Tensor, scale: Tensor, a: float, bits: int) -> Tensor:
    """uint8 codes c = q + N of `w` with int8 PTQ's per-channel `scale` (s_c/127); levels[c] approximates w/scale.

    q = round(N·f_a(u/127)) with u = w/scale is computed as round(f_a(u)·N/127^a), so that at a = 1, b = 8 the
    codes minus N are int8 PTQ's codes exactly (no 127·(u/127) rounding).
    """
    n = _levels_count(bits)
    u = w.detach() / scale.view(-1, *([1] * (w.dim() - 1)))
    q = torch.clamp(torch.round(power(u, a) * (n / WEIGHT_QMAX**a)), -n, n)
    return (q + n).to(torch.uint8)


@dataclass(frozen=True)
class LutWeight:
    """A NUPES layer as deployed: the int8 weight is levels[codes], times the layer's per-channel weight scale."""

    bits: int
    exponent: float
    codes: Tensor  # uint8, the weight's shape, values in [0, 2N]
    levels: Tensor  # int8, [2N + 1], non-decreasing

    def weights_bytes(self) -> int:
        """b bits per weight, packed, plus the table."""
        return math.ceil(self.codes.numel() * self.bits / 8) + self.levels.numel()


def make_lut_weight(module: _QuantWeighted, a: float, bits: int) -> LutWeight:
    """The deployed form of a frozen int8 layer at exponent `a`, codes by rounding."""
    codes = lut_codes(module.weight, module.weight_scale, a, bits)
    return LutWeight(bits, float(a), codes, level_table(a, bits))


@torch.no_grad()
def set_lut_weight(module: _QuantWeighted, lut: LutWeight) -> None:
    """Make `module` (frozen int8) compute with `lut`: its int8 weight codes become levels[codes]."""
    module.weight_codes.copy_(lut.levels[lut.codes.long()])
    module.lut_weight = lut


def lut_weight_of(module: torch.nn.Module) -> LutWeight | None:
    return getattr(module, "lut_weight", None)


def weight_error(module: _QuantWeighted, a: float, bits: int) -> float:
    """‖W - Ŵ(a)‖ of the deployed form (int8 table, int8 PTQ scales)."""
    lut = make_lut_weight(module, a, bits)
    w_hat = lut.levels[lut.codes.long()].float() * module.weight_scale.view(-1, *([1] * (module.weight.dim() - 1)))
    return float(torch.linalg.vector_norm(module.weight.detach() - w_hat))


def search_exponent(error: Callable[[float], float], a_min: float = A_MIN) -> float:
    """argmin of error(a) on [a_min, 1]: bounded Brent search (golden section steps), then 1.0 if no worse."""
    found = minimize_scalar(error, bounds=(a_min, 1.0), method="bounded", options={"xatol": 1e-3})
    return 1.0 if error(1.0) <= found.fun else float(found.x)


def layer_exponents(layers: dict[str, tuple[_QuantWeighted, int]], scope: str) -> dict[str, float]:
    """Data-free exponents: per layer, or one for the network minimising the sum of the layers' errors."""
    if scope == "network":
        a = search_exponent(lambda a: sum(weight_error(m, a, bits) for m, bits in layers.values()))
        return dict.fromkeys(layers, a)
    return {name: search_exponent(lambda a, m=m, b=bits: weight_error(m, a, b)) for name, (m, bits) in layers.items()}


class _LearnedWeight(torch.nn.Module):
    """Latent codes z and exponent logit θ of one layer; forward() is the deployed weight, with NUPES' gradients.

    Ŵ = scale·(L[q] + slope[q]·(z - sg(z))), q = clip(round(z), -N, N), L = round_ste(127·f_{1/a}(k/N)).
    """

    def __init__(self, module: _QuantWeighted, lut: LutWeight) -> None:
        super().__init__()
        self.n, self.bits = _levels_count(lut.bits), lut.bits
        shape = (-1, *([1] * (module.weight.dim() - 1)))
        self.scale = module.weight_scale.detach().view(shape)
        u = module.weight.detach() / self.scale
        self.z = torch.nn.Parameter(power(u, lut.exponent) * (self.n / WEIGHT_QMAX**lut.exponent))
        a = min(max(lut.exponent, A_MIN + 1e-3), 1 - 1e-3)
        self.theta = torch.nn.Parameter(torch.tensor(math.log((a - A_MIN) / (1 - a))))
        self.grid = torch.arange(-self.n, self.n + 1, dtype=torch.float32) / self.n
        k = torch.arange(2 * self.n + 1)
        self.up, self.down = (k + 1).clamp(max=2 * self.n), (k - 1).clamp(min=0)  # neighbours for the slope

    def exponent(self) -> Tensor:
        return A_MIN + (1 - A_MIN) * torch.sigmoid(self.theta)

    def codes(self) -> Tensor:
        return torch.clamp(torch.round(self.z.detach()), -self.n, self.n) + self.n

    def forward(self) -> Tensor:
        table = WEIGHT_QMAX * power(self.grid, 1 / self.exponent())
        with torch.no_grad():
            slope = (table[self.up] - table[self.down]) / (self.up - self.down)
        table = table + (torch.round(table) - table).detach()
        idx = self.codes().long()
        return self.scale * (table[idx] + slope[idx] * (self.z - self.z.detach()))

    @torch.no_grad()
    def project(self) -> None:
        """Keep z where rounding still reaches a code, so the straight-through gradient can bring it back."""
        self.z.clamp_(-self.n - 0.49, self.n + 0.49)

    def to_lut(self) -> LutWeight:
        a = float(self.exponent().detach())
        return LutWeight(self.bits, a, self.codes().to(torch.uint8), level_table(a, self.bits))


@dataclass(frozen=True)
class BlockFit:
    """Block output MSE against FP32 at the data-free start and after fitting (the kept result)."""

    layers: tuple[str, ...]
    mse_before: float
    mse_after: float


@dataclass
class NupesResult:
    """The deployed weights (module name -> LutWeight) and, when data-driven, the block fits."""

    luts: dict[str, LutWeight]
    blocks: list[BlockFit]


def quantize_nupes(gm: fx.GraphModule, recipe: Recipe, x: np.ndarray | None = None, *, batch_size: int = 64,
                   progress: Callable[[int], None] | None = None) -> NupesResult:
    """Give every NUPES layer of a calibrated, frozen int8 graph its codes, exponent and int8 table, in place.

    `x` (calibration inputs, at most 1,024 used) is needed in the data-driven mode; `batch_size` is the most
    samples the graph takes per call. `progress(done)` counts reconstruction steps out of `total_steps`.
    """
    config = recipe.default
    if not isinstance(config, NupesConfig):
        raise RecipeError(f"quantize_nupes needs a nupes recipe, got method {recipe.method!r}; try "
                          "Recipe.for_method('nupes')")
    layers = nupes_layers(gm, recipe)
    exponents = layer_exponents(layers, config.exponent_scope)
    luts = {name: make_lut_weight(m, exponents[name], bits) for name, (m, bits) in layers.items()}
    for name, (module, _) in layers.items():
        set_lut_weight(module, luts[name])
    if config.mode == "data-free" or config.iterations == 0:
        return NupesResult(luts, [])
    if x is None:
        raise UsageError("data-driven NUPES reconstructs block outputs: pass the calibration inputs, or use "
                         "NupesConfig(mode='data-free')")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many small ops: on a busy machine, waiting for a descheduled worker stalls each one
    try:
        x_fit = torch.from_numpy(np.ascontiguousarray(x[:NUPES_MAX_SAMPLES]))
        fits = _reconstruct_blocks(gm, layers, x_fit, config.iterations, batch_size, progress or (lambda done: None))
    finally:
        torch.set_num_threads(threads)
    return NupesResult({name: lut_weight_of(m) for name, (m, _) in layers.items()}, fits)


def total_steps(gm: fx.GraphModule, recipe: Recipe) -> int:
    """Reconstruction steps `quantize_nupes` will report (0 when data-free)."""
    config = recipe.default
    if not isinstance(config, NupesConfig) or config.mode == "data-free":
        return 0
    return config.iterations * len(find_blocks(gm, set(nupes_layers(gm, recipe))))


def nupes_layers(gm: fx.GraphModule, recipe: Recipe) -> dict[str, tuple[_QuantWeighted, int]]:
    """Module name -> (module, bits) of the layers whose recipe config is NUPES, in graph order."""
    out = {}
    for node in gm.graph.nodes:
        module = gm.get_submodule(node.target) if node.op == "call_module" else None
        config = recipe.config_for(node.meta.get("edgebin_layer", node.target)) if module is not None else None
        if not (isinstance(module, _QuantWeighted) and isinstance(config, NupesConfig)):
            continue
        if module.mode != "quantize":
            raise UsageError(f"NUPES starts from a frozen int8 graph: call calibrate(gm, x) and freeze(gm) before "
                             f"quantize_nupes ({node.target} is in {module.mode!r} mode)")
        out[node.target] = (module, config.weight_bits)
    return out


def _reconstruct_blocks(gm: fx.GraphModule, layers: dict[str, tuple[_QuantWeighted, int]], x: Tensor,
                        iterations: int, batch: int, progress: Callable[[int], None]) -> list[BlockFit]:
    """BRECQ order: each block learns to map the quantized previous blocks' output onto its FP32 output."""
    runner = BlockRunner(gm, x[: min(BATCH, batch, len(x))])
    x_q, x_fp, fits, done = x, x, [], 0
    generator = torch.Generator().manual_seed(0)
    for block in find_blocks(gm, set(layers)):
        with float_mode(gm):
            y_fp = runner.run_all(block, x_fp)
        best = start = {name: lut_weight_of(layers[name][0]) for name in block.layers}
        before = float(F.mse_loss(runner.run_all(block, x_q), y_fp))
        best_mse = float(F.mse_loss(runner.run_all(block, x_q[:CHECK_SAMPLES]), y_fp[:CHECK_SAMPLES]))
        learned = {name: _LearnedWeight(layers[name][0], best[name]) for name in block.layers}
        optimizer = torch.optim.Adam([{"params": [w.z for w in learned.values()], "lr": LR_CODES},
                                      {"params": [w.theta for w in learned.values()], "lr": LR_EXPONENT}])
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, iterations)
        for step in range(1, iterations + 1):
            runner.weights = {name: w.forward for name, w in learned.items()}
            idx = torch.randint(len(x_q), (runner.batch,), generator=generator)
            loss = F.mse_loss(runner.run_block(block, x_q[idx]), y_fp[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            for w in learned.values():
                w.project()
            if step % CHECK_EVERY == 0 or step == iterations:  # latent codes wander: keep the best state seen
                mse = float(F.mse_loss(runner.run_all(block, x_q[:CHECK_SAMPLES]), y_fp[:CHECK_SAMPLES]))
                if mse < best_mse:
                    best, best_mse = {name: w.to_lut() for name, w in learned.items()}, mse
                progress(done + step)
        done += iterations
        runner.weights = {}
        for name, lut in best.items():
            set_lut_weight(layers[name][0], lut)
        out = runner.run_all(block, x_q)
        after = float(F.mse_loss(out, y_fp))
        if after > before:  # the best on the check samples is worse on all of them: keep the data-free start
            for name, lut in start.items():
                set_lut_weight(layers[name][0], lut)
            out, after = runner.run_all(block, x_q), before
        log.info("NUPES block %s: MSE %.4g -> %.4g", "+".join(block.layers), before, after)
        fits.append(BlockFit(block.layers, before, after))
        x_q, x_fp = out, y_fp
    return fits


def layer_dicts(gm: fx.GraphModule, records: list[dict]) -> list[dict]:
    """Per-layer records (LayerRecord.to_dict()) with method "nupes", its bits and exponent where a layer has them."""
    out = []
    for record in records:
        lut = lut_weight_of(gm.get_submodule(record["module"])) if record.get("module") else None
        extra = {} if lut is None else {"method": "nupes", "weight_bits": lut.bits, "exponent": round(lut.exponent, 6)}
        out.append({**record, **extra})
    return out


def weights_bytes(gm: fx.GraphModule) -> int:
    """Deployed weight bytes: NUPES layers b bits per weight plus the table, other layers as int8 PTQ counts them."""
    total = 0
    for module in gm.modules():
        if isinstance(module, _QuantWeighted):
            lut = lut_weight_of(module)
            total += module.weights_bytes() if lut is None else lut.weights_bytes() + module.bias.numel() * 4
    return total
