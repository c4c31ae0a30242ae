"""`FetchSessionCache` and `FetchSession` bookkeeping (issue 23): one session per
follower broker, a bounded number of them, and what a closed session leaves behind."""

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
