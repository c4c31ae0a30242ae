"""`RaftNode`: the asyncio driver around `RaftCore`.

It owns the tick timer (from an injected `Clock`), the transport (the native protocol:
one `Connection` per peer for sending, handlers on the node's `ProtocolServer` for
receiving), the storage, and the apply loop into a `StateMachine`. It holds no Raft
logic: every decision is the core's.

One task, the pump, is the only code that touches the core and the storage. Inputs
(ticks, peer messages, proposals, reads, transfers) are queued and woken into it; the
pump steps them into the core, then drains Ready batches following the core's contract:
persist (fsync, in a worker thread so the loop keeps serving) -> send -> restore
snapshot / apply committed entries -> resolve waiters -> `advance()`. Nothing reaches
the core between `ready()` and `advance()` because only the pump calls either.

Once a tick the pump also looks at the connection to the leader this node follows:
when it has closed (a killed leader's connections close at once), the core hears of it
(`RaftCore.leader_unreachable`) and campaigns within a few ticks rather than after a
whole election timeout.

Sending never blocks the pump: each peer has a bounded outbox drained by its sender
task; when it overflows the oldest messages are dropped (Raft retransmits).

Crash-only: the pump and the senders are essential. If one of them dies of an
unexpected exception the node is no longer a working voter, so the owner's `on_fatal`
hook is called (the process then exits and its supervisor restarts it from disk)
instead of lingering half-alive.

What a peer sends is checked before it reaches the core: the message shape and integer
ranges (`message_from_wire`), and every entry of an append with `validate_entry`, so an
entry the state machine could not apply is refused before it is appended anywhere.
Proposals are bounded by `max_entry_bytes` (under the peers' frame limit) and fail at
once when larger. When this node stops leading, every proposal it has not committed
fails at once with NotLeaderError naming the new leader when known.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from dmq.aio import wait_for
from dmq.clock import Cancellable, Clock
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import Connection
from dmq.protocol.errors import (
    DmqError,
    ErrorCode,
    InvalidRequestError,
    NodeShuttingDownError,
    RequestTimedOutError,
)
from dmq.protocol.server import LogLimiter, ProtocolServer, RequestContext
from dmq.raft.core import (
    EntryTooLargeError,
    NotLeaderError,
    ProposalDroppedError,
    RaftConfig,
    RaftCore,
    RaftError,
    Ready,
    Role,
)
from dmq.raft.messages import (
    NO_NODE,
    AppendRequest,
    Entry,
    EntryKind,
    HeartbeatRequest,
    MalformedMessageError,
    Message,
    Snapshot,
    SnapshotRequest,
    TimeoutNow,
    VoteRequest,
    message_from_wire,
)
from dmq.raft.storage import RaftStorage
from dmq.types import NodeId, RaftIndex

log = logging.getLogger("dmq.raft.node")
_REFUSED = LogLimiter(log)  # peers refusing this node (TLS, identity): one line per 10 s

FRAME_OVERHEAD_BYTES = 64 * 1024
"""Room left in a frame for the request header and an append's fields around its entries
(a quarter of the frame when frames are smaller than 256 KiB)."""

OnFatal = Callable[[str, BaseException], None]
"""`on_fatal(what, exc)`: an essential task died; the owner ends the process."""

RAFT_KEYS = (ApiKey.RAFT_REQUEST_VOTE, ApiKey.RAFT_APPEND_ENTRIES, ApiKey.RAFT_INSTALL_SNAPSHOT,
             ApiKey.RAFT_TIMEOUT_NOW, ApiKey.RAFT_MESSAGE)


class StateMachine(Protocol):
    def apply(self, entries: Sequence[Entry]) -> None: ...

    def snapshot(self) -> bytes: ...

    def restore(self, snapshot: Snapshot) -> None: ...


class ProposalOutcomeUnknownError(RaftError):
    """The entry's slot was covered by a snapshot from the leader before we saw it."""


@dataclass(frozen=True)
class RaftNodeConfig:
    node_id: NodeId
    peers: dict[NodeId, tuple[str, int]]  # every other voter's address
    tick_ms: int = 50
    election_ticks: int = 10
    heartbeat_ticks: int = 2
    # campaign within N ticks of its turn once the connection to the leader closes
    # (0: wait the election timeout); see RaftCore.leader_unreachable
    leader_loss_ticks: int = 0
    snapshot_interval_entries: int = 10_000
    max_outbox_messages: int = 4096
    connect_timeout_ms: int = 1000
    max_pending_inputs: int = 100_000
    persist_in_thread: bool = True
    # the peers' max.frame.bytes: no entry, append batch or snapshot chunk may exceed it
    max_frame_bytes: int = 100 * 1024 * 1024
    core_options: dict[str, Any] = field(default_factory=dict)  # extra RaftConfig fields

    @property
    def frame_overhead_bytes(self) -> int:
        return min(FRAME_OVERHEAD_BYTES, self.max_frame_bytes // 4)

    @property
    def max_entry_bytes(self) -> int:
        return max(1, self.max_frame_bytes - self.frame_overhead_bytes)

    def raft_config(self) -> RaftConfig:
        voters = tuple(sorted((self.node_id, *self.peers)))
        limit = self.max_entry_bytes
        options: dict[str, Any] = {"max_entry_bytes": limit,
                                   "max_bytes_per_append": min(1 << 20, limit),
                                   "snapshot_chunk_bytes": min(1 << 20, limit)}
        options.update(self.core_options)
        return RaftConfig(node_id=self.node_id, voters=voters,
                          election_ticks=self.election_ticks,
                          heartbeat_ticks=self.heartbeat_ticks,
                          leader_loss_ticks=self.leader_loss_ticks, **options)


def _api_key_of(m: Message) -> ApiKey:
    if isinstance(m, (AppendRequest, HeartbeatRequest)):
        return ApiKey.RAFT_APPEND_ENTRIES
    if isinstance(m, VoteRequest):
        return ApiKey.RAFT_REQUEST_VOTE
    if isinstance(m, SnapshotRequest):
        return ApiKey.RAFT_INSTALL_SNAPSHOT
    if isinstance(m, TimeoutNow):
        return ApiKey.RAFT_TIMEOUT_NOW
    return ApiKey.RAFT_MESSAGE


class _PeerSender:
    """A bounded outbox to one peer and the task that drains it over one connection."""

    def __init__(self, node: RaftNode, peer: NodeId, address: tuple[str, int]) -> None:
        self.node = node
        self.peer = peer
        self.host, self.port = address
        self.outbox: deque[Message] = deque()
        self.wake = asyncio.Event()
        self.conn: Connection | None = None
        self.dropped = 0
        self.task: asyncio.Task[None] | None = None

    def push(self, m: Message) -> None:
        if len(self.outbox) >= self.node.config.max_outbox_messages:
            self.outbox.popleft()
            self.dropped += 1
        self.outbox.append(m)
        self.wake.set()

    async def run(self) -> None:
        backoff_ms = self.node.config.tick_ms
        while True:
            await self.wake.wait()
            self.wake.clear()
            if self.conn is None or self.conn.closed:
                try:
                    self.conn = await Connection.open(
                        self.host, self.port, client_id=f"raft-{self.node.config.node_id}",
                        connect_timeout_ms=self.node.config.connect_timeout_ms,
                        node_id=self.node.config.node_id)
                except DmqError as exc:
                    # The peer is down: drop what we hold, Raft will resend what matters.
                    # A peer that refuses us (a certificate from another CA, an identity
                    # the certificate does not prove) is a setup error: say it, limited.
                    me = self.node.config.node_id
                    if ("TLS handshake" in str(exc)
                            or exc.code is ErrorCode.CLUSTER_AUTHORIZATION_FAILED):
                        _REFUSED.warning(f"{me}->{self.peer}", "node=%s cannot reach raft "
                                         "peer %s: refused: %s", me, self.peer, exc)
                    else:
                        log.debug("node=%s cannot reach peer %s: %s",
                                  self.node.config.node_id, self.peer, exc)
                    self.dropped += len(self.outbox)
                    self.outbox.clear()
                    await asyncio.sleep(backoff_ms / 1000)
                    continue
            conn, me = self.conn, self.node.config.node_id
            try:
                while self.outbox:
                    m = self.outbox.popleft()
                    # Replies travel as messages of their own; the {} answer is ignored.
                    conn.send_oneway(_api_key_of(m), {"from": me, "msg": m.to_wire()})
            except DmqError:
                self.outbox.clear()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.conn is not None:
            await self.conn.close()


class RaftNode:
    def __init__(self, config: RaftNodeConfig, storage: RaftStorage,
                 state_machine: StateMachine, clock: Clock, rng: random.Random, *,
                 validate_entry: Callable[[bytes], str | None] | None = None,
                 validate_snapshot: Callable[[bytes], str | None] | None = None,
                 on_fatal: OnFatal | None = None) -> None:
        """`validate_entry(data)` / `validate_snapshot(data)` say why the state machine
        could not apply an entry / restore a snapshot a peer sent (None: it can)."""
        self.config = config
        self.validate_entry = validate_entry
        self.validate_snapshot = validate_snapshot
        self.on_fatal = on_fatal
        self.id = config.node_id
        self.storage = storage
        self.sm = state_machine
        self.clock = clock
        self.rng = rng
        self.core: RaftCore | None = None
        self._inputs: deque[tuple[str, Any, Any]] = deque()
        self._wake: asyncio.Event | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._timer: Cancellable | None = None
        self._next_tick_ms = 0
        self._senders: dict[NodeId, _PeerSender] = {}
        self._waiters: dict[int, tuple[int, asyncio.Future[RaftIndex]]] = {}
        self._waiters_term = 0  # the term the newest waiter was proposed in
        self._reads: dict[int, asyncio.Future[RaftIndex]] = {}
        self._read_waits: list[tuple[int, asyncio.Future[RaftIndex]]] = []
        self._role_changed: asyncio.Event | None = None
        self._next_read_id = 0
        self._stopping = False
        # the leader followed and its connection, last seen open (see _watch_leader_link)
        self._leader_link: tuple[NodeId, Connection] | None = None
        self._feeders: dict[str, Callable[[RaftCore, Any, Any], None]] = {
            "msg": self._feed_msg, "tick": self._feed_tick, "propose": self._feed_propose,
            "read": self._feed_read, "transfer": self._feed_transfer}
        self.stats = {"readies": 0, "persisted_entries": 0, "applied": 0, "sent": 0,
                      "received": 0, "malformed": 0, "refused_entries": 0,
                      "leader_links_lost": 0}

    # -- lifecycle ----------------------------------------------------------------------

    def register(self, server: ProtocolServer) -> None:
        """Serve the Raft API keys on `server` (call before the server starts)."""
        for key in RAFT_KEYS:
            server.register(key, self._handle_message)

    async def start(self) -> None:
        state = self.storage.load()
        applied = 0
        if state.snapshot is not None:
            self.sm.restore(state.snapshot)
            applied = state.snapshot.index
        self.core = RaftCore(self.config.raft_config(), state, self.rng, applied=applied,
                             validate_snapshot=self.validate_snapshot)
        self._wake = asyncio.Event()
        self._role_changed = asyncio.Event()
        for peer, address in self.config.peers.items():
            sender = _PeerSender(self, peer, address)
            sender.task = asyncio.create_task(sender.run(), name=f"raft-{self.id}-to-{peer}")
            sender.task.add_done_callback(self._essential_done)
            self._senders[peer] = sender
        self._pump_task = asyncio.create_task(self._pump(), name=f"raft-{self.id}-pump")
        self._pump_task.add_done_callback(self._essential_done)
        self._next_tick_ms = self.clock.monotonic_ms()
        self._schedule_tick()
        log.info("node=%s raft started: term %s, last index %s, commit %s", self.id,
                 self.core.term, self.core.log.last_index(), self.core.commit)

    async def stop(self) -> None:
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
        if self._pump_task is not None:
            # Let the pump finish the Ready in hand (a persist in a worker thread cannot
            # be cancelled, and the caller closes the storage next), then stop it.
            assert self._wake is not None
            self._wake.set()
            try:
                await wait_for(asyncio.shield(self._pump_task), 5.0)
            except TimeoutError:
                log.warning("node=%s raft pump did not stop in time", self.id)
            except Exception:  # its death was reported when it happened
                pass
            self._pump_task.cancel()
            await asyncio.gather(self._pump_task, return_exceptions=True)
        for sender in self._senders.values():
            await sender.close()
        self._fail_all(NodeShuttingDownError("raft node stopped"))

    def _essential_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        if exc is None:
            exc = RuntimeError("returned while the node was running")
        self._fail_all(NodeShuttingDownError(f"raft task {task.get_name()} failed"))
        if self.on_fatal is not None:
            self.on_fatal(f"raft task {task.get_name()}", exc)
        else:
            log.critical("node=%s raft task %s died", self.id, task.get_name(), exc_info=exc)

    def _schedule_tick(self) -> None:
        # Ticks are due at fixed times so a busy loop does not stretch the election
        # timeout; after a stall we skip the missed ticks rather than burst them.
        if self._stopping:
            return
        now = self.clock.monotonic_ms()
        self._next_tick_ms = max(self._next_tick_ms + self.config.tick_ms, now)
        self._timer = self.clock.call_later(self._next_tick_ms - now, self._on_tick)

    def _on_tick(self) -> None:
        self._push(("tick", None, None))
        self._schedule_tick()

    # -- inputs -------------------------------------------------------------------------

    def _push(self, item: tuple[str, Any, Any]) -> None:
        if len(self._inputs) >= self.config.max_pending_inputs and item[0] == "msg":
            return  # overloaded: drop peer messages (Raft resends), never local requests
        self._inputs.append(item)
        if self._wake is not None:
            self._wake.set()

    def _handle_message(self, ctx: RequestContext, body: Any) -> Any:
        try:
            m = message_from_wire(body["msg"])
        except MalformedMessageError as exc:
            self.stats["malformed"] += 1
            raise InvalidRequestError(f"bad raft message: {exc}") from None
        if m.src != body["from"] or m.dst != self.id:
            raise InvalidRequestError("raft message not from its sender or not for this node")
        if isinstance(m, AppendRequest) and self.validate_entry is not None:
            for entry in m.entries:
                why = self.validate_entry(entry.data) if entry.kind == EntryKind.NORMAL \
                    else (None if not entry.data else "a no-op entry carries data")
                if why is not None:
                    self.stats["refused_entries"] += 1
                    log.warning("node=%s refused an append from %s: entry %d (term %d) "
                                "cannot be applied: %s", self.id, m.src, entry.index,
                                entry.term, why)
                    raise InvalidRequestError(
                        f"raft entry {entry.index} refused, the state machine cannot apply "
                        f"it: {why}")
        self.stats["received"] += 1
        self._push(("msg", m, None))
        return {}

    async def propose(self, data: bytes, timeout_ms: int = 10_000) -> RaftIndex:
        """Replicate `data`; returns its index once committed and applied here.

        Raises EntryTooLargeError, NotLeaderError (with the leader id) or
        ProposalDroppedError at once, NotLeaderError as soon as this node stops leading
        before the entry commits, ProposalDroppedError if another leader overwrote it,
        RequestTimedOutError."""
        if len(data) > self.config.max_entry_bytes:
            raise EntryTooLargeError(
                f"a Raft entry of {len(data)} bytes exceeds the limit of "
                f"{self.config.max_entry_bytes} bytes (max.frame.bytes less "
                f"{self.config.frame_overhead_bytes} bytes of framing): followers could not "
                "receive it")
        fut = self._future()
        self._push(("propose", data, fut))
        return await self._wait(fut, timeout_ms, "proposal")

    async def read_index(self, timeout_ms: int = 5_000) -> RaftIndex:
        """A linearizable read point: once this returns, the state machine has applied
        every write committed before the call."""
        fut = self._future()
        self._push(("read", None, fut))
        return await self._wait(fut, timeout_ms, "read index")

    async def transfer_leadership(self, target: NodeId | None = None,
                                  timeout_ms: int | None = None) -> NodeId:
        """Hand leadership to `target` (default: the most caught-up peer); returns the
        new leader's id. Used for graceful shutdown."""
        if timeout_ms is None:
            timeout_ms = self.config.tick_ms * self.config.election_ticks * 2
        fut = self._future()
        self._push(("transfer", target, fut))
        await self._wait(fut, timeout_ms, "leadership transfer")
        core = self.core
        assert core is not None and self._role_changed is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while not (core.role != Role.LEADER and core.leader_id != NO_NODE):
            self._role_changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise RequestTimedOutError(
                    f"leadership transfer did not finish in {timeout_ms} ms")
            try:
                await wait_for(self._role_changed.wait(), remaining)
            except TimeoutError:
                pass
        return core.leader_id

    def status(self) -> dict[str, Any]:
        core = self.core
        assert core is not None, "not started"
        st = core.status()
        return {
            "node_id": st.node_id, "role": st.role.name, "term": st.term,
            "leader_id": st.leader_id, "commit_index": st.commit_index,
            "last_applied": st.applied_index, "last_log_index": st.last_index,
            "snapshot_index": st.snapshot_index, "refused_messages": core.refused,
            "peers": {int(p): int(m) for p, m in st.match_index.items()},
        }

    def _future(self) -> asyncio.Future[RaftIndex]:
        if self._stopping or self.core is None or (
                self._pump_task is not None and self._pump_task.done()):
            raise NodeShuttingDownError("raft node is not running")
        fut: asyncio.Future[RaftIndex] = asyncio.get_running_loop().create_future()
        # A caller that timed out no longer awaits it: its late failure is expected.
        fut.add_done_callback(_consume_exception)
        return fut

    async def _wait(self, fut: asyncio.Future[RaftIndex], timeout_ms: int,
                    what: str) -> RaftIndex:
        try:
            return await wait_for(asyncio.shield(fut), timeout_ms / 1000)
        except TimeoutError:
            raise RequestTimedOutError(f"{what} not done in {timeout_ms} ms") from None

    # -- the pump -----------------------------------------------------------------------

    async def _pump(self) -> None:
        assert self._wake is not None and self.core is not None
        core = self.core
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            inputs, self._inputs = self._inputs, deque()
            refused = core.refused
            for kind, arg, fut in inputs:
                self._feed(core, kind, arg, fut)
            if core.refused != refused:
                log.warning("node=%s dropped %d raft messages claiming impossible terms, "
                            "entries or snapshots (%d so far)", self.id,
                            core.refused - refused, core.refused)
            while core.has_ready():
                rd = core.ready()
                await self._handle_ready(core, rd)
                core.advance(rd)
                self._after_advance(core)

    def _feed(self, core: RaftCore, kind: str, arg: Any, fut: Any) -> None:
        if fut is not None and fut.done():
            return  # the caller gave up already
        self._feeders[kind](core, arg, fut)

    def _feed_msg(self, core: RaftCore, m: Message, fut: None) -> None:
        core.step(m)

    def _feed_tick(self, core: RaftCore, arg: None, fut: None) -> None:
        core.tick()
        self._watch_leader_link(core)

    def _feed_propose(self, core: RaftCore, data: bytes,
                      fut: asyncio.Future[RaftIndex]) -> None:
        try:
            term, index = core.propose(data)
        except RaftError as exc:
            fut.set_exception(exc)
            return
        self._waiters[index] = (term, fut)
        self._waiters_term = term

    def _feed_read(self, core: RaftCore, arg: None, fut: asyncio.Future[RaftIndex]) -> None:
        if core.role != Role.LEADER:
            fut.set_exception(NotLeaderError(core.leader_id))
            return
        self._next_read_id += 1
        self._reads[self._next_read_id] = fut
        core.read_index(self._next_read_id)

    def _feed_transfer(self, core: RaftCore, target: NodeId | None,
                       fut: asyncio.Future[RaftIndex]) -> None:
        try:
            core.transfer_leadership(target if target is not None else self._best_peer(core))
        except (RaftError, ValueError) as exc:
            fut.set_exception(exc)
            return
        fut.set_result(RaftIndex(0))

    def _watch_leader_link(self, core: RaftCore) -> None:
        """Once per tick: when the connection to the leader this node follows, seen
        open while following it, has closed (a killed leader's connections close at
        once), tell the core, which then campaigns after a few ticks instead of a whole
        election timeout (`RaftCore.leader_unreachable`)."""
        leader = core.leader_id
        sender = self._senders.get(leader) if core.role == Role.FOLLOWER else None
        conn = sender.conn if sender is not None else None
        if conn is None:
            if sender is None:
                self._leader_link = None
            return
        if not conn.closed:
            self._leader_link = (leader, conn)
        elif self._leader_link == (leader, conn):
            self._leader_link = None
            self.stats["leader_links_lost"] += 1
            log.info("node=%s connection to leader %s closed: campaigning early if it "
                     "stays silent", self.id, leader)
            core.leader_unreachable()

    @staticmethod
    def _best_peer(core: RaftCore) -> NodeId:
        matches = core.status().match_index
        peers = [p for p in core.peers]
        assert peers, "a single-node cluster has nobody to transfer to"
        return max(peers, key=lambda p: matches.get(p, 0))

    async def _handle_ready(self, core: RaftCore, rd: Ready) -> None:
        self.stats["readies"] += 1
        if rd.snapshot is not None or rd.entries or rd.hard_state is not None:
            if self.config.persist_in_thread:
                await asyncio.to_thread(self.storage.persist, rd.hard_state, rd.entries,
                                        rd.snapshot)
            else:
                self.storage.persist(rd.hard_state, rd.entries, rd.snapshot)
            self.stats["persisted_entries"] += len(rd.entries)
        for m in rd.messages:
            sender = self._senders.get(m.dst)
            if sender is not None:
                sender.push(m)
                self.stats["sent"] += 1
        if rd.snapshot is not None:
            self.sm.restore(rd.snapshot)
            for index in [i for i in self._waiters if i <= rd.snapshot.index]:
                _, fut = self._waiters.pop(index)
                if not fut.done():
                    fut.set_exception(ProposalOutcomeUnknownError(
                        f"entry {index} was covered by a snapshot from the leader"))
        if self._waiters and (core.role != Role.LEADER or core.term != self._waiters_term):
            # checked on every Ready: a step-down and a new term as leader may both
            # happen between two Readies and leave the soft state looking unchanged
            self._fail_uncommitted(core, core.leader_id)
        if rd.committed_entries:
            self.sm.apply(rd.committed_entries)
            self.stats["applied"] += len(rd.committed_entries)
            for entry in rd.committed_entries:
                waiter = self._waiters.pop(entry.index, None)
                if waiter is not None and not waiter[1].done():
                    if waiter[0] == entry.term:
                        waiter[1].set_result(entry.index)
                    else:
                        waiter[1].set_exception(ProposalDroppedError(
                            f"entry {entry.index} was replaced by a newer leader's"))
        for rs in rd.read_states:
            read = self._reads.pop(rs.request_id, None)
            if read is not None:
                self._read_waits.append((rs.index, read))
        for request_id in rd.dropped_reads:
            read = self._reads.pop(request_id, None)
            if read is not None and not read.done():
                read.set_exception(NotLeaderError(core.leader_id))
        if rd.soft_state is not None:
            assert self._role_changed is not None
            self._role_changed.set()
            log.info("node=%s raft role %s term %s leader %s", self.id, rd.soft_state.role.name,
                     core.term, rd.soft_state.leader_id)

    def _after_advance(self, core: RaftCore) -> None:
        applied = core.applied
        if self._read_waits:
            still = []
            for index, fut in self._read_waits:
                if index <= applied:
                    if not fut.done():
                        fut.set_result(RaftIndex(index))
                else:
                    still.append((index, fut))
            self._read_waits = still
        if applied - core.log.snap_index >= self.config.snapshot_interval_entries:
            snapshot = core.compact(applied, self.sm.snapshot())
            # Synchronous: the pump is the only storage user and compaction is rare.
            self.storage.compact(snapshot)
            log.info("node=%s raft snapshot at %s (%d bytes)", self.id, snapshot.index,
                     len(snapshot.data))

    def _fail_uncommitted(self, core: RaftCore, leader_id: NodeId) -> None:
        """This node stopped leading (or leads a newer term): its pending proposals may
        never commit, so their callers learn it now and retry at the new leader."""
        leading = core.role == Role.LEADER
        failed = 0
        for index, (term, fut) in list(self._waiters.items()):
            if (leading and term == core.term) or index <= core.commit:
                continue  # still ours, or committed: resolved once applied
            del self._waiters[index]
            if not fut.done():
                fut.set_exception(NotLeaderError(leader_id))
                failed += 1
        if failed:
            log.info("node=%s no longer leads term %s: %d pending proposals failed "
                     "(leader now %s)", self.id, core.term, failed, leader_id or "unknown")

    def _fail_all(self, exc: Exception) -> None:
        futures = [f for _, f in self._waiters.values()] + list(self._reads.values()) + [
            f for _, f in self._read_waits]
        futures += [f for kind, _, f in self._inputs if f is not None]
        self._waiters.clear()
        self._reads.clear()
        self._read_waits = []
        for fut in futures:
            if not fut.done():
                fut.set_exception(exc)


def _consume_exception(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
