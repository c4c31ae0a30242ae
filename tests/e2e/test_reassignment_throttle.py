"""Reassignment throttles (`follower.replication.throttled.rate` and
`leader.replication.throttled.rate`, set by `dmq partitions reassign --throttle`) and
reassignment progress (bytes left) against real processes.

The catch-up rate is measured from the new replica's log on disk (its segment files'
size sampled over time) and compared with the throttle: that rate is the feature under
test. The unthrottled copy of the same amount must beat the throttle, and an in-sync
follower on the throttled broker, fetching from the same leader, must not be held to
it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dmq.client import Producer
from dmq.client.admin import Admin
from dmq.protocol.errors import DmqError
from tests.support.broker_wire import FAST, wait_until
from tests.support.procs import ProcessCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

THROTTLE = 1_000_000  # bytes/s
RECORD = 4000  # bytes of value per record: batches of ~16 KB, well under a quantum
SETTINGS = {**FAST, "min.insync.replicas": 1}


def _log_bytes(pc: ProcessCluster, broker: int, topic: str, p: int) -> int:
    """Bytes of the partition's segment files on a broker (0 before it has any)."""
    d = pc.nodes[broker].data_dir / "partitions" / f"{topic}-{p}"
    try:
        return sum(f.stat().st_size for f in d.iterdir() if f.suffix == ".log")
    except OSError:
        return 0


def _cli(pc: ProcessCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dmq.cli", *args, "--bootstrap",
                           pc.bootstrap], capture_output=True, text=True, timeout=60)


def _now(fn: Any) -> Any:
    """A synchronous condition for `wait_until`."""
    async def check() -> bool:
        return bool(fn())
    return check


def _http_json(port: int, path: str) -> Any:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return json.loads(r.read())
    except (OSError, ValueError) as exc:  # not listening yet: wait_until retries
        raise OSError(f"GET {path}: {exc}") from exc


async def _placed(admin: Admin, moves: list[tuple[str, int, list[int]]]) -> None:
    """Put empty partitions where the test wants them (a reassignment with no data)."""
    res = await admin.alter_partition_reassignments(moves)
    assert all(e is None for e in res.values()), res

    async def done() -> bool:
        t = await admin.describe_topics(sorted({m[0] for m in moves}))
        return not await admin.list_partition_reassignments() and all(
            list(t[n].partitions[p].replicas) == r
            and sorted(t[n].partitions[p].isr) == sorted(r) for n, p, r in moves)

    await wait_until(done, 30, f"placement {moves}")


async def _setup(pc: ProcessCluster, admin: Admin, topics: dict[str, tuple[int, int]],
                 moves: list[tuple[str, int, list[int]]]) -> None:
    async def online() -> bool:
        d = await admin.describe_cluster()
        return sorted(b["broker_id"] for b in d["brokers"] if b["state"] == "ONLINE") \
            == pc.broker_ids

    await wait_until(online, 30, "brokers online")
    for name, (parts, rf) in topics.items():
        await admin.create_topic(name, parts, rf)
    await _placed(admin, moves)


async def _fill(pc: ProcessCluster, topic: str, p: int, total: int, acks: str = "1") -> None:
    value = os.urandom(RECORD)
    async with Producer(pc.bootstrap, acks=acks, batch_size=16_384, linger_ms=2) as prod:
        for _ in range(total // RECORD):
            await prod.send(topic, value, partition=p)
        await prod.flush()


def _rate(samples: list[tuple[float, int]], total: int) -> float:
    """Bytes/s between the samples at 20% and at 90% of `total` (the first quantum and
    the last, partly filled one left out)."""
    a = next(s for s in samples if s[1] >= 0.2 * total)
    b = next(s for s in samples if s[1] >= 0.9 * total)
    assert b[0] > a[0], samples
    return (b[1] - a[1]) / (b[0] - a[0])


async def _sample_until(pc: ProcessCluster, broker: int | list[int], topic: str, p: int,
                        total: int, timeout_s: float) -> list[tuple[float, int]]:
    """(time, bytes) of the partition's log on `broker` (summed over a list of brokers)
    until they reach `total`."""
    brokers = broker if isinstance(broker, list) else [broker]
    samples: list[tuple[float, int]] = []
    deadline = time.monotonic() + timeout_s
    while True:
        n = sum(_log_bytes(pc, b, topic, p) for b in brokers)
        samples.append((time.monotonic(), n))
        if n >= total:
            return samples
        assert time.monotonic() < deadline, f"{topic}-{p} on {broker}: {samples[-5:]}"
        await asyncio.sleep(0.05)


async def test_throttled_catch_up_runs_at_the_throttle_and_spares_in_sync_followers(
        tmp_path: Path) -> None:
    """`--throttle` (leader and follower side on the brokers of the move), then no
    throttle, then the same cluster with the leader side alone (`_leader_throttle_alone`)."""
    with ProcessCluster(controllers=1, brokers=3, settings=SETTINGS) as pc:
        pc.start()
        a, b, c = pc.broker_ids
        async with Admin(pc.bootstrap) as admin:
            # big-0 and big-1 on a alone; live-0 led by a with an in-sync follower on c
            await _setup(pc, admin, {"big": (2, 1), "live": (1, 2)},
                         [("big", 0, [a]), ("big", 1, [a]), ("live", 0, [a, c])])
            size = 4 * 1024 * 1024
            await asyncio.gather(_fill(pc, "big", 0, size), _fill(pc, "big", 1, size))
            total = _log_bytes(pc, a, "big", 0)
            assert total >= size

            # throttled: big-0 a -> c at THROTTLE bytes/s
            plan = tmp_path / "plan.json"
            plan.write_text(json.dumps([{"topic": "big", "partition": 0, "replicas": [c]}]))
            out = await asyncio.to_thread(_cli, pc, "partitions", "reassign", "--plan",
                                          str(plan), "--throttle", str(THROTTLE))
            assert out.returncode == 0, out.stdout + out.stderr
            assert "big-0: reassignment started" in out.stdout
            assert f"follower.replication.throttled.rate={THROTTLE}" in out.stdout
            sampling = asyncio.create_task(_sample_until(pc, c, "big", 0, total, 30))
            # meanwhile, 1 MB produced with acks=all to live-0, whose in-sync follower c
            # fetches from the same leader as the throttled replica
            await wait_until(_now(lambda: _log_bytes(pc, c, "big", 0) >= 0.1 * total), 15,
                             "the throttled copy under way")
            t0 = time.monotonic()
            await _fill(pc, "live", 0, 1024 * 1024, acks="all")
            live_s = time.monotonic() - t0
            big_when_live_done = _log_bytes(pc, c, "big", 0)
            samples = await sampling
            rate = _rate(samples, total)
            live_rate = 1024 * 1024 / live_s
            print(f"\nthrottled catch-up {rate / 1e6:.3f} MB/s (throttle {THROTTLE / 1e6} "
                  f"MB/s, {total} bytes); in-sync follower {live_rate / 1e6:.2f} MB/s")
            assert 0.8 * THROTTLE <= rate <= 1.2 * THROTTLE, (rate, samples)
            # the in-sync follower was not queued behind the throttled copy
            assert big_when_live_done < total
            assert live_rate > 1.2 * THROTTLE, live_rate
            live = (await admin.describe_topics(["live"]))["live"].partitions[0]
            assert c in live.isr

            async def settled() -> bool:
                return not await admin.list_partition_reassignments()

            await wait_until(settled, 30, "big-0 reassignment complete")
            verify = await asyncio.to_thread(_cli, pc, "partitions", "reassign", "--verify",
                                             "--plan", str(plan))
            assert verify.returncode == 0, verify.stdout + verify.stderr
            assert "big-0: complete" in verify.stdout and "throttle removed" in verify.stdout
            assert await admin.describe_dynamic_configs(overrides_only=True) == {}
            assert (await admin.describe_dynamic_configs())[
                "follower.replication.throttled.rate"] == "-1"

            # unthrottled: the same amount, big-1 a -> c
            t0 = time.monotonic()
            res = await admin.alter_partition_reassignments([("big", 1, [c])])
            assert res == {("big", 1): None}
            total1 = _log_bytes(pc, a, "big", 1)
            samples = await _sample_until(pc, c, "big", 1, total1, 30)
            free_rate = total1 / (samples[-1][0] - t0)
            print(f"unthrottled catch-up {free_rate / 1e6:.2f} MB/s (from the request on)")
            assert free_rate > 1.2 * THROTTLE, free_rate
            await _leader_throttle_alone(pc, admin)


async def test_progress_bytes_left_in_cli_api_and_http_then_cancel_removes_throttle(
        tmp_path: Path) -> None:
    # bytes/s: 1 MB stays in progress for ~16 s, longer than the checks below take on
    # a loaded machine before the cancel (each CLI run costs a Python start)
    slow = 64_000
    with ProcessCluster(controllers=1, brokers=2, settings=SETTINGS, http=True) as pc:
        pc.start()
        a, b = pc.broker_ids
        async with Admin(pc.bootstrap) as admin:
            await _setup(pc, admin, {"pr": (1, 1)}, [("pr", 0, [a])])
            await _fill(pc, "pr", 0, 1024 * 1024)
            total = _log_bytes(pc, a, "pr", 0)
            plan = tmp_path / "plan.json"
            plan.write_text(json.dumps([{"topic": "pr", "partition": 0, "replicas": [b]}]))
            out = await asyncio.to_thread(_cli, pc, "partitions", "reassign", "--plan",
                                          str(plan), "--throttle", str(slow))
            assert out.returncode == 0, out.stdout + out.stderr

            seen: list[int] = []

            async def reported() -> bool:
                [r] = await admin.list_partition_reassignments()
                if r["bytes_left"] >= 0:
                    seen.append(r["bytes_left"])
                # two figures, the later smaller: the copy advances and is reported
                return len(seen) >= 2 and seen[-1] < seen[0]

            await wait_until(reported, 20, "bytes left reported, then smaller")
            # the leader's figure is its log past the new replica's fetch offset: at
            # most the whole log, and what the replica holds accounts for the rest
            assert 0 < seen[-1] <= total, (seen, total)
            status = await asyncio.to_thread(_cli, pc, "cluster", "status")
            assert "BYTES LEFT" in status.stdout, status.stdout
            row = next(ln for ln in status.stdout.splitlines() if ln.startswith("pr-0"))
            left = int(row.split()[-1])
            assert 0 < left <= total, row
            port = pc.nodes[pc.controller_ids[0]].http_port
            assert port is not None

            async def rest_reports() -> bool:
                view = await asyncio.to_thread(_http_json, port, "/api/v1/metadata/cluster")
                [r] = view["reassignments"]
                return bool(0 < r["bytes_left"] <= total)

            await wait_until(rest_reports, 20, "bytes left in the REST cluster view")
            verify = await asyncio.to_thread(_cli, pc, "partitions", "reassign", "--verify",
                                             "--plan", str(plan))
            assert verify.returncode == 1 and "bytes left" in verify.stdout, verify.stdout
            assert "throttle removed" not in verify.stdout
            cancel = await asyncio.to_thread(_cli, pc, "partitions", "reassign", "--cancel")
            assert cancel.returncode == 0, cancel.stdout + cancel.stderr
            assert "pr-0: cancelled" in cancel.stdout and "throttle removed" in cancel.stdout
            assert await admin.describe_dynamic_configs(overrides_only=True) == {}
            with pytest.raises(DmqError, match="must be at least 1"):
                await admin.alter_dynamic_configs({"follower.replication.throttled.rate": "0"})



async def _leader_throttle_alone(pc: ProcessCluster, admin: Admin) -> None:
    """The leader side alone (`leader.replication.throttled.rate` of the leader's broker,
    a broker-entity value; no follower throttle anywhere): two new replicas catching up
    from one leader get THROTTLE bytes/s between them, not each."""
    a, b, c = pc.broker_ids
    await admin.create_topic("lt", 1, 1)
    await _placed(admin, [("lt", 0, [a])])
    await _fill(pc, "lt", 0, 1536 * 1024)
    total = _log_bytes(pc, a, "lt", 0)
    key = f"leader.replication.throttled.rate:{a}"
    await admin.alter_dynamic_configs({key: str(THROTTLE)})
    assert await admin.describe_dynamic_configs(overrides_only=True) == {
        key: str(THROTTLE)}
    res = await admin.alter_partition_reassignments([("lt", 0, [a, b, c])])
    assert res == {("lt", 0): None}
    samples = await _sample_until(pc, [b, c], "lt", 0, 2 * total, 30)
    rate = _rate(samples, 2 * total)
    print(f"\nleader-throttled catch-up of two replicas {rate / 1e6:.3f} MB/s "
          f"together (leader throttle {THROTTLE / 1e6} MB/s, 2 x {total} bytes)")
    assert 0.8 * THROTTLE <= rate <= 1.2 * THROTTLE, (rate, samples)

    async def settled() -> bool:
        t = await admin.describe_topics(["lt"])
        return (not await admin.list_partition_reassignments()
                and sorted(t["lt"].partitions[0].isr) == [a, b, c])

    await wait_until(settled, 30, "lt-0 on a, b and c, all in sync")
