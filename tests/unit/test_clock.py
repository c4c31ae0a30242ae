"""The injected clock: `sleep` and `wait_for_ms` on manual time, and the system clock's
`sleep`. Nothing here reads the wall clock: manual time moves only by `advance`."""

from __future__ import annotations

import asyncio

import pytest

from dmq.clock import Clock, ManualClock, SystemClock, Waker, wait_for_ms


async def test_manual_sleep_wakes_when_advance_reaches_it() -> None:
    clock = ManualClock()
    woke: list[int] = []

    async def sleeper(delay_ms: float) -> None:
        await clock.sleep(delay_ms)
        woke.append(clock.monotonic_ms())

    tasks = [asyncio.create_task(sleeper(d)) for d in (300, 100, 200.5)]
    await asyncio.sleep(0)  # every sleeper has set its timer
    assert clock.next_due_ms() == 100
    clock.advance(99)
    await asyncio.sleep(0)
    assert woke == []
    clock.advance(1)
    await tasks[1]
    assert woke == [100]
    clock.advance(100)  # a fractional delay is rounded up to the next whole ms
    await asyncio.sleep(0)
    assert woke == [100]
    clock.advance(1)
    await tasks[2]
    clock.advance(99)
    await tasks[0]
    assert woke == [100, 201, 300]
    assert clock.next_due_ms() is None


async def test_manual_sleep_of_zero_only_yields_and_a_cancelled_sleep_leaves_no_timer() -> None:
    clock = ManualClock()
    await asyncio.wait_for(clock.sleep(0), 5)
    await asyncio.wait_for(clock.sleep(-5), 5)
    task = asyncio.create_task(clock.sleep(50))
    await asyncio.sleep(0)
    assert clock.next_due_ms() == 50
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.next_due_ms() is None


async def test_system_clock_sleep_is_asyncio_sleep_in_ms(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    asked: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay_s: float) -> None:
        asked.append(delay_s)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", recording_sleep)
    clock: Clock = SystemClock()
    await clock.sleep(20)
    await clock.sleep(-1)
    assert asked == [0.02, 0.0]


async def test_wait_for_ms_times_out_on_the_clock_not_the_wall() -> None:
    clock = ManualClock()
    never: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(wait_for_ms(clock, never, 500))
    await asyncio.sleep(0)
    assert clock.next_due_ms() == 500
    clock.advance(499)
    await asyncio.sleep(0)
    assert not task.done()
    clock.advance(1)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(task, 5)
    assert never.cancelled()  # what timed out is cancelled, as asyncio.wait_for does

    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(wait_for_ms(clock, ready, 500))
    await asyncio.sleep(0)
    ready.set_result(7)
    assert await asyncio.wait_for(task, 5) == 7
    assert clock.next_due_ms() is None  # its timer is gone
    assert await wait_for_ms(clock, asyncio.sleep(0, result=3), None) == 3


async def test_wait_for_ms_passes_on_errors_and_outer_cancellation() -> None:
    clock = ManualClock()

    async def boom() -> None:
        await asyncio.sleep(0)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        await wait_for_ms(clock, boom(), 1000)
    inner: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    outer = asyncio.create_task(wait_for_ms(clock, inner, 1000))
    await asyncio.sleep(0)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert inner.cancelled()
    assert clock.next_due_ms() is None


async def test_wait_for_ms_on_the_system_clock_is_the_loops_timeout() -> None:
    clock = SystemClock()
    with pytest.raises(TimeoutError):
        await wait_for_ms(clock, asyncio.Event().wait(), 10)
    assert await wait_for_ms(clock, asyncio.sleep(0, result=5), 1000) == 5
    inner = asyncio.get_running_loop().create_future()
    outer = asyncio.create_task(wait_for_ms(clock, inner, 60_000))
    await asyncio.sleep(0)
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert inner.cancelled()


async def test_waker_sleeps_until_woken_or_its_clock_passes_the_timeout() -> None:
    clock = ManualClock()
    waker = Waker(clock)
    waker.wake()  # nobody sleeps: not kept
    woken = asyncio.ensure_future(waker.sleep(None))
    await asyncio.sleep(0)
    assert not woken.done()
    waker.wake()
    await asyncio.wait_for(woken, 5)
    timed = asyncio.ensure_future(waker.sleep(50))
    await asyncio.sleep(0)
    clock.advance(49)
    await asyncio.sleep(0)
    assert not timed.done()
    clock.advance(1)
    await asyncio.wait_for(timed, 5)
    assert clock.next_due_ms() is None  # the timer of a finished sleep is gone
