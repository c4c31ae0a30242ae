"""The REST layer's input checks and record rendering, and `dmq dev`'s port layout,
without processes (the real-process side is tests/e2e/test_seed_fidelity.py)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest
from crc32c import crc32c

from dmq.cli.dev import DevCluster
from dmq.log.batch import HEADER_SIZE, build_batch, encode_batch
from dmq.ops.rest import (
    MAX_JSON_DEPTH,
    BadRequest,
    _depth,
    int_field,
    int_param,
    records_json,
    text_field,
)


def _batch(base: int, values: list[bytes]) -> bytes:
    return build_batch([(None, v) for v in values], timestamp_ms=1000, base_offset=base)


def _undecodable(base: int) -> bytes:
    b = bytearray(encode_batch([[0, b"k", b"v", []]], base, 1000, 1000))
    b[HEADER_SIZE:] = b"\xc1" * (len(b) - HEADER_SIZE)
    struct.pack_into(">I", b, 17, crc32c(bytes(b[21:])))
    return bytes(b)


def _lying_count(base: int) -> bytes:
    """Valid msgpack and CRC, but the header declares two records for one."""
    b = bytearray(encode_batch([[0, b"k", b"v", []]], base, 1000, 1000))
    struct.pack_into(">i", b, 57, 2)
    struct.pack_into(">I", b, 17, crc32c(bytes(b[21:])))
    return bytes(b)


def test_records_before_an_undecodable_batch_are_returned_with_its_offsets() -> None:
    buf = _batch(0, [b"a", b"b"]) + _undecodable(2) + _batch(3, [b"c"])
    out, bad = records_json(buf, 0, 4, 100)
    assert [r["value"] for r in out] == ["a", "b"]
    assert bad is not None and (bad["offset"], bad["lastOffset"], bad["nextOffset"]) == (2, 2, 3)
    assert bad["code"] == "CORRUPT_MESSAGE" and "offsets 2..2 cannot be decoded" in bad["error"]
    out, bad = records_json(buf, 3, 4, 100)
    assert [r["value"] for r in out] == ["c"] and bad is None
    out, bad = records_json(buf, 0, 4, 1)  # the limit is reached before the bad batch
    assert [r["value"] for r in out] == ["a"] and bad is None


def test_a_batch_whose_count_lies_is_reported_not_raised() -> None:
    out, bad = records_json(_lying_count(0), 0, 2, 100)
    assert out == [] and bad is not None
    assert "record_count 2 but the records array holds 1" in bad["error"]


def test_records_stop_at_the_high_watermark_and_binary_is_marked() -> None:
    buf = _batch(0, [b"a", b"\xff\xfe"]) + _batch(2, [b"hidden"])
    out, bad = records_json(buf, 0, 2, 100)
    assert bad is None and [r["value"] for r in out] == ["a", "base64://4="]


@pytest.mark.parametrize("value, message", [
    (10**20, "n must be in [1, 10]"),
    (0, "n must be in [1, 10]"),
    (True, "n must be an integer"),
    ("3", "n must be an integer"),
    (1.5, "n must be an integer"),
])
def test_int_field_refuses_out_of_range_and_non_integers(value: object, message: str) -> None:
    with pytest.raises(BadRequest, match=message.replace("[", r"\[").replace("]", r"\]")):
        int_field(value, "n", 1, 10)
    assert int_field(10, "n", 1, 10) == 10


def test_int_param() -> None:
    assert int_param(None, "offset", 0, 5, 3) == 3
    assert int_param("5", "offset", 0, 5, 0) == 5
    for text in ("6", "-1", "100000000000000000000", "x", "1e3"):
        with pytest.raises(BadRequest, match="offset must be"):
            int_param(text, "offset", 0, 5, 0)


def test_keys_and_values_are_strings_never_a_repr() -> None:
    assert text_field("é", "key", nullable=True) == "é".encode()
    assert text_field(None, "key", nullable=True) is None
    with pytest.raises(BadRequest, match="key must be a string or null, got an object"):
        text_field({"a": 1}, "key", nullable=True)
    with pytest.raises(BadRequest, match="value must be a string or null, got an array"):
        text_field([1], "value", nullable=True)
    with pytest.raises(BadRequest, match="topic must be a string, got null"):
        text_field(None, "topic", nullable=False)
    with pytest.raises(BadRequest, match="key is not valid Unicode"):
        text_field("a\ud800", "key", nullable=True)


def test_json_depth_is_measured_without_recursion() -> None:
    deep: object = []
    for _ in range(100_000):
        deep = [deep]
    assert _depth(deep) == MAX_JSON_DEPTH + 1  # stops walking past the limit
    assert _depth({"a": {"b": [1, 2]}}) == 3 and _depth("x") == 0


def test_dev_layout_ports(tmp_path: Path) -> None:
    seed = DevCluster(tmp_path, 3, 3, 9091, broker_base_port=8081, http_base_port=9191)
    assert [(n.node_id, n.port) for n in seed.nodes] == [
        (1, 9091), (2, 9092), (3, 9093), (101, 8081), (102, 8082), (103, 8083)]
    assert [seed.http_port(n) for n in seed.nodes] == [9191, 9192, 9193, 9201, 9202, 9203]
    # the library's default keeps brokers at base + 10 (benchmarks pick one free base)
    moved = DevCluster(tmp_path, 3, 2, 20000)
    assert [n.port for n in moved.nodes] == [20000, 20001, 20002, 20010, 20011]
    assert moved.http_port(moved.nodes[0]) is None
    assert [n.port for n in DevCluster(tmp_path, 1, 1, 20000).nodes] == [20000]


def test_dev_refuses_a_taken_port_by_name(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        dev = DevCluster(tmp_path, 1, 2, 1, broker_base_port=port)
        dev.nodes[0].port = 0  # any free port for the controller
        with pytest.raises(RuntimeError, match=f"port {port} of node 101 \\(broker\\): "):
            dev.check_ports_free()


def test_refusals_of_limits_and_policies_are_4xx_not_500() -> None:
    import json

    from dmq.ops.rest import _from_dmq_error
    from dmq.protocol.errors import ErrorCode, error_for

    for code, status in [(ErrorCode.POLICY_VIOLATION, 400), (ErrorCode.INVALID_RECORD, 400),
                         (ErrorCode.CORRUPT_MESSAGE, 400),
                         (ErrorCode.RECORD_LIST_TOO_LARGE, 413),
                         (ErrorCode.CLUSTER_AUTHORIZATION_FAILED, 403),
                         (ErrorCode.UNKNOWN_SERVER_ERROR, 500)]:
        resp = _from_dmq_error(error_for(code, "why"))
        assert resp.status == status, code
        assert json.loads(resp.body)["code"] == code.name


async def test_concurrent_requests_share_one_connection_per_node(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests that find no connection at once each open one; all but one are closed
    again, not left open (to the node's idle timeout) and forgotten."""
    import asyncio
    import contextlib
    from types import SimpleNamespace

    from dmq.ops import rest

    opened: list[SimpleNamespace] = []
    opening: list[int] = []
    all_opening = asyncio.Event()

    class FakeConnection(SimpleNamespace):
        @classmethod
        async def open(cls, host: str, port: int, **kw: object) -> FakeConnection:
            # no open finishes before all five requests are opening one (bounded, so a
            # client that opened one at a time would fail the assertions, not hang)
            opening.append(1)
            if len(opening) == 5:
                all_opening.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_opening.wait(), 5)
            conn = cls(closed=False)
            opened.append(conn)
            return conn

        async def close(self) -> None:
            self.closed = True

        async def request(self, key: object, body: object, **kw: object) -> object:
            return id(self)

    monkeypatch.setattr(rest, "Connection", FakeConnection)
    spec = SimpleNamespace(address=SimpleNamespace(host="h", port=1))
    api = rest.RestApi(spec)  # type: ignore[arg-type]
    answers = await asyncio.gather(*(api._call(rest.ApiKey.METADATA, {}) for _ in range(5)))
    (kept,) = [c for c in opened if not c.closed]
    assert set(answers) == {id(kept)} and api._conns == {("h", 1): kept}
    await api.close()
    assert all(c.closed for c in opened)
