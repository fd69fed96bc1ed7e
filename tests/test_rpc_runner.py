"""`edgebin validate --device rpc://…` and `rpc-tracker://…` against TVM's own RPC server and tracker, started here
on loopback. The host (x86) build stands in for the board: the same model.so the in-process run loads, uploaded
to the server, run per sample and timed there. Only loopback is tested, never a real board."""

from __future__ import annotations

import json
import shutil
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from tvm import rpc
from tvm.rpc import base
from tvm.rpc.tracker import PopenTrackerServerState

from edgebin import pipeline
from edgebin.cli import main
from edgebin.compile import load_artefact
from edgebin.compile.tvm_adapter import rpc_tracker_queue
from edgebin.errors import DeviceError, UsageError
from edgebin.metrics import run_onnxruntime
from edgebin.runners.rpc import RpcRunner, parse_rpc_url

KEY = "edgebin-test"



def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def servers():
    """{"server": port of a plain RPC server, "tracker": port of a tracker with one server under KEY}.

    The tracker runs in a thread of this process (TVM's own class, as its Tracker's worker process runs it); the
    two servers are processes that import TVM, started in parallel (seconds each)."""
    pytest.importorskip("tornado", reason="TVM's RPC tracker needs tornado (pip install -e '.[dev]')")
    tracker = PopenTrackerServerState("127.0.0.1", port=_free_port(), port_end=65535, silent=True)
    started: dict[str, object] = {}
    port = _free_port()
    makers = {"server": lambda: rpc.Server(host="127.0.0.1", port=port, port_end=port + 1, silent=True),
              "tracked": lambda: rpc.Server(host="127.0.0.1", port=_free_port(), port_end=65535, key=KEY,
                                            tracker_addr=("127.0.0.1", tracker.port), silent=True)}
    threads = [threading.Thread(target=lambda n=name, m=make: started.__setitem__(n, m()))
               for name, make in makers.items()]
    for t in threads:
        t.start()
    try:
        yield {"server": port, "tracker": tracker.port, "started": started, "threads": threads}
    finally:
        for t in threads:
            t.join(120)
        for server in started.values():
            server.terminate()
        _stop_tracker(tracker)


def _stop_tracker(tracker) -> None:
    with socket.create_connection(("127.0.0.1", tracker.port), timeout=10) as sock:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        base.recvall(sock, 4)
        base.sendjson(sock, [base.TrackerCode.STOP, tracker.stop_key])
        base.recvjson(sock)
    tracker.thread.join(10)


@pytest.fixture(scope="module")
def host_run(tiny_digits_run, servers, tmp_path_factory) -> Path:
    """The export folder with the x86 build in it, compiled while the servers start; then waits for them."""
    out = tmp_path_factory.mktemp("rpc") / "out"
    shutil.copytree(tiny_digits_run, out)
    pipeline.compile(out / pipeline.MODEL_ONNX, target="x86", out_dir=out)
    for t in servers["threads"]:
        t.join(120)
    assert set(servers["started"]) == {"server", "tracked"}, "the RPC servers did not start"
    deadline = time.monotonic() + 60
    while KEY not in rpc_tracker_queue("127.0.0.1", servers["tracker"]):  # the server registers after it binds
        assert time.monotonic() < deadline, "the RPC server did not register with the tracker"
        time.sleep(0.2)
    return out


def _cli(args, capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as done:
        code = done.code
    return code, capsys.readouterr().err


def test_rpc_server_runs_the_same_library_as_in_process(host_run, servers):
    x = np.random.default_rng(0).standard_normal((12, 1, 8, 8)).astype(np.float32)
    result = RpcRunner(f"rpc://127.0.0.1:{servers['server']}").run(host_run / "x86" / "model.so", x, repeat=5)
    here = load_artefact(host_run / "x86").run(x)
    np.testing.assert_array_equal(result.outputs, here)  # the same code on the same CPU: bit for bit
    ort = run_onnxruntime(host_run / pipeline.MODEL_ONNX, x)
    assert (result.outputs.argmax(1) == ort.argmax(1)).all()
    assert 0 < result.seconds < 1.0 and result.instructions is None


def test_validate_over_rpc_reports_board_milliseconds(host_run, servers, capsys):
    url = f"rpc://127.0.0.1:{servers['server']}"
    code, err = _cli(["validate", host_run, "--device", url, "--eval-samples", "40", "--repeat", "5"], capsys)
    assert code == 0, err
    report = json.loads((host_run / "report.json").read_text())
    board = report["board"]
    assert report["target"]["name"] == "x86"  # the only artefact in the folder
    assert board["device"] == url and board["samples"] == 40 and board["timer"] == "time-evaluator-median"
    assert board["timed_runs"] == 5 and board["ms_per_inference"] > 0 and board["fp32_ms_per_inference"] > 0
    assert report["agreement"]["samples"] == 40 and report["agreement"]["top1"] >= 0.99
    assert report["agreement"]["fp32_top1"] == 1.0 and report["accuracy"]["compiled_fp32"] is not None
    assert report["latency"]["engines"] == {} and report["emulator"]["instructions_per_inference"] is None
    assert "On the board" in (host_run / "report.md").read_text()


def test_validate_through_the_tracker(host_run, servers, capsys):
    url = f"rpc-tracker://127.0.0.1:{servers['tracker']}/{KEY}"
    code, err = _cli(["validate", host_run, "--target", "x86", "--device", url, "--eval-samples", "20", "--repeat",
                      "5"], capsys)
    assert code == 0, err
    report = json.loads((host_run / "report.json").read_text())
    assert report["board"]["device"] == url and report["board"]["ms_per_inference"] > 0
    assert report["agreement"]["top1"] >= 0.99


@pytest.mark.parametrize(("url", "match"), [
    ("rpc://127.0.0.1:9090/rpi4", "takes no key"),
    ("rpc-tracker://127.0.0.1:9190", "names no device key"),
    ("rpc://127.0.0.1:port", "not a number"),
    ("ssh://pi@host", "not an RPC URL"),
])
def test_bad_urls_name_the_expected_form(url, match):
    with pytest.raises(UsageError, match=match):
        parse_rpc_url(url)


def test_errors_name_the_problem_and_the_fix(host_run, servers, tmp_path, capsys):
    x = np.zeros((1, 1, 8, 8), np.float32)
    library = host_run / "x86" / "model.so"
    with pytest.raises(DeviceError, match=r"cannot reach the TVM RPC server .*tvm.exec.rpc_server"):
        RpcRunner(f"rpc://127.0.0.1:{_free_port()}", connect_timeout_s=5).run(library, x)
    with pytest.raises(DeviceError, match=rf"no board is registered under the key 'rpi9'.*keys there: {KEY}"):
        RpcRunner(f"rpc-tracker://127.0.0.1:{servers['tracker']}/rpi9").run(library, x)
    not_a_library = tmp_path / "model.so"
    not_a_library.write_bytes(b"\x7fELF but not really")
    with pytest.raises(DeviceError, match="could not load"):
        RpcRunner(f"rpc://127.0.0.1:{servers['server']}").run(not_a_library, x)
    code, err = _cli(["validate", host_run, "--device", f"rpc://127.0.0.1:{_free_port()}", "--eval-samples", "5"],
                     capsys)
    assert code == 9 and "Traceback" not in err and err.startswith("error:") and len(err.strip().splitlines()) == 1
