"""Consumer decoding in isolation: chunks of fetched batch bytes in, records out,
with positions inside batches, `max_records` leftovers, CRC checks and control batches."""

from __future__ import annotations

import pytest

from dmq.client.consumer import Consumer, _Chunk, _PartitionState
from dmq.client.records import ConsumerRecord, TopicPartition
from dmq.log.batch import ATTR_CONTROL, build_batch, encode_batch, iter_headers
from dmq.log.codecs import CODEC_LZ4, CODEC_ZSTD
from dmq.protocol.errors import CorruptMessageError

TP = TopicPartition("t", 0)


def _batches(*specs: tuple[int, int], codec: int = 0) -> bytes:
    """Concatenated batches, each (base_offset, count) with values b'<offset>'."""
    return b"".join(build_batch([(b"k", b"%d" % (base + i)) for i in range(n)], 5000 + base,
                                base_offset=base, codec=codec) for base, n in specs)


def _consumer(data: bytes, position: int, **kw: object) -> Consumer:
    c = Consumer("127.0.0.1:1", **kw)  # type: ignore[arg-type]
    c._started = True
    st = _PartitionState(TP, position=position, fetch_offset=position)
    st.chunks.append(_Chunk(data, list(iter_headers(data))))
    c._sub.states[TP] = st
    return c


def _offsets(recs: list[ConsumerRecord]) -> list[int]:
    return [r.offset for r in recs]


@pytest.mark.parametrize("codec", [0, CODEC_ZSTD, CODEC_LZ4])
def test_position_inside_a_batch_skips_earlier_records(codec: int) -> None:
    c = _consumer(_batches((10, 5), (15, 5), codec=codec), position=12)
    out = c._collect(None, 100)
    assert _offsets(out[TP]) == list(range(12, 20))
    r = out[TP][0]
    assert (r.topic, r.partition, r.key, r.value, r.timestamp, r.headers) == (
        "t", 0, b"k", b"12", 5010, ())
    assert c._sub.states[TP].position == 20
    assert not c._sub.states[TP].chunks


def test_max_records_leaves_a_leftover_and_resumes_exactly() -> None:
    c = _consumer(_batches((0, 10), (10, 10)), position=0)
    got: list[int] = []
    while len(got) < 20:
        out = c._collect(None, 3)
        assert len(out[TP]) <= 3
        got += _offsets(out[TP])
        assert c._sub.states[TP].position == got[-1] + 1
    assert got == list(range(20))
    assert c._collect(None, 3) == {}


def test_crc_mismatch_raises_and_does_not_skip() -> None:
    data = bytearray(_batches((0, 4), (4, 4)))
    data[-3] ^= 0xFF  # inside the second batch's records
    c = _consumer(bytes(data), position=0)
    out = c._collect(None, 100)
    assert _offsets(out[TP]) == [0, 1, 2, 3]
    with pytest.raises(CorruptMessageError):
        c._collect(None, 100)
    assert c._sub.states[TP].position == 4
    c2 = _consumer(bytes(data), position=0, check_crcs=False)
    try:  # without the check: decoded as is, or an undecodable batch, never a crash
        c2._collect(None, 100)
    except CorruptMessageError:
        pass


def test_control_batches_are_skipped_and_advance_the_position() -> None:
    ctl = encode_batch([[0, None, b"marker", ()]], 3, 0, 0, attributes=ATTR_CONTROL)
    data = _batches((0, 3)) + ctl + _batches((4, 2))
    c = _consumer(data, position=0)
    assert _offsets(c._collect(None, 100)[TP]) == [0, 1, 2, 4, 5]


def test_deserializers_apply_per_record() -> None:
    c = _consumer(_batches((0, 2)), position=0, key_deserializer=bytes.decode,
                  value_deserializer=int)
    recs = c._collect(None, 100)[TP]
    assert [(r.key, r.value) for r in recs] == [("k", 0), ("k", 1)]


def test_paused_partitions_return_nothing() -> None:
    c = _consumer(_batches((0, 2)), position=0)
    c.pause(TP)
    assert c._collect(None, 100) == {}


@pytest.mark.parametrize("batches", [False, True])
def test_max_records_counts_records_across_partitions(batches: bool) -> None:
    """`max_records` is a count of records: 3 + 3 records of two partitions fit a limit
    of 10 in one call (a batch of `getmany_batches` counts as its records)."""
    c = _consumer(_batches((0, 3)), position=0)
    tp1 = TopicPartition("t", 1)
    st = _PartitionState(tp1, position=0, fetch_offset=0)
    data = _batches((0, 3))
    st.chunks.append(_Chunk(data, list(iter_headers(data))))
    c._sub.states[tp1] = st
    out = c._collect(None, 10, batches)
    if batches:
        out = {tp: [r for b in bs for r in b.records] for tp, bs in out.items()}
    assert {tp: _offsets(recs) for tp, recs in out.items()} == {TP: [0, 1, 2],
                                                                 tp1: [0, 1, 2]}
