"""A broker killed -9 with data in 100 partitions recovers its logs and serves again;
long-poll wake latency across real processes. The time to serve again is printed
(pytest -s) for the notes. Default size 128 MiB so CI stays quick; set
DMQ_BROKER_RESTART_MIB=1024 for the 1 GiB acceptance figure, and
DMQ_BROKER_RESTART_DIRTY=1 to crash with every written page still dirty."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time

import pytest

from dmq.protocol.api import ApiKey
from dmq.protocol.errors import DmqError, ErrorCode
from tests.support.broker_wire import FAST, Wire, values_batch, wait_until
from tests.support.procs import ProcessCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PARTITIONS = 100


async def test_restart_after_kill9_with_data_in_100_partitions() -> None:
    total_mib = int(os.environ.get("DMQ_BROKER_RESTART_MIB", "128"))
    with ProcessCluster(controllers=1, brokers=1, settings=FAST) as cluster:
        cluster.start()
        wire = Wire(cluster)
        try:
            broker = cluster.broker_ids[0]
            await wire.create_topic("big", PARTITIONS, 1)
            record = b"x" * 1024
            data = values_batch([record] * 256)  # ~260 KiB per batch
            per_partition = max(1, total_mib * 1024 * 1024 // len(data) // PARTITIONS)
            conn = await wire.conn(broker)
            sem = asyncio.Semaphore(32)

            async def one(p: int) -> None:
                async with sem:
                    for _ in range(100):
                        resp = await conn.request(ApiKey.PRODUCE, {
                            "acks": 1, "timeout_ms": 30_000,
                            "topics": [["big", [[p, -1, data]]]]}, timeout_ms=60_000)
                        code = resp["topics"][0][1][0][1]
                        if code != ErrorCode.NOT_LEADER_OR_FOLLOWER:
                            break
                        await asyncio.sleep(0.05)  # the broker's image is catching up
                    assert code == 0

            t0 = time.monotonic()
            await asyncio.gather(*(one(p) for p in range(PARTITIONS)
                                   for _ in range(per_partition)))
            wrote = per_partition * PARTITIONS * len(data)
            print(f"\nwrote {wrote / 2**20:.0f} MiB into {PARTITIONS} partitions in "
                  f"{time.monotonic() - t0:.1f}s")
            ends = await _ends(wire, broker)
            if not os.environ.get("DMQ_BROKER_RESTART_DIRTY"):
                # Steady state: the kernel writes dirty pages back within ~30 s, so a
                # broker crashing in service has little unwritten data. With
                # DMQ_BROKER_RESTART_DIRTY=1 all of it is still dirty, and recovery's
                # fsync of the recovered segments writes it out (worst case).
                os.sync()
            cluster.kill(broker, signal.SIGKILL)
            wire.drop(broker)
            t0 = time.monotonic()
            cluster.start(broker, wait=False)

            async def serving() -> bool:
                try:
                    resp = await (await wire.conn(broker)).request(ApiKey.PRODUCE, {
                        "acks": 1, "timeout_ms": 2000,
                        "topics": [["big", [[p, -1, values_batch([b"after"])]
                                            for p in range(PARTITIONS)]]]}, timeout_ms=3000)
                except DmqError:
                    wire.drop(broker)
                    return False
                return all(r[1] == 0 for r in resp["topics"][0][1])

            await wait_until(serving, 60, "the broker serving all partitions again")
            took = time.monotonic() - t0
            print(f"restart after kill -9 with {wrote / 2**20:.0f} MiB in {PARTITIONS} "
                  f"partitions: serving produce on all partitions after {took:.2f}s")
            after = await _ends(wire, broker)
            assert all(after[p] == ends[p] + 1 for p in range(PARTITIONS))
            # The restart time is the feature, so its bound stays, as a sanity bound: the
            # 10 s acceptance bound is checked on the explicit acceptance run; CI on a
            # shared machine only checks that the broker comes back in reasonable time.
            assert took < (10 if "DMQ_BROKER_RESTART_MIB" in os.environ else 30)
        finally:
            await wire.close()


async def _ends(wire: Wire, broker: int) -> dict[int, int]:
    resp = await (await wire.conn(broker)).request(ApiKey.LIST_OFFSETS, {
        "topics": [["big", [[p, -1] for p in range(PARTITIONS)]]]})
    return {r[0]: r[3] for r in resp["topics"][0][1]}


async def test_long_poll_wake_latency_across_processes() -> None:
    with ProcessCluster(controllers=1, brokers=3, settings=FAST) as cluster:
        cluster.start()
        wire = Wire(cluster)
        try:
            await wire.create_topic("lp", 1, 3)
            leader, _, _ = await wire.leader("lp")
            consumer = await wire.conn(leader)
            from dmq.protocol.connection import Connection

            producer = await Connection.open("127.0.0.1", cluster.nodes[leader].port)
            lat = {1: [], -1: []}
            offset = 0
            for acks in (1, -1):
                for _ in range(30):
                    fut = asyncio.ensure_future(consumer.request(ApiKey.FETCH, {
                        "max_wait_ms": 5000, "min_bytes": 1, "max_bytes": 1 << 20,
                        "topics": [["lp", [[0, offset, -1, 1 << 20]]]]}, timeout_ms=10_000))
                    # a head start for the fetch to reach the leader and park (pacing of
                    # the measurement: a fetch that has not parked yet answers at once,
                    # which can only make the figure smaller, and `not done` is checked)
                    await asyncio.sleep(0.01)
                    assert not fut.done()
                    t0 = time.perf_counter()
                    await producer.request(ApiKey.PRODUCE, {
                        "acks": acks, "timeout_ms": 5000,
                        "topics": [["lp", [[0, -1, values_batch([b"v"])]]]]})
                    resp = await fut
                    lat[acks].append((time.perf_counter() - t0) * 1000)
                    assert len(resp["topics"][0][1][0][5]) > 0
                    offset += 1
            await producer.close()
            for acks, xs in lat.items():
                print(f"\nlong-poll wake across processes (RF=3, producer acks={acks}): "
                      f"p50 {statistics.median(xs):.2f} ms, max {max(xs):.2f} ms")
            # The latency figure is printed for the notes (benchmarks measure time). What
            # the test holds the code to: every fetch was woken by the write, not by its
            # 5 s max_wait_ms; with a generous margin for a loaded machine.
            assert max(max(xs) for xs in lat.values()) < 2500
        finally:
            await wire.close()
