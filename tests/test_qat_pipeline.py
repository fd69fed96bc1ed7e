"""QAT in the pipeline: the training stages per method, QAT checkpoints, the CLI flags and `edgebin compress
--method binary --estimator biper` end to end on the host (trains, exports, compiles, validates, reports)."""

import json
from pathlib import Path

import pytest
import torch

from edgebin.cli import main
from edgebin.errors import RecipeError, UsageError
from edgebin.loading import load_model, save_checkpoint
from edgebin.pipeline import make_recipe
from edgebin.quant import Recipe, qat
from edgebin.report import read_report
from edgebin.train import TrainConfig
from edgebin.train_qat import BIPER_STAGE2_LR, BIPER_STAGE2_WEIGHT_DECAY, BIPER_TAU, stages
from edgebin.zoo import create


def test_biper_trains_two_stages_split_two_to_one_with_the_official_ratios(tmp_path):
    config = TrainConfig(epochs=9, lr=2e-3, weight_decay=0.05, warmup_epochs=1.0, checkpoint=tmp_path / "s.pt")
    one, two = stages(Recipe.for_method("binary", estimator="biper"), config)
    assert (one.name, one.biper_stage, one.config.epochs, one.tau) == ("biper-stage1", 1, 6, 0.037)
    assert (two.name, two.biper_stage, two.config.epochs, two.tau) == ("biper-stage2", 2, 3, 0.0468)
    assert BIPER_TAU == (0.037, 0.0468)
    assert two.config.lr == pytest.approx(2e-3 * 0.0037 / 0.021) and BIPER_STAGE2_LR == pytest.approx(0.17619, 1e-4)
    assert two.config.weight_decay == pytest.approx(0.05 * 0.1) and BIPER_STAGE2_WEIGHT_DECAY == pytest.approx(0.1)
    assert two.config.warmup_epochs == 0.0 and one.config.warmup_epochs == 1.0
    assert one.config.checkpoint == tmp_path / "s.stage1.pt" and two.config.checkpoint == tmp_path / "s.stage2.pt"
    with pytest.raises(UsageError, match="at least 2 epochs"):
        stages(Recipe.for_method("binary", estimator="biper"), TrainConfig(epochs=1, warmup_epochs=0))


def test_other_methods_train_in_one_stage_and_cga_needs_statsq():
    (only,) = stages(Recipe.for_method("statsq"), TrainConfig(epochs=3, cga_epochs=1))
    assert (only.name, only.biper_stage, only.tau, only.config.cga_epochs) == ("qat", None, 0.0, 1)
    for method in ("lsq", "tbt", "ternary"):
        assert len(stages(Recipe.for_method(method), TrainConfig(epochs=2))) == 1
    assert [s.name for s in stages(Recipe.for_method("binary", estimator="reste"), TrainConfig(epochs=2))] == ["qat"]
    with pytest.raises(UsageError, match="StatsQ weights only"):
        stages(Recipe.for_method("lsq"), TrainConfig(epochs=2, cga_epochs=1))


def test_cli_flags_make_the_recipe_and_int8_refuses_low_bit_flags():
    recipe = make_recipe("statsq", bits=3, act_bits=4)
    assert (recipe.default.weight_bits, recipe.default.activation_bits, recipe.first_last_bits) == (3, 4, 8)
    assert make_recipe("binary", estimator="reste", first_last_bits=None).first_last_bits is None
    with pytest.raises(UsageError, match="W8A8"):
        make_recipe("int8", bits=2)
    with pytest.raises(RecipeError, match="binary only"):
        make_recipe("statsq", estimator="biper")


def test_qat_checkpoint_reloads_with_its_quantizers(tmp_path):
    torch.manual_seed(0)
    model = create("resnet8", input_size=8)
    recipe = Recipe.for_method("binary", estimator="biper")
    qat.prepare(model, recipe, example_input=torch.zeros(1, 1, 8, 8))
    x = torch.randn(16, 1, 8, 8)
    qat.init_quantizers(model, x)
    qat.set_biper_stage(model, 2)
    model.eval()
    path = tmp_path / "qat.pt"
    save_checkpoint(path, model, arch="resnet8", arch_kwargs={"input_size": 8}, input_shape=(1, 1, 8, 8),
                    qat_method="binary", qat_recipe=recipe.to_dict())
    loaded = load_model(path)
    assert any(isinstance(m, qat.QATConv2d) for m in loaded.module.modules())
    with torch.no_grad():
        assert torch.equal(loaded.module(x), model(x))  # stage 2 and the activation scales come back too
    with pytest.raises(UsageError, match="already QAT-trained"):
        from edgebin.pipeline_qat import _check_trainable

        _check_trainable(loaded, path)


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory) -> Path:
    """`edgebin compress --method binary --estimator biper` on digits (8×8) for a ResNet-8, two epochs."""
    folder = tmp_path_factory.mktemp("qat")
    torch.manual_seed(0)
    save_checkpoint(folder / "fp32.pt", create("resnet8", input_size=8).eval(), arch="resnet8",
                    arch_kwargs={"input_size": 8}, input_shape=(1, 1, 8, 8))
    out = folder / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", str(folder / "fp32.pt"), "--method", "binary", "--estimator", "biper", "--target", "x86",
              "--data", "digits", "--epochs", "2", "--batch-size", "64", "--lr", "2e-3", "--eval-samples", "200",
              "--repeat", "5", "-o", str(out)])
        raise SystemExit(0)
    assert exit_info.value.code == 0
    return out


def test_compress_binary_biper_trains_exports_compiles_and_reports_each_stage(qat_run):
    report = read_report(qat_run)
    assert report.method.name == "binary" and report.method.estimator == "biper"
    assert (report.method.weight_bits, report.method.activation_bits) == (1, 1)
    t = report.training
    assert t.stages == ("biper-stage1", "biper-stage2") and [e.stage for e in t.history] == list(t.stages)
    assert t.distill and t.eval_samples == 200 and all(e.eval_accuracy is not None for e in t.history)
    a = report.accuracy
    assert None not in (a.fp32, a.compressed, a.onnxruntime, a.compiled) and a.samples == 200
    assert a.onnxruntime == pytest.approx(a.compressed, abs=0.01)  # export keeps the fake-quant predictions
    assert report.agreement.top1 >= 0.95
    assert report.fallbacks, "binary layers compile in float until bit-packed kernels exist; the report must say so"
    assert report.timings_s.train is not None and report.timings_s.train > 0
    text = (qat_run / "report.md").read_text()
    assert "## Training" in text and "biper-stage2" in text and "estimator biper" in text
    run_info = json.loads((qat_run / "recipe.json").read_text())
    assert run_info["recipe"]["default"]["estimator"] == "biper" and len(run_info["training"]["history"]) == 2
    assert not list(qat_run.glob("train-state*.pt"))  # the training state goes once the export is written
    loaded = load_model(qat_run / "model_qat.pt")
    assert loaded.metadata["qat_method"] == "binary"
    signs = [m for m in loaded.module.modules() if isinstance(m, qat.BiPerSign)]
    assert signs and all(int(m.stage) == 2 for m in signs)


def test_a_qat_checkpoint_is_not_trained_twice(qat_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(qat_run / "model_qat.pt"), "--method", "binary", "--data", "digits", "-o",
              str(qat_run.parent / "again")])
    assert exit_info.value.code == UsageError.exit_code
    assert "already QAT-trained" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(qat_run / "model_qat.pt"), "--data", "digits", "-o", str(qat_run.parent / "again")])
    assert exit_info.value.code == UsageError.exit_code
    assert not (qat_run.parent / "again").exists()


def test_int8_flags_with_low_bits_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", str(tmp_path / "m.pt"), "--bits", "2", "-o", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "W8A8" in capsys.readouterr().err
