"""Random sequences of controller decisions keep the metadata invariants, and a broker
image fed by deltas or by a snapshot always equals the controller's state."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmq.metadata.image import FENCED, NO_LEADER
from dmq.metadata.state import MetadataState
from tests.unit.controller.helpers import BROKERS, Harness, apply_op

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
