"""Value types handed to applications: partitions, produced-record metadata, consumed
records. Plain immutable tuples (NamedTuple) because the consumer builds one per record
on its hot path and tuple construction is the cheapest Python object there is."""

from __future__ import annotations

from typing import Any, NamedTuple

PartitionKey = tuple[str, int]
"""A (topic, partition) pair as a plain tuple: the key of the group and admin offset
maps. Any `TopicPartition` is one (it is a tuple), so either may be passed in."""


class TopicPartition(NamedTuple):
    """A partition of a topic, as users name it (`consumer.assign([TopicPartition(...)])`)."""

    topic: str
    partition: int


class RecordMetadata(NamedTuple):
    """Where an acknowledged record landed. `offset` is -1 with acks=0 (no answer)."""

    topic: str
    partition: int
    offset: int
    timestamp: int

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


class ConsumerRecord(NamedTuple):
    """One consumed record. `key`/`value` are what the consumer's deserializers made
    of the stored bytes; `headers` is a tuple of (str, bytes) pairs."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int  # 0 CreateTime, 1 LogAppendTime
    key: Any
    value: Any
    headers: tuple[tuple[str, bytes], ...]

    @property
    def topic_partition(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


__all__ = ["ConsumerRecord", "PartitionKey", "RecordMetadata", "TopicPartition"]
