"""A tiny synchronous cluster for core unit tests: no faults unless a test makes them."""

from __future__ import annotations

import random

from dmq.raft.core import RaftConfig, RaftCore, Role
from dmq.raft.messages import Entry, Message
from dmq.raft.storage import MemoryStorage
from dmq.types import NodeId


class Cluster:
    def __init__(self, size: int, seed: int = 1, **config: object) -> None:
        self.ids = [NodeId(i) for i in range(1, size + 1)]
        self.config = config
        self.rng = random.Random(seed)
        self.storage = {i: MemoryStorage() for i in self.ids}
        self.cores: dict[NodeId, RaftCore] = {}
        self.applied: dict[NodeId, list[Entry]] = {i: [] for i in self.ids}
        self.snapshots: dict[NodeId, int] = {}
        self.reads: dict[NodeId, list[tuple[int, int]]] = {i: [] for i in self.ids}
        self.inbox: list[Message] = []
        self.cut: set[tuple[NodeId, NodeId]] = set()
        self.sent: list[Message] = []
        self.core_kwargs: dict[str, object] = {}  # extra RaftCore arguments, for start()
        for i in self.ids:
            self.start(i)

    def start(self, node: NodeId) -> RaftCore:
        cfg = RaftConfig(node_id=node, voters=tuple(self.ids), **self.config)  # type: ignore[arg-type]
        core = RaftCore(cfg, self.storage[node].load(), random.Random(self.rng.random()),
                        **self.core_kwargs)  # type: ignore[arg-type]
        self.cores[node] = core
        return core

    def isolate(self, node: NodeId) -> None:
        for other in self.ids:
            if other != node:
                self.cut.add((node, other))
                self.cut.add((other, node))

    def heal(self) -> None:
        self.cut.clear()

    def process(self, node: NodeId) -> None:
        core = self.cores[node]
        while core.has_ready():
            rd = core.ready()
            self.storage[node].persist(rd.hard_state, rd.entries, rd.snapshot)
            for m in rd.messages:
                self.sent.append(m)
                if (m.src, m.dst) not in self.cut:
                    self.inbox.append(m)
            if rd.snapshot is not None:
                self.snapshots[node] = rd.snapshot.index
            self.applied[node].extend(rd.committed_entries)
            self.reads[node].extend((r.request_id, r.index) for r in rd.read_states)
            core.advance(rd)

    def settle(self, rounds: int = 100) -> None:
        for _ in range(rounds):
            for node in self.ids:
                self.process(node)
            if not self.inbox:
                return
            batch, self.inbox = self.inbox, []
            for m in batch:
                if m.dst in self.cores:
                    self.cores[m.dst].step(m)

    def tick(self, n: int = 1) -> None:
        for _ in range(n):
            for core in self.cores.values():
                core.tick()
            self.settle()

    def leader(self) -> RaftCore | None:
        leaders = [c for c in self.cores.values() if c.role == Role.LEADER]
        assert len(leaders) <= 1 or len({c.term for c in leaders}) == len(leaders)
        return max(leaders, key=lambda c: c.term) if leaders else None

    def elect(self, node: NodeId) -> RaftCore:
        self.cores[node].campaign()
        self.settle()
        assert self.cores[node].role == Role.LEADER
        return self.cores[node]
