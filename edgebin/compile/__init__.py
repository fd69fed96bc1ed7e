"""ONNX -> Apache TVM (Relax) -> a compiled artefact, with QDQ models turned into real int8 compute.

    from edgebin import compile as ebc
    artefact = ebc.compile_onnx(Path("out/model.onnx"), {"kind": "llvm", "mcpu": "native"}, Path("out"))
    artefact.kernel_counts(), artefact.op_counts()   # what runs in int8 and what stays float
    logits = ebc.load_artefact(Path("out")).run(x)

Modules, one job each: `importer` (ONNX -> Relax, unsupported-op scan), `qdq_to_int` (the QdqToInt8 pass),
`kernels` (census of compiled kernels), `host` (x86 build, save, load, run, time), `tune` (MetaSchedule tuning
with a reusable database) and `tvm_adapter` (the only module that imports TVM). Importing this package does not
import TVM; the first use of a name below does.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "from_onnx": "importer",
    "load_onnx": "importer",
    "input_shapes": "importer",
    "supported_ops": "importer",
    "QdqToInt8": "qdq_to_int",
    "is_quantized": "qdq_to_int",
    "op_census": "kernels",
    "kernel_census": "kernels",
    "HostArtefact": "host",
    "compile_onnx": "host",
    "load_artefact": "host",
    "lower": "host",
    "set_threads": "host",
    "compile_bundle": "mcu_emit",
    "TuneConfig": "tune",
    "tune_kernels": "tune",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
