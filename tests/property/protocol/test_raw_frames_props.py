"""Raw-form frames against the old encoder: whatever a body holds and however the
stream is cut (fed chunk by chunk, or a large frame received straight into its own
buffer as the plaintext protocols do), the raw form decodes to the same values as
`encode_request`'s frame; the by-reference plain encoder is byte-identical to it; and
record batches that travel as raw sections reach the log and the consumer's decoder
byte-identical to the same batches as bytes."""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dmq.clock import ManualClock
from dmq.log import LogConfig, PartitionLog
from dmq.log.batch import build_batch, decode_records, iter_headers
from dmq.protocol.codec import (
    FrameDecoder,
    VectoredBody,
    decode_request,
    decode_response,
    encode_request,
    encode_request_raw,
    encode_request_vectored,
    encode_response,
    encode_response_raw,
)
from tests.property.log._settings import LOG_SETTINGS

sizes = st.one_of(st.integers(0, 64), st.sampled_from([4095, 4096, 10_000, 70_000]))
blobs = sizes.flatmap(lambda n: st.binary(min_size=n, max_size=n) if n < 100 else
                      st.integers(0, 255).map(lambda b: bytes([b]) * n))
leaves = st.one_of(st.integers(-2**40, 2**40), st.text(max_size=8), st.none(), blobs)
bodies = st.recursive(leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=4), inner, max_size=4)),
    max_leaves=12)


def _plain(obj: Any) -> Any:
    """`obj` with views as bytes (what the old decoder gives)."""
    if type(obj) is memoryview:
        return bytes(obj)
    if type(obj) is list:
        return [_plain(x) for x in obj]
    if type(obj) is dict:
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _read(stream: bytes, cuts: list[int], direct: bool) -> list[bytes | bytearray]:
    """Decode `stream` read in pieces ending at `cuts`; with `direct`, a large frame's
    rest is received into its own buffer (`frame_tail`/`filled`) as the protocols do."""
    dec = FrameDecoder(large_frame_bytes=1024)
    frames: list[bytes | bytearray] = []
    pos = 0
    for end in [*cuts, len(stream)]:
        while pos < end:
            tail = dec.frame_tail() if direct else None
            if tail is not None:
                n = min(len(tail), end - pos)
                tail[:n] = stream[pos:pos + n]
                frames += dec.filled(n)
            else:
                n = end - pos
                frames += dec.feed(memoryview(stream)[pos:end])
            pos += n
    assert dec.buffered_bytes == 0
    return frames


@settings(max_examples=150, deadline=None)
@given(st.lists(bodies, min_size=1, max_size=4), st.booleans(), st.data())
def test_raw_requests_decode_as_the_old_encoders_frames(bs: list[Any], direct: bool,
                                                        data: Any) -> None:
    old = b"".join(encode_request(1, 0, i, "c", b) for i, b in enumerate(bs))
    raw = b"".join(b"".join(encode_request_raw(1, 0, i, "c", VectoredBody(v=b)))
                   for i, b in enumerate(bs))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=8)))
    got = [decode_request(f) for f in _read(raw, cuts, direct)]
    want = [decode_request(f) for f in FrameDecoder().feed(old)]
    assert [(h, _plain(b["v"])) for h, b in got] == want
    # the plain by-reference encoder: byte-identical to the old one
    assert b"".join(b"".join(encode_request_vectored(1, 0, i, "c", VectoredBody(v=b)))
                    for i, b in enumerate(bs)) == \
        b"".join(encode_request(1, 0, i, "c", {"v": b}) for i, b in enumerate(bs))


@settings(max_examples=100, deadline=None)
@given(bodies, st.booleans())
def test_raw_responses_decode_as_the_old_encoders_frames(body: Any, direct: bool) -> None:
    raw = b"".join(encode_response_raw(5, 0, VectoredBody(v=body)))
    (frame,) = _read(raw, [], direct)
    (old,) = FrameDecoder().feed(encode_response(5, 0, {"v": body}))
    cid, code, got = decode_response(frame)
    assert (cid, code, _plain(got)) == decode_response(old)


records = st.lists(st.tuples(st.one_of(st.none(), st.binary(max_size=8)),
                             st.one_of(st.none(), sizes.map(lambda n: b"v" * n))),
                   min_size=1, max_size=6)


@settings(LOG_SETTINGS, max_examples=30)
@given(st.lists(records, min_size=1, max_size=4), st.booleans(), st.data())
def test_batches_as_raw_sections_reach_log_and_reader_byte_identical(
        batches: list[Any], direct: bool, data: Any) -> None:
    built = [build_batch(r, timestamp_ms=1_700_000_000_000) for r in batches]
    topics = [["t", [[0, -1, b] for b in built]]]
    raw = b"".join(encode_request_raw(0, 0, 1, "p", VectoredBody(acks=1, topics=topics)))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    (frame,) = _read(raw, cuts, direct)
    _, body = decode_request(frame)
    got = [row[2] for row in body["topics"][0][1]]
    assert [bytes(g) for g in got] == built
    d = tempfile.mkdtemp(prefix="dmq-raw-")
    try:
        logs = []
        for name, bufs in (("views", got), ("bytes", built)):
            plog = PartitionLog.open(os.path.join(d, name), LogConfig(), ManualClock(),
                                     fsync_enabled=False)
            for buf in bufs:
                plog.append_as_leader(buf, 3)
            plog.flush()
            logs.append(plog)
        files = [sorted(os.listdir(os.path.join(d, n))) for n in ("views", "bytes")]
        assert files[0] == files[1]
        for f in files[0]:
            if f.endswith(".log"):
                with open(os.path.join(d, "views", f), "rb") as a, \
                        open(os.path.join(d, "bytes", f), "rb") as b:
                    assert a.read() == b.read()
        for plog in logs:
            plog.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    # what a consumer decodes from a view of a fetch response equals the bytes' records
    for view, buf in zip(got, built, strict=True):
        hv, hb = list(iter_headers(view)), list(iter_headers(buf))
        assert hv == hb
        assert decode_records(view, hv[0]) == decode_records(buf, hb[0])
        assert all(type(r.value) in (bytes, type(None)) for r in decode_records(view, hv[0]))
