"""A log on a full disk fails with an error, never a SIGBUS (issue 25, item 10).

Index files were mapped: a store into (or, on tmpfs, any touch of) a hole of a mapped
file on a full file system kills the process with SIGBUS. The log is reopened in a
child process so that a SIGBUS shows as the child's exit status instead of killing the
test run. Needs root for a small tmpfs; skipped with the reason otherwise.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator

import pytest

from dmq.log import LogConfig, PartitionLog, build_batch
from dmq.log.errors import LogDiskFullError

CFG = LogConfig(segment_index_bytes=256 * 1024, index_interval_bytes=64)


def _tmpfs_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs"
    d = tempfile.mkdtemp(prefix="dmq-tmpfs-probe-")
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", d],
                           capture_output=True, text=True, check=False)
        if r.returncode != 0:
            return f"mount -t tmpfs does not work here: {r.stderr.strip()}"
        subprocess.run(["umount", d], check=False)
        return None
    finally:
        os.rmdir(d)


@pytest.fixture
def small_disk() -> Iterator[str]:
    reason = _tmpfs_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    d = tempfile.mkdtemp(prefix="dmq-full-disk-")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", d],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", d], check=False)
        os.rmdir(d)


def _fill(directory: str, leave_pages: int) -> None:
    """Write a filler file until the file system is full, then free `leave_pages` pages."""
    path = os.path.join(directory, "filler")
    with open(path, "wb", buffering=0) as f:
        chunk = b"\0" * 4096
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    os.truncate(path, os.path.getsize(path) - 4096 * leave_pages)


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
    _fill(small_disk, free_pages)
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
    _fill(small_disk, 0)
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
    _fill(small_disk, 1)
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
    _fill(small_disk, 0)
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
