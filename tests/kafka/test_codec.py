"""The Kafka wire codec on its own: golden bytes (requests captured from librdkafka
2.16 and hand-built answers), round trips of every message and version dmq answers,
split-anywhere framing, and bounds: every malformed input is a `KafkaDecodeError`
naming the problem, never another exception."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmq.kafka.apis import KafkaApis
from dmq.kafka.codec import (
    FieldPlan,
    KafkaDecodeError,
    Reader,
    StructPlan,
    decode_request_body,
    decode_response,
    encode_request,
    encode_response,
    message_spec,
    plan_for,
    read_request_header,
    read_struct,
    write_struct,
)
from dmq.kafka.server import Api

# (name, versions) of every message dmq answers, from the broker's own table
_TABLE: list[Api] = KafkaApis.table(KafkaApis.__new__(KafkaApis))
MESSAGES = [(a.name, v) for a in _TABLE for v in range(a.min_version, a.max_version + 1)]

# ApiVersions v3 and Metadata v12 exactly as confluent-kafka 2.16.1 (librdkafka 2.16.0)
# sends them, without the size prefix.
LIBRDKAFKA_API_VERSIONS_V3 = bytes.fromhex(
    "0012000300000001000772646b61666b610017636f6e666c75656e742d6b61666b612d707974686f6e"
    "16322e31362e312d72646b61666b612d322e31362e3000")
LIBRDKAFKA_METADATA_V12 = bytes.fromhex("0003000c00000003000772646b61666b610000000000010000")


def test_librdkafka_api_versions_v3_golden() -> None:
    r = Reader(LIBRDKAFKA_API_VERSIONS_V3)
    header = read_request_header(r, flexible=True)
    assert (header.api_key, header.api_version, header.correlation_id,
            header.client_id) == (18, 3, 1, "rdkafka")
    body = decode_request_body("ApiVersions", 3, r)
    assert body == {"ClientSoftwareName": "confluent-kafka-python",
                    "ClientSoftwareVersion": "2.16.1-rdkafka-2.16.0"}


def test_librdkafka_metadata_v12_golden_with_trailing_bytes() -> None:
    """librdkafka sends 3 bytes after the body; Kafka brokers ignore them and so do we."""
    r = Reader(LIBRDKAFKA_METADATA_V12)
    header = read_request_header(r, flexible=True)
    assert (header.api_key, header.api_version, header.correlation_id) == (3, 12, 3)
    body = decode_request_body("Metadata", 12, r)
    assert body == {"Topics": None, "AllowAutoTopicCreation": False,
                    "IncludeTopicAuthorizedOperations": False}


def test_api_versions_v3_response_golden() -> None:
    """Response header v0 even though v3 is flexible; compact array of ApiKeys, each
    with an empty tagged-field section, then ThrottleTimeMs and the tagged fields."""
    chunks = encode_response("ApiVersions", 3, 7, {
        "ErrorCode": 0, "ApiKeys": [{"ApiKey": 18, "MinVersion": 0, "MaxVersion": 3}]})
    frame = b"".join(chunks)
    assert frame == bytes.fromhex(
        "00000013"  # size 19
        "00000007"  # correlation id, header v0: no tagged fields
        "0000"  # ErrorCode
        "02" "0012" "0000" "0003" "00"  # ApiKeys: 1 entry (+1), key 18, 0..3, no tags
        "00000000"  # ThrottleTimeMs
        "00")  # no tagged fields (SupportedFeatures etc. at their defaults)


def test_metadata_v1_response_golden() -> None:
    """Non-flexible: i16 strings (-1 null), i32 arrays, response header v0."""
    frame = b"".join(encode_response("Metadata", 1, 2, {
        "Brokers": [{"NodeId": 5, "Host": "h", "Port": 9092, "Rack": None}],
        "ControllerId": 5, "Topics": []}))
    assert frame == bytes.fromhex(
        "0000001d" "00000002"
        "00000001" "00000005" "000168" "00002384" "ffff"  # one broker, rack null
        "00000005"  # ControllerId
        "00000000")  # no topics


def test_produce_request_records_are_views_of_the_frame() -> None:
    records = b"\x00" * 70
    frame = encode_request("Produce", 9, 11, "c", {
        "Acks": -1, "TimeoutMs": 1000, "TopicData": [
            {"Name": "t", "PartitionData": [{"Index": 0, "Records": records}]}]})
    r = Reader(frame[4:])
    read_request_header(r, flexible=True)
    body = decode_request_body("Produce", 9, r)
    got = body["TopicData"][0]["PartitionData"][0]["Records"]
    assert isinstance(got, memoryview) and bytes(got) == records


# ---------------------------------------------------------------------------- round trips

_NAMES = st.text(max_size=12)


def _value(f: FieldPlan | str, nullable: bool = False) -> st.SearchStrategy[Any]:
    kind = f if isinstance(f, str) else f.kind
    base: st.SearchStrategy[Any]
    if kind == "int8":
        base = st.integers(-128, 127)
    elif kind == "int16":
        base = st.integers(-(2 ** 15), 2 ** 15 - 1)
    elif kind == "uint16":
        base = st.integers(0, 2 ** 16 - 1)
    elif kind == "int32":
        base = st.integers(-(2 ** 31), 2 ** 31 - 1)
    elif kind == "uint32":
        base = st.integers(0, 2 ** 32 - 1)
    elif kind == "int64":
        base = st.integers(-(2 ** 63), 2 ** 63 - 1)
    elif kind == "float64":
        base = st.floats(allow_nan=False)
    elif kind == "bool":
        base = st.booleans()
    elif kind == "uuid":
        base = st.binary(min_size=16, max_size=16)
    elif kind == "string":
        base = _NAMES
    elif kind in ("bytes", "records"):
        base = st.binary(max_size=40)
    elif kind == "array":
        assert isinstance(f, FieldPlan)
        elem = f.elem
        inner = _struct(elem) if isinstance(elem, StructPlan) else _value(elem or "")
        base = st.lists(inner, max_size=3)
    elif kind == "struct":
        assert isinstance(f, FieldPlan) and f.struct is not None
        base = _struct(f.struct)
    else:
        raise AssertionError(kind)
    if isinstance(f, FieldPlan):
        nullable = f.nullable
    return st.one_of(st.none(), base) if nullable else base


def _struct(plan: StructPlan) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({f.name: _value(f) for f in plan.fields + plan.tagged})


def _plain(v: Any) -> Any:
    if isinstance(v, memoryview):
        return bytes(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


@pytest.mark.parametrize("kind", ["Request", "Response"])
@pytest.mark.parametrize(("name", "version"), MESSAGES)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_round_trip_every_message_and_version(name: str, version: int, kind: str,
                                              data: st.DataObject) -> None:
    plan = plan_for(name + kind, version)
    value = data.draw(_struct(plan))
    encoded = bytes(write_struct(bytearray(), None, plan, value))
    r = Reader(encoded)
    assert _plain(read_struct(r, plan)) == value
    assert r.pos == len(encoded)


@settings(max_examples=50, deadline=None)
@given(value=_struct(plan_for("FetchResponse", 12)))
def test_vectored_fetch_response_is_byte_identical(value: dict[str, Any]) -> None:
    copied = b"".join(encode_response("Fetch", 12, 3, value))
    vectored = b"".join(encode_response("Fetch", 12, 3, value, vectored=True))
    assert copied == vectored
    corr, body = decode_response("Fetch", 12, copied[4:])
    assert corr == 3 and _plain(body) == value


# ---------------------------------------------------------------------------- framing

# ---------------------------------------------------------------------------- bounds

def _metadata_v12_frame() -> bytes:
    return encode_request("Metadata", 12, 1, "c", {"Topics": [{"Name": "abc"}]})[4:]


def test_every_truncation_of_a_request_is_a_decode_error() -> None:
    frame = _metadata_v12_frame()
    for cut in range(len(frame)):
        r = Reader(frame[:cut])
        with pytest.raises(KafkaDecodeError):
            read_request_header(r, flexible=True)
            decode_request_body("Metadata", 12, r)


def test_array_count_larger_than_the_bytes_left_is_refused() -> None:
    # Metadata v1: Topics is an i32 count; claim 2**31-1 topics in a 4-byte body
    body = struct.pack(">i", 2 ** 31 - 1)
    with pytest.raises(KafkaDecodeError, match="Topics: 2147483647 elements but 0 bytes"):
        read_struct(Reader(body), plan_for("MetadataRequest", 1))


def test_negative_string_length_other_than_null_is_refused() -> None:
    body = struct.pack(">i", 1) + struct.pack(">h", -5)  # one topic, name length -5
    with pytest.raises(KafkaDecodeError, match="invalid string length -5"):
        read_struct(Reader(body), plan_for("MetadataRequest", 1))


def test_overlong_varint_is_refused() -> None:
    with pytest.raises(KafkaDecodeError, match="varint longer than 5 bytes"):
        read_struct(Reader(b"\xff" * 6), plan_for("MetadataRequest", 12))
    with pytest.raises(KafkaDecodeError, match="varint over 32 bits"):
        read_struct(Reader(b"\xff\xff\xff\xff\x7f"), plan_for("MetadataRequest", 12))


def test_tagged_field_size_past_the_end_is_refused() -> None:
    # null topics, two bools, then one tagged field (tag 0) claiming 100 bytes
    with pytest.raises(KafkaDecodeError, match="tag 0: needs 100 bytes"):
        read_struct(Reader(b"\x00\x00\x00\x01\x00\x64"), plan_for("MetadataRequest", 12))


@settings(max_examples=400, deadline=None)
@given(blob=st.binary(max_size=200), pick=st.sampled_from(MESSAGES))
def test_random_bytes_decode_or_raise_decode_error_only(blob: bytes,
                                                        pick: tuple[str, int]) -> None:
    name, version = pick
    try:
        r = Reader(blob)
        read_request_header(r, flexible=message_spec(name + "Request").is_flexible(version))
        decode_request_body(name, version, r)
    except KafkaDecodeError:
        pass
