"""A follower's fetchers keep every partition fetched (issue 23: replicas left out of
the ISR for good after a 10,000-partition create under load).

- `ReplicaFetcher`: a partition the leader answered with an error is, at the next
  session request, forgotten while its backoff runs and listed again once it is over;
  never left in the session unlisted (the leader does not look at it again).
- `FetcherManager`: a partition re-added at a new epoch, the only one of its fetcher,
  stays in a running fetcher; a leader at a new address gets one fetcher with all its
  partitions, not one per partition re-added.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from dmq.broker.fetcher import RETRY_BACKOFF_MS, FetcherManager, ReplicaFetcher
from dmq.broker.partition import Partition
from dmq.clock import ManualClock
from dmq.log.partition_log import PartitionLog
from dmq.metadata.image import ONLINE, BrokerInfo
from dmq.protocol.errors import ErrorCode
from tests.support.inproc_broker import make_config
from tests.support.procs import free_ports
from tests.unit.broker.fakes import FakeFetchConn


def _follower(tmp_path: Path, clock: ManualClock, topic: str, epoch: int = 0) -> Partition:
    plog = PartitionLog.open(str(tmp_path / f"{topic}-0"), clock=clock)
    part = Partition(topic, 0, "id-" + topic, plog, 2, clock.monotonic_ms)
    part.make_follower(1, epoch, 0, (1, 2), (1, 2))
    return part


def _listed(body: dict[str, Any]) -> set[str]:
    return {t for t, _ in body["topics"]}


def _forgotten(body: dict[str, Any]) -> set[str]:
    return {t for t, _ in body["forgotten"]}


def _error_row(code: ErrorCode) -> list[Any]:
    return [0, int(code), -1, -1, -1, b""]


async def _answered_error(tmp_path: Path) -> tuple[ReplicaFetcher, FakeFetchConn, ManualClock]:
    """A fetcher in a session with partitions "a" and "b"; "b" was just answered
    UNKNOWN_TOPIC_OR_PARTITION (the leader has no replica of it yet)."""
    clock = ManualClock()
    leader = BrokerInfo(1, "127.0.0.1", 1, None, 1, ONLINE)
    f = ReplicaFetcher(2, clock, leader, make_config(), lambda *a: None)
    for topic in ("a", "b"):
        f.add(_follower(tmp_path, clock, topic))
    for tp, s in list(f.partitions.items()):
        f._truncated(tp, s)
    conn: Any = FakeFetchConn()
    conn.answer = {"topics": [["b", [_error_row(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)]]]}
    assert await f._fetch(conn)
    assert _listed(conn.bodies[-1]) == {"a", "b"}
    return f, conn, clock


async def test_error_partition_listed_again_when_the_backoff_is_over_at_the_next_request(
        tmp_path: Path) -> None:
    f, conn, clock = await _answered_error(tmp_path)
    # under load the next request comes after the backoff is over
    clock.advance(RETRY_BACKOFF_MS + 50)
    assert await f._fetch(conn)
    # old code: neither listed nor forgotten (its offset and epoch were those the
    # leader's session entry holds), and never fetched again
    assert _listed(conn.bodies[-1]) == {"b"}
    assert await f._fetch(conn)
    assert _listed(conn.bodies[-1]) == set() and _forgotten(conn.bodies[-1]) == set()


async def test_error_partition_forgotten_during_the_backoff_then_listed(tmp_path: Path) -> None:
    f, conn, clock = await _answered_error(tmp_path)
    assert await f._fetch(conn)
    body = conn.bodies[-1]
    assert _listed(body) == set() and _forgotten(body) == {"b"}
    assert 0 < body["max_wait_ms"] <= RETRY_BACKOFF_MS  # it ends with the backoff
    clock.advance(RETRY_BACKOFF_MS)
    assert await f._fetch(conn)
    assert _listed(conn.bodies[-1]) == {"b"}


async def _manager(tmp_path: Path) -> tuple[FetcherManager, list[asyncio.Task[None]], list[str]]:
    spawned: list[asyncio.Task[None]] = []
    fatal: list[str] = []

    def spawn(coro: Any, name: str) -> None:
        spawned.append(asyncio.get_running_loop().create_task(coro, name=name))

    manager = FetcherManager(2, ManualClock(), make_config(), spawn,
                             lambda name, exc: fatal.append(name))
    return manager, spawned, fatal


async def _close(manager: FetcherManager, spawned: list[asyncio.Task[None]],
                 fatal: list[str]) -> None:
    await manager.stop()
    await asyncio.gather(*spawned, return_exceptions=True)
    assert fatal == []


async def test_only_partition_re_added_at_a_new_epoch_stays_in_a_running_fetcher(
        tmp_path: Path) -> None:
    manager, spawned, fatal = await _manager(tmp_path)
    clock = ManualClock()
    leader = BrokerInfo(1, "127.0.0.1", free_ports(1)[0], None, 1, ONLINE)  # nothing there
    part = _follower(tmp_path, clock, "t")
    manager.add_partition(part, leader, force=True)
    first = manager.fetchers[1]
    part.make_follower(1, 1, 1, (1, 2), (1, 2))  # same leader, new epoch
    manager.add_partition(part, leader, force=True)
    # old code: the fetcher was retired (its only partition removed) and the partition
    # added to it while it stopped: no fetcher of leader 1 left, never fetched again
    fetcher = manager.fetchers.get(1)
    await asyncio.sleep(0)  # a stop it was handed runs
    assert fetcher is first and not fetcher._stopping
    state = fetcher.partitions[("t", 0)]
    assert state.partition is part and state.leader_epoch == 1 and state.truncating
    await _close(manager, spawned, fatal)


async def test_leader_at_a_new_address_gets_one_fetcher_with_every_partition(
        tmp_path: Path) -> None:
    manager, spawned, fatal = await _manager(tmp_path)
    clock = ManualClock()
    old_port, new_port = free_ports(2)  # nothing listens on either
    leader = BrokerInfo(1, "127.0.0.1", old_port, None, 1, ONLINE)
    parts = [_follower(tmp_path, clock, topic) for topic in ("a", "b", "c")]
    for part in parts:
        manager.add_partition(part, leader, force=True)
    first = manager.fetchers[1]
    moved = BrokerInfo(1, "127.0.0.1", new_port, None, 2, ONLINE)  # restarted elsewhere
    parts[1].make_follower(1, 1, 1, (1, 2), (1, 2))
    manager.add_partition(parts[1], moved, force=True)
    fetcher = manager.fetchers[1]
    assert fetcher is not first and fetcher.port == new_port
    await asyncio.sleep(0)  # the retired fetcher's stop runs
    assert first._stopping and not fetcher._stopping
    # old code: "a" and "c" went to one new fetcher, which the one made for "b" then
    # replaced: it kept fetching, untracked (never stopped, never told of removals)
    assert set(fetcher.partitions) == {("a", 0), ("b", 0), ("c", 0)}
    assert manager.info() == {"1": 3}
    await _close(manager, spawned, fatal)
