"""The consumer group coordinator: membership, target assignment and reconciliation.

One `GroupCoordinator` lives on the active controller. It is a deterministic object:
time comes from the injected `Clock`, topics from an injected `TopicsView`, member ids
from an injected `random.Random`; no sockets, no asyncio, no Raft. The service
(`dmq.controller.group_service`) feeds it requests and proposes the records it returns.

Membership is soft state, in the spirit of Kafka's KIP-848 consumer protocol:

- ``heartbeat()`` is the one membership call. Epoch 0 joins, a positive epoch keeps
  alive, -1 leaves, -2 is a static member leaving for a restart (its partitions are
  kept for it until its session times out).
- The *group epoch* moves on every join, leave, fencing, subscription change and
  partition-count change of a subscribed topic. Whenever it is ahead of the
  *assignment epoch*, the assignor (`dmq.controller.assignor`) computes a new target
  assignment from the previous one, and the assignment epoch catches up.
- Each member reconciles towards its target one step per heartbeat:

      STABLE --target moved--> REVOKING   (told its assignment without the partitions
         ^                        |        it must give up; epoch unchanged)
         |      owned no longer   |
         |      holds them  <-----+        (deadline: rebalance_timeout_ms, else fenced)
         |                        v
         +--- all target partitions free --- epoch := assignment epoch; gets the target
              partitions nobody else holds; the rest arrive on later heartbeats, as
              their previous holders release them

  A partition is therefore never held by two members: it is given to a new owner only
  after its old owner heartbeats without it, or is removed (left, fenced, timed out).
- Members silent for ``session_timeout_ms`` are fenced by ``poll()``.
- Static membership: a member joining with an ``instance_id`` whose previous member
  left with epoch -2 takes over its member epoch and assignment, without a rebalance.
  A live holder of the instance id makes the join fail with UNRELEASED_INSTANCE_ID.

Failover: a newly active coordinator knows no members. During its first session
timeout it *adopts* a member that heartbeats with an unknown id and a positive epoch
(it keeps the partitions it owns, if nobody else claimed them), and it hands out
partitions nobody claims only once that window is over, so a partition held by a
member that has not heartbeated yet is not given to a second one.

Offsets live in the metadata state machine (`MetadataState.offsets`), replicated through
Raft. This module validates commits (member epoch fencing) and builds the records that
delete offsets (an OFFSET_COMMIT with offset -1 is a tombstone: readers treat it as no
committed offset); the planner builds commit records, the service proposes them.

It never does I/O, never reads the wall clock except through `Clock`, never imports
asyncio.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from dmq.clock import Clock
from dmq.controller.assignor import (
    MemberSpec,
    TopicPartition,
    UnknownAssignorError,
    get_assignor,
)
from dmq.metadata.records import OffsetCommit, Record
from dmq.protocol.errors import (
    FencedInstanceIdError,
    FencedMemberEpochError,
    GroupIdNotFoundError,
    GroupMaxSizeReachedError,
    InvalidGroupIdError,
    InvalidRequestError,
    InvalidSessionTimeoutError,
    NonEmptyGroupError,
    StaleMemberEpochError,
    UnknownMemberIdError,
    UnreleasedInstanceIdError,
    UnsupportedAssignorError,
)

log = logging.getLogger("dmq.controller.groups")

JOIN_EPOCH = 0
LEAVE_EPOCH = -1
STATIC_LEAVE_EPOCH = -2
NO_OFFSET = -1  # an OFFSET_COMMIT of this offset deletes the committed offset

# group states, as `dmq groups list` shows them (Kafka's names)
EMPTY = "Empty"
ASSIGNING = "Assigning"
RECONCILING = "Reconciling"
STABLE = "Stable"
DEAD = "Dead"

# member states
M_STABLE = "stable"
M_REVOKING = "revoking"
M_AWAITING = "awaiting"  # epoch is current, some target partitions are still held

MIN_SESSION_TIMEOUT_MS = 1000
MAX_SESSION_TIMEOUT_MS = 3_600_000
MAX_MEMBERS_PER_GROUP = 10_000
# Lengths of the ids a client chooses: they are kept in memory per member and (group
# ids) in every committed-offset record, so each has a bound (Kafka bounds none of
# them below its 32,767-byte strings; 255 is far above any real name).
MAX_GROUP_ID_CHARS = 255
MAX_MEMBER_ID_CHARS = 255  # member ids and group instance ids
MAX_CLIENT_ID_CHARS = 255
RECONCILING_HEARTBEAT_MS = 200


class TopicsView(Protocol):
    """What the coordinator reads of cluster metadata."""

    def metadata_version(self) -> int: ...

    def partition_counts(self) -> Mapping[str, int]: ...


@dataclass(slots=True)
class Member:
    member_id: str
    instance_id: str | None
    client_id: str
    host: str
    member_epoch: int = 0
    previous_epoch: int = -1
    topics: frozenset[str] = frozenset()
    pattern: str | None = None
    session_timeout_ms: int = 10_000
    rebalance_timeout_ms: int = 60_000
    last_heartbeat_ms: int = 0
    state: str = M_STABLE
    assigned: set[TopicPartition] = field(default_factory=set)
    revoking: set[TopicPartition] = field(default_factory=set)
    revoke_deadline_ms: int = 0
    departed: bool = False  # a static member that left with epoch -2
    # adopted after a failover from a heartbeat without a subscription ("nil: unchanged"
    # means nothing to a coordinator that never saw the member join)
    subscription_unknown: bool = False
    # the partitions the member last said it owns: a heartbeat without `owned` (nil:
    # unchanged, as Kafka's consumers send it once reconciled) means these
    owned: set[TopicPartition] | None = None


@dataclass(slots=True)
class Group:
    group_id: str
    assignor: str | None = None
    group_epoch: int = 0
    assignment_epoch: int = 0
    members: dict[str, Member] = field(default_factory=dict)
    instances: dict[str, str] = field(default_factory=dict)  # instance id -> member id
    target: dict[str, frozenset[TopicPartition]] = field(default_factory=dict)
    holders: dict[TopicPartition, str] = field(default_factory=dict)
    subscribed: tuple[tuple[str, int], ...] = ()  # (topic, partition count) assigned for
    metadata_version: int = -1
    dirty: bool = False  # the group epoch must move before the next assignment

    def state(self) -> str:
        if not self.members:
            return EMPTY
        if self.dirty or self.assignment_epoch < self.group_epoch:
            return ASSIGNING
        if any(m.member_epoch != self.assignment_epoch or m.state != M_STABLE
               for m in self.members.values()):
            return RECONCILING
        return STABLE


@dataclass(frozen=True, slots=True)
class HeartbeatResult:
    member_id: str
    member_epoch: int
    heartbeat_interval_ms: int
    assignment: dict[str, list[int]] | None
    # the assignment or epoch differs from what the member had before this heartbeat,
    # or from what it last said it owns (an answer lost on the way is sent again):
    # Kafka's coordinator sends the assignment only then, or on a full request
    changed: bool = True

    def to_body(self) -> dict[str, Any]:
        return {"member_id": self.member_id, "member_epoch": self.member_epoch,
                "heartbeat_interval_ms": self.heartbeat_interval_ms,
                "assignment": None if self.assignment is None else
                [[t, ps] for t, ps in sorted(self.assignment.items())],
                "changed": self.changed}


def _by_topic(tps: Iterable[TopicPartition]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for topic, p in sorted(tps):
        out.setdefault(topic, []).append(p)
    return out


def owned_from_wire(owned: list[list[Any]] | None) -> set[TopicPartition] | None:
    if owned is None:
        return None
    return {(str(t), int(p)) for t, parts in owned for p in parts}


def check_group_id(group_id: str) -> None:
    if not group_id:
        raise InvalidGroupIdError("group_id must not be empty")
    if len(group_id) > MAX_GROUP_ID_CHARS:
        raise InvalidGroupIdError(f"group_id is {len(group_id)} chars; at most "
                                  f"{MAX_GROUP_ID_CHARS} allowed")


def check_member_ids(member_id: str, instance_id: str | None = None,
                     client_id: str = "") -> None:
    for what, value, limit in (("member_id", member_id, MAX_MEMBER_ID_CHARS),
                               ("instance_id", instance_id or "", MAX_MEMBER_ID_CHARS),
                               ("client_id", client_id, MAX_CLIENT_ID_CHARS)):
        if len(value) > limit:
            raise InvalidRequestError(f"{what} is {len(value)} chars; at most {limit} allowed")


class GroupCoordinator:
    def __init__(self, clock: Clock, topics: TopicsView, *,
                 heartbeat_interval_ms: int = 1000, rng: random.Random | None = None,
                 adopt_window_ms: int = 0, hold_groups: Iterable[str] = ()) -> None:
        self.clock = clock
        self.topics = topics
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.rng = rng or random.Random()
        self.groups: dict[str, Group] = {}
        self.active_since_ms = clock.monotonic_ms()
        # failover: members of the previous coordinator are adopted during this window,
        # and unclaimed partitions of `hold_groups` (groups with committed offsets) are
        # handed out only after it
        self.adopt_window_ms = adopt_window_ms
        self.hold_groups = frozenset(hold_groups)
        self.fenced_members = 0  # counters for metrics and tests
        self.assignments_computed = 0

    # ---- membership ----------------------------------------------------------------
    def heartbeat(self, group_id: str, member_id: str, member_epoch: int, *,
                  instance_id: str | None = None, rebalance_timeout_ms: int | None = 60_000,
                  session_timeout_ms: int = 10_000, topics: list[str] | None = None,
                  pattern: str | None = None, owned: set[TopicPartition] | None = None,
                  assignor: str | None = None, client_id: str = "",
                  host: str = "") -> HeartbeatResult:
        """One ConsumerGroupHeartbeat. Raises a `DmqError` for the error answers.
        `rebalance_timeout_ms` None and `owned` None: unchanged since the last one."""
        check_group_id(group_id)
        check_member_ids(member_id, instance_id, client_id)
        if not MIN_SESSION_TIMEOUT_MS <= session_timeout_ms <= MAX_SESSION_TIMEOUT_MS:
            raise InvalidSessionTimeoutError(
                f"session_timeout_ms must be in [{MIN_SESSION_TIMEOUT_MS}, "
                f"{MAX_SESSION_TIMEOUT_MS}]")
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise InvalidRequestError(f"bad subscription pattern: {exc}") from None
        if assignor is not None:
            try:  # an unknown name fails before any state changes
                get_assignor(assignor)
            except UnknownAssignorError as exc:
                raise UnsupportedAssignorError(str(exc)) from None
        now = self.clock.monotonic_ms()

        if member_epoch in (LEAVE_EPOCH, STATIC_LEAVE_EPOCH):
            return self._leave(group_id, member_id, member_epoch, now)

        group = self.groups.get(group_id)
        if group is None:
            group = self.groups[group_id] = Group(group_id)
        if assignor is not None and assignor != group.assignor:
            group.assignor = assignor
            self._bump(group)

        if member_epoch == JOIN_EPOCH:
            member = self._join(group, member_id, instance_id, client_id, host, owned, now)
        else:
            member = self._existing(group, member_id, member_epoch, instance_id, owned, now)
        before = (member.member_epoch, frozenset(member.assigned))
        if owned is None:
            owned = member.owned
        else:
            member.owned = owned
        member.last_heartbeat_ms = now
        member.session_timeout_ms = session_timeout_ms
        if rebalance_timeout_ms is not None:
            member.rebalance_timeout_ms = rebalance_timeout_ms
        if member.subscription_unknown:
            if topics is None and pattern is None:
                # an empty subscription would take everything away from it for good:
                # keep what it claimed and answer epoch 0, so it rejoins with its topics
                return HeartbeatResult(member.member_id, JOIN_EPOCH,
                                       min(self.heartbeat_interval_ms, RECONCILING_HEARTBEAT_MS),
                                       _by_topic(member.assigned))
            member.subscription_unknown = False
        if topics is not None or pattern is not None:
            new_topics = frozenset(topics or ())
            if new_topics != member.topics or pattern != member.pattern:
                member.topics = new_topics
                member.pattern = pattern
                self._bump(group)

        self._maybe_refresh_metadata(group)
        self._maybe_assign(group)
        self._reconcile(group, member, owned, now)
        # a member that is still converging comes back sooner, so that partitions move
        # in a fraction of the heartbeat interval
        interval = self.heartbeat_interval_ms if member.state == M_STABLE else \
            min(self.heartbeat_interval_ms, RECONCILING_HEARTBEAT_MS)
        changed = before != (member.member_epoch, frozenset(member.assigned)) or (
            owned is not None and owned != member.assigned)
        return HeartbeatResult(member.member_id, member.member_epoch, interval,
                               _by_topic(member.assigned), changed or member_epoch == JOIN_EPOCH)

    def _new_member_id(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def _join(self, group: Group, member_id: str, instance_id: str | None, client_id: str,
              host: str, owned: set[TopicPartition] | None, now: int) -> Member:
        if len(group.members) >= MAX_MEMBERS_PER_GROUP:
            raise GroupMaxSizeReachedError(f"group {group.group_id} has "
                                           f"{MAX_MEMBERS_PER_GROUP} members, the most allowed")
        if instance_id is not None and instance_id in group.instances:
            old = group.members[group.instances[instance_id]]
            if not old.departed and old.member_id != member_id:
                raise UnreleasedInstanceIdError(
                    f"instance {instance_id} is held by member {old.member_id}")
            # a static member back from a restart takes over its predecessor's place
            new_id = member_id or self._new_member_id()
            self._rename(group, old, new_id)
            old.departed = False
            old.client_id, old.host = client_id, host
            log.info("group=%s static member %s rejoined as %s (epoch %d)", group.group_id,
                     instance_id, new_id, old.member_epoch)
            return old
        if member_id and member_id in group.members:
            # the member lost its state (restart without a static id): start it afresh
            self._remove(group, group.members[member_id], "rejoined with epoch 0")
        member = Member(member_id or self._new_member_id(), instance_id, client_id, host)
        group.members[member.member_id] = member
        if instance_id is not None:
            group.instances[instance_id] = member.member_id
        self._claim(group, member, owned)
        self._bump(group)
        return member

    def _claim(self, group: Group, member: Member, owned: set[TopicPartition] | None) -> None:
        """During the failover window a (re)joining member keeps what it owns if nobody
        else holds it; otherwise it starts with nothing."""
        if not owned or not self._in_adopt_window():
            return
        for tp in owned:
            if tp not in group.holders:
                group.holders[tp] = member.member_id
                member.assigned.add(tp)

    def _existing(self, group: Group, member_id: str, member_epoch: int,
                  instance_id: str | None, owned: set[TopicPartition] | None,
                  now: int) -> Member:
        member = group.members.get(member_id)
        if member is None:
            if instance_id is not None and instance_id in group.instances:
                raise FencedInstanceIdError(
                    f"instance {instance_id} now belongs to another member")
            if self._in_adopt_window():
                # a member of the previous coordinator: adopt it as a rejoin
                member = Member(member_id, instance_id, "", "", subscription_unknown=True)
                group.members[member_id] = member
                if instance_id is not None:
                    group.instances[instance_id] = member_id
                self._claim(group, member, owned)
                self._bump(group)
                log.info("group=%s adopted member %s after failover", group.group_id,
                         member_id)
                return member
            raise UnknownMemberIdError(f"member {member_id} is not in group {group.group_id}")
        if member.departed:
            raise UnknownMemberIdError(f"member {member_id} left the group")
        if member_epoch == member.member_epoch:
            return member
        # The previous answer may have been lost: the member still heartbeats with the
        # epoch before the last bump, owning only what it was given.
        if (member_epoch == member.previous_epoch and owned is not None
                and owned <= member.assigned):
            return member
        raise FencedMemberEpochError(
            f"member {member_id} sent epoch {member_epoch}, current is {member.member_epoch}")

    def _leave(self, group_id: str, member_id: str, member_epoch: int,
               now: int) -> HeartbeatResult:
        group = self.groups.get(group_id)
        member = None if group is None else group.members.get(member_id)
        if group is None or member is None:
            raise UnknownMemberIdError(f"member {member_id} is not in group {group_id}")
        if member_epoch == STATIC_LEAVE_EPOCH and member.instance_id is not None:
            # keep its place and partitions until its session times out
            member.departed = True
            member.last_heartbeat_ms = now
            log.info("group=%s static member %s left for a restart", group_id,
                     member.instance_id)
        else:
            self._remove(group, member, "left the group")
        return HeartbeatResult(member_id, member_epoch, self.heartbeat_interval_ms, None)

    def _rename(self, group: Group, member: Member, new_id: str) -> None:
        if new_id == member.member_id:
            return
        old_id = member.member_id
        del group.members[old_id]
        member.member_id = new_id
        group.members[new_id] = member
        if member.instance_id is not None:
            group.instances[member.instance_id] = new_id
        if old_id in group.target:
            group.target[new_id] = group.target.pop(old_id)
        for tp in member.assigned | member.revoking:
            group.holders[tp] = new_id

    def _remove(self, group: Group, member: Member, why: str) -> None:
        del group.members[member.member_id]
        if member.instance_id is not None and \
                group.instances.get(member.instance_id) == member.member_id:
            del group.instances[member.instance_id]
        for tp in member.assigned | member.revoking:
            if group.holders.get(tp) == member.member_id:
                del group.holders[tp]
        group.target.pop(member.member_id, None)
        self._bump(group)
        log.info("group=%s member %s removed: %s", group.group_id, member.member_id, why)

    def _bump(self, group: Group) -> None:
        # several changes in one request move the epoch once
        group.dirty = True

    def _in_adopt_window(self) -> bool:
        return self.clock.monotonic_ms() < self.active_since_ms + self.adopt_window_ms

    # ---- assignment ------------------------------------------------------------------
    def _resolved_topics(self, member: Member, counts: Mapping[str, int]) -> frozenset[str]:
        if member.pattern is None:
            return member.topics
        rx = re.compile(member.pattern)
        return member.topics | frozenset(t for t in counts if rx.fullmatch(t))

    def _subscription_signature(self, group: Group,
                                counts: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
        topics: set[str] = set()
        for m in group.members.values():
            topics |= self._resolved_topics(m, counts)
        return tuple(sorted((t, counts.get(t, 0)) for t in topics))

    def _maybe_refresh_metadata(self, group: Group) -> None:
        version = self.topics.metadata_version()
        if version == group.metadata_version:
            return
        group.metadata_version = version
        counts = self.topics.partition_counts()
        if self._subscription_signature(group, counts) != group.subscribed:
            self._bump(group)

    def _maybe_assign(self, group: Group) -> None:
        if group.dirty:
            group.group_epoch += 1
            group.dirty = False
        if group.assignment_epoch >= group.group_epoch:
            return
        counts = self.topics.partition_counts()
        specs = {m.member_id: MemberSpec(self._resolved_topics(m, counts),
                                         group.target.get(m.member_id, frozenset()))
                 for m in group.members.values()}
        group.target = get_assignor(group.assignor)(specs, counts)
        group.subscribed = self._subscription_signature(group, counts)
        group.assignment_epoch = group.group_epoch
        self.assignments_computed += 1
        # partitions that no longer exist are no longer held by anyone
        for tp, holder in list(group.holders.items()):
            if tp[1] >= counts.get(tp[0], 0):
                del group.holders[tp]
                m = group.members.get(holder)
                if m is not None:
                    m.assigned.discard(tp)
                    m.revoking.discard(tp)

    def _free(self, group: Group, tp: TopicPartition) -> bool:
        if tp in group.holders:
            return False
        # after a failover, a partition nobody claimed may still be consumed by a member
        # that has not heartbeated yet
        return group.group_id not in self.hold_groups or not self._in_adopt_window()

    def _reconcile(self, group: Group, member: Member, owned: set[TopicPartition] | None,
                   now: int) -> None:
        if member.revoking:
            if owned is not None and not (owned & member.revoking):
                for tp in member.revoking:
                    if group.holders.get(tp) == member.member_id:
                        del group.holders[tp]
                member.revoking.clear()
            else:
                return  # still waiting; poll() fences it past the deadline
        target = group.target.get(member.member_id, frozenset())
        if member.member_epoch != group.assignment_epoch:
            to_revoke = member.assigned - target
            if to_revoke:
                member.assigned -= to_revoke
                member.revoking = set(to_revoke)
                member.revoke_deadline_ms = now + member.rebalance_timeout_ms
                member.state = M_REVOKING
                return
            member.previous_epoch = member.member_epoch
            member.member_epoch = group.assignment_epoch
        for tp in target - member.assigned:
            if self._free(group, tp):
                group.holders[tp] = member.member_id
                member.assigned.add(tp)
        member.state = M_STABLE if member.assigned == target else M_AWAITING

    # ---- timers --------------------------------------------------------------------
    def poll(self) -> None:
        """Fence members past their session or revocation deadline; reassign groups
        whose epoch moved. Call it every few hundred milliseconds."""
        now = self.clock.monotonic_ms()
        for group in list(self.groups.values()):
            for member in list(group.members.values()):
                if now - member.last_heartbeat_ms > member.session_timeout_ms:
                    self.fenced_members += 1
                    self._remove(group, member, "session timed out")
                elif member.revoking and now > member.revoke_deadline_ms:
                    self.fenced_members += 1
                    self._remove(group, member, "did not revoke within the rebalance timeout")
            if group.members:
                self._maybe_refresh_metadata(group)
                self._maybe_assign(group)

    def next_poll_ms(self) -> int:
        """Milliseconds until the earliest deadline (for the service's timer)."""
        now = self.clock.monotonic_ms()
        due = [m.last_heartbeat_ms + m.session_timeout_ms for g in self.groups.values()
               for m in g.members.values()]
        due += [m.revoke_deadline_ms for g in self.groups.values() for m in g.members.values()
                if m.revoking]
        return max(0, min(due) - now + 1) if due else 1000

    # ---- offsets ---------------------------------------------------------------------
    def validate_commit(self, group_id: str, member_id: str, member_epoch: int) -> None:
        """Raise unless this member may commit now. A commit from outside the group
        (member_id "" and epoch -1, as `assign()` consumers and admin tools send) is
        accepted only while the group has no members."""
        group = self.groups.get(group_id)
        if not member_id and member_epoch < 0:
            if group is not None and group.members:
                raise UnknownMemberIdError(
                    f"group {group_id} has members: commits must name one")
            return
        member = None if group is None else group.members.get(member_id)
        if group is None or member is None or member.departed:
            raise UnknownMemberIdError(f"member {member_id} is not in group {group_id}")
        if member_epoch > member.member_epoch:
            raise FencedMemberEpochError(
                f"commit epoch {member_epoch} is ahead of the member's {member.member_epoch}")
        if member_epoch < member.member_epoch:
            raise StaleMemberEpochError(
                f"commit epoch {member_epoch}, member epoch is {member.member_epoch}")

    def check_empty(self, group_id: str) -> None:
        """For reset-offsets and delete: the group must have no members."""
        group = self.groups.get(group_id)
        if group is not None and group.members:
            raise NonEmptyGroupError(f"group {group_id} has {len(group.members)} members")

    def delete_group(self, group_id: str,
                     committed: Mapping[TopicPartition, Any], commit_ms: int) -> list[Record]:
        """Forget an empty group; returns the tombstones deleting its offsets."""
        self.check_empty(group_id)
        known = group_id in self.groups
        self.groups.pop(group_id, None)
        live = sorted(tp for tp, v in committed.items() if v[0] != NO_OFFSET)
        if not known and not live:
            raise GroupIdNotFoundError(f"group {group_id} does not exist")
        return tombstones(group_id, live, commit_ms)

    def expired_offsets(self, offsets: Mapping[str, Mapping[TopicPartition, Any]],
                        now_wall_ms: int, retention_ms: int) -> list[Record]:
        """Tombstones for the offsets of groups that have no members and whose newest
        commit is older than `retention_ms` (Kafka's offsets.retention.minutes)."""
        out: list[Record] = []
        if retention_ms < 0:
            return out
        for group_id, offs in offsets.items():
            group = self.groups.get(group_id)
            if group is not None and group.members:
                continue
            live = [(tp, v) for tp, v in offs.items() if v[0] != NO_OFFSET]
            if live and max(v[2] for _, v in live) + retention_ms <= now_wall_ms:
                out += tombstones(group_id, sorted(tp for tp, _ in live), now_wall_ms)
                if group is not None:
                    del self.groups[group_id]
        return out

    # ---- reading ---------------------------------------------------------------------
    def describe(self, group_id: str) -> dict[str, Any] | None:
        group = self.groups.get(group_id)
        if group is None:
            return None
        return {
            "group_id": group_id, "error": 0, "state": group.state(),
            "epoch": group.group_epoch, "assignor": group.assignor or "uniform",
            "assignment_epoch": group.assignment_epoch,
            "members": [{"member_id": m.member_id, "instance_id": m.instance_id,
                         "member_epoch": m.member_epoch, "client_id": m.client_id,
                         "host": m.host, "topics": sorted(m.topics), "pattern": m.pattern,
                         "assignment": [[t, ps] for t, ps in _by_topic(m.assigned).items()],
                         "target": [[t, ps] for t, ps in _by_topic(
                             group.target.get(m.member_id, frozenset())).items()]}
                        for _, m in sorted(group.members.items())],
        }

    def subscribed_topics(self, group_id: str, topics: Iterable[str]) -> set[str]:
        """Which of `topics` a member of the group subscribes to (by name or pattern)."""
        group = self.groups.get(group_id)
        if group is None or not group.members:
            return set()
        counts = {t: 1 for t in topics}
        out: set[str] = set()
        for m in group.members.values():
            out |= self._resolved_topics(m, counts) & counts.keys()
        return out

    def list_groups(self) -> list[dict[str, Any]]:
        return [{"group_id": g.group_id, "state": g.state(), "members": len(g.members)}
                for _, g in sorted(self.groups.items())]


def tombstones(group_id: str, tps: Iterable[TopicPartition], commit_ms: int) -> list[Record]:
    rows = tuple((t, p, NO_OFFSET, None) for t, p in tps)
    return [OffsetCommit(group_id, commit_ms, rows)] if rows else []


__all__ = [
    "ASSIGNING",
    "DEAD",
    "EMPTY",
    "JOIN_EPOCH",
    "LEAVE_EPOCH",
    "MAX_CLIENT_ID_CHARS",
    "MAX_GROUP_ID_CHARS",
    "MAX_MEMBER_ID_CHARS",
    "NO_OFFSET",
    "RECONCILING",
    "STABLE",
    "STATIC_LEAVE_EPOCH",
    "Group",
    "GroupCoordinator",
    "HeartbeatResult",
    "Member",
    "TopicsView",
    "check_group_id",
    "check_member_ids",
    "owned_from_wire",
    "tombstones",
]
