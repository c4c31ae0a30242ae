"""The request server every node runs: accept connections, decode frames, dispatch
each request to the handler registered for its API key, write responses.

Ownership and contract:
- One `_ServerConnection` (an asyncio.Protocol) per client. Requests on a connection
  are dispatched in arrival order: the handler is called at once; a coroutine it
  returns becomes a task, and tasks start in creation order, so a handler that does its
  ordering-sensitive work before its first `await` (the broker's produce append) sees
  requests in the order they arrived. Responses go
  out as handlers finish, possibly out of order; clients match them by correlation id.
- Bad input never takes the node down. A request whose correlation id is readable gets
  an error response; otherwise the connection is closed. Either way one log line.
- Backpressure: a connection stops being read while it has `max_in_flight` unanswered
  requests or while its transport's write buffer is over the high-water mark.
- Exceptions become error codes here and only here: a `DmqError` maps to its code, any
  other exception is logged with its traceback and answered UNKNOWN_SERVER_ERROR.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from dmq.aio import wait_for
from dmq.protocol.api import API_VERSION_RANGE, REQUEST_SCHEMAS, ApiKey
from dmq.protocol.codec import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameDecoder,
    RequestHeader,
    VectoredBody,
    decode_request,
    encode_response_parts,
    encode_response_vectored,
)
from dmq.protocol.errors import DmqError, ErrorCode, ProtocolViolation, describe

log = logging.getLogger("dmq.protocol.server")

HTTP_METHOD_PREFIXES = frozenset({b"GET ", b"HEAD", b"POST", b"PUT ", b"DELE", b"OPTI",
                                  b"PATC"})
"""First 4 bytes of an HTTP/1.x request; as a frame length each is over 1 GB."""

NO_RESPONSE: Any = object()
"""Returned by a handler that must not answer (produce with acks=0)."""


@dataclass(slots=True)
class RequestContext:
    header: RequestHeader
    peer: str
    connection: _ServerConnection


Handler = Callable[[RequestContext, Any], Any]
"""A handler returns the response body, `NO_RESPONSE`, or a coroutine producing either.
Plain functions answer without a task (the fast path); `async def` handlers run as one
task per request. Raising a `DmqError` answers with its code."""


def error_body(exc: DmqError) -> dict[str, Any]:
    body: dict[str, Any] = {"msg": exc.message}
    if exc.leader is not None:
        body["leader"] = list(exc.leader)
    if exc.data is not None:
        body["data"] = exc.data
    return body


class _ServerConnection(asyncio.Protocol):
    def __init__(self, server: ProtocolServer) -> None:
        self.server = server
        self.decoder = FrameDecoder(server.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.in_flight = 0
        self.tasks: set[asyncio.Task[None]] = set()
        # frames read but not yet dispatched because `max_in_flight` was reached; holds
        # at most what one socket read delivered, since reading pauses while non-empty
        self.backlog: deque[bytes] = deque()
        self._read_paused = False
        self._write_paused = False
        self.closed = False
        # until the first 4 bytes are in, an HTTP request may still be told from a frame
        self._sniffing = server.http_handoff is not None
        self._sniffed = b""

    # asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert hasattr(transport, "set_write_buffer_limits")  # uvloop's is not a Transport
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        transport.set_write_buffer_limits(high=self.server.max_buffered_bytes)
        self.server._connections.add(self)
        log.debug("node=%s connection from %s", self.server.node_id, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server._connections.discard(self)
        if self.decoder.buffered_bytes:
            log.info("node=%s peer=%s disconnected mid-frame (%d bytes dropped)",
                     self.server.node_id, self.peer, self.decoder.buffered_bytes)

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()

    def data_received(self, data: bytes) -> None:
        if self._sniffing:
            data = self._sniff(data)
            if not data:
                return
        try:
            frames = self.decoder.feed(data)
        except ProtocolViolation as exc:
            self._violation(exc)
            return
        if frames:
            self.backlog.extend(frames)
            self._drain_backlog()

    def _sniff(self, data: bytes) -> bytes:
        """Tell an HTTP request from a frame by its first bytes: an HTTP method read as a
        frame length is over a gigabyte, far past any frame limit, so the two never
        overlap. An HTTP connection is handed to `server.http_handoff` with the bytes
        read so far and leaves this server's books; returns the bytes to decode as
        frames (empty while fewer than 4 bytes have arrived, or after a handoff)."""
        data = self._sniffed + data
        if len(data) < 4:
            self._sniffed = data
            return b""
        self._sniffing = False
        self._sniffed = b""
        handoff = self.server.http_handoff
        if handoff is None or data[:4] not in HTTP_METHOD_PREFIXES or self.transport is None:
            return data
        self.closed = True
        self.server._connections.discard(self)
        transport, self.transport = self.transport, None
        handoff(transport, data)
        return b""

    def _drain_backlog(self) -> None:
        limit = self.server.max_in_flight
        backlog = self.backlog
        while backlog and self.in_flight < limit and not self.closed:
            self._dispatch(backlog.popleft())
        self._update_reading()

    # internals ---------------------------------------------------------------------
    def _violation(self, exc: ProtocolViolation) -> None:
        log.warning("node=%s peer=%s protocol violation: %s", self.server.node_id, self.peer, exc)
        self.server.stats_violations += 1
        if exc.correlation_id is not None:
            self._write(exc.correlation_id, exc.code, {"msg": str(exc)})
        else:
            self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _update_reading(self) -> None:
        if self.transport is None or self.closed:
            return
        want_pause = (self._write_paused or bool(self.backlog)
                      or self.in_flight >= self.server.max_in_flight)
        if want_pause and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()
        elif not want_pause and self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()

    def _dispatch(self, payload: bytes) -> None:
        try:
            header, body = decode_request(payload)
        except ProtocolViolation as exc:
            self._violation(exc)
            return
        server = self.server
        cid = header.correlation_id
        try:
            key = ApiKey(header.api_key)
            handler = server._handlers[key]
        except (ValueError, KeyError):
            log.warning("node=%s peer=%s unknown api key %s", server.node_id, self.peer,
                        header.api_key)
            self._write(cid, ErrorCode.UNKNOWN_API_KEY,
                        {"msg": f"api key {header.api_key} is not served by this node"})
            return
        lo, hi = API_VERSION_RANGE[key]
        if not lo <= header.api_version <= hi:
            log.warning("node=%s peer=%s %s version %s unsupported", server.node_id, self.peer,
                        key.name, header.api_version)
            self._write(cid, ErrorCode.UNSUPPORTED_VERSION,
                        {"msg": f"{key.name} supports versions {lo}..{hi}"})
            return
        schema = REQUEST_SCHEMAS.get(key)
        try:
            if schema is not None:
                body = schema.check(body, "body")
            elif not isinstance(body, (dict, list)):
                raise ProtocolViolation("body must be a map or an array", correlation_id=cid)
        except DmqError as exc:
            log.warning("node=%s peer=%s bad %s body: %s", server.node_id, self.peer,
                        key.name, exc.message)
            self._write(cid, exc.code, {"msg": exc.message})
            return
        except ProtocolViolation as exc:
            self._violation(exc)
            return
        ctx = RequestContext(header, self.peer, self)
        t0 = perf_counter()
        try:
            result = handler(ctx, body)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error response
            self._finish(cid, key, exc, t0)
            return
        if isinstance(result, Coroutine):
            self.in_flight += 1
            task = server._loop.create_task(self._run(result, cid, key, t0))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            if result is not NO_RESPONSE:
                self._write(cid, ErrorCode.NONE, result)
            if server.observer is not None:
                server.observer(key, 0, perf_counter() - t0)

    async def _run(self, coro: Coroutine[Any, Any, Any], cid: int, key: ApiKey,
                   t0: float) -> None:
        try:
            result = await coro
        except BaseException as exc:
            self._finish(cid, key, exc, t0)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if result is not NO_RESPONSE:
                self._write(cid, ErrorCode.NONE, result)
            if self.server.observer is not None:
                self.server.observer(key, 0, perf_counter() - t0)
        finally:
            self.in_flight -= 1
            if self.backlog:
                self._drain_backlog()
            elif self._read_paused:
                self._update_reading()

    def _finish(self, cid: int, key: ApiKey, exc: BaseException, t0: float) -> None:
        """Turn a handler's exception into an error response."""
        if isinstance(exc, DmqError):
            code = exc.code
            self._write(cid, code, error_body(exc))
        elif isinstance(exc, asyncio.CancelledError):
            code = ErrorCode.NODE_SHUTTING_DOWN
            self._write(cid, code, {"msg": describe(code)})
        else:
            log.error("node=%s handler for %s failed", self.server.node_id, key.name,
                      exc_info=exc)
            code = ErrorCode.UNKNOWN_SERVER_ERROR
            self._write(cid, code, {"msg": f"internal error handling {key.name}"})
        if self.server.observer is not None:
            self.server.observer(key, int(code), perf_counter() - t0)

    def _write(self, correlation_id: int, code: int, body: Any) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            if type(body) is VectoredBody:
                frame: Any = encode_response_vectored(correlation_id, int(code), body)
            else:
                frame = encode_response_parts(correlation_id, int(code), body)
        except Exception:
            log.exception("node=%s cannot encode response", self.server.node_id)
            frame = encode_response_parts(correlation_id, int(ErrorCode.UNKNOWN_SERVER_ERROR),
                                          {"msg": "response could not be encoded"})
        self.transport.writelines(frame)


class ProtocolServer:
    """A listening socket plus the handler table. Handlers are registered before
    `start()`; `ApiVersions` is always served."""

    def __init__(self, *, host: str, port: int, node_id: int | str = "?",
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, max_in_flight: int = 1024,
                 max_buffered_bytes: int = 64 * 1024 * 1024,
                 extra_info: Callable[[], dict[str, Any]] | None = None) -> None:
        self.host = host
        self.port = port
        self.node_id = node_id
        self.max_frame_bytes = max_frame_bytes
        self.max_in_flight = max_in_flight
        self.max_buffered_bytes = max_buffered_bytes
        self.stats_violations = 0
        self._extra_info = extra_info
        # called once per answered request: (api key, error code, seconds in the handler)
        self.observer: Callable[[ApiKey, int, float], None] | None = None
        # set before `start()` to serve HTTP on this port too: called with a connection
        # whose first bytes are an HTTP method and those bytes; it owns the transport
        self.http_handoff: Callable[[asyncio.Transport, bytes], None] | None = None
        self._handlers: dict[ApiKey, Handler] = {ApiKey.API_VERSIONS: self._api_versions}
        self._connections: set[_ServerConnection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    def register(self, key: ApiKey, handler: Handler) -> None:
        assert key not in self._handlers or key is ApiKey.API_VERSIONS, f"{key} registered twice"
        self._handlers[key] = handler

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def bound_port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: _ServerConnection(self), self.host, self.port, reuse_address=True,
            backlog=1024)
        log.info("node=%s listening on %s:%d", self.node_id, self.host, self.bound_port)

    async def close(self, grace_ms: int = 5000) -> None:
        """Stop accepting, let in-flight handlers finish (bounded), close connections."""
        if self._server is None:
            return
        self._server.close()
        pending = [t for c in self._connections for t in c.tasks]
        if pending:
            done, not_done = await asyncio.wait(pending, timeout=grace_ms / 1000)
            for t in not_done:
                t.cancel()
            if not_done:
                await asyncio.wait(not_done, timeout=1.0)
        for conn in list(self._connections):
            conn.abort()
        try:
            await wait_for(self._server.wait_closed(), 2.0)
        except TimeoutError:
            log.warning("node=%s server did not close in time", self.node_id)
        self._server = None

    def _api_versions(self, ctx: RequestContext, body: Any) -> Any:
        from dmq import __version__

        apis = [[int(k), *API_VERSION_RANGE[k]] for k in sorted(self._handlers)]
        result: dict[str, Any] = {"apis": apis, "node_id": self.node_id, "version": __version__}
        if self._extra_info is not None:
            result.update(self._extra_info())
        return result
