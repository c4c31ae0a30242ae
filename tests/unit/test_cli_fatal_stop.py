"""`dmq server` after an essential task died (crash-only, `dmq.node`): the node stops
within `FATAL_STOP_TIMEOUT_S` and the process exits with EXIT_FATAL (70) so that its
supervisor restarts it; a stop that hangs or fails must not keep the process alive."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import pytest

import dmq.aio
from dmq.cli import server
from dmq.node import EXIT_FATAL


class _Node:
    def __init__(self, stop: str) -> None:
        self.how = stop
        self.stopped = False

    async def stop(self) -> None:
        if self.how == "hangs":
            await asyncio.Event().wait()
        if self.how == "fails":
            raise RuntimeError("stop failed")
        self.stopped = True


def test_a_failed_node_that_stops_exits_with_exit_fatal() -> None:
    node = _Node("stops")
    assert asyncio.run(server._stop_failed_node(node)) == EXIT_FATAL == 70
    assert node.stopped


@pytest.mark.parametrize("how", ["hangs", "fails"])
def test_a_failed_node_whose_stop_hangs_or_fails_ends_the_process_at_once(
        how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    exits: list[int] = []
    monkeypatch.setattr(server, "FATAL_STOP_TIMEOUT_S", 0.05)
    monkeypatch.setattr(os, "_exit", exits.append)  # the real one would end pytest
    monkeypatch.setattr(logging, "shutdown", lambda: None)
    bounds: list[float | None] = []
    real_wait_for = dmq.aio.wait_for

    async def recording_wait_for(aw: Any, timeout: float | None) -> Any:
        bounds.append(timeout)
        return await real_wait_for(aw, timeout)

    monkeypatch.setattr(dmq.aio, "wait_for", recording_wait_for)
    assert asyncio.run(server._stop_failed_node(_Node(how))) == EXIT_FATAL
    assert bounds == [0.05]  # the stop was waited for FATAL_STOP_TIMEOUT_S, no longer
    assert exits == [EXIT_FATAL]  # the process ends there, without waiting any longer
