"""The Cortex-M C bundle: ONNX in, a self-contained C project out (the layout is in docs/mcu-bundle.md).

    target = {"name": "cortex-m4", "tvm": {"kind": "c"}, "opt": "-O3",
              "cflags": ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16"]}
    compile_bundle(Path("out/model.onnx"), target, Path("out/cortex-m4"))
    # out/cortex-m4/: model.h model.c kernels.c runtime.c include/ Makefile README.md bundle.json

The steps: `mcu_lower` (QDQ -> int8 with fixed-point requant, fuse, MCU schedule, static memory), `mcu_graph`
(the strict read of `main`), `in_place` (outputs written over dying inputs) and `memory_plan` (offsets in one
arena), then the C below. model.c calls each kernel through TVM's packed convention,
`__tvm_ffi_<name>(NULL, args, n, NULL)`, with `args` a static const array of pointers to static DLTensors: a call
costs a few register moves, not a setup loop.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from edgebin.atomic import staged_dir
from edgebin.compile import binary, importer, mcu_bitserial, mcu_lut, mcu_manifest
from edgebin.compile import tvm_adapter as tvm_api
from edgebin.compile.in_place import in_place_outputs
from edgebin.compile.mcu_graph import ARENA, CONST, INPUT, OUTPUT, Graph, View, read_graph
from edgebin.compile.mcu_lower import build_kernels_c, lower_for_mcu
from edgebin.compile.memory_plan import Plan, plan_memory
from edgebin.compile.qdq_to_int import is_quantized
from edgebin.errors import InputShapeError, ToolchainMissingError, UnsupportedOpsError, UsageError

log = logging.getLogger(__name__)

SOURCES = ("model.c", "kernels.c", "runtime.c")


def compile_bundle(onnx_path: Path, target_cfg: dict | Any, out_dir: Path, *, integer: bool = True,
                   lut_kernels: bool = True, palette: bool | None = None, bitserial: str | None = None) -> Path:
    """Compile an ONNX model into the C bundle of docs/mcu-bundle.md in `out_dir` (written atomically).

    With `integer` (the default) a QDQ model computes in int8 with fixed-point requantization; a float model,
    or `integer=False`, compiles in float32. `target_cfg` is a target dict (`name`, `tvm` of kind "c", `cflags`
    and `opt`, the Makefile's defaults) or an `edgebin.targets.Target`. Table-coded low-bit weights stay packed
    for the LUT micro-kernels (mcu_lut) unless `lut_kernels` is off; so do other int8 weights of at most 16 values
    where that saves flash, unless `palette` is off (None: EDGEBIN_PALETTE, on by default; mcu_lut.palette_weights).
    bundle.json's `lut_weights` says which did. Low-bit weights whose inputs have few bits run bit-serial
    (mcu_bitserial; `bitserial` "auto", "on" or "off", None: EDGEBIN_BITSERIAL, else "auto"): bundle.json's
    `bitserial` lists them.
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    target_cfg = _target_record(target_cfg)
    target_spec = dict(target_cfg.get("tvm", {"kind": "c"}))
    if target_spec.get("kind") != "c":
        raise UsageError(f"target {target_cfg.get('name')!r}: a C bundle needs tvm kind 'c', got "
                         f"{target_spec.get('kind')!r}")
    model = importer.load_onnx(onnx_path)
    shapes = importer.input_shapes(model)
    if len(shapes) != 1:
        raise InputShapeError(f"{onnx_path}: a C bundle takes one input, the model has {list(shapes)}")
    mod = importer.from_onnx(model, shapes)  # UnsupportedOpsError listing every unknown ONNX op
    integer = integer and is_quantized(mod)
    lowered = lower_for_mcu(mod, integer=integer, target_spec=target_spec, lut_kernels=lut_kernels,
                            palette=palette, bitserial=bitserial)  # QDQ -> int8
    graph = read_graph(lowered.mod)  # strict: UnsupportedOpsError naming every binding C cannot express
    reuses = in_place_outputs(graph, lowered.mod)  # outputs a kernel may write over an input dying at its call
    plan = plan_memory(graph.buffers(reuses))  # arena offsets from tensor lifetimes
    called = sorted({call.kernel for call in graph.calls})  # not the PrimFuncs the reshape views replaced
    kernels_c = clean_kernels_source(build_kernels_c(lowered.mod, called, target_spec))  # + micro-kernel include
    workspace = workspace_bytes(kernels_c)  # 0 unless a kernel kept a TVMBackendAllocWorkspace
    values = _template_values(onnx_path, model, target_cfg, graph, plan, workspace)
    manifest = mcu_manifest.bundle_manifest(model, target_cfg, graph, plan, lowered, workspace, SOURCES)
    with staged_dir(out_dir) as stage:
        (stage / "kernels.c").write_text(kernels_c)
        (stage / "model.c").write_text(model_c(graph, plan, values))
        for name in ("model.h", "runtime.c", "Makefile", "README.md"):
            (stage / name).write_text(render(name, values))
        for relative, source in required_headers(kernels_c).items():
            (stage / "include" / relative).parent.mkdir(parents=True, exist_ok=True)
            (stage / "include" / relative).write_bytes(source.read_bytes())
        for name, text in micro_kernel_headers(kernels_c).items():  # beside kernels.c, which includes them
            (stage / name).write_text(text)
        (stage / "bundle.json").write_text(json.dumps(manifest, indent=1) + "\n")
    log.info("C bundle for %s in %s: arena %d B (lower bound %d B), weights %d B, %d kernel calls", onnx_path.name,
             out_dir, plan.arena_bytes, plan.lower_bound_bytes, graph.weights_bytes(), len(graph.calls))
    return out_dir


def _target_record(target: Any) -> dict[str, Any]:
    """A target dict from a dict or an `edgebin.targets.Target` (name, tvm, cflags, opt)."""
    if isinstance(target, dict):
        return target
    extra = getattr(target, "extra", None) or {}
    return {"name": target.name, "tvm": dict(target.tvm), "cflags": list(target.cflags),
            "opt": extra.get("opt", "-O3")}


def build_library(bundle_dir: Path, *, host: bool = False, timeout_s: float = 300.0) -> Path:
    """Run the bundle's Makefile: the Cortex-M library, or with `host` the same C built by gcc for this machine."""
    bundle_dir = Path(bundle_dir)
    cc = "gcc" if host else "arm-none-eabi-gcc"
    for tool, package in (("make", "make"), (cc, "gcc" if host else "gcc-arm-none-eabi picolibc-arm-none-eabi")):
        if shutil.which(tool) is None:
            raise ToolchainMissingError(f"{tool} not found; install the Debian package(s) {package}")
    cmd = ["make", "-C", str(bundle_dir), "--no-print-directory"] + (["CC=gcc", "CPUFLAGS="] if host else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{cc} took more than {timeout_s:.0f} s on {bundle_dir}") from None
    if proc.returncode != 0:  # generated code that does not compile is an edgebin bug, not a user error
        raise RuntimeError(f"building {bundle_dir} with {cc} failed:\n{proc.stderr[-4000:]}")
    return bundle_dir / "libedgebin_model.a"


# --- model.c -------------------------------------------------------------------------------------------------

_C_TYPES = {"bool": "uint8_t", "int8": "int8_t", "uint8": "uint8_t", "int16": "int16_t", "uint16": "uint16_t",
            "int32": "int32_t", "uint32": "uint32_t", "int64": "int64_t", "uint64": "uint64_t", "float32": "float",
            "float64": "double"}
_DL_TYPES = {"bool": ("kDLBool", 8), "int8": ("kDLInt", 8), "uint8": ("kDLUInt", 8), "int16": ("kDLInt", 16),
             "uint16": ("kDLUInt", 16), "int32": ("kDLInt", 32), "uint32": ("kDLUInt", 32), "int64": ("kDLInt", 64),
             "uint64": ("kDLUInt", 64), "float32": ("kDLFloat", 32), "float64": ("kDLFloat", 64)}


def model_c(graph: Graph, plan: Plan, values: dict[str, str]) -> str:
    """The graph as C: weights, arena, shapes, DLTensors, argument arrays and `edgebin_model_run`."""
    shapes: dict[tuple[int, ...], str] = {}
    tensors: dict[View, str] = {}
    lines: list[str] = []
    arg_lines: list[str] = []
    run: list[str] = []
    for step, call in enumerate(graph.calls):
        names = [_dltensor(view, plan, shapes, tensors, lines) for view in call.args]
        items = ", ".join(f"{{.type_index = kTVMFFIDLTensorPtr, .v_ptr = (void*)&{n}}}" for n in names)
        arg_lines.append(f"static const TVMFFIAny edgebin_args{step}[{len(names)}] = {{{items}}};")
        run.append(f"  if ({call.symbol}(NULL, (void*)edgebin_args{step}, {len(names)}, NULL) != 0) "
                   f"return -{step + 1};")
    rebind = [f"  {name}.data = (void*){'input' if view.kind == INPUT else 'output'};"
              for view, name in tensors.items() if view.kind in (INPUT, OUTPUT)]
    if graph.output.kind != OUTPUT:  # the result is a view of something else: copy it out
        run.append(f"  memcpy(output, {_data_pointer(graph.output, plan)}, {graph.output.nbytes});")
    declarations = [f"int32_t {symbol}(void* self, void* args, int32_t num_args, void* result);"
                    for symbol in sorted({call.symbol for call in graph.calls})]
    shape_lines = [f"static const int64_t {name}[{max(len(shape), 1)}] = {{{', '.join(map(str, shape)) or '0'}}};"
                   for shape, name in shapes.items()]
    return render("model.c", {
        **values,
        "kernel_declarations": "\n".join(declarations),
        "weights": "\n".join(_weight(name, array) for name, array in graph.constants.items()),
        "shapes": "\n".join(shape_lines),
        "tensors": "\n".join(lines),
        "args": "\n".join(arg_lines),
        "run": "\n".join(rebind + run),
    })


def _dltensor(view: View, plan: Plan, shapes: dict, tensors: dict, lines: list[str]) -> str:
    """The name of the static DLTensor for `view`, declared on first use."""
    if view in tensors:
        return tensors[view]
    name = tensors[view] = f"edgebin_t{len(tensors)}"
    shape = shapes.setdefault(view.shape, f"edgebin_shape{len(shapes)}")
    code, bits = _DL_TYPES[view.dtype]  # mcu_graph admits only these dtypes
    bound = view.kind in (INPUT, OUTPUT)  # data set per call in edgebin_model_run
    data = "NULL" if bound else f"(void*){_data_pointer(view, plan)}"
    lines.append(f"static {'' if bound else 'const '}DLTensor {name} = {{.data = {data}, .device = {{kDLCPU, 0}}, "
                 f".ndim = {len(view.shape)}, .dtype = {{{code}, {bits}, 1}}, .shape = (int64_t*){shape}}};"
                 f"  /* {view.base} */")
    return name


def _data_pointer(view: View, plan: Plan) -> str:
    if view.kind == ARENA:
        return f"(edgebin_arena + {plan.offsets[view.base]})"
    return {INPUT: "input", OUTPUT: "output", CONST: view.base}[view.kind]


def _weight(name: str, array: np.ndarray) -> str:
    """`static const T name[n] EDGEBIN_WEIGHT = {...};` with exact values (floats as C99 hex literals)."""
    flat = array.reshape(-1)
    if array.dtype.kind == "f":
        items = [_c_float(float(v), array.dtype == np.float32) for v in flat]
    elif array.dtype == np.bool_:
        items = [str(int(v)) for v in flat]
    else:
        low = np.iinfo(array.dtype).min
        items = [str(v) if v != low or low == 0 else f"({v + 1}-1)" for v in flat.tolist()]
        if array.dtype.itemsize == 8:
            items = [f"INT64_C({v})" if array.dtype == np.int64 else f"UINT64_C({v})" for v in items]
    body = ",\n  ".join(", ".join(items[i : i + 16]) for i in range(0, len(items), 16)) or "0"
    ctype = _C_TYPES["bool" if array.dtype == np.bool_ else str(array.dtype)]
    return f"static const {ctype} {name}[{max(flat.size, 1)}] EDGEBIN_WEIGHT = {{\n  {body}}};"


def _c_float(value: float, single: bool) -> str:
    if np.isnan(value):
        return "NAN"
    if np.isinf(value):
        return "INFINITY" if value > 0 else "-INFINITY"
    return value.hex() + ("f" if single else "")


# --- kernels.c, workspace, headers ---------------------------------------------------------------------------

_BUILTIN_DECL = re.compile(r"^TVM_DLL \S+ __builtin_\w+\(.*\);\n", re.M)
MICRO_KERNEL_HEADER = "edgebin_kernels.h"  # mcu_kernels/: what the MCU schedule's call_extern calls
_MICRO_KERNEL_CALL = re.compile(r"\bedgebin_\w+\(")
_LUT_KERNEL_CALL = re.compile(r"\bedgebin_lut\d_\w+\(")
_BITSERIAL_KERNEL_CALL = re.compile(r"\bedgebin_bs_\w+\(")
_MICRO_KERNEL_DECL = re.compile(r"^TVM_DLL \S+ edgebin_\w+\(.*\);\n", re.M)  # untyped; the header has the real one
_FUNC_START = re.compile(r"^\S.*\)\s*\{\s*$", re.M)
_ALLOC = re.compile(r"TVMBackendAllocWorkspace\(([^;]*?)\)\)*;")
_ALLOC_SIZE = re.compile(r"^[^,]+,[^,]+,\s*\(uint64_t\)\s*(\d+)(?:ULL|UL|U)?\s*,")
_UNSUPPORTED_CALLS = ("TVMBackendParallelLaunch", "TVMFFIFunctionCall", "TVMFFIEnvModLookupFromImports")


def clean_kernels_source(source: str) -> str:
    """kernels.c as gcc takes it: no redeclared GCC builtins (the C codegen declares `__builtin_popcount`), and
    the micro-kernel header included, in place of the C codegen's untyped declarations, when a kernel calls one."""
    for name in _UNSUPPORTED_CALLS:
        if f"{name}(" in source:
            raise UnsupportedOpsError(f"a generated kernel calls {name}, which the bare-metal runtime lacks")
    source = _MICRO_KERNEL_DECL.sub("", _BUILTIN_DECL.sub("", source))
    packed = binary.called_in_source(source)
    if _BITSERIAL_KERNEL_CALL.search(source):
        source = f'#include "{mcu_bitserial.HEADER}"  /* bit-serial micro-kernels for bit-plane weights */\n' + source
    if _LUT_KERNEL_CALL.search(source):  # it includes MICRO_KERNEL_HEADER
        source = f'#include "{mcu_lut.HEADER}"  /* micro-kernels for table-coded low-bit weights */\n' + source
    elif _MICRO_KERNEL_CALL.search(source):
        source = f'#include "{MICRO_KERNEL_HEADER}"  /* edgebin\'s micro-kernels (SMLAD on DSP cores) */\n' + source
    if packed:  # the binary kernels' shape-specialized definitions, before the kernels that call them
        source = binary.c_source(packed, binary.INLINE) + "\n" + source
    return source


def write_driver_bundle(directory: Path, sources: dict[str, str], input_elems: int, output_elems: int,
                        target: str = "cortex-m4") -> Path:
    """A bundle the QEMU runner builds around hand-written C, for kernel tests and benches: `sources` ({file name:
    text}; one defines `edgebin_model_run` and `edgebin_model_name`), the micro-kernel headers they include, and
    model.h and bundle.json (docs/mcu-bundle.md) with a float input and output of those sizes and no arena."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in sources.items():
        (directory / name).write_text(text)
    for name, text in micro_kernel_headers("\n".join(sources.values())).items():
        (directory / name).write_text(text)
    (directory / "model.h").write_text(
        f"#define EDGEBIN_INPUT_ELEMS {input_elems}\n#define EDGEBIN_OUTPUT_ELEMS {output_elems}\n"
        "#define EDGEBIN_ARENA_BYTES 0\nint edgebin_model_run(const float* input, float* output);\n"
        "const char* edgebin_model_name(void);\n")
    (directory / "bundle.json").write_text(json.dumps({
        "schema_version": 1, "target": target,
        "input": {"name": "input", "shape": [1, input_elems], "dtype": "float32"},
        "output": {"name": "output", "shape": [1, output_elems], "dtype": "float32"},
        "arena_bytes": 0, "weights_bytes": 0, "kernels": [], "sources": list(sources)}))
    return directory


def micro_kernel_headers(source: str) -> dict[str, str]:
    """{file name: text} of the kernel headers that `source` (kernels.c) includes: mcu_kernels/edgebin_kernels.h
    (and mcu_kernels/edgebin_lut.h, which includes it), mcu_kernels/edgebin_bitserial.h (self-contained),
    binary_kernels/edgebin_binary.h."""
    headers = {}
    kernel_headers = resources.files("edgebin.compile").joinpath("mcu_kernels")
    for header in (mcu_bitserial.HEADER, mcu_lut.HEADER):
        if f'#include "{header}"' in source:
            headers[header] = kernel_headers.joinpath(header).read_text()
    if f'#include "{MICRO_KERNEL_HEADER}"' in source or headers:
        headers[MICRO_KERNEL_HEADER] = kernel_headers.joinpath(MICRO_KERNEL_HEADER).read_text()
    if f'#include "{binary.HEADER.name}"' in source:
        headers[binary.HEADER.name] = binary.HEADER.read_text()
    return headers


def workspace_bytes(source: str) -> int:
    """Bytes runtime.c must provide: the largest per-kernel sum of 16-byte-rounded workspace allocations."""
    largest = 0
    starts = [m.start() for m in _FUNC_START.finditer(source)] + [len(source)]
    for begin, end in zip(starts, starts[1:], strict=False):
        total = 0
        for alloc in _ALLOC.finditer(source, begin, end):
            size = _ALLOC_SIZE.match(alloc.group(1))
            if size is None:
                raise UnsupportedOpsError(f"a kernel allocates a workspace of non-constant size: {alloc.group(0)}")
            total += -(-int(size.group(1)) // 16) * 16
        largest = max(largest, total)
    return largest


def required_headers(source: str) -> dict[str, Path]:
    """The quoted and TVM/DLPack headers `source` includes, transitively: {relative path: file in the wheel}."""
    roots = tvm_api.c_include_dirs()
    found: dict[str, Path] = {}
    pending = re.findall(r'^#include [<"]([^>"]+)[>"]', source, re.M)
    while pending:
        relative = pending.pop()
        if relative in found:
            continue
        path = next((root / relative for root in roots if (root / relative).is_file()), None)
        if path is None:
            continue  # a system header (<math.h>, <stdint.h>): the toolchain has it
        found[relative] = path
        pending += re.findall(r'^#include [<"]([^>"]+)[>"]', path.read_text(), re.M)
    return found


# --- templates -----------------------------------------------------------------------------------------------


def render(name: str, values: dict[str, str]) -> str:
    """Template `mcu_templates/<name>` with each `{{key}}` replaced; every key must be given."""
    text = resources.files("edgebin.compile").joinpath("mcu_templates", name).read_text()
    text = re.sub(r"\{\{(\w+)\}\}", lambda m: str(values[m.group(1)]), text)
    return text


def _template_values(onnx_path: Path, model, target_cfg: dict, graph: Graph, plan: Plan,
                     workspace: int) -> dict[str, str]:
    return {
        "model": onnx_path.name,
        "target": str(target_cfg.get("name", "cortex-m")),
        "input_elems": str(int(np.prod(graph.input.shape))),
        "output_elems": str(int(np.prod(graph.output.shape))),
        "input_shape": "x".join(map(str, graph.input.shape)),
        "output_shape": "x".join(map(str, graph.output.shape)),
        "arena_bytes": str(plan.arena_bytes),
        "workspace_bytes": str(workspace),
        "weights_bytes": str(graph.weights_bytes()),
        "quant_params": mcu_manifest.quant_defines(model),
        "cpuflags": " ".join(target_cfg.get("cflags", [])),
        "opt": str(target_cfg.get("opt", "-O3")),
    }


__all__ = ["SOURCES", "build_library", "clean_kernels_source", "compile_bundle", "micro_kernel_headers", "model_c",
           "render", "required_headers", "workspace_bytes"]
