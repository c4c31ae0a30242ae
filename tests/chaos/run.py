"""One chaos run: start a cluster, create the topic, run the workload while the nemesis
breaks things, heal, settle, read everything back and check it.

`run_chaos(seed, duration_s)` returns a `ChaosResult` with the history, the final state,
the anomalies, the faults and a timeline; `result.report()` is the text to print (with
the seed and the timeline when there are anomalies). All randomness comes from one
`random.Random(seed)`; the cluster's own timing is of course not reproducible, so a seed
fixes the schedule (which faults, on which nodes, how long), not the interleaving.
`secure=True` runs it on a secure cluster (`ChaosCluster(secure=True)`): TLS, SCRAM and
the authorizer on the path of every request, the workloads as a principal with only
the ACLs they need.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from dmq.protocol.api import ApiKey
from dmq.protocol.errors import DmqError
from tests.chaos.checker import FinalState, History, check, needless_failures, summary
from tests.chaos.cluster import ChaosCluster, ClusterView, TopicPartition
from tests.chaos.kafka_workload import GROUP as KAFKA_GROUP
from tests.chaos.kafka_workload import KafkaWorkload
from tests.chaos.nemesis import KINDS, Nemesis
from tests.chaos.workload import GROUP, Workload, parse_record
from tests.kafka.support import kafka_ports

TOPIC = "chaos"
KAFKA_TOPIC = "chaos-kafka"
PARTITIONS = 6
RF = 3
TOPIC_CONFIGS = {"min.insync.replicas": "2"}


@dataclass
class ChaosResult:
    seed: int
    history: History
    final: FinalState
    anomalies: dict[str, list[str]]
    faults: list[str]
    timeline: list[str]
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    # records that failed although every fault healed within the producer's budget
    needless: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.anomalies

    def fault_counts(self) -> dict[str, int]:
        return dict(Counter(f.split()[0] for f in self.faults))

    def report(self, timeline_on_success: bool = False) -> str:
        lines = [f"chaos run seed {self.seed}: {self.elapsed_s:.0f}s",
                 summary(self.history, self.faults, self.anomalies)]
        lines.append(f"failed although every fault healed in time: {len(self.needless)}")
        lines += [f"  {n}" for n in self.needless[:20]]
        lines += [f"note: {n}" for n in self.notes]
        if not self.ok or timeline_on_success:
            lines.append(f"FAILED seed {self.seed}; timeline:" if not self.ok else "timeline:")
            lines += [f"  {t}" for t in self.timeline]
        return "\n".join(lines)


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.lines: list[str] = []

    def note(self, text: str) -> None:
        self.lines.append(f"{time.monotonic() - self.t0:7.2f}s {text}")


async def create_topic(cluster: ChaosCluster, topic: str, partitions: int, rf: int,
                       configs: dict[str, str], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        leader = await cluster.controller_leader()
        if leader is not None:
            try:
                resp = await cluster.ask(leader, ApiKey.CREATE_TOPICS, {"topics": [
                    {"name": topic, "partitions": partitions, "replication_factor": rf,
                     "configs": configs}]}, timeout_ms=10_000)
                last = resp["topics"][0]
                if last["error"] in (0, 36):  # created, or already there from a retry
                    return
            except (DmqError, OSError) as exc:
                last = exc
        await asyncio.sleep(0.3)
    raise AssertionError(f"could not create {topic}: {last}")


async def read_back(cluster: ChaosCluster, topic: str, partitions: int, rf: int,
                    note: Any, settle_s: float = 60.0, replica_wait_s: float = 15.0
                    ) -> FinalState:
    """Everything the healed cluster holds (call after the workload stopped)."""
    view, probs = await cluster.wait_healthy(topic, partitions, rf, settle_s)
    note("settled" if not probs else f"did not settle in {settle_s:.0f}s: {probs}")
    final = FinalState()
    final.controller_leaders = len(view.all_leaders)
    brokers = cluster.broker_ids
    final.brokers_not_online = [b for b in brokers if view.brokers.get(b) != "ONLINE"]
    for tp, (leader, replicas, isr) in sorted(view.partitions.items()):
        if sorted(isr) != sorted(replicas) or len(replicas) != rf or leader < 0:
            final.partitions_without_full_isr.append(tp)
    for p in range(partitions):
        tp = (topic, p)
        got_read = await _read_from_leader(cluster, view, tp, note)
        if got_read is None:
            final.partitions[tp] = []
            final.unreadable.append(tp)
            continue
        leader, hw, records = got_read
        view.partitions[tp] = (leader, *view.partitions[tp][1:])
        final.partitions[tp] = [(off, rid) for off, _k, v in records
                                if (rid := parse_record(v)) is not None]
        replicas = view.partitions[tp][1]
        # followers learn the last HW with their next fetch: wait (bounded) until every
        # replica holds the leader's bytes below the HW, then keep what they hold
        deadline = time.monotonic() + replica_wait_s
        while True:
            got = {b: await asyncio.to_thread(cluster.replica_bytes, b, tp, hw)
                   for b in replicas}
            if len(set(got.values())) == 1 or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.5)
        final.replica_bytes[tp] = got
        note(f"{tp}: leader {leader} HW {hw}, {len(records)} records, "
             f"replica bytes {sorted((b, len(x)) for b, x in got.items())}")
    return final


async def _read_from_leader(cluster: ChaosCluster, view: ClusterView, tp: TopicPartition,
                            note: Any, timeout_s: float = 30.0
                            ) -> tuple[int, int, list[tuple[int, Any, Any]]] | None:
    """(leader, HW, records), asking the controller again when the leader it named does
    not (yet) lead; None when no leader answered within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    leader = view.partitions.get(tp, (-1, [], []))[0]
    while True:
        if leader >= 0:
            try:
                hw, records = await cluster.read_partition(leader, tp)
                return leader, hw, records
            except (DmqError, OSError) as exc:
                note(f"{tp}: read-back from {leader}: {exc}")
        if time.monotonic() >= deadline:
            return None
        await asyncio.sleep(0.5)
        leader = (await cluster.view(tp[0])).partitions.get(tp, (-1, [], []))[0]


async def run_chaos(seed: int, duration_s: float, *, kinds: list[str] | None = None,
                    rate_per_s: float = 150.0, settings: dict[str, Any] | None = None,
                    min_faults: int | None = None, deliver_timeout_s: float = 60.0,
                    brokers: int = 4, dmq_workload: bool = True,
                    kafka_workload: bool = False, secure: bool = False) -> ChaosResult:
    """`kinds`: inject exactly these fault kinds, in this order (else the nemesis' seeded
    schedule for `duration_s`, at least `min_faults`, every kind once first).
    `dmq_workload` / `kafka_workload`: which workloads run (each on its own topic, both
    recorded into the one history: record names tell them apart).
    `secure`: TLS, SASL SCRAM and ACLs on (see `ChaosCluster`)."""
    assert dmq_workload or kafka_workload, "no workload"
    rng = random.Random(seed)
    tl = Timeline()
    history = History()
    t0 = time.monotonic()
    notes: list[str] = []
    topics = [TOPIC] if dmq_workload else []
    if kafka_workload:
        topics.append(KAFKA_TOPIC)
    # a fourth broker: a reassignment of an RF 3 partition has somewhere to move to
    with ChaosCluster(settings, brokers=brokers, secure=secure,
                      kafka=kafka_workload) as cluster:
        tl.note(f"cluster up: {cluster.bootstrap}{' (secure)' if secure else ''}")
        _, probs = await cluster.wait_healthy(None, PARTITIONS, RF, 60)
        if probs:
            raise AssertionError(f"cluster never became healthy: {probs}")
        for topic in topics:
            await create_topic(cluster, topic, PARTITIONS, RF, TOPIC_CONFIGS)
            _, probs = await cluster.wait_healthy(topic, PARTITIONS, RF, 60)
            if probs:
                raise AssertionError(f"topic {topic} never became healthy: {probs}")
        tl.note("topics ready")
        access = None
        if secure:
            groups = {TOPIC: GROUP, KAFKA_TOPIC: KAFKA_GROUP}
            access = await cluster.add_workload_user([(t, groups[t]) for t in topics])
            tl.note(f"workload principal User:{access.properties['sasl.username']} "
                    f"with its ACLs on every broker")
        nemesis = Nemesis(cluster, rng, tl.note, topics[0], PARTITIONS, RF)
        workload = (Workload(cluster, TOPIC, PARTITIONS, history, tl.note, rng,
                             rate_per_s=rate_per_s, security=access and access.client)
                    if dmq_workload else None)
        kafka: KafkaWorkload | None = None
        if kafka_workload:
            ports = await asyncio.to_thread(kafka_ports, cluster.procs)
            kafka = KafkaWorkload(",".join(f"127.0.0.1:{p}" for p in ports.values()),
                                  KAFKA_TOPIC, PARTITIONS, tl.note, rng,
                                  properties=access and access.properties)
            tl.note(f"Kafka listeners: {ports}")
        try:
            if workload is not None:
                await workload.start()
            if kafka is not None:
                kafka.start()
            await asyncio.sleep(2)
            if kinds is not None:
                for kind in kinds:
                    await asyncio.sleep(rng.uniform(*nemesis.quiet_s))
                    await nemesis.inject(kind)
            else:
                await nemesis.run(duration_s, min_faults if min_faults is not None
                                  else len(KINDS))
            await asyncio.sleep(1)
            tl.note("workload: stop producing")
            stopping = [workload.stop_producing()] if workload is not None else []
            if kafka is not None:
                stopping.append(asyncio.to_thread(kafka.stop_producing))
            await asyncio.gather(*stopping)
            await nemesis.heal()
            deadline = time.monotonic() + deliver_timeout_s
            if workload is not None:
                missing = await workload.wait_delivered(deliver_timeout_s)
                tl.note(f"group delivery: {missing} acked records undelivered")
                if missing:
                    for line in await workload.describe():
                        tl.note(line)
            if kafka is not None:
                while (kmissing := kafka.undelivered()) and time.monotonic() < deadline:
                    await asyncio.sleep(0.25)
                tl.note(f"Kafka group delivery: {kmissing} acked records undelivered")
        finally:
            if workload is not None:
                await workload.stop()
            if kafka is not None:
                await asyncio.to_thread(kafka.stop)
            await nemesis.heal()
        final = FinalState()
        for topic in topics:
            final.merge(await read_back(cluster, topic, PARTITIONS, RF, tl.note))
        failures = list(workload.failures) if workload is not None else []
        if kafka is not None:
            history.merge(kafka.history)
            failures += kafka.failures
        anomalies = check(history, final)
        if history.indeterminate:
            present = {rid for recs in final.partitions.values() for _o, rid in recs}
            notes.append(f"indeterminate records written after all: "
                         f"{len(history.indeterminate & present)} of "
                         f"{len(history.indeterminate)}")
        notes += [f"slow to heal: {u}" for u in nemesis.unhealthy_after]
        if workload is not None and workload.errors:
            notes.append(f"producer errors by type: {workload.errors}")
        if workload is not None and workload.consumer_errors:
            notes.append(f"consumer errors by type: {workload.consumer_errors}")
        if kafka is not None:
            notes += [f"Kafka workload thread died: {d}" for d in kafka.died]
            if kafka.errors:
                notes.append(f"Kafka producer errors by type: {kafka.errors}")
            if kafka.consumer_errors:
                notes.append(f"Kafka consumer errors by type: {kafka.consumer_errors}")
        if anomalies:
            tl.note("node logs kept in the timeline below")
            for n in cluster.procs.nodes.values():
                tail = n.log_text()[-3000:]
                tl.lines.append(f"===== node {n.node_id} log tail =====\n{tail}")
        needless = needless_failures(failures, nemesis.windows)
        return ChaosResult(seed, history, final, anomalies, nemesis.faults, tl.lines, notes,
                           time.monotonic() - t0, needless)
