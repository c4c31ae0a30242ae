"""Consumer against in-process fake nodes: positions, seeks, list offsets, pause,
prefetching, CRC checks, out-of-range resets, leader moves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from dmq.client import Consumer, Producer, TopicPartition
from dmq.client.errors import IllegalStateError, NoOffsetForPartitionError
from dmq.client.serializers import str_deserializer
from dmq.clock import ManualClock
from dmq.protocol.errors import (
    CorruptMessageError,
    OffsetOutOfRangeError,
    UnknownTopicOrPartitionError,
)
from tests.support.fake_cluster import FakeCluster
from tests.support.waiting import until

T0 = TopicPartition("t", 0)
T1 = TopicPartition("t", 1)


@pytest.fixture
async def fake() -> AsyncIterator[FakeCluster]:
    c = await FakeCluster(2).start()
    c.create_topic("t", 2)
    async with Producer(c.bootstrap, linger_ms=1, batch_size=1000) as p:
        for i in range(200):
            await p.send("t", b"v%d" % i, key=b"k%d" % i, partition=i % 2,
                         headers=[("i", b"%d" % i)], timestamp_ms=1_000_000 + i)
        await p.flush()
    yield c
    await c.stop()


async def _drain(c: Consumer, n: int, *tps: TopicPartition) -> list:
    out: list = []
    while len(out) < n:
        got = await c.getmany(*tps, timeout_ms=2000)
        assert got, f"stalled after {len(out)}"
        for recs in got.values():
            out.extend(recs)
    return out


async def test_assign_from_beginning_reads_everything_in_order(fake: FakeCluster) -> None:
    async with Consumer(fake.bootstrap, auto_offset_reset="earliest") as c:
        c.assign([T0, T1])
        assert c.assignment() == {T0, T1}
        recs = await _drain(c, 200)
        by_p = {0: [r for r in recs if r.partition == 0], 1: [r for r in recs if r.partition == 1]}
        assert [r.offset for r in by_p[0]] == list(range(100))
        assert [r.value for r in by_p[1]] == [b"v%d" % i for i in range(1, 200, 2)]
        r = by_p[0][3]
        assert (r.topic, r.key, r.headers, r.timestamp, r.timestamp_type) == (
            "t", b"k6", (("i", b"6"),), 1_000_006, 0)
        assert await c.position(T0) == 100
        assert c.highwater(T0) == 100


async def test_latest_reset_sees_only_new_records(fake: FakeCluster) -> None:
    async with Consumer(fake.bootstrap) as c:
        c.assign([T0])
        assert await c.position(T0) == 100
        async with Producer(fake.bootstrap) as p:
            await p.send_and_wait("t", b"new", partition=0)
        recs = await _drain(c, 1)
        assert [(r.offset, r.value) for r in recs] == [(100, b"new")]


async def test_seek_and_list_offsets(fake: FakeCluster) -> None:
    async with Consumer(fake.bootstrap, value_deserializer=str_deserializer) as c:
        c.assign([T0, T1])
        assert await c.beginning_offsets([T0, T1]) == {T0: 0, T1: 0}
        assert await c.end_offsets([T0, T1]) == {T0: 100, T1: 100}
        c.seek(T0, 57)
        recs = await c.getmany(T0, timeout_ms=2000, max_records=3)
        assert [(r.offset, r.value) for r in recs[T0]] == [(57, "v114"), (58, "v116"),
                                                           (59, "v118")]
        await c.seek_to_beginning(T1)
        assert await c.position(T1) == 0
        await c.seek_to_end(T1)
        assert await c.position(T1) == 100
        # batches hold 10 records here: a timestamp inside a batch maps to that batch
        found = await c.offsets_for_times({T0: 1_000_000, T1: 9_999_999_999})
        assert found[T0] is not None and found[T0].offset == 0
        assert found[T1] is None
        with pytest.raises(ValueError):
            c.seek(T0, -1)
        with pytest.raises(IllegalStateError):
            c.seek(TopicPartition("t", 5), 0)


async def test_max_records_leaves_the_rest_for_later(fake: FakeCluster) -> None:
    async with Consumer(fake.bootstrap, auto_offset_reset="earliest") as c:
        c.assign([T0])
        seen = []
        while len(seen) < 100:
            got = await c.getmany(timeout_ms=2000, max_records=7)
            assert sum(map(len, got.values())) <= 7
            seen += [r.offset for recs in got.values() for r in recs]
        assert seen == list(range(100))


async def test_async_iteration_and_pause_resume(fake: FakeCluster) -> None:
    async with Consumer(fake.bootstrap, auto_offset_reset="earliest") as c:
        c.assign([T0, T1])
        c.pause(T1)
        assert c.paused() == {T1}
        got = []
        async for r in c:
            got.append(r)
            if len(got) == 100:
                break
        assert {r.partition for r in got} == {0}
        assert await c.getmany(timeout_ms=200) == {}
        c.resume(T1)
        recs = await _drain(c, 100)
        assert {r.partition for r in recs} == {1}


async def test_prefetch_keeps_a_fetch_ahead(fake: FakeCluster) -> None:
    async with Consumer(fake.bootstrap, auto_offset_reset="earliest",
                        max_partition_fetch_bytes=200, fetch_max_wait_ms=50) as c:
        c.assign([T0])
        await _drain(c, 5, T0)
        st = c._sub.states[T0]
        # fetched while we were not asking
        await until(lambda: len(st.chunks) >= 1 and fake.fetch_requests >= 2,
                    "a fetch ahead of the application")


async def test_corrupt_batch_is_detected_when_checking_crcs(fake: FakeCluster) -> None:
    fake.corrupt_fetch = True
    async with Consumer(fake.bootstrap, auto_offset_reset="earliest") as c:
        c.assign([T0])
        good: list = []
        with pytest.raises(CorruptMessageError):
            while True:  # the batches before the flipped byte come first, then the error
                got = await c.getmany(timeout_ms=2000)
                good += [r.offset for recs in got.values() for r in recs]
        assert good == list(range(len(good)))
        with pytest.raises(CorruptMessageError):  # stays on the bad batch
            await c.getmany(timeout_ms=100)
    async with Consumer(fake.bootstrap, auto_offset_reset="earliest", check_crcs=False) as c:
        c.assign([T0])
        # without the check the flipped byte goes unnoticed or fails decoding: never a hang
        try:
            await c.getmany(timeout_ms=1000)
        except CorruptMessageError:
            pass


async def test_out_of_range_resets_or_raises(fake: FakeCluster) -> None:
    async with Consumer(fake.bootstrap, auto_offset_reset="earliest") as c:
        c.assign([T0])
        c.seek(T0, 5000)
        recs = await _drain(c, 1)
        assert recs[0].offset == 0
    async with Consumer(fake.bootstrap, auto_offset_reset="none") as c:
        c.assign([T0])
        with pytest.raises(NoOffsetForPartitionError):
            await c.position(T0)
        c.seek(T0, 5000)
        with pytest.raises(OffsetOutOfRangeError):
            await _drain(c, 1)


async def test_leader_move_while_consuming(fake: FakeCluster) -> None:
    async with Consumer(fake.bootstrap, auto_offset_reset="earliest",
                        retry_backoff_ms=10) as c:
        c.assign([T0])
        first = await _drain(c, 100)
        fake.move_leader("t", 0, fake.nodes[1].node_id)
        async with Producer(fake.bootstrap, retry_backoff_ms=10) as p:
            await p.send_and_wait("t", b"after-move", partition=0)
        recs = await _drain(c, 1)
        assert [r.offset for r in first] == list(range(100))
        assert recs[0].value == b"after-move"


async def test_unknown_topic_and_closed_consumer(fake: FakeCluster) -> None:
    c = Consumer(fake.bootstrap, request_timeout_ms=300)
    with pytest.raises(IllegalStateError):
        await c.getmany()
    await c.start()
    with pytest.raises(UnknownTopicOrPartitionError):
        await c.partitions_for_topic("nope", timeout_ms=200)
    await c.close()
    with pytest.raises(IllegalStateError):
        await c.getmany()


@pytest.mark.parametrize("codec", ["zstd", "lz4"])
async def test_compressed_batches_decode(codec: str) -> None:
    c = await FakeCluster(1).start()
    c.create_topic("z", 1)
    try:
        async with Producer(c.bootstrap, compression_type=codec, linger_ms=5) as p:
            for i in range(500):
                await p.send("z", b"value-%d" % i, key=b"k")
            await p.flush()
        async with Consumer(c.bootstrap, auto_offset_reset="earliest") as co:
            tp = TopicPartition("z", 0)
            co.assign([tp])
            co.seek(tp, 123)
            recs = await _drain(co, 500 - 123)
        assert [r.value for r in recs] == [b"value-%d" % i for i in range(123, 500)]
        assert all(r.key == b"k" for r in recs)
    finally:
        await c.stop()


async def test_assigned_partition_that_does_not_exist_raises_once_metadata_agrees(
        fake: FakeCluster) -> None:
    """Partition 7 of a 2-partition topic: getmany keeps returning the partitions that
    exist, then raises UNKNOWN_TOPIC_OR_PARTITION naming the count once metadata has
    denied it for retry_backoff_max_ms; a negative partition is refused at assign."""
    t7 = TopicPartition("t", 7)
    async with Consumer(fake.bootstrap, auto_offset_reset="earliest",
                        retry_backoff_max_ms=200, metadata_max_age_ms=100) as c:
        with pytest.raises(UnknownTopicOrPartitionError, match="numbered from 0"):
            c.assign([TopicPartition("t", -1)])
        c.assign([T0, t7])
        got: list = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        with pytest.raises(UnknownTopicOrPartitionError,
                           match=r"t-7 does not exist: topic 't' has 2 partition\(s\)"):
            while loop.time() < deadline:
                for recs in (await c.getmany(timeout_ms=500)).values():
                    got.extend(recs)
        assert got and [r.offset for r in got] == list(range(len(got)))  # partition 0 read


async def test_getmany_waits_timeout_ms_of_the_consumers_clock(fake: FakeCluster) -> None:
    """getmany's timeout_ms is time of the consumer's clock: with nothing to read it
    returns {} once the clock has moved timeout_ms on, and not before (however many
    fetches come back empty meanwhile)."""
    clock = ManualClock()
    async with Consumer(fake.bootstrap, auto_offset_reset="latest", fetch_max_wait_ms=20,
                        clock=clock) as c:
        c.assign([T0])
        # metadata and the offset reset go at the pace of the consumer's backoffs
        while c.highwater(T0) < 0:
            await until(lambda: c.highwater(T0) >= 0 or clock.next_due_ms() is not None,
                        "the consumer waiting on its clock")
            due = clock.next_due_ms()
            if c.highwater(T0) < 0 and due is not None:
                clock.advance(due - clock.monotonic_ms())
        polled_at = clock.monotonic_ms()
        task = asyncio.ensure_future(c.getmany(timeout_ms=1000))
        await until(lambda: clock.next_due_ms() == polled_at + 1000,
                    "the poll waiting on its timeout")
        clock.advance(999)
        fetches = fake.fetch_requests
        await until(lambda: fake.fetch_requests >= fetches + 3, "empty fetches")
        assert not task.done()
        clock.advance(1)
        assert await asyncio.wait_for(task, 10) == {}
