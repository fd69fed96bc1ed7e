"""`edgebin deploy out/ --to ssh://…` against a real OpenSSH server started here: an unprivileged `sshd` on a
loopback port with its own host key and authorized_keys, logging in as the user running the tests. The board is
this machine: the bundle is the runtime-free C bundle built for x86-64 Linux by the same code as the 32-bit Pi's
(a stand-in target whose cross compiler is x86_64-linux-gnu-gcc), copied with scp and run with ssh."""

from __future__ import annotations

import dataclasses
import getpass
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from edgebin import pipeline, targets
from edgebin.cli import main
from edgebin.compile.cortex_a import compile_cortex_a
from edgebin.errors import DeviceError, ToolchainMissingError, UsageError
from edgebin.metrics import run_onnxruntime
from edgebin.runners.ssh import SshRunner, parse_ssh_url
from edgebin.targets import LinuxToolchain

SSHD = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd",) if Path(p).is_file()), None)
pytestmark = [
    pytest.mark.skipif(SSHD is None, reason="OpenSSH server not installed (make setup: openssh-server)"),
    pytest.mark.skipif(not (shutil.which("ssh") and shutil.which("scp") and shutil.which("ssh-keygen")),
                       reason="OpenSSH client not installed (make setup: openssh-client)"),
    pytest.mark.skipif(shutil.which("x86_64-linux-gnu-gcc") is None, reason="no x86_64-linux-gnu-gcc (make setup)"),
]
STAND_IN = dataclasses.replace(
    targets.load("rpi4-armv7"), name="x86-linux", aliases=(), cflags=(), board="this machine",
    description="x86-64 Linux standing in for a Raspberry Pi in the SSH tests",
    linux=LinuxToolchain(triple="x86_64-linux-gnu", sysroot="/", qemu="qemu-x86_64", qemu_cpu="max",
                         packages=("gcc",), runtime="c"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
    return path


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """An sshd on 127.0.0.1 that accepts one key for this user; returns (port, ssh_config for the client, dir)."""
    folder = tmp_path_factory.mktemp("sshd")
    host_key, user_key = _keygen(folder / "host_key"), _keygen(folder / "user_key")
    shutil.copy(folder / "user_key.pub", folder / "authorized_keys")
    port = _free_port()
    (folder / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}", f"PidFile {folder / 'sshd.pid'}",
        "StrictModes no",  # the keys live under /tmp, which is world-writable
        "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password", f"Subsystem sftp {_sftp_server()}", "LogLevel ERROR", ""]))
    host_pub = (folder / "host_key.pub").read_text().split()
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    (folder / "ssh_config").write_text("\n".join([
        "Host *", f"  IdentityFile {user_key}", f"  UserKnownHostsFile {folder / 'known_hosts'}",
        "  StrictHostKeyChecking yes", "  LogLevel ERROR", ""]))
    if os.geteuid() == 0 and not Path("/run/sshd").is_dir():
        Path("/run/sshd").mkdir(mode=0o755)  # sshd's privilege separation directory; its init script makes it
    proc = subprocess.Popen([SSHD, "-f", str(folder / "sshd_config"), "-D", "-e"], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    if proc.poll() is not None:
        pytest.fail(f"sshd did not start: {proc.stderr.read().decode()}")
    try:
        yield port, folder / "ssh_config", folder
    finally:
        proc.terminate()
        proc.wait(10)


def _sftp_server() -> str:
    return next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                             "/usr/libexec/sftp-server") if Path(p).is_file()), "internal-sftp")


@pytest.fixture(scope="module")
def board_run(tiny_digits_run, tmp_path_factory) -> Path:
    """The export folder with the stand-in target's bundle compiled into it."""
    out = tmp_path_factory.mktemp("ssh") / "out"
    shutil.copytree(tiny_digits_run, out)
    compile_cortex_a(out / pipeline.MODEL_ONNX, STAND_IN, out / STAND_IN.name)
    return out


@pytest.fixture
def stand_in_target(monkeypatch):
    real = targets.all_targets()
    monkeypatch.setattr(targets, "all_targets", lambda: (*real, STAND_IN))


def _url(port: int, folder: Path, config: Path) -> str:
    return f"ssh://{getpass.getuser()}@127.0.0.1:{port}{folder}?config={config}"


def _cli(args, capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as done:
        code = done.code
    return code, capsys.readouterr().err


def test_deploy_runs_the_bundle_on_the_board_and_reports_its_milliseconds(board_run, sshd, stand_in_target,
                                                                         tmp_path, capsys):
    port, config, _ = sshd
    remote = tmp_path / "board" / "models" / "tiny"  # created by the deploy, parents included
    url = _url(port, remote, config)
    code, err = _cli(["deploy", board_run, "--to", url, "--eval-samples", "30"], capsys)
    assert code == 0, err
    report = json.loads((board_run / "report.json").read_text())
    board = report["board"]
    assert report["target"]["name"] == "x86-linux"  # the only bundle in the folder
    assert board["device"] == url and board["samples"] == 30 and board["timer"] == "runner-mean"
    assert 0 < board["ms_per_inference"] < 1000 and board["fp32_ms_per_inference"] > 0
    assert report["agreement"]["exact"] == 1.0 and report["agreement"]["fp32_top1"] == 1.0
    assert report["latency"]["engines"] == {} and report["emulator"]["instructions_per_inference"] is None
    for name in ("runner", "run.sh", "bundle.json", "inputs.bin", "outputs.bin"):
        assert (remote / name).is_file(), name  # the bundle stays deployed on the board
    assert os.access(remote / "runner", os.X_OK)
    assert (remote.parent / "tiny-fp32" / "runner").is_file()  # the FP32 baseline went beside it
    assert "runner-mean" not in (board_run / "report.md").read_text()  # said in words
    assert "CLOCK_MONOTONIC" in (board_run / "report.md").read_text()


def test_outputs_come_back_in_order_and_equal_onnxruntime(board_run, sshd, tmp_path):
    port, config, _ = sshd
    x = np.random.default_rng(1).standard_normal((17, 1, 8, 8)).astype(np.float32)
    result = SshRunner(_url(port, tmp_path / "b", config), timeout_s=60).run(board_run / STAND_IN.name, x)
    ref = run_onnxruntime(board_run / pipeline.MODEL_ONNX, x)
    np.testing.assert_array_equal(result.outputs, ref)  # int8 with fixed-point requant: bit-exact
    assert result.seconds > 0 and result.instructions is None


def test_connection_problems_are_one_clear_error(board_run, sshd, tmp_path, monkeypatch):
    port, config, folder = sshd
    bundle, x = board_run / STAND_IN.name, np.zeros((1, 1, 8, 8), np.float32)
    closed = _free_port()
    with pytest.raises(DeviceError, match=f"127.0.0.1:{closed} refused the connection"):
        SshRunner(_url(closed, tmp_path, config)).run(bundle, x)
    stranger = tmp_path / "ssh_config_stranger"  # a key the board does not know
    stranger.write_text(config.read_text().replace(str(folder / "user_key"), str(_keygen(tmp_path / "stranger"))))
    with pytest.raises(DeviceError, match="refused our key .*ssh-copy-id"):
        SshRunner(_url(port, tmp_path, stranger)).run(bundle, x)
    unknown = tmp_path / "ssh_config_unknown_host"
    unknown.write_text(config.read_text().replace(str(folder / "known_hosts"), str(tmp_path / "empty_known_hosts")))
    with pytest.raises(DeviceError, match="host key of 127.0.0.1 is not known"):
        SshRunner(_url(port, tmp_path, unknown)).run(bundle, x)
    wrong_arch = tmp_path / "aarch64-bundle"
    shutil.copytree(bundle, wrong_arch)
    manifest = json.loads((wrong_arch / "bundle.json").read_text())
    manifest["linux"]["triple"] = "aarch64-linux-gnu"
    (wrong_arch / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(DeviceError, match="is a x86_64 machine; .* compiled for aarch64-linux-gnu"):
        SshRunner(_url(port, tmp_path / "arch", config)).run(wrong_arch, x)
    with pytest.raises(DeviceError, match="running 1 sample did not finish within 0 s; raise the limit"):
        SshRunner(_url(port, tmp_path / "slow", config), timeout_s=0.001).run(bundle, x)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    with pytest.raises(ToolchainMissingError, match="ssh not found.*apt-get install openssh-client"):
        SshRunner(_url(port, tmp_path, config)).run(bundle, x)


def test_deploy_errors_exit_with_one_line(board_run, sshd, stand_in_target, tmp_path, capsys):
    port, config, _ = sshd
    code, err = _cli(["deploy", board_run, "--to", f"ssh://{getpass.getuser()}@127.0.0.1:{_free_port()}",
                      "--eval-samples", "2"], capsys)
    assert code == 9 and err.startswith("error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, err = _cli(["deploy", board_run, "--to", "rpc://127.0.0.1:9090"], capsys)
    assert code == 2 and "edgebin validate" in err


@pytest.mark.parametrize(("url", "match"), [
    ("ssh://", "names no host"),
    ("ssh://pi@host:99999", "not a number"),
    ("ssh://pi@host?key=x", "unknown option key"),
    ("ssh://pi@host?identity=/no/such/key", "is not a file"),
    ("scp://pi@host", "not an ssh:// URL"),
])
def test_bad_urls_name_the_expected_form(url, match):
    with pytest.raises(UsageError, match=match):
        parse_ssh_url(url)


def test_url_parts():
    dest = parse_ssh_url("ssh://pi@raspberrypi.local:2222/home/pi/models")
    assert (dest.user, dest.host, dest.port, dest.folder) == ("pi", "raspberrypi.local", 2222, "/home/pi/models")
    assert parse_ssh_url("ssh://[::1]").scp_path("x") == "[::1]:x"
