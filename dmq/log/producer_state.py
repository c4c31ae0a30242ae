"""Idempotent-producer state: the last batches of each producer id.

Applies the rules that turn (producer id, epoch, sequence) into "append", "duplicate of
an earlier batch" or an error, in the spirit of Kafka's ProducerStateManager. The
state is rebuilt from batch headers when the log opens or truncates, so it has no
file of its own. It reads no file and decodes no record.

Rules for a batch with producer_id >= 0 (sequences wrap from 2**31-1 to 0):
- unknown producer id: accepted at any sequence (state may have been lost to
  retention or compaction; a producer must not be wedged by that, as after KIP-360);
- older epoch than known: `InvalidProducerEpochError` (the producer is fenced);
- newer epoch: accepted only at sequence 0, else `OutOfOrderSequenceError`;
- same epoch: a batch equal (first and last sequence) to one of the last
  `max_batches` is a duplicate and the caller gets the original offsets back; any
  other batch must start at last sequence + 1, else `OutOfOrderSequenceError`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import NamedTuple

from dmq.log.batch import BatchHeader
from dmq.log.errors import InvalidProducerEpochError, OutOfOrderSequenceError

SEQUENCE_MASK = 0x7FFFFFFF


class BatchMetadata(NamedTuple):
    first_seq: int
    last_seq: int
    base_offset: int
    last_offset: int
    max_timestamp: int


class ProducerEntry:
    __slots__ = ("batches", "epoch", "producer_id")

    def __init__(self, producer_id: int, epoch: int, max_batches: int) -> None:
        self.producer_id = producer_id
        self.epoch = epoch
        self.batches: deque[BatchMetadata] = deque(maxlen=max_batches)

    @property
    def last_seq(self) -> int:
        return self.batches[-1].last_seq if self.batches else -1


class ProducerStateManager:
    """Per-producer last batches; `check` before appending, `update` after."""

    def __init__(self, max_batches: int = 5) -> None:
        self.max_batches = max_batches
        self._producers: dict[int, ProducerEntry] = {}

    def __len__(self) -> int:
        return len(self._producers)

    def entry(self, producer_id: int) -> ProducerEntry | None:
        return self._producers.get(producer_id)

    def check(self, producer_id: int, producer_epoch: int, first_seq: int,
              last_seq: int) -> BatchMetadata | None:
        """None: append it. A `BatchMetadata`: duplicate of that batch. Raises on errors."""
        if producer_id < 0:
            return None
        e = self._producers.get(producer_id)
        if e is None:
            return None
        if producer_epoch < e.epoch:
            raise InvalidProducerEpochError(
                f"producer {producer_id} epoch {producer_epoch} is older than {e.epoch}")
        if producer_epoch > e.epoch:
            if first_seq != 0:
                raise OutOfOrderSequenceError(
                    f"producer {producer_id} new epoch {producer_epoch} must start at "
                    f"sequence 0, got {first_seq}")
            return None
        for b in e.batches:
            if b.first_seq == first_seq and b.last_seq == last_seq:
                return b
        expected = (e.last_seq + 1) & SEQUENCE_MASK if e.batches else first_seq
        if first_seq != expected:
            raise OutOfOrderSequenceError(
                f"producer {producer_id} epoch {producer_epoch}: expected sequence "
                f"{expected}, got {first_seq}")
        return None

    def update(self, producer_id: int, producer_epoch: int, first_seq: int, last_seq: int,
               base_offset: int, last_offset: int, max_timestamp: int) -> None:
        """Record an appended batch (no validation: also used for replication and reload)."""
        if producer_id < 0:
            return
        e = self._producers.get(producer_id)
        if e is None or producer_epoch > e.epoch:
            e = ProducerEntry(producer_id, producer_epoch, self.max_batches)
            self._producers[producer_id] = e
        elif producer_epoch < e.epoch:
            return
        e.batches.append(BatchMetadata(first_seq, last_seq, base_offset, last_offset,
                                       max_timestamp))

    def update_from_header(self, h: BatchHeader, base_offset: int) -> None:
        if h.producer_id >= 0:
            self.update(h.producer_id, h.producer_epoch, h.base_sequence, h.last_sequence,
                        base_offset, base_offset + h.last_offset_delta, h.max_timestamp)

    def rebuild(self, headers: Iterable[BatchHeader]) -> None:
        self._producers.clear()
        for h in headers:
            if h.producer_id >= 0:
                self.update_from_header(h, h.base_offset)

    def merge(self, later: ProducerStateManager) -> None:
        """Apply `later`, the state built from the batches that follow those this state
        was built from: the same result as updating with each of those batches (a
        producer's entry there holds its last batches of the highest epoch seen, the
        only ones an update keeps)."""
        for pid, e in later._producers.items():
            for b in e.batches:
                self.update(pid, e.epoch, *b)

    def clear(self) -> None:
        self._producers.clear()
