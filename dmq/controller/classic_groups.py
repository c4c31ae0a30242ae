"""Kafka's classic group protocol on the active controller: JoinGroup, SyncGroup,
Heartbeat and LeaveGroup as Kafka's classic group coordinator serves them.

Members join; when every known member has (re)joined, or the rebalance timeout ran out
(members that did not rejoin are dropped), the generation moves, one member is the
leader and gets every member's protocol metadata; the leader computes the assignment
client-side and hands it in with its SyncGroup; every member's SyncGroup is answered
with its share. Metadata and assignments are opaque bytes: groups of any protocol type
("consumer", "connect", ...) work, and the bytes go back exactly as given.

Rebalances start on a join of a new member (or of the leader, or of a member whose
protocols changed), a leave, and a session timeout. A stale generation gets
ILLEGAL_GENERATION, a heartbeat during a rebalance REBALANCE_IN_PROGRESS, an unknown
member UNKNOWN_MEMBER_ID; JoinGroup v4+ without a member id gets MEMBER_ID_REQUIRED
with the id to rejoin with. Static members (`group.instance.id`): a rejoin with the
same instance id takes over the old member (the old id is then fenced with
FENCED_INSTANCE_ID) and, in a stable group whose leader it is not, gets its previous
assignment back without a rebalance.

Membership is memory only, like dmq's own coordinator's: after a controller failover
the new coordinator knows no classic member; their next request gets UNKNOWN_MEMBER_ID
and they rejoin, as after a Kafka coordinator move. Committed offsets are in Raft.

Answers carry Kafka's error codes in the body (`error`), so a Kafka listener passes
them on unchanged. Nothing here does I/O; the only asyncio objects are the futures a
JoinGroup or SyncGroup waits on, each completed or failed by this object.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any

from dmq.clock import Clock
from dmq.controller.group_coordinator import (
    MAX_GROUP_ID_CHARS,
    MAX_MEMBER_ID_CHARS,
    MAX_MEMBERS_PER_GROUP,
    MAX_SESSION_TIMEOUT_MS,
    MIN_SESSION_TIMEOUT_MS,
)
from dmq.protocol.errors import ErrorCode

log = logging.getLogger("dmq.controller.classic_groups")

# Kafka's codes (the ones dmq's ErrorCode does not name are only ever in answers here)
NONE = 0
NOT_COORDINATOR = int(ErrorCode.NOT_COORDINATOR)
COORDINATOR_NOT_AVAILABLE = int(ErrorCode.COORDINATOR_NOT_AVAILABLE)
ILLEGAL_GENERATION = 22
INCONSISTENT_GROUP_PROTOCOL = 23
INVALID_GROUP_ID = int(ErrorCode.INVALID_GROUP_ID)
UNKNOWN_MEMBER_ID = int(ErrorCode.UNKNOWN_MEMBER_ID)
INVALID_SESSION_TIMEOUT = int(ErrorCode.INVALID_SESSION_TIMEOUT)
REBALANCE_IN_PROGRESS = 27
GROUP_MAX_SIZE_REACHED = 81
MEMBER_ID_REQUIRED = 79
FENCED_INSTANCE_ID = int(ErrorCode.FENCED_INSTANCE_ID)

EMPTY = "Empty"
PREPARING = "PreparingRebalance"
COMPLETING = "CompletingRebalance"
STABLE = "Stable"

# Classic groups one coordinator holds at once (Kafka sets no such bound; this one
# keeps JoinGroups naming ever new group ids from growing the controller's memory
# without end: each group holds at most MAX_MEMBERS_PER_GROUP members and ids). A join
# that would start one more is answered COORDINATOR_NOT_AVAILABLE, which clients retry;
# a group is dropped once it has neither members nor handed-out member ids. `poll`
# walks every group each CLASSIC_POLL_MS (100 ms): about 8 ms at this bound (one
# member each), so the bound also keeps the controller's loop mostly free.
MAX_CLASSIC_GROUPS = 10_000

# a group that was empty waits this long for more members before its first generation
# (Kafka's group.initial.rebalance.delay.ms is 3 s; members starting together then get
# one generation instead of one each)
INITIAL_REBALANCE_DELAY_MS = 500


@dataclass(slots=True)
class ClassicMember:
    member_id: str
    instance_id: str | None
    client_id: str
    host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocols: list[tuple[str, bytes]]
    last_seen_ms: int
    assignment: bytes = b""
    join: asyncio.Future[dict[str, Any]] | None = None
    sync: asyncio.Future[dict[str, Any]] | None = None


@dataclass(slots=True)
class ClassicGroup:
    group_id: str
    protocol_type: str | None = None
    protocol_name: str | None = None
    state: str = EMPTY
    generation: int = 0
    leader: str | None = None
    members: dict[str, ClassicMember] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)  # MEMBER_ID_REQUIRED ids: expiry
    static: dict[str, str] = field(default_factory=dict)  # instance id -> member id
    join_deadline_ms: int = 0
    join_not_before_ms: int = 0


class ClassicGroups:
    """Every classic group of one term of the active controller."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.groups: dict[str, ClassicGroup] = {}

    # ---- queries ------------------------------------------------------------------
    def has_members(self, group_id: str) -> bool:
        g = self.groups.get(group_id)
        return g is not None and bool(g.members)

    def commit_error(self, group_id: str, member_id: str, generation: int) -> int | None:
        """None when the group is not a classic group with members and the commit comes
        from outside (then dmq's coordinator rules); else Kafka's answer to the commit."""
        g = self.groups.get(group_id)
        if g is None or (not g.members and not member_id and generation < 0):
            return None
        if not g.members:
            return None if not member_id else UNKNOWN_MEMBER_ID
        if member_id not in g.members:
            return UNKNOWN_MEMBER_ID
        if generation != g.generation:
            return ILLEGAL_GENERATION
        if g.state == COMPLETING:
            return REBALANCE_IN_PROGRESS
        return NONE

    # ---- JoinGroup ----------------------------------------------------------------
    def join(self, body: dict[str, Any]) -> dict[str, Any] | asyncio.Future[dict[str, Any]]:
        gid = body["group_id"]
        mid = body["member_id"]
        iid = body.get("instance_id")
        ptype = body["protocol_type"]
        protocols = [(str(n), bytes(m)) for n, m in body["protocols"]]
        session = body["session_timeout_ms"]
        if not gid or len(gid) > MAX_GROUP_ID_CHARS:
            return _join_error(INVALID_GROUP_ID, mid)
        if len(mid) > MAX_MEMBER_ID_CHARS or (iid is not None and len(iid) > MAX_MEMBER_ID_CHARS):
            return _join_error(UNKNOWN_MEMBER_ID, mid)
        if not MIN_SESSION_TIMEOUT_MS <= session <= MAX_SESSION_TIMEOUT_MS:
            return _join_error(INVALID_SESSION_TIMEOUT, mid)
        g = self.groups.get(gid)
        if g is None:
            if len(self.groups) >= MAX_CLASSIC_GROUPS:
                log.warning("classic group %s refused: %d classic groups held "
                            "(MAX_CLASSIC_GROUPS)", gid, len(self.groups))
                return _join_error(COORDINATOR_NOT_AVAILABLE, mid)
            g = self.groups[gid] = ClassicGroup(gid)
        others = [m for m in g.members.values() if m.member_id != mid]
        theirs: set[str] = set()
        if others:
            theirs = {n for n, _ in others[0].protocols}
            for m in others[1:]:
                theirs &= {n for n, _ in m.protocols}
        if not protocols or (others and (g.protocol_type != ptype
                                         or not {n for n, _ in protocols} & theirs)):
            return _join_error(INCONSISTENT_GROUP_PROTOCOL, mid)
        if not others:
            g.protocol_type = ptype
        now = self.clock.monotonic_ms()
        rebalance_ms = body["rebalance_timeout_ms"]
        if rebalance_ms <= 0:
            rebalance_ms = session
        if iid is not None and mid == "":
            old_id = g.static.get(iid)
            new_id = f"{iid}-{uuid.uuid4()}"
            old = g.members.pop(old_id, None) if old_id is not None else None
            g.static[iid] = new_id
            if old is not None:
                _fail(old, FENCED_INSTANCE_ID)
                old.member_id = new_id
                g.members[new_id] = old
                if g.leader == old_id:
                    g.leader = new_id
                # a restarted static member: its assignment, without a rebalance when
                # nothing changed
                return self._rejoin(g, old, protocols, session, rebalance_ms, now)
            mid = new_id
        elif iid is not None and g.static.get(iid) not in (None, mid):
            return _join_error(FENCED_INSTANCE_ID, mid)
        elif mid == "":
            mid = f"{body.get('client_id') or 'member'}-{uuid.uuid4()}"
            if body.get("require_known_member_id"):
                if len(g.pending) + len(g.members) >= MAX_MEMBERS_PER_GROUP:
                    return _join_error(GROUP_MAX_SIZE_REACHED, "")
                g.pending[mid] = now + session
                return _join_error(MEMBER_ID_REQUIRED, mid)
        elif mid not in g.members and mid not in g.pending:
            return _join_error(UNKNOWN_MEMBER_ID, mid)
        g.pending.pop(mid, None)
        member = g.members.get(mid)
        if member is None:
            if len(g.members) >= MAX_MEMBERS_PER_GROUP:
                return _join_error(GROUP_MAX_SIZE_REACHED, mid)
            member = g.members[mid] = ClassicMember(
                mid, iid, body.get("client_id", ""), body.get("host", ""), session,
                rebalance_ms, protocols, now)
            if iid is not None:
                g.static[iid] = mid
            return self._join_and_wait(g, member, now)
        return self._rejoin(g, member, protocols, session, rebalance_ms, now)

    def _rejoin(self, g: ClassicGroup, member: ClassicMember,
                protocols: list[tuple[str, bytes]], session: int, rebalance_ms: int, now: int
                ) -> dict[str, Any] | asyncio.Future[dict[str, Any]]:
        """A known member joins again: in a stable group, with the same protocols and
        not as the leader, it is answered its current generation at once; else a
        rebalance."""
        unchanged = member.protocols == protocols
        member.protocols, member.last_seen_ms = protocols, now
        member.session_timeout_ms, member.rebalance_timeout_ms = session, rebalance_ms
        if g.state == STABLE and unchanged and g.leader != member.member_id:
            return self._join_answer(g, member, with_members=False)
        return self._join_and_wait(g, member, now)

    def _join_and_wait(self, g: ClassicGroup, member: ClassicMember, now: int
                       ) -> asyncio.Future[dict[str, Any]]:
        if member.join is not None and not member.join.done():
            member.join.set_result(_join_error(UNKNOWN_MEMBER_ID, member.member_id))
        member.join = asyncio.get_running_loop().create_future()
        if g.state != PREPARING:
            self._prepare(g, now)
        else:
            g.join_deadline_ms = max(g.join_deadline_ms, now + member.rebalance_timeout_ms)
        fut = member.join
        self._maybe_complete_join(g, now)
        return fut

    def _prepare(self, g: ClassicGroup, now: int) -> None:
        """Start a rebalance: members must rejoin within their rebalance timeout."""
        for m in g.members.values():
            if m.sync is not None and not m.sync.done():
                m.sync.set_result(_sync_answer(g, REBALANCE_IN_PROGRESS, b""))
            m.sync = None
        if g.state == EMPTY:
            g.join_not_before_ms = now + INITIAL_REBALANCE_DELAY_MS
        g.state = PREPARING
        g.join_deadline_ms = now + max((m.rebalance_timeout_ms for m in g.members.values()),
                                       default=0)

    def _maybe_complete_join(self, g: ClassicGroup, now: int) -> None:
        if g.state != PREPARING:
            return
        everyone = all(m.join is not None for m in g.members.values())
        if (everyone and now >= g.join_not_before_ms) or now >= g.join_deadline_ms:
            self._complete_join(g, now)

    def _complete_join(self, g: ClassicGroup, now: int) -> None:
        for mid in [mid for mid, m in g.members.items() if m.join is None]:
            log.info("classic group %s: member %s did not rejoin in time", g.group_id, mid)
            self._remove(g, mid, UNKNOWN_MEMBER_ID)
        g.generation += 1
        if not g.members:
            g.state, g.leader, g.protocol_name, g.protocol_type = EMPTY, None, None, None
            return
        g.protocol_name = self._choose_protocol(g)
        if g.leader not in g.members:
            g.leader = next(iter(g.members))
        g.state = COMPLETING
        for m in g.members.values():
            m.last_seen_ms = now
            m.assignment = b""
            fut, m.join = m.join, None
            if fut is not None and not fut.done():
                fut.set_result(self._join_answer(g, m, with_members=m.member_id == g.leader))

    def _choose_protocol(self, g: ClassicGroup) -> str:
        """Kafka's rule: each member votes for its most preferred protocol all support."""
        members = list(g.members.values())
        common = {n for n, _ in members[0].protocols}
        for m in members[1:]:
            common &= {n for n, _ in m.protocols}
        votes: dict[str, int] = {}
        for m in g.members.values():
            pick = next(n for n, _ in m.protocols if n in common)
            votes[pick] = votes.get(pick, 0) + 1
        return max(sorted(votes), key=lambda n: votes[n])

    def _join_answer(self, g: ClassicGroup, m: ClassicMember, with_members: bool
                     ) -> dict[str, Any]:
        members = []
        if with_members:
            for other in g.members.values():
                meta = next((b for n, b in other.protocols if n == g.protocol_name), b"")
                members.append([other.member_id, other.instance_id, meta])
        return {"error": NONE, "generation": g.generation, "protocol_type": g.protocol_type,
                "protocol_name": g.protocol_name, "leader": g.leader or "",
                "member_id": m.member_id, "members": members}

    # ---- SyncGroup ----------------------------------------------------------------
    def sync(self, body: dict[str, Any]) -> dict[str, Any] | asyncio.Future[dict[str, Any]]:
        g = self.groups.get(body["group_id"])
        mid = body["member_id"]
        iid = body.get("instance_id")
        if g is not None and iid is not None and g.static.get(iid) not in (None, mid):
            return _sync_answer(g, FENCED_INSTANCE_ID, b"")
        m = None if g is None else g.members.get(mid)
        if g is None or m is None:
            return {"error": UNKNOWN_MEMBER_ID, "protocol_type": None, "protocol_name": None,
                    "assignment": b""}
        if body["generation"] != g.generation:
            return _sync_answer(g, ILLEGAL_GENERATION, b"")
        if ((body.get("protocol_type") not in (None, g.protocol_type))
                or (body.get("protocol_name") not in (None, g.protocol_name))):
            return _sync_answer(g, INCONSISTENT_GROUP_PROTOCOL, b"")
        m.last_seen_ms = self.clock.monotonic_ms()
        if g.state == PREPARING:
            return _sync_answer(g, REBALANCE_IN_PROGRESS, b"")
        if g.state == STABLE:
            return _sync_answer(g, NONE, m.assignment)
        if mid == g.leader:
            given = {member_id: bytes(a) for member_id, a in body["assignments"]}
            g.state = STABLE
            for other in g.members.values():
                other.assignment = given.get(other.member_id, b"")
                fut, other.sync = other.sync, None
                if fut is not None and not fut.done():
                    fut.set_result(_sync_answer(g, NONE, other.assignment))
            return _sync_answer(g, NONE, m.assignment)
        if m.sync is not None and not m.sync.done():
            m.sync.set_result(_sync_answer(g, REBALANCE_IN_PROGRESS, b""))
        m.sync = asyncio.get_running_loop().create_future()
        return m.sync

    # ---- Heartbeat, LeaveGroup ------------------------------------------------------
    def heartbeat(self, body: dict[str, Any]) -> dict[str, Any]:
        g = self.groups.get(body["group_id"])
        mid = body["member_id"]
        iid = body.get("instance_id")
        if g is not None and iid is not None and g.static.get(iid) not in (None, mid):
            return {"error": FENCED_INSTANCE_ID}  # an older incarnation of a static member
        m = None if g is None else g.members.get(mid)
        if g is None or m is None:
            return {"error": UNKNOWN_MEMBER_ID}
        if body["generation"] != g.generation:
            return {"error": ILLEGAL_GENERATION}
        m.last_seen_ms = self.clock.monotonic_ms()
        return {"error": REBALANCE_IN_PROGRESS if g.state == PREPARING else NONE}

    def leave(self, body: dict[str, Any]) -> dict[str, Any]:
        g = self.groups.get(body["group_id"])
        out = []
        left = False
        for mid, iid in body["members"]:
            code = UNKNOWN_MEMBER_ID
            if g is not None:
                if iid is not None:
                    known = g.static.get(iid)
                    if known is None:
                        code = UNKNOWN_MEMBER_ID
                    elif mid and known != mid:
                        code = FENCED_INSTANCE_ID
                    else:
                        mid = known
                        g.static.pop(iid, None)
                        code = NONE
                elif mid in g.members:
                    code = NONE
                if code == NONE and mid in g.members:
                    self._remove(g, mid, UNKNOWN_MEMBER_ID)
                    left = True
            out.append([mid, iid, code])
        if g is not None and left:
            self._after_departure(g)
        return {"error": NONE, "members": out}

    def _remove(self, g: ClassicGroup, mid: str, code: int) -> None:
        m = g.members.pop(mid)
        if m.instance_id is not None and g.static.get(m.instance_id) == mid:
            del g.static[m.instance_id]
        _fail(m, code)

    def _after_departure(self, g: ClassicGroup) -> None:
        now = self.clock.monotonic_ms()
        if not g.members:
            if g.state != EMPTY:
                g.generation += 1
            g.state, g.leader, g.protocol_name, g.protocol_type = EMPTY, None, None, None
        elif g.state in (STABLE, COMPLETING):
            self._prepare(g, now)
        else:
            self._maybe_complete_join(g, now)

    # ---- timers ---------------------------------------------------------------------
    def poll(self) -> None:
        """Session timeouts, rebalance deadlines, expired MEMBER_ID_REQUIRED ids."""
        now = self.clock.monotonic_ms()
        for g in list(self.groups.values()):
            for mid in [mid for mid, t in g.pending.items() if t <= now]:
                del g.pending[mid]
            gone = [mid for mid, m in g.members.items()
                    if m.join is None and now - m.last_seen_ms > m.session_timeout_ms]
            for mid in gone:
                log.info("classic group %s: member %s session timed out", g.group_id, mid)
                self._remove(g, mid, UNKNOWN_MEMBER_ID)
            if gone:
                self._after_departure(g)
            self._maybe_complete_join(g, now)
            if g.state == EMPTY and not g.members and not g.pending:
                del self.groups[g.group_id]

    def close(self) -> None:
        """Answer every waiting member NOT_COORDINATOR (they look the coordinator up
        again and rejoin)."""
        for g in self.groups.values():
            for m in g.members.values():
                _fail(m, NOT_COORDINATOR)
        self.groups.clear()

    def describe(self, group_id: str) -> ClassicGroup | None:
        return self.groups.get(group_id)


def decode_consumer_assignment(data: bytes) -> list[list[Any]]:
    """The partitions in a "consumer" protocol assignment (Kafka's
    ConsumerProtocolAssignment: version, [topic, [partition]], user data), for
    `dmq groups describe`; [] when the bytes are not one."""
    try:
        pos = 2
        (n,) = struct.unpack_from(">i", data, pos)
        pos += 4
        out: list[list[Any]] = []
        for _ in range(max(n, 0)):
            (ln,) = struct.unpack_from(">h", data, pos)
            topic = bytes(data[pos + 2:pos + 2 + ln]).decode()
            pos += 2 + ln
            (k,) = struct.unpack_from(">i", data, pos)
            parts = list(struct.unpack_from(f">{max(k, 0)}i", data, pos + 4))
            pos += 4 + 4 * max(k, 0)
            out.append([topic, parts])
        return out
    except (struct.error, UnicodeDecodeError, ValueError):
        return []


def _fail(m: ClassicMember, code: int) -> None:
    if m.join is not None and not m.join.done():
        m.join.set_result(_join_error(code, m.member_id))
    if m.sync is not None and not m.sync.done():
        m.sync.set_result({"error": code, "protocol_type": None, "protocol_name": None,
                           "assignment": b""})
    m.join = m.sync = None


def _join_error(code: int, member_id: str) -> dict[str, Any]:
    return {"error": code, "generation": -1, "protocol_type": None, "protocol_name": None,
            "leader": "", "member_id": member_id, "members": []}


def _sync_answer(g: ClassicGroup, code: int, assignment: bytes) -> dict[str, Any]:
    return {"error": code, "protocol_type": g.protocol_type, "protocol_name": g.protocol_name,
            "assignment": assignment}


__all__ = ["MAX_CLASSIC_GROUPS", "ClassicGroup", "ClassicGroups", "ClassicMember",
           "decode_consumer_assignment"]
