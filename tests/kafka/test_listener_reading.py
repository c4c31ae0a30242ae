"""How the Kafka listener reads frames (`dmq.kafka.server`, in process): frames split
anywhere by the network or pipelined several to a read come out whole and in order, a
large frame's records reach the handler as a read-only view of the frame received in
place, reading pauses while the answer queue is full and goes on in order once the
writer takes answers, and a large frame waits unread for request memory."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from dmq.kafka.codec import decode_response, encode_request
from dmq.kafka.server import Api, KafkaServer
from tests.support.waiting import until

PRODUCE_V = 9
VERSIONS_V = 3


def _produce(cid: int, records: bytes) -> bytes:
    return encode_request("Produce", PRODUCE_V, cid, "t", {
        "Acks": 1, "TimeoutMs": 1000, "TopicData": [
            {"Name": "t", "PartitionData": [{"Index": 0, "Records": records}]}]})


def _versions(cid: int) -> bytes:
    return encode_request("ApiVersions", VERSIONS_V, cid, "t", {
        "ClientSoftwareName": "t", "ClientSoftwareVersion": "1"})


def _records_of(body: dict[str, Any]) -> Any:
    return body["TopicData"][0]["PartitionData"][0]["Records"]


@asynccontextmanager
async def _listener(produce: Callable[[Any, dict[str, Any]], Any],
                    versions: Callable[[Any, dict[str, Any]], Any] | None = None,
                    ssl: Any = None, **kw: Any) -> AsyncIterator[KafkaServer]:
    answer = {"ErrorCode": 0, "ApiKeys": []}
    server = KafkaServer("127.0.0.1", 0, [
        Api(0, "Produce", 3, 9, produce),
        Api(18, "ApiVersions", 0, 3, versions or (lambda h, b: answer))], 1,
        max_frame_bytes=8 << 20, **kw)
    server.ssl = ssl
    await server.start()
    try:
        yield server
    finally:
        await server.close()


async def _answers(reader: asyncio.StreamReader, names: list[str]) -> list[int]:
    """The correlation ids of the next answers, in the order they came."""
    cids = []
    for name in names:
        size = int.from_bytes(await asyncio.wait_for(reader.readexactly(4), 10), "big")
        version = PRODUCE_V if name == "Produce" else VERSIONS_V
        cid, _ = decode_response(name, version, await reader.readexactly(size))
        cids.append(cid)
    return cids


async def test_frames_split_anywhere_come_out_whole_and_in_order() -> None:
    await _split_frames()


async def _split_frames(server_ssl: Any = None, client_ssl: Any = None) -> None:
    rng = random.Random(5)
    sizes = [10, 300_000, 20_000, 70_000, 0, 1_000_000, 64 * 1024, 5]
    payloads = [rng.randbytes(n) for n in sizes]
    seen: list[Any] = []

    def produce(header: Any, body: dict[str, Any]) -> Any:
        records = _records_of(body)
        seen.append((header.correlation_id, bytes(records), records))
        return {"Responses": []}

    stream = bytearray()
    names = []
    for i, data in enumerate(payloads):
        stream += _produce(2 * i, data) + _versions(2 * i + 1)
        names += ["Produce", "ApiVersions"]
    async with _listener(produce, ssl=server_ssl) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port,
                                                       ssl=client_ssl)
        try:
            pos = 0
            while pos < len(stream):  # pieces of 1 byte up to several frames
                n = rng.choice([1, 2, 3, 5, rng.randrange(1, 200_000)])
                writer.write(stream[pos:pos + n])
                await writer.drain()
                await asyncio.sleep(0)
                pos += n
            assert await _answers(reader, names) == list(range(len(names)))
        finally:
            writer.close()
    assert [cid for cid, _, _ in seen] == [2 * i for i in range(len(sizes))]
    assert [data for _, data, _ in seen] == payloads
    for _, data, view in seen:
        assert isinstance(view, memoryview) and view.readonly
        if len(data) > 256 * 1024:  # went on past any one read: received in place
            assert memoryview(view.obj).nbytes == len(_produce(0, data)) - 4


async def test_reading_pauses_while_answers_wait_and_they_stay_in_order() -> None:
    loop = asyncio.get_running_loop()
    started: list[asyncio.Future[dict[str, Any]]] = []

    def versions(header: Any, body: dict[str, Any]) -> Any:
        fut: asyncio.Future[dict[str, Any]] = loop.create_future()
        started.append(fut)
        return fut

    async with _listener(lambda h, b: {"Responses": []}, versions, max_in_flight=2) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"".join(_versions(cid) for cid in range(8)))
            # one being written, two queued, one dispatched and held for room; then
            # the listener reads no further
            await until(lambda: len(started) == 4, "four requests dispatched")
            (conn,) = server._conns
            await until(lambda: conn.reading_paused, "reading paused")
            assert server.stats_requests == 4
            for fut in reversed(started):  # the later ones done first
                fut.set_result({"ErrorCode": 0, "ApiKeys": []})
            await until(lambda: len(started) == 8, "the rest dispatched")
            for fut in reversed(started[4:]):
                fut.set_result({"ErrorCode": 0, "ApiKeys": []})
            assert await _answers(reader, ["ApiVersions"] * 8) == list(range(8))
            await until(lambda: not conn.reading_paused, "reading again")
        finally:
            writer.close()


async def test_a_large_frame_waits_unread_for_request_memory() -> None:
    seen: list[int] = []

    def produce(header: Any, body: dict[str, Any]) -> Any:
        seen.append(header.correlation_id)
        return {"Responses": []}

    first = _produce(1, b"a" * 150_000)
    second = _produce(2, b"b" * 300_000)  # more than one read: never whole in one
    async with _listener(produce, queued_max_request_bytes=200_000) as server:
        r1, w1 = await asyncio.open_connection("127.0.0.1", server.port)
        r2, w2 = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            w1.write(first[:70_000])  # reserves its 150 KB
            await until(lambda: server._budget is not None and server._budget.used > 0,
                        "the first frame's memory reserved")
            w2.write(second)  # 150 KB + 300 KB are over the budget
            await until(lambda: any(c.budget_wait for c in server._conns),
                        "the second frame waiting for memory")
            assert seen == []
            w1.write(first[70_000:])
            assert await _answers(r1, ["Produce"]) == [1]
            assert await _answers(r2, ["Produce"]) == [2]
            assert seen == [1, 2]
            assert server._budget is not None and server._budget.used == 0
        finally:
            w1.close()
            w2.close()


def test_frames_split_anywhere_over_tls(tmp_path: Path) -> None:
    """TLS transports (asyncio's and uvloop's) hand the decrypted bytes to
    get_buffer/buffer_updated too."""
    from dmq.security.certs import CA
    from dmq.security.tls import TlsSettings, client_context

    ca = CA(tmp_path)
    ca.issue("node-1")
    tls = TlsSettings(str(tmp_path / "node-1.pem"), str(tmp_path / "node-1.key"),
                      str(ca.cafile))
    client = client_context(str(ca.cafile), check_hostname=False)
    uvloop = pytest.importorskip("uvloop")
    for factory in (asyncio.new_event_loop, uvloop.new_event_loop):
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_split_frames(tls.server_context(), client))


def test_the_same_on_uvloop() -> None:
    """The nodes run uvloop, whose transports call get_buffer/buffer_updated their own
    way."""
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(test_frames_split_anywhere_come_out_whole_and_in_order())
        runner.run(test_reading_pauses_while_answers_wait_and_they_stay_in_order())
        runner.run(test_a_large_frame_waits_unread_for_request_memory())


async def test_a_malformed_frame_received_in_place_closes_with_one_log_line(
        caplog: pytest.LogCaptureFixture) -> None:
    """A frame too long for one read that does not decode: counted, logged once by
    the listener, that connection closed; the next connection is served."""
    import struct

    bad = struct.pack(">ihhih", 300_000, 999, 0, 1, -1) + b"\0" * (300_000 - 10)
    async with _listener(lambda h, b: {"Responses": []}) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(bad)
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the listener
        finally:
            writer.close()
        assert server.stats_violations == 1
        lines = [r for r in caplog.records if "Kafka connection from" in r.getMessage()]
        assert len(lines) == 1 and "unknown API key 999" in lines[0].getMessage()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(_versions(3))
            assert await _answers(reader, ["ApiVersions"]) == [3]
        finally:
            writer.close()
