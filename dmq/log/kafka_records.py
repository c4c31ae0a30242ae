"""Kafka's record format inside a batch: reading it (for dmq's client, tools and the
cleaner) and writing it (for converting dmq-native batches for Kafka consumers).

A batch whose attributes lack `ATTR_DMQ_NATIVE` (see `dmq.log.batch`) holds Kafka
records, stored byte for byte as a Kafka producer sent them. Layout (every varint is
zigzag, as in protobuf)::

    length varint | attributes i8 (0) | timestamp_delta varlong | offset_delta varint |
    key_length varint (-1 null) | key | value_length varint (-1 null) | value |
    header_count varint | (key_length varint | key utf-8 | value_length varint | value)*

Per-record Python work: for clients, tools, the cleaner and the Kafka listener's
conversion only, never the broker's produce, replicate or fetch paths. Compressed
payloads go through `dmq.log.codecs` (Kafka's numbers, same bound). It never imports
asyncio and touches no file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dmq.log.batch_header import (
    ATTR_CODEC_MASK,
    ATTR_CONTROL,
    ATTR_TIMESTAMP_TYPE,
    HEADER_SIZE,
    LOG_OVERHEAD,
    BatchHeader,
    Buffer,
    Record,
)
from dmq.log.codecs import decompress
from dmq.log.errors import CorruptRecordError


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


def _zigzag_bytes(value: int) -> bytes:
    out = bytearray()
    write_varint(out, value)
    return bytes(out)


# the varints of -8192..8191 (one or two bytes), looked up instead of computed: the
# lengths and deltas of nearly every record fall in it
_SMALL = 8192
_SMALL_VARINTS = [_zigzag_bytes(v) for v in range(-_SMALL, _SMALL)]


def _varint(value: int) -> bytes:
    if -_SMALL <= value < _SMALL:
        return _SMALL_VARINTS[value + _SMALL]
    return _zigzag_bytes(value)


def encode_kafka_records(records: Sequence[Record], base_offset: int,
                         base_timestamp: int) -> bytearray:
    out = bytearray()
    small, table, big = _SMALL, _SMALL_VARINTS, _zigzag_bytes
    null = table[small - 1]
    for r in records:
        key, value, headers = r.key, r.value, r.headers
        ts, off = r.timestamp - base_timestamp, r.offset - base_offset
        parts = [b"\0",  # record attributes: unused
                 table[ts + small] if -small <= ts < small else big(ts),
                 table[off + small] if 0 <= off < small else big(off)]
        if key is None:
            parts.append(null)
        else:
            n = len(key)
            parts += (table[n + small] if n < small else big(n), key)
        if value is None:
            parts.append(null)
        else:
            n = len(value)
            parts += (table[n + small] if n < small else big(n), value)
        parts.append(table[len(headers) + small] if len(headers) < small
                     else big(len(headers)))
        for hkey, hvalue in headers:
            kb = hkey.encode("utf-8")
            parts += (_varint(len(kb)), kb,
                      null if hvalue is None else _varint(len(hvalue)), hvalue or b"")
        body = b"".join(parts)
        n = len(body)
        out += table[n + small] if n < small else big(n)
        out += body
    return out


def decode_kafka_records(buf: Buffer, header: BatchHeader) -> list[Record]:
    """The records of the Kafka batch at `header.position`; `CorruptRecordError` names
    the problem. A control batch (a transaction marker) has none for a reader."""
    mv = buf if isinstance(buf, memoryview) else memoryview(buf)
    start = header.position + HEADER_SIZE
    end = header.position + header.batch_length + LOG_OVERHEAD
    if end > len(mv):
        raise CorruptRecordError(f"truncated batch at position {header.position}")
    if header.attributes & ATTR_CONTROL:
        return []
    payload = decompress(header.attributes & ATTR_CODEC_MASK, mv[start:end])
    try:
        return _parse(payload, header, bool(header.attributes & ATTR_TIMESTAMP_TYPE))
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise CorruptRecordError(
            f"undecodable Kafka records in batch at {header.position} (offset "
            f"{header.base_offset}): {exc}") from None


def _parse(payload: Buffer, h: BatchHeader, log_append: bool) -> list[Record]:
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
            raise ValueError(f"record of {length} bytes does not end where it says")
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


__all__ = ["decode_kafka_records", "encode_kafka_records", "read_varint", "write_varint"]
