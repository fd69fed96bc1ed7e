"""ONNX export of QAT models: onnxruntime against the PyTorch fake-quant model, the low-bit metadata, the file size."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from edgebin import zoo
from edgebin.errors import UsageError
from edgebin.export import read_metadata
from edgebin.export.lowbit import freeze_quantizers
from edgebin.export.qat import CLOSE_FRACTION, close_samples, export_qat, initializer_bytes
from edgebin.quant import Recipe, qat
from edgebin.quant.recipe import StatsQConfig, TbtConfig

SHAPE = (64, 1, 12, 12)  # 64 evaluation inputs, exported as one batch (TBT's dynamic offset is per batch)


class SmallConvNet(nn.Module):
    """conv-ReLU, conv-ReLU, average pool, linear: no BatchNorm, a linear layer inside the quantized part."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(16, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3)))))


def _trained(make_model, recipe: Recipe, steps: int = 2) -> nn.Module:
    """Build, prepare, initialise the quantizers, take a few AdamW steps on random labels (quantizer parameters
    and BatchNorm statistics move off their initial values), return in eval mode."""
    torch.manual_seed(0)
    model = qat.prepare(make_model(), recipe)
    x = torch.randn(SHAPE)
    qat.init_quantizers(model, x)
    qat.set_progress(model, 0.5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x[:16]), torch.randint(0, 10, (16,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    qat.set_biper_stage(model, 2)  # BiPer exports its stage-2 sign(sin(ωW)); the other methods have no stages
    return model.eval()


def _resnet8() -> nn.Module:
    return zoo.create("resnet8", input_size=SHAPE[-1])


def _onnx_and_torch(model: nn.Module, path) -> tuple[np.ndarray, np.ndarray]:
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0], expected


def _assert_agree(got: np.ndarray, expected: np.ndarray) -> None:
    """The documented agreement (edgebin.export.qat): argmax everywhere, LOGIT_TOLERANCE on CLOSE_FRACTION."""
    assert (got.argmax(1) == expected.argmax(1)).all()
    close = close_samples(got, expected)
    assert close.mean() >= CLOSE_FRACTION, f"{(~close).sum()} of {len(close)} inputs differ by up to " \
                                           f"{np.abs(got - expected).max():.3g}"


def _layers(path) -> list[dict]:
    return json.loads(read_metadata(path)["edgebin.layers"])


def _codes(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == name))


def _assert_decodes(w: dict, codes: np.ndarray, layer: nn.Module) -> None:
    """scale[c] · (code + code_offset), from the metadata and the file, is the fake-quantized weight."""
    scale = np.asarray(w["scale"], dtype=np.float32).reshape(-1, *[1] * (codes.ndim - 1))
    w_hat = layer.quantized_weight().detach().numpy()
    np.testing.assert_allclose(scale * (codes + np.float32(w["code_offset"])), w_hat, rtol=1e-6, atol=1e-9)


RECIPES = {
    "statsq-w2a2": Recipe.for_method("statsq", weight_bits=2, activation_bits=2),
    "lsq-w4a4": Recipe.for_method("lsq", weight_bits=4, activation_bits=4),
    "binary-ste": Recipe.for_method("binary", estimator="ste"),
    "binary-reste": Recipe.for_method("binary", estimator="reste"),
    "binary-biper": Recipe.for_method("binary", estimator="biper"),
    "ternary": Recipe.for_method("ternary"),
    "tbt-w2a2": Recipe.for_method("tbt"),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_onnxruntime_predicts_as_the_fake_quant_model(name, tmp_path):
    model = _trained(_resnet8, RECIPES[name])
    exported = export_qat(model, SHAPE, tmp_path / "model.onnx")
    got, expected = _onnx_and_torch(model, tmp_path / "model.onnx")
    _assert_agree(got, expected)
    frozen, _ = freeze_quantizers(model)  # what was traced: the same arithmetic, bit for bit, in PyTorch
    x = torch.randn(8, *SHAPE[1:])
    with torch.no_grad():
        assert torch.equal(frozen(x), model(x))
    for rec in _layers(tmp_path / "model.onnx"):  # every weight decodes to the fake-quantized weight
        w = rec["weight"]
        codes = _codes(exported, w["codes"])
        assert codes.dtype == np.int8 and w["qmin"] <= codes.min() and codes.max() <= w["qmax"]
        _assert_decodes(w, codes, model.get_submodule(rec["layer"]))
    meta = read_metadata(tmp_path / "model.onnx")
    assert meta["edgebin.method"] == RECIPES[name].method
    assert meta.get("edgebin.estimator") == getattr(RECIPES[name].default, "estimator", None)


@pytest.fixture(scope="module")
def binary_resnet8(tmp_path_factory):
    """ResNet-8 W1A1 (STE), briefly trained, and its export: (model, ONNX model, path)."""
    model = _trained(_resnet8, Recipe.for_method("binary", estimator="ste"))
    path = tmp_path_factory.mktemp("binary") / "model.onnx"
    return model, export_qat(model, SHAPE, path), path


def test_binary_layers_carry_bit_packing_metadata(binary_resnet8):
    model, exported, path = binary_resnet8
    assert read_metadata(path)["edgebin.sign_convention"].startswith("sign(0) = +1")
    binary = [rec for rec in _layers(path) if rec["kind"] == "binary"]
    convs = [f"stack{s}.{c}" for s in (1, 2, 3) for c in ("conv1", "conv2", "shortcut")]
    assert [rec["layer"] for rec in binary] == [c for c in convs if c != "stack1.shortcut"]  # stem and head: 8 bits
    nodes = {n.name: n for n in exported.graph.node}
    for rec in binary:
        layer = model.get_submodule(rec["layer"])
        w, a = rec["weight"], rec["activation"]
        assert (w["kind"], w["bits"], w["pm1"], w["sign_zero"], w["dtype"]) == ("binary", 1, True, 1, "int8")
        codes = _codes(exported, w["codes"])
        assert set(np.unique(codes)) == {-1, 1}
        alpha = layer.weight.detach().abs().mean(dim=(1, 2, 3))  # STE: α_c = mean|W_c|, by hand
        np.testing.assert_allclose(w["scale"], alpha.numpy(), rtol=1e-6)
        assert (codes == np.where(layer.weight.detach().numpy() >= 0, 1, -1)).all()
        assert (a["kind"], a["pm1"], a["sign_zero"], a["scale"], a["shift_axis"]) == ("binary", True, 1, 1.0, -3)
        np.testing.assert_allclose(a["shift"], layer.input_quantizer.shift.numpy())
        assert nodes[a["tensor"].rpartition("_output_")[0]].op_type == "Where"  # not Sign: it maps 0 to 0
        assert nodes[rec["compute_node"]].op_type == "Conv"
        assert list(nodes[rec["compute_node"]].input[:2]) == [a["tensor"], w["tensor"]]
        assert "sign(0) = +1" in nodes[rec["compute_node"]].doc_string
    assert not any(n.op_type == "Sign" for n in exported.graph.node)


def test_binary_weights_take_a_quarter_of_fp32_in_the_file(binary_resnet8):
    model, exported, path = binary_resnet8
    fp32_bytes = sum(p.numel() * 4 for p in _resnet8().parameters())
    for rec in _layers(path):  # one byte per weight, in the 8-bit first and last layers too
        assert _codes(exported, rec["weight"]["codes"]).nbytes == model.get_submodule(rec["layer"]).weight.numel()
    assert initializer_bytes(exported) < 0.3 * fp32_bytes  # float BatchNorm, biases and scales included
    assert path.stat().st_size < 0.5 * fp32_bytes  # plus ~40 kB of graph and metadata for this 78k-weight model


def test_binary_activation_maps_zero_to_plus_one_in_onnxruntime(tmp_path):
    model = qat.prepare(nn.Sequential(nn.Linear(4, 3)), Recipe.for_method("binary", first_last_bits=None))
    qat.init_quantizers(model, torch.tensor([[-1.0, 1.0, -2.0, 2.0]]))  # signed input: the shift stays 0
    model.eval()
    export_qat(model, (1, 4), tmp_path / "model.onnx")
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": np.zeros((1, 4), np.float32)})[0]
    layer = model[0]
    by_hand = layer.quantized_weight().detach() @ torch.ones(4) + layer.bias.detach()  # sign(0) = +1 for every input
    np.testing.assert_allclose(got[0], by_hand.numpy(), rtol=1e-6)


def test_small_conv_net_with_tbt_binary_shifted_activations(tmp_path):
    recipe = Recipe(method="tbt", default=TbtConfig(weight_bits=1, activation_bits=1, shift=True), first_last_bits=None)
    model = _trained(SmallConvNet, recipe)
    export_qat(model, SHAPE, tmp_path / "model.onnx")
    got, expected = _onnx_and_torch(model, tmp_path / "model.onnx")
    _assert_agree(got, expected)
    acts = {rec["layer"]: rec["activation"] for rec in _layers(tmp_path / "model.onnx")}
    assert acts["c1"]["pm1"] and acts["c1"]["kind"] == "binary" and acts["c1"]["scale"] > 0  # signed input: ±α
    c2 = acts["c2"]  # post-ReLU: {0, α}, QuantizeLinear with the codes clipped to [0, 1]
    assert (c2["kind"], c2["pm1"], c2["qmin"], c2["qmax"]) == ("binary", False, 0, 1)
    assert acts["c2"]["shift_axis"] == -3 and acts["fc1"]["shift_axis"] == -1


def test_8bit_statsq_stores_int8_levels_and_a_half_step(tmp_path):
    recipe = Recipe(method="statsq", default=StatsQConfig(weight_bits=8, activation_bits=8), first_last_bits=None)
    model = _trained(SmallConvNet, recipe)
    exported = export_qat(model, SHAPE, tmp_path / "model.onnx")
    got, expected = _onnx_and_torch(model, tmp_path / "model.onnx")
    _assert_agree(got, expected)
    w = _layers(tmp_path / "model.onnx")[1]["weight"]
    codes = _codes(exported, w["codes"])  # k of the odd code 2k + 1, which reaches ±255
    assert codes.dtype == np.int8 and w["code_offset"] == 0.5 and codes.min() == -128 and codes.max() == 127
    _assert_decodes(w, codes, model.c2)


def test_qkr_attention_exports(tmp_path):
    model = _trained(lambda: zoo.create("tiny_vit", depth=1, input_size=SHAPE[-1], patch_size=4, dim=16, heads=2),
                     Recipe(method="statsq", default=StatsQConfig(qkr=True, per_token=True)))
    export_qat(model, SHAPE, tmp_path / "model.onnx")
    got, expected = _onnx_and_torch(model, tmp_path / "model.onnx")
    _assert_agree(got, expected)
    attn = next(rec for rec in _layers(tmp_path / "model.onnx") if rec["op"] == "attention")
    assert set(attn) >= {"qk", "activation", "t", "attn", "v_out"} and attn["t"]["scale_axis"] == -2


def test_export_before_initialisation_names_the_layers(tmp_path):
    model = qat.prepare(zoo.create("resnet8", input_size=SHAPE[-1]), Recipe.for_method("lsq"))
    with pytest.raises(UsageError, match="stack1.conv1.input_quantizer.*init_quantizers"):
        export_qat(model, SHAPE, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()
