"""Every API the nodes speak: keys, supported versions and body schemas.

This module is the one place that declares the wire vocabulary. Key numbers follow
Kafka's where the request has a Kafka counterpart; dmq-only APIs (Raft transport,
metadata long-poll, controller notices) start at 1000. Numbers are permanent.

A layer that implements an API registers its handler with the server; the server
validates each request body against `REQUEST_SCHEMAS[key]` before calling it.
"""

from __future__ import annotations

from enum import IntEnum

from dmq.protocol.schema import ANY, BOOL, BYTES, INT, STR, Array, Nullable, Struct, Type


class ApiKey(IntEnum):
    PRODUCE = 0
    FETCH = 1
    LIST_OFFSETS = 2
    METADATA = 3
    CONTROLLED_SHUTDOWN = 7
    OFFSET_COMMIT = 8
    OFFSET_FETCH = 9
    DESCRIBE_GROUPS = 15
    LIST_GROUPS = 16
    API_VERSIONS = 18
    CREATE_TOPICS = 19
    DELETE_TOPICS = 20
    INIT_PRODUCER_ID = 22
    OFFSET_FOR_LEADER_EPOCH = 23
    DESCRIBE_CONFIGS = 32
    ALTER_CONFIGS = 33
    CREATE_PARTITIONS = 37
    DELETE_GROUPS = 42
    ALTER_PARTITION = 56
    DESCRIBE_CLUSTER = 60
    BROKER_REGISTRATION = 62
    BROKER_HEARTBEAT = 63
    ALLOCATE_PRODUCER_IDS = 67
    CONSUMER_GROUP_HEARTBEAT = 68
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


# key -> (min_version, max_version) this build understands
API_VERSION_RANGE: dict[ApiKey, tuple[int, int]] = {key: (0, 0) for key in ApiKey}

# Request schemas. Layers declare theirs here as they implement them; an API without
# a schema gets its body checked only for being a map.
REQUEST_SCHEMAS: dict[ApiKey, Type] = {
    ApiKey.API_VERSIONS: Struct(optional={"client_software": (STR, "")}),
}

# Helpers kept here so every layer spells common shapes the same way.
LEADER_HINT = Nullable(Array(ANY, max_items=3))
__all__ = [
    "ANY",
    "API_VERSION_RANGE",
    "BOOL",
    "BYTES",
    "INT",
    "LEADER_HINT",
    "REQUEST_SCHEMAS",
    "STR",
    "ApiKey",
    "Array",
    "Nullable",
    "Struct",
]
