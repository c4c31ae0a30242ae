"""Leader-epoch cache: epoch -> first offset written in that epoch (Kafka's KIP-101).

Keeps the `leader-epoch-checkpoint` file of one partition and answers the queries
followers use to find where their log diverges from a new leader's. Entries only grow
in both epoch and start offset; truncation of the log calls the truncation hooks
here. It never reads the log itself.
"""

from __future__ import annotations

import logging
from bisect import bisect_right

from dmq.log.checkpoint import read_entries, write_entries

log = logging.getLogger("dmq.log")
UNDEFINED_EPOCH = -1
UNDEFINED_OFFSET = -1
FILE_NAME = "leader-epoch-checkpoint"


class LeaderEpochCache:
    """Sorted (epoch, start_offset) entries, persisted on every change (changes are rare)."""

    def __init__(self, path: str, sync: bool = True) -> None:
        self.path = path
        self._sync = sync
        self._epochs: list[int] = []
        self._starts: list[int] = []
        rows = read_entries(path)
        for row in rows or ():
            try:
                epoch, start = int(row[0]), int(row[1])
            except (IndexError, ValueError):
                log.warning("bad leader epoch entry %r in %s; dropping the file", row, path)
                self._epochs, self._starts = [], []
                break
            if self._epochs and (epoch <= self._epochs[-1] or start < self._starts[-1]):
                log.warning("unordered leader epoch entries in %s; keeping the prefix", path)
                break
            self._epochs.append(epoch)
            self._starts.append(start)

    @property
    def entries(self) -> list[tuple[int, int]]:
        return list(zip(self._epochs, self._starts, strict=True))

    @property
    def latest_epoch(self) -> int:
        return self._epochs[-1] if self._epochs else UNDEFINED_EPOCH

    def assign(self, epoch: int, start_offset: int) -> None:
        """Record that `epoch` starts at `start_offset`; a no-op unless the epoch is new."""
        if epoch < 0 or (self._epochs and epoch <= self._epochs[-1]):
            return
        # A newer epoch starting at or below older entries' starts replaces them (the
        # log was truncated and those offsets are being rewritten).
        while self._starts and self._starts[-1] >= start_offset:
            self._epochs.pop()
            self._starts.pop()
        self._epochs.append(epoch)
        self._starts.append(start_offset)
        self._flush()

    def epoch_for_offset(self, offset: int) -> int:
        i = bisect_right(self._starts, offset)
        return self._epochs[i - 1] if i else UNDEFINED_EPOCH

    def end_offset_for_epoch(self, requested_epoch: int,
                             log_end_offset: int) -> tuple[int, int]:
        """(largest epoch <= requested, first offset after it), as Kafka answers
        OffsetsForLeaderEpoch; (UNDEFINED, UNDEFINED) when the cache cannot answer."""
        if requested_epoch == UNDEFINED_EPOCH or not self._epochs:
            return UNDEFINED_EPOCH, UNDEFINED_OFFSET
        if requested_epoch == self._epochs[-1]:
            return requested_epoch, log_end_offset
        i = bisect_right(self._epochs, requested_epoch)  # first entry with epoch > requested
        if i == len(self._epochs):
            return UNDEFINED_EPOCH, UNDEFINED_OFFSET
        if i == 0:
            return requested_epoch, self._starts[0]
        return self._epochs[i - 1], self._starts[i]

    def truncate_from_end(self, end_offset: int) -> None:
        """Forget epochs that start at or after `end_offset` (the log was truncated there)."""
        if not self._starts or self._starts[-1] < end_offset:
            return
        while self._starts and self._starts[-1] >= end_offset:
            self._epochs.pop()
            self._starts.pop()
        self._flush()

    def truncate_from_start(self, start_offset: int) -> None:
        """Drop epochs wholly below the new log start; the one containing it starts there."""
        i = bisect_right(self._starts, start_offset)
        if i == 0 or (i == 1 and self._starts[0] == start_offset):
            return
        keep_epoch = self._epochs[i - 1]
        del self._epochs[: i - 1]
        del self._starts[: i - 1]
        self._epochs[0] = keep_epoch
        self._starts[0] = start_offset
        self._flush()

    def clear(self) -> None:
        self._epochs, self._starts = [], []
        self._flush()

    def _flush(self) -> None:
        write_entries(self.path, self.entries, self._sync)
