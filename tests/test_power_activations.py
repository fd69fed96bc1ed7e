"""NUPES low-bit and power-grid activations (edgebin.quant.power_act): the uint8 -> uint8 table's algebra, the
exponent search, the ONNX form onnxruntime runs, and the compiled host model that equals it bit for bit."""

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from test_nupes import SHAPE, _calibration, _frozen, _nupes, export_tiny_with_cli, report_of

from edgebin.export import export_onnx
from edgebin.quant.nupes import quantize_nupes
from edgebin.quant.power_act import activation_table, count_inputs, quantize_activations, search_table, table_error

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CODES = np.arange(256)
CASES = [(zp, bits, a, signed) for zp in (0, 37, 128) for bits in (2, 3, 4, 8) for a in (0.3, 0.55, 1.0)
         for signed in (False, True)]


def test_exponent_one_at_8_bits_is_the_identity_on_unsigned_codes():
    np.testing.assert_array_equal(activation_table(0, 8, 1.0, signed=False), CODES)


def test_exponent_one_is_uniform_b_bit_quantization_of_the_code():
    # r = u - zp in [0, 255 - zp]: q = round(N·r/M), value round(M·q/N), by hand for zp = 5, b = 2 (N = 3, M = 250)
    table = activation_table(5, 2, 1.0, signed=False).astype(int)
    assert sorted(set(table)) == [5, 5 + 83, 5 + 167, 255]
    assert table[5 + 41] == 5 and table[5 + 42] == 88 and table[255] == 255 and table[0] == 5


@pytest.mark.parametrize(("zp", "bits", "a", "signed"), CASES)
def test_table_is_idempotent_monotone_keeps_zero_and_has_at_most_the_grid_levels(zp, bits, a, signed):
    table = activation_table(zp, bits, a, signed)
    assert table.dtype == np.uint8 and table.shape == (256,)
    np.testing.assert_array_equal(table[table], table)  # quantizing twice changes nothing
    assert np.all(np.diff(table.astype(int)) >= 0)
    assert table[zp] == zp  # the real 0 stays exact: ReLU and zero padding commute with the table
    n = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    assert np.unique(table).size <= (2 * n + 1 if signed else n + 1)


def test_power_levels_are_denser_near_zero():
    levels = np.unique(activation_table(0, 4, 0.5, signed=False)).astype(int)
    assert levels.size == 16 and levels[0] == 0 and levels[-1] == 255
    gaps = np.diff(levels)
    assert gaps[0] < gaps[-1] and np.all(np.diff(gaps) >= -1)  # widening, up to the uint8 rounding
    # level k = round(255·(k/15)^2): by hand for k = 1, 2, 14
    assert (levels[1], levels[2], levels[14]) == (1, 5, 222)


def test_search_prefers_a_power_grid_for_skewed_activations_and_uniform_when_asked():
    rng = np.random.default_rng(0)
    codes = np.clip(np.round(rng.exponential(12.0, 200_000)), 0, 255).astype(int)
    hist = np.bincount(codes, minlength=256)
    a, signed, table = search_table(hist, 0, 3, power=True)
    assert 0.25 <= a < 0.9 and not signed
    assert table_error(hist, table) < 0.7 * table_error(hist, activation_table(0, 3, 1.0, False))
    assert search_table(hist, 0, 3, power=False)[0] == 1.0
    flat = np.full(256, 1000)
    assert search_table(flat, 0, 3, power=True)[0] == pytest.approx(1.0, abs=0.05)  # uniform data, uniform grid
    assert search_table(np.bincount([3, 200, 250], minlength=256), 100, 4, power=True)[1]  # codes below zp: signed


def _fitted(tiny_resnet, **fields):
    recipe = _nupes(weight_bits=4, iterations=0, **fields)
    gm = _frozen(tiny_resnet, recipe)
    tables = quantize_activations(gm, recipe, _calibration())
    quantize_nupes(gm, recipe, _calibration())
    return gm, recipe, tables


def test_tables_go_on_the_inputs_of_nupes_layers_but_not_the_network_input(tiny_resnet):
    gm, recipe, tables = _fitted(tiny_resnet, activation_bits=3, power_activations=True)
    assert count_inputs(gm, recipe) == 3
    assert [t.layers for t in tables] == [("c1",), ("c2",), ("fc",)]
    assert all(t.bits == 3 and t.levels <= 8 and 0.25 <= t.exponent <= 1 for t in tables)
    first = next(n for n in gm.graph.nodes if n.op == "call_module" and n.args[0].op == "placeholder")
    assert gm.get_submodule(first.target).table is None
    assert count_inputs(gm, _nupes()) == 0  # A8 uniform: nothing to fit


def test_onnx_has_the_lookup_and_onnxruntime_agrees_with_pytorch(tiny_resnet, tmp_path):
    gm, _, tables = _fitted(tiny_resnet, activation_bits=4, power_activations=True)
    path = tmp_path / "model.onnx"
    export_onnx(gm, SHAPE, path)
    model = onnx.load(str(path))
    producer = {out: node for node in model.graph.node for out in node.output}
    gathers = [n for n in model.graph.node if n.op_type == "Gather"]
    assert len(gathers) == len(tables) == 3
    for gather in gathers:
        cast = producer[gather.input[1]]
        assert cast.op_type == "Cast" and producer[cast.input[0]].op_type == "QuantizeLinear"
        table = next(i for i in model.graph.initializer if i.name == gather.input[0])
        assert onnx.numpy_helper.to_array(table).dtype == np.uint8
    x = _calibration(16, seed=3)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        want = gm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_compiled_host_model_looks_up_in_integers_and_equals_onnxruntime(tiny_resnet, tmp_path):
    from edgebin.compile import host

    gm, _, _ = _fitted(tiny_resnet, activation_bits=4, power_activations=True)
    path = tmp_path / "model.onnx"
    export_onnx(gm, SHAPE, path)
    artefact = host.compile_onnx(Path(path), {"kind": "llvm", "num-cores": 1}, tmp_path / "host")
    counts = artefact.kernel_counts()
    assert counts["float"] == 0
    assert any(k["ops"] == ["take"] for k in artefact.kernels)  # the table lookup, on uint8 codes
    x = _calibration(32, seed=4)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
    np.testing.assert_array_equal(artefact.run(x), want)


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                    reason="qemu-system-arm or arm-none-eabi-gcc not installed; run make setup")
def test_cortex_m4_bundle_looks_up_in_integers_and_equals_onnxruntime_on_qemu(tiny_resnet, tmp_path):
    from edgebin import targets
    from edgebin.compile.mcu_emit import compile_bundle
    from edgebin.runners import QemuRunner

    gm, _, _ = _fitted(tiny_resnet, activation_bits=3, power_activations=True)
    path = tmp_path / "model.onnx"
    export_onnx(gm, SHAPE, path)
    target = targets.load("cortex-m4")
    bundle = compile_bundle(path, target, tmp_path / "bundle")
    kinds = {k["kind"] for k in json.loads((bundle / "bundle.json").read_text())["kernels"]}
    assert "float" not in kinds
    runner = QemuRunner(target, timeout_s=300)
    x = _calibration(6, seed=5)
    got = runner.run(runner.build(bundle, tmp_path / "run"), x, count_instructions=False).outputs
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])
    np.testing.assert_array_equal(got.reshape(want.shape), want)


def test_cli_export_records_each_input_grid_and_the_report_shows_it(tmp_path, capsys):
    from edgebin.report import render_markdown

    out = export_tiny_with_cli(tmp_path, capsys, "--bits", "4", "--act-bits", "4", "--power-activations",
                               "--iterations", "5")
    run_info = json.loads((out / "recipe.json").read_text())
    assert run_info["recipe"]["default"]["activation_bits"] == 4
    assert run_info["recipe"]["default"]["power_activations"] is True
    weighted = {r["layer"]: r for r in run_info["layers"] if r["op"] in ("conv2d", "linear")}
    assert weighted["stem"]["activation_bits"] == 8 and "activation_exponent" not in weighted["stem"]
    assert all(weighted[n]["activation_bits"] == 4 and 0.25 <= weighted[n]["activation_exponent"] <= 1
               and weighted[n]["activation_levels"] <= 16 for n in ("c1", "c2", "fc"))
    assert sum(n.op_type == "Gather" for n in onnx.load(str(out / "model.onnx")).graph.node) == 3 + 4  # + weights
    report = report_of(out, run_info, np.zeros((2, 1, 8, 8), dtype=np.float32))
    shown = {p.layer: p.activation_exponent for p in report.method.per_layer if p.activation_exponent is not None}
    assert set(shown) == {"c1", "c2", "fc"}
    assert "| Exponent | Input exponent |" in render_markdown(report)
