"""A leader refuses client batches whose header disagrees with their records or whose
records no reader could decode (issue 25, item 6); readers and the cleaner turn such a
batch already on disk into a typed error, never a crash or a traceback per pass."""

from __future__ import annotations

import logging
import struct

import msgpack
import pytest
from crc32c import crc32c

from dmq.clock import ManualClock
from dmq.log import (
    LogConfig,
    PartitionLog,
    build_batch,
    decode_records,
    iter_records,
    validate_batches,
)
from dmq.log.batch import (
    ATTR_DMQ_NATIVE,
    ATTR_TIMESTAMP_TYPE,
    HEADER_STRUCT,
    LOG_OVERHEAD,
    BatchBuilder,
    validate_raw,
)
from dmq.log.codecs import CODEC_LZ4, CODEC_ZSTD, MAX_UNCOMPRESSED_RECORDS_BYTES, compress
from dmq.log.errors import CorruptRecordError, InvalidRecordError

TS = 1_700_000_000_000


def raw_batch(payload: bytes, record_count: int, last_offset_delta: int | None = None,
              base_ts: int = TS, max_ts: int = TS, attributes: int = 0,
              base_offset: int = 0, epoch: int = -1) -> bytes:
    """A dmq-native batch (the mark is added to `attributes`) with a valid CRC around
    any records payload and any header values."""
    lod = record_count - 1 if last_offset_delta is None else last_offset_delta
    length = HEADER_STRUCT.size - LOG_OVERHEAD + len(payload)
    attributes |= ATTR_DMQ_NATIVE
    head = bytearray(HEADER_STRUCT.pack(base_offset, length, epoch, 2, 0, attributes, lod,
                                        base_ts, max_ts, -1, -1, -1, record_count))
    body = bytes(head[21:]) + payload
    struct.pack_into(">I", head, 17, crc32c(body))
    return bytes(head[:21]) + body


def records(*recs: object) -> bytes:
    return msgpack.packb(list(recs), use_bin_type=True)


def good(n: int = 3) -> list[list[object]]:
    return [[i, b"k%d" % i, b"v%d" % i, []] for i in range(n)]


@pytest.fixture
def plog(tmp_path: object) -> PartitionLog:
    log = PartitionLog.open(str(tmp_path), LogConfig(), ManualClock(), fsync_enabled=False)
    yield log
    log.close()


REFUSED = {
    # the reproductions
    "count lies (5 declared, 3 present)": (records(*good(3)), 5, None,
                                           "record_count 5 but the records array holds 3"),
    "records not msgpack": (b"\xc1\xc1not msgpack", 1, None, "not one msgpack array"),
    "last_offset_delta 2^31-1 on 1 record": (records(*good(1)), 1, 2**31 - 1,
                                             "last_offset_delta 2147483647"),
    # other lies and shapes no reader decodes
    "trailing bytes": (records(*good(1)) + b"\x00", 1, None, "not one msgpack array"),
    "not an array": (msgpack.packb({"a": 1}), 1, None, "not an array"),
    "record not an array": (records(1), 1, None, "not an array [timestamp_delta"),
    "record of 3 fields": (records([0, b"k", b"v"]), 1, None, "not an array [timestamp"),
    "records of 4 and 5 fields": (records([0, None, b"v", []], [0, None, b"v", [], 1]), 2,
                                  None, "not an array [timestamp"),
    "string timestamp_delta": (records(["0", None, b"v", []]), 1, None, "not an integer"),
    "float timestamp_delta": (records([0.5, None, b"v", []]), 1, None, "not an integer"),
    "int key": (records([0, 7, b"v", []]), 1, None, "key is not bytes"),
    "map value": (records([0, None, {"a": 1}, []]), 1, None, "value is not bytes"),
    "headers a map": (records([0, None, b"v", {"h": b"x"}]), 1, None, "headers are not"),
    "header of 3": (records([0, None, b"v", [["h", b"x", 1]]]), 1, None, "[key, value] pair"),
    "header value int": (records([0, None, b"v", [["h", 5]]]), 1, None, "header's key"),
    "count 0 of an empty array": (records(), 1, None, "holds 0"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_the_leader_refuses_a_batch_readers_cannot_decode(plog: PartitionLog,
                                                          case: str) -> None:
    payload, count, lod, reason = REFUSED[case]
    data = raw_batch(payload, count, lod)
    with pytest.raises(InvalidRecordError, match=reason.replace("[", r"\[")):
        plog.append_as_leader(data, 1)
    assert plog.log_end_offset == 0 and plog.size_bytes == 0  # nothing stored
    plog.append_as_leader(build_batch([(b"k", b"v")], TS), 1)
    assert plog.log_end_offset == 1


@pytest.mark.parametrize(("base_ts", "delta", "max_ts", "reason"), [
    (-2**63, 0, -2**63, "out of range"),
    (TS, -TS - 2, TS, "out of range"),  # a record before -1
    (2**63 - 1, 1, 2**63 - 1, "out of range"),  # a record past 2^63-1
    (TS, 0, TS + 5, "max_timestamp .* is not the largest"),
    (TS, 9, TS, "max_timestamp .* is not the largest"),
])
def test_the_leader_refuses_timestamps_out_of_range_or_disagreeing(
        plog: PartitionLog, base_ts: int, delta: int, max_ts: int, reason: str) -> None:
    data = raw_batch(records([delta, None, b"v", []]), 1, base_ts=base_ts, max_ts=max_ts)
    with pytest.raises(InvalidRecordError, match=reason):
        plog.append_as_leader(data, 1)
    assert plog.log_end_offset == 0


def test_the_leader_accepts_every_shape_a_producer_builds(plog: PartitionLog) -> None:
    b = BatchBuilder()
    b.append(TS + 5, None, b"a", [("h", b"1"), ("g", b"")])
    b.append(TS, b"k", None)  # a tombstone, earlier than the first record
    b.append(TS + 9, b"", b"")
    plog.append_as_leader(b.seal(), 1)
    plog.append_as_leader(build_batch([(None, b"x")], -1), 1)  # no timestamp (-1)
    # the LogAppendTime bit: max_timestamp need not be a record timestamp
    lat = raw_batch(records([0, None, b"v", []]), 1, max_ts=TS + 1000,
                    attributes=ATTR_TIMESTAMP_TYPE)
    plog.append_as_leader(lat, 1)
    for codec in (CODEC_ZSTD, CODEC_LZ4):
        plog.append_as_leader(build_batch([(b"k", b"v" * 1000)] * 50, TS, codec=codec), 1)
    assert plog.log_end_offset == 105
    assert len(list(iter_records(plog.read(0, 1 << 20)))) == 105


def test_a_request_of_several_batches_is_refused_whole(plog: PartitionLog) -> None:
    first = build_batch([(b"k", b"v")], TS)
    data = first + raw_batch(records(*good(3)), 5)
    with pytest.raises(InvalidRecordError, match=f"position {len(first)}"):
        plog.append_as_leader(data, 1)
    assert plog.log_end_offset == 0


@pytest.mark.parametrize("codec", [CODEC_ZSTD, CODEC_LZ4])
def test_compressed_batches_are_checked_after_a_bounded_decompression(
        plog: PartitionLog, codec: int) -> None:
    lying = raw_batch(compress(codec, records(*good(3))), 5, attributes=codec)
    with pytest.raises(InvalidRecordError, match="holds 3"):
        plog.append_as_leader(lying, 1)
    garbage = raw_batch(compress(codec, b"\xc1 not msgpack"), 1, attributes=codec)
    with pytest.raises(InvalidRecordError, match="not one msgpack array"):
        plog.append_as_leader(garbage, 1)
    not_compressed = raw_batch(records(*good(1)), 1, attributes=codec)
    with pytest.raises(InvalidRecordError, match="cannot decompress"):
        plog.append_as_leader(not_compressed, 1)
    # a bomb: a small batch that inflates past the bound is refused, not inflated
    bomb = raw_batch(compress(codec, bytes(MAX_UNCOMPRESSED_RECORDS_BYTES + 1)), 1,
                     attributes=codec)
    assert len(bomb) < 1_000_000
    with pytest.raises(InvalidRecordError,
                       match=f"at most {MAX_UNCOMPRESSED_RECORDS_BYTES} bytes"):
        plog.append_as_leader(bomb, 1)
    assert plog.log_end_offset == 0


def test_readers_get_a_typed_error_for_an_undecodable_stored_batch(
        plog: PartitionLog) -> None:
    """A batch stored before leaders checked records (a follower append stores what it
    is given): every reader raises `CorruptRecordError` naming the problem."""
    for payload, count, lod, _reason in REFUSED.values():
        if lod is None:  # (a gap is legal in a stored, compacted batch)
            plog.append_as_follower(raw_batch(payload, count,
                                              base_offset=plog.log_end_offset))
    data = plog.read(0, 1 << 20)
    headers = validate_batches(data)
    assert len(headers) == len(REFUSED) - 1
    for h in headers:
        with pytest.raises(CorruptRecordError, match="undecodable records in batch"):
            decode_records(data, h)
    with pytest.raises(CorruptRecordError):
        list(iter_records(data))


def test_the_cleaner_keeps_an_undecodable_batch_logs_it_once_and_compacts_the_rest(
        tmp_path: object, caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    cfg = LogConfig(segment_bytes=300, cleanup_policy="compact", delete_retention_ms=0)
    plog = PartitionLog.open(str(tmp_path), cfg, clock, fsync_enabled=False)
    for i in range(10):
        plog.append_as_leader(build_batch([(b"k", b"v%d" % i)], clock.wall_ms()), 1)
    bad_offset = plog.log_end_offset
    plog.append_as_follower(raw_batch(records(*good(3)), 5, base_offset=bad_offset,
                                      base_ts=clock.wall_ms(), max_ts=clock.wall_ms(),
                                      epoch=1))
    for i in range(10):
        plog.append_as_leader(build_batch([(b"k", b"w%d" % i)], clock.wall_ms()), 1)
    plog.roll()
    with caplog.at_level(logging.WARNING, logger="dmq.log"):
        res = plog.clean()
        plog.append_as_leader(build_batch([(b"k", b"x")], clock.wall_ms()), 1)
        plog.roll()
        plog.clean()  # a second pass over the same bad batch: no second line
    assert res.segments_rewritten > 0
    lines = [r for r in caplog.records if "undecodable batch" in r.getMessage()]
    assert len(lines) == 1 and f"offset {bad_offset}" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info]
    # the bad batch is still there, whole, and the key's history was compacted around it
    data = plog.read(0, 1 << 20)
    kept = [t[0] for t in validate_raw(memoryview(data))]
    assert bad_offset in kept
    assert len(kept) < 21
    plog.close()


def test_all_dmq_native_reads_the_mark_of_every_batch() -> None:
    """The produce handler's per-batch test of dmq's own protocol: bytes or memoryview,
    one batch or many; a partial tail or a bad length is left to the append's checks."""
    from dmq.log.batch import HEADER_SIZE, all_dmq_native

    native = build_batch([(b"k", b"v")], 1000)
    unmarked = bytearray(native)
    unmarked[22] &= ~ATTR_DMQ_NATIVE & 0xFF  # the mark is in the attributes' low byte
    unmarked = bytes(unmarked)
    bad_length = bytearray(native)
    struct.pack_into(">i", bad_length, 8, 3)
    for wrap in (bytes, memoryview):
        assert all_dmq_native(wrap(native))
        assert all_dmq_native(wrap(native * 5))
        assert not all_dmq_native(wrap(unmarked))
        assert not all_dmq_native(wrap(native * 3 + unmarked + native))
        assert all_dmq_native(wrap(native * 2 + native[:HEADER_SIZE - 1]))  # partial tail
        assert all_dmq_native(wrap(bytes(bad_length) + unmarked))  # stops at a bad length
        assert all_dmq_native(wrap(b""))
