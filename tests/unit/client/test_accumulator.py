"""Batches and per-record handles: one future per batch, offsets derived from it."""

from __future__ import annotations

import asyncio

import pytest

from dmq.client.accumulator import PartitionQueue, ProducerBatch, RecordHandle
from dmq.client.records import RecordMetadata
from dmq.log.batch import read_header, validate_batches
from dmq.protocol.errors import NotLeaderOrFollowerError


def _batch(pq: PartitionQueue) -> ProducerBatch:
    from dmq.log.batch import BatchBuilder

    b = ProducerBatch(pq, BatchBuilder(), 0, asyncio.get_running_loop().create_future())
    pq.batches.append(b)
    return b


async def test_handles_resolve_from_the_batch_future() -> None:
    pq = PartitionQueue("t", 2)
    b = _batch(pq)
    handles = [RecordHandle(b, b.builder.append(1000 + i, None, b"v%d" % i), 1000 + i)
               for i in range(3)]
    assert not handles[0].done()
    b.future.set_result(40)
    assert [await h for h in handles] == [RecordMetadata("t", 2, 40 + i, 1000 + i)
                                          for i in range(3)]
    assert handles[2].result().offset == 42
    assert handles[0].batch_future is handles[2].batch_future


async def test_handle_raises_the_batch_error_and_callbacks_fire() -> None:
    pq = PartitionQueue("t", 0)
    b = _batch(pq)
    h = RecordHandle(b, b.builder.append(0, None, b"x"), 0)
    seen = []
    h.add_done_callback(lambda hh: seen.append(hh.exception()))
    b.future.set_exception(NotLeaderOrFollowerError("gone"))
    with pytest.raises(NotLeaderOrFollowerError):
        await h
    await asyncio.sleep(0)
    assert isinstance(seen[0], NotLeaderOrFollowerError)


async def test_acks0_offsets_are_minus_one() -> None:
    pq = PartitionQueue("t", 0)
    b = _batch(pq)
    h = RecordHandle(b, b.builder.append(0, None, b"x"), 0)
    b.future.set_result(-1)
    assert (await h).offset == -1


async def test_seal_sets_producer_fields_and_is_reused() -> None:
    pq = PartitionQueue("t", 0)
    b = _batch(pq)
    for i in range(5):
        b.builder.append(i, b"k", b"v")
    data = b.seal(77, 3, 10)
    (h,) = validate_batches(data)
    assert (h.producer_id, h.producer_epoch, h.base_sequence, h.record_count) == (77, 3, 10, 5)
    assert b.sealed is data and b.size_bytes == len(data)
    assert read_header(data).last_sequence == 14


async def test_requeue_keeps_sequence_order_ahead_of_new_batches() -> None:
    pq = PartitionQueue("t", 0)
    fresh = _batch(pq)  # not yet sent
    sent = []
    for seq in (0, 10, 20):
        b = ProducerBatch(pq, fresh.builder.__class__(), 0,
                          asyncio.get_running_loop().create_future())
        b.builder.append(0, None, b"x")
        b.seal(1, 0, seq)
        sent.append(b)
    pq.requeue(sent[2])
    pq.requeue(sent[0])
    pq.requeue(sent[1])
    assert [b.base_sequence for b in pq.batches] == [0, 10, 20, -1]
    assert pq.retrying
