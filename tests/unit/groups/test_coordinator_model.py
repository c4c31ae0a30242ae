"""A hypothesis state machine over GroupCoordinator: members join, heartbeat (promptly or
late, revoking or not), leave, go silent; time passes; partitions are added. After
every step the coordinator's bookkeeping is consistent and no partition is held by two
members; once everyone heartbeats promptly the group converges to a complete, balanced
assignment."""

from __future__ import annotations

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dmq.clock import ManualClock
from dmq.controller.group_coordinator import GroupCoordinator
from dmq.protocol.errors import DmqError


class Topics:
    def __init__(self) -> None:
        self.counts = {"t": 7, "u": 3}
        self.version = 1

    def metadata_version(self) -> int:
        return self.version

    def partition_counts(self) -> dict[str, int]:
        return self.counts


class CoordinatorModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.topics = Topics()
        self.coord = GroupCoordinator(self.clock, self.topics, rng=random.Random(0))
        # client side: member id -> (epoch, owned)
        self.clients: dict[str, tuple[int, set[tuple[str, int]]]] = {}

    def _beat(self, member_id: str, revoke: bool = True) -> None:
        epoch, owned = self.clients[member_id]
        try:
            res = self.coord.heartbeat("g", member_id, epoch, topics=["t", "u"],
                                       owned=set(owned), session_timeout_ms=5000,
                                       rebalance_timeout_ms=3000)
        except DmqError:
            del self.clients[member_id]  # fenced or unknown: the client gives up
            return
        given = {(t, p) for t, ps in (res.assignment or {}).items() for p in ps}
        if not revoke and owned - given:
            given = given | (owned - given)  # a slow member keeps what it must revoke
        self.clients[member_id] = (res.member_epoch, given)

    @rule()
    def join(self) -> None:
        if len(self.clients) >= 8:
            return
        res = self.coord.heartbeat("g", "", 0, topics=["t", "u"], owned=set(),
                                   session_timeout_ms=5000, rebalance_timeout_ms=3000)
        self.clients[res.member_id] = (res.member_epoch, set())
        self._beat(res.member_id)

    @precondition(lambda self: bool(self.clients))
    @rule(data=st.data(), revoke=st.booleans())
    def heartbeat(self, data: st.DataObject, revoke: bool) -> None:
        self._beat(data.draw(st.sampled_from(sorted(self.clients))), revoke)

    @precondition(lambda self: bool(self.clients))
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        member_id = data.draw(st.sampled_from(sorted(self.clients)))
        del self.clients[member_id]
        self.coord.heartbeat("g", member_id, -1)

    @rule(ms=st.integers(min_value=0, max_value=4000))
    def time_passes(self, ms: int) -> None:
        self.clock.advance(ms)
        self.coord.poll()
        group = self.coord.groups.get("g")
        live = set(group.members) if group else set()
        for member_id in list(self.clients):
            if member_id not in live:
                del self.clients[member_id]  # fenced: its partitions are lost

    @rule()
    def add_partition(self) -> None:
        self.topics.counts["u"] += 1
        self.topics.version += 1

    @invariant()
    def bookkeeping_is_consistent(self) -> None:
        group = self.coord.groups.get("g")
        if group is None:
            return
        held: dict[tuple[str, int], str] = {}
        for m in group.members.values():
            assert not (m.assigned & m.revoking)
            for tp in m.assigned | m.revoking:
                assert tp not in held, f"{tp} held by {held[tp]} and {m.member_id}"
                held[tp] = m.member_id
        assert held == group.holders
        # what the live clients believe they own never overlaps
        seen: set[tuple[str, int]] = set()
        for member_id, (_, owned) in self.clients.items():
            if member_id in group.members:
                assert not (seen & owned)
                seen |= owned

    def teardown(self) -> None:
        # everyone left heartbeats promptly: the group converges
        for _ in range(6):
            for member_id in list(self.clients):
                if member_id in self.clients:
                    self._beat(member_id)
        group = self.coord.groups.get("g")
        if not self.clients or group is None or not group.members:
            return
        owned = [tp for _, o in self.clients.values() for tp in o]
        total = sum(self.topics.counts.values())
        assert len(owned) == len(set(owned)) == total
        sizes = [len(o) for _, o in self.clients.values()]
        assert max(sizes) - min(sizes) <= 1


CoordinatorModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                              deadline=None)
TestCoordinatorModel = CoordinatorModel.TestCase
