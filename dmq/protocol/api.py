"""Every API the nodes speak: keys, supported versions and body schemas.

This module is the one place that declares the wire vocabulary. Key numbers follow
Kafka's where the request has a Kafka counterpart; dmq-only APIs (Raft transport,
metadata long-poll, controller notices) start at 1000. Numbers are permanent.

A layer that implements an API registers its handler with the server; the server
validates each request body against `REQUEST_SCHEMAS[key]` before calling it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from dmq.protocol.errors import InvalidRequestError
from dmq.protocol.schema import (
    ANY,
    BOOL,
    BYTES,
    INT,
    RAW_BYTES,
    STR,
    Array,
    MapOf,
    Nullable,
    Struct,
    Tuple,
    Type,
)


class ApiKey(IntEnum):
    PRODUCE = 0
    FETCH = 1
    LIST_OFFSETS = 2
    METADATA = 3
    CONTROLLED_SHUTDOWN = 7
    OFFSET_COMMIT = 8
    OFFSET_FETCH = 9
    # Kafka's classic group protocol, forwarded by brokers' Kafka listeners
    JOIN_GROUP = 11
    HEARTBEAT = 12
    LEAVE_GROUP = 13
    SYNC_GROUP = 14
    DESCRIBE_GROUPS = 15
    LIST_GROUPS = 16
    API_VERSIONS = 18
    CREATE_TOPICS = 19
    DELETE_TOPICS = 20
    DELETE_RECORDS = 21
    INIT_PRODUCER_ID = 22
    OFFSET_FOR_LEADER_EPOCH = 23
    DESCRIBE_ACLS = 29
    CREATE_ACLS = 30
    DELETE_ACLS = 31
    DESCRIBE_CONFIGS = 32
    ALTER_CONFIGS = 33
    CREATE_PARTITIONS = 37
    DELETE_GROUPS = 42
    ELECT_LEADERS = 43
    ALTER_PARTITION_REASSIGNMENTS = 45
    LIST_PARTITION_REASSIGNMENTS = 46
    OFFSET_DELETE = 47
    ALTER_PARTITION = 56
    DESCRIBE_CLUSTER = 60
    BROKER_REGISTRATION = 62
    BROKER_HEARTBEAT = 63
    UNREGISTER_BROKER = 64
    ALLOCATE_PRODUCER_IDS = 67
    CONSUMER_GROUP_HEARTBEAT = 68
    # users and HTTP tokens (active controller)
    REVOKE_TOKEN = 40  # Kafka's ExpireDelegationToken number: the nearest counterpart
    DESCRIBE_USER_SCRAM_CREDENTIALS = 50
    ALTER_USER_SCRAM_CREDENTIALS = 51
    # client quotas (active controller; dmq.security.quotas)
    DESCRIBE_CLIENT_QUOTAS = 48
    ALTER_CLIENT_QUOTAS = 49
    # dmq-only
    RAFT_REQUEST_VOTE = 1000
    RAFT_APPEND_ENTRIES = 1001
    RAFT_INSTALL_SNAPSHOT = 1002
    RAFT_TIMEOUT_NOW = 1003
    RAFT_MESSAGE = 1004
    RAFT_STATUS = 1005
    RAFT_PROPOSE = 1006
    METADATA_FETCH = 1010
    CONTROLLER_CHANGED = 1011
    RESET_OFFSETS = 1012
    NODE_HELLO = 1020
    SASL_HANDSHAKE = 1021
    SASL_AUTHENTICATE = 1022


# key -> (min_version, max_version) this build understands
API_VERSION_RANGE: dict[ApiKey, tuple[int, int]] = {key: (0, 0) for key in ApiKey}

# Request schemas. Bodies are maps with short keys; per-partition lists on the data path
# are positional arrays (documented beside each) because they are built and read per
# request on the hot path. Responses are documented here and built by the handlers.
_CONFIGS = MapOf(STR, STR)
_TOPIC_NAMES = Nullable(Array(STR, max_items=100_000))
_ACL = Struct({"resource_type": STR, "resource_name": STR, "principal": STR,
               "operation": STR},
              {"pattern_type": (STR, "literal"), "host": (STR, "*"),
               "permission": (STR, "allow")})
_ACL_FILTER = Struct(optional={k: (Nullable(STR), None) for k in (
    "resource_type", "resource_name", "pattern_type", "principal", "host", "operation",
    "permission")})



class _EpochMs(Type):
    """A wall-clock time in epoch milliseconds (0 .. 2**53)."""

    name = "epoch ms"

    def check(self, value: Any, path: str) -> Any:
        if type(value) is not int:
            raise InvalidRequestError(f"{path}: expected int, got {type(value).__name__}")
        if not 0 <= value <= MAX_EPOCH_MS:
            raise InvalidRequestError(f"{path}: {value} is not a time in epoch milliseconds "
                                      f"(0 to {MAX_EPOCH_MS})")
        return value


MAX_EPOCH_MS = 2**53
# "deadline_ms" (optional, in every group write a broker's Kafka listener forwards to
# the controller: OffsetCommit, OffsetDelete, ConsumerGroupHeartbeat and the classic
# JoinGroup, SyncGroup, Heartbeat, LeaveGroup): the wall-clock time (epoch ms) at which
# the broker gives up waiting and answers its client. The controller refuses the
# request (REQUEST_TIMED_OUT) once that time has passed, so a forward stalled on the
# way (a cut link that heals) never takes effect after its client was told it failed.
# nil (dmq's own clients): no deadline.
_DEADLINE: dict[str, tuple[Type, Any]] = {"deadline_ms": (Nullable(_EpochMs()), None)}

REQUEST_SCHEMAS: dict[ApiKey, Type] = {
    ApiKey.API_VERSIONS: Struct(optional={"client_software": (STR, "")}),
    # -> {"apis": [[key, min, max]], "node_id", "version", "roles": [...]}

    # ---- data path (brokers) -------------------------------------------------------
    ApiKey.PRODUCE: Struct(
        {"acks": INT, "timeout_ms": INT,
         # [[topic, [[partition, leader_epoch (-1: unchecked), batches: bytes]]]]
         # (batches: a raw section in a raw-form frame, dmq.protocol.codec)
         "topics": Array(Tuple(STR, Array(Tuple(INT, INT, RAW_BYTES))))}),
    # -> {"topics": [[topic, [[partition, error, base_offset, log_start_offset, msg]]]]}
    #    plus "throttle_time_ms" when the principal has a producer quota (the answer was
    #    held back that long; dmq.security.quotas)
    ApiKey.FETCH: Struct(
        {"max_wait_ms": INT, "min_bytes": INT, "max_bytes": INT,
         # [[topic, [[partition, fetch_offset, current_leader_epoch, partition_max_bytes]]]]
         "topics": Array(Tuple(STR, Array(Tuple(INT, INT, INT, INT))))},
        {"replica_id": (INT, -1), "broker_epoch": (INT, -1),
         # Incremental fetch sessions of replica fetchers (KIP-227), ignored for
         # consumers: session_id -1 = no session (every request lists every partition);
         # 0 with session_epoch 0 = a full request that opens a session; an id the
         # leader gave, with the previous epoch + 1 = an incremental request, which lists
         # only partitions whose fetch offset or leader epoch changed and names in
         # `forgotten` those the follower stopped fetching ([[topic, [partition]]]).
         # A leader that does not know these fields answers every request in full and
         # sends no session_id back: the follower then keeps sending full requests.
         "session_id": (INT, -1), "session_epoch": (INT, -1),
         "forgotten": (Array(Tuple(STR, Array(INT))), list)}),
    # -> {"topics": [[topic, [[partition, error, high_watermark, log_start_offset,
    #                          log_end_offset, records: bytes]]]]}
    #    plus, when the request had a session_id >= 0: "session_id" (0: no session was
    #    opened) and "error" (FETCH_SESSION_ID_NOT_FOUND, INVALID_FETCH_SESSION_EPOCH:
    #    send a full request). A session response holds only partitions with records,
    #    an error, or a high watermark or log start offset not sent before.
    #    A consumer's answer has "throttle_time_ms" when its principal has a consumer
    #    quota (held back that long; dmq.security.quotas).
    ApiKey.LIST_OFFSETS: Struct(
        # timestamp -1 = latest, -2 = earliest, else first offset with ts >= timestamp
        {"topics": Array(Tuple(STR, Array(Tuple(INT, INT))))}),
    # -> {"topics": [[topic, [[partition, error, timestamp, offset]]]]}
    ApiKey.OFFSET_FOR_LEADER_EPOCH: Struct(
        # [[topic, [[partition, current_leader_epoch, leader_epoch]]]]
        {"topics": Array(Tuple(STR, Array(Tuple(INT, INT, INT))))},
        {"replica_id": (INT, -1)}),
    # -> {"topics": [[topic, [[partition, error, leader_epoch, end_offset]]]]}
    ApiKey.DELETE_RECORDS: Struct(
        # [[topic, [[partition, offset]]]]; offset -1 = the high watermark
        {"topics": Array(Tuple(STR, Array(Tuple(INT, INT))))}),
    # -> {"topics": [[topic, [[partition, error, low_watermark]]]]} (partition leaders only)

    # ---- metadata (every controller answers; brokers answer from their image) -----
    ApiKey.METADATA: Struct(optional={"topics": (_TOPIC_NAMES, None),
                                      "allow_auto_create": (BOOL, False)}),
    # -> {"controller_id", "controller_term", "controller": [id, host, port] (when known),
    #     "version", "brokers": [[id, host, port, rack]] (ONLINE and SHUTTING_DOWN only),
    #     "topics": [{"name", "id", "error", "partitions":
    #                 [[partition, leader, leader_epoch, replicas, isr, error]]}]}
    #    (built by dmq.metadata.image.metadata_body on controllers and brokers alike)
    ApiKey.DESCRIBE_CLUSTER: Struct(),
    # -> {"controller_id", "controller_term", "metadata_version",
    #     "controllers": [{"node_id", "host", "port", "role", "term", "commit_index",
    #                      "last_applied"}],
    #     "brokers": [{"broker_id", "host", "port", "rack", "state", "broker_epoch",
    #                  "last_heartbeat_ms_ago"}],  (-1: not seen by this controller)
    #     "active": bool, "answered_by": node_id}
    ApiKey.METADATA_FETCH: Struct({"broker_id": INT, "version": INT},
                                  {"max_wait_ms": (INT, 500)}),
    # -> {"version", "records": [[index, [record, ...]], ...]} or {"version", "snapshot": {...}}
    #    plus "controller_id", "controller_term", "controller": [id, host, port]
    #    (records and snapshot format: dmq/metadata/records.py, dmq/metadata/state.py)

    # ---- controller writes (active controller only; others: NOT_CONTROLLER + leader)
    ApiKey.BROKER_REGISTRATION: Struct(
        {"broker_id": INT, "host": STR, "port": INT, "incarnation_id": STR},
        {"rack": (Nullable(STR), None),
         # the broker's advertised Kafka listener (-1: it runs none)
         "kafka_host": (Nullable(STR), None), "kafka_port": (INT, -1)}),
    # -> {"broker_epoch"}
    ApiKey.BROKER_HEARTBEAT: Struct(
        {"broker_id": INT, "broker_epoch": INT, "metadata_version": INT},
        {"want_fence": (BOOL, False), "want_shutdown": (BOOL, False),
         # progress of the reassignments of partitions it leads: [[topic, partition,
         # bytes left]] (bytes of its log past each adding replica's fetch offset,
         # summed); nil: not reported
         "reassigning": (Nullable(Array(Tuple(STR, INT, INT), max_items=100_000)), None)}),
    # -> {"is_fenced", "should_shutdown", "metadata_version"}
    ApiKey.CONTROLLED_SHUTDOWN: Struct({"broker_id": INT, "broker_epoch": INT}),
    # -> {"remaining_leaderships": int, "unmovable_leaderships": int (no other ISR member)}
    ApiKey.CREATE_TOPICS: Struct(
        {"topics": Array(Struct({"name": STR, "partitions": INT, "replication_factor": INT},
                                {"configs": (_CONFIGS, dict)}), max_items=10_000)},
        {"timeout_ms": (INT, 30_000), "validate_only": (BOOL, False)}),
    # -> {"topics": [{"name", "error", "msg", "id", "partitions", "replication_factor"}]}
    ApiKey.DELETE_TOPICS: Struct({"topics": Array(STR, max_items=10_000)},
                                 {"timeout_ms": (INT, 30_000)}),
    # -> {"topics": [{"name", "error", "msg"}]}
    ApiKey.CREATE_PARTITIONS: Struct(
        {"topics": Array(Struct({"name": STR, "count": INT}), max_items=10_000)},
        {"timeout_ms": (INT, 30_000), "validate_only": (BOOL, False)}),
    # -> {"topics": [{"name", "error", "msg"}]}
    ApiKey.ALTER_PARTITION: Struct(
        {"broker_id": INT, "broker_epoch": INT,
         # [[topic, [[partition, leader_epoch, partition_epoch, new_isr: [int]]]]]
         "topics": Array(Tuple(STR, Array(Tuple(INT, INT, INT, Array(INT)))))}),
    # -> {"topics": [[topic, [[partition, error, leader, leader_epoch, isr,
    #                          partition_epoch]]]]}
    ApiKey.ALLOCATE_PRODUCER_IDS: Struct({"broker_id": INT, "broker_epoch": INT}),
    # -> {"first_producer_id", "count"}
    ApiKey.INIT_PRODUCER_ID: Struct(optional={"transactional_id": (Nullable(STR), None)}),
    # -> {"producer_id", "producer_epoch"}
    ApiKey.DESCRIBE_CONFIGS: Struct({"topics": Array(STR, max_items=10_000)},
                                    {"dynamic": (BOOL, False)}),
    # -> {"topics": [{"name", "error", "msg", "configs": {k: v} (effective),
    #                 "overrides": {k: v} (set on the topic)}]}
    #    plus, when "dynamic" was asked: "dynamic": {"configs": {k: v} (effective: set,
    #    else the static setting), "overrides": {k: v} (set)} (cluster-wide dynamic
    #    broker configs, see DYNAMIC_CONFIG in dmq/metadata/records.py)
    ApiKey.ALTER_CONFIGS: Struct(
        {"topics": Array(Struct({"name": STR, "configs": MapOf(STR, Nullable(STR))}))},
        {"validate_only": (BOOL, False),
         # cluster-wide dynamic broker configs: {key: value | nil (back to the setting)}
         "dynamic": (Nullable(MapOf(STR, Nullable(STR))), None)}),
    # -> {"topics": [{"name", "error", "msg"}]} plus "dynamic": {"error", "msg"} when
    #    dynamic configs were given
    ApiKey.ALTER_PARTITION_REASSIGNMENTS: Struct(
        # [[topic, partition, [replica, ...] | nil (cancel)]]
        {"partitions": Array(Tuple(STR, INT, Nullable(Array(INT, max_items=1000))),
                             max_items=100_000)},
        # a broker id: the controller plans the moves that take every replica off it
        # (`dmq brokers decommission`; "partitions" is then empty)
        optional={"decommission": (Nullable(INT), None)}),
    # -> {"partitions": [[topic, partition, error, msg]]}, with "moving" (partitions
    #    already moving off the broker) when "decommission" was given
    ApiKey.LIST_PARTITION_REASSIGNMENTS: Struct(
        optional={"topics": (Nullable(Array(STR, max_items=10_000)), None)}),
    # -> {"partitions": [[topic, partition, [replicas], [adding], [removing], leader,
    #                     [isr], bytes_left]]} (bytes_left: as the leader last reported
    #    in its heartbeat, -1 not known yet)
    ApiKey.UNREGISTER_BROKER: Struct({"broker_id": INT}),
    # -> {} (an operator's request: forget a broker that hosts no replicas)
    ApiKey.ELECT_LEADERS: Struct(optional={"topic": (Nullable(STR), None)}),
    # -> {"partitions": [[topic, partition, error, msg]]} (only those not led by their
    #    preferred replica before the election)
    ApiKey.CONTROLLER_CHANGED: Struct({"controller_id": INT, "term": INT, "host": STR,
                                       "port": INT}),
    # -> {}

    # ---- ACLs (dmq.security.acl; kept in the metadata by the active controller) -----
    # An ACL is {"resource_type": topic|group|cluster|transactional_id, "resource_name",
    # "pattern_type": literal|prefixed, "principal": "User:<name>"|"User:*", "host": "*",
    # "operation": Read|Write|...|All, "permission": allow|deny}; a filter has the same
    # keys, each nil (or absent) for any, and pattern_type may be "match".
    # "principal" (optional, from nodes only): whom a broker's Kafka listener forwards
    # the request for, named in the controller's audit line
    ApiKey.CREATE_ACLS: Struct({"acls": Array(_ACL, max_items=10_000)},
                               {"principal": (Nullable(STR), None)}),
    # -> {"results": [[error, msg]]} (one per ACL, in order)
    ApiKey.DESCRIBE_ACLS: _ACL_FILTER,
    # -> {"acls": [acl, ...]} (answered from the controller's applied state)
    ApiKey.DELETE_ACLS: Struct({"filters": Array(_ACL_FILTER, max_items=1000)},
                               {"principal": (Nullable(STR), None)}),
    # -> {"results": [{"error", "msg", "acls": [acl, ...] (those removed)}]}

    # ---- consumer groups (coordinator = active controller) -------------------------
    ApiKey.CONSUMER_GROUP_HEARTBEAT: Struct(
        {"group_id": STR, "member_id": STR, "member_epoch": INT},
        {"instance_id": (Nullable(STR), None), "rebalance_timeout_ms": (INT, 60_000),
         "session_timeout_ms": (INT, 10_000),
         "topics": (Nullable(Array(STR)), None), "pattern": (Nullable(STR), None),
         # [[topic, [partition, ...]]]; nil = unchanged since the last heartbeat
         "owned": (Nullable(Array(Tuple(STR, Array(INT)))), None),
         "assignor": (Nullable(STR), None),
         # set by a Kafka listener forwarding its client's ConsumerGroupHeartbeat: the
         # client's id and host ("": this connection's), -1 timeouts (rebalance:
         # unchanged; session: the coordinator's group.session.timeout.ms), and
         # topic_ids (answer with the topic ids of the assignment)
         "client_id": (STR, ""), "host": (STR, ""), "topic_ids": (BOOL, False),
         **_DEADLINE}),
    # -> {"member_id", "member_epoch", "heartbeat_interval_ms",
    #     "assignment": [[topic, [partition, ...]]] | nil,
    #     "changed": the epoch or assignment moved with this heartbeat,
    #     "topic_ids": [[topic, topic id]] (when asked)}
    ApiKey.OFFSET_COMMIT: Struct(
        {"group_id": STR, "member_id": STR, "member_epoch": INT,
         # [[topic, [[partition, offset, metadata]]]]
         "topics": Array(Tuple(STR, Array(Tuple(INT, INT, Nullable(STR)))))},
        _DEADLINE),
    # -> {"topics": [[topic, [[partition, error]]]]}
    ApiKey.OFFSET_FETCH: Struct({"group_id": STR},
                                {"topics": (Nullable(Array(Tuple(STR, Array(INT)))), None)}),
    # -> {"topics": [[topic, [[partition, offset, metadata, error]]]]}
    ApiKey.OFFSET_DELETE: Struct(
        {"group_id": STR, "topics": Array(Tuple(STR, Array(INT)), max_items=10_000)},
        _DEADLINE),
    # -> {"error", "topics": [[topic, [[partition, error]]]]} (GROUP_SUBSCRIBED_TO_TOPIC
    #    for a topic a member of the group consumes; GROUP_ID_NOT_FOUND raised)
    # Kafka's classic group protocol (errors are in the answers, Kafka's numbers)
    ApiKey.JOIN_GROUP: Struct(
        {"group_id": STR, "member_id": STR, "session_timeout_ms": INT,
         "rebalance_timeout_ms": INT, "protocol_type": STR,
         # [[protocol name, opaque metadata]] in the member's order of preference
         "protocols": Array(Tuple(STR, BYTES), max_items=100)},
        {"instance_id": (Nullable(STR), None), "require_known_member_id": (BOOL, False),
         "client_id": (STR, ""), "host": (STR, ""), **_DEADLINE}),
    # -> {"error", "generation", "protocol_type", "protocol_name", "leader", "member_id",
    #     "members": [[member_id, instance_id, metadata]] (the leader only)}
    ApiKey.SYNC_GROUP: Struct(
        {"group_id": STR, "generation": INT, "member_id": STR,
         "assignments": Array(Tuple(STR, BYTES), max_items=10_000)},
        {"instance_id": (Nullable(STR), None), "protocol_type": (Nullable(STR), None),
         "protocol_name": (Nullable(STR), None), **_DEADLINE}),
    # -> {"error", "protocol_type", "protocol_name", "assignment": bytes}
    ApiKey.HEARTBEAT: Struct({"group_id": STR, "generation": INT, "member_id": STR},
                             {"instance_id": (Nullable(STR), None), **_DEADLINE}),
    # -> {"error"}
    ApiKey.LEAVE_GROUP: Struct(
        {"group_id": STR, "members": Array(Tuple(STR, Nullable(STR)), max_items=10_000)},
        _DEADLINE),
    # -> {"error", "members": [[member_id, instance_id, error]]}
    ApiKey.LIST_GROUPS: Struct(),
    # -> {"groups": [{"group_id", "state", "members"}]}
    ApiKey.DESCRIBE_GROUPS: Struct({"groups": Array(STR)}),
    # -> {"groups": [{"group_id", "error", "state", "epoch", "assignor",
    #                 "assignment_epoch", "members": [{"member_id", "instance_id",
    #                 "member_epoch", "client_id", "host", "assignment": [[topic, [p...]]],
    #                 "topics", "pattern", "target": [[topic, [p...]]]}]}]}
    ApiKey.DELETE_GROUPS: Struct({"groups": Array(STR)}),
    # -> {"groups": [{"group_id", "error", "msg"}]}
    ApiKey.RESET_OFFSETS: Struct(
        {"group_id": STR, "topics": Array(Tuple(STR, Array(Tuple(INT, INT))))},
        {"dry_run": (BOOL, False)}),
    # -> {"topics": [[topic, [[partition, offset, error]]]]}

    # ---- users and HTTP tokens (active controller; dmq.security.users) -------------
    ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS: Struct(
        optional={"users": (Nullable(Array(STR, max_items=10_000)), None)}),
    # -> {"results": [[user, error, msg, [[mechanism, iterations], ...]]]} (nil: every
    #    user that can log in, from the metadata and the controller's bootstrap file)
    ApiKey.ALTER_USER_SCRAM_CREDENTIALS: Struct(
        optional={"deletions": (Array(Tuple(STR, STR), max_items=10_000), list),
                  # [[user, mechanism, iterations, salt, salted password]]: the salted
                  # password is PBKDF2(password, salt, iterations), never the password
                  "upsertions": (Array(Tuple(STR, STR, INT, BYTES, BYTES), max_items=10_000),
                                 list)}),
    # -> {"results": [[user, error, msg]]} (one per user named)
    ApiKey.REVOKE_TOKEN: Struct({"token": STR}),
    # -> {"token_id"}: the HTTP token (verified by the controller: only a valid token
    #    can be revoked) is refused by every node once its metadata has the record

    # ---- client quotas (active controller; dmq.security.quotas) -------------------
    # An entity is a user name, or nil for the default of every user; a quota is
    # {"producer_byte_rate"|"consumer_byte_rate": bytes/s}. Kept in the metadata as
    # dynamic configs (quota.producer.byte.rate[:<user>], ...). Describing needs
    # DescribeConfigs on the cluster, altering AlterConfigs (as Kafka's).
    ApiKey.DESCRIBE_CLIENT_QUOTAS: Struct(
        # nil: every entry; else those of the named users (a nil element: the default)
        optional={"users": (Nullable(Array(Nullable(STR), max_items=10_000)), None)}),
    # -> {"entries": [[user | nil, {quota key: bytes/s}]]}
    ApiKey.ALTER_CLIENT_QUOTAS: Struct(
        # [[user | nil, {quota key: bytes/s | nil (removed)}]]
        {"entries": Array(Tuple(Nullable(STR), MapOf(STR, Nullable(INT))),
                          max_items=10_000)},
        {"validate_only": (BOOL, False)}),
    # -> {"results": [[user | nil, error, msg]]} (one per entry; each all or nothing)

    # ---- Raft transport between controllers ------------------------------------------
    # A Raft message in its wire form (a list, see dmq/raft), sent under the key of its
    # kind (votes and pre-votes, appends, snapshot chunks, timeout-now) or RAFT_MESSAGE
    # for responses; answered with {} at once: replies travel as messages of their own.
    **{key: Struct({"from": INT, "msg": Array(ANY)}) for key in (
        ApiKey.RAFT_REQUEST_VOTE, ApiKey.RAFT_APPEND_ENTRIES, ApiKey.RAFT_INSTALL_SNAPSHOT,
        ApiKey.RAFT_TIMEOUT_NOW, ApiKey.RAFT_MESSAGE)},
    ApiKey.RAFT_STATUS: Struct(),
    # (read-only, served to anyone like DESCRIBE_CLUSTER: operators and REST read it)
    # Propose an opaque entry to a bare Raft quorum (benchmarks/raft_bench.py and
    # tests); `dmq server` does not serve it: metadata changes go through their own APIs.
    ApiKey.RAFT_PROPOSE: Struct({"data": BYTES}),
    # -> {"index"}
    # -> {"node_id", "role", "term", "leader_id", "commit_index", "last_applied",
    #     "last_log_index", "peers": {id: match_index}}

    # ---- identity of a node's connection (sent once, first, by inter-node clients) ----
    # Claims that this connection comes from cluster node `node_id`. The server accepts
    # only ids of its cluster configuration; how the claim is proven is the server's
    # `NodeAuthenticator` (today: the claim is trusted; later credentials, as extra
    # optional fields here, or the TLS peer certificate). An identity cannot change.
    ApiKey.NODE_HELLO: Struct({"node_id": INT}),
    # -> {"node_id": the answering node's id}

    # ---- SASL authentication (served when the listener requires it: dmq.security) ----
    # As Kafka's SaslHandshake v1 / SaslAuthenticate: the mechanism, then the
    # mechanism's messages one request each (SCRAM: two; PLAIN: one).
    ApiKey.SASL_HANDSHAKE: Struct({"mechanism": STR}),
    # -> {"mechanisms": [offered]}; UNSUPPORTED_SASL_MECHANISM names the offered ones
    ApiKey.SASL_AUTHENTICATE: Struct({"auth_bytes": BYTES}),
    # -> {"auth_bytes"}; SASL_AUTHENTICATION_FAILED, then the connection is closed
}


@dataclass(frozen=True, slots=True)
class InterNode:
    """An API that only cluster nodes may call: the connection must have identified
    itself (NODE_HELLO) as a node that plays `role`, and the body field `sender` (when
    set) must name that same node. `optional`: the API is served to everyone, and only
    a body whose `sender` field is >= 0 speaks for a node (a replica's fetch)."""

    role: str  # "controller" or "broker"
    sender: str | None
    optional: bool = False


# Served only to connections identified as a configured node; the server refuses the
# others with CLUSTER_AUTHORIZATION_FAILED before the handler runs.
INTER_NODE_APIS: dict[ApiKey, InterNode] = {
    **{key: InterNode("controller", "from") for key in (
        ApiKey.RAFT_REQUEST_VOTE, ApiKey.RAFT_APPEND_ENTRIES, ApiKey.RAFT_INSTALL_SNAPSHOT,
        ApiKey.RAFT_TIMEOUT_NOW, ApiKey.RAFT_MESSAGE)},
    ApiKey.RAFT_PROPOSE: InterNode("controller", None),
    ApiKey.CONTROLLER_CHANGED: InterNode("controller", "controller_id"),
    **{key: InterNode("broker", "broker_id") for key in (
        ApiKey.BROKER_REGISTRATION, ApiKey.BROKER_HEARTBEAT, ApiKey.CONTROLLED_SHUTDOWN,
        ApiKey.ALTER_PARTITION, ApiKey.ALLOCATE_PRODUCER_IDS, ApiKey.METADATA_FETCH)},
    ApiKey.FETCH: InterNode("broker", "replica_id", optional=True),
    ApiKey.OFFSET_FOR_LEADER_EPOCH: InterNode("broker", "replica_id", optional=True),
}

# Helpers kept here so every layer spells common shapes the same way.
LEADER_HINT = Nullable(Array(ANY, max_items=3))
__all__ = [
    "ANY",
    "API_VERSION_RANGE",
    "BOOL",
    "BYTES",
    "INTER_NODE_APIS",
    "INT",
    "LEADER_HINT",
    "REQUEST_SCHEMAS",
    "STR",
    "ApiKey",
    "Array",
    "InterNode",
    "Nullable",
    "Struct",
]
