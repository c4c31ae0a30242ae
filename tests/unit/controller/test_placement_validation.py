"""Placement spreads leaders and followers and respects racks; names and configs are
validated with Kafka's rules."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from dmq.config import SETTINGS
from dmq.controller.placement import assign_replicas, rack_alternated
from dmq.controller.validation import (
    effective_topic_configs,
    validate_topic_config,
    validate_topic_name,
)
from dmq.protocol.errors import InvalidConfigError, InvalidReplicationFactorError, InvalidTopicError


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n,partitions,rf", [(3, 1000, 3), (5, 17, 2), (4, 4, 1), (7, 100, 3)])
def test_leaders_and_replicas_spread(seed: int, n: int, partitions: int, rf: int) -> None:
    brokers = [(100 + i, None) for i in range(n)]
    out = assign_replicas(brokers, partitions, rf, random.Random(seed))
    assert len(out) == partitions and all(len(set(r)) == rf for r in out)
    leaders = Counter(r[0] for r in out)
    counts = [leaders.get(b, 0) for b, _ in brokers]
    assert max(counts) - min(counts) <= 1
    replicas = Counter(b for r in out for b in r)
    assert max(replicas.values()) - min(replicas.values()) <= max(2, rf)


def test_random_start_differs_by_seed() -> None:
    brokers = [(1, None), (2, None), (3, None)]
    firsts = {assign_replicas(brokers, 1, 1, random.Random(s))[0][0] for s in range(30)}
    assert firsts == {1, 2, 3}


def test_rack_aware_puts_replicas_on_distinct_racks() -> None:
    brokers = [(1, "a"), (2, "a"), (3, "b"), (4, "b"), (5, "c"), (6, "c")]
    rack = dict(brokers)
    assert rack_alternated(brokers) == [1, 3, 5, 2, 4, 6]
    for seed in range(5):
        out = assign_replicas(brokers, 60, 3, random.Random(seed))
        assert all(len({rack[b] for b in r}) == 3 for r in out)
        leaders = Counter(r[0] for r in out)
        assert max(leaders.values()) - min(leaders.values()) <= 1
    # more replicas than racks: every rack used, then any broker
    out = assign_replicas(brokers[:4], 8, 3, random.Random(1))
    assert all(len({rack[b] for b in r}) == 2 and len(set(r)) == 3 for r in out)


def test_replication_factor_limits() -> None:
    with pytest.raises(InvalidReplicationFactorError):
        assign_replicas([(1, None)], 1, 2, random.Random())
    with pytest.raises(InvalidReplicationFactorError):
        assign_replicas([(1, None)], 1, 0, random.Random())


@pytest.mark.parametrize("name", ["a", "A.b_c-9", "x" * 249])
def test_good_topic_names(name: str) -> None:
    validate_topic_name(name)


@pytest.mark.parametrize("name", ["", ".", "..", "x" * 250, "a b", "a/b", "é", "a:b",
                                  "nl\n", "a\nb", "\n"])
def test_bad_topic_names(name: str) -> None:
    with pytest.raises(InvalidTopicError):
        validate_topic_name(name)


@pytest.mark.parametrize("key,value,normal", [
    ("min.insync.replicas", "2", "2"), ("unclean.leader.election.enable", "TRUE", "true"),
    ("retention.ms", "-1", "-1"), ("retention.bytes", "1024", "1024"),
    ("segment.bytes", "1048576", "1048576"), ("segment.ms", "60000", "60000"),
    ("cleanup.policy", "compact", "compact"), ("cleanup.policy", "delete, compact",
                                               "compact,delete"),
    ("delete.retention.ms", "0", "0"), ("max.message.bytes", "100", "100"),
    ("flush.messages", "1", "1"), ("flush.ms", "-1", "-1"),
    ("segment.bytes", "64", "64"), ("segment.bytes", str(2**31 - 1), str(2**31 - 1)),
    ("max.message.bytes", "61", "61"), ("min.compaction.lag.ms", "0", "0"),
    ("message.timestamp.type", "LogAppendTime", "LogAppendTime")])
def test_good_configs(key: str, value: str, normal: str) -> None:
    assert validate_topic_config(key, value) == normal
    # whatever the controller accepts, a broker can open a log with
    from dmq.broker.replica_manager import log_config_for
    from tests.support.inproc_broker import make_config

    log_config_for(make_config(), {key: normal})


@pytest.mark.parametrize("key,value", [
    ("nope", "1"), ("min.insync.replicas", "0"), ("min.insync.replicas", "x"),
    ("unclean.leader.election.enable", "yes"), ("retention.ms", "-2"),
    ("segment.bytes", "10"), ("cleanup.policy", "archive"), ("flush.messages", "0"),
    ("segment.ms", "0"), ("segment.bytes", "63"), ("segment.bytes", str(2**31)),
    ("max.message.bytes", "60"), ("min.compaction.lag.ms", "-1"),
    ("message.timestamp.type", "WallClock")])
def test_bad_configs(key: str, value: str) -> None:
    with pytest.raises(InvalidConfigError) as info:
        validate_topic_config(key, value)
    assert key in info.value.message


def test_effective_configs_fall_back_to_cluster_settings() -> None:
    def get(key: str) -> object:
        return {"log.retention.ms": 5}.get(key, SETTINGS[key].default)

    eff = effective_topic_configs({"segment.ms": "9"}, get)
    assert eff["retention.ms"] == "5" and eff["segment.ms"] == "9"
    assert eff["unclean.leader.election.enable"] == "false"
