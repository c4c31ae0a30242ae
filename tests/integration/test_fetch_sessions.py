"""Incremental fetch sessions of replica fetchers (issue 23): in-process brokers, real
logs and sockets. An idle follower's requests are bounded by its long-poll and list no
partition whatever the partition count; the ISR stays full while idle (the session's
requests count as fetches) and shrinks when the follower stops; a lost session, an
epoch out of step and a leader that keeps no sessions all fall back to full fetches
without losing data."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from dmq.protocol.api import ApiKey
from dmq.protocol.errors import ErrorCode
from tests.support.inproc_broker import (
    InProcBroker,
    StandInController,
    batch,
    log_bytes,
    produce,
    started_brokers,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

WAIT_MS = 100  # replica.fetch.wait.max.ms: many idle long-polls in a short window
WINDOW_S = 2.0  # longer than replica.lag.time.max.ms of the test settings (1.5 s)


class FetchCounter:
    """Counts the replica FETCH requests a broker serves and the partition entries they
    list (asked for or forgotten), by wrapping its registered handler."""

    def __init__(self, broker: InProcBroker,
                 rewrite: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.requests = 0
        self.listed = 0
        handlers = broker.server._handlers
        inner = handlers[ApiKey.FETCH]

        def counting(ctx: Any, body: dict[str, Any]) -> Any:
            if body.get("replica_id", -1) >= 0:
                self.requests += 1
                self.listed += sum(len(ps) for _, ps in body["topics"])
                self.listed += sum(len(ps) for _, ps in body.get("forgotten") or ())
                if rewrite is not None:
                    rewrite(body)
            return inner(ctx, body)

        handlers[ApiKey.FETCH] = counting

    def snapshot(self) -> tuple[int, int]:
        return self.requests, self.listed


def in_sync(ctl: StandInController, brokers: list[InProcBroker], topic: str, n: int) -> bool:
    for p in range(n):
        leader = brokers[0].partition(topic, p)
        if leader is None or leader.log_end_offset == 0:
            return False
        for b in brokers[1:]:
            f = b.partition(topic, p)
            if (f is None or f.log_end_offset != leader.log_end_offset
                    or f.high_watermark != leader.high_watermark):
                return False
        if leader.high_watermark != leader.log_end_offset:
            return False
        if ctl.partition(topic, p).isr != tuple(sorted(b.broker_id for b in brokers)):
            return False
    return True


async def settled_cluster(tmp_path: Path, n: int, body: Callable[..., Awaitable[None]],
                          **settings: Any) -> None:
    """Brokers 1 (leader of everything) and 2, a topic of `n` partitions with one
    record each, replicated and with every HW known to the follower; then `body`."""
    async with started_brokers(tmp_path, (1, 2), replica_fetch_wait_max_ms=WAIT_MS,
                               **settings) as (ctl, brokers):
        await ctl.create_topic("t", [[1, 2]] * n)
        await wait_for(lambda: all(brokers[1].partition("t", p) is not None for p in range(n)),
                       what="follower replicas created")
        conn = await brokers[0].connect()
        for p in range(n):
            row = await produce(conn, "t", p, batch([b"r%d" % p]), acks=1)
            assert row[1] == 0, row
        await wait_for(lambda: in_sync(ctl, brokers, "t", n), timeout_s=20,
                       what="every partition replicated, HW known, ISR full")
        await body(ctl, brokers, conn)
        await conn.close()


@pytest.mark.parametrize("partitions", [4, 150])
async def test_idle_follower_requests_are_bounded_whatever_the_partition_count(
        tmp_path: Path, partitions: int) -> None:
    async def body(ctl: StandInController, brokers: list[InProcBroker], conn: Any) -> None:
        counter = FetchCounter(brokers[0])
        shrinks0 = brokers[0].replicas.stats_isr_shrinks
        start = counter.requests
        await wait_for(lambda: counter.requests >= start + 2,
                       what="two idle long-polls, so the window starts settled")
        r0, l0 = counter.snapshot()
        await asyncio.sleep(WINDOW_S)  # the measurement window
        r1, l1 = counter.snapshot()
        requests, listed = r1 - r0, l1 - l0
        # one long-poll at a time, each ending at its wait at the earliest: the count
        # depends on the wait, not on the partitions (old code: the same count, each
        # request listing every partition)
        assert 1 <= requests <= WINDOW_S * 1000 / WAIT_MS + 3, requests
        assert listed == 0, f"{listed} partition entries in {requests} idle requests"
        # idle for longer than replica.lag.time.max.ms: the session's requests kept
        # the follower in sync although no request named its partitions
        assert brokers[0].replicas.stats_isr_shrinks == shrinks0
        assert all(ctl.partition("t", p).isr == (1, 2) for p in range(partitions))

    await settled_cluster(tmp_path, partitions, body)


async def test_follower_that_stops_fetching_leaves_idle_isrs(tmp_path: Path) -> None:
    async def body(ctl: StandInController, brokers: list[InProcBroker], conn: Any) -> None:
        brokers[1].follow_images = False
        await brokers[1].replicas.fetchers.stop()  # its session on broker 1 goes quiet
        await wait_for(lambda: all(ctl.partition("t", p).isr == (1,) for p in range(20)),
                       timeout_s=15, what="every idle partition drops the silent follower")

    await settled_cluster(tmp_path, 20, body)


async def test_lost_session_falls_back_to_a_full_fetch_without_losing_data(
        tmp_path: Path) -> None:
    async def body(ctl: StandInController, brokers: list[InProcBroker], conn: Any) -> None:
        fetcher = next(iter(brokers[1].replicas.fetchers.fetchers.values()))
        full0 = fetcher.stats_full_fetches
        # the leader forgets every session (as after a restart or an eviction)
        brokers[0].replicas.fetch_sessions.clear()
        for i in range(3):
            for p in range(10):
                assert (await produce(conn, "t", p, batch([b"x%d" % i]), acks=1))[1] == 0
        await wait_for(lambda: in_sync(ctl, brokers, "t", 10), what="replicated again")
        assert fetcher.stats_full_fetches > full0
        for p in range(10):
            leo = brokers[0].partition("t", p).log_end_offset
            assert leo == 4
            assert log_bytes(brokers[1], "t", p, leo) == log_bytes(brokers[0], "t", p, leo)

    await settled_cluster(tmp_path, 10, body)


async def test_leader_that_keeps_no_sessions_gets_full_fetches(tmp_path: Path) -> None:
    """A leader of an older dmq ignores the session fields (its schema skips unknown
    keys) and answers without a session id: the follower sends full requests and
    replication goes on."""
    async with started_brokers(tmp_path, (1, 2), replica_fetch_wait_max_ms=WAIT_MS) as (
            ctl, brokers):
        counter = FetchCounter(brokers[0], rewrite=lambda body: body.update(session_id=-1))
        await ctl.create_topic("t", [[1, 2]] * 5)
        await wait_for(lambda: all(brokers[1].partition("t", p) is not None for p in range(5)),
                       what="follower replicas created")
        conn = await brokers[0].connect()
        for p in range(5):
            assert (await produce(conn, "t", p, batch([b"a", b"b"]), acks=-1))[1] == 0
        await wait_for(lambda: in_sync(ctl, brokers, "t", 5), what="replicated")
        assert brokers[0].replicas.fetch_sessions.sessions == {}
        r0, l0 = counter.snapshot()
        shrinks0 = brokers[0].replicas.stats_isr_shrinks
        await wait_for(lambda: counter.requests >= r0 + 3, what="more fetches")
        r1, l1 = counter.snapshot()
        assert l1 - l0 >= 5 * (r1 - r0)  # every request lists every partition
        # idle past replica.lag.time.max.ms (1.5 s): full fetches keep the ISR as before
        await asyncio.sleep(WINDOW_S)  # the idle span is what the test is about
        assert brokers[0].replicas.stats_isr_shrinks == shrinks0
        assert in_sync(ctl, brokers, "t", 5)
        await conn.close()


async def test_session_errors_are_in_the_answer_body(tmp_path: Path) -> None:
    async with started_brokers(tmp_path, (1, 2)) as (ctl, brokers):
        await ctl.create_topic("t", [[1, 2]])
        await wait_for(lambda: brokers[1].partition("t") is not None, what="follower replica")
        brokers[1].follow_images = False
        await brokers[1].replicas.fetchers.stop()  # these requests speak for broker 2
        conn = await brokers[0].connect()
        base = {"replica_id": 2, "max_wait_ms": 0, "min_bytes": 1, "max_bytes": 1 << 20}
        resp = await conn.request(ApiKey.FETCH, {**base, "session_id": 12345,
                                                 "session_epoch": 1, "topics": []})
        assert resp["error"] == ErrorCode.FETCH_SESSION_ID_NOT_FOUND
        resp = await conn.request(ApiKey.FETCH, {**base, "session_id": 0, "session_epoch": 0,
                                                 "topics": [["t", [[0, 0, 0, 1 << 20]]]]})
        sid = resp["session_id"]
        assert sid > 0 and "error" not in resp
        assert [row[0] for row in resp["topics"][0][1]] == [0]  # its first HW
        resp = await conn.request(ApiKey.FETCH, {**base, "session_id": sid,
                                                 "session_epoch": 1, "topics": []})
        assert resp == {"topics": [], "session_id": sid}  # nothing new
        resp = await conn.request(ApiKey.FETCH, {**base, "session_id": sid,
                                                 "session_epoch": 5, "topics": []})
        assert resp["error"] == ErrorCode.INVALID_FETCH_SESSION_EPOCH
        # the session is gone after an epoch out of step
        resp = await conn.request(ApiKey.FETCH, {**base, "session_id": sid,
                                                 "session_epoch": 2, "topics": []})
        assert resp["error"] == ErrorCode.FETCH_SESSION_ID_NOT_FOUND
        await conn.close()


async def test_hw_checkpoint_is_built_only_after_a_hw_moved(tmp_path: Path) -> None:
    async def body(ctl: StandInController, brokers: list[InProcBroker], conn: Any) -> None:
        replicas = brokers[0].replicas
        builds = []
        inner = replicas._hw_offsets

        def counting() -> dict[str, int]:
            builds.append(1)
            return inner()

        replicas._hw_offsets = counting  # type: ignore[method-assign]

        def ticks(n: int) -> Callable[[], bool]:
            """True once the 1 s checkpoint timer has run `n` more times (each run
            schedules the next under the same name)."""
            seen = [replicas._timers["_checkpoint_hw_tick"]]

            def ran() -> bool:
                if replicas._timers["_checkpoint_hw_tick"] is not seen[-1]:
                    seen.append(replicas._timers["_checkpoint_hw_tick"])
                return len(seen) > n
            return ran

        await wait_for(ticks(1), what="a checkpoint tick (it may write the last HW move)")
        builds.clear()
        await wait_for(ticks(2), what="two checkpoint ticks, nothing moved")
        assert builds == []
        assert (await produce(conn, "t", 0, batch([b"more"]), acks=-1))[1] == 0
        await wait_for(lambda: builds, what="a checkpoint after the HW moved")

    await settled_cluster(tmp_path, 20, body)
