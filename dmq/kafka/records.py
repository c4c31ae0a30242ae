"""Converting dmq-native batches for Kafka consumers.

dmq's batch header is Kafka's RecordBatch v2 header (dmq/log/batch.py documents every
byte); what differs is the records section: dmq-native batches (attribute bit 7,
`ATTR_DMQ_NATIVE`) hold one msgpack array, Kafka batches hold Kafka's varint records
(`dmq.log.kafka_records`). A Kafka client's batches are stored byte for byte, so a
Kafka fetch only needs work for batches that dmq's own client wrote: those are rebuilt
here as Kafka batches (same offsets, timestamps, producer fields and flags, records
uncompressed, CRC-32C recomputed), like Kafka's down-conversion. This costs
per-record work (about 3.5 us a record of 100 bytes: decoding the msgpack array, then
writing the varint records) and runs only on the Kafka fetch path, only for marked
batches; every other batch is passed through as the same bytes (one header read per
batch, under 1 us).

It never imports asyncio and touches no file.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from crc32c import crc32c

from dmq.log.batch import (
    ATTR_CONTROL,
    ATTR_DMQ_NATIVE,
    ATTR_TIMESTAMP_TYPE,
    ATTR_TRANSACTIONAL,
    CRC_START,
    HEADER_SIZE,
    HEADER_STRUCT,
    LOG_OVERHEAD,
    MIN_BATCH_LENGTH,
    BatchHeader,
    decode_records,
)
from dmq.log.errors import CorruptRecordError
from dmq.log.kafka_records import encode_kafka_records

Buffer = bytes | bytearray | memoryview
IsNative = Callable[[int], bool]
_KEPT_ATTRIBUTES = ATTR_TIMESTAMP_TYPE | ATTR_TRANSACTIONAL | ATTR_CONTROL
_CRC = struct.Struct(">I")


def is_dmq_native(attributes: int) -> bool:
    return bool(attributes & ATTR_DMQ_NATIVE)


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
        try:
            parts.append(native_to_kafka(mv, h))
        except CorruptRecordError:  # sent as stored: the client reports the bad batch
            parts.append(mv[start:start + h.batch_length + LOG_OVERHEAD])
        last = start + h.batch_length + LOG_OVERHEAD
    if last < size:
        parts.append(mv[last:])
    return parts


__all__ = ["is_dmq_native", "kafka_view", "native_to_kafka"]
