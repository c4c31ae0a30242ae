"""The fixed part of the record batch format: the 61-byte header's layout, its
attribute bits, and the two value types every reader of batches uses (`BatchHeader`,
`Record`).

The layout table and the meaning of each field are in `dmq.log.batch`, which builds,
validates and decodes batches and re-exports every name here. They are kept apart so
that `dmq.log.kafka_records`, which `dmq.log.batch` calls to decode Kafka-format
records, can use them without importing `dmq.log.batch`. Constants and types only:
no function, no import of anything in dmq.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

MAGIC = 2
HEADER_STRUCT = struct.Struct(">qiibIhiqqqhii")
HEADER_SIZE = HEADER_STRUCT.size  # 61
LOG_OVERHEAD = 12  # base_offset + batch_length: bytes not counted by batch_length
MIN_BATCH_LENGTH = HEADER_SIZE - LOG_OVERHEAD
CRC_START = 21

ATTR_CODEC_MASK = 0x07
ATTR_TIMESTAMP_TYPE = 0x08
ATTR_TRANSACTIONAL = 0x10
ATTR_CONTROL = 0x20
ATTR_DMQ_NATIVE = 0x80
ATTR_KNOWN_MASK = 0xBF

NO_PRODUCER_ID = -1
NO_PRODUCER_EPOCH = -1
NO_SEQUENCE = -1
NO_PARTITION_LEADER_EPOCH = -1

Buffer = bytes | bytearray | memoryview


class BatchHeader(NamedTuple):
    """The 61-byte header of one batch, plus where it starts in the scanned buffer."""

    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    record_count: int
    position: int

    @property
    def size_bytes(self) -> int:
        return self.batch_length + LOG_OVERHEAD

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def codec(self) -> int:
        return self.attributes & ATTR_CODEC_MASK

    @property
    def last_sequence(self) -> int:
        if self.base_sequence < 0:
            return NO_SEQUENCE
        return (self.base_sequence + self.last_offset_delta) & 0x7FFFFFFF


class Record(NamedTuple):
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
