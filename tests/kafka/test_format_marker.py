"""The record-format mark in the log: dmq-native batches carry attribute bit 7 and get
the leader's record check; Kafka batches (no mark) are stored byte for byte with the
header checks only and read back, by readers and by the cleaner, as Kafka records."""

from __future__ import annotations

import pytest

from dmq.clock import ManualClock
from dmq.log import LogConfig, PartitionLog, build_batch, iter_records
from dmq.log.batch import ATTR_DMQ_NATIVE, BatchBuilder, decode_records, encode_batch, read_header
from dmq.log.errors import CorruptRecordError
from tests.unit.log.helpers import check_log_consistent

default_records = pytest.importorskip("kafka.record.default_records")


def kafka_batch(records: list[tuple[bytes | None, bytes | None]], ts: int,
                codec: int = 0) -> bytes:
    builder = default_records.DefaultRecordBatchBuilder(
        magic=2, compression_type=codec, is_transactional=False, producer_id=-1,
        producer_epoch=-1, base_sequence=-1, batch_size=1 << 30)
    for i, (key, value) in enumerate(records):
        builder.append(i, timestamp=ts, key=key, value=value, headers=[("h", b"%d" % i)])
    return bytes(builder.build())


def test_dmq_builder_marks_its_batches() -> None:
    b = BatchBuilder()
    b.append(1, b"k", b"v")
    assert read_header(b.seal()).attributes & ATTR_DMQ_NATIVE
    assert read_header(build_batch([(b"k", b"v")])).attributes & ATTR_DMQ_NATIVE
    assert read_header(encode_batch([[0, b"k", b"v", ()]], 0, 0, 0)).attributes \
        & ATTR_DMQ_NATIVE


@pytest.mark.parametrize("codec", [0, 1, 3, 4])
def test_leader_stores_a_kafka_batch_byte_for_byte(tmp_path: object, codec: int) -> None:
    plog = PartitionLog.open(str(tmp_path), LogConfig(), ManualClock(), fsync_enabled=False)
    batch = kafka_batch([(b"a", b"1"), (None, b"2"), (b"c", None)], 1000, codec)
    info = plog.append_as_leader(batch, 3)
    assert (info.base_offset, info.last_offset) == (0, 2)
    stored = bytes(plog.read(0, 1 << 20))
    assert stored[12:16] == (3).to_bytes(4, "big")  # leader epoch stamped in place
    assert stored[16:] == batch[16:]  # everything from magic on as the client sent it
    assert [(r.offset, r.key, r.value, r.headers) for r in iter_records(stored)] == [
        (0, b"a", b"1", (("h", b"0"),)), (1, None, b"2", (("h", b"1"),)),
        (2, b"c", None, (("h", b"2"),))]
    plog.close()


def test_an_unmarked_msgpack_batch_is_refused_by_readers_with_the_cause() -> None:
    """What a dmq writer made before the mark existed: msgpack records, no bit 7."""
    native = bytearray(build_batch([(b"k", b"v")]))
    from crc32c import crc32c

    native[21:23] = (int.from_bytes(native[21:23], "big") & ~ATTR_DMQ_NATIVE).to_bytes(2, "big")
    native[17:21] = crc32c(bytes(native[21:])).to_bytes(4, "big")
    with pytest.raises(CorruptRecordError, match="without the dmq-native mark"):
        decode_records(bytes(native))


def test_cleaner_compacts_kafka_batches(tmp_path: object) -> None:
    clock = ManualClock()
    cfg = LogConfig(cleanup_policy="compact", segment_bytes=1 << 20)
    plog = PartitionLog.open(str(tmp_path), cfg, clock, fsync_enabled=False)
    ts = clock.wall_ms()
    plog.append_as_leader(kafka_batch([(b"a", b"1"), (b"b", b"1"), (b"a", b"2")], ts, 1), 1)
    plog.append_as_leader(build_batch([(b"b", b"2")], ts), 1)  # dmq-native, same log
    plog.roll()
    plog.append_as_leader(kafka_batch([(b"c", b"1")], ts), 1)
    assert plog.clean().records_removed == 2
    cleaned = bytes(plog.read(0, 1 << 20))  # the closed segment, now dmq-native
    assert read_header(cleaned).attributes & ATTR_DMQ_NATIVE
    assert [(r.offset, r.key, r.value) for r in iter_records(cleaned)] == [
        (2, b"a", b"2"), (3, b"b", b"2")]
    active = bytes(plog.read(4, 1 << 20))  # the active segment: untouched Kafka batch
    assert not read_header(active).attributes & ATTR_DMQ_NATIVE
    assert [(r.offset, r.key, r.value) for r in iter_records(active)] == [(4, b"c", b"1")]
    check_log_consistent(plog)
    plog.close()
