"""`FetchSessionCache` and `FetchSession` bookkeeping (issue 23): one session per
follower broker, a bounded number of them, and what a closed session leaves behind;
and when the leader answers a session request whose only news is a high watermark."""

from __future__ import annotations

from typing import Any

from dmq.broker.fetch_session import FetchSessionCache, SessionPartition


class FakePartition:
    def __init__(self) -> None:
        self.watchers: dict[int, Any] = {}


def test_one_session_per_follower_and_a_bounded_cache() -> None:
    cache = FetchSessionCache(max_sessions=2)
    a = cache.create(2, 0)
    assert cache.create(2, 0) is not a and not a.alive  # the follower started over
    b = cache.create(3, 0)
    assert cache.get(cache.by_replica[2].id) is not None  # 2 is now the most recent
    c = cache.create(4, 0)  # over the bound: the least recently used (3) goes
    assert not b.alive and cache.get(b.id) is None and cache.stats_evicted == 1
    assert set(cache.by_replica) == {2, 4} and c.alive
    assert len({s.id for s in cache.sessions.values()}) == 2


def test_closing_a_session_unhooks_its_partitions_and_reports_them() -> None:
    cache = FetchSessionCache()
    s = cache.create(2, 0)
    parts = {("t", p): FakePartition() for p in range(3)}
    for key, part in parts.items():
        s.partitions[key] = entry = SessionPartition(s, 0, 0, 1 << 20)
        s.watch(key, part)
        assert part.watchers[2] is s
    s.mark(("t", 1))
    s.mark(("u", 9))  # not in the session: ignored
    assert list(s.dirty) == [("t", 1)]
    s.forget(("t", 0))
    assert 2 not in parts[("t", 0)].watchers and ("t", 0) not in s.partitions
    cache.remove(s)
    assert not s.alive and not entry.active
    assert all(2 not in p.watchers for p in parts.values())
    assert sorted(cache.closed_keys) == [("t", 1), ("t", 2)]
    s.mark(("t", 2))
    assert not s.dirty  # a closed session takes no news


def test_a_quiet_session_is_reported_once_until_it_speaks_again() -> None:
    cache = FetchSessionCache()
    s = cache.create(2, 0)
    s.max_wait_ms = 500
    assert cache.gone_quiet(1400, 1000) == []
    assert cache.gone_quiet(1600, 1000) == [s]
    assert cache.gone_quiet(5000, 1000) == []
    s.last_request_ms, s.quiet_reported = 5000, False  # a request (as the handler does)
    assert cache.gone_quiet(6600, 1000) == [s]


async def test_a_high_watermark_alone_waits_for_records_or_its_linger(tmp_path: Any) -> None:
    """The leader side of a follower's session (`DataPlane._session_fetch`): the fetch
    that acknowledges a batch (and moves the HW) is not answered with the HW alone at
    once; records appended meanwhile carry it, else it is answered when
    `HW_NEWS_LINGER_MS` is over, long before the long poll ends."""
    import asyncio

    from dmq.broker import fetch_session
    from dmq.broker.handlers import DataPlane
    from dmq.broker.partition import Partition
    from dmq.broker.replica_manager import ReplicaManager
    from dmq.clock import ManualClock
    from dmq.log.batch import build_batch
    from dmq.log.partition_log import PartitionLog
    from tests.support.inproc_broker import make_config

    async def no_controller(*_: Any, **__: Any) -> Any:
        raise AssertionError("no controller here")

    linger = getattr(fetch_session, "HW_NEWS_LINGER_MS", 5)
    clock = ManualClock()
    rm = ReplicaManager(make_config(), 1, tmp_path, no_controller, lambda: 1, clock=clock)
    plane = DataPlane(rm)
    plog = PartitionLog.open(str(tmp_path / "t-0"), clock=clock)
    part = Partition("t", 0, "id-t", plog, 1, clock.monotonic_ms)
    part.make_leader(0, 0, (1, 2), (1, 2))
    rm.partitions[("t", 0)] = part

    def append() -> None:
        part.append_as_leader(build_batch([(None, b"v")]), 1)

    epoch = 0

    def request(offset: int | None) -> Any:
        nonlocal epoch
        body = {"replica_id": 2, "max_wait_ms": 500, "min_bytes": 1, "max_bytes": 1 << 20,
                "forgotten": [], "session_id": sid if epoch else 0, "session_epoch": epoch,
                "topics": [] if offset is None else [["t", [[0, offset, 0, 1 << 20]]]]}
        epoch += 1
        return plane.fetch(None, body)

    async def answer(pending: Any) -> list[Any]:
        task = asyncio.ensure_future(pending)
        for _ in range(10):
            await asyncio.sleep(0)
        assert task.done()
        return [row for _, rows in task.result()["topics"] for row in rows]

    sid = 0
    append()
    first = request(0)  # records: answered at once
    sid = first["session_id"]
    assert first["topics"][0][1][0][2] == 0 and len(first["topics"][0][1][0][5])
    # its acknowledgement moves the HW to 1: not answered with the HW alone
    pending = request(1)
    assert part.high_watermark == 1 and not isinstance(pending, dict)
    task = asyncio.ensure_future(pending)
    await asyncio.sleep(0)
    clock.advance(linger - 1)
    await asyncio.sleep(0)
    assert not task.done()
    append()  # records come first: they carry the HW
    rows = await answer(task)
    assert rows[0][2] == 1 and len(rows[0][5]) > 0
    # acknowledged again, nothing appended after: the HW alone once the linger is over
    pending = request(2)
    assert part.high_watermark == 2 and not isinstance(pending, dict)
    task = asyncio.ensure_future(pending)
    await asyncio.sleep(0)
    clock.advance(linger)
    rows = await answer(task)
    assert rows == [[0, 0, 2, 0, 2, b""]]
    # nothing held any more: the next request waits for the long poll (no early wake)
    pending = request(None)
    task = asyncio.ensure_future(pending)
    await asyncio.sleep(0)
    clock.advance(linger * 2)
    for _ in range(10):
        await asyncio.sleep(0)
    assert not task.done() and rm.fetch_sessions.get(sid).hw_due_ms is None  # type: ignore[union-attr]
    clock.advance(500)
    assert await answer(task) == []
