"""The one result every runner returns, whatever ran the model (host, QEMU, a board over serial or SSH).

    result = QemuRunner(targets.load("cortex-m4")).run(elf, x)
    result.outputs.shape             # (N, 10): one row per input sample
    result.instructions              # emulators: instructions per inference; `seconds` stays None

Timing comes in the unit the runner can honestly measure: wall-clock seconds on real hardware, instruction counts
on an emulator (QEMU has no cycle model, so its wall time says nothing about the board). The report formats both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RunResult:
    """Outputs of N samples plus what the runner measured; fields it cannot measure stay None."""

    outputs: np.ndarray  # (N, ...) float32, in input order
    seconds: float | None = None  # real hardware only: seconds per inference
    instructions: int | None = None  # emulators only: instructions per inference (mean over the samples)
    per_symbol_instructions: dict[str, int] | None = None  # per inference, by function symbol
    stack_bytes: int | None = None  # deepest stack use seen while the model ran
    cycles: int | None = None  # real hardware only: CPU cycles per inference (DWT->CYCCNT, mean over the samples)
