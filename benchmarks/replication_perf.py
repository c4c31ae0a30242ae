"""Replication cost of acks=all RF=3 (issue 20, item 5): CPU per record of every
process (the partition's leader, its two followers, the controller, the client) and
the fetch requests the leader answered per produce request (the followers' fetches;
with `--mode e2e` the consumer's as well), over `--runs` runs of produce_perf's batch
API (or, with `--mode e2e`, its paced end-to-end latency run).

    .venv/bin/python benchmarks/replication_perf.py --num-records 500000 --runs 3
    .venv/bin/python benchmarks/replication_perf.py --mode e2e --num-records 30000 \\
        --throughput 10000 --linger-ms 0 --runs 3

`--acks 1 --replication-factor 1` gives the leader's own cost without replication.
Starts a private cluster of 1 controller and 3 brokers, one topic of one partition
with RF=3, and stops it afterwards. Fetches and produce requests are read from each
broker's /metrics before and after a run (counted per request, never per record).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import produce_perf  # noqa: E402
from perf_common import (  # noqa: E402
    ensure_topic_on,
    format_latency,
    install_uvloop,
    proc_cpu_s,
    versions_banner,
)

from dmq.cli.dev import DevCluster, free_base_port  # noqa: E402
from dmq.client.admin import Admin  # noqa: E402

METRICS = ("dmq_broker_fetch_requests", "dmq_broker_produce_requests")


async def _metrics(host: str, port: int) -> dict[str, float]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
                 .encode())
    raw = await reader.read()
    writer.close()
    out = dict.fromkeys(METRICS, 0.0)
    for line in raw.decode(errors="replace").splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0].removesuffix("_total")
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


def _sys_s(pid: int) -> float:
    """System (kernel) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[12]) / os.sysconf("SC_CLK_TCK")


async def _leader(bootstrap: str, topic: str) -> int:
    async with Admin(bootstrap) as admin:
        desc = await admin.describe_topics([topic])
    return desc[topic].partitions[0].leader


async def main(args: argparse.Namespace) -> None:
    print(versions_banner())
    root = Path(tempfile.mkdtemp(prefix="dmq-repl-perf-"))
    cluster = DevCluster(root, 1, 3, free_base_port(1, 3), quiet=True, echo=lambda s: None)
    pargs = produce_perf.parse_args(
        ["--topic", args.topic, "--num-records", str(args.num_records), "--record-size",
         str(args.record_size), "--acks", args.acks, "--linger-ms", str(args.linger_ms),
         "--throughput", str(args.throughput), "--mode", args.mode, "--api", "batch"])
    try:
        await cluster.start()
        bs = cluster.bootstrap
        await ensure_topic_on(bs, args.topic, 1, args.replication_factor, 30)
        leader = await _leader(bs, args.topic)
        nodes = {n.node_id: n for n in cluster.nodes if n.proc is not None}
        role = {i: ("leader" if i == leader else "follower" if "broker" in n.role
                    else "controller") for i, n in nodes.items()}  # RF=1: idle "followers"
        print(f"# leader {leader}; {args.num_records} records of {args.record_size} B, "
              f"acks={args.acks} RF={args.replication_factor}, mode {args.mode}", flush=True)
        fn = produce_perf.run_e2e if args.mode == "e2e" else produce_perf.run_produce_batch
        await fn(bs, produce_perf.parse_args(
            ["--topic", args.topic, "--num-records", str(max(1000, args.num_records // 10)),
             "--acks", args.acks, "--linger-ms", str(args.linger_ms), "--throughput",
             str(args.throughput), "--mode", args.mode]))  # warm-up
        runs = []
        for i in range(args.runs):
            cpu0 = {k: proc_cpu_s(n.proc.pid) for k, n in nodes.items()}  # type: ignore[union-attr]
            sys0 = {k: _sys_s(n.proc.pid) for k, n in nodes.items()}  # type: ignore[union-attr]
            m0 = {k: await _metrics(cluster.host, nodes[k].port) for k in nodes
                  if role[k] != "controller"}
            c0 = time.process_time()
            r = await fn(bs, pargs)
            client = time.process_time() - c0
            cpu1 = {k: proc_cpu_s(n.proc.pid) for k, n in nodes.items()}  # type: ignore[union-attr]
            sys1 = {k: _sys_s(n.proc.pid) for k, n in nodes.items()}  # type: ignore[union-attr]
            m1 = {k: await _metrics(cluster.host, nodes[k].port) for k in m0}
            n = args.num_records
            per = {k: (cpu1[k] - cpu0[k]) / n * 1e6 for k in nodes}
            brokers_cpu = sum(cpu1[k] - cpu0[k] for k in nodes if role[k] != "controller")
            brokers_sys = sum(sys1[k] - sys0[k] for k in nodes if role[k] != "controller")
            fetches = m1[leader][METRICS[0]] - m0[leader][METRICS[0]]
            produces = m1[leader][METRICS[1]] - m0[leader][METRICS[1]]
            row = {"records_s": r["records_s"], "client_us": client / n * 1e6,
                   "leader_us": per[leader],
                   "followers_us": sum(v for k, v in per.items() if role[k] == "follower"),
                   "controller_us": sum(v for k, v in per.items() if role[k] == "controller"),
                   "brokers_sys_pct": brokers_sys / max(brokers_cpu, 1e-9) * 100,
                   "produce_requests": produces, "fetches": fetches,
                   "fetches_per_produce": fetches / max(produces, 1),
                   **{k: v for k, v in r.items() if k in ("p50", "p99", "p99.9", "max")}}
            runs.append(row)
            print(_line(f"run {i + 1}", row), flush=True)
        if len(runs) > 1:
            print(_line(f"median of {len(runs)}",
                        {k: statistics.median(x[k] for x in runs) for k in runs[0]}))
    finally:
        await cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def _line(label: str, r: dict[str, float]) -> str:
    lat = {k: r[k] for k in ("p50", "p99", "p99.9", "max") if k in r}
    return (f"{label}: {r['records_s']:,.0f} records/s; CPU us/record leader "
            f"{r['leader_us']:.2f}, followers {r['followers_us']:.2f} (both), controller "
            f"{r['controller_us']:.2f}, client {r['client_us']:.2f} (brokers' kernel share "
            f"{r['brokers_sys_pct']:.0f}%); produce requests "
            f"{r['produce_requests']:.0f}, fetches at the leader {r['fetches']:.0f} "
            f"({r['fetches_per_produce']:.2f} per produce)"
            + (f"; latency {format_latency(lat)}" if lat else ""))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topic", default="repl")
    ap.add_argument("--num-records", type=int, default=500_000)
    ap.add_argument("--record-size", type=int, default=100)
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--throughput", type=float, default=-1)
    ap.add_argument("--mode", choices=["produce", "e2e"], default="produce")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--acks", choices=["1", "all"], default="all")
    ap.add_argument("--replication-factor", type=int, choices=[1, 2, 3], default=3,
                    help="RF=1 acks=1: the leader's own cost without replication")
    return ap.parse_args(argv)


if __name__ == "__main__":
    install_uvloop()
    asyncio.run(main(parse_args()))
