"""The CLI's error paths: one line on stderr naming the problem, the documented exit code, no traceback, and
nothing half-written in the output folder."""

import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from edgebin.cli import main
from edgebin.loading import save_checkpoint
from edgebin.zoo import create


def run_cli(args, capsys) -> tuple[int, str]:
    """Run `edgebin ARGS` in-process; returns (exit code, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
        raise SystemExit(0)
    return exit_info.value.code, capsys.readouterr().err


@pytest.fixture
def lenet_checkpoint(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "lenet.pt"
    save_checkpoint(path, create("lenet5").eval(), arch="lenet5", input_shape=(1, 1, 28, 28),
                    normalization={"mean": [0.0], "std": [1.0]})
    return path


def _assert_one_clean_line(err: str, *needles: str) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:"), err
    for needle in needles:
        assert needle in err, (needle, err)


def test_missing_model_file_exits_3(tmp_path, capsys):
    out = tmp_path / "out"
    code, err = run_cli(["export", tmp_path / "nothere.pt", "--data", "digits", "-o", out], capsys)
    assert code == 3
    _assert_one_clean_line(err, "nothere.pt")
    assert not out.exists()


def test_truncated_model_file_exits_3(lenet_checkpoint, tmp_path, capsys):
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(lenet_checkpoint.read_bytes()[:100])
    code, err = run_cli(["export", bad, "-o", tmp_path / "out"], capsys)
    assert code == 3
    _assert_one_clean_line(err, "truncated.pt")


def test_text_file_is_not_a_model_exits_3(tmp_path, capsys):
    bad = tmp_path / "notes.pt"
    bad.write_text("these are not weights\n")
    code, err = run_cli(["export", bad, "-o", tmp_path / "out"], capsys)
    assert code == 3
    _assert_one_clean_line(err, "notes.pt")


def test_pickled_module_needs_trust_pickle_exits_4(tmp_path, capsys):
    path = tmp_path / "pickled.pt"
    torch.save(create("lenet5"), path)
    code, err = run_cli(["export", path, "-o", tmp_path / "out"], capsys)
    assert code == 4
    _assert_one_clean_line(err, "pickled.pt", "--trust-pickle")


def test_wrong_input_shape_exits_5(lenet_checkpoint, tmp_path, capsys):
    code, err = run_cli(["export", lenet_checkpoint, "--input-shape", "1x3x28x28", "-o", tmp_path / "out"], capsys)
    assert code == 5
    _assert_one_clean_line(err, "1, 3, 28, 28")


def test_data_shape_that_does_not_fit_the_model_exits_5(lenet_checkpoint, tmp_path, capsys):
    code, err = run_cli(["export", lenet_checkpoint, "--data", "digits", "-o", tmp_path / "out"], capsys)
    assert code == 5
    _assert_one_clean_line(err, "8")


def _onnx_with_unsupported_ops(path: Path) -> Path:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 3])
    nodes = [
        helper.make_node("Relu", ["input"], ["a"], name="first_relu"),
        helper.make_node("MyCustomOp", ["a"], ["b"], name="custom_layer", domain="com.example"),
        helper.make_node("Relu", ["b"], ["y"], name="last_relu"),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(path))
    return path


def test_unsupported_operator_is_named_with_its_layer_exits_6(tmp_path, capsys):
    path = _onnx_with_unsupported_ops(tmp_path / "custom.onnx")
    code, err = run_cli(["compile", path, "--target", "x86", "-o", tmp_path / "out"], capsys)
    assert code == 6
    _assert_one_clean_line(err, "MyCustomOp", "custom_layer")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("flag", "value", "valid"),
    [("--target", "cortex-m5", "x86"), ("--method", "int3", "int8"), ("--data", "cifar10", "fashion-mnist")],
)
def test_unknown_names_list_the_valid_ones_exit_2(lenet_checkpoint, tmp_path, capsys, flag, value, valid):
    code, err = run_cli(["compress", lenet_checkpoint, flag, value, "-o", tmp_path / "out"], capsys)
    assert code == 2
    _assert_one_clean_line(err, value, valid)
    assert not (tmp_path / "out").exists()


def test_missing_compiler_is_named_exits_7(tmp_path, capsys, monkeypatch):
    path = tmp_path / "relu.onnx"
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["y"])], "g", [x], [y])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    monkeypatch.setenv("CXX", "/nonexistent/bin/g++")
    code, err = run_cli(["compile", path, "-o", tmp_path / "out"], capsys)
    assert code == 7
    _assert_one_clean_line(err, "/nonexistent/bin/g++", "g++")


def test_validate_without_artefacts_says_what_to_run(tmp_path, capsys):
    code, err = run_cli(["validate", tmp_path], capsys)
    assert code == 2
    _assert_one_clean_line(err, "edgebin export")


def test_report_without_a_run_says_what_to_run(tmp_path, capsys):
    code, err = run_cli(["report", tmp_path], capsys)
    assert code == 2
    _assert_one_clean_line(err, "validate")


def test_targets_and_help_work_from_python_dash_m():
    proc = subprocess.run([sys.executable, "-m", "edgebin", "targets"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "x86" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "edgebin", "compress", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "Example" in proc.stdout and "--trust-pickle" in proc.stdout


def test_user_error_in_a_subprocess_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgebin", "export", str(tmp_path / "none.pt")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr and "none.pt" in proc.stderr


def test_bad_flags_are_usage_errors_exit_2(capsys):
    code, err = run_cli(["compress", "--bogus"], capsys)
    assert code == 2 and "No such option" in err and "Traceback" not in err
    code, err = run_cli(["compress", "model.pt", "--calibration-samples", "0"], capsys)
    assert code == 2 and "--calibration-samples" in err


def test_device_url_must_be_serial(tmp_path, capsys):
    from edgebin.runners.serial import parse_device_url

    with pytest.raises(Exception, match="serial://"):
        parse_device_url("tcp://10.0.0.1")
