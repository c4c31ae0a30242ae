"""Topic configs reach the partition logs: at creation, after a restart, when altered
on a running broker, and compaction of `cleanup.policy=compact` topics by the broker."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dmq.log.batch import build_batch, iter_records
from dmq.protocol.errors import ErrorCode
from tests.support.inproc_broker import (
    InProcBroker,
    StandInController,
    batch,
    fetch,
    make_config,
    produce,
)
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(60)


def set_topic_configs(ctl: StandInController, name: str, configs: dict[str, str]) -> None:
    """What the controller publishes after ALTER_CONFIGS."""
    topics = dict(ctl.image.topics)
    topics[name] = dataclasses.replace(topics[name], configs=configs)
    ctl._publish(topics=topics)  # noqa: SLF001


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[tuple[StandInController, InProcBroker]]:
    ctl = StandInController()
    b = InProcBroker(1, tmp_path, ctl, make_config(log_retention_check_interval_ms=50,
                                                   log_cleaner_backoff_ms=50))
    await b.start()
    yield ctl, b
    if b.running:
        await b.stop()


@pytest.mark.parametrize("crash", [False, True])
async def test_topic_configs_survive_a_restart(broker, crash: bool) -> None:
    ctl, b = broker
    await ctl.create_topic("t", [[1]], {"max.message.bytes": "4096", "flush.messages": "1"})
    conn = await b.connect()
    big = batch([b"x" * 5000])
    assert (await produce(conn, "t", 0, big))[1] == ErrorCode.MESSAGE_TOO_LARGE
    await conn.close()
    await (b.crash() if crash else b.stop())
    await b.start()
    plog = b.partition("t").log
    assert plog.config.max_message_bytes == 4096 and plog.config.flush_messages == 1
    conn = await b.connect()
    assert (await produce(conn, "t", 0, big))[1] == ErrorCode.MESSAGE_TOO_LARGE
    assert (await produce(conn, "t", 0, batch([b"ok"])))[1] == 0
    assert plog.recovery_point == plog.log_end_offset  # flush.messages=1: fsynced at once
    await conn.close()


async def test_altered_configs_apply_to_open_logs(broker) -> None:
    ctl, b = broker
    await ctl.create_topic("t", [[1]], {"segment.bytes": "1024"})
    conn = await b.connect()
    # timestamped now: the default 7-day retention must not take these segments before
    # retention.ms=0 does (batch()'s fixed 2023 timestamp let any retention check that
    # ran during the produces delete them: a race with the 50 ms check interval)
    now_ms = int(time.time() * 1000)
    for i in range(40):
        assert (await produce(conn, "t", 0, batch([b"v%d" % i * 20], ts=now_ms)))[1] == 0
    plog = b.partition("t").log
    assert plog.segment_count > 3 and plog.log_start_offset == 0
    big = batch([b"x" * 5000])
    set_topic_configs(ctl, "t", {"segment.bytes": "1024", "max.message.bytes": "4096",
                                 "retention.ms": "0"})
    assert (await produce(conn, "t", 0, big))[1] == ErrorCode.MESSAGE_TOO_LARGE
    # the retention check runs every 50 ms here
    await until(lambda: plog.segment_count == 1, "retention.ms=0 leaving one segment")
    assert plog.log_start_offset > 0
    row = await fetch(conn, "t", 0, plog.log_start_offset)
    assert row[1] == 0
    await conn.close()


async def test_compacted_topic_is_cleaned_by_the_broker(broker) -> None:
    ctl, b = broker
    await ctl.create_topic("c", [[1]], {"cleanup.policy": "compact", "segment.bytes": "2048"})
    conn = await b.connect()
    newest: dict[bytes, bytes] = {}
    for i in range(300):
        key, value = b"k%d" % (i % 5), b"v%d" % i
        newest[key] = value
        data = build_batch([(key, value)], timestamp_ms=1_700_000_000_000 + i)
        assert (await produce(conn, "c", 0, data))[1] == 0
    plog = b.partition("c").log
    before = plog.size_bytes
    # the cleaner runs every 50 ms here
    await until(lambda: plog.size_bytes < before // 4, "the cleaner compacting the log")
    seen: dict[bytes, bytes] = {}
    offset = 0
    while offset < plog.log_end_offset:
        row = await fetch(conn, "c", 0, offset)
        records = [r for r in iter_records(row[5]) if r.offset >= offset]
        for r in records:
            seen[r.key] = r.value
        offset = records[-1].offset + 1
    assert seen == newest
    assert plog.log_end_offset == 300  # offsets are kept
    await conn.close()


async def test_a_restarted_broker_knows_a_log_is_compacted_before_any_image(broker) -> None:
    """Recovery runs before the first metadata image: the cleanup policy is kept beside
    the log, so a compacted log's gaps are not taken for damage."""
    from dmq.broker import replica_manager

    ctl, b = broker
    await ctl.create_topic("c", [[1]], {"cleanup.policy": "compact"})
    path = Path(b.partition("c").log.directory)
    assert replica_manager._read_partition_metadata(path)["cleanup.policy"] == "compact"  # noqa: SLF001
    set_topic_configs(ctl, "c", {"cleanup.policy": "compact,delete"})
    assert replica_manager._read_partition_metadata(path)["cleanup.policy"] == "compact,delete"  # noqa: SLF001
    await b.crash()
    rm = replica_manager.ReplicaManager(b.config, 1, b.root / "b1", ctl.requester(1),
                                        lambda: 1)
    await rm.load_logs()  # what a starting broker does before its first image
    plog, topic_id = rm._loaded[("c", 0)]  # noqa: SLF001
    try:
        assert plog.config.cleanup_policy == "compact,delete" and topic_id
    finally:
        plog.close()


async def test_a_failed_log_answers_storage_error_and_is_counted(broker) -> None:
    ctl, b = broker
    await ctl.create_topic("f", [[1]])
    conn = await b.connect()
    assert (await produce(conn, "f", 0, batch([b"before"])))[1] == 0
    b.partition("f").log.fail("simulated: a segment swap failed after its commit point")
    assert (await produce(conn, "f", 0, batch([b"after"])))[1] == ErrorCode.STORAGE_ERROR
    assert (await fetch(conn, "f", 0, 0))[1] == ErrorCode.STORAGE_ERROR
    assert b.replicas.info()["failed_logs"] == 1
    await conn.close()
