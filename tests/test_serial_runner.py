"""SerialRunner and the serial protocol over a pseudo-terminal: a fake board in Python, and serial_main.c itself.

The fake board builds and checks its frames with struct and zlib, straight from docs/serial-protocol.md, not with
edgebin's protocol module, so a byte-order or CRC mistake on one side cannot cancel out on the other. serial_main.c
is compiled for Cortex-M (compile only) and for this machine, where it runs behind a pseudo-terminal with a small
POSIX stand-in for the board's serial hooks. Nothing here has met a real board.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import struct
import subprocess
import sys
import threading
import time
import tty
import zlib
from pathlib import Path

import numpy as np
import pytest

from edgebin import targets
from edgebin.errors import DeviceError, InputShapeError, ToolchainMissingError, UsageError
from edgebin.runners.protocol import FrameReader, MessageType, crc32, encode_frame
from edgebin.runners.serial import FdPort, SerialDevice, SerialRunner, parse_device_url

HARNESS = Path(__file__).resolve().parent.parent / "edgebin" / "targets" / "harness"
IN, OUT = 64, 10
WEIGHTS = np.array([[((i * 7 + j * 3) % 5 - 2) * 0.5 for i in range(IN)] for j in range(OUT)], dtype=np.float32)
CPU_HZ = 100_000_000
MAGIC = b"\xeb\x0b"
HELLO, RUN, RESULT, ERROR = 1, 2, 3, 4


def frame(kind: int, payload: bytes) -> bytes:
    """A frame as the docs define it: MAGIC | type u8 | length u32 | payload | crc32(type..payload) u32."""
    body = struct.pack("<BI", kind, len(payload)) + payload
    return MAGIC + body + struct.pack("<I", zlib.crc32(body))


def inputs(n: int = 20) -> np.ndarray:
    """Small whole numbers: every product and sum below is exact in float32, on any machine."""
    return (np.arange(n * IN, dtype=np.float32).reshape(n, 1, IN) % 7) - 3


def expected(x: np.ndarray) -> np.ndarray:
    return (x.reshape(len(x), IN) * 2.0) @ WEIGHTS.T.astype(np.float64)


class FakeBoard(threading.Thread):
    """A board on one end of a pseudo-terminal: HELLO with its sizes; RUN i -> 2 W x, cycles 1000 + 10 i.

    `misbehave` picks one fault: "silent" (never answers), "mute-after-hello", "bad-crc" (on RESULT),
    "error" (answers RUN with ERROR), "status" (edgebin_model_run returned -2), "version" (protocol 9).
    """

    def __init__(self, fd: int, *, input_elems: int = IN, misbehave: str = "", boot_text: bytes = b"") -> None:
        super().__init__(daemon=True)
        self.fd, self.input_elems, self.misbehave, self.boot_text = fd, input_elems, misbehave, boot_text
        self.runs = 0
        self.stop = threading.Event()

    def run(self) -> None:
        buf = bytearray()
        while not self.stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.02)
            if not ready:
                continue
            try:
                buf += os.read(self.fd, 65536)
            except OSError:
                return
            while (start := buf.find(MAGIC)) >= 0 and len(buf) >= start + 7:
                kind, length = struct.unpack_from("<BI", buf, start + 2)
                end = start + 7 + length + 4
                if len(buf) < end:
                    break
                body, (crc,) = bytes(buf[start + 2:end - 4]), struct.unpack_from("<I", buf, end - 4)
                del buf[:end]
                assert zlib.crc32(body) == crc, "the host sent a frame with a bad CRC"
                self.answer(kind, body[5:])

    def answer(self, kind: int, payload: bytes) -> None:
        if self.misbehave == "silent" or (self.misbehave == "mute-after-hello" and kind == RUN):
            return
        if kind == HELLO:
            version = 9 if self.misbehave == "version" else 1
            hello = struct.pack("<HHIII", version, 1, self.input_elems, OUT, CPU_HZ) + b"toy.onnx"
            os.write(self.fd, self.boot_text + frame(HELLO, hello))
            return
        assert kind == RUN and len(payload) == 4 * IN
        if self.misbehave == "error":
            os.write(self.fd, frame(ERROR, b"RUN: CRC mismatch or line error"))
            return
        x = np.frombuffer(payload, dtype="<f4")
        y = (WEIGHTS @ (x * 2.0)).astype("<f4")
        status = -2 if self.misbehave == "status" else 0
        out = frame(RESULT, struct.pack("<iQ", status, 1000 + 10 * self.runs) + y.tobytes())
        if self.misbehave == "bad-crc":
            out = out[:-1] + bytes([out[-1] ^ 0x40])
        self.runs += 1
        os.write(self.fd, out)


@pytest.fixture
def pty_pair():
    """(master fd, slave fd, slave path), raw, closed afterwards."""
    master, slave = os.openpty()
    tty.setraw(slave)
    yield master, slave, os.ttyname(slave)
    for fd in (master, slave):
        try:
            os.close(fd)
        except OSError:
            pass


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (tmp_path / "bundle.json").write_text(json.dumps({
        "schema_version": 1, "target": "cortex-m4",
        "input": {"name": "input", "shape": [1, 1, IN], "dtype": "float32"},
        "output": {"name": "logits", "shape": [1, OUT], "dtype": "float32"},
    }))
    return tmp_path


def runner_on(pty, timeout_s: float = 5.0) -> SerialRunner:
    master, _, name = pty
    return SerialRunner(f"serial://{name}?baud=921600", timeout_s=timeout_s, port=FdPort(master, name))


@pytest.fixture
def start_board(pty_pair):
    """start_board(**FakeBoard options): a fake board on the slave side, stopped before the pseudo-terminal closes
    (a board still running then could answer on a new terminal that reuses the file descriptor)."""
    boards = []

    def start(**kwargs) -> FakeBoard:
        boards.append(FakeBoard(pty_pair[1], **kwargs))
        boards[-1].start()
        return boards[-1]

    yield start
    for board in boards:
        board.stop.set()
        board.join(timeout=5)


# ---- the protocol ----


def test_frame_bytes_follow_the_documented_layout():
    assert crc32(b"123456789") == 0xCBF43926  # the CRC-32 check value
    body = b"\x02\x08\x00\x00\x00" + struct.pack("<2f", 1.0, -2.0)
    assert encode_frame(MessageType.RUN, struct.pack("<2f", 1.0, -2.0)) == (
        b"\xeb\x0b" + body + struct.pack("<I", zlib.crc32(body)))
    assert encode_frame(MessageType.HELLO, b"") == frame(HELLO, b"")


# ---- the runner against a fake board ----


def test_outputs_and_cycles_come_back_for_20_samples(pty_pair, bundle, start_board):
    start_board(boot_text=b"Booting toy board v1\r\n")  # junk before a frame is skipped
    x = inputs(20)
    result = runner_on(pty_pair).run(bundle, x)
    assert result.outputs.shape == (20, OUT)
    np.testing.assert_array_equal(result.outputs, expected(x))
    assert result.cycles == 1095  # mean of 1000 + 10 i for i = 0..19
    assert result.seconds == pytest.approx(1095 / CPU_HZ)
    assert result.instructions is None  # a board measures time, not instructions


def test_bundle_json_path_and_manifest_dict_are_accepted(pty_pair, bundle, start_board):
    start_board()
    runner = runner_on(pty_pair)
    manifest = json.loads((bundle / "bundle.json").read_text())
    for where in (bundle / "bundle.json", manifest):
        assert runner.run(where, inputs(2)).outputs.shape == (2, OUT)
    assert runner.hello().model_name == "toy.onnx"


def test_a_board_that_never_answers_is_a_device_error_naming_the_port(pty_pair, bundle, start_board):
    start_board(misbehave="silent")
    started = time.monotonic()
    with pytest.raises(DeviceError, match=rf"{pty_pair[2]}: no HELLO from the board within 0.5 s") as err:
        runner_on(pty_pair, timeout_s=0.5).run(bundle, inputs(1))
    assert time.monotonic() - started < 2.0
    assert "nothing received" in str(err.value)


def test_a_board_that_stops_answering_names_the_sample(pty_pair, bundle, start_board):
    start_board(misbehave="mute-after-hello")
    with pytest.raises(DeviceError, match=rf"{pty_pair[2]}: no RESULT for sample 0 .*--timeout"):
        runner_on(pty_pair, timeout_s=0.3).run(bundle, inputs(3))


@pytest.mark.parametrize(("misbehave", "match"), [
    ("bad-crc", r"CRC does not match"),
    ("error", r"the board reported an error: RUN: CRC mismatch"),
    ("status", r"edgebin_model_run returned -2 on sample 0"),
    ("version", r"protocol version 9"),
])
def test_board_faults_are_device_errors(pty_pair, bundle, misbehave, match, start_board):
    start_board(misbehave=misbehave)
    with pytest.raises(DeviceError, match=match):
        runner_on(pty_pair).run(bundle, inputs(2))


def test_a_board_running_another_model_is_an_input_shape_error(pty_pair, bundle, start_board):
    start_board(input_elems=IN + 1)
    with pytest.raises(InputShapeError, match=rf"runs model 'toy.onnx' with {IN + 1} inputs .* has {IN} and {OUT}"):
        runner_on(pty_pair).run(bundle, inputs(1))


def test_inputs_that_do_not_fit_the_bundle_are_rejected_before_the_port_opens(bundle):
    with pytest.raises(InputShapeError, match=f"samples of {IN} float32"):
        SerialRunner("serial:///dev/nonexistent").run(bundle, np.zeros((2, IN + 1), np.float32))


def test_missing_pyserial_says_how_to_install_it(bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "serial", None)  # makes `import serial` fail even where it is installed
    with pytest.raises(ToolchainMissingError, match="pip install pyserial"):
        SerialRunner("serial:///dev/ttyACM0").run(bundle, inputs(1))


@pytest.mark.parametrize(("url", "device"), [
    ("serial:///dev/ttyACM0", SerialDevice("/dev/ttyACM0", 115200)),
    ("serial:///dev/ttyUSB1?baud=921600", SerialDevice("/dev/ttyUSB1", 921600)),
    ("serial://COM3?baud=9600", SerialDevice("COM3", 9600)),
])
def test_device_urls(url, device):
    assert parse_device_url(url) == device


@pytest.mark.parametrize(("url", "match"), [
    ("/dev/ttyACM0", "not a serial port URL"),
    ("qemu", "not a serial port URL"),
    ("ssh://pi@raspberrypi.local", "not a serial port URL"),
    ("serial://", "names no port"),
    ("serial://dev/ttyACM0", "three slashes"),
    ("serial://ttyACM0", "is not a port"),
    ("serial:///dev/ttyACM0?baud=fast", "baud must be one positive whole number"),
    ("serial:///dev/ttyACM0?baud=0", "baud must be one positive whole number"),
    ("serial:///dev/ttyACM0?baud=9600&baud=115200", "baud must be one positive whole number"),
    ("serial:///dev/ttyACM0?speed=9600", "unknown option speed"),
    ("serial:///dev/ttyACM0#x", "no #fragment"),
])
def test_bad_device_urls_are_usage_errors(url, match):
    with pytest.raises(UsageError, match=match):
        parse_device_url(url)


def test_timeout_must_be_positive():
    with pytest.raises(UsageError, match="timeout_s must be > 0"):
        SerialRunner("serial:///dev/ttyACM0", timeout_s=0)


# ---- serial_main.c ----

MODEL_C = """#include "model.h"
static const float weights[EDGEBIN_OUTPUT_ELEMS * EDGEBIN_INPUT_ELEMS] = {%s};
int edgebin_model_run(const float* input, float* output) {
  for (int j = 0; j < EDGEBIN_OUTPUT_ELEMS; j++) {
    float acc = 0.0f;
    for (int i = 0; i < EDGEBIN_INPUT_ELEMS; i++) acc += 2.0f * input[i] * weights[j * EDGEBIN_INPUT_ELEMS + i];
    output[j] = acc;
  }
  return 0;
}
const char* edgebin_model_name(void) { return "toy.onnx"; }
"""
# The board's serial hooks for a process whose stdin and stdout are the pseudo-terminal; nanoseconds for cycles.
POSIX_PORT_C = """#include <time.h>
#include <unistd.h>
#include "serial_port.h"
int edgebin_serial_read(uint8_t *buf, size_t n) {
  while (n) { ssize_t k = read(0, buf, n); if (k <= 0) _exit(0); buf += k; n -= (size_t)k; }
  return 0;
}
int edgebin_serial_write(const uint8_t *buf, size_t n) {
  while (n) { ssize_t k = write(1, buf, n); if (k <= 0) _exit(0); buf += k; n -= (size_t)k; }
  return 0;
}
uint32_t edgebin_cpu_hz(void) { return 1000000000u; }
int edgebin_cycles_enable(void) { return 1; }
uint32_t edgebin_cycles_read(void) {
  struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return (uint32_t)(t.tv_sec * 1000000000ull + t.tv_nsec);
}
"""
CORTEX_M_CFLAGS = {t.name: list(t.cflags) for t in targets.all_targets() if t.kind == "cortex-m"}
CORTEX_M_CFLAGS["cortex-m0plus"] = ["-mcpu=cortex-m0plus", "-mthumb"]  # no DWT cycle counter: the other branch


def generated_model_h(directory: Path) -> Path:
    """model.h from the emitter's own template, as a compiled bundle has it."""
    from edgebin.compile.mcu_emit import render

    (directory / "model.h").write_text(render("model.h", {
        "model": "toy.onnx", "target": "cortex-m4", "input_elems": str(IN), "output_elems": str(OUT),
        "input_shape": f"1x1x{IN}", "output_shape": f"1x{OUT}", "arena_bytes": "256", "workspace_bytes": "0",
        "weights_bytes": str(WEIGHTS.nbytes), "quant_params": ""}))
    return directory


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc not installed; make setup")
@pytest.mark.parametrize("target", sorted(CORTEX_M_CFLAGS))
def test_serial_main_compiles_for_cortex_m(tmp_path, target):
    generated_model_h(tmp_path)
    proc = subprocess.run(["arm-none-eabi-gcc", *CORTEX_M_CFLAGS[target], "-std=c11", "-O2", "-Wall", "-Wextra",
                           "-Wpedantic", "-Werror", f"-I{tmp_path}", "-c", str(HARNESS / "serial_main.c"), "-o",
                           str(tmp_path / "serial_main.o")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture
def host_board(tmp_path, pty_pair):
    """serial_main.c and the toy model built for this machine, running with the pseudo-terminal as its port."""
    if shutil.which("cc") is None:
        pytest.skip("no C compiler for this machine")
    generated_model_h(tmp_path)
    weights = ", ".join(f"{w:.1f}f" for w in WEIGHTS.ravel())
    (tmp_path / "model.c").write_text(MODEL_C % weights)
    (tmp_path / "posix_port.c").write_text(POSIX_PORT_C)
    exe = tmp_path / "board"
    subprocess.run(["cc", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-O2", "-Wall", "-Wextra", "-Werror",
                    f"-I{tmp_path}", f"-I{HARNESS}", str(HARNESS / "serial_main.c"), str(tmp_path / "model.c"),
                    str(tmp_path / "posix_port.c"), "-o", str(exe)], check=True, timeout=60)
    proc = subprocess.Popen([str(exe)], stdin=pty_pair[1], stdout=pty_pair[1])
    yield proc
    proc.kill()
    proc.wait(timeout=5)


def test_serial_main_on_this_machine_answers_the_runner(host_board, pty_pair, bundle):
    x = inputs(20)
    result = runner_on(pty_pair).run(bundle, x)
    np.testing.assert_array_equal(result.outputs, expected(x))
    assert result.cycles is not None and result.cycles > 0  # nanoseconds here, from the host's clock
    # cycles is the mean rounded to a nanosecond (half to even: a mean of x.5 ns is half a nanosecond off, plus
    # float error in seconds)
    assert abs(result.seconds * 1e9 - result.cycles) <= 0.5 + 1e-6


def test_serial_main_answers_bad_frames_with_error_and_recovers(host_board, pty_pair):
    master, _, name = pty_pair
    port = FdPort(master, name)
    reader = FrameReader(port)

    def ask(data: bytes) -> tuple[int, bytes]:
        port.write(data, 5.0)
        got = reader.read_frame(5.0, "an answer")
        return got.type, got.payload

    assert ask(frame(RUN, b"\0" * 8)) == (ERROR, f"unexpected frame: type 2, 8 bytes (HELLO takes 0, RUN takes "
                                                 f"{4 * IN})".encode())
    good = frame(RUN, np.ones(IN, "<f4").tobytes())
    assert ask(good[:-1] + bytes([good[-1] ^ 1])) == (ERROR, b"RUN: CRC mismatch or line error")
    kind, payload = ask(b"noise" + frame(HELLO, b""))
    assert kind == HELLO
    assert struct.unpack_from("<HHIII", payload) == (1, 1, IN, OUT, 1_000_000_000)
    assert payload[16:] == b"toy.onnx"
    kind, payload = ask(good)
    assert kind == RESULT and struct.unpack_from("<i", payload) == (0,)
    np.testing.assert_array_equal(np.frombuffer(payload, "<f4", offset=12), WEIGHTS.sum(axis=1) * 2)


# The board's serial hooks for QEMU's MPS2 AN386 (Cortex-M4): UART0 is an Arm CMSDK APB UART at 0x40004000.
CMSDK_UART_C = """#include "serial_port.h"
#define UART_DATA (*(volatile uint32_t *)0x40004000u)
#define UART_STATE (*(volatile uint32_t *)0x40004004u) /* bit 0: TX full, bit 1: RX full */
#define UART_CTRL (*(volatile uint32_t *)0x40004008u)  /* bit 0: TX enable, bit 1: RX enable */
#define UART_BAUDDIV (*(volatile uint32_t *)0x40004010u)
void edgebin_board_init(void) { UART_BAUDDIV = 16; UART_CTRL = 3; }
int edgebin_serial_read(uint8_t *buf, size_t n) {
  while (n--) { while (!(UART_STATE & 2u)) {} *buf++ = (uint8_t)UART_DATA; }
  return 0;
}
int edgebin_serial_write(const uint8_t *buf, size_t n) {
  while (n--) { while (UART_STATE & 1u) {} UART_DATA = *buf++; }
  return 0;
}
uint32_t edgebin_cpu_hz(void) { return 25000000u; }
"""


@pytest.mark.skipif(shutil.which("qemu-system-arm") is None or shutil.which("arm-none-eabi-gcc") is None,
                    reason="qemu-system-arm or arm-none-eabi-gcc not installed; make setup")
def test_serial_main_on_an_emulated_cortex_m4_uart(tmp_path, pty_pair, bundle):
    """The Cortex-M4 build of serial_main.c behind QEMU's emulated UART: the real board code, only the wire is fake."""
    generated_model_h(tmp_path)
    (tmp_path / "model.c").write_text(MODEL_C % ", ".join(f"{w:.1f}f" for w in WEIGHTS.ravel()))
    (tmp_path / "cmsdk_uart.c").write_text(CMSDK_UART_C)
    (tmp_path / "board.ld").write_text("__flash = 0x0; __flash_size = 0x400000; __ram = 0x20000000; "
                                       "__ram_size = 0x400000; __stack_size = 0x10000;\nINCLUDE picolibc.ld\n")
    elf = tmp_path / "board.elf"
    proc = subprocess.run(["arm-none-eabi-gcc", *CORTEX_M_CFLAGS["cortex-m4"], "--specs=picolibc.specs",
                           "--crt0=minimal", "--oslib=dummyhost", "-O2", "-Wall", "-Werror", f"-I{tmp_path}",
                           f"-I{HARNESS}", "-T", str(tmp_path / "board.ld"), str(HARNESS / "serial_main.c"),
                           str(tmp_path / "model.c"), str(tmp_path / "cmsdk_uart.c"), "-o", str(elf)],
                          capture_output=True, text=True, timeout=60)
    if "picolibc.specs" in proc.stderr:
        pytest.skip("picolibc-arm-none-eabi not installed; make setup")
    assert proc.returncode == 0, proc.stderr
    qemu = subprocess.Popen(["qemu-system-arm", "-M", "mps2-an386", "-display", "none", "-monitor", "none",
                             "-serial", pty_pair[2], "-kernel", str(elf)], stderr=subprocess.PIPE)
    try:
        x = inputs(20)
        runner = runner_on(pty_pair)
        result = runner.run(bundle, x)
        hello = runner.hello()
    finally:
        qemu.kill()
        qemu.wait(timeout=5)
    np.testing.assert_array_equal(result.outputs, expected(x))
    assert (hello.model_name, hello.cpu_hz) == ("toy.onnx", 25_000_000)
    # QEMU has no DWT: the enable check sees CYCCNT stand still, so the board reports no counter and no timing.
    assert not hello.has_cycle_counter and result.cycles is None and result.seconds is None
