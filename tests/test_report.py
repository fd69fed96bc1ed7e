"""edgebin.report: the report.json contract, the Markdown and console renderings, atomic writing and reading."""

import dataclasses
import json
import os
from pathlib import Path

import pytest
from rich.console import Console

import edgebin.report as report_pkg
from edgebin.errors import UsageError
from edgebin.metrics import LatencyStat
from edgebin.report import (
    Accuracy,
    Agreement,
    Artefacts,
    Calibration,
    DatasetInfo,
    Environment,
    Fallback,
    Footprint,
    KernelInfo,
    Latency,
    LayerPrecision,
    MethodInfo,
    ModelInfo,
    Report,
    Sparsity,
    SparsitySet,
    TargetInfo,
    Timings,
    TrainingEpoch,
    read_report,
    render_markdown,
    summary_table,
    write_report,
)


def full_report(**changes) -> Report:
    report = Report(
        model=ModelInfo(path="models/resnet8.pt", arch="resnet8", format="state_dict", input_shape=(1, 1, 28, 28),
                        parameters=78042),
        target=TargetInfo(name="x86", kind="host", description="x86-64 host CPU"),
        method=MethodInfo(name="int8", weight_bits=8, activation_bits=8, calibration=Calibration("minmax", 512),
                          per_layer=(LayerPrecision("stem.conv", "conv2d", 8, 8, "int8", "int8"),
                                     LayerPrecision("head", "linear", None, None, None, "float"))),
        dataset=DatasetInfo("fashion-mnist", 10000, 512),
        accuracy=Accuracy(fp32=0.9123, compressed=0.9098, onnxruntime=0.9097, compiled=0.9096, samples=10000),
        agreement=Agreement(top1=0.9991, max_abs=0.0125, rmse=0.00125, cosine=0.99998, samples=10000),
        latency=Latency.from_stats([LatencyStat("pytorch-fp32", 1.6, 1.5, 1.7, 50),
                                    LatencyStat("onnxruntime-fp32", 0.8, 0.75, 0.9, 50),
                                    LatencyStat("edgebin-int8", 0.2, 0.18, 0.25, 50)], batch=1),
        footprint=Footprint(weights_bytes=1024, fp32_weights_bytes=4096, artefact_bytes=20480),
        kernels={"int8": 7, "float": 1, "data": 3},
        kernels_detail=(KernelInfo("fused_softmax", "float", ("softmax",)),),
        ops={"conv2d": {"int8xint8->int32": 7}},
        fallbacks=(Fallback("no int8 softmax kernel", kernel="fused_softmax"),),
        warnings=("calibration used 512 of 60000 samples",),
        environment=Environment(edgebin="0.1.0", python="3.11.7", date="2025-01-01T00:00:00+00:00"),
        timings_s=Timings(compress=12.5, export=1.25, compile=20.0, validate=4.0),
        artefacts=Artefacts("model.onnx", "model_fp32.onnx", "x86/model.so", "recipe.json"),
        command="edgebin compress models/resnet8.pt --target x86 --method int8 -o out/",
    )
    return dataclasses.replace(report, **changes)


def sparse_nupes_report() -> Report:
    """A run with WGSEF before NUPES: the sparsity section, per-layer exponents and a kernel with LUT weights."""
    sparsity = Sparsity(groups="filters", selection="wgsef", sparsity=0.5, shrunk=True, epochs=3, finetune_epochs=3,
                        lam=5.7, train_samples=30000, dense_accuracy=0.924, accuracy=0.9126, eval_samples=10000,
                        dense_parameters=78042, parameters=19762, nonzero_parameters=19762, dense_macs=9345920,
                        macs=2364864, seconds=300.0, source="models/resnet8_fashion.pt", checkpoint="model_sparse.pt",
                        sets=(SparsitySet("stem.conv+stack1.conv2", 16, 8), SparsitySet("stack3.conv1", 64, 32)),
                        history=(TrainingEpoch(1, phase="qat", eval_accuracy=0.9),))
    per_layer = (LayerPrecision("stem.conv", "conv2d", 8, 8, "int8", "int8"),
                 LayerPrecision("stack1.conv1", "conv2d", 4, 8, "nupes", "int8", exponent=0.625))
    return full_report(sparsity=sparsity, accuracy=Accuracy(fp32=0.9126, compiled=0.91, samples=10000),
                       method=MethodInfo(name="nupes", weight_bits=4, activation_bits=8, per_layer=per_layer),
                       kernels_detail=(KernelInfo("conv0", "lut4", ("conv2d",), weights="lut4"),
                                       KernelInfo("conv1", "int8", ("conv2d",), weights="int8 (lut4)")))


def test_sparsity_exponents_and_lut_weights_reach_json_and_markdown():
    report = sparse_nupes_report()
    data = report.to_dict()
    assert Report.from_dict(json.loads(json.dumps(data))) == report
    assert data["sparsity"]["sets"][1] == {"name": "stack3.conv1", "groups": 64, "kept": 32, "removed": 32}
    assert data["method"]["per_layer"][1]["exponent"] == 0.625 and data["method"]["per_layer"][0]["exponent"] is None
    assert data["kernels_detail"][1]["weights"] == "int8 (lut4)"
    text = render_markdown(report)
    assert "## Structured sparsity" in text and "50.00% of the filters removed in every set" in text
    assert "| Dense (`models/resnet8_fashion.pt`) | 92.40% | 78,042 | 9,345,920 |" in text
    # by hand: 91.26 - 92.40 = -1.14 pts; 78,042 / 19,762 = 3.95; 9,345,920 / 2,364,864 = 3.95
    assert "| Pruned | 91.26% (-1.14 pts) | 19,762 (3.95× fewer) | 2,364,864 (3.95× fewer) |" in text
    assert "| `stack3.conv1` | 64 | 32 | 32 |" in text and "were removed: `model_sparse.pt`" in text
    assert "| FP32 (PyTorch), dense: before pruning | 92.40% | +1.14 pts |" in text
    assert "| Layer | Op | Weight bits | Activation bits | Method | Kind | Exponent |" in text
    assert "| `stack1.conv1` | conv2d | 4 | 8 | nupes | int8 | 0.625 |" in text
    assert "| `stem.conv` | conv2d | 8 | 8 | int8 | int8 | — |" in text
    assert "1 run them expanded to int8 (`conv1`)" in text
    zeroed = dataclasses.replace(report.sparsity, groups="shapes", shrunk=False, parameters=78042,
                                 nonzero_parameters=40000, macs=9345920)
    text = render_markdown(dataclasses.replace(report, sparsity=zeroed))
    assert "stay in place as zeros" in text
    assert "| Pruned | 91.26% (-1.14 pts) | 78,042 (40,000 nonzero) | 9,345,920 |" in text
    with pytest.raises(ValueError, match=r"sparsity\.sparsity: expected a fraction in \[0, 1\], got 50.0"):
        Report.from_dict({"schema_version": 1, "sparsity": {"sparsity": 50}})
    console = Console(record=True, width=120)
    console.print(summary_table(report))
    shown = console.export_text()
    assert "3.95× fewer" in shown and "-1.14 pts vs dense" in shown


def test_kernel_sections_copy_the_weights_form_of_table_coded_layers():
    from edgebin.pipeline import _kernel_sections

    kernels = [{"symbol": "k0", "name": "conv0", "kind": "lut4", "ops": ["conv2d"], "weights": "lut4"},
               {"symbol": "k1", "name": "conv1", "kind": "int8", "ops": ["conv2d"], "weights": "int8 (lut4)"},
               {"symbol": "k2", "kind": "int8"}]
    detail = _kernel_sections(kernels, {"ops": None})["kernels_detail"]
    assert [d.get("weights") for d in detail] == ["lut4", "int8 (lut4)", None]
    assert "weights" not in detail[2] and detail[2]["name"] == "k2"
    report = Report.from_dict({"schema_version": 1, "kernels_detail": detail})
    assert report.kernels_detail[1].weights == "int8 (lut4)"


def test_round_trip_through_json():
    report = full_report()
    assert Report.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    assert Report.from_dict(Report().to_dict()) == Report()


def test_report_json_has_the_documented_keys(tmp_path):
    write_report(full_report(), tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["schema_version"] == 1
    expected = {
        "model": {"path", "arch", "format", "input_shape", "parameters"},
        "target": {"name", "kind", "description"},
        "method": {"name", "weight_bits", "activation_bits", "calibration", "per_layer"},
        "dataset": {"name", "eval_samples", "calibration_samples"},
        "accuracy": {"fp32", "compressed", "onnxruntime", "compiled", "samples"},
        "agreement": {"top1", "max_abs", "rmse", "cosine", "samples", "reference"},
        "latency": {"unit", "threads", "batch", "engines", "speedup_vs"},
        "footprint": {"weights_bytes", "fp32_weights_bytes", "ratio", "artefact_bytes"},
        "environment": {"edgebin", "torch", "tvm", "onnxruntime", "python", "cpu", "date"},
        "timings_s": {"compress", "export", "compile", "validate"},
        "artefacts": {"onnx", "fp32_onnx", "library", "recipe"},
    }
    for section, keys in expected.items():
        assert keys <= set(data[section]), section
    assert {"kernels", "kernels_detail", "ops", "fallbacks", "warnings", "command"} <= set(data)
    assert data["method"]["calibration"] == {"method": "minmax", "samples": 512}
    assert set(data["method"]["per_layer"][0]) == {"layer", "op", "weight_bits", "activation_bits", "method", "kind",
                                                   "estimator", "exponent", "activation_exponent"}
    assert data["sparsity"]["groups"] is None and data["sparsity"]["sets"] == []  # no sparsity stage: all null
    assert data["latency"]["unit"] == "ms" and data["latency"]["threads"] == 1
    assert set(data["latency"]["engines"]["edgebin-int8"]) >= {"median_ms", "p10_ms", "p90_ms", "runs"}
    # by hand: baseline median / engine median = 0.8 / 0.2 and 0.8 / 1.6
    speedup = data["latency"]["speedup_vs"]["onnxruntime-fp32"]
    assert speedup["edgebin-int8"] == pytest.approx(4.0) and speedup["pytorch-fp32"] == pytest.approx(0.5)
    assert data["footprint"]["ratio"] == pytest.approx(4.0)  # 4096 / 1024
    assert data["kernels"] == {"int8": 7, "float": 1, "data": 3}
    assert data["kernels_detail"] == [{"name": "fused_softmax", "kind": "float", "ops": ["softmax"]}]
    assert data["fallbacks"] == [{"reason": "no int8 softmax kernel", "layer": None, "kernel": "fused_softmax"}]


def test_every_key_is_documented():
    docs = (Path(__file__).parents[1] / "docs" / "report.md").read_text()

    def keys(value, name=""):
        if name in ("kernels", "ops", "speedup_vs"):  # keyed by kind, op and engine names: data, not schema
            return
        if isinstance(value, dict):
            for key, sub in value.items():
                if name != "engines":  # engine names; their entries are schema
                    yield key
                yield from keys(sub, key)
        elif isinstance(value, list):
            for item in value:
                yield from keys(item, name)

    found = {k for report in (full_report(), sparse_nupes_report()) for k in keys(report.to_dict())}
    missing = sorted(k for k in found if f"`{k}`" not in docs)
    assert not missing, f"keys missing from docs/report.md: {missing}"


def test_markdown_shows_numbers_next_to_the_baseline():
    text = render_markdown(full_report())
    assert text.startswith("# edgebin report: resnet8 → x86 · int8\n")
    assert "| FP32 (PyTorch) | 91.23% | baseline |" in text
    assert "| Compiled (x86) | 90.96% | -0.27 pts |" in text  # 0.9096 - 0.9123
    lines = [line for line in text.splitlines() if line.startswith("| `")]
    engine_rows = [line for line in lines if "-fp32`" in line or "-int8`" in line]
    assert engine_rows[0].startswith("| `onnxruntime-fp32` | 0.800 |") and "1.00× (baseline)" in engine_rows[0]
    assert "| `edgebin-int8` | 0.200 | 0.180 | 0.250 | 50 | 4.00× |" in text
    assert "× vs onnxruntime-fp32" in text
    assert "| Weights, compressed | 1,024 B (1.0 KiB) |" in text
    assert "4.00× smaller" in text
    assert "**Float fallbacks: 1**" in text and "- kernel `fused_softmax`: no int8 softmax kernel" in text
    assert "| `head` | linear | — | — | — | float |" in text
    assert "```\nedgebin compress models/resnet8.pt" in text


def test_markdown_says_when_there_are_no_fallbacks():
    assert "\nFloat fallbacks: none\n" in render_markdown(full_report(fallbacks=()))
    assert "Float fallbacks: none recorded (not compiled)" in render_markdown(Report())


def test_nulls_render_as_a_dash():
    text = render_markdown(Report(accuracy=Accuracy(fp32=0.5)))
    assert "| FP32 (PyTorch) | 50.00% | baseline |" in text
    assert "| Compiled (target) | — | — |" in text
    assert "| Top-1 agreement | — |" in text
    assert "| compile | — |" in text


def test_markdown_escapes_table_pipes():
    report = full_report(method=MethodInfo(per_layer=(LayerPrecision("a|b"),)))
    assert "| `a\\|b` |" in render_markdown(report)


def test_console_summary_has_the_key_numbers():
    console = Console(record=True, width=120)
    console.print(summary_table(full_report()))
    text = console.export_text()
    for expected in ("91.23%", "-0.27 pts", "0.200 ms", "4.00×", "int8 7 · float 1 · data 3", "float fallbacks"):
        assert expected in text
    console.print(summary_table(Report()))  # an empty report renders too


def test_from_dict_is_strict_on_types_and_tolerant_of_missing_sections():
    data = full_report().to_dict()
    with pytest.raises(ValueError, match=r"report\.accuracy\.fp32: expected a number, got str"):
        Report.from_dict({**data, "accuracy": {"fp32": "0.91"}})
    with pytest.raises(ValueError, match=r"report\.model\.parameters: expected an integer, got bool"):
        Report.from_dict({**data, "model": {"parameters": True}})
    with pytest.raises(ValueError, match=r"report\.method\.per_layer\[0\]\.layer: missing"):
        Report.from_dict({**data, "method": {"per_layer": [{"op": "conv2d"}]}})
    with pytest.raises(ValueError, match=r"fraction in \[0, 1\], got 91.23 \(a percentage\?\)"):
        Report.from_dict({**data, "accuracy": {"fp32": 91.23}})
    with pytest.raises(ValueError, match="schema_version is 2; this edgebin reads 1"):
        Report.from_dict({**data, "schema_version": 2})
    partial = Report.from_dict({"schema_version": 1, "accuracy": None, "target": {"name": "x86"}, "future": 1})
    assert partial == Report(target=TargetInfo(name="x86"))


def test_non_finite_numbers_become_null_with_a_warning():
    data = Report(agreement=Agreement(max_abs=float("nan"))).to_dict()
    assert data["agreement"]["max_abs"] is None
    assert data["warnings"] == ["agreement.max_abs was nan; written as null"]
    json.dumps(data, allow_nan=False)


def test_write_report_leaves_only_the_two_files(tmp_path):
    json_path, md_path = write_report(full_report(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]
    assert md_path.read_text() == render_markdown(full_report())
    assert read_report(tmp_path) == full_report() == read_report(json_path)


def test_failed_render_writes_nothing(tmp_path, monkeypatch):
    def broken(report):
        raise RuntimeError("renderer bug")

    monkeypatch.setattr(report_pkg, "render_markdown", broken)
    with pytest.raises(RuntimeError):
        write_report(full_report(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_report(tmp_path, monkeypatch):
    write_report(full_report(command="first"), tmp_path)
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("report.json"):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_report(full_report(command="second"), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]  # no temp files
    assert read_report(tmp_path).command == "first"

    fresh = tmp_path / "fresh"
    with pytest.raises(OSError, match="disk full"):
        write_report(full_report(), fresh)
    assert not (fresh / "report.json").exists()
    assert [p.name for p in fresh.iterdir()] == ["report.md"]


def test_read_report_errors_say_what_to_run(tmp_path):
    with pytest.raises(UsageError, match=r"no report in .*out/: run `edgebin validate .*out/` first"):
        read_report(tmp_path / "out")
    (tmp_path / "report.json").write_text("{ not json")
    with pytest.raises(UsageError, match=r"report\.json is not valid JSON \(line 1"):
        read_report(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"schema_version": 1, "accuracy": {"fp32": "high"}}))
    with pytest.raises(UsageError, match=r"report\.accuracy\.fp32: expected a number"):
        read_report(tmp_path)
    assert UsageError.exit_code == 2


def test_microcontroller_sections_render_counts_not_times():
    from edgebin.report import Report
    from edgebin.report.markdown import render_markdown

    report = Report.from_dict({
        "schema_version": 1,
        "emulator": {"name": "qemu-system-arm -M mps2-an386", "samples": 1000, "instructions_per_inference": 3000,
                     "macs": 1000, "per_layer": [{"symbol": "k0", "instructions": 2000, "macs": 800, "layer": "c1"}]},
        "footprint": {"flash_bytes": 50_000, "board_flash_bytes": 100_000, "ram_bytes": 20_000,
                      "board_ram_bytes": 40_000, "arena_bytes": 9_000, "arena_lower_bound_bytes": 8_000},
        "agreement": {"exact": 0.999},
    })
    data = report.to_dict()
    assert data["emulator"]["instructions_per_mac"] == 3.0  # 3000 / 1000
    assert data["emulator"]["per_layer"][0]["instructions_per_mac"] == 2.5  # 2000 / 800
    text = render_markdown(report)
    assert "Instructions (emulator)" in text and "not time" in text
    assert "50.0% of the board" in text and "Bit-exact outputs" in text and "99.90%" in text
    assert Report.from_dict(data) == report


def test_board_sections_say_how_they_were_timed_next_to_fp32():
    from edgebin.report import Report
    from edgebin.report.markdown import render_markdown

    report = Report.from_dict({
        "schema_version": 1,
        "board": {"device": "rpc://pi:9090", "samples": 500, "ms_per_inference": 2.0, "fp32_ms_per_inference": 3.0,
                  "timer": "time-evaluator-median", "timed_runs": 50},
        "accuracy": {"fp32": 0.9, "compiled": 0.9, "compiled_fp32": 0.89},
        "agreement": {"top1": 1.0, "fp32_top1": 0.999, "fp32_max_abs": 1e-6},
        "footprint": {"artefact_bytes": 6_000_000, "runtime_bytes": 5_000_000},
    })
    text = render_markdown(report)
    assert "time_evaluator on the board" in text and "median of 50 runs" in text
    assert "3.000 (1.50× the compressed model's)" in text  # by hand: 3.0 / 2.0
    assert "FP32 compiled (" in text and "89.00%" in text and "-1.00 pts" in text and "99.90%" in text
    assert "of which the TVM runtime" in text and "Not timed on this machine" in text
    with pytest.raises(ValueError, match="fp32_top1: expected a fraction"):
        Report.from_dict({"schema_version": 1, "agreement": {"fp32_top1": 99.9}})
