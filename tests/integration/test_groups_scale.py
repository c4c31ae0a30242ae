"""50 members on 500 partitions over loopback against the real group handlers: the
group stabilizes quickly after a member joins, and the figure is printed."""

from __future__ import annotations

import asyncio
import time

from dmq.client.group import GroupMembership
from tests.support.fake_consumer import FakeConsumer
from tests.support.waiting import async_wait_until
from tests.unit.groups.fake_host import FakeHost, start_fake_controller


async def test_fifty_members_on_five_hundred_partitions_stabilize_after_a_join() -> None:
    host = FakeHost({"big": 500})  # default heartbeat interval (1000 ms)
    server, svc = await start_fake_controller(host)
    addr = [("127.0.0.1", server.bound_port)]
    members: list[GroupMembership] = []

    def add() -> GroupMembership:
        m = GroupMembership(addr, "scale", FakeConsumer(), topics=["big"],
                            enable_auto_commit=False)
        m.start()
        members.append(m)
        return m

    def stable() -> bool:
        coord = svc._coordinator
        if coord is None or coord.describe("scale") is None:
            return False
        if coord.describe("scale")["state"] != "Stable":
            return False
        owned = [tp for m in members for tp in m.owned]
        return len(owned) == 500 == len(set(owned)) and all(
            m.owned and max(len(x.owned) for x in members) - len(m.owned) <= 1
            for m in members)

    async def wait_stable(limit_s: float) -> float:
        """The time the group took to stabilize (printed, not asserted: a bounded wait)."""
        t0 = time.perf_counter()
        await async_wait_until(stable, limit_s, "group stable", interval_s=0.01)
        return time.perf_counter() - t0

    try:
        for _ in range(50):
            add()
        initial = await wait_stable(30)
        add()
        after_join = await wait_stable(5)
        print(f"\n50 members/500 partitions: initial {initial:.2f}s, "
              f"stable {after_join:.2f}s after the 51st joined, "
              f"{svc._coordinator.assignments_computed} assignments computed")
    finally:
        await asyncio.gather(*(m.close() for m in members))
        await svc.close()
        await server.close()
