"""Stateful test: PartitionLog against an in-memory model of offsets and values.

The leader-epoch checkpoint is written by a flusher the test runs itself
(`flush_epoch_checkpoints`), so a crash may come with the file lagging by any number of
changes; new leaderships (`lead`) assign an epoch before any batch of it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from bisect import bisect_right

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dmq.clock import ManualClock
from dmq.log import LogConfig, PartitionLog, build_batch, iter_records, validate_batches
from dmq.log.epoch_cache import CheckpointFlusher
from tests.property.log._settings import LOG_SETTINGS

CFG = LogConfig(segment_bytes=600, index_interval_bytes=64, segment_index_bytes=128,
                retention_bytes=1500, retention_ms=None)


class LogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="dmq-log-sm-")
        self.clock = ManualClock()
        self.flusher = CheckpointFlusher(autostart=False)
        self.plog = self._open()
        # every batch ever kept (offsets are contiguous): base offsets and values
        self.bases: list[int] = []
        self.values: list[list[bytes]] = []
        self.log_start = 0
        self.leo = 0
        self.epoch = 0
        self.epochs: list[tuple[int, int]] = []

    def _open(self) -> PartitionLog:
        return PartitionLog.open(self.dir, CFG, self.clock, fsync_enabled=False,
                                 epoch_flusher=self.flusher)

    def teardown(self) -> None:
        self.plog.abandon()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _move_log_start(self, new: int) -> None:
        """The leader-epoch rule for a new log start: the epoch containing it starts there."""
        if new <= self.log_start:
            return
        self.log_start = new
        below = [e for e in self.epochs if e[1] < new]
        if below and not any(e[1] == new for e in self.epochs):
            self.epochs = [(below[-1][0], new)] + [e for e in self.epochs if e[1] > new]
        else:
            self.epochs = [e for e in self.epochs if e[1] >= new]

    def _batch_index(self, offset: int) -> int:
        return bisect_right(self.bases, offset) - 1

    @rule(batches=st.lists(st.lists(st.binary(max_size=60), min_size=1, max_size=5),
                           min_size=1, max_size=3), bump=st.booleans())
    def append(self, batches: list[list[bytes]], bump: bool) -> None:
        """One append call of one or more batches (several take the log's other path)."""
        if bump:
            self.epoch += 1
        data = b"".join(build_batch([(None, v) for v in values],
                                    timestamp_ms=self.clock.wall_ms()) for values in batches)
        info = self.plog.append_as_leader(data, self.epoch)
        n = sum(len(values) for values in batches)
        assert (info.base_offset, info.last_offset) == (self.leo, self.leo + n - 1)
        if not self.epochs or self.epoch > self.epochs[-1][0]:
            while self.epochs and self.epochs[-1][1] >= self.leo:
                self.epochs.pop()  # an epoch with no batch left is superseded
            self.epochs.append((self.epoch, self.leo))
        for values in batches:
            self.bases.append(self.leo)
            self.values.append(values)
            self.leo += len(values)
        self.clock.advance(10)

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        offset = data.draw(st.integers(self.log_start, self.leo), label="offset")
        max_bytes = data.draw(st.integers(1, 2000), label="max_bytes")
        hw = data.draw(st.one_of(st.none(), st.integers(offset, self.leo)), label="hw")
        got = self.plog.read(offset, max_bytes, hw)
        limit = self.leo if hw is None else hw
        headers = validate_batches(got) if len(got) else []
        if offset >= limit:
            assert not headers
            return
        i = self._batch_index(offset)
        first_last = self.bases[i] + len(self.values[i]) - 1
        if first_last >= limit:
            assert not headers
            return
        assert headers, "at least one batch must come back"
        assert headers[0].size_bytes <= max_bytes or len(headers) == 1
        assert len(got) <= max(max_bytes, headers[0].size_bytes)
        for j, h in enumerate(headers):
            assert h.base_offset == self.bases[i + j]
            assert h.last_offset < limit
        recs = list(iter_records(got))
        expected = [v for j in range(len(headers)) for v in self.values[i + j]]
        assert [r.value for r in recs] == expected
        assert recs[0].offset == self.bases[i]

    @rule()
    def roll(self) -> None:
        self.plog.roll()

    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        target = data.draw(st.integers(self.log_start, self.leo), label="target")
        self.plog.truncate_to(target)
        if target < self.leo:
            i = self._batch_index(target)
            new_leo = self.bases[i] if i >= 0 else target
            del self.bases[i:]
            del self.values[i:]
            self.leo = new_leo
            self.log_start = min(self.log_start, new_leo)
            while self.epochs and self.epochs[-1][1] >= new_leo:
                self.epochs.pop()

    @precondition(lambda self: self.leo > self.log_start)
    @rule(data=st.data())
    def advance_log_start(self, data: st.DataObject) -> None:
        new = data.draw(st.integers(self.log_start, self.leo), label="log_start")
        self.plog.maybe_increment_log_start_offset(new)
        self._move_log_start(new)

    @rule()
    def retention(self) -> None:
        self.plog.delete_old_segments()
        start = self.plog.log_start_offset
        assert start >= self.log_start
        if start > self.log_start:
            assert start in self.bases  # whole segments go, so the new start is a batch start
            self._move_log_start(start)
        segs = self.plog.segments
        assert len(segs) == 1 or sum(s.size_bytes for s in segs[1:]) < CFG.retention_bytes or (
            sum(s.size_bytes for s in segs) - segs[0].size_bytes < CFG.retention_bytes)

    @rule()
    def lead(self) -> None:
        """A new leadership: its epoch starts at the log end before any batch of it."""
        self.epoch += 1
        self.plog.epoch_cache.assign(self.epoch, self.leo)
        while self.epochs and self.epochs[-1][1] >= self.leo:
            self.epochs.pop()
        self.epochs.append((self.epoch, self.leo))

    @rule()
    def flush_epoch_checkpoints(self) -> None:
        self.flusher.run_once()

    @rule()
    def flush(self) -> None:
        self.plog.flush()

    @rule()
    def reopen_clean(self) -> None:
        self.plog.close()
        self.plog = self._open()

    @rule()
    def reopen_after_crash(self) -> None:
        self.plog.abandon()
        self.plog = self._open()
        # Every epoch with a batch in the log is answered as before the crash; only
        # entries at the log end (epochs with no batch yet) may be lost or superseded
        # ones come back, and the next leadership's assign replaces them.
        got = self.plog.epoch_cache.entries
        with_data = [e for e in self.epochs if e[1] < self.leo]
        assert got[: len(with_data)] == with_data, (got, self.epochs)
        assert all(s >= self.leo for _, s in got[len(with_data):]), (got, self.epochs)
        self.epochs = got

    @invariant()
    def offsets_match(self) -> None:
        assert self.plog.log_end_offset == self.leo
        assert self.plog.log_start_offset == self.log_start
        latest = self.epochs[-1][0] if self.epochs else -1
        assert self.plog.latest_epoch == latest
        assert self.plog.epoch_cache.entries == self.epochs
        if self.epochs:
            assert self.plog.end_offset_for_epoch(latest) == (latest, self.leo)


# DMQ_LOG_SM_EXAMPLES=1000 for a longer hunt; the default keeps the suite fast.
_EXAMPLES = int(os.environ.get("DMQ_LOG_SM_EXAMPLES", "60"))
LogMachine.TestCase.settings = settings(LOG_SETTINGS, max_examples=_EXAMPLES,
                                        stateful_step_count=30)
TestLogMachine = LogMachine.TestCase
