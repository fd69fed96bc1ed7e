"""Load a trained model file safely, whatever PyTorch format it was saved in.

    loaded = load_model(Path("model.pt"))                     # an edgebin checkpoint records arch and shape
    loaded = load_model(Path("weights.pt"), arch="resnet8", input_shape=(1, 1, 28, 28))
    logits = loaded.module(torch.zeros(loaded.input_shape))

The format is found from the file's content; the extension only colours the error messages.

| format              | written by                                     | also needs                           |
|---------------------|------------------------------------------------|--------------------------------------|
| edgebin-checkpoint  | `save_checkpoint` (a plain dict, `torch.save`) | nothing: arch and shape are recorded |
| state-dict          | `torch.save(model.state_dict())`               | `--arch`, `--input-shape`            |
| torchscript         | `torch.jit.save` (+ `edgebin.json` extra file) | `--input-shape` unless recorded      |
| exported-program    | `torch.export.save` (`.pt2`)                   | nothing: the program has its shape   |
| pickled-module      | `torch.save(model)`                            | `--trust-pickle`, `--input-shape`    |

Safety: a `torch.save` file is read with `torch.load(weights_only=True)`, which builds tensors and plain
containers only. A file that needs more (a pickled module, any other Python object) raises
`UntrustedModelError` unless `trust_pickle=True`, because unpickling it can run arbitrary code. TorchScript
archives are read by TorchScript's own loader, which builds TorchScript types only, so they need no trust.
`torch.export.load` falls back to full unpickling for some payloads, so a `.pt2` file is checked first: every
pickled payload in it must load with `weights_only=True`, and compiled or opaque objects need trust.
`--arch path/to/model.py:Class` imports that file, which runs its code: that is the user's explicit choice,
so a path recorded inside a model file is never imported on the file's say-so.

The input shape comes from `input_shape=` (the `--input-shape` flag) if given, else from the file (the
checkpoint's `input_shape`, the `edgebin.json` extra file, or the exported program's input), else from an
`input_shape` attribute of the model class (zoo models declare one); otherwise `InputShapeError` asks for it.
Every shape is checked with one forward pass before `load_model` returns.

`edgebin.json`, an extra file in a TorchScript or `.pt2` archive, carries what a checkpoint records:

    torch.jit.save(scripted, "model.ts", _extra_files={"edgebin.json": json.dumps(
        {"input_shape": [1, 1, 28, 28], "normalization": {"mean": [0.286], "std": [0.353]}, "dataset": "..."})})
    torch.export.save(program, "model.pt2", extra_files={"edgebin.json": ...})   # same keys

`input_shape`, `normalization` and `arch` (informational here) are read as such; other keys become metadata.

A model made smaller by `edgebin.sparsity.shrink` records its narrower layers in `arch_kwargs["layer_widths"]`;
`resolve_arch` builds the architecture and then resizes those layers, so it loads like any checkpoint.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import pickle
import re
import sys
import types
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgebin.atomic import atomic_write_bytes
from edgebin.errors import (
    EdgebinError,
    InputShapeError,
    ModelLoadError,
    UntrustedModelError,
    UsageError,
    closest,
)

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
EXTRA_FILE = "edgebin.json"  # what `torch.jit.save(..., _extra_files=...)` / `torch.export.save` carry for us
ACCEPTED = (
    "edgebin reads an edgebin checkpoint or a state_dict saved with torch.save, a TorchScript archive "
    "(torch.jit.save) or a torch.export program (.pt2, torch.export.save)"
)
_CHECKPOINT_KEYS = ("edgebin_checkpoint", "arch", "arch_kwargs", "state_dict", "input_shape", "normalization")
LAYER_WIDTHS = "layer_widths"  # the arch_kwargs entry a shrunk model's checkpoint records (see resolve_arch)
_NESTED_STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for capture: eval mode, on the CPU, float32, with an input shape that runs.

    loaded = load_model(Path("model.pt"))
    loaded.module(torch.zeros(loaded.input_shape)).shape    # torch.Size([1, 10])
    """

    module: nn.Module
    input_shape: tuple[int, ...]  # with the batch dimension, e.g. (1, 1, 28, 28)
    source: Path
    format: str  # edgebin-checkpoint | state-dict | torchscript | exported-program | pickled-module
    arch: str | None = None
    arch_kwargs: dict = field(default_factory=dict)  # the keyword arguments `arch` was built with
    normalization: dict | None = None  # {"mean": [...], "std": [...]} if the file records it
    metadata: dict = field(default_factory=dict)  # dataset, classes, fp32_test_accuracy, ...
    exported: torch.export.ExportedProgram | None = None  # set for .pt2 files


@dataclass
class _Parts:
    """What one format loader found, before the shared shape and mode handling."""

    module: nn.Module
    format: str
    arch: str | None = None
    arch_kwargs: dict = field(default_factory=dict)
    input_shape: tuple[int, ...] | None = None
    normalization: dict | None = None
    metadata: dict = field(default_factory=dict)
    exported: torch.export.ExportedProgram | None = None


def load_model(
    path: Path,
    *,
    arch: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    trust_pickle: bool = False,
) -> LoadedModel:
    """Load `path` in whichever supported format it holds; see the module docstring for the rules."""
    path = Path(path)
    given_shape = _checked_shape(input_shape) if input_shape is not None else None
    kind = _sniff(path)
    if kind == "torchscript":
        parts = _load_torchscript(path)
    elif kind == "exported-program":
        parts = _load_exported(path, trust_pickle)
    else:
        parts = _load_torch_save(path, arch, trust_pickle)
    if arch is not None and parts.format in ("torchscript", "exported-program", "pickled-module"):
        log.warning("%s is a %s file, which holds its own code; --arch %s is ignored", path, parts.format, arch)

    module = parts.module
    _to_inference(module)
    shape = given_shape or parts.input_shape or _declared_shape(module)
    if shape is None:
        raise InputShapeError(
            f"`{path}` does not record the model's input shape; pass --input-shape, e.g. --input-shape 1x1x28x28"
        )
    try:
        check_input_shape(module, shape)
    except InputShapeError as err:
        if parts.input_shape is not None and given_shape is not None and given_shape != parts.input_shape:
            shown = "x".join(map(str, parts.input_shape))
            raise InputShapeError(f"{err} (`{path}` records {shown}; try without --input-shape)") from None
        raise
    log.info("loaded %s (%s, input %s)", path, parts.format, "x".join(map(str, shape)))
    return LoadedModel(
        module=module,
        input_shape=shape,
        source=path,
        format=parts.format,
        arch=parts.arch,
        arch_kwargs=parts.arch_kwargs,
        normalization=parts.normalization,
        metadata=parts.metadata,
        exported=parts.exported,
    )


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse `--input-shape`: "1x1x28x28", "1,1,28,28" or "1 1 28 28"; the batch must be 1."""
    parts = [p for p in re.split(r"[x×,\s]+", text.strip().strip("()[]").lower()) if p]
    if not parts or not all(p.isdigit() for p in parts):
        raise UsageError(f"--input-shape {text!r} is not a shape; write it like 1x1x28x28 (batch first)")
    shape = tuple(int(p) for p in parts)
    if len(shape) < 2:
        raise UsageError(f"--input-shape {text!r} needs the batch and at least one more dimension, e.g. 1x784")
    if any(d <= 0 for d in shape):
        raise UsageError(f"--input-shape {text!r} has a dimension <= 0; every dimension must be positive")
    if shape[0] != 1:
        fixed = "x".join(map(str, (1, *shape[1:])))
        raise UsageError(
            f"--input-shape {text!r} has batch {shape[0]}; edgebin compiles for one sample at a time, "
            f"so the batch must be 1: --input-shape {fixed}"
        )
    return shape


def check_input_shape(module: nn.Module, shape: tuple[int, ...], *, name: str = "the model") -> None:
    """Run one forward pass on zeros of `shape`; raise InputShapeError with the model's complaint if it fails."""
    shape = _checked_shape(shape)
    shown = "x".join(map(str, shape))
    try:
        with torch.no_grad():
            module(torch.zeros(shape))
    except Exception as err:  # any failure here is the model refusing this input
        raise InputShapeError(
            f"input shape {shown} does not fit {name}: {complaint(err)}; "
            "pass --input-shape with the shape it was trained on, e.g. --input-shape 1x1x28x28"
        ) from None


def resolve_arch(arch: str, **kwargs: Any) -> nn.Module:
    """Build the model named by `arch`: a zoo name, or "path/to/file.py:ClassName".

    The second form imports that file, which runs its code; pass it only for a file you trust. Its directory is
    on `sys.path` while it is imported, so it can import modules that sit beside it.

    One option is edgebin's, not the architecture's: `layer_widths` ({layer name: {"out_channels": 8, ...}}, what
    `edgebin.sparsity.shrink` records in `arch_kwargs`) rebuilds those conv, linear and BatchNorm layers with
    the given widths after the architecture is built, so a shrunk model loads back from its checkpoint.
    """
    layer_widths = kwargs.pop(LAYER_WIDTHS, None)
    module = _build_arch(arch, **kwargs)
    if layer_widths is not None:
        resize_layers(module, layer_widths, what=f"--arch {arch}")
    return module


def resize_layers(model: nn.Module, layer_widths: Any, *, what: str = "the model") -> None:
    """Replace each named conv, linear or BatchNorm layer of `model` by a fresh one with the given widths."""
    if not isinstance(layer_widths, dict) or not all(isinstance(v, dict) for v in layer_widths.values()):
        raise ModelLoadError(f"{LAYER_WIDTHS} must map layer names to {{option: width}}, got {layer_widths!r}")
    modules = dict(model.named_modules())
    missing = sorted(name for name in layer_widths if name not in modules or not name)
    if missing:
        raise ModelLoadError(f"{LAYER_WIDTHS} names layers that {what} does not have: {_few(missing)}")
    for name, widths in layer_widths.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, resized_layer(modules[name], **widths))


def resized_layer(module: nn.Module, **widths: int) -> nn.Module:
    """A fresh layer like `module` (same type, kernel, stride, bias, ...) with other channel counts.

    resized_layer(nn.Conv2d(16, 32, 3, padding=1), out_channels=8)   # Conv2d(16, 8, 3, padding=1)
    """
    kind = type(module)
    if kind in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        args = {"in_channels": module.in_channels, "out_channels": module.out_channels,
                "kernel_size": module.kernel_size, "stride": module.stride, "padding": module.padding,
                "dilation": module.dilation, "groups": module.groups, "bias": module.bias is not None,
                "padding_mode": module.padding_mode}
        sizes = ("in_channels", "out_channels", "groups")
    elif kind is nn.Linear:
        args = {"in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}
        sizes = ("in_features", "out_features")
    elif kind in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        args = {"num_features": module.num_features, "eps": module.eps, "momentum": module.momentum,
                "affine": module.affine, "track_running_stats": module.track_running_stats}
        sizes = ("num_features",)
    else:
        raise ModelLoadError(f"cannot resize a {kind.__name__}: {LAYER_WIDTHS} covers Conv1d/2d/3d, Linear and "
                             "BatchNorm1d/2d/3d")
    bad = sorted(k for k, v in widths.items() if k not in sizes or not isinstance(v, int) or v < 1)
    if bad:
        raise ModelLoadError(f"cannot resize a {kind.__name__} with {widths}; its widths are {', '.join(sizes)} "
                             "(positive ints)")
    try:
        new = kind(**{**args, **widths})
    except ValueError as err:  # e.g. channels not divisible by groups
        raise ModelLoadError(f"cannot resize a {kind.__name__} with {widths}: {err}") from None
    param = next(module.parameters(), None)
    if param is not None:
        new = new.to(device=param.device, dtype=param.dtype)
    return new.train(module.training)


def _build_arch(arch: str, **kwargs: Any) -> nn.Module:
    if ":" in arch:
        factory = _import_from_file(arch)
    else:
        factory = _zoo_factory(arch)
    try:
        module = factory(**kwargs)
    except EdgebinError:
        raise
    except Exception as err:  # the user's constructor: report it, it is not an edgebin bug
        raise ModelLoadError(
            f"could not build --arch {arch} with {kwargs or 'no arguments'}: {complaint(err)}"
        ) from None
    if not isinstance(module, nn.Module):
        raise UsageError(f"--arch {arch} built a {type(module).__name__}, not a torch.nn.Module")
    return module


def save_checkpoint(
    path: Path,
    module: nn.Module,
    *,
    arch: str,
    input_shape: tuple[int, ...],
    arch_kwargs: dict | None = None,
    normalization: dict | None = None,
    **metadata: Any,
) -> None:
    """Write an edgebin checkpoint: the state_dict plus what `load_model` needs to rebuild and run it.

    `metadata` holds JSON-like facts such as `dataset`, `classes` and `fp32_test_accuracy`. The file is a plain
    dict of tensors and builtins, so it loads with `torch.load(weights_only=True)`.
    """
    payload = {
        **metadata,
        "edgebin_checkpoint": CHECKPOINT_VERSION,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs or {}),
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "input_shape": list(_checked_shape(input_shape)),
    }
    if normalization is not None:
        payload["normalization"] = _checked_normalization(normalization, Path(path))
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(Path(path), buffer.getvalue())


def complaint(err: BaseException) -> str:
    """The line of a torch error that says what went wrong (TorchScript puts it last, after its traceback)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    if "Traceback of TorchScript" in lines[0] or lines[0].startswith("The following operation failed"):
        for line in reversed(lines):
            match = re.match(r"^\w*(Error|Exception): (.+)", line)
            if match:
                return match.group(2)[:300]
    return lines[0][:300]


# --- which format is this? -------------------------------------------------------------------------------


def _sniff(path: Path) -> str:
    """Name the container in `path` from its bytes: torchscript, exported-program or torch-save."""
    if not path.exists():
        raise ModelLoadError(f"no such file: `{path}`")
    if path.is_dir():
        raise ModelLoadError(f"`{path}` is a directory, not a model file; {ACCEPTED}")
    with path.open("rb") as f:
        head = f.read(4096)
    if not head:
        raise ModelLoadError(f"`{path}` is empty; {ACCEPTED}")
    if zipfile.is_zipfile(path):
        return _sniff_zip(path)
    if head.startswith(b"PK\x03\x04"):
        raise ModelLoadError(f"`{path}` is a truncated or damaged zip archive; save or copy it again")
    if head[:1] == b"\x80":  # a pickle: torch.save's legacy format, or plain pickle
        return "torch-save"
    if path.suffix.lower() == ".onnx":
        raise ModelLoadError(f"`{path}` is an ONNX model; `edgebin compile` takes ONNX, but {ACCEPTED}")
    if b"\x00" not in head and _is_text(head):
        hint = "; a model definition goes to --arch path/to/model.py:Class" if path.suffix == ".py" else ""
        raise ModelLoadError(f"`{path}` is a text file, not a model{hint}; {ACCEPTED}")
    raise ModelLoadError(f"`{path}` is not a PyTorch model file (unrecognised content); {ACCEPTED}")


def _sniff_zip(path: Path) -> str:
    try:
        with zipfile.ZipFile(path) as zf:
            names = _archive_names(zf)
            fmt = zf.read(names["archive_format"]).decode(errors="replace") if "archive_format" in names else ""
    except Exception as err:  # BadZipFile, zlib.error, OSError...: whatever it is, the archive is broken
        raise ModelLoadError(f"`{path}` is a damaged zip archive ({err}); save or copy it again") from None
    if fmt == "pt2" or "serialized_exported_program.json" in names:
        return "exported-program"
    if "constants.pkl" in names and any(n.startswith("code/") for n in names):
        return "torchscript"
    if "data.pkl" in names:
        return "torch-save"
    raise ModelLoadError(f"`{path}` is a zip archive but not a PyTorch file; {ACCEPTED}")


def _archive_names(zf: zipfile.ZipFile) -> dict[str, str]:
    """Member names without the archive's top folder (torch writes `<stem>/data.pkl`), mapped to the real ones."""
    names: dict[str, str] = {}
    for real in zf.namelist():
        names.setdefault(real, real)
        if "/" in real:
            names.setdefault(real.split("/", 1)[1], real)
    return names


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        return err.start > len(head) - 4  # a multi-byte character cut by the 4 KiB window
    return True


# --- torch.save files: checkpoint, state_dict, pickled module ---------------------------------------------


def _load_torch_save(path: Path, arch: str | None, trust_pickle: bool) -> _Parts:
    obj = _torch_load(path, trust_pickle)
    if isinstance(obj, dict) and isinstance(obj.get("model"), nn.Module):  # {"model": model, "epoch": ...}
        obj = obj["model"]
    if isinstance(obj, nn.Module):
        cls = f"{type(obj).__module__}.{type(obj).__qualname__}"
        return _Parts(module=obj, format="pickled-module", metadata={"class": cls})
    if not isinstance(obj, dict):
        raise ModelLoadError(f"`{path}` holds a {type(obj).__name__}, not a model or a state_dict; {ACCEPTED}")
    if "edgebin_checkpoint" in obj:
        return _from_checkpoint(path, obj, arch)
    state_dict = _find_state_dict(obj)
    if state_dict is None:
        keys = ", ".join(map(str, list(obj)[:8]))
        raise ModelLoadError(f"`{path}` holds a dict (keys: {keys}) with no state_dict of tensors; {ACCEPTED}")
    if arch is None:
        raise _needs_arch(path)
    module = resolve_arch(arch)
    _load_state_dict(module, state_dict, arch, path)
    metadata = {k: v for k, v in obj.items() if isinstance(v, (int, float, str, bool))}  # epoch, accuracy, ...
    return _Parts(module=module, format="state-dict", arch=arch, metadata=metadata)


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    """`torch.load` with weights_only=True; full unpickling only when the user trusts the file."""
    try:
        with warnings.catch_warnings():  # a plain pickle.dump file: the refusal below says all there is to say
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not trust_pickle:
            raise _untrusted(path, err) from None
        log.warning("%s holds pickled Python objects; unpickling it because --trust-pickle was given", path)
    except Exception as err:  # EOFError, RuntimeError from the zip reader, ...: a broken file
        raise ModelLoadError(f"`{path}` is truncated or damaged ({complaint(err)}); save or copy it again") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError) as err:
        raise ModelLoadError(
            f"`{path}` holds a pickled object whose class cannot be imported here ({err}); import the module "
            "that defines it first, or save a state_dict and pass --arch"
        ) from None
    except Exception as err:
        raise ModelLoadError(f"`{path}` could not be unpickled ({complaint(err)}); {ACCEPTED}") from None


def _untrusted(path: Path, err: Exception) -> UntrustedModelError:
    match = re.search(r"GLOBAL ([\w.]+) was not an allowed global", str(err))
    kind = "class" if match and match.group(1).rpartition(".")[2][:1].isupper() else "function"
    what = f"{kind} {match.group(1)}" if match else complaint(err).removeprefix("WeightsUnpickler error: ")
    return UntrustedModelError(
        f"`{path}` holds a pickled Python object ({what}), which can run arbitrary code when loaded; pass "
        "--trust-pickle only if you made this file, or save a state_dict / TorchScript / torch.export program instead"
    )


def _from_checkpoint(path: Path, ckpt: dict, arch: str | None) -> _Parts:
    version = ckpt["edgebin_checkpoint"]
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise ModelLoadError(
            f"`{path}` is an edgebin checkpoint version {version}; this edgebin reads version {CHECKPOINT_VERSION}, "
            "so upgrade edgebin"
        )
    recorded = ckpt.get("arch")
    if arch is None:
        if recorded is None:
            raise _needs_arch(path, "is an edgebin checkpoint that records no arch")
        if ":" in str(recorded):  # a file path: importing it runs code, so only the user may ask for that
            raise UsageError(
                f"`{path}` records --arch {recorded}, a Python file; edgebin runs no code named inside a model "
                f"file, so pass --arch {recorded} yourself if you trust it"
            )
        arch = str(recorded)
    kwargs = dict(ckpt.get("arch_kwargs") or {}) if arch == recorded else {}
    state_dict = ckpt.get("state_dict")
    if not isinstance(state_dict, dict):
        raise ModelLoadError(f"`{path}` is an edgebin checkpoint without a state_dict; save it again")
    module = resolve_arch(arch, **kwargs)
    shape = ckpt.get("input_shape")
    if ckpt.get("qat_recipe") is not None:
        _prepare_qat(module, ckpt["qat_recipe"], shape, path)
    _load_state_dict(module, state_dict, arch, path)
    normalization = ckpt.get("normalization")
    return _Parts(
        module=module,
        format="edgebin-checkpoint",
        arch=arch,
        arch_kwargs=kwargs,
        input_shape=_recorded_shape(shape, path) if shape is not None else None,
        normalization=_checked_normalization(normalization, path) if normalization is not None else None,
        metadata={k: v for k, v in ckpt.items() if k not in _CHECKPOINT_KEYS},
    )


def _prepare_qat(module: nn.Module, recipe: Any, shape: Any, path: Path) -> None:
    """Swap in the QAT layers a trained QAT checkpoint was saved with, so its quantizer state loads."""
    from edgebin.quant import Recipe
    from edgebin.quant.qat import prepare

    if not isinstance(recipe, dict):
        raise ModelLoadError(f"`{path}` records a QAT recipe that is not a JSON object; save it again")
    example = torch.zeros(_recorded_shape(shape, path)) if shape is not None else None
    prepare(module, Recipe.from_dict(recipe), example_input=example)


def _find_state_dict(obj: dict) -> dict | None:
    """The tensors in `obj`, or in the first of the usual nested keys that holds tensors."""
    if _is_state_dict(obj):
        return obj
    for key in _NESTED_STATE_DICT_KEYS:
        if isinstance(obj.get(key), dict) and _is_state_dict(obj[key]):
            return obj[key]
    return None


def _is_state_dict(obj: dict) -> bool:
    values = list(obj.values())
    return bool(values) and all(isinstance(k, str) for k in obj) and all(isinstance(v, torch.Tensor) for v in values)


def _needs_arch(path: Path, what: str = "holds only weights (a state_dict)") -> UsageError:
    return UsageError(
        f"`{path}` {what}; pass --arch NAME (one of: {', '.join(_zoo_names()) or 'no zoo models'}) "
        "or --arch path/to/model.py:Class"
    )


def _load_state_dict(module: nn.Module, state_dict: dict, arch: str, path: Path) -> None:
    """Load strictly, naming a few missing, unexpected and mis-shaped keys if the weights do not fit."""
    expected = module.state_dict()
    for prefix in ("module.", "_orig_mod."):  # DataParallel and torch.compile wrappers
        if (
            state_dict
            and all(k.startswith(prefix) for k in state_dict)
            and not any(k.startswith(prefix) for k in expected)
        ):
            state_dict = {k.removeprefix(prefix): v for k, v in state_dict.items()}
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(expected[k].shape)}"
        for k in expected
        if k in state_dict and isinstance(state_dict[k], torch.Tensor) and state_dict[k].shape != expected[k].shape
    ]
    problems = [
        f"{label}: {_few(keys)}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape (file vs model)", mismatched),
        )
        if keys
    ]
    if problems:
        raise ModelLoadError(f"the weights in `{path}` do not fit --arch {arch}: {'; '.join(problems)}")
    try:
        module.load_state_dict(state_dict, strict=True)
    except Exception as err:
        raise ModelLoadError(f"the weights in `{path}` do not fit --arch {arch}: {complaint(err)}") from None


def _few(items: list[str], n: int = 4) -> str:
    more = f" (and {len(items) - n} more)" if len(items) > n else ""
    return ", ".join(items[:n]) + more


# --- TorchScript and torch.export archives ----------------------------------------------------------------


def _load_torchscript(path: Path) -> _Parts:
    extra = {EXTRA_FILE: ""}
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated, but reading old files is why we are here
            warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as err:
        raise ModelLoadError(f"`{path}` is a damaged TorchScript archive ({complaint(err)}); save it again") from None
    info = _extra_info(extra.get(EXTRA_FILE), path)
    return _Parts(module=module, format="torchscript", **info)


def _load_exported(path: Path, trust_pickle: bool) -> _Parts:
    if not trust_pickle:
        _check_pt2_payloads(path)
    extra: dict[str, Any] = {EXTRA_FILE: ""}  # not empty: torch.export.load swaps an empty dict for its own
    try:
        with path.open("rb") as f:  # a file object: torch warns about names not ending in .pt2
            program = torch.export.load(f, extra_files=extra)
    except Exception as err:
        raise ModelLoadError(f"`{path}` is a damaged torch.export archive ({complaint(err)}); save it again") from None
    info = _extra_info(extra.get(EXTRA_FILE), path)
    program_shape = _program_input_shape(program, path)
    recorded = info.pop("input_shape", None)
    if recorded is not None and program_shape is not None and recorded != program_shape:
        log.warning(
            "%s: %s records input %s but the program takes %s; using the program's",
            path,
            EXTRA_FILE,
            recorded,
            program_shape,
        )
    module = _unlocked_module(program)
    return _Parts(
        module=module, format="exported-program", input_shape=program_shape or recorded, exported=program, **info
    )


def _check_pt2_payloads(path: Path) -> None:
    """Refuse a .pt2 whose loading would unpickle more than tensors or load compiled code."""
    with zipfile.ZipFile(path) as zf:
        names = _archive_names(zf)
        for name in names:
            if name.startswith(("data/aotinductor/", "data/executorch/")):
                raise UntrustedModelError(
                    f"`{path}` holds compiled native code ({name}), which runs when loaded; pass --trust-pickle "
                    "only if you made this file, or save the program with torch.export.save alone"
                )
        for name in _pickled_payloads(path, zf, names):
            try:
                torch.load(io.BytesIO(zf.read(names[name])), map_location="cpu", weights_only=True)
            except pickle.UnpicklingError as err:
                raise _untrusted(path, err) from None
            except Exception as err:
                raise ModelLoadError(f"`{path}` is damaged ({name}: {complaint(err)}); save it again") from None


def _pickled_payloads(path: Path, zf: zipfile.ZipFile, names: dict[str, str]) -> list[str]:
    """The members `torch.export.load` unpickles: sample inputs, older `.pt` files, and config-marked payloads."""
    pickled = [n for n in names if n.endswith(".pt")]
    for name in names:
        config = re.fullmatch(r"data/(weights|constants)/\w+_(weights|constants)_config\.json", name)
        if not config:
            continue
        try:
            entries = json.loads(zf.read(names[name]))["config"].items()
        except Exception as err:  # not JSON, no "config" mapping: a damaged archive
            raise ModelLoadError(f"`{path}` is damaged ({name}: {err}); save it again") from None
        for fqn, entry in entries:
            payload = str(entry.get("path_name", ""))
            if payload.startswith(("opaque_obj_", "custom_obj_")):
                raise UntrustedModelError(
                    f"`{path}` holds a pickled Python object ({fqn}), which can run arbitrary code when loaded; "
                    "pass --trust-pickle only if you made this file"
                )
            if entry.get("use_pickle") and f"data/{config.group(1)}/{payload}" in names:
                pickled.append(f"data/{config.group(1)}/{payload}")
    return pickled


def _program_input_shape(program: torch.export.ExportedProgram, path: Path) -> tuple[int, ...] | None:
    """The shape of the program's one user input; a dynamic batch becomes 1, other dynamic sizes the example's."""
    inputs = set(program.graph_signature.user_inputs)
    vals = [n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder" and n.name in inputs]
    if len(vals) != 1 or not isinstance(vals[0], torch.Tensor):
        raise ModelLoadError(f"`{path}` takes {len(vals)} inputs; edgebin handles models with one input tensor")
    example = _example_input(program)
    shape = []
    for i, dim in enumerate(vals[0].shape):
        if isinstance(dim, int):
            shape.append(dim)
        elif i == 0:
            shape.append(1)
        elif example is not None and example.dim() == len(vals[0].shape):
            shape.append(int(example.shape[i]))
        else:
            return None
    return tuple(shape)


def _example_input(program: torch.export.ExportedProgram) -> torch.Tensor | None:
    with contextlib.suppress(Exception):
        args, _ = program.example_inputs
        if len(args) == 1 and isinstance(args[0], torch.Tensor):
            return args[0]
    return None


def _unlocked_module(program: torch.export.ExportedProgram) -> torch.fx.GraphModule:
    """`program.module()` with the nn.Module `train`/`eval` back, so it can be put in eval mode like any module.

    `ep.module()` replaces both with stubs that raise, as neither changes the exported graph; edgebin only
    needs the flags to read "eval", which is what the graph computes already (exported in eval mode).
    """
    module = program.module()
    for name in ("train", "eval"):
        module.__dict__.pop(name, None)
    return module


def _extra_info(raw: str | bytes | None, path: Path) -> dict:
    """Input shape, normalization, arch and metadata from an `edgebin.json` extra file, if there is one."""
    if not raw:
        return {}
    try:
        info = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"`{path}` has a malformed {EXTRA_FILE} ({err}); save it again") from None
    if not isinstance(info, dict):
        raise ModelLoadError(f"`{path}` has a malformed {EXTRA_FILE} (not a JSON object); save it again")
    parts: dict[str, Any] = {"metadata": {k: v for k, v in info.items() if k not in _CHECKPOINT_KEYS}}
    if info.get("input_shape") is not None:
        parts["input_shape"] = _recorded_shape(info["input_shape"], path)
    if info.get("normalization") is not None:
        parts["normalization"] = _checked_normalization(info["normalization"], path)
    if isinstance(info.get("arch"), str):
        parts["arch"] = info["arch"]
    return parts


# --- shapes, architectures, modes -------------------------------------------------------------------------


def _checked_shape(shape: Any) -> tuple[int, ...]:
    """`shape` as a tuple of positive ints, or InputShapeError."""
    try:
        dims = tuple(shape)
    except TypeError:
        dims = ()
    if not dims or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dims):
        raise InputShapeError(f"input shape {shape!r} is not a shape of positive sizes, e.g. (1, 1, 28, 28)")
    return dims


def _recorded_shape(shape: Any, path: Path) -> tuple[int, ...]:
    try:
        return _checked_shape(shape)
    except InputShapeError:
        raise ModelLoadError(
            f"`{path}` records input shape {shape!r}, which is not a shape; pass --input-shape"
        ) from None


def _checked_normalization(norm: Any, path: Path) -> dict:
    ok = isinstance(norm, dict) and all(
        isinstance(norm.get(k), (list, tuple)) and all(isinstance(v, (int, float)) for v in norm[k])
        for k in ("mean", "std")
    )
    if not ok or any(v == 0 for v in norm["std"]):
        raise ModelLoadError(
            f"`{path}` records normalization {norm!r}; expected {{'mean': [...], 'std': [...]}} with non-zero std"
        )
    return {"mean": [float(v) for v in norm["mean"]], "std": [float(v) for v in norm["std"]]}


def _declared_shape(module: nn.Module) -> tuple[int, ...] | None:
    shape = getattr(module, "input_shape", None)
    if isinstance(shape, (tuple, list)) and shape and all(isinstance(d, int) and d > 0 for d in shape):
        return tuple(shape)
    return None


def _to_inference(module: nn.Module) -> None:
    """Eval mode and float32 parameters, so every later stage sees the model as it runs for inference."""
    module.eval()
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in (*module.parameters(), *module.buffers())):
        log.info("converting the model's floating-point weights to float32")
        module.float()


def _zoo_names() -> list[str]:
    """The zoo's model names; none while the zoo package is absent (a checkout without it still loads files)."""
    try:
        from edgebin import zoo
    except ImportError as err:
        if err.name not in ("edgebin.zoo", "zoo"):
            raise
        return []
    return list(zoo.names()) if hasattr(zoo, "names") else []


def _zoo_factory(name: str):
    names = _zoo_names()
    if name not in names:
        listed = ", ".join(names) if names else "none installed"
        raise UsageError(
            f"unknown --arch {name!r}{closest(name, names)}; zoo models: {listed}; "
            "or pass --arch path/to/model.py:Class"
        )
    from edgebin import zoo

    return lambda **kwargs: zoo.create(name, **kwargs)


def _import_from_file(arch: str):
    """The class (or factory function) `Name` from "path/to/file.py:Name", importing the file by path."""
    file_text, _, name = arch.rpartition(":")
    file = Path(file_text).expanduser()
    if file.suffix != ".py" or not name.isidentifier():
        raise UsageError(f"--arch {arch!r}: expected a zoo name or path/to/model.py:ClassName")
    if not file.is_file():
        raise UsageError(f"--arch {arch}: no such file: `{file}`")
    module_name = f"edgebin_user_arch_{zlib.crc32(str(file.resolve()).encode()):08x}"
    if module_name in sys.modules:  # imported before: running it again would make a second, distinct class
        return _factory_in(sys.modules[module_name], name, file)
    spec = importlib.util.spec_from_file_location(module_name, file)
    assert spec is not None and spec.loader is not None  # a .py file always gets a source loader
    user_module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = user_module  # dataclasses and pickling look classes up here
    sys.path.insert(0, str(file.resolve().parent))
    log.info("importing %s for --arch (this runs its code)", file)
    try:
        spec.loader.exec_module(user_module)
    except Exception as err:
        sys.modules.pop(module_name, None)
        raise ModelLoadError(f"importing `{file}` for --arch failed: {type(err).__name__}: {complaint(err)}") from None
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(str(file.resolve().parent))
    return _factory_in(user_module, name, file)


def _factory_in(user_module: types.ModuleType, name: str, file: Path):
    factory = getattr(user_module, name, None)
    if factory is None or not callable(factory):
        classes = [
            k
            for k, v in vars(user_module).items()
            if isinstance(v, type) and issubclass(v, nn.Module) and v.__module__ == user_module.__name__
        ]
        raise UsageError(
            f"`{file}` defines no class {name!r}{closest(name, classes)}; its nn.Module classes: "
            f"{', '.join(classes) or 'none'}"
        )
    return factory
