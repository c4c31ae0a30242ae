"""GroupMembership (the consumer side) against the real group handlers on loopback:
joins, cooperative rebalances with only-what-changed callbacks, commit before revoke,
leave on close, fencing and rejoin, max_poll_interval."""

from __future__ import annotations

import asyncio

import pytest

from dmq.client.group import GroupMembership, RebalanceListener
from dmq.clock import ManualClock
from tests.support.fake_consumer import FakeConsumer
from tests.support.waiting import async_wait_until
from tests.unit.groups.fake_host import FakeHost, Heartbeat, start_fake_controller

TP = tuple[str, int]


class Recorder(RebalanceListener):
    def __init__(self) -> None:
        self.revoked: list[set[TP]] = []
        self.assigned: list[set[TP]] = []
        self.lost: list[set[TP]] = []

    async def on_partitions_revoked(self, revoked):
        self.revoked.append(revoked)

    def on_partitions_assigned(self, assigned):
        self.assigned.append(assigned)

    def on_partitions_lost(self, lost):
        self.lost.append(lost)


@pytest.fixture
async def controller():
    host = FakeHost({"t": 6}, group_heartbeat_interval_ms=100)
    server, svc = await start_fake_controller(host)
    yield host, [("127.0.0.1", server.bound_port)]
    await svc.close()
    await server.close()


def member(addr, **kw):
    consumer = FakeConsumer()
    listener = Recorder()
    kw.setdefault("topics", ["t"])
    m = GroupMembership(addr, "g", consumer, listener=listener, heartbeat_interval_ms=100,
                        auto_commit_interval_ms=200, session_timeout_ms=2000, **kw)
    m.start()
    return m, consumer, listener


async def until(pred, timeout_s: float = 5.0) -> None:
    await async_wait_until(pred, timeout_s, "condition", interval_s=0.02)


def answered(host: FakeHost, since: int, member_id: str | None = None) -> list[Heartbeat]:
    """The heartbeats answered (or refused) after the first `since`, of one member."""
    return [h for h in host.heartbeats[since:]
            if member_id is None or h.request.get("member_id") == member_id]


def assigned_count(h: Heartbeat) -> int | None:
    """How many partitions an answer assigns (None: unchanged, or an error)."""
    if h.answer is None or h.answer.get("assignment") is None:
        return None
    return sum(len(ps) for _, ps in h.answer["assignment"])


def disjoint(*ms: GroupMembership) -> bool:
    seen: set[TP] = set()
    for m in ms:
        if seen & m.owned:
            return False
        seen |= m.owned
    return True


async def test_two_then_three_members_with_commit_before_revoke(controller) -> None:
    host, addr = controller
    a, ca, la = member(addr)
    assert await a.wait_for_assignment(5000)
    await until(lambda: len(a.owned) == 6)
    b, cb, lb = member(addr)
    await until(lambda: len(a.owned) == 3 and len(b.owned) == 3)
    assert disjoint(a, b)
    ca.consume(5)
    cb.consume(7)
    before_a, before_b = set(a.owned), set(b.owned)
    la.revoked.clear()
    lb.revoked.clear()
    c, cc, lc = member(addr)
    await until(lambda: sorted(len(m.owned) for m in (a, b, c)) == [2, 2, 2])
    assert disjoint(a, b, c)
    revoked = set().union(*la.revoked, *lb.revoked)
    assert len(revoked) == 2 and lc.assigned and set().union(*lc.assigned) == revoked
    # the moved partitions were committed before being revoked, and c starts there
    for tp in revoked:
        want = 5 if tp in before_a else 7
        assert cc.started[-1].get(tp, cc.started[0].get(tp)) == want or any(
            s.get(tp) == want for s in cc.started)
    assert a.owned <= before_a and b.owned <= before_b
    for m in (a, b, c):
        await m.close()


async def test_close_leaves_and_the_other_member_takes_over(controller) -> None:
    _, addr = controller
    a, ca, la = member(addr)
    b, cb, lb = member(addr)
    await until(lambda: len(a.owned) == 3 and len(b.owned) == 3)
    cb.consume(4)
    b_parts = set(b.owned)
    await b.close()
    assert lb.revoked and set().union(*lb.revoked) == b_parts
    await until(lambda: len(a.owned) == 6)
    committed = await a.fetch_committed(b_parts)
    assert all(v == 4 for v in committed.values())
    assert all(ca.positions[tp] == 4 for tp in b_parts)
    await a.close()


async def test_auto_commit_and_manual_commit(controller) -> None:
    _, addr = controller
    a, ca, _ = member(addr)
    await until(lambda: len(a.owned) == 6)
    ca.consume(3)
    await until(lambda: a._committed.get(("t", 0)) == 3)
    done = await a.commit({("t", 0): 9, ("t", 99): 1})
    assert done == {("t", 0): 9}  # a partition we do not own is not committed
    assert (await a.fetch_committed([("t", 0)]))[("t", 0)] == 9
    await a.close()


async def test_fenced_member_loses_partitions_and_rejoins(controller) -> None:
    host, addr = controller
    a, ca, la = member(addr)
    await until(lambda: len(a.owned) == 6)
    old_id = a.member_id
    since = len(host.heartbeats)
    host.term = 2  # a failover: the fresh coordinator adopts the member, keeps partitions
    # two heartbeats answered by it: the second was sent after a handled the first answer
    await until(lambda: len([h for h in answered(host, since) if h.term == 2]) >= 2)
    assert all(h.error is None and h.answer is not None and h.answer["member_id"] == old_id
               and assigned_count(h) in (None, 6) for h in answered(host, since))
    assert a.member_id == old_id and len(a.owned) == 6 and not la.lost
    # a wrong epoch gets FENCED_MEMBER_EPOCH: partitions lost, the member rejoins. The
    # epoch is skewed as the request arrives: set on the member, an answer in flight
    # could overwrite it before the next heartbeat is sent.
    host.skew_next_epoch = 5
    await until(lambda: bool(la.lost))
    await until(lambda: len(a.owned) == 6)
    await a.close()


async def run_member_clock(clock: ManualClock, m: GroupMembership, pred, *,
                           poll: bool) -> None:
    """Until `pred()`: move `m`'s clock one heartbeat interval at a time (its heartbeats
    and poll-interval checks run on it), the application polling meanwhile if `poll`."""
    def step() -> bool:
        if pred():
            return True
        if poll:
            m.note_poll()
        clock.advance(m.heartbeat_interval_ms)
        return False

    await async_wait_until(step, 10, "condition", interval_s=0.02)


async def test_max_poll_interval_leaves_until_the_next_poll(controller) -> None:
    """max_poll_interval_ms is time of the member's clock: a member whose application
    stops polling leaves once its clock passes the interval, and comes back at the next
    poll."""
    _, addr = controller
    clock = ManualClock()
    a, ca, la = member(addr, max_poll_interval_ms=300, clock=clock)
    b, cb, lb = member(addr)
    await run_member_clock(clock, a, lambda: len(a.owned) == 3 and len(b.owned) == 3,
                           poll=True)
    assert not la.lost
    # a's application stops polling: once a's clock passes 300 ms, a leaves
    stopped_at = clock.monotonic_ms()
    await run_member_clock(clock, a, lambda: len(b.owned) == 6 and not a.owned, poll=False)
    assert la.lost and clock.monotonic_ms() - stopped_at > 300
    a.note_poll()
    await run_member_clock(clock, a, lambda: len(a.owned) == 3, poll=True)
    await a.close()
    await b.close()


async def test_commits_from_outside_the_group_only_while_it_is_empty(controller) -> None:
    from dmq.client.group import GroupOffsets
    from dmq.protocol.errors import UnknownMemberIdError

    _, addr = controller
    outside = GroupOffsets(addr, "g")
    assert await outside.commit({("t", 0): 4}) == {("t", 0): 4}
    assert await outside.fetch_committed([("t", 0), ("t", 1)]) == {("t", 0): 4, ("t", 1): None}
    a, ca, _ = member(addr)
    await until(lambda: len(a.owned) == 6)
    assert ca.positions[("t", 0)] == 4  # the member starts at the committed offset
    with pytest.raises(UnknownMemberIdError):
        await outside.commit({("t", 0): 5})
    await a.close()


async def test_long_processing_keeps_membership(controller) -> None:
    host, addr = controller
    a, ca, la = member(addr)  # session 2 s
    await until(lambda: len(a.owned) == 6)
    epoch = a.member_epoch
    since = len(host.heartbeats)
    # the application processes one record for 3 s, longer than the session timeout,
    # without polling: heartbeats go on in the background (the 3 s are the scenario,
    # not a wait for something to happen)
    await asyncio.sleep(3.0)
    assert len(a.owned) == 6 and a.member_epoch == epoch and not la.lost
    beats = answered(host, since, a.member_id)
    assert len(beats) >= 10 and all(h.error is None for h in beats)
    await a.close()


async def test_static_member_restart_gets_its_partitions_back(controller) -> None:
    host, addr = controller
    a, ca, la = member(addr, instance_id="i-a")
    b, cb, lb = member(addr, instance_id="i-b")
    await until(lambda: len(a.owned) == 3 and len(b.owned) == 3)
    a_parts = set(a.owned)
    lb.revoked.clear()
    lb.assigned.clear()
    await a.close()  # leaves with epoch -2: its partitions wait for it
    since = len(host.heartbeats)
    # two of b's heartbeats answered after the leave: a rebalance would reach b in them
    await until(lambda: len(answered(host, since, b.member_id)) >= 2)
    assert [assigned_count(h) for h in answered(host, since, b.member_id)
            if assigned_count(h) not in (None, 3)] == []
    assert len(b.owned) == 3
    a2, ca2, la2 = member(addr, instance_id="i-a")
    await until(lambda: a2.owned == a_parts)
    assert not lb.revoked and not lb.assigned  # no rebalance at b
    await a2.close()
    await b.close()


async def test_slow_rebalance_callback_does_not_stop_heartbeats(controller) -> None:
    _, addr = controller

    class Slow(Recorder):
        async def on_partitions_assigned(self, assigned):
            await asyncio.sleep(3.0)  # longer than the 2 s session
            self.assigned.append(assigned)

    consumer = FakeConsumer()
    slow = Slow()
    a = GroupMembership(addr, "g", consumer, topics=["t"], listener=slow,
                        heartbeat_interval_ms=100, session_timeout_ms=2000)
    a.start()
    await until(lambda: bool(slow.assigned), 6)
    assert len(a.owned) == 6 and not slow.lost
    await a.close()
