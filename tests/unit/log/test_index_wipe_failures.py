"""The deferred wipe of an active segment's index files after an unclean open
(`LogSegment.recover`, `wipe(deferred=True)`): the rebuilt entries stay in memory and
the old files keep their entries from before the crash until the first sync or new
entry empties them (`_SparseIndex.sync`, `_store_pending`) or a trim cuts them.

What must hold when that wipe fails (a full disk, a disk error), and when a recovered
segment has no rebuilt entry at all: reads stay right, no entry of the old files ever
reaches a file that a later open loads, errors come out as the log's own
(`LogStorageError`), and a later open rebuilds or loads a correct index.

The old index files here hold "plausible but wrong" entries: each maps a batch's base
offset to the position of the batch after it, which passes every sanity check of a
clean open (`load_trusted`), so any of them that survived would send a read at that
offset to the wrong batch."""

from __future__ import annotations

import errno
import logging
import os
import struct
from collections.abc import Callable
from typing import Any

import pytest

from dmq.clock import ManualClock
from dmq.log import LogConfig, LogStorageError, PartitionLog, validate_batches
from dmq.log.batch import BatchHeader
from tests.unit.log.helpers import batch, check_log_consistent

CFG = LogConfig(index_interval_bytes=100, segment_index_bytes=4096)


def open_log(path: str, cfg: LogConfig = CFG) -> PartitionLog:
    return PartitionLog.open(path, cfg, ManualClock(), fsync_enabled=True)


def headers_of(log_path: str) -> list[BatchHeader]:
    with open(log_path, "rb") as f:
        return validate_batches(f.read())


def write_stale_indexes(index_path: str, timeindex_path: str,
                        headers: list[BatchHeader], base: int) -> None:
    """Old index files that a clean open would accept but that point every offset they
    name at the batch after it (and claim a max timestamp no batch has)."""
    with open(index_path, "wb") as f:
        for h, nxt in zip(headers, headers[1:], strict=False):
            f.write(struct.pack(">II", h.base_offset - base, nxt.position))
    with open(timeindex_path, "wb") as f:
        for k, h in enumerate(headers[:-1]):
            f.write(struct.pack(">qI", 2_000_000_000_000 + k, h.base_offset - base))


def check_reads(plog: PartitionLog) -> None:
    """A read at each offset returns the batch holding it, first; the in-memory indexes
    agree with a full scan of every segment (`check_log_consistent`)."""
    check_log_consistent(plog)
    offset = plog.log_start_offset
    while offset < plog.log_end_offset:
        first = validate_batches(plog.read(offset, 1))[0]  # (min_one_batch: one)
        assert first.base_offset <= offset <= first.last_offset, (offset, first)
        for o in range(offset, first.last_offset + 1):
            again = validate_batches(plog.read(o, 1))[0]
            assert again.base_offset == first.base_offset, (o, again)
        offset = first.last_offset + 1


def index_files_hold_only(plog: PartitionLog) -> None:
    """Every index file holds its segment's in-memory entries as a prefix, and nothing
    but zeros after them (never an old entry)."""
    for seg in plog.segments:
        for index, size in ((seg.index, 8), (seg.time_index, 12)):
            with open(index.path, "rb") as f:
                content = f.read()
            n = len(content) // size
            assert n <= index.entries or not any(content[index.entries * size:]), index.path
            k = min(n, index.entries)
            expected = index._pack(0, k)  # noqa: SLF001
            real = content[:k * size]
            # a prefix of the rebuilt entries, then the end (or zeros)
            cut = next((i for i in range(0, len(real), size)
                        if real[i:i + size] == bytes(size)), len(real))
            assert real[:cut] == expected[:cut], index.path
            assert not any(content[cut:]), index.path


class IndexFaults:
    """Makes `os.pwrite`, `os.ftruncate` and `os.posix_fallocate` fail with `code` on a
    descriptor of an `.index`/`.timeindex` file (the wipe zeroes with the first and falls
    back to the second; the entries are written with the first or through a mapping
    allocated with the third); other files are untouched."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
        self.code = code
        self.failed: list[tuple[str, str]] = []
        self.on = True
        for name in ("pwrite", "ftruncate", "posix_fallocate"):
            monkeypatch.setattr(os, name, self._wrap(name, getattr(os, name)))

    def _wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(fd: int, *args: Any) -> Any:
            if self.on:
                path = os.readlink(f"/proc/self/fd/{fd}")
                if path.endswith((".index", ".timeindex")):
                    self.failed.append((name, os.path.basename(path)))
                    raise OSError(self.code, os.strerror(self.code), path)
            return real(fd, *args)

        return call


def crashed_log_with_stale_indexes(path: str) -> tuple[list[BatchHeader], int]:
    """A one-segment log of 30 batches left as after a crash, its index files replaced
    by plausible but wrong old ones. Returns its headers and base offset."""
    plog = open_log(path)
    for i in range(30):
        plog.append_as_leader(batch(1 + i % 3, seed=i, value_size=30), 1)
    seg = plog.segments[-1]
    assert len(plog.segments) == 1 and seg.index.entries > 3
    plog.abandon()
    headers = headers_of(seg.path)
    write_stale_indexes(seg.index_path, seg.timeindex_path, headers, seg.base_offset)
    return headers, seg.base_offset


def reopen_with_wipe_pending(path: str) -> PartitionLog:
    plog = open_log(path)
    seg = plog.segments[-1]
    # the path under test: entries rebuilt in memory, the old files not emptied yet
    assert seg.index.entries > 0 and seg.index._wipe_pending  # noqa: SLF001
    assert seg.time_index._wipe_pending  # noqa: SLF001
    assert os.path.getsize(seg.index_path) == 29 * 8
    return plog


def reopen_and_check(path: str) -> None:
    """A crash now, then the open after it (rebuilds the active segment), then a clean
    close and the open after that (loads the trimmed files)."""
    plog = open_log(path)
    check_reads(plog)
    plog.abandon()
    plog = open_log(path)
    check_reads(plog)
    plog.close()
    index_files_hold_only(plog)
    plog = open_log(path)
    check_reads(plog)
    index_files_hold_only(plog)
    plog.close()


# ---------------------------------------------------------------- 1: the wipe fails


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_the_wipe_fails_at_a_sync_then_a_trim(tmp_path: object, code: int,
                                              monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """The first sync after the unclean open (a flush) runs the wipe and it fails.
    A full disk is no error for an index (its entries stay in memory; a warning says
    so), and the roll that follows cuts the old file to nothing. A disk error fails
    the log: that flush and every later call raise `LogStorageError`, `close` releases
    the files, and the next open recovers."""
    path = str(tmp_path)
    crashed_log_with_stale_indexes(path)
    plog = reopen_with_wipe_pending(path)
    seg = plog.segments[-1]
    faults = IndexFaults(monkeypatch, code)
    caplog.set_level(logging.WARNING, "dmq.log")
    if code == errno.ENOSPC:
        plog.flush()
        assert ("ftruncate", os.path.basename(seg.index_path)) in faults.failed  # wiping
        assert seg.index._wipe_pending  # noqa: SLF001 - (it failed)
        assert any("disk full" in r.getMessage() for r in caplog.records)
        check_reads(plog)
        plog.roll()  # the trim, with the disk still full
        assert seg.index.entries > 0 and os.path.getsize(seg.index_path) == 0
        assert os.path.getsize(seg.timeindex_path) == 0
        new = plog.segments[-1]
        for i in range(3):  # an entry in the new segment's index: it cannot grow either
            plog.append_as_leader(batch(2, seed=i, value_size=300), 1)
        assert new.index.entries > 0 and os.path.getsize(new.index_path) == 0
        check_reads(plog)
        faults.on = False
        plog.close()
    else:
        with pytest.raises(LogStorageError, match="flush failed"):
            plog.flush()
        assert ("ftruncate", os.path.basename(seg.index_path)) in faults.failed
        assert plog.closed and plog.failure is not None
        with pytest.raises(LogStorageError):  # the storage error, not "closed"
            plog.read(0, 100)
        with pytest.raises(LogStorageError):
            plog.roll()
        faults.on = False
        plog.close()  # a failed log: releases its files, marks nothing clean
        assert all(s.fd_closed for s in plog.segments)
    reopen_and_check(path)


@pytest.mark.parametrize("trim", ["roll", "close"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_the_wipe_fails_on_the_append_path_then_a_trim(
        tmp_path: object, code: int, trim: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The first new index entry after the unclean open runs the wipe from
    `_store_pending` and it fails: the append succeeds (an append never fails for its
    index) and a warning says the entries stay in memory. The trim that follows (a roll
    or a clean close, with the fault still there; fsync on: its flush syncs the index
    first, wiping again) cuts the old file to nothing on a full disk; on a disk error
    it fails the log with `LogStorageError`."""
    path = str(tmp_path)
    crashed_log_with_stale_indexes(path)
    plog = reopen_with_wipe_pending(path)
    seg = plog.segments[-1]
    rebuilt = seg.index.entries
    faults = IndexFaults(monkeypatch, code)
    caplog.set_level(logging.WARNING, "dmq.log")
    for i in range(4):  # past one index interval: a new entry
        plog.append_as_leader(batch(2, seed=100 + i, value_size=60), 1)
    assert seg.index.entries > rebuilt
    assert ("ftruncate", os.path.basename(seg.index_path)) in faults.failed  # wiping
    assert seg.index._wipe_pending  # noqa: SLF001 - (it failed)
    assert any("cannot grow" in r.getMessage() for r in caplog.records)
    check_reads(plog)
    do_trim = plog.roll if trim == "roll" else plog.close
    if code == errno.ENOSPC:
        do_trim()
        assert os.path.getsize(seg.index_path) == 0
        assert os.path.getsize(seg.timeindex_path) == 0
        if trim == "roll":
            check_reads(plog)
        faults.on = False
        plog.close()
    else:
        with pytest.raises(LogStorageError):
            do_trim()
        assert plog.closed and plog.failure is not None
        with pytest.raises(LogStorageError):
            plog.read(0, 100)
        faults.on = False
        plog.close()  # a failed log: releases its files, marks nothing clean
        assert all(s.fd_closed for s in plog.segments)
    reopen_and_check(path)


# ------------------------------------------- 2: a recovered segment with no entry


@pytest.mark.parametrize("case", ["batches_under_the_interval", "empty_segment"])
def test_a_recovered_segment_without_entries_keeps_no_old_entry(tmp_path: object,
                                                                 case: str) -> None:
    """After a crash, the active segment is rebuilt with no index entry (its batches
    all fit in one index interval, or its `.log` is empty: the index pages reached the
    disk, the data did not) over old index files that still hold entries. No sync has
    anything to write, so no wipe runs before the clean close: its trim must cut them,
    or the next open (a clean one, which trusts the files) would serve them."""
    path = str(tmp_path)
    cfg = LogConfig(index_interval_bytes=1 << 20)
    batches = [batch(1 + i % 3, seed=i, value_size=40) for i in range(8)]
    plog = open_log(path, cfg)
    if case == "batches_under_the_interval":
        for b in batches:
            plog.append_as_leader(b, 1)
    else:
        plog.append_as_leader(batch(50, value_size=100), 1)  # lost in the crash below
    seg = plog.segments[-1]
    base = seg.base_offset
    plog.abandon()
    if case == "empty_segment":
        os.truncate(seg.path, 0)
        # what will be appended after the recovery, to find the old entries plausible
        scratch = os.path.join(path, "scratch")
        other = open_log(scratch, cfg)
        for b in batches:
            other.append_as_leader(b, 1)
        other.close()
        headers = headers_of(other.segments[0].path)
    else:
        headers = headers_of(seg.path)
    write_stale_indexes(seg.index_path, seg.timeindex_path, headers, base)
    old_size = os.path.getsize(seg.index_path)

    plog = open_log(path, cfg)
    seg = plog.segments[-1]
    assert seg.index.entries == 0 and seg.time_index.entries == 0  # nothing rebuilt
    assert os.path.getsize(seg.index_path) == old_size  # the old entries, still there
    if case == "empty_segment":
        assert plog.log_end_offset == base
        for b in batches:  # smaller than the interval: no entry, no sync writes
            plog.append_as_leader(b, 1)
        assert seg.index.entries == 0
    plog.flush()
    check_reads(plog)
    plog.close()
    assert os.path.getsize(seg.index_path) == 0
    assert os.path.getsize(seg.timeindex_path) == 0

    plog = open_log(path, cfg)  # clean: the files are trusted
    seg = plog.segments[-1]
    assert seg.index.entries == 0 and seg.time_index.entries == 0
    check_reads(plog)
    assert seg.max_timestamp == max(h.max_timestamp for h in headers)
    plog.close()


@pytest.mark.parametrize("where", ["meta", "flush"])
def test_a_failed_truncation_fails_the_log_not_only_closes_it(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """A truncation whose flush or meta checkpoint write fails leaves files only a
    reopen resolves: the log is failed (later calls raise LogStorageError, which the
    broker answers STORAGE_ERROR, not a closed log's NOT_LEADER_OR_FOLLOWER), `close`
    releases its files, and the next open recovers a consistent log."""
    path = str(tmp_path / "t-0")
    plog = open_log(path)
    for i in range(6):
        plog.append_as_leader(batch(3, seed=i), 0)
    plog.flush()

    def eio(*_a: Any, **_k: Any) -> None:
        raise OSError(errno.EIO, "injected")

    if where == "meta":
        monkeypatch.setattr("dmq.log.partition_log.write_entries", eio)
    else:
        monkeypatch.setattr(type(plog.segments[-1]), "flush", eio)
    with pytest.raises(LogStorageError):
        plog.truncate_to(9)
    monkeypatch.undo()
    assert plog.failure is not None
    with pytest.raises(LogStorageError):
        plog.read(0, 1000)
    plog.close()  # a failed log only releases its files
    again = open_log(path)
    try:
        check_reads(again)
        assert again.log_end_offset in (9, 18)  # the truncation happened or not
    finally:
        again.close()
