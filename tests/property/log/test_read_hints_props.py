"""Stateful test: reads through the per-segment read hints return exactly what the same
reads without any hint return, for several interleaved sequential readers, across
appends, rolls, truncations, log-start moves, retention, compaction and reopening.

Each read runs twice: first as the broker runs it (hints in place, and updated by the
read), then with every hint removed (each read then finds its batch through the index);
the hints the first read left are put back afterwards, so the next reads use them. An
invariant checks every hint against a full scan of its segment.
"""

from __future__ import annotations

import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dmq.clock import ManualClock
from dmq.log import LogConfig, PartitionLog, build_batch
from dmq.log.batch import LOG_OVERHEAD, validate_batches
from dmq.log.segment import READ_HINTS
from tests.property.log._settings import LOG_SETTINGS

CFG = LogConfig(segment_bytes=700, index_interval_bytes=64, segment_index_bytes=128,
                cleanup_policy="compact,delete", retention_bytes=3000, retention_ms=None,
                delete_retention_ms=0)
READERS = 3


class ReadHintMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="dmq-read-hints-")
        self.clock = ManualClock()
        self.plog = self._open()
        self.positions = [0] * READERS  # each reader's next offset

    def _open(self) -> PartitionLog:
        return PartitionLog.open(self.dir, CFG, self.clock, fsync_enabled=False)

    def teardown(self) -> None:
        self.plog.abandon()
        shutil.rmtree(self.dir, ignore_errors=True)

    @rule(sizes=st.lists(st.integers(1, 4), min_size=1, max_size=3),
          keys=st.lists(st.integers(0, 3), min_size=4, max_size=4),
          value_size=st.integers(0, 90))
    def append(self, sizes: list[int], keys: list[int], value_size: int) -> None:
        self.clock.advance(1)
        data = b"".join(
            build_batch([(bytes([keys[i]]), bytes([n]) * value_size) for i in range(n)],
                        timestamp_ms=self.clock.wall_ms())
            for n in sizes)
        self.plog.append_as_leader(data, 0)

    @rule(reads=st.lists(st.tuples(st.integers(0, READERS - 1), st.integers(1, 900),
                                   st.integers(0, 5), st.booleans(), st.integers(0, 7)),
                         min_size=1, max_size=8))
    def read(self, reads: list[tuple[int, int, int, bool, int]]) -> None:
        """Readers take turns, each from where its last read ended (or from the log
        start when out of range or, now and then, `jump` is 0), up to a high watermark
        `below_hw` under the log end."""
        plog = self.plog
        for reader, max_bytes, below_hw, min_one, jump in reads:
            offset = self.positions[reader]
            if jump == 0 or offset < plog.log_start_offset or offset > plog.log_end_offset:
                offset = plog.log_start_offset
            hw = max(plog.log_end_offset - below_hw, offset)
            probe = (offset, max_bytes, hw, min_one)
            segs = plog.segments
            data, end = plog.read_span(*probe)
            left = [dict(seg.read_hints) for seg in segs]
            for seg in segs:
                seg.read_hints.clear()
            plain, plain_end = plog.read_span(*probe)
            for seg, hints in zip(segs, left, strict=True):
                seg.read_hints.clear()
                seg.read_hints.update(hints)
            assert bytes(data) == bytes(plain), probe
            assert end == plain_end, probe
            if data:  # (after compaction a segment may end past its last batch)
                assert validate_batches(data)[-1].next_offset <= end
            self.positions[reader] = end

    @rule(reader=st.integers(0, READERS - 1))
    def read_at_log_end(self, reader: int) -> None:
        """A caught-up follower: its fetch offset is the log end."""
        leo = self.plog.log_end_offset
        data, end = self.plog.read_span(leo, 1000)
        assert not data and end == leo
        self.positions[reader] = leo

    @rule(back=st.integers(0, 12), fully=st.integers(0, 5))
    def truncate(self, back: int, fully: int) -> None:
        """A follower's truncation to a new leader's log (and, rarely, to nothing)."""
        plog = self.plog
        if fully == 0:
            plog.truncate_fully_and_start_at(plog.log_end_offset + back % 3)
        else:
            plog.truncate_to(max(plog.log_start_offset, plog.log_end_offset - back))

    @rule()
    def roll(self) -> None:
        self.plog.roll()

    @rule(ahead=st.integers(0, 10))
    def trim(self, ahead: int) -> None:
        """The log start moves (`ahead` > 0: DeleteRecords), or retention runs."""
        plog = self.plog
        if ahead == 0:
            plog.delete_old_segments()
        else:
            plog.maybe_increment_log_start_offset(
                min(plog.log_start_offset + ahead, plog.log_end_offset))

    @rule()
    def clean(self) -> None:
        self.clock.advance(1)
        self.plog.clean(max_offset=self.plog.log_end_offset)

    @rule(crash=st.booleans())
    def reopen(self, crash: bool) -> None:
        if crash:
            self.plog.abandon()
        else:
            self.plog.close()
        self.plog = self._open()

    @invariant()
    def hints_are_batch_starts(self) -> None:
        """Every hint (offset -> position) is where the batch holding that offset (the
        first whose last offset >= it) starts in the segment's bytes now, or the
        segment's end for its next offset; at most READ_HINTS per segment."""
        for seg in self.plog.segments:
            assert len(seg.read_hints) <= READ_HINTS
            if not seg.read_hints:
                continue
            with open(seg.path, "rb") as f:
                raw = f.read()
            assert len(raw) == seg.size_bytes
            headers = validate_batches(raw) if raw else []
            for offset, position in seg.read_hints.items():
                if position == seg.size_bytes:
                    assert offset == seg.next_offset, (seg.path, offset, position)
                    continue
                holding = [h for h in headers if h.last_offset >= offset]
                assert holding, (seg.path, offset, position)  # (not past the end)
                first = holding[0]
                assert first.position == position, (seg.path, offset, position)
                assert first.position + first.batch_length + LOG_OVERHEAD <= seg.size_bytes


ReadHintMachine.TestCase.settings = settings(LOG_SETTINGS, max_examples=100,
                                             stateful_step_count=40)
TestReadHints = ReadHintMachine.TestCase
