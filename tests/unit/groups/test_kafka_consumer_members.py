"""What the group coordinator and service do for Kafka's KIP-848 members (forwarded by a
Kafka listener), in process: `changed` tells when the assignment moved, a heartbeat
without owned partitions means the ones last reported, -1 timeouts, the Kafka error
codes for a full group and an unknown assignor, the client named in the request,
topic ids in the answer, and OffsetDelete's refusal of subscribed topics."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from dmq.clock import ManualClock
from dmq.controller import group_coordinator
from dmq.controller.group_coordinator import GroupCoordinator
from dmq.controller.group_service import GroupService, live_offsets
from dmq.protocol.errors import (
    GroupIdNotFoundError,
    GroupMaxSizeReachedError,
    UnsupportedAssignorError,
)
from tests.unit.groups.fake_host import FakeHost
from tests.unit.groups.test_coordinator import Topics

CTX: Any = SimpleNamespace(header=SimpleNamespace(client_id="broker-101"),
                           peer="10.0.0.5:4000")


def coordinator() -> tuple[ManualClock, GroupCoordinator]:
    clock = ManualClock()
    return clock, GroupCoordinator(clock, Topics({"t": 4}))


def test_changed_says_when_epoch_or_assignment_moved() -> None:
    _clock, coord = coordinator()
    a = coord.heartbeat("g", "a", 0, topics=["t"], owned=set())
    assert a.changed and a.assignment == {"t": [0, 1, 2, 3]}
    owned = {("t", p) for p in range(4)}
    steady = coord.heartbeat("g", "a", a.member_epoch, owned=owned)
    assert not steady.changed
    b = coord.heartbeat("g", "b", 0, topics=["t"], owned=set())
    assert b.changed and b.assignment == {}  # the partitions are still a's
    told = coord.heartbeat("g", "a", a.member_epoch)  # nil: still owns all four
    assert told.changed and told.assignment == {"t": [0, 1]}


def test_heartbeat_without_owned_means_the_last_reported() -> None:
    _clock, coord = coordinator()
    a = coord.heartbeat("g", "a", 0, topics=["t"], owned=set())
    coord.heartbeat("g", "a", a.member_epoch, owned={("t", p) for p in range(4)})
    b = coord.heartbeat("g", "b", 0, topics=["t"], owned=set())
    # a had already let partitions 2 and 3 go when it is told to revoke them; a Kafka
    # consumer then sends no owned list again (nil: unchanged)
    told = coord.heartbeat("g", "a", a.member_epoch, owned={("t", 0), ("t", 1)})
    assert told.assignment == {"t": [0, 1]}
    again = coord.heartbeat("g", "a", told.member_epoch)
    assert again.member_epoch > a.member_epoch  # released: at the new epoch
    got = coord.heartbeat("g", "b", b.member_epoch, owned=set())
    assert got.assignment == {"t": [2, 3]}
    assert coord.groups["g"].members["a"].state == group_coordinator.M_STABLE


def test_rebalance_timeout_none_keeps_the_last_one() -> None:
    _clock, coord = coordinator()
    a = coord.heartbeat("g", "a", 0, topics=["t"], owned=set(), rebalance_timeout_ms=5000)
    coord.heartbeat("g", "a", a.member_epoch, rebalance_timeout_ms=None)
    assert coord.groups["g"].members["a"].rebalance_timeout_ms == 5000


def test_kafka_codes_for_a_full_group_and_an_unknown_assignor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _clock, coord = coordinator()
    with pytest.raises(UnsupportedAssignorError, match="unknown assignor"):
        coord.heartbeat("g", "a", 0, topics=["t"], assignor="sticky-nonsense")
    assert "g" not in coord.groups or not coord.groups["g"].members
    monkeypatch.setattr(group_coordinator, "MAX_MEMBERS_PER_GROUP", 2)
    coord.heartbeat("g", "a", 0, topics=["t"])
    coord.heartbeat("g", "b", 0, topics=["t"])
    with pytest.raises(GroupMaxSizeReachedError, match="2 members"):
        coord.heartbeat("g", "c", 0, topics=["t"])


def test_subscribed_topics_by_name_and_pattern() -> None:
    _clock, coord = coordinator()
    coord.heartbeat("g", "a", 0, topics=["t"])
    coord.heartbeat("g", "b", 0, pattern="orders-.*")
    assert coord.subscribed_topics("g", ["t", "orders-eu", "other"]) == {"t", "orders-eu"}
    assert coord.subscribed_topics("nobody", ["t"]) == set()


def forwarded(group: str, member: str, epoch: int, **kw: Any) -> dict[str, Any]:
    """A ConsumerGroupHeartbeat as a Kafka listener forwards it."""
    body = {"group_id": group, "member_id": member, "member_epoch": epoch,
            "instance_id": None, "rebalance_timeout_ms": -1, "session_timeout_ms": -1,
            "topics": None, "pattern": None, "owned": None, "assignor": None,
            "client_id": "rdkafka", "host": "", "topic_ids": True}
    return {**body, **kw}


def test_service_takes_the_forwarded_client_and_answers_topic_ids() -> None:
    async def run() -> None:
        host = FakeHost({"t": 2}, group_session_timeout_ms=7000)
        svc = GroupService(host)
        try:
            answer = svc.heartbeat(CTX, forwarded("g", "m1", 0, topics=["t"],
                                                  rebalance_timeout_ms=30_000, owned=[]))
            assert answer["assignment"] == [["t", [0, 1]]] and answer["changed"]
            assert answer["topic_ids"] == [["t", "id-t"]]
            member = svc.coordinator().groups["g"].members["m1"]
            assert (member.client_id, member.host) == ("rdkafka", "10.0.0.5")
            assert member.session_timeout_ms == 7000  # the coordinator's setting
            assert member.rebalance_timeout_ms == 30_000
            epoch = answer["member_epoch"]
            acked = svc.heartbeat(CTX, forwarded("g", "m1", epoch, owned=[["t", [0, 1]]]))
            steady = svc.heartbeat(CTX, forwarded("g", "m1", epoch))
            assert not acked["changed"] and not steady["changed"]
            assert member.rebalance_timeout_ms == 30_000
        finally:
            await svc.close()
    asyncio.run(run())


def test_offset_delete_refuses_subscribed_topics() -> None:
    async def run() -> None:
        host = FakeHost({"t": 2, "u": 1})
        svc = GroupService(host)
        try:
            commit = {"group_id": "g", "member_id": "", "member_epoch": -1,
                      "topics": [["t", [[0, 4, None], [1, 5, None]]], ["u", [[0, 6, None]]]]}
            await svc.offset_commit(CTX, commit)
            svc.heartbeat(CTX, forwarded("g", "m1", 0, topics=["t"],
                                         rebalance_timeout_ms=30_000, owned=[]))
            out = await svc.offset_delete(CTX, {"group_id": "g", "topics": [
                ["t", [0, 1]], ["u", [0]], ["gone", [0]]]})
            assert out == {"error": 0, "topics": [["t", [[0, 86], [1, 86]]], ["u", [[0, 0]]],
                                                  ["gone", [[0, 3]]]]}
            assert set(live_offsets(host.state, "g")) == {("t", 0), ("t", 1)}
            with pytest.raises(GroupIdNotFoundError):
                await svc.offset_delete(CTX, {"group_id": "none", "topics": [["t", [0]]]})
        finally:
            await svc.close()
    asyncio.run(run())


def test_assignment_is_sent_again_until_the_member_owns_it() -> None:
    _clock, coord = coordinator()
    a = coord.heartbeat("g", "a", 0, topics=["t"], owned=set())
    # the answer was lost: the member still says it owns nothing
    again = coord.heartbeat("g", "a", a.member_epoch, owned=set())
    assert again.changed and again.assignment == {"t": [0, 1, 2, 3]}
    nil = coord.heartbeat("g", "a", a.member_epoch)  # nil: still the empty set
    assert nil.changed
    acked = coord.heartbeat("g", "a", a.member_epoch, owned={("t", p) for p in range(4)})
    assert not acked.changed
    assert not coord.heartbeat("g", "a", a.member_epoch).changed
