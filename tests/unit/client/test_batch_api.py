"""`Producer.send_many` / `send_many_nowait` against in-process fake nodes: placement,
splitting at batch_size, backpressure, and the error paths (a failed batch fails
exactly its records; nothing is reported delivered that is not in the log)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from dmq.client import Producer
from dmq.client.accumulator import BatchMetadata
from dmq.client.errors import ProducerClosedError, WouldBlockError
from dmq.client.partitioner import partition_for_key
from dmq.log.batch import iter_headers
from dmq.protocol.errors import ErrorCode, MessageTooLargeError, RequestTimedOutError
from tests.support.fake_cluster import FakeCluster


@pytest.fixture
async def fake() -> AsyncIterator[FakeCluster]:
    c = await FakeCluster(2).start()
    c.create_topic("t", 3)
    yield c
    await c.stop()


def _delivered(fake: FakeCluster) -> dict[int, list[tuple[int, bytes | None]]]:
    return {p: fake.records("t", p) for p in range(3)}


async def test_send_many_one_partition_splits_at_batch_size_in_order(fake: FakeCluster) -> None:
    values = [b"%05d" % i for i in range(1000)]
    async with Producer(fake.bootstrap, linger_ms=0, batch_size=1024) as p:
        h = await p.send_many("t", values, partition=2, timestamp_ms=77)
        mds = await h
    assert len(h.segments) > 10  # 17 bytes a record: ~60 records a batch
    assert all(isinstance(m, BatchMetadata) and m.partition == 2 and m.timestamp == 77
               for m in mds)
    assert sum(m.record_count for m in mds) == 1000
    assert [list(m.positions) for m in mds] == [
        list(range(m.offset, m.offset + m.record_count)) for m in mds]
    assert fake.records("t", 2) == list(enumerate(values))
    # sequence numbers continue from batch to batch
    seqs = [(h.base_sequence, h.record_count)
            for *_x, d in fake.topics["t"][2].batches for h in iter_headers(d)]
    assert [s for s, _n in seqs] == [sum(n for _s, n in seqs[:i]) for i in range(len(seqs))]


async def test_send_many_keyed_places_each_key_as_send_does(fake: FakeCluster) -> None:
    keys = [b"k%d" % (i % 7) for i in range(300)]
    values = [b"v%d" % i for i in range(300)]
    async with Producer(fake.bootstrap, linger_ms=0) as p:
        mds = await (await p.send_many("t", values, keys=keys))
    for m in mds:
        for pos in m.positions:
            assert partition_for_key(keys[pos], 3) == m.partition
    for part in range(3):
        want = [v for k, v in zip(keys, values, strict=True) if partition_for_key(k, 3) == part]
        assert [v for _o, v in fake.records("t", part)] == want


async def test_send_many_nowait_appends_all_or_nothing(fake: FakeCluster) -> None:
    async with Producer(fake.bootstrap, linger_ms=0, batch_size=1024,
                        buffer_memory=4096) as p:
        with pytest.raises(WouldBlockError):  # metadata not known yet
            p.send_many_nowait("t", [b"x"])
        await p.send_and_wait("t", b"first", partition=0)
        with pytest.raises(WouldBlockError):  # 100 * 112 bytes > buffer_memory
            p.send_many_nowait("t", [b"x" * 100] * 100, partition=0)
        assert p.buffered_bytes == 0
        h = p.send_many_nowait("t", [b"x" * 100] * 10, partition=0)
        assert p.buffered_bytes == 10 * 112
        await h
        # larger than the whole buffer: send_many goes in parts as space frees up
        h = await p.send_many("t", [b"y" * 100] * 200, partition=1)
        assert sum(m.record_count for m in await h) == 200
    assert len(fake.records("t", 1)) == 200
    with pytest.raises(ProducerClosedError):
        p.send_many_nowait("t", [b"z"], partition=0)


async def test_send_many_refuses_bad_input_before_appending(fake: FakeCluster) -> None:
    async with Producer(fake.bootstrap, linger_ms=0, max_request_size=2000) as p:
        with pytest.raises(MessageTooLargeError, match="max_request_size=2000"):
            await p.send_many("t", [b"a", b"b" * 5000], partition=0)
        with pytest.raises(ValueError, match="2 keys for 3 values"):
            await p.send_many("t", [b"a", b"b", b"c"], keys=[b"k", b"l"])
        with pytest.raises(TypeError, match="a sequence of values, not one bytes"):
            await p.send_many("t", b"abc", partition=0)
        with pytest.raises(ValueError, match="keys must be all set"):
            await p.send_many("t", [b"a", b"b"], keys=[b"k", None])
        assert p.buffered_bytes == 0
    assert _delivered(fake) == {0: [], 1: [], 2: []}


async def test_send_many_larger_than_the_buffer_refuses_a_missing_key_before_appending(
        fake: FakeCluster) -> None:
    """A call larger than `buffer_memory` goes in parts: a key missing from its last
    part is refused before the first part is appended (no record of it is sent)."""
    values = [b"%04d" % i for i in range(400)]
    keys: list[bytes | None] = [b"k%d" % i for i in range(399)] + [None]
    async with Producer(fake.bootstrap, linger_ms=0, batch_size=1024,
                        buffer_memory=2048) as p:
        with pytest.raises(ValueError, match="keys must be all set"):
            await p.send_many("t", values, keys=keys)
        assert p.buffered_bytes == 0
        await p.flush()
    assert _delivered(fake) == {0: [], 1: [], 2: []}


async def test_a_refused_batch_fails_exactly_its_records(fake: FakeCluster) -> None:
    """Partition 1's batches are refused (INVALID_RECORD, not retriable): its segments
    fail, the other partitions' records are delivered and reported as such."""

    def hook(node: Any, body: Any) -> Any:
        if any(p[0] == 1 for _t, ps in body["topics"] for p in ps):
            return int(ErrorCode.INVALID_RECORD)
        return None

    fake.produce_hook = hook
    keys = [b"key-%d" % i for i in range(60)]
    values = [b"v%d" % i for i in range(60)]
    async with Producer(fake.bootstrap, linger_ms=0, acks=1) as p:
        h = await p.send_many("t", values, keys=keys)
        with pytest.raises(Exception) as info:
            await h
        assert getattr(info.value, "code", None) is ErrorCode.INVALID_RECORD
        results = h.results()
    failed = {pos for s, r in zip(h.segments, results, strict=True)
              if isinstance(r, BaseException) for pos in s.positions}
    ok = {pos for r in results if isinstance(r, BatchMetadata) for pos in r.positions}
    on_1 = {i for i, k in enumerate(keys) if partition_for_key(k, 3) == 1}
    assert on_1 and failed == on_1 and ok == set(range(60)) - on_1
    assert fake.records("t", 1) == []
    delivered = {v for part in (0, 2) for _o, v in fake.records("t", part)}
    assert delivered == {values[i] for i in ok}


async def test_a_partition_without_leader_times_out_only_its_records(fake: FakeCluster) -> None:
    """No node leads partition 0: its segment expires after delivery_timeout_ms (naming
    why), partition 2's records are delivered."""
    fake.topics["t"][0].leader = 999  # a node that does not exist
    fake.version += 1
    async with Producer(fake.bootstrap, linger_ms=0, acks=1, request_timeout_ms=300,
                        delivery_timeout_ms=600, retry_backoff_ms=20) as p:
        h0 = await p.send_many("t", [b"a", b"b"], partition=0)
        h2 = await p.send_many("t", [b"c", b"d"], partition=2)
        assert [(m.offset, m.record_count) for m in await h2] == [(0, 2)]
        with pytest.raises(RequestTimedOutError, match="not delivered within"):
            await asyncio.wait_for(asyncio.shield(asyncio.ensure_future(_wait(h0))), 10)
        assert isinstance(h0.results()[0], RequestTimedOutError)
    assert fake.records("t", 0) == [] and fake.records("t", 2) == [(0, b"c"), (1, b"d")]


async def _wait(h: Any) -> Any:
    return await h


async def test_lost_responses_are_deduplicated_for_send_many(fake: FakeCluster) -> None:
    """The first answer is lost after the append: the batch is resent with the same
    sequence and the broker keeps one copy (idempotence through the batch API)."""
    fake.answer_first_produces("drop-after-append")
    async with Producer(fake.bootstrap, linger_ms=0, request_timeout_ms=300,
                        delivery_timeout_ms=5000, retry_backoff_ms=20) as p:
        mds = await (await p.send_many("t", [b"%d" % i for i in range(50)], partition=0))
    assert [(m.offset, m.record_count) for m in mds] == [(0, 50)]
    assert fake.records("t", 0) == [(i, b"%d" % i) for i in range(50)]


async def test_dmq_produce_sends_whole_chunks_and_strips_crlf_across_chunk_ends(
        fake: FakeCluster) -> None:
    """`dmq-produce` without a key separator hands each input chunk to `send_many`:
    lines split across chunks and a CR at a chunk's end still give the exact lines."""
    from dmq.cli.tools import produce

    chunks = [b"one\r\ntw", b"o\r", b"\nthree\n" + b"x" * 10 + b"\n" * 3, b"last", b""]
    out: list[str] = []
    records, _nbytes = await produce(fake.bootstrap, "t", "1", None, [], lambda: chunks.pop(0),
                                     partition=1, linger_ms=0, echo=out.append)
    assert records == 7
    assert [v for _o, v in fake.records("t", 1)] == [
        b"one", b"two", b"three", b"x" * 10, b"", b"", b"last"]


async def test_send_many_keeps_order_and_sequences_across_retries(fake: FakeCluster) -> None:
    """The first of several in-flight requests fails: every batch of the call is
    resent in sequence order, nothing is duplicated, offsets follow call order."""
    fake.answer_first_produces(int(ErrorCode.REQUEST_TIMED_OUT))
    fake.produce_delay_s = 0.005
    async with Producer(fake.bootstrap, linger_ms=0, batch_size=200, max_in_flight=5,
                        retry_backoff_ms=20) as p:
        h = await p.send_many("t", [b"%d" % i for i in range(300)], partition=0)
        mds = await h
    assert len(h.segments) > 10
    assert [int(v) for _o, v in fake.records("t", 0)] == list(range(300))
    assert [(m.offset, list(m.positions)) for m in mds] == [
        (m.offset, list(range(m.offset, m.offset + m.record_count))) for m in mds]
    seqs = [h.base_sequence for *_x, d in fake.topics["t"][0].batches for h in iter_headers(d)]
    assert seqs == sorted(seqs) and seqs[0] == 0


async def test_send_many_failing_after_a_part_was_appended_hands_out_that_part(
        fake: FakeCluster) -> None:
    """A call larger than the buffer waits for space between parts; when that wait
    fails (max_block_ms), the error carries the handle of the records already appended:
    they are delivered, and the handle says which they are."""
    fake.produce_delay_s = 1.0  # the buffer stays full well past max_block_ms
    values = [b"%04d" % i for i in range(400)]
    async with Producer(fake.bootstrap, linger_ms=0, batch_size=1024, buffer_memory=2048,
                        max_block_ms=100) as p:
        with pytest.raises(RequestTimedOutError, match="max_block_ms=100") as err:
            await p.send_many("t", values, partition=1)
        handle = err.value.handle  # type: ignore[attr-defined]
        sent = handle.record_count
        assert 0 < sent < 400
        mds = await handle
    assert [i for m in mds for i in m.positions] == list(range(sent))
    assert [v for _o, v in fake.records("t", 1)] == values[:sent]
