"""The frame decoder's large-frame path (chunks kept and joined once) gives the same
frames as the small-frame path for any split; the writer side (`*_parts`, and
`encode_response_vectored`, which passes large buffers by reference) gives the same
bytes as the one-buffer encoders."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmq.protocol.codec import (
    FrameDecoder,
    VectoredBody,
    decode_response,
    encode_request,
    encode_request_parts,
    encode_response,
    encode_response_parts,
    encode_response_vectored,
)
from dmq.protocol.errors import ProtocolViolation

payloads = st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=6)


def _stream(bodies: list[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(b)) + b for b in bodies)


@settings(max_examples=200, deadline=None)
@given(payloads, st.integers(1, 64), st.data())
def test_any_split_with_any_large_threshold_yields_the_same_frames(bodies, large, data) -> None:
    stream = _stream(bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    as_view = data.draw(st.booleans())
    dec = FrameDecoder(large_frame_bytes=large)
    out: list[bytes] = []
    prev = 0
    for c in [*cuts, len(stream)]:
        chunk = stream[prev:c]
        out += dec.feed(memoryview(chunk) if as_view else chunk)
        prev = c
    assert out == bodies
    assert all(type(f) in (bytes, bytearray) for f in out)  # a large one: its own buffer
    assert dec.buffered_bytes == 0


def test_every_single_split_of_large_frames() -> None:
    bodies = [b"a" * 70_000, b"b", b"c" * 200_000, b"d" * 5]
    stream = _stream(bodies)
    for cut in range(0, len(stream) + 1, 997):
        dec = FrameDecoder()
        assert dec.feed(stream[:cut]) + dec.feed(stream[cut:]) == bodies
        assert dec.buffered_bytes == 0


def test_partial_large_frame_counts_as_buffered_then_violation_resets() -> None:
    dec = FrameDecoder(max_frame_bytes=1000, large_frame_bytes=10)
    assert dec.feed(struct.pack(">I", 100) + b"x" * 40) == []
    assert dec.buffered_bytes == 40
    assert dec.feed(b"x" * 60 + struct.pack(">I", 5000)[:2]) == [b"x" * 100]
    with pytest.raises(ProtocolViolation):
        dec.feed(struct.pack(">I", 5000)[2:])
    assert dec.buffered_bytes == 0
    assert dec.feed(struct.pack(">I", 1) + b"z") == [b"z"]


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.binary(max_size=70_000))
def test_parts_encoders_give_the_same_bytes(cid, blob) -> None:
    body = {"topics": [["t", [[0, 0, blob]]]]}
    assert b"".join(encode_request_parts(1, 0, cid, "c", body)) == encode_request(1, 0, cid, "c",
                                                                                  body)
    assert b"".join(encode_response_parts(cid, 0, body)) == encode_response(cid, 0, body)


bodies = st.recursive(
    st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8)
    | st.binary(max_size=40) | st.sampled_from([b"r" * 65_536, b"s" * 70_001]),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=4),
    max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(st.integers(-(2**31), 2**31 - 1), st.integers(0, 2000), bodies, st.booleans())
def test_vectored_response_is_byte_identical(cid, code, body, views) -> None:
    def views_of(o):  # large bytes as memoryviews, as the log's reads give them
        if isinstance(o, list):
            return [views_of(x) for x in o]
        if isinstance(o, dict):
            return {k: views_of(v) for k, v in o.items()}
        return memoryview(o) if views and isinstance(o, bytes) and len(o) > 60_000 else o

    wrapped = VectoredBody(topics=views_of(body))
    expected = encode_response(cid, code, {"topics": body})
    parts = encode_response_vectored(cid, code, wrapped)
    assert b"".join(parts) == expected
    (payload,) = FrameDecoder().feed(b"".join(parts))
    assert decode_response(payload) == (cid, code, {"topics": body})


def test_vectored_response_passes_large_buffers_by_reference() -> None:
    data = b"d" * 100_000
    view = memoryview(b"v" * 200_000)[:150_000]
    parts = encode_response_vectored(7, 0, VectoredBody(topics=[["t", [[0, 0, 5, 0, 5, data],
                                                                       [1, 0, 5, 0, 5, view]]]]))
    assert any(p is data for p in parts) and any(p is view for p in parts)
    assert b"".join(parts) == encode_response(7, 0, {"topics": [["t", [
        [0, 0, 5, 0, 5, data], [1, 0, 5, 0, 5, bytes(view)]]]]})
