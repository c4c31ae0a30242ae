"""Producer against in-process fake nodes that misbehave on purpose: lost responses,
injected errors, leader moves, slow brokers. Every test checks what reached the log,
not only what the handles said. Tests about time (linger, delivery and blocking
timeouts) run the producer on a `ManualClock` and move time themselves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dmq.client import Producer
from dmq.client.accumulator import ProducerBatch
from dmq.client.errors import IllegalStateError, ProducerClosedError, WouldBlockError
from dmq.client.partitioner import partition_for_key
from dmq.client.serializers import json_serializer, str_serializer
from dmq.clock import ManualClock
from dmq.log.batch import iter_headers
from dmq.protocol.codec import MultiBuffer
from dmq.protocol.errors import (
    ErrorCode,
    LeaderNotAvailableError,
    MessageTooLargeError,
    NetworkError,
    RequestTimedOutError,
    UnknownTopicOrPartitionError,
)
from tests.support.fake_cluster import FakeCluster
from tests.support.waiting import until


async def drive(clock: ManualClock, aw: Any, what: str) -> Any:
    """Await `aw`, advancing `clock` from timer to timer whenever the code under test
    waits on it (e.g. the metadata backoff of a topic's first `send`)."""
    task = asyncio.ensure_future(aw)
    while not task.done():
        await until(lambda: task.done() or clock.next_due_ms() is not None, what, 10)
        due = clock.next_due_ms()
        if not task.done() and due is not None:
            clock.advance(due - clock.monotonic_ms())
        await asyncio.sleep(0)
    return task.result()


@pytest.fixture
async def fake() -> AsyncIterator[FakeCluster]:
    c = await FakeCluster(2).start()
    c.create_topic("t", 3)
    yield c
    await c.stop()


async def test_send_and_wait_keyed_placement_and_idempotent_headers(fake: FakeCluster) -> None:
    async with Producer(fake.bootstrap, linger_ms=0) as p:
        assert p.idempotent and p.producer_id > 0
        md = await p.send_and_wait("t", b"v", key=b"user-1", headers=[("h", b"1")],
                                   timestamp_ms=1234)
        assert md.partition == partition_for_key(b"user-1", 3) == 2  # murmur2, as Kafka
        assert (md.topic, md.offset, md.timestamp) == ("t", 0, 1234)
    data = fake.topics["t"][2].batches[0][3]
    (h,) = list(iter_headers(data))
    assert h.producer_id == p.producer_id and h.base_sequence == 0


async def test_many_sends_batch_and_keep_per_partition_order(fake: FakeCluster) -> None:
    async with Producer(fake.bootstrap, linger_ms=2, batch_size=2048) as p:
        handles = [await p.send("t", b"%d" % i, key=b"k%d" % (i % 5)) for i in range(3000)]
        mds = [await h for h in handles]
    assert fake.produce_requests < 3000 / 5  # batched
    for part in range(3):
        values = [int(v) for _o, v in fake.records("t", part)]
        assert values == sorted(values)
        assert [m.offset for m in mds if m.partition == part] == list(range(len(values)))
    assert sum(len(fake.records("t", i)) for i in range(3)) == 3000


async def test_send_nowait_appends_without_a_coroutine_and_says_when_it_would_block(
        fake: FakeCluster) -> None:
    async with Producer(fake.bootstrap, linger_ms=2, batch_size=4096,
                        buffer_memory=32 * 1024) as p:
        with pytest.raises(WouldBlockError) as info:
            p.send_nowait("t", b"x", key=b"k")  # no metadata for "t" yet
        assert isinstance(info.value, BufferError)
        first = await p.send("t", b"-1", key=b"k0")
        handles = [first]
        blocked = 0
        for i in range(5000):
            value, key = b"%d" % i, b"k%d" % (i % 5)
            try:
                handles.append(p.send_nowait("t", value, key=key))
            except WouldBlockError:  # buffer_memory full: wait for space the usual way
                blocked += 1
                handles.append(await p.send("t", value, key=key))
            if i % 2500 == 0:
                await asyncio.sleep(0)
        mds = [await h for h in handles]
    assert blocked > 0  # 2500 records of ~16 bytes overflow 32 KiB between yields
    values = [int(v) for part in range(3) for _o, v in fake.records("t", part)]
    assert sorted(values) == list(range(-1, 5000))
    for part in range(3):
        got = [int(v) for _o, v in fake.records("t", part)]
        assert got == sorted(got)  # per-partition order kept across the fallbacks
        assert [m.offset for m in mds if m.partition == part] == list(range(len(got)))


async def test_keyless_records_stick_to_one_partition_per_batch(fake: FakeCluster) -> None:
    async with Producer(fake.bootstrap, linger_ms=50, batch_size=1 << 20) as p:
        handles = [await p.send("t", b"x") for _ in range(50)]
        await p.flush()
    assert len({h.result().partition for h in handles}) == 1


async def test_retriable_errors_are_retried_with_metadata_refresh(fake: FakeCluster) -> None:
    failures = {"left": 3}

    def hook(node: Any, body: Any) -> Any:
        if failures["left"]:
            failures["left"] -= 1
            return int(ErrorCode.NOT_LEADER_OR_FOLLOWER)
        return None

    fake.produce_hook = hook
    before = fake.metadata_requests
    async with Producer(fake.bootstrap, linger_ms=0, retry_backoff_ms=10) as p:
        md = await p.send_and_wait("t", b"once", partition=0)
    assert md.offset == 0
    assert fake.records("t", 0) == [(0, b"once")]
    assert fake.metadata_requests > before


async def test_lost_responses_are_retried_and_deduplicated(fake: FakeCluster) -> None:
    """The broker appends but the answer never comes: the retry must not duplicate."""
    fake.answer_first_produces("drop-after-append", 2)
    async with Producer(fake.bootstrap, linger_ms=0, request_timeout_ms=300,
                        retry_backoff_ms=10) as p:
        md = await p.send_and_wait("t", b"exactly-once", partition=2)
    assert fake.records("t", 2) == [(0, b"exactly-once")]
    assert md.offset == 0


async def test_order_kept_across_retries_with_several_in_flight(fake: FakeCluster) -> None:
    """The first request fails after later ones were sent: the later ones get
    OUT_OF_ORDER_SEQUENCE_NUMBER and everything is resent in sequence order."""
    fake.answer_first_produces(int(ErrorCode.REQUEST_TIMED_OUT))
    fake.produce_delay_s = 0.005
    async with Producer(fake.bootstrap, linger_ms=0, batch_size=200, max_in_flight=5,
                        retry_backoff_ms=20) as p:
        handles = [await p.send("t", b"%d" % i, partition=0) for i in range(300)]
        results = await asyncio.gather(*(asyncio.ensure_future(_wait(h)) for h in handles))
    assert all(isinstance(r, int) for r in results)
    values = [int(v) for _o, v in fake.records("t", 0)]
    assert values == list(range(300))
    assert results == list(range(300))


async def _wait(h: Any) -> Any:
    try:
        return (await h).offset
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc


async def test_leader_move_mid_stream(fake: FakeCluster) -> None:
    async with Producer(fake.bootstrap, linger_ms=1, retry_backoff_ms=10) as p:
        first = [await p.send("t", b"a%d" % i, partition=0) for i in range(100)]
        await p.flush()
        fake.move_leader("t", 0, fake.nodes[1].node_id)
        second = [await p.send("t", b"b%d" % i, partition=0) for i in range(100)]
        mds = [await h for h in first + second]
    assert [m.offset for m in mds] == list(range(200))
    assert [v for _o, v in fake.records("t", 0)] == [b"a%d" % i for i in range(100)] + [
        b"b%d" % i for i in range(100)]


async def test_delivery_timeout_fails_the_handle_in_time(fake: FakeCluster) -> None:
    """A batch whose answers are lost is retried until the producer's clock passes
    delivery_timeout_ms, then fails naming the last error: not before, and no later
    than the next retry would have been."""
    fake.produce_hook = lambda node, body: "drop"
    clock = ManualClock()
    async with Producer(fake.bootstrap, linger_ms=0, request_timeout_ms=200,
                        delivery_timeout_ms=600, retry_backoff_ms=10,
                        retry_backoff_max_ms=50, clock=clock) as p:
        handle = await drive(clock, p.send("t", b"lost", partition=0), "metadata of t")
        expires = clock.monotonic_ms() + 600
        old_pid = p.producer_id
        # lost requests time out (200 ms of the connection's own time) and are retried
        # after a backoff on the producer's clock
        await drive(clock, _wait(handle), "the delivery timeout")
        assert expires <= clock.monotonic_ms() <= expires + 60
        assert fake.produce_requests >= 2  # retried meanwhile
        err = handle.exception()
        assert isinstance(err, RequestTimedOutError) and "last error" in str(err), err
        fake.produce_hook = None
        # the failed batch left a sequence gap: the producer renews its id and goes on
        md = await p.send_and_wait("t", b"after", partition=0)
        assert p.producer_id != old_pid
    assert fake.records("t", 0)[-1] == (md.offset, b"after")


async def test_non_retriable_error_fails_only_its_batch(fake: FakeCluster) -> None:
    fake.answer_first_produces(int(ErrorCode.INVALID_RECORD))
    async with Producer(fake.bootstrap, linger_ms=0) as p:
        with pytest.raises(Exception) as info:
            await p.send_and_wait("t", b"bad", partition=1)
        assert getattr(info.value, "code", None) is ErrorCode.INVALID_RECORD
        md = await p.send_and_wait("t", b"good", partition=1)
    assert fake.records("t", 1) == [(md.offset, b"good")]


async def test_buffer_memory_backpressure_bounds_buffered_bytes(fake: FakeCluster) -> None:
    fake.produce_delay_s = 0.01
    limit = 64 * 1024
    peak = 0
    async with Producer(fake.bootstrap, linger_ms=0, batch_size=4096,
                        buffer_memory=limit) as p:
        handles = []
        for i in range(3000):
            handles.append(await p.send("t", b"x" * 100, partition=i % 3))
            peak = max(peak, p.buffered_bytes)
        await asyncio.gather(*(_wait(h) for h in handles))
        assert p.buffered_bytes == 0
    assert peak <= limit
    assert sum(len(fake.records("t", i)) for i in range(3)) == 3000


@pytest.mark.parametrize("idempotent", [False, True])
async def test_round_robin_over_many_partitions_with_a_full_buffer_keeps_every_record_once_in_order(
        idempotent: bool) -> None:
    """Records spread over 60 partitions of 2 brokers with buffer and requests far too
    small for them: the sender drains oldest batches first across partitions, requests
    split, the writer waits for space; with idempotence some answers are lost after the
    append and some requests refused, and the retries must neither reorder nor
    duplicate. Every partition ends with exactly its records, in send order."""
    fake = await FakeCluster(2).start()
    parts, n = 60, 3000
    fake.create_topic("rr", parts)
    fake.produce_delay_s = 0.002
    if idempotent:
        seen = [0]

        def hook(node: Any, body: Any) -> Any:
            seen[0] += 1
            if seen[0] in (5, 11, 17):
                return "drop-after-append"
            if seen[0] in (8, 14):
                return int(ErrorCode.REQUEST_TIMED_OUT)
            return None

        fake.produce_hook = hook
    try:
        async with Producer(fake.bootstrap, acks="all" if idempotent else 1,
                            enable_idempotence=idempotent, linger_ms=1, batch_size=1024,
                            buffer_memory=16 * 1024, max_request_size=4096,
                            max_in_flight=5, request_timeout_ms=300,
                            retry_backoff_ms=10) as p:
            handles = [await p.send("rr", b"%d" % i, partition=i % parts) for i in range(n)]
            results = await asyncio.gather(*(_wait(h) for h in handles))
    finally:
        await fake.stop()
    failed = [r for r in results if not isinstance(r, int)]
    assert not failed, failed[:3]
    for part in range(parts):
        expected = list(range(part, n, parts))
        assert [int(v) for _o, v in fake.records("rr", part)] == expected
        assert results[part::parts] == list(range(len(expected)))
    assert fake.produce_requests >= 10  # split into many requests


async def test_a_lost_answer_is_resent_while_the_broker_still_knows_it_as_a_duplicate(
        ) -> None:
    """An idempotent producer whose produce answer is lost (the batch was appended)
    resends it when its request times out. Answers on a connection may come in any
    order, so while that answer is out later batches of the partition are answered; if
    more than the 5 the broker remembers per producer went through meanwhile, the
    resent batch was refused OUT_OF_ORDER_SEQUENCE_NUMBER (expected 50, got 18) and its
    records reported failed though they were in the log. The producer now sends a new
    batch of a partition only while fewer than max_in_flight sent batches are at or
    after its oldest unanswered one."""
    fake = await FakeCluster(1).start()
    fake.create_topic("w", 1)
    seen = [0]

    def hook(node: Any, body: Any) -> Any:
        seen[0] += 1
        return "drop-after-append" if seen[0] == 2 else None

    fake.produce_hook = hook
    n = 150
    try:
        async with Producer(fake.bootstrap, acks="all", enable_idempotence=True,
                            linger_ms=0, batch_size=64, max_in_flight=5,
                            request_timeout_ms=300, retry_backoff_ms=10) as p:
            handles = []
            for i in range(n):  # spread past the lost answer's timeout
                handles.append(await p.send("w", b"%03d" % i, partition=0))
                await asyncio.sleep(0.004)
            results = await asyncio.gather(*(_wait(h) for h in handles))
    finally:
        await fake.stop()
    failed = [r for r in results if not isinstance(r, int)]
    assert not failed, failed[:3]
    assert [int(v) for _o, v in fake.records("w", 0)] == list(range(n))  # once, in order
    assert results == list(range(n))
    assert seen[0] >= 10  # many requests, one answer lost


async def test_acks_0_and_1_and_compression(fake: FakeCluster) -> None:
    async with Producer(fake.bootstrap, acks=0, linger_ms=0) as p:
        assert not p.idempotent
        md = await p.send_and_wait("t", b"fire", partition=0)
        assert md.offset == -1
    for codec in ("zstd", "lz4"):
        async with Producer(fake.bootstrap, acks=1, compression_type=codec) as p:
            md = await p.send_and_wait("t", b"c" * 1000, partition=2)
            assert md.offset >= 0
    await until(lambda: fake.records("t", 0), "the acks=0 record in the log")
    assert fake.records("t", 0)[-1][1] == b"fire"
    assert [v for _o, v in fake.records("t", 2)] == [b"c" * 1000] * 2


async def test_serializers(fake: FakeCluster) -> None:
    async with Producer(fake.bootstrap, key_serializer=str_serializer,
                        value_serializer=json_serializer) as p:
        md = await p.send_and_wait("t", {"a": 1}, key="user-1")
    assert md.partition == 2  # murmur2 of b"user-1", as Kafka
    assert fake.records("t", 2) == [(0, b'{"a":1}')]


async def test_bad_input_raises_clear_errors(fake: FakeCluster) -> None:
    with pytest.raises(ValueError, match="acks"):
        Producer(fake.bootstrap, acks=2)
    with pytest.raises(ValueError, match="idempotence"):
        Producer(fake.bootstrap, acks=1, enable_idempotence=True)
    with pytest.raises(ValueError, match="bootstrap"):
        Producer("nohostport")
    p = Producer(fake.bootstrap)
    with pytest.raises(IllegalStateError):
        await p.send("t", b"x")
    async with Producer(fake.bootstrap, max_request_size=1000, max_block_ms=300) as p:
        with pytest.raises(MessageTooLargeError):
            await p.send("t", b"x" * 2000)
        with pytest.raises(UnknownTopicOrPartitionError):
            await p.send("t", b"x", partition=7)
    with pytest.raises(ProducerClosedError):
        await p.send("t", b"x")


async def test_unknown_topic_without_auto_create() -> None:
    """`send` to a topic that never appears gives up after max_block_ms of the
    producer's clock, asking for metadata again meanwhile."""
    c = await FakeCluster(1, auto_create=False).start()
    clock = ManualClock()
    try:
        async with Producer(c.bootstrap, max_block_ms=300, retry_backoff_max_ms=200,
                            clock=clock) as p:
            asked = c.metadata_requests
            with pytest.raises(UnknownTopicOrPartitionError, match="missing"):
                await drive(clock, p.send("missing", b"x"), "send to a missing topic")
            assert 300 <= clock.monotonic_ms() < 300 + 200
            assert c.metadata_requests >= asked + 2
    finally:
        await c.stop()


async def test_unreachable_bootstrap_fails_fast() -> None:
    """No node reachable: `start` raises at once, without waiting on the clock (which
    never moves here)."""
    from tests.support.procs import free_ports

    (port,) = free_ports(1)
    with pytest.raises(NetworkError, match="no node reachable"):
        await asyncio.wait_for(Producer(f"127.0.0.1:{port}", clock=ManualClock()).start(), 30)


async def test_linger_holds_a_batch_until_the_clock_reaches_linger_ms(fake: FakeCluster
                                                                      ) -> None:
    """A batch that is not full is sent when it has lingered linger_ms on the producer's
    clock: the sender's timer is set for exactly then, and nothing is sent earlier."""
    clock = ManualClock()
    async with Producer(fake.bootstrap, linger_ms=1000, clock=clock) as p:
        before = fake.produce_requests
        handles = [await drive(clock, p.send("t", b"0", partition=0), "metadata of t")]
        due = clock.monotonic_ms() + 1000
        handles += [await p.send("t", b"%d" % i, partition=0) for i in (1, 2)]
        await until(lambda: clock.next_due_ms() == due, "the sender's linger timer")
        clock.advance(999)
        await asyncio.sleep(0)
        assert clock.next_due_ms() == due and fake.produce_requests == before
        assert not any(h.done() for h in handles)
        clock.advance(1)
        offsets = await asyncio.wait_for(asyncio.gather(*(_wait(h) for h in handles)), 10)
        assert offsets == [0, 1, 2]
        assert fake.produce_requests == before + 1  # one batch


async def test_close_delivers_what_was_accumulated(fake: FakeCluster) -> None:
    p = Producer(fake.bootstrap, linger_ms=10_000)
    await p.start()
    handles = [await p.send("t", b"%d" % i, partition=0) for i in range(10)]
    await p.close()
    assert [h.result().offset for h in handles] == list(range(10))


async def test_metadata_errors_are_retried_until_max_block_ms(fake: FakeCluster) -> None:
    """A node without metadata yet (restarting) answers LEADER_NOT_AVAILABLE: a send to
    a topic seen for the first time keeps asking until max_block_ms instead of raising
    the retriable error at once."""
    async with Producer(fake.bootstrap, linger_ms=0, max_block_ms=30_000) as p:
        failures = {"left": 3}

        def not_ready(node: Any, body: Any) -> None:
            if failures["left"] > 0:
                failures["left"] -= 1
                raise LeaderNotAvailableError("broker has no metadata yet")

        fake.metadata_hook = not_ready
        fake.create_topic("later", 1)
        md = await p.send_and_wait("later", b"v")
        assert failures["left"] == 0 and md.offset == 0


async def test_large_records_go_by_reference_and_a_retry_resends_the_same_bytes(
        fake: FakeCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch of 100 KiB records is sealed as parts (the values by reference); the
    answer to its first send is lost, so it goes again: stored once, its records whole."""
    sealed_as: list[Any] = []
    seal = ProducerBatch.seal

    def spy(self: ProducerBatch, *args: Any) -> Any:
        sealed_as.append(seal(self, *args))
        return sealed_as[-1]

    monkeypatch.setattr(ProducerBatch, "seal", spy)
    fake.answer_first_produces("drop-after-append", 1)
    values = [bytes([i]) * 102_400 for i in range(5)]
    async with Producer(fake.bootstrap, linger_ms=50, request_timeout_ms=300,
                        retry_backoff_ms=10, batch_size=1 << 20) as p:
        handles = [await p.send("t", v, partition=1) for v in values]
        sealed = handles[0].batch_future
        await p.flush()
        assert [(await h).offset for h in handles] == [0, 1, 2, 3, 4]
        assert sealed.done()
    assert fake.records("t", 1) == list(enumerate(values))
    (data,) = [b[3] for b in fake.topics["t"][1].batches]
    (h,) = list(iter_headers(data))
    assert h.record_count == 5
    (parts,) = sealed_as  # sealed once, sent twice
    assert type(parts) is MultiBuffer and bytes(parts)[16:] == bytes(data)[16:]  # but stamps
    assert [p for p in parts.parts if len(p) == 102_400] == values
    assert all(a is b for a, b in zip(parts.parts[1::2], values, strict=True))
