"""Sans-I/O frame codec.

Stream layout: a sequence of frames, each a 4-byte big-endian unsigned length word
followed by its payload. Two forms, told apart by the top bit of the length word (the
largest frame, 100 MiB, leaves that bit free):

- plain (top bit 0): the word is the payload length N; the payload is N bytes of
  msgpack.
- raw (top bit 1; `RAW_FLAG`): the low 31 bits are the payload length N; the payload
  is a 4-byte big-endian header length H, H bytes of msgpack (the header), then the
  section area (N - 4 - H bytes). In the header a msgpack ext of type
  `RAW_SECTION_EXT` (1) with 8 data bytes, big-endian u32 offset and u32 length,
  stands for that range of the section area, in place of a bin value: a record
  batch travels as it is, after the msgpack, and is written from its own buffer and
  read as a view of the received frame (no copy). The references must follow each
  other in order without gap or overlap and cover the whole area; anything else (a
  range past the area, a length word that disagrees, an ext of another type or size,
  an ext in a plain frame) is a `ProtocolViolation` naming it.

- request  = [api_key:int, api_version:int, correlation_id:int, client_id:str, body]
- response = [correlation_id:int, error_code:int, body]

Who uses the raw form: a peer sends it only to a node that said it reads it (the
`raw_frames` flag of API_VERSIONS and NODE_HELLO answers), and a server answers in
it only to a request that came in it; both forms are always read, so nodes and
clients of the previous release (plain only) keep working with new ones.

`FrameDecoder` takes byte chunks of any size and yields whole frame payloads. It
never touches a socket, never imports asyncio, and keeps at most one partial frame
buffered: a length above `max_frame_bytes` is refused before any of its body is
buffered. Errors are `ProtocolViolation` (the peer's fault); nothing else escapes.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack  # type: ignore[import-untyped]

from dmq.protocol.errors import ErrorCode, ProtocolViolation

LENGTH = struct.Struct(">I")
DEFAULT_MAX_FRAME_BYTES = 100 * 1024 * 1024
RAW_FLAG = 0x8000_0000
"""The top bit of a length word: the frame is in the raw form (module docstring)."""
RAW_SECTION_EXT = 1
"""The msgpack ext type of a raw section reference: 8 bytes, >II offset, length."""
RAW_MIN_BYTES = 4096
"""A bytes value of a `VectoredBody` at least this large travels as a raw section of
a raw-form frame; smaller ones are packed into its header (copying is cheaper)."""
_REF = struct.Struct(">II")
_RAW_HEAD = struct.Struct(">II")

_packb = msgpack.Packer(use_bin_type=True).pack


def _plain_ext(code: int, data: bytes) -> Any:
    raise ProtocolViolation(f"msgpack ext type {code} in a plain frame (raw section "
                            f"references belong in raw-form frames only)")


def _unpackb(data: bytes | bytearray | memoryview) -> Any:
    return msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=False,
                           ext_hook=_plain_ext)


class RawFrame(bytearray):
    """The payload of a raw-form frame as `FrameDecoder` hands it out (a buffer of its
    own, never reused): `decode_request`/`decode_response` give its sections out as
    views of it, which stay valid as long as they are held."""

    __slots__ = ()


class FrameDecoder:
    """Incremental decoder: `feed(chunk)` returns the whole payloads completed by it:
    `bytes` or `bytearray` for a plain frame, `RawFrame` for a raw one.

    Copies: a frame that arrives whole inside one chunk is sliced out of it (one copy);
    a frame split over chunks is gathered in a small buffer, except a large one
    (>= `large_frame_bytes`), which gets a buffer of its declared length: the chunks
    that follow its first are copied into it (`feed`), or a reader that can receive
    into a buffer reads the rest of the frame straight into it (`frame_tail`, then
    `filled`; no copy at all). A reader that budgets request memory sets `grant`: the
    decoder asks it for the frame's length when the frame starts and allocates the
    buffer at once only if granted; otherwise (the reader stops reading that
    connection until the budget frees up) the first chunk's part is held as bytes and
    the buffer allocated when the next chunk is wanted, so nothing is allocated that
    the budget did not grant.
    """

    __slots__ = ("_buf", "_frame", "_have", "_head", "_need", "_raw", "grant",
                 "large_frame_bytes", "max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                 large_frame_bytes: int = 64 * 1024) -> None:
        if not 0 < max_frame_bytes < RAW_FLAG:
            raise ValueError(f"max_frame_bytes must be in [1, {RAW_FLAG - 1}] (the length "
                             f"word's top bit marks a raw-form frame), got {max_frame_bytes}")
        self.max_frame_bytes = max_frame_bytes
        self.large_frame_bytes = large_frame_bytes
        self._buf = bytearray()  # a partial header or a partial small frame (with header)
        self._head: bytes | None = None  # a large frame's first bytes, before `_frame`
        self._frame: bytearray | None = None  # the buffer of the large frame in progress
        self._raw = False  # the large frame in progress is raw
        self._have = 0  # bytes of the large frame received
        self._need = 0  # payload length of the large frame in progress (0: none)
        # asked for a large frame's length when it starts; None: always granted
        self.grant: Callable[[int], bool] | None = None

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf) + self._have

    @property
    def pending_frame_bytes(self) -> int:
        """The declared length of the large frame being gathered (0: none). A reader
        that budgets memory reserves this once the frame starts; smaller partial frames
        stay under `large_frame_bytes`."""
        return self._need

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes | bytearray]:
        frames: list[bytes | bytearray] = []
        if self._need:
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

    def frame_tail(self) -> memoryview | None:
        """Where the rest of the large frame in progress goes (None: no such frame): a
        view of its buffer for a reader to receive into; then `filled(n)`."""
        if not self._need:
            return None
        frame = self._frame if self._frame is not None else self._alloc()
        return memoryview(frame)[self._have:]

    def filled(self, nbytes: int) -> list[bytes | bytearray]:
        """`nbytes` were received into the view `frame_tail` gave: the frame if done."""
        self._have += nbytes
        if self._have < self._need:
            return []
        frame = self._frame
        assert frame is not None and self._have == self._need
        self._frame = None
        self._have = self._need = 0
        return [frame]

    def _split(self, mv: memoryview, frames: list[bytes | bytearray]) -> int:
        """Cut whole frames out of `mv`; returns how far it got."""
        pos = 0
        end = len(mv)
        while end - pos >= 4:
            (word,) = LENGTH.unpack_from(mv, pos)
            n = word & ~RAW_FLAG
            raw = word != n
            if n > self.max_frame_bytes:
                self._reset()
                raise ProtocolViolation(
                    f"frame of {n} bytes exceeds the limit of {self.max_frame_bytes}",
                    ErrorCode.FRAME_TOO_LARGE)
            if n < 4 and raw or n == 0:
                self._reset()
                raise ProtocolViolation(
                    f"raw frame of {n} bytes has no room for its 4-byte header length"
                    if raw else "empty frame", ErrorCode.INVALID_REQUEST)
            start = pos + 4
            if end - start < n:
                if n >= self.large_frame_bytes:
                    self._have = end - start
                    self._need = n
                    self._raw = raw
                    if self.grant is None or self.grant(n):
                        frame = RawFrame(n) if raw else bytearray(n)
                        frame[:end - start] = mv[start:end]
                        self._frame = frame
                    else:
                        self._head = bytes(mv[start:end])
                    return end
                return pos
            frames.append(RawFrame(mv[start:start + n]) if raw else bytes(mv[start:start + n]))
            pos = start + n
        return pos

    def _alloc(self) -> bytearray:
        """The large frame's buffer, holding the first chunk's part."""
        frame = RawFrame(self._need) if self._raw else bytearray(self._need)
        head = self._head
        assert head is not None
        frame[:len(head)] = head
        self._head = None
        self._frame = frame
        return frame

    def _gather(self, data: bytes | bytearray | memoryview, frames: list[bytes | bytearray]
                ) -> memoryview | None:
        """Add a chunk to the large frame in progress; the rest of the chunk (or None)."""
        frame = self._frame if self._frame is not None else self._alloc()
        have = self._have
        missing = self._need - have
        size = len(data)
        if size < missing:
            frame[have:have + size] = data
            self._have = have + size
            return None
        mv = memoryview(data)
        frame[have:] = mv[:missing]
        frames.append(frame)
        self._frame = None
        self._have = self._need = 0
        return mv[missing:] if size > missing else None

    def _reset(self) -> None:
        self._buf = bytearray()
        self._head = self._frame = None
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
    """Write a frame's buffers: at once, or over TLS a multi-part one in `tls_pieces`.

    On asyncio's plain socket transport before Python 3.12, whose `writelines` joins
    its buffers into one bytes object (a copy of every record byte), a multi-part
    frame goes to the socket with one `os.writev` of the buffers themselves when the
    transport has nothing queued (what its own `write` does with `send`); only what the
    kernel did not take is handed to the transport (and copied by it)."""
    if not tls or len(frame) == 1:
        if len(frame) > 1 and _JOINING_WRITELINES and type(transport).__name__ == \
                "_SelectorSocketTransport" and _writev(transport, frame):
            return
        transport.writelines(frame)
        return
    for group in tls_pieces(frame):
        transport.writelines(group)


_JOINING_WRITELINES = sys.version_info < (3, 12)
try:
    _IOV_MAX = max(16, os.sysconf("SC_IOV_MAX"))
except (AttributeError, ValueError, OSError):
    _IOV_MAX = 16


def _writev(transport: Any, frame: Sequence[bytes | memoryview]) -> bool:
    """`write_frame`'s direct path; False when it does not apply (then nothing was
    written): the transport has bytes queued or is closing, or the socket fails (the
    transport then meets the error its own way)."""
    if len(frame) > _IOV_MAX or transport.get_write_buffer_size() or transport.is_closing():
        return False
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    try:
        sent = os.writev(sock.fileno(), frame)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError:
        return False
    rest: list[bytes | memoryview] = []
    for part in frame:
        n = len(part) if type(part) is bytes else memoryview(part).nbytes
        if sent >= n:
            sent -= n
            continue
        rest.append(memoryview(part).cast("B")[sent:] if sent else part)
        sent = 0
    if rest:
        transport.writelines(rest)
    return True


VECTORED_MIN_BYTES = 64 * 1024  # msgpack writes buffers this large as bin 32
_BIN32 = struct.Struct(">BI")
_local = threading.local()


def _vpacker() -> Any:
    """This thread's reusable packer for the by-reference encoders."""
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(use_bin_type=True, autoreset=False)
    return packer


class VectoredBody(dict[str, Any]):
    """A request or response body whose large bytes values (e.g. the record batches of
    a produce request or a fetch response) are written by reference rather than copied
    into the frame: in a plain frame those >= `VECTORED_MIN_BYTES`, as msgpack bin 32
    (`encode_response_vectored`, `encode_request_vectored`); in a raw-form frame those
    >= `RAW_MIN_BYTES`, as raw sections (`encode_request_raw`, `encode_response_raw`).
    The buffers must never change afterwards (bytes, or views of bytes). Otherwise an
    ordinary dict: packs and reads the same. As a request body it also asks for the
    raw form: `Connection` sends such a request raw to a node that reads it, and the
    server answers a raw request with a `VectoredBody` in the raw form."""

    __slots__ = ()


class MultiBuffer:
    """One bytes value held as adjacent buffers (e.g. a record batch's header and the
    record values it references, `BatchBuilder.seal_parts`), never joined on the way
    to the socket: in a `VectoredBody` it packs as the bytes of `bytes(self)` would,
    its buffers written in turn (one raw section, or after one bin 32 header); only
    when too small for that are they joined. `len()` is the byte length. The buffers
    must never change afterwards."""

    __slots__ = ("nbytes", "parts")

    def __init__(self, parts: Sequence[bytes]) -> None:
        self.parts = tuple(parts)
        self.nbytes = sum(map(len, self.parts))

    def __len__(self) -> int:
        return self.nbytes

    def __bytes__(self) -> bytes:
        return b"".join(self.parts)

    def __repr__(self) -> str:
        return f"MultiBuffer({len(self.parts)} parts, {self.nbytes} bytes)"


class _Sections:
    __slots__ = ("bufs", "size")

    def __init__(self) -> None:
        self.bufs: list[bytes | memoryview] = []
        self.size = 0


def _encode_vectored(head: tuple[Any, ...], body: Any) -> list[bytes | memoryview]:
    packer = _vpacker()
    parts: list[bytes | memoryview] = []
    try:
        packer.pack_array_header(len(head) + 1)
        for x in head:
            packer.pack(x)
        _pack_vectored(body, packer, parts, None, VECTORED_MIN_BYTES)
        parts.append(packer.bytes())
    finally:
        packer.reset()
    size = 0
    for part in parts:
        size += part.nbytes if type(part) is memoryview else len(part)
    parts.insert(0, LENGTH.pack(size))
    return parts


def encode_response_vectored(correlation_id: int, error_code: int, body: Any
                             ) -> list[bytes | memoryview]:
    """The bytes of `encode_response` as buffers for `transport.writelines`, with every
    large bytes value of `body` passed through uncopied (byte-identical once joined)."""
    return _encode_vectored((correlation_id, error_code), body)


def encode_request_vectored(api_key: int, api_version: int, correlation_id: int,
                            client_id: str, body: Any) -> list[bytes | memoryview]:
    """`encode_request` as buffers, large bytes values of `body` uncopied (plain form:
    byte-identical once joined, for a node that does not read the raw form)."""
    return _encode_vectored((api_key, api_version, correlation_id, client_id), body)


def _encode_raw(head: tuple[Any, ...], body: Any) -> list[bytes | memoryview]:
    packer = _vpacker()
    sections = _Sections()
    try:
        packer.pack_array_header(len(head) + 1)
        for x in head:
            packer.pack(x)
        _pack_vectored(body, packer, None, sections, RAW_MIN_BYTES)
        header = packer.bytes()
    finally:
        packer.reset()
    n = 4 + len(header) + sections.size
    if n >= RAW_FLAG:
        raise ValueError(f"frame of {n} bytes is too large for a length word")
    return [_RAW_HEAD.pack(RAW_FLAG | n, len(header)) + header, *sections.bufs]


def encode_request_raw(api_key: int, api_version: int, correlation_id: int, client_id: str,
                       body: Any) -> list[bytes | memoryview]:
    """A request in the raw form (module docstring) as buffers for `writelines`: the
    length word, header length and msgpack header in one, then each large bytes value
    of `body` (>= `RAW_MIN_BYTES`) as it is."""
    return _encode_raw((api_key, api_version, correlation_id, client_id), body)


def encode_response_raw(correlation_id: int, error_code: int, body: Any
                        ) -> list[bytes | memoryview]:
    """A response in the raw form; see `encode_request_raw`."""
    return _encode_raw((correlation_id, error_code), body)


def _is_big(obj: Any, least: int) -> bool:
    t = type(obj)
    if t is bytes:
        return len(obj) >= least
    return t is memoryview and obj.nbytes >= least


def _pack_vectored(obj: Any, packer: Any, parts: list[bytes | memoryview] | None,
                   sections: _Sections | None, least: int) -> None:
    """Pack `obj`, its bytes values of `least` bytes or more by reference: in `parts`
    after a bin 32 header (plain form) or in `sections`, referenced by an ext (raw)."""
    t = type(obj)
    if t is list or t is tuple:
        for x in obj:
            tx = type(x)
            if (tx is list or tx is tuple or tx is dict or tx is VectoredBody
                    or tx is MultiBuffer or _is_big(x, least)):
                break
        else:
            packer.pack(obj)  # no container and no large buffer inside: one call
            return
        packer.pack_array_header(len(obj))
        for x in obj:
            _pack_vectored(x, packer, parts, sections, least)
    elif t is dict or t is VectoredBody:
        packer.pack_map_header(len(obj))
        for k, v in obj.items():
            packer.pack(k)
            _pack_vectored(v, packer, parts, sections, least)
    elif t is MultiBuffer:
        n = obj.nbytes
        if n < least:
            packer.pack(bytes(obj))
        elif sections is not None:  # adjacent in the section area: one reference
            packer.pack_ext_type(RAW_SECTION_EXT, _REF.pack(sections.size, n))
            sections.bufs.extend(obj.parts)
            sections.size += n
        else:
            assert parts is not None
            parts.append(packer.bytes())
            packer.reset()
            parts.append(_BIN32.pack(0xC6, n))  # n >= VECTORED_MIN_BYTES: msgpack's bin 32
            parts.extend(obj.parts)
    elif _is_big(obj, least):
        n = obj.nbytes if t is memoryview else len(obj)
        if sections is not None:
            packer.pack_ext_type(RAW_SECTION_EXT, _REF.pack(sections.size, n))
            sections.bufs.append(obj)
            sections.size += n
            return
        assert parts is not None
        parts.append(packer.bytes())
        packer.reset()
        parts.append(_BIN32.pack(0xC6, n))
        parts.append(obj)
    else:
        packer.pack(obj)


def _is_int(v: Any) -> bool:
    return type(v) is int


def _unpack_raw(frame: bytearray) -> tuple[Any, str | None]:
    """The header of a raw-form payload with its section references as views of
    `frame`, and the first thing wrong with the references (None: nothing)."""
    n = len(frame)
    if n < 4:
        raise ProtocolViolation(f"raw frame of {n} bytes has no room for its header length")
    (h,) = LENGTH.unpack_from(frame, 0)
    area = 4 + h
    if area > n:
        raise ProtocolViolation(f"raw frame header length {h} exceeds the {n - 4} bytes "
                                f"of the frame after it")
    mv = memoryview(frame)
    size = n - area
    at = [area]  # the next section's position in `frame`
    error: list[str] = []

    def ref(code: int, data: bytes) -> Any:
        if error:
            return None
        if code != RAW_SECTION_EXT or len(data) != 8:
            error.append(f"msgpack ext type {code} of {len(data)} bytes in a raw frame "
                         f"(a section reference is ext type {RAW_SECTION_EXT} of 8 bytes)")
            return None
        off, length = _REF.unpack(data)
        if area + off != at[0]:
            error.append(f"raw section at offset {off} where the next one starts at "
                         f"{at[0] - area} (sections follow each other without gap or "
                         f"overlap)")
            return None
        end = at[0] + length
        if end > n:
            error.append(f"raw section [{off}, {off + length}) runs past the section area "
                         f"of {size} bytes")
            return None
        view = mv[at[0]:end]
        at[0] = end
        return view

    try:
        obj = msgpack.unpackb(mv[4:area], raw=False, use_list=True, strict_map_key=False,
                              ext_hook=ref)
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolViolation(f"raw frame header is not valid msgpack: "
                                f"{type(exc).__name__}: {exc}") from None
    if not error and at[0] != n:
        error.append(f"raw frame holds a section area of {size} bytes but its references "
                     f"cover {at[0] - area}")
    return obj, error[0] if error else None


def _unpack_payload(payload: bytes | bytearray, what: str) -> tuple[Any, str | None]:
    if type(payload) is RawFrame:
        return _unpack_raw(payload)
    try:
        return _unpackb(payload), None
    except ProtocolViolation:
        raise
    except Exception as exc:  # msgpack raises several unrelated types
        raise ProtocolViolation(f"{what} is not valid msgpack: {type(exc).__name__}") from None


def decode_request(payload: bytes | bytearray) -> tuple[RequestHeader, Any]:
    """Parse a request frame payload (plain, or a `RawFrame`: its sections come as
    memoryviews of it). A `ProtocolViolation` carries the correlation id when the
    header was readable, so the server can answer instead of hanging up."""
    obj, bad = _unpack_payload(payload, "frame")
    if bad is not None or not isinstance(obj, list) or len(obj) != 5:
        cid = obj[2] if isinstance(obj, list) and len(obj) > 2 and _is_int(obj[2]) else None
        if cid is not None and not (-(2**31) <= cid < 2**31):
            cid = None
        raise ProtocolViolation(bad or "request must be [api_key, version, correlation_id, "
                                "client_id, body]", correlation_id=cid)
    api_key, version, cid, client_id, body = obj
    if not _is_int(cid) or not (-(2**31) <= cid < 2**31):
        raise ProtocolViolation("correlation id must be a 32-bit integer")
    if not _is_int(api_key) or not _is_int(version) or not isinstance(client_id, (str, type(None))):
        raise ProtocolViolation("bad request header field types", correlation_id=cid)
    return RequestHeader(api_key, version, cid, client_id or ""), body


def decode_response(payload: bytes | bytearray) -> tuple[int, int, Any]:
    obj, bad = _unpack_payload(payload, "response")
    if bad is not None:
        raise ProtocolViolation(bad)
    if (not isinstance(obj, list) or len(obj) != 3 or not _is_int(obj[0])
            or not _is_int(obj[1])):
        raise ProtocolViolation("response must be [correlation_id, error_code, body]")
    return obj[0], obj[1], obj[2]
