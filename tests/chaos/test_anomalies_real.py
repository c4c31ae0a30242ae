"""Each anomaly kind the checker reports, shown on the real system broken on purpose
(one controller, three brokers, real processes). The breakage is always on the outside
of the broker's guarantees, never a hidden switch inside it: a weaker setting (acks=1),
a client that retries without idempotence or treats a timeout as a failure, a corrupted
disk, an operator resetting offsets, a consumer starting at the end, a node left paused.

- lost: acks=1 records acknowledged before replication, leader killed -9;
- moved: the same, then the application replays the lost record (after another write):
  the acknowledged offset now holds other data;
- duplicated: a non-idempotent retry after a lost answer;
- reordered: a non-idempotent batch refused (stale leader epoch) and retried after the
  next one succeeded;
- failed-but-present: acks=all timing out while followers are paused, counted failed;
- replica-divergence: a follower's segment rewritten on disk (with a valid CRC);
- commit-backwards: an operator resetting a group's committed offset;
- not-delivered: a consumer that starts at the end of the log;
- cluster-state: a broker left paused at read-back.
`offset-order` (offsets going backwards in one partition's read-back) needs a broker
that serves a broken log; it is shown on a crafted history only (tests/chaos/test_checker.py).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from crc32c import crc32c

from dmq.client.consumer import Consumer
from dmq.log.batch import CRC_START, build_batch, iter_headers
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import ErrorCode
from tests.chaos.checker import FinalState, History, check
from tests.chaos.cluster import ChaosCluster
from tests.chaos.run import create_topic, read_back

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]

SETTINGS = {"replica.lag.time.max.ms": 5000, "auto.leader.rebalance.enable": False}


@pytest.fixture(scope="module")
def cluster() -> Iterator[ChaosCluster]:
    with ChaosCluster(SETTINGS, controllers=1, link_faults=False) as c:
        yield c


@pytest.fixture
async def c(cluster: ChaosCluster) -> AsyncIterator[ChaosCluster]:
    _, probs = await cluster.wait_healthy(None, 0, 3, 30)
    assert not probs, probs
    yield cluster
    for n in cluster.procs.nodes.values():  # whatever a demo left broken
        cluster.procs.signal(n.node_id, signal.SIGCONT)
        if not n.alive:
            cluster.procs.start(n.node_id)


def batch(values: list[str]) -> bytes:
    return build_batch([(None, v.encode()) for v in values],
                       timestamp_ms=int(time.time() * 1000))


async def produce(c: ChaosCluster, node: int, topic: str, values: list[str], acks: int = -1,
                  timeout_ms: int = 5000, epoch: int = -1) -> list[Any]:
    resp = await c.ask(node, ApiKey.PRODUCE, {"acks": acks, "timeout_ms": timeout_ms, "topics": [
        [topic, [[0, epoch, batch(values)]]]]}, timeout_ms=timeout_ms + 5000)
    return list(resp["topics"][0][1][0])


async def topic(c: ChaosCluster, name: str) -> tuple[int, int, list[int]]:
    """Create a 1-partition RF=3 topic; (leader, leader epoch, followers)."""
    await create_topic(c, name, 1, 3, {"min.insync.replicas": "2"})
    v, probs = await c.wait_healthy(name, 1, 3, 30)
    assert not probs, probs
    leader, replicas, _ = v.partitions[(name, 0)]
    deadline = time.monotonic() + 10
    while True:  # brokers learn the controller's decision a moment later
        resp = await c.ask(leader, ApiKey.LIST_OFFSETS, {"topics": [[name, [[0, -1]]]]})
        if resp["topics"][0][1][0][1] == 0:
            break
        assert time.monotonic() < deadline, resp
        await asyncio.sleep(0.1)
    md = await c.ask((await c.controller_leader()) or 1, ApiKey.METADATA, {"topics": [name]})
    epoch = md["topics"][0]["partitions"][0][2]
    return leader, epoch, [b for b in replicas if b != leader]


def ack(h: History, name: str, values: list[str], row: list[Any]) -> None:
    assert row[1] == 0, row
    for i, v in enumerate(values):
        h.acked[(v.split(":")[0], int(v.split(":")[1]))] = ((name, 0), row[2] + i)


async def final(c: ChaosCluster, name: str, h: History, settle_s: float = 30) -> FinalState:
    return await read_back(c, name, 1, 3, lambda _t: None, settle_s=settle_s,
                           replica_wait_s=3)


def delivered(h: History) -> None:
    h.consumed |= set(h.acked)  # the demos that are not about delivery


async def test_acks_1_loses_acknowledged_records_in_failover(c: ChaosCluster) -> None:
    h = History()
    leader, _, followers = await topic(c, "lost")
    ack(h, "lost", ["w:0", "w:1"], await produce(c, leader, "lost", ["w:0", "w:1"]))
    for f in followers:
        c.procs.signal(f, signal.SIGSTOP)
    try:
        await asyncio.sleep(0.4)  # the followers' parked fetches expire
        ack(h, "lost", ["w:2", "w:3"], await produce(c, leader, "lost", ["w:2", "w:3"], acks=1))
        c.procs.kill(leader)
    finally:
        for f in followers:
            c.procs.signal(f, signal.SIGCONT)
    c.procs.start(leader)
    delivered(h)
    anomalies = check(h, await final(c, "lost", h))
    assert set(anomalies) == {"lost"}, anomalies
    assert len(anomalies["lost"]) == 2 and "('w', 2)" in anomalies["lost"][0], anomalies


async def test_acks_1_record_replayed_after_failover_moves(c: ChaosCluster) -> None:
    h = History()
    leader, _, followers = await topic(c, "moved")
    ack(h, "moved", ["w:0"], await produce(c, leader, "moved", ["w:0"]))
    for f in followers:
        c.procs.signal(f, signal.SIGSTOP)
    try:
        await asyncio.sleep(0.4)
        ack(h, "moved", ["w:1"], await produce(c, leader, "moved", ["w:1"], acks=1))
        c.procs.kill(leader)
    finally:
        for f in followers:
            c.procs.signal(f, signal.SIGCONT)
    c.procs.start(leader)
    v, probs = await c.wait_healthy("moved", 1, 3, 30)
    assert not probs, probs
    new_leader = v.partitions[("moved", 0)][0]
    for _ in range(50):  # the new leader: another writer, then the application's replay
        row = await produce(c, new_leader, "moved", ["x:0"])
        if row[1] == 0:
            break
        await asyncio.sleep(0.2)
        new_leader = (await c.view("moved")).partitions[("moved", 0)][0]
    h.acked[("x", 0)] = (("moved", 0), row[2])
    assert (await produce(c, new_leader, "moved", ["w:1"]))[1] == 0
    delivered(h)
    anomalies = check(h, await final(c, "moved", h))
    assert set(anomalies) == {"moved"}, anomalies
    assert "('w', 1) acked at ('moved', 0)@1" in anomalies["moved"][0], anomalies


async def test_retry_without_idempotence_duplicates(c: ChaosCluster) -> None:
    h = History()
    leader, _, _ = await topic(c, "dup")
    await produce(c, leader, "dup", ["w:0"])  # its answer is "lost": the client retries
    ack(h, "dup", ["w:0"], await produce(c, leader, "dup", ["w:0"]))
    delivered(h)
    anomalies = check(h, await final(c, "dup", h))
    assert set(anomalies) == {"duplicated"}, anomalies


async def test_refused_batch_retried_after_the_next_is_reordered(c: ChaosCluster) -> None:
    h = History()
    leader, epoch, _ = await topic(c, "reorder")
    row = await produce(c, leader, "reorder", ["w:0"], epoch=epoch + 1)  # as after a move
    assert row[1] != 0, row
    ack(h, "reorder", ["w:1"], await produce(c, leader, "reorder", ["w:1"]))
    ack(h, "reorder", ["w:0"], await produce(c, leader, "reorder", ["w:0"]))  # the retry
    delivered(h)
    anomalies = check(h, await final(c, "reorder", h))
    assert set(anomalies) == {"reordered"}, anomalies


async def test_timeout_counted_as_failure_is_present(c: ChaosCluster) -> None:
    h = History()
    leader, _, followers = await topic(c, "timeout")
    for f in followers:
        c.procs.signal(f, signal.SIGSTOP)
    try:
        row = await produce(c, leader, "timeout", ["w:0"], timeout_ms=300)
    finally:
        for f in followers:
            c.procs.signal(f, signal.SIGCONT)
    assert row[1] == ErrorCode.REQUEST_TIMED_OUT, row  # appended, not yet replicated
    h.failed.add(("w", 0))  # the broken client's reading of a timeout
    anomalies = check(h, await final(c, "timeout", h))
    assert set(anomalies) == {"failed-but-present"}, anomalies


async def test_rewritten_follower_segment_diverges(c: ChaosCluster) -> None:
    h = History()
    leader, _, followers = await topic(c, "rot")
    for i in range(3):
        ack(h, "rot", [f"w:{i}"], await produce(c, leader, "rot", [f"w:{i}"]))
    victim = followers[0]
    await asyncio.sleep(1)  # the follower has fetched everything
    c.procs.kill(victim)
    seg = c.procs.nodes[victim].data_dir / "partitions" / "rot-0" / ("0" * 20 + ".log")
    data = bytearray(seg.read_bytes())
    h1 = list(iter_headers(bytes(data)))[1]
    start, end = h1.position, h1.position + h1.size_bytes
    i = data.index(b"w:1", start, end)
    data[i:i + 3] = b"w:7"  # bit rot the CRC cannot see: the CRC is recomputed
    data[start + 17:start + 21] = crc32c(bytes(data[start + CRC_START:end])).to_bytes(4, "big")
    seg.write_bytes(bytes(data))
    c.procs.start(victim)
    delivered(h)
    anomalies = check(h, await final(c, "rot", h))
    assert set(anomalies) == {"replica-divergence"}, anomalies


async def test_offset_reset_moves_commits_backwards(c: ChaosCluster) -> None:
    h = History()
    await topic(c, "reset")
    ctl = await c.controller_leader()
    assert ctl is not None
    seen = h.commits[("g-reset", ("reset", 0))]

    async def observe() -> None:
        body = await c.ask(ctl, ApiKey.OFFSET_FETCH, {"group_id": "g-reset",
                                                     "topics": [["reset", [0]]]})
        seen.append(body["topics"][0][1][0][1])

    for offset in (5, 10):
        await c.ask(ctl, ApiKey.OFFSET_COMMIT, {"group_id": "g-reset", "member_id": "",
                                                "member_epoch": -1,
                                                "topics": [["reset", [[0, offset, None]]]]})
        await observe()
    await c.ask(ctl, ApiKey.RESET_OFFSETS, {"group_id": "g-reset",
                                            "topics": [["reset", [[0, 0]]]]})
    await observe()
    assert seen == [5, 10, 0], seen
    anomalies = check(h, await final(c, "reset", h))
    assert set(anomalies) == {"commit-backwards"}, anomalies


async def test_consumer_from_the_end_misses_acked_records(c: ChaosCluster) -> None:
    h = History()
    leader, _, _ = await topic(c, "late")
    ack(h, "late", ["w:0", "w:1"], await produce(c, leader, "late", ["w:0", "w:1"]))
    async with Consumer(c.bootstrap, auto_offset_reset="latest") as consumer:
        consumer.assign([("late", 0)])
        got = await consumer.getmany(timeout_ms=1500)
        for records in got.values():
            for r in records:
                name, seq = bytes(r.value or b"").decode().split(":")
                h.consumed.add((name, int(seq)))
    anomalies = check(h, await final(c, "late", h))
    assert set(anomalies) == {"not-delivered"}, anomalies
    assert len(anomalies["not-delivered"]) == 2


async def test_broker_left_paused_is_a_cluster_state_anomaly(c: ChaosCluster) -> None:
    h = History()
    _, _, followers = await topic(c, "paused")
    c.procs.signal(followers[0], signal.SIGSTOP)
    try:
        await asyncio.sleep(6)  # past the session timeout and the replica lag time
        anomalies = check(h, await final(c, "paused", h, settle_s=3))
    finally:
        c.procs.signal(followers[0], signal.SIGCONT)
    assert set(anomalies) == {"cluster-state"}, anomalies
