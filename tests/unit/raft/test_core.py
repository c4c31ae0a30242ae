"""Unit tests of the pure Raft core, driven synchronously by a tiny harness."""

from __future__ import annotations

import random

import pytest

from dmq.raft.core import (
    NotLeaderError,
    PersistentState,
    ProposalDroppedError,
    RaftConfig,
    RaftCore,
    Role,
)
from dmq.raft.messages import (
    EMPTY_HARD_STATE,
    AppendRequest,
    EntryKind,
    HardState,
    SnapshotRequest,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from dmq.types import NodeId, RaftIndex, Term
from tests.unit.raft.harness import Cluster

N1, N2, N3 = NodeId(1), NodeId(2), NodeId(3)


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        RaftConfig(node_id=N1, voters=(N2, N3))
    with pytest.raises(ValueError):
        RaftConfig(node_id=N1, voters=(N1,), election_ticks=2, heartbeat_ticks=2)


def test_single_node_elects_itself_and_commits() -> None:
    c = Cluster(1)
    c.tick(25)
    leader = c.leader()
    assert leader is not None and leader.id == N1
    term, index = leader.propose(b"x")
    c.settle()
    assert [e.data for e in c.applied[N1]] == [b"", b"x"]
    assert c.applied[N1][0].kind == EntryKind.NOOP
    assert c.applied[N1][-1].index == index and c.applied[N1][-1].term == term


def test_three_nodes_elect_one_leader_and_replicate() -> None:
    c = Cluster(3)
    c.tick(40)
    leader = c.leader()
    assert leader is not None
    for i in range(10):
        leader.propose(b"v%d" % i)
    c.settle()
    c.tick(3)
    for node in c.ids:
        assert [e.data for e in c.applied[node] if e.kind == EntryKind.NORMAL] == [
            b"v%d" % i for i in range(10)
        ]
    status = leader.status()
    assert status.role == Role.LEADER and status.commit_index == status.last_index
    assert all(m == status.last_index for m in status.match_index.values())


def test_vote_is_in_the_same_ready_as_the_grant() -> None:
    # The driver persists a Ready's hard state before sending its messages, so the
    # vote must travel in the same Ready as the VoteResponse that grants it.
    core = RaftCore(RaftConfig(node_id=N1, voters=(N1, N2, N3)),
                    PersistentState(EMPTY_HARD_STATE), random.Random(1))
    core.step(VoteRequest(N2, N1, Term(1), RaftIndex(0), Term(0), False, False))
    rd = core.ready()
    assert rd.hard_state == HardState(Term(1), N2, RaftIndex(0))
    assert [type(m) for m in rd.messages] == [VoteResponse]
    assert rd.messages[0].granted  # type: ignore[union-attr]


def test_vote_refused_to_a_stale_log() -> None:
    from dmq.raft.messages import Entry

    entries = (Entry(Term(2), RaftIndex(1), EntryKind.NORMAL, b"a"),)
    core = RaftCore(RaftConfig(node_id=N1, voters=(N1, N2, N3)),
                    PersistentState(HardState(Term(2), NodeId(0), RaftIndex(0)), None, entries),
                    random.Random(1))
    core.step(VoteRequest(N2, N1, Term(3), RaftIndex(5), Term(1), False, False))
    rd = core.ready()
    assert not rd.messages[0].granted  # type: ignore[union-attr]
    assert core.term == 3 and core.vote == 0


def test_restart_keeps_term_and_vote() -> None:
    c = Cluster(3)
    c.elect(N1)
    term = c.cores[N2].term
    assert c.storage[N2].hard_state.vote == N1
    c.start(N2)
    assert c.cores[N2].term == term and c.cores[N2].vote == N1


def test_pre_vote_keeps_an_isolated_node_from_raising_its_term() -> None:
    c = Cluster(3)
    c.elect(N1)
    term = c.cores[N1].term
    c.isolate(N3)
    c.tick(100)
    assert c.cores[N3].term == term
    assert c.cores[N3].role == Role.PRE_CANDIDATE or c.cores[N3].role == Role.FOLLOWER
    c.heal()
    c.tick(5)
    assert c.leader() is c.cores[N1] and c.cores[N1].term == term


def test_check_quorum_makes_an_isolated_leader_step_down() -> None:
    c = Cluster(3)
    leader = c.elect(N1)
    c.isolate(N1)
    c.tick(25)
    assert leader.role == Role.FOLLOWER
    assert c.leader() is not None and c.leader() is not leader
    with pytest.raises(NotLeaderError):
        leader.propose(b"x")


def test_follower_refuses_proposals_naming_the_leader() -> None:
    c = Cluster(3)
    c.elect(N2)
    with pytest.raises(NotLeaderError) as err:
        c.cores[N1].propose(b"x")
    assert err.value.leader_id == N2
    with pytest.raises(NotLeaderError):
        c.cores[N1].read_index(1)


def test_leadership_transfer() -> None:
    c = Cluster(3)
    leader = c.elect(N1)
    leader.propose(b"a")
    c.settle()
    leader.transfer_leadership(N3)
    c.settle()
    assert any(isinstance(m, TimeoutNow) for m in c.sent)
    assert c.cores[N3].role == Role.LEADER
    assert leader.role == Role.FOLLOWER


def test_transfer_blocks_proposals_then_gives_up_after_an_election_timeout() -> None:
    c = Cluster(3)
    leader = c.elect(N1)
    c.isolate(N3)
    leader.transfer_leadership(N3)
    with pytest.raises(ProposalDroppedError):
        leader.propose(b"x")
    c.cut.discard((N1, N2))
    c.cut.discard((N2, N1))
    c.tick(10)
    assert leader.role == Role.LEADER
    leader.propose(b"x")


def test_read_index_waits_for_a_quorum_and_the_leaders_first_commit() -> None:
    c = Cluster(3)
    leader = c.elect(N1)
    leader.propose(b"a")
    c.settle()
    leader.read_index(7)
    c.settle()
    assert c.reads[N1] == [(7, leader.commit)]
    c.isolate(N1)
    leader.read_index(8)
    c.settle()
    assert c.reads[N1] == [(7, leader.commit)]
    c.tick(25)  # check quorum: steps down, the read is dropped, not answered
    assert leader.role == Role.FOLLOWER


def test_fast_backtracking_skips_a_divergent_term_in_one_round_trip() -> None:
    c = Cluster(3, max_entries_per_append=1000)
    leader = c.elect(N1)
    c.settle()
    # N1 writes 50 entries that nobody else sees, then loses leadership.
    c.isolate(N1)
    for i in range(50):
        leader.propose(b"lost%d" % i)
    c.settle()
    c.cut = {(N1, N2), (N2, N1), (N1, N3), (N3, N1)}
    c.tick(30)
    new = c.leader()
    assert new is not None and new.id != N1
    for i in range(5):
        new.propose(b"kept%d" % i)
    c.settle()
    c.heal()
    c.sent.clear()
    c.tick(3)
    appends_to_n1 = [m for m in c.sent if isinstance(m, AppendRequest) and m.dst == N1]
    assert len(appends_to_n1) <= 6  # not one per divergent entry
    assert c.cores[N1].log.last_index() == new.log.last_index()
    assert c.cores[N1].log.last_term() == new.term


def test_lagging_follower_catches_up_by_chunked_snapshot() -> None:
    c = Cluster(3, snapshot_chunk_bytes=10)
    leader = c.elect(N1)
    c.isolate(N3)
    c.cut.discard((N1, N2))
    c.cut.discard((N2, N1))
    for i in range(30):
        leader.propose(b"e%d" % i)
    c.settle()
    snap = leader.compact(leader.applied, b"state-at-%d" % leader.applied + b"." * 30)
    c.storage[N1].compact(snap)
    c.heal()
    c.sent.clear()
    c.tick(4)
    chunks = [m for m in c.sent if isinstance(m, SnapshotRequest)]
    assert len(chunks) >= 4 and chunks[-1].done
    assert c.snapshots[N3] == snap.index
    assert c.storage[N3].snapshot is not None and c.storage[N3].snapshot.data == snap.data
    leader.propose(b"after")
    c.settle()
    c.tick(2)
    assert c.applied[N3][-1].data == b"after"
    assert c.cores[N3].applied == leader.applied


def test_inflight_limit_bounds_unacknowledged_appends() -> None:
    c = Cluster(3, max_entries_per_append=1, max_inflight_appends=3)
    leader = c.elect(N1)
    c.tick(1)
    c.sent.clear()
    c.isolate(N1)  # nothing comes back
    for i in range(20):
        leader.propose(b"x%d" % i)
    c.settle()
    to_n2 = [m for m in c.sent if isinstance(m, AppendRequest) and m.dst == N2 and m.entries]
    assert len(to_n2) == 3


def test_leader_does_not_commit_an_earlier_term_entry_by_counting() -> None:
    # Figure 8: an old-term entry stored on a majority is not committed until an entry
    # of the leader's own term is.
    c = Cluster(3, max_entries_per_append=1, max_inflight_appends=1)
    old = c.elect(N1)
    c.isolate(N1)
    old.propose(b"old")  # index 2 of term 1, only on N1
    c.settle()
    for _ in range(20):  # only N1's clock runs: check quorum makes it step down
        old.tick()
        c.settle()
    assert old.role == Role.FOLLOWER and old.term == 1
    c.heal()
    c.cut = {(N2, N1), (N1, N2), (N2, N3), (N3, N2)}
    # A transfer-style campaign: term 2 with N3's vote; the no-op lands at index 3.
    c.cores[N1].step(TimeoutNow(N2, N1, old.term))
    new = c.cores[N1]
    # One entry per message: N3 first acks index 2 (term 1) alone; commit must wait.
    commits_seen = []
    for _ in range(12):
        for node in c.ids:
            c.process(node)
        commits_seen.append(new.commit)
        batch, c.inbox = c.inbox, []
        for m in batch:
            c.cores[m.dst].step(m)
    assert new.role == Role.LEADER and new.term == 2
    assert commits_seen[-1] == 3
    assert 2 not in commits_seen


def test_restore_clamps_commit_and_rejects_misaddressed_messages() -> None:
    core = RaftCore(RaftConfig(node_id=N1, voters=(N1, N2, N3)),
                    PersistentState(HardState(Term(3), N2, RaftIndex(9))), random.Random(0))
    assert core.commit == 0 and core.term == 3 and core.vote == N2
    core.step(VoteRequest(N2, N3, Term(9), RaftIndex(0), Term(0), False, False))
    core.step(VoteRequest(NodeId(7), N1, Term(9), RaftIndex(0), Term(0), False, False))
    assert core.term == 3 and not core.ready().messages
