"""Frames for protocol fuzzing against live nodes: hypothesis strategies that start from
a valid request of every API and break it (garbage bodies, wrong types in any field,
dropped and unknown fields, huge counts and numbers, negative offsets, unknown topics,
mismatched epochs and producer ids), break the header, or break the bytes of the frame.

A produce template carries a valid batch whose record values are unique tags
(`fz-<n>`), so the test can tell afterwards which fuzzed writes may be in a log: only
those the broker acknowledged (or that asked for no answer, acks=0) may be.

`send_frame` speaks the framing over a blocking socket with timeouts: it returns the
decoded response, or None when the node answered nothing (acks=0, or it closed the
connection on a frame it could not read).
"""

from __future__ import annotations

import itertools
import socket
import struct
import time
from typing import Any

import msgpack  # type: ignore[import-untyped]
from hypothesis import strategies as st

from dmq.log.batch import build_batch
from dmq.protocol.api import ApiKey

BIG = [2**31 - 1, -(2**31), 2**63 - 1, -(2**63), 2**64 - 1, -1, 0]
_tags = itertools.count()

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.sampled_from(BIG),
    st.floats(allow_nan=True), st.text(max_size=20), st.binary(max_size=40))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=20)


def new_tag() -> bytes:
    return b"fz-%d" % next(_tags)


def templates(topic: str) -> dict[ApiKey, Any]:
    """A valid body for every API (topic names other than `topic` are unknown)."""
    tp = [[topic, [[0, -1, -1, 1 << 20]]]]
    # Raft messages from a node that is not a voter (7), at term 0 (stale)
    vote = {"from": 7, "msg": [1, 7, 1, 0, 0, 0, False, False]}
    append = {"from": 7, "msg": [3, 7, 1, 0, 0, 0, 0, [[0, 0, b""]]]}
    return {
        ApiKey.API_VERSIONS: {},
        ApiKey.PRODUCE: {"acks": -1, "timeout_ms": 1000, "topics": [[topic, [[0, -1, b""]]]]},
        ApiKey.FETCH: {"max_wait_ms": 0, "min_bytes": 1, "max_bytes": 1 << 20, "topics": tp},
        ApiKey.LIST_OFFSETS: {"topics": [[topic, [[0, -1]]]]},
        ApiKey.OFFSET_FOR_LEADER_EPOCH: {"topics": [[topic, [[0, -1, 0]]]]},
        ApiKey.METADATA: {"topics": [topic, "no-such-topic"]},
        ApiKey.DESCRIBE_CLUSTER: {},
        ApiKey.METADATA_FETCH: {"broker_id": 999, "version": 0, "max_wait_ms": 10},
        ApiKey.BROKER_REGISTRATION: {"broker_id": 999, "host": "127.0.0.1", "port": 1,
                                     "incarnation_id": "fuzz"},
        ApiKey.BROKER_HEARTBEAT: {"broker_id": 999, "broker_epoch": 5, "metadata_version": 0},
        ApiKey.CONTROLLED_SHUTDOWN: {"broker_id": 999, "broker_epoch": 5},
        ApiKey.CREATE_TOPICS: {"topics": [{"name": "fuzz-new", "partitions": 1,
                                           "replication_factor": 1}], "validate_only": True},
        ApiKey.DELETE_TOPICS: {"topics": ["no-such-topic"]},
        ApiKey.CREATE_PARTITIONS: {"topics": [{"name": "no-such-topic", "count": 2}],
                                   "validate_only": True},
        ApiKey.ALTER_PARTITION: {"broker_id": 999, "broker_epoch": 5,
                                 "topics": [[topic, [[0, 99, 99, [999]]]]]},
        ApiKey.ALLOCATE_PRODUCER_IDS: {"broker_id": 999, "broker_epoch": 5},
        ApiKey.INIT_PRODUCER_ID: {},
        ApiKey.DESCRIBE_CONFIGS: {"topics": [topic, "no-such-topic"]},
        ApiKey.ALTER_CONFIGS: {"topics": [{"name": "no-such-topic", "configs": {"x": "y"}}],
                               "validate_only": True},
        ApiKey.CONTROLLER_CHANGED: {"controller_id": 999, "term": 0, "host": "127.0.0.1",
                                    "port": 1},
        ApiKey.CONSUMER_GROUP_HEARTBEAT: {"group_id": "fz", "member_id": "", "member_epoch": 0,
                                          "topics": ["no-such-topic"]},
        ApiKey.OFFSET_COMMIT: {"group_id": "fz", "member_id": "m", "member_epoch": 3,
                               "topics": [[topic, [[0, 5, None]]]]},
        ApiKey.OFFSET_FETCH: {"group_id": "fz", "topics": [[topic, [0]]]},
        ApiKey.OFFSET_DELETE: {"group_id": "fz", "topics": [[topic, [0]]]},
        ApiKey.LIST_GROUPS: {},
        ApiKey.DESCRIBE_GROUPS: {"groups": ["fz"]},
        ApiKey.DELETE_GROUPS: {"groups": ["no-such-group"]},
        ApiKey.RESET_OFFSETS: {"group_id": "fz", "topics": [[topic, [[0, 0]]]],
                               "dry_run": True},
        ApiKey.RAFT_REQUEST_VOTE: vote,
        ApiKey.RAFT_APPEND_ENTRIES: append,
        ApiKey.RAFT_INSTALL_SNAPSHOT: {"from": 7, "msg": [7, 7, 1, 0, 0, 0, 0, b"", True]},
        ApiKey.RAFT_TIMEOUT_NOW: {"from": 7, "msg": [9, 7, 1, 0]},
        ApiKey.RAFT_MESSAGE: {"from": 7, "msg": [4, 7, 1, 0, True, 0, 0]},
        ApiKey.RAFT_STATUS: {},
        ApiKey.RAFT_PROPOSE: {"data": b"fuzz"},  # bare-quorum benchmark API only
    }


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(obj, dict):
        return {**obj, head: _set(obj[head], rest, value)}
    return [_set(v, rest, value) if i == head else v for i, v in enumerate(obj)]


def _drop(obj: Any, path: tuple[Any, ...]) -> Any:
    if len(path) == 1:
        if isinstance(obj, dict):
            return {k: v for k, v in obj.items() if k != path[0]}
        return [v for i, v in enumerate(obj) if i != path[0]]
    head = path[0]
    if isinstance(obj, dict):
        return {**obj, head: _drop(obj[head], path[1:])}
    return [_drop(v, path[1:]) if i == head else v for i, v in enumerate(obj)]


@st.composite
def produce_batch(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A valid batch (maybe idempotent with arbitrary producer id/epoch/sequence)."""
    tags = [new_tag() for _ in range(draw(st.integers(1, 3)))]
    if draw(st.booleans()):
        pid, epoch, seq = (draw(st.integers(-1, 2**40)), draw(st.integers(-1, 40)),
                           draw(st.integers(-1, 2**31 - 1)))
    else:
        pid, epoch, seq = -1, -1, -1
    data = build_batch([(None, t) for t in tags], timestamp_ms=int(time.time() * 1000),
                       producer_id=pid, producer_epoch=epoch, base_sequence=seq)
    return data, tags


@st.composite
def requests(draw: st.DrawFn, apis: list[ApiKey], topic: str
             ) -> tuple[ApiKey | int, int, Any, list[bytes]]:
    """(api key, version, body, tags of a valid batch inside) for one request."""
    api = draw(st.sampled_from(apis))
    body = templates(topic).get(api, {})  # an API added later: fuzzed from {}
    tags: list[bytes] = []
    if api == ApiKey.PRODUCE:
        data, tags = draw(produce_batch())
        body = _set(body, ("topics", 0, 1, 0, 2), data)
        body = _set(body, ("acks",), draw(st.sampled_from([-1, 1, 0, -1, 2, -2])))
    mutation = draw(st.sampled_from(["none", "replace", "replace", "drop", "extra", "huge",
                                     "garbage-body", "header"]))
    version, key = 0, int(api)
    paths = _paths(body)
    if mutation == "replace":
        body = _set(body, draw(st.sampled_from(paths)), draw(values))
    elif mutation == "drop" and len(paths) > 1:
        body = _drop(body, draw(st.sampled_from(paths[1:])))
    elif mutation == "extra" and isinstance(body, dict):
        body = {**body, draw(st.text(max_size=6)): draw(values)}
    elif mutation == "huge":
        path = draw(st.sampled_from(paths))
        big = draw(st.one_of(
            st.sampled_from(BIG),
            st.builds(lambda n: ["x"] * n, st.sampled_from([1000, 200_000])),
            st.builds(lambda n: [[0, 0, 0, 0]] * n, st.sampled_from([10, 50_000]))))
        body = _set(body, path, big)
    elif mutation == "garbage-body":
        body = draw(values)
    elif mutation == "header":
        key = draw(st.one_of(st.just(key), st.integers(-5, 2000), st.sampled_from(BIG)))
        version = draw(st.one_of(st.integers(-3, 3), st.sampled_from(BIG)))
    return key, version, body, tags


@st.composite
def raw_frames(draw: st.DrawFn, apis: list[ApiKey], topic: str) -> tuple[bytes, list[bytes]]:
    """Encoded frames, some of them broken at the byte level."""
    key, version, body, tags = draw(requests(apis, topic))
    cid = draw(st.integers(0, 2**31 - 1))
    try:
        payload = msgpack.packb([key, version, cid, "fuzz", body], use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        payload = msgpack.packb([int(ApiKey.API_VERSIONS), 0, cid, "fuzz", {}])
    how = draw(st.sampled_from(["ok"] * 6 + ["flip", "truncate", "length", "not-msgpack",
                                             "empty", "header-shape"]))
    if how == "flip" and payload:
        i = draw(st.integers(0, len(payload) - 1))
        payload = payload[:i] + bytes([payload[i] ^ draw(st.integers(1, 255))]) + payload[i + 1:]
    elif how == "truncate":
        payload = payload[:draw(st.integers(0, max(len(payload) - 1, 0)))]
    elif how == "length":
        length = draw(st.sampled_from([2**32 - 1, 2**31, 200 << 20]))
        return struct.pack(">I", length) + payload, tags
    elif how == "not-msgpack":
        payload = b"\xc1" + draw(st.binary(max_size=30))
    elif how == "empty":
        payload = b""
    elif how == "header-shape":
        payload = msgpack.packb(draw(st.one_of(
            st.lists(values, max_size=7), values)), use_bin_type=True)
    return struct.pack(">I", len(payload)) + payload, tags


def send_frame(port: int, frame: bytes, timeout_s: float = 1.0) -> list[Any] | None:
    """Send one frame on a fresh connection; the decoded response or None."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        try:
            s.sendall(frame)
        except OSError:
            return None
        buf = b""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(1 << 16)
            except (TimeoutError, OSError):
                return None
            if not chunk:
                return None
            buf += chunk
            if len(buf) >= 4:
                n = struct.unpack(">I", buf[:4])[0]
                if len(buf) >= 4 + n:
                    obj = msgpack.unpackb(buf[4:4 + n], raw=False, strict_map_key=False)
                    assert isinstance(obj, list) and len(obj) == 3, obj
                    return obj
    return None
