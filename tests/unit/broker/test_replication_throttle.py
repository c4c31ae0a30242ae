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
from tests.unit.broker.fakes import FakeFetchConn

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
    conn: Any = FakeFetchConn()

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


# ---------------------------------------------------------------------- leader side

LEADER_RATE = 100_000  # bytes/s: a quantum of 10,000 bytes
BATCH_VALUE = 900


async def _no_controller(*_: Any, **__: Any) -> Any:
    raise AssertionError("no controller in this test")


def _leading(rm: Any, tmp_path: Path, clock: ManualClock, topic: str,
             batches: int) -> Partition:
    """A partition led by broker 1 whose replica 2 is being added (not in sync), with
    `batches` one-record batches of about 1 KB."""
    plog = PartitionLog.open(str(tmp_path / f"lead-{topic}-0"), clock=clock)
    part = Partition(topic, 0, "id-" + topic, plog, 1, clock.monotonic_ms)
    part.make_leader(0, 0, (1, 2), (1,))
    part.adding = (2,)
    for _ in range(batches):
        part.append_as_leader(build_batch([(None, b"v" * BATCH_VALUE)]), 1)
    rm.partitions[(topic, 0)] = part
    return part


def _leader_plane(tmp_path: Path, clock: ManualClock) -> tuple[Any, Any]:
    from dmq.broker.handlers import DataPlane
    from dmq.broker.replica_manager import ReplicaManager

    rm = ReplicaManager(make_config(), 1, tmp_path, _no_controller, lambda: 1, clock=clock)
    rm.leader_throttle.set_rate(LEADER_RATE)
    assert rm.leader_throttle.quantum == 10_000
    return rm, DataPlane(rm)


def _records(answer: Any) -> dict[str, tuple[int, int]]:
    """topic -> (record bytes, records) of a fetch answer (one-record batches)."""
    out = {}
    for topic, rows in answer["topics"]:
        for row in rows:
            assert row[1] == 0, row
            data = bytes(row[5])
            out[topic] = (len(data), len(data) // len(_one_batch()))
    return out


def _one_batch() -> bytes:
    return bytes(build_batch([(None, b"v" * BATCH_VALUE)]))


def _fetch_body(offsets: dict[str, int], max_wait_ms: int = 0, **session: Any) -> Any:
    return {"replica_id": 2, "max_wait_ms": max_wait_ms, "min_bytes": 1,
            "max_bytes": MAX_FETCH, "forgotten": [],
            "topics": [[t, [[0, off, 0, MAX_FETCH]]] for t, off in offsets.items()],
            **session}


async def test_leader_throttle_serves_every_throttled_partition_at_the_rate(
        tmp_path: Path) -> None:
    """Three throttled partitions asked in the same order every time: each gets its
    share of every quantum (not the first one all of it), and together they take the
    rate."""
    clock = ManualClock()
    rm, plane = _leader_plane(tmp_path, clock)
    topics = ["a", "b", "c"]
    for t in topics:
        _leading(rm, tmp_path, clock, t, 200)
    offsets = dict.fromkeys(topics, 0)
    got = dict.fromkeys(topics, 0)
    batch = len(_one_batch())
    while clock.monotonic_ms() < 3000:
        answer = plane.fetch(None, _fetch_body(offsets))
        assert isinstance(answer, dict)  # max_wait_ms 0: answered at once
        for t, (nbytes, nrecords) in _records(answer).items():
            got[t] += nbytes
            offsets[t] += nrecords
        clock.advance(max(1, rm.leader_throttle.wait_ms()))
    total = sum(got.values())
    elapsed_s = clock.monotonic_ms() / 1000
    # the rate, with one quantum of burst and one batch of debt
    assert total <= 10_000 + LEADER_RATE * elapsed_s + batch
    assert total >= 0.9 * LEADER_RATE * elapsed_s
    # every partition had its turns: none starved behind the first one asked
    for t in topics:
        assert got[t] >= total / 4, got


async def test_leader_throttle_one_session_answer_carries_every_throttled_partition(
        tmp_path: Path) -> None:
    """A follower's fetch session with two throttled partitions: with a full bucket one
    answer carries records of both, together within a quantum (and a batch)."""
    clock = ManualClock()
    rm, plane = _leader_plane(tmp_path, clock)
    for t in ("a", "b"):
        _leading(rm, tmp_path, clock, t, 50)
    answer = plane.fetch(None, _fetch_body({"a": 0, "b": 0}, session_id=0, session_epoch=0))
    assert isinstance(answer, dict)
    got = _records(answer)
    assert set(got) == {"a", "b"} and all(n > 0 for _, n in got.values()), got
    assert sum(b for b, _ in got.values()) <= 10_000 + len(_one_batch())
    assert rm.leader_throttle.stats_throttled_bytes == sum(b for b, _ in got.values())
    assert not rm.leader_throttle.ready()


async def test_leader_throttle_held_long_poll_answers_when_the_bucket_refills(
        tmp_path: Path) -> None:
    """A session fetch whose throttled partitions are held back (empty bucket) waits
    on, and is answered when the bucket holds a quantum again, long before its
    max_wait_ms."""
    import asyncio

    clock = ManualClock()
    rm, plane = _leader_plane(tmp_path, clock)
    for t in ("a", "b"):
        _leading(rm, tmp_path, clock, t, 50)
    first = plane.fetch(None, _fetch_body({"a": 0, "b": 0}, session_id=0, session_epoch=0))
    offsets = {t: n for t, (_, n) in _records(first).items()}
    assert not rm.leader_throttle.ready()
    pending = plane.fetch(None, _fetch_body(offsets, max_wait_ms=5000,
                                            session_id=first["session_id"], session_epoch=1))
    assert not isinstance(pending, dict)  # held: it waits
    task = asyncio.ensure_future(pending)
    for _ in range(100):
        await asyncio.sleep(0)
        if task.done():
            break
        clock.advance(10)
    assert task.done() and clock.monotonic_ms() < 1000, clock.monotonic_ms()
    got = _records(task.result())
    assert set(got) == {"a", "b"} and all(n > 0 for _, n in got.values()), got


async def test_leader_throttle_a_caught_up_throttled_partition_takes_no_share(
        tmp_path: Path) -> None:
    """A throttled partition with nothing to send, asked first, leaves the quantum to the
    one behind it that has records."""
    clock = ManualClock()
    rm, plane = _leader_plane(tmp_path, clock)
    _leading(rm, tmp_path, clock, "idle", 0)
    _leading(rm, tmp_path, clock, "busy", 50)
    answer = plane.fetch(None, _fetch_body({"idle": 0, "busy": 0}))
    got = _records(answer)
    assert got["idle"] == (0, 0) and got["busy"][1] > 0, got
