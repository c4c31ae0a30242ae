"""The Kafka listener: a TCP server that speaks Kafka's framing and headers.

Owns connections, frame bounds, request dispatch and answer order. Each connection
is an asyncio.BufferedProtocol (frames in, requests decoded and handed to their
handler in arrival order) with one writer task that sends answers strictly in request
order, as every Kafka client expects, even when a later request (a produce) is
answered before an earlier one (a long-poll fetch). A handler returns a body, an
awaitable of one, or `NO_RESPONSE` (acks=0 produce). At most `max_in_flight` answers
wait per connection; past that, reading pauses until the writer takes one.

Reading copies as little as it can: the transport reads into the listener's one
scratch buffer; a frame found whole there is copied out once; a frame that goes on
past the read gets a buffer of exactly its declared size, and the rest of its body is
read into it in place, so a produce batch reaches the log as a read-only slice of the
request (no stream buffer to append to and copy out of).

A malformed frame (a size out of bounds, a truncated header, bytes that do not
decode), an unknown API key or a version outside our window closes that connection
with one log line; the node goes on serving everyone else. The one exception is
ApiVersions of a version we do not know: it gets the v0-form UNSUPPORTED_VERSION
answer listing our ranges, so that the client can retry with one we do.

Bounds, the same settings as dmq's own listener but counted separately: at most
`max_connections` connections and `max_connections_per_ip` from one address (one past
either is closed at once, logged once per thousand); a connection with nothing in
flight that sends nothing for `connections_max_idle_ms` (-1 or 0: never) is closed,
and so is one whose frame body takes longer than that to arrive; a frame over
`SMALL_FRAME_BYTES` reserves its declared size from the listener's request-memory
budget (`queued_max_request_bytes`) before its body is read, and waits unread while
the budget is spent (one frame always fits). A connection whose peer takes no byte of
its answers for `connections_max_idle_ms` is closed too (a client that never reads):
with answers stuck it would otherwise never count as idle.

It holds no broker logic: handlers come from `dmq.kafka.apis`.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from dmq.kafka.codec import (
    KafkaDecodeError,
    Reader,
    RequestHeader,
    decode_request_body,
    encode_response,
    message_spec,
    peek_request_header,
    read_request_header,
)
from dmq.protocol.server import ConnectionCaps
from dmq.security.acl import ANONYMOUS
from dmq.security.tls import principal as certificate_principal

log = logging.getLogger("dmq.kafka")

NO_RESPONSE: Any = object()
API_VERSIONS_KEY = 18
UNSUPPORTED_VERSION = 35
SASL_HANDSHAKE_KEY = 17
SASL_AUTHENTICATE_KEY = 36
# served by the listener itself when it requires SASL: (message name, versions)
SASL_APIS = {SASL_HANDSHAKE_KEY: ("SaslHandshake", 0, 1),
             SASL_AUTHENTICATE_KEY: ("SaslAuthenticate", 0, 2)}
UNSUPPORTED_SASL_MECHANISM = 33
ILLEGAL_SASL_STATE = 34
SASL_AUTHENTICATION_FAILED = 58
_SIZE = struct.Struct(">i")
SMALL_FRAME_BYTES = 64 * 1024
SCRATCH_BYTES = 256 * 1024  # the listener's receive buffer for frames that arrive whole
SASL_CLOSE_WAIT_S = 10.0  # the failure answer's (delayed) write, before closing

Handler = Callable[[RequestHeader, dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class Api:
    """One API we answer: its message name (as in the definitions), version window
    and handler."""

    key: int
    name: str
    min_version: int
    max_version: int
    handler: Handler


def api_ranges(apis: Iterable[Api], listener_apis: Iterable[tuple[int, int, int]]
               ) -> list[dict[str, int]]:
    """ApiVersions' ApiKeys rows: the handlers' windows and the listener's own (SASL)."""
    keys = [(a.key, a.min_version, a.max_version) for a in apis]
    keys += listener_apis
    return [{"ApiKey": k, "MinVersion": lo, "MaxVersion": hi} for k, lo, hi in sorted(keys)]


class ByteBudget:
    """Request memory shared by the listener's connections: first come, first served;
    a reservation always succeeds when nothing else is reserved."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        # reservations waiting, in arrival order: key -> (bytes, called once reserved)
        self._waiters: dict[object, tuple[int, Callable[[], object]]] = {}

    def _fits(self, n: int) -> bool:
        return self.used == 0 or self.used + n <= self.limit

    def reserve(self, n: int, key: object, granted: Callable[[], object]) -> bool:
        """Reserve `n` bytes: True when done at once; else `key` waits in line and
        `granted()` is called once its bytes are reserved (unless `withdraw(key)`)."""
        if not self._waiters and self._fits(n):
            self.used += n
            return True
        self._waiters[key] = (n, granted)
        return False

    def withdraw(self, key: object) -> None:
        if self._waiters.pop(key, None) is not None:
            self._grant()

    def free(self, n: int) -> None:
        self.used -= n
        self._grant()

    def _grant(self) -> None:
        waiters = self._waiters
        while waiters:
            key = next(iter(waiters))
            n, granted = waiters[key]
            if not self._fits(n):
                return
            del waiters[key]
            self.used += n
            granted()


Item = tuple[Any, str, int, int]  # (answer or its future, message name, version, correlation id)


class _KafkaConnection(asyncio.BufferedProtocol):
    """One client connection. Reading: the transport reads into the listener's one
    scratch buffer; frames found whole in it are copied out once and dispatched, and a
    frame that goes on past the read gets a buffer of exactly its size, into which the
    rest of its body is read in place (no further copy: its `records` reach the log as
    slices of it). A frame over `SMALL_FRAME_BYTES` first reserves its size from the
    request-memory budget, unread while that waits. Answers: dispatched requests queue
    their answers in order (at most `max_in_flight`); past that, the one dispatched
    last waits in `held` and reading pauses until the writer takes one."""

    def __init__(self, server: KafkaServer) -> None:
        self.server = server
        self.loop = server._loop
        self.transport: Any = None
        self.peer: Any = None
        self.host = "?"
        self.session: Any = None
        self.principal = ANONYMOUS
        self.closed = False
        self.stop = False  # dispatch no more frames (SASL failure, closing)
        self.queue: asyncio.Queue[Item | None] = asyncio.Queue(server.max_in_flight)
        self.held: deque[Item | None] = deque()  # started, waiting for room in `queue`
        self.inflight = 0  # answers queued, held or being written
        self.sender: asyncio.Task[None] | None = None
        self.rest = b""  # bytes received that are no whole frame, not received in place
        self.target = server._scratch  # the buffer lent by the last get_buffer()
        self.frame: bytearray | None = None  # the frame being received in place
        self.frame_view: memoryview | None = None
        self.have = 0  # bytes of `frame` received
        self.reserved = 0  # request-memory budget held by `frame`
        self.budget_wait = 0  # the frame size waiting for budget (reading paused)
        self.reading_paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future[None] | None = None
        self.close_timer: asyncio.TimerHandle | None = None
        self.last_active = self.loop.time()  # bytes received, or an answer taken
        self.receiving_since: float | None = None  # a partial frame being received

    # asyncio.BufferedProtocol --------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        server = self.server
        self.transport = transport
        self.peer = peer = transport.get_extra_info("peername")
        self.host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        if not server._admit(self):
            self.closed = self.stop = True
            transport.close()
            return
        if server.sasl is not None:
            self.session = server.sasl.session(self.host, server.ssl is not None)
        # the principal without SASL: the client certificate's subject (mTLS), if any
        self.principal = certificate_principal(transport.get_extra_info("peercert")) \
            or ANONYMOUS
        self.sender = self.loop.create_task(self._send_loop())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = self.stop = True
        self.server._forget(self)
        self._drop()
        budget = self.server._budget
        if budget is not None:
            if self.budget_wait:
                budget.withdraw(self)
            if self.reserved:
                budget.free(self.reserved)
        self.budget_wait = self.reserved = 0
        self.frame = self.frame_view = None
        self.rest = b""
        self._wake_drain()

    def eof_received(self) -> bool | None:
        # the peer sends no more: as before, what is in flight for it is dropped
        self._close()
        return None

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._wake_drain()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.frame_view is not None:
            return self.frame_view[self.have:]
        rest = self.rest
        target = self.server._scratch
        if len(rest) > len(target) // 2:  # bytes kept while dispatch waited
            target = bytearray(len(rest) + len(target) // 2)
        self.target = target
        if rest:
            target[:len(rest)] = rest
        return memoryview(target)[len(rest):]

    def buffer_updated(self, nbytes: int) -> None:
        if self.closed:
            return
        self.last_active = self.loop.time()
        view = self.frame_view
        if view is None:
            data = memoryview(self.target)[:len(self.rest) + nbytes]
            self.rest = b""
            self._consume(data)
            return
        self.have += nbytes
        if self.have < len(view):
            return
        reserved = self.reserved
        self.frame = self.frame_view = None
        self.have = self.reserved = 0
        self.receiving_since = None
        try:
            self._handle(view.toreadonly())
        except Exception as exc:
            self._failed(exc)
            return
        finally:
            if reserved:
                budget = self.server._budget
                assert budget is not None
                budget.free(reserved)
        self._update_reading()

    # reading ---------------------------------------------------------------------
    def _blocked(self) -> bool:
        return bool(self.held or self.budget_wait or self.stop)

    def _consume(self, data: memoryview) -> None:
        """Dispatch the whole frames at the start of `data`; a frame it holds only the
        start of is received in place from here on; what remains is kept in `rest`."""
        server = self.server
        pos = 0
        end = len(data)
        try:
            while end - pos >= 4 and not self._blocked():
                (size,) = _SIZE.unpack_from(data, pos)
                if size < 8 or size > server.max_frame_bytes:
                    raise KafkaDecodeError(f"frame size {size} outside [8, "
                                           f"{server.max_frame_bytes}] (max.frame.bytes)")
                start = pos + 4
                if end - start >= size:
                    pos = start + size
                    self._handle(bytes(data[start:pos]))
                    continue
                if size > SMALL_FRAME_BYTES and not self._reserve(size):
                    break  # waits for request memory, unread
                frame = bytearray(size)
                frame[:end - start] = data[start:end]
                self.frame = frame
                self.frame_view = memoryview(frame)
                self.have = end - start
                self.receiving_since = self.loop.time()
                pos = end
        except Exception as exc:
            self._failed(exc)
            return
        self.rest = bytes(data[pos:end]) if pos < end else b""
        if self._blocked() or (self.frame is None and not self.rest):
            self.receiving_since = None
        elif self.receiving_since is None:
            self.receiving_since = self.loop.time()
        self._update_reading()

    def _failed(self, exc: Exception) -> None:
        """A malformed frame (or a handler that raised): one log line, and this
        connection closes."""
        server = self.server
        server.stats_violations += 1
        if isinstance(exc, KafkaDecodeError):
            log.warning("node %d: Kafka connection from %s closed: %s", server.node_id,
                        self.peer, exc)
        else:
            log.error("node %d: Kafka connection from %s failed; closed", server.node_id,
                      self.peer, exc_info=exc)
        self._close()

    def _reserve(self, size: int) -> bool:
        """Request memory for a large frame: True when reserved; else reading pauses
        until `_granted`."""
        if self.reserved:
            return True  # granted while this frame waited
        budget = self.server._budget
        assert budget is not None
        if budget.reserve(size, self, lambda: self.loop.call_soon(self._granted, size)):
            self.reserved = size
            return True
        self.budget_wait = size
        return False

    def _granted(self, size: int) -> None:
        if self.closed:
            budget = self.server._budget
            assert budget is not None
            budget.free(size)
            return
        self.budget_wait = 0
        self.reserved = size
        self._resume()

    def _resume(self) -> None:
        """Go on with the bytes kept while dispatch waited, then read again."""
        if self._blocked():
            self._update_reading()
            return
        rest, self.rest = self.rest, b""
        self._consume(memoryview(rest))

    def _handle(self, frame: bytes | memoryview) -> None:
        server = self.server
        session = self.session
        if session is not None and session.raw:
            item = server._sasl_raw(session, bytes(frame))  # after SaslHandshake v0
        elif session is not None and session.user_deleted():
            self._close()  # its client reconnects and is refused at authentication
            return
        else:
            item = server._dispatch(frame, session, self.principal)
        if item is not None:
            self.inflight += 1
            self._answer(item)
        if session is not None and session.failed:
            # as Kafka: the failure is answered, then the connection closed
            self.stop = True
            self._answer(None)
            self.close_timer = self.loop.call_later(SASL_CLOSE_WAIT_S, self._close)

    def _answer(self, item: Item | None) -> None:
        if not self.held:
            try:
                self.queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                pass
        self.held.append(item)

    def _room(self) -> None:
        """The writer took an answer from the queue: move held ones in, and dispatch
        and read again once none is held."""
        held = self.held
        queue = self.queue
        while held and not queue.full():
            queue.put_nowait(held.popleft())
        if not held and not self.closed:
            self._resume()

    def _update_reading(self) -> None:
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            return
        pause = self._blocked()
        if pause != self.reading_paused:
            self.reading_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

    # closing ---------------------------------------------------------------------
    def _drop(self) -> None:
        """Cancel every answer not yet sent: the writer's, the queued and held ones."""
        if self.sender is not None:
            self.sender.cancel()
        while self.held:
            _cancel_answer(self.held.popleft())
        _cancel_queued(self.queue)
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None

    def _close(self) -> None:
        """Close after what is written so far; answers still to come are dropped."""
        self.stop = True
        self._drop()
        if self.transport is not None:
            self.transport.close()

    def _abort(self) -> None:
        self.stop = True
        self._drop()
        if self.transport is not None:
            self.transport.abort()

    # writing ---------------------------------------------------------------------
    def _wake_drain(self) -> None:
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.drain_waiter = None

    async def _drained(self, idle_s: float | None) -> bool:
        """Wait for the write buffer to drain; False once the peer has taken no byte of
        it for `idle_s` (None: wait as long as it takes)."""
        transport = self.transport
        while self.write_paused and not self.closed:
            left = transport.get_write_buffer_size()
            waiter = self.drain_waiter = self.loop.create_future()
            done, _ = await asyncio.wait({waiter}, timeout=idle_s)
            if not done and transport.get_write_buffer_size() >= left:
                return False
        if self.closed:
            raise ConnectionResetError("connection lost")
        return True

    async def _send_loop(self) -> None:
        server = self.server
        transport = self.transport
        queue = self.queue
        idle_s = server._idle_s
        pending: Any = None
        try:
            while True:
                item = await queue.get()
                self._room()
                if item is None:
                    return
                pending, name, version, correlation_id = item
                body = await pending if isinstance(pending, asyncio.Future) else pending
                pending = None
                if self.closed:
                    return
                if name:
                    chunks = encode_response(name, version, correlation_id, body, vectored=True)
                    transport.writelines(chunks)
                else:
                    transport.write(body)  # a raw SASL token (SaslHandshake v0)
                if not await self._drained(idle_s):
                    # a client that stops reading: its answers would wait forever (and
                    # keep the connection counted busy, never idle)
                    server.stats_idle_closed += 1
                    log.info("node %d: Kafka connection from %s closed: no answer bytes "
                             "taken for %.1f s (connections.max.idle.ms)", server.node_id,
                             self.peer, idle_s)
                    self.stop = True
                    transport.abort()  # close() would wait to flush
                    return
                self.inflight -= 1
                self.last_active = self.loop.time()
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("node %d: Kafka answer to %s failed; closing the connection",
                          server.node_id, self.peer)
        finally:
            if isinstance(pending, asyncio.Future):
                pending.cancel()
            self.stop = True
            while self.held:
                _cancel_answer(self.held.popleft())
            _cancel_queued(queue)
            transport.close()


class KafkaServer:
    def __init__(self, host: str, port: int, apis: list[Api], node_id: int,
                 max_frame_bytes: int, max_in_flight: int = 256,
                 max_connections: int = 4096, max_connections_per_ip: int = 1024,
                 connections_max_idle_ms: int = 600_000,
                 queued_max_request_bytes: int = 256 * 1024 * 1024) -> None:
        self.host = host
        self.port = port
        self.node_id = node_id
        self.apis = {a.key: a for a in apis}
        self.max_frame_bytes = max_frame_bytes
        self.max_in_flight = max_in_flight
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.connections_max_idle_ms = connections_max_idle_ms
        self._idle_s = connections_max_idle_ms / 1000 if connections_max_idle_ms > 0 else None
        self._caps = ConnectionCaps(max_connections, max_connections_per_ip)
        self._budget: ByteBudget | None = None
        self._budget_limit = queued_max_request_bytes
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        # what every connection reads into, but for frames received in place
        self._scratch = bytearray(SCRATCH_BYTES)
        self._sweep_timer: asyncio.TimerHandle | None = None
        self.ssl: Any = None  # an ssl.SSLContext set before `start()`: TLS only
        # a dmq.security.sasl.SaslAuthority set before `start()`: every connection must
        # authenticate (SaslHandshake + SaslAuthenticate) before any request but those
        self.sasl: Any = None
        self._conns: set[_KafkaConnection] = set()
        self.stats_violations = 0
        self.stats_requests = 0
        self.stats_refused = 0
        self.stats_idle_closed = 0
        for a in apis:
            spec = message_spec(a.name + "Request")
            assert spec.api_key == a.key
            assert spec.valid[0] <= a.min_version <= a.max_version <= spec.valid[1], a

    @property
    def connection_count(self) -> int:
        return len(self._conns)

    def api_ranges(self) -> list[dict[str, int]]:
        return api_ranges(self.apis.values(), self.listener_apis())

    def listener_apis(self) -> list[tuple[int, int, int]]:
        """(key, min, max) of the APIs this listener serves itself (SASL when on)."""
        if self.sasl is None:
            return []
        return [(k, lo, hi) for k, (_name, lo, hi) in SASL_APIS.items()]

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._budget = ByteBudget(self._budget_limit)
        self._server = await self._loop.create_server(
            lambda: _KafkaConnection(self), self.host, self.port, reuse_address=True,
            ssl=self.ssl, ssl_handshake_timeout=10.0 if self.ssl is not None else None)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        self._schedule_sweep()
        log.info("node %d: Kafka listener on %s:%d", self.node_id, self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        senders = []
        for conn in list(self._conns):
            conn._abort()
            if conn.sender is not None:
                senders.append(conn.sender)
        if senders:
            await asyncio.gather(*senders, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def _admit(self, conn: _KafkaConnection) -> bool:
        why = self._caps.admit(conn.host)
        if why is None:
            self._conns.add(conn)
            return True
        if self.stats_refused % 1000 == 0:
            log.warning("node %d: Kafka connection from %s refused: %s (%d refused so "
                        "far)", self.node_id, conn.peer, why, self.stats_refused + 1)
        self.stats_refused += 1
        return False

    def _forget(self, conn: _KafkaConnection) -> None:
        if conn in self._conns:
            self._conns.discard(conn)
            self._caps.release(conn.host)

    def _schedule_sweep(self) -> None:
        if self._idle_s is not None:
            period_s = min(max(self._idle_s / 4, 0.01), 30.0)
            self._sweep_timer = self._loop.call_later(period_s, self._sweep_idle)

    def _sweep_idle(self) -> None:
        """Close connections with nothing in flight and nothing received for the idle
        time, and those whose frame has been arriving for longer than that (a stalled
        body is dropped with its request memory). Connections waiting on their own
        answers or for request memory are not idle."""
        self._sweep_timer = None
        assert self._idle_s is not None
        cutoff = self._loop.time() - self._idle_s
        for conn in list(self._conns):
            if conn._blocked():
                continue
            since = conn.receiving_since
            if since is not None:
                idle = since <= cutoff
            else:
                idle = conn.inflight == 0 and conn.last_active <= cutoff
            if idle:
                self.stats_idle_closed += 1
                conn._close()
        if self._server is not None:
            self._schedule_sweep()

    def _dispatch(self, frame: bytes | memoryview, session: Any = None,
                  principal: str = ANONYMOUS
                  ) -> tuple[Any, str, int, int] | None:
        """Decode one request and start its handler: (answer or awaitable, message name,
        version, correlation id), or None when no answer is due."""
        api_key, version, correlation_id = peek_request_header(frame)
        if session is not None and api_key in SASL_APIS:
            return self._dispatch_sasl(frame, session, api_key, version, correlation_id)
        api = self.apis.get(api_key)
        if api is None:
            raise KafkaDecodeError(f"unknown API key {api_key}")
        if session is not None and not session.authenticated and api_key != API_VERSIONS_KEY:
            raise KafkaDecodeError(f"{api.name} before SASL authentication (this listener "
                                   f"requires SaslHandshake + SaslAuthenticate first)")
        if not api.min_version <= version <= api.max_version:
            if api_key == API_VERSIONS_KEY:
                body = {"ErrorCode": UNSUPPORTED_VERSION, "ApiKeys": self.api_ranges()}
                return body, "ApiVersions", 0, correlation_id
            raise KafkaDecodeError(f"{api.name} v{version} outside the supported "
                                   f"{api.min_version}-{api.max_version}")
        flexible = message_spec(api.name + "Request").is_flexible(version)
        r = Reader(frame)
        header = read_request_header(r, flexible)
        if session is not None and session.principal is not None:
            principal = session.principal
        if principal != ANONYMOUS:
            header = replace(header, principal=principal)
        body = decode_request_body(api.name, version, r)
        self.stats_requests += 1
        result = api.handler(header, body)
        if result is NO_RESPONSE:
            return None
        if isinstance(result, Awaitable):
            result = asyncio.ensure_future(result)
        return result, api.name, version, correlation_id

    def _dispatch_sasl(self, frame: bytes | memoryview, session: Any, api_key: int, version: int,
                       correlation_id: int) -> tuple[Any, str, int, int]:
        from dmq.security.scram import AuthenticationFailed

        name, lo, hi = SASL_APIS[api_key]
        if not lo <= version <= hi:
            raise KafkaDecodeError(f"{name} v{version} outside the supported {lo}-{hi}")
        r = Reader(frame)
        read_request_header(r, message_spec(name + "Request").is_flexible(version))
        body = decode_request_body(name, version, r)
        self.stats_requests += 1
        if api_key == SASL_HANDSHAKE_KEY:
            if session.authenticated:
                session.failed = True
                return ({"ErrorCode": ILLEGAL_SASL_STATE, "Mechanisms": []}, name, version,
                        correlation_id)
            ok, offered = session.handshake(body["Mechanism"])
            if not ok:
                session.failed = True
                session.authority.note_failure(session.peer_host, None,
                                               f"mechanism {body['Mechanism']!r} not offered "
                                               f"(offered: {', '.join(offered)})")
            session.raw = ok and version == 0  # v0: raw SASL tokens follow, unframed
            code = 0 if ok else UNSUPPORTED_SASL_MECHANISM
            return {"ErrorCode": code, "Mechanisms": offered}, name, version, correlation_id
        if session.authenticated or session.exchange is None:
            session.failed = True
            return ({"ErrorCode": ILLEGAL_SASL_STATE, "ErrorMessage": "SaslAuthenticate "
                     "without a SaslHandshake, or after authentication", "AuthBytes": b""},
                    name, version, correlation_id)
        try:
            token = session.authenticate(bytes(body["AuthBytes"]))
        except AuthenticationFailed as exc:
            answer = {"ErrorCode": SASL_AUTHENTICATION_FAILED,
                      "ErrorMessage": f"Authentication failed: {exc}", "AuthBytes": b""}
            delay = session.authority.failure_delay(session.peer_host)
            return (asyncio.ensure_future(_after(delay, answer)), name, version,
                    correlation_id)
        return ({"ErrorCode": 0, "ErrorMessage": None, "AuthBytes": token,
                 "SessionLifetimeMs": 0}, name, version, correlation_id)

    def _sasl_raw(self, session: Any, frame: bytes) -> tuple[Any, str, int, int] | None:
        """One raw SASL token after SaslHandshake v0: the answer goes back as a raw
        size-prefixed token; a failure closes the connection without one, as Kafka."""
        from dmq.security.scram import AuthenticationFailed

        try:
            token = session.authenticate(frame)
        except AuthenticationFailed:
            return None
        if session.authenticated:
            session.raw = False
        return _SIZE.pack(len(token)) + token, "", 0, 0


def _cancel_answer(item: tuple[Any, str, int, int] | None) -> None:
    if item is not None and isinstance(item[0], asyncio.Future):
        item[0].cancel()


def _cancel_queued(queue: asyncio.Queue[tuple[Any, str, int, int] | None]) -> None:
    """Cancel the handlers of answers that will not be sent."""
    while not queue.empty():
        _cancel_answer(queue.get_nowait())


async def _after(delay_s: float, answer: Any) -> Any:
    await asyncio.sleep(delay_s)
    return answer


__all__ = ["NO_RESPONSE", "Api", "KafkaServer"]
