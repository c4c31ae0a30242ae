"""Consumer groups end to end, every node and every consumer a real process (issue 8's
acceptance): 3 controllers + 3 brokers, consumers from `tests/e2e/groups_worker.py`.

One run, while a producer writes continuously:
- two consumers split 6 partitions 3/3; a third joins: 2/2/2 with only the two moved
  partitions revoked, and no record consumed twice through these clean rebalances;
- one consumer is killed with -9: the others own and consume its partitions within the
  session timeout + 2 s;
- the active controller is killed with -9: consumption resumes;
- committed offsets, polled all along, never move backwards; every acknowledged record
  is consumed at least once; `dmq groups describe --json` shows lag while producing and
  zero lag once the consumers caught up.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from dmq.client.admin import Admin
from dmq.client.admin_groups import GroupAdmin
from dmq.client.producer import Producer
from dmq.protocol.errors import DmqError
from tests.support.procs import ProcessCluster
from tests.support.waiting import async_wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SESSION_MS = 3000
SETTINGS = {"broker.session.timeout.ms": 2000, "broker.heartbeat.interval.ms": 250,
            "auto.leader.rebalance.enable": False, "replica.lag.time.max.ms": 2000,
            "group.heartbeat.interval.ms": 250, "group.session.timeout.ms": SESSION_MS}
REPO = Path(__file__).resolve().parents[2]


class Worker:
    def __init__(self, bootstrap: str, root: Path, name: str) -> None:
        self.name = name
        self.path = root / f"{name}.out"
        self.path.touch()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.groups_worker", bootstrap, "g", "events",
             str(self.path), name, str(SESSION_MS)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(root / f"{name}.err", "wb"),  # noqa: SIM115
            start_new_session=True)

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines()

    def records(self) -> list[tuple[int, int, str]]:
        out = []
        for line in self.lines():
            parts = line.split(" ")
            if parts[0] == "R" and len(parts) == 4:
                out.append((int(parts[1]), int(parts[2]), parts[3]))
        return out

    def owned(self) -> set[int]:
        """The partitions it owns by its own callbacks (assigned, less revoked)."""
        out: set[int] = set()
        for line in self.lines():
            if line[:2] in ("A ", "V "):
                parts = {int(p) for p in line[2:].split(",") if p}
                out = out | parts if line[0] == "A" else out - parts
        return out

    def revoked(self) -> list[set[int]]:
        return [{int(p) for p in line[2:].split(",") if p} for line in self.lines()
                if line.startswith("V ")]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 15) -> None:
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


async def until(pred: Any, timeout_s: float, what: str) -> Any:
    return await async_wait_until(pred, timeout_s, what, ignore=(DmqError,))


async def test_consumer_groups_end_to_end() -> None:
    workers: list[Worker] = []
    with ProcessCluster(controllers=3, brokers=3, settings=SETTINGS) as procs:
        try:
            await _scenario(procs, workers)
        except BaseException:
            if os.environ.get("DMQ_TEST_KEEP_LOGS"):
                print(procs.dump_logs())
                for w in workers:
                    print(f"===== {w.name} =====\n"
                          + (procs.root / f"{w.name}.err").read_text()[-3000:])
            raise
        finally:
            for w in workers:
                w.kill()
                w.wait(5)


async def _scenario(procs: ProcessCluster, workers: list[Worker]) -> None:
    procs.start(wait=False)
    for n in procs.nodes.values():
        await asyncio.to_thread(procs.start, n.node_id)
    bootstrap = procs.bootstrap
    async with Admin(bootstrap) as admin:
        async def online() -> bool:
            d = await admin.describe_cluster(timeout_ms=1000)
            return [b["state"] for b in d["brokers"]] == ["ONLINE"] * 3
        await until(online, 20, "3 brokers ONLINE")
        await admin.create_topic("events", 6, 3)

    acked: list[str] = []
    stop_producing = asyncio.Event()
    violations: list[str] = []
    ga = GroupAdmin(bootstrap, request_timeout_ms=5000)

    async def produce() -> None:
        async with Producer(bootstrap) as p:
            i = 0
            while not stop_producing.is_set():
                handles = []
                for _ in range(20):
                    handles.append((f"v{i}", await p.send("events", f"v{i}".encode(),
                                                          key=f"k{i}".encode())))
                    i += 1
                for value, h in handles:
                    try:
                        await h
                        acked.append(value)
                    except DmqError:
                        pass  # not acknowledged: not required to be consumed
                await asyncio.sleep(0.05)

    async def watch_offsets() -> None:
        last: dict[tuple[str, int], int] = {}
        while True:
            try:
                now = await ga.committed_offsets("g")
            except DmqError:
                await asyncio.sleep(0.1)
                continue
            for tp, off in now.items():
                if off < last.get(tp, -1):
                    violations.append(f"{tp}: {last[tp]} -> {off}")
                last[tp] = max(off, last.get(tp, -1))
            await asyncio.sleep(0.1)

    async def members() -> dict[str, set[int]]:
        d = await ga.describe_group("g", with_lag=False)
        return {m.client_id: {p for _, p in m.assignment} for m in d.members}

    producer = asyncio.create_task(produce())
    watcher = asyncio.create_task(watch_offsets())
    try:
        # ---- two members: 3/3 -------------------------------------------------------
        workers += [Worker(bootstrap, procs.root, "a"), Worker(bootstrap, procs.root, "b")]

        async def split(n: int, sizes: list[int]) -> dict[str, set[int]] | None:
            m = await members()
            ok = len(m) == n and sorted(len(v) for v in m.values()) == sizes
            return m if ok else None

        async def settled(n: int, sizes: list[int]) -> bool:
            d = await ga.describe_group("g", with_lag=False)
            m = {m.client_id: {p for _, p in m.assignment} for m in d.members}
            return d.state == "Stable" and len(m) == n and sorted(
                len(v) for v in m.values()) == sizes and all(
                w.owned() == m.get(w.name) for w in workers)

        await until(lambda: split(2, [3, 3]), 30, "3/3")
        await until(lambda: settled(2, [3, 3]), 30, "3/3 settled")
        revoked_before = sum(len(r) for w in workers for r in w.revoked())

        # ---- a third joins: 2/2/2, only the moved partitions revoked ---------------------
        workers.append(Worker(bootstrap, procs.root, "c"))
        t_join = time.monotonic()
        await until(lambda: split(3, [2, 2, 2]), 20, "2/2/2")
        print(f"\nthird member: 2/2/2 after {time.monotonic() - t_join:.2f}s")
        # every revocation of this rebalance is in before they are counted: the group is
        # stable and each member's own callbacks left it owning what the coordinator says
        await until(lambda: settled(3, [2, 2, 2]), 20, "2/2/2 settled")
        revoked_now = sum(len(r) for w in workers for r in w.revoked())
        assert revoked_now - revoked_before == 2, "only the two moved partitions are revoked"

        def consumed() -> Counter[int]:
            return Counter(p for w in workers for p, _o, _v in w.records())

        # a record more on every partition: one re-read from an earlier offset would
        # deliver its records again before it
        at_settle = consumed()
        await until(lambda: all(consumed()[p] > at_settle[p] for p in range(6)), 20,
                    "a record more consumed on every partition")
        seen = Counter((p, o) for w in workers for p, o, _ in w.records())
        twice = [k for k, v in seen.items() if v > 1]
        assert not twice, f"clean rebalances consumed records twice: {twice[:10]}"

        # ---- kill -9 one member: the others take its partitions -------------------------
        victim = workers[0]
        victim_parts = (await members())[victim.name]
        victim.kill()
        t_kill = time.monotonic()
        await until(lambda: split(2, [3, 3]), SESSION_MS / 1000 + 2, "takeover after kill -9")
        takeover = time.monotonic() - t_kill
        print(f"kill -9 of a member: partitions owned by the others after {takeover:.2f}s "
              f"(session timeout {SESSION_MS / 1000:.1f}s)")
        consumed_after = len(acked)

        async def consumed_victim_parts() -> bool:
            # before the kill only the victim consumed these partitions
            return any(p in victim_parts for w in workers[1:] for p, _o, _v in w.records())

        await until(consumed_victim_parts, 5, "the others consume the killed member's "
                                              "partitions")

        # ---- kill -9 the active controller: consumption resumes -------------------------
        async with Admin(bootstrap) as admin:
            ctl = (await admin.describe_cluster(timeout_ms=2000))["controller_id"]
        procs.kill(ctl)
        t_ctl = time.monotonic()
        count_at_kill = sum(len(w.records()) for w in workers[1:])

        async def resumed() -> bool:
            return sum(len(w.records()) for w in workers[1:]) > count_at_kill + 100

        await until(resumed, 20, "consumption after the controller was killed")
        print(f"kill -9 of the active controller: consumption resumed within "
              f"{time.monotonic() - t_ctl:.2f}s")
        assert len(acked) > consumed_after

        # ---- lag while producing, zero once caught up -----------------------------------
        stop_producing.set()
        await producer
        total = len(acked)
        want = set(acked)

        async def all_consumed() -> bool:
            got = {v for w in workers for _p, _o, v in w.records()}
            return want <= got

        await until(all_consumed, 30, f"all {total} acknowledged records consumed")

        def cli(*args: str) -> str:
            out = subprocess.run(
                [sys.executable, "-m", "dmq.cli", *args, "--bootstrap",
                 ",".join(f"127.0.0.1:{n.port}" for n in procs.nodes.values() if n.alive)],
                cwd=REPO, capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            return out.stdout

        def describe_json() -> dict[str, Any]:
            return json.loads(cli("groups", "describe", "g", "--json"))  # type: ignore[no-any-return]

        async def lag_zero() -> dict[str, Any] | None:
            d = await asyncio.to_thread(describe_json)
            return d if d["total_lag"] == 0 and len(d["partitions"]) == 6 else None

        d = await until(lag_zero, 15, "zero lag")
        assert sum(p["log_end_offset"] for p in d["partitions"]) == total
        assert not violations, f"committed offsets moved backwards: {violations}"
        print(f"{total} records produced and acknowledged, all consumed; "
              f"committed offsets never moved backwards")

        # ---- clean close: the survivors leave the group ---------------------------------
        for w in workers[1:]:
            w.kill(signal.SIGTERM)
        for w in workers[1:]:
            w.wait(15)
        left = await until(lambda: members_empty(ga), 10, "an empty group")
        assert left

        # ---- an empty group: exact lag, reset-offsets and delete through the CLI ----------
        async with Producer(bootstrap) as p:
            for i in range(50):
                await p.send("events", f"late{i}".encode(), key=f"late{i}".encode())
            await p.flush()
        d = describe_json()
        assert d["state"] == "Empty" and d["total_lag"] == 50
        table = cli("groups", "describe", "g")
        assert "total lag: 50" in table and "LOG-END" in table
        assert sum(p["log_end_offset"] for p in d["partitions"]) == total + 50
        out = cli("groups", "reset-offsets", "g", "--topic", "events", "--to-earliest",
                  "--dry-run")
        assert "dry run" in out
        assert describe_json()["total_lag"] == 50
        cli("groups", "reset-offsets", "g", "--topic", "events", "--to-latest")
        assert describe_json()["total_lag"] == 0
        assert "g" in cli("groups", "list")
        cli("groups", "delete", "g")
        assert "g" not in cli("groups", "list").split()
    finally:
        stop_producing.set()
        watcher.cancel()
        await asyncio.gather(producer, watcher, return_exceptions=True)
        await ga.close()


async def members_empty(ga: GroupAdmin) -> bool:
    d = await ga.describe_group("g", with_lag=False)
    return d.state == "Empty"
