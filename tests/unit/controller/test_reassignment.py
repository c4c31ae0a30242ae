"""Partition reassignment (KIP-455) and preferred leader election on demand, as planner
decisions applied to the metadata state."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from click.testing import CliRunner

from dmq.metadata.image import NO_LEADER
from dmq.metadata.records import PartitionReassign, decode_batch, encode_batch
from dmq.metadata.state import MetadataState
from dmq.protocol.errors import (
    BrokerIdNotRegisteredError,
    DmqError,
    ErrorCode,
    PolicyViolationError,
)
from tests.unit.controller.helpers import Harness


@pytest.fixture
def h() -> Harness:
    h = Harness()
    for b in (101, 102, 103, 104, 105, 106):
        h.add_broker(b)
    return h


def _place(h: Harness, name: str, replicas: tuple[int, ...]) -> None:
    """A one-partition topic on exactly `replicas` (via a reassignment of order only
    when placement chose another set)."""
    h.create(name, 1, len(replicas))
    p = h.state.topics[name].partitions[0]
    if p.replicas != replicas:
        recs, _ = h.planner.reassign_partitions([[name, 0, list(replicas)]])
        h.commit(recs)
        h.commit(h.planner.reassignment_steps())
        for r in replicas:  # the new replicas catch up
            p = h.state.topics[name].partitions[0]
            if r not in p.isr:
                _expand(h, name, r)
        h.commit(h.planner.reassignment_steps())
        h.commit(h.planner.elect_preferred_leaders(name)[0])
    p = h.state.topics[name].partitions[0]
    assert p.replicas == replicas and not p.adding and not p.removing
    assert p.leader == replicas[0] and set(p.isr) == set(replicas)


def _expand(h: Harness, topic: str, broker: int) -> None:
    """The leader reports `broker` caught up (AlterPartition)."""
    p = h.state.topics[topic].partitions[0]
    recs, res = h.planner.alter_partition(
        p.leader, h.state.brokers[p.leader].broker_epoch,
        [[topic, [[0, p.leader_epoch, p.partition_epoch, sorted((*p.isr, broker))]]]])
    assert res[0][1][0][1] == 0, res
    h.commit(recs)


def test_move_to_three_other_brokers_adds_catches_up_moves_leader_then_drops(
        h: Harness) -> None:
    _place(h, "t", (101, 102, 103))
    before = h.state.topics["t"].partitions[0]
    recs, res = h.planner.reassign_partitions([["t", 0, [104, 105, 106]]])
    assert res == [["t", 0, 0, None]]
    h.commit(recs)
    p = h.state.topics["t"].partitions[0]
    assert p.replicas == (104, 105, 106, 101, 102, 103)
    assert p.adding == (104, 105, 106) and p.removing == (101, 102, 103)
    assert p.leader == 101 and p.leader_epoch == before.leader_epoch
    assert p.target_replicas == (104, 105, 106) and p.original_replicas == (101, 102, 103)
    # nothing completes until every target replica is in the ISR
    for b in (104, 105):
        _expand(h, "t", b)
        assert h.planner.reassignment_steps() == []
    _expand(h, "t", 106)
    steps = h.planner.reassignment_steps()
    assert len(steps) == 1
    h.commit(steps)
    p = h.state.topics["t"].partitions[0]
    assert p.replicas == (104, 105, 106) and p.isr == (104, 105, 106)
    assert not p.adding and not p.removing
    assert p.leader == 104 and p.leader_epoch == before.leader_epoch + 1
    assert h.planner.reassignments() == [] and h.planner.reassignment_steps() == []


def test_reassignment_survives_snapshot_and_replay_on_another_controller(h: Harness) -> None:
    _place(h, "t", (101, 102, 103))
    recs, _ = h.planner.reassign_partitions([["t", 0, [101, 104, 105]]])
    index = h.commit(recs)
    # the wire form round-trips
    assert decode_batch(encode_batch(recs)) == recs
    # a controller restored from a snapshot taken mid-reassignment plans the same step
    other = MetadataState()
    other.restore(h.state.to_snapshot())
    assert other.topics["t"].partitions[0] == h.state.topics["t"].partitions[0]
    assert other.version == index
    assert len(h.state.to_snapshot()["topics"][0][3][0]) == 8  # + [adding], [removing]
    other2 = Harness()
    other2.state.restore(h.state.to_snapshot())
    for b in (104, 105):
        _expand(h, "t", b)
        _expand(other2, "t", b)
    assert h.planner.reassignment_steps() == other2.planner.reassignment_steps() != []
    # once it completes, the partition row is back to its six fields (the old format)
    h.commit(h.planner.reassignment_steps())
    assert len(h.state.to_snapshot()["topics"][0][3][0]) == 6


def test_cancel_restores_the_original_replicas(h: Harness) -> None:
    _place(h, "t", (101, 102, 103))
    h.commit(h.planner.reassign_partitions([["t", 0, [104, 105, 106]]])[0])
    _expand(h, "t", 104)
    recs, res = h.planner.reassign_partitions([["t", 0, None]])
    assert res == [["t", 0, 0, None]]
    h.commit(recs)
    p = h.state.topics["t"].partitions[0]
    assert p.replicas == (101, 102, 103) and p.isr == (101, 102, 103)
    assert not p.adding and not p.removing and p.leader == 101


def test_new_target_replaces_the_one_in_progress(h: Harness) -> None:
    _place(h, "t", (101, 102, 103))
    h.commit(h.planner.reassign_partitions([["t", 0, [104, 105, 106]]])[0])
    _expand(h, "t", 104)
    h.commit(h.planner.reassign_partitions([["t", 0, [101, 102, 104]]])[0])
    p = h.state.topics["t"].partitions[0]
    assert p.target_replicas == (101, 102, 104) and p.original_replicas == (101, 102, 103)
    assert 105 not in p.replicas and 106 not in p.replicas
    h.commit(h.planner.reassignment_steps())
    p = h.state.topics["t"].partitions[0]
    assert p.replicas == (101, 102, 104) and p.leader == 101 and not p.removing


def test_leader_offline_partition_completes_onto_a_live_target(h: Harness) -> None:
    """A dead broker's partition: its replica is dropped, the others keep the data."""
    _place(h, "t", (101, 102, 103))
    h.commit(h.planner.fence_broker(101))
    p = h.state.topics["t"].partitions[0]
    assert p.leader == 102 and p.isr == (102, 103)
    h.commit(h.planner.reassign_partitions([["t", 0, [104, 102, 103]]])[0])
    _expand(h, "t", 104)
    h.commit(h.planner.reassignment_steps())
    p = h.state.topics["t"].partitions[0]
    assert p.replicas == (104, 102, 103) and set(p.isr) == {102, 103, 104}
    assert p.leader == 102  # the leader stays: it is in the target


def test_bad_reassignments_get_their_own_code_and_change_nothing(h: Harness) -> None:
    _place(h, "t", (101, 102, 103))
    before = h.state.to_snapshot()
    res = []
    recs: list = []
    for move in (["nope", 0, [101]], ["t", 7, [101]], ["t", 0, []], ["t", 0, [101, 101]],
                 ["t", 0, [101, 999]]):
        r, one = h.planner.reassign_partitions([move])
        recs += r
        res += one
    codes = [ErrorCode(r[2]) for r in res]
    assert codes == [ErrorCode.UNKNOWN_TOPIC_OR_PARTITION,
                     ErrorCode.UNKNOWN_TOPIC_OR_PARTITION] + [
        ErrorCode.INVALID_REPLICA_ASSIGNMENT] * 3
    assert "999" in res[4][3] and "empty" in res[2][3] and "duplicate" in res[3][3]
    _, twice = h.planner.reassign_partitions([["t", 0, [104]], ["t", 0, [105]]])
    assert ErrorCode(twice[1][2]) is ErrorCode.INVALID_REQUEST
    recs2, res2 = h.planner.reassign_partitions([["t", 0, None]])
    assert ErrorCode(res2[0][2]) is ErrorCode.NO_REASSIGNMENT_IN_PROGRESS
    assert recs == recs2 == [] and h.state.to_snapshot() == before
    # the same target as today is a no-op
    assert h.planner.reassign_partitions([["t", 0, [101, 102, 103]]]) == (
        [], [["t", 0, 0, None]])


def test_stale_reassign_record_is_skipped(h: Harness) -> None:
    _place(h, "t", (101, 102, 103))
    p = h.state.topics["t"].partitions[0]
    skipped = h.state.skipped_records
    h.commit([PartitionReassign("t", 0, p.partition_epoch - 1, (104,))])
    assert h.state.skipped_records == skipped + 1
    assert h.state.topics["t"].partitions[0] == p


def test_elect_preferred_leaders_on_demand(h: Harness) -> None:
    _place(h, "t", (101, 102, 103))
    _place(h, "u", (104, 105, 106))
    h.commit(h.planner.fence_broker(101))
    h.commit(h.planner.fence_broker(104))
    recs, res = h.planner.elect_preferred_leaders()
    assert recs == [] and [ErrorCode(r[2]) for r in res] == [
        ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE] * 2
    h.commit(h.planner.unfence_broker(101))
    h.commit(h.planner.unfence_broker(104))
    for t, b in (("t", 101), ("u", 104)):
        _expand(h, t, b)
    recs, res = h.planner.elect_preferred_leaders("t")
    assert res == [["t", 0, 0, None]]
    h.commit(recs)
    assert h.state.topics["t"].partitions[0].leader == 101
    assert h.state.topics["u"].partitions[0].leader == 105
    assert h.state.topics["u"].partitions[0].leader != NO_LEADER


def test_unregister_refused_while_hosting_then_forgets_the_broker(h: Harness) -> None:
    _place(h, "t", (101, 102, 103))
    h.commit(h.planner.fence_broker(103))
    with pytest.raises(DmqError) as err:
        h.planner.unregister_broker(103)
    assert err.value.code is ErrorCode.INVALID_REQUEST and "t-0" in err.value.message
    h.commit(h.planner.reassign_partitions([["t", 0, [101, 102, 104]]])[0])
    _expand(h, "t", 104)
    h.commit(h.planner.reassignment_steps())
    h.commit(h.planner.unregister_broker(103))
    assert 103 not in h.state.brokers and 103 not in h.state.to_snapshot()["brokers"]
    with pytest.raises(DmqError) as err:
        h.planner.unregister_broker(103)
    assert err.value.code is ErrorCode.INVALID_REQUEST
    assert "not registered" in err.value.message
    # it may come back as a new broker
    h.add_broker(103)
    assert h.state.brokers[103].state == "ONLINE"


def test_reassignment_respects_the_per_broker_replica_limit(h: Harness) -> None:
    _place(h, "t", (101, 102, 103))
    _place(h, "u", (102, 103, 105))
    h.settings["max.partition.replicas.per.broker"] = 1
    recs, res = h.planner.reassign_partitions([["t", 0, [104, 102, 103]],
                                               ["u", 0, [104, 103, 105]]])
    assert res[0] == ["t", 0, 0, None]
    assert ErrorCode(res[1][2]) is ErrorCode.POLICY_VIOLATION
    assert "[104]" in res[1][3] and "max.partition.replicas.per.broker" in res[1][3]
    assert len(recs) == 1


def test_replica_counts_follow_each_reassignment_step(h: Harness) -> None:
    """The per-broker counts the limits read are cached per metadata version: a
    reassignment changes them without changing how many topics or partitions exist."""
    _place(h, "t", (101, 102, 103))
    assert h.planner.replica_counts() == {101: 1, 102: 1, 103: 1}
    h.commit(h.planner.reassign_partitions([["t", 0, [104, 105, 106]]])[0])
    assert h.planner.replica_counts() == {b: 1 for b in (101, 102, 103, 104, 105, 106)}
    for b in (104, 105, 106):
        _expand(h, "t", b)
    h.commit(h.planner.reassignment_steps())
    assert h.planner.replica_counts() == {104: 1, 105: 1, 106: 1}
    # a caller's changes to the answer do not reach the cache
    h.planner.replica_counts()[104] = 99
    assert h.planner.replica_counts()[104] == 1


def test_cancel_refused_when_no_original_replica_is_in_sync(h: Harness) -> None:
    _place(h, "t", (101, 102, 103))
    h.commit(h.planner.reassign_partitions([["t", 0, [104, 105, 106]]])[0])
    for b in (104, 105, 106):
        _expand(h, "t", b)
    # the old replicas fall out of the ISR before the step runs
    for b in (101, 102, 103):
        h.commit(h.planner.fence_broker(b))
    p = h.state.topics["t"].partitions[0]
    assert set(p.isr) == {104, 105, 106}
    recs, res = h.planner.reassign_partitions([["t", 0, None]])
    assert recs == [] and ErrorCode(res[0][2]) is ErrorCode.INVALID_REQUEST
    assert "cannot cancel" in res[0][3]
    h.commit(h.planner.reassignment_steps())
    p = h.state.topics["t"].partitions[0]
    assert p.replicas == (104, 105, 106) and p.leader == 104 and not p.removing


def test_generated_plan_is_balanced_and_rack_aware() -> None:
    from collections import Counter

    from dmq.cli.partitions import generate_plan

    cur = {"orders": {p: (1, 2, 3) for p in range(6)}, "audit": {0: (1, 2), 1: (2, 3)}}
    brokers = [(101, "a"), (102, "a"), (103, "b"), (104, "b"), (105, "c"), (106, "c")]
    plan = generate_plan(cur, brokers)
    assert plan == generate_plan(cur, brokers)  # the same input proposes the same plan
    rack = dict(brokers)
    orders = [r["replicas"] for r in plan if r["topic"] == "orders"]
    assert all(len({rack[b] for b in reps}) == 3 for reps in orders)
    assert Counter(reps[0] for reps in orders) == Counter({b: 1 for b, _ in brokers})
    assert Counter(b for reps in orders for b in reps) == Counter({b: 3 for b, _ in brokers})
    assert [len(r["replicas"]) for r in plan if r["topic"] == "audit"] == [2, 2]


def _decommission(h: Harness, broker_id: int) -> tuple[list[tuple[str, int, list[int]]], int]:
    """The moves the controller starts (committed) and the count already moving."""
    recs, answer = h.planner.decommission_broker(broker_id)
    assert all(code == 0 for _, _, code, _ in answer["partitions"]), answer
    h.commit(recs)
    return [(r.topic, r.partition, [x for x in r.replicas if x not in r.removing])
            for r in recs if isinstance(r, PartitionReassign)], answer["moving"]


def test_decommission_replaces_only_the_broker_by_the_least_loaded() -> None:
    h = Harness()
    for b in (101, 102, 103, 104, 105):
        h.add_broker(b)
    _place(h, "t", (101, 102, 103))
    _place(h, "u", (103, 104, 101))
    _place(h, "v", (102, 104, 105))
    assert _decommission(h, 101) == ([("t", 0, [105, 102, 103]), ("u", 0, [103, 104, 102])],
                                     0)
    # asked again (a rerun of the command): nothing new, both already moving off
    assert _decommission(h, 101) == ([], 2)
    with pytest.raises(BrokerIdNotRegisteredError):
        h.planner.decommission_broker(999)


def test_decommission_keeps_racks_apart_and_says_what_cannot_move() -> None:
    h = Harness()
    for b, rack in ((101, "a"), (102, "b"), (103, "c"), (104, "b"), (105, "a")):
        h.add_broker(b, rack)
    _place(h, "t", (101, 102, 103))
    _place(h, "w", (101, 102))
    # t: 104 and 105 hold nothing, 104 would come first by id but shares rack b with
    # 102: 105 (rack a). w: 104 again shares 102's rack; 103 and 105 then tie: 103
    moves, moving = _decommission(h, 101)
    assert moves == [("t", 0, [105, 102, 103]), ("w", 0, [103, 102])] and moving == 0
    h2 = Harness()
    for b in (101, 102):
        h2.add_broker(b)
    _place(h2, "t", (101, 102))
    recs, answer = h2.planner.decommission_broker(101)
    assert recs == [] and answer["moving"] == 0
    [[topic, part, code, msg]] = answer["partitions"]
    assert (topic, part, code) == ("t", 0, ErrorCode.INVALID_REPLICA_ASSIGNMENT)
    assert "no online broker outside replicas [101, 102]" in msg


def test_new_target_dropping_the_leader_being_added_moves_leadership(h: Harness) -> None:
    _place(h, "t", (101, 102, 103))
    h.commit(h.planner.reassign_partitions([["t", 0, [104, 102, 103]]])[0])
    _expand(h, "t", 104)
    h.commit(h.planner.elect_preferred_leaders("t")[0])  # 104 (target[0]) leads
    assert h.state.topics["t"].partitions[0].leader == 104
    h.commit(h.planner.reassign_partitions([["t", 0, [105, 102, 103]]])[0])
    p = h.state.topics["t"].partitions[0]
    assert 104 not in p.replicas and 104 not in p.isr
    assert p.leader == 102 and p.adding == (105,) and p.removing == (101,)


def test_decommission_does_not_wait_when_a_move_is_refused(monkeypatch: Any) -> None:
    """A refused reassignment leaves its replica on the broker, so waiting for the broker
    to empty could only run out its whole --wait-ms: the command answers at once."""
    import dmq.cli.partitions as cli

    topics = {"t": SimpleNamespace(partitions={
        0: SimpleNamespace(replicas=(101, 102)), 1: SimpleNamespace(replicas=(101, 103))})}

    described: list[int] = []

    class FakeAdmin:
        async def describe_topics(self) -> dict[str, Any]:
            described.append(1)
            return topics

        async def list_partition_reassignments(self) -> list[dict[str, Any]]:
            return []

        async def decommission_broker(self, broker_id: int) -> tuple[dict[Any, Any], int]:
            return {("t", 0): None,
                    ("t", 1): PolicyViolationError("broker 104 is full")}, 0

    def run(bootstrap: Any, config_path: Any, timeout_ms: int, fn: Any) -> Any:
        import asyncio
        return asyncio.run(fn(FakeAdmin()))

    monkeypatch.setattr(cli, "run_admin", run)
    out = CliRunner().invoke(cli.brokers, ["decommission", "101", "--wait-ms", "5000"])
    # one look to count what is left: no round of waiting for the broker
    assert len(described) == 1, "waited for a move that was refused"
    assert out.exit_code == 1, out.output
    assert "t-1: error: " in out.output and "broker 104 is full" in out.output
    assert "broker 101 still holds 2 partition replica(s)" in out.output


def test_decommission_during_a_reassignment_keeps_its_replication_factor(
        h: Harness) -> None:
    """A partition moving (replicas = target + old) gets the target in progress with the
    broker replaced, not the whole listed set; one already dropping the broker is left."""
    h.add_broker(107)
    _place(h, "t", (101, 102, 103))
    h.commit(h.planner.reassign_partitions([["t", 0, [104, 105, 106]]])[0])
    p = h.state.topics["t"].partitions[0]
    assert p.replicas == (104, 105, 106, 101, 102, 103)
    assert _decommission(h, 102) == ([], 1)
    assert _decommission(h, 105) == ([("t", 0, [104, 107, 106])], 0)


def test_generate_during_a_reassignment_keeps_the_replication_factor(monkeypatch: Any) -> None:
    """`partitions reassign --generate` sizes a moving partition's new replica set by
    the target in progress, not by the listed set (which includes the replicas leaving)."""
    import json

    import dmq.cli.partitions as cli

    topics = {"t": SimpleNamespace(partitions={
        0: SimpleNamespace(partition=0, replicas=(104, 105, 101, 102)),
        1: SimpleNamespace(partition=1, replicas=(101, 102))})}

    class FakeAdmin:
        async def describe_cluster(self) -> dict[str, Any]:
            return {"brokers": [{"broker_id": b, "rack": None} for b in (101, 102, 103, 104)]}

        async def describe_topics(self, names: list[str]) -> dict[str, Any]:
            return topics

        async def list_partition_reassignments(self, names: list[str]) -> list[Any]:
            return [{"topic": "t", "partition": 0, "replicas": [104, 105, 101, 102],
                     "adding": [104, 105], "removing": [101, 102], "leader": 101,
                     "isr": [101, 102]}]

    def run(bootstrap: Any, config_path: Any, timeout_ms: int, fn: Any) -> Any:
        import asyncio
        return asyncio.run(fn(FakeAdmin()))

    monkeypatch.setattr(cli, "run_admin", run)
    out = CliRunner().invoke(cli.partitions, ["reassign", "--generate", "--topics", "t",
                                              "--brokers", "101,102,103,104"])
    assert out.exit_code == 0, out.output
    proposed = json.loads(out.output.split("proposed:\n", 1)[1])
    assert [len(r["replicas"]) for r in proposed] == [2, 2]


def test_topic_deleted_mid_reassignment_leaves_nothing_to_drive(h: Harness) -> None:
    """The controller finds reassignments in progress through an index kept with the
    partitions: a topic deleted (or re-created) mid-move is not in it, and a restored
    snapshot rebuilds it."""
    _place(h, "t", (101, 102, 103))
    _place(h, "u", (101, 102, 103))
    h.commit(h.planner.reassign_partitions([["t", 0, [104, 105, 106]],
                                            ["u", 0, [104, 105, 106]]])[0])
    assert h.state.reassigning == {("t", 0), ("u", 0)}
    other = MetadataState()
    other.restore(h.state.to_snapshot())
    assert other.reassigning == {("t", 0), ("u", 0)}
    h.commit(h.planner.delete_topics(["t"])[0])
    assert [(p.topic, p.partition) for p in h.planner.reassignments()] == [("u", 0)]
    h.create("t", 1, 3)
    assert h.state.reassigning == {("u", 0)}
    for b in (104, 105, 106):
        _expand(h, "u", b)
    h.commit(h.planner.reassignment_steps())
    assert h.state.reassigning == set() and h.planner.reassignment_steps() == []


def test_dynamic_configs_validated_all_or_nothing(h: Harness) -> None:
    key = "follower.replication.throttled.rate"
    recs, res = h.planner.alter_dynamic_configs({key: " 1000 "})
    assert res == {"error": 0, "msg": None}
    h.commit(recs)
    assert h.state.dynamic_configs == {key: "1000"}
    for bad, why in (({key: "0"}, "must be at least 1"), ({key: "fast"}, "integer"),
                     ({key: None, "bogus.rate": "1"}, "unknown dynamic broker config")):
        recs, res = h.planner.alter_dynamic_configs(bad)
        assert recs == [] and res["error"] == ErrorCode.INVALID_CONFIG and why in res["msg"]
    recs, res = h.planner.alter_dynamic_configs({key: "5"}, validate_only=True)
    assert recs == [] and res["error"] == 0
    h.commit(h.planner.alter_dynamic_configs({key: None})[0])
    assert h.state.dynamic_configs == {}


def test_per_broker_throttle_overrides_the_cluster_wide_value(h: Harness) -> None:
    """Kafka's broker-entity configs: `KEY:ID` is KEY for broker ID alone, over the
    cluster-wide KEY, in the same DYNAMIC_CONFIG records; a bad id is refused by name."""
    lead, follow = "leader.replication.throttled.rate", "follower.replication.throttled.rate"
    recs, res = h.planner.alter_dynamic_configs({f"{lead}:101": "500", follow: "1000",
                                                 f"{follow}:102": "2000"})
    assert res == {"error": 0, "msg": None}
    h.commit(recs)
    image = h.state.image()
    assert image.broker_config(lead, 101) == "500"
    assert image.broker_config(lead, 102) is None  # neither set: the static setting
    assert image.broker_config(follow, 101) == "1000"  # the cluster-wide value
    assert image.broker_config(follow, 102) == "2000"  # its own
    for bad, why in (({f"{lead}:x": "1"}, "broker id after ':'"),
                     ({f"{lead}:-1": "1"}, "broker id after ':'"),
                     ({f"{lead}:0101": "1"}, "without leading zeros"),
                     ({f"{lead}:2147483648": "1"}, "from 0 to 2147483647"),
                     ({f"{lead}:101": "0"}, "must be at least 1"),
                     ({"log.retention.ms:101": "1"}, "unknown dynamic broker config")):
        recs, res = h.planner.alter_dynamic_configs(bad)
        assert recs == [] and res["error"] == ErrorCode.INVALID_CONFIG and why in res["msg"], res
    h.commit(h.planner.alter_dynamic_configs({f"{lead}:101": None, follow: None,
                                              f"{follow}:102": None})[0])
    assert h.state.dynamic_configs == {}
