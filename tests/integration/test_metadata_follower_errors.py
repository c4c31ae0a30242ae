"""The broker's metadata follower outlives metadata that does not apply: it says so
(`metadata_error`, heard by `on_metadata_error`), starts over from a snapshot, and
clears the error once one applies. Before, the exception ended its loop for good and
the broker went on serving its last image, blind to every later change."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from dmq.broker.lifecycle import BrokerLifecycle
from dmq.client.admin import Admin
from dmq.config import parse_config
from dmq.metadata.image import MetadataImage
from dmq.metadata.state import MetadataState
from dmq.node import Node, resolve_node
from tests.support.procs import free_ports
from tests.support.waiting import until


async def _until(cond: Callable[[], Any], timeout_s: float = 10.0) -> None:
    await until(cond, "condition", timeout_s)


@pytest.fixture
async def follower(tmp_path: Path) -> AsyncIterator[tuple[BrokerLifecycle, list[MetadataImage],
                                                          list[str | None], str]]:
    ctl_port, broker_port = free_ports(2)
    config = parse_config({
        "controllers": [{"id": 1, "host": "127.0.0.1", "port": ctl_port}],
        "brokers": [{"id": 101, "host": "127.0.0.1", "port": broker_port}],
        "settings": {"raft.tick.ms": 20, "broker.heartbeat.interval.ms": 200}})
    node = Node(config, resolve_node(config, 1, ("controller",), tmp_path / "c1"))
    await node.start()
    images: list[MetadataImage] = []
    errors: list[str | None] = []
    lc = BrokerLifecycle(config, 101, "127.0.0.1", broker_port, None, on_image=images.append)
    lc.on_metadata_error = errors.append
    await lc.start()
    try:
        yield lc, images, errors, f"127.0.0.1:{ctl_port}"
    finally:
        await lc.stop()
        await node.stop()


async def test_metadata_that_does_not_apply_is_refetched_as_a_snapshot(
        follower: tuple[BrokerLifecycle, list[MetadataImage], list[str | None], str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    lc, images, errors, bootstrap = follower
    await _until(lambda: not lc.is_fenced)
    broken = {"left": 1}
    state: MetadataState = lc.state
    real = state.apply_entry

    def apply_entry(index: int, recs: Any) -> Any:
        if broken["left"] > 0:
            broken["left"] -= 1
            raise ValueError("entry does not apply")
        return real(index, recs)

    monkeypatch.setattr(state, "apply_entry", apply_entry)  # this broker's state only
    async with Admin(bootstrap) as admin:
        await admin.create_topic("t", 1, 1)
    await _until(lambda: images and "t" in images[-1].topics)
    assert broken["left"] == 0
    assert len(errors) == 2 and errors[0] is not None and "does not apply" in errors[0]
    assert errors[1] is None and lc.metadata_error is None
    assert lc._tasks and not any(t.done() for t in lc._tasks)
