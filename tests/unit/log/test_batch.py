from __future__ import annotations

import pytest

from dmq.log import (
    CODEC_LZ4,
    CODEC_NONE,
    CODEC_ZSTD,
    BatchBuilder,
    CorruptRecordError,
    decode_records,
    iter_headers,
    read_header,
    stamp_batch,
    validate_batches,
)
from dmq.log.batch import HEADER_SIZE, batch_crc_ok


@pytest.mark.parametrize("codec", [CODEC_NONE, CODEC_ZSTD, CODEC_LZ4])
def test_builder_round_trip(codec: int) -> None:
    b = BatchBuilder(codec=codec, producer_id=7, producer_epoch=2, base_sequence=10)
    b.append(1000, b"k1", b"v1", [("h", b"x")])
    b.append(990, None, b"v2" * 100)
    b.append(1005, b"k3", None)
    data = b.seal(base_offset=40, partition_leader_epoch=3)
    (h,) = validate_batches(data)
    assert (h.base_offset, h.last_offset, h.record_count) == (40, 42, 3)
    assert (h.base_timestamp, h.max_timestamp) == (1000, 1005)
    assert (h.producer_id, h.producer_epoch, h.base_sequence, h.last_sequence) == (7, 2, 10, 12)
    assert h.partition_leader_epoch == 3 and h.codec == codec
    assert h.size_bytes == len(data)
    recs = decode_records(data)
    assert [(r.offset, r.timestamp, r.key, r.value) for r in recs] == [
        (40, 1000, b"k1", b"v1"), (41, 990, None, b"v2" * 100), (42, 1005, b"k3", None)]
    assert recs[0].headers == (("h", b"x"),)


def test_stamp_in_place_keeps_crc() -> None:
    b = BatchBuilder()
    b.append(1, b"a", b"b")
    data = bytearray(b.seal())
    stamp_batch(data, 0, 123456789, 42)
    (h,) = validate_batches(data)
    assert h.base_offset == 123456789 and h.partition_leader_epoch == 42
    assert batch_crc_ok(data)


def test_empty_and_garbage_are_typed_errors() -> None:
    with pytest.raises(CorruptRecordError):
        validate_batches(b"")
    with pytest.raises(CorruptRecordError):
        validate_batches(b"\x00" * 10)
    with pytest.raises(CorruptRecordError):
        validate_batches(b"\xff" * 100)
    with pytest.raises(CorruptRecordError):
        read_header(b"abc")
    with pytest.raises(ValueError):
        BatchBuilder().seal()


def test_trailing_bytes_rejected() -> None:
    b = BatchBuilder()
    b.append(1, b"a", b"b")
    data = b.seal()
    with pytest.raises(CorruptRecordError):
        validate_batches(data + b"\x00")


def test_iter_headers_stops_at_partial_tail() -> None:
    b = BatchBuilder()
    b.append(1, b"a", b"b")
    one = b.seal()
    buf = one + one + one[: len(one) // 2]
    assert len(list(iter_headers(buf))) == 2
    assert len(list(iter_headers(one[: HEADER_SIZE - 1]))) == 0


def test_record_count_mismatch_is_corrupt() -> None:
    from dmq.log.batch import encode_batch

    data = encode_batch([[0, b"k", b"v", ()]], 0, 0, 0, last_offset_delta=0)
    bad = bytearray(data)
    # declare 2 records but carry 1 (recompute nothing: CRC check fails first)
    bad[57:61] = (2).to_bytes(4, "big")
    with pytest.raises(CorruptRecordError):
        validate_batches(bytes(bad))
    with pytest.raises(CorruptRecordError):
        decode_records(bytes(bad))


def test_corrupt_compressed_payload_is_typed() -> None:
    from dmq.log.batch import encode_batch

    data = bytearray(encode_batch([[0, b"k", b"v" * 50, ()]], 0, 0, 0, attributes=CODEC_ZSTD))
    data[HEADER_SIZE + 5] ^= 0xFF
    with pytest.raises(CorruptRecordError):
        decode_records(bytes(data))
