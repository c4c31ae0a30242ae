"""Bounds on partition creation: per request, per topic, per cluster and the
partition replicas one broker may host (`max.partition.replicas.per.broker`)."""

from __future__ import annotations

from typing import Any

import pytest

from dmq.protocol.errors import ErrorCode
from tests.unit.controller.helpers import Harness


def _harness(**settings: Any) -> Harness:
    h = Harness(settings)
    for b in (101, 102, 103):
        h.add_broker(b)
    return h


def _topics(n: int, partitions: int, rf: int = 1, prefix: str = "t") -> list[dict[str, Any]]:
    return [{"name": f"{prefix}{i}", "partitions": partitions, "replication_factor": rf}
            for i in range(n)]


def _codes(results: list[dict[str, Any]]) -> set[ErrorCode]:
    return {ErrorCode(r["error"]) for r in results}


def test_validate_only_of_ten_huge_topics_is_refused_before_placement() -> None:
    """The reproduction: 10 topics x 100,000 partitions, validate-only."""
    h = _harness()
    placed: list[int] = []
    real = h.planner.rng.randrange
    h.planner.rng.randrange = lambda n: placed.append(n) or real(n)  # type: ignore[method-assign]
    recs, res = h.planner.create_topics(_topics(10, 100_000, 3), validate_only=True)
    assert recs == [] and placed == []
    assert _codes(res) == {ErrorCode.INVALID_REQUEST}
    assert all("max.partitions.per.request" in r["msg"] for r in res)


def test_request_bounds_count_topics_and_partitions() -> None:
    h = _harness(**{"max.topics.per.request": 3, "max.partitions.per.request": 10})
    _, res = h.planner.create_topics(_topics(4, 1))
    assert _codes(res) == {ErrorCode.INVALID_REQUEST}
    assert "max.topics.per.request" in res[0]["msg"]
    _, res = h.planner.create_topics(_topics(2, 6))
    assert _codes(res) == {ErrorCode.INVALID_REQUEST}
    # -1 counts as num.partitions
    h.settings["num.partitions"] = 6
    _, res = h.planner.create_topics(_topics(2, -1))
    assert _codes(res) == {ErrorCode.INVALID_REQUEST}
    recs, res = h.planner.create_topics(_topics(2, 5))
    assert _codes(res) == {ErrorCode.NONE} and len(recs) == 2


def test_partitions_per_topic_names_the_setting() -> None:
    h = _harness(**{"max.partitions.per.topic": 8})
    _, res = h.planner.create_topics(_topics(1, 9))
    assert _codes(res) == {ErrorCode.INVALID_PARTITIONS}
    assert "max.partitions.per.topic" in res[0]["msg"]
    assert h.create("ok", 8, 1)["error"] == 0
    _, res = h.planner.create_partitions([{"name": "ok", "count": 9}])
    assert _codes(res) == {ErrorCode.INVALID_PARTITIONS}


def test_cluster_total_counts_existing_topics_and_the_request() -> None:
    h = _harness(**{"max.partitions.per.cluster": 10})
    assert h.create("a", 6, 1)["error"] == 0
    recs, res = h.planner.create_topics(_topics(2, 2))
    assert [r["error"] for r in res] == [0, 0] and len(recs) == 2
    h.commit(recs)
    _, res = h.planner.create_topics(_topics(1, 1, prefix="more"))
    assert _codes(res) == {ErrorCode.POLICY_VIOLATION}
    assert "max.partitions.per.cluster" in res[0]["msg"]
    _, res = h.planner.create_partitions([{"name": "a", "count": 7}])
    assert _codes(res) == {ErrorCode.POLICY_VIOLATION}


def test_replica_cap_per_broker_refuses_create_and_validate_only() -> None:
    """Three brokers with room for 4 replicas each: 12 replicas fit, the 13th does not,
    whether asked for in one topic, in several, validate-only or by CreatePartitions."""
    h = _harness(**{"max.partition.replicas.per.broker": 4})
    for validate_only in (True, False):
        recs, res = h.planner.create_topics(_topics(1, 13), validate_only=validate_only)
        assert recs == [] and _codes(res) == {ErrorCode.POLICY_VIOLATION}
        msg = res[0]["msg"]
        assert "max.partition.replicas.per.broker" in msg and "4" in msg
    recs, res = h.planner.create_topics(_topics(2, 6))  # 6 + 6 replicas: 12, all room
    assert [r["error"] for r in res] == [0, 0]
    h.commit(recs)
    assert h.planner.replica_counts() == {101: 4, 102: 4, 103: 4}
    _, res = h.planner.create_topics(_topics(1, 1, prefix="x"), validate_only=True)
    assert _codes(res) == {ErrorCode.POLICY_VIOLATION}
    _, res = h.planner.create_partitions([{"name": "t0", "count": 7}])
    assert _codes(res) == {ErrorCode.POLICY_VIOLATION}
    # deleting frees the room again
    h.commit(h.planner.delete_topics(["t1"])[0])
    assert h.create("x", 2, 3)["error"] == 0


def test_replica_cap_counts_within_one_request() -> None:
    h = _harness(**{"max.partition.replicas.per.broker": 2})
    recs, res = h.planner.create_topics(_topics(3, 1, rf=3))
    assert [ErrorCode(r["error"]) for r in res] == [ErrorCode.NONE, ErrorCode.NONE,
                                                    ErrorCode.POLICY_VIOLATION]
    assert len(recs) == 2


def test_replica_cap_checks_the_placement_not_only_the_total() -> None:
    """Room in total is not enough when one broker is full: a replica would land there."""
    h = _harness(**{"max.partition.replicas.per.broker": 3})
    h.add_broker(104, online=False)
    assert h.create("full", 3, 3)["error"] == 0  # 101..103 full
    h.commit(h.planner.unfence_broker(104))
    _, res = h.planner.create_topics(_topics(1, 3), validate_only=True)
    assert _codes(res) == {ErrorCode.POLICY_VIOLATION}
    assert "broker 10" in res[0]["msg"]


@pytest.mark.parametrize("create", [True, False])
def test_default_limits_allow_ordinary_topics(create: bool) -> None:
    h = _harness()
    recs, res = h.planner.create_topics(_topics(3, 1000, 3), validate_only=not create)
    assert _codes(res) == {ErrorCode.NONE}
    assert len(recs) == (3 if create else 0)
