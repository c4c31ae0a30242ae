"""dmq.client: the asyncio client library (Producer, Consumer, Admin).

Public names are re-exported here; the modules hold the logic. `Admin` lives in
`dmq.client.admin` and is imported lazily so the producer and consumer work without
it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dmq.client.consumer import Consumer, OffsetAndTimestamp
from dmq.client.errors import (
    ConsumerStoppedError,
    DmqError,
    ErrorCode,
    IllegalStateError,
    NoOffsetForPartitionError,
    ProducerClosedError,
)
from dmq.client.producer import Producer, RecordHandle
from dmq.client.records import ConsumerRecord, RecordMetadata, TopicPartition

if TYPE_CHECKING:
    from dmq.client.admin import Admin


def __getattr__(name: str) -> Any:
    if name == "Admin":
        from dmq.client.admin import Admin

        return Admin
    raise AttributeError(f"module 'dmq.client' has no attribute {name!r}")


__all__ = [
    "Admin",
    "Consumer",
    "ConsumerRecord",
    "ConsumerStoppedError",
    "DmqError",
    "ErrorCode",
    "IllegalStateError",
    "NoOffsetForPartitionError",
    "OffsetAndTimestamp",
    "Producer",
    "ProducerClosedError",
    "RecordHandle",
    "RecordMetadata",
    "TopicPartition",
]
