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
- Backpressure: a connection stops being read, and its read requests stop being
  dispatched, while it has `max_in_flight` unanswered requests or while its transport's
  write buffer (every queued response byte, by-reference parts of a `VectoredBody`
  included) is over `max_buffered_bytes`; so a peer that pipelines requests and never
  reads holds at most that much plus one response.
- A closed connection drops what it holds: undispatched requests at once; queued
  responses with the transport; a handler that finishes afterwards writes nothing.
  The server owns every handler task, so `close` also ends those of closed connections.
- Node-wide bounds: at most `max_connections` connections, `max_connections_per_ip` from
  one address (a connection past either is closed at once, with a log line); a
  connection with no request in flight and no bytes received for
  `connections_max_idle_ms` is closed; request bytes being received are budgeted
  (`queued_max_request_bytes`): a large frame reserves its declared length when it
  starts, and a connection whose frame does not fit waits, unread, for others to
  finish (first come, first served; one frame always fits). Smaller partial frames and
  one socket read per connection are outside the budget.
- Inter-node APIs (`INTER_NODE_APIS` in api.py) are served only on connections that
  identified themselves (NODE_HELLO) as a node of `cluster_nodes` playing the API's
  role, and whose body names that same node as its sender; others get
  CLUSTER_AUTHORIZATION_FAILED. How a claim is proven is the `node_authenticator` hook,
  the one piece that security (SASL, mTLS) replaces. Without `cluster_nodes` (a bare
  server in tests or benchmarks) nothing is checked.
- An HTTP connection handed off (`http_handoff`) leaves this server's books: it counted
  against the connection caps while being told apart, and is the HTTP server's after.
- Exceptions become error codes here and only here: a `DmqError` maps to its code, any
  other exception is logged with its traceback and answered UNKNOWN_SERVER_ERROR.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from time import monotonic, perf_counter
from typing import Any

from dmq.aio import wait_for
from dmq.config import SETTINGS
from dmq.protocol.api import API_VERSION_RANGE, INTER_NODE_APIS, REQUEST_SCHEMAS, ApiKey, InterNode
from dmq.protocol.codec import (
    DEFAULT_MAX_FRAME_BYTES,
    FrameDecoder,
    RawFrame,
    RequestHeader,
    VectoredBody,
    decode_request,
    encode_response_parts,
    encode_response_raw,
    encode_response_vectored,
    write_frame,
)
from dmq.protocol.errors import (
    ClusterAuthorizationFailedError,
    DmqError,
    ErrorCode,
    IllegalSaslStateError,
    ProtocolViolation,
    SaslAuthenticationFailedError,
    UnsupportedSaslMechanismError,
    describe,
)

log = logging.getLogger("dmq.protocol.server")

HTTP_METHOD_PREFIXES = frozenset({b"GET ", b"HEAD", b"POST", b"PUT ", b"DELE", b"OPTI",
                                  b"PATC"})
"""First 4 bytes of an HTTP/1.x request; as a frame length each is over 1 GB."""

NO_RESPONSE: Any = object()
"""Returned by a handler that must not answer (produce with acks=0)."""

# the node settings' defaults (dmq.config.SETTINGS), for servers built without a config
DEFAULT_MAX_CONNECTIONS: int = SETTINGS["max.connections"].default
DEFAULT_MAX_CONNECTIONS_PER_IP: int = SETTINGS["max.connections.per.ip"].default
DEFAULT_CONNECTIONS_MAX_IDLE_MS: int = SETTINGS["connections.max.idle.ms"].default
DEFAULT_QUEUED_MAX_REQUEST_BYTES: int = SETTINGS["queued.max.request.bytes"].default
TLS_HANDSHAKE_TIMEOUT_S = 10.0  # a connection that has not finished its handshake by then is closed
LOG_EVERY_S = 10.0  # one line per kind of refusal per this long, with a count
# what a connection may ask before it has authenticated, when the listener requires it
_BEFORE_AUTHENTICATION = frozenset({ApiKey.API_VERSIONS, ApiKey.SASL_HANDSHAKE,
                                    ApiKey.SASL_AUTHENTICATE})
# Requests whose handlers only wait once they have done their work (a fetch's long poll,
# a produce's wait for its acks, a quota hold) for as long as the client asked: they end
# with their connection, so a client that parks them and disconnects, again and again,
# leaves nothing behind. Other handlers run to their end (a Raft write, say, must not
# stop half-way because its asker left).
_ENDS_WITH_CONNECTION = frozenset({ApiKey.FETCH, ApiKey.PRODUCE})


@dataclass(slots=True)
class RequestContext:
    header: RequestHeader
    peer: str
    connection: _ServerConnection
    peer_node_id: int | None = None  # the cluster node this connection identified as


NodeAuthenticator = Callable[[RequestContext, int, dict[str, Any]], None]
"""Proves a connection's NODE_HELLO claim (context, claimed node id, hello body): returns
when the claim holds, raises ClusterAuthorizationFailedError when not. The server has
already checked that the id belongs to the cluster configuration; the default trusts
the claim. Security (SASL, mTLS) replaces only this."""


class LogLimiter:
    """A log line per key at most every `LOG_EVERY_S`, saying how many were held back:
    a flood of refused connections must not become a flood of log lines. Keys name
    peer addresses, so at most `MAX_KEYS` are kept: past that, keys whose period is
    over are forgotten, and while all are still in theirs, new keys share one."""

    __slots__ = ("_held", "_log", "_next")
    MAX_KEYS = 4096
    OVERFLOW = "*"

    def __init__(self, logger: logging.Logger = log) -> None:
        self._log = logger
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: Any) -> None:
        now = monotonic()
        if key not in self._next and len(self._next) >= self.MAX_KEYS:
            for k in [k for k, t in self._next.items() if t <= now]:
                del self._next[k]
                self._held.pop(k, None)
            if len(self._next) >= self.MAX_KEYS:
                key = self.OVERFLOW
        if now < self._next.get(key, 0.0):
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._next[key] = now + LOG_EVERY_S
        held = self._held.pop(key, 0)
        if held:
            self._log.warning(msg + " (and %d more like it in the last %.0f s)", *args, held,
                              LOG_EVERY_S)
        else:
            self._log.warning(msg, *args)


class ConnectionCaps:
    """Kafka's max.connections and max.connections.per.ip: the open connections in all
    and from each address. `admit` counts a new one in or names the cap it would pass;
    `release` counts it out (an address leaves the books with its last connection)."""

    __slots__ = ("_per_ip", "max_connections", "max_per_ip", "open")

    def __init__(self, max_connections: int, max_per_ip: int) -> None:
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self.open = 0
        self._per_ip: dict[str, int] = {}

    def admit(self, host: str) -> str | None:
        """None when the connection from `host` is counted in, else why it is refused."""
        if self.open >= self.max_connections:
            return f"{self.open} connections open (max.connections)"
        n = self._per_ip.get(host, 0)
        if n >= self.max_per_ip:
            return f"{n} connections open from {host} (max.connections.per.ip)"
        self._per_ip[host] = n + 1
        self.open += 1
        return None

    def release(self, host: str) -> None:
        n = self._per_ip.get(host, 0)
        if not n:
            return
        self.open -= 1
        if n > 1:
            self._per_ip[host] = n - 1
        else:
            del self._per_ip[host]


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
        self.decoder.grant = self._grant
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.peer_host = "?"
        self.peer_node_id: int | None = None  # set by NODE_HELLO
        self.peer_cert: dict[str, Any] | None = None  # the client certificate (mTLS)
        # who this connection has proven to be: "User:<name>" after SASL, "node:<id>"
        # for a node's certificate; None until then (checked only with `server.sasl`)
        self.principal: str | None = None
        self.sasl_session: Any = None
        self.last_active = 0.0  # loop time of the last bytes received
        self.reserved_bytes = 0  # budget held by the large frame being received
        self.in_books = False  # counted in the server's connection caps and budget
        self.budget_blocked = False  # waiting for request-memory budget, unread
        self.in_flight = 0
        self.waits: set[asyncio.Task[None]] = set()  # of _ENDS_WITH_CONNECTION requests
        # frames read but not yet dispatched because `max_in_flight` was reached; holds
        # at most what one socket read delivered, since reading pauses while non-empty
        self.backlog: deque[bytes | bytearray] = deque()
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
        self.peer_host = str(peer[0]) if peer else "?"
        if not self.server._admit(self):
            self.drop()
            return
        self.last_active = self.server._loop.time()
        if self.server.ssl is not None:
            self.peer_cert = transport.get_extra_info("peercert") or None
            if self.server.certificate_principal is not None:
                self.principal = self.server.certificate_principal(self.peer_cert)
        transport.set_write_buffer_limits(high=self.server.max_buffered_bytes)
        log.debug("node=%s connection from %s", self.server.node_id, self.peer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.backlog.clear()
        for task in self.waits:
            task.cancel()  # nobody reads their answers
        self.waits.clear()
        self.server._forget(self)
        if self.decoder.buffered_bytes:
            log.info("node=%s peer=%s disconnected mid-frame (%d bytes dropped)",
                     self.server.node_id, self.peer, self.decoder.buffered_bytes)
        self.decoder = FrameDecoder(1)  # drop the partial frame now, not with the object

    def eof_received(self) -> bool | None:
        # The peer will send nothing more. As in Kafka, that ends the connection: what
        # was read but not dispatched and what is queued for the peer are dropped. (A
        # connection not being read sees no end of stream; the idle sweep drops it.)
        self.drop()
        return None

    def pause_writing(self) -> None:
        self._write_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self.last_active = self.server._loop.time()  # the peer reads: not idle
        if self.backlog:
            self._drain_backlog()
        else:
            self._update_reading()

    def data_received(self, data: bytes | memoryview) -> None:
        # `data` may be a view of a buffer that is reused (`_TlsConnection`): keep copies
        if self.closed:
            return
        server = self.server
        self.last_active = server._loop.time()
        if self._sniffing:
            data = self._sniff(data)
            if not data:
                return
        try:
            frames = self.decoder.feed(data)
        except ProtocolViolation as exc:
            self._violation(exc)
            return
        if self.decoder.pending_frame_bytes != self.reserved_bytes:
            server._reserve(self)
        if frames:
            self.backlog.extend(frames)
            self._drain_backlog()

    def _grant(self, size: int) -> bool:
        """The decoder's question when a large frame starts: True when its `size` is
        reserved now (its buffer is then allocated at once, the first read copied
        straight into it); False leaves it to `ProtocolServer._reserve`, which makes
        the connection wait once this read is handled."""
        server = self.server
        server._release(self)  # the previous frame's, if it ended in this same read
        if self.budget_blocked or server._budget_waiters or not server._fits(size):
            return False
        self.reserved_bytes = size
        server.reserved_request_bytes += size
        return True

    def _sniff(self, data: bytes | memoryview) -> bytes:
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
        self.server._forget(self)
        transport, self.transport = self.transport, None
        handoff(transport, data)
        return b""

    def _drain_backlog(self) -> None:
        # Stops while the write buffer is over its bound: a response written by a
        # handler below may pause writing at once, and the next request waits for room.
        limit = self.server.max_in_flight
        backlog = self.backlog
        while backlog and self.in_flight < limit and not self.closed and not self._write_paused:
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

    def drop(self) -> None:
        """Close now, discarding whatever is queued for the peer."""
        self.closed = True
        self.backlog.clear()
        if self.transport is not None:
            self.transport.abort()

    def _update_reading(self) -> None:
        if self.transport is None or self.closed:
            return
        want_pause = (self._write_paused or bool(self.backlog) or self.budget_blocked
                      or self.in_flight >= self.server.max_in_flight)
        if want_pause and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()
        elif not want_pause and self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()

    def _dispatch(self, payload: bytes | bytearray) -> None:
        raw = type(payload) is RawFrame  # answered in the raw form (a VectoredBody)
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
        if (server.sasl is not None and self.principal is None
                and key not in _BEFORE_AUTHENTICATION):
            self._refuse_unauthenticated(cid, key)
            return
        if self.sasl_session is not None and self.sasl_session.user_deleted():
            self._write(cid, ErrorCode.SASL_AUTHENTICATION_FAILED,
                        {"msg": f"{self.principal} was deleted: authenticate again"})
            self.abort()
            return
        ctx = RequestContext(header, self.peer, self, self.peer_node_id)
        rule = INTER_NODE_APIS.get(key)
        if rule is not None and server.cluster_nodes is not None:
            refusal = self._refuse_inter_node(key, rule, body)
            if refusal is not None:
                server._limited.warning(f"internode:{self.peer_host}",
                                        "node=%s peer=%s refused %s: %s", server.node_id,
                                        self.peer, key.name, refusal)
                self._write(cid, ErrorCode.CLUSTER_AUTHORIZATION_FAILED, {"msg": refusal})
                if server.observer is not None:
                    server.observer(key, int(ErrorCode.CLUSTER_AUTHORIZATION_FAILED), 0.0)
                return
        t0 = perf_counter()
        try:
            result = handler(ctx, body)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an error response
            self._finish(cid, key, exc, t0)
            return
        if isinstance(result, Coroutine):
            ends_with_connection = key in _ENDS_WITH_CONNECTION
            if ends_with_connection and self.closed:
                result.close()  # its wait would have nobody to answer (its work is done)
                return
            self.in_flight += 1
            task = server._loop.create_task(self._run(result, cid, key, t0, raw))
            server._tasks.add(task)
            task.add_done_callback(server._tasks.discard)
            if ends_with_connection:
                self.waits.add(task)
                task.add_done_callback(self.waits.discard)
        else:
            if result is not NO_RESPONSE:
                self._write(cid, ErrorCode.NONE, result, raw)
            if server.observer is not None:
                server.observer(key, 0, perf_counter() - t0)

    def _refuse_unauthenticated(self, cid: int, key: ApiKey) -> None:
        """As Kafka: a request before authentication ends the connection (after one
        answer saying why)."""
        why = (f"{key.name} before SASL authentication: this listener requires "
               f"SASL_HANDSHAKE and SASL_AUTHENTICATE first")
        self.server._limited.warning(f"unauth:{self.peer_host}", "node=%s peer=%s refused "
                                     "%s", self.server.node_id, self.peer, why)
        self._write(cid, ErrorCode.SASL_AUTHENTICATION_FAILED, {"msg": why})
        self.abort()

    def _refuse_inter_node(self, key: ApiKey, rule: InterNode, body: Any) -> str | None:
        """Why this connection may not make this inter-node request (None: it may)."""
        claimed = body[rule.sender] if rule.sender is not None else None
        if rule.optional and (claimed is None or claimed < 0):
            return None
        me = self.peer_node_id
        if me is None:
            return (f"{key.name} is an inter-node API and this connection has not "
                    f"identified itself as a node of the cluster (NODE_HELLO)")
        roles = self.server.cluster_nodes.get(me, ()) if self.server.cluster_nodes else ()
        if rule.role not in roles:
            return f"{key.name} is for {rule.role}s and node {me} is not one"
        if claimed is not None and claimed != me:
            return (f"{key.name} speaks for node {claimed} ({rule.sender}) but this "
                    f"connection identified itself as node {me}")
        return None

    async def _run(self, coro: Coroutine[Any, Any, Any], cid: int, key: ApiKey,
                   t0: float, raw: bool = False) -> None:
        try:
            result = await coro
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            if not (cancelled and self.closed):  # a wait ended with its connection
                self._finish(cid, key, exc, t0)
            if cancelled:
                raise
        else:
            if result is not NO_RESPONSE:
                self._write(cid, ErrorCode.NONE, result, raw)
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

    def _write(self, correlation_id: int, code: int, body: Any, raw: bool = False) -> None:
        """Answer; a `VectoredBody` to a request that came in the raw form (`raw`) in
        the raw form, its records as sections (nobody else gets that form)."""
        if self.transport is None or self.transport.is_closing() or self.closed:
            return
        try:
            if type(body) is VectoredBody:
                frame: Any = (encode_response_raw if raw else encode_response_vectored)(
                    correlation_id, int(code), body)
            else:
                frame = encode_response_parts(correlation_id, int(code), body)
        except Exception:
            log.exception("node=%s cannot encode response", self.server.node_id)
            frame = encode_response_parts(correlation_id, int(ErrorCode.UNKNOWN_SERVER_ERROR),
                                          {"msg": "response could not be encoded"})
        write_frame(self.transport, frame, self.server.ssl is not None)


class _PlainConnection(asyncio.BufferedProtocol):
    """The protocol of a plaintext connection, around its `_ServerConnection`, as a
    buffered protocol (not an `asyncio.Protocol`: uvloop reads into the buffer of a
    protocol only if it is not one): the transport receives into the buffer
    `get_buffer` gives. While a large frame is being received that is the rest of the
    frame's own buffer (`FrameDecoder.frame_tail`): its bytes go from the socket to
    where the handler reads them (a produce's batches to the segment's `writev`)
    without a copy. Otherwise it is the server's read buffer (one per server: a read
    is handled before the next begins; the decoder copies out what it keeps). TLS
    connections are the same (`_TlsConnection`). A frame's buffer exists only once the
    request-memory budget granted it (`_ServerConnection._grant` when the frame starts;
    else the decoder allocates it when its next chunk is wanted, and a connection
    waiting for budget is not read)."""

    __slots__ = ("_direct", "conn")

    def __init__(self, conn: _ServerConnection) -> None:
        self.conn = conn
        self._direct = False  # the last `get_buffer` gave the frame's own buffer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.connection_lost(exc)

    def eof_received(self) -> bool | None:
        return self.conn.eof_received()

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()

    def get_buffer(self, sizehint: int) -> memoryview:
        conn = self.conn
        tail = None if conn._sniffing else conn.decoder.frame_tail()
        self._direct = tail is not None
        return tail if tail is not None else conn.server._read_buf

    def buffer_updated(self, nbytes: int) -> None:
        conn = self.conn
        if not self._direct:
            conn.data_received(conn.server._read_buf[:nbytes])
            return
        if conn.closed:
            return
        conn.last_active = conn.server._loop.time()
        frames = conn.decoder.filled(nbytes)
        if frames:
            if conn.decoder.pending_frame_bytes != conn.reserved_bytes:
                conn.server._reserve(conn)
            conn.backlog.extend(frames)
            conn._drain_backlog()


PLAIN_READ_BUFFER_BYTES = 256 * 1024
"""The buffer a plaintext listener's connections read into when no large frame is
being received (one per server), as asyncio's own reads (256 KiB)."""

TLS_READ_BUFFER_BYTES = 1024 * 1024
"""The buffer a TLS listener's connections decrypt into (one per server: a read is
handled before the next begins)."""


class _TlsConnection(_PlainConnection):
    """The protocol of a TLS connection: `_PlainConnection`'s, the TLS layer (uvloop's
    and asyncio's SSL transports) decrypting with `SSLObject.read(n, buffer)` straight
    into the buffer `get_buffer` gives: a large frame's own buffer, else the server's
    read buffer (`TLS_READ_BUFFER_BYTES`). A plain protocol would get a new bytes object
    of 256 KiB allocated per 16 KiB TLS record, and those joined, per socket read."""

    __slots__ = ()


class ProtocolServer:
    """A listening socket plus the handler table. Handlers are registered before
    `start()`; `ApiVersions` is always served."""

    def __init__(self, *, host: str, port: int, node_id: int | str = "?",
                 max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES, max_in_flight: int = 1024,
                 max_buffered_bytes: int = 64 * 1024 * 1024,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 max_connections_per_ip: int = DEFAULT_MAX_CONNECTIONS_PER_IP,
                 connections_max_idle_ms: int = DEFAULT_CONNECTIONS_MAX_IDLE_MS,
                 queued_max_request_bytes: int = DEFAULT_QUEUED_MAX_REQUEST_BYTES,
                 cluster_nodes: Mapping[int, frozenset[str]] | None = None,
                 extra_info: Callable[[], dict[str, Any]] | None = None) -> None:
        self.host = host
        self.port = port
        self.node_id = node_id
        self.max_frame_bytes = max_frame_bytes
        self.max_in_flight = max_in_flight
        self.max_buffered_bytes = max_buffered_bytes
        self.caps = ConnectionCaps(max_connections, max_connections_per_ip)
        self.connections_max_idle_ms = connections_max_idle_ms
        self.queued_max_request_bytes = queued_max_request_bytes
        # node id -> roles it may play ("controller", "broker"); None: no checks
        self.cluster_nodes = cluster_nodes
        # proves a NODE_HELLO claim; None trusts it (see NodeAuthenticator)
        self.node_authenticator: NodeAuthenticator | None = None
        self.stats_violations = 0
        self.stats_refused_connections = 0
        self.stats_idle_closed = 0
        self.stats_budget_waits = 0
        self.reserved_request_bytes = 0  # request-memory budget in use
        self._budget_waiters: dict[_ServerConnection, None] = {}  # insertion-ordered
        self._limited = LogLimiter()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._extra_info = extra_info
        # called once per answered request: (api key, error code, seconds in the handler)
        self.observer: Callable[[ApiKey, int, float], None] | None = None
        # set before `start()` to serve HTTP on this port too: called with a connection
        # whose first bytes are an HTTP method and those bytes; it owns the transport
        self.http_handoff: Callable[[asyncio.Transport, bytes], None] | None = None
        # set before `start()` to serve TLS only (dmq.security.tls); HTTP handed off
        # from a TLS connection is HTTPS
        self.ssl: ssl.SSLContext | None = None
        # set before `start()` to require SASL (a dmq.security.sasl.SaslAuthority): a
        # connection must authenticate before any request but ApiVersions; one whose
        # certificate `certificate_principal` names (a node's) needs not
        self.sasl: Any = None
        self.certificate_principal: Callable[[dict[str, Any] | None], str | None] | None = None
        self._handlers: dict[ApiKey, Handler] = {ApiKey.API_VERSIONS: self._api_versions,
                                                 ApiKey.NODE_HELLO: self._node_hello}
        self._connections: set[_ServerConnection] = set()
        # every handler task, its connection open or not: `close` waits for them
        # (bounded) and cancels the rest; a closed connection leaves its own running
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        # every connection's reads outside large frames (set by `start`)
        self._read_buf = memoryview(b"")

    def register(self, key: ApiKey, handler: Handler) -> None:
        assert key not in self._handlers or key is ApiKey.API_VERSIONS, f"{key} registered twice"
        self._handlers[key] = handler

    @property
    def max_connections(self) -> int:
        return self.caps.max_connections

    @property
    def max_connections_per_ip(self) -> int:
        return self.caps.max_per_ip

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def bound_port(self) -> int:
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        if self.sasl is not None:
            self._handlers[ApiKey.SASL_HANDSHAKE] = self._sasl_handshake
            self._handlers[ApiKey.SASL_AUTHENTICATE] = self._sasl_authenticate
        self._loop = asyncio.get_running_loop()
        tls = self.ssl is not None
        self._read_buf = memoryview(bytearray(
            TLS_READ_BUFFER_BYTES if tls else PLAIN_READ_BUFFER_BYTES))

        def connection() -> asyncio.BaseProtocol:
            conn = _ServerConnection(self)
            return _TlsConnection(conn) if tls else _PlainConnection(conn)

        self._server = await self._loop.create_server(
            connection, self.host, self.port, reuse_address=True,
            backlog=1024, ssl=self.ssl,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT_S if self.ssl is not None else None)
        self._schedule_idle_sweep()
        log.info("node=%s listening on %s:%d", self.node_id, self.host, self.bound_port)

    # connection books: caps, idle sweep, request-memory budget -------------------------
    def _admit(self, conn: _ServerConnection) -> bool:
        why = self.caps.admit(conn.peer_host)
        if why is None:
            self._connections.add(conn)
            conn.in_books = True
            return True
        self.stats_refused_connections += 1
        self._limited.warning(f"cap:{conn.peer_host}", "node=%s refused a connection from "
                              "%s: %s", self.node_id, conn.peer, why)
        return False

    def _forget(self, conn: _ServerConnection) -> None:
        """Take a closed or handed-off connection out of the books."""
        if not conn.in_books:
            return
        conn.in_books = False
        self._connections.discard(conn)
        self.caps.release(conn.peer_host)
        self._budget_waiters.pop(conn, None)
        conn.budget_blocked = False
        self._release(conn)

    def _reserve(self, conn: _ServerConnection) -> None:
        """Match the connection's reservation to the large frame it is receiving: free
        the old one, reserve the new one or make the connection wait, unread."""
        self._release(conn)
        want = conn.decoder.pending_frame_bytes
        if not want or conn.budget_blocked:
            return
        if not self._budget_waiters and self._fits(want):
            conn.reserved_bytes = want
            self.reserved_request_bytes += want
            return
        conn.budget_blocked = True
        self._budget_waiters[conn] = None
        self.stats_budget_waits += 1
        self._limited.warning(
            "budget", "node=%s peer=%s waits to receive a %d-byte request: %d of "
            "queued.max.request.bytes=%d are held by requests being received",
            self.node_id, conn.peer, want, self.reserved_request_bytes,
            self.queued_max_request_bytes)
        conn._update_reading()

    def _fits(self, size: int) -> bool:
        # one frame always fits, so a budget below max.frame.bytes cannot wedge a node
        used = self.reserved_request_bytes
        return used == 0 or used + size <= self.queued_max_request_bytes

    def _release(self, conn: _ServerConnection) -> None:
        if not conn.reserved_bytes:
            return
        self.reserved_request_bytes -= conn.reserved_bytes
        conn.reserved_bytes = 0
        waiters = self._budget_waiters
        while waiters:
            first = next(iter(waiters))
            want = first.decoder.pending_frame_bytes
            if want and not self._fits(want):
                break
            del waiters[first]
            first.budget_blocked = False
            first.reserved_bytes = want
            self.reserved_request_bytes += want
            first._update_reading()

    def _schedule_idle_sweep(self) -> None:
        idle_s = self.connections_max_idle_ms / 1000
        if idle_s <= 0:
            return  # -1 or 0: never close idle connections
        period_s = min(max(idle_s / 4, 0.01), 30.0)
        self._idle_timer = self._loop.call_later(period_s, self._sweep_idle)

    def _sweep_idle(self) -> None:
        """Close connections with no request in flight and no bytes received for
        `connections_max_idle_ms` (Kafka's connections.max.idle.ms)."""
        self._idle_timer = None
        cutoff = self._loop.time() - self.connections_max_idle_ms / 1000
        idle = [c for c in self._connections if c.in_flight == 0 and c.last_active <= cutoff]
        for conn in idle:
            log.debug("node=%s peer=%s closed: idle", self.node_id, conn.peer)
            conn.drop()
        if idle:
            self.stats_idle_closed += len(idle)
            log.info("node=%s closed %d connections idle for %d ms (connections.max.idle.ms)",
                     self.node_id, len(idle), self.connections_max_idle_ms)
        if self._server is not None:
            self._schedule_idle_sweep()

    async def close(self, grace_ms: int = 5000) -> None:
        """Stop accepting, let in-flight handlers finish (bounded), close connections."""
        if self._server is None:
            return
        self._server.close()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        pending = list(self._tasks)
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

    def _node_hello(self, ctx: RequestContext, body: Any) -> Any:
        """Record which cluster node this connection comes from (see NODE_HELLO)."""
        claimed = body["node_id"]
        conn = ctx.connection
        if conn.peer_node_id is not None and conn.peer_node_id != claimed:
            raise ClusterAuthorizationFailedError(
                f"this connection already identified itself as node {conn.peer_node_id}")
        if self.cluster_nodes is not None and claimed not in self.cluster_nodes:
            log.warning("node=%s peer=%s claims to be node %s, which the cluster "
                        "configuration does not list", self.node_id, ctx.peer, claimed)
            raise ClusterAuthorizationFailedError(
                f"node {claimed} is not a node of this cluster's configuration")
        if self.node_authenticator is not None:
            self.node_authenticator(ctx, claimed, body)
        conn.peer_node_id = claimed
        return {"node_id": self.node_id, "raw_frames": True}

    def _sasl_handshake(self, ctx: RequestContext, body: Any) -> Any:
        conn = ctx.connection
        if conn.principal is not None or conn.sasl_session is not None:
            conn.server._loop.call_soon(conn.abort)
            raise IllegalSaslStateError("SASL_HANDSHAKE after authentication or twice")
        conn.sasl_session = self.sasl.session(conn.peer_host, self.ssl is not None)
        ok, offered = conn.sasl_session.handshake(body["mechanism"])
        if not ok:
            conn.sasl_session = None
            raise UnsupportedSaslMechanismError(
                f"SASL mechanism {body['mechanism']!r} is not offered here (offered: "
                f"{', '.join(offered) or 'none'})")
        return {"mechanisms": offered}

    def _sasl_authenticate(self, ctx: RequestContext, body: Any) -> Any:
        from dmq.security.scram import AuthenticationFailed

        conn = ctx.connection
        session = conn.sasl_session
        if session is None or conn.principal is not None or session.failed:
            # after a failure too: a pipelined attempt is not checked (the failure delay
            # holds answers, not checks; PLAIN would hash each guess)
            self._loop.call_soon(conn.abort)
            raise IllegalSaslStateError("SASL_AUTHENTICATE without a SASL_HANDSHAKE first, "
                                        "after authentication or after a failed attempt")
        try:
            token = session.authenticate(bytes(body["auth_bytes"]))
        except AuthenticationFailed as exc:
            return self._sasl_failed(conn, f"Authentication failed: {exc}",
                                     self.sasl.failure_delay(conn.peer_host))
        if session.authenticated:
            conn.principal = session.principal
        return {"auth_bytes": token}

    async def _sasl_failed(self, conn: _ServerConnection, msg: str, delay_s: float) -> Any:
        # the answer waits (throttling guessing), then the connection closes after it
        await asyncio.sleep(delay_s)
        self._loop.call_soon(conn.abort)
        raise SaslAuthenticationFailedError(msg)

    def _api_versions(self, ctx: RequestContext, body: Any) -> Any:
        from dmq import __version__

        apis = [[int(k), *API_VERSION_RANGE[k]] for k in sorted(self._handlers)]
        # raw_frames: this node reads raw-form frames (dmq.protocol.codec)
        result: dict[str, Any] = {"apis": apis, "node_id": self.node_id, "version": __version__,
                                  "raw_frames": True}
        if self._extra_info is not None:
            result.update(self._extra_info())
        return result
