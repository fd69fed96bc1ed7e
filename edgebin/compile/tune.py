"""MetaSchedule tuning of a model's kernels, with the database kept beside the artefact and reused.

    config = TuneConfig(trials=500, work_dir=Path("out/x86/tuning"))
    with target:
        lowered = lower(mod, integer=False, schedule=False)     # fused kernels with TVM's default loops
    mod, summary = tune_kernels(lowered.mod, target, config)    # runs only the trials the database lacks
    summary.trials_run                                         # 0 when the same model is compiled again

Each kernel is a MetaSchedule task; `trials` is the budget for the whole model, which TVM's gradient task scheduler
spreads over the tasks. Candidates are built by `builder` and timed by `runner`, by default on this machine with
the target's `num-cores` threads. For a board, the runner is the one thing that changes (plus a cross compiler):

    config = TuneConfig(trials=500, work_dir=Path("out/rpi4/tuning"), runner=rpc_runner("192.168.1.20", 9090),
                        builder=cross_builder("aarch64-linux-gnu-g++"))

The database is MetaSchedule's JSON pair (`database_workload.json`, `database_tuning_record.json`) in `work_dir`,
with `budget.json` (trials asked for per model, so a search space that ran dry is not searched again) and one log
per task in `logs/`. Kernels the database has a schedule for come back marked `tirx.is_scheduled`; the others
keep TVM's default loops, for `host.schedule_cpu_loops` to reorder.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgebin.atomic import atomic_write_text
from edgebin.compile import tvm_adapter as tvm_api
from edgebin.errors import ToolchainMissingError, UsageError

log = logging.getLogger(__name__)

ms = tvm_api.meta_schedule
BUDGET = "budget.json"
STRATEGIES = ("evolutionary", "replay-trace")
SCHEDULED = "tirx.is_scheduled"  # the PrimFunc attribute MetaScheduleApplyDatabase sets
TUNING_PACKAGES = {"xgboost": "xgboost==3.2.0", "psutil": "psutil==7.2.2", "cloudpickle": "cloudpickle==3.1.2",
                   "scipy": "scipy==1.17.1"}  # keep in step with pyproject.toml and the Makefile


@dataclass(frozen=True)
class TuneConfig:
    """How to tune: `trials` for the whole model, the database folder, and where candidates are built and timed.

    >>> TuneConfig(trials=200, work_dir=Path("out/x86/tuning"))                      # this machine
    >>> TuneConfig(200, Path("out/rpi4/tuning"), runner=rpc_runner("pi4.lan", 9090),
    ...            builder=cross_builder("aarch64-linux-gnu-g++"))                 # a board over TVM RPC
    """

    trials: int
    work_dir: Path
    runner: Any = None  # a MetaSchedule Runner, or a function making one (rpc_runner); None: this CPU
    builder: Any = None  # a MetaSchedule Builder, or a function making one (cross_builder); None: this compiler
    timeout_s: float = 30.0  # per candidate build and per run (the local defaults)
    strategy: str = "evolutionary"  # cost-model-guided search; "replay-trace": random samples (cheap, for tests)

    def __post_init__(self) -> None:
        if self.trials < 0:
            raise UsageError(f"--tune takes a number of trials >= 0, got {self.trials}")
        if self.strategy not in STRATEGIES:
            raise UsageError(f"unknown search strategy {self.strategy!r}; valid: {', '.join(STRATEGIES)}")


@dataclass(frozen=True)
class TuneSummary:
    """What one `tune_kernels` call found and did."""

    tasks: int  # kernels MetaSchedule can tune
    trials_before: int  # trials the database already held for them
    trials_run: int  # trials run by this call (0: all came from the database)
    tuned: tuple[str, ...]  # kernels compiled with a schedule from the database
    seconds: float
    work_dir: Path

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "trials_before": self.trials_before, "trials_run": self.trials_run,
                "tuned_kernels": list(self.tuned), "seconds": round(self.seconds, 1), "database": str(self.work_dir)}


def tune_kernels(mod, target, config: TuneConfig, *, progress: Any = None) -> tuple[Any, TuneSummary]:
    """Tune the fused kernels of `mod` (after FuseTIR, default loops) up to `config.trials`; apply the best.

    Trials already in the database for these kernels count toward the budget, so a second compile of the same
    model runs none. `progress` is a `pipeline.Progress` (a bar per tuning run), or None for log lines only.
    """
    start = time.perf_counter()
    tvm_api.load_tensor_intrinsics(target)  # before MetaSchedule imports every backend's (minutes)
    work_dir = Path(config.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)  # JSONDatabase does not create it
    database = ms.database.JSONDatabase(work_dir=str(work_dir))
    tasks = [t for t in ms.relax_integration.extract_tasks(mod, target) if not _attr(t.mod, SCHEDULED)]
    key = _model_key(tasks)
    before = max(_trials_in(database, tasks), _budget(work_dir).get(key, 0))
    missing = config.trials - before
    run = 0
    if tasks and missing > 0:
        _require_packages()
        log.info("tuning %d kernels: %d trials (%d in %s already)", len(tasks), missing, before, work_dir)
        run = _tune(tasks, target, database, missing, config, progress)
        _record_budget(work_dir, key, config.trials)
    elif tasks:
        log.info("tuning database %s covers %d trials of %d asked for: no tuning", work_dir, before, config.trials)
    mod = _apply_database(mod, target, database)
    tuned = tuple(sorted(gv.name_hint for gv, f in mod.functions.items()
                         if isinstance(f, tvm_api.tirx.PrimFunc) and _attr(f, SCHEDULED)))
    summary = TuneSummary(len(tasks), before, run, tuned, time.perf_counter() - start, work_dir)
    log.info("%d of %d kernels use tuned schedules (%d trials run, %.0f s)", len(tuned), len(tasks), run,
             summary.seconds)
    return mod, summary


def tune_config(trials: int, work_dir: Path, **options: Any) -> TuneConfig | None:
    """The TuneConfig for `--tune trials`: None when there is nothing to tune and no database to apply."""
    if trials > 0 or (Path(work_dir) / "database_workload.json").is_file():
        return TuneConfig(trials, Path(work_dir), **options)
    return None


def rpc_runner(host: str, port: int, key: str = "", *, timeout_s: float = 60.0,
               repeat: int = 3) -> Callable[[], Any]:
    """A maker of a MetaSchedule runner that times candidates on a board's TVM RPC server (made when needed).

    `key` empty: `python -m tvm.exec.rpc_server --port PORT` at host:port. `key` set: host:port is a tracker
    (`python -m tvm.exec.rpc_tracker`) and any free board registered under `key` runs the candidate.
    """
    return functools.partial(_make_rpc_runner, host, int(port), key, timeout_s, repeat)


def _make_rpc_runner(host: str, port: int, key: str, timeout_s: float, repeat: int) -> Any:
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=key or "(no tracker)",
                                 session_timeout_sec=int(math.ceil(timeout_s)))
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=repeat, min_repeat_ms=100, enable_cpu_cache_flush=False)
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator,
                               f_create_session=None if key else tvm_api.rpc_connect_direct)


def cross_builder(compiler: str, *, timeout_s: float = 30.0, workers: int | None = None) -> Callable[[], Any]:
    """A maker of a MetaSchedule builder linking candidates with a cross compiler (`aarch64-linux-gnu-g++`)."""
    return functools.partial(ms.builder.LocalBuilder, max_workers=workers, timeout_sec=timeout_s,
                             f_build=tvm_api.build_candidate,
                             f_export=functools.partial(tvm_api.export_candidate_cross, compiler),
                             initializer=functools.partial(tvm_api.tuning_worker_init, (), 0))


# --- the tuning run ------------------------------------------------------------------------------------------


def _tune(tasks, target, database, trials: int, config: TuneConfig, progress: Any) -> int:
    intrinsics = tvm_api.intrinsic_modules(target)
    threads = int(target.attrs.get("num-cores", 0) or 0)  # time candidates with the threads the artefact gets
    names = [t.task_name for t in tasks]
    per_iter = max(1, min(64, trials // len(tasks)))  # every task gets a turn, even on a small budget
    with _logs_to(config.work_dir / "logs") as task_logger, _stage(progress, names, trials) as advance:
        builder = _made(config.builder, lambda: ms.builder.LocalBuilder(  # a process pool per batch: sized to it
            max_workers=min(os.cpu_count() or 1, per_iter), timeout_sec=config.timeout_s,
            f_build=tvm_api.build_candidate,
            initializer=functools.partial(tvm_api.tuning_worker_init, intrinsics, 0)))
        runner = _made(config.runner, lambda: ms.runner.LocalRunner(
            timeout_sec=config.timeout_s,
            evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=100),
            initializer=functools.partial(tvm_api.tuning_worker_init, (), threads)))
        contexts = [ms.TuneContext(mod=task.dispatched[0], target=task.target, space_generator="post-order-apply",
                                   search_strategy=config.strategy, task_name=task.task_name,
                                   logger=task_logger(task.task_name), rand_state=seed).clone()
                    for task, seed in zip(tasks, ms.utils.fork_seed(None, n=len(tasks)), strict=True)]
        counter = _TrialCounter(names, advance)
        ms.tune.tune_tasks(
            tasks=contexts, task_weights=[float(t.weight) for t in tasks], work_dir=str(config.work_dir),
            max_trials_global=trials, max_trials_per_task=trials,
            num_trials_per_iter=per_iter,
            builder=builder, runner=runner, database=database, cost_model="xgb",
            measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), counter],
            task_scheduler="gradient")
    return counter.trials  # derived_object forwards attributes to the Python object


@tvm_api.derived_object
class _TrialCounter(ms.measure_callback.PyMeasureCallback):
    """Counts measured candidates for the progress bar and logs each task's best time so far."""

    def __init__(self, names: list[str], advance: Callable[[int], None]) -> None:
        self.names, self.advance = names, advance
        self.trials = 0
        self.best_s: dict[int, float] = {}

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        times = [sum(float(s) for s in r.run_secs) / len(r.run_secs) for r in runner_results
                 if r.error_msg is None and r.run_secs]
        if times:
            self.best_s[task_id] = min(self.best_s.get(task_id, math.inf), *times)
        self.trials += len(measure_candidates)
        best = self.best_s.get(task_id)
        log.info("tuning %s: %d candidates (%d failed), best %s", self.names[task_id], len(measure_candidates),
                 len(measure_candidates) - len(times), "none yet" if best is None else f"{best * 1e6:.1f} us")
        self.advance(self.trials)


@contextlib.contextmanager
def _stage(progress: Any, names: list[str], trials: int) -> Iterator[Callable[[int], None]]:
    if progress is None:
        yield lambda done: None
        return
    with progress.stage(f"Tuning {len(names)} kernels with MetaSchedule", total=trials) as advance:
        yield advance


@contextlib.contextmanager
def _logs_to(directory: Path) -> Iterator[Callable[[str], logging.Logger]]:
    """MetaSchedule's own logs (its task table, every trial) go to files in `directory`, not to the terminal."""
    directory.mkdir(parents=True, exist_ok=True)
    attached: list[tuple[logging.Logger, logging.Handler, int, bool]] = []

    def to_file(logger: logging.Logger, name: str) -> logging.Logger:
        handler = logging.FileHandler(directory / f"{name}.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        attached.append((logger, handler, logger.level, logger.propagate))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
        return logger

    to_file(logging.getLogger("tvm.s_tir.meta_schedule"), "task_scheduler")  # scheduler, builder, cost model
    try:
        yield lambda task: to_file(logging.getLogger(f"edgebin.tune.{task}"), f"task_{task}")
    finally:
        for logger, handler, level, propagate in reversed(attached):
            logger.removeHandler(handler)
            handler.close()
            logger.setLevel(level)
            logger.propagate = propagate


# --- the database ----------------------------------------------------------------------------------------------


def _apply_database(mod, target, database):
    """Replace each kernel the database has records for with its best schedule (marked tirx.is_scheduled)."""
    with target, database, tvm_api.tvm.transform.PassContext(opt_level=3):
        return tvm_api.relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)


def _trials_in(database, tasks) -> int:
    """Tuning records (failed candidates included) the database holds for these tasks."""
    records = None
    total = 0
    for task in tasks:
        workload_mod = task.dispatched[0]
        if not database.has_workload(workload_mod):
            continue
        if records is None:
            records = database.get_all_tuning_records()
        workload = database.commit_workload(workload_mod)  # the stored one; nothing is written when it exists
        total += sum(1 for r in records if r.workload.same_as(workload))
    return total


def _model_key(tasks) -> str:
    """Names the set of kernels of one model (the same model compiled again gets the same key)."""
    hashes = sorted(str(tvm_api.structural_hash(t.dispatched[0])) for t in tasks)
    return hashlib.sha256(" ".join(hashes).encode()).hexdigest()[:16]


def _budget(work_dir: Path) -> dict[str, int]:
    try:
        return {str(k): int(v) for k, v in json.loads((work_dir / BUDGET).read_text()).items()}
    except (FileNotFoundError, ValueError, AttributeError, TypeError):
        return {}


def _record_budget(work_dir: Path, key: str, trials: int) -> None:
    budget = _budget(work_dir)
    budget[key] = max(trials, budget.get(key, 0))
    atomic_write_text(work_dir / BUDGET, json.dumps(budget, indent=1, sort_keys=True) + "\n")


def _require_packages() -> None:
    """MetaSchedule imports these mid-run and fails there; check them before minutes of work."""
    import importlib.util

    missing = [name for name in TUNING_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ToolchainMissingError(f"tuning needs {', '.join(missing)} (MetaSchedule does not declare them): run "
                                    f"`make setup`, or `pip install --no-deps {' '.join(TUNING_PACKAGES.values())}`")


def _made(component: Any, default: Callable[[], Any]) -> Any:
    """A builder or runner: `component` itself, made by it (a maker), or the default (makers start processes)."""
    if component is None:
        return default()
    if isinstance(component, tvm_api.tvm.runtime.Object) or not callable(component):
        return component
    return component()


def _attr(func, name: str) -> bool:
    attrs = getattr(func, "attrs", None)
    return bool(attrs is not None and attrs.get(name, False))
