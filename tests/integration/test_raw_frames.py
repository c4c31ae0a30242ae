"""Raw-form frames end to end in one process: a client of the previous release
(plain frames, dict bodies) and a raw-form one produce to and fetch from the same
broker and see the same records; a client talking to a node of the previous release
(which reads plain frames only) keeps to the plain form; a raw section where a field
takes only bytes is refused by the schema."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from dmq.log.batch import BatchBuilder, iter_headers
from dmq.protocol.api import REQUEST_SCHEMAS, ApiKey
from dmq.protocol.codec import MultiBuffer, VectoredBody, encode_request_raw
from dmq.protocol.connection import Connection
from dmq.protocol.errors import ErrorCode
from dmq.protocol.schema import Struct
from dmq.protocol.server import ProtocolServer
from tests.support.inproc_broker import (
    InProcBroker,
    batch,
    fetch,
    produce,
    started_brokers,
)
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[InProcBroker]:
    async with started_brokers(tmp_path, (1,)) as (ctl, (b,)):
        await ctl.create_topic("t", [[1]], {})
        yield b


async def test_plain_and_raw_clients_produce_and_fetch_the_same_records(broker) -> None:
    seen: list[type] = []
    handler = broker.server._handlers[ApiKey.PRODUCE]

    def spy(ctx: Any, body: Any) -> Any:
        seen.extend(type(row[2]) for _, rows in body["topics"] for row in rows)
        return handler(ctx, body)

    broker.server._handlers[ApiKey.PRODUCE] = spy
    old = await Connection.open("127.0.0.1", broker.port)  # as the previous release's
    new = await Connection.open("127.0.0.1", broker.port, raw_frames=True)
    try:
        assert not old.raw_frames and new.raw_frames
        big = batch([b"x" * 50_000, b"y" * 30_000])
        assert (await produce(old, "t", 0, big))[1:3] == [0, 0]
        resp = await new.request(ApiKey.PRODUCE, VectoredBody(
            acks=-1, timeout_ms=5000, topics=[["t", [[0, -1, big]]]]))
        assert resp["topics"][0][1][0][1:3] == [0, 2]
        assert seen == [bytes, memoryview]  # the raw one reached the handler uncopied
        plain = await fetch(old, "t", 0, 0, max_bytes=1 << 22, partition_max_bytes=1 << 22)
        body = {"max_wait_ms": 0, "min_bytes": 1, "max_bytes": 1 << 22,
                "topics": [["t", [[0, 0, -1, 1 << 22]]]]}
        raw = (await new.request(ApiKey.FETCH, VectoredBody(body)))["topics"][0][1][0]
        assert type(plain[5]) is bytes and type(raw[5]) is memoryview
        assert bytes(raw[5]) == plain[5]
        first, second = iter_headers(plain[5])
        # byte-identical batches but for the offset and leader epoch the broker stamped
        assert plain[5][first.position + 16:first.position + first.size_bytes] == \
            plain[5][second.position + 16:second.position + second.size_bytes] == big[16:]
    finally:
        await old.close()
        await new.close()


async def _previous_release_node(frames: list[bytes]) -> asyncio.Server:
    """A node of the previous release: plain frames only (a length word over its frame
    limit is refused and the connection closed), no raw_frames in its answers."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (n,) = struct.unpack(">I", await reader.readexactly(4))
                if n > 100 * 1024 * 1024:
                    writer.close()
                    return
                payload = await reader.readexactly(n)
                frames.append(payload)
                key, _, cid, _, body = msgpack.unpackb(payload, raw=False)
                if key == ApiKey.API_VERSIONS:
                    answer: Any = {"apis": [], "node_id": 9, "version": "old"}
                else:
                    answer = {"got": [type(body["blob"]).__name__, len(body["blob"])]}
                out = msgpack.packb([cid, 0, answer], use_bin_type=True)
                writer.write(struct.pack(">I", len(out)) + out)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def test_a_node_of_the_previous_release_gets_plain_frames_only() -> None:
    frames: list[bytes] = []
    server = await _previous_release_node(frames)
    port = server.sockets[0].getsockname()[1]
    conn = await Connection.open("127.0.0.1", port, raw_frames=True)
    try:
        assert not conn.raw_frames
        blob = b"z" * 100_000
        got = await conn.request(ApiKey.PRODUCE, VectoredBody(blob=blob, n=1))
        assert got == {"got": ["bytes", 100_000]}
        assert msgpack.unpackb(frames[-1], raw=False)[4] == {"blob": blob, "n": 1}
    finally:
        await conn.close()
        server.close()
        await server.wait_closed()


async def test_a_raw_section_where_only_bytes_are_taken_is_refused() -> None:
    server = ProtocolServer(host="127.0.0.1", port=0, node_id=1)
    server.register(ApiKey.RAFT_PROPOSE, lambda ctx, body: {"len": len(body["data"])})
    await server.start()
    try:
        assert isinstance(REQUEST_SCHEMAS[ApiKey.RAFT_PROPOSE], Struct)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
        writer.write(b"".join(encode_request_raw(ApiKey.RAFT_PROPOSE, 0, 4, "c",
                                                 VectoredBody(data=b"d" * 10_000))))
        (n,) = struct.unpack(">I", await reader.readexactly(4))
        cid, code, body = msgpack.unpackb(await reader.readexactly(n), raw=False)
        assert (cid, code) == (4, ErrorCode.INVALID_REQUEST)
        assert "body.data: expected bytes, got memoryview" in body["msg"]
        # the connection still serves: a plain request is answered
        writer.write(b"".join(encode_request_raw(ApiKey.API_VERSIONS, 0, 5, "c", {})))
        (n,) = struct.unpack(">I", await reader.readexactly(4))
        assert msgpack.unpackb(await reader.readexactly(n), raw=False)[:2] == [5, 0]
        writer.close()
    finally:
        await server.close()


async def test_a_consumer_keeps_a_view_only_of_most_of_a_response(broker) -> None:
    """A partition's records that are most of a raw fetch response stay a view of it
    (no copy); a small share of a response is copied, so a partition left unread does
    not keep the whole response alive."""
    from dmq.client import Consumer, TopicPartition

    await broker.controller.create_topic("two", [[1], [1]], {})
    conn = await Connection.open("127.0.0.1", broker.port)
    try:
        assert (await produce(conn, "two", 0, batch([b"b" * 300_000])))[1] == 0
        assert (await produce(conn, "two", 1, batch([b"s" * 20_000])))[1] == 0
    finally:
        await conn.close()
    big, small = TopicPartition("two", 0), TopicPartition("two", 1)
    async with Consumer(f"127.0.0.1:{broker.port}") as c:
        c.assign([big, small])
        c.seek(big, 0)  # both positions known at once: one fetch asks for both
        c.seek(small, 0)
        states = c._sub.states
        await until(lambda: states[big].chunks and states[small].chunks, "both fetched")
        (kept,) = states[big].chunks
        (copied,) = states[small].chunks
        assert type(kept.data) is memoryview and type(copied.data) is bytes
        got = await c.getmany(big, small, timeout_ms=1000)
        assert [r.value for r in got[big]] == [b"b" * 300_000]
        assert [r.value for r in got[small]] == [b"s" * 20_000]


async def test_a_batch_sealed_in_parts_is_stored_as_the_joined_batch(broker) -> None:
    """A batch of large records travels as its parts (`MultiBuffer`: header and msgpack
    pieces around the value objects themselves), raw (one section) and plain (one bin
    32), and the broker stores the bytes `seal()` gives."""
    b = BatchBuilder()
    values = [bytes([i]) * 100_000 for i in range(3)]
    for i, v in enumerate(values):
        b.append(1_000 + i, b"k" if i == 1 else None, v, [("h", b"1")] if i == 2 else None)
    parts = b.seal_parts()
    assert len(parts) == 4 + 3 and parts[1] is values[0]
    old = await Connection.open("127.0.0.1", broker.port)
    new = await Connection.open("127.0.0.1", broker.port, raw_frames=True)
    try:
        for conn in (new, old):
            resp = await conn.request(ApiKey.PRODUCE, VectoredBody(
                acks=-1, timeout_ms=5000, topics=[["t", [[0, -1, MultiBuffer(parts)]]]]))
            assert resp["topics"][0][1][0][1] == 0
        got = await fetch(old, "t", 0, 0, max_bytes=1 << 22, partition_max_bytes=1 << 22)
        sealed = BatchBuilder()
        for i, v in enumerate(values):
            sealed.append(1_000 + i, b"k" if i == 1 else None, v,
                          [("h", b"1")] if i == 2 else None)
        expected = sealed.seal()
        stored = list(iter_headers(got[5]))
        assert [h.base_offset for h in stored] == [0, 3]
        for h in stored:
            assert got[5][h.position + 16:h.position + h.size_bytes] == expected[16:]
    finally:
        await old.close()
        await new.close()
