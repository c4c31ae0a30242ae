"""The Raft core's vocabulary: its configuration, its errors, its output batch `Ready`
and its status. Pure declarations (plus config validation), no behaviour.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from dmq.raft.messages import NO_NODE, Entry, HardState, Message, Snapshot
from dmq.types import NodeId, RaftIndex, Term

MAX_TERM_JUMP = 2**32
"""The most one peer's message may raise a node's term; larger jumps need a quorum.

Legitimate terms grow by one per election (PreVote keeps cut-off nodes from inflating
theirs), so no real peer is ever 2**32 terms ahead of us unless we lag behind a whole
quorum. A forged or corrupt message with a huge term could otherwise move every node to
a term whose successor no longer fits in the wire's 64 bits, leaving the quorum unable
to elect anyone, for good. So a larger jump is taken only once a quorum of distinct
peers have shown such terms (we are the laggard then), to the smallest of them, and
never past `MAX_FAR_TERM`; reaching the end of the 64-bit range that way would take
over 2**30 further messages."""

MAX_FAR_TERM = 2**62
"""The highest term a node takes by a jump larger than `MAX_TERM_JUMP`."""


class Role(enum.IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class RaftError(Exception):
    """Base of the errors the core raises to its local caller."""


class NotLeaderError(RaftError):
    def __init__(self, leader_id: NodeId) -> None:
        super().__init__(f"not the leader (leader is {leader_id or 'unknown'})")
        self.leader_id = leader_id


class ProposalDroppedError(RaftError):
    """The leader refuses the proposal for now (transfer in progress, too much uncommitted)."""


class EntryTooLargeError(RaftError):
    """The proposal is larger than one Raft entry may be (`max_entry_bytes`): followers
    could not receive it. Not retriable."""


@dataclass(frozen=True, slots=True)
class RaftConfig:
    node_id: NodeId
    voters: tuple[NodeId, ...]
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    # after `leader_unreachable()`: campaign within N ticks of our turn (0: ignore it)
    leader_loss_ticks: int = 0
    max_entries_per_append: int = 256
    max_bytes_per_append: int = 1 << 20
    max_entry_bytes: int = 100 << 20  # keep under the peers' frame limit
    max_inflight_appends: int = 16
    max_uncommitted_entries: int = 10_000
    max_apply_entries_per_ready: int = 4096
    snapshot_chunk_bytes: int = 1 << 20
    max_snapshot_bytes: int = 1 << 31

    def __post_init__(self) -> None:
        if self.node_id not in self.voters or NO_NODE in self.voters:
            raise ValueError("node_id must be one of the voters; ids start at 1")
        if len(set(self.voters)) != len(self.voters):
            raise ValueError("duplicate voter ids")
        if not 0 < self.heartbeat_ticks < self.election_ticks:
            raise ValueError("need 0 < heartbeat_ticks < election_ticks")
        if not 0 <= self.leader_loss_ticks <= self.election_ticks:
            raise ValueError("need 0 <= leader_loss_ticks <= election_ticks")
        if min(self.max_entries_per_append, self.max_inflight_appends,
               self.snapshot_chunk_bytes, self.max_apply_entries_per_ready) < 1:
            raise ValueError("limits must be positive")


@dataclass(frozen=True, slots=True)
class PersistentState:
    """What a core is rebuilt from after a restart (as loaded by storage)."""

    hard_state: HardState
    snapshot: Snapshot | None = None
    entries: tuple[Entry, ...] = ()


@dataclass(frozen=True, slots=True)
class SoftState:
    role: Role
    leader_id: NodeId


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex answer: serve request_id once the applied index reaches index."""

    request_id: int
    index: RaftIndex


@dataclass(frozen=True, slots=True)
class Ready:
    soft_state: SoftState | None
    hard_state: HardState | None
    snapshot: Snapshot | None
    entries: tuple[Entry, ...]
    messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]
    dropped_reads: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RaftStatus:
    node_id: NodeId
    role: Role
    term: Term
    leader_id: NodeId
    commit_index: RaftIndex
    applied_index: RaftIndex
    last_index: RaftIndex
    snapshot_index: RaftIndex
    match_index: dict[NodeId, RaftIndex] = field(default_factory=dict)
