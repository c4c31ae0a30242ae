"""Controller decisions against the applied state: validation, fencing, leader
election, controlled shutdown, ISR changes, configs, producer ids, offsets."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from dmq.controller.placement import assign_replicas
from dmq.metadata.image import FENCED, NO_LEADER, ONLINE, SHUTTING_DOWN
from dmq.metadata.records import PartitionChange
from dmq.protocol.errors import (
    BrokerIdNotRegisteredError,
    ErrorCode,
    InvalidReplicationFactorError,
    StaleBrokerEpochError,
)
from tests.unit.controller.helpers import Harness


@pytest.fixture
def h() -> Harness:
    h = Harness()
    for b in (101, 102, 103):
        h.add_broker(b)
    return h


def test_create_topics_bad_input_each_gets_its_code(h: Harness) -> None:
    h.create("exists", 1, 1)
    before = h.state.to_snapshot()
    recs, res = h.planner.create_topics([
        {"name": "exists", "partitions": 1, "replication_factor": 1},
        {"name": "zero", "partitions": 0, "replication_factor": 1},
        {"name": "neg", "partitions": -5, "replication_factor": 1},
        {"name": "rf", "partitions": 1, "replication_factor": 4},
        {"name": "rf0", "partitions": 1, "replication_factor": 0},
        {"name": "bad name!", "partitions": 1, "replication_factor": 1},
        {"name": "x" * 250, "partitions": 1, "replication_factor": 1},
        {"name": "cfg", "partitions": 1, "replication_factor": 1, "configs": {"nope": "1"}},
        {"name": "cfgv", "partitions": 1, "replication_factor": 1,
         "configs": {"retention.ms": "soon"}},
        {"name": "dup", "partitions": 1, "replication_factor": 1},
        {"name": "dup", "partitions": 1, "replication_factor": 1},
    ])
    codes = {r["name"]: ErrorCode(r["error"]) for r in res}
    assert codes == {
        "exists": ErrorCode.TOPIC_ALREADY_EXISTS, "zero": ErrorCode.INVALID_PARTITIONS,
        "neg": ErrorCode.INVALID_PARTITIONS, "rf": ErrorCode.INVALID_REPLICATION_FACTOR,
        "rf0": ErrorCode.INVALID_REPLICATION_FACTOR, "bad name!": ErrorCode.INVALID_TOPIC,
        "x" * 250: ErrorCode.INVALID_TOPIC, "cfg": ErrorCode.INVALID_CONFIG,
        "cfgv": ErrorCode.INVALID_CONFIG, "dup": ErrorCode.INVALID_REQUEST}
    assert all(r["msg"] for r in res)
    assert recs == [] and h.state.to_snapshot() == before


def test_create_topic_defaults_and_validate_only(h: Harness) -> None:
    h.settings.update({"num.partitions": 4, "default.replication.factor": 2})
    recs, res = h.planner.create_topics(
        [{"name": "a", "partitions": -1, "replication_factor": -1}], validate_only=True)
    assert recs == [] and res[0]["error"] == 0 and res[0]["partitions"] == 4
    r = h.create("a", -1, -1, **{"cleanup.policy": "delete,compact"})
    t = h.state.topics["a"]
    assert r["id"] == t.topic_id and len(t.partitions) == 4 and t.replication_factor == 2
    assert t.configs == {"cleanup.policy": "compact,delete"}


def test_thousand_partitions_leaders_spread(h: Harness) -> None:
    h.create("big", 1000, 3)
    t = h.state.topics["big"]
    leaders = Counter(p.leader for p in t.partitions.values())
    assert max(leaders.values()) - min(leaders.values()) <= 1
    assert all(len(set(p.replicas)) == 3 and p.isr == p.replicas for p in t.partitions.values())


def test_fence_moves_leadership_within_isr_and_bumps_epochs(h: Harness) -> None:
    h.create("t", 30, 3)
    led = [p for p in h.state.topics["t"].partitions.values() if p.leader == 101]
    h.commit(h.planner.fence_broker(101))
    assert h.state.brokers[101].state == FENCED
    for p in h.state.topics["t"].partitions.values():
        assert 101 not in p.isr and p.leader in p.isr and p.leader != 101
    for old in led:
        new = h.state.topics["t"].partitions[old.partition]
        assert new.leader_epoch == old.leader_epoch + 1
        assert new.leader == next(r for r in old.replicas if r != 101)
    assert h.planner.fence_broker(101) == []  # already fenced: nothing


def test_empty_isr_goes_offline_then_back_with_its_last_member() -> None:
    h = Harness()
    h.add_broker(1)
    h.add_broker(2)
    h.create("t", 1, 1)
    (p,) = h.state.topics["t"].partitions.values()
    other = 2 if p.leader == 1 else 1
    h.commit(h.planner.fence_broker(p.leader))
    off = h.state.topics["t"].partitions[0]
    assert off.leader == NO_LEADER and off.isr == p.isr and off.leader_epoch == 1
    assert h.planner.elect_offline_leaders() == []  # the other broker is not in the ISR
    # the broker comes back: register again (new incarnation) and unfence
    h.commit(h.planner.register_broker(p.leader, "127.0.0.1", 1, None, "new"))
    h.commit(h.planner.unfence_broker(p.leader))
    back = h.state.topics["t"].partitions[0]
    assert back.leader == p.leader and back.leader_epoch == 2 and other not in back.isr


def test_unclean_leader_election_when_enabled() -> None:
    h = Harness()
    h.add_broker(1)
    h.add_broker(2)
    h.commit(h.planner.create_topics([{"name": "t", "partitions": 1, "replication_factor": 2,
                                        "configs": {}}])[0])
    p = h.state.topics["t"].partitions[0]
    follower = p.replicas[1]
    # the follower drops out of the ISR, then the leader dies
    h.commit(h.planner.alter_partition(p.leader, h.state.brokers[p.leader].broker_epoch,
                                       [["t", [[0, 0, 0, [p.leader]]]]])[0])
    h.commit(h.planner.fence_broker(p.leader))
    assert h.state.topics["t"].partitions[0].leader == NO_LEADER
    recs, res = h.planner.alter_configs(
        [{"name": "t", "configs": {"unclean.leader.election.enable": "true"}}])
    h.commit(recs)
    h.commit(h.planner.elect_offline_leaders(topic="t"))
    q = h.state.topics["t"].partitions[0]
    assert q.leader == follower and q.isr == (follower,)


def test_controlled_shutdown_moves_leaders_and_leaves_isrs(h: Harness) -> None:
    h.create("t", 12, 2)
    h.create("solo", 3, 1)
    recs = h.planner.controlled_shutdown(102)
    h.commit(recs)
    assert h.state.brokers[102].state == SHUTTING_DOWN
    for p in h.state.topics["t"].partitions.values():
        assert p.leader != 102 and 102 not in p.isr
    solo_led = sum(1 for p in h.state.topics["solo"].partitions.values() if p.leader == 102)
    assert h.planner.leaderships(102) == solo_led
    assert h.planner.unmovable_leaderships(102) == solo_led
    # shutting-down brokers never become leaders or new replicas
    h.commit(h.planner.fence_broker(101))
    for p in h.state.topics["t"].partitions.values():
        assert p.leader in (103, NO_LEADER)
    with pytest.raises(InvalidReplicationFactorError):
        assign_replicas(h.planner._placement_brokers(), 1, 2, random.Random())


def test_heartbeat_checks_and_reregistration(h: Harness) -> None:
    with pytest.raises(BrokerIdNotRegisteredError):
        h.planner.check_broker(999, 1)
    epoch = h.state.brokers[101].broker_epoch
    with pytest.raises(StaleBrokerEpochError):
        h.planner.check_broker(101, epoch - 1)
    # same incarnation: idempotent
    inc = h.state.incarnations[101]
    assert h.planner.register_broker(101, "127.0.0.1", 9101, None, inc) == []
    # new incarnation: a new epoch, FENCED, leaderships moved away first
    h.create("t", 6, 3)
    h.commit(h.planner.register_broker(101, "127.0.0.1", 9101, None, "restarted"))
    b = h.state.brokers[101]
    assert b.state == FENCED and b.broker_epoch > epoch
    assert all(p.leader != 101 and 101 not in p.isr
               for p in h.state.topics["t"].partitions.values())


def test_alter_partition_checks(h: Harness) -> None:
    h.create("t", 1, 3)
    p = h.state.topics["t"].partitions[0]
    leader, f1, f2 = p.replicas
    le = h.state.brokers[leader].broker_epoch
    with pytest.raises(StaleBrokerEpochError):
        h.planner.alter_partition(leader, le + 100, [["t", [[0, 0, 0, [leader]]]]])

    def code(broker: int, parts: list) -> ErrorCode:
        epoch = h.state.brokers[broker].broker_epoch
        recs, res = h.planner.alter_partition(broker, epoch, [["t", parts]])
        assert recs == [] or res[0][1][0][1] == 0
        return ErrorCode(res[0][1][0][1])

    assert code(f1, [[0, 0, 0, [f1]]]) == ErrorCode.NOT_LEADER_OR_FOLLOWER
    assert code(leader, [[5, 0, 0, [leader]]]) == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert code(leader, [[0, -1, 0, [leader]]]) == ErrorCode.FENCED_LEADER_EPOCH
    assert code(leader, [[0, 3, 0, [leader]]]) == ErrorCode.UNKNOWN_LEADER_EPOCH
    assert code(leader, [[0, 0, 7, [leader]]]) == ErrorCode.FENCED_LEADER_EPOCH
    assert code(leader, [[0, 0, 0, [f1]]]) == ErrorCode.INVALID_REQUEST
    assert code(leader, [[0, 0, 0, [leader, 999]]]) == ErrorCode.INVALID_REQUEST
    recs, _ = h.planner.alter_partition(leader, le, [["t", [[0, 0, 0, [leader, f1]]]]])
    h.commit(recs)
    q = h.state.topics["t"].partitions[0]
    assert q.isr == (leader, f1) and q.partition_epoch == 1 and q.leader_epoch == 0
    # a fenced broker cannot be added back
    h.commit(h.planner.fence_broker(f2))
    assert code(leader, [[0, 0, 1, [leader, f1, f2]]]) == ErrorCode.BROKER_FENCED


def test_preferred_leader_election(h: Harness) -> None:
    h.create("t", 6, 3)
    h.commit(h.planner.fence_broker(101))
    h.commit(h.planner.register_broker(101, "127.0.0.1", 9101, None, "again"))
    h.commit(h.planner.unfence_broker(101))
    assert h.planner.preferred_leader_elections() == []  # 101 is not in any ISR yet
    for p in list(h.state.topics["t"].partitions.values()):
        if 101 in p.replicas:
            epoch = h.state.brokers[p.leader].broker_epoch
            h.commit(h.planner.alter_partition(p.leader, epoch, [["t", [[
                p.partition, p.leader_epoch, p.partition_epoch, [*p.isr, 101]]]]])[0])
    h.commit(h.planner.preferred_leader_elections())
    assert all(p.leader == p.replicas[0] for p in h.state.topics["t"].partitions.values())


def test_partitions_configs_delete(h: Harness) -> None:
    h.create("t", 2, 2)
    recs, res = h.planner.create_partitions([{"name": "t", "count": 2}, {"name": "u", "count": 3},
                                            {"name": "t", "count": 5}])
    assert [ErrorCode(r["error"]) for r in res] == [ErrorCode.INVALID_REQUEST,
                                                    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                                                    ErrorCode.INVALID_REQUEST]
    recs, res = h.planner.create_partitions([{"name": "t", "count": 5}])
    h.commit(recs)
    assert len(h.state.topics["t"].partitions) == 5
    assert all(len(p.replicas) == 2 for p in h.state.topics["t"].partitions.values())
    recs, res = h.planner.create_partitions([{"name": "t", "count": 5}])
    assert res[0]["error"] == ErrorCode.INVALID_PARTITIONS
    recs, res = h.planner.alter_configs([
        {"name": "t", "configs": {"retention.ms": "1000", "min.insync.replicas": "2"}},
        {"name": "t2", "configs": {"retention.ms": "1"}},
        {"name": "t", "configs": {"flush.ms": "-7"}}])
    assert [r["error"] for r in res] == [0, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                                         ErrorCode.INVALID_CONFIG]
    h.commit(recs)
    assert h.state.topics["t"].configs == {"retention.ms": "1000", "min.insync.replicas": "2"}
    h.commit(h.planner.alter_configs([{"name": "t", "configs": {"retention.ms": None}}])[0])
    assert h.state.topics["t"].configs == {"min.insync.replicas": "2"}
    recs, res = h.planner.delete_topics(["t", "nope"])
    assert [r["error"] for r in res] == [0, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION]
    h.commit(recs)
    assert "t" not in h.state.topics


def test_producer_ids_and_offsets(h: Harness) -> None:
    recs, first = h.planner.allocate_producer_ids(101)
    h.commit(recs)
    recs2, second = h.planner.allocate_producer_ids(102)
    assert second == first + 1000
    h.create("t", 2, 1)
    recs, res = h.planner.commit_offsets("g", [["t", [[0, 5, "m"], [9, 1, None]]],
                                               ["nope", [[0, 1, None]]]], 77)
    assert res == [["t", [[0, 0], [9, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION]]],
                   ["nope", [[0, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION]]]]
    h.commit(recs)
    assert h.state.offsets_of("g") == {("t", 0): (5, "m", 77)}


def test_new_brokers_start_fenced_and_online_after_unfence() -> None:
    h = Harness()
    h.commit(h.planner.register_broker(1, "h", 1, None, "a"))
    assert h.state.brokers[1].state == FENCED
    h.commit(h.planner.unfence_broker(1))
    assert h.state.brokers[1].state == ONLINE
    assert h.planner.unfence_broker(1) == []


def test_balancer_moves_leadership_back_only_past_the_imbalance_threshold(h: Harness) -> None:
    """leader.imbalance.per.broker.percentage, as Kafka: a broker gets its preferred
    leaderships back once more than that share of them is led elsewhere, and then all
    of them; another broker under the threshold keeps its partitions as they are."""
    h.create("t", 30, 2)
    parts = h.state.topics["t"].partitions

    def lead_elsewhere(broker: int, count: int) -> list[int]:
        parts = h.state.topics["t"].partitions
        moved = [p.partition for p in parts.values()
                 if p.replicas[0] == broker and p.leader == broker][:count]
        h.commit([PartitionChange("t", n, parts[n].partition_epoch, parts[n].replicas[1])
                  for n in moved])
        return moved

    a, b = sorted({p.replicas[0] for p in parts.values()})[:2]
    assert sum(p.replicas[0] == a for p in parts.values()) == 10
    first = lead_elsewhere(a, 1)
    lead_elsewhere(b, 1)
    # 1 of 10 each: 10%, not over the default threshold
    assert h.planner.preferred_leader_elections(imbalance_percentage=10) == []
    second = lead_elsewhere(a, 1)
    assert second != first
    recs = h.planner.preferred_leader_elections(imbalance_percentage=10)
    assert sorted((r.partition, r.leader) for r in recs) == sorted(
        (n, a) for n in first + second)
    h.commit(recs)
    # no threshold: every partition back to its preferred leader
    h.commit(h.planner.preferred_leader_elections(imbalance_percentage=0))
    assert all(p.leader == p.replicas[0] for p in h.state.topics["t"].partitions.values())
