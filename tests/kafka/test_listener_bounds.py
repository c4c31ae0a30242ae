"""Bounds of the Kafka listener on a live node: connections per address, idle
connections, and the request-memory budget (unit)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from dmq.kafka.server import ByteBudget
from tests.kafka.support import KafkaConn, kafka_cluster
from tests.support.procs import ProcessCluster
from tests.support.waiting import async_wait_until, until, wait_until


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[ProcessCluster, int]]:
    with kafka_cluster(combined=True, settings={"max.connections.per.ip": 40,
                                                "connections.max.idle.ms": 1500}) as (pc, ports):
        yield pc, ports[1]


@pytest.mark.slow
def test_connection_past_the_per_address_cap_is_closed(node: tuple[ProcessCluster, int]) -> None:
    pc, port = node
    conns = [KafkaConn(port, timeout_s=5) for _ in range(40)]
    try:
        for c in conns:  # every one is served (and so counted) before the next test
            assert c.request("ApiVersions", 3, {})["ErrorCode"] == 0
        with KafkaConn(port, timeout_s=5) as extra:
            assert extra.closed_by_peer()
        assert conns[0].request("ApiVersions", 3, {})["ErrorCode"] == 0
    finally:
        for c in conns:
            c.sock.close()
    assert "max.connections.per.ip" in pc.nodes[1].log_text()
    # the broker counts the closed ones down as it sees them end: wait for room again
    def served() -> bool:
        with KafkaConn(port, timeout_s=5) as probe:
            return probe.request("ApiVersions", 3, {})["ErrorCode"] == 0

    # (AssertionError, OSError: refused, closed at once)
    wait_until(served, 10, "closed connections counted down", interval_s=0.05,
               ignore=(AssertionError, OSError))


@pytest.mark.slow
def test_idle_connection_is_closed_busy_one_is_not(node: tuple[ProcessCluster, int]) -> None:
    _, port = node
    with KafkaConn(port, timeout_s=10) as idle, KafkaConn(port, timeout_s=10) as busy:
        assert idle.request("ApiVersions", 3, {})["ErrorCode"] == 0
        # a long poll in flight for longer than the idle time: not idle
        busy.send("Fetch", 11, {"MaxWaitMs": 2500, "MinBytes": 1, "SessionEpoch": -1,
                                "Topics": []})
        assert idle.closed_by_peer()
        cid, _ = busy.receive("Fetch", 11)
        assert cid == busy.correlation_id


def test_byte_budget_waits_for_room_and_always_fits_one() -> None:
    budget = ByteBudget(100)
    granted: list[str] = []
    # bigger than the limit: fits when nothing else is held
    assert budget.reserve(500, "first", lambda: granted.append("first"))
    assert not budget.reserve(10, "second", lambda: granted.append("second"))
    assert not budget.reserve(20, "third", lambda: granted.append("third"))
    budget.withdraw("third")  # a connection gone while it waited
    assert granted == [] and budget.used == 500
    budget.free(500)
    assert granted == ["second"] and budget.used == 10


@pytest.mark.slow
def test_a_stalled_frame_body_is_dropped(node: tuple[ProcessCluster, int]) -> None:
    """A large frame reserves request memory; its sender stalling for the idle time
    must not hold it: the connection is closed, and a full request still goes through."""
    import struct

    _, port = node
    with KafkaConn(port, timeout_s=10) as stalled:
        stalled.sock.sendall(struct.pack(">i", 1 << 20) + b"\0" * 100)  # 1 MiB promised
        assert stalled.closed_by_peer()
    with KafkaConn(port, timeout_s=10) as other:
        assert other.request("ApiVersions", 3, {})["ErrorCode"] == 0


async def test_a_client_that_never_reads_is_closed_after_the_idle_time() -> None:
    """Its answers cannot be written, so the connection never counts as idle: the
    listener closes it once no answer byte has been taken for the idle time."""
    import socket

    from dmq.kafka.codec import encode_request
    from dmq.kafka.server import Api, KafkaServer

    big = {"ErrorCode": 0, "SessionId": 0, "Responses": [{"Topic": "t", "Partitions": [
        {"PartitionIndex": 0, "ErrorCode": 0, "HighWatermark": 0, "LastStableOffset": 0,
         "LogStartOffset": 0, "AbortedTransactions": None, "PreferredReadReplica": -1,
         "Records": b"x" * (1 << 20)}]}]}
    server = KafkaServer("127.0.0.1", 0, [Api(1, "Fetch", 4, 12, lambda h, b: big)], 1,
                         max_frame_bytes=1 << 20, connections_max_idle_ms=500)
    await server.start()
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", server.port))
        request = {"ReplicaId": -1, "MaxWaitMs": 0, "MinBytes": 0, "MaxBytes": 1 << 30,
                   "IsolationLevel": 0, "SessionId": 0, "SessionEpoch": -1, "Topics": [],
                   "ForgottenTopicsData": [], "RackId": ""}
        for cid in range(32):  # 32 MiB of answers, never read
            await loop.sock_sendall(sock, encode_request("Fetch", 11, cid, "t", request))
        await async_wait_until(lambda: server.stats_requests, 15, "a request read",
                               interval_s=0.01)
        assert server.connection_count == 1
        await async_wait_until(lambda: server.connection_count == 0, 15,
                               "a never-reading client's connection closed")
        assert (server.stats_idle_closed, server.stats_violations) == (1, 0)
    finally:
        sock.close()
        await server.close()


async def test_idle_time_zero_never_closes_as_on_dmqs_listener() -> None:
    from dmq.kafka.codec import decode_response, encode_request
    from dmq.kafka.server import Api, KafkaServer

    server = KafkaServer("127.0.0.1", 0, [Api(18, "ApiVersions", 0, 3, lambda h, b: {
        "ErrorCode": 0, "ApiKeys": server.api_ranges()})], 1, max_frame_bytes=1 << 20,
                         connections_max_idle_ms=0)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        # a stretch of idleness: 0 means never, so no event marks the close not
        # happening; a 0 read as a 0 s idle time closes at the first read, well within
        await asyncio.sleep(0.3)
        assert server.stats_idle_closed == 0
        writer.write(encode_request("ApiVersions", 3, 7, "t", {
            "ClientSoftwareName": "t", "ClientSoftwareVersion": "1"}))
        size = int.from_bytes(await asyncio.wait_for(reader.readexactly(4), 5), "big")
        cid, body = decode_response("ApiVersions", 3, await reader.readexactly(size))
        assert (cid, body["ErrorCode"]) == (7, 0)
        writer.close()
    finally:
        await server.close()


async def test_closing_cancels_every_started_handler() -> None:
    """Handlers still running when the listener closes are cancelled, including the
    one whose answer was waiting for room in the full answer queue."""
    from dmq.kafka.codec import encode_request
    from dmq.kafka.server import Api, KafkaServer

    started: list[asyncio.Future[None]] = []

    async def hang() -> dict[str, object]:
        fut = asyncio.get_running_loop().create_future()
        started.append(fut)
        await fut
        raise AssertionError("never answered")

    server = KafkaServer("127.0.0.1", 0, [Api(18, "ApiVersions", 0, 3, lambda h, b: hang())],
                         1, max_frame_bytes=1 << 20, max_in_flight=1)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        # one being awaited by the writer, one queued, one waiting for queue room
        for cid in range(3):
            writer.write(encode_request("ApiVersions", 3, cid, "t", {
                "ClientSoftwareName": "t", "ClientSoftwareVersion": "1"}))
        await until(lambda: server.stats_requests == 3 and len(started) == 3,
                    "three requests read and their handlers started")
        await server.close()
        await asyncio.sleep(0)  # one loop step: the cancellations land
        assert [f.cancelled() for f in started] == [True, True, True]
    finally:
        writer.close()
        await server.close()
