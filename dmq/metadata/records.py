"""Metadata records: the changes the controller writes to the Raft log.

This module owns the record types and their wire form. It never does I/O and never
decides anything: the planner (`dmq.controller.planner`) chooses records, the state
(`dmq.metadata.state`) applies them.

One Raft entry carries one *batch* of records, applied atomically:
``msgpack([record, ...])``. A record is a msgpack array ``[type, *fields]`` where
``type`` is a permanent `RecordType` number and fields are positional::

    REGISTER_BROKER      broker_id, host, port, rack|nil, incarnation_id
                         [, kafka_host, kafka_port] (present only when the broker runs a
                         Kafka listener)
                         (the broker epoch is the Raft index of the entry)
    FENCE_BROKER         broker_id, broker_epoch
    UNFENCE_BROKER       broker_id, broker_epoch
    BROKER_SHUTTING_DOWN broker_id, broker_epoch
    CREATE_TOPIC         name, topic_id, {config: value}, [[replica, ...] per partition]
                         (leader = first replica, ISR = replicas, epochs 0)
    ADD_PARTITIONS       name, topic_id, first_partition, [[replica, ...] per new partition]
    REMOVE_TOPIC         name, topic_id
    PARTITION_CHANGE     topic, partition, expected_partition_epoch, leader (-2: unchanged),
                         isr|nil (nil: unchanged). Leader epoch +1 when the leader changes;
                         partition epoch +1 always. Skipped if the partition epoch moved.
    TOPIC_CONFIG         name, key, value|nil (nil: back to the cluster default)
    PRODUCER_IDS         broker_id, next_producer_id (end of the block just handed out)
    OFFSET_COMMIT        group, commit_ms, [[topic, partition, offset, metadata|nil], ...]
    PARTITION_REASSIGN   topic, partition, expected_partition_epoch, [replica, ...],
                         [adding, ...], [removing, ...], leader (-2: unchanged), isr|nil.
                         Sets the replica set and the reassignment in progress (both
                         empty: none); the ISR is cut to the replicas. Epochs as for
                         PARTITION_CHANGE.
    UNREGISTER_BROKER    broker_id, broker_epoch (forget a broker; skipped if it
                         re-registered meanwhile)
    CLUSTER_ID           cluster_id (written once, by the first active controller of a
                         cluster; a later one is skipped: the first stays for good)
    ACCESS_CONTROL_ENTRY resource_type, resource_name, pattern_type, principal, host,
                         operation, permission (an ACL; values and meaning:
                         dmq.security.acl; one already present is skipped)
    REMOVE_ACCESS_CONTROL_ENTRY  the same seven fields (skipped if absent)
    DYNAMIC_CONFIG       key, value|nil: a cluster-wide dynamic broker config (Kafka's
                         broker configs set with --entity-default), e.g.
                         follower.replication.throttled.rate; nil: back to the static
                         setting of the config file. A key `KEY:ID` is KEY for broker
                         ID alone (Kafka's broker entity), over the cluster-wide value

  Users and HTTP tokens (dmq.security.users, dmq.security.tokens):

    USER_SCRAM_CREDENTIAL        user, mechanism, salt, iterations, stored_key, server_key
                                 (sets the user's credential for that mechanism; never
                                 a password)
    REMOVE_USER_SCRAM_CREDENTIAL user, mechanism (a user left with none is kept as
                                 deleted: it no longer logs in, and a user of the
                                 bootstrap credentials file of that name is not revived)
    REVOKE_TOKEN                 token_id, expires_ms, now_ms (an HTTP token refused from
                                 now on; revocations that expired by `now_ms`, the
                                 writing controller's clock, are forgotten)

Records are applied deterministically by every controller and every broker image, so
anything random (topic ids, placement) is chosen before proposing and written here.
Numbers are permanent; add new types at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar

import msgpack  # type: ignore[import-untyped]

NO_CHANGE = -2
"""PARTITION_CHANGE leader value meaning "keep the current leader"."""


class RecordType(IntEnum):
    REGISTER_BROKER = 1
    FENCE_BROKER = 2
    UNFENCE_BROKER = 3
    BROKER_SHUTTING_DOWN = 4
    CREATE_TOPIC = 5
    ADD_PARTITIONS = 6
    REMOVE_TOPIC = 7
    PARTITION_CHANGE = 8
    TOPIC_CONFIG = 9
    PRODUCER_IDS = 10
    OFFSET_COMMIT = 11
    PARTITION_REASSIGN = 12
    UNREGISTER_BROKER = 13
    CLUSTER_ID = 14
    # users and HTTP tokens
    USER_SCRAM_CREDENTIAL = 17
    REMOVE_USER_SCRAM_CREDENTIAL = 18
    REVOKE_TOKEN = 19
    ACCESS_CONTROL_ENTRY = 15
    REMOVE_ACCESS_CONTROL_ENTRY = 16
    DYNAMIC_CONFIG = 20


class MalformedRecordError(ValueError):
    """A metadata entry that does not decode (a bug or a corrupt snapshot/log)."""


@dataclass(frozen=True, slots=True)
class RegisterBroker:
    TYPE: ClassVar[RecordType] = RecordType.REGISTER_BROKER
    broker_id: int
    host: str
    port: int
    rack: str | None
    incarnation_id: str
    kafka_host: str | None = None
    kafka_port: int = -1

    def to_wire(self) -> list[Any]:
        wire = [self.TYPE, self.broker_id, self.host, self.port, self.rack, self.incarnation_id]
        if self.kafka_port >= 0:
            wire += [self.kafka_host, self.kafka_port]
        return wire


@dataclass(frozen=True, slots=True)
class FenceBroker:
    TYPE: ClassVar[RecordType] = RecordType.FENCE_BROKER
    broker_id: int
    broker_epoch: int

    def to_wire(self) -> list[Any]:
        return [self.TYPE, self.broker_id, self.broker_epoch]


@dataclass(frozen=True, slots=True)
class UnfenceBroker:
    TYPE: ClassVar[RecordType] = RecordType.UNFENCE_BROKER
    broker_id: int
    broker_epoch: int

    def to_wire(self) -> list[Any]:
        return [self.TYPE, self.broker_id, self.broker_epoch]


@dataclass(frozen=True, slots=True)
class BrokerShuttingDown:
    TYPE: ClassVar[RecordType] = RecordType.BROKER_SHUTTING_DOWN
    broker_id: int
    broker_epoch: int

    def to_wire(self) -> list[Any]:
        return [self.TYPE, self.broker_id, self.broker_epoch]


@dataclass(frozen=True, slots=True)
class CreateTopic:
    TYPE: ClassVar[RecordType] = RecordType.CREATE_TOPIC
    name: str
    topic_id: str
    configs: dict[str, str]
    assignments: tuple[tuple[int, ...], ...]

    def to_wire(self) -> list[Any]:
        return [self.TYPE, self.name, self.topic_id, dict(self.configs),
                [list(r) for r in self.assignments]]


@dataclass(frozen=True, slots=True)
class AddPartitions:
    TYPE: ClassVar[RecordType] = RecordType.ADD_PARTITIONS
    name: str
    topic_id: str
    first_partition: int
    assignments: tuple[tuple[int, ...], ...]

    def to_wire(self) -> list[Any]:
        return [self.TYPE, self.name, self.topic_id, self.first_partition,
                [list(r) for r in self.assignments]]


@dataclass(frozen=True, slots=True)
class RemoveTopic:
    TYPE: ClassVar[RecordType] = RecordType.REMOVE_TOPIC
    name: str
    topic_id: str

    def to_wire(self) -> list[Any]:
        return [self.TYPE, self.name, self.topic_id]


@dataclass(frozen=True, slots=True)
class PartitionChange:
    TYPE: ClassVar[RecordType] = RecordType.PARTITION_CHANGE
    topic: str
    partition: int
    partition_epoch: int  # the epoch this change was planned against
    leader: int = NO_CHANGE
    isr: tuple[int, ...] | None = None

    def to_wire(self) -> list[Any]:
        return [self.TYPE, self.topic, self.partition, self.partition_epoch, self.leader,
                None if self.isr is None else list(self.isr)]


@dataclass(frozen=True, slots=True)
class TopicConfig:
    TYPE: ClassVar[RecordType] = RecordType.TOPIC_CONFIG
    name: str
    key: str
    value: str | None

    def to_wire(self) -> list[Any]:
        return [self.TYPE, self.name, self.key, self.value]


@dataclass(frozen=True, slots=True)
class ProducerIds:
    TYPE: ClassVar[RecordType] = RecordType.PRODUCER_IDS
    broker_id: int
    next_producer_id: int

    def to_wire(self) -> list[Any]:
        return [self.TYPE, self.broker_id, self.next_producer_id]


@dataclass(frozen=True, slots=True)
class OffsetCommit:
    TYPE: ClassVar[RecordType] = RecordType.OFFSET_COMMIT
    group: str
    commit_ms: int
    offsets: tuple[tuple[str, int, int, str | None], ...]

    def to_wire(self) -> list[Any]:
        return [self.TYPE, self.group, self.commit_ms, [list(o) for o in self.offsets]]


@dataclass(frozen=True, slots=True)
class PartitionReassign:
    """One step of a reassignment (KIP-455): start (replicas = target + old, adding =
    target - old, removing = old - target), complete (replicas = target, nothing adding
    or removing) or cancel (replicas = the original set)."""
    TYPE: ClassVar[RecordType] = RecordType.PARTITION_REASSIGN
    topic: str
    partition: int
    partition_epoch: int  # the epoch this change was planned against
    replicas: tuple[int, ...]
    adding: tuple[int, ...] = ()
    removing: tuple[int, ...] = ()
    leader: int = NO_CHANGE
    isr: tuple[int, ...] | None = None

    def to_wire(self) -> list[Any]:
        return [self.TYPE, self.topic, self.partition, self.partition_epoch,
                list(self.replicas), list(self.adding), list(self.removing), self.leader,
                None if self.isr is None else list(self.isr)]


@dataclass(frozen=True, slots=True)
class UnregisterBroker:
    TYPE: ClassVar[RecordType] = RecordType.UNREGISTER_BROKER
    broker_id: int
    broker_epoch: int

    def to_wire(self) -> list[Any]:
        return [self.TYPE, self.broker_id, self.broker_epoch]


@dataclass(frozen=True, slots=True)
class ClusterId:
    TYPE: ClassVar[RecordType] = RecordType.CLUSTER_ID
    cluster_id: str

    def to_wire(self) -> list[Any]:
        return [self.TYPE, self.cluster_id]


# users and HTTP tokens ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserScramCredential:
    TYPE: ClassVar[RecordType] = RecordType.USER_SCRAM_CREDENTIAL
    user: str
    mechanism: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def to_wire(self) -> list[Any]:
        return [self.TYPE, self.user, self.mechanism, self.salt, self.iterations,
                self.stored_key, self.server_key]


@dataclass(frozen=True, slots=True)
class RemoveUserScramCredential:
    TYPE: ClassVar[RecordType] = RecordType.REMOVE_USER_SCRAM_CREDENTIAL
    user: str
    mechanism: str

    def to_wire(self) -> list[Any]:
        return [self.TYPE, self.user, self.mechanism]


@dataclass(frozen=True, slots=True)
class RevokeToken:
    TYPE: ClassVar[RecordType] = RecordType.REVOKE_TOKEN
    token_id: str
    expires_ms: int
    now_ms: int

    def to_wire(self) -> list[Any]:
        return [self.TYPE, self.token_id, self.expires_ms, self.now_ms]


def _user_record(t: RecordType, f: list[Any]) -> Record | None:
    """The users and tokens records (None: another type)."""
    if t is RecordType.USER_SCRAM_CREDENTIAL:
        if not all(isinstance(x, bytes) for x in (f[2], f[4], f[5])):
            raise ValueError("salt, stored_key and server_key must be bytes")
        return UserScramCredential(str(f[0]), str(f[1]), f[2], int(f[3]), f[4], f[5])
    if t is RecordType.REMOVE_USER_SCRAM_CREDENTIAL:
        return RemoveUserScramCredential(str(f[0]), str(f[1]))
    if t is RecordType.REVOKE_TOKEN:
        return RevokeToken(str(f[0]), int(f[1]), int(f[2]))
    return None
@dataclass(frozen=True, slots=True)
class AccessControlEntry:
    """One ACL, as kept in the metadata (strings as `dmq.security.acl` spells them;
    that module validates them before a record is written)."""
    TYPE: ClassVar[RecordType] = RecordType.ACCESS_CONTROL_ENTRY
    resource_type: str  # topic | group | cluster | transactional_id
    resource_name: str  # "*" (literal): every resource of the type
    pattern_type: str  # literal | prefixed
    principal: str  # User:<name> | User:*
    host: str
    operation: str  # Read, Write, ... All
    permission: str  # allow | deny

    def fields(self) -> list[str]:
        return [self.resource_type, self.resource_name, self.pattern_type, self.principal,
                self.host, self.operation, self.permission]

    def to_wire(self) -> list[Any]:
        return [self.TYPE, *self.fields()]


@dataclass(frozen=True, slots=True)
class RemoveAccessControlEntry:
    TYPE: ClassVar[RecordType] = RecordType.REMOVE_ACCESS_CONTROL_ENTRY
    entry: AccessControlEntry

    def to_wire(self) -> list[Any]:
        return [self.TYPE, *self.entry.fields()]


def acl_entry(fields: Any) -> AccessControlEntry:
    """An entry from its seven wire fields (strings)."""
    if len(fields) != 7 or not all(isinstance(f, str) for f in fields):
        raise ValueError("an ACL is seven strings")
    return AccessControlEntry(*fields)


@dataclass(frozen=True, slots=True)
class DynamicConfig:
    TYPE: ClassVar[RecordType] = RecordType.DYNAMIC_CONFIG
    key: str
    value: str | None

    def to_wire(self) -> list[Any]:
        return [self.TYPE, self.key, self.value]


Record = (RegisterBroker | FenceBroker | UnfenceBroker | BrokerShuttingDown | CreateTopic
          | AddPartitions | RemoveTopic | PartitionChange | TopicConfig | ProducerIds
          | OffsetCommit | PartitionReassign | UnregisterBroker | ClusterId
          | UserScramCredential | RemoveUserScramCredential | RevokeToken | AccessControlEntry
          | RemoveAccessControlEntry | DynamicConfig)


def _tuples(rows: Any) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(int(x) for x in row) for row in rows)


def _from_wire(obj: list[Any]) -> Record:
    t = RecordType(obj[0])
    f = obj[1:]
    if t is RecordType.REGISTER_BROKER:
        if len(f) > 5:
            return RegisterBroker(f[0], f[1], f[2], f[3], f[4], f[5], int(f[6]))
        return RegisterBroker(f[0], f[1], f[2], f[3], f[4])
    if t is RecordType.FENCE_BROKER:
        return FenceBroker(f[0], f[1])
    if t is RecordType.UNFENCE_BROKER:
        return UnfenceBroker(f[0], f[1])
    if t is RecordType.BROKER_SHUTTING_DOWN:
        return BrokerShuttingDown(f[0], f[1])
    if t is RecordType.CREATE_TOPIC:
        return CreateTopic(f[0], f[1], dict(f[2]), _tuples(f[3]))
    if t is RecordType.ADD_PARTITIONS:
        return AddPartitions(f[0], f[1], f[2], _tuples(f[3]))
    if t is RecordType.REMOVE_TOPIC:
        return RemoveTopic(f[0], f[1])
    if t is RecordType.PARTITION_CHANGE:
        return PartitionChange(f[0], f[1], f[2], f[3], None if f[4] is None else tuple(f[4]))
    if t is RecordType.TOPIC_CONFIG:
        return TopicConfig(f[0], f[1], f[2])
    if t is RecordType.PRODUCER_IDS:
        return ProducerIds(f[0], f[1])
    if t is RecordType.OFFSET_COMMIT:
        return OffsetCommit(f[0], f[1], tuple((o[0], o[1], o[2], o[3]) for o in f[2]))
    if t is RecordType.PARTITION_REASSIGN:
        return PartitionReassign(f[0], int(f[1]), int(f[2]), tuple(int(x) for x in f[3]),
                                 tuple(int(x) for x in f[4]), tuple(int(x) for x in f[5]),
                                 int(f[6]), None if f[7] is None else tuple(f[7]))
    if t is RecordType.UNREGISTER_BROKER:
        return UnregisterBroker(int(f[0]), int(f[1]))
    if t is RecordType.CLUSTER_ID:
        if not isinstance(f[0], str) or not f[0]:
            raise ValueError("cluster id must be a non-empty string")
        return ClusterId(f[0])
    if t is RecordType.DYNAMIC_CONFIG:
        if not isinstance(f[0], str) or not (f[1] is None or isinstance(f[1], str)):
            raise ValueError("a dynamic config is a string key and a string value or nil")
        return DynamicConfig(f[0], f[1])
    user_record = _user_record(t, f)
    if user_record is not None:
        return user_record
    if t is RecordType.ACCESS_CONTROL_ENTRY:
        return acl_entry(f)
    if t is RecordType.REMOVE_ACCESS_CONTROL_ENTRY:
        return RemoveAccessControlEntry(acl_entry(f))
    raise AssertionError(t)  # pragma: no cover - every RecordType is handled above


def record_from_wire(obj: Any) -> Record:
    try:
        return _from_wire(obj)
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise MalformedRecordError(f"bad metadata record {obj!r:.200}: {exc}") from None


def records_to_wire(records: list[Record] | tuple[Record, ...]) -> list[list[Any]]:
    return [r.to_wire() for r in records]


def encode_batch(records: list[Record] | tuple[Record, ...]) -> bytes:
    """The data of one Raft entry."""
    data: bytes = msgpack.packb(records_to_wire(records), use_bin_type=True)
    return data


def decode_batch_wire(data: bytes) -> list[list[Any]]:
    """The records of one entry in wire form (what MetadataFetch ships)."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:
        raise MalformedRecordError(f"metadata entry is not msgpack: {exc}") from None
    if not isinstance(obj, list):
        raise MalformedRecordError("metadata entry must be an array of records")
    return obj


def decode_batch(data: bytes) -> list[Record]:
    return [record_from_wire(r) for r in decode_batch_wire(data)]
