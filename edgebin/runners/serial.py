"""Run an MCU bundle on a real board over a serial port: inputs go out, outputs and DWT cycle counts come back.

    runner = SerialRunner("serial:///dev/ttyACM0?baud=115200", timeout_s=10)
    result = runner.run(Path("out/cortex-m4"), x)   # x: (N, ...) float32, checked against bundle.json
    result.outputs, result.cycles, result.seconds    # cycles per inference (DWT->CYCCNT); seconds = cycles / clock

The board runs firmware built from the bundle plus `targets/harness/serial_main.c` and the board's own two serial
hooks (`serial_port.h`); edgebin neither builds nor flashes it (docs/serial-protocol.md says how). The runner
greets the board (HELLO), checks that its model has the bundle's input and output sizes, then sends one RUN per
sample and waits for its RESULT. Every read and write has a deadline: `timeout_s` per answer, plus the time the
bytes take at the baud rate.

This has been tested against a pseudo-terminal (a fake board in Python, and serial_main.c built for the host and
for QEMU's emulated UART), never against a real board.

Opening a real port needs pyserial (`pip install pyserial`); `FdPort` speaks over any POSIX file descriptor (a
pseudo-terminal, a tty opened by hand) without it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from edgebin.errors import DeviceError, InputShapeError, ToolchainMissingError, UsageError
from edgebin.runners.protocol import (
    FRAME_OVERHEAD_BYTES,
    PROTOCOL_VERSION,
    Frame,
    FrameReader,
    FrameTimeoutError,
    Hello,
    MessageType,
    Port,
    Result,
    encode_frame,
    encode_run,
)
from edgebin.runners.result import RunResult

log = logging.getLogger(__name__)

DEFAULT_BAUD = 115_200
HELLO_RETRY_S = 1.0  # resend HELLO this often: a board that resets when the port opens misses the first one
BITS_PER_BYTE = 10  # 8N1: start bit, 8 data bits, stop bit


@dataclass(frozen=True)
class SerialDevice:
    """A parsed `serial://PATH[?baud=N]` URL."""

    path: str
    baud: int = DEFAULT_BAUD


def parse_device_url(url: str) -> SerialDevice:
    """`serial:///dev/ttyACM0`, `serial:///dev/ttyUSB0?baud=921600` or `serial://COM3` (Windows) -> SerialDevice."""
    example = "serial:///dev/ttyACM0?baud=115200 (or serial://COM3 on Windows)"
    parts = urlsplit(url)
    if parts.scheme != "serial":
        raise UsageError(f"device {url!r} is not a serial port URL; expected {example}")
    if parts.fragment:
        raise UsageError(f"device {url!r}: a serial URL has no #fragment; expected {example}")
    if parts.netloc and parts.path:
        raise UsageError(f"device {url!r} names a relative path; did you mean serial:///{parts.netloc}{parts.path} "
                         f"(three slashes)?")
    if parts.netloc:  # serial://COM3
        if not re.fullmatch(r"COM\d+", parts.netloc, re.I):
            raise UsageError(f"device {url!r}: {parts.netloc!r} is not a port; expected {example}")
        path = parts.netloc
    elif parts.path.startswith("/") and len(parts.path) > 1:
        path = parts.path
    else:
        raise UsageError(f"device {url!r} names no port; expected {example}")
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise UsageError(f"device {url!r}: cannot read the query {parts.query!r}; expected {example}") from None
    unknown = sorted(set(query) - {"baud"})
    if unknown:
        raise UsageError(f"device {url!r}: unknown option {', '.join(unknown)}; the only one is baud")
    baud = DEFAULT_BAUD
    if "baud" in query:
        values = query["baud"]
        if len(values) != 1 or not values[0].isdigit() or not 0 < int(values[0]) <= 100_000_000:
            raise UsageError(f"device {url!r}: baud must be one positive whole number such as 115200, got "
                             f"{', '.join(values)!r}")
        baud = int(values[0])
    return SerialDevice(path, baud)


class FdPort:
    """A serial line as a POSIX file descriptor (a tty, a pseudo-terminal), switched to raw mode; reads use select.

        master, slave = os.openpty()
        port = FdPort(master, "/dev/pts/7")    # the board (or a fake one) on `slave`
    """

    def __init__(self, fd: int, name: str, *, owns_fd: bool = False) -> None:
        import tty  # POSIX only, hence here

        self.fd, self.name, self._owns_fd = fd, name, owns_fd
        if os.isatty(fd):
            tty.setraw(fd)  # no echo, no line editing, no CR/LF translation: the line carries binary frames
        os.set_blocking(fd, False)

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        ready, _, _ = select.select([self.fd], [], [], max(timeout_s, 0.0))
        if not ready:
            return b""
        try:
            data = os.read(self.fd, max_bytes)
        except BlockingIOError:
            return b""
        except OSError as err:  # EIO: the other end of a pseudo-terminal is closed
            raise DeviceError(f"{self.name}: reading failed ({err.strerror}); was the board unplugged?") from None
        if not data:
            raise DeviceError(f"{self.name}: the port was closed; was the board unplugged?")
        return data

    def write(self, data: bytes, timeout_s: float) -> None:
        view, deadline = memoryview(data), time.monotonic() + timeout_s
        while view:
            remaining = deadline - time.monotonic()
            _, ready, _ = select.select([], [self.fd], [], max(remaining, 0.0))
            if not ready:
                raise DeviceError(f"{self.name}: the board took {len(data) - len(view)} of {len(data)} bytes in "
                                  f"{timeout_s:g} s and no more; is it reading the port?")
            try:
                view = view[os.write(self.fd, view):]
            except BlockingIOError:
                continue
            except OSError as err:
                raise DeviceError(f"{self.name}: writing failed ({err.strerror}); was the board unplugged?") from None

    def close(self) -> None:
        if self._owns_fd:
            os.close(self.fd)


class PySerialPort:
    """A real serial port through pyserial (Linux, macOS, Windows)."""

    def __init__(self, device: SerialDevice, timeout_s: float) -> None:
        try:
            import serial
        except ImportError:
            raise ToolchainMissingError("talking to a board over a serial port needs pyserial: pip install pyserial"
                                        ) from None
        self.name, self._serial_errors = device.path, (serial.SerialException, OSError)
        self._timeout_error = serial.SerialTimeoutException
        try:
            self._port = serial.Serial(device.path, baudrate=device.baud, bytesize=8, parity="N", stopbits=1,
                                       timeout=timeout_s, write_timeout=timeout_s)
        except self._serial_errors as err:
            raise DeviceError(f"{device.path}: cannot open the port ({err}); is the board plugged in, and may you "
                              f"use the port (on Linux: the dialout group)?") from None

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        try:
            self._port.timeout = max(timeout_s, 0.0)
            first = self._port.read(1)
            waiting = self._port.in_waiting if first else 0
            return first + (self._port.read(min(waiting, max_bytes - 1)) if waiting else b"")
        except self._serial_errors as err:
            raise DeviceError(f"{self.name}: reading failed ({err}); was the board unplugged?") from None

    def write(self, data: bytes, timeout_s: float) -> None:
        try:
            self._port.write_timeout = timeout_s
            self._port.write(data)
        except self._timeout_error:
            raise DeviceError(f"{self.name}: the board did not take {len(data)} bytes in {timeout_s:g} s; is it "
                              f"reading the port?") from None
        except self._serial_errors as err:
            raise DeviceError(f"{self.name}: writing failed ({err}); was the board unplugged?") from None

    def close(self) -> None:
        self._port.close()


class SerialRunner:
    """Run an MCU bundle on a board flashed with serial_main.c; outputs and DWT cycle counts come back over serial.

        runner = SerialRunner("serial:///dev/ttyACM0?baud=115200", timeout_s=10)
        result = runner.run(Path("out/cortex-m4"), x)
        result.cycles, result.seconds     # per inference, measured on the board by its cycle counter
    """

    def __init__(self, url: str = f"serial:///dev/ttyACM0?baud={DEFAULT_BAUD}", timeout_s: float = 10.0, *,
                 port: Port | None = None) -> None:
        """`port`: an already open line (a pseudo-terminal in tests); the runner then neither opens nor closes it."""
        self.device = parse_device_url(url)
        if not timeout_s > 0:
            raise UsageError(f"SerialRunner: timeout_s must be > 0, got {timeout_s}")
        self.timeout_s, self._port = timeout_s, port

    def hello(self) -> Hello:
        """Greet the board and return what it says about itself (model name and sizes, clock, cycle counter)."""
        with self._open() as (port, reader):
            return self._greet(port, reader)

    def run(self, bundle: Path | str | dict[str, Any], inputs: np.ndarray) -> RunResult:
        """Run every sample of `inputs` (N, ...) on the board; `bundle` is its folder, its bundle.json or that dict."""
        where, input_shape, output_shape = _bundle_shapes(bundle)
        input_elems, output_elems = int(np.prod(input_shape)), int(np.prod(output_shape))
        x = np.ascontiguousarray(inputs, dtype=np.float32)
        n = int(x.shape[0]) if x.ndim else 0
        if n == 0 or x.size != n * input_elems:
            raise InputShapeError(f"{where} takes samples of {input_elems} float32 (shape {input_shape}); got an "
                                  f"array of shape {tuple(x.shape)}")
        x = x.reshape(n, input_elems)
        with self._open() as (port, reader):
            hello = self._greet(port, reader)
            if (hello.input_elems, hello.output_elems) != (input_elems, output_elems):
                raise InputShapeError(
                    f"{port.name}: the board runs model {hello.model_name!r} with {hello.input_elems} inputs and "
                    f"{hello.output_elems} outputs, but {where} has {input_elems} and {output_elems}; flash the "
                    f"firmware built from this bundle")
            # An answer may take the inference itself (timeout_s) plus both transfers at the baud rate.
            line_bytes = 2 * FRAME_OVERHEAD_BYTES + 4 * (input_elems + output_elems) + Result.FIXED.size
            answer_s = self.timeout_s + BITS_PER_BYTE * line_bytes / self.device.baud
            outputs, cycles = np.empty((n, output_elems), np.float32), []
            for i in range(n):
                result = self._run_one(port, reader, x[i], i, output_elems, answer_s)
                outputs[i] = result.outputs
                cycles.append(result.cycles)
        out_shape = output_shape[1:] if output_shape[:1] == [1] else output_shape
        if not hello.has_cycle_counter:
            log.info("%s: the board reports no cycle counter (Cortex-M0/M0+/M23 have none, QEMU emulates none); "
                     "no timing", port.name)
            return RunResult(outputs=outputs.reshape(n, *out_shape))
        mean_cycles = float(np.mean(cycles))
        log.info("%s: %d to %d cycles per inference over %d samples", port.name, min(cycles), max(cycles), n)
        if not hello.cpu_hz:
            log.warning("%s: the board does not report its clock (EDGEBIN_CPU_HZ or edgebin_cpu_hz); cycles only, "
                        "no seconds", port.name)
        seconds = mean_cycles / hello.cpu_hz if hello.cpu_hz else None
        return RunResult(outputs=outputs.reshape(n, *out_shape), seconds=seconds, cycles=round(mean_cycles))

    # ---- the conversation ----

    @contextlib.contextmanager
    def _open(self) -> Iterator[tuple[Port, FrameReader]]:
        """The port (opened here unless given to the constructor) and a reader on it, input waiting dropped."""
        port = self._port or PySerialPort(self.device, self.timeout_s)
        try:
            _discard_input(port)
            yield port, FrameReader(port)
        finally:
            if self._port is None:
                port.close()

    def _greet(self, port: Port, reader: FrameReader) -> Hello:
        """Send HELLO until the board answers (at most timeout_s in all); check its protocol version."""
        deadline, asked = time.monotonic() + self.timeout_s, 0
        while True:
            port.write(encode_frame(MessageType.HELLO, b""), self.timeout_s)
            asked += 1
            remaining = deadline - time.monotonic()
            try:
                frame = reader.read_frame(min(HELLO_RETRY_S, max(remaining, 0.0)), "HELLO")
            except FrameTimeoutError as err:
                if time.monotonic() < deadline:
                    continue
                raise DeviceError(
                    f"{port.name}: no HELLO from the board within {self.timeout_s:g} s ({asked} asked; "
                    f"{err.detail}). Is it flashed with firmware built from serial_main.c, running, and set to "
                    f"{self.device.baud} baud?") from None
            if frame.type == MessageType.HELLO:
                break
            _raise_unexpected(port, frame, "HELLO")
        hello = _decode(port, lambda: Hello.decode(frame.payload))
        if hello.version != PROTOCOL_VERSION:
            raise DeviceError(f"{port.name}: the board speaks protocol version {hello.version}, this edgebin "
                              f"{PROTOCOL_VERSION}; rebuild its firmware with this edgebin's serial_main.c")
        log.info("%s: board runs %r (%d inputs, %d outputs), clock %s Hz, cycle counter %s", port.name,
                 hello.model_name, hello.input_elems, hello.output_elems, hello.cpu_hz or "unknown",
                 "on" if hello.has_cycle_counter else "absent")
        return hello

    def _run_one(self, port: Port, reader: FrameReader, sample: np.ndarray, index: int, output_elems: int,
                 answer_s: float) -> Result:
        port.write(encode_frame(MessageType.RUN, encode_run(sample)), answer_s)
        expecting = f"RESULT for sample {index}"
        while True:
            try:
                frame = reader.read_frame(answer_s, expecting)
            except FrameTimeoutError as err:
                raise DeviceError(f"{err}; a slow model needs a longer timeout (--timeout)") from None
            if frame.type == MessageType.RESULT:
                break
            if frame.type == MessageType.HELLO:  # a late answer to a repeated HELLO
                log.debug("%s: ignoring a second HELLO", port.name)
                continue
            _raise_unexpected(port, frame, expecting)
        result = _decode(port, lambda: Result.decode(frame.payload, output_elems))
        if result.status != 0:
            which = f" (kernel call {-result.status} failed)" if result.status < 0 else ""
            raise DeviceError(f"{port.name}: edgebin_model_run returned {result.status} on sample {index}{which}")
        return result


def _discard_input(port: Port) -> None:
    """Drop what the board sent before we asked (boot messages, an answer to a previous, aborted run)."""
    dropped = 0
    while chunk := port.read(4096, 0.0):
        dropped += len(chunk)
    if dropped:
        log.debug("%s: dropped %d bytes waiting on the port", port.name, dropped)


def _raise_unexpected(port: Port, frame: Frame, expecting: str) -> None:
    if frame.type == MessageType.ERROR:
        text = frame.payload.decode("utf-8", errors="replace")
        raise DeviceError(f"{port.name}: waiting for {expecting}, the board reported an error: {text}")
    raise DeviceError(f"{port.name}: waiting for {expecting}, got a frame of type {frame.type:#04x} "
                      f"({len(frame.payload)} bytes)")


def _decode(port: Port, decode):
    try:
        return decode()
    except ValueError as err:
        raise DeviceError(f"{port.name}: {err}") from None


def _bundle_shapes(bundle: Path | str | dict[str, Any]) -> tuple[str, list[int], list[int]]:
    """(where, input shape, output shape) from a bundle folder, its bundle.json, or the parsed manifest."""
    from edgebin.runners.qemu import read_bundle_manifest

    if isinstance(bundle, dict):
        where, manifest = "the bundle manifest", bundle
        try:
            shapes = [[int(d) for d in manifest[key]["shape"]] for key in ("input", "output")]
        except (KeyError, TypeError, ValueError) as err:
            raise UsageError(f"the bundle manifest is malformed ({type(err).__name__}: {err}); see "
                             f"docs/mcu-bundle.md") from None
        return where, shapes[0], shapes[1]
    path = Path(bundle)
    folder = path.parent if path.name == "bundle.json" else path
    manifest = read_bundle_manifest(folder)
    return (f"{folder / 'bundle.json'}", [int(d) for d in manifest["input"]["shape"]],
            [int(d) for d in manifest["output"]["shape"]])
