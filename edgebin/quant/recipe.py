"""Recipes: which method, bit widths and calibration apply to which layer, from CLI flags or a JSON file.

    recipe = Recipe(method="int8", default=Int8Config(), overrides={"fc": FloatConfig()})
    recipe.config_for("layer1.0.conv1")      # -> Int8Config(...)
    recipe = Recipe.for_method("binary", estimator="biper")   # QAT: --method binary --estimator biper
    recipe = Recipe.for_method("nupes", weight_bits=4)        # PTQ: W4A8 power-exponent codes (NUPES)

`int8` and `nupes` are post-training quantization (`edgebin.quant.quantize_graph`, then for nupes
`edgebin.quant.nupes.quantize_nupes`); the other methods are quantization-aware training
(`edgebin.quant.qat.prepare`), whose recipes keep the first and last quantizable layers at `first_last_bits`
(8: LSQ W8A8, as OFQ keeps patch embedding and head) unless an override names them.

Overrides match layer names (module paths such as 'layer1.0.conv1') with shell patterns ('stem.*'); the
first matching pattern wins. The recipe is saved as `recipe.json` in the output folder, so any run can be
reproduced with `--recipe out/recipe.json`.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgebin.errors import RecipeError, closest, unknown_name
from edgebin.quant.observers import CALIBRATION_METHODS

PTQ_METHODS = ("int8", "nupes")
QAT_METHODS = ("statsq", "lsq", "tbt", "binary", "ternary")
METHODS = PTQ_METHODS + QAT_METHODS
ESTIMATORS = ("ste", "reste", "biper")
WEIGHT_SCALES = ("auto", "channel", "tensor", "learned", "none")
FLOAT_BITS = 32  # activation_bits=32: the layer's input stays float (weight-only quantization, e.g. ReSTE W1A32)


@dataclass(frozen=True, kw_only=True)
class LayerConfig:
    """Base of per-layer configurations."""

    kind: str = ""


@dataclass(frozen=True, kw_only=True)
class FloatConfig(LayerConfig):
    """Leave the layer in float32 (it is reported as a float fallback)."""

    kind: str = "float"


@dataclass(frozen=True, kw_only=True)
class Int8Config(LayerConfig):
    """W8A8: per-channel symmetric int8 weights, per-tensor asymmetric 8-bit activations (uint8 codes)."""

    kind: str = "int8"
    weight_bits: int = 8
    activation_bits: int = 8

    def __post_init__(self) -> None:
        if (self.weight_bits, self.activation_bits) != (8, 8):
            raise RecipeError(
                f"the int8 method quantizes weights and activations to 8 bits, got "
                f"W{self.weight_bits}A{self.activation_bits}"
            )


def _check_bits(config: LayerConfig, field_name: str, allowed: tuple[int, ...]) -> None:
    value = getattr(config, field_name)
    if isinstance(value, bool) or value not in allowed:
        valid = ", ".join(str(b) for b in allowed)
        raise RecipeError(f"{config.kind}: {field_name} must be one of {valid}, got {value!r}")


_MULTI_BIT = (2, 3, 4, 5, 6, 7, 8)


@dataclass(frozen=True, kw_only=True)
class StatsQConfig(LayerConfig):
    """OFQ: StatsQ weights (scale 2·mean|W| per channel, not learned) and LSQ activations, 2-8 bits.

    `activation_bias` wraps each activation quantizer as Q(x + β₁) + β₂ with learnable per-channel biases, as
    OFQ's code does; it is off by default because β₂ after the quantizer keeps a conv's input off the integer
    grid. `per_token` gives one activation step per token (OFQ's code; fixes the token count). `qkr`
    reparameterizes attention blocks (q·kᵀ through one quantized W_qk); `keep_q_bias` keeps the q bias the
    official code drops.
    """

    kind: str = "statsq"
    weight_bits: int = 2
    activation_bits: int = 2
    activation_bias: bool = False
    per_token: bool = False
    qkr: bool = False
    keep_q_bias: bool = False

    def __post_init__(self) -> None:
        _check_bits(self, "weight_bits", _MULTI_BIT)
        _check_bits(self, "activation_bits", (*_MULTI_BIT, FLOAT_BITS))


@dataclass(frozen=True, kw_only=True)
class LsqConfig(LayerConfig):
    """LSQ weights (learned per-channel step) and LSQ activations, 2-8 bits: the baseline of OFQ's comparison."""

    kind: str = "lsq"
    weight_bits: int = 2
    activation_bits: int = 2
    activation_bias: bool = False
    per_token: bool = False

    def __post_init__(self) -> None:
        _check_bits(self, "weight_bits", _MULTI_BIT)
        _check_bits(self, "activation_bits", (*_MULTI_BIT, FLOAT_BITS))


@dataclass(frozen=True, kw_only=True)
class TbtConfig(LayerConfig):
    """TBT: ternary (2) or binary (1) statistics-scaled weights, elastic 1- or 2-bit activations (8: LSQ).

    `shift` adds BiT's learnable per-channel shift before each elastic activation quantizer; `center`
    binarizes W - mean(W) (the paper's form; the released code does not center).
    """

    kind: str = "tbt"
    weight_bits: int = 2
    activation_bits: int = 2
    shift: bool = False
    center: bool = False

    def __post_init__(self) -> None:
        _check_bits(self, "weight_bits", (1, 2))
        _check_bits(self, "activation_bits", (1, 2, 8, FLOAT_BITS))


@dataclass(frozen=True, kw_only=True)
class BinaryConfig(LayerConfig):
    """W1A1 (or W1A32) with the estimator `ste` (clipped), `reste` (power schedule) or `biper` (sine, 2 stages).

    `weight_scale="auto"` takes each estimator's own: ste -> per-channel mean|W| (detached), reste -> the
    whole-tensor mean|W| with gradient (its code), biper -> a learned per-channel scale. `omega` is BiPer's
    frequency, `o_end` ReSTE's final power. `learnable_shift` trains a per-channel threshold before the sign.
    """

    kind: str = "binary"
    weight_bits: int = 1
    activation_bits: int = 1
    estimator: str = "ste"
    weight_scale: str = "auto"
    omega: float = 20.0
    o_end: float = 3.0
    learnable_shift: bool = False

    def __post_init__(self) -> None:
        _check_bits(self, "weight_bits", (1,))
        _check_bits(self, "activation_bits", (1, FLOAT_BITS))
        if self.estimator not in ESTIMATORS:
            raise RecipeError(f"unknown estimator {self.estimator!r}{closest(self.estimator, ESTIMATORS)}; "
                              f"valid estimators: {', '.join(ESTIMATORS)}")
        if self.weight_scale not in WEIGHT_SCALES:
            raise RecipeError(f"binary: weight_scale must be one of {', '.join(WEIGHT_SCALES)}, "
                              f"got {self.weight_scale!r}")
        if self.omega <= 0 or self.o_end < 1:
            raise RecipeError(f"binary: omega must be > 0 and o_end >= 1, got {self.omega} and {self.o_end}")


@dataclass(frozen=True, kw_only=True)
class TernaryConfig(LayerConfig):
    """TWN ternary weights (threshold 0.7·mean|W| per channel) with 3-level elastic (2), LSQ (8) or float inputs."""

    kind: str = "ternary"
    weight_bits: int = 2
    activation_bits: int = 2

    def __post_init__(self) -> None:
        _check_bits(self, "weight_bits", (2,))
        _check_bits(self, "activation_bits", (2, 8, FLOAT_BITS))


NUPES_MODES = ("data-driven", "data-free")
EXPONENT_SCOPES = ("layer", "network")
NUPES_MAX_SAMPLES = 1024  # NUPES reconstructs block outputs on at most this many calibration samples


@dataclass(frozen=True, kw_only=True)
class NupesConfig(LayerConfig):
    """NUPES / PowerQuant: b-bit power-exponent weight codes (2-8 bits) read through an int8 table, uniform
    8-bit activations as int8 PTQ (see `edgebin.quant.nupes`). `activation_bits` below 8 and/or
    `power_activations` give the layer's input a b-bit uniform or power grid instead (`edgebin.quant.power_act`).

    `mode="data-driven"` (NUPES) learns codes and exponents by block-wise output reconstruction for `iterations`
    Adam steps per block; `"data-free"` (PowerQuant) only searches the exponent on the weights. `exponent_scope`
    is the search's: one exponent per `layer`, or one for the whole `network` (PowerQuant's setting); the
    data-driven mode starts from it and then learns one exponent per layer. Mode, scope and iterations are read
    from the recipe's default config; an override changes a layer's bits only.
    """

    kind: str = "nupes"
    weight_bits: int = 4
    activation_bits: int = 8
    mode: str = "data-driven"
    exponent_scope: str = "layer"
    iterations: int = 400
    power_activations: bool = False

    def __post_init__(self) -> None:
        _check_bits(self, "weight_bits", _MULTI_BIT)
        _check_bits(self, "activation_bits", _MULTI_BIT)
        if not isinstance(self.power_activations, bool):
            raise RecipeError(f"nupes: power_activations must be true or false, got {self.power_activations!r}")
        if self.mode not in NUPES_MODES:
            raise RecipeError(f"nupes: mode must be one of {', '.join(NUPES_MODES)}, got {self.mode!r}"
                              f"{closest(str(self.mode), NUPES_MODES)}")
        if self.exponent_scope not in EXPONENT_SCOPES:
            raise RecipeError(f"nupes: exponent_scope must be one of {', '.join(EXPONENT_SCOPES)}, got "
                              f"{self.exponent_scope!r}")
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations < 0:
            raise RecipeError(f"nupes: iterations must be an integer >= 0, got {self.iterations!r}")


@dataclass(frozen=True, kw_only=True)
class CalibrationConfig:
    """How activation ranges are found: `minmax`, or `percentile` (clips the outer 100 - p percent)."""

    method: str = "minmax"
    percentile: float = 99.99
    samples: int = 512

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS:
            raise unknown_name("calibration method", self.method, list(CALIBRATION_METHODS))
        if self.samples < 1:
            raise RecipeError(f"calibration needs at least 1 sample, got {self.samples}")
        if not 50.0 < self.percentile <= 100.0:
            raise RecipeError(f"percentile must be in (50, 100], got {self.percentile}")


_CONFIGS: dict[str, type[LayerConfig]] = {
    "int8": Int8Config,
    "nupes": NupesConfig,
    "float": FloatConfig,
    "statsq": StatsQConfig,
    "lsq": LsqConfig,
    "tbt": TbtConfig,
    "binary": BinaryConfig,
    "ternary": TernaryConfig,
}


@dataclass(frozen=True)
class Recipe:
    """A method, its default layer config, per-layer overrides and the calibration settings.

    `first_last_bits` applies to QAT methods only: the first and last quantizable layers get LSQ at that many
    bits (None: they follow the default like every other layer). An override that matches them wins.
    """

    method: str = "int8"
    default: LayerConfig = field(default_factory=Int8Config)
    overrides: dict[str, LayerConfig] = field(default_factory=dict)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    first_last_bits: int | None = 8

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise unknown_name("method", self.method, list(METHODS))
        if self.method != "int8" and self.default.kind != self.method:
            raise RecipeError(f"method {self.method!r} needs a {_CONFIGS[self.method].__name__} default, got "
                              f"{type(self.default).__name__}; try Recipe.for_method({self.method!r})")
        if self.first_last_bits is not None and self.first_last_bits not in _MULTI_BIT:
            raise RecipeError(f"first_last_bits must be None or in 2..8, got {self.first_last_bits!r}")
        stray = [k for k, v in self.overrides.items() if isinstance(v, NupesConfig) and self.method != "nupes"]
        if stray:
            raise RecipeError(f"overrides {', '.join(stray)} are nupes layers, which only method 'nupes' fits; "
                              f"set \"method\": \"nupes\" or give them another kind")
        if self.method == "nupes" and self.calibration.samples > NUPES_MAX_SAMPLES:
            raise RecipeError(f"nupes reconstructs on at most {NUPES_MAX_SAMPLES} calibration samples, got "
                              f"{self.calibration.samples}; pass --calibration-samples {NUPES_MAX_SAMPLES}")

    @classmethod
    def for_method(cls, method: str, *, weight_bits: int | None = None, activation_bits: int | None = None,
                   estimator: str | None = None, **fields: Any) -> Recipe:
        """The recipe that CLI flags describe (`--method`, `--bits`, `--act-bits`, `--estimator`).

        Recipe.for_method("statsq", weight_bits=2, activation_bits=2)
        Recipe.for_method("binary", estimator="reste", first_last_bits=None)
        Recipe.for_method("nupes", weight_bits=3)    # calibrates on 1,024 samples unless `calibration` is given
        Other keyword arguments (`overrides`, `calibration`, `first_last_bits`) go to the Recipe.
        """
        if method not in METHODS:
            raise unknown_name("method", method, list(METHODS))
        if estimator is not None and method != "binary":
            raise RecipeError(f"--estimator applies to --method binary only, not {method!r}")
        layer: dict[str, Any] = {}
        if weight_bits is not None:
            layer["weight_bits"] = weight_bits
        if activation_bits is not None:
            layer["activation_bits"] = activation_bits
        if estimator is not None:
            layer["estimator"] = estimator
        if method == "nupes":  # PTQ: first and last layers follow the method (first_last_bits is for QAT)
            fields.setdefault("calibration", CalibrationConfig(samples=NUPES_MAX_SAMPLES))
            fields.setdefault("first_last_bits", None)
        return cls(method=method, default=_CONFIGS[method](**layer), **fields)

    def config_for(self, layer: str) -> LayerConfig:
        override = self.override_for(layer)
        return self.default if override is None else override

    def override_for(self, layer: str) -> LayerConfig | None:
        """The config of the first override pattern that matches `layer`, or None."""
        for pattern, config in self.overrides.items():
            if fnmatch.fnmatchcase(layer, pattern):
                return config
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "default": asdict(self.default),
            "overrides": {k: asdict(v) for k, v in self.overrides.items()},
            "calibration": asdict(self.calibration),
            "first_last_bits": self.first_last_bits,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        try:
            return cls(
                method=data.get("method", "int8"),
                default=_layer_config(data.get("default", {"kind": data.get("method", "int8")})),
                overrides={k: _layer_config(v) for k, v in data.get("overrides", {}).items()},
                calibration=CalibrationConfig(**data.get("calibration", {})),
                first_last_bits=data.get("first_last_bits", 8),
            )
        except TypeError as err:
            raise RecipeError(f"malformed recipe: {err}") from None

    @classmethod
    def from_file(cls, path: Path) -> Recipe:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise RecipeError(f"no such recipe file: {path}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RecipeError(f"recipe file {path} is not valid JSON: {err}") from None
        if not isinstance(data, dict):
            raise RecipeError(f"recipe file {path} must hold a JSON object")
        return cls.from_dict(data)


def _layer_config(data: dict[str, Any]) -> LayerConfig:
    kind = data.get("kind", "int8")
    if kind not in _CONFIGS:
        raise unknown_name("layer kind", kind, list(_CONFIGS))
    try:
        return _CONFIGS[kind](**data)
    except TypeError as err:
        raise RecipeError(f"malformed layer config {data}: {err}") from None
