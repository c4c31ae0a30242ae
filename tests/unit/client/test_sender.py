"""The producer's `Sender` on its own: an accumulator filled by hand, a stub cluster
and stub connections whose answers the test gives, and a `ManualClock`. No sockets and
no real time: the sender drains ready batches per leader broker, waits for linger and
retry backoffs on its clock, and resends a failed batch byte for byte."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dmq.client.accumulator import PartitionQueue, ProducerBatch, RecordAccumulator
from dmq.client.sender import Sender
from dmq.clock import ManualClock
from dmq.log.codecs import CODEC_NONE
from dmq.protocol.errors import ErrorCode
from tests.support.waiting import until


class StubConnection:
    """Holds every PRODUCE request until the test answers it."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, Any], asyncio.Future[Any]]] = []

    async def request(self, api_key: Any, body: dict[str, Any], timeout_ms: int) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.requests.append((body, fut))
        return await fut

    def answer(self, i: int, errors: dict[int, int] | None = None, base: int = 0) -> None:
        """Answer request `i`: each partition ok at offset `base`, or its error code."""
        body, fut = self.requests[i]
        errors = errors or {}
        fut.set_result({"topics": [[t, [[p, errors.get(p, 0), base] for p, _e, _d in ps]]
                                   for t, ps in body["topics"]]})

    def partitions(self, i: int) -> list[int]:
        return sorted(p for _t, ps in self.requests[i][0]["topics"] for p, _e, _d in ps)

    def data(self, i: int, partition: int) -> bytes:
        return next(d for _t, ps in self.requests[i][0]["topics"] for p, _e, d in ps
                    if p == partition)


class StubCluster:
    """The part of `ClusterClient` the sender uses: leaders, connections, backoff."""

    retry_backoff_ms = 100

    def __init__(self, leaders: dict[int, int]) -> None:
        self.leaders = leaders  # partition of topic "t" -> leader node
        self.conns = {node: StubConnection() for node in set(leaders.values())}
        self.brokers = {node: ("127.0.0.1", 9000 + node) for node in self.conns}
        self.updates = 0

    def leader_for(self, topic: str, partition: int) -> tuple[int, int]:
        return self.leaders.get(partition, -1), 0

    def cached_connection(self, node: int) -> StubConnection | None:
        return self.conns.get(node)

    def backoff_ms(self, attempt: int) -> float:
        return 100.0 * attempt

    def request_update(self) -> None:
        self.updates += 1

    def maybe_refresh_stale(self) -> None:
        return None

    async def controller_request(self, api_key: Any, body: Any) -> Any:
        return {"producer_id": 7, "producer_epoch": 0}


def setup(leaders: dict[int, int], *, linger_ms: int = 0, max_request_size: int = 1 << 20
          ) -> tuple[RecordAccumulator, StubCluster, ManualClock, Sender]:
    acc = RecordAccumulator(CODEC_NONE, 1 << 20)
    acc.start()
    acc.queues["t"] = {p: PartitionQueue("t", p) for p in leaders}
    cluster = StubCluster(leaders)
    clock = ManualClock()
    sender = Sender(acc, cluster, clock, acks=-1, idempotent=True,  # type: ignore[arg-type]
                    linger_ms=linger_ms, batch_size=16_384, max_in_flight=5,
                    max_request_size=max_request_size, request_timeout_ms=30_000,
                    delivery_timeout_ms=120_000)
    acc.wakeup = sender.wakeup
    return acc, cluster, clock, sender


def append(acc: RecordAccumulator, clock: ManualClock, partition: int,
           value: bytes) -> ProducerBatch:
    pq = acc.queues["t"][partition]
    batch = pq.open or acc.new_batch(pq, clock.monotonic_ms())
    batch.builder.append(clock.wall_ms(), None, value, None)
    batch.reserved_bytes += len(value)
    acc.buffered_bytes += len(value)
    return batch


async def test_ready_batches_are_drained_in_one_request_per_leader_broker() -> None:
    acc, cluster, clock, sender = setup({0: 1, 1: 2, 2: 1})
    await sender.init_producer_id()
    batches = [append(acc, clock, p, b"v%d" % p) for p in (0, 1, 2)]
    sender.start()
    one, two = cluster.conns[1], cluster.conns[2]
    await until(lambda: one.requests and two.requests, "a request to each broker")
    assert one.partitions(0) == [0, 2] and two.partitions(0) == [1]
    assert [b.base_sequence for b in batches] == [0, 0, 0]  # sealed under producer id 7
    one.answer(0, base=10)
    two.answer(0, base=20)
    offsets = await asyncio.wait_for(asyncio.gather(*(b.future for b in batches)), 5)
    assert offsets == [10, 20, 10]
    assert acc.buffered_bytes == 0 and not acc.incomplete
    acc.closing = True
    await sender.close(1000)


def sent_order(conn: StubConnection) -> list[list[int]]:
    """The partitions of each request, in request order and in the order they were put."""
    return [[p for _t, ps in body["topics"] for p, _e, _d in ps] for body, _f in conn.requests]


async def test_the_batches_that_waited_longest_are_drained_first() -> None:
    """More ready batches than one request holds: the oldest go first whatever the
    partition (with many partitions each batch then waits as long as any other and
    grows the most); batches opened after the drain go in the order they were opened."""
    acc, cluster, clock, sender = setup({p: 1 for p in range(8)})
    await sender.init_producer_id()
    batches = []
    for p in (6, 2, 7, 0, 5, 3, 1, 4):  # oldest first
        batches.append(append(acc, clock, p, b"x" * 200))
        clock.advance(1)
    sender.max_request_size = 3 * batches[0].size_bytes
    sender.start()
    conn = cluster.conns[1]
    await until(lambda: len(conn.requests) == 3, "three requests")
    assert sent_order(conn) == [[6, 2, 7], [0, 5, 3], [1, 4]]
    for p in (6, 2, 0):
        append(acc, clock, p, b"y" * 200)
    for i in range(3):
        conn.answer(i, base=0)
    await until(lambda: len(conn.requests) == 4, "the next request")
    assert sent_order(conn)[3] == [6, 2, 0]
    conn.answer(3, base=1)
    await asyncio.wait_for(asyncio.gather(*(b.future for b in batches)), 5)
    acc.closing = True
    await sender.close(1000)


async def test_linger_is_waited_on_the_clock() -> None:
    acc, cluster, clock, sender = setup({0: 1}, linger_ms=50)
    batch = append(acc, clock, 0, b"x")
    sender.start()
    await until(lambda: clock.next_due_ms() == 50, "the sender's linger timer")
    assert not cluster.conns[1].requests
    clock.advance(50)
    await until(lambda: cluster.conns[1].requests, "the lingered batch sent")
    cluster.conns[1].answer(0)
    assert await asyncio.wait_for(batch.future, 5) == 0
    acc.closing = True
    await sender.close(1000)


async def test_a_retriable_error_resends_the_same_bytes_after_the_backoff() -> None:
    acc, cluster, clock, sender = setup({0: 1})
    await sender.init_producer_id()
    batch = append(acc, clock, 0, b"x")
    sender.start()
    conn = cluster.conns[1]
    await until(lambda: conn.requests, "the first attempt")
    first = conn.data(0, 0)
    conn.answer(0, errors={0: int(ErrorCode.NOT_LEADER_OR_FOLLOWER)})
    # backoff_ms(1) = 100 ms of the sender's clock before the retry
    await until(lambda: clock.next_due_ms() == 100, "the retry backoff")
    assert len(conn.requests) == 1 and cluster.updates >= 1  # metadata asked for
    clock.advance(100)
    await until(lambda: len(conn.requests) == 2, "the retry")
    assert conn.data(1, 0) == first  # same sequence, same bytes: the broker dedupes
    conn.answer(1, base=3)
    assert await asyncio.wait_for(batch.future, 5) == 3
    assert batch.attempts == 2
    acc.closing = True
    await sender.close(1000)


@pytest.mark.parametrize("answered", [False, True])
async def test_close_fails_what_is_not_answered_within_its_timeout(answered: bool) -> None:
    acc, cluster, clock, sender = setup({0: 1})
    batch = append(acc, clock, 0, b"x")
    sender.start()
    await until(lambda: cluster.conns[1].requests, "the request")
    acc.closing = True
    closing = asyncio.ensure_future(sender.close(500))
    if answered:
        cluster.conns[1].answer(0, base=4)
    else:
        await until(lambda: clock.next_due_ms() == 500, "the close timeout")
        clock.advance(500)
    await asyncio.wait_for(closing, 5)
    if answered:
        assert batch.future.result() == 4
    else:
        assert "closed before delivery" in str(batch.future.exception())
        cluster.conns[1].requests[0][1].cancel()  # the request task ends too
    assert acc.buffered_bytes == 0
