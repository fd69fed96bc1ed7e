"""Shared fixtures: small models made here (no data set, no checkpoint) so unit tests stay fast."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class TinyResNet(nn.Module):
    """conv-BN-ReLU stem, max-pool, one residual block, global average pool, linear: every int8 pattern."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(8)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.bn(self.stem(x))))
        y = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(x + self.b2(self.c2(y)))
        return self.fc(torch.flatten(self.gap(x), 1))


def randomize_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorms non-trivial statistics so that folding them is really tested."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


@pytest.fixture
def one_torch_thread():
    """Small models and many small ops run fastest on one thread, and a busy machine cannot slow them down much;
    a test module opts in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_resnet() -> nn.Module:
    torch.manual_seed(0)
    return randomize_batch_norms(TinyResNet())



@pytest.fixture(scope="session")
def tiny_digits_run(tmp_path_factory):
    """An `edgebin export` folder (recipe.json, model.onnx, model_fp32.onnx) of TinyResNet on the digits data (8x8
    images, untrained: the tests compare engines, not accuracy). Copy it before compiling into it: the Raspberry
    Pi, SSH and RPC tests each start from a copy."""
    from pathlib import Path

    from edgebin import pipeline

    folder = tmp_path_factory.mktemp("tiny_digits")
    torch.manual_seed(0)
    torch.save(randomize_batch_norms(TinyResNet()).state_dict(), folder / "tiny.pt")
    out = folder / "out"
    pipeline.export(folder / "tiny.pt", data="digits", out_dir=out, arch=f"{Path(__file__)}:TinyResNet",
                    input_shape=(1, 1, 8, 8), recipe=pipeline.make_recipe(calibration_samples=128))
    return out
