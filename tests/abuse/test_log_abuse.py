"""Abuse probes against the log layer of real nodes (issue 25, items 6 and 10).

Item 6: one produce batch with a valid CRC but a header that lies about its records,
or records that are not msgpack, was stored; every consumer then failed at that
offset forever. Each such batch is sent raw to the partition leader; it must be
refused with INVALID_RECORD naming the problem, nothing stored, and consumers must go
on reading. Item 10: a broker restarted on a full disk died of SIGBUS (rc 135, no log
line); it must report the full disk and never die of a signal.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
from crc32c import crc32c

from dmq.cli.dev import ensure_topic
from dmq.client import Consumer, Producer, TopicPartition
from dmq.log.batch import ATTR_DMQ_NATIVE, HEADER_STRUCT, LOG_OVERHEAD, build_batch
from dmq.log.codecs import CODEC_ZSTD, compress
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import request_once
from dmq.protocol.errors import DmqError, ErrorCode
from tests.abuse.support import assert_cluster_healthy, write_canary
from tests.support.procs import ProcessCluster
from tests.support.tmpfs import fill, mount_tmpfs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

TOPIC = "lies"
TS = 1_700_000_000_000


def raw_batch(payload: bytes, record_count: int, last_offset_delta: int | None = None,
              base_ts: int = TS, max_ts: int = TS, attributes: int = 0) -> bytes:
    """A dmq-native batch (the mark is added to `attributes`) with a valid CRC around
    any payload and header values."""
    lod = record_count - 1 if last_offset_delta is None else last_offset_delta
    length = HEADER_STRUCT.size - LOG_OVERHEAD + len(payload)
    attributes |= ATTR_DMQ_NATIVE
    head = bytearray(HEADER_STRUCT.pack(0, length, -1, 2, 0, attributes, lod, base_ts,
                                        max_ts, -1, -1, -1, record_count))
    body = bytes(head[21:]) + payload
    struct.pack_into(">I", head, 17, crc32c(body))
    return bytes(head[:21]) + body


def records(*recs: Any) -> bytes:
    return msgpack.packb(list(recs), use_bin_type=True)


THREE = [[i, None, b"v%d" % i, []] for i in range(3)]
PROBES = {
    "record_count 5, 3 records": (raw_batch(records(*THREE), 5), "holds 3"),
    "records not msgpack": (raw_batch(b"\xc1\xc1\xc1", 1), "not one msgpack array"),
    "last_offset_delta 2^31-1 on 1 record": (
        raw_batch(records(THREE[0]), 1, last_offset_delta=2**31 - 1),
        "last_offset_delta 2147483647"),
    "timestamps -2^63": (raw_batch(records(THREE[0]), 1, base_ts=-2**63, max_ts=-2**63),
                         "out of range"),
    "records of the wrong shape": (raw_batch(records(1, 2, 3), 3), "not an array"),
    "zstd records that lie": (
        raw_batch(compress(CODEC_ZSTD, records(*THREE)), 5, attributes=CODEC_ZSTD),
        "holds 3"),
}


def ask(pc: ProcessCluster, node: int, api: ApiKey, body: Any) -> Any:
    return asyncio.run(request_once("127.0.0.1", pc.nodes[node].port, api, body,
                                    timeout_ms=10_000))


def produce_raw(pc: ProcessCluster, batch: bytes) -> list[Any]:
    """Send `batch` to partition 0 on every broker; the leader's row (the others say
    NOT_LEADER_OR_FOLLOWER)."""
    rows = []
    for node in pc.broker_ids:
        resp = ask(pc, node, ApiKey.PRODUCE, {"acks": -1, "timeout_ms": 5000,
                                              "topics": [[TOPIC, [[0, -1, batch]]]]})
        row = list(resp["topics"][0][1][0])
        if row[1] != ErrorCode.NOT_LEADER_OR_FOLLOWER:
            rows.append(row)
    assert len(rows) == 1, rows
    return rows[0]


@pytest.fixture(scope="module")
def cluster() -> Iterator[ProcessCluster]:
    with ProcessCluster(controllers=3, combined=True) as pc:
        pc.start()
        yield pc


def test_batches_that_lie_are_refused_and_consumers_keep_reading(
        cluster: ProcessCluster) -> None:
    pc = cluster
    canary = asyncio.run(write_canary(pc.bootstrap))
    asyncio.run(ensure_topic(pc.bootstrap, TOPIC, 1, 3, timeout_s=30))
    deadline = time.monotonic() + 30
    while True:  # the topic's leader is elected and knows it
        try:
            row = produce_raw(pc, build_batch([(None, b"first")], TS))
        except (AssertionError, DmqError):
            row = [0, -1]
        if row[1] == 0:
            break
        assert time.monotonic() < deadline, f"topic never writable: {row}"
        time.sleep(0.2)
    for name, (batch, reason) in PROBES.items():
        row = produce_raw(pc, batch)
        assert row[1] == ErrorCode.INVALID_RECORD, (name, row)
        assert reason in row[4], (name, row)

    async def good_then_read() -> tuple[list[bytes], int]:
        async with Producer(pc.bootstrap, acks="all", linger_ms=1) as p:
            for i in range(3):
                await (await p.send(TOPIC, b"good-%d" % i, partition=0))
        tp = TopicPartition(TOPIC, 0)
        async with Consumer(pc.bootstrap, auto_offset_reset="earliest") as c:
            c.assign([tp])
            end = (await c.end_offsets([tp]))[tp]
            seen: list[bytes] = []
            stop = time.monotonic() + 20
            while len(seen) < 4 and time.monotonic() < stop:
                got = await c.getmany(timeout_ms=500)  # raised CORRUPT_MESSAGE before
                seen += [r.value for r in got.get(tp, [])]
            return seen, end

    seen, end = asyncio.run(good_then_read())
    assert seen == [b"first", b"good-0", b"good-1", b"good-2"]
    assert end == 4  # no offset jump: nothing refused took an offset
    asyncio.run(assert_cluster_healthy(pc, canary))


def _mount_tmpfs(path: str, size: str) -> str | None:
    """Mount a tmpfs of `size` on `path`; the reason it cannot, or None."""
    if os.geteuid() != 0:
        return "needs root to mount a small tmpfs"
    r = mount_tmpfs(path, size)
    return None if r.returncode == 0 else f"mount -t tmpfs failed: {r.stderr.strip()}"


@pytest.mark.parametrize(("stop_signal", "leave_pages"), [
    (signal.SIGTERM, 0),  # the case: a clean stop, then the disk filled
    (signal.SIGKILL, 1),  # a crash: recovery rebuilds the indexes
])
def test_a_broker_restarted_on_a_full_disk_reports_it_and_never_dies_of_a_signal(
        stop_signal: int, leave_pages: int) -> None:
    with ProcessCluster(controllers=1, brokers=1, settings={
            "broker.session.timeout.ms": 3000, "broker.heartbeat.interval.ms": 300}) as pc:
        data = pc.nodes[101].data_dir
        data.mkdir(parents=True)
        reason = _mount_tmpfs(str(data), "4m")
        if reason is not None:
            pytest.skip(reason)
        try:
            pc.start()
            asyncio.run(ensure_topic(pc.bootstrap, TOPIC, 1, 1, timeout_s=30))

            async def write() -> None:
                async with Producer(pc.bootstrap, acks=1, linger_ms=1) as p:
                    for i in range(20):
                        await (await p.send(TOPIC, b"v%d" % i, partition=0))

            asyncio.run(write())
            pc.kill(101, stop_signal)
            fill(str(data), leave_pages)
            log_size = pc.nodes[101].log_path.stat().st_size
            pc.start(101, wait=False)
            proc = pc.nodes[101].proc
            assert proc is not None
            deadline = time.monotonic() + 30
            serving = False
            while not serving and time.monotonic() < deadline and proc.poll() is None:
                if "partition logs" in pc.nodes[101].log_text()[log_size:]:  # loaded
                    try:
                        serving = bool(ask(pc, 101, ApiKey.API_VERSIONS, {}))
                    except (DmqError, OSError):
                        pass
                time.sleep(0.2)
            rc = proc.poll()
            text = pc.nodes[101].log_text()[log_size:]
            assert rc is None or rc >= 0, f"broker died of signal {-rc}:\n{text[-3000:]}"
            assert serving or "No space left on device" in text, text[-3000:]
        finally:
            pc.stop_all()
            subprocess.run(["umount", "-l", str(data)], check=False)
