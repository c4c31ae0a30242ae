"""What a peer sends is checked before it touches Raft state (issue #25 items 1, 2, 8).

The wire decoder refuses any integer outside 0..2**63-1; the core refuses a message
raising its term by more than MAX_TERM_JUMP (so no node reaches a term it cannot leave), a
leader ignores answers about entries it never sent, a snapshot the state machine
cannot restore is dropped, and a proposal larger than one entry may be fails at once.
"""

from __future__ import annotations

import msgpack
import pytest

from dmq.raft.api import MAX_FAR_TERM, MAX_TERM_JUMP
from dmq.raft.core import EntryTooLargeError, RaftCore, Role
from dmq.raft.messages import (
    MAX_WIRE_INT,
    AppendRequest,
    AppendResponse,
    HeartbeatRequest,
    HeartbeatResponse,
    MalformedMessageError,
    SnapshotRequest,
    VoteRequest,
    message_from_wire,
)
from dmq.types import NodeId, RaftIndex, Term
from tests.unit.raft.harness import Cluster

N1, N2, N3 = NodeId(1), NodeId(2), NodeId(3)


# -- the wire decoder ----------------------------------------------------------------


def test_the_forged_heartbeat_of_issue_25_is_refused_by_the_decoder() -> None:
    # [1004, 0, 1, "x", {"from": L, "msg": [5, L, 1, 2**64-1, 0, 0]}] moved every
    # controller to a term whose successor no longer fits in 64 bits
    forged = msgpack.unpackb(msgpack.packb([5, 2, 1, 2**64 - 1, 0, 0]))
    with pytest.raises(MalformedMessageError, match=r"0\.\.2\*\*63-1"):
        message_from_wire(forged)


@pytest.mark.parametrize("position", range(1, 6))
def test_every_integer_of_a_message_is_range_checked(position: int) -> None:
    ok = [5, 2, 1, 7, 3, 4]  # a heartbeat: src, dst, term, commit, read_seq
    assert isinstance(message_from_wire(ok), HeartbeatRequest)
    for bad in (2**63, 2**64 - 1, -1):
        wire = list(ok)
        wire[position] = bad
        with pytest.raises(MalformedMessageError):
            message_from_wire(wire)
    wire = list(ok)
    wire[position] = MAX_WIRE_INT
    message_from_wire(wire)  # the largest i64 is a valid wire value


def test_entry_terms_and_implied_indexes_are_range_checked() -> None:
    entry = [3, 0, b"x"]
    with pytest.raises(MalformedMessageError):
        message_from_wire([3, 2, 1, 3, 5, 3, 5, [[2**63, 0, b"x"]]])
    # the entry's index (prev_index + 1) would pass 2**63-1
    with pytest.raises(MalformedMessageError, match="indexes"):
        message_from_wire([3, 2, 1, 3, MAX_WIRE_INT, 3, 5, [entry]])
    m = message_from_wire([3, 2, 1, 3, MAX_WIRE_INT - 1, 3, 5, [entry]])
    assert isinstance(m, AppendRequest) and m.entries[0].index == MAX_WIRE_INT


# -- terms in the core ---------------------------------------------------------------


def test_a_huge_term_jump_is_not_adopted_and_the_quorum_keeps_its_leader() -> None:
    c = Cluster(3)
    leader = c.elect(N1)
    term = leader.term
    # valid on the wire (i64), but no real peer is ever that far ahead
    c.cores[N2].step(HeartbeatRequest(N1, N2, Term(MAX_WIRE_INT), RaftIndex(0), 0))
    c.cores[N2].step(VoteRequest(N3, N2, Term(term + MAX_TERM_JUMP + 1), RaftIndex(99),
                                 Term(99), False, True))
    c.settle()
    assert c.cores[N2].term == term and c.cores[N2].refused == 2
    c.tick(30)
    assert c.leader() is leader and leader.term == term
    leader.propose(b"still writable")
    c.settle()
    assert c.applied[N2][-1].data == b"still writable"


def test_after_the_largest_allowed_jump_every_node_follows_and_elections_go_on() -> None:
    c = Cluster(3)
    first = c.elect(N1)
    # the largest jump one message may cause reaches one follower only ...
    forged = Term(first.term + MAX_TERM_JUMP)
    c.cores[N2].step(HeartbeatRequest(N1, N2, forged, RaftIndex(0), 0))
    c.settle()
    c.tick(60)
    leader: RaftCore | None = c.leader()
    # ... and still every node, the one that never saw it too, follows the next leader
    # (it takes the far term once both its peers have shown it)
    assert leader is not None and leader.term > forged
    assert all(core.term == leader.term for core in c.cores.values())
    for _ in range(3):  # terms go on one election at a time, never stuck
        before = leader.term
        c.isolate(leader.id)
        c.tick(40)
        c.heal()
        c.tick(40)
        leader = c.leader()
        assert leader is not None and leader.term > before
    leader.propose(b"after")
    c.settle()
    c.tick(3)
    assert all(c.applied[i][-1].data == b"after" for i in c.ids)


def test_a_far_term_is_taken_only_from_a_quorum_of_peers_and_never_past_the_cap() -> None:
    c = Cluster(5)
    core = c.cores[N1]
    far = Term(MAX_TERM_JUMP * 10)
    for src in (NodeId(2), NodeId(3)):
        core.step(HeartbeatRequest(src, N1, far, RaftIndex(0), 0))
    assert core.term == 0 and core.refused == 2  # two of four peers: not a quorum
    core.step(HeartbeatRequest(NodeId(4), N1, Term(MAX_WIRE_INT), RaftIndex(0), 0))
    assert core.term == 0  # a term past MAX_FAR_TERM is never evidence
    core.step(HeartbeatRequest(NodeId(4), N1, Term(far + 5), RaftIndex(0), 0))
    # three peers (a quorum of five) are far ahead: we are the laggard, so catch up to
    # the smallest of their terms, and then this leader's message is within a jump
    assert core.term == far + 5 and core.leader_id == 4
    assert MAX_FAR_TERM + MAX_TERM_JUMP * 2**20 < MAX_WIRE_INT


# -- answers about entries the leader never sent ---------------------------------------


def test_leader_ignores_an_ack_for_entries_it_does_not_have() -> None:
    # issue #25 item 2: a follower that took a forged entry at last+1 acked it; the
    # leader then looked for entry last+1, found none, and its Raft loop died on
    # "entries are compacted only under a snapshot"
    c = Cluster(3)
    leader = c.elect(N1)
    last = leader.log.last_index()
    leader.step(AppendResponse(N3, N1, leader.term, False, RaftIndex(last + 1), RaftIndex(0),
                               RaftIndex(0), Term(0)))
    leader.step(AppendResponse(N2, N1, leader.term, True, RaftIndex(0), RaftIndex(last + 5),
                               RaftIndex(last + 5), Term(0)))
    assert leader.refused == 2
    c.settle()
    leader.propose(b"x")
    c.settle()
    c.tick(5)
    assert leader.role == Role.LEADER
    assert all(c.applied[i][-1].data == b"x" for i in c.ids)


def test_heartbeat_ack_for_a_read_never_issued_releases_nothing() -> None:
    c = Cluster(3)
    leader = c.elect(N1)
    c.isolate(N1)
    leader.read_index(7)
    c.process(N1)
    # a forged ack of a read sequence far ahead must not count as N2's answer
    leader.step(HeartbeatResponse(N2, N1, leader.term, 10**9))
    c.process(N1)
    assert c.reads[N1] == []
    c.heal()
    c.tick(3)
    assert [r for r, _ in c.reads[N1]] == [7]


# -- snapshots and entry sizes --------------------------------------------------------


def test_a_snapshot_the_state_machine_cannot_restore_is_dropped() -> None:
    c = Cluster(3)
    c.core_kwargs = {"validate_snapshot":
                     lambda data: None if data.startswith(b"ok") else "not a snapshot"}
    c.start(N2)
    c.elect(N1)
    follower = c.cores[N2]
    commit = follower.commit
    follower.step(SnapshotRequest(N1, N2, follower.term, RaftIndex(commit + 50), follower.term,
                                  0, b"\xc1garbage", True))
    c.process(N2)
    assert follower.refused == 1 and follower.log.snap_index == 0
    assert c.storage[N2].snapshot is None and N2 not in c.snapshots
    follower.step(SnapshotRequest(N1, N2, follower.term, RaftIndex(commit + 50), follower.term,
                                  0, b"ok-state", True))
    c.process(N2)
    assert c.snapshots[N2] == commit + 50


def test_a_proposal_larger_than_an_entry_may_be_fails_at_once() -> None:
    c = Cluster(3, max_entry_bytes=1000, max_bytes_per_append=1000)
    leader = c.elect(N1)
    with pytest.raises(EntryTooLargeError, match="1001 bytes exceeds the limit of 1000"):
        leader.propose(b"x" * 1001)
    leader.propose(b"x" * 1000)
    for _ in range(5):
        leader.propose(b"y" * 400)
    c.sent.clear()
    c.settle()
    appends = [m for m in c.sent if isinstance(m, AppendRequest) and m.entries]
    assert appends
    # batching stops at the byte budget: no append carries more than one entry's limit
    assert max(sum(len(e.data) for e in m.entries) for m in appends) <= 1000
    assert c.applied[N2][-1].data == b"y" * 400
