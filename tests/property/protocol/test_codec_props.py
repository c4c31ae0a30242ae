"""Properties of the frame decoder: any split of a valid stream decodes the same, and
random bytes only ever give frames or a ProtocolViolation."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from dmq.protocol.codec import (
    FrameDecoder,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from dmq.protocol.errors import ProtocolViolation

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=20)
    | st.binary(max_size=64) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=5),
    max_leaves=20)

requests = st.tuples(st.integers(0, 2000), st.integers(0, 3), st.integers(0, 2**31 - 1),
                     st.text(max_size=10), msgpack_values)


@settings(max_examples=150, deadline=None)
@given(st.lists(requests, min_size=1, max_size=6), st.data())
def test_any_split_yields_the_same_frames(reqs, data) -> None:
    stream = b"".join(encode_request(*r) for r in reqs)
    # every single split point, plus a random multi-way split
    for cut in range(len(stream) + 1):
        dec = FrameDecoder()
        frames = dec.feed(stream[:cut]) + dec.feed(stream[cut:])
        assert [decode_request(f)[0].correlation_id for f in frames] == [r[2] for r in reqs]
        assert dec.buffered_bytes == 0
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    dec = FrameDecoder()
    out = []
    prev = 0
    for c in [*cuts, len(stream)]:
        out += dec.feed(stream[prev:c])
        prev = c
    decoded = [decode_request(f) for f in out]
    for (hdr, _body), r in zip(decoded, reqs, strict=True):
        assert (hdr.api_key, hdr.api_version, hdr.correlation_id, hdr.client_id) == r[:4]


@settings(max_examples=100, deadline=None)
@given(st.integers(-(2**31), 2**31 - 1), st.integers(-1, 2000), msgpack_values)
def test_response_round_trip(cid, code, body) -> None:
    frame = encode_response(cid, code, body)
    (payload,) = FrameDecoder().feed(frame)
    assert decode_response(payload)[:2] == (cid, code)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_only_give_frames_or_protocol_violation(chunks) -> None:
    dec = FrameDecoder(max_frame_bytes=1024)
    try:
        for chunk in chunks:
            for payload in dec.feed(chunk):
                assert isinstance(payload, bytes)
                try:
                    decode_request(payload)
                except ProtocolViolation:
                    pass
    except ProtocolViolation:
        pass


def test_oversized_length_is_refused_before_buffering() -> None:
    dec = FrameDecoder(max_frame_bytes=100)
    try:
        dec.feed(struct.pack(">I", 101) + b"x")
    except ProtocolViolation as exc:
        assert "exceeds" in str(exc)
    else:
        raise AssertionError("oversized frame accepted")
    assert dec.buffered_bytes == 0


def test_zero_length_frame_is_a_violation() -> None:
    dec = FrameDecoder()
    try:
        dec.feed(b"\x00\x00\x00\x00")
    except ProtocolViolation:
        return
    raise AssertionError("empty frame accepted")
