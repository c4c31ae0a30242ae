"""The reassignment throttle (`dmq.broker.throttle`) and how a `ReplicaFetcher` applies
it: a throttled partition (a replica being added, not in sync) is fetched a quantum at
a time and left out of the session while the bucket refills; an in-sync partition of
the same fetcher is never held back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dmq.broker.fetcher import ReplicaFetcher
from dmq.broker.partition import Partition
from dmq.broker.throttle import ReplicationThrottle
from dmq.clock import ManualClock
from dmq.log.batch import build_batch
from dmq.log.partition_log import PartitionLog
from dmq.metadata.image import ONLINE, BrokerInfo
from tests.support.inproc_broker import make_config

MAX_FETCH = 8 * 1024 * 1024


def test_bucket_long_run_rate_is_the_rate_and_debt_is_waited_out() -> None:
    clock = ManualClock()
    t = ReplicationThrottle(clock.monotonic_ms, MAX_FETCH)
    t.set_rate(1_000_000)
    assert t.quantum == 100_000 and t.ready()
    copied = 0
    # a fetch whenever the bucket is ready, answering what was reserved: 10 s of copying
    while clock.monotonic_ms() < 10_000:
        if t.ready():
            share = t.reserve(1)
            t.settle(share, share)
            copied += share
        clock.advance(max(1, t.wait_ms()))
    # one quantum of burst at the start, the rate after
    assert copied <= 100_000 + 10 * 1_000_000
    assert copied >= 10 * 1_000_000 - 100_000
    # a first batch larger than the reservation puts the bucket in debt
    clock.advance(1000)
    share = t.reserve(2)
    assert share == 50_000
    t.settle(share, 400_000)
    t.settle(share, 0)  # the other partition had nothing: its share comes back
    assert not t.ready() and t.wait_ms() >= 300
    # no limit: always ready, the whole fetch size
    t.set_rate(0)
    assert t.ready() and t.reserve(3) == MAX_FETCH and t.wait_ms() == 0


class FakeConn:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.answer: dict[str, Any] = {"topics": []}

    async def request(self, api: Any, body: dict[str, Any], timeout_ms: int) -> Any:
        self.bodies.append(body)
        answer, self.answer = self.answer, {"topics": []}
        return {"session_id": 7, **answer}


def _partition(tmp_path: Path, clock: ManualClock, topic: str) -> Partition:
    plog = PartitionLog.open(str(tmp_path / f"{topic}-0"), clock=clock)
    part = Partition(topic, 0, "id-" + topic, plog, 2, clock.monotonic_ms)
    part.make_follower(1, 0, 0, (1, 2), (1, 2))
    return part


def _listed(body: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """topic -> (fetch offset, size limit) of the partitions a request lists."""
    return {t: (rows[0][1], rows[0][3]) for t, rows in body["topics"]}


def _data(part: Partition, size: int) -> list[Any]:
    recs = build_batch([(None, b"x" * size)], base_offset=part.log_end_offset)
    return [0, 0, 0, 0, part.log_end_offset + 1, recs]


async def test_fetcher_takes_a_quantum_for_throttled_partitions_only(tmp_path: Path) -> None:
    clock = ManualClock()
    throttle = ReplicationThrottle(clock.monotonic_ms, MAX_FETCH)
    throttle.set_rate(100_000)  # quantum 10,000 bytes
    leader = BrokerInfo(1, "127.0.0.1", 1, None, 1, ONLINE)
    f = ReplicaFetcher(2, clock, leader, make_config(), lambda *a: None, throttle)
    adding, in_sync = _partition(tmp_path, clock, "adding"), _partition(tmp_path, clock, "insync")
    f.add(adding, throttled=True)
    f.add(in_sync)
    for tp, s in list(f.partitions.items()):
        f._truncated(tp, s)
    conn: Any = FakeConn()

    # full request: the throttled partition asks for a quantum, the other for the max
    conn.answer = {"topics": [["adding", [_data(adding, 9_900)]]]}
    assert await f._fetch(conn)
    assert _listed(conn.bodies[-1]) == {"adding": (0, 10_000), "insync": (0, MAX_FETCH)}
    assert adding.log_end_offset == 1
    assert throttle.stats_throttled_bytes == adding.log.size_bytes
    # the bucket is empty: the throttled partition leaves the session, the long-poll
    # ends when the bucket holds a quantum again; the in-sync one copies 50 KB at once
    conn.answer = {"topics": [["insync", [_data(in_sync, 50_000)]]]}
    assert await f._fetch(conn)
    body = conn.bodies[-1]
    assert _listed(body) == {}
    assert body["forgotten"] == [["adding", [0]]]
    assert 0 < body["max_wait_ms"] <= 100
    assert in_sync.log_end_offset == 1
    assert await f._fetch(conn)
    assert _listed(conn.bodies[-1]) == {"insync": (1, MAX_FETCH)}
    # a quantum later the throttled partition is listed again
    clock.advance(100)
    assert await f._fetch(conn)
    assert _listed(conn.bodies[-1]) == {"adding": (1, 10_000)}
    # in sync now (joined the ISR): its reservation comes back, and once its next data
    # arrives it is listed without limit
    f.set_throttled(("adding", 0), False)
    assert throttle.ready()
    conn.answer = {"topics": [["adding", [_data(adding, 9_900)]]]}
    assert await f._fetch(conn)
    assert await f._fetch(conn)
    assert _listed(conn.bodies[-1]) == {"adding": (2, MAX_FETCH)}
    await f.stop()
