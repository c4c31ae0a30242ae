"""Kafka's group APIs on a broker's Kafka listener: FindCoordinator, OffsetCommit,
OffsetFetch, OffsetDelete, the classic group protocol (JoinGroup, SyncGroup, Heartbeat,
LeaveGroup; the coordinator is `dmq.controller.classic_groups`) and the consumer group
protocol of KIP-848 (ConsumerGroupHeartbeat, ConsumerGroupDescribe; the coordinator is
dmq's own, `dmq.controller.group_coordinator`, which dmq's clients use too).

Where the coordinator lives: dmq's group coordinator (and the committed offsets, in
the Raft-replicated metadata state) is on the active controller. A broker answers
FindCoordinator with *itself* and forwards the group requests it then receives to the
active controller over the broker's controller route (`controller_request`, the path
dmq's brokers already forward admin requests on, following controller failovers), as
KRaft brokers forward to their controller. Kafka clients therefore need no
route to a controller, and a controller failover is invisible to them except as a
retriable error.

When the controller cannot be reached (no quorum, failover, timeout), a request is
answered COORDINATOR_NOT_AVAILABLE, never held: Kafka clients take that as "find the
coordinator again" and retry. Every group write forwarded (OffsetCommit, OffsetDelete,
JoinGroup, SyncGroup, Heartbeat, LeaveGroup, ConsumerGroupHeartbeat) carries the
wall-clock time at which this broker stops waiting for it (`deadline_ms`: now plus the
forward's timeout); the controller refuses it after that time. Without it, a forward
stalled in a cut link and given up on here (the client told COORDINATOR_NOT_AVAILABLE,
then committing newer offsets through another broker) was applied when the link
healed, over the newer commit: the group's committed offset went backwards. The fence
holds as long as the nodes' wall clocks agree to better than a client's retry (its
backoff plus a FindCoordinator round trip). A broker that is not registered (no metadata yet, or
fenced) answers FindCoordinator COORDINATOR_NOT_AVAILABLE itself.

Offsets committed here are the same offsets dmq's own consumers commit (same group,
same store), so `dmq groups describe` shows Kafka clients' groups and their lag. A
commit from outside a group's membership (member id "" and generation -1: a consumer
with `assign()`, or an admin tool) is accepted while the group has no members, as
dmq's coordinator rules.

KIP-848 members: a ConsumerGroupHeartbeat becomes dmq's CONSUMER_GROUP_HEARTBEAT (the
same member epochs, server-side assignment and revoke-before-reassign reconciliation),
so Kafka consumers with `group.protocol=consumer` and dmq's own consumers can share one
group. Topics travel by Kafka topic id (`dmq.kafka.topic_ids`, the ids Metadata
answers give): owned partitions are mapped to names through this broker's image, and
the assignment to ids the coordinator names in its answer. As Kafka's coordinator does,
the assignment is sent only when it (or the member epoch) changed, or on a full request
(joining, or every field set after an error); and again while the partitions the member
last reported differ from it (an answer lost on the way is not lost for good). After a
controller failover the new coordinator knows no member: a Kafka member's next heartbeat
is answered FENCED_MEMBER_EPOCH, and it rejoins (its subscription travels only with a join). Such
members commit with their member epoch in OffsetCommit's GenerationIdOrMemberEpoch. A
group is of one kind at a time: a JoinGroup into a group with consumer-protocol members
is answered INCONSISTENT_GROUP_PROTOCOL, a ConsumerGroupHeartbeat into a classic group
with members GROUP_ID_NOT_FOUND (Kafka's answer when it does not convert the group),
and ConsumerGroupDescribe of a classic group GROUP_ID_NOT_FOUND too.

It never imports the network layer.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from dmq.broker.errors import error_code_of, message_of
from dmq.clock import Clock, SystemClock
from dmq.kafka.errors import kafka_code
from dmq.kafka.server import Api
from dmq.kafka.topic_ids import TopicNames, topic_uuid
from dmq.metadata.image import FENCED, MetadataImage
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import DmqError, ErrorCode, GroupAuthorizationFailedError
from dmq.security.acl import DELETE, DESCRIBE, GROUP, READ, TOPIC, Authorizer

if TYPE_CHECKING:
    from dmq.kafka.codec import RequestHeader

log = logging.getLogger("dmq.kafka.groups")

KEY_TYPE_GROUP = 0
INVALID_REQUEST = 42
INVALID_REGULAR_EXPRESSION = 130
GROUP_ID_NOT_FOUND = int(ErrorCode.GROUP_ID_NOT_FOUND)
MEMBER_TYPE_CONSUMER = 1  # ConsumerGroupDescribe v1's MemberType of a KIP-848 member
NO_OFFSET = -1
# How long the controller route may retry (following a failover) before a group
# request is answered COORDINATOR_NOT_AVAILABLE. A commit, offset fetch, heartbeat or
# leave from a group member: 3 s covers an election (0.5-1 s at the default Raft ticks)
# and the route finding the new controller; past that the client does better to look
# the coordinator up again and retry, as it does on that answer (a commit is
# idempotent), than to wait: a held heartbeat delays the member's next one.
GROUP_ROUTE_TIMEOUT_MS = 3_000
DELETE_TIMEOUT_MS = 10_000  # DeleteGroups: an admin's Raft write, no member waiting
SYNC_TIMEOUT_MS = 60_000  # a follower's SyncGroup waits for the leader's assignment
JOIN_SLACK_MS = 5_000  # a JoinGroup waits up to its rebalance timeout, plus this

# Answers meaning "the coordinator cannot be reached now": Kafka clients re-discover
# the coordinator on COORDINATOR_NOT_AVAILABLE and retry.
_UNREACHABLE = {int(ErrorCode.NOT_CONTROLLER), int(ErrorCode.RAFT_NOT_READY),
                int(ErrorCode.REQUEST_TIMED_OUT), int(ErrorCode.NODE_SHUTTING_DOWN),
                int(ErrorCode.NOT_COORDINATOR), int(ErrorCode.NETWORK_EXCEPTION),
                int(ErrorCode.BROKER_NOT_AVAILABLE), int(ErrorCode.COORDINATOR_NOT_AVAILABLE)}

ControllerRequest = Callable[[ApiKey, Any, int], Awaitable[Any]]


def group_error_code(exc: BaseException) -> int:
    """A failed forward as the Kafka error code a group client acts on."""
    if not isinstance(exc, DmqError):
        return int(ErrorCode.COORDINATOR_NOT_AVAILABLE)  # OSError, TimeoutError
    code = int(error_code_of(exc))
    if code in _UNREACHABLE:
        return int(ErrorCode.COORDINATOR_NOT_AVAILABLE)
    return kafka_code(code)


class GroupApis:
    """The group handlers of a broker's Kafka listener, a part of `KafkaApis`: they use
    its broker id, metadata image and controller route."""

    broker_id: int
    _image: Callable[[], MetadataImage | None]
    _controller_request: ControllerRequest
    topic_names: TopicNames
    clock: Clock = SystemClock()  # the wall clock of forwards' deadlines (the node's)

    @property
    def authorizer(self) -> Authorizer | None:  # the data plane's (KafkaApis)
        raise NotImplementedError

    def _group_allowed(self, header: RequestHeader, operation: str, group: str,
                       api: str) -> bool:
        """The controller hears this broker (a node) forward, not the client: the
        group's ACLs are checked here."""
        authz = self.authorizer
        return authz is None or authz.check(header.principal, operation, GROUP, group, api)

    async def _fenced_request(self, key: ApiKey, request: dict[str, Any],
                             timeout_ms: int) -> Any:
        """A group write forwarded to the controller, fenced: the controller refuses it
        once this broker has given up waiting for it (`timeout_ms` from now), so it
        cannot take effect later."""
        request["deadline_ms"] = self.clock.wall_ms() + timeout_ms
        return await self._controller_request(key, request, timeout_ms)

    def group_table(self) -> list[Api]:
        return [
            Api(8, "OffsetCommit", 2, 9, self.offset_commit),
            Api(9, "OffsetFetch", 1, 9, self.offset_fetch),
            Api(10, "FindCoordinator", 0, 4, self.find_coordinator),
            Api(11, "JoinGroup", 2, 9, self.join_group),
            Api(12, "Heartbeat", 0, 4, self.heartbeat),
            Api(13, "LeaveGroup", 0, 5, self.leave_group),
            Api(14, "SyncGroup", 0, 5, self.sync_group),
            Api(15, "DescribeGroups", 0, 5, self.describe_groups),
            Api(16, "ListGroups", 0, 5, self.list_groups),
            Api(42, "DeleteGroups", 0, 2, self.delete_groups),
            Api(47, "OffsetDelete", 0, 0, self.offset_delete),
            Api(68, "ConsumerGroupHeartbeat", 0, 1, self.consumer_group_heartbeat),
            Api(69, "ConsumerGroupDescribe", 0, 1, self.consumer_group_describe),
        ]

    # ------------------------------------------------------------------ FindCoordinator

    def find_coordinator(self, header: RequestHeader, body: dict[str, Any]) -> Any:
        version = header.api_version
        keys = body["CoordinatorKeys"] if version >= 4 else [body["Key"]]
        key_type = body.get("KeyType", KEY_TYPE_GROUP)
        me = self._self_endpoint()
        rows = []
        for key in keys:
            if key_type != KEY_TYPE_GROUP:
                rows.append(_coordinator(key, INVALID_REQUEST,
                                         f"key type {key_type}: only group coordinators "
                                         "(key type 0) are served; dmq has no transactions"))
            elif not self._group_allowed(header, DESCRIBE, key, "FindCoordinator"):
                rows.append(_coordinator(key, int(ErrorCode.GROUP_AUTHORIZATION_FAILED),
                                         f"{header.principal} may not Describe group "
                                         f"{key!r}"))
            elif me is None:
                rows.append(_coordinator(key, int(ErrorCode.COORDINATOR_NOT_AVAILABLE),
                                         "this broker is not registered with the controller "
                                         "yet"))
            else:
                rows.append({"Key": key, "NodeId": self.broker_id, "Host": me[0],
                             "Port": me[1], "ErrorCode": 0, "ErrorMessage": None})
        if version >= 4:
            return {"ThrottleTimeMs": 0, "Coordinators": rows}
        row = rows[0]
        return {"ThrottleTimeMs": 0, "ErrorCode": row["ErrorCode"],
                "ErrorMessage": row["ErrorMessage"], "NodeId": row["NodeId"],
                "Host": row["Host"], "Port": row["Port"]}

    def _self_endpoint(self) -> tuple[str, int] | None:
        image = self._image()
        me = None if image is None else image.brokers.get(self.broker_id)
        if me is None or me.state == FENCED or me.kafka_port < 0:
            return None
        return me.kafka_host or me.host, me.kafka_port

    # ------------------------------------------------------------------ OffsetCommit

    async def offset_commit(self, header: RequestHeader, body: dict[str, Any]) -> dict[str, Any]:
        authz = self.authorizer
        denied = {t["Name"] for t in body["Topics"] if authz is not None and not authz.check(
            header.principal, READ, TOPIC, t["Name"], "OffsetCommit")}
        request = {
            "group_id": body["GroupId"], "member_id": body.get("MemberId") or "",
            "member_epoch": body.get("GenerationIdOrMemberEpoch", -1),
            "topics": [[t["Name"], [[p["PartitionIndex"], p["CommittedOffset"],
                                     p.get("CommittedMetadata")] for p in t["Partitions"]]]
                       for t in body["Topics"] if t["Name"] not in denied]}
        errors: dict[tuple[str, int], int] = {
            (t["Name"], p["PartitionIndex"]): int(ErrorCode.TOPIC_AUTHORIZATION_FAILED)
            for t in body["Topics"] if t["Name"] in denied for p in t["Partitions"]}
        failed: int | None = None
        if not self._group_allowed(header, READ, body["GroupId"], "OffsetCommit"):
            failed = int(ErrorCode.GROUP_AUTHORIZATION_FAILED)
            request["topics"] = []
        try:
            if not request["topics"]:
                raise _NothingToAsk
            resp = await self._fenced_request(ApiKey.OFFSET_COMMIT, request,
                                              GROUP_ROUTE_TIMEOUT_MS)
            for topic, rows in resp["topics"]:
                for p, err in rows:
                    errors[(topic, p)] = kafka_code(err or 0)
        except _NothingToAsk:
            pass
        except (DmqError, OSError, TimeoutError) as exc:
            failed = group_error_code(exc)
            log.info("broker=%d Kafka OffsetCommit of group %r failed: %s", self.broker_id,
                     body["GroupId"], message_of(exc))
        unknown = int(ErrorCode.UNKNOWN_SERVER_ERROR)
        return {"ThrottleTimeMs": 0, "Topics": [
            {"Name": t["Name"], "Partitions": [
                {"PartitionIndex": p["PartitionIndex"],
                 "ErrorCode": failed if failed is not None
                 else errors.get((t["Name"], p["PartitionIndex"]), unknown)}
                for p in t["Partitions"]]}
            for t in body["Topics"]]}

    # ------------------------------------------------------------------ OffsetFetch

    async def offset_fetch(self, header: RequestHeader, body: dict[str, Any]) -> dict[str, Any]:
        version = header.api_version
        if version >= 8:
            groups = [await self._fetch_group(header, g["GroupId"], g["Topics"])
                      for g in body["Groups"]]
            return {"ThrottleTimeMs": 0, "Groups": groups}
        group = await self._fetch_group(header, body["GroupId"], body["Topics"])
        code = group["ErrorCode"]
        if version < 2 and code:
            # v0-1 have no top-level error: every asked-for partition carries it
            for t in group["Topics"]:
                for p in t["Partitions"]:
                    p["ErrorCode"] = code
        return {"ThrottleTimeMs": 0, "Topics": group["Topics"], "ErrorCode": code}

    async def _fetch_group(self, header: RequestHeader, group: str,
                           topics: list[dict[str, Any]] | None) -> dict[str, Any]:
        wanted = None if topics is None else [[t["Name"], list(t["PartitionIndexes"])]
                                              for t in topics]
        try:
            if not self._group_allowed(header, DESCRIBE, group, "OffsetFetch"):
                raise GroupAuthorizationFailedError(f"{header.principal} may not Describe "
                                                    f"group {group!r}")
            resp = await self._controller_request(
                ApiKey.OFFSET_FETCH, {"group_id": group, "topics": wanted},
                GROUP_ROUTE_TIMEOUT_MS)
        except (DmqError, OSError, TimeoutError) as exc:
            log.info("broker=%d Kafka OffsetFetch of group %r failed: %s", self.broker_id,
                     group, message_of(exc))
            return {"GroupId": group, "ErrorCode": group_error_code(exc), "Topics": [
                {"Name": name, "Partitions": [_fetched(p, NO_OFFSET, None, 0)
                                              for p in parts]}
                for name, parts in (wanted or [])]}
        return {"GroupId": group, "ErrorCode": 0, "Topics": [
            {"Name": topic, "Partitions": [_fetched(p, offset, metadata, kafka_code(err or 0))
                                           for p, offset, metadata, err in rows]}
            for topic, rows in resp["topics"]]}

    # ------------------------------------------------------------------ OffsetDelete

    async def offset_delete(self, header: RequestHeader, body: dict[str, Any]) -> dict[str, Any]:
        request = {"group_id": body["GroupId"],
                   "topics": [[t["Name"], [p["PartitionIndex"] for p in t["Partitions"]]]
                              for t in body["Topics"]]}
        try:
            answer = await self._fenced_request(ApiKey.OFFSET_DELETE, request,
                                                DELETE_TIMEOUT_MS)
        except (DmqError, OSError, TimeoutError) as exc:
            log.info("broker=%d Kafka OffsetDelete of group %r failed: %s", self.broker_id,
                     body["GroupId"], message_of(exc))
            return {"ErrorCode": group_error_code(exc), "ThrottleTimeMs": 0, "Topics": []}
        return {"ErrorCode": kafka_code(answer["error"]), "ThrottleTimeMs": 0, "Topics": [
            {"Name": topic, "Partitions": [{"PartitionIndex": p, "ErrorCode": kafka_code(err)}
                                           for p, err in rows]}
            for topic, rows in answer["topics"]]}

    # ------------------------------------------------------------------ KIP-848 groups

    async def consumer_group_heartbeat(self, header: RequestHeader, body: dict[str, Any]
                                       ) -> dict[str, Any]:
        epoch = body["MemberEpoch"]
        regex = body.get("SubscribedTopicRegex")
        names, parts = body["SubscribedTopicNames"], body["TopicPartitions"]
        invalid = heartbeat_request_error(header.api_version, body)
        if invalid is not None:
            return _heartbeat_error(INVALID_REQUEST, invalid)
        if regex is not None:
            try:
                re.compile(regex)
            except re.error as exc:
                return _heartbeat_error(INVALID_REGULAR_EXPRESSION,
                                        f"SubscribedTopicRegex {regex!r}: {exc}")
        owned = None
        if parts is not None:
            by_id = self.topic_names.lookup(self._image())
            # a topic unknown here (deleted) is owned by nobody any more
            owned = [[by_id[bytes(tp["TopicId"])], list(tp["Partitions"])]
                     for tp in parts if bytes(tp["TopicId"]) in by_id]
        request = {"group_id": body["GroupId"], "member_id": body["MemberId"],
                   "member_epoch": epoch, "instance_id": body["InstanceId"],
                   "rebalance_timeout_ms": body["RebalanceTimeoutMs"],
                   "session_timeout_ms": -1, "topics": names, "pattern": regex,
                   "owned": owned, "assignor": body["ServerAssignor"],
                   "client_id": header.client_id or "", "topic_ids": True}
        try:
            answer = await self._fenced_request(ApiKey.CONSUMER_GROUP_HEARTBEAT, request,
                                                GROUP_ROUTE_TIMEOUT_MS)
        except (DmqError, OSError, TimeoutError) as exc:
            log.info("broker=%d Kafka ConsumerGroupHeartbeat of group %r failed: %s",
                     self.broker_id, body["GroupId"], message_of(exc))
            return _heartbeat_error(group_error_code(exc), message_of(exc))
        if epoch > 0 and answer["member_epoch"] == 0:
            # a coordinator new since a failover adopted the member but never saw its
            # subscription (a Kafka consumer sends it only when it changes): Kafka's
            # answer that makes it rejoin with everything
            return _heartbeat_error(int(ErrorCode.FENCED_MEMBER_EPOCH),
                                    "the group coordinator moved: rejoin the group")
        full = epoch == 0 or (body["RebalanceTimeoutMs"] != -1 and parts is not None
                              and (names is not None or regex is not None))
        assignment = None
        if answer["assignment"] is not None and (full or answer.get("changed", True)):
            ids = dict(answer.get("topic_ids") or [])
            assignment = {"TopicPartitions": [
                {"TopicId": topic_uuid(ids[t]), "Partitions": ps}
                for t, ps in answer["assignment"] if t in ids]}
        return {"ThrottleTimeMs": 0, "ErrorCode": 0, "ErrorMessage": None,
                "MemberId": answer["member_id"], "MemberEpoch": answer["member_epoch"],
                "HeartbeatIntervalMs": answer["heartbeat_interval_ms"],
                "Assignment": assignment}

    async def consumer_group_describe(self, header: RequestHeader, body: dict[str, Any]
                                      ) -> dict[str, Any]:
        names = list(body["GroupIds"])
        try:
            answer = await self._controller_request(ApiKey.DESCRIBE_GROUPS,
                                                    {"groups": names}, GROUP_ROUTE_TIMEOUT_MS)
        except (DmqError, OSError, TimeoutError) as exc:
            code, msg = group_error_code(exc), message_of(exc)
            return {"ThrottleTimeMs": 0, "Groups": [_consumer_group(n, code, msg)
                                                    for n in names]}
        image = self._image()
        topics = {} if image is None else image.topics

        def parts(rows: list[list[Any]]) -> dict[str, Any]:
            return {"TopicPartitions": [
                {"TopicId": topic_uuid(topics[t].topic_id) if t in topics else bytes(16),
                 "TopicName": t, "Partitions": sorted(ps)} for t, ps in rows]}

        out = []
        for g in answer["groups"]:
            group = g["group_id"]
            if g["error"] == GROUP_ID_NOT_FOUND:
                out.append(_consumer_group(group, GROUP_ID_NOT_FOUND,
                                           f"Group {group} not found."))
            elif g["error"]:
                out.append(_consumer_group(group, kafka_code(g["error"]), None))
            elif g.get("type") == "classic":
                out.append(_consumer_group(group, GROUP_ID_NOT_FOUND,
                                           f"Group {group} is not a consumer group."))
            else:
                out.append({
                    **_consumer_group(group, 0, None), "GroupState": g["state"],
                    "GroupEpoch": g["epoch"],
                    "AssignmentEpoch": g.get("assignment_epoch", g["epoch"]),
                    "AssignorName": g["assignor"], "Members": [
                        {"MemberId": m["member_id"], "InstanceId": m.get("instance_id"),
                         "RackId": None, "MemberEpoch": m["member_epoch"],
                         "ClientId": m.get("client_id") or "",
                         "ClientHost": m.get("host") or "",
                         "SubscribedTopicNames": list(m.get("topics") or []),
                         "SubscribedTopicRegex": m.get("pattern"),
                         "Assignment": parts(m.get("assignment") or []),
                         "TargetAssignment": parts(m.get("target") or []),
                         "MemberType": MEMBER_TYPE_CONSUMER}
                        for m in g["members"]]})
        return {"ThrottleTimeMs": 0, "Groups": out}

    # ------------------------------------------------------------------ classic groups

    async def _forward(self, header: RequestHeader, key: ApiKey, request: dict[str, Any],
                       timeout_ms: int) -> dict[str, Any] | int:
        """The controller's answer, or the Kafka error code of a failed forward (or of
        a member the group's ACLs refuse: Read on the group)."""
        if not self._group_allowed(header, READ, request["group_id"], key.name):
            return int(ErrorCode.GROUP_AUTHORIZATION_FAILED)
        try:
            answer: dict[str, Any] = await self._fenced_request(key, request, timeout_ms)
            return answer
        except (DmqError, OSError, TimeoutError) as exc:
            log.info("broker=%d Kafka %s of group %r failed: %s", self.broker_id, key.name,
                     request["group_id"], message_of(exc))
            return group_error_code(exc)

    async def join_group(self, header: RequestHeader, body: dict[str, Any]) -> dict[str, Any]:
        rebalance_ms = body.get("RebalanceTimeoutMs", -1)
        if rebalance_ms < 0:
            rebalance_ms = body["SessionTimeoutMs"]
        request = {"group_id": body["GroupId"], "member_id": body["MemberId"],
                   "session_timeout_ms": body["SessionTimeoutMs"],
                   "rebalance_timeout_ms": rebalance_ms,
                   "protocol_type": body["ProtocolType"],
                   "protocols": [[p["Name"], bytes(p["Metadata"])] for p in body["Protocols"]],
                   "instance_id": body.get("GroupInstanceId"),
                   "require_known_member_id": header.api_version >= 4,
                   "client_id": header.client_id or ""}
        answer = await self._forward(header, ApiKey.JOIN_GROUP, request,
                                     max(rebalance_ms, 0) + JOIN_SLACK_MS)
        if isinstance(answer, int):
            return {"ThrottleTimeMs": 0, "ErrorCode": answer, "GenerationId": -1,
                    "ProtocolType": None, "ProtocolName": None, "Leader": "",
                    "SkipAssignment": False, "MemberId": body["MemberId"], "Members": []}
        return {"ThrottleTimeMs": 0, "ErrorCode": answer["error"],
                "GenerationId": answer["generation"], "ProtocolType": answer["protocol_type"],
                "ProtocolName": answer["protocol_name"] if header.api_version >= 7
                else answer["protocol_name"] or "",
                "Leader": answer["leader"], "SkipAssignment": False,
                "MemberId": answer["member_id"],
                "Members": [{"MemberId": m, "GroupInstanceId": i, "Metadata": meta}
                            for m, i, meta in answer["members"]]}

    async def sync_group(self, header: RequestHeader, body: dict[str, Any]) -> dict[str, Any]:
        request = {"group_id": body["GroupId"], "generation": body["GenerationId"],
                   "member_id": body["MemberId"], "instance_id": body.get("GroupInstanceId"),
                   "protocol_type": body.get("ProtocolType"),
                   "protocol_name": body.get("ProtocolName"),
                   "assignments": [[a["MemberId"], bytes(a["Assignment"])]
                                   for a in body["Assignments"]]}
        answer = await self._forward(header, ApiKey.SYNC_GROUP, request, SYNC_TIMEOUT_MS)
        if isinstance(answer, int):
            return {"ThrottleTimeMs": 0, "ErrorCode": answer, "ProtocolType": None,
                    "ProtocolName": None, "Assignment": b""}
        return {"ThrottleTimeMs": 0, "ErrorCode": answer["error"],
                "ProtocolType": answer["protocol_type"], "ProtocolName": answer["protocol_name"],
                "Assignment": answer["assignment"]}

    async def heartbeat(self, header: RequestHeader, body: dict[str, Any]) -> dict[str, Any]:
        answer = await self._forward(header, ApiKey.HEARTBEAT, {
            "group_id": body["GroupId"], "generation": body["GenerationId"],
            "member_id": body["MemberId"], "instance_id": body.get("GroupInstanceId")},
            GROUP_ROUTE_TIMEOUT_MS)
        code = answer if isinstance(answer, int) else answer["error"]
        return {"ThrottleTimeMs": 0, "ErrorCode": code}

    async def leave_group(self, header: RequestHeader, body: dict[str, Any]) -> dict[str, Any]:
        version = header.api_version
        members = ([[body["MemberId"], None]] if version < 3 else
                   [[m["MemberId"], m.get("GroupInstanceId")] for m in body["Members"]])
        answer = await self._forward(header, ApiKey.LEAVE_GROUP, {"group_id": body["GroupId"],
                                                          "members": members},
                                     GROUP_ROUTE_TIMEOUT_MS)
        if isinstance(answer, int):
            return {"ThrottleTimeMs": 0, "ErrorCode": answer, "Members": []}
        rows = answer["members"]
        code = answer["error"]
        if version < 3 and rows and rows[0][2]:
            code = rows[0][2]  # v0-2 leave one member: its error is the answer's
        return {"ThrottleTimeMs": 0, "ErrorCode": code, "Members": [
            {"MemberId": m, "GroupInstanceId": i, "ErrorCode": err} for m, i, err in rows]}

    # ------------------------------------------------------------------ admin

    async def list_groups(self, header: RequestHeader, body: dict[str, Any]) -> dict[str, Any]:
        try:
            answer = await self._controller_request(ApiKey.LIST_GROUPS, {},
                                                    GROUP_ROUTE_TIMEOUT_MS)
        except (DmqError, OSError, TimeoutError) as exc:
            return {"ThrottleTimeMs": 0, "ErrorCode": group_error_code(exc), "Groups": []}
        answer["groups"] = [g for g in answer["groups"] if self.authorizer is None
                            or self.authorizer.allowed(header.principal, DESCRIBE, GROUP,
                                                       g["group_id"])]
        states = {x.lower() for x in body.get("StatesFilter") or []}
        types = {x.lower() for x in body.get("TypesFilter") or []}
        out = []
        for g in answer["groups"]:
            gtype = g.get("type", "consumer")
            if (states and g["state"].lower() not in states) or (
                    types and gtype not in types):
                continue
            out.append({"GroupId": g["group_id"],
                        "ProtocolType": g.get("protocol_type", "consumer"),
                        "GroupState": g["state"], "GroupType": gtype})
        return {"ThrottleTimeMs": 0, "ErrorCode": 0, "Groups": out}

    async def describe_groups(self, header: RequestHeader, body: dict[str, Any]) -> dict[str, Any]:
        names = [n for n in body["Groups"]
                 if self._group_allowed(header, DESCRIBE, n, "DescribeGroups")]
        refused = [_described(n, int(ErrorCode.GROUP_AUTHORIZATION_FAILED), "", "", "", [])
                   for n in body["Groups"] if n not in names]
        if not names:
            return {"ThrottleTimeMs": 0, "Groups": refused}
        try:
            answer = await self._controller_request(ApiKey.DESCRIBE_GROUPS,
                                                    {"groups": names}, GROUP_ROUTE_TIMEOUT_MS)
        except (DmqError, OSError, TimeoutError) as exc:
            code = group_error_code(exc)
            return {"ThrottleTimeMs": 0, "Groups": refused + [
                _described(n, code, "", "", "", []) for n in names]}
        out = refused
        for g in answer["groups"]:
            code = g["error"]
            if code == int(ErrorCode.GROUP_ID_NOT_FOUND):
                # before v6 Kafka answers an unknown group as state Dead, no error
                out.append(_described(g["group_id"], 0, "Dead", "", "", []))
                continue
            if code:
                out.append(_described(g["group_id"], kafka_code(code), "", "", "", []))
                continue
            classic = g.get("type") == "classic"
            members = [{"MemberId": m["member_id"], "GroupInstanceId": m.get("instance_id"),
                        "ClientId": m.get("client_id") or "", "ClientHost": m.get("host") or "",
                        "MemberMetadata": m.get("metadata", b"") if classic else b"",
                        "MemberAssignment": m.get("assignment_bytes", b"") if classic
                        else consumer_assignment(m.get("assignment") or [])}
                       for m in g["members"]]
            out.append(_described(g["group_id"], 0, g["state"],
                                  g.get("protocol_type", "consumer"),
                                  g.get("assignor") or "", members))
        return {"ThrottleTimeMs": 0, "Groups": out}

    async def delete_groups(self, header: RequestHeader, body: dict[str, Any]) -> dict[str, Any]:
        names = [n for n in body["GroupsNames"]
                 if self._group_allowed(header, DELETE, n, "DeleteGroups")]
        refused = [{"GroupId": n, "ErrorCode": int(ErrorCode.GROUP_AUTHORIZATION_FAILED)}
                   for n in body["GroupsNames"] if n not in names]
        if not names:
            return {"ThrottleTimeMs": 0, "Results": refused}
        try:
            answer = await self._controller_request(ApiKey.DELETE_GROUPS, {"groups": names},
                                                    DELETE_TIMEOUT_MS)
        except (DmqError, OSError, TimeoutError) as exc:
            code = group_error_code(exc)
            return {"ThrottleTimeMs": 0, "Results": refused + [
                {"GroupId": n, "ErrorCode": code} for n in names]}
        return {"ThrottleTimeMs": 0, "Results": refused + [
            {"GroupId": g["group_id"], "ErrorCode": kafka_code(g["error"])}
            for g in answer["groups"]]}


class _NothingToAsk(Exception):
    """Every topic of a commit was refused: no forward."""


def consumer_assignment(assignment: list[list[Any]]) -> bytes:
    """Kafka's ConsumerProtocolAssignment v0 bytes for [[topic, partition]] or
    [[topic, [partitions]]] rows (how DescribeGroups shows a dmq consumer's share)."""
    by_topic: dict[str, list[int]] = {}
    for topic, parts in assignment:
        by_topic.setdefault(topic, []).extend(parts if isinstance(parts, list) else [parts])
    out = bytearray(struct.pack(">hi", 0, len(by_topic)))
    for topic, parts in sorted(by_topic.items()):
        raw = topic.encode()
        out += struct.pack(f">h{len(raw)}si{len(parts)}i", len(raw), raw, len(parts),
                           *sorted(parts))
    out += struct.pack(">i", -1)  # no user data
    return bytes(out)


def heartbeat_request_error(version: int, body: dict[str, Any]) -> str | None:
    """Why a ConsumerGroupHeartbeat is invalid (Kafka's request checks), or None."""
    epoch, member = body["MemberEpoch"], body["MemberId"]
    if not body["GroupId"]:
        return "GroupId can't be empty."
    if (version >= 1 or epoch != 0) and not member:
        return "MemberId can't be empty."
    if epoch < -2:
        return f"MemberEpoch is {epoch}: -2, -1, 0 or a positive epoch expected."
    if epoch == -2 and body["InstanceId"] is None:
        return "InstanceId can't be null when leaving as a static member (epoch -2)."
    if epoch == 0:
        if body["RebalanceTimeoutMs"] == -1:
            return "RebalanceTimeoutMs must be provided in first request."
        if body["TopicPartitions"]:
            return "TopicPartitions must be empty when (re-)joining."
        if body["SubscribedTopicNames"] is None and body.get("SubscribedTopicRegex") is None:
            return "SubscribedTopicNames or SubscribedTopicRegex must be set in first request."
    return None


def _heartbeat_error(code: int, msg: str | None) -> dict[str, Any]:
    return {"ThrottleTimeMs": 0, "ErrorCode": code, "ErrorMessage": msg, "MemberId": None,
            "MemberEpoch": 0, "HeartbeatIntervalMs": 0, "Assignment": None}


def _consumer_group(group: str, code: int, msg: str | None) -> dict[str, Any]:
    return {"ErrorCode": code, "ErrorMessage": msg, "GroupId": group, "GroupState": "",
            "GroupEpoch": 0, "AssignmentEpoch": 0, "AssignorName": "", "Members": [],
            "AuthorizedOperations": -2147483648}


def _described(group: str, code: int, state: str, ptype: str, pdata: str,
               members: list[dict[str, Any]]) -> dict[str, Any]:
    return {"ErrorCode": code, "ErrorMessage": None, "GroupId": group, "GroupState": state,
            "ProtocolType": ptype, "ProtocolData": pdata, "Members": members,
            "AuthorizedOperations": -2147483648}


def _fetched(partition: int, offset: int, metadata: str | None, code: int) -> dict[str, Any]:
    return {"PartitionIndex": partition, "CommittedOffset": offset,
            "CommittedLeaderEpoch": -1, "Metadata": "" if metadata is None else metadata,
            "ErrorCode": code}


def _coordinator(key: str, code: int, msg: str) -> dict[str, Any]:
    return {"Key": key, "NodeId": -1, "Host": "", "Port": -1, "ErrorCode": code,
            "ErrorMessage": msg}


__all__ = ["GroupApis", "group_error_code", "heartbeat_request_error"]
