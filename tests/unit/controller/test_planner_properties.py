"""Random sequences of controller decisions keep the metadata invariants, and a broker
image fed by deltas or by a snapshot always equals the controller's state."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmq.metadata.image import FENCED, NO_LEADER, ONLINE
from dmq.metadata.state import MetadataState
from tests.unit.controller.helpers import Harness

BROKERS = (1, 2, 3, 4)
OPS = st.lists(st.tuples(st.sampled_from(["create", "fence", "return", "shutdown", "shrink",
                                          "expand", "prefer", "grow", "delete", "unclean"]),
                         st.integers(0, 3), st.integers(0, 7)), max_size=40)


def check_invariants(h: Harness) -> None:
    s = h.state
    for t in s.topics.values():
        for p in t.partitions.values():
            assert p.isr, f"empty ISR {p}"
            assert set(p.isr) <= set(p.replicas) and len(set(p.replicas)) == len(p.replicas)
            if p.leader != NO_LEADER:
                assert p.leader in p.isr, f"leader outside ISR {p}"
                assert s.brokers[p.leader].state != FENCED, f"fenced leader {p}"


def apply_op(h: Harness, op: str, a: int, b: int) -> None:
    s, pl = h.state, h.planner
    broker = BROKERS[a]
    names = sorted(s.topics)
    if op == "create":
        recs, _ = pl.create_topics([{"name": f"t{b}", "partitions": 1 + b % 4,
                                     "replication_factor": 1 + a % 3, "configs": {}}])
        h.commit(recs)
    elif op == "fence":
        h.commit(pl.fence_broker(broker))
    elif op == "return":
        if s.brokers[broker].state == FENCED:
            h.commit(pl.register_broker(broker, "h", broker, None, f"i{s.version}"))
            h.commit(pl.unfence_broker(broker))
    elif op == "shutdown":
        h.commit(pl.controlled_shutdown(broker))
    elif op in ("shrink", "expand") and names:
        t = s.topics[names[b % len(names)]]
        p = t.partitions[a % len(t.partitions)]
        if p.leader == NO_LEADER:
            return
        if op == "shrink":
            isr = [p.leader]
        else:
            isr = [r for r in p.replicas if r == p.leader or r in p.isr
                   or s.brokers[r].state == ONLINE]
        recs, _ = pl.alter_partition(p.leader, s.brokers[p.leader].broker_epoch,
                                     [[t.name, [[p.partition, p.leader_epoch,
                                                 p.partition_epoch, isr]]]])
        h.commit(recs)
    elif op == "prefer":
        h.commit(pl.preferred_leader_elections())
    elif op == "grow" and names:
        name = names[b % len(names)]
        h.commit(pl.create_partitions([{"name": name,
                                        "count": len(s.topics[name].partitions) + 1}])[0])
    elif op == "delete" and names:
        h.commit(pl.delete_topics([names[b % len(names)]])[0])
    elif op == "unclean" and names:
        name = names[b % len(names)]
        h.commit(pl.alter_configs([{"name": name, "configs": {
            "unclean.leader.election.enable": "true"}}])[0])
        h.commit(pl.elect_offline_leaders(topic=name))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS, st.integers(0, 2**32))
def test_random_decisions_keep_invariants_and_images_agree(ops: list, seed: int) -> None:
    h = Harness(seed=seed)
    for b in BROKERS:
        h.add_broker(b)
    follower = MetadataState(keep_offsets=False)
    follower.restore(h.state.to_snapshot(include_offsets=False))
    for op, a, b in ops:
        apply_op(h, op, a, b)
        check_invariants(h)
        recs = h.state.records_since(follower.version, 1000)
        assert recs is not None
        for index, wire in recs:
            follower.apply_entry(index, wire)
        follower.advance_to(h.state.version)
        assert follower.to_snapshot(include_offsets=False) == h.state.to_snapshot(
            include_offsets=False)
    assert h.state.skipped_records == 0
    fresh = MetadataState()
    fresh.restore(h.state.to_snapshot())
    assert fresh.image().topics == h.state.image().topics
