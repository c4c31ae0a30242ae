"""Raft benchmark on a three-process quorum over the native protocol.

    python benchmarks/raft_bench.py [--proposals 3000] [--runs 3] [--trials 20] [--quick]

Each worker process runs a `RaftNode` with file storage (fsync on) and a counting
state machine, serving the Raft API keys and RAFT_PROPOSE. Measures committed
proposals per second (100-byte entries) with 1 and with 100 proposals in flight, and
the time from `kill -9` of the leader until a new leader commits a proposal, over
`--trials` kills (the killed worker restarts and catches up between trials); then a
follower is kept down while `--snapshot-entries` are committed (past the 10,000-entry
snapshot interval, so the leader compacts its log) and its catch-up by snapshot timed. Raft
timing is the cluster default (dmq/config.py). Prints medians.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dmq.config import SETTINGS
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import Connection
from dmq.protocol.errors import DmqError

ENTRY = b"x" * 100


# ---------------------------------------------------------------------- worker process
async def worker(node_id: int, ports: dict[int, int], data_dir: Path) -> None:
    import uvloop  # noqa: F401 - the entry point installs it below

    from dmq.clock import SystemClock
    from dmq.protocol.errors import NotControllerError
    from dmq.protocol.server import ProtocolServer
    from dmq.raft.api import NotLeaderError
    from dmq.raft.node import RaftNode, RaftNodeConfig
    from dmq.raft.storage import FileStorage

    class Counter:
        def __init__(self) -> None:
            self.applied = 0

        def apply(self, entries: Any) -> None:
            self.applied += len(entries)

        def snapshot(self) -> bytes:
            return str(self.applied).encode()

        def restore(self, snapshot: Any) -> None:
            self.applied = int(snapshot.data or b"0")

    peers = {i: ("127.0.0.1", p) for i, p in ports.items() if i != node_id}
    cfg = RaftNodeConfig(node_id=node_id, peers=peers,  # type: ignore[arg-type]
                         tick_ms=SETTINGS["raft.tick.ms"].default,
                         election_ticks=SETTINGS["raft.election.timeout.ticks"].default,
                         heartbeat_ticks=SETTINGS["raft.heartbeat.ticks"].default)
    node = RaftNode(cfg, FileStorage(data_dir), Counter(), SystemClock(),  # type: ignore[arg-type]
                    random.Random(node_id * 7919 + os.getpid()))
    server = ProtocolServer(host="127.0.0.1", port=ports[node_id], node_id=node_id)
    node.register(server)

    async def propose(ctx: Any, body: Any) -> Any:
        try:
            return {"index": await node.propose(body["data"], timeout_ms=5000)}
        except NotLeaderError as exc:
            leader = getattr(exc, "leader_id", 0)
            hint = (leader, "127.0.0.1", ports[leader]) if leader in ports else None
            raise NotControllerError("not the leader", leader=hint) from None

    server.register(ApiKey.RAFT_PROPOSE, propose)
    server.register(ApiKey.RAFT_STATUS, lambda ctx, body: node.status())
    await server.start()
    await node.start()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await node.stop()
    await server.close()


# ---------------------------------------------------------------------- driver
def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Quorum:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.ports = dict(zip((1, 2, 3), _free_ports(3), strict=True))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    def start(self, node_id: int) -> None:
        args = [sys.executable, __file__, "--worker", str(node_id), "--ports",
                ",".join(f"{i}:{p}" for i, p in self.ports.items()), "--dir",
                str(self.root / f"n{node_id}")]
        self.procs[node_id] = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                               stderr=subprocess.DEVNULL)

    def kill(self, node_id: int) -> None:
        p = self.procs.pop(node_id)
        p.kill()
        p.wait()

    def stop_all(self) -> None:
        for p in self.procs.values():
            p.kill()
        for p in self.procs.values():
            p.wait()
        self.procs.clear()


async def _status(port: int) -> dict[str, Any] | None:
    try:
        conn = await Connection.open("127.0.0.1", port, connect_timeout_ms=200)
    except DmqError:
        return None
    try:
        result: dict[str, Any] = await conn.request(ApiKey.RAFT_STATUS, {}, timeout_ms=300)
        return result
    except DmqError:
        return None
    finally:
        await conn.close()


async def find_leader(q: Quorum, timeout_s: float = 15.0, exclude: int | None = None) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for i, port in q.ports.items():
            if i == exclude or i not in q.procs:
                continue
            st = await _status(port)
            if st and st["role"] == "LEADER":
                return i
        await asyncio.sleep(0.02)
    raise TimeoutError("no leader")


async def throughput(q: Quorum, in_flight: int, total: int) -> float:
    leader = await find_leader(q)
    conn = await Connection.open("127.0.0.1", q.ports[leader])
    per = total // in_flight

    async def one() -> None:
        for _ in range(per):
            await conn.request(ApiKey.RAFT_PROPOSE, {"data": ENTRY}, timeout_ms=10_000)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(in_flight)))
    dt = time.perf_counter() - t0
    await conn.close()
    return per * in_flight / dt


async def failover_once(q: Quorum) -> float:
    leader = await find_leader(q)
    # make sure every node is caught up before the kill
    conn = await Connection.open("127.0.0.1", q.ports[leader])
    await conn.request(ApiKey.RAFT_PROPOSE, {"data": ENTRY}, timeout_ms=5000)
    await conn.close()
    q.kill(leader)
    t0 = time.perf_counter()
    while True:
        for i, port in q.ports.items():
            if i not in q.procs:
                continue
            try:
                c = await Connection.open("127.0.0.1", port, connect_timeout_ms=200)
                try:
                    await c.request(ApiKey.RAFT_PROPOSE, {"data": ENTRY}, timeout_ms=200)
                    elapsed = time.perf_counter() - t0
                    q.start(leader)
                    return elapsed
                finally:
                    await c.close()
            except DmqError:
                pass
        if time.perf_counter() - t0 > 30:
            raise TimeoutError("no new leader committed within 30 s")
        await asyncio.sleep(0.01)


async def wait_caught_up(q: Quorum) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sts = [await _status(p) for p in q.ports.values()]
        if all(sts) and len({s["last_applied"] for s in sts if s}) == 1:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError("restarted node did not catch up")


async def snapshot_catchup(q: Quorum, entries: int) -> str:
    """Keep a follower down while `entries` are committed (enough for the leader to
    snapshot and compact its log), restart it, and time its catch-up by snapshot."""
    leader = await find_leader(q)
    follower = next(i for i in q.ports if i != leader)
    before = await _status(q.ports[follower])
    assert before is not None
    q.kill(follower)
    conn = await Connection.open("127.0.0.1", q.ports[leader])
    per = entries // 100

    async def one() -> None:
        for _ in range(per):
            await conn.request(ApiKey.RAFT_PROPOSE, {"data": ENTRY}, timeout_ms=10_000)

    await asyncio.gather(*(one() for _ in range(100)))
    await conn.close()
    lead = await _status(q.ports[leader])
    assert lead is not None
    if lead["snapshot_index"] <= before["last_applied"]:
        return (f"leader did not compact past the follower's position (snapshot "
                f"{lead['snapshot_index']}, follower at {before['last_applied']})")
    t0 = time.perf_counter()
    q.start(follower)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = await _status(q.ports[follower])
        if st and st["last_applied"] >= lead["commit_index"]:
            took = time.perf_counter() - t0
            via = "a snapshot" if st["snapshot_index"] >= lead["snapshot_index"] else "entries"
            return (f"follower kept down for {entries} entries (leader snapshot at "
                    f"{lead['snapshot_index']}, follower was at {before['last_applied']}) caught "
                    f"up to {lead['commit_index']} by {via} in {took * 1000:.0f} ms after restart")
        await asyncio.sleep(0.05)
    raise TimeoutError("follower did not catch up within 60 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--worker", type=int)
    ap.add_argument("--ports")
    ap.add_argument("--dir")
    ap.add_argument("--proposals", type=int, default=3000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--snapshot-entries", type=int, default=10_500,
                    help="entries committed while a follower is down (0: skip that check)")
    ap.add_argument("--quick", action="store_true", help="tiny counts (smoke test)")
    args = ap.parse_args()
    import uvloop

    if args.worker:
        ports = {int(a): int(b) for a, b in (x.split(":") for x in args.ports.split(","))}
        Path(args.dir).mkdir(parents=True, exist_ok=True)
        uvloop.run(worker(args.worker, ports, Path(args.dir)))
        return
    if args.quick:
        args.proposals, args.runs, args.trials, args.snapshot_entries = 200, 1, 2, 0
    root = Path(tempfile.mkdtemp(prefix="dmq-raft-bench-"))
    q = Quorum(root)
    try:
        for i in q.ports:
            q.start(i)
        print(f"python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} "
              f"cpus; raft tick {SETTINGS['raft.tick.ms'].default} ms, election "
              f"{SETTINGS['raft.election.timeout.ticks'].default} ticks; fsync on")

        async def run_all() -> None:
            await find_leader(q)
            for in_flight in (1, 100):
                n = args.proposals if in_flight > 1 else max(100, args.proposals // 10)
                rates = [await throughput(q, in_flight, n) for _ in range(args.runs)]
                print(f"committed proposals/s, 100 B, {in_flight:>3} in flight: "
                      f"{statistics.median(rates):>10,.0f}   (runs: "
                      + ", ".join(f"{r:,.0f}" for r in rates) + ")")
            times = []
            for _ in range(args.trials):
                times.append(await failover_once(q))
                await wait_caught_up(q)
            ms = sorted(t * 1000 for t in times)
            print(f"kill -9 leader -> new leader commits ({len(ms)} trials): median "
                  f"{statistics.median(ms):.0f} ms, p90 {ms[int(0.9 * (len(ms) - 1))]:.0f} ms, "
                  f"max {ms[-1]:.0f} ms, min {ms[0]:.0f} ms")
            print("  all: " + ", ".join(f"{t:.0f}" for t in ms))
            if args.snapshot_entries:
                print(await snapshot_catchup(q, args.snapshot_entries))

        asyncio.run(run_all())
    finally:
        q.stop_all()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
