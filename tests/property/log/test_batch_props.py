from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmq.log import CorruptRecordError, decode_records, iter_headers, validate_batches
from dmq.log.batch import HEADER_SIZE, BatchBuilder, check_client_batch, validate_raw
from dmq.log.codecs import CODEC_LZ4, CODEC_NONE, CODEC_ZSTD
from tests.property.log._settings import LOG_SETTINGS

blob = st.one_of(st.none(), st.binary(max_size=64))
record = st.tuples(st.integers(0, 2**40), blob, blob,
                   st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=8)), max_size=2))
batch_args = st.fixed_dictionaries({
    "records": st.lists(record, min_size=1, max_size=20),
    "codec": st.sampled_from([CODEC_NONE, CODEC_ZSTD, CODEC_LZ4]),
    "producer_id": st.integers(-1, 2**62),
    "producer_epoch": st.integers(-1, 2**15 - 1),
    "base_sequence": st.integers(-1, 2**31 - 1),
    "base_offset": st.integers(0, 2**62),
    "epoch": st.integers(-1, 2**31 - 1),
})


def _build(a: dict) -> bytes:
    b = BatchBuilder(a["codec"], a["producer_id"], a["producer_epoch"], a["base_sequence"])
    for ts, k, v, hs in a["records"]:
        b.append(ts, k, v, hs)
    return b.seal(a["base_offset"], a["epoch"])


@LOG_SETTINGS
@given(batch_args)
def test_round_trip(a: dict) -> None:
    data = _build(a)
    (h,) = validate_batches(data)
    recs = decode_records(data, h)
    assert h.base_offset == a["base_offset"] and h.partition_leader_epoch == a["epoch"]
    assert h.record_count == len(a["records"])
    assert h.max_timestamp == max(r[0] for r in a["records"])
    assert [(r.offset, r.timestamp, r.key, r.value, [tuple(x) for x in r.headers])
            for r in recs] == [
        (a["base_offset"] + i, ts, k, v, [tuple(x) for x in hs])
        for i, (ts, k, v, hs) in enumerate(a["records"])]


@LOG_SETTINGS
@given(batch_args)
def test_every_built_batch_passes_the_leader_check(a: dict) -> None:
    """No false refusals: whatever a producer's builder seals, the leader accepts."""
    mv = memoryview(_build(a))
    check_client_batch(mv, validate_raw(mv)[0])


@LOG_SETTINGS
@given(batch_args, st.data())
def test_any_bit_flip_after_crc_field_is_detected(a: dict, data: st.DataObject) -> None:
    buf = bytearray(_build(a))
    # every bit of batch_length, magic, crc and everything the CRC covers
    positions = list(range(8 * 8, 12 * 8)) + list(range(16 * 8, len(buf) * 8))
    bit = data.draw(st.sampled_from(positions))
    buf[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(CorruptRecordError):
        validate_batches(bytes(buf))


@settings(LOG_SETTINGS, max_examples=30)
@given(st.lists(batch_args, min_size=1, max_size=4), st.data())
def test_concatenation_and_split_anywhere(batches: list[dict], data: st.DataObject) -> None:
    bufs = [_build(a) for a in batches]
    whole = b"".join(bufs)
    headers = validate_batches(whole)
    assert [h.size_bytes for h in headers] == [len(b) for b in bufs]
    cut = data.draw(st.integers(0, len(whole)))
    prefix = list(iter_headers(whole[:cut]))
    ends = [sum(len(b) for b in bufs[: i + 1]) for i in range(len(bufs))]
    assert len(prefix) == sum(1 for e in ends if e <= cut)
    if cut not in ends and cut:
        with pytest.raises(CorruptRecordError):
            validate_batches(whole[:cut])


@LOG_SETTINGS
@given(st.binary(max_size=HEADER_SIZE * 3))
def test_garbage_never_crashes(buf: bytes) -> None:
    try:
        validate_batches(buf)
    except CorruptRecordError:
        pass
