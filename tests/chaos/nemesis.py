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
  the next one (a broker's controlled shutdown moves its leaderships first);
- reassign: move a random partition of the workload topic to another replica set of
  the same size (one replica swapped for a broker outside the set, so data is copied;
  only the order changes when every broker holds it already), under a replication
  throttle (`follower.replication.throttled.rate`) of `REASSIGN_THROTTLE` bytes/s;
  healed once the reassignment completed (the throttle removed then).

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
from typing import Any

from dmq.protocol.api import ApiKey
from dmq.protocol.errors import DmqError
from tests.chaos.cluster import SESSION_TIMEOUT_S, ChaosCluster

KINDS = ["kill-broker", "kill-controller-leader", "pause", "partition-node",
         "partition-controller-from-brokers", "rolling-restart", "reassign"]
# well above the workload's produce rate per partition, so the moved replica catches up
REASSIGN_THROTTLE = 200_000
THROTTLE_KEY = "follower.replication.throttled.rate"


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

    async def _reassign(self, hold: float) -> None:
        p = self.rng.randrange(self.partitions)
        brokers = self.cluster.broker_ids
        replicas = await self._replicas(p)
        spare = [b for b in brokers if b not in replicas]
        if spare and replicas:
            out, new = self.rng.choice(replicas), self.rng.choice(spare)
            target = [new if r == out else r for r in replicas]
        else:  # every broker holds it (or it is unknown now): a new order, no copy
            target = list(replicas or self.rng.sample(brokers, self.rf))
            self.rng.shuffle(target)
        self._record(f"reassign {self.topic}-{p} {replicas} -> {target}")
        try:
            await self._to_controller(ApiKey.ALTER_CONFIGS, {
                "topics": [], "dynamic": {THROTTLE_KEY: str(REASSIGN_THROTTLE)}})
            resp = await self._to_controller(ApiKey.ALTER_PARTITION_REASSIGNMENTS,
                                             {"partitions": [[self.topic, p, target]]})
            [[_t, _p, code, msg]] = resp["partitions"]
            if code:
                self.note(f"reassign {self.topic}-{p} refused: {code} {msg}")
                return
            # healed = the move completed: nothing in progress, the target in place
            deadline = time.monotonic() + self.heal_timeout_s
            while time.monotonic() < deadline:
                moving = await self._to_controller(ApiKey.LIST_PARTITION_REASSIGNMENTS,
                                                   {"topics": [self.topic]})
                if not moving["partitions"] and await self._replicas(p) == target:
                    self.note(f"reassign {self.topic}-{p} complete")
                    return
                await asyncio.sleep(0.25)
            self.unhealthy_after.append(f"reassign: {self.topic}-{p} still moving after "
                                        f"{self.heal_timeout_s:.0f}s")
        finally:
            try:
                await self._to_controller(ApiKey.ALTER_CONFIGS,
                                          {"topics": [], "dynamic": {THROTTLE_KEY: None}})
            except (DmqError, OSError) as exc:
                self.note(f"throttle not removed: {exc}")

    async def _replicas(self, p: int) -> list[int]:
        view = await self.cluster.view(self.topic)
        return view.partitions.get((self.topic, p), (-1, [], []))[1]

    async def _to_controller(self, api: ApiKey, body: dict[str, Any]) -> Any:
        """A request to the active controller, retried (bounded) across a failover."""
        deadline = time.monotonic() + 20
        while True:
            try:
                return await self.cluster.ask(await self._controller_leader(), api, body,
                                              timeout_ms=5000)
            except (DmqError, OSError):
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.3)

    async def _controller_leader(self) -> int:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            leader = await self.cluster.controller_leader()
            if leader is not None:
                return leader
            await asyncio.sleep(0.2)
        return self.rng.choice(self.cluster.controller_ids)
