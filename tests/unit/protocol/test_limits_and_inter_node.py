"""The pieces behind the server's node-wide bounds and inter-node checks that need no
socket: the decoder's report of a large frame in progress, the inter-node API table,
and the roles a cluster configuration gives each node id."""

from __future__ import annotations

import pytest

from dmq.config import parse_config
from dmq.node import cluster_node_roles
from dmq.protocol.api import INTER_NODE_APIS, REQUEST_SCHEMAS, ApiKey
from dmq.protocol.codec import FrameDecoder, encode_request
from dmq.protocol.errors import ClusterAuthorizationFailedError, ErrorCode, is_retriable
from dmq.protocol.schema import Struct


def test_pending_frame_bytes_is_the_declared_length_of_a_large_frame_in_progress() -> None:
    big = encode_request(ApiKey.PRODUCE, 0, 1, "t", {"pad": b"x" * 200_000})
    small = encode_request(ApiKey.METADATA, 0, 2, "t", {})
    dec = FrameDecoder(large_frame_bytes=64 * 1024)
    assert dec.feed(small[:3]) == [] and dec.pending_frame_bytes == 0  # header only
    assert len(dec.feed(small[3:] + big[:1000])) == 1
    assert dec.pending_frame_bytes == len(big) - 4  # reserved before the body arrives
    for i in range(1000, len(big) - 1, 50_000):
        assert dec.feed(big[i:min(i + 50_000, len(big) - 1)]) == []
        assert dec.pending_frame_bytes == len(big) - 4
    assert len(dec.feed(big[-1:])) == 1 and dec.pending_frame_bytes == 0
    # a small frame split in two is never reported
    dec.feed(small[:len(small) - 1])
    assert dec.pending_frame_bytes == 0


def test_every_inter_node_api_names_a_sender_field_of_its_schema() -> None:
    for key, rule in INTER_NODE_APIS.items():
        assert rule.role in ("controller", "broker"), key
        schema = REQUEST_SCHEMAS[key]
        assert isinstance(schema, Struct)
        if rule.sender is not None:
            declared = rule.sender in schema.optional if rule.optional else \
                rule.sender in schema.fields
            assert declared, f"{key.name}: {rule.sender} is not a field of its body"
    raft = {k for k in ApiKey if k.name.startswith("RAFT_")}
    # status is a read served to operators; every other Raft key is inter-node
    assert raft - set(INTER_NODE_APIS) == {ApiKey.RAFT_STATUS}
    for key in (ApiKey.BROKER_REGISTRATION, ApiKey.BROKER_HEARTBEAT, ApiKey.METADATA_FETCH,
                ApiKey.CONTROLLER_CHANGED, ApiKey.ALTER_PARTITION):
        assert key in INTER_NODE_APIS
    # client APIs stay open; fetch is inter-node only when it names a replica
    for key in (ApiKey.PRODUCE, ApiKey.METADATA, ApiKey.API_VERSIONS, ApiKey.NODE_HELLO,
                ApiKey.CREATE_TOPICS, ApiKey.OFFSET_COMMIT):
        assert key not in INTER_NODE_APIS
    assert INTER_NODE_APIS[ApiKey.FETCH].optional


def test_refusal_is_not_retriable() -> None:
    assert ClusterAuthorizationFailedError().code is ErrorCode.CLUSTER_AUTHORIZATION_FAILED
    assert int(ErrorCode.CLUSTER_AUTHORIZATION_FAILED) == 31  # Kafka's number
    assert not is_retriable(ErrorCode.CLUSTER_AUTHORIZATION_FAILED)


@pytest.mark.parametrize("layout", ["split", "combined"])
def test_cluster_node_roles(layout: str) -> None:
    nodes = [{"id": 1, "port": 9001}, {"id": 2, "port": 9002}]
    brokers = [{"id": 101, "port": 9101}] if layout == "split" else []
    roles = cluster_node_roles(parse_config({"controllers": nodes, "brokers": brokers}))
    # a combined-mode node is listed only among the controllers, yet is a broker too
    assert roles[1] == roles[2] == frozenset({"controller", "broker"})
    assert roles.get(101) == (frozenset({"broker"}) if layout == "split" else None)
    assert 999 not in roles


def test_refusal_log_limiter_keeps_a_bounded_number_of_addresses(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A flood of refusals from ever new addresses neither grows the limiter's books
    without bound nor logs a line per address."""
    from dmq.protocol import server

    now = [1000.0]
    monkeypatch.setattr(server, "monotonic", lambda: now[0])
    limited = server.LogLimiter()
    cap = server.LogLimiter.MAX_KEYS
    with caplog.at_level("WARNING", logger="dmq.protocol.server"):
        for i in range(3 * cap):
            limited.warning(f"cap:10.0.{i // 256}.{i % 256}", "refused %s", i)
    assert len(limited._next) <= cap + 1 and len(limited._held) <= cap + 1
    assert len(caplog.records) == cap + 1  # then one line for all the others
    # once their period is over, the old addresses make room for new ones
    now[0] += server.LOG_EVERY_S
    caplog.clear()
    with caplog.at_level("WARNING", logger="dmq.protocol.server"):
        for i in range(10):
            limited.warning(f"cap:10.9.0.{i}", "refused %s", i)
    assert len(caplog.records) == 10 and len(limited._next) <= cap + 1


def test_connection_caps_count_in_all_and_per_address() -> None:
    from dmq.protocol.server import ConnectionCaps

    caps = ConnectionCaps(max_connections=3, max_per_ip=2)
    assert caps.admit("a") is None and caps.admit("a") is None
    assert caps.admit("a") == "2 connections open from a (max.connections.per.ip)"
    assert caps.admit("b") is None
    assert caps.admit("c") == "3 connections open (max.connections)"
    caps.release("a")
    assert caps.admit("c") is None and caps.open == 3
    for host in ("a", "b", "c", "never-admitted"):
        caps.release(host)
    assert caps.open == 0 and not caps._per_ip  # no address stays in the books
