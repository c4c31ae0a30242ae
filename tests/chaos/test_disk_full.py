"""Disk faults: a broker whose data folder is a small tmpfs (mounted for the test; the
test skips where `mount -t tmpfs` is not allowed). When the disk fills, the broker
refuses writes with STORAGE_ERROR naming the full disk, stays up and ONLINE, and serves
reads; when space returns (the tmpfs is grown) it accepts writes again; nothing
acknowledged is lost and nothing refused is in the log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dmq.log.batch import build_batch, iter_headers, iter_records
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import request_once
from dmq.protocol.errors import DmqError, ErrorCode
from tests.support.procs import ProcessCluster
from tests.support.tmpfs import mount_tmpfs, tmpfs_data_dir, tmpfs_skip_reason
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]

TOPIC = "disk"
RECORD = b"x" * 16_000


why = tmpfs_skip_reason()
ok = why is None


@pytest.fixture
def small_disk_cluster() -> Iterator[ProcessCluster]:
    if not ok:
        pytest.skip(why)
    with ProcessCluster(controllers=1, brokers=1, settings={
            "broker.session.timeout.ms": 3000, "broker.heartbeat.interval.ms": 300}) as c:
        with tmpfs_data_dir(c, 101, "3m"):
            c.start()
            yield c


def ask(c: ProcessCluster, node: int, api: ApiKey, body: Any, timeout_ms: int = 5000) -> Any:
    return asyncio.run(request_once("127.0.0.1", c.nodes[node].port, api, body,
                                    timeout_ms=timeout_ms))


def produce(c: ProcessCluster, value: bytes) -> list[Any]:
    resp = ask(c, 101, ApiKey.PRODUCE, {"acks": -1, "timeout_ms": 3000, "topics": [
        [TOPIC, [[0, -1, build_batch([(None, value)], timestamp_ms=int(time.time() * 1000))]]]]})
    return list(resp["topics"][0][1][0])


def read_all(c: ProcessCluster) -> list[bytes]:
    out: list[bytes] = []
    offset = 0
    while True:
        row = ask(c, 101, ApiKey.FETCH, {"max_wait_ms": 0, "min_bytes": 1, "max_bytes": 1 << 20,
                                         "topics": [[TOPIC, [[0, offset, -1, 1 << 20]]]]}
                  )["topics"][0][1][0]
        assert row[1] == 0, row
        data = bytes(row[5])
        if not data:
            return out
        out += [bytes(r.value or b"") for r in iter_records(data) if r.offset >= offset]
        offset = list(iter_headers(data))[-1].next_offset


def value(i: int) -> bytes:
    return b"%06d-" % i + RECORD


def test_full_disk_refuses_writes_serves_reads_and_recovers(
        small_disk_cluster: ProcessCluster) -> None:
    c = small_disk_cluster

    def writable() -> bool:
        r = ask(c, 1, ApiKey.CREATE_TOPICS, {"topics": [
            {"name": TOPIC, "partitions": 1, "replication_factor": 1}]})["topics"][0]
        return r["error"] in (0, 36) and produce(c, value(0))[1] == 0

    wait_until(writable, 30, "topic writable", interval_s=0.2, ignore=(DmqError,))
    acked, refused = [value(0)], []
    for i in range(1, 400):  # 400 x 16 KB is well past 3 MB
        row = produce(c, value(i))
        if row[1] == 0:
            acked.append(value(i))
            continue
        refused.append(value(i))
        assert row[1] == ErrorCode.STORAGE_ERROR, row
        assert "No space left" in str(row[4]), row
        break
    assert refused, "the disk never filled"
    print(f"\ndisk full after {len(acked)} records; refusal: {row}")
    # still refusing, still up, still ONLINE, still serving reads
    row = produce(c, b"while-full-" + RECORD)
    assert row[1] == ErrorCode.STORAGE_ERROR, row
    refused.append(b"while-full-" + RECORD)
    assert c.nodes[101].alive
    brokers = ask(c, 1, ApiKey.DESCRIBE_CLUSTER, {})["brokers"]
    assert [b["state"] for b in brokers] == ["ONLINE"], brokers
    assert read_all(c) == acked
    # space returns: writes are accepted again
    r = mount_tmpfs(str(c.nodes[101].data_dir), "16m", remount=True)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 15
    while (row := produce(c, b"after-" + RECORD))[1] != 0:
        assert time.monotonic() < deadline, f"writes not accepted after space returned: {row}"
        time.sleep(0.2)
    acked.append(b"after-" + RECORD)
    values = read_all(c)
    assert [v for v in values if v in acked] == acked
    assert not set(values) & set(refused)
    assert c.nodes[101].alive
