"""The serial protocol between edgebin and a board running `targets/harness/serial_main.c` (docs/serial-protocol.md).

    port.write(encode_frame(MessageType.HELLO, b""), timeout_s=1.0)          # host: who are you?
    frame = FrameReader(port).read_frame(timeout_s=10.0, expecting="HELLO")  # board: HELLO with its model's sizes
    hello = Hello.decode(frame.payload)
    port.write(encode_frame(MessageType.RUN, encode_run(x[0])), timeout_s=10.0)
    result = Result.decode(FrameReader(port).read_frame(10.0, "RESULT").payload, hello.output_elems)

Every message is one frame, all integers little-endian:

    MAGIC 0xEB 0x0B | type (uint8) | length (uint32) | payload (length bytes) | crc32 (uint32)

`crc32` is zlib's CRC-32 (reflected polynomial 0xEDB88320, initial value and final xor 0xFFFFFFFF; "123456789" gives
0xCBF43926) over type, length and payload. A reader skips anything before MAGIC, so boot messages or a half-sent
frame on the line cost nothing but the bytes; a frame whose CRC does not match is an error, never retried.

| type | name   | from  | payload                                                                                   |
|------|--------|-------|-------------------------------------------------------------------------------------------|
| 0x01 | HELLO  | host  | empty: asks the board to introduce itself                                                 |
| 0x01 | HELLO  | board | version u16, flags u16 (bit 0: cycle counter runs), input elems u32, output elems u32,    |
|      |        |       | cpu clock Hz u32 (0 = unknown), then the model name in UTF-8 (the rest of the payload)    |
| 0x02 | RUN    | host  | one input: input elems x float32                                                          |
| 0x03 | RESULT | board | status i32 (edgebin_model_run's return), cycles u64, then output elems x float32          |
| 0x04 | ERROR  | board | UTF-8 text: what the board could not do (bad length, CRC mismatch, unknown type)          |

The board speaks only when spoken to: one HELLO or RESULT (or ERROR) per HELLO or RUN it receives.
"""

from __future__ import annotations

import enum
import logging
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgebin.errors import DeviceError

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAGIC = b"\xeb\x0b"
HEADER = struct.Struct("<BI")  # type, payload length; after MAGIC
CRC = struct.Struct("<I")
FRAME_OVERHEAD_BYTES = len(MAGIC) + HEADER.size + CRC.size  # 11
MAX_PAYLOAD_BYTES = 16 << 20  # far above any MCU model's input; a longer header is line noise, not a message
FLAG_CYCLE_COUNTER = 0x0001  # HELLO flags: the board measures cycles (DWT->CYCCNT on Cortex-M3 and up)
MAX_MODEL_NAME_BYTES = 64  # serial_main.c sends at most this much of edgebin_model_name()


class MessageType(enum.IntEnum):
    HELLO = 0x01
    RUN = 0x02
    RESULT = 0x03
    ERROR = 0x04


class Port(Protocol):
    """What the protocol needs from a serial line; `name` goes into every error message."""

    name: str

    def read(self, max_bytes: int, timeout_s: float) -> bytes:
        """Up to `max_bytes` bytes, as soon as any arrive; b"" when none arrived within `timeout_s`."""
        ...

    def write(self, data: bytes, timeout_s: float) -> None:
        """All of `data`, or DeviceError when the line does not take it within `timeout_s`."""
        ...

    def close(self) -> None: ...


class FrameTimeoutError(DeviceError):
    """No complete frame arrived in time; `detail` says what did arrive, for the caller's own message."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


@dataclass(frozen=True)
class Frame:
    type: int  # a MessageType value, or whatever a confused board sent
    payload: bytes


def crc32(data: bytes) -> int:
    """CRC-32 as zlib (and serial_main.c) compute it."""
    return zlib.crc32(data) & 0xFFFF_FFFF


def encode_frame(kind: MessageType | int, payload: bytes) -> bytes:
    """MAGIC | type | length | payload | crc32(type | length | payload)."""
    body = HEADER.pack(int(kind), len(payload)) + payload
    return MAGIC + body + CRC.pack(crc32(body))


def encode_run(sample: np.ndarray) -> bytes:
    """RUN payload: one input as little-endian float32, row-major."""
    return np.ascontiguousarray(sample, dtype="<f4").tobytes()


@dataclass(frozen=True)
class Hello:
    """The board's introduction: protocol version, its model's sizes and name, its clock and cycle counter."""

    version: int
    input_elems: int
    output_elems: int
    cpu_hz: int  # 0 when the board does not know its clock
    model_name: str
    has_cycle_counter: bool

    FIXED = struct.Struct("<HHIII")  # version, flags, input elems, output elems, cpu Hz; then the name

    def encode(self) -> bytes:
        flags = FLAG_CYCLE_COUNTER if self.has_cycle_counter else 0
        return self.FIXED.pack(self.version, flags, self.input_elems, self.output_elems,
                               self.cpu_hz) + self.model_name.encode()

    @classmethod
    def decode(cls, payload: bytes) -> Hello:
        """ValueError when the payload is too short for the fixed part."""
        if len(payload) < cls.FIXED.size:
            raise ValueError(f"HELLO payload is {len(payload)} bytes, expected at least {cls.FIXED.size}")
        version, flags, input_elems, output_elems, cpu_hz = cls.FIXED.unpack_from(payload)
        name = payload[cls.FIXED.size:].decode("utf-8", errors="replace")
        return cls(version, input_elems, output_elems, cpu_hz, name, bool(flags & FLAG_CYCLE_COUNTER))


@dataclass(frozen=True)
class Result:
    """One inference on the board: edgebin_model_run's status, the cycles it took and its outputs."""

    status: int
    cycles: int
    outputs: np.ndarray  # (output elems,) float32

    FIXED = struct.Struct("<iQ")  # status, cycles; then the outputs

    def encode(self) -> bytes:
        return self.FIXED.pack(self.status, self.cycles) + encode_run(self.outputs)

    @classmethod
    def decode(cls, payload: bytes, output_elems: int) -> Result:
        """ValueError when the payload does not hold exactly `output_elems` outputs."""
        expected = cls.FIXED.size + 4 * output_elems
        if len(payload) != expected:
            raise ValueError(f"RESULT payload is {len(payload)} bytes, expected {expected} "
                             f"({cls.FIXED.size} + {output_elems} float32 outputs)")
        status, cycles = cls.FIXED.unpack_from(payload)
        outputs = np.frombuffer(payload, dtype="<f4", offset=cls.FIXED.size).astype(np.float32)
        return cls(status, cycles, outputs)


class FrameReader:
    """Reads frames from a port, skipping bytes before MAGIC; keeps what it read past one frame for the next.

        reader = FrameReader(port)
        frame = reader.read_frame(timeout_s=10.0, expecting="RESULT for sample 3")
    """

    def __init__(self, port: Port) -> None:
        self.port = port
        self._buf = bytearray()
        self.skipped_bytes = 0  # bytes seen that were not part of any frame, since the reader was made
        self._skipped_sample = b""  # the first of them, to show in an error message

    def read_frame(self, timeout_s: float, expecting: str) -> Frame:
        """The next complete frame; DeviceError on a CRC mismatch or an absurd length, FrameTimeoutError on time."""
        deadline = time.monotonic() + timeout_s
        while True:
            frame = self._take_frame(expecting)
            if frame is not None:
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                detail = self._describe_wait()
                raise FrameTimeoutError(f"{self.port.name}: no {expecting} from the board within {timeout_s:g} s "
                                        f"({detail})", detail)
            self._buf += self.port.read(4096, remaining)

    def _take_frame(self, expecting: str) -> Frame | None:
        start = self._buf.find(MAGIC)
        if start < 0:  # no frame begins here; keep a last byte that may be the first half of MAGIC
            keep = 1 if self._buf.endswith(MAGIC[:1]) else 0
            self._skip(len(self._buf) - keep)
            return None
        self._skip(start)
        if len(self._buf) < len(MAGIC) + HEADER.size:
            return None
        kind, length = HEADER.unpack_from(self._buf, len(MAGIC))
        if length > MAX_PAYLOAD_BYTES:
            raise DeviceError(f"{self.port.name}: waiting for {expecting}, got a frame header announcing "
                              f"{length:,} bytes, more than any message ({MAX_PAYLOAD_BYTES:,}): noise on the line, "
                              f"or a baud rate that differs from the board's")
        total = FRAME_OVERHEAD_BYTES + length
        if len(self._buf) < total:
            return None
        body = bytes(self._buf[len(MAGIC):total - CRC.size])
        (sent,) = CRC.unpack_from(self._buf, total - CRC.size)
        del self._buf[:total]
        if crc32(body) != sent:
            raise DeviceError(f"{self.port.name}: waiting for {expecting}, got a frame (type {kind:#04x}, {length} "
                              f"bytes) whose CRC does not match ({sent:#010x} sent, {crc32(body):#010x} computed): "
                              f"noise on the line, or a baud rate that differs from the board's")
        return Frame(kind, body[HEADER.size:])

    def _skip(self, n: int) -> None:
        if n <= 0:
            return
        if len(self._skipped_sample) < 32:
            self._skipped_sample += bytes(self._buf[:32 - len(self._skipped_sample)])[:n]
        log.debug("%s: skipped %d bytes that are not part of a frame", self.port.name, n)
        self.skipped_bytes += n
        del self._buf[:n]

    def _describe_wait(self) -> str:
        parts = []
        if self._buf:
            parts.append(f"{len(self._buf)} bytes of an unfinished frame")
        if self.skipped_bytes:
            parts.append(f"{self.skipped_bytes} bytes that are not edgebin frames, starting {self._skipped_sample!r}; "
                         f"other firmware, or a baud rate that differs from the board's")
        return "; ".join(parts) if parts else "nothing received"
