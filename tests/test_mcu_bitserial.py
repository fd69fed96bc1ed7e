"""The Cortex-M bit-serial pass (mcu_bitserial): which layers it takes by the export metadata, what bundle.json says,
and that a bundle whose low-bit layers run bit-serial computes what the int8 bundle computes, bit for bit, on QEMU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from onnx import numpy_helper

from edgebin import targets, zoo
from edgebin.compile import bitserial, importer
from edgebin.compile.activation_codes import activation_codes, codes_of
from edgebin.compile.lut_weights import fingerprint
from edgebin.compile.mcu_bitserial import bitserial_kernels, check_mode, widened
from edgebin.compile.mcu_emit import compile_bundle
from edgebin.errors import UsageError
from edgebin.export.qat import export_qat
from edgebin.quant import Recipe, qat

SHAPE = (16, 1, 12, 12)
CORTEX_M4 = targets.load("cortex-m4")
QAT_CONVS = [f"stack{s}.{c}" for s in (1, 2, 3) for c in ("conv1", "conv2", "shortcut") if (s, c) != (1, "shortcut")]
needs_qemu = pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                                reason="needs qemu-system-arm and arm-none-eabi-gcc")


@pytest.fixture(scope="module")
def w2a2(tmp_path_factory):
    """A StatsQ W2A2 ResNet-8 (2-bit weights, 2-bit activations; stem and head 8-bit), its quantizers set on random
    data, exported: the path."""
    torch.manual_seed(0)
    model = qat.prepare(zoo.create("resnet8", input_size=SHAPE[-1]),
                        Recipe.for_method("statsq", weight_bits=2, activation_bits=2))
    qat.init_quantizers(model, torch.randn(SHAPE))
    model.eval()
    path = tmp_path_factory.mktemp("w2a2") / "model.onnx"
    export_qat(model, (1, *SHAPE[1:]), path)
    return path


@pytest.fixture(scope="module")
def bundles(w2a2, tmp_path_factory) -> dict:
    """{"on", "off", "auto"}: the W2A2 model's cortex-m4 bundle in each bit-serial mode."""
    directory = tmp_path_factory.mktemp("bitserial_bundles")
    return {mode: compile_bundle(w2a2, CORTEX_M4, directory / mode, bitserial=mode) for mode in ("on", "off", "auto")}


def _manifest(bundle) -> dict:
    return json.loads((bundle / "bundle.json").read_text())


def test_the_metadata_gives_each_qat_layer_its_input_code_range(w2a2):
    model = importer.load_onnx(w2a2)
    found = {c.layer: c for c in activation_codes(model)}
    assert set(QAT_CONVS) <= set(found)  # and the 8-bit (LSQ) stem and head
    layers = {rec["layer"]: rec for rec in json.loads(next(p.value for p in model.metadata_props
                                                               if p.key == "edgebin.layers"))}
    inits = {i.name: i for i in model.graph.initializer}
    for name, codes in found.items():
        act = layers[name]["activation"]
        assert (codes.qmin, codes.qmax) == (act["qmin"], act["qmax"])
        assert codes.qmax - codes.qmin == (3 if name in QAT_CONVS else 255)  # 2-bit codes; 8 bits
        assert codes.fingerprint == fingerprint(numpy_helper.to_array(inits[layers[name]["weight"]["codes"]]))
    assert codes_of(importer.from_onnx(model)) == activation_codes(model)  # carried on the Relax module


def test_bundle_json_says_which_layers_run_bit_serial_and_why_the_others_do_not(bundles):
    on, off, auto = (_manifest(bundles[m]) for m in ("on", "off", "auto"))
    assert "bitserial" not in off
    records = {r["layer"]: r for r in on["bitserial"]}
    assert set(QAT_CONVS) <= set(records)
    for name in QAT_CONVS:
        record = records[name]
        assert (record["form"], record["weight_planes"], record["activation_planes"], record["reason"]) == \
            ("bitserial", 2, 2, None)
    kinds = {k["layer"]: k["kind"] for k in on["kernels"] if k["macs"]}
    assert all(kinds[name] == "bitserial" for name in QAT_CONVS)
    assert "edgebin_bs_matvec" in (bundles["on"] / "kernels.c").read_text()
    assert (bundles["on"] / "edgebin_bitserial.h").is_file()
    # auto: 2 weight x 2 activation planes, 4 pairs: bit-serial only where a call takes one column, never for the
    # shortcuts' short reductions; every layer left to the int8 / LUT kernel says why
    chosen = {r["layer"]: r for r in auto["bitserial"]}
    assert set(chosen) == set(records)
    assert {r["form"] for r in chosen.values()} == {"bitserial", "int8"}  # both, so the QEMU test sees a mix
    for name, record in chosen.items():
        assert (record["form"] == "bitserial") == (record["reason"] is None), record
        if "shortcut" in name:
            assert record["reason"].startswith("K = "), record
        elif record["form"] == "int8":
            assert "2 weight x 2 activation planes at" in record["reason"] and "column(s) a call" in record["reason"]
    kinds = {k["layer"]: k["kind"] for k in auto["kernels"] if k["macs"]}
    assert {name for name, kind in kinds.items() if kind == "bitserial"} == \
        {name for name, r in chosen.items() if r["form"] == "bitserial"}


def test_bit_planes_take_two_bits_a_weight_as_the_lut2_codes_do(bundles):
    on, off = _manifest(bundles["on"]), _manifest(bundles["off"])
    # (output channels, weights per output channel) of each layer: two planes of ceil(k / 32) words a row
    shapes = {"stack1.conv1": (16, 144), "stack1.conv2": (16, 144), "stack2.conv1": (32, 144),
              "stack2.conv2": (32, 288), "stack2.shortcut": (32, 16), "stack3.conv1": (64, 288),
              "stack3.conv2": (64, 576), "stack3.shortcut": (64, 32)}
    records = {r["layer"]: r for r in on["bitserial"]}
    for name, (n, k) in shapes.items():
        assert records[name]["planes_bytes"] == n * 2 * ((k + 31) // 32) * 4, name
    params = sum(n * k for n, k in shapes.values())
    planes = sum(r["planes_bytes"] for r in on["bitserial"])
    assert params * 2 / 8 <= planes <= 1.05 * params * 2 / 8  # the rows' padding to whole words: 2 %
    # off: the weights as 2-bit palette codes (mcu_lut; stack2.shortcut's 512 save too little and stay int8)
    assert abs(on["weights_bytes"] - off["weights_bytes"]) <= 0.05 * off["weights_bytes"]
    assert {r["layer"]: r["form"] for r in off["lut_weights"] if r["layer"] in shapes} == {
        name: "int8" if name == "stack2.shortcut" else "lut2" for name in shapes}


def test_mode_names_are_checked_and_widened_forms_keep_their_values():
    with pytest.raises(UsageError, match="auto, on, off"):
        check_mode("fast")
    with pytest.raises(UsageError):
        with bitserial_kernels("yes"):
            pass
    form = bitserial.weight_form(np.array([-1, 1], np.int8))
    wide = widened(form, 3)
    assert (wide.planes, wide.beta, wide.coef) == (3, form.beta, (*form.coef, form.coef[0] * 2, form.coef[0] * 4))
    rows = np.array([[-1, 1, 1, -1]], np.int8)
    assert (bitserial.pack_planes(rows, wide)[1:] == 0).all()  # the added planes are zero bits


def test_edgebin_bitserial_names_a_bad_mode(w2a2, tmp_path):
    script = ("import sys; from edgebin.compile.mcu_emit import compile_bundle; from edgebin import targets; "
              "compile_bundle(sys.argv[1], targets.load('cortex-m4'), sys.argv[2])")
    done = subprocess.run([sys.executable, "-c", script, str(w2a2), str(tmp_path / "b")], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "EDGEBIN_BITSERIAL": "always"})
    assert done.returncode != 0 and "EDGEBIN_BITSERIAL" in done.stderr


@needs_qemu
def test_bit_serial_bundle_on_qemu_equals_the_int8_bundle(bundles, tmp_path):
    from edgebin.runners import QemuRunner

    runner = QemuRunner(CORTEX_M4, timeout_s=300)
    x = np.random.default_rng(3).standard_normal((4, *SHAPE[1:])).astype(np.float32)
    got = {mode: runner.run(runner.build(bundles[mode], tmp_path / mode), x, count_instructions=False).outputs
           for mode in ("on", "off", "auto")}
    np.testing.assert_array_equal(got["on"], got["off"])
    np.testing.assert_array_equal(got["auto"], got["off"])
    assert np.abs(got["on"]).max() > 0  # not two silent zeros
