"""A small validator for msgpack request/response bodies.

Bodies are maps with short keys (or arrays where speed matters). A `Struct` lists
required and optional fields with their types; validation checks shape and types and
fills defaults for absent optional fields, raising `InvalidRequestError` with the path
of the first bad field. Unknown keys are ignored so newer clients can add fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dmq.protocol.errors import InvalidRequestError

_MISSING = object()


class Type:
    name = "any"

    def check(self, value: Any, path: str) -> Any:
        return value


class _Scalar(Type):
    def __init__(self, name: str, types: tuple[type, ...]) -> None:
        self.name = name
        self._types = types

    def check(self, value: Any, path: str) -> Any:
        if type(value) not in self._types:
            raise InvalidRequestError(f"{path}: expected {self.name}, got {type(value).__name__}")
        return value


INT = _Scalar("int", (int,))
STR = _Scalar("str", (str,))
BYTES = _Scalar("bytes", (bytes,))
RAW_BYTES = _Scalar("bytes", (bytes, memoryview))
"""Bytes that may travel as a raw section (a memoryview of the request frame): only
fields whose handlers take any buffer and keep no view past the request."""
BOOL = _Scalar("bool", (bool,))
FLOAT = _Scalar("float", (float, int))
ANY = Type()


class Nullable(Type):
    def __init__(self, inner: Type) -> None:
        self.inner = inner
        self.name = f"{inner.name}|nil"

    def check(self, value: Any, path: str) -> Any:
        return None if value is None else self.inner.check(value, path)


class Array(Type):
    def __init__(self, item: Type, max_items: int = 1_000_000) -> None:
        self.item = item
        self.max_items = max_items
        self.name = f"[{item.name}]"

    def check(self, value: Any, path: str) -> Any:
        if type(value) is not list:
            raise InvalidRequestError(f"{path}: expected array, got {type(value).__name__}")
        if len(value) > self.max_items:
            raise InvalidRequestError(f"{path}: {len(value)} items exceed {self.max_items}")
        if self.item is not ANY:
            check = self.item.check
            for i, v in enumerate(value):
                value[i] = check(v, f"{path}[{i}]")
        return value


class Tuple(Type):
    """A fixed-length array with one type per position (the fast form of a struct)."""

    def __init__(self, *items: Type) -> None:
        self.items = items
        self.name = "(" + ",".join(t.name for t in items) + ")"

    def check(self, value: Any, path: str) -> Any:
        if type(value) is not list or len(value) != len(self.items):
            raise InvalidRequestError(f"{path}: expected {self.name}")
        for i, t in enumerate(self.items):
            t.check(value[i], f"{path}[{i}]")
        return value


class MapOf(Type):
    def __init__(self, key: Type, value: Type) -> None:
        self.key = key
        self.value = value
        self.name = f"{{{key.name}:{value.name}}}"

    def check(self, value: Any, path: str) -> Any:
        if type(value) is not dict:
            raise InvalidRequestError(f"{path}: expected map, got {type(value).__name__}")
        for k, v in value.items():
            self.key.check(k, f"{path}.<key>")
            self.value.check(v, f"{path}.{k}")
        return value


@dataclass
class Struct(Type):
    """A map body. `fields` maps key -> type (required); `optional` maps key ->
    (type, default)."""

    fields: dict[str, Type] = field(default_factory=dict)
    optional: dict[str, tuple[Type, Any]] = field(default_factory=dict)
    name: str = "struct"

    def check(self, value: Any, path: str = "body") -> Any:
        if type(value) is not dict:
            raise InvalidRequestError(f"{path}: expected map, got {type(value).__name__}")
        for key, t in self.fields.items():
            v = value.get(key, _MISSING)
            if v is _MISSING:
                raise InvalidRequestError(f"{path}.{key}: missing")
            value[key] = t.check(v, f"{path}.{key}")
        for key, (t, default) in self.optional.items():
            v = value.get(key, _MISSING)
            if v is _MISSING or v is None:
                value[key] = default() if callable(default) else default
            else:
                value[key] = t.check(v, f"{path}.{key}")
        return value
