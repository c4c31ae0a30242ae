"""Record batch format: layout, builder, zero-copy header reader, in-place stamping.

This module defines the on-disk and on-wire bytes of a record batch. The broker uses it
to validate and stamp batches without ever decoding records; clients use the builder
and `decode_records`. It never imports asyncio or touches files. The header's
constants and the `BatchHeader`/`Record` types are defined in `dmq.log.batch_header`
(for `dmq.log.kafka_records`, which decodes Kafka-format records for this module) and
are importable from here too.

Layout (all integers big-endian), modelled on Kafka's RecordBatch v2::

    pos  size  field
      0     8  base_offset             i64   stamped by the leader
      8     4  batch_length            i32   bytes after this field (= total size - 12)
     12     4  partition_leader_epoch  i32   stamped by the leader
     16     1  magic                   i8    always 2
     17     4  crc                     u32   CRC-32C of bytes [21, end)
     21     2  attributes              i16   see below
     23     4  last_offset_delta       i32   last offset - base_offset
     27     8  base_timestamp          i64   ms
     35     8  max_timestamp           i64   ms
     43     8  producer_id             i64   -1 when not idempotent
     51     2  producer_epoch          i16   -1 when not idempotent
     53     4  base_sequence           i32   -1 when not idempotent
     57     4  record_count            i32
     61     .  records                       msgpack array or Kafka records, maybe compressed

`attributes` bits: 0-2 compression codec (Kafka's numbers: 0 none, 1 gzip, 2 snappy,
3 lz4, 4 zstd), 3 timestamp type (0 CreateTime, 1 LogAppendTime), 4 transactional,
5 control, 7 dmq-native records (`ATTR_DMQ_NATIVE`); the rest are reserved and must be
zero (bit 6 is Kafka's delete horizon, unused here). The header is Kafka's RecordBatch
v2 header, byte for byte, so a batch holds one of two record formats, told apart by
bit 7 alone: set, the dmq-native msgpack records described below (every batch dmq's
builder writes); clear, Kafka's varint records (`dmq.log.kafka_records`), as a Kafka
client sent them through the Kafka listener, stored byte for byte. Data written
before bit 7 existed has it clear and would read as Kafka records, which it is not
(a `CorruptRecordError` naming the cause): a log opens through `dmq.log.migrate`, which
marks such batches in place first. The CRC starts at
`attributes` so that `base_offset` and `partition_leader_epoch` can be rewritten in
place by the leader without recomputing it (Kafka does the same). The dmq-native
records payload is one msgpack array of records, each
`[timestamp_delta, key, value, headers]` where `headers` is an array of
`[str key, bytes value]` pairs; the record at index i has offset `base_offset + i` and
timestamp `base_timestamp + timestamp_delta`. Compaction keeps offsets exact by
splitting batches into runs of consecutive kept records.

What a leader stores, every reader must decode, so a dmq-native client batch is
checked against its contents before it is accepted (`check_client_batch`, Kafka's
leader validates records too; a Kafka-format batch gets the header checks only): the
payload (decompressed, bounded by `codecs.MAX_UNCOMPRESSED_RECORDS_BYTES`) is exactly
one msgpack array of `record_count` records, each `[int, bytes|nil, bytes|nil, array
of [str, bytes|nil] pairs]`; `last_offset_delta == record_count - 1`; every
record timestamp, `base_timestamp` and `max_timestamp` lie in [-1, 2^63-1] (-1: no
timestamp, as in Kafka); and for
CreateTime `max_timestamp` is the largest record timestamp. The check is one C-level
unpack of the records plus a few C-level passes over them (no per-record Python code);
`decode_records` applies the same checks, so an undecodable batch already on disk is
a `CorruptRecordError` for every reader, never another exception.
"""

from __future__ import annotations

import gc
import struct
import threading
from collections.abc import Iterator, Sequence
from itertools import chain, repeat
from typing import Any

import msgpack  # type: ignore[import-untyped]
from crc32c import crc32c

from dmq.log.batch_header import (
    ATTR_CODEC_MASK,
    ATTR_CONTROL,
    ATTR_DMQ_NATIVE,
    ATTR_KNOWN_MASK,
    ATTR_TIMESTAMP_TYPE,
    ATTR_TRANSACTIONAL,
    CRC_START,
    HEADER_SIZE,
    HEADER_STRUCT,
    LOG_OVERHEAD,
    MAGIC,
    MIN_BATCH_LENGTH,
    NO_PARTITION_LEADER_EPOCH,
    NO_PRODUCER_EPOCH,
    NO_PRODUCER_ID,
    NO_SEQUENCE,
    BatchHeader,
    Buffer,
    Record,
)
from dmq.log.codecs import CODEC_NONE, compress, decompress
from dmq.log.errors import CorruptRecordError, InvalidRecordError
from dmq.log.kafka_records import decode_kafka_records

STAMP_STRUCT = struct.Struct(">qii")  # base_offset, batch_length, partition_leader_epoch
_OFFSET_STRUCT = struct.Struct(">q")
_EPOCH_STRUCT = struct.Struct(">i")
_PREFIX_STRUCT = struct.Struct(">qiib")  # base_offset, batch_length, epoch, magic
_TAIL_STRUCT = struct.Struct(">hiqqqhii")  # attributes .. record_count

TIMESTAMP_CREATE_TIME = 0
TIMESTAMP_LOG_APPEND_TIME = 1


def read_header(buf: Buffer, position: int = 0) -> BatchHeader:
    """Unpack the header at `position` without any check beyond there being 61 bytes."""
    if len(buf) - position < HEADER_SIZE:
        raise CorruptRecordError(f"truncated batch header at position {position}")
    return BatchHeader._make((*HEADER_STRUCT.unpack_from(buf, position), position))


def check_header(h: BatchHeader, available: int) -> None:
    """Structural checks of a header; `available` is the bytes from its start to the buffer end."""
    if h.magic != MAGIC:
        raise CorruptRecordError(f"bad magic {h.magic} at position {h.position}")
    if h.batch_length < MIN_BATCH_LENGTH:
        raise CorruptRecordError(f"batch_length {h.batch_length} too small at {h.position}")
    if h.batch_length + LOG_OVERHEAD > available:
        raise CorruptRecordError(f"truncated batch at position {h.position}")
    if h.record_count < 1 or h.last_offset_delta < h.record_count - 1:
        raise CorruptRecordError(
            f"record_count {h.record_count} / last_offset_delta {h.last_offset_delta} "
            f"inconsistent at {h.position}"
        )
    if h.attributes & ~ATTR_KNOWN_MASK or h.attributes < 0:
        raise CorruptRecordError(f"unknown attribute bits {h.attributes:#x} at {h.position}")


def validate_raw(mv: memoryview, check_crc: bool = True) -> list[tuple[int, ...]]:
    """`validate_batches` returning raw header tuples (the 13 fields, then the position).

    The hot-path form used by `PartitionLog`: no NamedTuple per batch. With
    `check_crc=False` the caller must check CRCs itself.
    """
    size = len(mv)
    if size == 0:
        raise CorruptRecordError("empty batch buffer")
    unpack = HEADER_STRUCT.unpack_from
    out: list[tuple[int, ...]] = []
    pos = 0
    while pos < size:
        if size - pos < HEADER_SIZE:
            raise CorruptRecordError(f"truncated batch header at position {pos}")
        t = unpack(mv, pos)
        end = pos + t[1] + LOG_OVERHEAD
        if (t[3] != MAGIC or t[1] < MIN_BATCH_LENGTH or end > size or t[12] < 1
                or t[6] < t[12] - 1 or t[5] & ~ATTR_KNOWN_MASK):
            check_header(BatchHeader._make((*t, pos)), size - pos)  # raises: the reason
        if check_crc and crc32c(mv[pos + CRC_START : end]) != t[4]:
            raise CorruptRecordError(f"CRC mismatch in batch at position {pos}")
        out.append((*t, pos))
        pos = end
    return out


def validate_batches(buf: Buffer) -> list[BatchHeader]:
    """Check every batch of a buffer of concatenated batches: length, magic, CRC.

    Returns the headers in order. Raises `CorruptRecordError` on the first problem,
    including an empty buffer or trailing bytes. Per batch work only: no record is
    decoded.
    """
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    return [BatchHeader._make(t) for t in validate_raw(mv)]


def all_dmq_native(buf: Buffer) -> bool:
    """True when every whole batch in `buf` carries `ATTR_DMQ_NATIVE`: what dmq's own
    protocol accepts from a producer (one byte per batch; a malformed buffer is left to
    the append's own checks)."""
    size = len(buf)
    pos = 0
    while size - pos >= HEADER_SIZE:
        batch_length, attributes_low = _LENGTH_AND_MARK(buf, pos)
        if not attributes_low & ATTR_DMQ_NATIVE:
            return False
        if batch_length < MIN_BATCH_LENGTH:
            return True
        pos += batch_length + LOG_OVERHEAD
    return True


# batch_length (position 8) and the low byte of attributes (position 22) in one unpack
_LENGTH_AND_MARK = struct.Struct(">8xi10xB").unpack_from


def any_producer_id(buf: Buffer) -> bool:
    """True when a whole batch in `buf` names a producer id (an idempotent producer's:
    what an ACL check of IdempotentWrite looks at; one unpack per batch)."""
    size = len(buf)
    pos = 0
    while size - pos >= HEADER_SIZE:
        batch_length, producer_id = _LENGTH_AND_PRODUCER(buf, pos)
        if producer_id != NO_PRODUCER_ID:
            return True
        if batch_length < MIN_BATCH_LENGTH:
            return False
        pos += batch_length + LOG_OVERHEAD
    return False


# batch_length (position 8) and producer_id (position 43) in one unpack
_LENGTH_AND_PRODUCER = struct.Struct(">8xi31xq").unpack_from


def iter_headers(buf: Buffer) -> Iterator[BatchHeader]:
    """Yield headers of whole batches in `buf` without CRC checks; stop at a partial tail."""
    size = len(buf)
    unpack = HEADER_STRUCT.unpack_from
    pos = 0
    while size - pos >= HEADER_SIZE:
        h = BatchHeader._make((*unpack(buf, pos), pos))
        end = pos + h.batch_length + LOG_OVERHEAD
        if h.batch_length < MIN_BATCH_LENGTH or end > size:
            return
        yield h
        pos = end


def stamp_batch(buf: bytearray | memoryview, position: int, base_offset: int,
                partition_leader_epoch: int) -> None:
    """Rewrite base_offset and partition_leader_epoch in place; the CRC stays valid."""
    _OFFSET_STRUCT.pack_into(buf, position, base_offset)
    _EPOCH_STRUCT.pack_into(buf, position + 12, partition_leader_epoch)


def with_log_append_time(body: Buffer, now_ms: int) -> bytes:
    """A batch's bytes from `magic` on (position 16), with the LogAppendTime bit and
    `max_timestamp = now_ms` set and the CRC recomputed (the leader's LogAppendTime)."""
    b = bytearray(body)
    off = CRC_START - 16
    attrs = struct.unpack_from(">h", b, off)[0] | ATTR_TIMESTAMP_TYPE
    struct.pack_into(">h", b, off, attrs)
    struct.pack_into(">q", b, 35 - 16, now_ms)
    struct.pack_into(">I", b, 1, crc32c(memoryview(b)[off:]))
    return bytes(b)


def batch_crc_ok(buf: Buffer, position: int = 0) -> bool:
    h = read_header(buf, position)
    end = position + h.batch_length + LOG_OVERHEAD
    if end > len(buf) or h.batch_length < MIN_BATCH_LENGTH:
        return False
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    return crc32c(mv[position + CRC_START : end]) == h.crc


_I64_MAX = 2**63 - 1
_NO_TIMESTAMP = -1  # Kafka's "no timestamp": the only negative one allowed
_unpackb = msgpack.unpackb
_MSGPACK_ERRORS = (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
                   msgpack.StackError)
_NONE_TYPE = type(None)


def unpack_records(payload: Buffer, record_count: int,
                   timestamps: tuple[int, int, bool] | None = None) -> tuple[Any, ...]:
    """The records array of an (uncompressed) payload, checked against the header:
    `record_count`, and with `timestamps` = (base_timestamp, max_timestamp,
    create_time) the timestamp rules too.

    Raises `ValueError` naming the problem. C-level work only: one unpack, then a few
    `map`/`count`/`zip`/`min`/`max` passes over the records (see the module docstring);
    `list(map(type, xs)).count(t)` is the cheapest such test found.
    """
    try:
        raw: Any = _unpackb(payload, use_list=False, raw=False)
    except _MSGPACK_ERRORS as exc:
        raise ValueError(f"records are not one msgpack array: {exc}") from None
    if type(raw) is not tuple:
        raise ValueError(f"records are a msgpack {type(raw).__name__}, not an array")
    n = len(raw)
    if n != record_count:
        raise ValueError(f"record_count {record_count} but the records array holds {n}")
    if list(map(type, raw)).count(tuple) != n:
        raise ValueError("a record is not an array [timestamp_delta, key, value, headers]")
    try:  # strict: every record as long as the first, which must be 4 long
        deltas, keys, values, headers = zip(*raw, strict=True)
    except ValueError:
        raise ValueError("a record is not an array [timestamp_delta, key, value, headers]"
                         ) from None
    if list(map(type, deltas)).count(int) != n:
        raise ValueError("a record's timestamp_delta is not an integer")
    types = list(map(type, keys))
    if types.count(bytes) + types.count(_NONE_TYPE) != n:
        raise ValueError("a record's key is not bytes or nil")
    types = list(map(type, values))
    if types.count(bytes) + types.count(_NONE_TYPE) != n:
        raise ValueError("a record's value is not bytes or nil")
    if list(map(type, headers)).count(tuple) != n:
        raise ValueError("a record's headers are not an array")
    if any(headers):
        pairs = tuple(chain.from_iterable(headers))
        if list(map(type, pairs)).count(tuple) != len(pairs):
            raise ValueError("a record header is not a [key, value] pair")
        try:
            hkeys, hvalues = zip(*pairs, strict=True)
        except ValueError:
            raise ValueError("a record header is not a [key, value] pair") from None
        types = list(map(type, hvalues))
        if (list(map(type, hkeys)).count(str) != len(pairs)
                or types.count(bytes) + types.count(_NONE_TYPE) != len(pairs)):
            raise ValueError("a record header's key is not a string or its value not bytes")
    if timestamps is None:
        return raw
    base_timestamp, max_timestamp, create_time = timestamps
    low = base_timestamp + min(deltas)
    high = base_timestamp + max(deltas)
    if not (_NO_TIMESTAMP <= base_timestamp <= _I64_MAX and _NO_TIMESTAMP <= low
            and high <= _I64_MAX and _NO_TIMESTAMP <= max_timestamp <= _I64_MAX):
        raise ValueError(f"timestamps out of range [-1, 2^63-1]: base_timestamp "
                         f"{base_timestamp}, records {low}..{high}, max_timestamp "
                         f"{max_timestamp}")
    if create_time and high != max_timestamp:
        raise ValueError(f"max_timestamp {max_timestamp} is not the largest record "
                         f"timestamp {high}")
    return raw


def check_client_batch(mv: memoryview, t: Sequence[int]) -> None:
    """Check a producer's batch (raw header tuple `t`, at `t[13]` in `mv`, length and CRC
    already checked) against its contents; `InvalidRecordError` says what is wrong.

    The leader's check before storing it: what it accepts every reader decodes.
    """
    pos = t[13]
    if not t[5] & ATTR_DMQ_NATIVE:
        return  # Kafka records: stored as the Kafka client sent them, never decoded here
    if t[6] != t[12] - 1:
        raise InvalidRecordError(
            f"batch at position {pos}: last_offset_delta {t[6]} does not match "
            f"record_count {t[12]} (a producer's batch has consecutive offsets)")
    start = pos + HEADER_SIZE
    # The unpack makes a tuple per record, all freed on return: with the collector on,
    # each 700 of them would trigger a collection (40% of the check's time measured on
    # 5000-record batches, and now and then a full collection of the broker's heap).
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        payload = decompress(t[5] & ATTR_CODEC_MASK, mv[start : pos + t[1] + LOG_OVERHEAD])
        unpack_records(payload, t[12], (t[7], t[8], not t[5] & ATTR_TIMESTAMP_TYPE))
    except (ValueError, CorruptRecordError) as exc:
        raise InvalidRecordError(f"batch at position {pos}: {exc}") from None
    finally:
        if gc_was_on:
            gc.enable()


def decode_records(buf: Buffer, header: BatchHeader | None = None) -> list[Record]:
    """Decode the records of the batch starting at `header.position` (or 0).

    Per-record work: for clients and the cleaner only, never the broker's hot paths.
    A batch without `ATTR_DMQ_NATIVE` holds Kafka records (`dmq.log.kafka_records`).
    """
    h = header if header is not None else read_header(buf, 0)
    if not h.attributes & ATTR_DMQ_NATIVE:
        try:
            return decode_kafka_records(buf, h)
        except CorruptRecordError as exc:
            raise CorruptRecordError(
                f"{exc} (a batch without the dmq-native mark, attribute bit 7, holds "
                f"Kafka records; data written by dmq before that mark existed is not "
                f"readable)") from None
    start = h.position + HEADER_SIZE
    end = h.position + h.batch_length + LOG_OVERHEAD
    if end > len(buf):
        raise CorruptRecordError(f"truncated batch at position {h.position}")
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    payload = decompress(h.attributes & ATTR_CODEC_MASK, mv[start:end])
    try:
        # The leader's checks, less those a stored batch may legitimately fail: a
        # compacted batch has gaps (last_offset_delta > record_count - 1), and one
        # stored before the checks existed may carry any timestamp.
        raw = unpack_records(payload, h.record_count)
    except ValueError as exc:
        raise CorruptRecordError(f"undecodable records in batch at {h.position} (offset "
                                 f"{h.base_offset}): {exc}") from None
    base_offset = h.base_offset
    base_ts = h.base_timestamp
    return [Record(base_offset + i, base_ts + ts_delta, key, value, headers)
            for i, (ts_delta, key, value, headers) in enumerate(raw)]


def iter_records(buf: Buffer) -> Iterator[Record]:
    """Decode every record of every (CRC-checked) batch in `buf`."""
    for h in validate_batches(buf):
        yield from decode_records(buf, h)


class BatchBuilder:
    """Accumulates records for one batch and seals them into bytes.

    Cheap per record: `append` only appends a small list; all packing happens once in
    `seal`. Offsets are relative until the leader stamps the batch, so `seal` defaults
    `base_offset` to 0.

    `extend` adds a run of records sharing a timestamp and headers. Runs added before
    any `append` are kept as runs (no tuple per record) and packed at `seal` without
    Python work per record: a run of keyless `bytes` values of one length is one
    `bytes.join` (the msgpack of each record differs only in the value bytes);
    other runs pack as tuples. The bytes are those `append` would give, record for
    record (property tests in tests/property/test_batch_api_props.py).
    """

    __slots__ = (
        "_base_ts",
        "_max_ts",
        "_records",
        "_run_count",
        "_runs",
        "_size_bytes",
        "base_sequence",
        "codec",
        "producer_epoch",
        "producer_id",
        "timestamp_type",
    )

    def __init__(self, codec: int = CODEC_NONE, producer_id: int = NO_PRODUCER_ID,
                 producer_epoch: int = NO_PRODUCER_EPOCH, base_sequence: int = NO_SEQUENCE,
                 timestamp_type: int = TIMESTAMP_CREATE_TIME) -> None:
        self.codec = codec
        self.producer_id = producer_id
        self.producer_epoch = producer_epoch
        self.base_sequence = base_sequence
        self.timestamp_type = timestamp_type
        self._records: list[tuple[Any, ...]] = []
        # runs of `extend` while `_records` is empty (never both non-empty)
        self._runs: list[tuple[int, Any, Any, Any]] = []
        self._run_count = 0
        self._base_ts = 0
        self._max_ts = -1
        self._size_bytes = HEADER_SIZE + 5

    def append(self, timestamp_ms: int, key: bytes | None, value: bytes | None,
               headers: Sequence[tuple[str, bytes]] | None = None) -> int:
        """Add one record; returns its index (offset delta) within the batch."""
        if self._runs:
            self._runs_to_records()
        records = self._records
        if records:
            if timestamp_ms > self._max_ts:
                self._max_ts = timestamp_ms
            # a tuple, not a list: cheaper to build, and the garbage collector stops
            # tracking it (it holds no containers), so a full accumulator costs no GC time
            records.append((timestamp_ms - self._base_ts, key, value, headers or ()))
        else:
            self._base_ts = self._max_ts = timestamp_ms
            records.append((0, key, value, headers or ()))
        self._size_bytes += 12 + (len(key) if key else 0) + (len(value) if value else 0)
        return len(records) - 1

    def extend(self, timestamp_ms: int, keys: Sequence[bytes | None] | None,
               values: Sequence[bytes | None],
               headers: Sequence[tuple[str, bytes]] | None = None) -> int:
        """Add `len(values)` records sharing one timestamp and one headers list (keys
        None: every key is nil); returns the first one's index. The same records, and
        so the same sealed bytes, as `append` called once per record, with no Python
        code per record (C-level `map`/`zip`/`repeat`, or a run kept whole)."""
        n = len(values)
        if keys is not None and len(keys) != n:
            raise ValueError(f"{len(keys)} keys for {n} values")
        records = self._records
        first = len(records) + self._run_count
        if first:
            if timestamp_ms > self._max_ts:
                self._max_ts = timestamp_ms
            delta = timestamp_ms - self._base_ts
        else:
            self._base_ts = self._max_ts = timestamp_ms
            delta = 0
        if records:
            records.extend(zip(repeat(delta, n), repeat(None, n) if keys is None else keys,
                               values, repeat(headers or (), n), strict=True))
        elif n:
            self._runs.append((delta, keys, values, headers or ()))
            self._run_count += n
        size = 12 * n + sum(map(len, filter(None, values)))
        if keys is not None:
            size += sum(map(len, filter(None, keys)))
        self._size_bytes += size
        return first

    def _runs_to_records(self) -> None:
        records = self._records
        for delta, keys, values, headers in self._runs:
            n = len(values)
            records.extend(zip(repeat(delta, n), repeat(None, n) if keys is None else keys,
                               values, repeat(headers, n), strict=True))
        self._runs.clear()
        self._run_count = 0

    def _pack_runs(self) -> bytes:
        packer = _packer()
        parts = [packer.pack_array_header(self._run_count)]
        for delta, keys, values, headers in self._runs:
            n = len(values)
            if keys is None and set(map(type, values)) == {bytes}:
                lengths = set(map(len, values))
                if len(lengths) == 1:
                    # [delta, nil, bin(value), headers]: one prefix and suffix per record
                    prefix = b"\x94" + packer.pack(delta) + b"\xc0" + _bin_header(lengths.pop())
                    suffix = packer.pack(headers)
                    parts += (prefix, (suffix + prefix).join(values), suffix)
                    continue
            packed = packer.pack(list(zip(repeat(delta, n),
                                          repeat(None, n) if keys is None else keys,
                                          values, repeat(headers, n), strict=True)))
            parts.append(packed[len(packer.pack_array_header(n)):])
        return b"".join(parts)

    @property
    def record_count(self) -> int:
        return len(self._records) + self._run_count

    @property
    def estimated_size_bytes(self) -> int:
        """Uncompressed size estimate, for `batch_size` accounting by the producer."""
        return self._size_bytes

    def seal(self, base_offset: int = 0,
             partition_leader_epoch: int = NO_PARTITION_LEADER_EPOCH) -> bytes:
        count = self.record_count
        if not count:
            raise ValueError("cannot seal an empty batch")
        attributes = self.codec | (ATTR_TIMESTAMP_TYPE if self.timestamp_type else 0)
        packed = self._pack_runs() if self._runs else _pack_records(self._records)
        return _encode_packed(packed, count, base_offset, self._base_ts, self._max_ts,
                              attributes, self.producer_id, self.producer_epoch,
                              self.base_sequence, partition_leader_epoch, count - 1)

    def seal_parts(self, base_offset: int = 0,
                   partition_leader_epoch: int = NO_PARTITION_LEADER_EPOCH) -> list[bytes]:
        """`seal` as a list of buffers whose concatenation is `seal`'s bytes, byte for
        byte. An uncompressed batch whose records average `BY_REFERENCE_MIN_BYTES` or
        more keeps its large `bytes` values out of any copy: the parts are the batch
        header and the msgpack around each such value, and the value objects
        themselves (so a batch of 100 KiB records allocates no new MiB per batch and
        copies none of its record bytes). Any other batch is one part, `seal()`'s.
        The values must not change afterwards (`bytes` are immutable)."""
        count = self.record_count
        if (self.codec != CODEC_NONE or not count
                or self._size_bytes < BY_REFERENCE_MIN_BYTES * count):
            return [self.seal(base_offset, partition_leader_epoch)]
        if self._runs:  # few records (they are large): one tuple each costs nothing
            self._runs_to_records()
        parts = _pack_records_parts(self._records)
        attributes = (self.codec | ATTR_DMQ_NATIVE
                      | (ATTR_TIMESTAMP_TYPE if self.timestamp_type else 0))
        tail = _TAIL_STRUCT.pack(attributes, count - 1, self._base_ts, self._max_ts,
                                 self.producer_id, self.producer_epoch, self.base_sequence,
                                 count)
        crc = crc32c(tail)
        size = 0
        for part in parts:
            crc = crc32c(part, crc)
            size += len(part)
        parts[0] = b"".join((
            _PREFIX_STRUCT.pack(base_offset, HEADER_SIZE - LOG_OVERHEAD + size,
                                partition_leader_epoch, MAGIC),
            struct.pack(">I", crc), tail, parts[0]))
        return parts


BY_REFERENCE_MIN_BYTES = 16 * 1024
"""`BatchBuilder.seal_parts`: records averaging this many bytes or more, and each value of
at least this size in them, stay out of the batch's copy (below, joining is cheaper)."""


def _pack_records_parts(records: Sequence[Sequence[Any]]) -> list[bytes]:
    """`_pack_records(records)` as parts: every `bytes` value of `BY_REFERENCE_MIN_BYTES`
    or more is a part of its own (the object itself), the msgpack between them joined."""
    packer = _packer()
    pack = packer.pack
    parts: list[bytes] = []
    small = [packer.pack_array_header(len(records))]
    for record in records:
        value = record[2]
        if type(value) is bytes and len(value) >= BY_REFERENCE_MIN_BYTES:
            # [delta, key, bin(value), headers]: an array's msgpack is its elements' in turn
            small += (b"\x94", pack(record[0]), pack(record[1]), _bin_header(len(value)))
            parts.append(b"".join(small))
            parts.append(value)
            small = [pack(record[3])]
        else:
            small.append(pack(record))
    parts.append(b"".join(small))
    return parts


def _bin_header(length: int) -> bytes:
    """msgpack's bin 8/16/32 header (what a `use_bin_type` packer writes for bytes)."""
    if length < 0x100:
        return b"\xc4" + length.to_bytes(1, "big")
    if length < 0x10000:
        return b"\xc5" + length.to_bytes(2, "big")
    return b"\xc6" + length.to_bytes(4, "big")


_packers = threading.local()


def _packer() -> Any:
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    return packer


def _pack_records(records: Sequence[Sequence[Any]]) -> bytes:
    """msgpack of the records array with this thread's reused Packer: `msgpack.packb`
    builds a new Packer (and a fresh 1 MiB buffer whose pages fault in) per call."""
    data: bytes = _packer().pack(records)
    return data


def encode_batch(records: Sequence[Sequence[Any]], base_offset: int, base_timestamp: int,
                 max_timestamp: int, attributes: int = 0,
                 producer_id: int = NO_PRODUCER_ID, producer_epoch: int = NO_PRODUCER_EPOCH,
                 base_sequence: int = NO_SEQUENCE,
                 partition_leader_epoch: int = NO_PARTITION_LEADER_EPOCH,
                 last_offset_delta: int | None = None) -> bytes:
    """Pack already-shaped records (`[ts_delta, key, value, headers]`) into one batch
    (dmq-native: `ATTR_DMQ_NATIVE` is set whatever `attributes` says)."""
    if last_offset_delta is None:
        last_offset_delta = len(records) - 1
    return _encode_packed(_pack_records(records), len(records), base_offset, base_timestamp,
                          max_timestamp, attributes, producer_id, producer_epoch,
                          base_sequence, partition_leader_epoch, last_offset_delta)


def _encode_packed(packed: bytes, count: int, base_offset: int, base_timestamp: int,
                   max_timestamp: int, attributes: int, producer_id: int,
                   producer_epoch: int, base_sequence: int, partition_leader_epoch: int,
                   last_offset_delta: int) -> bytes:
    """One batch around an already packed records array of `count` records."""
    attributes |= ATTR_DMQ_NATIVE
    payload = compress(attributes & ATTR_CODEC_MASK, packed)
    tail = _TAIL_STRUCT.pack(attributes, last_offset_delta, base_timestamp, max_timestamp,
                             producer_id, producer_epoch, base_sequence, count)
    crc = crc32c(payload, crc32c(tail))
    batch_length = HEADER_SIZE - LOG_OVERHEAD + len(payload)
    return b"".join((
        _PREFIX_STRUCT.pack(base_offset, batch_length, partition_leader_epoch, MAGIC),
        struct.pack(">I", crc), tail, payload,
    ))


def build_batch(records: Sequence[tuple[bytes | None, bytes | None]], timestamp_ms: int = 0,
                base_offset: int = 0, codec: int = CODEC_NONE,
                producer_id: int = NO_PRODUCER_ID, producer_epoch: int = NO_PRODUCER_EPOCH,
                base_sequence: int = NO_SEQUENCE,
                partition_leader_epoch: int = NO_PARTITION_LEADER_EPOCH) -> bytes:
    """Convenience for tests and tools: one batch of (key, value) records at one timestamp."""
    b = BatchBuilder(codec, producer_id, producer_epoch, base_sequence)
    for key, value in records:
        b.append(timestamp_ms, key, value)
    return b.seal(base_offset, partition_leader_epoch)


# with the header's names from `dmq.log.batch_header`, defined apart for `kafka_records`
__all__ = ["ATTR_CODEC_MASK", "ATTR_CONTROL", "ATTR_DMQ_NATIVE", "ATTR_KNOWN_MASK",
           "ATTR_TIMESTAMP_TYPE", "ATTR_TRANSACTIONAL", "BY_REFERENCE_MIN_BYTES", "BatchBuilder",
           "BatchHeader", "Buffer",
           "CRC_START", "HEADER_SIZE", "HEADER_STRUCT", "LOG_OVERHEAD", "MAGIC",
           "MIN_BATCH_LENGTH", "NO_PARTITION_LEADER_EPOCH", "NO_PRODUCER_EPOCH", "NO_PRODUCER_ID",
           "NO_SEQUENCE", "Record", "STAMP_STRUCT", "TIMESTAMP_CREATE_TIME",
           "TIMESTAMP_LOG_APPEND_TIME", "all_dmq_native", "batch_crc_ok", "build_batch",
           "check_client_batch", "check_header", "decode_records", "encode_batch", "iter_headers",
           "iter_records", "read_header", "stamp_batch", "unpack_records", "validate_batches",
           "validate_raw", "with_log_append_time"]
