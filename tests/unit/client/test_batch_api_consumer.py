"""The consumer's batch API (`getmany_batches`, `getmany_values`, `values_batches`,
`commit_batch`) against in-process fake nodes: the same records as `getmany`, lazily
built, positions and offsets per batch, and the error paths."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from dmq.client import Consumer, Producer, TopicPartition
from dmq.client.consumer import ConsumedBatch
from dmq.client.serializers import str_deserializer
from dmq.protocol.errors import CorruptMessageError
from tests.support.fake_cluster import FakeCluster

T0 = TopicPartition("t", 0)


@pytest.fixture
async def fake() -> AsyncIterator[FakeCluster]:
    c = await FakeCluster(1).start()
    c.create_topic("t", 1)
    yield c
    await c.stop()


async def _fill(fake: FakeCluster, n: int, batch_size: int = 1024) -> list[bytes]:
    values = [b"value-%04d" % i for i in range(n)]
    async with Producer(fake.bootstrap, linger_ms=0, acks=1, batch_size=batch_size) as p:
        await (await p.send_many("t", values, partition=0, headers=[("h", b"1")],
                                 timestamp_ms=1000))
    return values


async def _all(c: Consumer, n: int, get: Any) -> list[Any]:
    out: list[Any] = []
    while len(out) < n:
        got = await get(timeout_ms=2000)
        assert got, "no data within 2 s"
        for items in got.values():
            out += items
    return out


async def test_batches_hold_the_records_getmany_hands_out(fake: FakeCluster) -> None:
    values = await _fill(fake, 500)
    async with Consumer(fake.bootstrap, auto_offset_reset="earliest") as c:
        c.assign([T0])
        batches = await _all(c, 1, c.getmany_batches)
        while sum(map(len, batches)) < 500:
            batches += (await c.getmany_batches(timeout_ms=2000)).get(T0, [])
        assert await c.position(T0) == 500
    assert len(batches) > 5 and all(isinstance(b, ConsumedBatch) for b in batches)
    assert [v for b in batches for v in b.values] == values
    assert [b.first_offset for b in batches[1:]] == [b.next_offset for b in batches[:-1]]
    async with Consumer(fake.bootstrap, auto_offset_reset="earliest") as c:
        c.assign([T0])
        records = await _all(c, 500, c.getmany)
    assert [r for b in batches for r in b.records] == records
    assert records[7].headers == (("h", b"1"),) and records[7].timestamp == 1000


async def test_values_after_a_split_batch_and_a_seek(fake: FakeCluster) -> None:
    values = await _fill(fake, 200)
    async with Consumer(fake.bootstrap, auto_offset_reset="earliest",
                        value_deserializer=str_deserializer) as c:
        c.assign([T0])
        got = await c.getmany(timeout_ms=2000, max_records=3)  # splits the first batch
        assert [r.value for r in got[T0]] == ["value-0000", "value-0001", "value-0002"]
        rest = await _all(c, 197, c.getmany_values)
        assert rest == [v.decode() for v in values[3:]]
        c.seek(T0, 150)  # into the middle of a stored batch
        again = await _all(c, 50, c.getmany_values)
        assert again == [v.decode() for v in values[150:]]
        c.seek(T0, 150)
        (b, *_more) = (await c.getmany_batches(timeout_ms=2000))[T0]
        assert b.first_offset == 150 and b.records[0].offset == 150
        assert b.records[0].value == "value-0150"


async def test_values_batches_iterates_and_commit_batch_commits_next_offset(
        fake: FakeCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    values = await _fill(fake, 300)
    committed: list[dict[TopicPartition, int]] = []

    async def commit(self: Consumer, offsets: dict[TopicPartition, int] | None = None) -> None:
        committed.append(dict(offsets or {}))

    monkeypatch.setattr(Consumer, "commit", commit)
    async with Consumer(fake.bootstrap, auto_offset_reset="earliest") as c:
        c.assign([T0])
        seen: list[bytes] = []
        async for batch in c.values_batches(timeout_ms=2000):
            seen += batch.values
            await c.commit_batch(batch)
            if len(seen) >= 300:
                break
    assert seen == values
    assert committed[-1] == {T0: 300}
    assert [o[T0] for o in committed] == sorted(o[T0] for o in committed)


async def test_a_corrupt_batch_stops_the_batch_api_at_that_batch(fake: FakeCluster) -> None:
    await _fill(fake, 300)
    fake.corrupt_fetch = True  # the last byte of every fetch answer flipped
    async with Consumer(fake.bootstrap, auto_offset_reset="earliest") as c:
        c.assign([T0])
        good: list[int] = []
        with pytest.raises(CorruptMessageError, match="CRC"):
            while True:
                got = await c.getmany_batches(timeout_ms=2000)
                good += [b.first_offset for bs in got.values() for b in bs]
        position = await c.position(T0)
        with pytest.raises(CorruptMessageError):  # stays on the bad batch
            await c.getmany_values(timeout_ms=100)
        assert await c.position(T0) == position
