"""A W1A1 model compiled for the host: its binary convs run on packed bits (BinaryToPacked) and agree with
onnxruntime running the exported float graph."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import randomize_batch_norms  # pytest puts tests/ on sys.path (no __init__.py)

from edgebin import zoo
from edgebin.compile import host, importer
from edgebin.compile.binary import BinaryToPacked, uses_binary_kernels
from edgebin.compile.kernels import op_census
from edgebin.compile.mcu_manifest import layer_weights
from edgebin.compile.tvm_adapter import call_op_name
from edgebin.export.qat import export_qat
from edgebin.quant import Recipe, qat

SHAPE = (1, 1, 12, 12)
TARGET = {"kind": "llvm", "mcpu": "native", "num-cores": 1}
BINARY_CONVS = 8  # ResNet-8: stack{1,2,3}.conv{1,2} and the shortcuts of stacks 2 and 3; stem and head: 8-bit
FUSED_SHORTCUTS = 2  # on Cortex-M, stack2's and stack3's conv2 and shortcut run as one kernel


@pytest.fixture(scope="module")
def binary_onnx(tmp_path_factory):
    """A briefly trained W1A1 ResNet-8 (STE) exported for batch 1."""
    torch.manual_seed(0)
    model = qat.prepare(zoo.create("resnet8", input_size=SHAPE[-1]), Recipe.for_method("binary", estimator="ste"))
    x = torch.randn(32, *SHAPE[1:])
    qat.init_quantizers(model, x)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):  # BatchNorm statistics and scales move off their initial values
        loss = torch.nn.functional.cross_entropy(model(x), torch.randint(0, 10, (32,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = tmp_path_factory.mktemp("binary") / "model.onnx"
    export_qat(model.eval(), SHAPE, path)
    return path


@pytest.mark.parametrize("dense", [False, True])
def test_binary_to_packed_rewrites_every_binary_conv(binary_onnx, dense):
    model = importer.load_onnx(binary_onnx)
    mod = BinaryToPacked(dense=dense)(importer.from_onnx(model, importer.input_shapes(model)))
    assert uses_binary_kernels(mod)
    calls = [b for b in mod["main"].body.blocks[0].bindings
             if getattr(b.value, "args", None) and getattr(b.value.args[0], "name_hint", "").startswith(
                 "edgebin_binary_conv2d")]
    assert len(calls) == BINARY_CONVS - dense * FUSED_SHORTCUTS
    kinds = sorted(b.value.args[0].name_hint.rstrip("0123456789").removeprefix("edgebin_binary_conv2d")
                   for b in calls)
    # conv1 of each stack: BatchNorm and ReLU feed only conv2's sign, so it writes conv2's input bits (threshold
    # epilogue). Host kernels: conv2 with its BatchNorm, the residual add and the ReLU in its epilogue; the shortcuts
    # (a bias, no BatchNorm) with scale and bias as the affine epilogue. Dense (Cortex-M) kernels: stack1's conv2
    # writes its counts (its BatchNorm, the residual add and the ReLU go into the packing of stack2's input bits);
    # stack2's and stack3's conv2 with the shortcut and the add.
    if dense:
        assert kinds == ["_bits"] * 3 + ["_counts"] + ["_shortcut"] * FUSED_SHORTCUTS
    else:
        assert kinds == ["_affine", "_affine", "_bits", "_bits", "_bits", "_residual", "_residual", "_residual"]
        ops = Counter(call_op_name(b.value) for b in mod["main"].body.blocks[0].bindings)
        assert ops["relax.nn.relu"] == 1 and ops["relax.add"] == 1  # the stem's ReLU and the head's bias are left
    assert sum(op_census(mod)["conv2d"].values()) == 1  # only the 8-bit stem is still a Relax conv2d


def test_compiled_binary_model_agrees_with_onnxruntime(binary_onnx, tmp_path):
    artefact = host.compile_onnx(binary_onnx, TARGET, tmp_path)
    counts = artefact.kernel_counts()
    assert counts.get("binary", 0) >= 1 and counts["float"] >= 1  # BatchNorm, ReLU and the residual adds
    binary = [k for k in artefact.kernels if k["kind"] == "binary"]
    assert sum(k["calls"] for k in binary) == BINARY_CONVS
    x = np.random.default_rng(0).standard_normal((32, *SHAPE[1:])).astype(np.float32)
    session = ort.InferenceSession(str(binary_onnx), providers=["CPUExecutionProvider"])
    want = np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
    got = artefact.run(x)
    # The packed kernels' sums are exact; the float graph adds ±scale terms in float, so logits differ by float
    # rounding, and a sign can flip where a value sits exactly at its threshold: argmax agrees on all but rare ties.
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.95
    assert np.median(np.abs(got - want)) < 1e-3


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                    reason="needs qemu-system-arm and arm-none-eabi-gcc (make setup)")
def test_cortex_m4_bundle_runs_the_binary_convs_on_packed_bits(binary_onnx, tmp_path):
    from edgebin import targets
    from edgebin.compile.mcu_emit import compile_bundle
    from edgebin.runners import QemuRunner

    bundle = compile_bundle(binary_onnx, targets.load("cortex-m4"), tmp_path / "bundle")
    manifest = json.loads((bundle / "bundle.json").read_text())
    convs = [k for k in manifest["kernels"] if k["kind"] == "binary"]
    layers = [k["layer"].split(" + ") for k in convs if k["macs"] > 0 and k["layer"]]
    assert len(layers) == len(convs) and sum(map(len, layers)) == BINARY_CONVS  # "stack2.conv2 + stack2.shortcut"
    assert sorted(map(len, layers)) == [1] * (BINARY_CONVS - 2 * FUSED_SHORTCUTS) + [2] * FUSED_SHORTCUTS
    elements = layer_weights(onnx.load(str(binary_onnx)))  # packed at a bit a weight, twice in the paired kernel
    weights = [sum(elements[name] for name in names) for names in layers]
    assert all(n / 8 <= k["packed_weight_bytes"] <= n / 4 for k, n in zip(convs, weights, strict=True))
    kernels_c = (bundle / "kernels.c").read_text()
    assert '#include "edgebin_binary.h"' in kernels_c and (bundle / "edgebin_binary.h").is_file()
    runner = QemuRunner(targets.load("cortex-m4"), timeout_s=300)
    x = np.random.default_rng(1).standard_normal((4, *SHAPE[1:])).astype(np.float32)
    result = runner.run(runner.build(bundle, tmp_path / "fw"), x)
    session = ort.InferenceSession(str(binary_onnx), providers=["CPUExecutionProvider"])
    want = np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
    assert (result.outputs.argmax(1) == want.argmax(1)).all()
    assert np.median(np.abs(result.outputs - want)) < 1e-3


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                    reason="needs qemu-system-arm and arm-none-eabi-gcc (make setup)")
def test_mst_compression_gives_the_same_outputs_and_reports_the_work_it_saves(binary_onnx, tmp_path, caplog):
    from edgebin import targets
    from edgebin.compile.binary import mst_compression
    from edgebin.compile.mcu_emit import compile_bundle
    from edgebin.runners import QemuRunner

    runner = QemuRunner(targets.load("cortex-m4"), timeout_s=300)
    x = np.random.default_rng(2).standard_normal((2, *SHAPE[1:])).astype(np.float32)
    plain = compile_bundle(binary_onnx, targets.load("cortex-m4"), tmp_path / "plain")
    with mst_compression(), caplog.at_level("INFO", logger="edgebin.compile.binary"):
        tree = compile_bundle(binary_onnx, targets.load("cortex-m4"), tmp_path / "mst")
    assert "edgebin_bconv2d_dense_mst" in (tree / "kernels.c").read_text()
    assert sum("MST-compression" in r.message and "skipped" in r.message for r in caplog.records) == BINARY_CONVS
    outputs = [runner.run(runner.build(b, tmp_path / f"fw-{b.name}"), x).outputs for b in (plain, tree)]
    np.testing.assert_array_equal(outputs[0], outputs[1])  # bit-exact: the same integer sums


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                    reason="needs qemu-system-arm and arm-none-eabi-gcc (make setup)")
def test_w1a1_resnet8_at_28x28_fits_cortex_m4(tmp_path):
    # The headline model: its float residual tensors are 16x28x28x4 = 50,176 B each. Three of them were live at
    # once (150,528 B of arena); with the BatchNorm-ReLU epilogue fused into the stem and the residual add + ReLU
    # written over its conv input (in_place.py), two are, and the firmware fits the board's 128 KiB.
    from edgebin import targets
    from edgebin.compile.mcu_emit import compile_bundle
    from edgebin.runners import QemuRunner, check_fits

    shape = (1, 1, 28, 28)
    torch.manual_seed(0)
    model = qat.prepare(randomize_batch_norms(zoo.create("resnet8", input_size=28)),
                        Recipe.for_method("binary", estimator="ste"))
    qat.init_quantizers(model, torch.randn(16, *shape[1:]))
    export_qat(model.eval(), shape, tmp_path / "model.onnx")
    target = targets.load("cortex-m4")
    bundle = compile_bundle(tmp_path / "model.onnx", target, tmp_path / "bundle")
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["arena_bytes"] <= 50_176 + 16_384  # the skip tensor, stack1.conv2's counts (a byte each), bits
    # stack1's conv2 writes counts, its BatchNorm, residual add and ReLU go into the packing of stack2's input bits
    # (never written as floats); stack2's and stack3's adds into their conv + shortcut kernels, stack2's ReLU into
    # the packing's shift; stack3's ReLU, which the pooling reads, is written over its input
    kernels_c = (bundle / "kernels.c").read_text()
    assert set(re.findall(r"edgebin_bpack_\w+?__[0-9_]+", kernels_c)) == {
        "edgebin_bpack_nchw_f32__1_16_784", "edgebin_bpack_pair_add__1_16_28_28", "edgebin_bpack_nchw_f32__1_32_196"}
    assert len(set(re.findall(r"edgebin_bconv2d_slice_shortcut__[0-9_]+", kernels_c))) == FUSED_SHORTCUTS
    assert sum("in_place_of" in t for t in manifest["tensors"]) == 1
    runner = QemuRunner(target, timeout_s=300)
    elf = runner.build(bundle, tmp_path / "fw")
    x = np.random.default_rng(3).standard_normal((2, *shape[1:])).astype(np.float32)
    result = runner.run(elf, x)
    footprint = runner.footprint(elf, stack_bytes=result.stack_bytes)
    check_fits(footprint, target)  # DoesNotFitError otherwise; the stack high-water mark counted
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    want = np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
    assert (result.outputs.argmax(1) == want.argmax(1)).all()
    assert np.median(np.abs(result.outputs - want)) < 1e-3
