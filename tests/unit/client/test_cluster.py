"""Bootstrap parsing and the metadata cache's rules."""

from __future__ import annotations

import pytest

from dmq.client.cluster import ClusterClient, parse_bootstrap


def test_parse_bootstrap_forms() -> None:
    assert parse_bootstrap("a:1, b:2") == [("a", 1), ("b", 2)]
    assert parse_bootstrap(["a:1"]) == [("a", 1)]
    assert parse_bootstrap([("h", 9)]) == [("h", 9)]
    assert parse_bootstrap("[::1]:9091") == [("::1", 9091)]
    for bad in ("", "host", "host:x", "host:0", ":9"):
        with pytest.raises(ValueError):
            parse_bootstrap(bad)


def _md(version: int, leader: int) -> dict:
    return {"controller_id": 1, "version": version,
            "brokers": [[101, "127.0.0.1", 1, None], [102, "127.0.0.1", 2, None]],
            "topics": [{"name": "t", "id": "x", "error": 0,
                        "partitions": [[1, 102, 4, [101, 102], [101, 102], 0],
                                       [0, leader, 3, [101, 102], [101], 0]]},
                       {"name": "gone", "id": None, "error": 3, "partitions": []}]}


def test_apply_metadata_and_leaders() -> None:
    c = ClusterClient("127.0.0.1:1")
    c.apply_metadata(_md(5, 101))
    assert c.leader_for("t", 0) == (101, 3)
    assert c.leader_for("t", 1) == (102, 4)
    assert c.leader_for("t", 9) == (-1, -1)
    info = c.topic("t")
    assert info is not None and [p.partition for p in info.partitions] == [0, 1]
    assert info.available == [0, 1]
    assert c.topic("gone") is None and c.topics["gone"].error == 3
    # an older image (a lagging broker) never overwrites a newer one
    c.apply_metadata(_md(4, 102))
    assert c.leader_for("t", 0) == (101, 3)
    c.apply_metadata(_md(6, -1))
    assert c.leader_for("t", 0) == (-1, 3)
    assert c.topic("t").available == [1]  # type: ignore[union-attr]


def test_backoff_is_exponential_capped_and_jittered() -> None:
    c = ClusterClient("127.0.0.1:1", retry_backoff_ms=100, retry_backoff_max_ms=1000)
    for attempt, base in ((1, 100), (2, 200), (3, 400), (10, 1000)):
        for _ in range(20):
            assert 0.8 * base <= c.backoff_ms(attempt) <= 1.2 * base
