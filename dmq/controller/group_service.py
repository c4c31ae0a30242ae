"""The consumer group APIs on a controller: the asyncio shell around `GroupCoordinator`.

`register_group_handlers(server, host)` registers CONSUMER_GROUP_HEARTBEAT,
OFFSET_COMMIT, OFFSET_FETCH, OFFSET_DELETE, LIST_GROUPS, DESCRIBE_GROUPS, DELETE_GROUPS
and RESET_OFFSETS (and Kafka's classic JoinGroup/SyncGroup/Heartbeat/LeaveGroup) on a
controller's `ProtocolServer`. Only the active controller answers;
the others raise NOT_CONTROLLER naming the leader (the client's `ControllerChannel`
follows that hint).

What it needs from the controller service is the small `GroupHost` protocol:
the applied `MetadataState`, whether (and in which term) this node is the active
controller, the leader hint, settings, and `propose(records)`, which must resolve once
the records are committed *and applied here* (so an OffsetFetch after an
OffsetCommit reads it) and raise a `DmqError` otherwise. `active_term()` must return a
term only once the state machine has applied everything of earlier terms (KRaft's
rule), or committed offsets could be read stale after a failover.

A fresh `GroupCoordinator` is made whenever this node starts a new term as the active
controller: membership is soft state, rebuilt by the members' next heartbeats
(see the coordinator's failover window). Committed offsets are in the state machine.

Offset commits are batched: commits arriving while a proposal is in flight go into the
next Raft entry together (group commit), so many consumers cost one entry per round
trip.

A group write a broker's Kafka listener forwards carries `deadline_ms`, the wall-clock
time at which the broker stops waiting and answers its client (`dmq.kafka.groups`).
Past it the request is refused (REQUEST_TIMED_OUT): on arrival, and again when its
records would be proposed, so a forward delayed on the way (a cut link that heals) is
never applied over what its client did after being told it failed. A commit proposed
before its deadline may still be applied after it, but the Raft log orders it before
any commit the client sends once told of the failure.

One timer (the injected clock's `call_later`) drives session expiry and offsets
retention; the only task this module starts is the batch proposer, owned here and
stopped by `close()`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from dmq.aio import wait_for
from dmq.clock import Cancellable, Clock
from dmq.controller.classic_groups import (
    INCONSISTENT_GROUP_PROTOCOL,
    NONE,
    ClassicGroup,
    ClassicGroups,
    decode_consumer_assignment,
)
from dmq.controller.group_coordinator import (
    EMPTY,
    NO_OFFSET,
    GroupCoordinator,
    check_group_id,
    check_member_ids,
    owned_from_wire,
    tombstones,
)
from dmq.controller.planner import Planner
from dmq.metadata.records import OffsetCommit, Record
from dmq.metadata.state import MetadataState
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import (
    DmqError,
    ErrorCode,
    GroupIdNotFoundError,
    InvalidRequestError,
    NonEmptyGroupError,
    NotControllerError,
    RaftNotReadyError,
    RequestTimedOutError,
)
from dmq.protocol.server import RequestContext

log = logging.getLogger("dmq.controller.group_service")

MAX_PENDING_COMMITS = 10_000
# partitions one OffsetCommit (or reset) may name: with `offset.metadata.max.bytes` this
# bounds the Raft entry one commit makes
MAX_COMMIT_PARTITIONS = 10_000
# commits queued together go into one Raft entry up to about this many bytes; a larger
# backlog is proposed as several entries (a follower refuses frames past max.frame.bytes)
MAX_COMMIT_ENTRY_BYTES = 4 * 1024 * 1024
COMMIT_TIMEOUT_MS = 15_000
RETENTION_CHECK_MS = 60_000
CLASSIC_POLL_MS = 100  # session timeouts and rebalance deadlines of classic groups


class GroupHost(Protocol):
    """What the group service needs from the controller service."""

    clock: Clock

    @property
    def state(self) -> MetadataState: ...

    def active_term(self) -> int | None:
        """The Raft term while this node is the active controller and caught up."""
        ...

    def not_active_error(self) -> DmqError:
        """What to answer when `active_term()` is None (NOT_CONTROLLER naming the
        leader, or a retriable not-ready error on a leader still catching up)."""
        ...

    def setting(self, key: str) -> Any: ...

    def propose(self, records: list[Record]) -> Awaitable[Any]: ...


class _StateTopics:
    """TopicsView over the applied metadata state."""

    def __init__(self, state: Callable[[], MetadataState]) -> None:
        self._state = state
        self._version = -1
        self._counts: dict[str, int] = {}

    def metadata_version(self) -> int:
        return self._state().version

    def partition_counts(self) -> Mapping[str, int]:
        st = self._state()
        if st.version != self._version:
            self._counts = {name: len(t.partitions) for name, t in st.topics.items()}
            self._version = st.version
        return self._counts


def live_offsets(state: MetadataState, group: str
                 ) -> dict[tuple[str, int], tuple[int, str | None, int]]:
    """A group's committed offsets, without deletion tombstones."""
    return {tp: v for tp, v in state.offsets.get(group, {}).items() if v[0] != NO_OFFSET}


class GroupService:
    def __init__(self, host: GroupHost) -> None:
        self.host = host
        self.topics = _StateTopics(lambda: host.state)
        self._coordinator: GroupCoordinator | None = None
        self._term: int | None = None
        # (records, waiter, deadline_ms | None), oldest first
        self._pending: list[tuple[list[Record], asyncio.Future[None], int | None]] = []
        self.stale_refused = 0  # forwards refused because their deadline had passed
        self._proposer: asyncio.Task[None] | None = None
        self._timer: Cancellable | None = None
        self._retention_due_ms = 0
        self._closed = False
        self._classic: ClassicGroups | None = None
        self._classic_term: int | None = None
        self._classic_timer: Cancellable | None = None
        self.entries_proposed = 0
        self.commits_proposed = 0

    # ---- leadership --------------------------------------------------------------
    def coordinator(self) -> GroupCoordinator:
        """The coordinator of the current term; NOT_CONTROLLER on a follower."""
        term = self.host.active_term()
        if term is None:
            self._coordinator = None
            self._term = None
            raise self.host.not_active_error()
        if self._coordinator is None or term != self._term:
            session_ms = int(self.host.setting("group.session.timeout.ms"))
            self._coordinator = GroupCoordinator(
                self.host.clock, self.topics,
                heartbeat_interval_ms=int(self.host.setting("group.heartbeat.interval.ms")),
                adopt_window_ms=session_ms,
                hold_groups={g for g in self.host.state.offsets
                             if live_offsets(self.host.state, g)})
            self._term = term
            log.info("group coordinator active for term %d (%d groups with offsets)", term,
                     len(self._coordinator.hold_groups))
            self._arm_timer()
        return self._coordinator

    def member_counts(self) -> dict[str, int] | None:
        """Members of each dmq-protocol group of the current term's coordinator; None
        before a coordinator exists (a follower, or no group request yet this term)."""
        coord = self._coordinator
        if coord is None:
            return None
        return {g: len(grp.members) for g, grp in coord.groups.items()}

    def _arm_timer(self) -> None:
        if self._timer is not None or self._closed:
            return
        delay = 1000 if self._coordinator is None else min(1000, self._coordinator.next_poll_ms())
        self._timer = self.host.clock.call_later(max(50, delay), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        try:
            coord = self.coordinator()
        except NotControllerError:
            return  # re-armed by the next request that finds this node active
        try:
            coord.poll()
            now = self.host.clock.monotonic_ms()
            if now >= self._retention_due_ms:
                self._retention_due_ms = now + RETENTION_CHECK_MS
                offsets = self.host.state.offsets
                if self._classic is not None:  # a classic group with members keeps them
                    offsets = {g: o for g, o in offsets.items()
                               if not self._classic.has_members(g)}
                records = coord.expired_offsets(
                    offsets, self.host.clock.wall_ms(),
                    int(self.host.setting("offsets.retention.ms")))
                if records:
                    log.info("expiring offsets of %d empty groups", len(records))
                    self._enqueue(records).add_done_callback(_log_failure)
        except Exception:
            log.exception("group coordinator poll failed")
        self._arm_timer()

    async def close(self) -> None:
        self._closed = True
        if self._classic_timer is not None:
            self._classic_timer.cancel()
            self._classic_timer = None
        if self._classic is not None:
            self._classic.close()
            self._classic = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._proposer is not None:
            self._proposer.cancel()
            await asyncio.gather(self._proposer, return_exceptions=True)
        for _, fut, _ in self._pending:
            if not fut.done():
                fut.set_exception(NotControllerError("controller shutting down"))
        self._pending.clear()

    # ---- batched proposals --------------------------------------------------------
    def _enqueue(self, records: list[Record],
                 deadline_ms: int | None = None) -> asyncio.Future[None]:
        if len(self._pending) >= MAX_PENDING_COMMITS:
            raise RequestTimedOutError("too many offset commits waiting for the quorum")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((records, fut, deadline_ms))
        if self._proposer is None or self._proposer.done():
            self._proposer = asyncio.get_running_loop().create_task(self._propose_loop())
        return fut

    def _take_batch(self) -> list[tuple[list[Record], asyncio.Future[None], int | None]]:
        """The oldest pending commits, as many as fit in `MAX_COMMIT_ENTRY_BYTES` (at
        least one), without those whose deadline has passed (refused)."""
        now = self.host.clock.wall_ms()
        live = []
        for recs, fut, deadline in self._pending:
            if deadline is not None and now >= deadline:
                self._refuse_stale(fut, recs, deadline, now)
            else:
                live.append((recs, fut, deadline))
        self._pending = live
        size = 0
        n = 0
        for recs, _, _ in self._pending:
            size += sum(_estimated_bytes(r) for r in recs)
            if n and size > MAX_COMMIT_ENTRY_BYTES:
                break
            n += 1
        batch, self._pending = self._pending[:n], self._pending[n:]
        return batch

    async def _propose_loop(self) -> None:
        while self._pending and not self._closed:
            batch = self._take_batch()
            if not batch:
                continue
            records = [r for recs, _, _ in batch for r in recs]
            try:
                await wait_for(self.host.propose(records), COMMIT_TIMEOUT_MS / 1000)
            except Exception as exc:  # every waiter learns the outcome
                err: BaseException = exc
                if isinstance(exc, TimeoutError):
                    err = RequestTimedOutError("offset commit not replicated in time")
                elif not isinstance(exc, DmqError):
                    log.exception("proposing %d group records failed", len(records))
                for _, fut, _ in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            self.entries_proposed += 1
            self.commits_proposed += len(batch)
            for _, fut, _ in batch:
                if not fut.done():
                    fut.set_result(None)

    def _refuse_stale(self, fut: asyncio.Future[None], records: list[Record], deadline: int,
                      now: int) -> None:
        group = next((r.group for r in records if isinstance(r, OffsetCommit)), "?")
        log.info("not proposing the offsets of group %r: the forwarding broker gave up on "
                 "them %d ms ago", group, now - deadline)
        self.stale_refused += 1
        if not fut.done():
            fut.set_exception(RequestTimedOutError(
                f"the deadline of this forwarded request passed {now - deadline} ms before "
                "it could be proposed; the forwarding broker has answered it already"))

    def _fence(self, ctx: RequestContext, key: ApiKey, body: dict[str, Any]) -> None:
        """Refuse a forwarded request whose broker has given up on it (its
        `deadline_ms` passed): it reached this node late, and its client was told it
        failed and may have done newer work since."""
        deadline = body.get("deadline_ms")
        if deadline is None:
            return
        now = self.host.clock.wall_ms()
        if now < deadline:
            return
        self.stale_refused += 1
        log.info("refusing a %s of group %r forwarded by %s: it arrived %d ms after its "
                 "deadline, when the broker had answered it already", key.name,
                 body.get("group_id"), getattr(ctx, "peer", "?"), now - deadline)
        raise RequestTimedOutError(f"{key.name} arrived {now - deadline} ms after its "
                                   "deadline; the forwarding broker has answered it already")

    # ---- handlers -----------------------------------------------------------------
    def heartbeat(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        self._fence(ctx, ApiKey.CONSUMER_GROUP_HEARTBEAT, body)
        coord = self.coordinator()
        if self._classic is not None and self._classic.has_members(body["group_id"]):
            raise GroupIdNotFoundError(f"group {body['group_id']} is a classic-protocol "
                                       "group (Kafka JoinGroup members)")
        # a Kafka listener forwards its client's heartbeat: it names the client, sends
        # -1 for "rebalance timeout unchanged" and -1 for "the coordinator's session
        # timeout" (Kafka's consumers have none of their own in this protocol)
        rebalance_ms = body["rebalance_timeout_ms"]
        session_ms = body["session_timeout_ms"]
        if session_ms < 0:
            session_ms = int(self.host.setting("group.session.timeout.ms"))
        res = coord.heartbeat(
            body["group_id"], body["member_id"], body["member_epoch"],
            instance_id=body["instance_id"],
            rebalance_timeout_ms=rebalance_ms if rebalance_ms >= 0 else None,
            session_timeout_ms=session_ms, topics=body["topics"],
            pattern=body["pattern"], owned=owned_from_wire(body["owned"]),
            assignor=body["assignor"],
            client_id=body.get("client_id") or ctx.header.client_id or "",
            host=body.get("host") or ctx.peer.rpartition(":")[0])
        self._arm_timer()
        answer = res.to_body()
        if body.get("topic_ids") and res.assignment:
            ids = {t: self.host.state.topics[t].topic_id for t in res.assignment
                   if t in self.host.state.topics}
            answer["topic_ids"] = [[t, i] for t, i in sorted(ids.items())]
        return answer

    async def offset_commit(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        self._fence(ctx, ApiKey.OFFSET_COMMIT, body)
        coord = self.coordinator()
        group = body["group_id"]
        _check_commit(group, body["member_id"], body["topics"])
        classic = None if self._classic is None else self._classic.commit_error(
            group, body["member_id"], body["member_epoch"])
        if classic is not None and classic != NONE:
            return {"topics": [[t, [[p, classic] for p, _, _ in parts]]
                               for t, parts in body["topics"]]}
        if classic is None:
            coord.validate_commit(group, body["member_id"], body["member_epoch"])
        records, results = _plan_commit(self.host.state, group, body["topics"],
                                        self.host.clock.wall_ms(),
                                        int(self.host.setting("offset.metadata.max.bytes")))
        if records:
            await self._enqueue(records, body.get("deadline_ms"))
        return {"topics": results}

    def offset_fetch(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        self.coordinator()
        committed = live_offsets(self.host.state, body["group_id"])
        wanted = body["topics"]
        if wanted is None:
            by_topic: dict[str, list[int]] = {}
            for topic, p in sorted(committed):
                by_topic.setdefault(topic, []).append(p)
            wanted = sorted(by_topic.items())
        out = []
        for topic, parts in wanted:
            rows = []
            for p in parts:
                offset, metadata, _ = committed.get((topic, p), (NO_OFFSET, None, 0))
                rows.append([p, offset, metadata, 0])
            out.append([topic, rows])
        return {"topics": out}

    async def offset_delete(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        """Kafka's OffsetDelete: remove a group's committed offsets of some partitions;
        a topic the group subscribes to is refused (GROUP_SUBSCRIBED_TO_TOPIC)."""
        self._fence(ctx, ApiKey.OFFSET_DELETE, body)
        coord = self.coordinator()
        group = body["group_id"]
        _check_commit(group, "", [[t, parts] for t, parts in body["topics"]])
        committed = live_offsets(self.host.state, group)
        native = coord.groups.get(group)
        classic = None if self._classic is None else self._classic.describe(group)
        if not committed and (native is None or not native.members) and (
                classic is None or not classic.members):
            raise GroupIdNotFoundError(f"group {group} does not exist")
        names = [t for t, _ in body["topics"]]
        subscribed = coord.subscribed_topics(group, names)
        if classic is not None and classic.members:
            subscribed |= _classic_topics(classic, names)
        known = self.host.state.topics
        results: list[list[Any]] = []
        doomed: list[tuple[str, int]] = []
        for topic, parts in body["topics"]:
            if topic in subscribed:
                code = int(ErrorCode.GROUP_SUBSCRIBED_TO_TOPIC)
            elif topic not in known:
                code = int(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
            else:
                code = 0
                doomed += [(topic, p) for p in parts if (topic, p) in committed]
            results.append([topic, [[p, code] for p in parts]])
        records = tombstones(group, sorted(set(doomed)), self.host.clock.wall_ms())
        if records:
            await self._enqueue(records, body.get("deadline_ms"))
        return {"error": 0, "topics": results}

    def list_groups(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        coord = self.coordinator()
        groups = {g["group_id"]: g for g in coord.list_groups()}
        for cg in (self._classic.groups.values() if self._classic is not None else ()):
            if cg.members and cg.group_id not in groups:
                groups[cg.group_id] = {"group_id": cg.group_id, "state": cg.state,
                                       "members": len(cg.members), "type": "classic",
                                       "protocol_type": cg.protocol_type or ""}
        for group in self.host.state.offsets:
            if group not in groups and live_offsets(self.host.state, group):
                groups[group] = {"group_id": group, "state": EMPTY, "members": 0}
        return {"groups": [groups[g] for g in sorted(groups)]}

    def describe_groups(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        coord = self.coordinator()
        out = []
        for group in body["groups"]:
            desc = coord.describe(group)
            if desc is None:
                desc = self._describe_classic(group)
            if desc is None:
                if live_offsets(self.host.state, group):
                    desc = {"group_id": group, "error": 0, "state": EMPTY, "epoch": 0,
                            "assignor": "uniform", "members": []}
                else:
                    desc = {"group_id": group, "error": int(ErrorCode.GROUP_ID_NOT_FOUND),
                            "state": "Dead", "epoch": 0, "assignor": "", "members": []}
            out.append(desc)
        return {"groups": out}

    def _describe_classic(self, group: str) -> dict[str, Any] | None:
        cg = None if self._classic is None else self._classic.describe(group)
        if cg is None or not cg.members:
            return None
        return {"group_id": group, "error": 0, "state": cg.state, "epoch": cg.generation,
                "assignor": cg.protocol_name or "", "type": "classic",
                "protocol_type": cg.protocol_type or "", "members": [
                    {"member_id": m.member_id, "instance_id": m.instance_id,
                     "member_epoch": cg.generation, "client_id": m.client_id,
                     "host": m.host,
                     "assignment": decode_consumer_assignment(m.assignment)
                     if cg.protocol_type == "consumer" else [],
                     "metadata": next((b for n, b in m.protocols if n == cg.protocol_name),
                                      b""),
                     "assignment_bytes": m.assignment}
                    for m in cg.members.values()]}

    # ---- Kafka's classic group protocol -------------------------------------------
    def classic(self) -> ClassicGroups:
        """The classic groups of the current term; NOT_CONTROLLER on a follower."""
        term = self.host.active_term()
        if term is None or term != self._classic_term:
            if self._classic is not None:
                self._classic.close()
            self._classic = None
            self._classic_term = None
        if term is None:
            raise self.host.not_active_error()
        if self._classic is None:
            self._classic = ClassicGroups(self.host.clock)
            self._classic_term = term
        self._arm_classic_timer()
        return self._classic

    def _arm_classic_timer(self) -> None:
        if self._classic_timer is None and not self._closed:
            self._classic_timer = self.host.clock.call_later(CLASSIC_POLL_MS,
                                                             self._on_classic_timer)

    def _on_classic_timer(self) -> None:
        self._classic_timer = None
        if self._closed or self._classic is None:
            return
        if self.host.active_term() != self._classic_term:
            self._classic.close()
            self._classic = None
            return
        try:
            self._classic.poll()
        except Exception:
            log.exception("classic group poll failed")
        if self._classic.groups:
            self._arm_classic_timer()

    async def join_group(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        self._fence(ctx, ApiKey.JOIN_GROUP, body)
        coord = self.coordinator()
        check_group_id(body["group_id"])
        classic = self.classic()
        native = coord.groups.get(body["group_id"])
        if native is not None and native.members:
            return {"error": INCONSISTENT_GROUP_PROTOCOL, "generation": -1,
                    "protocol_type": None, "protocol_name": None, "leader": "",
                    "member_id": body["member_id"], "members": []}
        answer = classic.join(body)
        if isinstance(answer, dict):
            return answer
        return await answer

    async def sync_group(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        self._fence(ctx, ApiKey.SYNC_GROUP, body)
        answer = self.classic().sync(body)
        if isinstance(answer, dict):
            return answer
        return await answer

    def classic_heartbeat(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        self._fence(ctx, ApiKey.HEARTBEAT, body)
        return self.classic().heartbeat(body)

    def leave_group(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        self._fence(ctx, ApiKey.LEAVE_GROUP, body)
        return self.classic().leave(body)

    async def delete_groups(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        coord = self.coordinator()
        out = []
        for group in body["groups"]:
            try:
                if self._classic is not None and self._classic.has_members(group):
                    raise NonEmptyGroupError(f"group {group} has classic-protocol members")
                records = coord.delete_group(group, live_offsets(self.host.state, group),
                                             self.host.clock.wall_ms())
                if records:
                    await self._enqueue(records)
                out.append({"group_id": group, "error": 0, "msg": None})
            except DmqError as exc:
                out.append({"group_id": group, "error": int(exc.code), "msg": exc.message})
        return {"groups": out}

    async def reset_offsets(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        coord = self.coordinator()
        group = body["group_id"]
        _check_commit(group, "", body["topics"])
        coord.check_empty(group)
        topics = [[t, [[p, o, None] for p, o in parts]] for t, parts in body["topics"]]
        records, results = _plan_commit(self.host.state, group, topics,
                                        self.host.clock.wall_ms())
        if records and not body["dry_run"]:
            await self._enqueue(records)
        wanted = {(t, p): o for t, parts in body["topics"] for p, o in parts}
        return {"topics": [[t, [[p, wanted[(t, p)], err] for p, err in rows]]
                           for t, rows in results]}


def _check_commit(group: str, member_id: str, topics: list[list[Any]]) -> None:
    """Refuse a commit whose ids or partition count pass the bounds, before any work."""
    check_group_id(group)
    check_member_ids(member_id)
    count = sum(len(parts) for _, parts in topics)
    if count > MAX_COMMIT_PARTITIONS:
        raise InvalidRequestError(f"the commit names {count} partitions; at most "
                                  f"{MAX_COMMIT_PARTITIONS} per request")


def _classic_topics(group: ClassicGroup, names: list[str]) -> set[str]:
    """The topics among `names` a classic group with members consumes: those in its
    members' consumer-protocol assignments; all of them for another protocol type, or
    while a member has no assignment yet (Kafka's rule: unknown counts as subscribed)."""
    if group.protocol_type != "consumer" or any(not m.assignment
                                                for m in group.members.values()):
        return set(names)
    out: set[str] = set()
    for m in group.members.values():
        out |= {t for t, _ in decode_consumer_assignment(m.assignment)}
    return out & set(names)


def _estimated_bytes(record: Record) -> int:
    """About the encoded size of a record (offset commits by their rows)."""
    if isinstance(record, OffsetCommit):
        return 32 + len(record.group) + sum(
            24 + len(t) + (len(m) * 4 if m else 0) for t, _, _, m in record.offsets)
    return 256


def _plan_commit(state: MetadataState, group: str, topics: list[list[Any]], commit_ms: int,
                 max_metadata_bytes: int | None = None
                 ) -> tuple[list[Record], list[list[Any]]]:
    """Records for a commit and the per-partition results, by the planner's rules
    (metadata too large, unknown partition, negative offset)."""
    return Planner(state, _no_settings).commit_offsets(group, topics, commit_ms,
                                                       max_metadata_bytes)


def _no_settings(key: str) -> Any:
    raise AssertionError(f"commit_offsets reads no setting ({key})")


def _log_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("group records not proposed: %s", fut.exception())


class ControllerGroupHost:
    """`GroupHost` over a `dmq.controller.service.ControllerService`, through its
    public surface only: `state`, `clock`, `config`, `raft.status()`, `is_active`,
    `leader_hint()` and `mutate()` (serialized with every other controller write)."""

    def __init__(self, controller: Any) -> None:
        self.controller = controller
        self.clock: Clock = controller.clock

    @property
    def state(self) -> MetadataState:
        return self.controller.state  # type: ignore[no-any-return]

    def active_term(self) -> int | None:
        if not self.controller.is_active:
            return None
        return int(self.controller.raft.status()["term"])

    def not_active_error(self) -> DmqError:
        if self.controller.raft.status()["role"] == "LEADER":
            return RaftNotReadyError("controller was just elected and is catching up")
        return NotControllerError("the group coordinator is the active controller",
                                  leader=self.controller.leader_hint())

    def setting(self, key: str) -> Any:
        return self.controller.config.get(key)

    async def propose(self, records: list[Record]) -> None:
        await self.controller.mutate(lambda: (records, None))


def register_group_handlers(server: Any, controller: Any = None, *,
                            host: GroupHost | None = None,
                            guard: Callable[[ApiKey, Any], Any] | None = None) -> GroupService:
    """Register the group APIs on `server` for a `ControllerService` (or any
    `GroupHost`), each through `guard(key, handler)` when given (the ACL check). The
    returned service stops by itself when the node stops leading; `close()` stops it
    for good."""
    if host is None:
        assert controller is not None, "register_group_handlers needs a controller or host"
        host = ControllerGroupHost(controller)
    svc = GroupService(host)
    handlers: dict[ApiKey, Any] = {
        ApiKey.CONSUMER_GROUP_HEARTBEAT: svc.heartbeat,
        ApiKey.OFFSET_COMMIT: svc.offset_commit,
        ApiKey.OFFSET_FETCH: svc.offset_fetch,
        ApiKey.OFFSET_DELETE: svc.offset_delete,
        ApiKey.LIST_GROUPS: svc.list_groups,
        ApiKey.DESCRIBE_GROUPS: svc.describe_groups,
        ApiKey.DELETE_GROUPS: svc.delete_groups,
        ApiKey.RESET_OFFSETS: svc.reset_offsets,
        ApiKey.JOIN_GROUP: svc.join_group,
        ApiKey.SYNC_GROUP: svc.sync_group,
        ApiKey.HEARTBEAT: svc.classic_heartbeat,
        ApiKey.LEAVE_GROUP: svc.leave_group,
    }
    for key, handler in handlers.items():
        server.register(key, handler if guard is None else guard(key, handler))
    return svc


__all__ = [
    "ControllerGroupHost",
    "GroupHost",
    "GroupService",
    "live_offsets",
    "register_group_handlers",
]
