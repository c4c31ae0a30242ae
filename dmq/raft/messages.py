"""Raft values: log entries, hard state, snapshots and the peer messages.

This module owns the shape of everything the Raft core exchanges with the outside
world, and its wire form. Every message is a frozen slotted dataclass with
``to_wire()`` returning a msgpack-friendly list and a module-level
``message_from_wire(list)`` that validates the shape and rebuilds the object. The
driver ships the list in the body of one request per message type.

It must never do I/O and never import asyncio.

Wire form (all lists; ``type`` is a permanent `MessageType` number)::

    [type, src, dst, term, *fields]

    VOTE_REQUEST       fields: last_log_index, last_log_term, pre_vote, transfer
    VOTE_RESPONSE      fields: granted, pre_vote
    APPEND_REQUEST     fields: prev_index, prev_term, commit, entries
                       entries: [[term, kind, data], ...]; the i-th entry's index is
                       prev_index + 1 + i (indexes are implied, not shipped)
    APPEND_RESPONSE    fields: reject, match_index, reject_index, hint_index, hint_term
    HEARTBEAT_REQUEST  fields: commit, read_seq
    HEARTBEAT_RESPONSE fields: read_seq
    SNAPSHOT_REQUEST   fields: snap_index, snap_term, offset, data, done
    SNAPSHOT_RESPONSE  fields: snap_index, next_offset, installed
    TIMEOUT_NOW        (no fields)

An `Entry` on its own (used by storage) is ``[term, index, kind, data]``.

Every integer read from the wire (ids, terms, indexes, offsets, sequence numbers) must
lie in ``0..MAX_WIRE_INT`` (a signed 64-bit value); an append whose entries would get
indexes past that bound is refused too. Anything else is a `MalformedMessageError`
before it can touch Raft state. (The core adds its own rule on how far a term may jump,
`dmq.raft.api.MAX_TERM_JUMP`, so that no node reaches a term it cannot leave.)
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dmq.types import NodeId, RaftIndex, Term

NO_NODE = NodeId(0)
"""Node ids start at 1; 0 means "nobody" (no vote, no known leader)."""

MAX_WIRE_INT = 2**63 - 1
"""The largest integer a Raft message may carry (i64, like Kafka's epochs and offsets)."""


class MalformedMessageError(ValueError):
    """A peer sent a message whose shape or field types are wrong (a remote error)."""


class EntryKind(enum.IntEnum):
    NORMAL = 0
    NOOP = 1  # appended by every new leader so it can commit entries of earlier terms


class MessageType(enum.IntEnum):
    """Permanent numbers: names may change, numbers never."""

    VOTE_REQUEST = 1
    VOTE_RESPONSE = 2
    APPEND_REQUEST = 3
    APPEND_RESPONSE = 4
    HEARTBEAT_REQUEST = 5
    HEARTBEAT_RESPONSE = 6
    SNAPSHOT_REQUEST = 7
    SNAPSHOT_RESPONSE = 8
    TIMEOUT_NOW = 9


@dataclass(frozen=True, slots=True)
class Entry:
    term: Term
    index: RaftIndex
    kind: EntryKind
    data: bytes

    def to_wire(self) -> list[Any]:
        return [self.term, self.index, int(self.kind), self.data]

    @staticmethod
    def from_wire(obj: Any) -> Entry:
        if not isinstance(obj, (list, tuple)) or len(obj) != 4:
            raise MalformedMessageError("entry must be [term, index, kind, data]")
        return Entry(
            Term(_int(obj[0])), RaftIndex(_int(obj[1])), _kind(obj[2]), _bytes(obj[3])
        )


@dataclass(frozen=True, slots=True)
class HardState:
    """What must survive a crash before any message depending on it is sent."""

    term: Term
    vote: NodeId
    commit: RaftIndex


EMPTY_HARD_STATE = HardState(Term(0), NO_NODE, RaftIndex(0))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """State machine image covering every entry up to and including `index`."""

    index: RaftIndex
    term: Term
    data: bytes


@dataclass(frozen=True, slots=True)
class VoteRequest:
    src: NodeId
    dst: NodeId
    term: Term
    last_log_index: RaftIndex
    last_log_term: Term
    pre_vote: bool
    transfer: bool  # campaign caused by TimeoutNow: voters ignore their leader lease

    def to_wire(self) -> list[Any]:
        return [
            MessageType.VOTE_REQUEST, self.src, self.dst, self.term,
            self.last_log_index, self.last_log_term, self.pre_vote, self.transfer,
        ]


@dataclass(frozen=True, slots=True)
class VoteResponse:
    src: NodeId
    dst: NodeId
    term: Term
    granted: bool
    pre_vote: bool

    def to_wire(self) -> list[Any]:
        return [
            MessageType.VOTE_RESPONSE, self.src, self.dst, self.term, self.granted,
            self.pre_vote,
        ]


@dataclass(frozen=True, slots=True)
class AppendRequest:
    src: NodeId
    dst: NodeId
    term: Term
    prev_index: RaftIndex
    prev_term: Term
    commit: RaftIndex
    entries: tuple[Entry, ...]

    def to_wire(self) -> list[Any]:
        return [
            MessageType.APPEND_REQUEST, self.src, self.dst, self.term, self.prev_index,
            self.prev_term, self.commit, [[e.term, int(e.kind), e.data] for e in self.entries],
        ]


@dataclass(frozen=True, slots=True)
class AppendResponse:
    src: NodeId
    dst: NodeId
    term: Term
    reject: bool
    match_index: RaftIndex  # on success: last index known to match the leader
    reject_index: RaftIndex  # on reject: the prev_index that did not match
    hint_index: RaftIndex  # on reject: first index of hint_term, or last index + 1
    hint_term: Term  # on reject: term of the follower's entry at reject_index, or 0

    def to_wire(self) -> list[Any]:
        return [
            MessageType.APPEND_RESPONSE, self.src, self.dst, self.term, self.reject,
            self.match_index, self.reject_index, self.hint_index, self.hint_term,
        ]


@dataclass(frozen=True, slots=True)
class HeartbeatRequest:
    src: NodeId
    dst: NodeId
    term: Term
    commit: RaftIndex  # min(leader commit, follower's match): never past what it holds
    read_seq: int  # newest ReadIndex sequence issued before this heartbeat

    def to_wire(self) -> list[Any]:
        return [
            MessageType.HEARTBEAT_REQUEST, self.src, self.dst, self.term, self.commit,
            self.read_seq,
        ]


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    src: NodeId
    dst: NodeId
    term: Term
    read_seq: int

    def to_wire(self) -> list[Any]:
        return [MessageType.HEARTBEAT_RESPONSE, self.src, self.dst, self.term, self.read_seq]


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    src: NodeId
    dst: NodeId
    term: Term
    snap_index: RaftIndex
    snap_term: Term
    offset: int
    data: bytes
    done: bool

    def to_wire(self) -> list[Any]:
        return [
            MessageType.SNAPSHOT_REQUEST, self.src, self.dst, self.term, self.snap_index,
            self.snap_term, self.offset, self.data, self.done,
        ]


@dataclass(frozen=True, slots=True)
class SnapshotResponse:
    src: NodeId
    dst: NodeId
    term: Term
    snap_index: RaftIndex
    next_offset: int  # byte offset the follower expects next
    installed: bool  # the follower holds everything up to snap_index

    def to_wire(self) -> list[Any]:
        return [
            MessageType.SNAPSHOT_RESPONSE, self.src, self.dst, self.term, self.snap_index,
            self.next_offset, self.installed,
        ]


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    src: NodeId
    dst: NodeId
    term: Term

    def to_wire(self) -> list[Any]:
        return [MessageType.TIMEOUT_NOW, self.src, self.dst, self.term]


Message = (
    VoteRequest | VoteResponse | AppendRequest | AppendResponse | HeartbeatRequest
    | HeartbeatResponse | SnapshotRequest | SnapshotResponse | TimeoutNow
)


# -- decoding -----------------------------------------------------------------------


def _int(value: Any) -> int:
    if type(value) is not int or not 0 <= value <= MAX_WIRE_INT:
        raise MalformedMessageError(
            f"expected an int in 0..2**63-1, got {value!r:.40}")
    return value


def _bool(value: Any) -> bool:
    if type(value) is not bool:
        raise MalformedMessageError(f"expected a bool, got {value!r:.40}")
    return value


def _bytes(value: Any) -> bytes:
    if type(value) is bytes:
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise MalformedMessageError(f"expected bytes, got {type(value).__name__}")


def _kind(value: Any) -> EntryKind:
    try:
        return EntryKind(_int(value))
    except ValueError as exc:
        raise MalformedMessageError(f"unknown entry kind {value!r:.40}") from exc


def _vote_request(f: list[Any]) -> Message:
    return VoteRequest(
        NodeId(_int(f[1])), NodeId(_int(f[2])), Term(_int(f[3])), RaftIndex(_int(f[4])),
        Term(_int(f[5])), _bool(f[6]), _bool(f[7]),
    )


def _vote_response(f: list[Any]) -> Message:
    return VoteResponse(
        NodeId(_int(f[1])), NodeId(_int(f[2])), Term(_int(f[3])), _bool(f[4]), _bool(f[5])
    )


def _append_request(f: list[Any]) -> Message:
    prev_index = _int(f[4])
    raw = f[7]
    if not isinstance(raw, (list, tuple)):
        raise MalformedMessageError("entries must be a list")
    if prev_index + len(raw) > MAX_WIRE_INT:
        raise MalformedMessageError("entry indexes would pass 2**63-1")
    entries = []
    for i, item in enumerate(raw):
        if not isinstance(item, (list, tuple)) or len(item) != 3:
            raise MalformedMessageError("entry must be [term, kind, data]")
        entries.append(
            Entry(Term(_int(item[0])), RaftIndex(prev_index + 1 + i), _kind(item[1]),
                  _bytes(item[2]))
        )
    return AppendRequest(
        NodeId(_int(f[1])), NodeId(_int(f[2])), Term(_int(f[3])), RaftIndex(prev_index),
        Term(_int(f[5])), RaftIndex(_int(f[6])), tuple(entries),
    )


def _append_response(f: list[Any]) -> Message:
    return AppendResponse(
        NodeId(_int(f[1])), NodeId(_int(f[2])), Term(_int(f[3])), _bool(f[4]),
        RaftIndex(_int(f[5])), RaftIndex(_int(f[6])), RaftIndex(_int(f[7])), Term(_int(f[8])),
    )


def _heartbeat_request(f: list[Any]) -> Message:
    return HeartbeatRequest(
        NodeId(_int(f[1])), NodeId(_int(f[2])), Term(_int(f[3])), RaftIndex(_int(f[4])),
        _int(f[5]),
    )


def _heartbeat_response(f: list[Any]) -> Message:
    return HeartbeatResponse(NodeId(_int(f[1])), NodeId(_int(f[2])), Term(_int(f[3])), _int(f[4]))


def _snapshot_request(f: list[Any]) -> Message:
    return SnapshotRequest(
        NodeId(_int(f[1])), NodeId(_int(f[2])), Term(_int(f[3])), RaftIndex(_int(f[4])),
        Term(_int(f[5])), _int(f[6]), _bytes(f[7]), _bool(f[8]),
    )


def _snapshot_response(f: list[Any]) -> Message:
    return SnapshotResponse(
        NodeId(_int(f[1])), NodeId(_int(f[2])), Term(_int(f[3])), RaftIndex(_int(f[4])),
        _int(f[5]), _bool(f[6]),
    )


def _timeout_now(f: list[Any]) -> Message:
    return TimeoutNow(NodeId(_int(f[1])), NodeId(_int(f[2])), Term(_int(f[3])))


_DECODERS: dict[int, tuple[int, Callable[[list[Any]], Message]]] = {
    MessageType.VOTE_REQUEST: (8, _vote_request),
    MessageType.VOTE_RESPONSE: (6, _vote_response),
    MessageType.APPEND_REQUEST: (8, _append_request),
    MessageType.APPEND_RESPONSE: (9, _append_response),
    MessageType.HEARTBEAT_REQUEST: (6, _heartbeat_request),
    MessageType.HEARTBEAT_RESPONSE: (5, _heartbeat_response),
    MessageType.SNAPSHOT_REQUEST: (9, _snapshot_request),
    MessageType.SNAPSHOT_RESPONSE: (7, _snapshot_response),
    MessageType.TIMEOUT_NOW: (4, _timeout_now),
}


def message_from_wire(obj: Any) -> Message:
    """Rebuild a message from its `to_wire()` list; raise MalformedMessageError if bad."""
    if not isinstance(obj, (list, tuple)) or not obj or type(obj[0]) is not int:
        raise MalformedMessageError("a raft message is a list starting with its type")
    spec = _DECODERS.get(obj[0])
    if spec is None:
        raise MalformedMessageError(f"unknown raft message type {obj[0]}")
    length, decode = spec
    if len(obj) != length:
        raise MalformedMessageError(
            f"raft message type {obj[0]} needs {length} fields, got {len(obj)}"
        )
    return decode(list(obj))
