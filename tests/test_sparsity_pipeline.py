"""WGSEF in the pipeline: `edgebin compress --sparsity 0.5 --groups filters --method int8 --target cortex-m4` prunes,
shrinks, quantizes, compiles and validates on QEMU, and the report says what was pruned; the flag errors exit 2."""

import json
from pathlib import Path

import pytest
import torch

from edgebin.cli import main
from edgebin.errors import UsageError
from edgebin.loading import load_model, save_checkpoint
from edgebin.pipeline import SPARSE_CHECKPOINT, make_sparsity
from edgebin.report import read_report
from edgebin.zoo import create


def run_cli(args, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().err


def test_flags_make_the_config_and_split_the_epochs():
    assert make_sparsity() is None and make_sparsity(groups=None, epochs=3) is None
    config = make_sparsity(0.5, epochs=6)
    assert (config.groups, config.sparsity, config.keep, config.epochs, config.finetune_epochs, config.lr) == \
        ("filters", 0.5, None, 3, 3, 1e-3)  # the defaults of SparsityConfig: 3 + 3 epochs at lr 1e-3
    config = make_sparsity(keep=4, groups="filter-shapes", epochs=1, lr=2e-3, train_samples=100, seed=3)
    assert (config.groups, config.keep, config.sparsity, config.epochs, config.finetune_epochs) == \
        ("shapes", 4, None, 1, 0)
    assert (config.lr, config.train_samples, config.seed) == (2e-3, 100, 3)
    assert (make_sparsity(0.25, epochs=3).epochs, make_sparsity(0.25, epochs=3).finetune_epochs) == (2, 1)


@pytest.mark.parametrize("flags, message", [
    (["--sparsity", "0.5", "--keep", "4"], "give one"),
    (["--sparsity", "1.0"], "must be in [0, 1)"),
    (["--sparsity", "50"], "use 0.5"),
    (["--sparsity", "-0.1"], "must be in [0, 1)"),
    (["--groups", "filters"], "add --sparsity FRACTION"),
    (["--sparsity", "0.5", "--groups", "rows"], "expected one of filters, channels, shapes, weights, layers"),
])
def test_bad_sparsity_flags_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    for command in ("compress", "export"):
        code, err = run_cli([command, tmp_path / "never-read.pt", "--data", "digits", *flags, "-o", out], capsys)
        assert code == UsageError.exit_code, err
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert lines[0].startswith("error:") and message in " ".join(lines) and "Traceback" not in err
    assert not out.exists()


def test_shared_training_flags_reach_both_stages_with_their_own_defaults(tmp_path, monkeypatch):
    from edgebin import pipeline

    seen = {}

    def fake_export(model, **kwargs):
        seen.update(kwargs)
        raise UsageError("stop here")

    monkeypatch.setattr(pipeline, "export", fake_export)
    args = ["export", tmp_path / "m.pt", "--method", "statsq", "--sparsity", "0.5", "--epochs", "5",
            "--train-samples", "300", "--seed", "2", "--no-distill", "-o", tmp_path / "out"]
    with pytest.raises(SystemExit):
        main([str(a) for a in args])
    training, sparsity = seen["training"], seen["sparsity"]
    assert (training.lr, sparsity.lr) == (5e-4, 1e-3)  # no --lr: each stage's default
    assert (training.epochs, sparsity.epochs, sparsity.finetune_epochs) == (5, 3, 2)
    assert (sparsity.train_samples, sparsity.seed, sparsity.distill) == (300, 2, False) == \
        (training.train_samples, training.seed, training.distill)
    with pytest.raises(SystemExit):
        main([str(a) for a in [*args, "--lr", "2e-3"]])
    assert seen["training"].lr == seen["sparsity"].lr == 2e-3


def test_help_explains_wgsef():
    from typer.testing import CliRunner

    from edgebin.cli import app

    text = " ".join(CliRunner().invoke(app, ["compress", "--help"], env={"COLUMNS": "200"}).output.split())
    for needle in ("--sparsity", "--keep", "--groups", "WGSEF", "physically removed", "zeroed in place",
                   "trains for --epochs"):
        assert needle in text, needle


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory) -> Path:
    """`edgebin compress --sparsity 0.5 --groups filters --method int8 --target cortex-m4` on digits (8×8) for an
    untrained ResNet-8: one epoch on 256 images, 40 images through QEMU."""
    folder = tmp_path_factory.mktemp("sparse")
    torch.manual_seed(0)
    save_checkpoint(folder / "fp32.pt", create("resnet8", input_size=8).eval(), arch="resnet8",
                    arch_kwargs={"input_size": 8}, input_shape=(1, 1, 8, 8))
    out = folder / "out"
    with pytest.raises(SystemExit) as exit_info:
        main(["compress", str(folder / "fp32.pt"), "--sparsity", "0.5", "--groups", "filters", "--method", "int8",
              "--target", "cortex-m4", "--data", "digits", "--epochs", "1", "--train-samples", "256",
              "--batch-size", "64", "--calibration-samples", "64", "--eval-samples", "40", "-o", str(out)])
        raise SystemExit(0)
    assert exit_info.value.code == 0
    return out


def test_compress_with_sparsity_prunes_shrinks_quantizes_and_runs_on_qemu(sparse_run):
    report = read_report(sparse_run)
    sp = report.sparsity
    assert (sp.groups, sp.selection, sp.sparsity, sp.keep, sp.shrunk) == ("filters", "wgsef", 0.5, None, True)
    assert (sp.epochs, sp.finetune_epochs, sp.train_samples, sp.eval_samples) == (1, 0, 256, 40)
    # ResNet-8 has six filter sets (16, 16, 32, 32, 64, 64 filters); half of each stays, exactly
    assert [(s.groups, s.kept, s.removed) for s in sp.sets] == [(n, n // 2, n // 2) for n in (16, 16, 32, 32, 64, 64)]
    assert sp.macs < sp.dense_macs / 3 and sp.parameters < sp.dense_parameters / 3
    assert report.emulator.macs == sp.macs  # the compiled bundle's own count: the filters are really gone
    assert report.model.parameters == sp.parameters and sp.checkpoint == SPARSE_CHECKPOINT
    assert report.accuracy.samples == 40 and report.accuracy.fp32 == pytest.approx(sp.accuracy, abs=1 / 40 + 1e-9)
    assert report.agreement.top1 >= 0.95 and report.timings_s.sparsify > 0
    assert len(sp.history) == 1 and sp.history[0].eval_accuracy is not None
    loaded = load_model(sparse_run / SPARSE_CHECKPOINT)
    assert loaded.module.stack3.conv1.out_channels == 32 and loaded.metadata["sparsity"]["groups"] == "filters"
    assert loaded.metadata["sparsity"]["lr"] == 1e-3  # no --lr: sparsity's own default, not QAT's
    run_info = json.loads((sparse_run / "recipe.json").read_text())
    assert run_info["sparsity"]["sets"][0]["kept"] == 8 and run_info["model"]["path"].endswith("fp32.pt")
    text = (sparse_run / "report.md").read_text()
    assert "## Structured sparsity" in text and "50.00% of the filters" in text and "were removed" in text
    assert "FP32 (PyTorch), dense: before pruning" in text
    assert not list(sparse_run.parent.glob(".out.partial-*"))


def test_export_zeroes_filter_shapes_of_a_model_named_by_its_file(tmp_path, capsys):
    from conftest import TinyResNet, randomize_batch_norms

    torch.manual_seed(0)
    torch.save(randomize_batch_norms(TinyResNet()).state_dict(), tmp_path / "tiny.pt")
    out = tmp_path / "out"
    arch = f"{Path(__file__).parent}/conftest.py:TinyResNet"
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in ["export", tmp_path / "tiny.pt", "--arch", arch, "--input-shape", "1x1x8x8",
                               "--data", "digits", "--keep", "3", "--groups", "filter-shapes", "--epochs", "1",
                               "--train-samples", "128", "--calibration-samples", "64", "-o", out]])
        raise SystemExit(0)
    printed = capsys.readouterr()
    assert exit_info.value.code == 0, printed.err
    assert "Pruned shapes with WGSEF" in printed.out
    sp = json.loads((out / "recipe.json").read_text())["sparsity"]
    assert (sp["groups"], sp["keep"], sp["sparsity"], sp["shrunk"]) == ("shapes", 3, None, False)
    assert sp["parameters"] == sp["dense_parameters"] and sp["macs"] == sp["dense_macs"]  # zeros, not removed
    # 3 of 9 kernel positions stay in the stem (1 input channel) and 3 of 72 in c1 and c2; fc is the output layer
    assert {s["name"]: (s["groups"], s["kept"]) for s in sp["sets"]} == {"stem": (9, 3), "c1": (72, 3), "c2": (72, 3)}
    stem = load_model(out / SPARSE_CHECKPOINT, arch=arch).module.stem.weight
    assert int((stem.abs().sum(0) > 0).sum()) == 3
