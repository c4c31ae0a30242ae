"""A log holds at most one `.log` descriptor for its active segment plus
`MAX_IDLE_SEGMENT_FDS` for closed segments being read, whatever its segment count
(issue 25, item 14: a topic with segment.bytes of 64 cost a descriptor per segment).
Closed segments' index files hold none; the active segment's two mapped indexes hold
one each before Python 3.13 (`mmap` duplicates the descriptor). Counted in
/proc/self/fd and /proc/self/maps."""

from __future__ import annotations

import os
import sys

import pytest

from dmq.clock import ManualClock
from dmq.log import LogConfig, PartitionLog, build_batch
from dmq.log.index import _overwrites_in_place
from dmq.log.partition_log import MAX_IDLE_SEGMENT_FDS
from tests.unit.log.helpers import check_log_consistent, read_all

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                                reason="counts descriptors in /proc/self/fd")
CFG = LogConfig(segment_bytes=64, cleanup_policy="compact", delete_retention_ms=0)
BOUND = 1 + MAX_IDLE_SEGMENT_FDS
ACTIVE_INDEX_FDS = 2 if sys.version_info < (3, 13) else 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def many_segments(path: str, n: int = 200) -> PartitionLog:
    plog = PartitionLog.open(path, CFG, ManualClock(), fsync_enabled=False)
    for i in range(n):
        plog.append_as_leader(build_batch([(b"k%d" % (i % 7), b"v%d" % i)], 1000 + i), 1)
    assert plog.segment_count >= n  # one batch per segment
    return plog


def test_descriptors_stay_bounded_through_appends_reads_and_a_reopen(tmp_path: object) -> None:
    before = open_fds()
    plog = many_segments(str(tmp_path))
    assert open_fds() - before <= BOUND
    got = read_all(plog)  # every closed segment read once, in order
    assert [v for _, v in got] == [b"v%d" % i for i in range(200)]
    assert open_fds() - before <= BOUND
    for offset in (150, 3, 77, 3, 199, 0):  # random access reopens and releases
        assert len(plog.read(offset, 1000)) > 0
    assert open_fds() - before <= BOUND
    plog.close()
    assert open_fds() == before
    plog = PartitionLog.open(str(tmp_path), CFG, ManualClock(), fsync_enabled=False)
    assert open_fds() - before <= BOUND
    assert [v for _, v in read_all(plog)] == [b"v%d" % i for i in range(200)]
    check_log_consistent(plog)
    plog.close()
    assert open_fds() == before


def test_truncation_retention_and_cleaning_work_on_released_segments(
        tmp_path: object) -> None:
    before = open_fds()
    plog = many_segments(str(tmp_path))
    plog.truncate_to(120)  # into a closed segment whose descriptor was released
    assert plog.log_end_offset == 120
    plog.append_as_leader(build_batch([(b"k", b"after")], 5000), 1)
    plog.maybe_increment_log_start_offset(10)
    res = plog.clean(now_ms=10_000, max_offset=plog.log_end_offset)
    assert res.segments_rewritten > 0
    got = dict(read_all(plog))
    assert got[120] == b"after"
    assert open_fds() - before <= BOUND
    check_log_consistent(plog)
    plog.close()
    assert open_fds() == before


def index_files_held(directory: str) -> tuple[set[str], set[str]]:
    """Index files of `directory` open as descriptors, and mapped."""
    fds = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds.add(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # the listing's own descriptor, closed meanwhile
    with open("/proc/self/maps") as f:
        maps = {line.split(None, 5)[5].strip() for line in f if len(line.split()) == 6}
    def ours(paths: set[str]) -> set[str]:
        return {os.path.basename(p) for p in paths
                if p.startswith(directory + "/") and p.endswith((".index", ".timeindex"))}
    return ours(fds), ours(maps)


def test_only_the_active_segments_indexes_are_mapped(tmp_path: object) -> None:
    """Segments of several indexed batches each: the active segment's two indexes are
    mapped (and stored into as entries come); no closed segment's index holds a
    descriptor or a mapping, through rolls, reads, truncation and a reopen."""
    cfg = LogConfig(segment_bytes=2000, index_interval_bytes=1)
    directory = os.path.realpath(str(tmp_path))
    mapped = _overwrites_in_place(directory)  # else written with pwrite, never mapped
    before = open_fds()
    plog = PartitionLog.open(directory, cfg, ManualClock(), fsync_enabled=False)
    for i in range(600):
        plog.append_as_leader(build_batch([(b"k", b"v%d" % i)], 1000 + i), 1)
    assert plog.segment_count > 20 and plog.segments[0].index.entries > 10
    active = plog.segments[-1]
    names = {os.path.basename(active.index_path), os.path.basename(active.timeindex_path)}
    fds, maps = index_files_held(directory)
    assert maps == (names if mapped else set()) and fds <= maps and len(fds) <= ACTIVE_INDEX_FDS
    assert open_fds() - before <= BOUND + ACTIVE_INDEX_FDS
    assert [v for _, v in read_all(plog)] == [b"v%d" % i for i in range(600)]
    plog.truncate_to(300)  # into a closed segment, which becomes the active one
    plog.append_as_leader(build_batch([(b"k", b"a"), (b"k", b"b")], 5000), 1)
    plog.append_as_leader(build_batch([(b"k", b"c")], 5001), 1)
    active = plog.segments[-1]
    names = {os.path.basename(active.index_path), os.path.basename(active.timeindex_path)}
    fds, maps = index_files_held(directory)
    assert maps == (names if mapped else set()) and fds <= maps
    assert open_fds() - before <= BOUND + ACTIVE_INDEX_FDS
    check_log_consistent(plog)
    plog.close()
    assert open_fds() == before and index_files_held(directory) == (set(), set())
    plog = PartitionLog.open(directory, cfg, ManualClock(), fsync_enabled=False)
    assert index_files_held(directory)[1] == set()  # mapped at the first new entry
    check_log_consistent(plog)
    plog.close()
    assert open_fds() == before


def test_a_released_segment_that_cannot_be_reopened_is_a_storage_error(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of descriptors (EMFILE) when a read reopens a closed segment: the fetch gets a
    `LogStorageError` (STORAGE_ERROR to the client), never a bare OSError, and the same
    reads work once descriptors are free again."""
    import errno

    from dmq.log.errors import LogStorageError

    plog = many_segments(str(tmp_path), n=20)
    real_open = os.open

    def no_descriptors(path: str, *args: object, **kwargs: object) -> int:
        if str(path).endswith(".log"):
            raise OSError(errno.EMFILE, "Too many open files", path)
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", no_descriptors)
    with pytest.raises(LogStorageError, match="Too many open files"):
        plog.read(3, 1000)
    with pytest.raises(LogStorageError, match="Too many open files"):
        plog.offset_for_timestamp(1005)
    monkeypatch.setattr(os, "open", real_open)
    assert [v for _, v in read_all(plog)] == [b"v%d" % i for i in range(20)]
    assert plog.offset_for_timestamp(1005) == (5, 1005)
    plog.close()


def test_a_cleaning_pass_out_of_descriptors_leaks_none(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cleaner duplicates the descriptor of each segment it will read; EMFILE part
    way through must close the duplicates already made (each failed pass leaked them,
    so running out of descriptors fed itself), and the next pass cleans as usual."""
    import errno

    before = open_fds()
    plog = many_segments(str(tmp_path), n=40)
    held = open_fds()
    real_dup = os.dup
    calls = [0]

    def dup_until_emfile(fd: int) -> int:
        calls[0] += 1
        if calls[0] > 10:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_dup(fd)

    monkeypatch.setattr(os, "dup", dup_until_emfile)
    with pytest.raises(OSError, match="Too many open files"):
        plog.clean(now_ms=10_000, max_offset=plog.log_end_offset)
    assert calls[0] == 11
    assert open_fds() <= held + MAX_IDLE_SEGMENT_FDS  # reopened closed segments only
    monkeypatch.setattr(os, "dup", real_dup)
    res = plog.clean(now_ms=10_000, max_offset=plog.log_end_offset)
    assert res.segments_rewritten > 0
    assert [v for _, v in read_all(plog)][-7:] == [b"v%d" % i for i in range(33, 40)]
    check_log_consistent(plog)
    plog.close()
    assert open_fds() == before


def test_a_cleaning_pass_holds_one_duplicate_descriptor_at_a_time(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compaction pass over 200 one-batch segments (segment.bytes=64) used to hold a
    duplicate descriptor of every segment for the whole pass."""
    from dmq.log import cleaner

    plog = many_segments(str(tmp_path))
    baseline = open_fds()
    peak = [0]
    real = cleaner._segment_batches

    def counting(fd: int, size: int) -> object:
        peak[0] = max(peak[0], open_fds() - baseline)
        return real(fd, size)

    monkeypatch.setattr(cleaner, "_segment_batches", counting)
    res = plog.clean(now_ms=10_000, max_offset=plog.log_end_offset)
    assert res.segments_rewritten > 0
    assert 1 <= peak[0] <= 1 + MAX_IDLE_SEGMENT_FDS, peak  # one duplicate, a few reopened
    assert [v for _, v in read_all(plog)][-7:] == [b"v%d" % i for i in range(193, 200)]
    check_log_consistent(plog)
    plog.close()


def test_cleaned_segments_waiting_to_be_swapped_in_hold_no_descriptor(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every segment keeps a record and loses one, and none can merge (segment.bytes=64):
    one replacement per segment waits for the swap; each held its `.log` open."""
    from dmq.log import cleaner

    plog = PartitionLog.open(str(tmp_path), CFG, ManualClock(), fsync_enabled=False)
    for i in range(100):
        plog.append_as_leader(build_batch([(b"u%d" % i, b"x"), (b"k", b"v%d" % i)],
                                          1000 + i), 1)
    baseline = open_fds()
    at_swap: list[int] = []
    real = cleaner._swap_in

    def swap_in(p: PartitionLog, rw: object) -> object:
        at_swap.append(open_fds() - baseline)
        return real(p, rw)  # type: ignore[arg-type]

    monkeypatch.setattr(cleaner, "_swap_in", swap_in)
    res = plog.clean(now_ms=10_000, max_offset=plog.log_end_offset)
    assert res.segments_rewritten >= 90 and len(at_swap) >= 90
    assert max(at_swap) <= 1 + MAX_IDLE_SEGMENT_FDS, at_swap[:3]
    got = dict(read_all(plog))
    assert [got[o] for o in sorted(got) if got[o] == b"x"] == [b"x"] * 100
    check_log_consistent(plog)
    plog.close()
