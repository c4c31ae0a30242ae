"""A controller failover under a Kafka consumer group: the classic coordinator moves
with the active controller (membership is soft state there), the members are told to
rejoin and do, and the committed offsets survive (they are in Raft). Real processes:
three controllers, two brokers."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest

from tests.kafka.clients import REPO, Member, create_topic, produce, wait_until
from tests.kafka.support import kafka_cluster
from tests.support.procs import ProcessCluster

pytest.importorskip("confluent_kafka")

pytestmark = pytest.mark.slow

_ACTIVE = re.compile(r"controller=(\d+) is the active controller \(term (\d+)")


def active_controller(pc: ProcessCluster) -> int:
    best = (-1, -1)
    for nid in pc.controller_ids:
        for m in _ACTIVE.finditer(pc.nodes[nid].log_text()):
            best = max(best, (int(m.group(2)), int(m.group(1))))
    assert best[1] >= 0, pc.dump_logs()
    return best[1]


def describe(pc: ProcessCluster, group: str) -> dict[str, object]:
    alive = ",".join(f"127.0.0.1:{n.port}" for n in pc.nodes.values() if n.alive)
    out = subprocess.run([sys.executable, "-m", "dmq.cli", "groups", "describe", group,
                          "--json", "--bootstrap", alive], cwd=REPO, capture_output=True,
                         text=True, timeout=30)
    return json.loads(out.stdout) if out.returncode == 0 else {}  # type: ignore[no-any-return]


def committed(pc: ProcessCluster, group: str) -> list[object]:
    d = describe(pc, group)
    return [(p["partition"], p["committed"]) for p in d.get("partitions", [])]  # type: ignore[attr-defined, index]


def seen(members: list[Member]) -> set[tuple[int, int]]:
    """The distinct (partition, offset) read: a record is read again when its commit
    was refused by a rebalance (the failover's, or the first join's)."""
    out: set[tuple[int, int]] = set()
    for m in members:
        with m.lock:
            out.update(m.records)
    return out


def test_group_survives_a_controller_failover() -> None:
    with kafka_cluster(controllers=3, brokers=2) as (pc, ports):
        create_topic(ports, "fo", 4, 2)
        produce(ports, "fo", 20, 4)
        members = [Member(ports, "fo-group", "fo") for _ in range(2)]
        try:
            wait_until(lambda: len(seen(members)) >= 20, 30, "the first 20 records read")
            wait_until(lambda: committed(pc, "fo-group") == [(p, 5) for p in range(4)], 30,
                       "commits at 5")
            pc.kill(active_controller(pc), signal.SIGKILL)
            produce(ports, "fo", 8, 4)
            wait_until(lambda: len(seen(members)) >= 28, 60,
                       "the next 8 records read after the failover")
            assert seen(members) == {(p, o) for p in range(4) for o in range(7)}
            wait_until(lambda: committed(pc, "fo-group") == [(p, 7) for p in range(4)], 30,
                       "commits at 7 on the new controller")
            wait_until(lambda: set().union(*(m.assignment() for m in members)) ==
                       set(range(4)), 30, "the group owning every partition again")
        finally:
            for m in members:
                m.close()
