"""Controller failover: kill -9 the active controller, time until a new one is active.

    .venv/bin/python benchmarks/failover_bench.py                 # 10 kills
    .venv/bin/python benchmarks/failover_bench.py --kills 3 --quick

Real processes: 3 controllers and 3 brokers (`tests/support/procs.ProcessCluster`,
loopback ports, data in a temporary folder, every process killed at the end), a topic
with 3 RF=3 partitions, and an acks=all idempotent producer (the dmq client) sending
batches of 100-byte records without pause for the whole run. Each round waits until
the cluster is settled (every broker answered by the active controller), then sends
SIGKILL to the active controller, and afterwards restarts it and waits until it has
caught up.

Per kill it reports:
- `active`: kill -> a surviving controller answers DescribeCluster with active=true in
  a newer Raft term (polled every 10 ms over open connections);
- the breakdown, from the node logs' millisecond timestamps (the nodes and this process
  share the wall clock): `detect` = kill -> the first surviving controller leaves the
  follower role (its "raft role PRE_CANDIDATE/CANDIDATE" line), `elect` -> its "raft role
  LEADER" line, `activate` -> its "is the active controller" line (the no-op and the
  barrier entry committed, broker sessions reset), `brokers` -> the last broker's
  "heartbeat answered by controller N" line (every broker has switched);
- `stall`: the longest time without an acknowledgement for the running producer
  between the kill and 3 s after the new controller is active (its in-flight batches'
  send -> ack gaps; compare with `quiet`, the longest gap in the `--pause` seconds of
  steady production just before the kill).

With `--steady S`, before the kills, the producer runs S seconds without faults and
the run counts Raft elections meanwhile (term changes and "raft role" lines in the
controllers' logs): the spurious-election check of the timeouts.

Nothing here asserts a speed. The figures depend on `raft.tick.ms`,
`raft.election.timeout.ticks` and `raft.leader.loss.timeout.ticks` (pass `--setting k=v` to try
others).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from dmq.cli.dev import ensure_topic  # noqa: E402
from dmq.client.admin import Admin  # noqa: E402
from dmq.client.producer import Producer  # noqa: E402
from dmq.protocol.api import ApiKey  # noqa: E402
from dmq.protocol.connection import Connection  # noqa: E402
from dmq.protocol.errors import DmqError  # noqa: E402
from tests.support.procs import ProcessCluster  # noqa: E402

TOPIC = "failover"
CHUNK = 500  # records per send_many
IN_FLIGHT = 4  # send_many calls outstanding
STALL_AFTER_S = 3.0  # producer stall window: kill .. active + this
_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})")


@dataclass
class Kill:
    victim: int
    killed_at: float  # wall clock
    active_s: float = float("nan")
    new_controller: int = -1
    detect_s: float = float("nan")
    elect_s: float = float("nan")
    activate_s: float = float("nan")
    brokers_s: float = float("nan")
    stall_s: float = float("nan")
    quiet_stall_s: float = float("nan")


@dataclass
class Acks:
    """Wall-clock times at which the running producer's batches were acknowledged."""

    times: list[float] = field(default_factory=list)
    errors: int = 0

    def longest_gap(self, t0: float, t1: float) -> float:
        inside = [t for t in self.times if t0 <= t <= t1]
        points = [t0, *inside, t1]
        return max(b - a for a, b in zip(points, points[1:], strict=False))


def _log_time(line: str) -> float | None:
    m = _TS.match(line)
    if m is None:
        return None
    return datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%f").replace(
        tzinfo=UTC).timestamp()


def first_line_after(path: Path, t0: float, pattern: str) -> float | None:
    """Timestamp of the first line of the log at `path` after wall time `t0` that
    contains `pattern` (the log has millisecond resolution: allow 1 ms)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if pattern not in line:
            continue
        t = _log_time(line)
        if t is not None and t >= t0 - 0.001:
            return t
    return None


async def describe(conn: Connection) -> dict[str, Any] | None:
    try:
        body = await conn.request(ApiKey.DESCRIBE_CLUSTER, {}, timeout_ms=500)
    except DmqError:
        return None
    return body if isinstance(body, dict) else None


async def open_conn(port: int) -> Connection | None:
    try:
        return await Connection.open("127.0.0.1", port, connect_timeout_ms=300)
    except DmqError:
        return None


async def active_controller(cluster: ProcessCluster, timeout_s: float = 30.0,
                            newer_than: int = -1) -> tuple[int, int]:
    """(node id, term) of the active controller once one answers active in a term
    newer than `newer_than`, polling every 10 ms."""
    conns: dict[int, Connection] = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    try:
        while loop.time() < deadline:
            for cid in cluster.controller_ids:
                if not cluster.nodes[cid].alive:
                    continue
                conn = conns.get(cid)
                if conn is None or conn.closed:
                    conn = await open_conn(cluster.nodes[cid].port)
                    if conn is None:
                        continue
                    conns[cid] = conn
                body = await describe(conn)
                if body and body.get("active") and int(body["controller_term"]) > newer_than:
                    return cid, int(body["controller_term"])
            await asyncio.sleep(0.01)
    finally:
        for c in conns.values():
            await c.close()
    raise TimeoutError(f"no active controller within {timeout_s} s")


async def settled(cluster: ProcessCluster, cid: int, timeout_s: float = 30.0) -> None:
    """Every controller has applied what the active one committed, and every broker has
    been heard from by the active controller in the last second."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    conn = await open_conn(cluster.nodes[cid].port)
    try:
        while loop.time() < deadline:
            body = await describe(conn) if conn is not None else None
            if body is not None:
                ctls = body.get("controllers") or []
                brokers = body.get("brokers") or []
                versions = {c.get("last_applied") for c in ctls if isinstance(c, dict)}
                if len(ctls) == 3 and len(versions) == 1 and None not in versions and \
                        len(brokers) == 3 and all(
                            0 <= b["last_heartbeat_ms_ago"] < 1000 for b in brokers):
                    return
            await asyncio.sleep(0.05)
    finally:
        if conn is not None:
            await conn.close()
    raise TimeoutError("cluster did not settle")


async def produce(bootstrap: str, acks: Acks, stop: asyncio.Event) -> None:
    value = b"x" * 100
    async with Producer(bootstrap, acks="all", linger_ms=5) as producer:
        pending: set[asyncio.Future[Any]] = set()

        def done(fut: asyncio.Future[Any]) -> None:
            pending.discard(fut)
            if fut.cancelled() or fut.exception() is not None:
                acks.errors += 1
            else:
                acks.times.append(time.time())

        while not stop.is_set():
            while len(pending) >= IN_FLIGHT:
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            handle = await producer.send_many(TOPIC, [value] * CHUNK)
            fut = asyncio.ensure_future(_wait(handle))
            pending.add(fut)
            fut.add_done_callback(done)
        if pending:
            await asyncio.wait(pending, timeout=30)


async def _wait(handle: Any) -> None:
    await handle


def breakdown(cluster: ProcessCluster, k: Kill, active_wall: float) -> None:
    new = cluster.nodes[k.new_controller]
    t = k.killed_at
    left = [first_line_after(cluster.nodes[c].log_path, t, pat)
            for c in cluster.controller_ids if c != k.victim
            for pat in ("raft role PRE_CANDIDATE", "raft role CANDIDATE")]
    left_t = min((x for x in left if x is not None), default=None)
    lead_t = first_line_after(new.log_path, t, "raft role LEADER")
    act_t = first_line_after(new.log_path, t, "is the active controller")
    if left_t is not None:
        k.detect_s = left_t - t
    if left_t is not None and lead_t is not None:
        k.elect_s = lead_t - left_t
    if lead_t is not None and act_t is not None:
        k.activate_s = act_t - lead_t
    seen = [first_line_after(cluster.nodes[b].log_path, act_t or active_wall,
                             f"heartbeat answered by controller {k.new_controller} ")
            for b in cluster.broker_ids]
    if act_t is not None and all(s is not None for s in seen):
        k.brokers_s = max(s for s in seen if s is not None) - act_t


async def raft_terms(cluster: ProcessCluster) -> dict[int, int]:
    terms = {}
    for cid in cluster.controller_ids:
        conn = await open_conn(cluster.nodes[cid].port)
        if conn is None:
            continue
        try:
            body = await conn.request(ApiKey.RAFT_STATUS, {}, timeout_ms=1000)
            terms[cid] = int(body["term"])
        except DmqError:
            pass
        finally:
            await conn.close()
    return terms


def role_lines(cluster: ProcessCluster, t0: float, t1: float) -> list[str]:
    out = []
    for cid in cluster.controller_ids:
        text = cluster.nodes[cid].log_path.read_text(errors="replace")
        for line in text.splitlines():
            t = _log_time(line)
            if t is not None and t0 <= t <= t1 and "raft role" in line:
                out.append(line)
    return out


async def partition_states(bootstrap: str) -> dict[int, tuple[int, int, tuple[int, ...]]]:
    """partition -> (leader, leader epoch, ISR) of the benchmark topic."""
    async with Admin(bootstrap) as admin:
        t = (await admin.metadata([TOPIC])).topics[TOPIC]
        return {p: (i.leader, i.leader_epoch, tuple(sorted(i.isr)))
                for p, i in t.partitions.items()}


async def steady(cluster: ProcessCluster, acks: Acks, seconds: float) -> str:
    """Produce for `seconds` without faults; how many controller elections and partition
    leader or ISR changes happened meanwhile."""
    before = await raft_terms(cluster)
    parts0 = await partition_states(cluster.bootstrap)
    n0, t0 = len(acks.times), time.time()
    await asyncio.sleep(seconds)
    t1 = time.time()
    after = await raft_terms(cluster)
    parts1 = await partition_states(cluster.bootstrap)
    lines = role_lines(cluster, t0, t1)
    batches = len(acks.times) - n0
    moved = {p: (parts0[p], parts1.get(p)) for p in parts0 if parts0[p] != parts1.get(p)}
    return (f"steady load: {seconds:.0f} s of acks=all production without faults "
            f"({batches * CHUNK / (t1 - t0):,.0f} records/s, longest gap between acks "
            f"{acks.longest_gap(t0, t1) * 1000:.0f} ms): raft terms {before} -> {after}, "
            f"{len(lines)} role changes; partitions whose leader, leader epoch or ISR "
            f"changed: {len(moved)} of {len(parts0)}"
            + "".join(f"\n    partition {p}: (leader, epoch, ISR) {a} -> {b}"
                      for p, (a, b) in moved.items())
            + "".join(f"\n    {x}" for x in lines))


async def run(args: argparse.Namespace, echo: Callable[[str], None] = print) -> list[Kill]:
    settings: dict[str, Any] = {}
    for kv in args.setting:
        key, _, val = kv.partition("=")
        settings[key] = int(val) if val.lstrip("-").isdigit() else val
    kills: list[Kill] = []
    with ProcessCluster(controllers=3, brokers=3, settings=settings) as cluster:
        cluster.start()
        cid, term = await active_controller(cluster)
        await ensure_topic(cluster.bootstrap, TOPIC, 3, 3, timeout_s=60)
        acks = Acks()
        stop = asyncio.Event()
        producer = asyncio.ensure_future(produce(cluster.bootstrap, acks, stop))
        try:
            if args.steady:
                await settled(cluster, cid)
                echo(await steady(cluster, acks, args.steady))
            for i in range(args.kills):
                await settled(cluster, cid)
                await asyncio.sleep(args.pause)
                k = Kill(cid, time.time())
                t0 = time.monotonic()
                cluster.kill(cid, signal.SIGKILL)
                new, term = await active_controller(cluster, newer_than=term)
                k.active_s = time.monotonic() - t0
                k.new_controller = new
                active_wall = k.killed_at + k.active_s
                await asyncio.sleep(STALL_AFTER_S)
                k.stall_s = acks.longest_gap(k.killed_at, active_wall + STALL_AFTER_S)
                k.quiet_stall_s = acks.longest_gap(k.killed_at - args.pause, k.killed_at)
                breakdown(cluster, k, active_wall)
                kills.append(k)
                echo(f"kill {i + 1}: controller {k.victim} -> {new} (term {term}) active "
                      f"after {k.active_s * 1000:.0f} ms [detect {k.detect_s * 1000:.0f}, "
                      f"elect {k.elect_s * 1000:.0f}, activate {k.activate_s * 1000:.0f}; "
                      f"brokers switched {k.brokers_s * 1000:.0f} ms later]; producer stall "
                     f"{k.stall_s * 1000:.0f} ms (quiet {k.quiet_stall_s * 1000:.0f} ms)")
                cluster.start(k.victim)
                cid = new
            if producer.done():
                producer.result()
        finally:
            stop.set()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer, 40)
        echo(f"producer: {len(acks.times)} batches of {CHUNK} acknowledged, "
             f"{acks.errors} failed")
    return kills


def summary(kills: list[Kill]) -> list[str]:
    def ms(xs: list[float]) -> str:
        xs = [x * 1000 for x in xs if x == x]
        if not xs:
            return "n/a"
        return f"median {statistics.median(xs):.0f} ms, max {max(xs):.0f} ms"

    return [
        f"controller failover, {len(kills)} kill -9s of the active controller "
        f"(3 controllers, 3 brokers, acks=all producer running):",
        f"  kill -> new active controller: {ms([k.active_s for k in kills])}",
        f"    detection (kill -> a follower campaigns): {ms([k.detect_s for k in kills])}",
        f"    election (-> leader):                    {ms([k.elect_s for k in kills])}",
        f"    activation (no-op + barrier commit):      {ms([k.activate_s for k in kills])}",
        f"  brokers switched (after active):           {ms([k.brokers_s for k in kills])}",
        f"  longest producer stall:                    {ms([k.stall_s for k in kills])} "
        f"(quiet: {ms([k.quiet_stall_s for k in kills])})",
    ]


def run_all_case(kills: int, echo: Callable[[str], None]) -> tuple[str, list[float]]:
    """The `failover` case of benchmarks/run_all.py: its note and the kill -> active
    seconds of each kill."""
    args = argparse.Namespace(kills=kills, pause=1.0, setting=[], steady=0.0)
    done = asyncio.run(run(args, echo))

    def ms(xs: list[float]) -> str:
        xs = [x * 1000 for x in xs if x == x]
        return f"{statistics.median(xs):.0f}/{max(xs):.0f} ms" if xs else "n/a"

    note = (f"kill -9 of the active controller -> new one active, median/max of "
            f"{len(done)}: {ms([k.active_s for k in done])}; longest acks=all produce stall "
            f"{ms([k.stall_s for k in done])}")
    return note, [k.active_s for k in done]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--pause", type=float, default=2.0,
                    help="seconds of steady production before each kill")
    ap.add_argument("--steady", type=float, default=0.0, metavar="S",
                    help="first produce S seconds without faults and count elections")
    ap.add_argument("--quick", action="store_true", help="3 kills, short pauses")
    ap.add_argument("--setting", action="append", default=[], metavar="KEY=VALUE",
                    help="cluster setting for every node (repeatable)")
    args = ap.parse_args(argv)
    if args.quick:
        args.kills, args.pause = min(args.kills, 3), 0.3
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}, "
          f"{os.cpu_count()} cpus", flush=True)
    kills = asyncio.run(run(args, lambda line: print(line, flush=True)))
    for line in summary(kills):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
