"""The nemesis: faults on a seeded random schedule, each healed before the next.

Fault kinds (`KINDS`):
- kill-broker: kill -9 a random broker, restart it after a while;
- kill-controller-leader: kill -9 the active controller, restart it;
- pause: SIGSTOP a random node (broker or controller) for longer than the session
  timeouts, then SIGCONT;
- partition-node: cut every link between one random node and all other nodes (both
  directions; clients still reach it), then heal;
- partition-controller-from-brokers: cut the active controller from every broker (not
  from the other controllers nor from clients), then heal;
- rolling-restart: SIGTERM each broker, then each controller, in turn; restart it and
  wait for a healthy cluster (one controller leader, brokers ONLINE, full ISRs) before
  the next one (a broker's controlled shutdown moves its leaderships first).

Every fault appends to the timeline when it starts and ends; after healing, the
nemesis waits (bounded) for the cluster to be healthy again before a quiet gap.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
from collections.abc import Callable

from tests.chaos.cluster import SESSION_TIMEOUT_S, ChaosCluster

KINDS = ["kill-broker", "kill-controller-leader", "pause", "partition-node",
         "partition-controller-from-brokers", "rolling-restart"]


class Nemesis:
    def __init__(self, cluster: ChaosCluster, rng: random.Random, note: Callable[[str], None],
                 topic: str, partitions: int, rf: int, hold_s: tuple[float, float] = (2.0, 5.0),
                 quiet_s: tuple[float, float] = (1.0, 3.0), heal_timeout_s: float = 45.0
                 ) -> None:
        self.cluster = cluster
        self.rng = rng
        self.note = note
        self.topic = topic
        self.partitions = partitions
        self.rf = rf
        self.hold_s = hold_s
        self.quiet_s = quiet_s
        self.heal_timeout_s = heal_timeout_s
        self.faults: list[str] = []
        self.unhealthy_after: list[str] = []  # faults the cluster did not heal from in time
        # (monotonic start, monotonic time the cluster was seen healthy again or None)
        # per injected fault: what `needless_failures` holds failed records against
        self.windows: list[tuple[float, float | None]] = []
        self._stopped: set[int] = set()
        self._killed: set[int] = set()

    def schedule(self, duration_s: float) -> list[str]:
        """Every kind once (shuffled) first, then random kinds: `run` stops at the time."""
        first = list(KINDS)
        self.rng.shuffle(first)
        rest = [self.rng.choice(KINDS) for _ in range(int(duration_s) + 10)]
        return first + rest

    async def run(self, duration_s: float, min_faults: int = 0) -> None:
        """Inject faults until `duration_s` passed (and at least `min_faults` ran)."""
        start = time.monotonic()
        for kind in self.schedule(duration_s):
            if time.monotonic() - start >= duration_s and len(self.faults) >= min_faults:
                break
            await asyncio.sleep(self.rng.uniform(*self.quiet_s))
            await self.inject(kind)

    async def inject(self, kind: str) -> None:
        hold = self.rng.uniform(*self.hold_s)
        start = time.monotonic()
        try:
            await getattr(self, "_" + kind.replace("-", "_"))(hold)
        finally:
            await self.heal()
        _, probs = await self.cluster.wait_healthy(self.topic, self.partitions, self.rf,
                                                   self.heal_timeout_s)
        if probs:
            self.unhealthy_after.append(f"{kind}: {probs}")
            self.note(f"not healthy {self.heal_timeout_s:.0f}s after {kind}: {probs}")
            self.windows.append((start, None))
        else:
            self.note(f"healthy again after {kind}")
            self.windows.append((start, time.monotonic()))

    async def heal(self) -> None:
        """Undo every fault: links, paused and killed processes."""
        assert self.cluster.links is not None
        if self.cluster.links.cut_links:
            self.cluster.links.heal_all()
            self.note("links healed")
        for n in sorted(self._stopped):
            self.cluster.procs.signal(n, signal.SIGCONT)
            self.note(f"SIGCONT {n}")
        self._stopped.clear()
        for n in sorted(self._killed):
            await asyncio.to_thread(self.cluster.procs.start, n)
            self.note(f"restarted {n}")
        self._killed.clear()

    def _record(self, text: str) -> None:
        self.faults.append(text)
        self.note("FAULT " + text)

    async def _kill(self, node: int) -> None:
        self._killed.add(node)
        await asyncio.to_thread(self.cluster.procs.kill, node, signal.SIGKILL)

    # ---- the kinds -----------------------------------------------------------------
    async def _kill_broker(self, hold: float) -> None:
        node = self.rng.choice(self.cluster.broker_ids)
        self._record(f"kill-broker {node} for {hold:.1f}s")
        await self._kill(node)
        await asyncio.sleep(hold)

    async def _kill_controller_leader(self, hold: float) -> None:
        leader = await self._controller_leader()
        self._record(f"kill-controller-leader {leader} for {hold:.1f}s")
        await self._kill(leader)
        await asyncio.sleep(hold)

    async def _pause(self, hold: float) -> None:
        node = self.rng.choice(self.cluster.broker_ids + self.cluster.controller_ids)
        hold += SESSION_TIMEOUT_S
        self._record(f"pause {node} for {hold:.1f}s")
        self._stopped.add(node)
        self.cluster.procs.signal(node, signal.SIGSTOP)
        await asyncio.sleep(hold)

    async def _partition_node(self, hold: float) -> None:
        assert self.cluster.links is not None
        node = self.rng.choice(self.cluster.broker_ids + self.cluster.controller_ids)
        hold += SESSION_TIMEOUT_S / 2
        self._record(f"partition-node {node} for {hold:.1f}s")
        self.cluster.links.isolate(node)
        await asyncio.sleep(hold)

    async def _partition_controller_from_brokers(self, hold: float) -> None:
        assert self.cluster.links is not None
        leader = await self._controller_leader()
        hold += SESSION_TIMEOUT_S / 2
        self._record(f"partition-controller-from-brokers {leader} for {hold:.1f}s")
        for b in self.cluster.broker_ids:
            self.cluster.links.cut(leader, b)
        await asyncio.sleep(hold)

    async def _rolling_restart(self, hold: float) -> None:
        nodes = self.cluster.broker_ids + self.cluster.controller_ids
        self._record("rolling-restart " + ",".join(map(str, nodes)))
        for b in nodes:
            self.note(f"SIGTERM {b}")
            t0 = time.monotonic()
            try:
                await asyncio.to_thread(self.cluster.procs.kill, b, signal.SIGTERM)
            except subprocess.TimeoutExpired:
                self.unhealthy_after.append(f"rolling-restart: {b} ignored SIGTERM for 30s")
                await asyncio.to_thread(self.cluster.procs.kill, b, signal.SIGKILL)
            self.note(f"{b} exited after {time.monotonic() - t0:.1f}s; restarting")
            await asyncio.to_thread(self.cluster.procs.start, b)
            _, probs = await self.cluster.wait_healthy(self.topic, self.partitions, self.rf,
                                                       self.heal_timeout_s)
            if probs:
                self.note(f"rolling restart: not healthy after restarting {b}: {probs}")

    async def _controller_leader(self) -> int:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            leader = await self.cluster.controller_leader()
            if leader is not None:
                return leader
            await asyncio.sleep(0.2)
        return self.rng.choice(self.cluster.controller_ids)
