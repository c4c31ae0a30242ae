"""Long-poll fetch wake latency, in one process over real sockets: a consumer parked
in FETCH (max_wait 60 s) must be answered by the produce's HW move, not its max wait:
each answer is awaited with a 10 s deadline. The latencies are printed (pytest -s) for
the notes, not asserted."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path

import pytest

from dmq.protocol.api import ApiKey
from tests.support.inproc_broker import InProcBroker, StandInController, batch, make_config
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(60)


async def _measure(tmp_path: Path, rf: int, rounds: int) -> list[float]:
    ctl = StandInController()
    brokers = [InProcBroker(i + 1, tmp_path, ctl, make_config()) for i in range(rf)]
    for b in brokers:
        await b.start()
    await ctl.create_topic("t", [[b.broker_id for b in brokers]])
    leader = brokers[0].partition("t")
    consumer = await brokers[0].connect()
    producer = await brokers[0].connect()
    data = batch([b"x" * 100])
    lat = []
    try:
        offset = 0
        for _ in range(rounds):
            fetch = asyncio.ensure_future(consumer.request(ApiKey.FETCH, {
                "max_wait_ms": 60_000, "min_bytes": 1, "max_bytes": 1 << 20,
                "topics": [["t", [[0, offset, -1, 1 << 20]]]]}, timeout_ms=70_000))
            await until(lambda: leader._hw_waiters, "the fetch is parked")
            assert not fetch.done()
            t0 = time.perf_counter()
            await producer.request(ApiKey.PRODUCE, {"acks": 1, "timeout_ms": 5000,
                                                    "topics": [["t", [[0, -1, data]]]]})
            # a deadline far below the fetch's max wait: the HW move must answer it
            resp = await asyncio.wait_for(fetch, 10)
            lat.append((time.perf_counter() - t0) * 1000)
            row = resp["topics"][0][1][0]
            assert row[1] == 0 and len(row[5]) > 0
            offset += 1
    finally:
        await consumer.close()
        await producer.close()
        for b in brokers:
            await b.stop()
    return lat


async def test_long_poll_wakes_on_append_rf1(tmp_path: Path) -> None:
    lat = await _measure(tmp_path, 1, 100)
    p50 = statistics.median(lat)
    p99 = sorted(lat)[98]
    print(f"\nlong-poll wake, RF=1 (produce sent -> parked fetch answered): "
          f"p50 {p50:.2f} ms, p99 {p99:.2f} ms")


async def test_long_poll_wakes_on_hw_move_rf3(tmp_path: Path) -> None:
    lat = await _measure(tmp_path, 3, 50)
    p50 = statistics.median(lat)
    print(f"\nlong-poll wake, RF=3 (produce sent -> replicated -> HW -> fetch answered): "
          f"p50 {p50:.2f} ms, max {max(lat):.2f} ms")


async def test_waits_of_a_closed_connection_end_with_it(tmp_path: Path) -> None:
    """A client that parks long fetches (an hour's max wait) and acks=all produces (an
    hour's timeout, on a partition whose only follower never fetches), then
    disconnects, again and again, leaves no waiter and no task behind: they end with
    their connection instead of piling up until their waits run out."""
    ctl = StandInController()
    # the follower stays in the ISR for the whole test: the HW never moves on its own
    config = make_config(**{"replica.lag.time.max.ms": 3_600_000})
    brokers = [InProcBroker(i + 1, tmp_path, ctl, config) for i in range(2)]
    for b in brokers:
        await b.start()
    await ctl.create_topic("t", [[1, 2]])
    await brokers[1].stop()  # the follower never fetches: acks=all waits
    leader = brokers[0].partition("t")
    server = brokers[0].server
    hour = 3_600_000
    try:
        for _ in range(5):
            conn = await brokers[0].connect()
            for _ in range(4):
                asyncio.ensure_future(conn.request(ApiKey.FETCH, {
                    "max_wait_ms": hour, "min_bytes": 1, "max_bytes": 1 << 20,
                    "topics": [["t", [[0, 0, -1, 1 << 20]]]]},
                    timeout_ms=hour))
            asyncio.ensure_future(conn.request(ApiKey.PRODUCE, {
                "acks": -1, "timeout_ms": hour, "topics": [["t", [[0, -1, batch([b"x"])]]]]},
                timeout_ms=hour))
            await until(lambda: len(server._tasks) >= 5, "the requests are parked")
            await conn.close()
            await until(lambda: not server._tasks, "the parked requests ended")
        assert not leader._hw_waiters
        assert leader.log.log_end_offset == 5  # every produce was appended before waiting
    finally:
        await brokers[0].stop()
