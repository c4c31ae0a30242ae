"""Leader-epoch cache: epoch -> first offset written in that epoch (Kafka's KIP-101).

Keeps the `leader-epoch-checkpoint` file of one partition and answers the queries
followers use to find where their log diverges from a new leader's. Entries only grow
in both epoch and start offset; truncation of the log calls the truncation hooks
here. It never reads the log itself.

Durability (Kafka's KAFKA-15046): the file is derived data. Every batch carries its
partition leader epoch, so the entries of the log's tail can be rebuilt from the batch
headers, and `PartitionLog` does so on an unclean open from its recovery point. Hence,
with a `CheckpointFlusher`:
- additions (`assign`, a new leadership or the first batch of an epoch) and moves of the
  start (`truncate_from_start`) change memory only; the flusher writes the file in the
  background (atomically, without fsync: it survives a process crash), many partitions
  per pass;
- removals at the end (`truncate_from_end`, `clear`: the log was truncated) are written
  and fsynced before they return, so entries of truncated-away data never come back;
- `flush()` makes the file current and durable; the log calls it before each meta
  checkpoint (flush, roll, truncation, retention, close), so entries starting below a
  durable recovery point are always durable (the open trusts them and rebuilds only
  the rest). Those calls already fsync; the flusher's passes stay off the disk's queue,
  which thousands of new leaderships at once would otherwise fill.
Without a flusher every change is written and fsynced at once.
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_right

from dmq.log.checkpoint import read_entries, write_entries

log = logging.getLogger("dmq.log")
UNDEFINED_EPOCH = -1
UNDEFINED_OFFSET = -1
FILE_NAME = "leader-epoch-checkpoint"


# Seconds between the background flusher's passes: the longest a new entry waits to be
# written (a crash before it loses only entries of epochs with no batch yet: the open
# rebuilds the others from the log, and the next leadership assigns its epoch again).
FLUSH_INTERVAL_S = 1.0


class LeaderEpochCache:
    """Sorted (epoch, start_offset) entries and their checkpoint file (see the module
    docstring for when the file is written). Changes are made under the owning log's
    lock; `flush` may run in the flusher's thread (it reads a published snapshot)."""

    def __init__(self, path: str, sync: bool = True,
                 flusher: CheckpointFlusher | None = None) -> None:
        self.path = path
        self._sync = sync
        self._flusher = flusher
        self._epochs: list[int] = []
        self._starts: list[int] = []
        self._file_lock = threading.Lock()  # one write of the file at a time
        self._version = 0  # changes so far
        self._written_version = 0  # the version the file holds (maybe not fsynced)
        self._synced_version = 0  # the version the file holds fsynced (if `sync`)
        self._snapshot: tuple[int, tuple[tuple[int, int], ...]] = (0, ())
        self._discarded = False
        self._deferred = False
        rows = read_entries(path)
        # False: the file is missing or did not parse whole (the log rebuilds from itself)
        self.file_intact = rows is not None
        for row in rows or ():
            try:
                epoch, start = int(row[0]), int(row[1])
            except (IndexError, ValueError):
                log.warning("bad leader epoch entry %r in %s; dropping the file", row, path)
                self._epochs, self._starts = [], []
                self.file_intact = False
                break
            if self._epochs and (epoch <= self._epochs[-1] or start < self._starts[-1]):
                log.warning("unordered leader epoch entries in %s; keeping the prefix", path)
                self.file_intact = False
                break
            self._epochs.append(epoch)
            self._starts.append(start)
        self._snapshot = (0, tuple(self.entries))

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
        self._changed(durable=False)

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
        self._changed(durable=True)

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
        self._changed(durable=False)

    def clear(self) -> None:
        self._epochs, self._starts = [], []
        self._changed(durable=True)

    def rebuild(self, entries: list[tuple[int, int]]) -> None:
        """Replace every entry (the log rebuilt them from its batch headers); written
        as an addition is."""
        self._epochs = [e for e, _ in entries]
        self._starts = [s for _, s in entries]
        self._changed(durable=False)

    # ------------------------------------------------------------------ the file

    @property
    def dirty(self) -> bool:
        """True while the file (or its fsync) lags the entries."""
        return self._synced_version != self._version

    @property
    def version(self) -> int:
        return self._version

    def defer_writes(self, deferred: bool) -> None:
        """While deferred (a log being opened), changes stay in memory; the opener then
        decides how to write them (`flush` or `schedule_flush`)."""
        self._deferred = deferred

    def _changed(self, durable: bool) -> None:
        self._version += 1
        self._snapshot = (self._version, tuple(zip(self._epochs, self._starts, strict=True)))
        if self._deferred:
            return
        if durable or self._flusher is None:
            self.flush()
        else:
            self._flusher.schedule(self)

    def schedule_flush(self) -> None:
        """Have the flusher (or, without one, this call) write the file if it lags."""
        if self._flusher is None:
            self.flush()
        elif self._written_version != self._version:
            self._flusher.schedule(self)

    def flush(self) -> None:
        """Write and fsync (if `sync`) the entries unless the file already holds them
        durably. Thread-safe against the owner's changes. Raises OSError."""
        with self._file_lock:
            version, entries = self._snapshot
            if self._discarded or version == self._synced_version:
                return
            write_entries(self.path, entries, self._sync)
            self._written_version = self._synced_version = version

    def write_back(self) -> None:
        """Write the entries without fsync unless the file already holds them (the
        flusher's call). Thread-safe against the owner's changes. Raises OSError."""
        with self._file_lock:
            version, entries = self._snapshot
            if self._discarded or version == self._written_version:
                return
            write_entries(self.path, entries, sync=False)
            self._written_version = version

    def discard(self) -> None:
        """Write the file no more (the log is deleted or abandoned); waits for a write
        in progress."""
        with self._file_lock:
            self._discarded = True


class CheckpointFlusher:
    """Writes the files of changed leader-epoch caches in one thread, every `interval_s`,
    all the caches changed since the last pass in that pass (each once, so the work of a
    pass is bounded by the number of logs), without fsync: the log's next checkpoint
    makes them durable (`LeaderEpochCache.flush`). A failed write is logged; the cache
    stays dirty and that checkpoint writes it or fails with the error. The thread starts
    with the first scheduled cache (unless not `autostart`: then only `run_once` writes,
    as tests that crash in between do); `stop` ends it after a last pass."""

    def __init__(self, interval_s: float = FLUSH_INTERVAL_S, autostart: bool = True) -> None:
        self.interval_s = interval_s
        self.autostart = autostart
        self._pending: dict[int, LeaderEpochCache] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.passes = 0

    def schedule(self, cache: LeaderEpochCache) -> None:
        with self._lock:
            self._pending[id(cache)] = cache
            if self._thread is None and self.autostart and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name="dmq-epoch-checkpoint-flusher")
                self._thread.start()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def run_once(self) -> int:
        """Flush every cache scheduled so far; returns how many were scheduled."""
        with self._lock:
            batch = list(self._pending.values())
            self._pending.clear()
        for cache in batch:
            try:
                cache.write_back()
            except OSError as exc:
                log.warning("cannot write leader epoch checkpoint %s: %s", cache.path, exc)
        self.passes += 1
        return len(batch)

    def stop(self, timeout_s: float | None = None) -> bool:
        """Stop the thread after a last pass; False if it is still busy after `timeout_s`."""
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                return False
        self.run_once()
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - the thread must outlive one bad pass
                log.exception("leader epoch checkpoint flusher pass failed")


_default_flusher: CheckpointFlusher | None = None
_default_lock = threading.Lock()


def default_flusher() -> CheckpointFlusher:
    """The process's shared flusher, used by logs opened without one (its daemon thread
    starts with the first change; logs flush their own file on close)."""
    global _default_flusher
    with _default_lock:
        if _default_flusher is None:
            _default_flusher = CheckpointFlusher()
        return _default_flusher
