"""Injected time.

Everything whose behaviour depends on time takes a `Clock` so tests can drive a
`ManualClock` instead of sleeping. Only entry points construct a `SystemClock`.
This module must never import asyncio at module level for the pure cores; the
system clock reaches the running loop lazily.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import Any, Protocol


class Cancellable(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def monotonic_ms(self) -> int: ...

    def wall_ms(self) -> int: ...

    def call_later(self, delay_ms: int, fn: Callable[[], Any]) -> Cancellable: ...


class SystemClock:
    """Real time; `call_later` schedules on the running asyncio loop."""

    def monotonic_ms(self) -> int:
        return time.monotonic_ns() // 1_000_000

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def call_later(self, delay_ms: int, fn: Callable[[], Any]) -> Cancellable:
        import asyncio

        return asyncio.get_running_loop().call_later(delay_ms / 1000.0, fn)


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
