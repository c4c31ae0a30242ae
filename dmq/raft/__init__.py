"""Raft consensus: the pure core, its durable storage (and later the asyncio driver)."""

from dmq.raft.core import (
    EntryTooLargeError,
    NotLeaderError,
    PersistentState,
    ProposalDroppedError,
    RaftConfig,
    RaftCore,
    RaftError,
    RaftStatus,
    ReadState,
    Ready,
    Role,
    SoftState,
)
from dmq.raft.messages import (
    NO_NODE,
    AppendRequest,
    AppendResponse,
    Entry,
    EntryKind,
    HardState,
    HeartbeatRequest,
    HeartbeatResponse,
    MalformedMessageError,
    Message,
    MessageType,
    Snapshot,
    SnapshotRequest,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    message_from_wire,
)
from dmq.raft.storage import CorruptStorageError, FileStorage, MemoryStorage, RaftStorage

__all__ = [
    "NO_NODE", "AppendRequest", "AppendResponse", "CorruptStorageError", "Entry", "EntryKind",
    "EntryTooLargeError",
    "FileStorage", "HardState", "HeartbeatRequest", "HeartbeatResponse",
    "MalformedMessageError", "MemoryStorage", "Message", "MessageType", "NotLeaderError",
    "PersistentState", "ProposalDroppedError", "RaftConfig", "RaftCore", "RaftError",
    "RaftStatus", "RaftStorage", "ReadState", "Ready", "Role", "SnapshotRequest",
    "SnapshotResponse", "Snapshot", "SoftState", "TimeoutNow", "VoteRequest", "VoteResponse",
    "message_from_wire",
]
