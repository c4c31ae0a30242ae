"""`ReplicaManager.load_logs`: every log on disk is opened (recovered after a crash) by
one job per recovery thread; a log that cannot be opened is reported and left out, the
others all load, with the config their `partition.metadata` names."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from dmq.broker.replica_manager import (
    PARTITIONS_DIR,
    ReplicaManager,
    _write_partition_metadata,
    log_config_for,
)
from dmq.log import PartitionLog
from tests.support.inproc_broker import make_config
from tests.unit.log.helpers import batch


async def _no_controller(*_: Any, **__: Any) -> Any:
    raise AssertionError("no controller request expected")


def make_logs(root: Path, n: int) -> None:
    """n logs of the topic `t`, partition p holding p + 1 batches of 2 records, left as
    after a kill -9; partition 1 is compacted; partition 2 cannot be opened."""
    cfg = make_config()
    for p in range(n):
        path = root / PARTITIONS_DIR / f"t-{p}"
        policy = "compact" if p == 1 else "delete"
        plog = PartitionLog.open(str(path), log_config_for(cfg, {"cleanup.policy": policy}),
                                 fsync_enabled=False)
        _write_partition_metadata(path, "tid", policy)
        for i in range(p + 1):
            plog.append_as_leader(batch(2, seed=i), 1)
        plog.abandon()
    first = root / PARTITIONS_DIR / "t-2" / "00000000000000000000.log"
    os.unlink(first)
    os.mkdir(first)  # the segment file is a folder: the log cannot be opened


@pytest.mark.parametrize("threads", [1, 2, 3, 16])
async def test_every_openable_log_loads_with_any_number_of_threads(
        tmp_path: Path, threads: int, caplog: pytest.LogCaptureFixture) -> None:
    make_logs(tmp_path, 7)
    rm = ReplicaManager(make_config(), 101, tmp_path, _no_controller, lambda: 1)
    with caplog.at_level(logging.ERROR, logger="dmq.broker"):
        await rm.load_logs(parallelism=threads)
    try:
        loaded = rm._loaded
        assert sorted(loaded) == [("t", p) for p in range(7) if p != 2]
        for (_, p), (plog, topic_id) in loaded.items():
            assert topic_id == "tid"
            assert plog.log_end_offset == 2 * (p + 1)  # recovered whole
            assert plog.config.compact == (p == 1)
        assert [r for r in caplog.records if "cannot open log" in r.getMessage()
                and "t-2" in r.getMessage()]
    finally:
        for plog, _ in rm._loaded.values():
            plog.abandon()
        rm._create_pool.shutdown()
        rm.epoch_flusher.stop(5)
