"""A partition whose log cannot be opened (EMFILE, ENOSPC, ...) is isolated: it answers
STORAGE_ERROR, the rest of the image applies, and it is retried until it opens. An
image that cannot be applied as a whole makes the broker refuse to serve from the
older one until a retry succeeds."""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import dmq.broker.replica_manager as rm_module
from dmq.protocol.errors import ErrorCode
from tests.support.inproc_broker import (
    InProcBroker,
    StandInController,
    batch,
    make_config,
    produce,
)
from tests.support.waiting import until


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[tuple[StandInController, InProcBroker]]:
    ctl = StandInController()
    b = InProcBroker(101, tmp_path, ctl, make_config())
    await b.start()
    yield ctl, b
    if b.running:
        await b.stop()


async def _until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    await until(cond, "condition", timeout_s)


async def _produce_code(b: InProcBroker, topic: str, p: int = 0) -> int:
    conn = await b.connect()
    try:
        row = await produce(conn, topic, p, batch([b"v"]), acks=1)
        return int(row[1])
    finally:
        await conn.close()


async def test_log_that_cannot_be_created_is_isolated_and_retried(
        broker: tuple[StandInController, InProcBroker], monkeypatch: pytest.MonkeyPatch) -> None:
    ctl, b = broker
    real = rm_module._create_log
    full = {"on": True}

    def create(path: Path, config: Any, topic_id: str, **kw: Any) -> Any:
        if full["on"] and path.name.startswith("bad-"):
            raise OSError(errno.EMFILE, "Too many open files", str(path))
        return real(path, config, topic_id, **kw)

    monkeypatch.setattr(rm_module, "_create_log", create)
    await ctl.create_topic("bad", [[101], [101]])
    await ctl.create_topic("good", [[101]])
    rm = b.replicas
    assert set(rm.failed_partitions) == {("bad", 0), ("bad", 1)}
    assert "Too many open files" in rm.failed_partitions[("bad", 0)]
    assert rm.image_error is None
    # the rest of the image applied: the good topic is led here and takes writes
    assert await _produce_code(b, "good") == 0
    assert await _produce_code(b, "bad") == ErrorCode.STORAGE_ERROR
    # descriptors are back: the retry opens the logs without any new image
    version = ctl.image.version
    full["on"] = False
    await _until(lambda: not rm.failed_partitions and rm.get_partition("bad", 1) is not None)
    assert ctl.image.version == version
    await _until(lambda: rm.get_partition("bad", 0).is_leader)
    assert await _produce_code(b, "bad") == 0
    # a failed partition of a topic deleted meanwhile is forgotten
    full["on"] = True
    await ctl.create_topic("bad-topic", [[101]])
    assert ("bad-topic", 0) in rm.failed_partitions
    ctl.delete_topic("bad-topic")
    assert ("bad-topic", 0) not in rm.failed_partitions


async def test_role_that_cannot_be_applied_is_isolated(
        broker: tuple[StandInController, InProcBroker], monkeypatch: pytest.MonkeyPatch) -> None:
    ctl, b = broker
    await ctl.create_topic("t", [[101], [101], [101]])
    rm = b.replicas
    part = rm.get_partition("t", 1)
    real = type(part).make_follower
    broken = {"on": True}

    def make_follower(self: Any, *args: Any) -> bool:
        if broken["on"] and self.partition == 1:
            raise OSError(errno.EMFILE, "Too many open files")
        return real(self, *args)

    monkeypatch.setattr(type(part), "make_follower", make_follower)
    for p in (0, 1, 2):  # leadership moves away from 101 (broker 102 is unknown here)
        ctl.set_partition("t", p, leader=102, replicas=(101, 102), isr=(101, 102))
    assert set(rm.failed_partitions) == {("t", 1)}
    assert not rm.get_partition("t", 0).is_leader and not rm.get_partition("t", 2).is_leader
    assert await _produce_code(b, "t", 1) == ErrorCode.STORAGE_ERROR
    broken["on"] = False
    await _until(lambda: not rm.failed_partitions)
    assert not rm.get_partition("t", 1).is_leader
    assert await _produce_code(b, "t", 1) == ErrorCode.NOT_LEADER_OR_FOLLOWER


async def test_image_that_cannot_be_applied_stops_serving_until_retried(
        broker: tuple[StandInController, InProcBroker], monkeypatch: pytest.MonkeyPatch) -> None:
    ctl, b = broker
    await ctl.create_topic("t", [[101]])
    rm = b.replicas
    real = rm._apply_image
    broken = {"on": True}

    def apply(image: Any) -> None:
        if broken["on"]:
            raise RuntimeError("image does not apply")
        real(image)

    monkeypatch.setattr(rm, "_apply_image", apply)
    ctl.delete_topic("t")  # the broker cannot learn this: it must not serve t any more
    assert rm.image_error is not None and "does not apply" in rm.image_error
    assert await _produce_code(b, "t") == ErrorCode.BROKER_NOT_AVAILABLE
    broken["on"] = False
    await _until(lambda: rm.image_error is None)
    assert rm.get_partition("t", 0) is None
    assert await _produce_code(b, "t") == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION


async def test_metadata_follower_error_stops_serving(
        broker: tuple[StandInController, InProcBroker]) -> None:
    """What BrokerService sets while its metadata follower cannot apply a fetch."""
    ctl, b = broker
    await ctl.create_topic("t", [[101]])
    b.replicas.metadata_error = "metadata does not apply: ValueError()"
    assert await _produce_code(b, "t") == ErrorCode.BROKER_NOT_AVAILABLE
    b.replicas.metadata_error = None
    assert await _produce_code(b, "t") == 0


async def test_the_broker_owns_its_epoch_flusher_and_ends_it_on_stop(
        broker: tuple[StandInController, InProcBroker]) -> None:
    """Its logs write their leader-epoch checkpoints through the replica manager's own
    flusher, whose thread `stop` ends (none is left running per broker)."""
    ctl, b = broker
    await ctl.create_topic("flushed", [[101]])
    rm = b.replicas
    await _until(lambda: ("flushed", 0) in rm.partitions)
    plog = rm.partitions[("flushed", 0)].log
    assert plog.epoch_cache._flusher is rm.epoch_flusher
    # the new leadership's epoch was handed to the flusher, whose thread started
    await _until(lambda: rm.epoch_flusher._thread is not None)
    thread = rm.epoch_flusher._thread
    assert thread is not None and thread.is_alive()
    await b.stop()
    assert not thread.is_alive()
