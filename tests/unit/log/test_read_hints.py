"""Per-segment read hints: several sequential readers each find where their next read
starts without an index lookup, the hints stay bounded, and no hint outlives a change
of the segment's bytes other than an append."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dmq.clock import ManualClock
from dmq.log import LogConfig, PartitionLog, validate_batches
from dmq.log.batch import BatchHeader
from dmq.log.segment import READ_HINTS, LogSegment
from tests.unit.log.helpers import batch

CFG = LogConfig(segment_bytes=1 << 20, index_interval_bytes=128, retention_ms=None)


def open_log(path: object) -> PartitionLog:
    return PartitionLog.open(str(path), CFG, ManualClock(), fsync_enabled=False)


@pytest.fixture
def finds(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Offsets that reads had to look up through the index (`LogSegment.find`)."""
    seen: list[int] = []
    real = LogSegment.find

    def find(self: LogSegment, offset: int) -> BatchHeader | None:
        seen.append(offset)
        return real(self, offset)

    monkeypatch.setattr(LogSegment, "find", find)
    yield seen


def test_three_interleaved_readers_each_keep_their_hint(tmp_path: object,
                                                         finds: list[int]) -> None:
    plog = open_log(tmp_path)
    for i in range(60):
        plog.append_as_leader(batch(3, seed=i), 0)
    one = len(batch(3))
    positions = [0, 60, 120]  # two followers and a consumer, at different places
    for seg in plog.segments:
        seg.read_hints.clear()
    got: list[list[bytes]] = [[], [], []]
    for _ in range(10):
        for r in range(3):
            data, end = plog.read_span(positions[r], 2 * one)
            assert validate_batches(data)[0].base_offset == positions[r]
            got[r].append(bytes(data))
            positions[r] = end
    assert finds == [0, 60, 120]  # each reader's first read only
    assert positions == [60, 120, 180]
    # the same bytes as one reader reading alone through the index
    for seg in plog.segments:
        seg.read_hints.clear()
    assert b"".join(got[0]) == bytes(plog.read(0, 20 * one))


def test_followers_at_the_log_end_read_the_next_append_without_lookup(
        tmp_path: object, finds: list[int]) -> None:
    plog = open_log(tmp_path)
    plog.append_as_leader(batch(3), 0)
    plog.append_as_leader(batch(4), 0)
    for seg in plog.segments:
        seg.read_hints.clear()
    # a caught-up follower's fetch (offset = log end) finds no records ...
    assert plog.read_span(7, 1000) == (memoryview(b""), 7)
    new = batch(5, seed=9)
    plog.append_as_leader(new, 0)
    # ... and both followers' next fetch starts at the segment's end it noted
    for _ in range(2):
        data, end = plog.read_span(7, 1000)
        assert (bytes(data[16:]), end) == (new[16:], 12)  # (offset and epoch stamped)
    assert finds == []


def test_hints_stay_bounded_with_many_readers(tmp_path: object) -> None:
    plog = open_log(tmp_path)
    for i in range(40):
        plog.append_as_leader(batch(2, seed=i), 0)
    seg = plog.segments[0]
    for r in range(40):
        plog.read_span(2 * r, 1)
        assert len(seg.read_hints) <= READ_HINTS
    assert len(seg.read_hints) == READ_HINTS


def test_a_hint_never_outlives_a_truncation(tmp_path: object) -> None:
    plog = open_log(tmp_path)
    first = batch(3)
    plog.append_as_leader(first, 0)
    plog.append_as_leader(batch(3, seed=1), 0)
    data, end = plog.read_span(0, len(first))  # a follower read batch 0-2: next is 3
    assert (len(data), end) == (len(first), 3)
    assert plog.segments[0].read_hints[3] == len(first)
    # The follower's leader changed: offsets 1.. are gone (batch 0-2 with them), and
    # the new leader's batches put offset 3 inside a longer batch 0-4 at position 0.
    plog.truncate_to(1)
    assert plog.log_end_offset == 0
    longer = batch(5, seed=7)
    plog.append_as_leader(longer, 1)
    plog.append_as_leader(batch(2, seed=8), 1)
    data, end = plog.read_span(3, len(longer))
    assert validate_batches(data)[0].base_offset == 0
    assert (bytes(data[16:]), end) == (longer[16:], 5)
