"""`prepare`: apply a QAT recipe to an nn.Module by swapping in quantized layers, in place.

    model = prepare(model, Recipe.for_method("statsq", weight_bits=2, activation_bits=2))
    init_quantizers(model, batch)          # activation steps from one batch, before building the optimizer
    for record in summarize(model): ...    # what each layer became

Every nn.Conv2d and nn.Linear becomes a QATConv2d / QATLinear with the weight and input quantizers its layer
config asks for; with a StatsQ config and `qkr=True`, attention blocks (q, k, v, proj linears, `heads`,
`scale`, as `edgebin.zoo.tiny_vit.Attention`) become QKRAttention. The first and last quantizable layers get
LSQ at `recipe.first_last_bits` (8 by default) unless an override names them. First and last are taken in
registration order, or in execution order when `example_input` is given. A FloatConfig layer stays as it was.

Each config type has one builder registered with `@handles(...)`, so a new method adds a config and a builder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from edgebin.errors import RecipeError
from edgebin.quant.qat.binary import ApproxSign, BinaryActivation, BinaryWeight, BiPerSign, ReSTESign, SteSign
from edgebin.quant.qat.lsq import LsqActivation, LsqWeight
from edgebin.quant.qat.modules import QATConv2d, QATLinear
from edgebin.quant.qat.qkr import QKRAttention, is_attention
from edgebin.quant.qat.quantizer import ActivationQuantizer, WeightQuantizer
from edgebin.quant.qat.statsq import StatsQWeight
from edgebin.quant.qat.tbt import ElasticActivation, TbtWeight
from edgebin.quant.qat.ternary import TernaryWeight
from edgebin.quant.recipe import (
    FLOAT_BITS,
    QAT_METHODS,
    BinaryConfig,
    FloatConfig,
    Int8Config,
    LayerConfig,
    LsqConfig,
    Recipe,
    StatsQConfig,
    TbtConfig,
    TernaryConfig,
)

log = logging.getLogger(__name__)

Quantizers = tuple[WeightQuantizer | None, ActivationQuantizer | None]
Builder = Callable[[LayerConfig, nn.Module], Quantizers]
_BUILDERS: dict[type[LayerConfig], Builder] = {}


def handles(config_type: type[LayerConfig]) -> Callable[[Builder], Builder]:
    """Register the builder of (weight quantizer, input quantizer) for one layer config type."""

    def register(builder: Builder) -> Builder:
        _BUILDERS[config_type] = builder
        return builder

    return register


def _inputs(layer: nn.Module) -> tuple[int, int]:
    """(input channels, channel dim of the input): conv inputs are B×C×H×W, linear inputs ...×C."""
    return (layer.in_channels, 1) if isinstance(layer, nn.Conv2d) else (layer.in_features, -1)


def _lsq_input(config: LayerConfig, layer: nn.Module) -> LsqActivation | None:
    if config.activation_bits == FLOAT_BITS:
        return None
    channels, dim = _inputs(layer)
    bias, per_token = getattr(config, "activation_bias", False), getattr(config, "per_token", False)
    return LsqActivation(config.activation_bits, channels, dim, bias=bias, per_token=per_token and dim == -1)


@handles(Int8Config)
def _int8(config: Int8Config, layer: nn.Module) -> Quantizers:
    """In a QAT recipe, 8 bits means LSQ W8A8 with a learned weight step (OFQ's 8-bit patch embed and head)."""
    return LsqWeight(8, layer.weight), _lsq_input(config, layer)


@handles(LsqConfig)
def _lsq(config: LsqConfig, layer: nn.Module) -> Quantizers:
    return LsqWeight(config.weight_bits, layer.weight), _lsq_input(config, layer)


@handles(StatsQConfig)
def _statsq(config: StatsQConfig, layer: nn.Module) -> Quantizers:
    return StatsQWeight(config.weight_bits), _lsq_input(config, layer)


def _elastic_or_lsq(config: LayerConfig, layer: nn.Module, shift: bool = False) -> ActivationQuantizer | None:
    if config.activation_bits in (FLOAT_BITS, 8):
        return _lsq_input(config, layer)
    channels, dim = _inputs(layer)
    return ElasticActivation(config.activation_bits, channels, dim, shift=shift)


@handles(TbtConfig)
def _tbt(config: TbtConfig, layer: nn.Module) -> Quantizers:
    return TbtWeight(config.weight_bits, config.center), _elastic_or_lsq(config, layer, config.shift)


@handles(TernaryConfig)
def _ternary(config: TernaryConfig, layer: nn.Module) -> Quantizers:
    return TernaryWeight(), _elastic_or_lsq(config, layer)


_DEFAULT_SCALE = {"ste": "channel", "reste": "tensor", "biper": "learned"}


@handles(BinaryConfig)
def _binary(config: BinaryConfig, layer: nn.Module) -> Quantizers:
    est = config.estimator
    weight_sign = {"ste": lambda: SteSign(), "reste": lambda: ReSTESign(config.o_end),
                   "biper": lambda: BiPerSign(config.omega)}[est]()
    scale = _DEFAULT_SCALE[est] if config.weight_scale == "auto" else config.weight_scale
    weight = BinaryWeight(weight_sign, scale, channels=layer.weight.shape[0])
    if config.activation_bits == FLOAT_BITS:
        return weight, None
    act_sign = {"ste": SteSign, "reste": lambda: ReSTESign(config.o_end), "biper": ApproxSign}[est]()
    channels, dim = _inputs(layer)
    act = BinaryActivation(act_sign, channels, dim, normalize=est == "biper", learnable_shift=config.learnable_shift)
    return weight, act


def _qkr(config: StatsQConfig, attn: nn.Module) -> QKRAttention:
    def act(channels: int = 0) -> LsqActivation | None:
        if config.activation_bits == FLOAT_BITS:
            return None
        bias = config.activation_bias and channels > 0
        return LsqActivation(config.activation_bits, channels, -1, bias=bias, per_token=config.per_token)

    dim = attn.q.in_features
    v = QATLinear.from_float(attn.v, StatsQWeight(config.weight_bits), None, config)
    proj = QATLinear.from_float(attn.proj, StatsQWeight(config.weight_bits), act(dim), config)
    new = QKRAttention.from_attention(attn, v, proj, qk_quantizer=StatsQWeight(config.weight_bits),
                                      input_quantizer=act(dim), t_quantizer=act(dim), attn_quantizer=act(),
                                      v_quantizer=act(dim), keep_q_bias=config.keep_q_bias)
    new.config = config
    return new.to(attn.q.weight.device).train(attn.training)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _layers(model: nn.Module, example_input: Tensor | None) -> list[tuple[str, nn.Module]]:
    """Plain Conv2d/Linear layers, in registration order or in the order a forward pass first calls them."""
    layers = [(n, m) for n, m in model.named_modules() if type(m) in (nn.Conv2d, nn.Linear)]
    if example_input is None:
        return layers
    order: dict[str, int] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(*_: object) -> None:  # returns None: the layer's output stays as it is
            order.setdefault(name, len(order))

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in layers]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return sorted((item for item in layers if item[0] in order), key=lambda item: order[item[0]])


def make_recipe(method: str, bits: int | None = None, act_bits: int | None = None, estimator: str | None = None,
                **fields) -> Recipe:
    """The recipe of the CLI flags `--method --bits --act-bits --estimator` (Recipe.for_method by flag names)."""
    return Recipe.for_method(method, weight_bits=bits, activation_bits=act_bits, estimator=estimator, **fields)


def prepare(model: nn.Module, recipe: Recipe, example_input: Tensor | None = None) -> nn.Module:
    """Swap in the QAT layers `recipe` asks for (in place) and return the model."""
    if recipe.method not in QAT_METHODS:
        raise RecipeError(f"prepare applies QAT methods ({', '.join(QAT_METHODS)}); {recipe.method!r} is "
                          f"post-training quantization: use edgebin.quant.quantize_graph")
    for name, module in list(model.named_modules()):
        config = recipe.config_for(name)
        if isinstance(config, StatsQConfig) and config.qkr and is_attention(module):
            _replace(model, name, _qkr(config, module))
    layers = _layers(model, example_input)
    edges = {layers[0][0], layers[-1][0]} if layers else set()
    for name, layer in layers:
        config = recipe.override_for(name)
        if config is None and name in edges and recipe.first_last_bits is not None:
            bits = recipe.first_last_bits
            config = Int8Config() if bits == 8 else LsqConfig(weight_bits=bits, activation_bits=bits)
        config = config or recipe.default
        if isinstance(config, FloatConfig):
            continue
        if type(config) not in _BUILDERS:
            raise RecipeError(f"layer {name}: no QAT builder for {type(config).__name__}")
        weight_q, input_q = _BUILDERS[type(config)](config, layer)
        cls = QATConv2d if isinstance(layer, nn.Conv2d) else QATLinear
        device = layer.weight.device
        weight_q = weight_q.to(device) if weight_q is not None else None
        input_q = input_q.to(device) if input_q is not None else None
        new = cls.from_float(layer, weight_q, input_q, config)
        _replace(model, name, new)
    for record in summarize(model):
        log.debug("%s", record)
    return model


@dataclass(frozen=True)
class QATLayerRecord:
    """What one layer became: its method ("float" if unquantized), bits and estimator."""

    layer: str
    op: str
    kind: str
    weight_bits: int | None = None
    activation_bits: int | None = None
    estimator: str | None = None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def summarize(model: nn.Module) -> list[QATLayerRecord]:
    """One record per conv, linear and QKR attention block, in registration order."""
    records = []
    for name, m in model.named_modules():
        config = getattr(m, "config", None)
        if isinstance(m, (QATConv2d, QATLinear, QKRAttention)) and config is not None:
            kind = "lsq" if isinstance(config, Int8Config) else config.kind  # 8 bits in QAT: LSQ W8A8
            act = config.activation_bits if config.activation_bits != FLOAT_BITS else None
            records.append(QATLayerRecord(name, type(m).__name__, kind, config.weight_bits, act,
                                          getattr(config, "estimator", None)))
        elif type(m) in (nn.Conv2d, nn.Linear):
            records.append(QATLayerRecord(name, type(m).__name__, "float"))
    return records
