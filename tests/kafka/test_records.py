"""Converting dmq-native batches to Kafka batches for Kafka consumers, checked with an
independent Kafka record decoder (kafka-python's), and the pass-through of every
batch that is not dmq-native."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmq.kafka.records import kafka_view, native_to_kafka
from dmq.log.batch import BatchBuilder, Record, encode_batch, read_header
from dmq.log.codecs import MAX_UNCOMPRESSED_RECORDS_BYTES
from dmq.log.errors import CorruptRecordError, UnsupportedCompressionError
from dmq.log.kafka_records import (
    decode_kafka_records,
    encode_kafka_records,
    read_varint,
    write_varint,
)

default_records = pytest.importorskip("kafka.record.default_records")

_blob = st.one_of(st.none(), st.binary(max_size=50))
_record = st.tuples(st.integers(0, 10_000), _blob, _blob,
                    st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=8)), max_size=3))


def _decode_kafka(batch: bytes) -> tuple[object, list[tuple[int, int, object, object, list]]]:
    kb = default_records.DefaultRecordBatch(batch)
    assert kb.validate_crc()
    return kb, [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in kb]


@settings(max_examples=200, deadline=None)
@given(records=st.lists(_record, min_size=1, max_size=20),
       base_offset=st.integers(0, 2**40), base_ts=st.integers(0, 2**41),
       producer=st.tuples(st.integers(-1, 2**40), st.integers(-1, 100), st.integers(-1, 2**20)),
       log_append=st.booleans())
def test_native_batch_converts_to_the_same_records(
        records: list, base_offset: int, base_ts: int, producer: tuple[int, int, int],
        log_append: bool) -> None:
    pid, epoch, seq = producer
    b = BatchBuilder(0, pid, epoch, seq)
    if log_append:
        b.timestamp_type = 1
    for ts, key, value, headers in records:
        b.append(base_ts + ts, key, value, headers)
    native = b.seal(base_offset, 7)
    h = read_header(native)
    converted = native_to_kafka(native, h)
    kb, got = _decode_kafka(converted)
    # (with LogAppendTime, Kafka readers give every record the batch's max_timestamp)
    assert got == [(base_offset + i, h.max_timestamp if log_append else base_ts + ts, key,
                    value, headers) for i, (ts, key, value, headers) in enumerate(records)]
    assert (kb.base_offset, kb.leader_epoch, kb.producer_id, kb.producer_epoch,
            kb.base_sequence, kb.last_offset_delta, kb.max_timestamp, kb.timestamp_type) == (
        base_offset, 7, pid, epoch, seq, len(records) - 1, h.max_timestamp, int(log_append))
    assert kb.compression_type == 0


def test_compacted_batch_keeps_its_offset_gaps() -> None:
    """A batch whose last_offset_delta is past its record count (the cleaner's runs keep
    offsets exact) converts with the same offsets."""
    native = encode_batch([[0, b"k", b"v", ()], [5, b"k2", None, ()]], base_offset=100,
                          base_timestamp=1000, max_timestamp=1005, last_offset_delta=1)
    _, got = _decode_kafka(native_to_kafka(native, read_header(native)))
    assert [(o, t) for o, t, *_ in got] == [(100, 1000), (101, 1005)]


def test_view_passes_other_batches_through_uncopied() -> None:
    a = encode_batch([[0, b"a", b"1", ()]], 0, 10, 10)
    b = encode_batch([[0, b"b", b"2", ()]], 1, 11, 11)
    data = memoryview(a + b + b[:20])  # two batches and a partial one
    assert kafka_view(data, lambda attrs: False) is data
    parts = kafka_view(data, lambda attrs: True)
    assert isinstance(parts, list)
    joined = b"".join(bytes(p) for p in parts)
    first = native_to_kafka(a, read_header(a))
    second = native_to_kafka(b, read_header(b))
    assert joined == first + second + b[:20]


@given(st.integers(-(2**63), 2**63 - 1))
def test_zigzag_varint_round_trip(value: int) -> None:
    out = bytearray()
    write_varint(out, value)
    assert read_varint(out, 0) == (value, len(out))


# ---------------------------------------------------------------------------- Kafka records

def _kafka_batch(codec: int, records: list, base_offset: int = 0) -> bytes:
    builder = default_records.DefaultRecordBatchBuilder(
        magic=2, compression_type=codec, is_transactional=False, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=1 << 30)
    for i, (ts, key, value, headers) in enumerate(records):
        builder.append(i, timestamp=ts, key=key, value=value, headers=headers)
    batch = bytearray(builder.build())
    batch[0:8] = base_offset.to_bytes(8, "big")
    return bytes(batch)


@pytest.mark.parametrize("codec", [0, 1, 3, 4])  # none, gzip, lz4, zstd
@settings(max_examples=40, deadline=None)
@given(records=st.lists(st.tuples(st.integers(1, 2**40), _blob, _blob,
                                  st.lists(st.tuples(st.text(max_size=8),
                                                     st.one_of(st.none(), st.binary(max_size=8))),
                                           max_size=3)),
                        min_size=1, max_size=20),
       base_offset=st.integers(0, 2**40))
def test_kafka_batches_decode_to_their_records(codec: int, records: list,
                                               base_offset: int) -> None:
    batch = _kafka_batch(codec, records, base_offset)
    got = decode_kafka_records(batch, read_header(batch))
    assert [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in got] == [
        (base_offset + i, ts, key, value, headers)
        for i, (ts, key, value, headers) in enumerate(records)]


def test_zstd_frame_without_content_size() -> None:
    """Streaming encoders (librdkafka's, Java's) write zstd frames with no content size."""
    import zstandard

    recs = [Record(0, 5, b"k", b"v" * 1000, (("h", b"x"),)), Record(1, 6, None, b"w", ())]
    raw = bytes(encode_kafka_records(recs, 0, 5))
    cobj = zstandard.ZstdCompressor().compressobj()
    payload = cobj.compress(raw) + cobj.flush()
    assert zstandard.get_frame_parameters(payload).content_size == zstandard.CONTENTSIZE_UNKNOWN
    batch = _with_payload(payload, codec=4, count=2, base_ts=5)
    assert decode_kafka_records(batch, read_header(batch)) == recs


def _with_payload(payload: bytes, codec: int, count: int, base_ts: int) -> bytes:
    from crc32c import crc32c

    from dmq.log.batch import HEADER_STRUCT

    head = bytearray(HEADER_STRUCT.pack(0, 49 + len(payload), -1, 2, 0, codec, count - 1,
                                        base_ts, base_ts, -1, -1, -1, count))
    head += payload
    head[17:21] = crc32c(bytes(head[21:])).to_bytes(4, "big")
    return bytes(head)


def test_decompression_bomb_is_refused() -> None:
    import gzip

    payload = gzip.compress(b"\0" * (MAX_UNCOMPRESSED_RECORDS_BYTES + 1024))
    batch = _with_payload(payload, codec=1, count=1, base_ts=0)
    with pytest.raises(CorruptRecordError, match="at most 67108864 bytes"):
        decode_kafka_records(batch, read_header(batch))


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=100), codec=st.sampled_from([0, 1, 2, 3, 4, 5]),
       count=st.integers(1, 5))
def test_garbage_records_raise_only_the_typed_error(payload: bytes, codec: int,
                                                    count: int) -> None:
    batch = _with_payload(payload, codec=codec, count=count, base_ts=0)
    try:
        decode_kafka_records(batch, read_header(batch))
    except (CorruptRecordError, UnsupportedCompressionError):  # both typed LogErrors
        pass
