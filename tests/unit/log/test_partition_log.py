from __future__ import annotations

import os

import pytest

from dmq.clock import ManualClock
from dmq.log import (
    CorruptRecordError,
    InvalidProducerEpochError,
    LogClosedError,
    LogConfig,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    PartitionLog,
    RecordTooLargeError,
    UnexpectedAppendOffsetError,
    iter_records,
    validate_batches,
)
from tests.unit.log.helpers import batch, check_log_consistent, read_all

LARGE_APPEND_BYTES = 256 * 1024  # follower appends of several such batches per call

SMALL = LogConfig(segment_bytes=1024, index_interval_bytes=128, segment_index_bytes=256)


def open_log(path: object, cfg: LogConfig = SMALL, clock: ManualClock | None = None,
             fsync: bool = False) -> PartitionLog:
    return PartitionLog.open(str(path), cfg, clock or ManualClock(), fsync_enabled=fsync)


def test_leader_append_assigns_offsets_and_epoch(tmp_path: object) -> None:
    plog = open_log(tmp_path)
    assert (plog.log_start_offset, plog.log_end_offset) == (0, 0)
    info = plog.append_as_leader(batch(3), 5)
    assert (info.base_offset, info.last_offset, info.record_count) == (0, 2, 3)
    info = plog.append_as_leader(batch(2) + batch(4), 6)
    assert (info.base_offset, info.last_offset, info.record_count) == (3, 8, 6)
    assert plog.log_end_offset == 9
    headers = validate_batches(plog.read(0, 10_000))
    assert [(h.base_offset, h.partition_leader_epoch) for h in headers] == [
        (0, 5), (3, 6), (5, 6)]
    assert plog.epoch_cache.entries == [(5, 0), (6, 3)]
    assert plog.end_offset_for_epoch(5) == (5, 3)
    plog.close()


def test_read_semantics(tmp_path: object) -> None:
    plog = open_log(tmp_path, LogConfig(index_interval_bytes=64))
    sizes = [len(batch(2, value_size=v)) for v in (10, 200, 10, 10)]
    for v in (10, 200, 10, 10):
        plog.append_as_leader(batch(2, value_size=v), 0)
    # at least one whole batch even if max_bytes is tiny
    assert len(plog.read(0, 1)) == sizes[0]
    assert len(plog.read(0, 1, min_one_batch=False)) == 0
    # an offset inside a batch returns from that batch's start
    assert validate_batches(plog.read(3, 1))[0].base_offset == 2
    # max_bytes cuts at whole batches
    assert len(plog.read(0, sizes[0] + sizes[1] - 1)) == sizes[0]
    assert len(plog.read(0, sizes[0] + sizes[1])) == sizes[0] + sizes[1]
    # max_offset (the high watermark, exclusive): only batches entirely below it
    assert [h.base_offset for h in validate_batches(plog.read(0, 10**6, max_offset=6))] == [
        0, 2, 4]
    assert [h.base_offset for h in validate_batches(plog.read(0, 10**6, max_offset=5))] == [
        0, 2]
    assert len(plog.read(6, 10**6, max_offset=6)) == 0
    assert len(plog.read(8, 100)) == 0  # at the log end
    with pytest.raises(OffsetOutOfRangeError):
        plog.read(9, 100)
    with pytest.raises(OffsetOutOfRangeError):
        plog.read(-1, 100)
    plog.close()
    with pytest.raises(LogClosedError):
        plog.read(0, 100)


def test_rolls_by_size_and_time_and_reads_across_segments(tmp_path: object) -> None:
    clock = ManualClock()
    cfg = LogConfig(segment_bytes=1024, segment_ms=1000, index_interval_bytes=128)
    plog = open_log(tmp_path, cfg, clock)
    for i in range(30):
        plog.append_as_leader(batch(2, seed=i), 1)
    assert plog.segment_count > 3
    check_log_consistent(plog)
    values = read_all(plog)
    assert [o for o, _ in values] == list(range(60))
    n = plog.segment_count
    clock.advance(999)
    plog.append_as_leader(batch(1), 1)
    clock.advance(1)
    assert plog.maybe_roll_by_time()
    assert plog.segment_count == n + 1
    assert not plog.maybe_roll_by_time()  # the new segment is empty
    plog.close()
    names = sorted(os.listdir(str(tmp_path)))
    assert "00000000000000000000.log" in names and "meta.checkpoint" in names


def test_bytes_from_counts_the_log_past_an_offset_from_the_index(tmp_path: object) -> None:
    """What a reassignment's adding replica still has to copy: exact at batch starts
    that the index holds, at most `index.interval.bytes` over elsewhere."""
    plog = open_log(tmp_path)  # 1 KB segments, an index entry every 128 bytes
    for i in range(30):
        plog.append_as_leader(batch(2, seed=i), 1)
    assert plog.segment_count > 3
    total = plog.size_bytes
    assert plog.bytes_from(-1) == plog.bytes_from(0) == total
    assert plog.bytes_from(plog.log_end_offset) == 0
    for offset in range(plog.log_end_offset):
        exact = sum(len(d) for d in _read_to_end(plog, offset))
        assert exact <= plog.bytes_from(offset) <= exact + 128 + len(batch(2))
    plog.close()
    assert plog.bytes_from(0) == 0


def _read_to_end(plog: PartitionLog, offset: int) -> list[memoryview]:
    """The log from the batch holding `offset` on (a read stops at a segment end)."""
    out = []
    while offset < plog.log_end_offset:
        data = plog.read(offset, 10**9)
        out.append(data)
        last = validate_batches(data)[-1]
        offset = last.base_offset + last.last_offset_delta + 1
    return out


@pytest.mark.parametrize("age_ms", [0, 999, 1000, 5000, -3000])
def test_segment_age_survives_a_restart(tmp_path: object, age_ms: int) -> None:
    """The active segment's age counts from its first batch's timestamp, not from the
    restart: a broker restarted more often than segment_ms still rolls (and expires)."""
    clock = ManualClock()
    cfg = LogConfig(segment_ms=1000)
    plog = open_log(tmp_path, cfg, clock)
    plog.append_as_leader(batch(1, ts=clock.wall_ms() - age_ms), 1)
    plog.append_as_leader(batch(1, ts=clock.wall_ms()), 1)
    plog.close()
    plog = open_log(tmp_path, cfg, clock)
    assert plog.maybe_roll_by_time() == (age_ms >= 1000)
    clock.advance(1000)
    assert plog.maybe_roll_by_time() == (age_ms < 1000)
    plog.close()


def test_a_segment_without_timestamps_is_not_rolled_by_a_restart(tmp_path: object) -> None:
    clock = ManualClock()
    cfg = LogConfig(segment_ms=1000)
    plog = open_log(tmp_path, cfg, clock)
    plog.append_as_leader(batch(1, ts=-1), 1)  # NO_TIMESTAMP
    plog.close()
    plog = open_log(tmp_path, cfg, clock)
    assert not plog.maybe_roll_by_time()
    plog.close()


def test_a_full_time_index_never_drops_a_new_maximum(tmp_path: object) -> None:
    """Time-index entries are larger than offset-index ones; both get as many slots, so
    the roll on a full offset index comes before the time index could drop a maximum
    (which a reopen would then miss)."""
    clock = ManualClock()
    cfg = LogConfig(index_interval_bytes=0, segment_index_bytes=96, retention_ms=50_000)
    plog = open_log(tmp_path, cfg, clock)
    for t in [1000 + i for i in range(9)] + [90_000, 1000, 1000]:
        plog.append_as_leader(batch(1, ts=t), 1)
    plog.roll()
    plog.close()
    plog = open_log(tmp_path, cfg, clock)
    assert max(s.max_timestamp for s in plog.segments) == 90_000
    assert plog.offset_for_timestamp(50_000) == (9, 90_000)
    plog.close()


def test_follower_append(tmp_path: object) -> None:
    leader = open_log(os.path.join(str(tmp_path), "l"))
    follower = open_log(os.path.join(str(tmp_path), "f"))
    for e in (1, 1, 2, 3):
        leader.append_as_leader(batch(2), e)
    data = leader.read(0, 10**6)
    info = follower.append_as_follower(data)
    assert (info.base_offset, info.last_offset) == (0, 7)
    assert follower.epoch_cache.entries == leader.epoch_cache.entries == [(1, 0), (2, 4), (3, 6)]
    with pytest.raises(UnexpectedAppendOffsetError):
        follower.append_as_follower(data)
    assert bytes(follower.read(0, 10**6)) == bytes(data)
    leader.close()
    follower.close()


def test_bad_input_is_rejected_without_writing(tmp_path: object) -> None:
    plog = open_log(tmp_path, LogConfig(max_message_bytes=200))
    good = batch(1)
    bad = bytearray(good)
    bad[-1] ^= 1
    for buf in (b"", b"junk", bytes(bad), good + bytes(bad), good[:-1]):
        with pytest.raises(CorruptRecordError):
            plog.append_as_leader(buf, 0)
    with pytest.raises(RecordTooLargeError):
        plog.append_as_leader(batch(1, value_size=300), 0)
    assert plog.log_end_offset == 0 and plog.size_bytes == 0
    plog.close()


def test_idempotent_producer_paths(tmp_path: object) -> None:
    plog = open_log(tmp_path)
    b0 = batch(3, producer_id=9, producer_epoch=0, base_sequence=0)
    b1 = batch(2, producer_id=9, producer_epoch=0, base_sequence=3)
    assert plog.append_as_leader(b0, 0).base_offset == 0
    plog.append_as_leader(batch(1), 0)
    assert plog.append_as_leader(b1, 0).base_offset == 4
    dup = plog.append_as_leader(b0, 0)
    assert dup.duplicate and (dup.base_offset, dup.last_offset) == (0, 2)
    assert plog.log_end_offset == 6
    with pytest.raises(OutOfOrderSequenceError):
        plog.append_as_leader(batch(1, producer_id=9, producer_epoch=0, base_sequence=7), 0)
    # two batches of one producer in one append must be consecutive
    with pytest.raises(OutOfOrderSequenceError):
        plog.append_as_leader(
            batch(1, producer_id=11, producer_epoch=0, base_sequence=0)
            + batch(1, producer_id=11, producer_epoch=0, base_sequence=5), 0)
    plog.close()
    # state is rebuilt from batch headers on open: the duplicate is still recognised
    plog = open_log(tmp_path)
    assert plog.append_as_leader(b1, 0).duplicate
    plog.truncate_to(4)  # drop b1: it is no longer a duplicate, and continues b0
    assert not plog.append_as_leader(b1, 0).duplicate
    plog.close()


def test_producer_fencing(tmp_path: object) -> None:
    plog = open_log(tmp_path)
    plog.append_as_leader(batch(1, producer_id=3, producer_epoch=2, base_sequence=0), 0)
    with pytest.raises(InvalidProducerEpochError):
        plog.append_as_leader(batch(1, producer_id=3, producer_epoch=1, base_sequence=1), 0)
    plog.close()


def test_truncation(tmp_path: object) -> None:
    plog = open_log(tmp_path)
    for i in range(20):
        plog.append_as_leader(batch(3, seed=i), i // 5)
    plog.truncate_to(31)  # inside batch 30..32: the whole batch goes
    assert plog.log_end_offset == 30
    assert plog.epoch_cache.entries == [(0, 0), (1, 15)]
    check_log_consistent(plog)
    assert [o for o, _ in read_all(plog)] == list(range(30))
    assert plog.epoch_cache.latest_epoch == 1
    plog.truncate_to(100)  # beyond the end: no-op
    assert plog.log_end_offset == 30
    plog.append_as_leader(batch(1), 7)
    assert plog.end_offset_for_epoch(1) == (1, 30)
    plog.truncate_to(0)
    assert (plog.log_start_offset, plog.log_end_offset, plog.segment_count) == (0, 0, 1)
    plog.truncate_fully_and_start_at(500)
    assert (plog.log_start_offset, plog.log_end_offset) == (500, 500)
    assert plog.append_as_leader(batch(1), 8).base_offset == 500
    plog.close()
    plog = open_log(tmp_path)
    assert (plog.log_start_offset, plog.log_end_offset) == (500, 501)
    plog.close()


def test_retention_by_size_time_and_start_offset(tmp_path: object) -> None:
    clock = ManualClock()
    cfg = LogConfig(segment_bytes=512, index_interval_bytes=64, retention_bytes=1500,
                    retention_ms=10_000)
    plog = open_log(tmp_path, cfg, clock)
    for _ in range(40):
        plog.append_as_leader(batch(2, ts=clock.wall_ms()), 1)
        clock.advance(1000)
    n = plog.segment_count
    assert plog.delete_old_segments() > 0
    assert plog.size_bytes - plog.segments[0].size_bytes < 1500 or plog.segment_count == 1
    assert plog.segment_count < n
    assert plog.log_start_offset == plog.segments[0].base_offset
    with pytest.raises(OffsetOutOfRangeError):
        plog.read(0, 100)
    check_log_consistent(plog)
    # time: everything closed is older than 10 s once the clock moves on
    clock.advance(60_000)
    plog.delete_old_segments()
    assert plog.segment_count == 1  # the active segment is never deleted
    start = plog.log_start_offset
    assert read_all(plog)[0][0] == start
    # explicit log start (DeleteRecords)
    plog.maybe_increment_log_start_offset(start + 1)
    assert plog.log_start_offset == start + 1
    assert read_all(plog)[0][0] == start + 1
    with pytest.raises(OffsetOutOfRangeError):
        plog.maybe_increment_log_start_offset(plog.log_end_offset + 1)
    plog.close()
    plog = open_log(tmp_path, cfg, clock)
    assert plog.log_start_offset == start + 1
    plog.close()


def test_flush_policies(tmp_path: object) -> None:
    clock = ManualClock()
    every = open_log(os.path.join(str(tmp_path), "a"), LogConfig(flush_messages=1), clock,
                     fsync=True)
    every.append_as_leader(batch(2), 0)
    assert every.recovery_point == 2
    every.close()
    timed = open_log(os.path.join(str(tmp_path), "b"), LogConfig(flush_ms=100), clock,
                     fsync=True)
    timed.append_as_leader(batch(2), 0)
    assert timed.recovery_point == 0
    assert not timed.maybe_flush()
    clock.advance(100)
    assert timed.maybe_flush()
    assert timed.recovery_point == 2
    timed.close()
    default = open_log(os.path.join(str(tmp_path), "c"), LogConfig(), clock, fsync=True)
    default.append_as_leader(batch(2), 0)
    assert default.recovery_point == 0
    default.flush()
    assert default.recovery_point == 2
    default.close()


def test_log_append_time(tmp_path: object) -> None:
    clock = ManualClock()
    plog = open_log(tmp_path, LogConfig(message_timestamp_type="LogAppendTime"), clock)
    info = plog.append_as_leader(batch(2, ts=5), 0)
    assert info.log_append_time_ms == clock.wall_ms() == info.max_timestamp
    (h,) = validate_batches(plog.read(0, 1000))
    assert h.max_timestamp == clock.wall_ms() and h.attributes & 0x08
    plog.close()


def test_several_batches_in_one_leader_append(tmp_path: object) -> None:
    """The leader's other path (a copy stamped in place): offsets, epochs, LogAppendTime,
    CRCs intact, producer state, and the same bytes after an unclean reopen."""
    clock = ManualClock()
    cfg = LogConfig(message_timestamp_type="LogAppendTime", index_interval_bytes=64)
    plog = open_log(tmp_path, cfg, clock)
    plog.append_as_leader(batch(2), 3)
    data = (batch(3, ts=5, producer_id=7, producer_epoch=0, base_sequence=0)
            + batch(1, ts=6) + batch(2, ts=7, producer_id=7, producer_epoch=0, base_sequence=3))
    info = plog.append_as_leader(data, 4)
    assert (info.base_offset, info.last_offset, info.record_count) == (2, 7, 6)
    assert info.max_timestamp == info.log_append_time_ms == clock.wall_ms()
    headers = validate_batches(plog.read(2, 1 << 20))  # checks every CRC
    assert [(h.base_offset, h.partition_leader_epoch) for h in headers] == [
        (2, 4), (5, 4), (6, 4)]
    assert all(h.max_timestamp == clock.wall_ms() and h.attributes & 0x08 for h in headers)
    assert plog.end_offset_for_epoch(3) == (3, 2)
    dup = plog.append_as_leader(batch(2, producer_id=7, producer_epoch=0, base_sequence=3), 4)
    assert dup.duplicate and (dup.base_offset, dup.last_offset) == (6, 7)
    before = bytes(plog.read(0, 1 << 20))
    check_log_consistent(plog)
    plog.abandon()  # as a crash: no clean-shutdown marker, recovery scans the tail
    plog = open_log(tmp_path, cfg, clock)
    assert bytes(plog.read(0, 1 << 20)) == before
    assert plog.append_as_leader(
        batch(1, producer_id=7, producer_epoch=0, base_sequence=5), 4).base_offset == 8
    plog.close()


def test_offset_for_timestamp(tmp_path: object) -> None:
    plog = open_log(tmp_path)
    for i in range(30):
        plog.append_as_leader(batch(2, ts=1000 + 10 * i), 0)
    assert plog.offset_for_timestamp(0) == (0, 1000)
    assert plog.offset_for_timestamp(1000) == (0, 1000)
    assert plog.offset_for_timestamp(1001) == (2, 1010)
    assert plog.offset_for_timestamp(1150) == (30, 1150)
    assert plog.offset_for_timestamp(1291) is None
    plog.close()


def test_clean_reopen_does_not_scan_and_keeps_everything(tmp_path: object) -> None:
    plog = open_log(tmp_path)
    for i in range(25):
        plog.append_as_leader(batch(2, seed=i), 1)
    before = read_all(plog)
    plog.close()
    plog = open_log(tmp_path)
    assert read_all(plog) == before
    check_log_consistent(plog)
    assert list(iter_records(plog.read(0, 10)))[0].offset == 0
    plog.close()


def test_expired_producers_are_forgotten_on_reload(tmp_path: object) -> None:
    clock = ManualClock()
    cfg = LogConfig(producer_id_expiration_ms=1000)
    plog = open_log(tmp_path, cfg, clock)
    plog.append_as_leader(batch(1, ts=clock.wall_ms(), producer_id=4, producer_epoch=0,
                                base_sequence=0), 0)
    plog.roll()
    plog.append_as_leader(batch(1, ts=clock.wall_ms()), 0)
    plog.close()
    plog = open_log(tmp_path, cfg, clock)
    with pytest.raises(OutOfOrderSequenceError):  # still known: a gap is refused
        plog.append_as_leader(batch(1, producer_id=4, producer_epoch=0, base_sequence=9), 0)
    plog.close()
    clock.advance(5000)
    plog = open_log(tmp_path, cfg, clock)
    assert plog.producer_state.entry(4) is None
    plog.append_as_leader(batch(1, producer_id=4, producer_epoch=0, base_sequence=9), 0)
    plog.close()


def test_one_append_with_more_batches_than_index_slots(tmp_path: object) -> None:
    cfg = LogConfig(segment_index_bytes=16, index_interval_bytes=0)  # two index slots
    plog = open_log(tmp_path, cfg)
    buf = b"".join(batch(1, seed=i) for i in range(10))
    info = plog.append_as_leader(buf, 0)
    assert (info.base_offset, info.last_offset) == (0, 9)
    plog.append_as_leader(batch(1), 0)
    check_log_consistent(plog)
    assert [o for o, _ in read_all(plog)] == list(range(11))
    plog.close()
    plog = open_log(tmp_path, cfg)
    check_log_consistent(plog)
    assert [o for o, _ in read_all(plog)] == list(range(11))
    plog.close()


def _follower_buffer(sizes: list[int], first_offset: int = 0) -> tuple[bytes, list[int]]:
    from dmq.log import stamp_batch

    parts, bases, offset = [], [], first_offset
    for i, size in enumerate(sizes):
        b = bytearray(batch(1 + i % 3, seed=i, value_size=size))
        stamp_batch(b, 0, offset, 1)
        bases.append(offset)
        offset += 1 + i % 3
        parts.append(bytes(b))
    return b"".join(parts), bases


@pytest.mark.parametrize("flip_batch", [None, 0, 5, -1])
def test_large_follower_appends_check_every_crc(tmp_path: object, flip_batch: int | None) -> None:
    import random

    rnd = random.Random(3)
    sizes = [rnd.choice([10, 3000, 70_000, 300_000]) for _ in range(12)]
    buf, bases = _follower_buffer(sizes)
    assert len(buf) > 2 * LARGE_APPEND_BYTES
    plog = open_log(tmp_path, LogConfig(max_message_bytes=1 << 21))
    plog.append_as_follower(_follower_buffer([5])[0])
    size_before, end_before = plog.size_bytes, plog.log_end_offset
    buf, bases = _follower_buffer(sizes, end_before)
    if flip_batch is None:
        plog.append_as_follower(buf)
        got = validate_batches(plog.read(end_before, 1 << 24))
        assert [h.base_offset for h in got] == bases
    else:
        headers = validate_batches(buf)
        h = headers[flip_batch]
        bad = bytearray(buf)
        bad[h.position + h.size_bytes - 1] ^= 0x40
        with pytest.raises(CorruptRecordError):
            plog.append_as_follower(bytes(bad))
        assert (plog.size_bytes, plog.log_end_offset) == (size_before, end_before)
        plog.append_as_follower(buf)  # the log is still fine
    check_log_consistent(plog)
    plog.close()
    plog = open_log(tmp_path, LogConfig(max_message_bytes=1 << 21))
    check_log_consistent(plog)
    plog.close()


def test_large_leader_batch_with_bad_crc_writes_nothing(tmp_path: object) -> None:
    plog = open_log(tmp_path, LogConfig(max_message_bytes=1 << 21))
    big = batch(3, value_size=200_000)
    plog.append_as_leader(big, 0)
    bad = bytearray(big)
    bad[len(bad) // 2] ^= 1
    with pytest.raises(CorruptRecordError):
        plog.append_as_leader(bytes(bad), 0)
    assert plog.log_end_offset == 3 and plog.size_bytes == len(big)
    assert plog.append_as_leader(big, 1).base_offset == 3
    check_log_consistent(plog)
    plog.close()


def test_full_disk_refuses_an_append_and_the_log_stays_usable(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a short write on a full disk closed the log for good (every later
    read and write failed until the broker restarted) and said only "short write"."""
    import errno

    import dmq.log.segment as segment_mod
    from dmq.log import LogDiskFullError

    plog = open_log(tmp_path, LogConfig())
    plog.append_as_leader(batch(3), 1)
    real_writev, real_write = os.writev, os.write

    def short_writev(fd: int, iov: list[bytes]) -> int:  # the disk takes 10 bytes
        return real_write(fd, bytes(b"".join(iov))[:10])

    def full_write(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segment_mod.os, "writev", short_writev)
    monkeypatch.setattr(segment_mod.os, "write", full_write)
    with pytest.raises(LogDiskFullError, match="No space left"):
        plog.append_as_leader(batch(2), 1)
    with pytest.raises(LogDiskFullError):
        plog.append_as_follower(batch(2, base_offset=3, partition_leader_epoch=1))
    assert plog.log_end_offset == 3
    assert [o for o, _ in read_all(plog)] == [0, 1, 2]  # still readable, no torn bytes
    monkeypatch.setattr(segment_mod.os, "writev", real_writev)
    monkeypatch.setattr(segment_mod.os, "write", real_write)
    info = plog.append_as_leader(batch(2), 1)  # space is back
    assert (info.base_offset, plog.log_end_offset) == (3, 5)
    check_log_consistent(plog)
    plog.close()
    reopened = open_log(tmp_path, LogConfig())
    assert [o for o, _ in read_all(reopened)] == [0, 1, 2, 3, 4]
    reopened.close()


def test_large_follower_append_with_a_flipped_offset_delta_is_corrupt(tmp_path: object) -> None:
    """Regression (found by tests/property/log/test_large_follower_append_props.py): in a large
    follower append, a bit flipped in a batch's last_offset_delta (covered by its CRC)
    must fail as CorruptRecordError, not as UnexpectedAppendOffsetError because the next
    batch looks out of order."""
    from dmq.log import stamp_batch
    from dmq.log.batch import build_batch

    plog = open_log(tmp_path, LogConfig(max_message_bytes=1 << 21))
    parts = []
    for i, size in enumerate([0, LARGE_APPEND_BYTES]):
        b = bytearray(build_batch([(b"k", b"v" * size)]))
        stamp_batch(b, 0, i, 1)
        parts.append(bytes(b))
    bad = bytearray(b"".join(parts))
    bad[24] ^= 0x01  # last_offset_delta of the first batch (covered by its CRC)
    with pytest.raises(CorruptRecordError):
        plog.append_as_follower(bytes(bad))
    assert (plog.log_end_offset, plog.size_bytes) == (0, 0)
    plog.close()


def test_two_followers_reading_the_log_end_in_turn_need_no_header_walk(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """A leader's two followers fetch from the same log end one after the other: each
    read starts where one of the last two reads stopped, so none walks the headers from
    an index point (with one remembered end, every other read did)."""
    from dmq.log.segment import LogSegment

    cfg = LogConfig(index_interval_bytes=4096)
    plog = open_log(tmp_path, cfg)
    plog.append_as_leader(batch(2), 1)
    walks = []
    real_find = LogSegment.find
    monkeypatch.setattr(LogSegment, "find",
                        lambda self, offset: walks.append(offset) or real_find(self, offset))
    leo = {1: 0, 2: 0}
    for _round in range(20):
        for follower in (1, 2):
            data, end = plog.read_span(leo[follower], 1 << 20)
            assert end == plog.log_end_offset and data
            leo[follower] = end
        plog.append_as_leader(batch(2), 1)
    assert walks == [0, 0]  # the first read of each only
    plog.close()
