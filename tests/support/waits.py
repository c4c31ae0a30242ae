"""Waiting for a condition in async tests: poll it up to a deadline, never a fixed
sleep to synchronise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


async def until(cond: Callable[[], Any], what: str, timeout_s: float = 5.0,
                poll_s: float = 0.01) -> None:
    """Return once `cond()` is true; fail naming `what` after `timeout_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not cond():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(poll_s)
