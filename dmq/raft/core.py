"""The Raft core: a pure, deterministic state machine in the style of etcd-io/raft.

Inputs are `tick()`, `step(message)`, `propose(data)`, `read_index(request_id)`,
`transfer_leadership(target)`, `compact(index, data)`; the output is a `Ready` batch
taken with `ready()` and confirmed with `advance(ready)`. It never does I/O, never
reads a clock, never imports asyncio and never touches the global random source: the
election-timeout jitter comes from the `random.Random` passed in.

Ready ordering contract (the driver must follow it exactly):

1. Persist `ready.snapshot` (if any), then `ready.entries` (the first entry's index
   may be at or below the stored last index: truncate the stored log from there
   first), then `ready.hard_state` (if any), and fsync all of it.
2. Only then send `ready.messages`. Votes, append acks and snapshot acks in there
   promise that the state of step 1 is durable, so sending earlier is a safety bug.
3. Restore the state machine from `ready.snapshot` (if any), then apply
   `ready.committed_entries` in order (they may include entries of this same Ready,
   which is why persisting comes first). Serve `ready.read_states` once the applied
   index reaches their index; fail the requests in `ready.dropped_reads`.
4. Call `advance(ready)`. No other core method may be called between `ready()` and
   `advance()`.

Safety notes. The leader counts itself towards a commit quorum only for entries that
`advance()` confirmed durable. A leader commits only entries of its own term by
counting (§5.4.2); each new leader appends a no-op so earlier entries commit with it.
Roles swap the message handler table and the tick function rather than branching.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Callable, Sequence

from dmq.raft.api import (
    MAX_FAR_TERM,
    MAX_TERM_JUMP,
    EntryTooLargeError,
    NotLeaderError,
    PersistentState,
    ProposalDroppedError,
    RaftConfig,
    RaftError,
    RaftStatus,
    ReadState,
    Ready,
    Role,
    SoftState,
)
from dmq.raft.log import RaftLog
from dmq.raft.messages import (
    NO_NODE,
    AppendRequest,
    AppendResponse,
    Entry,
    EntryKind,
    HardState,
    HeartbeatRequest,
    HeartbeatResponse,
    Message,
    Snapshot,
    SnapshotRequest,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
)
from dmq.types import NodeId, RaftIndex, Term

# The vocabulary lives in dmq.raft.api; it is re-exported here for convenience.
__all__ = [
    "EntryTooLargeError", "NotLeaderError", "PersistentState", "ProposalDroppedError",
    "RaftConfig", "RaftCore", "RaftError", "RaftStatus", "ReadState", "Ready", "Role", "SoftState",
]


class _PeerState(enum.IntEnum):
    PROBE = 0  # one append in flight until the peer answers; find where logs match
    REPLICATE = 1  # optimistic pipelining, bounded by max_inflight_appends
    SNAPSHOT = 2  # sending a snapshot chunk by chunk


class _Progress:
    __slots__ = ("match", "next", "state", "probe_sent", "inflight", "recent_active",
                 "snap_index", "snap_offset")

    def __init__(self, next_index: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = _PeerState.PROBE
        self.probe_sent = False
        self.inflight: deque[int] = deque()
        self.recent_active = True
        self.snap_index = 0
        self.snap_offset = 0

    def become_replicate(self) -> None:
        self.state = _PeerState.REPLICATE
        self.probe_sent = False
        self.next = self.match + 1
        self.inflight.clear()


class _PendingRead:
    __slots__ = ("seq", "request_id", "index", "acks")

    def __init__(self, seq: int, request_id: int, index: int, me: NodeId) -> None:
        self.seq = seq
        self.request_id = request_id
        self.index = index
        self.acks = {me}


class RaftCore:
    def __init__(
        self,
        config: RaftConfig,
        state: PersistentState,
        rng: random.Random,
        applied: int | None = None,
        validate_snapshot: Callable[[bytes], str | None] | None = None,
    ) -> None:
        """`validate_snapshot(data)` returns why a snapshot received from a leader cannot
        be restored (None if it can); such a snapshot is dropped before it is kept."""
        self.config = config
        self.id = config.node_id
        self.peers = tuple(v for v in config.voters if v != self.id)
        self._peer_set = frozenset(self.peers)
        self.quorum = len(config.voters) // 2 + 1
        self._rng = rng
        self.log = RaftLog(state.snapshot, state.entries)
        hs = state.hard_state
        self.term = hs.term
        self.vote = hs.vote
        self.commit = max(min(hs.commit, self.log.last_index()), self.log.snap_index)
        self.applied = self.log.snap_index if applied is None else applied
        assert self.log.snap_index <= self.applied <= self.commit
        self.role = Role.FOLLOWER
        self.leader_id = NO_NODE
        self._prev_hard = HardState(self.term, self.vote, RaftIndex(self.commit))
        self._prev_soft = SoftState(Role.FOLLOWER, NO_NODE)
        self._msgs: list[Message] = []
        self._pending_snapshot: Snapshot | None = None
        self._read_states: list[ReadState] = []
        self._dropped_reads: list[int] = []
        self._reads: deque[_PendingRead] = deque()
        self._early_reads: list[int] = []
        self._read_seq = 0
        self._progress: dict[NodeId, _Progress] = {}
        self._votes: dict[NodeId, bool] = {}
        self._transferee = NO_NODE
        self._needs_bcast = False
        self._snap_buffer = bytearray()
        self._snap_buffer_id: tuple[int, int] = (0, 0)
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = 0
        self._hasty_ticks = 0  # ticks left of short election timeouts (leader_unreachable)
        self._hasty_rank = 0  # our turn among the voters left (leader_unreachable)
        self._validate_snapshot = validate_snapshot
        self.refused = 0  # peer messages dropped as impossible (see step, _on_snapshot)
        self._far_terms: dict[NodeId, int] = {}  # peers far ahead: see MAX_TERM_JUMP
        self._tick: Callable[[], None] = self._tick_election
        self._handlers: dict[type, Callable[[Message], None]] = {}
        self._become_follower(self.term, NO_NODE)

    # -- public inputs --------------------------------------------------------------

    def tick(self) -> None:
        self._tick()

    def step(self, m: Message) -> None:
        """Feed one message from a peer. Stale, foreign or misaddressed ones are ignored,
        and so are messages raising our term by more than `MAX_TERM_JUMP` until a
        quorum of peers show such terms (counted in `refused`)."""
        if m.dst != self.id or m.src == self.id or m.src not in self._peer_set:
            return
        if m.term - self.term > MAX_TERM_JUMP and not self._maybe_catch_up_term(m):
            self.refused += 1
            return
        if m.term > self.term:
            if isinstance(m, VoteRequest):
                in_lease = (self.config.check_quorum and self.leader_id != NO_NODE
                            and self._election_elapsed < self.config.election_ticks)
                if in_lease and not m.transfer:
                    return  # we heard from a live leader recently: don't disrupt it
                if not m.pre_vote:
                    self._become_follower(m.term, NO_NODE)
            elif isinstance(m, VoteResponse) and m.pre_vote and m.granted:
                pass  # a pre-vote grant carries the term we would campaign in
            else:
                leader = m.src if isinstance(
                    m, (AppendRequest, HeartbeatRequest, SnapshotRequest)) else NO_NODE
                self._become_follower(m.term, leader)
        elif m.term < self.term:
            if isinstance(m, (AppendRequest, HeartbeatRequest)):
                # Tell a stale leader about the newer term so it steps down.
                self._send(AppendResponse(self.id, m.src, self.term, True, RaftIndex(0),
                                          RaftIndex(0), RaftIndex(0), Term(0)))
            elif isinstance(m, VoteRequest) and m.pre_vote:
                self._send(VoteResponse(self.id, m.src, self.term, False, True))
            return
        if isinstance(m, VoteRequest):
            self._handle_vote_request(m)
            return
        handler = self._handlers.get(type(m))
        if handler is not None:
            handler(m)

    def _maybe_catch_up_term(self, m: Message) -> bool:
        """A far higher term is believed only from a quorum of distinct peers; then we
        take the smallest of them (and can see m if it is within a jump of that)."""
        if m.term <= MAX_FAR_TERM:
            self._far_terms[m.src] = m.term
        if len(self._far_terms) < self.quorum:
            return False
        floor = min(self._far_terms.values())
        self._far_terms.clear()
        self._become_follower(Term(floor), NO_NODE)
        return m.term - self.term <= MAX_TERM_JUMP

    def propose(self, data: bytes) -> tuple[Term, RaftIndex]:
        """Append a client entry; returns (term, index) it will commit at if it commits."""
        if len(data) > self.config.max_entry_bytes:
            raise EntryTooLargeError(
                f"entry of {len(data)} bytes exceeds the limit of "
                f"{self.config.max_entry_bytes} bytes")
        if self.role != Role.LEADER:
            raise NotLeaderError(self.leader_id)
        if self._transferee != NO_NODE:
            raise ProposalDroppedError("leadership transfer in progress")
        if self.log.last_index() - self.commit >= self.config.max_uncommitted_entries:
            raise ProposalDroppedError("too many uncommitted entries")
        index = RaftIndex(self.log.last_index() + 1)
        self.log.append(Entry(self.term, index, EntryKind.NORMAL, data))
        self._needs_bcast = True  # one broadcast per Ready batches many proposals
        return self.term, index

    def read_index(self, request_id: int) -> None:
        """Ask for a linearizable read point; the answer comes as a ReadState in a Ready."""
        if self.role != Role.LEADER:
            raise NotLeaderError(self.leader_id)
        if self.log.term_at(self.commit) != self.term:
            self._early_reads.append(request_id)  # wait for our no-op to commit
            return
        self._start_read(request_id)

    def transfer_leadership(self, target: NodeId) -> None:
        if self.role != Role.LEADER:
            raise NotLeaderError(self.leader_id)
        if target == self.id or target == self._transferee:
            return
        if target not in self._progress:
            raise ValueError(f"{target} is not a voter")
        self._transferee = target
        self._election_elapsed = 0  # the transfer is abandoned after one election timeout
        if self._progress[target].match == self.log.last_index():
            self._send(TimeoutNow(self.id, target, self.term))
        else:
            self._send_append(target)

    def leader_unreachable(self) -> None:
        """The driver saw the link to the leader this node follows go down (its
        connection closed: the leader's process most likely died). Stop honouring that
        leader's lease and, for one election timeout, campaign within
        `leader_loss_ticks` of its turn instead of after a whole randomized election
        timeout. The voters left take turns by id (the lowest campaigns in ticks
        1..N, the next in N+1..2N, ...): they all learn of the loss at the same moment,
        and random delays that close together would split the vote whenever one round
        of PreVote and vote takes longer than their difference.

        Safe against a live leader: the campaign starts with PreVote, which the leader
        ignores and every follower that still hears it refuses (its lease), so a
        connection that closed for another reason costs a few messages, never a term.
        Ignored when off (`leader_loss_ticks` 0), when not a follower, or when no leader
        is known."""
        if self.config.leader_loss_ticks <= 0 or self.role != Role.FOLLOWER \
                or self.leader_id == NO_NODE:
            return
        left = sorted(v for v in self.config.voters if v != self.leader_id)
        self._hasty_rank = left.index(self.id)
        self.leader_id = NO_NODE
        self._hasty_ticks = self.config.election_ticks
        self._election_elapsed = 0
        self._randomized_timeout = self._election_timeout()

    def campaign(self) -> None:
        """Start an election now (tests, or a driver that knows better)."""
        if self.role != Role.LEADER:
            self._start_campaign(transfer=False)

    def compact(self, index: int, data: bytes) -> Snapshot:
        """Record a state-machine snapshot at applied `index` and drop the log before it.

        The caller persists the returned snapshot (storage.compact) before relying on it.
        """
        assert self.log.snap_index < index <= self.applied, "can only snapshot applied entries"
        term = self.log.term_at(index)
        assert term is not None
        snapshot = Snapshot(RaftIndex(index), Term(term), data)
        self.log.compact(snapshot)
        return snapshot

    # -- output ---------------------------------------------------------------------

    def has_ready(self) -> bool:
        return bool(
            self._msgs or self._needs_bcast or self._pending_snapshot is not None
            or self.log.unstable_from <= self.log.last_index()
            or self.applied < self.commit or self._read_states or self._dropped_reads
            or self._hard_state() != self._prev_hard or self._soft_state() != self._prev_soft
        )

    def ready(self) -> Ready:
        if self._needs_bcast:
            self._needs_bcast = False
            self._bcast_append()
        hard = self._hard_state()
        soft = self._soft_state()
        log = self.log
        unstable = tuple(log.entries_from(log.unstable_from)) if (
            log.unstable_from <= log.last_index()) else ()
        committed: tuple[Entry, ...] = ()
        if self.applied < self.commit and self._pending_snapshot is None:
            hi = min(self.commit, self.applied + self.config.max_apply_entries_per_ready)
            committed = tuple(log.slice(self.applied + 1, hi, 1 << 62))
        rd = Ready(
            soft_state=soft if soft != self._prev_soft else None,
            hard_state=hard if hard != self._prev_hard else None,
            snapshot=self._pending_snapshot,
            entries=unstable,
            messages=tuple(self._msgs),
            committed_entries=committed,
            read_states=tuple(self._read_states),
            dropped_reads=tuple(self._dropped_reads),
        )
        self._msgs = []
        self._read_states = []
        self._dropped_reads = []
        return rd

    def advance(self, rd: Ready) -> None:
        """Confirm that `rd` was persisted, sent and applied as the contract says."""
        if rd.soft_state is not None:
            self._prev_soft = rd.soft_state
        if rd.hard_state is not None:
            self._prev_hard = rd.hard_state
        if rd.snapshot is not None:
            assert rd.snapshot is self._pending_snapshot
            self._pending_snapshot = None
            self.applied = max(self.applied, rd.snapshot.index)
        if rd.entries:
            self.log.unstable_from = max(self.log.unstable_from, rd.entries[-1].index + 1)
        if rd.committed_entries:
            self.applied = rd.committed_entries[-1].index
        if self.role == Role.LEADER and rd.entries and self._maybe_commit():
            self._bcast_append()

    def status(self) -> RaftStatus:
        matches = {p: RaftIndex(pr.match) for p, pr in self._progress.items()}
        if self.role == Role.LEADER:
            matches[self.id] = RaftIndex(self.log.unstable_from - 1)
        return RaftStatus(
            self.id, self.role, self.term, self.leader_id, RaftIndex(self.commit),
            RaftIndex(self.applied), RaftIndex(self.log.last_index()),
            RaftIndex(self.log.snap_index), matches,
        )

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, RaftIndex(self.commit))

    def _soft_state(self) -> SoftState:
        return SoftState(self.role, self.leader_id)

    # -- role changes ---------------------------------------------------------------

    def _reset(self, term: Term) -> None:
        if term != self.term:
            self.term = term
            self.vote = NO_NODE
            self._far_terms.clear()
        self.leader_id = NO_NODE
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._randomized_timeout = self._election_timeout()
        self._votes = {}
        self._transferee = NO_NODE
        self._needs_bcast = False
        self._progress = {}
        if self._reads or self._early_reads:
            self._dropped_reads.extend(r.request_id for r in self._reads)
            self._dropped_reads.extend(self._early_reads)
            self._reads.clear()
            self._early_reads = []

    def _become_follower(self, term: Term, leader: NodeId) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader_id = leader
        self._tick = self._tick_election
        self._handlers = self._follower_handlers()

    def _become_pre_candidate(self) -> None:
        # Term and vote stay as they are: a pre-vote changes no durable state.
        self._reset(self.term)
        self.role = Role.PRE_CANDIDATE
        self._tick = self._tick_election
        self._handlers = self._candidate_handlers()

    def _become_candidate(self) -> None:
        self._reset(Term(self.term + 1))
        self.vote = self.id
        self.role = Role.CANDIDATE
        self._tick = self._tick_election
        self._handlers = self._candidate_handlers()

    def _become_leader(self) -> None:
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader_id = self.id
        self._tick = self._tick_leader
        self._handlers = self._leader_handlers()
        next_index = self.log.last_index() + 1
        self._progress = {p: _Progress(next_index) for p in self.peers}
        self.log.append(Entry(self.term, RaftIndex(next_index), EntryKind.NOOP, b""))
        self._bcast_append()

    def _start_campaign(self, transfer: bool, skip_pre_vote: bool = False) -> None:
        pre = self.config.pre_vote and not transfer and not skip_pre_vote
        if pre:
            self._become_pre_candidate()
            term = Term(self.term + 1)
        else:
            self._become_candidate()
            term = self.term
        self._votes[self.id] = True
        if self._tally_won():
            self._on_election_won(pre)
            return
        last_index, last_term = self.log.last_index(), self.log.last_term()
        for peer in self.peers:
            self._send(VoteRequest(self.id, peer, term, RaftIndex(last_index), Term(last_term),
                                   pre, transfer))

    def _on_election_won(self, pre: bool) -> None:
        if pre:
            self._start_campaign(transfer=False, skip_pre_vote=True)
        else:
            self._become_leader()

    def _tally_won(self) -> bool:
        return sum(1 for granted in self._votes.values() if granted) >= self.quorum

    # -- ticks ----------------------------------------------------------------------

    def _election_timeout(self) -> int:
        """Ticks without a leader before campaigning: randomized in [election_ticks,
        2*election_ticks), or, shortly after the leader's link went down
        (`leader_unreachable`), in our turn's [1, leader_loss_ticks] + rank * that."""
        if self._hasty_ticks > 0:
            n = self.config.leader_loss_ticks
            return 1 + self._hasty_rank * n + self._rng.randrange(n)
        return self.config.election_ticks + self._rng.randrange(self.config.election_ticks)

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._hasty_ticks > 0:
            if self.leader_id != NO_NODE:  # a leader again: back to full timeouts
                self._hasty_ticks = 0
                self._randomized_timeout = self._election_timeout()
            else:
                self._hasty_ticks -= 1
        if self._election_elapsed >= self._randomized_timeout:
            self._start_campaign(transfer=False)

    def _tick_leader(self) -> None:
        self._election_elapsed += 1
        if self._election_elapsed >= self.config.election_ticks:
            self._election_elapsed = 0
            if self.config.check_quorum:
                active = 1
                for pr in self._progress.values():
                    active += pr.recent_active
                    pr.recent_active = False
                if active < self.quorum:
                    self._become_follower(self.term, NO_NODE)
                    return
            self._transferee = NO_NODE  # a transfer that took an election timeout failed
        self._heartbeat_elapsed += 1
        if self._heartbeat_elapsed >= self.config.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._bcast_heartbeat()

    # -- votes ----------------------------------------------------------------------

    def _log_up_to_date(self, m: VoteRequest) -> bool:
        last_term = self.log.last_term()
        return m.last_log_term > last_term or (
            m.last_log_term == last_term and m.last_log_index >= self.log.last_index()
        )

    def _handle_vote_request(self, m: VoteRequest) -> None:
        can_vote = (
            self.vote == m.src
            or (self.vote == NO_NODE and self.leader_id == NO_NODE)
            or (m.pre_vote and m.term > self.term)
        )
        if can_vote and self._log_up_to_date(m):
            # A pre-vote answer echoes the asked term: the campaign's real term.
            self._send(VoteResponse(self.id, m.src, m.term, True, m.pre_vote))
            if not m.pre_vote:
                self.vote = m.src
                self._election_elapsed = 0
        else:
            self._send(VoteResponse(self.id, m.src, self.term, False, m.pre_vote))

    def _on_vote_response(self, m: Message) -> None:
        assert isinstance(m, VoteResponse)
        if m.pre_vote != (self.role == Role.PRE_CANDIDATE):
            return  # an answer to an earlier kind of campaign
        self._votes.setdefault(m.src, m.granted)
        if self._tally_won():
            self._on_election_won(m.pre_vote)
        elif sum(1 for g in self._votes.values() if not g) >= self.quorum:
            self._become_follower(self.term, NO_NODE)

    # -- follower side --------------------------------------------------------------

    def _follower_handlers(self) -> dict[type, Callable[[Message], None]]:
        return {
            AppendRequest: self._on_append,
            HeartbeatRequest: self._on_heartbeat,
            SnapshotRequest: self._on_snapshot,
            TimeoutNow: self._on_timeout_now,
        }

    def _candidate_handlers(self) -> dict[type, Callable[[Message], None]]:
        return {
            AppendRequest: self._follow_then(self._on_append),
            HeartbeatRequest: self._follow_then(self._on_heartbeat),
            SnapshotRequest: self._follow_then(self._on_snapshot),
            VoteResponse: self._on_vote_response,
        }

    def _follow_then(self, handler: Callable[[Message], None]) -> Callable[[Message], None]:
        def step(m: Message) -> None:
            self._become_follower(m.term, m.src)  # someone won this term
            handler(m)
        return step

    def _on_append(self, m: Message) -> None:
        assert isinstance(m, AppendRequest)
        self._election_elapsed = 0
        self.leader_id = m.src
        if m.prev_index < self.commit:
            self._send(AppendResponse(self.id, m.src, self.term, False, RaftIndex(self.commit),
                                      RaftIndex(0), RaftIndex(0), Term(0)))
            return
        log = self.log
        if log.term_at(m.prev_index) != m.prev_term:
            if m.prev_index > log.last_index():
                hint_index, hint_term = log.last_index() + 1, 0
            else:
                hint_term = log.term_at(m.prev_index) or 0
                hint_index = log.first_index_of_term_before(m.prev_index, self.commit)
            self._send(AppendResponse(self.id, m.src, self.term, True, RaftIndex(0),
                                      m.prev_index, RaftIndex(hint_index), Term(hint_term)))
            return
        if m.entries:
            log.merge(m.entries, self.commit)
        last_new = m.prev_index + len(m.entries)
        self._commit_to(min(m.commit, last_new))
        self._send(AppendResponse(self.id, m.src, self.term, False, RaftIndex(last_new),
                                  RaftIndex(0), RaftIndex(0), Term(0)))

    def _on_heartbeat(self, m: Message) -> None:
        assert isinstance(m, HeartbeatRequest)
        self._election_elapsed = 0
        self.leader_id = m.src
        self._commit_to(min(m.commit, self.log.last_index()))
        self._send(HeartbeatResponse(self.id, m.src, self.term, m.read_seq))

    def _on_snapshot(self, m: Message) -> None:
        assert isinstance(m, SnapshotRequest)
        self._election_elapsed = 0
        self.leader_id = m.src
        if m.snap_index <= self.commit:
            self._send(SnapshotResponse(self.id, m.src, self.term, m.snap_index, 0, True))
            return
        snap_id = (m.snap_index, m.snap_term)
        if m.offset == 0:
            self._snap_buffer = bytearray()
            self._snap_buffer_id = snap_id
        elif snap_id != self._snap_buffer_id or m.offset != len(self._snap_buffer):
            expected = len(self._snap_buffer) if snap_id == self._snap_buffer_id else 0
            self._send(SnapshotResponse(self.id, m.src, self.term, m.snap_index, expected, False))
            return
        if len(self._snap_buffer) + len(m.data) > self.config.max_snapshot_bytes:
            self._snap_buffer = bytearray()
            self._snap_buffer_id = (0, 0)
            return
        self._snap_buffer += m.data
        if not m.done:
            self._send(SnapshotResponse(self.id, m.src, self.term, m.snap_index,
                                        len(self._snap_buffer), False))
            return
        snapshot = Snapshot(m.snap_index, m.snap_term, bytes(self._snap_buffer))
        self._snap_buffer = bytearray()
        self._snap_buffer_id = (0, 0)
        if self._validate_snapshot is not None and \
                self._validate_snapshot(snapshot.data) is not None:
            self.refused += 1  # never keep a state we could not restore after a restart
            return
        if self.log.term_at(snapshot.index) == snapshot.term:
            self._commit_to(snapshot.index)  # we hold the entries: no need to restore
        else:
            self.log.restore(snapshot)
            self.commit = snapshot.index
            self._pending_snapshot = snapshot
        self._send(SnapshotResponse(self.id, m.src, self.term, m.snap_index,
                                    len(snapshot.data), True))

    def _on_timeout_now(self, m: Message) -> None:
        self._start_campaign(transfer=True)

    def _commit_to(self, index: int) -> None:
        if index > self.commit:
            self.commit = index

    # -- leader side ----------------------------------------------------------------

    def _leader_handlers(self) -> dict[type, Callable[[Message], None]]:
        return {
            AppendResponse: self._on_append_response,
            HeartbeatResponse: self._on_heartbeat_response,
            SnapshotResponse: self._on_snapshot_response,
        }

    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    def _bcast_append(self) -> None:
        for peer in self.peers:
            self._send_append(peer)

    def _bcast_heartbeat(self) -> None:
        commit = self.commit
        for peer, pr in self._progress.items():
            self._send(HeartbeatRequest(self.id, peer, self.term, RaftIndex(min(pr.match, commit)),
                                        self._read_seq))

    def _send_append(self, peer: NodeId, allow_empty: bool = True) -> None:
        """Send what the peer lacks: one probe, or a pipeline of appends up to the
        inflight limit while replicating, or a snapshot if the entries are compacted."""
        pr = self._progress[peer]
        while self._send_one_append(peer, pr, allow_empty):
            allow_empty = False

    def _send_one_append(self, peer: NodeId, pr: _Progress, allow_empty: bool) -> bool:
        """Send one append; True if more could follow right away (pipelining)."""
        if pr.state == _PeerState.SNAPSHOT:
            return False
        if pr.state == _PeerState.PROBE:
            if pr.probe_sent:
                return False
        elif len(pr.inflight) >= self.config.max_inflight_appends:
            return False
        log = self.log
        prev_index = pr.next - 1
        prev_term = log.term_at(prev_index)
        if prev_term is None:
            self._start_snapshot(peer, pr)
            return False
        last = log.last_index()
        entries: Sequence[Entry] = ()
        if pr.next <= last:
            hi = min(last, pr.next + self.config.max_entries_per_append - 1)
            entries = log.slice(pr.next, hi, self.config.max_bytes_per_append)
        elif not allow_empty:
            return False
        self._send(AppendRequest(self.id, peer, self.term, RaftIndex(prev_index), Term(prev_term),
                                 RaftIndex(self.commit), tuple(entries)))
        if pr.state == _PeerState.PROBE:
            pr.probe_sent = True
            return False
        if entries:
            pr.next = entries[-1].index + 1
            pr.inflight.append(entries[-1].index)
            return pr.next <= last
        return False

    def _start_snapshot(self, peer: NodeId, pr: _Progress) -> None:
        snapshot = self.log.snapshot
        assert snapshot is not None, "entries are compacted only under a snapshot"
        pr.state = _PeerState.SNAPSHOT
        pr.inflight.clear()
        pr.snap_index = snapshot.index
        pr.snap_offset = 0
        self._send_snapshot_chunk(peer, pr)

    def _send_snapshot_chunk(self, peer: NodeId, pr: _Progress) -> None:
        snapshot = self.log.snapshot
        assert snapshot is not None
        if snapshot.index != pr.snap_index:  # compacted again meanwhile: send the newer one
            pr.snap_index = snapshot.index
            pr.snap_offset = 0
        off = pr.snap_offset
        chunk = snapshot.data[off : off + self.config.snapshot_chunk_bytes]
        done = off + len(chunk) >= len(snapshot.data)
        self._send(SnapshotRequest(self.id, peer, self.term, snapshot.index, snapshot.term,
                                   off, chunk, done))

    def _on_append_response(self, m: Message) -> None:
        assert isinstance(m, AppendResponse)
        pr = self._progress[m.src]
        pr.recent_active = True
        last = self.log.last_index()
        if m.match_index > last or m.reject_index > last:
            self.refused += 1  # claims entries we never sent: not an answer of ours
            return
        if m.reject:
            if m.reject_index == 0 or pr.state == _PeerState.SNAPSHOT:
                return
            if pr.state == _PeerState.REPLICATE and m.reject_index <= pr.match:
                return  # stale
            if pr.state == _PeerState.PROBE and m.reject_index != pr.next - 1:
                return  # stale
            next_index: int = m.hint_index
            if m.hint_term > 0:
                found = self.log.last_index_of_term(m.hint_term, m.reject_index)
                if found is not None:
                    next_index = found + 1
            pr.state = _PeerState.PROBE
            pr.probe_sent = False
            pr.inflight.clear()
            pr.next = max(pr.match + 1, min(next_index, m.reject_index))
            self._send_append(m.src)
            return
        if m.match_index > pr.match:
            pr.match = m.match_index
        while pr.inflight and pr.inflight[0] <= m.match_index:
            pr.inflight.popleft()
        if pr.state == _PeerState.PROBE:
            pr.become_replicate()
        elif pr.state == _PeerState.SNAPSHOT:
            if pr.match < pr.snap_index:
                return
            pr.become_replicate()
        elif pr.next <= pr.match:
            pr.next = pr.match + 1
        if self._maybe_commit():
            self._bcast_append()
        else:
            self._send_append(m.src, allow_empty=False)
        if m.src == self._transferee and pr.match == self.log.last_index():
            self._send(TimeoutNow(self.id, m.src, self.term))

    def _on_heartbeat_response(self, m: Message) -> None:
        assert isinstance(m, HeartbeatResponse)
        pr = self._progress[m.src]
        pr.recent_active = True
        if pr.state == _PeerState.SNAPSHOT:
            self._send_snapshot_chunk(m.src, pr)  # the last chunk or its answer may be lost
        else:
            pr.probe_sent = False
            if pr.state == _PeerState.REPLICATE and pr.inflight:
                pr.inflight.popleft()  # free a slot so a lost append cannot stall us
            if pr.match < self.log.last_index():
                self._send_append(m.src)
        if self._reads and 0 < m.read_seq <= self._read_seq:
            self._ack_reads(m.src, m.read_seq)

    def _on_snapshot_response(self, m: Message) -> None:
        assert isinstance(m, SnapshotResponse)
        pr = self._progress[m.src]
        pr.recent_active = True
        if pr.state != _PeerState.SNAPSHOT or m.snap_index != pr.snap_index:
            return
        if m.installed:
            pr.match = max(pr.match, m.snap_index)
            pr.become_replicate()
            self._send_append(m.src)
            return
        snapshot = self.log.snapshot
        assert snapshot is not None  # pr.snap_index came from it
        pr.snap_offset = min(m.next_offset, len(snapshot.data))
        self._send_snapshot_chunk(m.src, pr)

    def _maybe_commit(self) -> bool:
        matches = sorted([pr.match for pr in self._progress.values()]
                         + [self.log.unstable_from - 1], reverse=True)
        candidate = matches[self.quorum - 1]
        if candidate > self.commit and self._may_commit_term(candidate):
            self.commit = candidate
            if self._early_reads and self.log.term_at(candidate) == self.term:
                early, self._early_reads = self._early_reads, []
                for request_id in early:
                    self._start_read(request_id)
            return True
        return False

    def _may_commit_term(self, index: int) -> bool:
        """§5.4.2: only entries of the current term are committed by counting replicas."""
        return self.log.term_at(index) == self.term

    # -- ReadIndex ------------------------------------------------------------------

    def _start_read(self, request_id: int) -> None:
        if not self.peers:
            self._read_states.append(ReadState(request_id, RaftIndex(self.commit)))
            return
        self._read_seq += 1
        self._reads.append(_PendingRead(self._read_seq, request_id, self.commit, self.id))
        self._bcast_heartbeat()

    def _ack_reads(self, peer: NodeId, seq: int) -> None:
        released = 0
        for i, read in enumerate(self._reads):
            if read.seq > seq:
                break
            read.acks.add(peer)
            if len(read.acks) >= self.quorum:
                released = i + 1
        for _ in range(released):
            read = self._reads.popleft()
            self._read_states.append(ReadState(read.request_id, RaftIndex(read.index)))
