"""The Cortex-M C bundle, checked on this machine: built with gcc, run, and compared with onnxruntime.

Models: the conftest TinyResNet (stem conv-BN-ReLU, max-pool, residual block, global average pool, linear), once
INT8 through edgebin's own pipeline (capture, quantize, calibrate, export QDQ) and once exported in FP32.
The int8 bundle must equal onnxruntime bit for bit: same int8 activations (fixed-point requant rounds like
onnxruntime on these models), and the logits come out of the same float multiply. The FP32 bundle may differ by
float summation order only. Cross compilation for the Cortex-M4 is compile-only here (QEMU runs are elsewhere).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import TinyResNet, randomize_batch_norms  # pytest puts tests/ on sys.path (no __init__.py)

from edgebin.capture import capture_graph
from edgebin.compile import compile_onnx, requant
from edgebin.compile.mcu_emit import build_library, clean_kernels_source, compile_bundle, workspace_bytes
from edgebin.compile.mcu_graph import read_graph
from edgebin.compile.mcu_manifest import match_layers
from edgebin.compile.tvm_adapter import relax
from edgebin.errors import UnsupportedOpsError, UsageError
from edgebin.export import export_onnx
from edgebin.loading import LoadedModel
from edgebin.quant import Recipe, calibrate, freeze, quantize_graph

SHAPE = (1, 1, 28, 28)
CORTEX_M4 = {"name": "cortex-m4", "tvm": {"kind": "c"}, "opt": "-O3",
             "cflags": ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]}
N_INPUTS = 64

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None, reason="no gcc/make")
needs_arm = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="no arm-none-eabi-gcc")

MAIN_C = r"""
#include <stdio.h>
#include "model.h"
/* Reads float32 inputs from argv[1] until EOF, writes float32 outputs to argv[2]. */
int main(int argc, char** argv) {
  static float in[EDGEBIN_INPUT_ELEMS], out[EDGEBIN_OUTPUT_ELEMS];
  FILE* fi = fopen(argv[1], "rb");
  FILE* fo = fopen(argv[2], "wb");
  if (argc != 3 || !fi || !fo) return 2;
  while (fread(in, sizeof(float), EDGEBIN_INPUT_ELEMS, fi) == EDGEBIN_INPUT_ELEMS) {
    int err = edgebin_model_run(in, out);
    if (err != 0) return 10 - err;
    fwrite(out, sizeof(float), EDGEBIN_OUTPUT_ELEMS, fo);
  }
  fclose(fi);
  fclose(fo);
  return 0;
}
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """{"int8": QDQ ONNX from edgebin's pipeline, "fp32": the same network in float}."""
    directory = tmp_path_factory.mktemp("mcu_models")
    torch.manual_seed(0)
    model = randomize_batch_norms(TinyResNet())
    gm = capture_graph(LoadedModel(module=model, input_shape=SHAPE, source=Path("tiny.pt"), format="state-dict"))
    summary = quantize_graph(gm, Recipe())
    calibrate(gm, np.random.default_rng(0).standard_normal((64, *SHAPE[1:]), dtype=np.float32))
    freeze(gm)
    export_onnx(gm, SHAPE, directory / "int8.onnx", metadata={"edgebin.method": "int8"},
                layers=[r.to_dict() for r in summary.layers])
    torch.onnx.export(model, torch.randn(*SHAPE), str(directory / "fp32.onnx"), opset_version=17, dynamo=False,
                      input_names=["input"], output_names=["logits"])
    return {"int8": directory / "int8.onnx", "fp32": directory / "fp32.onnx"}


@pytest.fixture(scope="module")
def bundles(models, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bundles")
    return {name: compile_bundle(path, CORTEX_M4, out / name) for name, path in models.items()}


def _run_native(bundle: Path, x: np.ndarray, tmp_path: Path) -> np.ndarray:
    """Build the bundle with gcc for this machine, link a test main, run it on `x`."""
    work = tmp_path / bundle.name
    shutil.copytree(bundle, work)
    library = build_library(work, host=True)
    (work / "main.c").write_text(MAIN_C)
    exe = work / "model_test"
    subprocess.run(["gcc", "-O2", f"-I{work}", str(work / "main.c"), str(library), "-lm", "-o", str(exe)],
                   check=True, timeout=120)
    x.astype(np.float32).tofile(work / "in.bin")
    subprocess.run([str(exe), str(work / "in.bin"), str(work / "out.bin")], check=True, timeout=120)
    return np.fromfile(work / "out.bin", np.float32).reshape(len(x), -1)


def _onnxruntime(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {"input": x[i : i + 1]})[0] for i in range(len(x))])


def _inputs(n: int = N_INPUTS) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((n, *SHAPE[1:])).astype(np.float32)


@needs_gcc
def test_int8_bundle_equals_onnxruntime(models, bundles, tmp_path):
    x = _inputs()
    ours, ref = _run_native(bundles["int8"], x, tmp_path), _onnxruntime(models["int8"], x)
    assert ours.shape == ref.shape == (N_INPUTS, 10)
    np.testing.assert_array_equal(ours, ref)  # measured: bit-exact on all inputs
    assert (ours.argmax(1) == ref.argmax(1)).mean() >= 0.99


@needs_gcc
def test_int8_bundle_equals_the_host_build_with_the_same_requant(models, bundles, tmp_path):
    """Independent of how QdqToInt8 rounds: the C graph computes exactly what TVM's own VM build computes."""
    x = _inputs(16)
    host = compile_onnx(models["int8"], {"kind": "llvm", "mcpu": "native", "num-cores": 1}, tmp_path / "host",
                        requant="fixed")
    np.testing.assert_array_equal(_run_native(bundles["int8"], x, tmp_path), host.run(x))


@needs_gcc
def test_fp32_bundle_matches_onnxruntime(models, bundles, tmp_path):
    x = _inputs()
    ours, ref = _run_native(bundles["fp32"], x, tmp_path), _onnxruntime(models["fp32"], x)
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)  # measured: 5e-7 (summation order)


def test_bundle_has_the_documented_layout(bundles):
    bundle = bundles["int8"]
    for name in ("model.h", "model.c", "kernels.c", "runtime.c", "Makefile", "README.md", "bundle.json",
                 "include/tvm/ffi/c_api.h", "include/dlpack/dlpack.h", "include/tvm/runtime/c_backend_api.h"):
        assert (bundle / name).is_file(), name
    header = (bundle / "model.h").read_text()
    assert "int edgebin_model_run(const float* input, float* output);" in header
    assert re.search(r"#define EDGEBIN_INPUT_ELEMS 784\b", header)
    assert re.search(r"#define EDGEBIN_OUTPUT_ELEMS 10\b", header)
    assert re.search(r"#define EDGEBIN_INPUT_SCALE [0-9.e-]+f", header)
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["input"] == {"name": "input", "shape": [1, 1, 28, 28], "dtype": "float32"}
    assert manifest["output"]["shape"] == [1, 10] and manifest["requant"] == "fixed"
    assert re.search(rf"#define EDGEBIN_ARENA_BYTES {manifest['arena_bytes']}\b", header)
    convs = [k for k in manifest["kernels"] if k["macs"]]
    # by hand: stem 8x28x28 outputs x 9 taps; c1, c2 8x14x14 x 72; fc 10 x 8
    assert [(k["layer"], k["macs"]) for k in convs] == [("stem", 56448), ("c1", 112896), ("c2", 112896), ("fc", 80)]
    source = (bundle / "kernels.c").read_text()
    assert all(f"{k['symbol']}(" in source for k in manifest["kernels"])
    assert manifest["workspace_bytes"] == 0 and "TVMBackendAllocWorkspace" not in source  # the schedule removed them


def test_arena_is_planned_near_the_lower_bound(bundles):
    for bundle in bundles.values():
        manifest = json.loads((bundle / "bundle.json").read_text())
        assert manifest["arena_bytes"] <= 1.25 * manifest["arena_lower_bound_bytes"]
        spans = manifest["tensors"]
        for a in spans:  # tensors live at the same call never share bytes, but for an output written in place
            for b in spans:
                if a.get("in_place_of") == b["name"]:  # over an input that dies at the call writing it
                    assert a["offset"] == b["offset"] and a["first_call"] == b["last_call"]
                elif a is not b and b.get("in_place_of") != a["name"] and a["first_call"] <= b["last_call"] \
                        and b["first_call"] <= a["last_call"]:
                    assert a["offset"] + a["bytes"] <= b["offset"] or b["offset"] + b["bytes"] <= a["offset"]


def test_fp32_residual_add_and_relu_write_over_an_input(bundles):
    # The FP32 TinyResNet's residual add (+ ReLU) reads its two float inputs element by element, and both die
    # there: its output takes the bytes of one of them (in_place.py). test_fp32_bundle_matches_onnxruntime runs it.
    manifest = json.loads((bundles["fp32"] / "bundle.json").read_text())
    writers = [manifest["kernels"][t["first_call"]] for t in manifest["tensors"] if "in_place_of" in t]
    assert any("add" in k["ops"] and "relu" in k["ops"] for k in writers), [k["name"] for k in writers]
    assert "restrict" not in (bundles["fp32"] / "kernels.c").read_text()  # aliased pointers are plain C


def test_weights_are_int8_with_int32_bias_and_requant_params(models, bundles):
    model = onnx.load(str(models["int8"]))
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    dequantized = {n.output[0]: init[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear"
                   and n.input[0] in init}
    linears = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm")]
    weights = [dequantized[n.input[1]] for n in linears]
    biases = [dequantized[n.input[2]] for n in linears]
    assert all(w.dtype == np.int8 for w in weights) and all(b.dtype == np.int32 for b in biases)
    channels = sum(b.size for b in biases)
    expected = sum(w.size for w in weights) + 4 * channels + 8 * channels  # + an int64 multiplier per channel
    emitted = json.loads((bundles["int8"] / "bundle.json").read_text())["weights_bytes"]
    assert abs(emitted - expected) <= 0.1 * expected  # measured: 1672 vs 1712 (the logits' scales are float32)


@needs_arm
def test_bundle_cross_compiles_for_cortex_m4(bundles, tmp_path):
    work = tmp_path / "m4"
    shutil.copytree(bundles["int8"], work)
    library = build_library(work)  # the Makefile's defaults: arm-none-eabi-gcc with the target's CPU flags
    assert library.is_file()
    header = subprocess.run(["arm-none-eabi-objdump", "-f", str(work / "model.o")], capture_output=True,
                            text=True, check=True, timeout=60).stdout
    assert "elf32-littlearm" in header


@needs_arm
def test_int8_kernels_use_no_float_but_at_the_input_and_output(bundles, tmp_path):
    """Built soft-float for a core without an FPU, only the input quantize and the logits' dequantize call the
    float emulation routines; every conv, matmul, add, pool and requant kernel is integer-only."""
    bundle = bundles["int8"]
    obj = tmp_path / "kernels_soft.o"
    subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m0plus", "-mthumb", "-mfloat-abi=soft",
                    "--specs=picolibc.specs", "-O3", "-ffunction-sections", f"-I{bundle / 'include'}", "-c",
                    str(bundle / "kernels.c"), "-o", str(obj)], check=True, timeout=120)
    dump = subprocess.run(["arm-none-eabi-objdump", "-dr", str(obj)], capture_output=True, text=True, check=True,
                          timeout=60).stdout
    float_users, function = set(), None
    for line in dump.splitlines():
        if match := re.match(r"^[0-9a-f]+ <(\w+)>:$", line):
            function = match.group(1)
        elif re.search(r"R_ARM_THM_CALL\s+(__aeabi_[fd]\w*|__aeabi_[iu]2[fd]|\w*f)$", line):
            float_users.add(function)
    kernels = json.loads((bundle / "bundle.json").read_text())["kernels"]
    first, last = kernels[0], kernels[-1]
    assert first["ops"][0] == "quantize" and last["layer"] == "fc"
    assert float_users == {first["symbol"], last["symbol"]}


@needs_arm
def test_requant_epilogues_multiply_and_add_in_one_smlal(bundles, tmp_path):
    """mcu_lower binds the fixed requant's t = acc * grid + addend once (requant.let_bound_requant): every conv's
    epilogue is one SMLAL per output on a Cortex-M4, not SMULL, ADDS and ADC."""
    bundle = bundles["int8"]
    obj = tmp_path / "kernels_m4.o"
    subprocess.run(["arm-none-eabi-gcc", *CORTEX_M4["cflags"], "--specs=picolibc.specs", "-O3", f"-I{bundle}",
                    f"-I{bundle / 'include'}", "-c", str(bundle / "kernels.c"), "-o", str(obj)], check=True,
                   timeout=120)
    dump = subprocess.run(["arm-none-eabi-objdump", "-d", str(obj)], capture_output=True, text=True, check=True,
                          timeout=60).stdout
    functions = dict(re.findall(r"^[0-9a-f]+ <(\w+)>:\n(.*?)(?:\n\n|\Z)", dump, re.S | re.M))
    convs = [k["symbol"] for k in json.loads((bundle / "bundle.json").read_text())["kernels"] if "conv2d" in k["ops"]]
    assert len(convs) == 3
    for symbol in convs:
        assert "smlal" in functions[symbol] and "smull" not in functions[symbol], symbol


def test_near_tie_rounding_with_a_zero_point_and_a_low_word_window():
    """round_f32_half_even with `plus` (a zero point folded into t) and e > 32, where the near-tie test reads t's
    low word only (requant.near_window): the values that test lets in besides the near ties round exactly too."""
    rng = np.random.default_rng(5)
    for e in (33, 38, 43):  # |p| < 2**53: exact in float64
        reach = requant.tie_reach(e)
        q = rng.integers(-256, 256, 20_000)
        near_ties = ((2 * q + 1) << (e - 1)) + rng.integers(-4 * reach, 4 * reach, q.size)
        # t mod 2**32 <= 2 reach while t mod 2**e is not: the wider test's extra values
        low_word = (rng.integers(-2**(e - 32 + 8), 2**(e - 32 + 8), q.size) << 32) - (1 << (e - 1)) - reach \
            + rng.integers(0, 2 * reach + 1, q.size)
        for p in (near_ties, low_word, rng.integers(-2**(e + 8), 2**(e + 8), q.size)):
            expected = np.rint((p.astype(np.float64) * 2.0**-e).astype(np.float32)) + 7
            got = requant.round_f32_half_even(p, e, requant.NumpyOps(), plus=7)
            inside = np.abs(expected - 7) <= 255
            np.testing.assert_array_equal(got[inside], expected[inside])
    assert requant.near_window(33, 2**16) == 32 and requant.near_window(31, 2**14) == 31


def test_layers_are_matched_by_macs_and_weight_size_even_out_of_order():
    # calls: stem, conv1, shortcut, conv2, a pool (no MACs), head; ONNX lists the shortcut after conv2.
    calls = [(100, 9), (400, 36), (50, 4), (400, 36), None, (10, 10)]
    nodes = [("stem", (100, 9)), ("conv1", (400, 36)), ("conv2", (400, 36)), ("shortcut", (50, 4)),
             ("head", (10, 10)), ("unused", (7, 7))]
    assert match_layers(calls, nodes) == ["stem", "conv1", "shortcut", "conv2", None, "head"]


def test_workspace_is_the_largest_per_kernel_need_and_builtins_are_not_redeclared():
    source = """TVM_DLL int32_t __builtin_popcount(uint32_t);
TVM_DLL int32_t __tvm_ffi_a(void* self_handle, void* args, int32_t num_args, void* result) {
  float* p = ((float*)TVMBackendAllocWorkspace(1, dev_id, (uint64_t)8192ULL, 2, 32));
  float* q = ((float*)TVMBackendAllocWorkspace(1, dev_id, (uint64_t)100ULL, 2, 32));
}
TVM_DLL int32_t __tvm_ffi_b(void* self_handle, void* args, int32_t num_args, void* result) {
  float* p = ((float*)TVMBackendAllocWorkspace(1, dev_id, (uint64_t)9000ULL, 2, 32));
}
"""
    assert workspace_bytes(source) == 9008  # b: 9000 rounded to 16; a: 8192 + 112 = 8304
    assert "__builtin_popcount" not in clean_kernels_source(source)
    with pytest.raises(UnsupportedOpsError, match="TVMBackendParallelLaunch"):
        clean_kernels_source(source + "  TVMBackendParallelLaunch(f, 0, 4);\n")


def _tiny_main(*problems: str):
    """A Relax `main(x)` holding the given untranslatable bindings."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4), "float32"))
    with bb.function("main", [x], pure=False):
        y = x
        if "call_packed" in problems:
            y = bb.emit(relax.Call(relax.ExternFunc("my_ext_func"), [y], ty_args=[relax.TensorType((1, 4), "float32")]))
        if "memory.view" in problems:
            y = bb.emit(relax.op.memory.view(y, relax.ShapeExpr([4])))
        if "tuple" in problems:
            y = bb.emit(relax.Tuple([y, y]))
        bb.emit_func_output(y)
    return bb.get()


def test_emitter_names_every_binding_it_cannot_translate():
    with pytest.raises(UnsupportedOpsError, match=r"call_packed\('my_ext_func'") as err:
        read_graph(_tiny_main("call_packed", "memory.view"))
    assert "`gv2 = relax.memory.view(...)`" in str(err.value)  # every problem in one message, not just the first
    with pytest.raises(UnsupportedOpsError, match="a tuple"):
        read_graph(_tiny_main("tuple"))


def test_only_the_c_target_makes_a_bundle(models, tmp_path):
    llvm = {**CORTEX_M4, "tvm": {"kind": "llvm", "mtriple": "thumbv7em-none-eabihf"}}
    with pytest.raises(UsageError, match="kind 'c'"):
        compile_bundle(models["int8"], llvm, tmp_path / "out")
    assert not (tmp_path / "out").exists()
