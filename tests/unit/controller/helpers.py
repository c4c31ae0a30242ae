"""Helpers for controller unit tests: apply a plan's records as one committed entry."""

from __future__ import annotations

import random
from typing import Any

from dmq.config import SETTINGS
from dmq.controller.planner import Planner
from dmq.metadata.image import FENCED, NO_LEADER, ONLINE
from dmq.metadata.records import Record, records_to_wire
from dmq.metadata.state import MetadataState


class Harness:
    """A MetadataState plus a Planner, with a fake Raft index."""

    def __init__(self, settings: dict[str, Any] | None = None, seed: int = 7) -> None:
        self.settings = dict(settings or {})
        self.state = MetadataState(history_entries=100)
        self.planner = Planner(self.state, self.get, random.Random(seed))

    def get(self, key: str) -> Any:
        return self.settings.get(key, SETTINGS[key].default)

    def commit(self, records: list[Record]) -> int:
        index = self.state.version + 1
        self.state.apply_entry(index, records_to_wire(records))
        # the index of reassignments in progress matches the partitions themselves
        assert self.state.reassigning == {
            (p.topic, p.partition) for t in self.state.topics.values()
            for p in t.partitions.values() if p.adding or p.removing}
        return index

    def add_broker(self, broker_id: int, rack: str | None = None, online: bool = True) -> int:
        self.commit(self.planner.register_broker(broker_id, "127.0.0.1", 9000 + broker_id, rack,
                                                 f"inc-{broker_id}-{self.state.version}"))
        if online:
            self.commit(self.planner.unfence_broker(broker_id))
        return self.state.brokers[broker_id].broker_epoch

    def create(self, name: str, partitions: int, rf: int, **configs: str) -> dict[str, Any]:
        recs, results = self.planner.create_topics(
            [{"name": name, "partitions": partitions, "replication_factor": rf,
              "configs": configs}])
        self.commit(recs)
        return results[0]


BROKERS = (1, 2, 3, 4)


def apply_op(h: Harness, op: str, a: int, b: int) -> None:
    s, pl = h.state, h.planner
    broker = BROKERS[a]
    names = sorted(s.topics)
    if op == "create":
        recs, _ = pl.create_topics([{"name": f"t{b}", "partitions": 1 + b % 4,
                                     "replication_factor": 1 + a % 3, "configs": {}}])
        h.commit(recs)
    elif op == "fence":
        h.commit(pl.fence_broker(broker))
    elif op == "return":
        if s.brokers[broker].state == FENCED:
            h.commit(pl.register_broker(broker, "h", broker, None, f"i{s.version}"))
            h.commit(pl.unfence_broker(broker))
    elif op == "shutdown":
        h.commit(pl.controlled_shutdown(broker))
    elif op in ("shrink", "expand") and names:
        t = s.topics[names[b % len(names)]]
        p = t.partitions[a % len(t.partitions)]
        if p.leader == NO_LEADER:
            return
        if op == "shrink":
            isr = [p.leader]
        else:
            isr = [r for r in p.replicas if r == p.leader or r in p.isr
                   or s.brokers[r].state == ONLINE]
        recs, _ = pl.alter_partition(p.leader, s.brokers[p.leader].broker_epoch,
                                     [[t.name, [[p.partition, p.leader_epoch,
                                                 p.partition_epoch, isr]]]])
        h.commit(recs)
    elif op == "prefer":
        h.commit(pl.preferred_leader_elections())
    elif op == "grow" and names:
        name = names[b % len(names)]
        h.commit(pl.create_partitions([{"name": name,
                                        "count": len(s.topics[name].partitions) + 1}])[0])
    elif op == "delete" and names:
        h.commit(pl.delete_topics([names[b % len(names)]])[0])
    elif op == "unclean" and names:
        name = names[b % len(names)]
        h.commit(pl.alter_configs([{"name": name, "configs": {
            "unclean.leader.election.enable": "true"}}])[0])
        h.commit(pl.elect_offline_leaders(topic=name))
