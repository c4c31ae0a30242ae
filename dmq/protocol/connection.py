"""Client side of the wire protocol: one multiplexed connection to one node.

Many requests may be in flight on a connection; responses are matched by correlation
id and may arrive in any order. Every request has a timeout (one timer per connection,
armed at the earliest deadline; no task or timer per request). When the connection
drops, every pending request fails at once with `NetworkError`. In-flight requests
are bounded by `max_in_flight`; a sender waits for a slot, and waits while the
socket's write buffer is above its high-water mark.

A connection opened with `node_id` is a cluster node's: its first request is NODE_HELLO
naming that node, and `open` fails if the peer refuses it (the peer then refuses the
inter-node APIs on it). Ordinary clients open without one.

Error responses become exceptions here (one of the two places that maps codes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl as _ssl
from collections.abc import Sequence
from contextvars import ContextVar
from typing import Any

from dmq.aio import wait_for
from dmq.protocol.api import ApiKey
from dmq.protocol.codec import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameDecoder,
    VectoredBody,
    decode_response,
    encode_request_parts,
    encode_request_raw,
    encode_request_vectored,
    write_frame,
)
from dmq.protocol.errors import (
    DmqError,
    ErrorCode,
    NetworkError,
    ProtocolViolation,
    RequestTimedOutError,
    error_for,
)

log = logging.getLogger("dmq.protocol.connection")

DEFAULT_REQUEST_TIMEOUT_MS = 30_000

DEFAULT_TLS: ContextVar[_ssl.SSLContext | None] = ContextVar("dmq_default_tls", default=None)
"""The TLS context of connections opened without `ssl=`: a TLS node sets it for its
own links; a client sets it with `dmq.security.tls.client_tls`. None: plaintext."""

# in the error of a plaintext connection a server closed unanswered (a TLS listener)
TLS_REQUIRED_HINT = "does the listener require TLS?"
DEFAULT_SASL: ContextVar[Any] = ContextVar("dmq_default_sasl", default=None)
"""The SASL credentials (`dmq.security.sasl.SaslCredentials`) connections opened
without `sasl=` authenticate with; set by `dmq.security.sasl.client_sasl`."""


def _leader_hint(body: Any) -> tuple[int, str, int] | None:
    if isinstance(body, dict):
        leader = body.get("leader")
        if isinstance(leader, list) and len(leader) == 3:
            return (leader[0], leader[1], leader[2])
    return None


class _ClientProtocolBase(asyncio.BaseProtocol):
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn._on_lost(exc)

    def pause_writing(self) -> None:
        self.conn._writable.clear()

    def resume_writing(self) -> None:
        self.conn._writable.set()
        self.conn._room.set()


CLIENT_READ_BUFFER_BYTES = 256 * 1024
"""What a plaintext connection reads into when no large frame is being received."""


class _ClientProtocol(_ClientProtocolBase, asyncio.BufferedProtocol):
    """A plaintext connection's protocol, buffered: while a large response frame (a
    fetch's records) is being received, the socket reads go straight into the frame's
    own buffer (`FrameDecoder.frame_tail`), whose views the records then are; other
    reads go into this connection's read buffer, out of which the decoder copies."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self._buf: memoryview | None = None
        self._direct = False

    def get_buffer(self, sizehint: int) -> memoryview:
        tail = self.conn._decoder.frame_tail()
        self._direct = tail is not None
        if tail is not None:
            return tail
        if self._buf is None:
            self._buf = memoryview(bytearray(CLIENT_READ_BUFFER_BYTES))
        return self._buf

    def buffer_updated(self, nbytes: int) -> None:
        if self._direct:
            self.conn._on_frames(self.conn._decoder.filled(nbytes))
        else:
            assert self._buf is not None
            self.conn._on_data(self._buf[:nbytes])


TLS_READ_BUFFER_BYTES = 256 * 1024 + 4096
"""What a TLS connection decrypts into at a time (a socket read of 256 KiB, and more)."""


class _TlsClientProtocol(_ClientProtocolBase, asyncio.BufferedProtocol):
    """`_ClientProtocol` of a TLS connection. As a buffered protocol it has the TLS
    layer (uvloop's and asyncio's SSL transports) decrypt straight into one buffer of
    its own with `SSLObject.read(n, buffer)`; a plain protocol gets a new bytes object
    of 256 KiB allocated per 16 KiB TLS record (`SSLObject.read(256 KiB)`), and those
    joined, per socket read. The decoder copies out what it keeps."""

    def __init__(self, conn: Connection) -> None:
        super().__init__(conn)
        self._buf: memoryview | None = None

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._buf is None:
            self._buf = memoryview(bytearray(TLS_READ_BUFFER_BYTES))
        return self._buf

    def buffer_updated(self, nbytes: int) -> None:
        assert self._buf is not None
        self.conn._on_data(self._buf[:nbytes])


class Connection:
    """Open with `await Connection.open(host, port)`; then `await request(...)`."""

    def __init__(self, host: str, port: int, *, client_id: str = "dmq",
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, max_in_flight: int = 1024) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self._decoder = FrameDecoder(max_frame_bytes)
        self._transport: asyncio.Transport | None = None
        # cid -> (future, deadline on the loop clock, api key, timeout_ms)
        self._pending: dict[int, tuple[asyncio.Future[Any], float, ApiKey | int, int]] = {}
        self._next_cid = 0
        self._max_in_flight = max_in_flight
        self._room = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_deadline = 0.0
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = False
        self._close_reason: str = "connection closed"
        self._tls = False  # opened over TLS
        # the node reads raw-form frames (said so in its NODE_HELLO or API_VERSIONS
        # answer): a request with a VectoredBody goes in that form (dmq.protocol.codec)
        self.raw_frames = False
        self._answered = False  # some bytes came back from the server
        self._loop = asyncio.get_running_loop()
        self._closed_event = asyncio.Event()

    @classmethod
    async def open(cls, host: str, port: int, *, client_id: str = "dmq",
                   connect_timeout_ms: int = 5000, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                   max_in_flight: int = 1024, node_id: int | None = None,
                   ssl: _ssl.SSLContext | None = None, sasl: Any = None,
                   raw_frames: bool = False) -> Connection:
        """Connect (over TLS with `ssl`, or `DEFAULT_TLS` when set), authenticate with
        `sasl` (or `DEFAULT_SASL`) when given; with `node_id`, identify as that cluster
        node before returning. With `raw_frames` (or `node_id`), learn whether the
        node reads raw-form frames (one API_VERSIONS; NODE_HELLO's answer says it too):
        then requests with a `VectoredBody` go in that form."""
        conn = cls(host, port, client_id=client_id, max_frame_bytes=max_frame_bytes,
                   max_in_flight=max_in_flight)
        loop = asyncio.get_running_loop()
        tls = ssl if ssl is not None else DEFAULT_TLS.get()
        conn._tls = tls is not None
        try:
            await wait_for(
                loop.create_connection(
                    lambda: _TlsClientProtocol(conn) if tls else _ClientProtocol(conn),
                    host, port, ssl=tls),
                connect_timeout_ms / 1000)
        except TimeoutError:
            raise NetworkError(f"connect to {host}:{port} timed out after "
                               f"{connect_timeout_ms} ms") from None
        except _ssl.SSLError as exc:
            raise NetworkError(f"TLS handshake with {host}:{port} failed: "
                               f"{getattr(exc, 'verify_message', None) or exc.reason or exc}"
                               ) from None
        except OSError as exc:
            # asyncio's own text ("Connect call failed") hides the cause: name the errno
            why = os.strerror(exc.errno) if exc.errno else (exc.strerror or exc)
            raise NetworkError(f"cannot connect to {host}:{port}: {why}") from None
        creds = sasl if sasl is not None else DEFAULT_SASL.get()
        if creds is not None:
            try:
                await creds.authenticate(conn, connect_timeout_ms)
            except BaseException:
                await conn.close()
                raise
        if node_id is not None:
            try:
                hello = await conn.request(ApiKey.NODE_HELLO, {"node_id": node_id},
                                           timeout_ms=connect_timeout_ms)
                conn.raw_frames = isinstance(hello, dict) and hello.get("raw_frames") is True
            except DmqError as exc:
                # UNKNOWN_API_KEY: a node of an older version, which checks no identity
                if exc.code is not ErrorCode.UNKNOWN_API_KEY:
                    await conn.close()
                    raise
        elif raw_frames:
            try:
                info = await conn.request(ApiKey.API_VERSIONS, {},
                                          timeout_ms=connect_timeout_ms)
            except BaseException:
                await conn.close()
                raise
            conn.raw_frames = isinstance(info, dict) and info.get("raw_frames") is True
        return conn

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def request(self, api_key: ApiKey | int, body: Any, *, version: int = 0,
                      timeout_ms: int = DEFAULT_REQUEST_TIMEOUT_MS) -> Any:
        """Send a request, return the response body, or raise the error's exception."""
        if self._closed:
            raise NetworkError(f"{self.address}: {self._close_reason}")
        loop = self._loop
        deadline = loop.time() + timeout_ms / 1000
        if len(self._pending) >= self._max_in_flight or not self._writable.is_set():
            await self._wait_for_room(deadline, timeout_ms)
        transport = self._transport
        if self._closed or transport is None:
            raise NetworkError(f"{self.address}: {self._close_reason}")
        cid = self._next_cid
        self._next_cid = (cid + 1) & 0x7FFFFFFF
        frame = self._encode(int(api_key), version, cid, body)
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending[cid] = (fut, deadline, api_key, timeout_ms)
        if self._timer is None or deadline < self._timer_deadline:
            self._arm_timer(deadline)
        write_frame(transport, frame, self._tls)
        return await fut

    async def _wait_for_room(self, deadline: float, timeout_ms: int) -> None:
        while len(self._pending) >= self._max_in_flight or not self._writable.is_set():
            if self._closed:
                return
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                raise RequestTimedOutError(
                    f"{self.address}: no room to send within {timeout_ms} ms "
                    f"({len(self._pending)} requests in flight)")
            self._room.clear()
            try:
                await wait_for(self._room.wait(), remaining)
            except TimeoutError:
                pass

    def _arm_timer(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_deadline = deadline
        self._timer = self._loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        """One timer for the whole connection, armed at the earliest deadline."""
        self._timer = None
        now = self._loop.time()
        earliest = None
        expired = []
        for cid, (_, deadline, _, _) in self._pending.items():
            if deadline <= now:
                expired.append(cid)
            elif earliest is None or deadline < earliest:
                earliest = deadline
        for cid in expired:
            fut, _, api_key, timeout_ms = self._pending.pop(cid)
            if not fut.done():
                name = api_key.name if isinstance(api_key, ApiKey) else str(api_key)
                fut.set_exception(RequestTimedOutError(
                    f"{name} to {self.address} got no response in {timeout_ms} ms"))
        if expired:
            self._room.set()
        if earliest is not None:
            self._arm_timer(earliest)

    def send_oneway(self, api_key: ApiKey | int, body: Any, *, version: int = 0) -> None:
        """Send a request that gets no response (produce with acks=0)."""
        if self._closed or self._transport is None:
            raise NetworkError(f"{self.address}: {self._close_reason}")
        cid = self._next_cid
        self._next_cid = (cid + 1) & 0x7FFFFFFF
        write_frame(self._transport, self._encode(int(api_key), version, cid, body), self._tls)

    def _encode(self, api_key: int, version: int, cid: int, body: Any
                ) -> Sequence[bytes | memoryview]:
        """A request's frame: a `VectoredBody` by reference, in the raw form to a node
        that reads it (its records as sections), else plain (byte-identical to
        `encode_request`); other bodies plain."""
        if type(body) is VectoredBody:
            if self.raw_frames:
                return encode_request_raw(api_key, version, cid, self.client_id, body)
            return encode_request_vectored(api_key, version, cid, self.client_id, body)
        return encode_request_parts(api_key, version, cid, self.client_id, body)

    async def close(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.close()
            try:
                await wait_for(self._closed_event.wait(), 2.0)
            except TimeoutError:
                self._transport.abort()
        self._fail_all("connection closed by client")

    # callbacks -----------------------------------------------------------------------
    def _on_data(self, data: bytes | memoryview) -> None:
        # `data` may be a view of a buffer that is reused: keep nothing of it but copies
        try:
            frames = self._decoder.feed(data)
        except ProtocolViolation as exc:
            self._violated(exc)
            return
        self._on_frames(frames)

    def _on_frames(self, frames: list[bytes | bytearray]) -> None:
        self._answered = True
        try:
            for payload in frames:
                cid, code, body = decode_response(payload)
                entry = self._pending.pop(cid, None)
                if entry is None:
                    continue  # timed out earlier, or a stray; nothing waits for it
                fut = entry[0]
                if fut.done():
                    continue
                if code == 0:
                    fut.set_result(body)
                else:
                    msg = body.get("msg") if isinstance(body, dict) else None
                    data_field = body.get("data") if isinstance(body, dict) else None
                    fut.set_exception(error_for(code, msg, leader=_leader_hint(body),
                                                data=data_field))
            if frames and len(self._pending) < self._max_in_flight:
                self._room.set()
        except ProtocolViolation as exc:
            self._violated(exc)

    def _violated(self, exc: ProtocolViolation) -> None:
        log.warning("bad response stream from %s: %s", self.address, exc)
        self._close_reason = f"protocol violation by server: {exc}"
        if self._transport is not None:
            self._transport.abort()

    def _on_lost(self, exc: Exception | None) -> None:
        self._closed = True
        refused_unanswered = (self._close_reason == "connection closed" and not self._answered
                              and self._pending
                              and (exc is None or isinstance(exc, ConnectionResetError)))
        if refused_unanswered:
            # a TLS listener closes a plaintext connection, and a TLS 1.3 server one
            # without an acceptable client certificate, without a word (a close or, when
            # our request was still unread, a reset)
            self._close_reason = (
                "connection closed by the server before it answered (after the TLS "
                "handshake: does the listener require a client certificate signed by its "
                "CA?)" if self._tls else "connection closed by the server before it "
                f"answered ({TLS_REQUIRED_HINT} connect with ssl=)")
            if exc is not None:
                self._close_reason += f": {exc}"
        elif exc is not None and self._close_reason == "connection closed":
            self._close_reason = f"connection lost: {exc}"
        self._writable.set()
        self._room.set()
        self._closed_event.set()
        self._fail_all(self._close_reason)

    def _fail_all(self, reason: str) -> None:
        self._closed = True
        pending, self._pending = self._pending, {}
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fut, *_ in pending.values():
            if not fut.done():
                fut.set_exception(NetworkError(f"{self.address}: {reason}"))


async def request_once(host: str, port: int, api_key: ApiKey | int, body: Any, *,
                       timeout_ms: int = 5000, client_id: str = "dmq",
                       node_id: int | None = None, ssl: _ssl.SSLContext | None = None,
                       sasl: Any = None) -> Any:
    """Open a connection (as cluster node `node_id` if given; over `ssl`, authenticated
    with `sasl`, as `Connection.open`), send one request, close. For tools, probes and a
    node's one-off notices."""
    conn = await Connection.open(host, port, connect_timeout_ms=timeout_ms, client_id=client_id,
                                 node_id=node_id, ssl=ssl, sasl=sasl)
    try:
        return await conn.request(api_key, body, timeout_ms=timeout_ms)
    finally:
        await conn.close()


__all__ = ["DEFAULT_REQUEST_TIMEOUT_MS", "Connection", "DmqError", "ErrorCode", "request_once"]
