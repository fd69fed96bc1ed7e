"""The INT8 maths against hand-computed values, and the observers and recipes around it."""

import pytest
import torch

from edgebin.errors import RecipeError, UsageError
from edgebin.quant import CalibrationConfig, FloatConfig, Int8Config, Recipe
from edgebin.quant.observers import MinMaxObserver, PercentileObserver, make_observer
from edgebin.quant.qdq import dequantize_codes, quantize_dequantize
from edgebin.quant.uniform import (
    affine_qparams,
    dequantize,
    fake_quantize,
    quantize,
    quantize_bias,
    quantize_weight,
    symmetric_weight_scales,
)


def test_quantize_rounds_half_to_even_and_saturates():
    x = torch.tensor([0.25, 0.75, -0.25, 1.25, 100.0, -100.0])
    q = quantize(x, torch.tensor(0.5), torch.tensor(0.0), -128, 127)
    # 0.5 -> 0, 1.5 -> 2, -0.5 -> -0, 2.5 -> 2 (ties to even, as ONNX QuantizeLinear); 200 -> 127; -200 -> -128
    assert q.tolist() == [0.0, 2.0, 0.0, 2.0, 127.0, -128.0]
    assert dequantize(q, torch.tensor(0.5), torch.tensor(0.0)).tolist() == [0.0, 1.0, 0.0, 1.0, 63.5, -64.0]


def test_affine_qparams_cover_range_and_make_zero_exact():
    scale, zp = affine_qparams(0.0, 2.55)  # ReLU output: [0, 2.55] -> 255 steps of 0.01, 0 at -128
    assert scale == pytest.approx(0.01)
    assert zp == -128
    scale, zp = affine_qparams(-1.0, 3.0)  # 4 / 255 per step; zero point round(-128 + 1 / (4/255)) = -64
    assert scale == pytest.approx(4 / 255)
    assert zp == -64
    scale, zp = affine_qparams(0.5, 1.0)  # range widened to contain 0
    assert scale == pytest.approx(1 / 255) and zp == -128
    assert affine_qparams(0.0, 0.0) == (1.0, 0)


def test_symmetric_weight_scales_and_codes_per_channel():
    w = torch.tensor([[1.27, -0.635], [0.0, 0.0], [-2.54, 1.0]])
    scales = symmetric_weight_scales(w)
    assert scales.tolist() == pytest.approx([0.01, 1.0, 0.02])  # max|w| / 127; an all-zero row gets 1
    codes = quantize_weight(w, scales)
    assert codes.dtype == torch.int8
    assert codes.tolist() == [[127, -64], [0, 0], [-127, 50]]  # -63.5 -> -64 (even); 1.0 / 0.02 = 50


def test_quantize_bias_uses_input_times_weight_scale():
    codes, scales = quantize_bias(torch.tensor([0.1, -0.3]), 0.05, torch.tensor([0.01, 0.02]))
    assert scales.tolist() == pytest.approx([0.0005, 0.001])
    assert codes.dtype == torch.int32 and codes.tolist() == [200, -300]


def test_fake_quantize_gradient_is_straight_through_inside_the_range():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
    y = fake_quantize(x, torch.tensor(0.01), torch.tensor(0.0))  # representable range [-1.28, 1.27]
    y.sum().backward()
    assert y.tolist() == pytest.approx([-1.28, -0.5, 0.0, 0.5, 1.27])
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_qdq_functions_match_the_formulas():
    x = torch.tensor([0.3, -0.3, 20.0])
    y = quantize_dequantize(x, torch.tensor(0.1), torch.tensor(3, dtype=torch.int8))
    assert y.tolist() == pytest.approx([0.3, -0.3, 12.4])  # 20 / 0.1 + 3 = 203 -> 127 -> (127 - 3) * 0.1
    codes = torch.tensor([[2, -4], [1, 0]], dtype=torch.int8)
    w = dequantize_codes(codes, torch.tensor([0.5, 0.25]), torch.zeros(2, dtype=torch.int8), 0)
    assert w.tolist() == [[1.0, -2.0], [0.25, 0.0]]


def test_observers():
    mm = MinMaxObserver()
    assert mm.range() == (0.0, 0.0)
    mm.update(torch.tensor([1.0, -2.0]))
    mm.update(torch.tensor([3.0]))
    assert mm.range() == (-2.0, 3.0)
    pct = PercentileObserver(percentile=99.0)
    pct.update(torch.arange(0, 1001, dtype=torch.float32))  # 0..1000: the 1st and 99th percentiles are 10, 990
    lo, hi = pct.range()
    assert lo == pytest.approx(10.0) and hi == pytest.approx(990.0)
    with pytest.raises(UsageError, match="calibration method 'median'"):
        make_observer("median")


def test_recipe_overrides_round_trip_and_errors(tmp_path):
    recipe = Recipe(overrides={"stem*": FloatConfig()}, calibration=CalibrationConfig(method="percentile"))
    assert isinstance(recipe.config_for("stem"), FloatConfig)
    assert isinstance(recipe.config_for("layer1.0.conv1"), Int8Config)
    path = tmp_path / "recipe.json"
    path.write_text(__import__("json").dumps(recipe.to_dict()))
    assert Recipe.from_file(path) == recipe
    with pytest.raises(UsageError, match="unknown method 'int4'.*valid methods: int8"):
        Recipe(method="int4")
    with pytest.raises(RecipeError, match="W4A8"):
        Int8Config(weight_bits=4)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(RecipeError, match="not valid JSON"):
        Recipe.from_file(tmp_path / "bad.json")
    with pytest.raises(RecipeError, match="no such recipe file"):
        Recipe.from_file(tmp_path / "missing.json")
