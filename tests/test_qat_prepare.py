"""QAT recipes, `prepare` on the zoo models, and what the trainer and exporter use around it."""

import json

import pytest
import torch
from torch import nn

from edgebin import zoo
from edgebin.errors import RecipeError, UsageError
from edgebin.quant import Recipe
from edgebin.quant.qat import (
    BinaryWeight,
    LsqActivation,
    LsqWeight,
    OscillationTracker,
    QATConv2d,
    QATLinear,
    QKRAttention,
    StatsQWeight,
    TbtWeight,
    cga_frozen_masks,
    export_infos,
    init_quantizers,
    make_recipe,
    on_phase,
    param_groups,
    prepare,
    set_biper_stage,
    summarize,
)
from edgebin.quant.recipe import (
    BinaryConfig,
    FloatConfig,
    Int8Config,
    LsqConfig,
    StatsQConfig,
    TbtConfig,
    TernaryConfig,
)

ALL_QAT = [
    StatsQConfig(weight_bits=3, activation_bits=4, qkr=True, activation_bias=True),
    LsqConfig(weight_bits=4, activation_bits=32),
    TbtConfig(weight_bits=1, activation_bits=1, shift=True, center=True),
    BinaryConfig(estimator="biper", omega=30.0, weight_scale="channel"),
    TernaryConfig(activation_bits=8),
]


@pytest.mark.parametrize("config", ALL_QAT, ids=lambda c: c.kind)
def test_qat_recipes_round_trip_through_json(config, tmp_path):
    recipe = Recipe(method=config.kind, default=config, overrides={"head": Int8Config(), "stem*": FloatConfig()},
                    first_last_bits=None)
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe.to_dict()))
    assert Recipe.from_file(path) == recipe


def test_recipe_for_method_reads_like_the_cli_flags():
    assert make_recipe("binary", bits=1, act_bits=32, estimator="biper") == Recipe(
        method="binary", default=BinaryConfig(activation_bits=32, estimator="biper"))
    assert Recipe.for_method("binary", estimator="reste").default == BinaryConfig(estimator="reste")
    assert Recipe.for_method("statsq", weight_bits=3, activation_bits=3).default == StatsQConfig(weight_bits=3,
                                                                                                  activation_bits=3)
    assert Recipe.for_method("int8") == Recipe()
    assert Recipe.from_dict({"method": "ternary"}).default == TernaryConfig()


def test_qat_recipe_errors_name_the_fix():
    with pytest.raises(RecipeError, match=r"needs a StatsQConfig default.*Recipe.for_method\('statsq'\)"):
        Recipe(method="statsq")
    with pytest.raises(RecipeError, match="weight_bits must be one of 2, 3, 4, 5, 6, 7, 8, got 1"):
        StatsQConfig(weight_bits=1)
    with pytest.raises(RecipeError, match="activation_bits must be one of 1, 32, got 2"):
        BinaryConfig(activation_bits=2)
    with pytest.raises(RecipeError, match="unknown estimator 'rest' \\(did you mean 'reste'\\?\\)"):
        BinaryConfig(estimator="rest")
    with pytest.raises(RecipeError, match="--estimator applies to --method binary only"):
        Recipe.for_method("lsq", estimator="ste")
    with pytest.raises(RecipeError, match="first_last_bits"):
        Recipe.for_method("lsq", first_last_bits=1)
    with pytest.raises(UsageError, match="unknown method 'binray'"):
        Recipe.for_method("binray")
    with pytest.raises(RecipeError, match="post-training quantization"):
        prepare(nn.Linear(2, 2), Recipe())


def _forward_backward(model: nn.Module, shape=(2, 1, 28, 28)) -> torch.Tensor:
    x = torch.randn(*shape)
    init_quantizers(model, x)
    model.train()
    y = model(x)
    y.sum().backward()
    return y


def test_prepare_resnet8_keeps_first_and_last_at_eight_bits():
    torch.manual_seed(0)
    model = prepare(zoo.create("resnet8"), Recipe.for_method("statsq"))
    stem, head = model.stem.conv, model.head
    for layer in (stem, head):
        assert isinstance(layer.weight_quantizer, LsqWeight) and layer.weight_quantizer.bits == 8
        assert isinstance(layer.input_quantizer, LsqActivation) and layer.input_quantizer.bits == 8
    assert isinstance(model.stack2.shortcut, QATConv2d)
    middle = model.stack1.conv1.weight_quantizer
    assert isinstance(middle, StatsQWeight) and middle.bits == 2
    records = {r.layer: r for r in summarize(model)}
    assert (records["stem.conv"].kind, records["stem.conv"].weight_bits) == ("lsq", 8)
    assert (records["stack3.conv2"].kind, records["stack3.conv2"].weight_bits) == ("statsq", 2)
    y = _forward_backward(model)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    assert not model.stack1.conv1.input_quantizer.is_signed  # post-ReLU input found unsigned


def test_prepare_tiny_vit_with_qkr_keeps_first_and_last_at_eight_bits():
    torch.manual_seed(0)
    recipe = Recipe(method="statsq", default=StatsQConfig(qkr=True))
    model = prepare(zoo.create("tiny_vit", depth=2), recipe)
    assert isinstance(model.blocks[0].attn, QKRAttention)
    assert model.patch_embed.weight_quantizer.bits == 8 and model.head.weight_quantizer.bits == 8
    assert isinstance(model.blocks[1].mlp[2].weight_quantizer, StatsQWeight)
    y = _forward_backward(model)
    assert y.shape == (2, 10) and torch.isfinite(y).all()
    assert not model.blocks[0].attn.attn_quantizer.is_signed  # softmax output


@pytest.mark.parametrize("recipe", [Recipe.for_method("binary", estimator=e) for e in ("ste", "reste", "biper")]
                         + [Recipe.for_method("ternary"), Recipe.for_method("tbt", weight_bits=1, activation_bits=1),
                            Recipe.for_method("lsq", weight_bits=3, activation_bits=3)],
                         ids=["ste", "reste", "biper", "ternary", "tbt", "lsq"])
def test_every_method_prepares_resnet8_and_runs(recipe):
    torch.manual_seed(0)
    model = prepare(zoo.create("resnet8"), recipe)
    y = _forward_backward(model)
    assert torch.isfinite(y).all()
    assert model.stem.conv.weight_quantizer.bits == 8 and model.head.weight_quantizer.bits == 8
    assert model.stack2.conv1.weight_quantizer.bits == recipe.default.weight_bits


def test_overrides_win_and_first_last_can_be_turned_off():
    model = prepare(zoo.create("resnet8"), Recipe.for_method("tbt", overrides={"head": FloatConfig()}))
    assert type(model.head) is nn.Linear
    assert isinstance(model.stem.conv.weight_quantizer, LsqWeight)
    model = prepare(zoo.create("resnet8"), Recipe.for_method("tbt", first_last_bits=None))
    assert isinstance(model.stem.conv.weight_quantizer, TbtWeight)
    assert isinstance(model.head.weight_quantizer, TbtWeight)
    model = prepare(zoo.create("resnet8"), Recipe.for_method("tbt", first_last_bits=4))
    assert model.head.weight_quantizer.bits == 4 and model.head.input_quantizer.bits == 4


class _HeadFirst(nn.Module):
    """Registers its last layer first: only the execution order finds first and last."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 2)
        self.body = nn.Linear(8, 8)
        self.stem = nn.Linear(4, 8)

    def forward(self, x):
        return self.head(torch.relu(self.body(torch.relu(self.stem(x)))))


def test_example_input_finds_first_and_last_by_execution_order():
    model = prepare(_HeadFirst(), Recipe.for_method("statsq"), example_input=torch.randn(1, 4))
    assert model.stem.weight_quantizer.bits == 8 and model.head.weight_quantizer.bits == 8
    assert isinstance(model.body.weight_quantizer, StatsQWeight)


def test_reloaded_quantizers_are_not_initialised_again():
    torch.manual_seed(0)
    recipe = Recipe(method="statsq", default=StatsQConfig(qkr=True, per_token=True))
    model = prepare(zoo.create("tiny_vit", depth=1), recipe)
    init_quantizers(model, torch.randn(4, 1, 28, 28))
    state = model.state_dict()
    fresh = prepare(zoo.create("tiny_vit", depth=1), recipe)
    fresh.load_state_dict(state)
    fresh.eval()
    x = torch.randn(2, 1, 28, 28) * 5  # another batch would give other steps if it re-initialised
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model.eval()(x))
    assert fresh.blocks[0].attn.t_quantizer.step.shape == (50,)  # per token: 49 patches + class token
    assert torch.equal(fresh.blocks[0].attn.t_quantizer.step, state["blocks.0.attn.t_quantizer.step"])


def test_oscillation_tracker_counts_flips_and_reversals():
    layer = nn.Linear(2, 1, bias=False)
    layer.weight.data = torch.tensor([[0.5, -0.5]])
    model = nn.Sequential(QATLinear.from_float(layer, TbtWeight(1)))
    tracker = OscillationTracker(model)
    for first in (-0.5, 0.5, 0.4):  # flip down, flip back up (a reversal), stay
        layer.weight.data[0, 0] = first
        tracker.update()
    assert tracker.totals() == {"flips": 2, "oscillations": 1, "weights": 2, "steps": 3}
    model = prepare(zoo.create("resnet8"), Recipe.for_method("statsq"))
    assert "head" in OscillationTracker(model).layers and "head" not in OscillationTracker(model, max_bits=4).layers


def test_param_groups_decay_only_latent_weights():
    model = prepare(zoo.create("resnet8"), Recipe.for_method("binary", estimator="biper"))
    init_quantizers(model, torch.randn(2, 1, 28, 28))
    decay, rest, quant = param_groups(model, weight_decay=1e-4, quantizer_lr=1e-3)
    assert decay["weight_decay"] == 1e-4 and rest["weight_decay"] == quant["weight_decay"] == 0.0
    assert any(p is model.stack1.conv1.weight for p in decay["params"])
    assert any(p is model.stack1.conv1.weight_quantizer.alpha for p in quant["params"]) and quant["lr"] == 1e-3
    assert any(p is model.stack1.bn1.weight for p in rest["params"])
    assert sum(len(g["params"]) for g in (decay, rest, quant)) == len(list(model.parameters()))


def test_export_info_rebuilds_the_fake_quantized_weights():
    torch.manual_seed(0)
    for recipe in (Recipe.for_method("binary", estimator="ste"), Recipe.for_method("statsq", weight_bits=3),
                   Recipe.for_method("ternary"), Recipe.for_method("lsq", weight_bits=4, activation_bits=4)):
        model = prepare(zoo.create("resnet8"), recipe)
        init_quantizers(model, torch.randn(2, 1, 28, 28))
        for name, info in export_infos(model).items():
            layer = model.get_submodule(name)
            w_hat = layer.quantized_weight().detach()
            rebuilt = info.weight.scale.view(-1, 1, 1, 1) * info.weight.codes.float() if w_hat.dim() == 4 \
                else info.weight.scale.view(-1, 1) * info.weight.codes.float()
            torch.testing.assert_close(rebuilt, w_hat, rtol=1e-5, atol=1e-6)
            assert info.weight.codes.min() >= info.weight.qmin and info.weight.codes.max() <= info.weight.qmax
    info = export_infos(model)["stack1.conv1"]
    assert info.weight.kind == "uniform" and info.activation.bits == 4 and not info.activation.signed


def test_binary_export_info_states_the_sign_convention():
    model = prepare(zoo.create("resnet8"), Recipe.for_method("binary", estimator="biper"))
    init_quantizers(model, torch.randn(2, 1, 28, 28))
    assert export_infos(model)["stack1.conv1"].weight.kind == "float"  # stage 1 weights are sin(ωW)
    assert set_biper_stage(model, 2) == 8  # 6 stack convs and 2 shortcuts
    info = export_infos(model)["stack1.conv1"]
    assert (info.weight.kind, info.weight.bits, info.weight.pm1, info.weight.sign_zero) == ("binary", 1, True, 1)
    assert set(info.weight.codes.unique().tolist()) <= {-1, 1} and info.weight.scale.shape == (16,)
    assert info.activation.pm1 and info.activation.shift.shape == (16, 1, 1)
    assert isinstance(model.stack1.conv1.weight_quantizer, BinaryWeight)


def test_trainer_hooks_name_frozen_parameters_and_switch_qkr_annealing():
    torch.manual_seed(0)
    model = prepare(zoo.create("tiny_vit", depth=1), Recipe(method="statsq", default=StatsQConfig(qkr=True)))
    masks = cga_frozen_masks(model)
    params = dict(model.named_parameters())
    assert set(masks) == {"blocks.0.attn.v.weight", "blocks.0.attn.proj.weight", "blocks.0.mlp.0.weight",
                          "blocks.0.mlp.2.weight"}  # StatsQ weights only: not patch_embed or head (LSQ 8)
    assert all(m.dtype == torch.bool and m.shape == params[n].shape for n, m in masks.items())
    assert 0.9 < float(torch.cat([m.flatten() for m in masks.values()]).float().mean()) < 1.0  # ~1% trainable
    qk = model.blocks[0].attn.qk_quantizer
    on_phase(model, "cga")
    assert qk.cga_boundary_range == 0.005
    on_phase(model, "qat")
    assert qk.cga_boundary_range is None
