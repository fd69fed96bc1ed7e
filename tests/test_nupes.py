"""NUPES / PowerQuant: the power operator's algebra (methods.md §3(e)), the deployed int8 table, the block-wise
fit, the ONNX form that onnxruntime runs, the recipe and the CLI."""

import copy
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgebin.capture import capture_graph
from edgebin.cli import main
from edgebin.errors import RecipeError, UsageError
from edgebin.export import export_onnx
from edgebin.export.lut import LUT_KEY, lut_layers, rewrite_lut_onnx
from edgebin.loading import LoadedModel
from edgebin.pipeline import make_recipe
from edgebin.quant import Recipe, calibrate, freeze, quantize_graph
from edgebin.quant.modules import QuantConv2d
from edgebin.quant.nupes import (
    _LearnedWeight,
    find_blocks,
    level_table,
    lut_codes,
    make_lut_weight,
    power,
    power_codes,
    power_product,
    power_quantize,
    quantize_nupes,
    search_exponent,
    set_lut_weight,
    weights_bytes,
)
from edgebin.quant.recipe import CalibrationConfig, NupesConfig
from edgebin.quant.uniform import quantize_weight, symmetric_weight_scales

SHAPE = (1, 1, 28, 28)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gaussian(shape=(16, 64), seed=0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_power_is_a_multiplicative_automorphism_with_inverse_f_one_over_a():
    x, y = _gaussian((1000,), 1, torch.float64), _gaussian((1000,), 2, torch.float64)
    for a in (0.3, 0.5, 0.77, 1.0, 1.6):
        torch.testing.assert_close(power(x * y, a), power(x, a) * power(y, a), rtol=1e-6, atol=0)
        torch.testing.assert_close(power(power(x, a), 1 / a), x, rtol=1e-6, atol=0)
    assert power(torch.tensor([0.0, -0.0]), 0.5).tolist() == [0.0, 0.0]  # sign(0) = 0


def test_exponent_one_is_uniform_symmetric_quantization():
    w = _gaussian()
    for bits in (2, 3, 4, 8):
        n = 2 ** (bits - 1) - 1
        s = w.abs().amax(dim=1)
        reference = quantize_weight(w, s / n).float()  # int8 PTQ's quantizer with step s / N (|codes| <= N)
        assert torch.equal(power_codes(w, 1.0, bits), reference)  # codes bit for bit
        torch.testing.assert_close(power_quantize(w, 1.0, bits), reference * (s / n)[:, None], rtol=1e-6, atol=0)


@pytest.mark.parametrize("a", [0.4, 0.7, 1.0])
@pytest.mark.parametrize("bits", [3, 4, 8])
def test_quantizing_twice_changes_nothing(a, bits):
    w = _gaussian()
    w_hat = power_quantize(w, a, bits)
    assert torch.equal(power_codes(w_hat, a, bits), power_codes(w, a, bits))
    torch.testing.assert_close(w_hat.abs().amax(dim=1), w.abs().amax(dim=1))  # s is preserved


def test_levels_are_few_monotone_and_denser_near_zero():
    w = _gaussian((4, 4096))
    for bits in (3, 4):
        n = 2 ** (bits - 1) - 1
        w_hat = power_quantize(w, 0.6, bits)
        for row, s in zip(w_hat, w.abs().amax(dim=1), strict=True):
            levels = torch.unique(row)  # sorted
            assert len(levels) <= 2 * n + 1
            grid = s * power(torch.arange(-n, n + 1) / n, 1 / 0.6)
            assert torch.all(grid[1:] > grid[:-1])
            assert torch.isclose(levels[:, None], grid[None, :], rtol=1e-6, atol=0).any(dim=1).all()
            assert grid[n + 1] - grid[n] < grid[2 * n] - grid[2 * n - 1]  # 0 -> first level < last step


def _mse(w: torch.Tensor, a: float, bits: int) -> float:
    return float(torch.mean((w - power_quantize(w, a, bits)) ** 2))


@pytest.mark.parametrize("bits", [3, 4])
def test_gaussian_weights_have_an_interior_optimal_exponent_that_the_search_finds(bits):
    w = _gaussian((32, 512), seed=bits)
    grid = np.linspace(0.3, 1.0, 71)
    curve = [_mse(w, a, bits) for a in grid]
    best = int(np.argmin(curve))
    assert 0 < best < len(grid) - 1 and curve[best] < 0.9 * curve[-1]  # interior, clearly below a = 1
    found = search_exponent(lambda a: _mse(w, a, bits))
    assert found < 1 and _mse(w, found, bits) <= 1.001 * min(curve)


def test_products_of_codes_are_powers_of_integer_products():
    bits, a, n = 4, 0.6, 7
    qw, qx = torch.arange(-n, n + 1, dtype=torch.float64), torch.arange(-n, n + 1, dtype=torch.float64).flip(0)
    sw, sx = 0.37, 2.5
    w_hat, x_hat = sw * power(qw / n, 1 / a), sx * power(qx / n, 1 / a)
    torch.testing.assert_close(power_product(qw, qx, sw, sx, a, bits), w_hat * x_hat, rtol=1e-6, atol=1e-15)


def test_level_table_by_hand():
    # a = 0.5, b = 4: levels[c] = round(127 * sign(k) * (|k| / 7)^2), k = c - 7
    assert level_table(0.5, 4).tolist() == [-127, -93, -65, -41, -23, -10, -3, 0, 3, 10, 23, 41, 65, 93, 127]
    table = level_table(0.8, 3)
    assert table.dtype == torch.int8 and len(table) == 7 and table[3] == 0 and table[0] == -127 and table[6] == 127
    assert torch.all(level_table(0.3, 8)[1:] >= level_table(0.3, 8)[:-1])


def test_exponent_one_at_8_bits_is_int8_ptq_bit_for_bit(tiny_resnet):
    w = _gaussian((16, 9, 3, 3))
    scale = symmetric_weight_scales(w)
    assert torch.equal(lut_codes(w, scale, 1.0, 8).int() - 127, quantize_weight(w, scale).int())
    gm = _frozen(tiny_resnet, Recipe())
    for module in [m for m in gm.modules() if isinstance(m, QuantConv2d)]:
        int8_codes = module.weight_codes.clone()
        set_lut_weight(module, make_lut_weight(module, 1.0, 8))
        assert torch.equal(module.weight_codes, int8_codes)


def test_all_zero_channels_quantize_to_zero():
    w = _gaussian((3, 8))
    w[1] = 0
    assert torch.equal(power_quantize(w, 0.5, 4)[1], torch.zeros(8))
    assert torch.isfinite(power_quantize(w, 0.5, 4)).all()
    codes = lut_codes(w, symmetric_weight_scales(w), 0.5, 4)
    assert codes[1].tolist() == [7] * 8  # code N is the level 0


def test_exponent_gradient_is_finite_at_zero():
    a = torch.tensor(0.6, requires_grad=True)
    power(torch.tensor([0.0, 0.5, -0.25]), 1 / a).sum().backward()
    assert torch.isfinite(a.grad)
    layer = QuantConv2d(torch.zeros(4, 2, 3, 3), None, (1, 1), (1, 1), (1, 1), 1)
    layer.weight_scale.fill_(0.01)
    learned = _LearnedWeight(layer, make_lut_weight(layer, 0.6, 4))
    learned().pow(2).add(learned()).sum().backward()
    assert torch.isfinite(learned.theta.grad) and torch.isfinite(learned.z.grad).all()
    assert (learned.z.grad != 0).all()  # the straight-through slope does not vanish at code 0


def _capture(model):
    return capture_graph(LoadedModel(module=model, input_shape=SHAPE, source=Path("tiny.pt"), format="state-dict"))


def _calibration(n=64, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *SHAPE[1:]), dtype=np.float32)


def _frozen(model, recipe):
    gm = _capture(model)
    quantize_graph(gm, recipe)
    calibrate(gm, _calibration())
    freeze(gm)
    return gm


def _nupes(**fields) -> Recipe:
    return Recipe(method="nupes", default=NupesConfig(**fields), calibration=CalibrationConfig(samples=64))


def test_blocks_end_where_one_activation_is_live(tiny_resnet):
    gm = _frozen(tiny_resnet, _nupes())
    blocks = find_blocks(gm, {"q_stem", "q_c1", "q_c2", "q_fc"})
    assert [b.layers for b in blocks] == [("q_stem",), ("q_c1", "q_c2"), ("q_fc",)]  # the residual block is one
    assert blocks[1].start is blocks[0].nodes[-1] and blocks[2].start is blocks[1].nodes[-1]


def test_transformer_blocks_are_its_sub_blocks_and_run_at_any_batch():
    from edgebin.zoo import create

    torch.manual_seed(0)
    recipe = _nupes(iterations=2)
    gm = _frozen(create("tiny_vit", depth=2).eval(), recipe)
    blocks = find_blocks(gm, {n.target for n in gm.graph.nodes if n.op == "call_module" and n.target.startswith("q_")})
    # patch embedding, then attention and MLP of each block (the residual stream between them), then the head;
    # the batch size that the attention reshapes read is not an activation, so it does not prevent the cuts
    assert [len(b.layers) for b in blocks] == [1, 4, 2, 4, 2, 1]
    assert blocks[1].layers == ("q_blocks_0_attn_q", "q_blocks_0_attn_k", "q_blocks_0_attn_v", "q_blocks_0_attn_proj")
    result = quantize_nupes(gm, recipe, _calibration(40))  # 40 = one batch of 32 and a padded one of 8
    assert len(result.blocks) == 6 and all(b.mse_after <= b.mse_before for b in result.blocks)


def test_data_driven_fit_lowers_block_reconstruction_error(tiny_resnet):
    gm = _frozen(tiny_resnet, _nupes(weight_bits=3, iterations=40))
    result = quantize_nupes(gm, _nupes(weight_bits=3, iterations=40), _calibration())
    assert len(result.blocks) == 3
    assert all(b.mse_after <= b.mse_before for b in result.blocks)
    assert sum(b.mse_after for b in result.blocks) < 0.9 * sum(b.mse_before for b in result.blocks)
    assert all(0.25 < lut.exponent <= 1 and lut.bits == 3 for lut in result.luts.values())


def test_onnx_reads_weights_through_the_table_and_onnxruntime_agrees(tiny_resnet, tmp_path):
    recipe = _nupes(weight_bits=4, iterations=10)
    gm = _frozen(tiny_resnet, recipe)
    quantize_nupes(gm, recipe, _calibration())
    path = tmp_path / "model.onnx"
    export_onnx(gm, SHAPE, path, layers=[{"layer": "stem", "module": "q_stem"}])
    rewrite_lut_onnx(path, lut_layers(gm))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    for module in ("q_stem", "q_c1", "q_c2", "q_fc"):
        dq = next(n for n in model.graph.node if n.name == f"/{module}/DequantizeLinear")
        gather = producer[dq.input[0]]
        cast = producer[gather.input[1]]
        assert (gather.op_type, cast.op_type) == ("Gather", "Cast")
        codes, levels = inits[cast.input[0]], inits[gather.input[0]]
        assert codes.dtype == np.uint8 and codes.max() <= 14 and levels.dtype == np.int8 and levels.shape == (15,)
        assert inits[dq.input[2]].dtype == np.int8 and not inits[dq.input[2]].any()
    meta = {p.key: p.value for p in model.metadata_props}
    luts = json.loads(meta[LUT_KEY])
    assert [e["layer"] for e in luts] == ["stem", "c1", "c2", "fc"] and all(len(e["levels"]) == 15 for e in luts)
    assert json.loads(meta["edgebin.layers"])[0]["onnx_nodes"][:2] == ["/q_stem/LutCast", "/q_stem/LutGather"]
    x = _calibration(32, seed=1)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x[:1]})[0]
    with torch.no_grad():
        want = gm(torch.from_numpy(x[:1])).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert got.argmax() == want.argmax()


def test_recipe_round_trips_and_rejects_bad_values():
    recipe = Recipe.for_method("nupes", weight_bits=3)
    assert recipe.default == NupesConfig(weight_bits=3) and recipe.calibration.samples == 1024
    assert recipe.first_last_bits is None  # the first and last layers are NUPES layers too
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    free = Recipe(method="nupes", default=NupesConfig(mode="data-free", exponent_scope="network"))
    assert Recipe.from_dict(free.to_dict()) == free
    for bad in ({"weight_bits": 9}, {"weight_bits": 1}, {"activation_bits": 1}, {"mode": "data-fre"},
                {"exponent_scope": "channel"}, {"iterations": -1}, {"power_activations": "yes"}):
        with pytest.raises(RecipeError, match="nupes"):
            NupesConfig(**bad)
    with pytest.raises(RecipeError, match="1024"):
        Recipe.for_method("nupes", calibration=CalibrationConfig(samples=2000))
    with pytest.raises(RecipeError, match="NupesConfig"):
        Recipe(method="nupes")
    with pytest.raises(RecipeError, match="stem.*only method 'nupes'"):
        Recipe(overrides={"stem": NupesConfig()})


def test_cli_flags_make_the_nupes_recipe():
    recipe = make_recipe("nupes", bits=3, data_free=True)
    assert recipe.default == NupesConfig(weight_bits=3, mode="data-free") and recipe.calibration.samples == 1024
    assert make_recipe("nupes", calibration_samples=256, iterations=50).default.iterations == 50
    assert make_recipe("int8").calibration.samples == 512
    assert make_recipe("nupes", act_bits=4, power_activations=True).default == NupesConfig(activation_bits=4,
                                                                                           power_activations=True)
    for method, flags in (("nupes", {"act_bits": 1}), ("nupes", {"estimator": "ste"}), ("int8", {"data_free": True}),
                          ("statsq", {"iterations": 10}), ("int8", {"power_activations": True})):
        with pytest.raises(UsageError, match="nupes"):
            make_recipe(method, **flags)


def export_tiny_with_cli(tmp_path, capsys, *flags: str) -> Path:
    """`edgebin export` of TinyResNet (random, saved to tmp_path) on digits 8x8 with NUPES `flags`: the out dir."""
    from conftest import TinyResNet, randomize_batch_norms

    torch.manual_seed(0)
    torch.save(randomize_batch_norms(TinyResNet()).state_dict(), tmp_path / "tiny.pt")
    out = tmp_path / "out"
    arch = f"{Path(__file__).parent}/conftest.py:TinyResNet"
    args = ["export", tmp_path / "tiny.pt", "--data", "digits", "--arch", arch, "--input-shape", "1x1x8x8",
            "--method", "nupes", *flags, "--calibration-samples", "128", "-o", out]
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
        raise SystemExit(0)  # main returns on success when given argv
    assert done.value.code == 0, capsys.readouterr().err
    return out


def report_of(out: Path, run_info: dict, x: np.ndarray):
    """The report `compress` would assemble from an export folder, with placeholder logits for `x`."""
    from edgebin import targets
    from edgebin.pipeline import Timings, _assemble_report, _Evaluation

    logits = np.eye(len(x), 10, dtype=np.float32)
    ev = _Evaluation("digits", x, np.arange(len(x)), {"onnxruntime-fp32": logits, "onnxruntime": logits})
    sections = {"compiled": logits, "footprint": {}, "kernels": {}, "kernels_detail": [], "ops": None, "library": ""}
    return _assemble_report(out, run_info, targets.load("x86"), ev, sections, None, Timings(), "")


def test_cli_exports_nupes_weights(tmp_path, capsys):
    out = export_tiny_with_cli(tmp_path, capsys, "--bits", "4", "--iterations", "20")
    run_info = json.loads((out / "recipe.json").read_text())
    assert run_info["recipe"]["default"] == {**asdict(NupesConfig()), "iterations": 20}
    layers = run_info["layers"]
    weighted = [r for r in layers if r["op"] in ("conv2d", "linear")]
    assert all(r["method"] == "nupes" and r["weight_bits"] == 4 and 0 < r["exponent"] <= 1 for r in weighted)
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert len(json.loads(meta[LUT_KEY])) == 4 and json.loads(meta["edgebin.recipe"])["method"] == "nupes"
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8), dtype=np.float32)
    ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"input": x[:1]})
    # the report's per-layer precision carries each layer's exponent from recipe.json
    from edgebin.report import render_markdown

    report = report_of(out, run_info, x)
    shown = {p.layer: p.exponent for p in report.method.per_layer if p.exponent is not None}
    assert shown == {r["layer"]: pytest.approx(r["exponent"]) for r in weighted} and len(shown) == 4
    assert "| Kind | Exponent |" in render_markdown(report)


def test_weights_bytes_count_b_bits_per_weight_and_the_table(tiny_resnet):
    recipe = _nupes(mode="data-free")
    gm = _frozen(tiny_resnet, recipe)
    quantize_nupes(gm, recipe)
    # weights 72 + 576 + 576 + 80 at 4 bits, four 15-entry tables, 34 int32 biases
    assert weights_bytes(gm) == (72 + 576 + 576 + 80) // 2 + 4 * 15 + 34 * 4


def test_quantize_nupes_leaves_int8_overrides_alone(tiny_resnet):
    from edgebin.quant import Int8Config

    recipe = Recipe(method="nupes", default=NupesConfig(mode="data-free"), overrides={"fc": Int8Config()})
    gm = _frozen(tiny_resnet, recipe)
    fc_codes = copy.deepcopy(gm.q_fc.weight_codes)
    result = quantize_nupes(gm, recipe)
    assert set(result.luts) == {"q_stem", "q_c1", "q_c2"} and torch.equal(gm.q_fc.weight_codes, fc_codes)


def test_quantize_nupes_says_what_is_missing(tiny_resnet):
    recipe = _nupes()
    unfrozen = _capture(tiny_resnet)
    quantize_graph(unfrozen, recipe)
    with pytest.raises(UsageError, match="freeze"):
        quantize_nupes(unfrozen, recipe, _calibration())
    gm = _frozen(tiny_resnet, recipe)
    with pytest.raises(UsageError, match="calibration inputs"):
        quantize_nupes(gm, recipe)
    with pytest.raises(RecipeError, match="nupes"):
        quantize_nupes(gm, Recipe(), _calibration())
