"""Broker request handling in one process: validation, idempotence, fetch sizing and
offsets, ListOffsets, OffsetForLeaderEpoch, METADATA, topic deletion and restarts."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dmq.log.batch import iter_headers, iter_records
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import ErrorCode, InvalidRequiredAcksError
from tests.support.inproc_broker import (
    InProcBroker,
    StandInController,
    batch,
    fetch,
    make_config,
    produce,
    started_brokers,
)
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def single(tmp_path: Path) -> AsyncIterator[tuple[StandInController, InProcBroker]]:
    async with started_brokers(tmp_path, (1,)) as (ctl, (b,)):
        await ctl.create_topic("t", [[1], [1]], {"max.message.bytes": "4096"})
        yield ctl, b


async def test_batch_validation_and_request_errors(single) -> None:
    _, b = single
    conn = await b.connect()
    good = batch([b"a", b"b"])
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0xFF
    assert (await produce(conn, "t", 0, bytes(bad_crc)))[1] == ErrorCode.CORRUPT_MESSAGE
    bad_magic = bytearray(good)
    bad_magic[16] = 1
    assert (await produce(conn, "t", 0, bytes(bad_magic)))[1] == ErrorCode.CORRUPT_MESSAGE
    assert (await produce(conn, "t", 0, good[:-3]))[1] == ErrorCode.CORRUPT_MESSAGE
    assert (await produce(conn, "t", 0, b""))[1] == ErrorCode.CORRUPT_MESSAGE
    # a batch of the previous record format (no dmq-native mark), as a dmq client older
    # than the broker sends it: stored, it would read as Kafka records nobody can decode
    from tests.support.old_format import old_batch
    row = await produce(conn, "t", 0, old_batch([(None, b"a")]))
    assert row[1] == ErrorCode.INVALID_RECORD and "dmq-native mark" in row[4], row
    row = await produce(conn, "t", 0, good + old_batch([(None, b"a")]))
    assert row[1] == ErrorCode.INVALID_RECORD, row
    big = batch([b"x" * 5000])
    assert (await produce(conn, "t", 0, big))[1] == ErrorCode.MESSAGE_TOO_LARGE
    assert (await produce(conn, "nope", 0, good))[1] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert (await produce(conn, "t", 7, good))[1] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    with pytest.raises(InvalidRequiredAcksError):
        await produce(conn, "t", 0, good, acks=2)
    assert b.partition("t").log_end_offset == 0
    # one request, many partitions: one answer with a row each
    resp = await conn.request(ApiKey.PRODUCE, {"acks": -1, "timeout_ms": 1000, "topics": [
        ["t", [[0, -1, good], [1, -1, good], [9, -1, good]]], ["zz", [[0, -1, good]]]]})
    rows = {(t, r[0]): r[1] for t, rs in resp["topics"] for r in rs}
    assert rows == {("t", 0): 0, ("t", 1): 0, ("t", 9): ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                    ("zz", 0): ErrorCode.UNKNOWN_TOPIC_OR_PARTITION}
    await conn.close()


async def test_acks_zero_keeps_order_and_sends_nothing(single) -> None:
    _, b = single
    conn = await b.connect()
    for i in range(50):
        conn.send_oneway(ApiKey.PRODUCE, {"acks": 0, "timeout_ms": 1000,
                                          "topics": [["t", [[0, -1, batch([b"%d" % i])]]]]})
    row = await produce(conn, "t", 0, batch([b"last"]), acks=1)
    assert row[1] == 0 and row[2] == 50
    values = [r.value for r in iter_records((await fetch(conn, "t", 0, 0))[5])]
    assert values == [b"%d" % i for i in range(50)] + [b"last"]
    await conn.close()


async def test_idempotent_dedup_gap_and_fencing(single) -> None:
    _, b = single
    conn = await b.connect()
    first = batch([b"a", b"b", b"c"], pid=7, epoch=0, seq=0)
    row = await produce(conn, "t", 0, first)
    assert row[1] == 0 and row[2] == 0
    # exact retry: original offsets, nothing appended
    row = await produce(conn, "t", 0, first)
    assert row[1] == 0 and row[2] == 0
    assert b.partition("t").log_end_offset == 3
    row = await produce(conn, "t", 0, batch([b"d"], pid=7, epoch=0, seq=5))
    assert row[1] == ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER
    row = await produce(conn, "t", 0, batch([b"d"], pid=7, epoch=0, seq=3))
    assert row[1] == 0 and row[2] == 3
    row = await produce(conn, "t", 0, batch([b"e"], pid=7, epoch=1, seq=0))
    assert row[1] == 0 and row[2] == 4
    row = await produce(conn, "t", 0, batch([b"f"], pid=7, epoch=0, seq=4))
    assert row[1] == ErrorCode.INVALID_PRODUCER_EPOCH
    await conn.close()


async def test_idempotent_retry_after_dropped_connection(single) -> None:
    _, b = single
    conn = await b.connect()
    payload = {"acks": -1, "timeout_ms": 1000, "topics": [
        ["t", [[0, -1, batch([b"once-%d" % i for i in range(10)], pid=3, epoch=0, seq=0)]]]]}
    # send, then drop the connection before reading the answer
    conn.send_oneway(ApiKey.PRODUCE, payload)
    await conn.close()
    await until(lambda: b.partition("t").log_end_offset == 10, "the first send is appended")
    conn = await b.connect()
    resp = await conn.request(ApiKey.PRODUCE, payload)
    row = resp["topics"][0][1][0]
    assert row[1] == 0 and row[2] == 0
    values = [r.value for r in iter_records((await fetch(conn, "t", 0, 0))[5])]
    assert values == [b"once-%d" % i for i in range(10)]
    await conn.close()


async def test_fetch_sizes_and_out_of_range(single) -> None:
    _, b = single
    conn = await b.connect()
    sizes = []
    for i in range(10):
        data = batch([bytes([65 + i]) * 1000])
        sizes.append(len(data))
        assert (await produce(conn, "t", 0, data))[1] == 0
        assert (await produce(conn, "t", 1, data))[1] == 0
    one = sizes[0]
    # partition max smaller than a batch: still one whole batch
    row = await fetch(conn, "t", 0, 0, partition_max_bytes=10)
    assert len(row[5]) == one and len(list(iter_headers(row[5]))) == 1
    # the batch containing the offset, whole, up to the limit
    row = await fetch(conn, "t", 0, 3, partition_max_bytes=2 * one + 10)
    hs = list(iter_headers(row[5]))
    assert [h.base_offset for h in hs] == [3, 4]
    # request max across partitions: the second partition gets what is left
    resp = await conn.request(ApiKey.FETCH, {
        "max_wait_ms": 0, "min_bytes": 1, "max_bytes": 3 * one,
        "topics": [["t", [[0, 0, -1, 2 * one], [1, 0, -1, 10 * one]]]]})
    r0, r1 = resp["topics"][0][1]
    assert len(r0[5]) == 2 * one and len(r1[5]) == one
    row = await fetch(conn, "t", 0, 11)
    assert row[1] == ErrorCode.OFFSET_OUT_OF_RANGE and row[3] == 0 and row[4] == 10
    row = await fetch(conn, "t", 0, 10, max_wait_ms=50)
    assert row[1] == 0 and bytes(row[5]) == b""
    await conn.close()


async def test_list_offsets_and_offset_for_leader_epoch(single) -> None:
    ctl, b = single
    conn = await b.connect()
    for i in range(5):
        assert (await produce(conn, "t", 0, batch([b"v"] * 2, ts=1000 * (i + 1))))[1] == 0
    resp = await conn.request(ApiKey.LIST_OFFSETS, {"topics": [
        ["t", [[0, -2], [0, -1], [0, 2500], [0, 3000], [0, 99999]]], ["q", [[0, -1]]]]})
    rows = resp["topics"][0][1]
    assert rows[0][1:] == [0, -1, 0]
    assert rows[1][1:] == [0, -1, 10]
    assert rows[2][1:] == [0, 3000, 4]
    assert rows[3][1:] == [0, 3000, 4]
    assert rows[4][1:] == [0, -1, -1]
    assert resp["topics"][1][1][0][1] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    ctl.set_partition("t", 0, leader=1)  # epoch 1
    assert (await produce(conn, "t", 0, batch([b"w"])))[1] == 0
    resp = await conn.request(ApiKey.OFFSET_FOR_LEADER_EPOCH, {"topics": [
        ["t", [[0, -1, 0], [0, 1, 1], [0, 0, 0]]]]})
    rows = resp["topics"][0][1]
    assert rows[0][1:] == [0, 0, 10]
    assert rows[1][1:] == [0, 1, 11]
    assert rows[2][1] == ErrorCode.FENCED_LEADER_EPOCH
    await conn.close()


async def test_metadata_from_image(single) -> None:
    _, b = single
    conn = await b.connect()
    body = await conn.request(ApiKey.METADATA, {})
    assert [t["name"] for t in body["topics"]] == ["t"]
    assert body["brokers"] == [[1, "127.0.0.1", b.port, None]]
    parts = body["topics"][0]["partitions"]
    assert parts[0][:3] == [0, 1, 0]
    body = await conn.request(ApiKey.METADATA, {"topics": ["nope"]})
    assert body["topics"][0]["error"] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    await conn.close()


async def test_topic_deletion_removes_logs(single) -> None:
    ctl, b = single
    conn = await b.connect()
    assert (await produce(conn, "t", 0, batch([b"x"])))[1] == 0
    path = Path(b.partition("t").log.directory)
    assert path.exists()
    ctl.delete_topic("t")
    assert b.partition("t") is None
    await until(lambda: not any(p.name.startswith("t-0") for p in path.parent.iterdir()),
                "the deleted topic's log is removed")
    assert (await produce(conn, "t", 0, batch([b"x"])))[1] == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    await conn.close()


@pytest.mark.parametrize("crash", [False, True])
async def test_restart_recovers_log_and_hw(single, crash: bool) -> None:
    ctl, b = single
    conn = await b.connect()
    for i in range(20):
        assert (await produce(conn, "t", 0, batch([b"r%d" % i])))[1] == 0
    await conn.close()
    if crash:
        await b.crash()
        # a torn tail: half a batch at the end of the active segment
        seg = sorted(Path(b.root / "b1" / "partitions" / "t-0").glob("*.log"))[-1]
        with open(seg, "ab") as f:
            f.write(batch([b"torn"])[:30])
    else:
        await b.stop()
    await b.start()
    part = b.partition("t")
    assert part.log_end_offset == 20
    assert part.high_watermark == 20  # single replica: leader again, HW = LEO
    conn = await b.connect()
    values = [r.value for r in iter_records((await fetch(conn, "t", 0, 0))[5])]
    assert values == [b"r%d" % i for i in range(20)]
    row = await produce(conn, "t", 0, batch([b"after"]))
    assert row[1] == 0 and row[2] == 20
    await conn.close()


def test_header_layout_is_what_the_tests_assume() -> None:
    data = batch([b"a"])
    assert struct.unpack_from(">b", data, 16)[0] == 2


async def test_logs_of_topics_deleted_or_recreated_while_down(single, monkeypatch) -> None:
    import dmq.broker.replica_manager as rm

    ctl, b = single
    conn = await b.connect()
    assert (await produce(conn, "t", 0, batch([b"old"] * 3)))[1] == 0
    await ctl.create_topic("gone", [[1]])
    assert (await produce(conn, "gone", 0, batch([b"x"])))[1] == 0
    await conn.close()
    await b.stop()
    parts = b.root / "b1" / "partitions"
    # while the broker is down: "t" is deleted and re-created (new id), "gone" is deleted
    ctl.delete_topic("t")
    ctl.delete_topic("gone")
    await ctl.create_topic("t", [[1], [1]])
    await b.start()
    assert b.partition("t").log_end_offset == 0  # the new topic's log, not the old one
    assert (parts / "gone-0").exists()  # absent topic: kept during the grace period
    monkeypatch.setattr(rm, "STRAY_LOG_GRACE_MS", 0)
    b.replicas.apply_image(ctl.image)
    await until(lambda: not any(p.name.startswith("gone-0") for p in parts.iterdir()),
                "the stray log is removed after its grace period")


async def test_fetch_epoch_checks(single) -> None:
    ctl, b = single
    ctl.set_partition("t", 0, leader=1)  # epoch 1
    conn = await b.connect()
    assert (await produce(conn, "t", 0, batch([b"a"])))[1] == 0
    assert (await fetch(conn, "t", 0, 0, epoch=0))[1] == ErrorCode.FENCED_LEADER_EPOCH
    assert (await fetch(conn, "t", 0, 0, epoch=2))[1] == ErrorCode.UNKNOWN_LEADER_EPOCH
    assert (await fetch(conn, "t", 0, 0, epoch=1))[1] == 0
    # a broker that is not a replica may not fetch as one
    assert (await fetch(conn, "t", 0, 0, replica_id=9))[1] == ErrorCode.NOT_LEADER_OR_FOLLOWER
    await conn.close()


async def test_creating_many_partitions_does_not_stall_the_event_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import dmq.broker.replica_manager as rm

    created_on: list[int] = []
    real_create_log = rm._create_log

    def recording_create_log(*args: Any, **kw: Any) -> Any:
        created_on.append(threading.get_ident())
        return real_create_log(*args, **kw)

    monkeypatch.setattr(rm, "_create_log", recording_create_log)
    ctl = StandInController()
    b = InProcBroker(1, tmp_path, ctl, make_config())
    await b.start()
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            t0 = loop.time()
            await asyncio.sleep(0.005)  # the pace of the stall measurement
            lags.append(loop.time() - t0 - 0.005)

    task = asyncio.create_task(ticker())
    try:
        await until(lambda: lags, "the ticker runs")
        await ctl.create_topic("many", [[1]] * 500)
        assert len(b.replicas.partitions) == 500
        assert all(p.is_leader for p in b.replicas.partitions.values())
    finally:
        stop.set()
        await task
        await b.stop()
    # the stall figure is printed, not asserted; what keeps the loop free (it stalled
    # ~3 s when the logs were made on it) is that every log is made off its thread
    print(f"\n500 new partition logs: worst event-loop stall {max(lags) * 1000:.1f} ms")
    assert len(created_on) == 500 and threading.get_ident() not in created_on


async def test_long_poll_sees_data_arriving_before_its_task_starts(single) -> None:
    """The server runs a returned coroutine later; an append in between must wake it."""
    _, b = single
    body = {"max_wait_ms": 5000, "min_bytes": 1, "max_bytes": 1 << 20, "replica_id": -1,
            "broker_epoch": -1, "topics": [["t", [[0, 0, -1, 1 << 20]]]]}
    pending = b.plane.fetch(None, body)
    assert asyncio.iscoroutine(pending)
    b.partition("t").append_as_leader(batch([b"now"]), 1)  # single replica: HW moves
    t0 = asyncio.get_running_loop().time()
    resp = await pending
    assert asyncio.get_running_loop().time() - t0 < 1.0
    assert [r.value for r in iter_records(resp["topics"][0][1][0][5])] == [b"now"]
