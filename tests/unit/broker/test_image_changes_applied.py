"""A broker applies only the partitions a new metadata image changed (the image's
`ImageChanges`), not every replica it hosts, and ends in the same roles as if it had
applied every partition: random controller decisions, each image applied as it comes."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dmq.broker.replica_manager import ReplicaManager
from dmq.metadata.image import MetadataImage
from dmq.metadata.records import NO_CHANGE, PartitionChange
from dmq.protocol.errors import NotControllerError
from tests.support.inproc_broker import make_config
from tests.unit.controller.helpers import BROKERS, Harness, apply_op

ME = BROKERS[0]


async def _no_controller(*_: Any, **__: Any) -> Any:
    raise NotControllerError("no controller in this test")


@pytest.fixture
async def rm(tmp_path: Path) -> AsyncIterator[ReplicaManager]:
    r = ReplicaManager(make_config(), ME, tmp_path, _no_controller, lambda: 1)
    await r.load_logs()
    r.start()
    yield r
    await r.stop()


def count_applied(rm: ReplicaManager, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []
    real = rm._apply_partition

    def spy(topic: Any, p: int, *args: Any) -> None:
        seen.append((topic.name, p))
        real(topic, p, *args)
    monkeypatch.setattr(rm, "_apply_partition", spy)
    return seen


def assert_roles(rm: ReplicaManager, image: MetadataImage) -> None:
    """Every replica here has the image's role, epochs and ISR; no other one is open."""
    mine = {(t.name, p) for t in image.topics.values() for p, i in t.partitions.items()
            if ME in i.replicas}
    assert set(rm.partitions) <= mine
    for tp in mine:
        part = rm.partitions.get(tp)
        if part is None:
            assert tp in rm._creating, tp
            continue
        info = image.topics[tp[0]].partitions[tp[1]]
        assert part.topic_id == image.topics[tp[0]].topic_id
        assert (part.leader_id, part.leader_epoch, part.partition_epoch, part.replicas,
                part.isr) == (info.leader, info.leader_epoch, info.partition_epoch,
                              info.replicas, info.isr), tp


async def test_one_partition_change_applies_that_partition_only(
        rm: ReplicaManager, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Harness()
    for b in BROKERS[:3]:
        h.add_broker(b)
    h.create("t", 60, 3)
    rm.apply_image(h.state.image())
    await rm.wait_idle(60_000)
    seen = count_applied(rm, monkeypatch)
    p = h.state.topics["t"].partitions[7]
    h.commit([PartitionChange("t", 7, p.partition_epoch, NO_CHANGE, (p.leader,))])
    rm.apply_image(h.state.image())
    assert seen == [("t", 7)]
    assert_roles(rm, h.state.image())
    seen.clear()
    h.commit(h.planner.fence_broker(BROKERS[1]))  # a broker changed: every partition
    rm.apply_image(h.state.image())
    assert len(seen) == 60
    assert_roles(rm, h.state.image())


async def test_random_decisions_applied_as_changes_give_the_roles_of_the_image(
        rm: ReplicaManager, monkeypatch: pytest.MonkeyPatch) -> None:
    walks = [0]
    real = rm._apply_all

    def apply_all(image: MetadataImage) -> None:
        walks[0] += 1
        real(image)
    monkeypatch.setattr(rm, "_apply_all", apply_all)
    rng = random.Random(11)
    h = Harness(seed=5)
    for b in BROKERS:
        h.add_broker(b)
    ops = ["create", "fence", "return", "shutdown", "shrink", "expand", "prefer", "grow",
           "delete", "unclean"]
    for step in range(120):
        apply_op(h, rng.choice(ops), rng.randrange(4), rng.randrange(8))
        rm.apply_image(h.state.image())
        if step % 10 == 0:
            await rm.wait_idle(60_000)
        assert_roles(rm, h.state.image())
        assert rm.image_error is None and not rm.failed_partitions
    await rm.wait_idle(60_000)
    assert_roles(rm, h.state.image())
    assert walks[0] < 80  # most images applied as changes (only broker changes walk all)
