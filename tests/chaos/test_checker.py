"""The checker catches every anomaly kind on crafted histories (and passes a clean one).
Demonstrations against a deliberately broken real cluster live with the chaos runs."""

from __future__ import annotations

import pytest

from tests.chaos.checker import FinalState, History, check

TP = ("t", 0)


def clean() -> tuple[History, FinalState]:
    h = History(attempted=3)
    final = FinalState()
    final.partitions[TP] = []
    for seq in range(3):
        h.acked[("p", seq)] = (TP, seq)
        h.consumed.add(("p", seq))
        final.partitions[TP].append((seq, ("p", seq)))
    h.commits[("g", TP)] = [1, 3]
    final.replica_bytes[TP] = {101: b"abc", 102: b"abc"}
    return h, final


def test_clean_history_has_no_anomalies() -> None:
    assert check(*clean()) == {}


def test_an_ack_without_an_offset_needs_the_record_in_its_partition() -> None:
    h, final = clean()
    h.acked[("p", 1)] = (TP, None)
    assert check(h, final) == {}
    h.acked[("p", 1)] = (("t", 1), -1)  # acked in another partition than it is in
    assert "moved" in check(h, final)
    h, final = clean()
    h.acked[("p", 3)] = (TP, None)
    assert "lost" in check(h, final)


def test_each_anomaly_kind_is_reported() -> None:
    h, f = clean()
    f.partitions[TP].pop()  # lose the last acked record
    assert "lost" in check(h, f)

    h, f = clean()
    f.partitions[TP].append((3, ("p", 1)))
    assert "duplicated" in check(h, f)

    h, f = clean()
    f.partitions[TP] = [(0, ("p", 0)), (1, ("p", 2)), (2, ("p", 1))]
    h.acked[("p", 1)], h.acked[("p", 2)] = (TP, 2), (TP, 1)
    assert "reordered" in check(h, f)

    h, f = clean()
    h.acked[("p", 1)] = (TP, 7)
    assert "moved" in check(h, f)

    h, f = clean()
    h.failed.add(("p", 9))
    f.partitions[TP].append((3, ("p", 9)))
    assert "failed-but-present" in check(h, f)

    h, f = clean()
    f.replica_bytes[TP][103] = b"abd"
    assert "replica-divergence" in check(h, f)

    h, f = clean()
    h.commits[("g", TP)] = [3, 2]
    assert "commit-backwards" in check(h, f)

    h, f = clean()
    h.consumed.discard(("p", 0))
    assert "not-delivered" in check(h, f)

    h, f = clean()
    f.controller_leaders = 2
    f.brokers_not_online = [102]
    assert "cluster-state" in check(h, f)

    h, f = clean()
    f.partitions[TP] = [(0, ("p", 0)), (2, ("p", 1)), (1, ("p", 2))]
    assert "offset-order" in check(h, f)

    h, f = clean()
    f.unreadable = [TP]
    assert "cluster-state" in check(h, f)


def test_needless_failures_are_those_a_healed_cluster_would_have_delivered() -> None:
    from tests.chaos.checker import needless_failures

    windows = [(100.0, 110.0), (200.0, None)]
    failures = [
        # sent during the first fault, deadline 130: healed at 110, well before: needless
        (("p", 1), 105.0, 106.0, 25.0, "early NOT_CONTROLLER"),
        # deadline 112 falls within the grace after healing at 110: excused
        (("p", 2), 100.5, 112.0, 11.5, "timed out"),
        # no fault anywhere near it: needless
        (("p", 3), 150.0, 151.0, 30.0, "LEADER_NOT_AVAILABLE"),
        # the second fault never healed: excused
        (("p", 4), 195.0, 225.0, 30.0, "timed out"),
    ]
    got = needless_failures(failures, windows, grace_s=5.0)
    assert [line.split()[0] for line in got] == ["p:1", "p:3"]


@pytest.mark.parametrize(("window", "needless"), [
    (None, True),                # no fault at all
    ((10.0, 12.0), True),        # healed more than the grace before the deadline (40)
    ((10.0, 35.0), True),        # healed exactly the grace before it: time enough
    ((10.0, 35.5), False),       # healed within the grace
    ((10.0, None), False),       # never healed
    ((39.0, None), False),       # began before the deadline, never healed
    ((40.0, None), True),        # began at the deadline: the record had failed already
    ((0.0, 50.0), False),        # began before the send, healed after the deadline
])
def test_needless_failures_one_fault_window_each_branch(
        window: tuple[float, float | None] | None, needless: bool) -> None:
    from tests.chaos.checker import needless_failures

    failure = (("p", 7), 10.0, 11.0, 30.0, "err")  # deadline 40
    got = needless_failures([failure], [window] if window else [], grace_s=5.0)
    assert got == (["p:7 failed 1.0s after send (budget 30s): err"] if needless else [])


def test_merged_workloads_keep_each_ones_anomalies() -> None:
    """run_chaos merges the Kafka workload's history and topic read-back into the dmq
    workload's: both stay clean together, and an anomaly of either is still found."""
    h, f = clean()
    kh, kf = History(attempted=2), FinalState()
    ktp = ("k", 0)
    kf.partitions[ktp] = []
    for seq in range(2):
        kh.acked[("k0", seq)] = (ktp, seq)
        kh.consumed.add(("k0", seq))
        kf.partitions[ktp].append((seq, ("k0", seq)))
    kh.commits[("kg/kc0", ktp)] = [2, 1]  # the Kafka group's commit went back
    h.merge(kh)
    f.merge(kf)
    assert h.attempted == 5 and len(h.acked) == 5
    assert check(h, f) == {"commit-backwards": ["kg/kc0 ('k', 0): 2 -> 1"]}
    f.partitions[ktp].pop()
    assert set(check(h, f)) == {"commit-backwards", "lost"}
