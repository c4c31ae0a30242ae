"""Helpers for controller unit tests: apply a plan's records as one committed entry."""

from __future__ import annotations

import random
from typing import Any

from dmq.config import SETTINGS
from dmq.controller.planner import Planner
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
