"""Run a Raspberry Pi bundle on the board itself over SSH: copy it, run it, bring outputs and timings back.

    runner = SshRunner("ssh://pi@raspberrypi.local", timeout_s=600)
    result = runner.run(Path("out/rpi4"), x)     # x: (N, ...) float32, checked against bundle.json
    result.outputs, result.seconds               # seconds: mean wall-clock time per inference, on the board

The URL is `ssh://[user@]host[:port][/remote/folder][?identity=KEY&config=FILE]`. The bundle goes to the remote
folder (default `edgebin/<target>` under the user's home), together with the samples as `inputs.bin`; then the
board runs `./run.sh inputs.bin outputs.bin N` there (one sample at a time, after one untimed warm-up) and prints
`seconds_per_inference`, the mean of CLOCK_MONOTONIC around each inference. Nothing is deleted on the board: the
folder is created if needed and its files are overwritten, so the bundle stays deployed for later runs.

Everything goes through the system OpenSSH client (`ssh`, `scp`) with `BatchMode=yes` (a key, never a password
prompt) and `ConnectTimeout`, each process under a timeout. `identity=` names the private key (`ssh -i`),
`config=` an ssh_config file (`ssh -F`); otherwise `~/.ssh/config` and the default keys apply as for a plain
`ssh`. The board's host key must be known (`~/.ssh/known_hosts`): connect once by hand to check and accept it.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from edgebin.compile.cortex_a import CortexABundle, load_bundle
from edgebin.errors import DeviceError, InputShapeError, ToolchainMissingError, UsageError
from edgebin.runners.qemu_user import RUNNER_STATUS
from edgebin.runners.result import RunResult

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10  # ssh's own TCP + handshake limit (ConnectTimeout)
COPY_TIMEOUT_S = 300.0  # one scp of a bundle: the TVM runtime is ~5 MB, on a slow Wi-Fi link
CONTROL_TIMEOUT_S = 60.0  # a short remote command (mkdir)
EXAMPLE = "ssh://pi@raspberrypi.local[:22][/remote/folder][?identity=~/.ssh/id_ed25519]"
OPTIONS = ("identity", "config")
MACHINES = {"aarch64": {"aarch64", "arm64"}, "arm": {"armv7l", "armv8l", "aarch64"}, "x86_64": {"x86_64"}}


@dataclass(frozen=True)
class SshDestination:
    """A parsed `ssh://` URL."""

    host: str
    user: str | None = None
    port: int = 22
    folder: str | None = None  # on the board; None: edgebin/<target> under the home directory
    identity: str | None = None  # private key file (ssh -i)
    config: str | None = None  # ssh_config file (ssh -F)

    @property
    def login(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def scp_path(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        return f"{self.user}@{host}:{path}" if self.user else f"{host}:{path}"


def parse_ssh_url(url: str) -> SshDestination:
    """`ssh://pi@raspberrypi.local:2222/home/pi/models?identity=~/.ssh/pi` -> SshDestination."""
    parts = urlsplit(url)
    if parts.scheme != "ssh":
        raise UsageError(f"{url!r} is not an ssh:// URL; expected {EXAMPLE}")
    try:
        port = parts.port or 22
    except ValueError:
        raise UsageError(f"{url!r}: the port is not a number in 1-65535; expected {EXAMPLE}") from None
    if not parts.hostname:
        raise UsageError(f"{url!r} names no host; expected {EXAMPLE}")
    query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=False)
    unknown = sorted(set(query) - set(OPTIONS))
    if unknown or parts.fragment:
        raise UsageError(f"{url!r}: unknown option {', '.join(unknown) or '#' + parts.fragment}; valid: "
                         f"{', '.join(OPTIONS)}")
    options = {key: str(Path(values[-1]).expanduser()) for key, values in query.items()}
    for key, path in options.items():
        if not Path(path).is_file():
            raise UsageError(f"{url!r}: {key}={path} is not a file")
    folder = unquote(parts.path).rstrip("/") or None
    return SshDestination(host=parts.hostname, user=unquote(parts.username) if parts.username else None, port=port,
                          folder=folder, **options)


class SshRunner:
    """Run a Cortex-A bundle on a Linux board over SSH; outputs from a file, seconds from the board's clock.

        runner = SshRunner("ssh://pi@192.168.1.20", timeout_s=600)
        runner.deploy(Path("out/rpi4"))              # only copy; returns the folder on the board
        result = runner.run(Path("out/rpi4"), x)     # copy and run N samples
    """

    def __init__(self, url: str, timeout_s: float = 600.0, folder: str | None = None) -> None:
        if timeout_s <= 0:
            raise UsageError(f"SshRunner: timeout_s must be > 0, got {timeout_s}")
        self.url, self.dest, self.timeout_s = url, parse_ssh_url(url), timeout_s
        self.folder = folder  # overrides the URL's folder (the FP32 baseline goes beside the bundle)

    def remote_folder(self, bundle: CortexABundle) -> str:
        return self.folder or self.dest.folder or f"edgebin/{bundle.target}"

    def deploy(self, bundle_dir: Path, extra: tuple[Path, ...] = ()) -> str:
        """Copy the bundle (and `extra` files) into its folder on the board; returns that folder."""
        bundle = load_bundle(Path(bundle_dir))
        folder = self.remote_folder(bundle)
        machine = self._ssh(f"mkdir -p {shlex.quote(folder)} && uname -m", CONTROL_TIMEOUT_S, "preparing").strip()
        _check_machine(bundle, machine, self.dest.login)
        sources = [str(p) for p in (*board_files(bundle), *extra)]
        self._call([self._tool("scp"), "-r", "-p", "-q", *self._options("-P"), *sources,
                    self.dest.scp_path(folder + "/")], COPY_TIMEOUT_S, "copying the bundle")
        log.info("deployed %s to %s:%s (%s)", bundle.directory, self.dest.login, folder, machine)
        return folder

    def run(self, bundle_dir: Path, inputs: np.ndarray) -> RunResult:
        """Copy the bundle and `inputs` (N, ...) to the board, run them there and return outputs and seconds."""
        bundle = load_bundle(Path(bundle_dir).resolve())
        manifest = bundle.manifest
        per_sample = int(np.prod(manifest["input"]["shape"]))
        x = np.ascontiguousarray(inputs, dtype=manifest["input"]["dtype"])
        n = int(x.shape[0]) if x.ndim else 0
        if n == 0 or x.size != n * per_sample:
            raise InputShapeError(f"{bundle.directory.name} takes samples of shape {manifest['input']['shape']}; "
                                  f"got an array of shape {tuple(np.shape(inputs))}")
        with tempfile.TemporaryDirectory(prefix="edgebin-ssh-") as tmp:
            work = Path(tmp)
            x.tofile(work / "inputs.bin")
            folder = self.deploy(bundle.directory, (work / "inputs.bin",))
            command = shlex.join(bundle.command("inputs.bin", "outputs.bin", n))
            what = f"running {n} sample{'s' * (n != 1)}"
            stdout = self._ssh(f"cd {shlex.quote(folder)} && {command}", self.timeout_s, what, runner=True)
            self._call([self._tool("scp"), "-q", *self._options("-P"),
                        self.dest.scp_path(f"{folder}/outputs.bin"), str(work / "outputs.bin")],
                       COPY_TIMEOUT_S, "copying the outputs back")
            info = dict(line.split(maxsplit=1) for line in stdout.splitlines() if " " in line)
            out = np.fromfile(work / "outputs.bin", dtype=info.get("output_dtype", manifest["output"]["dtype"]))
        out_shape = list(manifest["output"]["shape"])
        if out.size != n * int(np.prod(out_shape)):
            raise DeviceError(f"{self.dest.login}: the runner wrote {out.size} output values for {n} samples, "
                              f"expected {n * int(np.prod(out_shape))}")
        out_dims = out_shape[1:] if out_shape[:1] == [1] else out_shape
        seconds = float(info["seconds_per_inference"]) if "seconds_per_inference" in info else None
        return RunResult(outputs=out.astype(np.float32, copy=False).reshape(n, *out_dims), seconds=seconds)

    # --- processes ---------------------------------------------------------------------------------------

    def _options(self, port_flag: str) -> list[str]:
        """Options shared by ssh and scp (`port_flag`: ssh takes -p, scp -P)."""
        opts = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}", "-o", "ServerAliveInterval=15",
                "-o", "ServerAliveCountMax=4", port_flag, str(self.dest.port)]
        if self.dest.config:
            opts += ["-F", self.dest.config]
        if self.dest.identity:
            opts += ["-i", self.dest.identity, "-o", "IdentitiesOnly=yes"]
        return opts

    def _ssh(self, command: str, timeout_s: float, what: str, *, runner: bool = False) -> str:
        cmd = [self._tool("ssh"), *self._options("-p"), self.dest.login, command]
        return self._call(cmd, timeout_s, what, runner=runner)

    def _call(self, cmd: list[str], timeout_s: float, what: str, *, runner: bool = False) -> str:
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{self.dest.login}: {what} did not finish within {timeout_s:.0f} s"
                              + ("; raise the limit with --timeout" if runner else "")) from None
        if proc.returncode == 255 or (proc.returncode != 0 and not runner):
            raise DeviceError(self._connection_error(proc.stderr, what))
        if proc.returncode != 0:
            meaning = RUNNER_STATUS.get(proc.returncode, "the runner failed")
            if proc.returncode == 126:
                meaning = "the runner is not executable there (a noexec file system?)"
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise DeviceError(f"{self.dest.login}: the bundle exited with {proc.returncode}, {meaning}: {tail}")
        return proc.stdout

    def _connection_error(self, stderr: str, what: str) -> str:
        """One line saying what went wrong with the connection and what to do, from ssh's or scp's stderr."""
        dest, port = self.dest, self.dest.port
        text = stderr.strip()
        if "Could not resolve hostname" in text:
            return f"cannot resolve the host name {dest.host!r} (in {self.url}); check it, or use the board's IP"
        if "Connection refused" in text:
            return f"{dest.host}:{port} refused the connection: is the SSH server running on the board, on port {port}?"
        if any(s in text for s in ("timed out", "No route to host", "Network is unreachable", "Connection reset")):
            return f"cannot reach {dest.host}:{port} ({text.splitlines()[-1]}); is the board on and on this network?"
        if "Host key verification failed" in text or "REMOTE HOST IDENTIFICATION HAS CHANGED" in text:
            return (f"the host key of {dest.host} is not known or has changed: connect once with "
                    f"`ssh -p {port} {dest.login}` to check and accept it")
        if "Permission denied" in text or "Too many authentication failures" in text:
            return (f"{dest.login} refused our key (Permission denied): install it with `ssh-copy-id -p {port} "
                    f"{dest.login}`, or name it in the URL with ?identity=PATH (no password prompts: BatchMode)")
        last = text.splitlines()[-1] if text else "no message"
        return f"{dest.login}: {what} failed: {last}"

    @staticmethod
    def _tool(name: str) -> str:
        path = shutil.which(name)
        if path is None:
            raise ToolchainMissingError(f"{name} not found (the OpenSSH client runs bundles on boards): apt-get "
                                        f"install openssh-client")
        return path


def board_files(bundle: CortexABundle) -> list[Path]:
    """What goes to the board: the files bundle.json lists (a folder as "src/"), bundle.json and the README; not
    what edgebin keeps beside them here (a tuning database, a report)."""
    names = [*bundle.manifest.get("files", []), "bundle.json", "README.md"]
    paths = [bundle.directory / name.rstrip("/") for name in dict.fromkeys(names)]
    return [p for p in paths if p.exists()]


def _check_machine(bundle: CortexABundle, machine: str, login: str) -> None:
    """A clear error when the board cannot run the bundle's code at all (an aarch64 bundle on a 32-bit board)."""
    triple = bundle.manifest.get("linux", {}).get("triple", "")
    arch = triple.split("-", 1)[0]
    allowed = MACHINES.get(arch)
    if allowed and machine and machine not in allowed:
        raise DeviceError(f"{login} is a {machine} machine; the bundle {bundle.directory.name} was compiled for "
                          f"{triple} ({bundle.target}): compile for a target that matches the board")
