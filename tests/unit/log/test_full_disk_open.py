"""A log on a full disk fails with an error, never a SIGBUS (issue 25, item 10).

The active segment's index files are mapped: a store into (or, on tmpfs, any touch of)
a hole of a mapped file on a full file system kills the process with SIGBUS, so a
mapping must only ever cover allocated blocks. The log runs in a child process so that
a SIGBUS shows as the child's exit status instead of killing the test run. Needs root
for a small tmpfs; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator

import pytest

from dmq.log import LogConfig, PartitionLog, build_batch
from dmq.log.errors import LogDiskFullError
from tests.support.tmpfs import fill, mount_tmpfs, tmpfs_skip_reason
from tests.unit.log.helpers import check_log_consistent, read_all

CFG = LogConfig(segment_index_bytes=256 * 1024, index_interval_bytes=64)


@pytest.fixture
def small_disk() -> Iterator[str]:
    reason = tmpfs_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    d = tempfile.mkdtemp(prefix="dmq-full-disk-")
    r = mount_tmpfs(d, "2m")
    assert r.returncode == 0, r.stderr
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", d], check=False)
        os.rmdir(d)


def _reopen_in_child(path: str, extra: str = "") -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(f"""
        from dmq.log import LogConfig, LogStorageError, PartitionLog
        cfg = LogConfig(segment_index_bytes={CFG.segment_index_bytes}, index_interval_bytes=64)
        try:
            plog = PartitionLog.open({path!r}, cfg, fsync_enabled=False)
            {extra}
            print("opened", plog.log_end_offset)
        except LogStorageError as exc:
            print("refused:", exc)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)


def _log_with_data(directory: str, clean: bool, cfg: LogConfig = CFG) -> str:
    path = os.path.join(directory, "t-0")
    plog = PartitionLog.open(path, cfg, fsync_enabled=False)
    for i in range(20):
        plog.append_as_leader(build_batch([(b"k", b"v%d" % i)], 1_700_000_000_000), 1)
    if clean:
        plog.close()  # the active segment's indexes are trimmed to their entries
    else:
        plog.abandon()  # a crash: the next open recovers and rebuilds the indexes
    return path


@pytest.mark.parametrize("clean", [False, True])
@pytest.mark.parametrize("free_pages", [0, 1, 2, 3])
def test_reopen_on_a_full_disk_is_an_error_not_a_sigbus(small_disk: str, clean: bool,
                                                        free_pages: int) -> None:
    """With one page free the old code died of SIGBUS (rc -7) after a crash: the meta
    checkpoint took and gave back a page, then the rebuilt index's first store into
    its sparse preallocation found no page to fill the hole."""
    path = _log_with_data(small_disk, clean)
    fill(small_disk, free_pages)
    r = _reopen_in_child(path, "plog.flush(); plog.close()")
    assert r.returncode == 0, f"child died (rc {r.returncode}): {r.stderr[-2000:]}"
    # refused naming the full disk, or opened within blocks its indexes already held
    assert ("opened 20" in r.stdout or "refused:" in r.stdout
            and "No space left on device" in r.stdout), r.stdout
    os.unlink(os.path.join(small_disk, "filler"))  # space returns: it opens, data intact
    r = _reopen_in_child(path)
    assert r.returncode == 0 and "opened 20" in r.stdout, (r.stdout, r.stderr)


def test_a_clean_reopen_with_empty_indexes_on_a_full_disk(small_disk: str) -> None:
    """The issue's restart: a clean stop left the active segment's indexes trimmed to
    nothing (no entry yet); reopened, they were grown back sparse and mapped, and the
    first read of entry 0, a hole, faulted on the full tmpfs: SIGBUS (rc 135)."""
    path = _log_with_data(small_disk, True, LogConfig(segment_index_bytes=256 * 1024))
    fill(small_disk, 0)
    r = _reopen_in_child(path)
    assert r.returncode == 0, f"child died (rc {r.returncode}): {r.stderr[-2000:]}"
    assert ("opened 20" in r.stdout or "refused:" in r.stdout
            and "No space left on device" in r.stdout), r.stdout


def test_a_sparse_index_of_an_active_segment_on_a_full_disk(
        small_disk: str) -> None:
    """The active segment's indexes are preallocated sparse; the disk fills; reopen,
    flush and close write into the holes: errors at most (here none: a full disk only
    keeps index entries in memory), never a signal."""
    path = _log_with_data(small_disk, clean=True)
    for name in os.listdir(path):
        if name.endswith((".index", ".timeindex")):
            os.truncate(os.path.join(path, name), CFG.segment_index_bytes)  # a hole
    fill(small_disk, 1)
    r = _reopen_in_child(path, "plog.flush(); plog.close()")
    assert r.returncode == 0, f"child died (rc {r.returncode}): {r.stderr[-2000:]}"
    assert ("opened 20" in r.stdout or "refused:" in r.stdout
            and "No space left on device" in r.stdout), r.stdout


def test_a_roll_on_a_full_disk_refuses_the_append_and_the_log_stays_open(
        small_disk: str) -> None:
    """Rolling needs no space (sparse indexes, and the recovery point of the meta
    checkpoint may stay behind); the append is refused as a full disk, the log stays
    open, and the same append succeeds once space returns."""
    cfg = LogConfig(segment_bytes=1000, segment_index_bytes=256 * 1024)
    plog = PartitionLog.open(os.path.join(small_disk, "t-0"), cfg, fsync_enabled=False)
    data = build_batch([(b"k", b"v" * 200)], 1_700_000_000_000)
    while plog.segment_count == 1:
        plog.append_as_leader(data, 1)
    while plog.segments[-1].size_bytes + len(data) <= cfg.segment_bytes:
        plog.append_as_leader(data, 1)  # the next append rolls
    end = plog.log_end_offset
    fill(small_disk, 0)
    with pytest.raises(LogDiskFullError, match="No space left"):
        plog.append_as_leader(data, 1)
    assert (plog.log_end_offset, plog.closed) == (end, False)
    os.unlink(os.path.join(small_disk, "filler"))
    plog.append_as_leader(data, 1)
    assert plog.log_end_offset == end + 1
    plog.close()
    plog = PartitionLog.open(os.path.join(small_disk, "t-0"), cfg, fsync_enabled=False)
    assert plog.log_end_offset == end + 1
    plog.close()


_GROW_ON_A_FULL_DISK = """
import errno, os, sys
from dmq.log import LogConfig, LogStorageError, PartitionLog, build_batch

directory, free_before_close = sys.argv[1], sys.argv[2] == "1"
path = os.path.join(directory, "t-0")
cfg = LogConfig(segment_index_bytes=256 * 1024, index_interval_bytes=1)
plog = PartitionLog.open(path, cfg, fsync_enabled=True)
seg = plog.segments[-1]
index = seg.index
written = 0

def append(value_bytes=0):
    global written
    value = b"v%d" % written + bytes(value_bytes)
    plog.append_as_leader(build_batch([(b"k", value)], 1_700_000_000_000 + written), 1)
    written += 1

def fill(leave_pages):
    with open(os.path.join(directory, "filler"), "wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(4096))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        f.truncate(f.tell() - 4096 * leave_pages)

while index.entries < 4096 - 11:  # an entry per batch; the file's 32 KiB step nearly full
    append()
print("before", os.path.getsize(index.path))
# One padded batch leaves the log's last page nearly empty: the next 40 small batches
# need no new page of the disk, while the index needs one after 10 of them.
need = (100 - seg.size_bytes) % 4096 + 4096
pad = next(p for p in range(need, -1, -1)
           if len(build_batch([(b"k", b"v%d" % written + bytes(p))], 0)) == need)
append(pad)
assert seg.size_bytes % 4096 == 100, seg.size_bytes
fill(0)
for _ in range(40):
    append()
print("full", os.path.getsize(index.path), index.entries, plog.log_end_offset)
print("lookup", plog.read(written - 1, 1 << 20)[:0] == b"", index.lookup(written - 1)[0])
if free_before_close:
    os.unlink(os.path.join(directory, "filler"))
    plog.flush()  # the entries kept in memory reach the file
    print("flushed", os.path.getsize(index.path))
try:
    plog.close()
except LogStorageError as exc:  # no room for the meta checkpoint: the next open recovers
    print("unclean", exc)
print("closed", os.path.getsize(index.path))
"""


@pytest.mark.parametrize("free_before_close", [True, False])
def test_the_disk_fills_while_the_active_index_grows(small_disk: str,
                                                     free_before_close: bool) -> None:
    """The offset index's file is full at 4096 entries (32 KiB) and the disk is full;
    the log's last page still has room for 40 small batches. The appends go on, the
    entries past 4096 stay in memory (lookups use them), a warning names the index, and
    a flush once there is room writes them (else the closed file keeps the prefix it
    had, without a hole). A mapping grown over unallocated pages (ftruncate instead of
    posix_fallocate) died here of SIGBUS (rc -7) at the first store into the new page."""
    r = subprocess.run([sys.executable, "-c", _GROW_ON_A_FULL_DISK, small_disk,
                        "1" if free_before_close else "0"],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, f"child died (rc {r.returncode}): {r.stderr[-2000:]}"
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert lines["before"] == "32768"
    size, entries, end = map(int, lines["full"].split())
    assert (size, entries, end) == (32768, 4096 - 10 + 40, 4096 - 10 + 40 + 1)
    assert lines["lookup"] == f"True {end - 1}"  # the entry kept in memory serves it
    assert "cannot grow" in r.stderr and "stay in memory" in r.stderr, r.stderr
    if free_before_close:
        assert lines["flushed"] == "65536"
        assert lines["closed"] == str(entries * 8) and "unclean" not in lines
    else:
        assert lines["closed"] == "32768"  # the prefix that was stored, no hole
        os.unlink(os.path.join(small_disk, "filler"))
    cfg = LogConfig(segment_index_bytes=256 * 1024, index_interval_bytes=1)
    plog = PartitionLog.open(os.path.join(small_disk, "t-0"), cfg, fsync_enabled=False)
    try:
        assert plog.log_end_offset == end
        if free_before_close:
            assert plog.segments[-1].index.entries == entries
        assert [v[:len(b"v%d" % i)] for i, (_, v) in enumerate(read_all(plog))] == [
            b"v%d" % i for i in range(end)]
        check_log_consistent(plog)
    finally:
        plog.close()
