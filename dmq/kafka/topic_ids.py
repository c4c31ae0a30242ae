"""Kafka topic ids of dmq topics, both ways.

A dmq topic id is a UUID string (older ones may be any string): Kafka's 16-byte topic
id is that UUID's bytes, or a UUID derived from the string by name (uuid5), so every
answer that names a topic by id (Metadata, CreateTopics, the KIP-848 group APIs) gives
the same bytes for the same topic. Pure functions over a metadata image; no I/O.
"""

from __future__ import annotations

import uuid

from dmq.metadata.image import MetadataImage


def topic_uuid(topic_id: str) -> bytes:
    """The Kafka topic id (16 bytes) of a dmq topic id."""
    try:
        return uuid.UUID(topic_id).bytes
    except ValueError:
        return uuid.uuid5(uuid.NAMESPACE_URL, "dmq-topic:" + topic_id).bytes


class TopicNames:
    """Kafka topic id -> topic name over the newest image, rebuilt only when the image
    version moves (a heartbeat's owned partitions name their topics by id)."""

    def __init__(self) -> None:
        self._version = -1
        self._names: dict[bytes, str] = {}

    def lookup(self, image: MetadataImage | None) -> dict[bytes, str]:
        if image is None:
            return {}
        if image.version != self._version:
            self._names = {topic_uuid(t.topic_id): name for name, t in image.topics.items()}
            self._version = image.version
        return self._names


__all__ = ["TopicNames", "topic_uuid"]
