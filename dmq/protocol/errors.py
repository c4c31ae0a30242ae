"""Wire error codes and the exception class of each.

The numbers are permanent: once released, a number never changes meaning. Names may
change. Where Kafka has the same condition we reuse Kafka's number, so operators can
look codes up in familiar tables; dmq-only codes start at 1000.

Exceptions become codes in exactly two places: the server dispatcher
(`dmq.protocol.server`) and the client connection (`dmq.protocol.connection`).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ErrorCode(IntEnum):
    NONE = 0
    UNKNOWN_SERVER_ERROR = -1
    OFFSET_OUT_OF_RANGE = 1
    CORRUPT_MESSAGE = 2
    UNKNOWN_TOPIC_OR_PARTITION = 3
    INVALID_FETCH_SIZE = 4
    LEADER_NOT_AVAILABLE = 5
    NOT_LEADER_OR_FOLLOWER = 6
    REQUEST_TIMED_OUT = 7
    BROKER_NOT_AVAILABLE = 8
    REPLICA_NOT_AVAILABLE = 9
    MESSAGE_TOO_LARGE = 10
    OFFSET_METADATA_TOO_LARGE = 12
    NETWORK_EXCEPTION = 13
    COORDINATOR_NOT_AVAILABLE = 15
    NOT_COORDINATOR = 16
    INVALID_TOPIC = 17
    RECORD_LIST_TOO_LARGE = 18
    NOT_ENOUGH_REPLICAS = 19
    NOT_ENOUGH_REPLICAS_AFTER_APPEND = 20
    INVALID_REQUIRED_ACKS = 21
    INVALID_GROUP_ID = 24
    UNKNOWN_MEMBER_ID = 25
    INVALID_SESSION_TIMEOUT = 26
    TOPIC_AUTHORIZATION_FAILED = 29
    GROUP_AUTHORIZATION_FAILED = 30
    CLUSTER_AUTHORIZATION_FAILED = 31
    INVALID_TIMESTAMP = 32
    UNSUPPORTED_SASL_MECHANISM = 33
    ILLEGAL_SASL_STATE = 34
    UNSUPPORTED_VERSION = 35
    TOPIC_ALREADY_EXISTS = 36
    INVALID_PARTITIONS = 37
    INVALID_REPLICATION_FACTOR = 38
    INVALID_REPLICA_ASSIGNMENT = 39
    INVALID_CONFIG = 40
    NOT_CONTROLLER = 41
    INVALID_REQUEST = 42
    POLICY_VIOLATION = 44
    OUT_OF_ORDER_SEQUENCE_NUMBER = 45
    DUPLICATE_SEQUENCE_NUMBER = 46
    INVALID_PRODUCER_EPOCH = 47
    STORAGE_ERROR = 56
    SASL_AUTHENTICATION_FAILED = 58
    UNKNOWN_PRODUCER_ID = 59
    NON_EMPTY_GROUP = 68
    GROUP_ID_NOT_FOUND = 69
    FETCH_SESSION_ID_NOT_FOUND = 70
    INVALID_FETCH_SESSION_EPOCH = 71
    FENCED_LEADER_EPOCH = 74
    UNKNOWN_LEADER_EPOCH = 75
    STALE_BROKER_EPOCH = 77
    OFFSET_NOT_AVAILABLE = 78
    PREFERRED_LEADER_NOT_AVAILABLE = 80
    GROUP_MAX_SIZE_REACHED = 81
    FENCED_INSTANCE_ID = 82
    NO_REASSIGNMENT_IN_PROGRESS = 85
    GROUP_SUBSCRIBED_TO_TOPIC = 86
    INVALID_RECORD = 87
    UNKNOWN_TOPIC_ID = 100
    BROKER_ID_NOT_REGISTERED = 102
    FENCED_MEMBER_EPOCH = 110
    UNRELEASED_INSTANCE_ID = 111
    UNSUPPORTED_ASSIGNOR = 112
    STALE_MEMBER_EPOCH = 113
    # users (AlterUserScramCredentials)
    RESOURCE_NOT_FOUND = 91
    DUPLICATE_RESOURCE = 92
    UNACCEPTABLE_CREDENTIAL = 93
    # dmq-only codes
    UNKNOWN_API_KEY = 1000
    FRAME_TOO_LARGE = 1001
    NODE_SHUTTING_DOWN = 1002
    BROKER_FENCED = 1003
    RAFT_NOT_READY = 1004


# code -> (retriable, refresh_metadata, human message)
_INFO: dict[ErrorCode, tuple[bool, bool, str]] = {
    ErrorCode.NONE: (False, False, "no error"),
    ErrorCode.UNKNOWN_SERVER_ERROR: (False, False, "unexpected server error"),
    ErrorCode.OFFSET_OUT_OF_RANGE: (False, False, "offset is outside the log's range"),
    ErrorCode.CORRUPT_MESSAGE: (True, False, "record batch failed its CRC or is malformed"),
    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION: (True, True, "unknown topic or partition"),
    ErrorCode.INVALID_FETCH_SIZE: (False, False, "invalid fetch size"),
    ErrorCode.LEADER_NOT_AVAILABLE: (True, True, "partition has no leader right now"),
    ErrorCode.NOT_LEADER_OR_FOLLOWER: (True, True, "this node is not the partition leader"),
    ErrorCode.REQUEST_TIMED_OUT: (True, False, "request timed out"),
    ErrorCode.BROKER_NOT_AVAILABLE: (True, True, "broker not available"),
    ErrorCode.REPLICA_NOT_AVAILABLE: (True, True, "replica not available"),
    ErrorCode.MESSAGE_TOO_LARGE: (False, False, "record batch larger than the limit"),
    ErrorCode.OFFSET_METADATA_TOO_LARGE: (False, False,
                                          "committed offset metadata larger than the limit"),
    ErrorCode.NETWORK_EXCEPTION: (True, True, "connection failed or was closed"),
    ErrorCode.COORDINATOR_NOT_AVAILABLE: (True, True, "group coordinator not available"),
    ErrorCode.NOT_COORDINATOR: (True, True, "this node is not the group coordinator"),
    ErrorCode.INVALID_TOPIC: (False, False, "invalid topic name"),
    ErrorCode.RECORD_LIST_TOO_LARGE: (False, False, "request larger than the limit"),
    ErrorCode.NOT_ENOUGH_REPLICAS: (True, False, "fewer in-sync replicas than min.insync.replicas"),
    ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND: (True, False, "ISR shrank after append"),
    ErrorCode.INVALID_REQUIRED_ACKS: (False, False, "acks must be 0, 1 or -1 (all)"),
    ErrorCode.INVALID_GROUP_ID: (False, False, "group id is empty or too long"),
    ErrorCode.UNKNOWN_MEMBER_ID: (False, False, "unknown group member"),
    ErrorCode.INVALID_SESSION_TIMEOUT: (False, False, "invalid session timeout"),
    ErrorCode.TOPIC_AUTHORIZATION_FAILED: (False, False, "not authorized to access the topic"),
    ErrorCode.GROUP_AUTHORIZATION_FAILED: (False, False, "not authorized to access the group"),
    ErrorCode.CLUSTER_AUTHORIZATION_FAILED: (
        False, False, "not authorized for a cluster operation (or an inter-node request on "
        "a connection not identified as that node)"),
    ErrorCode.INVALID_TIMESTAMP: (False, False, "invalid timestamp"),
    ErrorCode.UNSUPPORTED_SASL_MECHANISM: (False, False, "SASL mechanism not offered"),
    ErrorCode.ILLEGAL_SASL_STATE: (False, False, "SASL request out of order"),
    ErrorCode.SASL_AUTHENTICATION_FAILED: (False, False, "SASL authentication failed"),
    ErrorCode.UNSUPPORTED_VERSION: (False, False, "unsupported API version"),
    ErrorCode.TOPIC_ALREADY_EXISTS: (False, False, "topic already exists"),
    ErrorCode.INVALID_PARTITIONS: (False, False, "invalid number of partitions"),
    ErrorCode.INVALID_REPLICATION_FACTOR: (False, False, "invalid replication factor"),
    ErrorCode.INVALID_REPLICA_ASSIGNMENT: (False, False, "invalid replica assignment"),
    ErrorCode.INVALID_CONFIG: (False, False, "invalid configuration"),
    ErrorCode.NOT_CONTROLLER: (True, True, "this node is not the active controller"),
    ErrorCode.INVALID_REQUEST: (False, False, "malformed request"),
    ErrorCode.POLICY_VIOLATION: (False, False, "request violates a policy"),
    ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER: (False, False, "producer sequence gap"),
    ErrorCode.DUPLICATE_SEQUENCE_NUMBER: (False, False, "duplicate producer sequence"),
    ErrorCode.INVALID_PRODUCER_EPOCH: (False, False, "producer epoch is fenced"),
    ErrorCode.STORAGE_ERROR: (True, True, "storage error on the broker"),
    ErrorCode.UNKNOWN_PRODUCER_ID: (False, False, "unknown producer id"),
    ErrorCode.NON_EMPTY_GROUP: (False, False, "group has active members"),
    ErrorCode.FETCH_SESSION_ID_NOT_FOUND: (True, False,
                                           "fetch session unknown to the leader (evicted, or "
                                           "the leader restarted): send a full fetch"),
    ErrorCode.INVALID_FETCH_SESSION_EPOCH: (True, False,
                                            "fetch session epoch out of sequence: send a full "
                                            "fetch"),
    ErrorCode.GROUP_ID_NOT_FOUND: (False, False, "group not found"),
    ErrorCode.FENCED_LEADER_EPOCH: (True, True, "leader epoch is older than the replica's"),
    ErrorCode.UNKNOWN_LEADER_EPOCH: (True, True, "leader epoch is newer than the replica's"),
    ErrorCode.STALE_BROKER_EPOCH: (False, False, "stale broker epoch"),
    ErrorCode.OFFSET_NOT_AVAILABLE: (True, True, "offset not available yet"),
    ErrorCode.FENCED_INSTANCE_ID: (False, False, "static member was fenced"),
    ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE: (
        True, False, "the preferred leader is not an online in-sync replica"),
    ErrorCode.GROUP_MAX_SIZE_REACHED: (False, False, "group has the most members allowed"),
    ErrorCode.NO_REASSIGNMENT_IN_PROGRESS: (False, False, "no reassignment in progress"),
    ErrorCode.GROUP_SUBSCRIBED_TO_TOPIC: (False, False,
                                          "the group is subscribed to the topic"),
    ErrorCode.INVALID_RECORD: (False, False, "invalid record"),
    ErrorCode.UNKNOWN_TOPIC_ID: (True, True, "unknown topic id"),
    ErrorCode.BROKER_ID_NOT_REGISTERED: (True, False, "broker is not registered"),
    ErrorCode.FENCED_MEMBER_EPOCH: (False, False, "member epoch is fenced"),
    ErrorCode.UNRELEASED_INSTANCE_ID: (False, False, "static instance id still in use"),
    ErrorCode.UNSUPPORTED_ASSIGNOR: (False, False, "unknown server-side assignor"),
    ErrorCode.STALE_MEMBER_EPOCH: (False, False, "stale member epoch"),
    ErrorCode.RESOURCE_NOT_FOUND: (False, False, "no such resource (user credential)"),
    ErrorCode.DUPLICATE_RESOURCE: (False, False, "resource named twice in one request"),
    ErrorCode.UNACCEPTABLE_CREDENTIAL: (False, False, "credential refused"),
    ErrorCode.UNKNOWN_API_KEY: (False, False, "unknown API key"),
    ErrorCode.FRAME_TOO_LARGE: (False, False, "frame larger than the configured limit"),
    ErrorCode.NODE_SHUTTING_DOWN: (True, True, "node is shutting down"),
    ErrorCode.BROKER_FENCED: (True, True, "broker is fenced"),
    ErrorCode.RAFT_NOT_READY: (True, True, "metadata quorum not ready"),
}
assert set(_INFO) == set(ErrorCode), "every error code needs its info row"


def is_retriable(code: ErrorCode) -> bool:
    return _INFO[code][0]


def refreshes_metadata(code: ErrorCode) -> bool:
    return _INFO[code][1]


def describe(code: ErrorCode) -> str:
    return _INFO[code][2]


class DmqError(Exception):
    """An error that has a wire code. `leader` names the current leader when known:
    (node_id, host, port)."""

    code: ErrorCode = ErrorCode.UNKNOWN_SERVER_ERROR

    def __init__(self, message: str | None = None, *, leader: tuple[int, str, int] | None = None,
                 data: Any = None) -> None:
        self.message = message or describe(self.code)
        self.leader = leader
        self.data = data
        super().__init__(f"[{self.code.name}] {self.message}")

    @property
    def retriable(self) -> bool:
        return is_retriable(self.code)

    @property
    def refresh_metadata(self) -> bool:
        return refreshes_metadata(self.code)


_CLASSES: dict[ErrorCode, type[DmqError]] = {}


def _define(code: ErrorCode) -> type[DmqError]:
    name = "".join(part.capitalize() for part in code.name.split("_")) + "Error"
    cls = type(name, (DmqError,), {"code": code, "__doc__": describe(code)})
    _CLASSES[code] = cls
    return cls


UnknownServerError = _define(ErrorCode.UNKNOWN_SERVER_ERROR)
OffsetOutOfRangeError = _define(ErrorCode.OFFSET_OUT_OF_RANGE)
CorruptMessageError = _define(ErrorCode.CORRUPT_MESSAGE)
UnknownTopicOrPartitionError = _define(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
InvalidFetchSizeError = _define(ErrorCode.INVALID_FETCH_SIZE)
LeaderNotAvailableError = _define(ErrorCode.LEADER_NOT_AVAILABLE)
NotLeaderOrFollowerError = _define(ErrorCode.NOT_LEADER_OR_FOLLOWER)
RequestTimedOutError = _define(ErrorCode.REQUEST_TIMED_OUT)
BrokerNotAvailableError = _define(ErrorCode.BROKER_NOT_AVAILABLE)
ReplicaNotAvailableError = _define(ErrorCode.REPLICA_NOT_AVAILABLE)
MessageTooLargeError = _define(ErrorCode.MESSAGE_TOO_LARGE)
OffsetMetadataTooLargeError = _define(ErrorCode.OFFSET_METADATA_TOO_LARGE)
NetworkError = _define(ErrorCode.NETWORK_EXCEPTION)
CoordinatorNotAvailableError = _define(ErrorCode.COORDINATOR_NOT_AVAILABLE)
NotCoordinatorError = _define(ErrorCode.NOT_COORDINATOR)
InvalidTopicError = _define(ErrorCode.INVALID_TOPIC)
RecordListTooLargeError = _define(ErrorCode.RECORD_LIST_TOO_LARGE)
NotEnoughReplicasError = _define(ErrorCode.NOT_ENOUGH_REPLICAS)
NotEnoughReplicasAfterAppendError = _define(ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND)
InvalidRequiredAcksError = _define(ErrorCode.INVALID_REQUIRED_ACKS)
InvalidGroupIdError = _define(ErrorCode.INVALID_GROUP_ID)
UnknownMemberIdError = _define(ErrorCode.UNKNOWN_MEMBER_ID)
InvalidSessionTimeoutError = _define(ErrorCode.INVALID_SESSION_TIMEOUT)
TopicAuthorizationFailedError = _define(ErrorCode.TOPIC_AUTHORIZATION_FAILED)
GroupAuthorizationFailedError = _define(ErrorCode.GROUP_AUTHORIZATION_FAILED)
ClusterAuthorizationFailedError = _define(ErrorCode.CLUSTER_AUTHORIZATION_FAILED)
InvalidTimestampError = _define(ErrorCode.INVALID_TIMESTAMP)
UnsupportedSaslMechanismError = _define(ErrorCode.UNSUPPORTED_SASL_MECHANISM)
IllegalSaslStateError = _define(ErrorCode.ILLEGAL_SASL_STATE)
SaslAuthenticationFailedError = _define(ErrorCode.SASL_AUTHENTICATION_FAILED)
UnsupportedVersionError = _define(ErrorCode.UNSUPPORTED_VERSION)
TopicAlreadyExistsError = _define(ErrorCode.TOPIC_ALREADY_EXISTS)
InvalidPartitionsError = _define(ErrorCode.INVALID_PARTITIONS)
InvalidReplicationFactorError = _define(ErrorCode.INVALID_REPLICATION_FACTOR)
InvalidReplicaAssignmentError = _define(ErrorCode.INVALID_REPLICA_ASSIGNMENT)
InvalidConfigError = _define(ErrorCode.INVALID_CONFIG)
NotControllerError = _define(ErrorCode.NOT_CONTROLLER)
InvalidRequestError = _define(ErrorCode.INVALID_REQUEST)
PolicyViolationError = _define(ErrorCode.POLICY_VIOLATION)
OutOfOrderSequenceNumberError = _define(ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER)
DuplicateSequenceNumberError = _define(ErrorCode.DUPLICATE_SEQUENCE_NUMBER)
InvalidProducerEpochError = _define(ErrorCode.INVALID_PRODUCER_EPOCH)
StorageError = _define(ErrorCode.STORAGE_ERROR)
UnknownProducerIdError = _define(ErrorCode.UNKNOWN_PRODUCER_ID)
NonEmptyGroupError = _define(ErrorCode.NON_EMPTY_GROUP)
GroupIdNotFoundError = _define(ErrorCode.GROUP_ID_NOT_FOUND)
FetchSessionIdNotFoundError = _define(ErrorCode.FETCH_SESSION_ID_NOT_FOUND)
InvalidFetchSessionEpochError = _define(ErrorCode.INVALID_FETCH_SESSION_EPOCH)
FencedLeaderEpochError = _define(ErrorCode.FENCED_LEADER_EPOCH)
UnknownLeaderEpochError = _define(ErrorCode.UNKNOWN_LEADER_EPOCH)
StaleBrokerEpochError = _define(ErrorCode.STALE_BROKER_EPOCH)
OffsetNotAvailableError = _define(ErrorCode.OFFSET_NOT_AVAILABLE)
FencedInstanceIdError = _define(ErrorCode.FENCED_INSTANCE_ID)
PreferredLeaderNotAvailableError = _define(ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE)
GroupMaxSizeReachedError = _define(ErrorCode.GROUP_MAX_SIZE_REACHED)
NoReassignmentInProgressError = _define(ErrorCode.NO_REASSIGNMENT_IN_PROGRESS)
GroupSubscribedToTopicError = _define(ErrorCode.GROUP_SUBSCRIBED_TO_TOPIC)
InvalidRecordError = _define(ErrorCode.INVALID_RECORD)
UnknownTopicIdError = _define(ErrorCode.UNKNOWN_TOPIC_ID)
BrokerIdNotRegisteredError = _define(ErrorCode.BROKER_ID_NOT_REGISTERED)
FencedMemberEpochError = _define(ErrorCode.FENCED_MEMBER_EPOCH)
UnreleasedInstanceIdError = _define(ErrorCode.UNRELEASED_INSTANCE_ID)
UnsupportedAssignorError = _define(ErrorCode.UNSUPPORTED_ASSIGNOR)
StaleMemberEpochError = _define(ErrorCode.STALE_MEMBER_EPOCH)
ResourceNotFoundError = _define(ErrorCode.RESOURCE_NOT_FOUND)
DuplicateResourceError = _define(ErrorCode.DUPLICATE_RESOURCE)
UnacceptableCredentialError = _define(ErrorCode.UNACCEPTABLE_CREDENTIAL)
UnknownApiKeyError = _define(ErrorCode.UNKNOWN_API_KEY)
FrameTooLargeError = _define(ErrorCode.FRAME_TOO_LARGE)
NodeShuttingDownError = _define(ErrorCode.NODE_SHUTTING_DOWN)
BrokerFencedError = _define(ErrorCode.BROKER_FENCED)
RaftNotReadyError = _define(ErrorCode.RAFT_NOT_READY)
assert set(_CLASSES) == set(ErrorCode) - {ErrorCode.NONE}, "every error code needs a class"


def error_for(code: int, message: str | None = None, *,
              leader: tuple[int, str, int] | None = None, data: Any = None) -> DmqError:
    """The exception for a wire code (an unknown number becomes UNKNOWN_SERVER_ERROR)."""
    try:
        ec = ErrorCode(code)
    except ValueError:
        return UnknownServerError(f"unknown error code {code}: {message}", data=data)
    if ec is ErrorCode.NONE:
        raise ValueError("error_for(NONE)")
    return _CLASSES[ec](message, leader=leader, data=data)


class ProtocolViolation(Exception):
    """The peer sent bytes that are not a valid frame stream (a remote error). The
    connection cannot continue; `correlation_id` is set when one was readable."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.INVALID_REQUEST,
                 correlation_id: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.correlation_id = correlation_id
