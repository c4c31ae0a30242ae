"""`Partition` rules on a real log with an injected clock: HW over the maximal ISR,
caught-up tracking, ISR shrink/expand proposals, acks waiters, role changes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from dmq.broker.partition import Partition, ProduceWaiter
from dmq.clock import ManualClock
from dmq.log.partition_log import PartitionLog
from dmq.protocol.errors import (
    ErrorCode,
    FencedLeaderEpochError,
    NotEnoughReplicasError,
    NotLeaderOrFollowerError,
    UnknownLeaderEpochError,
)
from tests.support.inproc_broker import batch


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def part(tmp_path: Path, clock: ManualClock) -> Partition:
    plog = PartitionLog.open(str(tmp_path / "t-0"), clock=clock)
    p = Partition("t", 0, "id", plog, 1, clock.monotonic_ms)
    p.make_leader(0, 0, (1, 2, 3), (1, 2, 3))
    p.min_insync_replicas = 2
    return p


def test_hw_is_min_leo_over_isr_and_waits_for_unknown_followers(part: Partition) -> None:
    part.append_as_leader(batch([b"a", b"b"]), 1)
    assert part.high_watermark == 0
    part.update_follower_fetch(2, 2)
    assert part.high_watermark == 0  # follower 3 has not fetched in this epoch
    part.update_follower_fetch(3, 1)
    assert part.high_watermark == 1
    part.update_follower_fetch(3, 2)
    assert part.high_watermark == 2
    part.update_follower_fetch(3, 0)  # never backwards
    assert part.high_watermark == 2


def test_shrink_after_lag_and_expand_when_caught_up(part: Partition, clock: ManualClock) -> None:
    part.append_as_leader(batch([b"a"]), 1)
    part.update_follower_fetch(2, 1)
    part.update_follower_fetch(3, 0)  # behind
    assert part.isr_shrink(1500) is None
    clock.advance(1000)
    part.update_follower_fetch(2, 1)  # still caught up
    clock.advance(600)
    assert part.isr_shrink(1500) == (1, 2)
    part.propose_isr((1, 2))
    assert part.isr_shrink(1500) is None  # one proposal in flight
    # not applied until the controller accepts; HW still waits for 3
    assert part.isr == (1, 2, 3) and part.high_watermark == 0
    part.apply_isr(0, 1, (1, 2))
    assert part.isr == (1, 2) and part.high_watermark == 1
    assert part.isr_expansion() is None
    part.update_follower_fetch(3, 1)
    assert part.isr_expansion() == (1, 2, 3)
    # a stale answer (older leader epoch) only clears the proposal
    part.propose_isr((1, 2, 3))
    part.apply_isr(5, 9, (1,))
    assert part.isr == (1, 2) and part.pending_isr is None


def test_pending_expansion_counts_for_hw(part: Partition) -> None:
    part.apply_isr(0, 1, (1, 2))
    part.update_follower_fetch(2, 0)
    part.update_follower_fetch(3, 0)
    part.propose_isr((1, 2, 3))
    part.append_as_leader(batch([b"a"]), 1)
    part.update_follower_fetch(2, 1)
    assert part.high_watermark == 0  # 3 is in the maximal ISR
    part.update_follower_fetch(3, 1)
    assert part.high_watermark == 1


async def test_acks_waiters_complete_in_offset_order(part: Partition) -> None:
    loop = asyncio.get_running_loop()
    waiters = []
    for _ in range(3):
        info = part.append_as_leader(batch([b"x"] * 2), -1)
        w = ProduceWaiter(loop.create_future())
        row = [0, None, info.base_offset, 0, None]
        assert part.park_produce(w, row, info.last_offset + 1)
        waiters.append((w, row))
    part.update_follower_fetch(2, 4)
    part.update_follower_fetch(3, 4)
    assert [w.future.done() for w, _ in waiters] == [True, True, False]
    assert waiters[0][1][1] == 0
    part.make_follower(2, 1, 1, (1, 2, 3), (1, 2, 3))
    assert waiters[2][0].future.done()
    assert waiters[2][1][1] == ErrorCode.NOT_LEADER_OR_FOLLOWER


def test_min_insync_and_epoch_checks(part: Partition) -> None:
    part.apply_isr(0, 1, (1,))
    with pytest.raises(NotEnoughReplicasError):
        part.append_as_leader(batch([b"a"]), -1)
    assert part.log_end_offset == 0
    part.append_as_leader(batch([b"a"]), 1)
    assert part.high_watermark == 1  # ISR is the leader alone
    part.make_leader(3, 2, (1, 2, 3), (1,))
    with pytest.raises(FencedLeaderEpochError):
        part.check_leader(2)
    with pytest.raises(UnknownLeaderEpochError):
        part.check_leader(4)
    part.check_leader(3)
    part.make_follower(2, 4, 3, (1, 2, 3), (2,))
    with pytest.raises(NotLeaderOrFollowerError):
        part.check_leader(-1)


def test_new_leader_epoch_recorded_in_epoch_cache(part: Partition) -> None:
    part.append_as_leader(batch([b"a"] * 3), 1)
    part.make_follower(2, 1, 1, (1, 2, 3), (1, 2, 3))
    part.make_leader(2, 2, (1, 2, 3), (1, 2, 3))
    assert part.log.epoch_cache.entries == [(0, 0), (2, 3)]
    assert part.log.end_offset_for_epoch(0) == (0, 3)


def test_session_requests_keep_an_idle_follower_caught_up_until_the_log_moves(
        part: Partition, clock: ManualClock) -> None:
    """A follower in a fetch session names a partition only when its offset changes;
    each request of the session counts as a fetch at that offset (issue 23)."""
    from dmq.broker.fetch_session import FetchSessionCache, SessionPartition

    cache = FetchSessionCache()
    s2, s3 = cache.create(2, clock.monotonic_ms()), cache.create(3, clock.monotonic_ms())
    part.append_as_leader(batch([b"a"]), 1)
    part.update_follower_fetch(2, 1, SessionPartition(s2, 1, 0, 1 << 20))
    part.update_follower_fetch(3, 1, SessionPartition(s3, 1, 0, 1 << 20))
    assert part.high_watermark == 1
    for _ in range(5):  # idle: the sessions' requests list nothing
        clock.advance(1000)
        s2.last_request_ms = s3.last_request_ms = clock.monotonic_ms()
    assert part.isr_shrink(1500) is None
    assert part.isr_settled(clock.monotonic_ms(), 1000)
    # follower 3's session goes quiet: its credit stops at its last request
    clock.advance(1000)
    s2.last_request_ms = clock.monotonic_ms()
    assert not part.isr_settled(clock.monotonic_ms(), 500)
    assert part.isr_shrink(1500) is None
    clock.advance(1000)
    s2.last_request_ms = clock.monotonic_ms()
    assert part.isr_shrink(1500) == (1, 2)
    # an append: follower 2 is no longer at the LEO, its credit ends at its last request
    t_append = clock.monotonic_ms()
    part.append_as_leader(batch([b"b"]), 1)
    clock.advance(1000)
    s2.last_request_ms = clock.monotonic_ms()
    assert part.followers[2].caught_up_ms(part.log_end_offset) == t_append
    # a closed session gives no credit at all
    s2.close()
    clock.advance(1000)
    assert part.followers[2].caught_up_ms(part.log_end_offset) == t_append
    # and a silent follower at the end of an idle log is not proposed back
    part.apply_isr(0, 1, (1, 2))
    part.update_follower_fetch(3, 2)
    assert part.isr_expansion(1500) == (1, 2, 3)
    clock.advance(2000)
    assert part.isr_expansion(1500) is None
