"""Client side of the wire protocol: one multiplexed connection to one node.

Many requests may be in flight on a connection; responses are matched by correlation
id and may arrive in any order. Every request has a timeout (timer per request, not
a task). When the connection drops, every pending request fails at once with
`NetworkError`. In-flight requests are bounded by `max_in_flight`; a sender waits for
a slot, and waits while the socket's write buffer is above its high-water mark.

Error responses become exceptions here (one of the two places that maps codes).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from dmq.protocol.api import ApiKey
from dmq.protocol.codec import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameDecoder,
    decode_response,
    encode_request,
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


def _leader_hint(body: Any) -> tuple[int, str, int] | None:
    if isinstance(body, dict):
        leader = body.get("leader")
        if isinstance(leader, list) and len(leader) == 3:
            return (leader[0], leader[1], leader[2])
    return None


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.conn._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn._on_lost(exc)

    def pause_writing(self) -> None:
        self.conn._writable.clear()

    def resume_writing(self) -> None:
        self.conn._writable.set()


class Connection:
    """Open with `await Connection.open(host, port)`; then `await request(...)`."""

    def __init__(self, host: str, port: int, *, client_id: str = "dmq",
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, max_in_flight: int = 1024) -> None:
        self.host = host
        self.port = port
        self.client_id = client_id
        self._decoder = FrameDecoder(max_frame_bytes)
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, tuple[asyncio.Future[Any], asyncio.TimerHandle]] = {}
        self._next_cid = 0
        self._slots = asyncio.Semaphore(max_in_flight)
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = False
        self._close_reason: str = "connection closed"
        self._loop = asyncio.get_running_loop()
        self._closed_event = asyncio.Event()

    @classmethod
    async def open(cls, host: str, port: int, *, client_id: str = "dmq",
                   connect_timeout_ms: int = 5000, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
                   max_in_flight: int = 1024) -> Connection:
        conn = cls(host, port, client_id=client_id, max_frame_bytes=max_frame_bytes,
                   max_in_flight=max_in_flight)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: _ClientProtocol(conn), host, port),
                timeout=connect_timeout_ms / 1000)
        except TimeoutError:
            raise NetworkError(f"connect to {host}:{port} timed out after "
                               f"{connect_timeout_ms} ms") from None
        except OSError as exc:
            raise NetworkError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from None
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
        async with self._slots:
            if not self._writable.is_set():
                try:
                    await asyncio.wait_for(self._writable.wait(), timeout_ms / 1000)
                except TimeoutError:
                    raise RequestTimedOutError(
                        f"{self.address}: socket not writable for {timeout_ms} ms") from None
            if self._closed or self._transport is None:
                raise NetworkError(f"{self.address}: {self._close_reason}")
            cid = self._next_cid
            self._next_cid = (cid + 1) & 0x7FFFFFFF
            frame = encode_request(int(api_key), version, cid, self.client_id, body)
            fut: asyncio.Future[Any] = self._loop.create_future()
            timer = self._loop.call_later(timeout_ms / 1000, self._on_timeout, cid, api_key,
                                          timeout_ms)
            self._pending[cid] = (fut, timer)
            self._transport.write(frame)
            return await fut

    def send_oneway(self, api_key: ApiKey | int, body: Any, *, version: int = 0) -> None:
        """Send a request that gets no response (produce with acks=0)."""
        if self._closed or self._transport is None:
            raise NetworkError(f"{self.address}: {self._close_reason}")
        cid = self._next_cid
        self._next_cid = (cid + 1) & 0x7FFFFFFF
        self._transport.write(encode_request(int(api_key), version, cid, self.client_id, body))

    async def close(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.close()
            try:
                await asyncio.wait_for(self._closed_event.wait(), 2.0)
            except TimeoutError:
                self._transport.abort()
        self._fail_all("connection closed by client")

    # callbacks -----------------------------------------------------------------------
    def _on_timeout(self, cid: int, api_key: ApiKey | int, timeout_ms: int) -> None:
        entry = self._pending.pop(cid, None)
        if entry is not None and not entry[0].done():
            name = api_key.name if isinstance(api_key, ApiKey) else str(api_key)
            entry[0].set_exception(RequestTimedOutError(
                f"{name} to {self.address} got no response in {timeout_ms} ms"))

    def _on_data(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
            for payload in frames:
                cid, code, body = decode_response(payload)
                entry = self._pending.pop(cid, None)
                if entry is None:
                    continue  # timed out earlier, or a stray; nothing waits for it
                fut, timer = entry
                timer.cancel()
                if fut.done():
                    continue
                if code == 0:
                    fut.set_result(body)
                else:
                    msg = body.get("msg") if isinstance(body, dict) else None
                    data_field = body.get("data") if isinstance(body, dict) else None
                    fut.set_exception(error_for(code, msg, leader=_leader_hint(body),
                                                data=data_field))
        except ProtocolViolation as exc:
            log.warning("bad response stream from %s: %s", self.address, exc)
            self._close_reason = f"protocol violation by server: {exc}"
            if self._transport is not None:
                self._transport.abort()

    def _on_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if exc is not None and self._close_reason == "connection closed":
            self._close_reason = f"connection lost: {exc}"
        self._writable.set()
        self._closed_event.set()
        self._fail_all(self._close_reason)

    def _fail_all(self, reason: str) -> None:
        self._closed = True
        pending, self._pending = self._pending, {}
        for fut, timer in pending.values():
            timer.cancel()
            if not fut.done():
                fut.set_exception(NetworkError(f"{self.address}: {reason}"))


async def request_once(host: str, port: int, api_key: ApiKey | int, body: Any, *,
                       timeout_ms: int = 5000, client_id: str = "dmq") -> Any:
    """Open a connection, send one request, close. For tools and probes."""
    conn = await Connection.open(host, port, connect_timeout_ms=timeout_ms, client_id=client_id)
    try:
        return await conn.request(api_key, body, timeout_ms=timeout_ms)
    finally:
        await conn.close()


__all__ = ["DEFAULT_REQUEST_TIMEOUT_MS", "Connection", "DmqError", "ErrorCode", "request_once"]
