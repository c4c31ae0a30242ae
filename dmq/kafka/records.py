"""Kafka records, and the conversion of dmq-native batches for Kafka consumers.

dmq's batch header is Kafka's RecordBatch v2 header (dmq/log/batch.py documents every
byte); what differs is the records section: dmq-native batches hold one msgpack array,
Kafka batches hold Kafka's varint records. A Kafka client's batches are stored byte for
byte, so a Kafka fetch only needs work for batches that dmq's own client wrote: those
are rebuilt here as Kafka batches (same offsets, timestamps, producer fields and
flags, records uncompressed, CRC-32C recomputed), like Kafka's down-conversion. This
costs per-record Python work and runs only on the Kafka fetch path, only for batches
marked dmq-native; every other batch is passed through as the same bytes.

Kafka record layout (all varints are zigzag, as in protobuf)::

    length varint | attributes i8 (0) | timestamp_delta varlong | offset_delta varint |
    key_length varint (-1 null) | key | value_length varint (-1 null) | value |
    header_count varint | (key_length varint | key utf-8 | value_length varint | value)*

`decode_kafka_records` reads a Kafka batch's records (for dmq's client and tools):
codecs 1 gzip, 2 snappy (raw or xerial-framed, needs `cramjam` or `python-snappy`),
3 lz4 (frame format), 4 zstd (including frames without a content size, as streaming
encoders write them), each bounded to `MAX_RECORDS_BYTES` once decompressed.

It never imports asyncio and touches no file.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence
from typing import Any

from crc32c import crc32c

from dmq.log.batch import (
    ATTR_CONTROL,
    ATTR_TIMESTAMP_TYPE,
    ATTR_TRANSACTIONAL,
    CRC_START,
    HEADER_SIZE,
    HEADER_STRUCT,
    LOG_OVERHEAD,
    MIN_BATCH_LENGTH,
    BatchHeader,
    Record,
    decode_records,
)

Buffer = bytes | bytearray | memoryview
IsNative = Callable[[int], bool]
# Attribute bit 7 marks a dmq-native batch (msgpack records); Kafka leaves bits 7-15
# unused and clients never set them. (Bit 6 is Kafka's delete-horizon flag.)
ATTR_DMQ_NATIVE = 0x80


def is_dmq_native(attributes: int) -> bool:
    return bool(attributes & ATTR_DMQ_NATIVE)

_KEPT_ATTRIBUTES = ATTR_TIMESTAMP_TYPE | ATTR_TRANSACTIONAL | ATTR_CONTROL
_CRC = struct.Struct(">I")
MAX_RECORDS_BYTES = 64 * 1024 * 1024
KAFKA_GZIP, KAFKA_SNAPPY, KAFKA_LZ4, KAFKA_ZSTD = 1, 2, 3, 4
_CODEC_MASK = 0x07
_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_BLOCK = struct.Struct(">i")


class KafkaRecordsError(ValueError):
    """A Kafka batch whose records cannot be read (bad varints, lengths, a codec we lack
    or output past the bound); the message says which."""


def write_varint(out: bytearray, value: int) -> None:
    """A zigzag varint (Kafka's `varint`/`varlong`)."""
    z = (value << 1) ^ (value >> 63)
    while z > 0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)


def read_varint(buf: Buffer, pos: int) -> tuple[int, int]:
    """(value, next position) of the zigzag varint at `pos`."""
    z = 0
    shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        z |= (b & 0x7F) << shift
        if not b & 0x80:
            return (z >> 1) ^ -(z & 1), pos
        shift += 7


def encode_kafka_records(records: Sequence[Record], base_offset: int,
                         base_timestamp: int) -> bytearray:
    out = bytearray()
    body = bytearray()
    for r in records:
        body.clear()
        body.append(0)  # record attributes: unused
        write_varint(body, r.timestamp - base_timestamp)
        write_varint(body, r.offset - base_offset)
        for blob in (r.key, r.value):
            if blob is None:
                write_varint(body, -1)
            else:
                write_varint(body, len(blob))
                body += blob
        write_varint(body, len(r.headers))
        for hkey, hvalue in r.headers:
            kb = hkey.encode("utf-8")
            write_varint(body, len(kb))
            body += kb
            if hvalue is None:
                write_varint(body, -1)
            else:
                write_varint(body, len(hvalue))
                body += hvalue
        write_varint(out, len(body))
        out += body
    return out


def native_to_kafka(buf: Buffer, header: BatchHeader) -> bytes:
    """The dmq-native batch at `header.position` rebuilt as a Kafka batch."""
    records = decode_records(buf, header)
    payload = encode_kafka_records(records, header.base_offset, header.base_timestamp)
    # no codec (records uncompressed) and no dmq-native mark
    attributes = header.attributes & _KEPT_ATTRIBUTES
    out = bytearray(HEADER_STRUCT.pack(
        header.base_offset, HEADER_SIZE - LOG_OVERHEAD + len(payload),
        header.partition_leader_epoch, 2, 0, attributes, header.last_offset_delta,
        header.base_timestamp, header.max_timestamp, header.producer_id,
        header.producer_epoch, header.base_sequence, len(records)))
    out += payload
    _CRC.pack_into(out, 17, crc32c(memoryview(out)[CRC_START:]))
    return bytes(out)


def kafka_view(data: Buffer, is_native: IsNative) -> Buffer | list[Buffer]:
    """Fetched log bytes as a Kafka client must see them: `data` itself when no batch
    in it is dmq-native (one header read per batch, nothing copied), else a list of
    buffers in which each dmq-native batch is converted. A partial batch at the end
    (a fetch cut by max bytes) is passed through; Kafka clients skip it."""
    size = len(data)
    unpack = HEADER_STRUCT.unpack_from
    pos = 0
    native_at: list[int] = []
    while size - pos >= HEADER_SIZE:
        t = unpack(data, pos)
        end = pos + t[1] + LOG_OVERHEAD
        if t[1] < MIN_BATCH_LENGTH or end > size:
            break
        if is_native(t[5]):
            native_at.append(pos)
        pos = end
    if not native_at:
        return data
    mv = data if isinstance(data, memoryview) else memoryview(data)
    parts: list[Buffer] = []
    last = 0
    for start in native_at:
        h = BatchHeader._make((*unpack(mv, start), start))
        if start > last:
            parts.append(mv[last:start])
        parts.append(native_to_kafka(mv, h))
        last = start + h.batch_length + LOG_OVERHEAD
    if last < size:
        parts.append(mv[last:])
    return parts


def _gunzip(data: Buffer) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out = d.decompress(data, MAX_RECORDS_BYTES + 1)
    if len(out) > MAX_RECORDS_BYTES or d.unconsumed_tail:
        raise KafkaRecordsError(f"gzip records exceed {MAX_RECORDS_BYTES} bytes")
    return out


def _snappy_block(data: Buffer) -> bytes:
    try:
        import cramjam  # type: ignore[import-not-found]

        return bytes(cramjam.snappy.decompress_raw(bytes(data)))
    except ImportError:
        pass
    try:
        import snappy  # type: ignore[import-not-found]
    except ImportError:
        raise KafkaRecordsError("snappy records need the cramjam or python-snappy "
                                "package") from None
    out: bytes = snappy.decompress(bytes(data))
    return out


def _unsnappy(data: Buffer) -> bytes:
    mv = memoryview(data)
    if bytes(mv[:8]) != _XERIAL_MAGIC:
        return _snappy_block(mv)
    parts: list[bytes] = []
    total = 0
    pos = 16  # magic, version, compatible version
    while pos < len(mv):
        if len(mv) - pos < 4:
            raise KafkaRecordsError("truncated xerial snappy block length")
        (n,) = _BLOCK.unpack_from(mv, pos)
        if n < 0 or n > len(mv) - pos - 4:
            raise KafkaRecordsError(f"xerial snappy block of {n} bytes past the end")
        part = _snappy_block(mv[pos + 4:pos + 4 + n])
        total += len(part)
        if total > MAX_RECORDS_BYTES:
            raise KafkaRecordsError(f"snappy records exceed {MAX_RECORDS_BYTES} bytes")
        parts.append(part)
        pos += 4 + n
    return b"".join(parts)


def _unlz4(data: Buffer) -> bytes:
    try:
        import lz4.frame  # type: ignore[import-untyped]
    except ImportError:
        raise KafkaRecordsError("lz4 records need the lz4 package") from None
    d = lz4.frame.LZ4FrameDecompressor()
    out: bytes = d.decompress(bytes(data), max_length=MAX_RECORDS_BYTES + 1)
    if len(out) > MAX_RECORDS_BYTES or not d.eof:
        raise KafkaRecordsError(f"lz4 records exceed {MAX_RECORDS_BYTES} bytes or are "
                                f"truncated")
    return out


def _unzstd(data: Buffer) -> bytes:
    try:
        import zstandard
    except ImportError:
        raise KafkaRecordsError("zstd records need the zstandard package") from None
    # a stream reader works with or without a content size in the frame header
    with zstandard.ZstdDecompressor().stream_reader(bytes(data)) as reader:
        out: bytes = reader.read(MAX_RECORDS_BYTES + 1)
    if len(out) > MAX_RECORDS_BYTES:
        raise KafkaRecordsError(f"zstd records exceed {MAX_RECORDS_BYTES} bytes")
    return out


_DECOMPRESS: dict[int, Callable[[Buffer], bytes]] = {
    KAFKA_GZIP: _gunzip, KAFKA_SNAPPY: _unsnappy, KAFKA_LZ4: _unlz4, KAFKA_ZSTD: _unzstd}


def decode_kafka_records(buf: Buffer, header: BatchHeader) -> list[Record]:
    """The records of the Kafka batch at `header.position`. A control batch (a
    transaction marker) has none for a reader."""
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    start = header.position + HEADER_SIZE
    end = header.position + header.batch_length + LOG_OVERHEAD
    if end > len(mv):
        raise KafkaRecordsError(f"truncated batch at position {header.position}")
    if header.attributes & ATTR_CONTROL:
        return []
    codec = header.attributes & _CODEC_MASK
    payload: Buffer = mv[start:end]
    if codec:
        fn = _DECOMPRESS.get(codec)
        if fn is None:
            raise KafkaRecordsError(f"unknown Kafka compression codec {codec}")
        try:
            payload = fn(payload)
        except KafkaRecordsError:
            raise
        except Exception as exc:  # each codec library has its own error types
            raise KafkaRecordsError(f"codec {codec}: {exc}") from None
    log_append = bool(header.attributes & ATTR_TIMESTAMP_TYPE)
    try:
        return _parse_records(payload, header, log_append)
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise KafkaRecordsError(f"bad records in batch at {header.position}: {exc}") from None


def _parse_records(payload: Buffer, h: BatchHeader, log_append: bool) -> list[Record]:
    out: list[Record] = []
    pos = 0
    size = len(payload)
    for _ in range(h.record_count):
        length, pos = read_varint(payload, pos)
        end = pos + length
        if length < 0 or end > size:
            raise ValueError(f"record length {length} past the end")
        pos += 1  # record attributes (unused)
        ts_delta, pos = read_varint(payload, pos)
        offset_delta, pos = read_varint(payload, pos)
        key, pos = _read_blob(payload, pos, end)
        value, pos = _read_blob(payload, pos, end)
        count, pos = read_varint(payload, pos)
        if count < 0 or count > end - pos:
            raise ValueError(f"header count {count}")
        headers: list[tuple[str, Any]] = []
        for _ in range(count):
            hkey, pos = _read_blob(payload, pos, end)
            hvalue, pos = _read_blob(payload, pos, end)
            if hkey is None:
                raise ValueError("null header key")
            headers.append((str(hkey, "utf-8"), hvalue))
        if pos != end:
            raise ValueError(f"record of {length} bytes holds {length - (end - pos)}")
        ts = h.max_timestamp if log_append else h.base_timestamp + ts_delta
        out.append(Record(h.base_offset + offset_delta, ts, key, value, tuple(headers)))
    return out


def _read_blob(buf: Buffer, pos: int, end: int) -> tuple[bytes | None, int]:
    n, pos = read_varint(buf, pos)
    if n < 0:
        if n != -1:
            raise ValueError(f"length {n}")
        return None, pos
    if pos + n > end:
        raise ValueError(f"length {n} past the record")
    return bytes(buf[pos:pos + n]), pos + n


__all__ = ["ATTR_DMQ_NATIVE", "MAX_RECORDS_BYTES", "KafkaRecordsError",
           "decode_kafka_records", "encode_kafka_records", "is_dmq_native", "kafka_view",
           "native_to_kafka", "read_varint", "write_varint"]
