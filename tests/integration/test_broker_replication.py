"""Several brokers in one process (real logs, real sockets, stand-in controller):
produce with acks 0/1/all, replication by fetchers, HW, ISR shrink and expand,
leader change with KIP-101 truncation, long-poll fetch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dmq.log.batch import iter_records
from dmq.protocol.errors import ErrorCode
from tests.support.inproc_broker import (
    InProcBroker,
    StandInController,
    batch,
    fetch,
    log_bytes,
    produce,
    started_brokers,
    wait_for,
)
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[StandInController, list[InProcBroker]]]:
    async with started_brokers(tmp_path, (1, 2, 3)) as started:
        yield started


async def test_acks_all_replicates_and_logs_are_identical(cluster) -> None:
    ctl, brokers = cluster
    await ctl.create_topic("t", [[1, 2, 3]], {"min.insync.replicas": "2"})
    conn = await brokers[0].connect()
    offsets = []
    for i in range(20):
        row = await produce(conn, "t", 0, batch([f"v{i}-{j}".encode() for j in range(5)]))
        assert row[1] == 0, row
        offsets.append(row[2])
    assert offsets == list(range(0, 100, 5))
    leader = brokers[0].partition("t")
    assert leader.high_watermark == 100
    await wait_for(lambda: all(b.partition("t").high_watermark == 100 for b in brokers),
                   what="followers learn the HW")
    ref = log_bytes(brokers[0], "t", 0, 100)
    for b in brokers[1:]:
        assert log_bytes(b, "t", 0, 100) == ref
    row = await fetch(conn, "t", 0, 0)
    assert row[1] == 0 and row[2] == 100
    values = [r.value for r in iter_records(row[5])]
    assert values[0] == b"v0-0" and len(values) == 100
    await conn.close()


async def test_consumer_never_sees_beyond_hw_and_long_poll_wakes(cluster) -> None:
    ctl, brokers = cluster
    await ctl.create_topic("t", [[1, 2, 3]])
    # followers stop following: HW stays put while the leader appends with acks=1
    await wait_for(lambda: brokers[1].partition("t") is not None)
    for b in brokers[1:]:
        await b.replicas.fetchers.stop()
    conn = await brokers[0].connect()
    row = await produce(conn, "t", 0, batch([b"a"]), acks=1)
    assert row[1] == 0 and row[2] == 0
    assert brokers[0].partition("t").high_watermark == 0
    row = await fetch(conn, "t", 0, 0)
    assert row[1] == 0 and row[2] == 0 and bytes(row[5]) == b""
    # the follower fetch (replica_id) does see it, and moves the HW
    conn2 = await brokers[0].connect()
    leader = brokers[0].partition("t")
    waiter = asyncio.ensure_future(fetch(conn, "t", 0, 0, max_wait_ms=30_000))
    await until(lambda: leader._hw_waiters, "the consumer fetch is parked")
    assert not waiter.done()
    frow = await fetch(conn2, "t", 0, 0, replica_id=2)
    assert frow[1] == 0 and len(frow[5]) > 0
    # replica 2 is at 1; replica 3 unknown: still no HW move (the leader handled the
    # follower fetch before answering it, so the consumer fetch is still parked)
    frow = await fetch(conn2, "t", 0, 1, replica_id=2)
    assert leader.high_watermark == 0 and leader._hw_waiters and not waiter.done()
    await fetch(conn2, "t", 0, 1, replica_id=3)
    # the HW move itself answered the parked fetch, long before its 30 s max wait
    assert leader.high_watermark == 1 and not leader._hw_waiters
    row = await waiter
    assert row[1] == 0 and row[2] == 1 and len(row[5]) > 0
    await conn.close()
    await conn2.close()


async def pause(b: InProcBroker) -> None:
    b.follow_images = False
    await b.replicas.fetchers.stop()


def resume(b: InProcBroker, ctl: StandInController) -> None:
    b.follow_images = True
    b.replicas.apply_image(ctl.image)


async def test_isr_shrinks_then_min_insync_refuses_then_expands(cluster) -> None:
    ctl, brokers = cluster
    await ctl.create_topic("t", [[1, 2, 3]], {"min.insync.replicas": "2"})
    conn = await brokers[0].connect()
    assert (await produce(conn, "t", 0, batch([b"0"])))[1] == 0
    await pause(brokers[2])
    # one follower paused: acks=all still succeeds once the ISR drops it (lag 1.5 s),
    # and not before: the ISR the controller holds when the answer arrives is (1, 2)
    acked = asyncio.ensure_future(produce(conn, "t", 0, batch([b"1"]), timeout_ms=5000))
    isr_when_acked: list[tuple[int, ...]] = []
    acked.add_done_callback(lambda _: isr_when_acked.append(ctl.partition("t").isr))
    row = await acked
    assert row[1] == 0, row
    assert isr_when_acked == [(1, 2)]
    await pause(brokers[1])
    row = await produce(conn, "t", 0, batch([b"2"]), timeout_ms=5000)
    # appended, but the ISR shrank to the leader alone while waiting
    assert row[1] in (ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND, ErrorCode.REQUEST_TIMED_OUT)
    await wait_for(lambda: ctl.partition("t").isr == (1,), what="isr = leader")
    leo = brokers[0].partition("t").log_end_offset
    row = await produce(conn, "t", 0, batch([b"refused"]))
    assert row[1] == ErrorCode.NOT_ENOUGH_REPLICAS
    assert brokers[0].partition("t").log_end_offset == leo  # refused before appending
    # acks=1 is not subject to min.insync
    assert (await produce(conn, "t", 0, batch([b"3"]), acks=1))[1] == 0
    resume(brokers[1], ctl)
    resume(brokers[2], ctl)
    await wait_for(lambda: ctl.partition("t").isr == (1, 2, 3), what="isr expands")
    row = await produce(conn, "t", 0, batch([b"4"]))
    assert row[1] == 0
    hw = brokers[0].partition("t").high_watermark
    await wait_for(lambda: all(b.partition("t").high_watermark == hw for b in brokers))
    for b in brokers[1:]:
        assert log_bytes(b, "t", 0, hw) == log_bytes(brokers[0], "t", 0, hw)
    values = [r.value for r in iter_records((await fetch(conn, "t", 0, 0))[5])]
    assert b"refused" not in values
    await conn.close()


async def test_acks_all_times_out_while_isr_cannot_shrink(cluster) -> None:
    ctl, brokers = cluster
    await ctl.create_topic("t", [[1, 2]])
    conn = await brokers[0].connect()
    assert (await produce(conn, "t", 0, batch([b"0"])))[1] == 0
    ctl.accept_alter = False  # no controller: the ISR cannot change
    await pause(brokers[1])
    # answered by the broker's 300 ms timeout (the connection's own deadline is 5.3 s):
    # appended, but neither acknowledged nor moved past the HW, the ISR unchanged
    row = await produce(conn, "t", 0, batch([b"1"]), timeout_ms=300)
    assert row[1] == ErrorCode.REQUEST_TIMED_OUT
    leader = brokers[0].partition("t")
    assert leader.log_end_offset == 2 and leader.high_watermark == 1
    assert ctl.partition("t").isr == (1, 2)
    await conn.close()


async def test_leader_change_truncates_divergent_tail(cluster) -> None:
    ctl, brokers = cluster
    await ctl.create_topic("t", [[1, 2, 3]])
    conn1 = await brokers[0].connect()
    for i in range(3):
        assert (await produce(conn1, "t", 0, batch([b"x%d" % i] * 2)))[1] == 0
    await wait_for(lambda: all(b.partition("t").high_watermark == 6 for b in brokers))
    # followers stop; leader 1 takes acks=1 writes nobody has
    await pause(brokers[1])
    await pause(brokers[2])
    for i in range(3):
        assert (await produce(conn1, "t", 0, batch([b"lost%d" % i]), acks=1))[1] == 0
    assert brokers[0].partition("t").log_end_offset == 9
    # broker 1 "dies"; 2 becomes leader at a new epoch and takes new writes
    brokers[0].follow_images = False
    await brokers[0].replicas.fetchers.stop()
    resume(brokers[1], ctl)
    resume(brokers[2], ctl)
    ctl.set_partition("t", 0, leader=2, isr=(2, 3))
    conn2 = await brokers[1].connect()
    for i in range(2):
        row = await produce(conn2, "t", 0, batch([b"new%d" % i]))
        assert row[1] == 0, row
    # old leader comes back as a follower: it must drop offsets 6..8 and copy 6..7
    resume(brokers[0], ctl)
    await wait_for(lambda: brokers[0].partition("t").log_end_offset == 8
                   and brokers[0].partition("t").high_watermark == 8, what="catch up")
    ref = log_bytes(brokers[1], "t", 0, 8)
    assert log_bytes(brokers[0], "t", 0, 8) == ref
    assert log_bytes(brokers[2], "t", 0, 8) == ref
    values = [r.value for r in iter_records(ref)]
    assert values == [b"x0", b"x0", b"x1", b"x1", b"x2", b"x2", b"new0", b"new1"]
    await wait_for(lambda: ctl.partition("t").isr == (1, 2, 3), what="old leader rejoins isr")
    # fenced / unknown epochs on the data path
    row = await produce(conn2, "t", 0, batch([b"e"]), leader_epoch=0)
    assert row[1] == ErrorCode.FENCED_LEADER_EPOCH
    row = await produce(conn2, "t", 0, batch([b"e"]), leader_epoch=7)
    assert row[1] == ErrorCode.UNKNOWN_LEADER_EPOCH
    row = await produce(conn1, "t", 0, batch([b"e"]))
    assert row[1] == ErrorCode.NOT_LEADER_OR_FOLLOWER and "leader is 2" in row[4]
    row = await fetch(conn1, "t", 0, 0)
    assert row[1] == ErrorCode.NOT_LEADER_OR_FOLLOWER
    await conn1.close()
    await conn2.close()


async def test_follower_catches_up_many_partitions(tmp_path: Path) -> None:
    settings = {"replica.fetch.max.bytes": 64 * 1024}
    async with started_brokers(tmp_path, (1, 2), **settings) as (ctl, brokers):
        await ctl.create_topic("m", [[1, 2]] * 10)
        await pause(brokers[1])
        conn = await brokers[0].connect()
        data = batch([b"y" * 1000] * 10)
        for _ in range(20):
            for p in range(10):
                assert (await produce(conn, "m", p, data, acks=1))[1] == 0
        await wait_for(lambda: ctl.partition("m", 9).isr == (1,), what="isr shrinks")
        resume(brokers[1], ctl)
        await wait_for(lambda: all(ctl.partition("m", p).isr == (1, 2) for p in range(10)),
                       timeout_s=20, what="every partition back in sync")
        for p in range(10):
            leo = brokers[0].partition("m", p).log_end_offset
            assert leo == 200
            assert log_bytes(brokers[1], "m", p, leo) == log_bytes(brokers[0], "m", p, leo)
        await conn.close()


async def test_followers_learn_the_hw_without_waiting_for_new_data(tmp_path: Path) -> None:
    settings = {"replica.fetch.wait.max.ms": 5000}
    async with started_brokers(tmp_path, (1, 2, 3), **settings) as (ctl, brokers):
        await ctl.create_topic("t", [[1, 2, 3]])
        conn = await brokers[0].connect()
        for i in range(3):
            assert (await produce(conn, "t", 0, batch([b"%d" % i])))[1] == 0
            # the deadline is below the 5 s long-poll: the HW move itself must answer
            # the parked follower fetches
            await wait_for(lambda i=i: all(b.partition("t").high_watermark == i + 1
                                           for b in brokers), timeout_s=2, what="follower HW")
        await conn.close()


async def test_acks_all_takes_one_fetch_per_follower_and_never_acks_early(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sequential acks=all produces: every answer comes only once both followers have
    the batch in their logs, and each batch costs one fetch per follower: the answer
    carrying it also carries the HW of the one before; a follower's acknowledging fetch
    (its next one) and the other follower's parked fetch are not answered with the HW
    alone (held `HW_NEWS_LINGER_MS`, here 1 s). The last HW still reaches the followers
    when due, long before their 5 s long poll ends."""
    from dmq.broker import handlers

    monkeypatch.setattr(handlers, "HW_NEWS_LINGER_MS", 1000, raising=False)
    async with started_brokers(tmp_path, (1, 2, 3), **{"replica.fetch.wait.max.ms": 5000}
                               ) as (ctl, brokers):
        await ctl.create_topic("t", [[1, 2, 3]], {"min.insync.replicas": "3"})
        conn = await brokers[0].connect()
        assert (await produce(conn, "t", 0, batch([b"warm"])))[1] == 0
        await wait_for(lambda: all(b.partition("t").high_watermark == 1 for b in brokers),
                       timeout_s=4, what="follower HW")
        plane = brokers[0].plane
        fetches0 = plane.stats_replica_fetch_requests
        n = 30
        for i in range(n):
            row = await produce(conn, "t", 0, batch([b"v%d-%d" % (i, j) for j in range(3)]))
            assert row[1] == 0, row
            end = row[2] + 3
            # answered only once every replica has the batch
            assert [b.partition("t").log_end_offset >= end for b in brokers] == [True] * 3
            assert brokers[0].partition("t").high_watermark >= end
        fetches = plane.stats_replica_fetch_requests - fetches0
        # one fetch per follower per batch (HW-only answers would double it), and a few
        # around the edges
        assert fetches <= 2 * n + 4, fetches
        leader_hw = brokers[0].partition("t").high_watermark
        await wait_for(lambda: all(b.partition("t").high_watermark == leader_hw
                                   for b in brokers), timeout_s=4, what="the last HW")
        await conn.close()
