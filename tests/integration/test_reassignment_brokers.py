"""The broker side of a partition reassignment, in one process (real replica managers,
logs and sockets, stand-in controller): a replica being added is created, catches up
and is added to the ISR by the leader; the replicas dropped at the end (here the
leader) delete their logs; the new leader serves every acknowledged record. And a dead
follower whose last fetch was caught up on an idle log is not proposed back into the
ISR."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dmq.metadata.image import FENCED
from tests.support.inproc_broker import (
    InProcBroker,
    StandInController,
    batch,
    log_bytes,
    produce,
    started_brokers,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[StandInController, list[InProcBroker]]]:
    async with started_brokers(tmp_path, (1, 2, 3, 4)) as started:
        yield started


async def test_added_replica_catches_up_and_the_dropped_leader_deletes_its_log(
        cluster) -> None:
    ctl, brokers = cluster
    await ctl.create_topic("t", [[1, 2, 3]], {"min.insync.replicas": "2"})
    conn = await brokers[0].connect()
    for i in range(20):
        row = await produce(conn, "t", 0, batch([f"v{i}-{j}".encode() for j in range(5)]))
        assert row[1] == 0, row
    old_dir = Path(brokers[0].partition("t").log.directory)
    assert old_dir.exists() and brokers[3].partition("t") is None
    # start: target [2, 3, 4]; replicas = target + the old leader
    ctl.set_partition("t", 0, replicas=(2, 3, 4, 1), adding=(4,), removing=(1,))
    await ctl.settle()
    await wait_for(lambda: 4 in ctl.partition("t").isr, what="the new replica in the ISR")
    assert brokers[3].partition("t").log_end_offset == 100
    # complete: the leader leaves, leadership moves to an in-sync target replica
    ctl.set_partition("t", 0, replicas=(2, 3, 4), adding=(), removing=(), leader=2,
                      isr=(2, 3, 4))
    assert brokers[0].partition("t") is None
    await wait_for(lambda: not old_dir.exists(), what="the dropped replica's log deleted")
    conn2 = await brokers[1].connect()
    row = await produce(conn2, "t", 0, batch([b"after"]))
    assert row[1] == 0 and row[2] == 100, row
    await wait_for(lambda: all(b.partition("t").high_watermark == 101 for b in brokers[1:]),
                   what="the new replicas' high watermark")
    want = log_bytes(brokers[1], "t", 0, 101)
    assert all(log_bytes(b, "t", 0, 101) == want for b in brokers[2:])


async def test_dead_follower_caught_up_on_an_idle_log_is_not_proposed(cluster) -> None:
    ctl, brokers = cluster
    await ctl.create_topic("t", [[1, 2, 3]], {"min.insync.replicas": "2"})
    leader = brokers[0].partition("t")
    await wait_for(lambda: all(st.log_end_offset == 0 for st in leader.followers.values()),
                   what="both followers fetched")
    await brokers[2].crash()
    # what the controller does when broker 3's session expires
    info = ctl.image.brokers[3]
    ctl._publish(brokers={**ctl.image.brokers, 3: dataclasses.replace(info, state=FENCED)})
    ctl.fail_broker(3)
    # a reassignment adds broker 4; the leader must propose it, not the dead broker 3
    ctl.set_partition("t", 0, replicas=(1, 2, 4, 3), adding=(4,), removing=(3,))
    await ctl.settle()
    await wait_for(lambda: 4 in ctl.partition("t").isr, what="the new replica in the ISR")
    assert 3 not in ctl.partition("t").isr
    proposed = [set(isr) for req in ctl.alter_requests for _t, rows in req["topics"]
                for _p, _le, _pe, isr in rows]
    assert proposed and all(3 not in isr for isr in proposed), proposed
