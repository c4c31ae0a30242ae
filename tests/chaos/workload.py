"""The chaos workload: idempotent acks=all producers and a consumer group, recording
into a `History` everything the checker needs.

Producer `p<i>` sends records with key `p<i>` and value `p<i>:<seq>` (seq 0, 1, 2, ...
spread over the partitions as `seq % partitions`). Outcomes:
- acked: the handle resolved; the cluster's (partition, offset) is recorded;
- failed: `send` itself refused the record (nothing was queued, so nothing can be in
  the log);
- indeterminate: the handle raised (a timeout or an error after the batch may have
  reached a leader), or had not resolved when the workload stopped.

The group's consumers read with manual commits: each delivered record goes into
`consumed`; after each poll the next offsets are committed for the partitions the
member owns, and every acknowledged commit is appended to `commits` under
`<group>/<consumer>` (one consumer's commits are serialized, so their order is the
order they took effect). A poller reads the group's committed offsets from the active
controller and appends what it sees under `<group>`: across consumers and controller
failovers, what the controller shows must never go back.

`security` (a `ClientSecurity`) is what every producer and consumer connects with (a
secure cluster's workload principal); the poller looks as the cluster's observer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from dmq.client.consumer import Consumer, offsets_of
from dmq.client.errors import IllegalStateError
from dmq.client.producer import Producer
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import DmqError
from dmq.security.client_config import ClientSecurity
from tests.chaos.checker import History, RecordId
from tests.chaos.cluster import ChaosCluster

log = logging.getLogger("tests.chaos.workload")

GROUP = "chaos-group"
DELIVERY_TIMEOUT_MS = 30_000
MAX_BLOCK_MS = 10_000


def parse_record(value: bytes | None) -> RecordId | None:
    try:
        name, seq = bytes(value or b"").decode().split(":")
        return name, int(seq)
    except ValueError:
        return None


class Workload:
    def __init__(self, cluster: ChaosCluster, topic: str, partitions: int, history: History,
                 note: Callable[[str], None], rng: random.Random, producers: int = 3,
                 consumers: int = 3, rate_per_s: float = 150.0,
                 group: str = GROUP, security: ClientSecurity | None = None) -> None:
        self.cluster = cluster
        self.security = security
        self.topic = topic
        self.partitions = partitions
        self.history = history
        self.note = note
        self.rng = rng
        self.n_producers = producers
        self.n_consumers = consumers
        self.rate_per_s = rate_per_s
        self.group = group
        self.producing = asyncio.Event()
        self.consuming = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[RecordId, Any] = {}  # rid -> handle not yet resolved
        self._sent_at: dict[RecordId, float] = {}  # rid -> monotonic time of send()
        # every record that did not get through: (rid, sent at, failed at, budget in s,
        # error); the budget is the time the producer had to deliver or queue it
        self.failures: list[tuple[RecordId, float, float, float, str]] = []
        self.errors: dict[str, int] = {}
        self.consumer_errors: dict[str, int] = {}
        self.consumers: dict[str, Consumer] = {}
        self.last_delivery: dict[str, float] = {}  # consumer -> monotonic time

    # ---- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        self.producing.set()
        self.consuming.set()
        for i in range(self.n_producers):
            self._spawn(self._produce(f"p{i}"), f"producer p{i}")
        self._spawn(self._collect(), "ack collector")
        for i in range(self.n_consumers):
            self._spawn(self._consume(f"c{i}"), f"consumer c{i}")
        self._spawn(self._poll_commits(), "commit poller")

    def _spawn(self, coro: Any, name: str) -> None:
        async def guarded() -> None:
            try:
                await coro
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a workload bug must not hide: note it loudly
                self.note(f"workload task {name} died: {exc!r}")
                raise

        self._tasks.append(asyncio.create_task(guarded(), name=f"chaos {name}"))

    async def stop_producing(self, timeout_s: float = 40.0) -> None:
        """Stop sending; wait (bounded) for outstanding records to resolve; whatever
        has not resolved stays indeterminate."""
        self.producing.clear()
        deadline = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        now = time.monotonic()
        for rid in self._pending:
            self.history.indeterminate.add(rid)
            self.failures.append((rid, self._sent_at.pop(rid, now), now,
                                  DELIVERY_TIMEOUT_MS / 1000, "unresolved when producing stopped"))
        if self._pending:
            self.note(f"{len(self._pending)} records unresolved when producing stopped")

    async def wait_delivered(self, timeout_s: float) -> int:
        """Wait until the group delivered every acked record (or the timeout); returns
        how many acked records are still undelivered."""
        deadline = time.monotonic() + timeout_s
        while True:
            missing = sum(1 for rid in self.history.acked if rid not in self.history.consumed)
            if not missing or time.monotonic() >= deadline:
                return missing
            await asyncio.sleep(0.25)

    async def stop(self) -> None:
        self.producing.clear()
        self.consuming.clear()
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)
        self._tasks.clear()

    # ---- producers -----------------------------------------------------------------
    async def _produce(self, name: str) -> None:
        producer = Producer(self.cluster.bootstrap, client_id=f"chaos-{name}", acks="all",
                            linger_ms=5, request_timeout_ms=5000,
                            delivery_timeout_ms=DELIVERY_TIMEOUT_MS,
                            max_block_ms=MAX_BLOCK_MS, retry_backoff_max_ms=500,
                            metadata_max_age_ms=5000, security=self.security,
                            rng=random.Random(self.rng.random()))
        for attempt in range(100):
            try:
                await asyncio.wait_for(producer.start(), 15)
                break
            except (DmqError, OSError, TimeoutError) as exc:
                self.note(f"{name} start attempt {attempt}: {exc!r}")
                await asyncio.sleep(0.5)
        else:
            raise AssertionError(f"{name} never started")
        interval = self.n_producers / self.rate_per_s
        seq = 0
        try:
            while True:
                await self.producing.wait()
                rid = (name, seq)
                value = f"{name}:{seq}".encode()
                self.history.attempted += 1
                sent_at = time.monotonic()
                try:
                    handle = await producer.send(self.topic, value, key=name.encode(),
                                                 partition=seq % self.partitions)
                    self._pending[rid] = handle
                    self._sent_at[rid] = sent_at
                except (DmqError, IllegalStateError, TimeoutError) as exc:
                    self.history.failed.add(rid)
                    self._count(self.errors, exc)
                    self.failures.append((rid, sent_at, time.monotonic(),
                                          MAX_BLOCK_MS / 1000, repr(exc)))
                seq += 1
                await asyncio.sleep(interval)
        finally:
            await asyncio.shield(self._close_producer(producer))

    async def _close_producer(self, producer: Producer) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.close(timeout_ms=2000), 10)

    async def _collect(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            for rid, handle in list(self._pending.items()):
                if not handle.done():
                    continue
                del self._pending[rid]
                sent_at = self._sent_at.pop(rid)
                try:
                    md = handle.result()
                except Exception as exc:  # noqa: BLE001 - every error is an outcome
                    self.history.indeterminate.add(rid)
                    self._count(self.errors, exc)
                    self.failures.append((rid, sent_at, time.monotonic(),
                                          DELIVERY_TIMEOUT_MS / 1000, repr(exc)))
                else:
                    self.history.acked[rid] = ((md.topic, md.partition), md.offset)

    @staticmethod
    def _count(where: dict[str, int], exc: BaseException) -> None:
        k = type(exc).__name__
        where[k] = where.get(k, 0) + 1

    # ---- the group -----------------------------------------------------------------
    async def _consume(self, name: str) -> None:
        while self.consuming.is_set():
            consumer = Consumer(self.cluster.bootstrap, client_id=f"chaos-{name}",
                                group_id=self.group, auto_offset_reset="earliest",
                                enable_auto_commit=False, session_timeout_ms=6000,
                                heartbeat_interval_ms=500, request_timeout_ms=5000,
                                fetch_max_wait_ms=300, metadata_max_age_ms=5000,
                                security=self.security,
                                rng=random.Random(self.rng.random()))
            self.consumers[name] = consumer
            try:
                await asyncio.wait_for(consumer.start(), 15)
                consumer.subscribe([self.topic])
                await self._consume_loop(name, consumer)
            except (DmqError, OSError, TimeoutError) as exc:
                self.note(f"consumer {name} restarts after {exc!r}")
                self._count(self.consumer_errors, exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(asyncio.wait_for(consumer.close(), 10))

    async def _consume_loop(self, name: str, consumer: Consumer) -> None:
        key = f"{self.group}/{name}"
        while True:
            batches = await consumer.getmany(timeout_ms=300)
            nxt: dict[tuple[str, int], int] = {}
            if batches:
                self.last_delivery[name] = time.monotonic()
            for tp, records in batches.items():
                for rec in records:
                    rid = parse_record(rec.value)
                    if rid is not None:
                        self.history.consumed.add(rid)
                nxt[(tp.topic, tp.partition)] = records[-1].offset + 1
            if not nxt:
                continue
            try:
                done = await asyncio.wait_for(offsets_of(consumer).commit(nxt), 10)
            except (DmqError, TimeoutError) as exc:
                self._count(self.consumer_errors, exc)
                continue
            for tp, offset in done.items():
                self.history.commits[(key, tp)].append(offset)

    async def describe(self) -> list[str]:
        """The group as the coordinator and each consumer see it (for a timeline)."""
        out = []
        now = time.monotonic()
        for name, c in sorted(self.consumers.items()):
            g = c._group  # noqa: SLF001 - diagnostics only
            member = (f"member {g.member_id[:8]} epoch {g.member_epoch} owned "
                      f"{sorted(g.owned)}" if g is not None else "no membership")
            positions = {f"{tp.topic}-{tp.partition}": st.position
                         for tp, st in c._sub.states.items()}  # noqa: SLF001
            idle = now - self.last_delivery.get(name, now)
            out.append(f"consumer {name}: {member}; positions {positions}; "
                       f"last delivery {idle:.1f}s ago")
        leader = await self.cluster.controller_leader()
        if leader is not None:
            try:
                body = await self.cluster.ask(leader, ApiKey.DESCRIBE_GROUPS,
                                              {"groups": [self.group]})
                out.append(f"coordinator {leader}: {body['groups']}")
            except (DmqError, OSError) as exc:
                out.append(f"coordinator {leader}: {exc!r}")
        return out

    async def _poll_commits(self) -> None:
        tps = [[self.topic, list(range(self.partitions))]]
        last_note = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            if time.monotonic() - last_note > 10:
                last_note = time.monotonic()
                idle = {n: round(last_note - t, 1) for n, t in self.last_delivery.items()}
                self.note(f"progress: acked {len(self.history.acked)}, delivered "
                          f"{len(self.history.consumed)}, consumers idle for {idle}")
            leader = await self.cluster.controller_leader()
            if leader is None:
                continue
            try:
                body = await self.cluster.ask(leader, ApiKey.OFFSET_FETCH,
                                              {"group_id": self.group, "topics": tps})
            except (DmqError, OSError):
                continue
            for topic, rows in body["topics"]:
                for p, offset, _meta, err in rows:
                    if not err and offset >= 0:
                        seen = self.history.commits[(self.group, (topic, p))]
                        if not seen or seen[-1] != offset:
                            seen.append(offset)
