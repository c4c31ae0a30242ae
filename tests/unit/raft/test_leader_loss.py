"""`RaftCore.leader_unreachable`: a follower told that its link to the leader went down
campaigns within `leader_loss_ticks` of its turn instead of after a whole election
timeout, and a live leader is never disturbed by it."""

from __future__ import annotations

import pytest

from dmq.raft.core import RaftConfig, Role
from dmq.raft.messages import VoteRequest
from dmq.types import NodeId
from tests.unit.raft.harness import Cluster

N1, N2, N3 = NodeId(1), NodeId(2), NodeId(3)
SLOW = {"election_ticks": 50, "heartbeat_ticks": 10}


def _kill(c: Cluster, node: NodeId) -> None:
    c.isolate(node)  # it hears nothing and nobody hears it: as good as dead


def _ticks_until_leader(c: Cluster, limit: int) -> int | None:
    """Ticks until N2 or N3 leads (None: not within `limit`)."""
    for n in range(1, limit + 1):
        c.tick()
        if any(c.cores[i].role == Role.LEADER for i in (N2, N3)):
            return n
    return None


def test_config_bounds_leader_loss_ticks() -> None:
    with pytest.raises(ValueError, match="leader_loss_ticks"):
        RaftConfig(node_id=N1, voters=(N1, N2), election_ticks=10, leader_loss_ticks=11)
    with pytest.raises(ValueError, match="leader_loss_ticks"):
        RaftConfig(node_id=N1, voters=(N1, N2), leader_loss_ticks=-1)


@pytest.mark.parametrize("seed", range(20))
def test_followers_told_the_leader_is_gone_elect_within_a_few_ticks(seed: int) -> None:
    c = Cluster(3, seed=seed, leader_loss_ticks=5, **SLOW)
    old = c.elect(N1)
    c.tick(3)
    _kill(c, N1)
    for node in (N2, N3):
        c.cores[node].leader_unreachable()
        assert c.cores[node].leader_id == 0  # no lease left to honour
    # one election timeout is at least 50 ticks; N2 has the first turn (ticks 1-5)
    took = _ticks_until_leader(c, 5)
    assert took is not None, {i: (k.role, k.term) for i, k in c.cores.items()}
    # the survivors took turns: one campaign, no split vote, one new term
    assert c.cores[N2].role == Role.LEADER and c.cores[N2].term == old.term + 1


@pytest.mark.parametrize("seed", range(10))
def test_the_next_in_turn_campaigns_when_the_first_cannot_win(seed: int) -> None:
    # N2 has the first turn but missed the last entries: N3 refuses it, then campaigns
    # in its own turn (ticks 6-10) and wins
    c = Cluster(3, seed=seed, leader_loss_ticks=5, **SLOW)
    old = c.elect(N1)
    c.tick(3)
    c.cut |= {(N1, N2)}
    old.propose(b"x")
    c.settle()
    _kill(c, N1)
    for node in (N2, N3):
        c.cores[node].leader_unreachable()
    assert _ticks_until_leader(c, 12) is not None
    assert c.cores[N3].role == Role.LEADER


def test_one_follower_told_early_waits_for_the_other_to_let_the_leader_go() -> None:
    # only N2 learns the leader died: N3 keeps honouring the lease (it refuses N2's
    # pre-votes) until its own election timeout, and N2 keeps asking meanwhile
    c = Cluster(3, seed=3, leader_loss_ticks=5, **SLOW)
    c.elect(N1)
    c.tick(3)
    _kill(c, N1)
    c.cores[N2].leader_unreachable()
    assert _ticks_until_leader(c, 45) is None
    assert c.cores[N3].leader_id == N1
    assert _ticks_until_leader(c, 100) is not None


def test_without_leader_loss_ticks_the_hint_is_ignored() -> None:
    c = Cluster(3, seed=1, **SLOW)
    c.elect(N1)
    c.tick(3)
    _kill(c, N1)
    for node in (N2, N3):
        c.cores[node].leader_unreachable()
        assert c.cores[node].leader_id == N1
    assert _ticks_until_leader(c, 45) is None


def test_a_live_leader_keeps_its_term_when_a_follower_thinks_it_gone() -> None:
    c = Cluster(3, seed=2, leader_loss_ticks=5, **SLOW)
    leader = c.elect(N1)
    term = leader.term
    c.tick(3)
    c.sent.clear()
    for _ in range(5):
        c.cores[N3].leader_unreachable()
        c.tick(12)
    pre_votes = [m for m in c.sent if isinstance(m, VoteRequest)]
    assert pre_votes and all(m.pre_vote and m.src == N3 for m in pre_votes)
    assert c.leader() is leader and all(k.term == term for k in c.cores.values())
    assert c.cores[N3].leader_id == N1 and c.cores[N3].role == Role.FOLLOWER


def test_short_timeouts_last_one_election_timeout_then_full_ones_again() -> None:
    # a follower cut off from everyone: PreVote keeps its term; it asks every few ticks
    # for one election timeout (50 ticks), then at ordinary intervals (>= 50 ticks).
    # N3 is second in turn: every 6-10 ticks
    c = Cluster(3, seed=4, leader_loss_ticks=5, **SLOW)
    c.elect(N1)
    c.tick(3)
    c.isolate(N3)
    c.cores[N3].leader_unreachable()
    c.sent.clear()
    c.tick(50)
    hasty = sum(1 for m in c.sent if isinstance(m, VoteRequest) and m.src == N3)
    assert hasty >= 2 * 4  # >= 4 campaigns of two pre-votes each (every <= 10 ticks)
    c.tick(10)  # the last short timeout drawn inside the window
    c.sent.clear()
    c.tick(200)
    later = sum(1 for m in c.sent if isinstance(m, VoteRequest) and m.src == N3)
    assert later <= 2 * 4  # at most one campaign per 50 ticks
    assert c.cores[N3].term == c.cores[N1].term
