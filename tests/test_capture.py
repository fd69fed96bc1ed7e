"""capture_graph: one eval-mode ATen graph per source format that computes what the model computes."""

from __future__ import annotations

import operator

import numpy as np
import pytest
import torch
from torch import nn

from edgebin.capture import capture_graph, normalize_aten
from edgebin.errors import ModelLoadError
from edgebin.loading import LoadedModel, load_model

aten = torch.ops.aten
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")
SHAPE = (1, 1, 12, 12)


class ConvBnReluLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


class SmallResNet(nn.Module):
    """Stem, one residual block with in-place ReLUs and `+=`, average pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AvgPool2d(2)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        out = self.conv2(self.relu(self.bn1(self.conv1(x))))
        out += x
        out = self.gap(self.pool(self.relu(out)))
        return self.head(out.view(out.size(0), -1))


def trained(cls: type[nn.Module]) -> nn.Module:
    """The model with non-trivial BN statistics, so dropping or mistreating BN changes the output."""
    torch.manual_seed(0)
    model = cls().eval()
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return model


def loaded_from(source: str, model: nn.Module, tmp_path) -> LoadedModel:
    """Save `model` the way `source` names and load it back through load_model."""
    example = torch.zeros(SHAPE)
    if source == "module":
        path = tmp_path / "model.pt"
        torch.save(model, path)
        return load_model(path, input_shape=SHAPE, trust_pickle=True)
    if source in ("script", "trace"):
        path = tmp_path / "model.ts"
        scripted = torch.jit.script(model) if source == "script" else torch.jit.trace(model, example)
        torch.jit.save(scripted, path)
        return load_model(path, input_shape=SHAPE)
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (example,)), path)
    return load_model(path)


SOURCES = ["module", "script", "trace", "pt2"]
MODELS = [ConvBnReluLinear, SmallResNet]


def call_targets(gm: torch.fx.GraphModule) -> list:
    return [n.target for n in gm.graph.nodes if n.op == "call_function" and n.target is not operator.getitem]


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("source", SOURCES)
def test_every_source_gives_a_graph_with_the_models_outputs(tmp_path, source, cls):
    model = trained(cls)
    gm = capture_graph(loaded_from(source, model, tmp_path))
    x = torch.randn(SHAPE)
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-5)
    assert not any(m.training for m in gm.modules())  # eval mode, all the way down
    assert not any(n.op == "call_module" and n.target == "_guards_fn" for n in gm.graph.nodes)
    assert not hasattr(gm, "_guards_fn")
    assert aten.convolution.default not in call_targets(gm)  # normalize_aten has run
    used = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert {n.target for n in gm.graph.nodes if n.op == "get_attr"} == used  # weights keep their layer names


@pytest.mark.parametrize("source", SOURCES)
def test_sources_agree_on_the_ops(tmp_path, source):
    gm = capture_graph(loaded_from(source, trained(SmallResNet), tmp_path))
    ops = call_targets(gm)
    assert ops.count(aten.conv2d.default) == 3 and ops.count(aten.batch_norm.default) == 2
    rest = {aten.avg_pool2d.default, aten.adaptive_avg_pool2d.default, aten.view.default, aten.linear.default}
    assert rest <= set(ops)
    # every in-place op here writes to a tensor only it reads (`out += x` overwrites conv2's output, the ReLUs
    # a BN output or the sum), so all of them become functional
    assert ops.count(aten.relu.default) == 3 and ops.count(aten.add.Tensor) == 1
    assert not {aten.relu_.default, aten.add_.Tensor} & set(ops)


def test_captured_weights_are_copies(tmp_path):
    loaded = loaded_from("pt2", trained(ConvBnReluLinear), tmp_path)
    gm = capture_graph(loaded)
    before = loaded.module.conv.weight.detach().clone()
    with torch.no_grad():
        gm.conv.weight.mul_(0)
    assert torch.equal(loaded.module.conv.weight, before)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript-based exporter edgebin targets
def test_onnx_export_runs_in_onnxruntime_with_the_same_outputs(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    cases = [("module", ConvBnReluLinear), ("module", SmallResNet), ("trace", SmallResNet), ("pt2", SmallResNet)]
    for source, cls in cases:
        model = trained(cls)
        gm = capture_graph(loaded_from(source, model, tmp_path))
        x = torch.randn(SHAPE)
        path = tmp_path / f"{source}-{cls.__name__}.onnx"
        torch.onnx.export(gm, (x,), str(path), opset_version=17, dynamo=False)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(got, model(x).numpy(), atol=1e-5)


def conv_graph(target, args) -> torch.fx.GraphModule:
    """A graph module x -> target(x, weight, None, *args) with a 2x1x3x3 weight."""
    root = nn.Module()
    root.weight = nn.Parameter(torch.randn(2, 1, 3, 3))
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    w = graph.get_attr("weight")
    graph.output(graph.call_function(target, (x, w, None, *args)))
    return torch.fx.GraphModule(root, graph)


def structure(gm: torch.fx.GraphModule) -> list[tuple]:
    """Each node as (op, target, args), node arguments named by (op, target), to compare two graphs."""

    def named(arg):
        return (arg.op, arg.target) if isinstance(arg, torch.fx.Node) else arg

    return [(n.op, n.target, tuple(named(a) for a in n.args)) for n in gm.graph.nodes if n.op != "output"]


def test_normalize_aten_turns_convolution_into_conv2d():
    before = conv_graph(aten.convolution.default, ([2, 2], [1, 1], [1, 1], False, [0, 0], 1))
    expected = conv_graph(aten.conv2d.default, ([2, 2], [1, 1], [1, 1], 1))
    x = torch.randn(1, 1, 7, 7)
    reference = before(x)
    normalize_aten(before)
    assert structure(before) == structure(expected)
    assert torch.equal(before(x), reference)


def test_normalize_aten_leaves_transposed_convolution_and_shared_writes():
    transposed = conv_graph(aten.convolution.default, ([1, 1], [0, 0], [1, 1], True, [0, 0], 1))
    normalize_aten(transposed)
    assert call_targets(transposed) == [aten.convolution.default]

    graph = torch.fx.Graph()  # y = x * 2; relu_(y); return y + y: the write is seen by the add
    x = graph.placeholder("x")
    y = graph.call_function(aten.mul.Tensor, (x, 2))
    graph.call_function(aten.relu_.default, (y,))
    graph.output(graph.call_function(aten.add.Tensor, (y, y)))
    shared = torch.fx.GraphModule(nn.Module(), graph)
    normalize_aten(shared)
    assert aten.relu_.default in call_targets(shared)
    assert shared(torch.tensor([-1.0, 1.0])).tolist() == [0.0, 4.0]  # by hand: relu(-2)+relu(-2), 2+2


class DataDependent(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x - 1


def test_a_model_export_cannot_trace_is_a_load_error(tmp_path):
    loaded = LoadedModel(
        module=DataDependent().eval(), input_shape=(1, 4), source=tmp_path / "dd.pt", format="state-dict"
    )
    with pytest.raises(ModelLoadError, match=r"cannot capture a graph of .*dd\.pt.* with torch\.export: .*--arch"):
        capture_graph(loaded)
