"""The server and client connection over real loopback sockets, in one process."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import msgpack
import pytest

from dmq.protocol.api import ApiKey
from dmq.protocol.codec import FrameDecoder, decode_response, encode_request
from dmq.protocol.connection import Connection
from dmq.protocol.errors import (
    ErrorCode,
    NetworkError,
    NotLeaderOrFollowerError,
    RequestTimedOutError,
)
from dmq.protocol.server import NO_RESPONSE, ProtocolServer, RequestContext


async def start_server(**kw: Any) -> ProtocolServer:
    server = ProtocolServer(host="127.0.0.1", port=0, node_id="t", **kw)
    gates: dict[int, asyncio.Event] = {}

    async def echo(ctx: RequestContext, body: Any) -> Any:
        if "wait" in body:
            gate = gates.setdefault(body["wait"], asyncio.Event())
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
        await asyncio.sleep(0.01)
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
        await asyncio.sleep(0.05)
        for c in list(server._connections):
            c.abort()
        for p in pending:
            with pytest.raises(NetworkError):
                await asyncio.wait_for(p, 2)
        with pytest.raises(NetworkError):
            await conn.request(ApiKey.METADATA, {"v": 1})
    finally:
        await conn.close()
        await server.close()


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
        await asyncio.sleep(0.1)
        (conn,) = server._connections
        assert conn.in_flight == 4  # the rest stays unread in the socket
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
        await asyncio.sleep(0.05)
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
        await asyncio.sleep(0.05)
        writer.write(b"T /api/v1/x HTTP/1.0\r\nHost: a\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer == b"HTTP/1.0 200 OK\r\n\r\nGET /api/v1/x HTTP/1.0"
        assert len(handed) == 1
        conn = await Connection.open("127.0.0.1", server.bound_port)
        try:
            assert await conn.request(ApiKey.METADATA, {"v": 1}) == {"echo": 1}
        finally:
            await conn.close()
        assert len(handed) == 1
    finally:
        await server.close()
