"""The follower's KIP-101/KIP-279 truncation rules (`ReplicaFetcher._apply_epoch_answer`)
on real logs: the answer of OffsetForLeaderEpoch decides where the divergent tail is cut."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmq.broker.fetcher import FetchState, ReplicaFetcher
from dmq.broker.partition import Partition
from dmq.clock import ManualClock
from dmq.log.partition_log import PartitionLog
from tests.support.inproc_broker import batch


def follower_with_epochs(tmp_path: Path, epochs: list[tuple[int, int]]) -> Partition:
    """A follower log holding `count` one-record batches under each `epoch`."""
    clock = ManualClock()
    plog = PartitionLog.open(str(tmp_path / "t-0"), clock=clock)
    offset = 0
    for epoch, count in epochs:
        for _ in range(count):
            plog.append_as_follower(_stamped(offset, epoch))
            offset += 1
    part = Partition("t", 0, "id", plog, 2, clock.monotonic_ms)
    part.make_follower(1, 9, 0, (1, 2), (1, 2))
    return part


def _stamped(offset: int, epoch: int) -> bytes:
    from dmq.log.batch import build_batch

    return build_batch([(None, b"v%d" % offset)], base_offset=offset,
                       partition_leader_epoch=epoch)


def apply(part: Partition, asked: int, leader_epoch: int, end_offset: int) -> bool:
    state = FetchState(part)
    again = ReplicaFetcher._apply_epoch_answer(
        ReplicaFetcher.__new__(ReplicaFetcher), state, asked, leader_epoch, end_offset)
    return again or state.truncating


def test_same_epoch_cuts_at_leader_end(tmp_path: Path) -> None:
    part = follower_with_epochs(tmp_path, [(0, 3), (2, 4)])
    assert part.log.latest_epoch == 2
    assert not apply(part, 2, 2, 5)
    assert part.log_end_offset == 5


def test_leader_without_our_epoch_cuts_where_its_epoch_ends(tmp_path: Path) -> None:
    # we wrote epoch 2 (offsets 3..6) as a leader nobody followed; the leader knows 0 then 3
    part = follower_with_epochs(tmp_path, [(0, 3), (2, 4)])
    assert not apply(part, 2, 0, 3)
    assert part.log_end_offset == 3
    assert part.log.latest_epoch == 0


def test_leader_end_beyond_ours_keeps_everything(tmp_path: Path) -> None:
    part = follower_with_epochs(tmp_path, [(0, 3)])
    assert not apply(part, 0, 0, 10)
    assert part.log_end_offset == 3


def test_undefined_answer_falls_back_to_hw(tmp_path: Path) -> None:
    part = follower_with_epochs(tmp_path, [(1, 5)])
    part.high_watermark = 2
    assert not apply(part, 1, -1, -1)
    assert part.log_end_offset == 2


@pytest.mark.parametrize("hw", [0, 4])
def test_truncation_lowers_hw(tmp_path: Path, hw: int) -> None:
    part = follower_with_epochs(tmp_path, [(0, 5)])
    part.high_watermark = hw
    apply(part, 0, 0, 3)
    assert part.high_watermark == min(hw, 3)


def test_batch_helper_is_unstamped() -> None:
    assert batch([b"a"])[:8] == b"\x00" * 8
