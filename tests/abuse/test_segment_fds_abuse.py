"""Issue #25 item 14 (descriptors): a topic with segment.bytes=64 makes one segment per
record. Each segment used to cost a real broker three open descriptors (its .log and
two mapped indexes), so a few thousand records could exhaust the broker's limit; now a
closed segment holds none and only the active segment's files stay open."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from dmq.cli.dev import ensure_topic
from dmq.client import Consumer, Producer, TopicPartition
from tests.support.procs import ProcessCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

RECORDS = 300


@pytest.fixture(scope="module")
def cluster() -> Iterator[ProcessCluster]:
    with ProcessCluster(controllers=1, brokers=1,
                        settings={"auto.create.topics.enable": False}) as pc:
        pc.start()
        yield pc


def _fds(pc: ProcessCluster, node_id: int) -> int:
    proc = pc.nodes[node_id].proc
    assert proc is not None
    return len(os.listdir(f"/proc/{proc.pid}/fd"))


async def test_tiny_segments_cost_no_descriptor_each(cluster: ProcessCluster) -> None:
    # waits until the broker has registered (the CLI below would not)
    await ensure_topic(cluster.bootstrap, "ready", 1, 1)
    out = subprocess.run(
        [sys.executable, "-m", "dmq.cli", "topics", "create", "tiny", "--partitions", "1",
         "--replication-factor", "1", "--config", "segment.bytes=64", "--bootstrap",
         cluster.bootstrap], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    async with Producer(cluster.bootstrap, acks=1, linger_ms=0) as p:
        first = await p.send_and_wait("tiny", b"warm-up", partition=0)
        before = _fds(cluster, 101)
        for i in range(RECORDS):  # one batch, so one segment, per record
            await p.send_and_wait("tiny", b"r%d" % i, partition=0)
    after = _fds(cluster, 101)
    segments = [n for n in os.listdir(cluster.nodes[101].data_dir / "partitions" / "tiny-0")
                if n.endswith(".log")]
    assert len(segments) >= RECORDS // 2, segments
    # the old code: ~3 per segment; now only reads reopen a few closed segments' files
    assert after - before < 40, (before, after, len(segments))
    tp = TopicPartition("tiny", 0)
    async with Consumer(cluster.bootstrap, auto_offset_reset="earliest") as c:
        c.assign([tp])
        seen: list[bytes] = []
        while len(seen) < RECORDS + 1:
            got = await c.getmany(timeout_ms=5000)
            assert got, f"stalled after {len(seen)} records"
            seen += [r.value for r in got[tp]]
    assert seen[0] == b"warm-up" and first.offset == 0
    assert seen[1:] == [b"r%d" % i for i in range(RECORDS)]
    assert _fds(cluster, 101) - before < 40
