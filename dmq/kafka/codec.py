"""Kafka wire codec: frames, request/response headers and message bodies.

Sans-I/O: bytes in, dicts out, bytes out. It never imports asyncio and holds no
broker logic. Message bodies are driven by Kafka's own JSON message definitions
(`messages.json`, the subset of `clients/src/main/resources/common/message` that dmq
answers, descriptions removed): each (message, version) is compiled once into a plan
of typed fields, which a small interpreter reads and writes. Decoded messages are
plain dicts keyed by the definition's field names, first letter capitalized (`"Topics"`,
`"TimeoutMs"`, `"PartitionIndex"`);
`records` fields decode to memoryview slices of the request (never copied).

Wire rules implemented (Kafka protocol guide, KIP-482 for flexible versions):

* frame: i32 big-endian size N, then N bytes; N is checked against a limit before any
  byte of the body is buffered (by the listener, `dmq.kafka.server`).
* request header v1: api_key i16, api_version i16, correlation_id i32, client_id
  nullable string (i16 length); v2 adds tagged fields. v2 is used by flexible
  request versions.
* response header v0: correlation_id i32; v1 adds tagged fields (flexible responses,
  except ApiVersions, whose response header is always v0 so that a client can read
  an answer to a version it does not know).
* non-flexible: string = i16 length (-1 null), bytes = i32 length (-1 null), array =
  i32 count (-1 null). Flexible: compact forms, unsigned varint of length+1 (0 null),
  and every struct ends with tagged fields (uvarint count, then uvarint tag, uvarint
  size, bytes). Unknown tags are skipped.

Every length, count and varint read from the wire is range-checked against the bytes
that remain; a violation raises `KafkaDecodeError` naming the field.
"""

from __future__ import annotations

import json
import struct
import uuid
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

MAX_VARINT_BYTES = 5


class KafkaDecodeError(ValueError):
    """The peer sent bytes that are not a valid Kafka message (a protocol violation)."""


class KafkaEncodeError(ValueError):
    """A local value cannot be encoded (a programming error in a handler)."""


_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")
_REQ_HEADER = struct.Struct(">hhi")

_FIXED: dict[str, struct.Struct] = {
    "int8": _I8, "int16": _I16, "uint16": _U16, "int32": _I32, "uint32": _U32,
    "int64": _I64, "float64": _F64,
}
_ZERO_UUID = b"\x00" * 16


# ---------------------------------------------------------------------------- versions

def parse_versions(spec: str | None) -> tuple[int, int] | None:
    """"3+" -> (3, 32767), "1-4" -> (1, 4), "5" -> (5, 5), "none"/None -> None."""
    if spec is None or spec == "none":
        return None
    if spec.endswith("+"):
        return int(spec[:-1]), 0x7FFF
    if "-" in spec:
        lo, hi = spec.split("-", 1)
        return int(lo), int(hi)
    return int(spec), int(spec)


def _in(spec: str | None, version: int) -> bool:
    r = parse_versions(spec)
    return r is not None and r[0] <= version <= r[1]


# ---------------------------------------------------------------------------- varints

def write_uvarint(out: bytearray, value: int) -> None:
    if value < 0 or value > 0xFFFFFFFF:
        raise KafkaEncodeError(f"unsigned varint out of range: {value}")
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def uvarint_bytes(value: int) -> bytes:
    out = bytearray()
    write_uvarint(out, value)
    return bytes(out)


class Reader:
    """A bounded cursor over one message."""

    __slots__ = ("buf", "pos", "end")

    def __init__(self, buf: bytes | bytearray | memoryview, pos: int = 0,
                 end: int | None = None) -> None:
        self.buf = memoryview(buf).cast("B") if not isinstance(buf, memoryview) else buf
        self.pos = pos
        self.end = len(self.buf) if end is None else end

    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > self.end - self.pos:
            raise KafkaDecodeError(f"{what}: needs {n} bytes, {self.end - self.pos} remain")

    def fixed(self, st: struct.Struct, what: str) -> Any:
        self.need(st.size, what)
        (v,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return v

    def uvarint(self, what: str) -> int:
        value = 0
        shift = 0
        for _ in range(MAX_VARINT_BYTES):
            if self.pos >= self.end:
                raise KafkaDecodeError(f"{what}: truncated varint")
            b = self.buf[self.pos]
            self.pos += 1
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                if value > 0xFFFFFFFF:
                    raise KafkaDecodeError(f"{what}: varint over 32 bits")
                return value
            shift += 7
        raise KafkaDecodeError(f"{what}: varint longer than {MAX_VARINT_BYTES} bytes")

    def take(self, n: int, what: str) -> memoryview:
        self.need(n, what)
        v = self.buf[self.pos:self.pos + n]
        self.pos += n
        return v


# ---------------------------------------------------------------------------- plans

@dataclass(frozen=True, slots=True)
class FieldPlan:
    name: str
    kind: str  # a primitive type name, "array" or "struct"
    nullable: bool
    default: Any
    elem: str | StructPlan | None = None  # array element: primitive name or struct plan
    struct: StructPlan | None = None  # kind == "struct"
    tag: int | None = None


@dataclass(frozen=True, slots=True)
class StructPlan:
    name: str
    fields: tuple[FieldPlan, ...]
    tagged: tuple[FieldPlan, ...]
    flexible: bool


@dataclass(frozen=True, slots=True)
class MessageSpec:
    name: str
    api_key: int
    valid: tuple[int, int]
    flexible: tuple[int, int] | None
    raw: dict[str, Any]

    def is_flexible(self, version: int) -> bool:
        return self.flexible is not None and self.flexible[0] <= version <= self.flexible[1]


@cache
def _definitions() -> dict[str, Any]:
    text = resources.files("dmq.kafka").joinpath("messages.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


@cache
def message_spec(name: str) -> MessageSpec:
    raw = _definitions()[name]
    valid = parse_versions(raw["validVersions"])
    assert valid is not None
    return MessageSpec(name, int(raw["apiKey"]), valid, parse_versions(raw.get("flexibleVersions")),
                       raw)


def _default_of(ftype: str, nullable: bool, raw: Any) -> Any:
    if raw is not None:
        if raw == "null":
            return None
        if ftype == "bool":
            return raw in (True, "true")
        if ftype in _FIXED:
            if ftype == "float64":
                return float(raw)
            return int(raw, 0) if isinstance(raw, str) else int(raw)
        return raw
    if ftype.startswith("[]"):
        return []
    if ftype in _FIXED:
        return 0.0 if ftype == "float64" else 0
    if ftype == "bool":
        return False
    if ftype == "string":
        return ""
    if ftype == "uuid":
        return _ZERO_UUID
    if ftype in ("bytes", "records"):
        return None if nullable else b""
    return None  # a struct: encoded from an empty dict


_PRIMITIVES = frozenset(list(_FIXED) + ["bool", "string", "bytes", "records", "uuid"])


def _compile(name: str, fields: list[dict[str, Any]], version: int, flexible: bool,
             common: dict[str, list[dict[str, Any]]]) -> StructPlan:
    regular: list[FieldPlan] = []
    tagged: list[FieldPlan] = []
    for f in fields:
        if not _in(f.get("versions"), version):
            continue
        # a few definitions spell a name in lower camel case ("timeoutMs"); Kafka's
        # generator capitalizes them, and so do we
        f = {**f, "name": f["name"][:1].upper() + f["name"][1:]}
        ftype: str = f["type"]
        nullable = _in(f.get("nullableVersions"), version)
        tag = f.get("tag") if _in(f.get("taggedVersions"), version) else None
        if ftype.startswith("[]"):
            inner = ftype[2:]
            elem: str | StructPlan
            if inner in _PRIMITIVES:
                elem = inner
            else:
                sub = f.get("fields") or common.get(inner)
                if sub is None:
                    raise KeyError(f"{name}.{f['name']}: unknown type {inner}")
                elem = _compile(inner, sub, version, flexible, common)
            plan = FieldPlan(f["name"], "array", nullable, None if nullable else [], elem=elem,
                             tag=tag)
        elif ftype in _PRIMITIVES:
            plan = FieldPlan(f["name"], ftype, nullable,
                             _default_of(ftype, nullable, f.get("default")), tag=tag)
        else:
            sub = f.get("fields") or common.get(ftype)
            if sub is None:
                raise KeyError(f"{name}.{f['name']}: unknown type {ftype}")
            plan = FieldPlan(f["name"], "struct", nullable, None,
                             struct=_compile(ftype, sub, version, flexible, common), tag=tag)
        (tagged if tag is not None else regular).append(plan)
    return StructPlan(name, tuple(regular), tuple(tagged), flexible)


@cache
def plan_for(name: str, version: int) -> StructPlan:
    spec = message_spec(name)
    if not spec.valid[0] <= version <= spec.valid[1]:
        raise KeyError(f"{name} has no version {version}")
    common = {c["name"]: c["fields"] for c in spec.raw.get("commonStructs", [])}
    return _compile(name, spec.raw["fields"], version, spec.is_flexible(version), common)


# ---------------------------------------------------------------------------- reading

def _read_len(r: Reader, flexible: bool, wide: bool, what: str) -> int:
    """A length or count: -1 means null. Non-flexible strings use i16, others i32."""
    if flexible:
        return r.uvarint(what) - 1
    return r.fixed(_I32 if wide else _I16, what)  # type: ignore[no-any-return]


def _read_primitive(r: Reader, kind: str, nullable: bool, flexible: bool, what: str) -> Any:
    st = _FIXED.get(kind)
    if st is not None:
        return r.fixed(st, what)
    if kind == "bool":
        return r.fixed(_I8, what) != 0
    if kind == "uuid":
        return bytes(r.take(16, what))
    if kind == "string":
        n = _read_len(r, flexible, False, what)
        if n < 0:
            if n == -1 and nullable:
                return None
            raise KafkaDecodeError(f"{what}: invalid string length {n}")
        try:
            return str(r.take(n, what), "utf-8")
        except UnicodeDecodeError:
            raise KafkaDecodeError(f"{what}: string is not UTF-8") from None
    if kind in ("bytes", "records"):
        n = _read_len(r, flexible, True, what)
        if n < 0:
            if n == -1 and (nullable or kind == "records"):
                return None
            raise KafkaDecodeError(f"{what}: invalid bytes length {n}")
        return r.take(n, what)
    raise AssertionError(kind)


def _read_field(r: Reader, f: FieldPlan, flexible: bool) -> Any:
    if f.kind == "array":
        n = _read_len(r, flexible, True, f.name)
        if n < 0:
            if n == -1 and f.nullable:
                return None
            raise KafkaDecodeError(f"{f.name}: invalid array length {n}")
        if n > r.remaining:  # every element takes at least one byte
            raise KafkaDecodeError(f"{f.name}: {n} elements but {r.remaining} bytes remain")
        elem = f.elem
        if isinstance(elem, StructPlan):
            return [read_struct(r, elem) for _ in range(n)]
        assert isinstance(elem, str)
        return [_read_primitive(r, elem, False, flexible, f.name) for _ in range(n)]
    if f.kind == "struct":
        assert f.struct is not None
        if f.nullable and r.fixed(_I8, f.name) < 0:
            return None
        return read_struct(r, f.struct)
    return _read_primitive(r, f.kind, f.nullable, flexible, f.name)


def _read_tagged(r: Reader, plan: StructPlan, out: dict[str, Any]) -> None:
    count = r.uvarint(f"{plan.name} tagged field count")
    if count > r.remaining:
        raise KafkaDecodeError(f"{plan.name}: {count} tagged fields but {r.remaining} bytes "
                               f"remain")
    by_tag = {f.tag: f for f in plan.tagged}
    last = -1
    for _ in range(count):
        tag = r.uvarint(f"{plan.name} tag")
        if tag <= last:
            raise KafkaDecodeError(f"{plan.name}: tagged fields out of order ({tag} after {last})")
        last = tag
        size = r.uvarint(f"{plan.name} tag {tag} size")
        r.need(size, f"{plan.name} tag {tag}")
        f = by_tag.get(tag)
        if f is None:
            r.pos += size
            continue
        sub = Reader(r.buf, r.pos, r.pos + size)
        out[f.name] = _read_field(sub, f, True)
        if sub.pos != sub.end:
            raise KafkaDecodeError(f"{plan.name}.{f.name}: {sub.end - sub.pos} bytes left over "
                                   f"in tagged field")
        r.pos += size


def read_struct(r: Reader, plan: StructPlan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    flexible = plan.flexible
    for f in plan.fields:
        out[f.name] = _read_field(r, f, flexible)
    if flexible:
        for f in plan.tagged:
            out[f.name] = f.default
        _read_tagged(r, plan, out)
    return out


# ---------------------------------------------------------------------------- writing

def _write_len(out: bytearray, n: int, flexible: bool, wide: bool) -> None:
    if flexible:
        write_uvarint(out, n + 1)
    else:
        out += (_I32 if wide else _I16).pack(n)


Chunks = list[bytes | bytearray | memoryview]


def _write_primitive(out: bytearray, chunks: Chunks | None, kind: str, value: Any,
                     flexible: bool) -> bytearray:
    st = _FIXED.get(kind)
    if st is not None:
        out += st.pack(value)
        return out
    if kind == "bool":
        out.append(1 if value else 0)
    elif kind == "uuid":
        b = value.bytes if isinstance(value, uuid.UUID) else bytes(value)
        if len(b) != 16:
            raise KafkaEncodeError(f"uuid must be 16 bytes, got {len(b)}")
        out += b
    elif kind == "string":
        if value is None:
            _write_len(out, -1, flexible, False)
        else:
            b = value.encode("utf-8")
            if len(b) > 0x7FFF:
                raise KafkaEncodeError(f"string of {len(b)} bytes exceeds 32767")
            _write_len(out, len(b), flexible, False)
            out += b
    elif kind in ("bytes", "records"):
        if value is None:
            _write_len(out, -1, flexible, True)
        elif isinstance(value, list):  # records given as several buffers: sent by reference
            n = sum(len(v) for v in value)
            _write_len(out, n, flexible, True)
            if chunks is None:
                for v in value:
                    out += v
            else:
                chunks.append(out)
                chunks.extend(value)
                out = bytearray()
        else:
            _write_len(out, len(value), flexible, True)
            if chunks is not None and len(value) >= 4096:
                chunks.append(out)
                chunks.append(value)
                out = bytearray()
            else:
                out += value
    else:
        raise AssertionError(kind)
    return out


def _write_field(out: bytearray, chunks: Chunks | None, f: FieldPlan, value: Any,
                 flexible: bool) -> bytearray:
    if f.kind == "array":
        if value is None:
            if not f.nullable:
                raise KafkaEncodeError(f"{f.name} is not nullable")
            _write_len(out, -1, flexible, True)
            return out
        _write_len(out, len(value), flexible, True)
        elem = f.elem
        if isinstance(elem, StructPlan):
            for item in value:
                out = write_struct(out, chunks, elem, item)
        else:
            assert isinstance(elem, str)
            for item in value:
                out = _write_primitive(out, chunks, elem, item, flexible)
        return out
    if f.kind == "struct":
        assert f.struct is not None
        if f.nullable:
            if value is None:
                out.append(0xFF)
                return out
            out.append(1)
        return write_struct(out, chunks, f.struct, value or {})
    if value is None and not f.nullable and f.kind in ("string", "bytes"):
        raise KafkaEncodeError(f"{f.name} is not nullable")
    return _write_primitive(out, chunks, f.kind, value, flexible)


def write_struct(out: bytearray, chunks: Chunks | None, plan: StructPlan,
                 value: dict[str, Any]) -> bytearray:
    flexible = plan.flexible
    get = value.get
    for f in plan.fields:
        v = get(f.name, f.default)
        try:
            out = _write_field(out, chunks, f, v, flexible)
        except struct.error as exc:
            raise KafkaEncodeError(f"{plan.name}.{f.name}: {exc}") from None
    if flexible:
        present = [(f, value[f.name]) for f in plan.tagged
                   if f.name in value and value[f.name] != f.default]
        write_uvarint(out, len(present))
        for f, v in sorted(present, key=lambda p: p[0].tag or 0):
            body = _write_field(bytearray(), None, f, v, True)
            write_uvarint(out, f.tag or 0)
            write_uvarint(out, len(body))
            out += body
    return out


# ---------------------------------------------------------------------------- headers

@dataclass(frozen=True, slots=True)
class RequestHeader:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    # who sent it (dmq.security.acl): set by the server from the connection, not read
    principal: str = "User:ANONYMOUS"


def peek_request_header(body: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """(api_key, api_version, correlation_id): the 8 bytes every header version starts
    with, so that a request of an unknown API or version can still be answered."""
    if len(body) < _REQ_HEADER.size:
        raise KafkaDecodeError(f"request of {len(body)} bytes is shorter than a header")
    api_key, api_version, correlation_id = _REQ_HEADER.unpack_from(body, 0)
    return api_key, api_version, correlation_id


def read_request_header(r: Reader, flexible: bool) -> RequestHeader:
    api_key = r.fixed(_I16, "api_key")
    api_version = r.fixed(_I16, "api_version")
    correlation_id = r.fixed(_I32, "correlation_id")
    # client_id is a nullable i16 string even in header v2 (kept for ApiVersions' sake)
    n = r.fixed(_I16, "client_id")
    if n < -1:
        raise KafkaDecodeError(f"client_id: invalid length {n}")
    client_id = None
    if n >= 0:
        client_id = str(r.take(n, "client_id"), "utf-8", "replace")
    if flexible:
        _read_tagged(r, StructPlan("RequestHeader", (), (), True), {})
    return RequestHeader(api_key, api_version, correlation_id, client_id)


def encode_request(name: str, version: int, correlation_id: int, client_id: str | None,
                   body: dict[str, Any]) -> bytes:
    """A whole request frame (size prefix included): used by tests and tools."""
    spec = message_spec(name + "Request")
    out = bytearray(4)
    out += _REQ_HEADER.pack(spec.api_key, version, correlation_id)
    if client_id is None:
        out += _I16.pack(-1)
    else:
        cid = client_id.encode()
        out += _I16.pack(len(cid)) + cid
    if spec.is_flexible(version):
        out.append(0)
    out = write_struct(out, None, plan_for(name + "Request", version), body)
    _I32.pack_into(out, 0, len(out) - 4)
    return bytes(out)


def decode_request_body(name: str, version: int, r: Reader) -> dict[str, Any]:
    """Bytes after the body are ignored, as Kafka brokers ignore them: librdkafka 2.x
    sends some (a Metadata v12 request carries 3 more bytes)."""
    return read_struct(r, plan_for(name + "Request", version))


def encode_response(name: str, version: int, correlation_id: int, body: dict[str, Any],
                    vectored: bool = False) -> Chunks:
    """A whole response frame as a list of buffers (size prefix first). With
    `vectored`, large `records` values are left as separate buffers for a vectored
    write instead of being copied into the frame."""
    spec = message_spec(name + "Response")
    head = bytearray(4)
    head += _I32.pack(correlation_id)
    if spec.is_flexible(version) and name != "ApiVersions":
        head.append(0)
    chunks: Chunks = []
    last = write_struct(head, chunks if vectored else None, plan_for(name + "Response", version),
                        body)
    chunks.append(last)
    size = sum(len(c) for c in chunks) - 4
    first = chunks[0]
    assert isinstance(first, bytearray)
    _I32.pack_into(first, 0, size)
    return chunks


def decode_response(name: str, version: int, frame: bytes | bytearray | memoryview
                    ) -> tuple[int, dict[str, Any]]:
    """(correlation_id, body) of one response frame without its size prefix."""
    spec = message_spec(name + "Response")
    r = Reader(frame)
    correlation_id = r.fixed(_I32, "correlation_id")
    if spec.is_flexible(version) and name != "ApiVersions":
        _read_tagged(r, StructPlan("ResponseHeader", (), (), True), {})
    body = read_struct(r, plan_for(name + "Response", version))
    if r.pos != r.end:
        raise KafkaDecodeError(f"{name} v{version}: {r.end - r.pos} bytes after the body")
    return correlation_id, body


__all__ = [
    "KafkaDecodeError",
    "KafkaEncodeError",
    "Reader",
    "RequestHeader",
    "decode_request_body",
    "decode_response",
    "encode_request",
    "encode_response",
    "message_spec",
    "parse_versions",
    "peek_request_header",
    "plan_for",
    "read_request_header",
    "read_struct",
    "uvarint_bytes",
    "write_struct",
    "write_uvarint",
]

