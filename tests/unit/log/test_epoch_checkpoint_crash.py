"""The leader-epoch checkpoint is written off the hot path; a crash before it is written
loses no answer about data in the log, and opening an unchanged log does no fsync.

A "crash" is `abandon()` (no flush, no clean mark, the flusher never writes that log's
file again) with the test's own flusher (`autostart=False`), so the file lags the cache
by exactly the changes made since the last `run_once` or log flush.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmq.clock import ManualClock
from dmq.log import LogConfig, PartitionLog, partition_log
from dmq.log.checkpoint import read_entries
from dmq.log.epoch_cache import FILE_NAME, CheckpointFlusher
from dmq.log.errors import LogDiskFullError
from dmq.log.recovery import META_FILE, read_meta
from tests.unit.log.helpers import batch, read_all

CFG = LogConfig(segment_bytes=400, index_interval_bytes=64, retention_ms=None)


@pytest.fixture
def flusher() -> CheckpointFlusher:
    return CheckpointFlusher(autostart=False)


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts os.fsync and os.fdatasync calls (every fsync of the log goes through them)."""
    calls: list[int] = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def fsync(fd: int) -> None:
        calls.append(fd)
        real_fsync(fd)

    def fdatasync(fd: int) -> None:
        calls.append(fd)
        real_fdatasync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    yield calls


def _open(path: Path, flusher: CheckpointFlusher, cfg: LogConfig = CFG) -> PartitionLog:
    return PartitionLog.open(str(path), cfg, ManualClock(), epoch_flusher=flusher)


def _answers(plog: PartitionLog) -> tuple[list[tuple[int, int]], list[int]]:
    """What followers and readers ask of the cache, for every epoch and offset."""
    ends = [plog.end_offset_for_epoch(e) for e in range(-1, plog.latest_epoch + 3)]
    epochs = [plog.epoch_cache.epoch_for_offset(o)
              for o in range(plog.log_start_offset, plog.log_end_offset)]
    return ends, epochs


def _write_epochs(plog: PartitionLog, epochs: list[int], seed: int = 0) -> None:
    for i, epoch in enumerate(epochs):
        plog.append_as_leader(batch(2, seed=seed + i), epoch)


@pytest.mark.parametrize("segment_bytes", [400, 100_000], ids=["rolls", "one-segment"])
def test_crash_before_the_epoch_flush_answers_as_before(
        tmp_path: Path, flusher: CheckpointFlusher, segment_bytes: int) -> None:
    plog = PartitionLog.open(str(tmp_path), LogConfig(segment_bytes=segment_bytes,
                                                      index_interval_bytes=64,
                                                      retention_ms=None),
                             ManualClock(), epoch_flusher=flusher)
    _write_epochs(plog, [1, 1, 1, 2, 2])
    plog.flush()  # recovery point 10; the file holds (1, 0), (2, 6) and is fsynced
    durable = read_entries(str(tmp_path / FILE_NAME))
    assert durable == [["1", "0"], ["2", "6"]]
    plog.epoch_cache.assign(4, plog.log_end_offset)  # a new leadership, no batch yet
    _write_epochs(plog, [4, 4, 6, 6, 6, 7], seed=10)  # (rolls segments on the way)
    assert (plog.segment_count > 1) == (segment_bytes == 400)
    before = _answers(plog)
    assert before[0][5] == (4, 14)  # epoch 4 ends where 6 starts
    # the file lags: only the rolls wrote it (before moving the recovery point), the
    # appends after the last roll (or since the flush) did not
    if segment_bytes == 400:
        durable = read_entries(str(tmp_path / FILE_NAME))
    assert durable is not None and ["7", "20"] not in durable
    assert read_entries(str(tmp_path / FILE_NAME)) == durable
    data = read_all(plog)
    plog.abandon()  # crash before the flusher ran
    assert read_entries(str(tmp_path / FILE_NAME)) == durable

    reopened = _open(tmp_path, flusher)
    assert read_all(reopened) == data
    assert _answers(reopened) == before
    assert reopened.epoch_cache.entries == [(1, 0), (2, 6), (4, 10), (6, 14), (7, 20)]
    reopened.close()
    # the rebuilt entries were written on close: a clean open trusts them
    again = _open(tmp_path, flusher)
    assert _answers(again) == before
    again.close()


def test_crash_after_truncation_and_new_epoch(tmp_path: Path,
                                              flusher: CheckpointFlusher) -> None:
    """A follower truncates away epoch 2 and takes epoch 3 data from its new leader at
    the same offsets: after a crash before the flush the cache must say epoch 3 there,
    never the truncated epoch 2."""
    one_segment = LogConfig(segment_bytes=100_000, retention_ms=None)
    plog = _open(tmp_path, flusher, one_segment)
    _write_epochs(plog, [1, 1, 2, 2])
    plog.flush()
    plog.truncate_to(4)  # the truncation itself is durable at once
    assert read_entries(str(tmp_path / FILE_NAME)) == [["1", "0"]]
    _write_epochs(plog, [3, 3, 3], seed=20)
    before = _answers(plog)
    assert plog.epoch_cache.entries == [(1, 0), (3, 4)]
    assert read_entries(str(tmp_path / FILE_NAME)) == [["1", "0"]]  # lags
    plog.abandon()
    reopened = _open(tmp_path, flusher, one_segment)
    assert reopened.epoch_cache.entries == [(1, 0), (3, 4)]
    assert _answers(reopened) == before
    reopened.abandon()


@pytest.mark.parametrize("damage", ["missing", "torn", "empty"])
def test_missing_or_damaged_epoch_file_is_rebuilt_from_the_log(
        tmp_path: Path, flusher: CheckpointFlusher, damage: str) -> None:
    plog = _open(tmp_path, flusher)
    _write_epochs(plog, [0, 0, 3, 5, 5, 5, 8])
    plog.maybe_increment_log_start_offset(3)  # inside epoch 0's second batch
    before = _answers(plog)
    entries = plog.epoch_cache.entries
    plog.close()
    path = tmp_path / FILE_NAME
    if damage == "missing":
        path.unlink()
    elif damage == "torn":
        path.write_bytes(b"0\n4\n0 3\n3 ")
    else:
        path.write_bytes(b"")
    reopened = _open(tmp_path, flusher)
    assert reopened.epoch_cache.entries == entries
    assert _answers(reopened) == before
    reopened.close()
    assert read_entries(str(path)) == [[str(e), str(s)] for e, s in entries]


def test_new_epoch_on_the_hot_path_does_no_fsync(tmp_path: Path, flusher: CheckpointFlusher,
                                                 fsyncs: list[int]) -> None:
    plog = _open(tmp_path, flusher)
    plog.append_as_leader(batch(), 1)
    fsyncs.clear()
    plog.epoch_cache.assign(2, plog.log_end_offset)  # make_leader's call
    plog.append_as_leader(batch(), 3)  # the first batch of a new epoch
    assert fsyncs == []
    assert flusher.pending == 1
    assert read_entries(str(tmp_path / FILE_NAME)) is None
    assert flusher.run_once() == 1
    assert read_entries(str(tmp_path / FILE_NAME)) == [["1", "0"], ["3", "3"]]
    assert fsyncs == []  # written by the flusher, made durable by the next checkpoint
    assert plog.epoch_cache.dirty
    plog.flush()  # the recovery point moves: the epoch file is fsynced first
    assert not plog.epoch_cache.dirty
    assert len(fsyncs) == 2 + 2 + 1  # epoch file and folder, meta and folder, segment
    plog.close()


def test_flusher_coalesces_many_logs_into_one_pass(tmp_path: Path,
                                                   flusher: CheckpointFlusher) -> None:
    logs = [_open(tmp_path / f"p-{i}", flusher) for i in range(40)]
    for plog in logs:
        plog.epoch_cache.assign(1, 0)
        plog.epoch_cache.assign(2, 0)  # twice before the pass: written once
    assert flusher.pending == 40
    assert flusher.run_once() == 40
    assert flusher.run_once() == 0
    for i in range(40):
        assert read_entries(str(tmp_path / f"p-{i}" / FILE_NAME)) == [["2", "0"]]
    for plog in logs:
        plog.close()


def test_background_flusher_thread_writes_the_file(tmp_path: Path) -> None:
    flusher = CheckpointFlusher(interval_s=0.01)
    plog = _open(tmp_path, flusher)
    try:
        plog.epoch_cache.assign(7, 0)
        path = str(tmp_path / FILE_NAME)
        for _ in range(2000):  # bounded wait on the condition, not on time
            if read_entries(path) == [["7", "0"]]:
                break
            flusher._stop.wait(0.005)  # noqa: SLF001
        assert read_entries(path) == [["7", "0"]]
    finally:
        assert flusher.stop(5.0)
        plog.close()


def test_log_flush_makes_the_epoch_file_durable_before_the_recovery_point(
        tmp_path: Path, flusher: CheckpointFlusher) -> None:
    plog = _open(tmp_path, flusher)
    _write_epochs(plog, [1, 2, 2])
    assert read_entries(str(tmp_path / FILE_NAME)) is None  # not written yet
    plog.flush()
    assert read_meta(str(tmp_path))["recovery_point"] == 6
    assert read_entries(str(tmp_path / FILE_NAME)) == [["1", "0"], ["2", "2"]]
    plog.close()


def test_abandoned_log_file_is_not_written_by_the_flusher(tmp_path: Path,
                                                          flusher: CheckpointFlusher) -> None:
    plog = _open(tmp_path, flusher)
    plog.epoch_cache.assign(1, 0)
    plog.delete()
    flusher.run_once()  # no error, no folder brought back
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_open_of_an_unchanged_log_does_no_fsync(tmp_path: Path, flusher: CheckpointFlusher,
                                                fsyncs: list[int]) -> None:
    plog = _open(tmp_path, flusher)
    _write_epochs(plog, [1, 1, 2, 2, 2, 2])
    plog.close()
    meta_before = (tmp_path / META_FILE).read_bytes()
    fsyncs.clear()
    plog = _open(tmp_path, flusher)  # after a clean stop
    assert fsyncs == []
    assert (tmp_path / META_FILE).read_bytes() == meta_before  # still clean on disk
    _write_epochs(plog, [3], seed=9)  # the first change marks it unclean, then appends
    assert read_meta(str(tmp_path))["clean_shutdown"] == 0
    data = read_all(plog)
    plog.abandon()
    fsyncs.clear()
    plog = _open(tmp_path, flusher)  # after a crash: the tail is scanned, intact
    assert fsyncs == []
    assert read_all(plog) == data
    plog.abandon()
    plog = _open(tmp_path, flusher)  # a second crash before any flush loses nothing
    assert read_all(plog) == data
    assert plog.epoch_cache.entries == [(1, 0), (2, 4), (3, 12)]
    plog.close()


def test_first_change_after_clean_open_marks_it_unclean_before_writing(
        tmp_path: Path, flusher: CheckpointFlusher) -> None:
    """A log opened after a clean stop stays marked clean on disk until it changes; its
    first append must record the unclean state first, or a crash that leaves the new
    batch damaged (right length, zeroed payload) would be trusted and served."""
    plog = _open(tmp_path, flusher)
    _write_epochs(plog, [1, 1])
    plog.close()
    plog = _open(tmp_path, flusher)
    good = read_all(plog)
    info = plog.append_as_leader(batch(3, seed=7), 2)
    seg_path = plog.segments[-1].path
    plog.abandon()
    size = os.path.getsize(seg_path)
    with open(seg_path, "r+b") as f:  # the new batch's pages never reached the disk
        f.seek(size - info.size_bytes + 61)
        f.write(b"\0" * (info.size_bytes - 61))
    reopened = _open(tmp_path, flusher)
    assert reopened.log_end_offset == info.base_offset
    assert read_all(reopened) == good
    assert reopened.latest_epoch == 1
    reopened.close()



def test_full_disk_at_the_first_change_after_clean_open_writes_nothing(
        tmp_path: Path, flusher: CheckpointFlusher, monkeypatch: pytest.MonkeyPatch) -> None:
    plog = _open(tmp_path, flusher)
    _write_epochs(plog, [1])
    plog.close()
    plog = _open(tmp_path, flusher)
    good = read_all(plog)

    def no_space(*args: object, **kw: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(partition_log, "write_entries", no_space)
    with pytest.raises(LogDiskFullError):
        plog.append_as_leader(batch(seed=3), 2)
    assert not plog.closed
    assert read_all(plog) == good and plog.latest_epoch == 1
    assert read_meta(str(tmp_path))["clean_shutdown"] == 1
    monkeypatch.undo()
    plog.append_as_leader(batch(seed=3), 2)  # space is back
    assert read_meta(str(tmp_path))["clean_shutdown"] == 0
    plog.close()


def test_unclean_open_fsyncs_scanned_closed_segments_and_keeps_the_active_one_unflushed(
        tmp_path: Path, flusher: CheckpointFlusher, fsyncs: list[int]) -> None:
    """A crash that left the recovery point before the last segment (between a roll's
    segment flush and its meta write): the open scans the later segments, fsyncs the
    closed ones it scanned, and moves the recovery point only up to the active one."""
    plog = _open(tmp_path, flusher)
    _write_epochs(plog, [1] * 12)
    assert plog.segment_count >= 3
    data, active_base = read_all(plog), plog.segments[-1].base_offset
    plog.abandon()
    (tmp_path / META_FILE).write_text("0\n3\nrecovery_point 0\nlog_start_offset 0\n"
                                      "clean_shutdown 0\n")
    fsyncs.clear()
    reopened = _open(tmp_path, flusher)
    closed = reopened.segment_count - 1
    assert len(fsyncs) >= closed  # each closed segment's data (plus its indexes, the meta)
    assert read_meta(str(tmp_path))["recovery_point"] == active_base
    assert reopened.recovery_point == active_base
    assert reopened.segments[-1].unflushed
    assert read_all(reopened) == data
    reopened.flush()
    assert read_meta(str(tmp_path))["recovery_point"] == reopened.log_end_offset
    reopened.close()
