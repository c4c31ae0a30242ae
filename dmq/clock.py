"""Injected time.

Everything whose behaviour depends on time takes a `Clock` so tests can drive a
`ManualClock` instead of sleeping. Only entry points construct a `SystemClock`.
This module must never import asyncio at module level for the pure cores; the
system clock reaches the running loop lazily.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def monotonic_ms(self) -> int: ...

    def wall_ms(self) -> int: ...

    def call_later(self, delay_ms: int, fn: Callable[[], Any]) -> Cancellable: ...

    async def sleep(self, delay_ms: float) -> None:
        """Suspend the calling task for `delay_ms` of this clock's time (0 or less:
        yield to the loop once)."""
        ...


class SystemClock:
    """Real time; `call_later` schedules on the running asyncio loop."""

    def monotonic_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def call_later(self, delay_ms: int, fn: Callable[[], Any]) -> Cancellable:
        import asyncio

        return asyncio.get_running_loop().call_later(delay_ms / 1000.0, fn)

    async def sleep(self, delay_ms: float) -> None:
        import asyncio

        await asyncio.sleep(max(0.0, delay_ms) / 1000.0)


class _ManualTimer:
    __slots__ = ("due_ms", "seq", "fn", "cancelled")

    def __init__(self, due_ms: int, seq: int, fn: Callable[[], Any]) -> None:
        self.due_ms = due_ms
        self.seq = seq
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: _ManualTimer) -> bool:
        return (self.due_ms, self.seq) < (other.due_ms, other.seq)


class ManualClock:
    """A clock that only moves when a test calls `advance`."""

    def __init__(self, start_ms: int = 0, wall_offset_ms: int = 1_700_000_000_000) -> None:
        self._now_ms = start_ms
        self._wall_offset_ms = wall_offset_ms
        self._timers: list[_ManualTimer] = []
        self._seq = 0

    def monotonic_ms(self) -> int:
        return self._now_ms

    def wall_ms(self) -> int:
        return self._now_ms + self._wall_offset_ms

    def call_later(self, delay_ms: int, fn: Callable[[], Any]) -> Cancellable:
        self._seq += 1
        timer = _ManualTimer(self._now_ms + max(0, delay_ms), self._seq, fn)
        heapq.heappush(self._timers, timer)
        return timer

    async def sleep(self, delay_ms: float) -> None:
        """Wait until `advance` has moved time `delay_ms` on (a timer on this clock);
        0 or less only yields to the loop once, as `asyncio.sleep(0)` does."""
        import asyncio

        if delay_ms <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not fut.done():
                fut.set_result(None)

        timer = self.call_later(math.ceil(delay_ms), wake)
        try:
            await fut
        finally:
            timer.cancel()

    def next_due_ms(self) -> int | None:
        """When the earliest timer still pending fires (None: no timer): a test that
        drives time advances to it."""
        timers = self._timers
        while timers and timers[0].cancelled:
            heapq.heappop(timers)
        return timers[0].due_ms if timers else None

    def advance(self, delta_ms: int) -> None:
        """Move time forward, firing due timers in order."""
        target = self._now_ms + delta_ms
        while self._timers and self._timers[0].due_ms <= target:
            timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self._now_ms = timer.due_ms
            timer.fn()
        self._now_ms = target


async def wait_for_ms(clock: Clock, aw: Awaitable[T], timeout_ms: float | None) -> T:
    """Await `aw` for at most `timeout_ms` of `clock`'s time; then cancel it and raise
    `TimeoutError` (`asyncio.wait_for` on an injected clock). None: no limit."""
    import asyncio

    if timeout_ms is None:
        return await aw
    if isinstance(clock, SystemClock):
        # the loop's own timer is this clock: no task, as cheap as asyncio.timeout
        # (which, unlike asyncio.wait_for in 3.11, never swallows a cancellation)
        async with asyncio.timeout(max(0.0, timeout_ms) / 1000):
            return await aw
    fut = asyncio.ensure_future(aw)
    if not fut.done():
        expired: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def expire() -> None:
            if not expired.done():
                expired.set_result(None)

        timer = clock.call_later(max(0, math.ceil(timeout_ms)), expire)
        try:
            await asyncio.wait((fut, expired), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            fut.cancel()
            raise
        finally:
            timer.cancel()
        if not fut.done():
            # not awaited: awaiting could swallow a cancellation of the caller arriving
            # meanwhile (the trap dmq.aio.wait_for avoids)
            fut.cancel()
            fut.add_done_callback(_retrieve)
            raise TimeoutError(f"not done within {timeout_ms} ms")
    return fut.result()


class Waker:
    """What a background loop sleeps on between its steps: `sleep` returns once `wake`
    is called or `timeout_ms` of the clock's time has passed (None: only when woken).
    A wake while nothing sleeps is not kept: the loop's next step sees the work."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self._fut: Any = None

    def wake(self) -> None:
        fut = self._fut
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def sleep(self, timeout_ms: float | None) -> None:
        import asyncio

        fut = self._fut = asyncio.get_running_loop().create_future()
        timer = None if timeout_ms is None else \
            self.clock.call_later(max(0, math.ceil(timeout_ms)), self.wake)
        try:
            await fut
        finally:
            self._fut = None
            if timer is not None:
                timer.cancel()


def _retrieve(fut: Any) -> None:
    if not fut.cancelled():
        fut.exception()  # an error it ended with while being cancelled is not reported
