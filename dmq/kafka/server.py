"""The Kafka listener: a TCP server that speaks Kafka's framing and headers.

Owns connections, frame bounds, request dispatch and answer order. Each connection
has one reader (frames in, requests decoded and handed to their handler in arrival
order) and one writer that sends answers strictly in request order, as every Kafka
client expects, even when a later request (a produce) is answered before an earlier
one (a long-poll fetch). A handler returns a body, an awaitable of one, or
`NO_RESPONSE` (acks=0 produce). At most `max_in_flight` answers wait per connection;
the reader stops reading past that.

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
        self._freed = asyncio.Condition()

    async def acquire(self, n: int) -> None:
        async with self._freed:
            await self._freed.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n

    async def release(self, n: int) -> None:
        async with self._freed:
            self.used -= n
            self._freed.notify_all()


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
        self._budget: ByteBudget | None = None
        self._budget_limit = queued_max_request_bytes
        self._server: asyncio.Server | None = None
        self.ssl: Any = None  # an ssl.SSLContext set before `start()`: TLS only
        # a dmq.security.sasl.SaslAuthority set before `start()`: every connection must
        # authenticate (SaslHandshake + SaslAuthenticate) before any request but those
        self.sasl: Any = None
        self._conns: set[asyncio.Task[None]] = set()
        self._per_ip: dict[str, int] = {}
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
        self._budget = ByteBudget(self._budget_limit)
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, reuse_address=True, ssl=self.ssl,
            ssl_handshake_timeout=10.0 if self.ssl is not None else None)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        log.info("node %d: Kafka listener on %s:%d", self.node_id, self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        why = None
        if len(self._conns) >= self.max_connections:
            why = f"{len(self._conns)} Kafka connections open (max.connections)"
        elif self._per_ip.get(host, 0) >= self.max_connections_per_ip:
            why = (f"{self._per_ip[host]} Kafka connections open from {host} "
                   f"(max.connections.per.ip)")
        if why is not None:
            if self.stats_refused % 1000 == 0:
                log.warning("node %d: Kafka connection from %s refused: %s (%d refused so "
                            "far)", self.node_id, peer, why, self.stats_refused + 1)
            self.stats_refused += 1
            writer.close()
            return
        self._conns.add(task)
        self._per_ip[host] = self._per_ip.get(host, 0) + 1
        session = self.sasl.session(host, self.ssl is not None) if self.sasl is not None \
            else None
        # the principal without SASL: the client certificate's subject (mTLS), if any
        principal = certificate_principal(writer.get_extra_info("peercert")) or ANONYMOUS
        try:
            await self._serve(reader, writer, peer, session, principal)
        except asyncio.CancelledError:
            pass
        except Exception:
            self.stats_violations += 1
            log.exception("node %d: Kafka connection from %s failed; closed", self.node_id, peer)
        finally:
            self._conns.discard(task)
            left = self._per_ip[host] - 1
            if left:
                self._per_ip[host] = left
            else:
                del self._per_ip[host]
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     peer: Any, session: Any = None, principal: str = ANONYMOUS) -> None:
        queue: asyncio.Queue[tuple[Any, str, int, int] | None] = asyncio.Queue(
            self.max_in_flight)
        inflight = [0]  # answers queued or being written
        idle_s = self.connections_max_idle_ms / 1000 if self.connections_max_idle_ms > 0 \
            else None
        sender = asyncio.create_task(self._send_loop(queue, writer, peer, inflight, idle_s))
        budget = self._budget
        assert budget is not None
        try:
            while not sender.done():
                head = await self._read_header(reader, idle_s, inflight)
                if head is None:
                    self.stats_idle_closed += 1
                    return
                (size,) = _SIZE.unpack(head)
                if size < 8 or size > self.max_frame_bytes:
                    raise KafkaDecodeError(f"frame size {size} outside [8, "
                                           f"{self.max_frame_bytes}] (max.frame.bytes)")
                reserved = size if size > SMALL_FRAME_BYTES else 0
                if reserved:
                    await budget.acquire(reserved)
                try:
                    # a body that stalls for the idle time is dropped with its budget
                    frame = await asyncio.wait_for(reader.readexactly(size), idle_s)
                    if session is not None and session.raw:
                        item = self._sasl_raw(session, frame)  # after SaslHandshake v0
                    else:
                        item = self._dispatch(frame, session, principal)
                except TimeoutError:
                    self.stats_idle_closed += 1
                    return
                finally:
                    if reserved:
                        await budget.release(reserved)
                if item is not None:
                    inflight[0] += 1
                    try:
                        await queue.put(item)
                    except BaseException:
                        _cancel_answer(item)  # its handler was started: owned here
                        raise
                if session is not None and session.failed:
                    # as Kafka: the failure is answered, then the connection closed
                    await queue.put(None)
                    await asyncio.wait({sender}, timeout=SASL_CLOSE_WAIT_S)
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except KafkaDecodeError as exc:
            self.stats_violations += 1
            log.warning("node %d: Kafka connection from %s closed: %s", self.node_id, peer, exc)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            _cancel_queued(queue)  # put after the sender had emptied the queue

    @staticmethod
    async def _read_header(reader: asyncio.StreamReader, idle_s: float | None,
                           inflight: list[int]) -> bytes | None:
        """The next 4 size bytes, or None once the connection has been idle (nothing
        received, nothing in flight) for a whole `idle_s` period."""
        read = asyncio.ensure_future(reader.readexactly(4))
        try:
            while True:
                done, _ = await asyncio.wait({read}, timeout=idle_s)
                if done:
                    return read.result()
                if not inflight[0]:
                    return None
        finally:
            if not read.done():
                read.cancel()

    def _dispatch(self, frame: bytes, session: Any = None, principal: str = ANONYMOUS
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

    def _dispatch_sasl(self, frame: bytes, session: Any, api_key: int, version: int,
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

    async def _send_loop(self, queue: asyncio.Queue[tuple[Any, str, int, int] | None],
                         writer: asyncio.StreamWriter, peer: Any, inflight: list[int],
                         idle_s: float | None) -> None:
        pending: Any = None
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                pending, name, version, correlation_id = item
                body = await pending if isinstance(pending, asyncio.Future) else pending
                pending = None
                if name:
                    chunks = encode_response(name, version, correlation_id, body, vectored=True)
                    writer.writelines(chunks)
                else:
                    writer.write(body)  # a raw SASL token (SaslHandshake v0)
                if not await _drained(writer, idle_s):
                    # a client that stops reading: its answers would wait forever (and
                    # keep the connection counted busy, never idle)
                    self.stats_idle_closed += 1
                    log.info("node %d: Kafka connection from %s closed: no answer bytes "
                             "taken for %.1f s (connections.max.idle.ms)", self.node_id,
                             peer, idle_s)
                    writer.transport.abort()  # close() would wait to flush
                    return
                inflight[0] -= 1
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("node %d: Kafka answer to %s failed; closing the connection",
                          self.node_id, peer)
        finally:
            if isinstance(pending, asyncio.Future):
                pending.cancel()
            _cancel_queued(queue)
            writer.close()


def _cancel_answer(item: tuple[Any, str, int, int] | None) -> None:
    if item is not None and isinstance(item[0], asyncio.Future):
        item[0].cancel()


def _cancel_queued(queue: asyncio.Queue[tuple[Any, str, int, int] | None]) -> None:
    """Cancel the handlers of answers that will not be sent."""
    while not queue.empty():
        _cancel_answer(queue.get_nowait())


async def _drained(writer: asyncio.StreamWriter, idle_s: float | None) -> bool:
    """Wait for the write buffer to drain; False once the peer has taken no byte of it
    for `idle_s` (None: wait as long as it takes)."""
    transport = writer.transport
    while True:
        left = transport.get_write_buffer_size()
        try:
            await asyncio.wait_for(writer.drain(), idle_s)
            return True
        except TimeoutError:
            if transport.get_write_buffer_size() >= left:
                return False


async def _after(delay_s: float, answer: Any) -> Any:
    await asyncio.sleep(delay_s)
    return answer


__all__ = ["NO_RESPONSE", "Api", "KafkaServer"]
