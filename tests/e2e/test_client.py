"""Producer and Consumer against real `dmq server` processes: every public method on a
single combined node, and a kill -9 of the leader broker during a send burst on a
3-controller, 3-broker cluster (no acknowledged record lost or duplicated)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import pytest

from dmq.cli.dev import ensure_topic
from dmq.client import Consumer, Producer, TopicPartition
from dmq.client.partitioner import partition_for_key
from dmq.protocol.errors import DmqError, UnknownTopicOrPartitionError
from tests.support.procs import ProcessCluster
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.slow


async def create_topic(bootstrap: str, name: str, partitions: int, rf: int,
                       timeout_s: float = 30) -> None:
    """Create a topic, waiting for the controller and for enough brokers to register."""
    await ensure_topic(bootstrap, name, partitions, rf, timeout_s)


@pytest.fixture(scope="module")
def single() -> Iterator[ProcessCluster]:
    with ProcessCluster(controllers=1, combined=True,
                        settings={"auto.create.topics.enable": False}) as pc:
        pc.start()
        yield pc


async def test_produce_consume_every_method_on_one_node(single: ProcessCluster) -> None:
    b = single.bootstrap
    await create_topic(b, "e2e", 3, 1)
    async with Producer(b, linger_ms=2) as p:
        assert p.producer_id >= 0
        assert await p.partitions_for("e2e") == [0, 1, 2]
        md = await p.send_and_wait("e2e", b"hello", key=b"user-1", headers=[("h", b"v")],
                                   timestamp_ms=1_000)
        assert md.partition == partition_for_key(b"user-1", 3) == 2  # murmur2, as Kafka
        handles = [await p.send("e2e", b"%d" % i, partition=0, timestamp_ms=2_000 + i)
                   for i in range(2000)]
        await p.flush()
        offsets = [h.result().offset for h in handles]
    base = offsets[0]
    assert offsets == list(range(base, base + 2000))

    tp0, tpk = TopicPartition("e2e", 0), TopicPartition("e2e", md.partition)
    async with Consumer(b, auto_offset_reset="earliest") as c:
        assert await c.partitions_for_topic("e2e") == [0, 1, 2]
        c.assign([tp0, tpk])
        ends = await c.end_offsets([tp0])
        assert ends[tp0] == base + 2000
        assert (await c.beginning_offsets([tp0]))[tp0] == 0
        c.seek(tpk, md.offset)
        got = await c.getmany(tpk, timeout_ms=5000, max_records=1)
        r = got[tpk][0]
        assert (r.key, r.value, r.headers, r.timestamp) == (b"user-1", b"hello", (("h", b"v"),),
                                                           1_000)
        seen = []
        c.pause(tpk)
        while len(seen) < 2000:
            got = await c.getmany(timeout_ms=5000)
            assert got, "stalled"
            assert tpk not in got
            seen += [int(r.value) for r in got[tp0] if r.offset >= base]
        assert seen == list(range(2000))
        assert await c.position(tp0) == base + 2000
        found = await c.offsets_for_times({tp0: 2_500})
        assert found[tp0] is not None and found[tp0].offset <= base + 500
        await c.seek_to_beginning(tp0)
        assert await c.position(tp0) == 0
        await c.seek_to_end(tp0)
        assert await c.position(tp0) == base + 2000


async def test_acks_and_unknown_topic_on_one_node(single: ProcessCluster) -> None:
    b = single.bootstrap
    await create_topic(b, "acks", 1, 1)
    for acks in (0, 1, "all"):
        async with Producer(b, acks=acks, linger_ms=0) as p:
            md = await p.send_and_wait("acks", b"a%s" % str(acks).encode())
            assert (md.offset >= 0) == (acks != 0)
    async with Consumer(b, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition("acks", 0)])
        values = []
        while len(values) < 3:
            got = await c.getmany(timeout_ms=5000)
            assert got
            values += [r.value for recs in got.values() for r in recs]
        assert values == [b"a0", b"a1", b"aall"]
    async with Producer(b, max_block_ms=1000) as p:
        with pytest.raises(UnknownTopicOrPartitionError):
            await p.send("no-such-topic", b"x")


@pytest.mark.timeout(120)
async def test_leader_kill_during_send_burst_loses_and_duplicates_nothing() -> None:
    settings = {"broker.session.timeout.ms": 2000, "broker.heartbeat.interval.ms": 250,
                "replica.lag.time.max.ms": 3000, "default.replication.factor": 3,
                "min.insync.replicas": 2}
    with ProcessCluster(controllers=3, brokers=3, settings=settings) as pc:
        pc.start()
        b = pc.bootstrap
        await create_topic(b, "burst", 1, 3)
        n = 3000
        results: list[int | BaseException] = []
        async with Producer(b, linger_ms=1, batch_size=4096, request_timeout_ms=5000,
                            delivery_timeout_ms=60_000, retry_backoff_ms=50) as p:

            async def leader_known() -> bool:  # the first metadata may predate the election
                await p.cluster.refresh(["burst"])
                return p.cluster.leader_for("burst", 0)[0] >= 0

            await async_wait_until(leader_known, 10, "a leader of burst-0", interval_s=0.1)
            leader = p.cluster.leader_for("burst", 0)[0]
            assert leader in pc.broker_ids
            handles = []
            for i in range(n):
                handles.append(await p.send("burst", b"%d" % i))
                if i == n // 3:
                    # some batches answered, the rest on their way
                    await async_wait_until(handles[0].done, 10, "a first acknowledgement")
                    pc.kill(leader, signal.SIGKILL)
                if i % 200 == 0:
                    await asyncio.sleep(0.01)
            for h in handles:
                try:
                    results.append((await h).offset)
                except DmqError as exc:
                    results.append(exc)
        acked = {i: off for i, off in enumerate(results) if isinstance(off, int)}
        print(f"acked {len(acked)} of {n}; leader {leader} killed; producer id {p.producer_id}")
        assert len(acked) > n // 2, f"too few acknowledged: {len(acked)}"
        async with Consumer(b, auto_offset_reset="earliest") as c:
            tp = TopicPartition("burst", 0)
            c.assign([tp])
            end = (await c.end_offsets([tp]))[tp]
            log: list[tuple[int, int]] = []
            while not log or log[-1][0] < end - 1:
                got = await c.getmany(timeout_ms=10_000)
                assert got, f"stalled at {log[-1] if log else None} of {end}"
                log += [(r.offset, int(r.value)) for r in got[tp]]
        values = [v for _o, v in log]
        assert len(values) == len(set(values)), "a record was written twice"
        where = {v: o for o, v in log}
        for i, off in acked.items():
            assert where.get(i) == off, f"acknowledged record {i} at {off} not in the log"
        assert values == sorted(values), "records out of send order"
