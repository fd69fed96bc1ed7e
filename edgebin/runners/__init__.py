"""Runners execute a compiled model where it will live, or on the emulator that stands in for it.

    from edgebin.runners import QemuRunner
    runner = QemuRunner(targets.load("cortex-m4"))
    result = runner.run(runner.build(bundle_dir, work_dir), x)    # a RunResult

Every runner returns the same `RunResult` (outputs, plus seconds on hardware or instructions on an emulator) and
runs every external process under a timeout. `qemu` builds and runs Cortex-M bundles under qemu-system-arm,
`footprint` measures flash and RAM and checks them against the board, `plugin` builds the QEMU
instruction-count plugin. For Raspberry Pis, `qemu_user` runs bundles under qemu-aarch64 / qemu-arm, `ssh` on the
board over SSH, and `rpc` runs TVM libraries through TVM's RPC server on the board.
"""

from edgebin.runners.footprint import DoesNotFitError, Footprint, check_fits, measure_footprint
from edgebin.runners.qemu import FirmwareBuildError, QemuRunner
from edgebin.runners.result import RunResult

__all__ = ["DoesNotFitError", "FirmwareBuildError", "Footprint", "QemuRunner", "RunResult", "check_fits",
           "measure_footprint"]
