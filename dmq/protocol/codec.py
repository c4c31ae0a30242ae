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
from collections.abc import Sequence
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
    """Incremental decoder: `feed(chunk)` returns the whole payloads completed by it.

    Copies: a frame that arrives whole inside one chunk is sliced out of it (one copy);
    a frame split over chunks is gathered in a small buffer, except a large one
    (>= `large_frame_bytes`), whose chunks are kept as they are and joined once when
    it is complete, so a multi-MiB fetch response is copied once, not once per chunk.
    """

    __slots__ = ("_buf", "_have", "_need", "_parts", "large_frame_bytes", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 large_frame_bytes: int = 64 * 1024) -> None:
        if max_frame_bytes <= 0:
            raise ValueError("max_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self.large_frame_bytes = large_frame_bytes
        self._buf = bytearray()  # a partial header or a partial small frame (with header)
        self._parts: list[bytes | memoryview] | None = None  # a large frame's body so far
        self._have = 0  # bytes in _parts
        self._need = 0  # body length of the large frame in _parts

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf) + self._have

    @property
    def pending_frame_bytes(self) -> int:
        """The declared length of the large frame being gathered (0: none). A reader
        that budgets memory reserves this once the frame starts; smaller partial frames
        stay under `large_frame_bytes`."""
        return self._need if self._parts is not None else 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        frames: list[bytes] = []
        if self._parts is not None:
            rest = self._gather(data, frames)
            if rest is None:
                return frames
            data = rest
        buf = self._buf
        if buf:
            buf += data
            src: bytes | bytearray | memoryview = buf
        else:
            src = data
        mv = memoryview(src)
        try:
            pos = self._split(mv, frames)
        finally:
            mv.release()
        if src is buf:
            del buf[:pos]
        elif pos < len(src):
            buf += src[pos:]
        return frames

    def _split(self, mv: memoryview, frames: list[bytes]) -> int:
        """Cut whole frames out of `mv`; returns how far it got."""
        pos = 0
        end = len(mv)
        while end - pos >= 4:
            (n,) = LENGTH.unpack_from(mv, pos)
            if n > self.max_frame_bytes:
                self._reset()
                raise ProtocolViolation(
                    f"frame of {n} bytes exceeds the limit of {self.max_frame_bytes}",
                    ErrorCode.FRAME_TOO_LARGE)
            if n == 0:
                self._reset()
                raise ProtocolViolation("empty frame", ErrorCode.INVALID_REQUEST)
            start = pos + 4
            if end - start < n:
                if n >= self.large_frame_bytes:
                    self._parts = [bytes(mv[start:end])]
                    self._have = end - start
                    self._need = n
                    return end
                return pos
            frames.append(bytes(mv[start:start + n]))
            pos = start + n
        return pos

    def _gather(self, data: bytes | bytearray | memoryview, frames: list[bytes]
                ) -> memoryview | None:
        """Add a chunk to the large frame in progress; the rest of the chunk (or None)."""
        parts = self._parts
        assert parts is not None
        missing = self._need - self._have
        size = len(data)
        if size < missing:
            parts.append(data if isinstance(data, bytes) else bytes(data))
            self._have += size
            return None
        mv = memoryview(data)
        parts.append(mv[:missing])
        frames.append(b"".join(parts))
        self._parts = None
        self._have = self._need = 0
        return mv[missing:] if size > missing else None

    def _reset(self) -> None:
        self._buf = bytearray()
        self._parts = None
        self._have = self._need = 0


@dataclass(frozen=True, slots=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str


def encode_request(api_key: int, api_version: int, correlation_id: int, client_id: str,
                   body: Any) -> bytes:
    payload: bytes = _packb([api_key, api_version, correlation_id, client_id, body])
    return LENGTH.pack(len(payload)) + payload


def encode_response(correlation_id: int, error_code: int, body: Any) -> bytes:
    payload: bytes = _packb([correlation_id, error_code, body])
    return LENGTH.pack(len(payload)) + payload


SPLIT_FRAME_BYTES = 32 * 1024


def encode_request_parts(api_key: int, api_version: int, correlation_id: int, client_id: str,
                         body: Any) -> tuple[bytes, ...]:
    """`encode_request` as buffers for `transport.writelines`: a large payload (one
    holding record batches) comes separately from its 4-byte length so it is not copied
    once more to prepend them; a small frame comes as one buffer."""
    payload: bytes = _packb([api_key, api_version, correlation_id, client_id, body])
    if len(payload) < SPLIT_FRAME_BYTES:
        return (LENGTH.pack(len(payload)) + payload,)
    return LENGTH.pack(len(payload)), payload


def encode_response_parts(correlation_id: int, error_code: int, body: Any
                          ) -> tuple[bytes, ...]:
    """`encode_response` as buffers for `transport.writelines` (see `encode_request_parts`)."""
    payload: bytes = _packb([correlation_id, error_code, body])
    if len(payload) < SPLIT_FRAME_BYTES:
        return (LENGTH.pack(len(payload)) + payload,)
    return LENGTH.pack(len(payload)), payload


TLS_WRITE_PIECE_BYTES = 256 * 1024


def tls_pieces(parts: Sequence[bytes | memoryview], piece: int = TLS_WRITE_PIECE_BYTES
               ) -> list[list[bytes | memoryview]]:
    """A frame's buffers regrouped into runs of at most `piece` bytes, large ones cut
    into views (nothing copied), for one `writelines` each on a TLS transport: asyncio's
    and uvloop's encrypt a whole `writelines` into one memory BIO before any of it goes
    out and read it back as one bytes object, so a 4 MiB fetch response grew the BIO to
    4 MiB and came out as a 4 MiB allocation; in pieces, both stay at `piece`."""
    groups: list[list[bytes | memoryview]] = []
    group: list[bytes | memoryview] = []
    room = piece
    for part in parts:
        n = len(part) if type(part) is bytes else memoryview(part).nbytes
        if n <= room:
            group.append(part)
            room -= n
        else:
            view = memoryview(part).cast("B")
            pos = 0
            while pos < n:
                take = min(room, n - pos)
                group.append(view[pos:pos + take])
                pos += take
                room -= take
                if room == 0:
                    groups.append(group)
                    group, room = [], piece
            continue
        if room == 0:
            groups.append(group)
            group, room = [], piece
    if group:
        groups.append(group)
    return groups


def write_frame(transport: Any, frame: Sequence[bytes | memoryview], tls: bool) -> None:
    """Write a frame's buffers: at once, or over TLS a multi-part one in `tls_pieces`."""
    if not tls or len(frame) == 1:
        transport.writelines(frame)
        return
    for group in tls_pieces(frame):
        transport.writelines(group)


VECTORED_MIN_BYTES = 64 * 1024  # msgpack writes buffers this large as bin 32
_BIN32 = struct.Struct(">BI")
_vpacker = msgpack.Packer(use_bin_type=True, autoreset=False)


class VectoredBody(dict[str, Any]):
    """A response body whose large bytes values (>= `VECTORED_MIN_BYTES`, e.g. the record
    batches of a fetch) are written by reference rather than copied into the frame; see
    `encode_response_vectored`. The buffers must never change afterwards (bytes, or
    views of bytes). Otherwise an ordinary dict: packs and reads the same."""

    __slots__ = ()


def encode_response_vectored(correlation_id: int, error_code: int, body: Any
                             ) -> list[bytes | memoryview]:
    """The bytes of `encode_response` as buffers for `transport.writelines`, with every
    large bytes value of `body` passed through uncopied (byte-identical once joined)."""
    packer = _vpacker
    parts: list[bytes | memoryview] = []
    try:
        packer.pack_array_header(3)
        packer.pack(correlation_id)
        packer.pack(error_code)
        _pack_vectored(body, packer, parts)
        parts.append(packer.bytes())
    finally:
        packer.reset()
    size = 0
    for part in parts:
        size += part.nbytes if type(part) is memoryview else len(part)
    parts.insert(0, LENGTH.pack(size))
    return parts


def _is_big(obj: Any) -> bool:
    t = type(obj)
    if t is bytes:
        return len(obj) >= VECTORED_MIN_BYTES
    return t is memoryview and obj.nbytes >= VECTORED_MIN_BYTES


def _pack_vectored(obj: Any, packer: Any, parts: list[bytes | memoryview]) -> None:
    t = type(obj)
    if t is list or t is tuple:
        for x in obj:
            tx = type(x)
            if tx is list or tx is tuple or tx is dict or tx is VectoredBody or _is_big(x):
                break
        else:
            packer.pack(obj)  # no container and no large buffer inside: one call
            return
        packer.pack_array_header(len(obj))
        for x in obj:
            _pack_vectored(x, packer, parts)
    elif t is dict or t is VectoredBody:
        packer.pack_map_header(len(obj))
        for k, v in obj.items():
            packer.pack(k)
            _pack_vectored(v, packer, parts)
    elif _is_big(obj):
        parts.append(packer.bytes())
        packer.reset()
        n = obj.nbytes if t is memoryview else len(obj)
        parts.append(_BIN32.pack(0xC6, n))
        parts.append(obj)
    else:
        packer.pack(obj)


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
