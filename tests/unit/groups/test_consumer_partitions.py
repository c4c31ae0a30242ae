"""The consumer as its group membership sees it (`PartitionsOwner`): consumed positions
and revocation, without I/O."""

from __future__ import annotations

import pytest

from dmq.client.consumer import Consumer
from dmq.client.group import GroupConfig, PartitionsOwner
from dmq.client.records import ConsumerRecord, TopicPartition


def record(tp: tuple[str, int], offset: int) -> ConsumerRecord:
    return ConsumerRecord(tp[0], tp[1], offset, 0, 0, None, b"v", ())


def test_start_stop_and_consumed_positions() -> None:
    c = Consumer("127.0.0.1:1", group_id="g", enable_auto_commit=False,
                 session_timeout_ms=3000)
    assert c.group_config == GroupConfig(enable_auto_commit=False, session_timeout_ms=3000)
    owner: PartitionsOwner = c
    owner.start_partitions({("t", 0): 5, ("t", 1): None})
    assert c.assignment() == {TopicPartition("t", 0), TopicPartition("t", 1)}
    assert owner.consumed_positions([("t", 0), ("t", 1)]) == {("t", 0): 5}
    # records taken from the partition but not yet handed to the application
    c._sub.states[TopicPartition("t", 0)].position = 9
    c._iter_buffer.extend([record(("t", 0), 7), record(("t", 0), 8), record(("t", 1), 3)])
    assert owner.consumed_positions([("t", 0)]) == {("t", 0): 7}
    owner.stop_partitions([("t", 0)])
    assert c.assignment() == {TopicPartition("t", 1)}
    assert [r.offset for r in c._iter_buffer] == [3]  # nothing of t-0 is delivered now


async def test_commit_and_subscribe_need_a_group_id() -> None:
    c = Consumer("127.0.0.1:1")
    with pytest.raises(ValueError):
        await c.commit()
    with pytest.raises(ValueError):
        c.subscribe(["t"])
