from __future__ import annotations

import os

from dmq.log import UNDEFINED_EPOCH, LeaderEpochCache


def test_assign_and_end_offset_for_epoch(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "leader-epoch-checkpoint")
    c = LeaderEpochCache(path)
    assert c.end_offset_for_epoch(0, 10) == (UNDEFINED_EPOCH, -1)
    c.assign(1, 0)
    c.assign(1, 5)  # same epoch: no-op
    c.assign(3, 10)
    c.assign(5, 20)
    c.assign(2, 30)  # older epoch: ignored
    assert c.entries == [(1, 0), (3, 10), (5, 20)]
    assert c.end_offset_for_epoch(5, 42) == (5, 42)
    assert c.end_offset_for_epoch(3, 42) == (3, 20)
    assert c.end_offset_for_epoch(4, 42) == (3, 20)  # largest epoch <= 4 ends where 5 starts
    assert c.end_offset_for_epoch(0, 42) == (0, 0)
    assert c.end_offset_for_epoch(6, 42) == (UNDEFINED_EPOCH, -1)
    assert c.epoch_for_offset(15) == 3
    assert LeaderEpochCache(path).entries == c.entries  # persisted


def test_truncation_hooks(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "leader-epoch-checkpoint")
    c = LeaderEpochCache(path)
    for e, s in [(1, 0), (2, 10), (3, 20)]:
        c.assign(e, s)
    c.truncate_from_end(20)
    assert c.entries == [(1, 0), (2, 10)]
    c.truncate_from_start(15)
    assert c.entries == [(2, 15)]
    c.assign(4, 15)  # a new epoch at the same start replaces the older entry
    assert c.entries == [(4, 15)]
    assert LeaderEpochCache(path).entries == [(4, 15)]


def test_corrupt_file_reads_as_empty(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "leader-epoch-checkpoint")
    with open(path, "w") as f:
        f.write("0\n2\n1 0\nbanana\n")
    assert LeaderEpochCache(path).entries == []
