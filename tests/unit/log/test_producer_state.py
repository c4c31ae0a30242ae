from __future__ import annotations

import pytest

from dmq.log import InvalidProducerEpochError, OutOfOrderSequenceError, ProducerStateManager


def test_duplicate_gap_fenced_and_new_epoch() -> None:
    ps = ProducerStateManager(max_batches=5)
    assert ps.check(7, 0, 0, 4) is None  # unknown producer
    ps.update(7, 0, 0, 4, 100, 104, 1)
    for i in range(1, 7):
        assert ps.check(7, 0, i * 5, i * 5 + 4) is None
        ps.update(7, 0, i * 5, i * 5 + 4, 100 + i * 5, 104 + i * 5, 1)
    dup = ps.check(7, 0, 30, 34)
    assert dup is not None and (dup.base_offset, dup.last_offset) == (130, 134)
    with pytest.raises(OutOfOrderSequenceError):  # older than the 5 cached batches
        ps.check(7, 0, 0, 4)
    with pytest.raises(OutOfOrderSequenceError):  # gap
        ps.check(7, 0, 40, 44)
    with pytest.raises(InvalidProducerEpochError):
        ps.check(7, -1, 35, 39)
    with pytest.raises(OutOfOrderSequenceError):  # new epoch must start at 0
        ps.check(7, 1, 5, 9)
    assert ps.check(7, 1, 0, 0) is None
    assert ps.check(-1, -1, -1, -1) is None


def test_sequence_wraps() -> None:
    ps = ProducerStateManager()
    ps.update(1, 0, 2**31 - 2, 2**31 - 1, 0, 1, 0)
    assert ps.check(1, 0, 0, 3) is None


def test_update_ignores_older_epochs_and_resets_on_newer() -> None:
    ps = ProducerStateManager()
    ps.update(1, 2, 0, 0, 0, 0, 0)
    ps.update(1, 1, 5, 5, 1, 1, 0)
    e = ps.entry(1)
    assert e is not None and e.epoch == 2 and e.last_seq == 0
    ps.update(1, 3, 0, 9, 2, 11, 0)
    e = ps.entry(1)
    assert e is not None and e.epoch == 3 and len(e.batches) == 1
