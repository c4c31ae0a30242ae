"""Wire form of Raft messages: round trips through msgpack and typed rejection of junk."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dmq.raft.messages import (
    AppendRequest,
    AppendResponse,
    Entry,
    EntryKind,
    HeartbeatRequest,
    HeartbeatResponse,
    MalformedMessageError,
    Message,
    SnapshotRequest,
    SnapshotResponse,
    TimeoutNow,
    VoteRequest,
    VoteResponse,
    message_from_wire,
)
from dmq.types import NodeId, RaftIndex, Term

ids = st.integers(1, 2**31).map(NodeId)
terms = st.integers(0, 2**63 - 1).map(Term)
indexes = st.integers(0, 2**62).map(RaftIndex)
small = st.integers(0, 2**40)


@st.composite
def append_requests(draw: Any) -> AppendRequest:
    prev = draw(st.integers(0, 2**40))
    n = draw(st.integers(0, 5))
    entries = tuple(
        Entry(draw(terms), RaftIndex(prev + 1 + i), draw(st.sampled_from(EntryKind)),
              draw(st.binary(max_size=20)))
        for i in range(n)
    )
    return AppendRequest(draw(ids), draw(ids), draw(terms), RaftIndex(prev), draw(terms),
                         draw(indexes), entries)


messages = st.one_of(
    st.builds(VoteRequest, ids, ids, terms, indexes, terms, st.booleans(), st.booleans()),
    st.builds(VoteResponse, ids, ids, terms, st.booleans(), st.booleans()),
    append_requests(),
    st.builds(AppendResponse, ids, ids, terms, st.booleans(), indexes, indexes, indexes, terms),
    st.builds(HeartbeatRequest, ids, ids, terms, indexes, small),
    st.builds(HeartbeatResponse, ids, ids, terms, small),
    st.builds(SnapshotRequest, ids, ids, terms, indexes, terms, small, st.binary(max_size=40),
              st.booleans()),
    st.builds(SnapshotResponse, ids, ids, terms, indexes, small, st.booleans()),
    st.builds(TimeoutNow, ids, ids, terms),
)


@given(messages)
def test_round_trip_through_msgpack(m: Message) -> None:
    wire = msgpack.unpackb(msgpack.packb(m.to_wire(), use_bin_type=True))
    assert message_from_wire(wire) == m


@pytest.mark.parametrize(
    "junk",
    [
        None, [], {}, "x", [99, 1, 2, 3], [1, 1, 2], [1, 1, 2, 3, 4, 5, "yes", False],
        [2, 1, 2, -3, True, False], [3, 1, 2, 3, 0, 0, 0, "notalist"],
        [3, 1, 2, 3, 0, 0, 0, [[1, 7, b"bad kind"]]], [3, 1, 2, 3, 0, 0, 0, [[1, 0]]],
        [7, 1, 2, 3, 4, 5, 0, "str not bytes", True], [9, 1, 2, 1.5],
    ],
)
def test_malformed_messages_raise_a_typed_error(junk: Any) -> None:
    with pytest.raises(MalformedMessageError):
        message_from_wire(junk)


@given(st.lists(st.one_of(st.integers(-5, 5), st.booleans(), st.binary(max_size=3), st.none()),
                max_size=10))
def test_arbitrary_lists_never_crash_the_decoder(junk: list[Any]) -> None:
    try:
        message_from_wire(junk)
    except MalformedMessageError:
        pass


def test_entry_wire_form() -> None:
    e = Entry(Term(3), RaftIndex(9), EntryKind.NOOP, b"")
    assert Entry.from_wire(e.to_wire()) == e
    with pytest.raises(MalformedMessageError):
        Entry.from_wire([1, 2, 3])
