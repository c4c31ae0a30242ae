"""Byte identity of `BatchBuilder.seal_parts`: its parts, joined, are `seal()`'s bytes
for any records (keys, headers, values large and small, `extend` runs, codecs); and a
`MultiBuffer` of them packs in a request exactly as the joined bytes do, raw and plain."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dmq.log.batch import BY_REFERENCE_MIN_BYTES, BatchBuilder, iter_records
from dmq.log.codecs import CODEC_GZIP, CODEC_LZ4, CODEC_NONE, CODEC_ZSTD
from dmq.protocol.codec import (
    MultiBuffer,
    VectoredBody,
    decode_request,
    encode_request_raw,
    encode_request_vectored,
)
from tests.property.log._settings import LOG_SETTINGS

BIG = BY_REFERENCE_MIN_BYTES
sizes = st.sampled_from([0, 1, 200, BIG - 1, BIG, BIG + 1, 70_000, 102_400])
keys = st.one_of(st.none(), st.binary(max_size=12))
headers = st.one_of(st.none(), st.lists(st.tuples(st.text(max_size=6), st.binary(max_size=6)),
                                        max_size=2))


@st.composite
def value(draw: Any) -> Any:
    kind = draw(st.sampled_from(["bytes", "bytes", "bytes", "none", "bytearray"]))
    if kind == "none":
        return None
    data = bytes([draw(st.integers(0, 255))]) * draw(sizes)
    return bytearray(data) if kind == "bytearray" else data


@st.composite
def calls(draw: Any) -> list[tuple[Any, ...]]:
    """("append", ts, key, value, headers) or ("extend", ts, keys or None, values, headers)."""
    out: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(1, 8))):
        ts = draw(st.integers(-1, 2**41))
        if draw(st.booleans()):
            out.append(("append", ts, draw(keys), draw(value()), draw(headers)))
        else:
            n = draw(st.integers(1, 4))
            size = draw(sizes)
            values = [bytes([i]) * size for i in range(n)]
            ks = draw(st.one_of(st.none(), st.lists(keys, min_size=n, max_size=n)))
            out.append(("extend", ts, ks, values, draw(headers)))
    return out


def _build(codec: int, cs: list[tuple[Any, ...]]) -> BatchBuilder:
    b = BatchBuilder(codec, 11, 2, 5)
    for kind, ts, k, v, hs in cs:
        if kind == "append":
            b.append(ts, k, v, hs)
        else:
            b.extend(ts, k, v, hs)
    return b


@LOG_SETTINGS
@given(calls(), st.sampled_from([CODEC_NONE, CODEC_NONE, CODEC_GZIP, CODEC_LZ4, CODEC_ZSTD]),
       st.integers(0, 2**40), st.integers(-1, 50))
def test_seal_parts_join_to_the_bytes_of_seal(cs: list[tuple[Any, ...]], codec: int,
                                               base_offset: int, epoch: int) -> None:
    old = _build(codec, cs).seal(base_offset, epoch)
    parts = _build(codec, cs).seal_parts(base_offset, epoch)
    assert b"".join(parts) == old
    assert all(type(p) is bytes for p in parts)
    if len(parts) > 1:  # by reference: only uncompressed batches, their big values whole
        assert codec == CODEC_NONE
        values = {id(v) for kind, _, _, v, _ in cs if kind == "append"} | {
            id(v) for kind, _, _, vs, _ in cs if kind == "extend" for v in vs}
        assert any(id(p) in values for p in parts)
    assert [r.value for r in iter_records(old)] == [
        None if v is None else bytes(v)
        for kind, _, _, v, _ in cs for v in ([v] if kind == "append" else v)]


@LOG_SETTINGS
@given(st.lists(st.sampled_from([1, 100, 5000, BIG, 70_000]), min_size=1, max_size=4),
       st.integers(0, 3))
def test_a_multibuffer_packs_as_its_joined_bytes(lengths: list[int], small: int) -> None:
    parts = [bytes([i]) * n for i, n in enumerate(lengths)]
    mb = MultiBuffer(parts)
    assert len(mb) == sum(lengths) and bytes(mb) == b"".join(parts)

    def body(data: Any) -> VectoredBody:
        return VectoredBody(acks=1, timeout_ms=30000, topics=[
            ["t", [[0, 3, data], *([[1, 3, b"x" * 10]] * small)]]])

    for enc in (encode_request_raw, encode_request_vectored):
        got = b"".join(enc(0, 1, 7, "c", body(mb)))
        assert got == b"".join(enc(0, 1, 7, "c", body(bytes(mb))))
    plain = b"".join(encode_request_vectored(0, 1, 7, "c", body(mb)))
    _, decoded = decode_request(plain[4:])
    assert bytes(decoded["topics"][0][1][0][2]) == bytes(mb)
