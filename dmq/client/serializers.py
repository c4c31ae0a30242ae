"""Serializer and deserializer helpers for keys and values.

The producer and consumer move bytes by default (no serializer). These helpers cover
the common cases; any `Callable[[Any], bytes | None]` works as a serializer and any
`Callable[[bytes | None], Any]` as a deserializer. `None` always maps to `None`, so a
tombstone (null value) or a keyless record survives every helper.
"""

from __future__ import annotations

import json
from typing import Any


def str_serializer(value: str | None) -> bytes | None:
    return None if value is None else value.encode()


def str_deserializer(data: bytes | None) -> str | None:
    return None if data is None else data.decode()


def json_serializer(value: Any) -> bytes | None:
    return None if value is None else json.dumps(value, separators=(",", ":")).encode()


def json_deserializer(data: bytes | None) -> Any:
    return None if data is None else json.loads(data)


__all__ = ["json_deserializer", "json_serializer", "str_deserializer", "str_serializer"]
