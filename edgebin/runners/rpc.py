"""Run a TVM-compiled model on a board over TVM's RPC: upload the library, run every sample, time it there.

    runner = RpcRunner("rpc://192.168.1.20:9090")              # the board runs TVM's RPC server
    runner = RpcRunner("rpc-tracker://tracker.lan:9190/rpi4")  # any free board the tracker has under key rpi4
    result = runner.run(Path("out/rpi4/model.so"), x)          # x: (N, ...) float32, one sample per call
    result.outputs, result.seconds                             # seconds: median of `repeat` timed runs, on the board

On the board: `python -m tvm.exec.rpc_server --host 0.0.0.0 --port 9090` (from `pip install apache-tvm` of the
version that compiled the library), or with `--tracker HOST:9190 --key rpi4` to join a tracker started with
`python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190`. The library (`model.so`, a Relax VM executable) is
uploaded under a name derived from its contents, loaded into a Relax VM on the board's CPU, run once per sample
(outputs come back over the connection), and timed with TVM's `time_evaluator` on the board: the clock runs there,
so the network is not in the numbers.

RPC gives anyone who can reach the port the power to run code on the board: use it on a trusted network only.
Every connection has a limit: the TCP connect (`connect_timeout_s`), the wait for a free board behind a tracker and
the whole session (`timeout_s`, after which the server ends it).
"""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

from edgebin.errors import DeviceError, UsageError
from edgebin.runners.result import RunResult

log = logging.getLogger(__name__)

SERVER_PORT, TRACKER_PORT = 9090, 9190  # TVM's defaults
EXAMPLES = "rpc://HOST:9090 or rpc-tracker://HOST:9190/KEY"
T = TypeVar("T")


@dataclass(frozen=True)
class RpcDevice:
    """A parsed `rpc://host:port` or `rpc-tracker://host:port/key` URL."""

    host: str
    port: int
    key: str = ""  # the tracker's device key; empty for a direct server

    @property
    def tracker(self) -> bool:
        return bool(self.key)


def parse_rpc_url(url: str) -> RpcDevice:
    """`rpc://192.168.1.20:9090` or `rpc-tracker://tracker.lan:9190/rpi4` -> RpcDevice."""
    parts = urlsplit(url)
    if parts.scheme not in ("rpc", "rpc-tracker"):
        raise UsageError(f"{url!r} is not an RPC URL; expected {EXAMPLES}")
    try:
        port = parts.port or (SERVER_PORT if parts.scheme == "rpc" else TRACKER_PORT)
    except ValueError:
        raise UsageError(f"{url!r}: the port is not a number in 1-65535; expected {EXAMPLES}") from None
    key = parts.path.strip("/")
    if not parts.hostname or parts.query or parts.fragment or parts.username:
        raise UsageError(f"{url!r} is not of the form {EXAMPLES}")
    if parts.scheme == "rpc" and key:
        raise UsageError(f"{url!r}: a direct server takes no key; for a tracker use rpc-tracker://"
                         f"{parts.hostname}:{port}/{key}")
    if parts.scheme == "rpc-tracker" and not key:
        raise UsageError(f"{url!r} names no device key; expected rpc-tracker://{parts.hostname}:{port}/KEY (the "
                         f"--key the boards' RPC servers registered with)")
    return RpcDevice(host=parts.hostname, port=port, key=key)


class RpcRunner:
    """Run a model library on a board through TVM's RPC; outputs per sample, median seconds from the board.

        runner = RpcRunner("rpc://raspberrypi.local:9090", timeout_s=600)
        result = runner.run(Path("out/rpi4/model.so"), x, repeat=50)
    """

    def __init__(self, url: str, timeout_s: float = 600.0, connect_timeout_s: float = 10.0) -> None:
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise UsageError(f"RpcRunner: timeouts must be > 0, got {timeout_s} and {connect_timeout_s}")
        self.url, self.device = url, parse_rpc_url(url)
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s

    def run(self, library: Path, inputs: np.ndarray, *, repeat: int = 50, warmup: int = 5) -> RunResult:
        """Upload `library`, run each sample of `inputs` (N, ...) and time one sample `repeat` times on the board."""
        from edgebin.compile import tvm_adapter as tvm_api

        library = Path(library)
        if not library.is_file():
            raise UsageError(f"no model library at {library}")
        x = np.ascontiguousarray(inputs, dtype=np.float32)
        session = self._session()
        name = f"edgebin-{hashlib.sha256(library.read_bytes()).hexdigest()[:16]}.so"
        try:
            vm, device = tvm_api.rpc_load_vm(session, library, name)
        except Exception as err:  # TVM's errors carry the server's message; any of them means "cannot load"
            raise DeviceError(f"{self.url}: the RPC server could not load {library} ({_last_line(err)}); was it "
                              f"compiled for this board, with the TVM version the server runs?") from None
        try:
            outputs = [vm["main"](tvm_api.tensor_on(x[i : i + 1], device)).numpy() for i in range(len(x))]
            runs_s = tvm_api.time_function(vm, "main", [tvm_api.tensor_on(x[:1], device)], warmup=warmup,
                                           repeat=repeat, device=device)
        except Exception as err:
            raise DeviceError(f"{self.url}: running {library.name} failed ({_last_line(err)})") from None
        log.info("%s: %d samples, median %.3f ms over %d runs", self.url, len(x), 1e3 * np.median(runs_s), repeat)
        out = np.concatenate(outputs).astype(np.float32, copy=False)
        return RunResult(outputs=out, seconds=float(np.median(runs_s)))

    def _session(self) -> Any:
        """A session with the server, or with a free board the tracker hands out; DeviceError naming the fix."""
        from edgebin.compile import tvm_adapter as tvm_api

        dev = self.device
        what = "tracker" if dev.tracker else "server"
        try:
            socket.create_connection((dev.host, dev.port), timeout=self.connect_timeout_s).close()
        except OSError as err:
            start = (f"python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {dev.port}" if dev.tracker else
                     f"python -m tvm.exec.rpc_server --host 0.0.0.0 --port {dev.port}")
            raise DeviceError(f"cannot reach the TVM RPC {what} at {dev.host}:{dev.port} "
                              f"({err.strerror or type(err).__name__}); start it with `{start}`") from None
        try:
            if not dev.tracker:
                return tvm_api.rpc_connect(dev.host, dev.port, session_timeout_s=self.timeout_s)
            queue = tvm_api.rpc_tracker_queue(dev.host, dev.port)
            if dev.key not in queue:
                known = ", ".join(sorted(queue)) or "none"
                raise DeviceError(f"no board is registered under the key {dev.key!r} at the tracker {dev.host}:"
                                  f"{dev.port} (keys there: {known}); on the board: python -m tvm.exec.rpc_server "
                                  f"--tracker {dev.host}:{dev.port} --key {dev.key}")
            return _within(self.timeout_s, lambda: tvm_api.rpc_request(dev.host, dev.port, dev.key,
                                                                       session_timeout_s=self.timeout_s),
                           f"no board with key {dev.key!r} became free at the tracker {dev.host}:{dev.port}")
        except DeviceError:
            raise
        except Exception as err:  # connection and protocol errors from TVM's client
            raise DeviceError(f"{self.url}: the RPC {what} did not accept the session ({_last_line(err)})") from None


def _within(timeout_s: float, call: Callable[[], T], message: str) -> T:
    """`call()` in a daemon thread; DeviceError(message) if it has not returned in `timeout_s`."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = call()
        except Exception as err:  # handed to the caller's thread
            result["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise DeviceError(f"{message} within {timeout_s:.0f} s; raise the limit with --timeout")
    if "error" in result:
        raise result["error"]
    return result["value"]


def _last_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return (lines[-1] if lines else type(err).__name__)[:300]
