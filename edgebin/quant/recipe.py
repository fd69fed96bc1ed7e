"""Recipes: which method, bit widths and calibration apply to which layer, from CLI flags or a JSON file.

    recipe = Recipe(method="int8", default=Int8Config(), overrides={"fc": FloatConfig()})
    recipe.config_for("layer1.0.conv1")      # -> Int8Config(...)

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

from edgebin.errors import RecipeError, unknown_name
from edgebin.quant.observers import CALIBRATION_METHODS

METHODS = ("int8",)


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
    """W8A8: per-channel symmetric int8 weights, per-tensor asymmetric int8 activations."""

    kind: str = "int8"
    weight_bits: int = 8
    activation_bits: int = 8

    def __post_init__(self) -> None:
        if (self.weight_bits, self.activation_bits) != (8, 8):
            raise RecipeError(
                f"the int8 method quantizes weights and activations to 8 bits, got "
                f"W{self.weight_bits}A{self.activation_bits}"
            )


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


_CONFIGS: dict[str, type[LayerConfig]] = {"int8": Int8Config, "float": FloatConfig}


@dataclass(frozen=True)
class Recipe:
    """A method, its default layer config, per-layer overrides and the calibration settings."""

    method: str = "int8"
    default: LayerConfig = field(default_factory=Int8Config)
    overrides: dict[str, LayerConfig] = field(default_factory=dict)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise unknown_name("method", self.method, list(METHODS))

    def config_for(self, layer: str) -> LayerConfig:
        for pattern, config in self.overrides.items():
            if fnmatch.fnmatchcase(layer, pattern):
                return config
        return self.default

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "default": asdict(self.default),
            "overrides": {k: asdict(v) for k, v in self.overrides.items()},
            "calibration": asdict(self.calibration),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        try:
            return cls(
                method=data.get("method", "int8"),
                default=_layer_config(data.get("default", {"kind": "int8"})),
                overrides={k: _layer_config(v) for k, v in data.get("overrides", {}).items()},
                calibration=CalibrationConfig(**data.get("calibration", {})),
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
