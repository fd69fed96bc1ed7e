"""edgebin.zoo: every architecture builds, runs, exports and has the expected size; bundled checkpoints load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from edgebin import zoo
from edgebin.data import FASHION_MNIST_DIR, Normalization, evaluation_split, load_dataset
from edgebin.errors import UsageError

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
CHECKPOINTS = ("lenet5_fashion.pt", "resnet8_fashion.pt")
CHECKPOINT_KEYS = {
    "edgebin_checkpoint", "arch", "arch_kwargs", "state_dict", "input_shape", "normalization",
    "dataset", "classes", "fp32_test_accuracy", "trained_with",
}  # fmt: skip


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", zoo.names())
def test_model_runs_and_exports_on_28x28(name):
    torch.manual_seed(0)
    model = zoo.create(name, in_channels=1, num_classes=10, input_size=28).eval()
    x = torch.randn(1, 1, 28, 28)
    assert model.input_shape == (1, 1, 28, 28)
    with torch.no_grad():
        eager = model(x)
    assert eager.shape == (1, 10)
    program = torch.export.export(model, (torch.zeros(1, 1, 28, 28),))
    assert torch.allclose(program.module()(x), eager, atol=1e-5)


@pytest.mark.parametrize("name", zoo.names())
def test_model_trains_every_parameter(name):
    """A batch of two reaches every parameter, so no layer is built but left unused."""
    torch.manual_seed(0)
    model = zoo.create(name, num_classes=3, input_size=28).train()
    nn.functional.cross_entropy(model(torch.randn(2, 1, 28, 28)), torch.tensor([0, 2])).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not unused
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 3
    assert hasattr(model, "stem") or hasattr(model, "patch_embed")


@pytest.mark.parametrize(
    "name, low, high",
    [
        ("lenet5", 44_000, 62_000),  # 28×28 padded to the paper's 32×32 geometry: 5×5×16 into fc1
        ("resnet8", 75_000, 80_000),  # MLPerf Tiny: ~78k
        ("ds_cnn", 20_000, 40_000),
        ("mobilenet_v1_025", 150_000, 250_000),
        ("tiny_vit", 50_000, 250_000),
    ],
)
def test_parameter_counts(name, low, high):
    assert low <= parameters(zoo.create(name)) <= high


def test_other_input_shapes():
    assert zoo.create("resnet8", in_channels=3, input_size=32)(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    kws = zoo.create("ds_cnn", num_classes=12)
    assert kws.input_shape == (1, 1, 49, 10) and kws(torch.zeros(1, 1, 49, 10)).shape == (1, 12)
    vww = zoo.create("mobilenet_v1_025", in_channels=3, num_classes=2, input_size=96).eval()
    assert vww(torch.zeros(1, 3, 96, 96)).shape == (1, 2)
    assert zoo.create("tiny_vit", input_size=28, patch_size=7)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert zoo.create("lenet5", input_size=32)(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


def test_bad_names_and_options():
    with pytest.raises(UsageError, match="unknown architecture 'resnet9'.*resnet8.*lenet5") as info:
        zoo.create("resnet9")
    assert all(name in str(info.value) for name in zoo.names())
    with pytest.raises(UsageError, match="depth.*in_channels"):
        zoo.create("resnet8", depth=20)
    with pytest.raises(UsageError, match="patch_size 5 must divide"):
        zoo.create("tiny_vit", patch_size=5)
    with pytest.raises(UsageError, match="too small"):
        zoo.create("lenet5", input_size=8)
    with pytest.raises(UsageError, match="input_size"):
        zoo.create("resnet8", input_size=(28, 28, 1))


# --- the bundled checkpoints ------------------------------------------------------------------------


@pytest.mark.parametrize("filename", CHECKPOINTS)
def test_bundled_checkpoint_loads_safely(filename):
    path = MODELS_DIR / filename
    assert path.stat().st_size < 1_000_000
    ckpt = torch.load(path, weights_only=True, map_location="cpu")
    assert CHECKPOINT_KEYS <= set(ckpt)
    assert ckpt["edgebin_checkpoint"] == 1 and ckpt["dataset"] == "fashion-mnist"
    assert ckpt["arch_kwargs"] == {"in_channels": 1, "num_classes": 10, "input_size": 28}
    assert len(ckpt["classes"]) == 10 and ckpt["input_shape"] == [1, 1, 28, 28]
    assert ckpt["trained_with"].startswith(f"python tools/train_examples.py --arch {ckpt['arch']} ")
    Normalization.from_dict(ckpt["normalization"])
    model = zoo.create(ckpt["arch"], **ckpt["arch_kwargs"])
    model.load_state_dict(ckpt["state_dict"], strict=True)
    assert list(model.input_shape) == ckpt["input_shape"]


@pytest.fixture(scope="module")
def fashion_eval(tmp_path_factory):
    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip("Debian package dataset-fashion-mnist absent")
    return evaluation_split(load_dataset("fashion-mnist", cache=tmp_path_factory.mktemp("cache")), n=1000)


@pytest.mark.parametrize("filename", CHECKPOINTS)
def test_bundled_checkpoint_accuracy_matches_record(filename, fashion_eval):
    """On 1,000 stratified test images, within a few points of the accuracy recorded on all 10,000."""
    ckpt = torch.load(MODELS_DIR / filename, weights_only=True, map_location="cpu")
    model = zoo.create(ckpt["arch"], **ckpt["arch_kwargs"]).eval()
    model.load_state_dict(ckpt["state_dict"])
    x, y = fashion_eval
    x = Normalization.from_dict(ckpt["normalization"]).apply(x)
    with torch.no_grad():
        acc = (model(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert ckpt["fp32_test_accuracy"] >= 0.88
    assert abs(acc - ckpt["fp32_test_accuracy"]) < 0.03
