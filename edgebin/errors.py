"""The errors a user can cause, each with the exit code the CLI returns for it.

Library code raises these where user input enters (the loader, the data sets, the importer's first scan, a
runner's process call). `edgebin.cli.main` catches `EdgebinError` once and prints one line, with no traceback
unless `--debug` is given. Anything else that escapes is a bug and exits with code 1.

| code | error                   | meaning                                                        |
|------|-------------------------|----------------------------------------------------------------|
| 1    | (any other exception)   | internal error: a bug in edgebin; rerun with --debug           |
| 2    | UsageError              | bad option value: unknown target, method or dataset, bad shape |
| 3    | ModelLoadError          | model file missing, truncated, or not a model                  |
| 4    | UntrustedModelError     | the file holds pickled code and --trust-pickle was not given   |
| 5    | InputShapeError         | the input shape does not fit the model                         |
| 6    | UnsupportedOpsError     | the model uses operators edgebin cannot compile                |
| 7    | ToolchainMissingError   | a compiler, emulator or package is not installed               |
| 8    | DataError               | a data set is missing or malformed                             |
| 9    | DeviceError             | a device or emulator did not answer or failed                  |
"""

from __future__ import annotations


class EdgebinError(Exception):
    """Base of all user-facing errors; `exit_code` is what the CLI exits with."""

    exit_code = 1


class UsageError(EdgebinError):
    """A bad option value (unknown name, malformed shape, conflicting flags)."""

    exit_code = 2


class RecipeError(UsageError):
    """A recipe (method, bits, per-layer overrides) that cannot be applied."""


class ModelLoadError(EdgebinError):
    """The model file is missing, truncated or not a model edgebin can read."""

    exit_code = 3


class UntrustedModelError(ModelLoadError):
    """The file needs unpickling of arbitrary code, which is off unless the user trusts it."""

    exit_code = 4


class InputShapeError(EdgebinError):
    """The input shape is unknown or does not fit the model."""

    exit_code = 5


class UnsupportedOpsError(EdgebinError):
    """Operators the compiler cannot handle; the message lists every one with the layer that uses it."""

    exit_code = 6


class ToolchainMissingError(EdgebinError):
    """A required program or package is missing; the message names what to install."""

    exit_code = 7


class DataError(EdgebinError):
    """A data set cannot be found or read."""

    exit_code = 8


class DeviceError(EdgebinError):
    """A device or emulator did not answer in time or reported a failure."""

    exit_code = 9


def closest(name: str, valid: list[str] | tuple[str, ...]) -> str:
    """A ' (did you mean X?)' hint for a misspelt name, or ''."""
    import difflib

    match = difflib.get_close_matches(name, list(valid), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def unknown_name(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> UsageError:
    """The one message for an unknown target, method or dataset: the bad value and every valid one."""
    return UsageError(f"unknown {kind} {name!r}{closest(name, valid)}; valid {kind}s: {', '.join(valid)}")
