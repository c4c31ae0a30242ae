"""asyncio helpers shared by every layer.

`wait_for`: Python 3.11's `asyncio.wait_for` can swallow a cancellation that arrives
while the awaited operation completes (CPython gh-86296, fixed in 3.12); a task that
loops around it then cannot be stopped. This version is built on `asyncio.timeout`,
which keeps count of cancellations and re-raises the outer one. Use it everywhere
instead of `asyncio.wait_for`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_for(aw: Awaitable[T], timeout: float | None) -> T:
    """Await `aw` for at most `timeout` seconds; raise TimeoutError after that."""
    async with asyncio.timeout(timeout):
        return await aw
