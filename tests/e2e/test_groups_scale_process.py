"""50 consumers (real `Consumer`s, in this process) on a 500-partition topic of a real
3 controller + 3 broker cluster: after a 51st joins, the group is stable (every member
holds its target, 500 partitions each held once, counts within one) in under 5 s.
The figure is printed."""

from __future__ import annotations

import asyncio
import time

import pytest

from dmq.client.admin import Admin
from dmq.client.admin_groups import GroupAdmin
from dmq.client.consumer import Consumer
from tests.support.procs import ProcessCluster
from tests.support.waiting import async_wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SETTINGS = {"broker.session.timeout.ms": 6000, "auto.leader.rebalance.enable": False,
            "group.heartbeat.interval.ms": 1000}


async def test_fifty_consumers_on_five_hundred_partitions() -> None:
    with ProcessCluster(controllers=3, brokers=3, settings=SETTINGS) as procs:
        procs.start(wait=False)
        for n in procs.nodes.values():
            await asyncio.to_thread(procs.start, n.node_id)
        bootstrap = procs.bootstrap
        async with Admin(bootstrap) as admin:
            async def online() -> bool:
                return [b["state"] for b in (await admin.describe_cluster())["brokers"]] \
                    == ["ONLINE"] * 3

            await async_wait_until(online, 20, "3 brokers ONLINE", interval_s=0.1)
            await admin.create_topic("wide", 500, 1)
        consumers: list[Consumer] = []
        polls: list[asyncio.Task[None]] = []

        async def add(i: int) -> Consumer:
            c = Consumer(bootstrap, group_id="wide-g", client_id=f"c{i}",
                         auto_offset_reset="earliest", session_timeout_ms=30_000)
            await c.start()
            c.subscribe(["wide"])
            consumers.append(c)

            async def poll() -> None:
                while True:
                    await c.getmany(timeout_ms=200)

            polls.append(asyncio.create_task(poll()))
            return c

        async def stable(n: int) -> bool:
            d = await ga.describe_group("wide-g", with_lag=False)
            if d.state != "Stable" or len(d.members) != n:
                return False
            owned = [tp for c in consumers for tp in c.assignment()]
            sizes = [len(c.assignment()) for c in consumers]
            return len(owned) == 500 == len(set(owned)) and max(sizes) - min(sizes) <= 1

        async def wait_stable(n: int, limit_s: float) -> float:
            t0 = time.monotonic()
            await async_wait_until(lambda: stable(n), limit_s, f"{n} members stable")
            return time.monotonic() - t0

        ga = GroupAdmin(bootstrap)
        try:
            await asyncio.gather(*(add(i) for i in range(50)))
            initial = await wait_stable(50, 60)
            await add(50)
            after_join = await wait_stable(51, 10)
            print(f"\n50 consumers/500 partitions (real cluster): first stable after "
                  f"{initial:.2f}s, stable {after_join:.2f}s after a 51st joined")
            assert after_join < 5
        finally:
            for t in polls:
                t.cancel()
            await asyncio.gather(*polls, return_exceptions=True)
            await asyncio.gather(*(c.close() for c in consumers), return_exceptions=True)
            await ga.close()
