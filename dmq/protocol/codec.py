"""Sans-I/O frame codec.

Stream layout: a sequence of frames, each a 4-byte big-endian unsigned length N
followed by N bytes of msgpack.

- request  = [api_key:int, api_version:int, correlation_id:int, client_id:str, body]
- response = [correlation_id:int, error_code:int, body]

`FrameDecoder` takes byte chunks of any size and yields whole frame payloads. It
never touches a socket, never imports asyncio, and keeps at most one partial frame
buffered: a length above `max_frame_bytes` is refused before any of its body is
buffered. Errors are `ProtocolViolation` (the peer's fault); nothing else escapes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]

from dmq.protocol.errors import ErrorCode, ProtocolViolation

LENGTH = struct.Struct(">I")
DEFAULT_MAX_FRAME_BYTES = 100 * 1024 * 1024

_packb = msgpack.Packer(use_bin_type=True).pack


def _unpackb(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False)


class FrameDecoder:
    """Incremental decoder: `feed(chunk)` returns the whole payloads completed by it."""

    __slots__ = ("_buf", "_need", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if max_frame_bytes <= 0:
            raise ValueError("max_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()
        self._need = -1  # body length of the frame being read, -1 while reading a header

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        buf = self._buf
        buf += data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        while True:
            if self._need < 0:
                if end - pos < 4:
                    break
                (n,) = LENGTH.unpack_from(buf, pos)
                if n > self.max_frame_bytes:
                    self._buf = bytearray()
                    raise ProtocolViolation(
                        f"frame of {n} bytes exceeds the limit of {self.max_frame_bytes}",
                        ErrorCode.FRAME_TOO_LARGE)
                if n == 0:
                    self._buf = bytearray()
                    raise ProtocolViolation("empty frame", ErrorCode.INVALID_REQUEST)
                pos += 4
                self._need = n
            if end - pos < self._need:
                break
            frames.append(bytes(buf[pos:pos + self._need]))
            pos += self._need
            self._need = -1
        if pos:
            del buf[:pos]
        return frames


@dataclass(frozen=True, slots=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str


def encode_frame(payload: bytes) -> bytes:
    return LENGTH.pack(len(payload)) + payload


def encode_request(api_key: int, api_version: int, correlation_id: int, client_id: str,
                   body: Any) -> bytes:
    payload: bytes = _packb([api_key, api_version, correlation_id, client_id, body])
    return LENGTH.pack(len(payload)) + payload


def encode_response(correlation_id: int, error_code: int, body: Any) -> bytes:
    payload: bytes = _packb([correlation_id, error_code, body])
    return LENGTH.pack(len(payload)) + payload


def _is_int(v: Any) -> bool:
    return type(v) is int


def decode_request(payload: bytes) -> tuple[RequestHeader, Any]:
    """Parse a request frame payload. A `ProtocolViolation` carries the correlation id
    when the header was readable, so the server can answer instead of hanging up."""
    try:
        obj = _unpackb(payload)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolViolation(f"frame is not valid msgpack: {type(exc).__name__}") from None
    if not isinstance(obj, list) or len(obj) != 5:
        cid = obj[2] if isinstance(obj, list) and len(obj) > 2 and _is_int(obj[2]) else None
        raise ProtocolViolation("request must be [api_key, version, correlation_id, client_id,"
                                " body]", correlation_id=cid)
    api_key, version, cid, client_id, body = obj
    if not _is_int(cid) or not (-(2**31) <= cid < 2**31):
        raise ProtocolViolation("correlation id must be a 32-bit integer")
    if not _is_int(api_key) or not _is_int(version) or not isinstance(client_id, (str, type(None))):
        raise ProtocolViolation("bad request header field types", correlation_id=cid)
    return RequestHeader(api_key, version, cid, client_id or ""), body


def decode_response(payload: bytes) -> tuple[int, int, Any]:
    try:
        obj = _unpackb(payload)
    except Exception as exc:
        raise ProtocolViolation(f"response is not valid msgpack: {type(exc).__name__}") from None
    if (not isinstance(obj, list) or len(obj) != 3 or not _is_int(obj[0])
            or not _is_int(obj[1])):
        raise ProtocolViolation("response must be [correlation_id, error_code, body]")
    return obj[0], obj[1], obj[2]
