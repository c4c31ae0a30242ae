"""Byte identity of the batch APIs: the same records through `BatchBuilder.extend` /
`Producer.send_many_nowait` and through the per-record `append` / `send_nowait` give
the same batch bytes. (`send_nowait`, not `await send()`: `send` yields to the sender
after a batch fills, and whether the sender drained it first decides where the next
keyless record sticks, a timing choice, not a format one.)"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dmq.client import Producer
from dmq.log.batch import BatchBuilder
from dmq.log.codecs import CODEC_LZ4, CODEC_NONE, CODEC_ZSTD
from tests.property.log._settings import LOG_SETTINGS
from tests.support.fake_cluster import FakeCluster

blob = st.one_of(st.none(), st.binary(max_size=48))
headers = st.one_of(st.none(), st.lists(st.tuples(st.text(max_size=6), st.binary(max_size=6)),
                                        max_size=2))


@st.composite
def runs(draw: Any, keyed: bool | None = None) -> list[tuple[Any, ...]]:
    """Calls of (timestamp, keys or None, values, headers)."""
    out = []
    for _ in range(draw(st.integers(1, 5))):
        n = draw(st.integers(1, 12))
        if draw(st.booleans()):  # one length: the builder's join path
            size = draw(st.sampled_from([0, 1, 100, 255, 256, 70_000]))
            values = [bytes([i % 256]) * size for i in range(n)]
        else:
            values = draw(st.lists(blob, min_size=n, max_size=n))
        has_keys = draw(st.booleans()) if keyed is None else keyed
        keys = (draw(st.lists(st.binary(min_size=1, max_size=8) if keyed else blob,
                              min_size=n, max_size=n)) if has_keys else None)
        out.append((draw(st.integers(0, 2**40)), keys, values, draw(headers)))
    return out


@LOG_SETTINGS
@given(runs(), st.sampled_from([CODEC_NONE, CODEC_ZSTD, CODEC_LZ4]), st.data())
def test_extend_seals_the_bytes_of_appending_each_record(calls: list[tuple[Any, ...]],
                                                         codec: int, data: Any) -> None:
    """Runs of `extend` (kept whole, or mixed with single `append`s, which turn them
    into per-record tuples) seal to the bytes of one `append` per record."""
    one, bulk = BatchBuilder(codec, 7, 1, 3), BatchBuilder(codec, 7, 1, 3)
    for ts, keys, values, hs in calls:
        first = one.record_count
        for i, v in enumerate(values):
            one.append(ts, None if keys is None else keys[i], v, hs)
        if data.draw(st.integers(0, 3)) == 0:  # now and then: per record on the bulk side
            for i, v in enumerate(values):
                assert bulk.append(ts, None if keys is None else keys[i], v, hs) == first + i
            continue
        assert bulk.extend(ts, keys, values, hs) == first
    assert bulk.record_count == one.record_count
    assert bulk.estimated_size_bytes == one.estimated_size_bytes
    assert bulk.seal(5, 2) == one.seal(5, 2)


async def _produce(calls: list[tuple[Any, ...]], partition: int | None, bulk: bool,
                   batch_size: int) -> dict[int, list[bytes]]:
    fake = await FakeCluster(2).start()
    fake.create_topic("t", 3)
    try:
        async with Producer(fake.bootstrap, linger_ms=10_000, batch_size=batch_size,
                            rng=random.Random(5)) as p:
            await p.send_many("t", [])  # metadata known: nothing below waits or yields
            for ts, keys, values, hs in calls:
                if bulk:
                    p.send_many_nowait("t", values, keys=keys, partition=partition,
                                       headers=hs, timestamp_ms=ts)
                else:
                    for i, v in enumerate(values):
                        p.send_nowait("t", v, key=None if keys is None else keys[i],
                                      partition=partition, headers=hs, timestamp_ms=ts)
            await p.flush()
        return {i: [d for *_x, d in part.batches] for i, part in enumerate(fake.topics["t"])}
    finally:
        await fake.stop()


@settings(LOG_SETTINGS, max_examples=25)
@given(st.one_of(runs(keyed=True), runs(keyed=False)), st.sampled_from([None, 1]),
       st.sampled_from([90, 300, 65_536]))
def test_send_many_stores_the_bytes_of_send_nowait(calls: list[tuple[Any, ...]],
                                                   partition: int | None,
                                                   batch_size: int) -> None:
    """Same placement (keys by murmur2, sticky moves on full batches, an explicit
    partition), same batch splits at `batch_size`, same sequence numbers: the logs
    hold the same bytes."""
    one = asyncio.run(_produce(calls, partition, False, batch_size))
    bulk = asyncio.run(_produce(calls, partition, True, batch_size))
    assert bulk == one
    assert sum(map(len, one.values())) >= 1
