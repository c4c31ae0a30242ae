"""Waiting on a condition with a deadline, for tests: `wait_until` (a plain predicate,
sleeps between tries) and `async_wait_until` (a predicate that may be a coroutine
function; awaits between tries). Both return the predicate's first true value, and
raise AssertionError naming what was awaited and the last value or error seen.
`until(cond, what)` is the short form the in-process server tests use."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def _timed_out(timeout_s: float, what: str | Callable[[], str], last: object) -> AssertionError:
    text = what() if callable(what) else what
    return AssertionError(f"not within {timeout_s} s: {text} (last: {last!r})")


def wait_until(pred: Callable[[], T], timeout_s: float, what: str | Callable[[], str], *,
               interval_s: float = 0.05,
               ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Call `pred` until it returns a true value (returned) or `timeout_s` has passed;
    an exception in `ignore` counts as "not yet". It is always tried at least once.
    `what` may be a function, called for the message when the time is up (to show
    state the predicate kept)."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            last = pred()
            if last:
                return last  # type: ignore[return-value]
        except ignore as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise _timed_out(timeout_s, what, last)
        time.sleep(interval_s)


async def async_wait_until(pred: Callable[[], Awaitable[T] | T], timeout_s: float,
                           what: str | Callable[[], str], *, interval_s: float = 0.05,
                           ignore: tuple[type[BaseException], ...] = ()) -> T:
    """`wait_until` for a test's event loop: `pred` may return an awaitable, and the
    pause between tries is an `asyncio.sleep`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: object = None
    while True:
        try:
            last = pred()
            if inspect.isawaitable(last):
                last = await last
            if last:
                return last  # type: ignore[return-value]
        except ignore as exc:
            last = exc
        if loop.time() >= deadline:
            raise _timed_out(timeout_s, what, last)
        await asyncio.sleep(interval_s)


async def until(cond: Callable[[], object], what: str, timeout_s: float = 5.0,
                poll_s: float = 0.01) -> None:
    """Return once `cond()` is true; fail naming `what` after `timeout_s`."""
    await async_wait_until(cond, timeout_s, what, interval_s=poll_s)
