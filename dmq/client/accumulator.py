"""The producer's record accumulator: per-partition queues of batches being filled,
waiting to be sent, or waiting to be retried, and the per-record handles.

Owns: `RecordAccumulator` (the queues of every partition, the queues holding unsent
batches oldest first, the batches not yet answered, and the `buffer_memory` they hold),
`ProducerBatch` (one `BatchBuilder` from `dmq.log.batch`, one future, its
sequence numbers once assigned), `PartitionQueue` (the batches of one partition in
send order and its next sequence number), and `RecordHandle` (what `send` returns:
the batch and the record's index in it, nothing else).

Hot-path contract: appending a record creates no future, no task and no callback;
it appends one small list to the open batch. The batch's single future resolves to
its base offset and every handle derives its record's offset from it.

A batch is *sealed* (encoded to bytes, sequence numbers fixed) the first time it is
drained for sending and is resent byte for byte on retry, so the broker can
deduplicate it. Retried batches go back to the front of their queue in sequence
order; while a partition has a batch waiting for retry it sends one request at a time,
which keeps records in order across retries (Kafka's rule with idempotence).

The `Producer` façade appends records here; the `Sender` (`sender.py`) drains the
queues and resolves the batches. Never imports the network: the sender does the I/O.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Generator, Sequence
from typing import Any, NamedTuple

from dmq.client.records import RecordMetadata
from dmq.log.batch import BatchBuilder
from dmq.protocol.codec import MultiBuffer


class ProducerBatch:
    __slots__ = ("attempts", "base_sequence", "builder", "created_ms", "future", "last_error",
                 "partition", "queue", "reserved_bytes", "retry_at_ms", "sealed", "settled",
                 "topic")

    def __init__(self, queue: PartitionQueue, builder: BatchBuilder, now_ms: int,
                 future: asyncio.Future[int]) -> None:
        self.queue = queue
        self.topic = queue.topic
        self.partition = queue.partition
        self.builder = builder
        self.created_ms = now_ms
        self.future = future
        self.sealed: bytes | MultiBuffer | None = None
        self.attempts = 0
        self.retry_at_ms = 0
        self.base_sequence = -1
        self.reserved_bytes = 0
        self.last_error: BaseException | None = None  # the last failed attempt's error
        self.settled = False  # answered or failed for good (`PartitionQueue.window`)

    @property
    def record_count(self) -> int:
        return self.builder.record_count

    @property
    def size_bytes(self) -> int:
        return len(self.sealed) if self.sealed is not None else self.builder.estimated_size_bytes

    def seal(self, producer_id: int, producer_epoch: int, base_sequence: int
             ) -> bytes | MultiBuffer:
        b = self.builder
        b.producer_id = producer_id
        b.producer_epoch = producer_epoch
        b.base_sequence = base_sequence
        self.base_sequence = base_sequence
        # a batch of large records keeps their values as its parts (no copy, no fresh
        # pages per batch); retries resend the same parts, so the same bytes
        parts = b.seal_parts()
        self.sealed = parts[0] if len(parts) == 1 else MultiBuffer(parts)
        return self.sealed

    def __repr__(self) -> str:
        return (f"ProducerBatch({self.topic}-{self.partition} records={self.record_count} "
                f"seq={self.base_sequence} attempts={self.attempts})")


class PartitionQueue:
    """Batches of one partition in send order; the last may still be filling (`open`)."""

    __slots__ = ("batches", "confirmed", "in_flight", "next_sequence", "open", "partition",
                 "topic", "window")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.batches: deque[ProducerBatch] = deque()
        self.open: ProducerBatch | None = None
        self.in_flight = 0
        self.next_sequence = 0
        # an answer was received under the current producer id: the broker knows our
        # sequence, so pipelining is safe (before that a broker accepts any first
        # sequence, and a failed first batch would let the second one jump ahead)
        self.confirmed = False
        # sequenced batches sent, from the oldest one not answered yet (settled: answered
        # or failed for good, left of it): an idempotent producer sends a new batch only
        # while fewer than `max_in_flight` (<= 5, the batches a broker remembers per
        # producer) are in it, so a batch resent after its answer was lost or late is
        # still within what the broker can recognise as a duplicate, however many later
        # batches of the partition were answered meanwhile (answers on one connection
        # may come in any order; Kafka's come in request order, which bounds it there)
        self.window: deque[ProducerBatch] = deque()

    @property
    def retrying(self) -> bool:
        """A batch that was sent before is waiting at the front for its retry."""
        return bool(self.batches) and self.batches[0].sealed is not None

    def settle(self, batch: ProducerBatch) -> None:
        """`batch` was answered or failed for good: the window slides past every settled
        batch at its start."""
        window = self.window
        if batch.base_sequence < 0 or not window:
            return
        batch.settled = True
        while window and window[0].settled:
            window.popleft()

    def requeue(self, batch: ProducerBatch) -> None:
        """Put a sent batch back in front, in sequence order among sent batches."""
        i = 0
        batches = self.batches
        while (i < len(batches) and batches[i].sealed is not None
               and 0 <= batches[i].base_sequence < batch.base_sequence):
            i += 1
        batches.insert(i, batch)


class RecordAccumulator:
    """The batches a producer holds, by partition, and the buffer memory they take.

    `queues` maps topic -> partition -> `PartitionQueue`; `pending` holds the queues
    with batches not yet sent (what the sender scans), oldest first: a dict used as an
    ordered set, a queue enters at the end when it gets a batch to send and goes back
    to the end when its first batch is drained and it still has more, so the sender
    drains the batches that waited longest first (round-robin over partitions, as
    Kafka's drain index does) and can stop scanning once its requests are full;
    `incomplete` the batches
    not yet answered. `buffered_bytes` counts the reserved size of every unanswered
    batch; `release` gives it back and wakes writers waiting for space. `flushing` (a
    count of callers waiting for a flush) and `closing` make every batch ready at once.
    `wakeup` is the sender's: called when a queue first gets a batch to send."""

    __slots__ = ("buffer_free", "buffer_memory", "buffered_bytes", "closing", "codec",
                 "flushing", "incomplete", "loop", "pending", "queues", "wakeup")

    def __init__(self, codec: int, buffer_memory: int) -> None:
        self.codec = codec
        self.buffer_memory = buffer_memory
        self.queues: dict[str, dict[int, PartitionQueue]] = {}
        self.pending: dict[PartitionQueue, None] = {}
        self.incomplete: set[ProducerBatch] = set()
        self.buffered_bytes = 0
        self.flushing = 0
        self.closing = False
        self.buffer_free: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.wakeup: Callable[[], None] = _nothing

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.buffer_free = asyncio.Event()
        self.buffer_free.set()

    def new_batch(self, pq: PartitionQueue, now_ms: int) -> ProducerBatch:
        """Open a new batch at the end of `pq` (the sender is woken if it had nothing
        to send)."""
        loop = self.loop
        assert loop is not None
        batch = ProducerBatch(pq, BatchBuilder(self.codec), now_ms, loop.create_future())
        pq.batches.append(batch)
        pq.open = batch
        self.incomplete.add(batch)
        if not self.pending:
            self.wakeup()  # the sender may be asleep with nothing to time
        self.pending[pq] = None  # a queue already pending keeps its place
        return batch

    def release(self, b: ProducerBatch) -> None:
        """`b` is answered (or failed for good): free its buffer memory."""
        self.incomplete.discard(b)
        self.buffered_bytes -= b.reserved_bytes
        b.reserved_bytes = 0
        if self.buffer_free is not None and self.buffered_bytes <= self.buffer_memory:
            self.buffer_free.set()


def _nothing() -> None:
    return None


class RecordHandle:
    """Awaitable result of `Producer.send`: resolves to `RecordMetadata`.

    Holds only its batch, its index in the batch and its timestamp; the offset is the
    batch's base offset plus the index.
    """

    __slots__ = ("_batch", "_index", "_timestamp")

    def __init__(self, batch: ProducerBatch, index: int, timestamp: int) -> None:
        self._batch = batch
        self._index = index
        self._timestamp = timestamp

    def _metadata(self, base_offset: int) -> RecordMetadata:
        b = self._batch
        return RecordMetadata(b.topic, b.partition,
                              base_offset + self._index if base_offset >= 0 else -1,
                              self._timestamp)

    def __await__(self) -> Generator[Any, None, RecordMetadata]:
        fut = self._batch.future
        if not fut.done():
            yield from fut.__await__()
        return self._metadata(fut.result())

    def done(self) -> bool:
        return self._batch.future.done()

    def result(self) -> RecordMetadata:
        """The metadata, or raise the send's error (`InvalidStateError` if not done)."""
        return self._metadata(self._batch.future.result())

    def exception(self) -> BaseException | None:
        return self._batch.future.exception()

    @property
    def batch_future(self) -> asyncio.Future[int]:
        """The one future shared by every record of this handle's batch (resolves to the
        batch's base offset). Tools that time deliveries hook it once per batch."""
        return self._batch.future

    def add_done_callback(self, fn: Callable[[RecordHandle], Any]) -> None:
        """Call `fn(handle)` once the send completes (one callback per handle: use for
        few records; the batch future itself carries no per-record state)."""
        self._batch.future.add_done_callback(lambda _f: fn(self))

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"<RecordHandle {self._batch.topic}-{self._batch.partition}#{self._index} {state}>"


class BatchSegment(NamedTuple):
    """What one `send_many` call put in one producer batch: `record_count` records
    starting at `first_index` in the batch; `positions` are their places
    in the call's `values` (a `range`, or a list when keys spread the call over
    partitions)."""

    batch: ProducerBatch
    first_index: int
    record_count: int
    positions: Sequence[int]


class BatchMetadata(NamedTuple):
    """Where a run of acknowledged records of one `send_many` call landed: offsets
    `offset` .. `offset + record_count - 1` of `topic`-`partition` (`offset` -1 with
    acks=0);
    `positions` are the records' places in the call's `values`."""

    topic: str
    partition: int
    offset: int
    record_count: int
    timestamp: int
    positions: Sequence[int]


class ManyHandle:
    """Awaitable result of `Producer.send_many`: one per call, whatever its size.

    Holds one `BatchSegment` per producer batch the call's records went into (a few
    per call; no object per record). Awaiting it waits for every segment's batch and
    returns their `BatchMetadata` in call order, or raises the first failed batch's
    error; `results()` then tells exactly which records failed (a failed batch fails
    its own records only: the other segments may well be delivered).
    """

    __slots__ = ("_timestamp", "segments", "topic")

    def __init__(self, topic: str, timestamp: int) -> None:
        self.topic = topic
        self._timestamp = timestamp
        self.segments: list[BatchSegment] = []

    @property
    def record_count(self) -> int:
        return sum(s.record_count for s in self.segments)

    def _metadata(self, s: BatchSegment) -> BatchMetadata:
        base = s.batch.future.result()
        return BatchMetadata(s.batch.topic, s.batch.partition,
                             base + s.first_index if base >= 0 else -1, s.record_count,
                             self._timestamp,
                             s.positions)

    def __await__(self) -> Generator[Any, None, list[BatchMetadata]]:
        for s in self.segments:
            fut = s.batch.future
            if not fut.done():
                yield from fut.__await__()
        return [self._metadata(s) for s in self.segments]

    def done(self) -> bool:
        return all(s.batch.future.done() for s in self.segments)

    def results(self) -> list[BatchMetadata | BaseException]:
        """Per segment (all must be done): its metadata, or its batch's error."""
        out: list[BatchMetadata | BaseException] = []
        for s in self.segments:
            exc = s.batch.future.exception()
            out.append(exc if exc is not None else self._metadata(s))
        return out

    @property
    def batch_futures(self) -> list[asyncio.Future[int]]:
        """The futures of the batches holding this call's records (one per segment;
        a batch shared by two segments appears twice)."""
        return [s.batch.future for s in self.segments]

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"<ManyHandle {self.topic} records={self.record_count} {state}>"


__all__ = ["BatchMetadata", "BatchSegment", "ManyHandle", "PartitionQueue", "ProducerBatch",
           "RecordAccumulator", "RecordHandle"]
