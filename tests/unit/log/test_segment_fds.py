"""A log holds at most one `.log` descriptor for its active segment plus
`MAX_IDLE_SEGMENT_FDS` for closed segments being read, whatever its segment count
(issue 25, item 14: a topic with segment.bytes of 64 cost a descriptor per segment).
Index files hold none. Counted in /proc/self/fd."""

from __future__ import annotations

import os

import pytest

from dmq.clock import ManualClock
from dmq.log import LogConfig, PartitionLog, build_batch
from dmq.log.partition_log import MAX_IDLE_SEGMENT_FDS
from tests.unit.log.helpers import check_log_consistent, read_all

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                                reason="counts descriptors in /proc/self/fd")
CFG = LogConfig(segment_bytes=64, cleanup_policy="compact", delete_retention_ms=0)
BOUND = 1 + MAX_IDLE_SEGMENT_FDS


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
