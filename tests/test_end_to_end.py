"""The whole job on real data: train a small CNN on scikit-learn's digits, then `edgebin compress` it to INT8
for the host and check the report against the issue's bars (accuracy, agreement, int8 kernels, size)."""

import json
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from edgebin.cli import main
from edgebin.data import load_dataset

DIGITS_NET = textwrap.dedent(
    """
    import torch
    from torch import nn


    class DigitsNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(1, 16, 3, padding=1)
            self.b1 = nn.BatchNorm2d(16)
            self.c2 = nn.Conv2d(16, 32, 3, padding=1, stride=2)
            self.b2 = nn.BatchNorm2d(32)
            self.c3 = nn.Conv2d(32, 32, 3, padding=1)
            self.b3 = nn.BatchNorm2d(32)
            self.fc = nn.Linear(32 * 4 * 4, 10)

        def forward(self, x):
            x = torch.relu(self.b1(self.c1(x)))
            x = torch.relu(self.b2(self.c2(x)))
            x = torch.relu(x + self.b3(self.c3(x)))
            return self.fc(torch.flatten(x, 1))
    """
)


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    """A DigitsNet trained for a few seconds on the digits training split, saved as a plain state_dict."""
    folder = tmp_path_factory.mktemp("digits")
    (folder / "digits_net.py").write_text(DIGITS_NET)
    namespace: dict = {}
    exec(compile(DIGITS_NET, "digits_net.py", "exec"), namespace)
    torch.manual_seed(0)
    model: nn.Module = namespace["DigitsNet"]()
    ds = load_dataset("digits")
    norm = ds.normalization()
    x = torch.from_numpy(norm.apply(ds.x_train))
    y = torch.from_numpy(ds.y_train)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(15):
        for idx in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    torch.save(model.state_dict(), folder / "digits.pt")
    return folder


def _run(args) -> int:
    try:
        return main([str(a) for a in args])
    except SystemExit as done:
        return done.code


@pytest.mark.slow
def test_compress_digits_to_int8_for_the_host(digits_model, capsys):
    out = digits_model / "out"
    args = ["compress", digits_model / "digits.pt", "--arch", f"{digits_model / 'digits_net.py'}:DigitsNet",
            "--input-shape", "1x1x8x8", "--data", "digits", "--target", "x86", "--method", "int8",
            "--calibration-samples", "256", "--repeat", "10", "-o", out]
    assert _run(args) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "Accuracy" in printed or "accuracy" in printed

    report = json.loads((out / "report.json").read_text())
    acc = report["accuracy"]
    assert acc["samples"] >= 300
    assert acc["fp32"] > 0.9, "the test model itself should have learned digits"
    assert acc["fp32"] - acc["compiled"] <= 0.01 + 1e-9
    assert acc["compressed"] is not None and acc["onnxruntime"] is not None
    assert report["agreement"]["top1"] >= 0.99
    assert report["footprint"]["weights_bytes"] <= 0.3 * report["footprint"]["fp32_weights_bytes"]
    assert report["kernels"].get("float", 0) == 0
    assert report["fallbacks"] == []
    conv_kinds = report["ops"]["conv2d"]
    assert set(conv_kinds) == {"uint8xint8->int32"} and sum(conv_kinds.values()) == 3
    assert set(report["ops"]["matmul"]) == {"uint8xint8->int32"}
    engines = report["latency"]["engines"]
    assert {"pytorch-fp32", "onnxruntime-fp32", "onnxruntime-int8", "tvm-fp32", "edgebin-int8"} <= set(engines)
    assert all(e["median_ms"] > 0 for e in engines.values())
    for name in ("model.onnx", "model_fp32.onnx", "recipe.json", "report.md", "x86/model.so", "x86/artefact.json"):
        assert (out / name).is_file(), name
    assert not list(out.parent.glob(".out.partial-*")), "staging folders must not be left behind"

    # The stages again, one command each, on the same folder: validate rewrites the report from the artefacts.
    assert _run(["validate", out, "--eval-samples", "100", "--repeat", "5"]) == 0
    again = json.loads((out / "report.json").read_text())
    assert again["accuracy"]["samples"] == 100 and again["accuracy"]["compressed"] is None
    logits = np.asarray(again["agreement"]["top1"])
    assert logits >= 0.99


@pytest.mark.slow
def test_compress_digits_for_cortex_m4_runs_on_qemu(digits_model, capsys):
    out = digits_model / "out-m4"
    args = ["compress", digits_model / "digits.pt", "--arch", f"{digits_model / 'digits_net.py'}:DigitsNet",
            "--input-shape", "1x1x8x8", "--data", "digits", "--target", "cortex-m4", "--eval-samples", "200",
            "-o", out]
    assert _run(args) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    acc, agreement, emulator = report["accuracy"], report["agreement"], report["emulator"]
    assert acc["samples"] == 200 and acc["fp32"] - acc["compiled"] <= 0.01 + 1e-9
    assert agreement["top1"] >= 0.99 and agreement["exact"] >= 0.99
    assert emulator["instructions_per_inference"] > 0 and emulator["macs"] > 0
    assert emulator["fp32_instructions_per_inference"] > 0
    assert sum(layer["instructions"] for layer in emulator["per_layer"]) <= emulator["instructions_per_inference"]
    fp = report["footprint"]
    assert 0 < fp["flash_bytes"] <= fp["board_flash_bytes"] and 0 < fp["ram_bytes"] <= fp["board_ram_bytes"]
    assert fp["arena_bytes"] <= 1.25 * fp["arena_lower_bound_bytes"]
    assert report["latency"]["engines"] == {}, "an emulator has no clock: no milliseconds may be reported"
    # The bundle builds with a plain `make`, no Python involved.
    bundle = out / "cortex-m4"
    proc = __import__("subprocess").run(["make", "-C", str(bundle)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (bundle / "libedgebin_model.a").is_file()


def test_a_model_too_big_for_the_board_fails_naming_the_overflow(digits_model, capsys, monkeypatch):
    import dataclasses

    from edgebin import targets

    real = targets.load("cortex-m4")
    tiny = dataclasses.replace(real, name="tiny-m4", flash_bytes=4096, description="a board with 4 KiB of flash")
    monkeypatch.setattr(targets, "load", lambda name: tiny if name == "tiny-m4" else real)
    out = digits_model / "out-tiny"
    args = ["compress", digits_model / "digits.pt", "--arch", f"{digits_model / 'digits_net.py'}:DigitsNet",
            "--input-shape", "1x1x8x8", "--data", "digits", "--target", "tiny-m4", "-o", out]
    code = _run(args)
    err = capsys.readouterr().err
    assert code == 2
    assert "flash" in err and "4,096" in err and "Traceback" not in err
    assert not (out / "tiny-m4").exists()
