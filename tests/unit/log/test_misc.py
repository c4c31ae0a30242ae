from __future__ import annotations

import os
import threading

import pytest

from dmq.clock import ManualClock
from dmq.log import LogConfig, OffsetCheckpointFile, PartitionLog, build_batch
from tests.unit.log.helpers import check_log_consistent, read_all


def test_offset_checkpoint_file(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "replication-offset-checkpoint")
    f = OffsetCheckpointFile(path)
    assert f.read() == {}
    f.write({"t-0": 10, "t-1": 0})
    assert OffsetCheckpointFile(path).read() == {"t-0": 10, "t-1": 0}
    with open(path, "w") as fh:
        fh.write("0\n1\nt-0 notanumber\n")
    assert f.read() == {}


@pytest.mark.parametrize("kwargs", [
    {"segment_bytes": 1}, {"segment_bytes": 2**31}, {"cleanup_policy": "nope"},
    {"flush_messages": 0},
    {"message_timestamp_type": "x"}, {"index_interval_bytes": -1}, {"max_message_bytes": 1},
])
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        LogConfig(**kwargs)


def test_config_policies() -> None:
    assert LogConfig().delete and not LogConfig().compact
    both = LogConfig(cleanup_policy="compact,delete")
    assert both.delete and both.compact


def test_delete_removes_folder(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "p")
    plog = PartitionLog.open(path, LogConfig(), ManualClock(), fsync_enabled=False)
    plog.append_as_leader(build_batch([(b"k", b"v")]), 0)
    plog.delete()
    assert not os.path.exists(path)


def test_cleaner_thread_and_appends_interleave_safely(tmp_path: object) -> None:
    cfg = LogConfig(segment_bytes=600, index_interval_bytes=64, cleanup_policy="compact")
    clock = ManualClock()
    plog = PartitionLog.open(str(tmp_path), cfg, clock, fsync_enabled=False)
    stop = threading.Event()
    errors: list[BaseException] = []

    def cleaner() -> None:
        try:
            while not stop.is_set():
                plog.clean(now_ms=clock.wall_ms() + 10**9)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    t = threading.Thread(target=cleaner)
    t.start()
    try:
        for i in range(300):
            plog.append_as_leader(build_batch([(b"k%d" % (i % 5), b"v%d" % i)]), 0)
            read_all(plog)
    finally:
        stop.set()
        t.join()
    assert not errors
    check_log_consistent(plog)
    values = dict(read_all(plog))
    assert values[299] == b"v299"
    plog.close()


def test_unopenable_folder_is_a_typed_error(tmp_path: object) -> None:
    from dmq.log import LogStorageError

    blocker = os.path.join(str(tmp_path), "file")
    with open(blocker, "w") as f:
        f.write("x")
    with pytest.raises(LogStorageError):
        PartitionLog.open(os.path.join(blocker, "p"), LogConfig(), ManualClock())
