"""The chaos checker: from what the workload recorded and what the cluster holds after
healing, find every anomaly. Pure functions over plain data, so each anomaly kind can
be shown on a crafted history as well as on a real run.

Records are identified as (producer, seq): producer `p` sends seq 0, 1, 2, ... and
records its acknowledgements with the partition and offset the cluster gave.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

RecordId = tuple[str, int]
TopicPartition = tuple[str, int]


@dataclass
class History:
    """What the workload saw."""

    attempted: int = 0
    # where each acknowledged record was said to land (offset None: not reported)
    acked: dict[RecordId, tuple[TopicPartition, int | None]] = field(default_factory=dict)
    failed: set[RecordId] = field(default_factory=set)  # definite failures (not written)
    indeterminate: set[RecordId] = field(default_factory=set)  # timeouts, dropped links
    consumed: set[RecordId] = field(default_factory=set)  # delivered to the group
    # (group, tp) -> committed offsets in the order the commits were acknowledged
    commits: dict[tuple[str, TopicPartition], list[int]] = field(
        default_factory=lambda: defaultdict(list))

    def merge(self, other: History) -> None:
        """Add another workload's history (its record names differ from ours)."""
        self.attempted += other.attempted
        self.acked.update(other.acked)
        self.failed |= other.failed
        self.indeterminate |= other.indeterminate
        self.consumed |= other.consumed
        for key, offsets in other.commits.items():
            self.commits[key].extend(offsets)


@dataclass
class FinalState:
    """What the healed cluster holds."""

    # tp -> [(offset, record id)] read from the leader from the log start to the HW
    partitions: dict[TopicPartition, list[tuple[int, RecordId]]] = field(default_factory=dict)
    # tp -> {broker id: bytes of its log up to the HW}
    replica_bytes: dict[TopicPartition, dict[int, bytes]] = field(default_factory=dict)
    controller_leaders: int = 1
    brokers_not_online: list[int] = field(default_factory=list)
    partitions_without_full_isr: list[TopicPartition] = field(default_factory=list)
    unreadable: list[TopicPartition] = field(default_factory=list)  # no leader answered

    def merge(self, other: FinalState) -> None:
        """Add what was read back of another topic."""
        self.partitions.update(other.partitions)
        self.replica_bytes.update(other.replica_bytes)
        if other.controller_leaders != 1:
            self.controller_leaders = other.controller_leaders
        self.brokers_not_online = sorted({*self.brokers_not_online,
                                          *other.brokers_not_online})
        self.partitions_without_full_isr += other.partitions_without_full_isr
        self.unreadable += other.unreadable


def check(history: History, final: FinalState) -> dict[str, list[str]]:
    """Anomalies by kind; an empty dict means the run was clean."""
    anomalies: dict[str, list[str]] = defaultdict(list)
    where: dict[RecordId, list[tuple[TopicPartition, int]]] = defaultdict(list)
    for tp, records in final.partitions.items():
        last_offset = -1
        for offset, rid in records:
            if offset <= last_offset:
                anomalies["offset-order"].append(f"{tp}: offset {offset} after {last_offset}")
            last_offset = offset
            where[rid].append((tp, offset))

    for rid, (tp, offset) in history.acked.items():
        found = where.get(rid)
        if not found:
            anomalies["lost"].append(f"{rid} acked at {tp}@{offset} is missing")
        elif offset is None or offset < 0:
            # acknowledged without an offset (librdkafka's idempotent producer can report
            # a retried batch it knows was written as delivered, offset unknown): it
            # must be in the partition it was sent to
            if all(t != tp for t, _ in found):
                anomalies["moved"].append(f"{rid} acked in {tp} found at {found}")
        elif (tp, offset) not in found:
            anomalies["moved"].append(f"{rid} acked at {tp}@{offset} found at {found}")
    for rid, found in where.items():
        if len(found) > 1:
            anomalies["duplicated"].append(f"{rid} present {len(found)} times: {found}")
    for rid in where:
        if rid in history.failed:
            anomalies["failed-but-present"].append(f"{rid} was refused but is in the log")

    # per producer and partition, offsets must grow with sequence numbers
    by_producer: dict[tuple[str, TopicPartition], list[tuple[int, int]]] = defaultdict(list)
    for (producer, seq), found in where.items():
        for tp, offset in found:
            by_producer[(producer, tp)].append((seq, offset))
    for (producer, tp), pairs in by_producer.items():
        pairs.sort()
        for (s1, o1), (s2, o2) in zip(pairs, pairs[1:], strict=False):
            if o2 < o1:
                anomalies["reordered"].append(
                    f"{producer} in {tp}: seq {s2} at offset {o2} before seq {s1} at {o1}")

    for tp, replicas in final.replica_bytes.items():
        distinct = {bytes(b) for b in replicas.values()}
        if len(distinct) > 1:
            sizes = {r: len(b) for r, b in replicas.items()}
            anomalies["replica-divergence"].append(f"{tp}: replicas differ below HW {sizes}")

    for (group, tp), offsets in history.commits.items():
        for a, b in zip(offsets, offsets[1:], strict=False):
            if b < a:
                anomalies["commit-backwards"].append(f"{group} {tp}: {a} -> {b}")

    for rid in history.acked:
        if rid not in history.consumed:
            anomalies["not-delivered"].append(f"{rid} acked but never delivered to the group")

    if final.controller_leaders != 1:
        anomalies["cluster-state"].append(f"{final.controller_leaders} controller leaders")
    if final.brokers_not_online:
        anomalies["cluster-state"].append(f"brokers not ONLINE: {final.brokers_not_online}")
    if final.partitions_without_full_isr:
        anomalies["cluster-state"].append(
            f"partitions without full ISR: {final.partitions_without_full_isr}")
    if final.unreadable:
        anomalies["cluster-state"].append(f"partitions unreadable: {final.unreadable}")
    return dict(anomalies)


def summary(history: History, faults: list[str], anomalies: dict[str, list[str]]) -> str:
    lines = [
        f"ops attempted {history.attempted}, acked {len(history.acked)}, "
        f"failed {len(history.failed)}, indeterminate {len(history.indeterminate)}",
        f"faults injected {len(faults)}: " + ", ".join(
            f"{k}={n}" for k, n in sorted(Counter(f.split()[0] for f in faults).items())),
        "anomalies: " + (", ".join(f"{k}={len(v)}" for k, v in sorted(anomalies.items()))
                         or "none"),
    ]
    for kind, items in sorted(anomalies.items()):
        lines += [f"  {kind}: {item}" for item in items[:5]]
    return "\n".join(lines)


HEAL_GRACE_S = 5.0
"""Time a producer is given, after the cluster is seen healthy again, to find the new
leaders and retry (a metadata refresh plus a backoff) before a failure counts."""


def needless_failures(failures: list[tuple[RecordId, float, float, float, str]],
                      windows: list[tuple[float, float | None]],
                      grace_s: float = HEAL_GRACE_S) -> list[str]:
    """Records that failed although every fault had healed in time to deliver them.

    `failures`: (record, sent at, failed at, budget s, error) with monotonic times: the
    producer had until `sent + budget` (its delivery timeout, or max_block for a refused
    send). `windows`: (fault start, cluster healthy again or None for never). A failure
    is excused only by a fault that began before its deadline and was not healed by
    `grace_s` before it; any other failure (one surfaced early, or with no fault about)
    is a request a retry would have answered."""
    out = []
    for rid, sent, failed, budget, err in failures:
        deadline = sent + budget
        excused = any(start < deadline and (end is None or end > deadline - grace_s)
                      for start, end in windows)
        if not excused:
            out.append(f"{rid[0]}:{rid[1]} failed {failed - sent:.1f}s after send "
                       f"(budget {budget:.0f}s): {err}")
    return out
