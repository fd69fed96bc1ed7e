"""load_model: every format round trip, the input-shape rules, and every way a file can be refused."""

from __future__ import annotations

import io
import json
import os
import pickle
import sys
import types
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

import edgebin
from edgebin.errors import InputShapeError, ModelLoadError, UntrustedModelError, UsageError
from edgebin.loading import (
    check_input_shape,
    load_model,
    parse_input_shape,
    resolve_arch,
    save_checkpoint,
)

SHAPE = (1, 1, 8, 8)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


class TinyNet(nn.Module):
    """conv-BN-ReLU-pool-linear: the smallest model with every kind of weight edgebin meets."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width * 4 * 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(torch.flatten(y, 1))


NET_PY = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width * 4 * 4, 3)

    def forward(self, x):
        y = torch.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(torch.flatten(y, 1))
"""


def write_marker(path: str) -> dict:
    """What a malicious pickle would do: leave a file behind when it is unpickled."""
    Path(path).write_text("unpickled")
    return {}


class Booby:
    """An object whose unpickling writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (write_marker, (self.marker,))


@pytest.fixture
def model() -> TinyNet:
    torch.manual_seed(0)
    net = TinyNet().eval()
    with torch.no_grad():  # non-trivial BN statistics, so a lost buffer changes the output
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net


@pytest.fixture
def fake_zoo(monkeypatch):
    """A stand-in for edgebin.zoo holding one model, "tiny", so these tests do not depend on the real zoo."""
    zoo = types.ModuleType("edgebin.zoo")
    zoo.names = lambda: ["tiny"]
    zoo.create = lambda name, **kw: TinyNet(**kw)
    monkeypatch.setitem(sys.modules, "edgebin.zoo", zoo)
    monkeypatch.setattr(edgebin, "zoo", zoo, raising=False)
    return zoo


@pytest.fixture
def net_py(tmp_path) -> Path:
    path = tmp_path / "net.py"
    path.write_text(NET_PY)
    return path


def same_outputs(a: nn.Module, b: nn.Module, shape=SHAPE) -> bool:
    x = torch.randn(shape)
    with torch.no_grad():
        return torch.allclose(a(x), b(x), atol=1e-6)


# --- formats ----------------------------------------------------------------------------------------------


def test_edgebin_checkpoint_records_everything(tmp_path, model, fake_zoo):
    path = tmp_path / "model.pt"
    norm = {"mean": [0.5], "std": [0.25]}
    save_checkpoint(
        path,
        model,
        arch="tiny",
        input_shape=SHAPE,
        normalization=norm,
        dataset="fashion-mnist",
        classes=["a", "b", "c"],
        fp32_test_accuracy=0.91,
    )
    loaded = load_model(path)
    assert loaded.format == "edgebin-checkpoint"
    assert loaded.arch == "tiny" and loaded.input_shape == SHAPE and loaded.source == path
    assert loaded.normalization == norm
    assert loaded.metadata == {"dataset": "fashion-mnist", "classes": ["a", "b", "c"], "fp32_test_accuracy": 0.91}
    assert not loaded.module.training and loaded.exported is None
    assert same_outputs(loaded.module, model)


def test_checkpoint_arch_kwargs_are_used(tmp_path, fake_zoo):
    wide = TinyNet(width=6).eval()
    save_checkpoint(tmp_path / "wide.pt", wide, arch="tiny", arch_kwargs={"width": 6}, input_shape=SHAPE)
    assert same_outputs(load_model(tmp_path / "wide.pt").module, wide)


def test_given_arch_overrides_the_recorded_one(tmp_path, model, fake_zoo, net_py):
    save_checkpoint(tmp_path / "model.pt", model, arch="tiny", input_shape=SHAPE)
    loaded = load_model(tmp_path / "model.pt", arch=f"{net_py}:Net")
    assert type(loaded.module).__name__ == "Net" and loaded.arch == f"{net_py}:Net"
    assert same_outputs(loaded.module, model)


def test_checkpoint_naming_a_python_file_is_not_imported(tmp_path, model):
    marker = tmp_path / "imported"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').write('ran')\n" + NET_PY)
    save_checkpoint(tmp_path / "model.pt", model, arch=f"{evil}:Net", input_shape=SHAPE)
    with pytest.raises(UsageError, match=r"model\.pt.*evil\.py:Net.*pass --arch"):
        load_model(tmp_path / "model.pt")
    assert not marker.exists()
    assert same_outputs(load_model(tmp_path / "model.pt", arch=f"{evil}:Net").module, model)  # the user's choice
    assert marker.exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"edgebin_checkpoint": 2}, r"model\.pt. is an edgebin checkpoint version 2; .*upgrade edgebin"),
        ({"normalization": {"mean": [0.5]}}, r"model\.pt. records normalization .*expected"),
        ({"input_shape": [1, 0, 8]}, r"model\.pt. records input shape \[1, 0, 8\], which is not a shape"),
    ],
)
def test_malformed_checkpoint_fields_are_named(tmp_path, model, fake_zoo, change, message):
    save_checkpoint(tmp_path / "model.pt", model, arch="tiny", input_shape=SHAPE)
    ckpt = torch.load(tmp_path / "model.pt", weights_only=True)
    torch.save({**ckpt, **change}, tmp_path / "model.pt")
    with pytest.raises(ModelLoadError, match=message):
        load_model(tmp_path / "model.pt")


def test_state_dict_with_arch_from_a_file(tmp_path, model, net_py):
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    loaded = load_model(tmp_path / "weights.pt", arch=f"{net_py}:Net", input_shape=SHAPE)
    assert loaded.format == "state-dict" and loaded.input_shape == SHAPE
    assert same_outputs(loaded.module, model)


def test_state_dict_nested_under_a_key_and_wrapped_by_data_parallel(tmp_path, model, fake_zoo):
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 7, "state_dict": state, "optimizer": {"lr": 0.1}}, tmp_path / "ckpt.pth")
    loaded = load_model(tmp_path / "ckpt.pth", arch="tiny", input_shape=SHAPE)
    assert loaded.metadata == {"epoch": 7}
    assert same_outputs(loaded.module, model)


def test_state_dict_without_arch_asks_for_one(tmp_path, model, fake_zoo):
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(
        UsageError,
        match=r"weights\.pt.* holds only weights \(a state_dict\); pass --arch NAME "
        r"\(one of: tiny\) or --arch path/to/model\.py:Class",
    ):
        load_model(tmp_path / "weights.pt", input_shape=SHAPE)


def test_state_dict_that_does_not_fit_names_keys_and_arch(tmp_path, net_py):
    state = TinyNet(width=8).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["fc.bias"]
    torch.save(state, tmp_path / "weights.pt")
    with pytest.raises(
        ModelLoadError,
        match=r"weights\.pt.*net\.py:Net: missing keys: fc\.bias; "
        r"unexpected keys: extra\.weight; shape .*conv\.weight \(8, 1, 3, 3\)",
    ):
        load_model(tmp_path / "weights.pt", arch=f"{net_py}:Net", input_shape=SHAPE)


def test_torchscript_with_recorded_shape(tmp_path, model):
    path = tmp_path / "model.ts"
    info = {"input_shape": list(SHAPE), "normalization": {"mean": [0.1], "std": [0.3]}, "dataset": "mnist"}
    torch.jit.save(torch.jit.script(model), path, _extra_files={"edgebin.json": json.dumps(info)})
    loaded = load_model(path)
    assert loaded.format == "torchscript" and loaded.input_shape == SHAPE
    assert loaded.normalization == {"mean": [0.1], "std": [0.3]} and loaded.metadata == {"dataset": "mnist"}
    assert same_outputs(loaded.module, model)


def test_torchscript_without_recorded_shape_needs_one(tmp_path, model):
    path = tmp_path / "traced.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(SHAPE)), path)
    with pytest.raises(InputShapeError, match=r"traced\.pt.*does not record.*--input-shape"):
        load_model(path)
    assert load_model(path, input_shape=SHAPE).input_shape == SHAPE


def test_exported_program_takes_its_shape_from_the_program(tmp_path, model):
    path = tmp_path / "model.pt2"
    program = torch.export.export(model, (torch.zeros(SHAPE),))
    torch.export.save(program, path, extra_files={"edgebin.json": json.dumps({"classes": ["x", "y", "z"]})})
    loaded = load_model(path)
    assert loaded.format == "exported-program" and loaded.input_shape == SHAPE
    assert loaded.exported is not None and loaded.metadata == {"classes": ["x", "y", "z"]}
    assert not loaded.module.training
    assert same_outputs(loaded.module, model)


def test_exported_program_with_a_dynamic_batch_gets_batch_one(tmp_path, model):
    batch = torch.export.Dim("batch", min=1, max=16)
    program = torch.export.export(model, (torch.zeros(2, 1, 8, 8),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, tmp_path / "dyn.pt2")
    assert load_model(tmp_path / "dyn.pt2").input_shape == SHAPE


def test_exported_program_refuses_another_shape(tmp_path, model):
    torch.export.save(torch.export.export(model, (torch.zeros(SHAPE),)), tmp_path / "model.pt2")
    with pytest.raises(InputShapeError, match=r"1x1x16x16 does not fit.*model\.pt2. records 1x1x8x8"):
        load_model(tmp_path / "model.pt2", input_shape=(1, 1, 16, 16))


def test_pickled_module_needs_trust(tmp_path, model):
    path = tmp_path / "model.pt"
    torch.save(model, path)
    with pytest.raises(
        UntrustedModelError,
        match=r"model\.pt. holds a pickled Python object \(class [\w.]*TinyNet\)"
        r".*--trust-pickle",
    ):
        load_model(path, input_shape=SHAPE)
    loaded = load_model(path, input_shape=SHAPE, trust_pickle=True)
    assert loaded.format == "pickled-module" and loaded.metadata["class"].endswith("TinyNet")
    assert same_outputs(loaded.module, model)


def save_booby_torch(obj, path):
    torch.save(obj, path)


def save_booby_legacy(obj, path):
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def save_booby_pickle(obj, path):
    path.write_bytes(pickle.dumps(obj))


@pytest.mark.parametrize("save", [save_booby_torch, save_booby_legacy, save_booby_pickle])
def test_malicious_pickle_is_not_unpickled_by_default(tmp_path, save):
    marker = tmp_path / "marker"
    path = tmp_path / "model.pt"
    save({"state_dict": Booby(marker)}, path)
    with pytest.raises(UntrustedModelError, match=r"model\.pt.*pickled Python object.*--trust-pickle"):
        load_model(path)
    assert not marker.exists()
    with pytest.raises(ModelLoadError):  # with trust it is unpickled, which proves the payload is live
        load_model(path, trust_pickle=True)
    assert marker.exists()


def test_malicious_payload_inside_a_pt2_is_not_unpickled(tmp_path, model):
    good, bad, marker = tmp_path / "good.pt2", tmp_path / "bad.pt2", tmp_path / "marker"
    torch.export.save(torch.export.export(model, (torch.zeros(SHAPE),)), good)
    evil = io.BytesIO()
    torch.save((Booby(marker),), evil)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, evil.getvalue() if item.filename.endswith("data/sample_inputs/model.pt") else data)
    with pytest.raises(UntrustedModelError, match=r"bad\.pt2.*pickled Python object.*write_marker"):
        load_model(bad)
    assert not marker.exists()
    with open(bad, "rb") as f, pytest.raises(Exception):  # noqa: B017 torch's own loader falls back to pickle
        torch.export.load(f)
    assert marker.exists()


# --- files that are not models ----------------------------------------------------------------------------


def real_checkpoint_bytes(model: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("gone.pt", lambda p, m: None, r"no such file: .*gone\.pt"),
        ("folder.pt", lambda p, m: p.mkdir(), r"folder\.pt. is a directory"),
        ("empty.pt", lambda p, m: p.write_bytes(b""), r"empty\.pt. is empty"),
        ("cut.pt", lambda p, m: p.write_bytes(real_checkpoint_bytes(m)[:100]), r"cut\.pt. is a truncated"),
        ("tail.pt", lambda p, m: p.write_bytes(real_checkpoint_bytes(m)[:-40]), r"tail\.pt. is a truncated"),
        (
            "noise.bin",
            lambda p, m: p.write_bytes(os.urandom(4096).replace(b"\x80", b"\x81").replace(b"PK", b"pk")),
            r"noise\.bin. is not a PyTorch model file",
        ),
        ("notes.txt", lambda p, m: p.write_text("weights live elsewhere\n"), r"notes\.txt. is a text file"),
        ("net.py", lambda p, m: p.write_text(NET_PY), r"net\.py. is a text file.*--arch path/to/model\.py:Class"),
        ("model.onnx", lambda p, m: p.write_bytes(b"\x08\x07\x12\x07pytorch" + os.urandom(64)), r"model\.onnx"),
        ("other.zip", lambda p, m: zipfile.ZipFile(p, "w").writestr("a.txt", "hi"), r"other\.zip. is a zip archive"),
    ],
)
def test_files_that_are_not_models_are_refused_in_one_line(tmp_path, model, name, make, message):
    path = tmp_path / name
    make(path, model)
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model(path, input_shape=SHAPE)
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)
    if name not in ("gone.pt", "cut.pt", "tail.pt"):
        assert "torch.jit.save" in str(info.value)  # says which formats are accepted


def test_damaged_member_inside_a_torch_archive_is_refused(tmp_path, model):
    raw = bytearray(real_checkpoint_bytes(model))
    start = raw.index(b"data.pkl") + 40  # inside the pickle, with the zip directory intact
    raw[start : start + 40] = b"\x00" * 40
    (tmp_path / "bad.pt").write_bytes(bytes(raw))
    with pytest.raises(ModelLoadError, match=r"bad\.pt"):
        load_model(tmp_path / "bad.pt", input_shape=SHAPE)


# --- input shapes -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1x1x28x28", "1,1,28,28", "1 1 28 28", "(1, 1, 28, 28)", "1X1X28X28"])
def test_parse_input_shape_accepts_the_usual_spellings(text):
    assert parse_input_shape(text) == (1, 1, 28, 28)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not a shape"),
        ("1xax28", "not a shape"),
        ("1x-1x28", "not a shape"),
        ("1", "at least one more"),
        ("1x0x28x28", "positive"),
        ("8x1x28x28", r"batch must be 1: --input-shape 1x1x28x28"),
    ],
)
def test_parse_input_shape_refuses_junk(text, message):
    with pytest.raises(UsageError, match=message):
        parse_input_shape(text)


def test_given_shape_wins_over_the_recorded_one(tmp_path):
    flat = nn.Sequential(nn.Flatten(), nn.Linear(12, 2)).eval()
    torch.jit.save(torch.jit.script(flat), tmp_path / "m.ts", _extra_files={"edgebin.json": '{"input_shape": [1, 12]}'})
    assert load_model(tmp_path / "m.ts", input_shape=(1, 3, 4)).input_shape == (1, 3, 4)


@pytest.mark.parametrize("shape", [(1, 0, 8, 8), (1, -1, 8, 8), (), (1, 1.5, 8, 8)])
def test_non_positive_shapes_are_refused(tmp_path, model, shape):
    torch.jit.save(torch.jit.script(model), tmp_path / "model.ts")
    with pytest.raises(InputShapeError, match="positive"):
        load_model(tmp_path / "model.ts", input_shape=shape)


def test_wrong_rank_names_shape_complaint_and_fix(tmp_path, model, net_py):
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(InputShapeError, match=r"1x8x8 does not fit the model: expected 4D input.*--input-shape"):
        load_model(tmp_path / "weights.pt", arch=f"{net_py}:Net", input_shape=(1, 8, 8))


def test_torchscript_complaint_is_the_error_not_the_traceback(model):
    with pytest.raises(InputShapeError) as info:
        check_input_shape(torch.jit.script(model), (1, 3, 8, 8))
    assert "expected input[1, 3, 8, 8] to have 1 channels" in str(info.value)
    assert "Traceback" not in str(info.value)


def test_model_declared_shape_is_the_last_resort(tmp_path, model, fake_zoo):
    fake_zoo.create = lambda name, **kw: type("Declared", (TinyNet,), {"input_shape": SHAPE})(**kw)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    assert load_model(tmp_path / "weights.pt", arch="tiny").input_shape == SHAPE


# --- architectures ----------------------------------------------------------------------------------------


def test_resolve_arch_errors_name_the_problem(tmp_path, net_py, fake_zoo):
    with pytest.raises(UsageError, match=r"unknown --arch 'tinny' \(did you mean 'tiny'\?\); zoo models: tiny"):
        resolve_arch("tinny")
    with pytest.raises(UsageError, match=r"net\.py. defines no class 'Nett' \(did you mean 'Net'\?\)"):
        resolve_arch(f"{net_py}:Nett")
    with pytest.raises(UsageError, match=r"no such file: .*missing\.py"):
        resolve_arch(f"{tmp_path / 'missing.py'}:Net")
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\nraise RuntimeError('needs a GPU')\n")
    with pytest.raises(ModelLoadError, match=r"broken\.py. for --arch failed: RuntimeError: needs a GPU"):
        resolve_arch(f"{broken}:Net")
    with pytest.raises(ModelLoadError, match=r"could not build --arch .*net\.py:Net with \{'depth': 3\}"):
        resolve_arch(f"{net_py}:Net", depth=3)
    assert isinstance(resolve_arch(f"{net_py}:Net", width=2), nn.Module)


def test_real_zoo_models_load_from_a_checkpoint(tmp_path):
    zoo = pytest.importorskip("edgebin.zoo")
    if not hasattr(zoo, "names") or not zoo.names():
        pytest.skip("edgebin.zoo is not written yet")
    name = zoo.names()[0]
    module = zoo.create(name).eval()
    shape = getattr(module, "input_shape", None)
    if shape is None:
        pytest.skip(f"zoo model {name} declares no input_shape")
    save_checkpoint(tmp_path / "zoo.pt", module, arch=name, input_shape=tuple(shape))
    assert same_outputs(load_model(tmp_path / "zoo.pt").module, module, shape=tuple(shape))
