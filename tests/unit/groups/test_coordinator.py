"""GroupCoordinator with a ManualClock: joins, revocation, fencing, static members,
commit validation, failover adoption, offsets retention."""

from __future__ import annotations

import random

import pytest

from dmq.clock import ManualClock
from dmq.controller.group_coordinator import (
    EMPTY,
    NO_OFFSET,
    STABLE,
    GroupCoordinator,
)
from dmq.protocol.errors import (
    FencedInstanceIdError,
    FencedMemberEpochError,
    GroupIdNotFoundError,
    InvalidRequestError,
    InvalidSessionTimeoutError,
    NonEmptyGroupError,
    StaleMemberEpochError,
    UnknownMemberIdError,
    UnreleasedInstanceIdError,
)


class Topics:
    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = dict(counts)
        self.version = 1

    def metadata_version(self) -> int:
        return self.version

    def partition_counts(self) -> dict[str, int]:
        return self.counts

    def set(self, topic: str, count: int) -> None:
        self.counts[topic] = count
        self.version += 1


class Client:
    """A well-behaved member: owns exactly what it was last told, revokes at once."""

    def __init__(self, coord: GroupCoordinator, group: str = "g", topics=("t",),
                 instance_id: str | None = None) -> None:
        self.coord = coord
        self.group = group
        self.topics = list(topics)
        self.instance_id = instance_id
        self.member_id = ""
        self.epoch = 0
        self.owned: set[tuple[str, int]] = set()
        self.revoked: list[set[tuple[str, int]]] = []
        self.assigned: list[set[tuple[str, int]]] = []

    def beat(self, **kw):
        res = self.coord.heartbeat(self.group, self.member_id, self.epoch,
                                   instance_id=self.instance_id, topics=self.topics,
                                   owned=set(self.owned), **kw)
        self.member_id = res.member_id
        self.epoch = res.member_epoch
        new = {(t, p) for t, ps in (res.assignment or {}).items() for p in ps}
        if self.owned - new:
            self.revoked.append(self.owned - new)
        if new - self.owned:
            self.assigned.append(new - self.owned)
        self.owned = new
        return res

    def leave(self, epoch: int = -1):
        return self.coord.heartbeat(self.group, self.member_id, epoch)


def join_and_settle(*clients) -> None:
    for c in clients:
        c.beat()
    settle(clients)


def settle(clients, rounds: int = 10) -> None:
    for _ in range(rounds):
        for c in clients:
            c.beat()


def make(counts=None, **kw):
    clock = ManualClock()
    topics = Topics(counts or {"t": 6})
    return clock, topics, GroupCoordinator(clock, topics, rng=random.Random(7), **kw)


def owners(clients) -> dict[tuple[str, int], str]:
    out: dict[tuple[str, int], str] = {}
    for c in clients:
        for tp in c.owned:
            assert tp not in out, f"{tp} owned twice"
            out[tp] = c.member_id
    return out


def test_first_member_gets_everything_with_a_generated_id():
    _, _, coord = make()
    a = Client(coord)
    res = a.beat()
    assert len(res.member_id) == 32 and res.member_epoch == 1
    assert a.owned == {("t", p) for p in range(6)}
    assert coord.describe("g")["state"] == STABLE


def test_second_member_gets_half_only_after_the_first_revokes():
    _, _, coord = make()
    a, b = Client(coord), Client(coord)
    a.beat()
    res = b.beat()
    # b's target is 3 partitions but a still holds all of them
    assert res.member_epoch == 2 and b.owned == set()
    a.beat()  # told to revoke 3; epoch unchanged while revoking
    assert len(a.owned) == 3 and a.epoch == 1
    b.beat()  # a has not confirmed yet: nothing for b
    assert b.owned == set()
    a.beat()  # confirms the revocation, gets the new epoch
    assert a.epoch == 2
    b.beat()
    assert len(b.owned) == 3 and not (a.owned & b.owned)
    assert coord.describe("g")["state"] == STABLE


def test_third_member_moves_only_two_partitions():
    _, _, coord = make()
    a, b = Client(coord), Client(coord)
    join_and_settle(a, b)
    before = owners([a, b])
    a.revoked.clear()
    b.revoked.clear()
    c = Client(coord)
    c.beat()
    settle([a, b, c])
    after = owners([a, b, c])
    assert sorted(len(x.owned) for x in (a, b, c)) == [2, 2, 2]
    moved = [tp for tp in before if before[tp] != after[tp]]
    assert len(moved) == 2
    assert sum(len(r) for r in a.revoked + b.revoked) == 2


def test_no_partition_is_ever_held_twice_while_members_come_and_go():
    _, topics, coord = make({"t": 12, "u": 5})
    rng = random.Random(3)
    clients: list[Client] = []
    for _step in range(300):
        action = rng.random()
        if action < 0.15 or not clients:
            clients.append(Client(coord, topics=["t", "u"]))
        elif action < 0.25 and len(clients) > 1:
            gone = clients.pop(rng.randrange(len(clients)))
            if gone.member_id:
                gone.leave()
        elif action < 0.27:
            topics.set("u", topics.counts["u"] + 1)
        rng.choice(clients).beat()
        owners(clients)  # asserts disjointness
    settle(clients, 20)
    owned = owners(clients)
    assert set(owned) == {("t", p) for p in range(12)} | {
        ("u", p) for p in range(topics.counts["u"])}
    sizes = sorted(len(c.owned) for c in clients)
    assert sizes[-1] - sizes[0] <= 1


def test_session_timeout_fences_and_hands_partitions_over():
    clock, _, coord = make()
    a, b = Client(coord), Client(coord)
    join_and_settle(a, b)
    assert len(b.owned) == 3
    for _ in range(12):  # b goes silent; a keeps heartbeating
        clock.advance(1000)
        a.beat()
        coord.poll()
    assert coord.fenced_members == 1
    assert len(a.owned) == 6
    with pytest.raises(UnknownMemberIdError):
        b.beat()


def test_member_that_does_not_revoke_in_time_is_fenced():
    clock, _, coord = make()
    a, b = Client(coord), Client(coord)
    a.beat()
    b.beat()
    # a is told to revoke but keeps reporting all six
    res = coord.heartbeat("g", a.member_id, a.epoch, owned=set(a.owned),
                          rebalance_timeout_ms=5000)
    assert sum(len(v) for v in res.assignment.values()) == 3
    for _ in range(6):
        clock.advance(1000)
        coord.heartbeat("g", a.member_id, a.epoch, owned=set(a.owned))
        b.beat()
        coord.poll()
    assert a.member_id not in coord.groups["g"].members
    b.beat()
    b.beat()
    assert len(b.owned) == 6


def test_wrong_epochs_are_fenced_and_lost_answers_tolerated():
    _, _, coord = make()
    a = Client(coord)
    a.beat()
    with pytest.raises(FencedMemberEpochError):
        coord.heartbeat("g", a.member_id, a.epoch + 5, owned=set(a.owned))
    with pytest.raises(UnknownMemberIdError):
        coord.heartbeat("g", "nobody", 3, owned=set())
    b = Client(coord)
    b.beat()
    a.beat()  # revokes; next beat bumps the epoch
    old_epoch = a.epoch
    a.beat()
    assert a.epoch == old_epoch + 1
    # the answer carrying the new epoch was lost: the previous epoch is accepted
    res = coord.heartbeat("g", a.member_id, old_epoch, owned=set(a.owned))
    assert res.member_epoch == a.epoch


def test_leave_releases_partitions_at_once():
    _, _, coord = make()
    a, b = Client(coord), Client(coord)
    join_and_settle(a, b)
    assert b.leave().member_epoch == -1
    a.beat()
    a.beat()
    assert len(a.owned) == 6


def test_static_member_restart_keeps_its_partitions_without_rebalance():
    clock, _, coord = make()
    a = Client(coord, instance_id="i-a")
    b = Client(coord, instance_id="i-b")
    join_and_settle(a, b)
    epoch = coord.groups["g"].group_epoch
    b_parts = set(b.owned)
    b.leave(epoch=-2)
    clock.advance(2000)
    a.beat()
    assert len(a.owned) == 3  # b's partitions are kept for it
    b2 = Client(coord, instance_id="i-b")
    b2.beat()
    assert b2.owned == b_parts and b2.epoch == b.epoch
    assert coord.groups["g"].group_epoch == epoch
    with pytest.raises(FencedInstanceIdError):
        coord.heartbeat("g", b.member_id, b.epoch, instance_id="i-b", owned=set())


def test_static_instance_held_by_a_live_member_is_refused():
    _, _, coord = make()
    Client(coord, instance_id="x").beat()
    with pytest.raises(UnreleasedInstanceIdError):
        Client(coord, instance_id="x").beat()


def test_departed_static_member_expires_after_its_session():
    clock, _, coord = make()
    a = Client(coord, instance_id="i-a")
    b = Client(coord, instance_id="i-b")
    join_and_settle(a, b)
    b.leave(epoch=-2)
    for _ in range(11):
        clock.advance(1000)
        a.beat()
        coord.poll()
    a.beat()
    assert len(a.owned) == 6


def test_partition_count_change_bumps_the_epoch_and_assigns_new_partitions():
    _, topics, coord = make()
    a, b = Client(coord), Client(coord)
    join_and_settle(a, b)
    epoch = coord.groups["g"].group_epoch
    topics.set("t", 10)
    settle([a, b])
    assert coord.groups["g"].group_epoch == epoch + 1
    assert sorted(len(c.owned) for c in (a, b)) == [5, 5]


def test_pattern_subscription_follows_new_topics():
    _, topics, coord = make({"orders-eu": 2, "other": 3})
    a = Client(coord, topics=[])
    a.beat(pattern="orders-.*")
    assert a.owned == {("orders-eu", 0), ("orders-eu", 1)}
    topics.set("orders-us", 1)
    a.beat(pattern="orders-.*")
    assert ("orders-us", 0) in a.owned
    with pytest.raises(InvalidRequestError):
        Client(coord, group="h").beat(pattern="(")


def test_subscription_change_and_range_assignor():
    _, _, coord = make({"t": 4, "u": 4})
    a, b = Client(coord, topics=["t"]), Client(coord, topics=["t"])
    a.beat(assignor="range")
    b.beat()
    settle([a, b])
    assert {len(a.owned), len(b.owned)} == {2}
    b.topics = ["t", "u"]
    settle([a, b])
    assert {tp for tp in b.owned if tp[0] == "u"} == {("u", p) for p in range(4)}
    assert coord.describe("g")["assignor"] == "range"


def test_commit_validation_by_member_epoch():
    _, _, coord = make()
    a = Client(coord)
    a.beat()
    coord.validate_commit("g", a.member_id, a.epoch)
    with pytest.raises(StaleMemberEpochError):
        coord.validate_commit("g", a.member_id, a.epoch - 1)
    with pytest.raises(FencedMemberEpochError):
        coord.validate_commit("g", a.member_id, a.epoch + 1)
    with pytest.raises(UnknownMemberIdError):
        coord.validate_commit("g", "ghost", 1)
    with pytest.raises(UnknownMemberIdError):  # group has members: anonymous refused
        coord.validate_commit("g", "", -1)
    coord.validate_commit("lonely", "", -1)  # no members: manual-assign commits allowed


def test_commit_is_valid_while_revoking_and_stale_after():
    _, _, coord = make()
    a, b = Client(coord), Client(coord)
    a.beat()
    b.beat()
    a.beat()  # told to revoke, epoch unchanged: commit-before-revoke is accepted
    coord.validate_commit("g", a.member_id, a.epoch)
    old = a.epoch
    a.beat()
    with pytest.raises(StaleMemberEpochError):
        coord.validate_commit("g", a.member_id, old)


def test_fenced_member_cannot_commit():
    clock, _, coord = make()
    a = Client(coord)
    a.beat()
    clock.advance(11_000)
    coord.poll()
    with pytest.raises(UnknownMemberIdError):
        coord.validate_commit("g", a.member_id, a.epoch)


def test_delete_and_reset_need_an_empty_group():
    _, _, coord = make()
    a = Client(coord)
    a.beat()
    with pytest.raises(NonEmptyGroupError):
        coord.check_empty("g")
    with pytest.raises(NonEmptyGroupError):
        coord.delete_group("g", {}, 0)
    a.leave()
    assert coord.describe("g")["state"] == EMPTY
    recs = coord.delete_group("g", {("t", 0): (5, None, 1), ("t", 1): (NO_OFFSET, None, 1)}, 9)
    assert len(recs) == 1 and recs[0].offsets == (("t", 0, NO_OFFSET, None),)
    assert coord.describe("g") is None
    with pytest.raises(GroupIdNotFoundError):
        coord.delete_group("g", {}, 0)


def test_offsets_of_empty_groups_expire_after_retention():
    _, _, coord = make()
    a = Client(coord, group="busy")
    a.beat()
    offsets = {"old": {("t", 0): (10, None, 1_000)}, "busy": {("t", 0): (3, None, 1_000)},
               "fresh": {("t", 0): (4, None, 90_000)}}
    recs = coord.expired_offsets(offsets, now_wall_ms=100_000, retention_ms=50_000)
    assert [r.group for r in recs] == ["old"]


def test_failover_adopts_members_and_holds_unclaimed_partitions():
    clock, _, old = make()
    a, b = Client(old), Client(old)
    join_and_settle(a, b)
    # the controller fails over: a new coordinator knows nobody
    topics = Topics({"t": 6})
    new = GroupCoordinator(clock, topics, rng=random.Random(1), adopt_window_ms=10_000,
                           hold_groups={"g"})
    a.coord = new
    a.beat()
    assert a.member_id in new.groups["g"].members
    # a keeps its 3 partitions; b's 3 are held for it, not handed to a
    assert len(a.owned) == 3
    b.coord = new
    b.beat()
    settle([a, b])
    assert sorted(len(c.owned) for c in (a, b)) == [3, 3]
    owners([a, b])


def test_failover_hands_out_a_dead_members_partitions_after_the_window():
    clock, _, old = make()
    a, b = Client(old), Client(old)
    join_and_settle(a, b)
    new = GroupCoordinator(clock, Topics({"t": 6}), adopt_window_ms=10_000,
                           hold_groups={"g"})
    a.coord = new
    a.beat()
    assert len(a.owned) == 3
    for _ in range(11):
        clock.advance(1000)
        new.poll()
        a.beat()
    a.beat()
    assert len(a.owned) == 6
    b.coord = new
    with pytest.raises(UnknownMemberIdError):  # the window is over: no adoption
        b.beat()


class NilTopicsClient(Client):
    """Like dmq.client.group: the subscription only on a join (epoch 0), else nil."""

    def beat(self, **kw):
        saved = self.topics
        if self.epoch != 0:
            self.topics = None
        try:
            return super().beat(**kw)
        finally:
            self.topics = saved


@pytest.mark.parametrize("owning", [False, True])
def test_member_adopted_without_its_subscription_rejoins_and_gets_partitions(owning):
    """Regression (chaos run, seed 11): a member adopted by a new coordinator from a
    heartbeat without topics (nil = unchanged, as the real client sends after joining)
    was given an empty subscription: it stayed in the group with nothing assigned, for
    good, and its partitions were never consumed again."""
    clock, _, old = make()
    a = NilTopicsClient(old)
    if owning:
        join_and_settle(a)
        assert len(a.owned) == 6
    else:
        a.beat()  # joined; its partitions not handed out yet (e.g. held after a failover)
        a.owned = set()
    new = GroupCoordinator(clock, Topics({"t": 6}), adopt_window_ms=10_000, hold_groups={"g"})
    a.coord = new
    res = a.beat()
    assert res.member_epoch == 0  # asked to rejoin: the client sends its topics next
    assert len(a.owned) == (6 if owning else 0) and not a.revoked  # nothing taken away
    for _ in range(12):
        clock.advance(1000)
        new.poll()
        a.beat()
    assert len(a.owned) == 6 and a.epoch > 0 and not a.revoked


def test_bad_session_timeout_is_refused():
    _, _, coord = make()
    with pytest.raises(InvalidSessionTimeoutError):
        coord.heartbeat("g", "", 0, topics=["t"], session_timeout_ms=10)


def test_list_and_describe():
    _, _, coord = make()
    a = Client(coord)
    a.beat()
    assert coord.list_groups() == [{"group_id": "g", "state": STABLE, "members": 1}]
    d = coord.describe("g")
    assert d["members"][0]["assignment"] == [["t", [0, 1, 2, 3, 4, 5]]]
    assert coord.next_poll_ms() > 0
