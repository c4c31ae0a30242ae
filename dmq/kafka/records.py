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

It never imports asyncio and touches no file.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

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


__all__ = ["ATTR_DMQ_NATIVE", "encode_kafka_records", "is_dmq_native", "kafka_view",
           "native_to_kafka", "read_varint", "write_varint"]
