"""The server and client connection over real loopback sockets, in one process."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import Counter
from typing import Any

import msgpack
import pytest

from dmq.protocol.api import ApiKey
from dmq.protocol.codec import FrameDecoder, VectoredBody, decode_response, encode_request
from dmq.protocol.connection import Connection
from dmq.protocol.errors import (
    ClusterAuthorizationFailedError,
    DmqError,
    ErrorCode,
    NetworkError,
    NotLeaderOrFollowerError,
    RequestTimedOutError,
)
from dmq.protocol.server import NO_RESPONSE, ProtocolServer, RequestContext
from tests.support.waiting import until


class EchoServer(ProtocolServer):
    """The server under test, with what its echo handler has seen: `waiting[n]` requests
    are held at gate n."""

    waiting: Counter[int]


async def start_server(**kw: Any) -> EchoServer:
    server = EchoServer(host="127.0.0.1", port=0, node_id="t", **kw)
    server.waiting = Counter()
    gates: dict[int, asyncio.Event] = {}

    async def echo(ctx: RequestContext, body: Any) -> Any:
        if "wait" in body:
            gate = gates.setdefault(body["wait"], asyncio.Event())
            server.waiting[body["wait"]] += 1
            await gate.wait()
        if "release" in body:
            gates.setdefault(body["release"], asyncio.Event()).set()
        if body.get("fail"):
            raise NotLeaderOrFollowerError("not me", leader=(7, "127.0.0.1", 1234))
        if body.get("crash"):
            raise RuntimeError("bug")
        if body.get("silent"):
            return NO_RESPONSE
        return {"echo": body.get("v")}

    server.register(ApiKey.METADATA, echo)
    await server.start()
    return server


async def test_multiplexed_out_of_order_responses() -> None:
    server = await start_server()
    conn = await Connection.open("127.0.0.1", server.bound_port)
    try:
        slow = asyncio.ensure_future(conn.request(ApiKey.METADATA, {"wait": 1, "v": "slow"}))
        await until(lambda: server.waiting[1] == 1, "the slow request in its handler")
        fast = await conn.request(ApiKey.METADATA, {"v": "fast"})
        assert fast == {"echo": "fast"}
        assert not slow.done()  # the slow one did not block the fast one
        await conn.request(ApiKey.METADATA, {"release": 1})
        assert await slow == {"echo": "slow"}
        results = await asyncio.gather(*(conn.request(ApiKey.METADATA, {"v": i})
                                         for i in range(500)))
        assert [r["echo"] for r in results] == list(range(500))
    finally:
        await conn.close()
        await server.close()


async def test_errors_carry_code_message_and_leader() -> None:
    server = await start_server()
    conn = await Connection.open("127.0.0.1", server.bound_port)
    try:
        with pytest.raises(NotLeaderOrFollowerError) as info:
            await conn.request(ApiKey.METADATA, {"fail": True})
        assert info.value.leader == (7, "127.0.0.1", 1234)
        assert info.value.retriable
        with pytest.raises(Exception) as info2:
            await conn.request(ApiKey.METADATA, {"crash": True})
        assert getattr(info2.value, "code", None) is ErrorCode.UNKNOWN_SERVER_ERROR
        with pytest.raises(Exception) as info3:
            await conn.request(ApiKey.PRODUCE, {})
        assert getattr(info3.value, "code", None) is ErrorCode.UNKNOWN_API_KEY
        with pytest.raises(Exception) as info4:
            await conn.request(ApiKey.METADATA, {}, version=9)
        assert getattr(info4.value, "code", None) is ErrorCode.UNSUPPORTED_VERSION
        # the connection still works after every error
        assert await conn.request(ApiKey.METADATA, {"v": 1}) == {"echo": 1}
    finally:
        await conn.close()
        await server.close()


async def test_timeout_then_connection_drop_fails_pending() -> None:
    server = await start_server()
    conn = await Connection.open("127.0.0.1", server.bound_port)
    try:
        with pytest.raises(RequestTimedOutError):
            await conn.request(ApiKey.METADATA, {"silent": True}, timeout_ms=50)
        pending = [asyncio.ensure_future(conn.request(ApiKey.METADATA, {"wait": 2}))
                   for _ in range(10)]
        await until(lambda: server.waiting[2] == 10, "ten requests in their handler")
        for c in list(server._connections):
            c.abort()
        for p in pending:
            with pytest.raises(NetworkError):
                await asyncio.wait_for(p, 2)
        with pytest.raises(NetworkError):
            await conn.request(ApiKey.METADATA, {"v": 1})
    finally:
        await conn.close()
        await server.close(100)  # the ten handlers still wait at their gate


async def test_connect_refused_is_a_network_error() -> None:
    server = await start_server()
    port = server.bound_port
    await server.close()
    with pytest.raises(NetworkError, match="cannot connect"):
        await Connection.open("127.0.0.1", port)


async def test_server_stops_reading_past_the_in_flight_bound() -> None:
    server = await start_server(max_in_flight=4)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
    try:
        for cid in range(10):
            writer.write(encode_request(ApiKey.METADATA, 0, cid, "t", {"wait": 3}))
        await writer.drain()

        def stopped_reading() -> bool:
            # once it stops reading at the bound nothing more is dispatched until an
            # answer: the state seen here does not move on later
            return any(c.in_flight >= 4 and c.transport is not None
                       and not c.transport.is_reading() for c in server._connections)

        await until(stopped_reading, "the server to stop reading")
        (conn,) = server._connections
        assert conn.in_flight == 4 == server.waiting[3]  # the rest stays unread in the socket
        writer.write(b"")
        # release: a second connection opens the gate; all ten complete
        other = await Connection.open("127.0.0.1", server.bound_port)
        await other.request(ApiKey.METADATA, {"release": 3})
        await other.close()
        dec = FrameDecoder()
        got: list[int] = []
        while len(got) < 10:
            data = await asyncio.wait_for(reader.read(65536), 2)
            assert data
            got += [decode_response(f)[0] for f in dec.feed(data)]
        assert sorted(got) == list(range(10))
    finally:
        writer.close()
        await server.close()


async def test_bad_frames_get_error_or_close_and_server_keeps_serving() -> None:
    server = await start_server(max_frame_bytes=1024)
    good = await Connection.open("127.0.0.1", server.bound_port)
    try:
        async def raw(data: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
            writer.write(data)
            await writer.drain()
            out = await asyncio.wait_for(reader.read(65536), 2)
            writer.close()
            return out

        # wrong shape with a readable correlation id -> error response
        payload = msgpack.packb([3, 0, 42])
        out = await raw(struct.pack(">I", len(payload)) + payload)
        (frame,) = FrameDecoder().feed(out)
        cid, code, _ = decode_response(frame)
        assert (cid, code) == (42, ErrorCode.INVALID_REQUEST)
        # oversized length, zero length, not msgpack -> closed (EOF)
        assert await raw(struct.pack(">I", 2048)) == b""
        assert await raw(struct.pack(">I", 0)) == b""
        assert await raw(struct.pack(">I", 3) + b"\xc1\xc1\xc1") == b""
        assert await good.request(ApiKey.METADATA, {"v": "still"}) == {"echo": "still"}
    finally:
        await good.close()
        await server.close()


async def test_client_bounds_its_in_flight_requests() -> None:
    server = await start_server()
    conn = await Connection.open("127.0.0.1", server.bound_port, max_in_flight=3)
    try:
        waiting = [asyncio.ensure_future(conn.request(ApiKey.METADATA, {"wait": 4}))
                   for _ in range(5)]
        await until(lambda: server.waiting[4] >= 3, "three requests in their handler")
        assert conn.in_flight == 3  # two senders wait for room
        with pytest.raises(RequestTimedOutError, match="no room"):
            await conn.request(ApiKey.METADATA, {"v": 1}, timeout_ms=50)
        other = await Connection.open("127.0.0.1", server.bound_port)
        await other.request(ApiKey.METADATA, {"release": 4})
        await other.close()
        results = await asyncio.wait_for(asyncio.gather(*waiting), 2)
        assert len(results) == 5
    finally:
        await conn.close()
        await server.close()


class _OneShotHttp(asyncio.Protocol):
    """Answers the first HTTP request it sees and closes: stands in for the HTTP server
    a node hands its HTTP connections to."""

    def __init__(self) -> None:
        self.received = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += data
        if b"\r\n\r\n" in self.received and self.transport is not None:
            line = self.received.split(b"\r\n", 1)[0]
            self.transport.write(b"HTTP/1.0 200 OK\r\n\r\n" + line)
            self.transport.close()


async def test_http_on_the_frame_port_is_handed_off_and_frames_still_work() -> None:
    server = await start_server()
    handed: list[_OneShotHttp] = []

    def handoff(transport: asyncio.Transport, first: bytes) -> None:
        proto = _OneShotHttp()
        handed.append(proto)
        transport.set_protocol(proto)
        proto.connection_made(transport)
        proto.data_received(first)

    server.http_handoff = handoff
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
        # the method arrives split across writes: the sniff waits for 4 bytes
        writer.write(b"GE")
        await writer.drain()
        await until(lambda: any(c._sniffed == b"GE" for c in server._connections),
                    "the first two bytes read on their own")
        writer.write(b"T /api/v1/x HTTP/1.0\r\nHost: a\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer == b"HTTP/1.0 200 OK\r\n\r\nGET /api/v1/x HTTP/1.0"
        assert len(handed) == 1
        # a handed-off connection has left the books (caps, budget)
        assert server.connection_count == 0 == server.caps.open and not server.caps._per_ip
        conn = await Connection.open("127.0.0.1", server.bound_port)
        try:
            assert await conn.request(ApiKey.METADATA, {"v": 1}) == {"echo": 1}
        finally:
            await conn.close()
        assert len(handed) == 1
    finally:
        await server.close()


# ---- node-wide bounds: connection caps, idle close, request budget, response bound ----

async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 5) == b""
    except ConnectionResetError:
        return True


async def test_connection_caps_total_and_per_address() -> None:
    server = await start_server(max_connections=3, max_connections_per_ip=2)
    opened: list[asyncio.StreamWriter] = []
    try:
        a = await Connection.open("127.0.0.1", server.bound_port)
        b = await Connection.open("127.0.0.1", server.bound_port)
        # a third from 127.0.0.1 is over the per-address cap: closed at once
        reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
        opened.append(writer)
        assert await _closed_by_server(reader)
        assert server.connection_count == 2 and server.stats_refused_connections == 1
        # another address still gets in, up to the total cap of 3
        r2, w2 = await asyncio.open_connection("127.0.0.1", server.bound_port,
                                               local_addr=("127.0.0.2", 0))
        opened.append(w2)
        await until(lambda: server.connection_count == 3, "the 127.0.0.2 connection")
        r3, w3 = await asyncio.open_connection("127.0.0.1", server.bound_port,
                                               local_addr=("127.0.0.3", 0))
        opened.append(w3)
        assert await _closed_by_server(r3)
        assert server.stats_refused_connections == 2
        # the admitted ones are served; closing one makes room again
        assert await a.request(ApiKey.METADATA, {"v": 1}) == {"echo": 1}
        await b.close()
        await until(lambda: server.connection_count == 2, "room after a close")
        c = await Connection.open("127.0.0.1", server.bound_port)
        assert await c.request(ApiKey.METADATA, {"v": 2}) == {"echo": 2}
        await a.close()
        await c.close()
    finally:
        for w in opened:
            w.close()
        await server.close()


async def test_idle_connections_are_closed_busy_ones_are_not() -> None:
    server = await start_server(connections_max_idle_ms=100)
    busy = await Connection.open("127.0.0.1", server.bound_port)
    try:
        parked = asyncio.ensure_future(busy.request(ApiKey.METADATA, {"wait": 9, "v": "p"}))
        await until(lambda: any(c.in_flight for c in server._connections), "request parked")
        idle = await Connection.open("127.0.0.1", server.bound_port)
        assert await idle.request(ApiKey.METADATA, {"v": 1}) == {"echo": 1}
        # the idle one goes; the one with a request in flight, silent for longer, stays
        await until(lambda: idle.closed, "idle connection closed", 10)
        assert server.stats_idle_closed >= 1
        assert not busy.closed
        other = await Connection.open("127.0.0.1", server.bound_port)
        await other.request(ApiKey.METADATA, {"release": 9})
        await other.close()
        assert await asyncio.wait_for(parked, 5) == {"echo": "p"}
    finally:
        await busy.close()
        await server.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, int, Any]:
    (n,) = struct.unpack(">I", await asyncio.wait_for(reader.readexactly(4), 5))
    return decode_response(await asyncio.wait_for(reader.readexactly(n), 5))


async def test_request_memory_budget_holds_partial_frames_back() -> None:
    budget = 1 << 20
    server = await start_server(queued_max_request_bytes=budget, connections_max_idle_ms=1000)
    frame = encode_request(ApiKey.METADATA, 0, 7, "t", {"v": "big", "pad": b"x" * (600 << 10)})
    size = len(frame) - 4
    half = len(frame) // 2
    try:
        r1, w1 = await asyncio.open_connection("127.0.0.1", server.bound_port)
        r2, w2 = await asyncio.open_connection("127.0.0.1", server.bound_port)
        w1.write(frame[:half])
        await w1.drain()
        await until(lambda: server.reserved_request_bytes == size, "first reservation")
        # the second frame does not fit next to the first: its connection waits, unread
        w2.write(frame[:half])
        await w2.drain()
        await until(lambda: server.stats_budget_waits == 1, "second connection waiting")
        assert server.reserved_request_bytes == size <= budget
        (waiting,) = [c for c in server._connections if c.budget_blocked]
        # memory follows the budget: the granted frame has its buffer, the waiting one
        # only its first read's part
        (granted,) = [c for c in server._connections if not c.budget_blocked]
        assert granted.decoder._frame is not None and len(granted.decoder._frame) == size
        assert waiting.decoder._frame is None and waiting.decoder._head is not None
        # the first completes and is answered; the second then gets the budget
        w1.write(frame[half:])
        assert (await _read_response(r1))[:3] == (7, 0, {"echo": "big"})
        await until(lambda: not waiting.budget_blocked, "second connection resumed")
        assert server.reserved_request_bytes == size
        w2.write(frame[half:])
        assert (await _read_response(r2))[:3] == (7, 0, {"echo": "big"})
        await until(lambda: server.reserved_request_bytes == 0, "budget released")
        # a frame larger than the whole budget still goes through when it is alone
        w1.write(encode_request(ApiKey.METADATA, 0, 8, "t", {"v": 2, "pad": b"y" * (2 << 20)}))
        assert (await _read_response(r1))[:3] == (8, 0, {"echo": 2})
        # a peer that stalls mid-frame, and one left waiting (unread, so its close is not
        # seen), are closed as idle: the budget and the queue empty again
        w1.write(frame[:half])
        await until(lambda: server.reserved_request_bytes == size, "reserved again")
        w2.write(frame[:half])
        await until(lambda: server.stats_budget_waits == 2, "waiting again")
        w2.close()
        await until(lambda: not server._budget_waiters and server.reserved_request_bytes == 0
                    and server.connection_count == 0,
                    "stalled and waiting connections closed", 10)
        assert server.connection_count == 0
        w1.close()
    finally:
        await server.close()


async def test_a_peer_leaving_mid_frame_hands_its_budget_to_the_next_waiting() -> None:
    """The budget held by a large frame in progress goes back when its peer goes away
    (end of stream or reset), not only when the frame completes or the idle sweep runs."""
    server = await start_server(queued_max_request_bytes=1 << 20)
    frame = encode_request(ApiKey.METADATA, 0, 7, "t", {"v": "big", "pad": b"x" * (600 << 10)})
    size = len(frame) - 4
    half = len(frame) // 2
    writers: list[asyncio.StreamWriter] = []
    try:
        for how in ("eof", "reset"):
            _, w1 = await asyncio.open_connection("127.0.0.1", server.bound_port)
            r2, w2 = await asyncio.open_connection("127.0.0.1", server.bound_port)
            writers += [w1, w2]
            w1.write(frame[:half])
            await until(lambda: server.reserved_request_bytes == size, "first reservation")
            w2.write(frame[:half])
            await until(lambda: server._budget_waiters, "second connection waiting")
            if how == "eof":
                w1.write_eof()
            else:
                sock = w1.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                w1.close()
            # the waiting one gets the budget at once and is served
            await until(lambda: not server._budget_waiters, f"budget handed on ({how})")
            assert server.reserved_request_bytes == size
            w2.write(frame[half:])
            assert (await _read_response(r2))[:3] == (7, 0, {"echo": "big"})
            await until(lambda: server.reserved_request_bytes == 0, "budget released")
            w2.close()
            await until(lambda: server.connection_count == 0, "both gone")
    finally:
        for w in writers:
            w.close()
        await server.close()


BIG = bytes(4 << 20)


async def big_response_server(**kw: Any) -> tuple[ProtocolServer, list[int]]:
    """A server whose FETCH answers 4 MiB by reference (as the broker's fetch does),
    counting the calls; METADATA as in `start_server`."""
    server = await start_server(**kw)
    calls: list[int] = []

    def fetch(ctx: RequestContext, body: Any) -> Any:
        calls.append(ctx.header.correlation_id)
        return VectoredBody(records=BIG)

    server.register(ApiKey.FETCH, fetch)
    return server, calls


def _slow_reader_socket(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)  # kernel absorbs little
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    return s


def _pipelined_fetches(n: int) -> bytes:
    body = {"max_wait_ms": 0, "min_bytes": 1, "max_bytes": 1 << 30, "topics": []}
    return b"".join(encode_request(ApiKey.FETCH, 0, cid, "t", body) for cid in range(n))


async def test_unread_by_reference_responses_are_bounded_per_connection() -> None:
    high = 4 << 20
    server, calls = await big_response_server(max_buffered_bytes=high)
    s = _slow_reader_socket(server.bound_port)
    reader, writer = await asyncio.open_connection(sock=s)
    try:
        writer.write(_pipelined_fetches(20))  # one write, never read (for now)
        await writer.drain()
        await until(lambda: server._connections and next(iter(server._connections)).backlog,
                    "dispatch held back")
        (conn,) = server._connections
        assert conn.transport is not None
        # what waits for the peer is the bound plus at most one response
        assert len(calls) <= 3
        assert conn.transport.get_write_buffer_size() <= high + len(BIG) + 1024
        # reading resumes dispatch until every request is answered, in order of arrival
        got = [(await _read_response(reader))[0] for _ in range(20)]
        assert got == list(range(20)) and calls == list(range(20))
    finally:
        writer.close()
        await server.close()


async def test_closed_connection_drops_its_queue_and_late_answers() -> None:
    server, calls = await big_response_server(max_buffered_bytes=4 << 20)
    s = _slow_reader_socket(server.bound_port)
    reader, writer = await asyncio.open_connection(sock=s)
    try:
        writer.write(encode_request(ApiKey.METADATA, 0, 999, "t", {"wait": 5, "v": "late"}))
        writer.write(_pipelined_fetches(20))
        await writer.drain()
        await until(lambda: server._connections and next(iter(server._connections)).backlog,
                    "dispatch held back")
        (conn,) = server._connections
        dispatched = len(calls)
        # the peer goes away without reading (RST): everything queued for it goes
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()
        await until(lambda: server.connection_count == 0, "connection forgotten")
        assert conn.closed and not conn.backlog and conn.decoder.buffered_bytes == 0
        assert conn.transport is not None and conn.transport.get_write_buffer_size() == 0
        # a handler finishing after the close writes nothing and dispatches nothing more
        other = await Connection.open("127.0.0.1", server.bound_port)
        await other.request(ApiKey.METADATA, {"release": 5})
        await other.close()
        await until(lambda: conn.in_flight == 0, "late handler finished")
        assert conn.transport.get_write_buffer_size() == 0
        assert len(calls) == dispatched
    finally:
        await server.close()


async def test_server_close_ends_handlers_of_connections_already_closed() -> None:
    server = await start_server()
    ended: list[str] = []
    running = asyncio.Event()

    async def stuck(ctx: RequestContext, body: Any) -> Any:
        running.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.append("cancelled")

    server.register(ApiKey.FETCH, stuck)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
    writer.write(_pipelined_fetches(1))
    await writer.drain()
    await asyncio.wait_for(running.wait(), 5)
    writer.close()
    await until(lambda: server.connection_count == 0, "connection forgotten")
    # the connection is gone, its handler is not: closing the server ends it
    await server.close(grace_ms=50)
    assert ended == ["cancelled"]


async def test_peer_that_never_reads_is_dropped_when_idle() -> None:
    """Its answers wait (bounded) while it sends nothing; once it has been silent for the
    idle time, it goes with everything queued for it, half-closed or not."""
    server, calls = await big_response_server(max_buffered_bytes=4 << 20,
                                              connections_max_idle_ms=300)
    s = _slow_reader_socket(server.bound_port)
    try:
        s.setblocking(True)
        s.sendall(_pipelined_fetches(20))
        s.shutdown(socket.SHUT_WR)  # FIN, then never a read
        # the close is counted when the server decides it, the connection once its
        # transport reports it lost (the next loop turn): wait for both
        await until(lambda: server.stats_idle_closed == 1 and server.connection_count == 0,
                    "silent peer dropped", 10)
        assert server.connection_count == 0 and len(calls) <= 3
    finally:
        s.close()
        await server.close()


# ---- inter-node APIs: identified connections only --------------------------------------

async def inter_node_server() -> tuple[ProtocolServer, list[tuple[ApiKey, int | None]]]:
    server = ProtocolServer(host="127.0.0.1", port=0, node_id=1, cluster_nodes={
        1: frozenset({"controller", "broker"}), 2: frozenset({"controller", "broker"}),
        101: frozenset({"broker"}), 102: frozenset({"broker"})})
    served: list[tuple[ApiKey, int | None]] = []

    def handler(key: ApiKey) -> Any:
        def handle(ctx: RequestContext, body: Any) -> Any:
            served.append((key, ctx.peer_node_id))
            return {}
        return handle

    for key in (ApiKey.RAFT_MESSAGE, ApiKey.BROKER_HEARTBEAT, ApiKey.FETCH, ApiKey.METADATA):
        server.register(key, handler(key))
    await server.start()
    return server, served


RAFT = {"from": 2, "msg": [4, 2, 1, 0, True, 0, 0]}
BEAT = {"broker_id": 101, "broker_epoch": 1, "metadata_version": 0}
FETCH = {"max_wait_ms": 0, "min_bytes": 1, "max_bytes": 1024, "topics": []}


async def _code(conn: Connection, key: ApiKey, body: Any) -> ErrorCode:
    try:
        await conn.request(key, body)
    except DmqError as exc:
        return exc.code
    return ErrorCode.NONE


async def test_inter_node_apis_are_refused_to_unidentified_connections() -> None:
    server, served = await inter_node_server()
    conn = await Connection.open("127.0.0.1", server.bound_port)
    try:
        denied = ErrorCode.CLUSTER_AUTHORIZATION_FAILED
        assert await _code(conn, ApiKey.RAFT_MESSAGE, RAFT) is denied
        assert await _code(conn, ApiKey.BROKER_HEARTBEAT, BEAT) is denied
        assert await _code(conn, ApiKey.FETCH, {**FETCH, "replica_id": 101}) is denied
        # ordinary requests, and a consumer's fetch, are served as before
        assert await _code(conn, ApiKey.FETCH, FETCH) is ErrorCode.NONE
        assert await _code(conn, ApiKey.METADATA, {}) is ErrorCode.NONE
        assert served == [(ApiKey.FETCH, None), (ApiKey.METADATA, None)]
        with pytest.raises(DmqError) as info:
            await conn.request(ApiKey.RAFT_MESSAGE, RAFT)
        assert not info.value.retriable and "NODE_HELLO" in info.value.message
        # a node id the configuration does not list cannot be claimed
        with pytest.raises(DmqError) as info:
            await Connection.open("127.0.0.1", server.bound_port, node_id=999)
        assert info.value.code is denied and "999" in info.value.message
    finally:
        await conn.close()
        await server.close()


async def test_identified_node_may_speak_only_for_itself_in_its_roles() -> None:
    server, served = await inter_node_server()
    broker = await Connection.open("127.0.0.1", server.bound_port, node_id=101)
    ctl = await Connection.open("127.0.0.1", server.bound_port, node_id=2)
    try:
        denied = ErrorCode.CLUSTER_AUTHORIZATION_FAILED
        assert await _code(broker, ApiKey.BROKER_HEARTBEAT, BEAT) is ErrorCode.NONE
        assert await _code(broker, ApiKey.FETCH, {**FETCH, "replica_id": 101}) is ErrorCode.NONE
        assert await _code(broker, ApiKey.BROKER_HEARTBEAT, {**BEAT, "broker_id": 102}) is denied
        assert await _code(broker, ApiKey.FETCH, {**FETCH, "replica_id": 102}) is denied
        assert await _code(broker, ApiKey.RAFT_MESSAGE, {**RAFT, "from": 101}) is denied
        assert await _code(ctl, ApiKey.RAFT_MESSAGE, RAFT) is ErrorCode.NONE
        assert await _code(ctl, ApiKey.RAFT_MESSAGE, {**RAFT, "from": 1}) is denied
        assert served == [(ApiKey.BROKER_HEARTBEAT, 101), (ApiKey.FETCH, 101),
                          (ApiKey.RAFT_MESSAGE, 2)]
        # an identity, once given, does not change
        with pytest.raises(DmqError) as info:
            await ctl.request(ApiKey.NODE_HELLO, {"node_id": 1})
        assert info.value.code is denied
        assert await _code(ctl, ApiKey.RAFT_MESSAGE, {**RAFT, "from": 1}) is denied
    finally:
        await broker.close()
        await ctl.close()
        await server.close()


async def test_node_authenticator_decides_whether_a_claim_holds() -> None:
    server, _ = await inter_node_server()
    proven: list[int] = []

    def authenticate(ctx: RequestContext, node_id: int, body: dict[str, Any]) -> None:
        if node_id != 101:
            raise ClusterAuthorizationFailedError(f"no credentials for node {node_id}")
        proven.append(node_id)

    server.node_authenticator = authenticate
    try:
        conn = await Connection.open("127.0.0.1", server.bound_port, node_id=101)
        assert await _code(conn, ApiKey.BROKER_HEARTBEAT, BEAT) is ErrorCode.NONE
        await conn.close()
        with pytest.raises(ClusterAuthorizationFailedError, match="no credentials"):
            await Connection.open("127.0.0.1", server.bound_port, node_id=102)
        assert proven == [101]
    finally:
        await server.close()
