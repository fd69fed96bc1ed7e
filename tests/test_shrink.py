"""Shrink: the smaller model computes what the pruned (masked) one did, and loads, exports and runs as usual."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import randomize_batch_norms
from torch import nn

from edgebin import metrics
from edgebin.errors import ModelLoadError, UsageError
from edgebin.export import export_onnx
from edgebin.loading import LAYER_WIDTHS, load_model, resized_layer, save_checkpoint
from edgebin.pipeline_sparsity import SparsityConfig, sparsify
from edgebin.sparsity import ProximalWgsef, build_groups, channel_spaces, shrink
from edgebin.zoo import MobileNetV1, ResNet8


def _pruned(model: nn.Module, x: torch.Tensor, kind: str = "filters", **target) -> tuple[nn.Module, list]:
    """A copy of `model` with its groups pruned by the exact step (H_k), as training ends."""
    model = copy.deepcopy(model)
    sets = build_groups(model, x[:1], kind, **target)
    ProximalWgsef(sets, lam=0.0, lr_at=lambda step: 0.0, exact_step=0).exact(model)
    return model.eval(), sets


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def test_shrunk_resnet8_equals_masked_model():
    torch.manual_seed(0)
    dense = randomize_batch_norms(ResNet8(input_size=12))
    x = torch.randn(16, 1, 12, 12)
    masked, _ = _pruned(dense, x, sparsity=0.5)
    result = shrink(masked, x[:1])
    torch.testing.assert_close(result.model(x), masked(x), atol=1e-5, rtol=0)
    assert result.channels == {"stem.conv+stack1.conv2": (8, 16), "stack1.conv1": (8, 16), "stack2.conv1": (16, 32),
                               "stack2.conv2+stack2.shortcut": (16, 32), "stack3.conv1": (32, 64),
                               "stack3.conv2+stack3.shortcut": (32, 64)}
    # by hand: stem 1·8·9 + 16, stack1 2·(8·8·9 + 16), stack2 8·16·9 + 16·16·9 + 2·32 + 8·16 + 16,
    # stack3 16·32·9 + 32·32·9 + 2·64 + 16·32 + 32, head 32·10 + 10
    assert _params(result.model) == 88 + 1184 + 3664 + 14496 + 330
    assert result.layer_widths["stack2.shortcut"] == {"in_channels": 8, "out_channels": 16}
    assert result.layer_widths["head"] == {"in_features": 32}
    assert isinstance(result.model.stack1.shortcut, nn.Identity)  # still a residual add, now of 8 channels
    assert _params(masked) == _params(dense)  # shrink works on a copy


@torch.no_grad()
def test_untied_pruning_leaves_residual_streams_alone():
    torch.manual_seed(1)
    dense = randomize_batch_norms(ResNet8(input_size=8))
    x = torch.randn(8, 1, 8, 8)
    masked, sets = _pruned(dense, x, sparsity=0.75, tied=False)
    assert [(s.name, s.keep) for s in sets] == [("stack1.conv1", 4), ("stack2.conv1", 8), ("stack3.conv1", 16)]
    result = shrink(masked, x[:1])
    torch.testing.assert_close(result.model(x), masked(x), atol=1e-5, rtol=0)
    assert set(result.layer_widths) == {f"stack{i}.{m}" for i in (1, 2, 3) for m in ("conv1", "bn1", "conv2")}
    assert result.model.stack3.conv2.in_channels == 16 and result.model.stack3.conv2.out_channels == 64


@torch.no_grad()
def test_channels_with_functional_ops_and_pooling(tiny_resnet):
    x = torch.randn(8, 1, 8, 8)
    masked, sets = _pruned(tiny_resnet, x, kind="channels", keep=3)
    assert [s.name for s in sets] == ["stem+c2", "c1"]
    assert masked.fc.weight[:, 3:].abs().sum() > 0 and (masked.fc.weight == 0).any()
    result = shrink(masked, x[:1])
    torch.testing.assert_close(result.model(x), masked(x), atol=1e-5, rtol=0)
    # a dead channel leaves its writers too: the stem's filters and both BatchNorms
    assert result.model.stem.out_channels == 3 and result.model.bn.num_features == 3
    assert result.model.fc.in_features == 3 and result.model.c1.in_channels == 3


@torch.no_grad()
def test_depthwise_separable_blocks_shrink_together():
    torch.manual_seed(2)
    dense = randomize_batch_norms(MobileNetV1(input_size=8))
    x = torch.randn(4, 1, 8, 8)
    masked, _ = _pruned(dense, x, sparsity=0.5)
    result = shrink(masked, x[:1])
    torch.testing.assert_close(result.model(x), masked(x), atol=1e-5, rtol=0)
    dw = result.model.blocks.ds2.depthwise.conv  # its channels are those of ds1's pointwise output
    assert dw.groups == dw.in_channels == dw.out_channels == result.model.blocks.ds1.pointwise.conv.out_channels == 8
    assert _params(result.model) < _params(dense) / 3


@torch.no_grad()
def test_a_space_with_every_channel_dead_keeps_one():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2)).eval()
    for p in (model[0].weight, model[0].bias, model[1].weight, model[1].bias):
        p.zero_()
    x = torch.randn(3, 1, 3, 3)
    result = shrink(model, x[:1])
    assert result.channels == {"0": (1, 4)}
    torch.testing.assert_close(result.model(x), model(x), atol=1e-6, rtol=0)


def test_unsupported_ops_and_outputs_are_never_pruned():
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.head = nn.Conv2d(1, 4, 1), nn.Conv2d(1, 4, 1), nn.Conv2d(8, 3, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.cat([self.a(x) * torch.sigmoid(x), self.b(x)], 1))

    spaces = {s.name: s.fixed for s in channel_spaces(Gated(), torch.zeros(1, 1, 4, 4))}
    assert spaces["a"] == "mul" and spaces["b"] == "cat" and spaces["head"] == "model output"
    with pytest.raises(UsageError, match="no filters that can be pruned"):
        build_groups(Gated(), torch.zeros(1, 1, 4, 4), sparsity=0.5)

    class Branchy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    with pytest.raises(UsageError, match="cannot trace Branchy"):
        channel_spaces(Branchy(), torch.zeros(1, 1, 2, 2))


def test_shrunk_checkpoint_loads_exports_and_runs(tmp_path):
    torch.manual_seed(3)
    dense = randomize_batch_norms(ResNet8(input_size=8))
    x = torch.randn(4, 1, 8, 8)
    masked, _ = _pruned(dense, x, sparsity=0.25)
    result = shrink(masked, x[:1])
    path = tmp_path / "small.pt"
    save_checkpoint(path, result.model, arch="resnet8", input_shape=(1, 1, 8, 8),
                    arch_kwargs={"input_size": 8, LAYER_WIDTHS: result.layer_widths})
    loaded = load_model(path)
    assert loaded.module.stack3.conv1.out_channels == 48 and loaded.arch_kwargs[LAYER_WIDTHS]
    with torch.no_grad():
        expected = masked(x).numpy()
        torch.testing.assert_close(loaded.module(x), torch.from_numpy(expected), atol=1e-5, rtol=0)
    export_onnx(loaded.module, loaded.input_shape, tmp_path / "small.onnx")
    np.testing.assert_allclose(metrics.run_onnxruntime(tmp_path / "small.onnx", x.numpy()), expected, atol=1e-4)

    bad = tmp_path / "bad.pt"
    save_checkpoint(bad, result.model, arch="resnet8", input_shape=(1, 1, 8, 8),
                    arch_kwargs={"input_size": 8, LAYER_WIDTHS: {"stack9.conv1": {"out_channels": 2}}})
    with pytest.raises(ModelLoadError, match="stack9.conv1"):
        load_model(bad)


def test_resized_layer_keeps_everything_but_the_widths():
    conv = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False, padding_mode="reflect")
    small = resized_layer(conv, out_channels=8)
    assert (small.in_channels, small.out_channels, small.stride, small.padding, small.bias, small.padding_mode) == \
        (16, 8, (2, 2), (1, 1), None, "reflect")
    bn = resized_layer(nn.BatchNorm2d(8, eps=1e-3, momentum=None), num_features=3)
    assert (bn.num_features, bn.eps, bn.momentum) == (3, 1e-3, None)
    with pytest.raises(ModelLoadError, match="cannot resize a LayerNorm"):
        resized_layer(nn.LayerNorm(4), normalized_shape=2)
    with pytest.raises(ModelLoadError, match="its widths are in_features, out_features"):
        resized_layer(nn.Linear(4, 2), out_channels=1)


def test_sparsify_writes_an_exact_smaller_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = tmp_path / "fp32.pt"
    save_checkpoint(source, ResNet8(input_size=8).eval(), arch="resnet8", arch_kwargs={"input_size": 8},
                    input_shape=(1, 1, 8, 8))
    config = SparsityConfig(sparsity=0.75, epochs=1, finetune_epochs=1, batch_size=64, train_samples=256, distill=False)
    result = sparsify(source, data="digits", out=tmp_path / "small.pt", config=config, eval_samples=100)
    assert result.exact and result.sets["stack3.conv1"]["keep"] == result.sets["stack3.conv1"]["nonzero"] == 16
    assert result.macs < result.dense_macs / 8 and result.parameters < result.dense_parameters / 8
    assert result.accuracy == pytest.approx(result.masked_accuracy, abs=0.011)  # one image at most
    loaded = load_model(result.path)
    assert loaded.module.stem.conv.out_channels == 4 and loaded.metadata["sparsity"]["selection"] == "wgsef"
    with pytest.raises(UsageError, match="give one of --sparsity"):
        SparsityConfig(sparsity=0.5, keep=3)
    with pytest.raises(UsageError, match="groups must be one of"):
        SparsityConfig(sparsity=0.5, groups="rows")
