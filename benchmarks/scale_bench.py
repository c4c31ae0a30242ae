"""Idle cost of many partitions: RSS and CPU of 3 brokers hosting an N-partition RF=3 topic.

Starts a private cluster (real `dmq server` processes, `dmq.cli.dev.DevCluster`, one
controller by default), measures each broker's RSS, creates one topic of N partitions
with replication factor 3 and times it (until every partition has a leader, and until
every ISR is full), lets the cluster settle, then reads each broker's CPU time from
`/proc/<pid>/stat` over an idle window and its RSS from `/proc/<pid>/status`. Every
process binds 127.0.0.1, keeps its data in a temporary folder and is stopped at the end
(also on errors); the whole run is bounded by --timeout.

    .venv/bin/python benchmarks/scale_bench.py --partitions 1000
    .venv/bin/python benchmarks/scale_bench.py --partitions 10000 --runs 3 --idle 20

`--profile S` samples the main thread of the first broker's event loop for S seconds of
the idle window (`sys._current_frames` every 2 ms, in a thread of that broker: this
file wraps `dmq server` for it) and prints where the non-idle samples were.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from perf_common import proc_cpu_s, proc_rss_mb

SAMPLE_INTERVAL_S = 0.002


def _value(text: str) -> object:
    try:
        return int(text)
    except ValueError:
        return text


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[0]


# ---------------------------------------------------------------------------- profiling


def _profiled_server(out: str, seconds: float, argv: list[str]) -> None:
    """Run `dmq server argv` with a sampler thread of its main thread (in the child),
    which starts sampling when the file `out + ".start"` appears."""
    main_id = threading.get_ident()

    def sample() -> None:
        while not os.path.exists(out + ".start"):
            time.sleep(0.1)
        leaves: collections.Counter[str] = collections.Counter()
        inclusive: collections.Counter[str] = collections.Counter()
        total = idle = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            frame = sys._current_frames().get(main_id)
            total += 1
            if frame is not None:
                leaf = f"{frame.f_code.co_filename}:{frame.f_code.co_name}"
                # idle: the loop waits in epoll (asyncio: selectors.select; uvloop: the
                # C loop, under asyncio.runners.run with no Python frame above it)
                code = frame.f_code
                if ((code.co_name == "select" and "selectors" in code.co_filename)
                        or (code.co_name == "run" and code.co_filename.endswith("runners.py"))):
                    idle += 1
                else:
                    leaves[leaf] += 1
                    seen = set()
                    f: Any = frame
                    while f is not None:
                        key = f"{Path(f.f_code.co_filename).name}:{f.f_code.co_name}"
                        if key not in seen:
                            seen.add(key)
                            inclusive[key] += 1
                        f = f.f_back
            time.sleep(SAMPLE_INTERVAL_S)
        Path(out).write_text(json.dumps({"total": total, "idle": idle,
                                         "leaves": leaves.most_common(25),
                                         "inclusive": inclusive.most_common(40)}))

    threading.Thread(target=sample, daemon=True, name="scale-bench-sampler").start()
    from dmq.cli import main
    sys.argv = ["dmq", "server", *argv]
    main()


# ---------------------------------------------------------------------------- cluster


def _count_dirs(path: Path) -> int:
    try:
        return sum(1 for e in os.scandir(path) if e.is_dir() and not e.name.endswith("-delete"))
    except OSError:
        return 0


async def one_run(args: argparse.Namespace, run: int) -> dict[str, Any]:
    from dmq.cli.dev import DevCluster, ensure_topic, free_base_port
    from dmq.client.admin import Admin

    root = Path(tempfile.mkdtemp(prefix="dmq-scale-"))
    base = free_base_port(args.controllers, 3)
    profile_out = root / "profile.json"
    cluster = DevCluster(root, args.controllers, 3, base, quiet=True, echo=lambda s: None,
                         settings={
                             # RF=3 on 3 brokers: every broker hosts every partition
                             "max.partition.replicas.per.broker": max(4000, args.partitions),
                             **{k: _value(v) for k, v in
                                (s.split("=", 1) for s in args.setting)}})
    if args.profile:
        spawn = cluster._spawn
        first = next(n for n in cluster.nodes if n.role == "broker")

        async def wrapped(n: Any) -> None:
            if n is not first:
                await spawn(n)
                return
            node_dir = root / f"node-{n.node_id}"
            argv = ["--role", n.role, "--node-id", str(n.node_id), "--config",
                    str(cluster.config_path), "--data-dir", str(node_dir)]
            n.log_path = root / f"node-{n.node_id}.log"
            code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                    f"import scale_bench; scale_bench._profiled_server({str(profile_out)!r}, "
                    f"float(sys.argv[1]), sys.argv[2:])")
            with open(n.log_path, "ab") as logf:
                n.proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", code, str(args.profile), *argv,
                    stdout=logf, stderr=asyncio.subprocess.STDOUT)

        cluster._spawn = wrapped  # type: ignore[method-assign]
    try:
        await cluster.start(timeout_s=60)
        brokers = [n for n in cluster.nodes if "broker" in n.role]
        pids = {n.node_id: n.proc.pid for n in brokers if n.proc is not None}
        await asyncio.sleep(2)
        before = {b: proc_rss_mb(p) for b, p in pids.items()}
        t0 = time.monotonic()
        await ensure_topic(cluster.bootstrap, "scale", args.partitions, 3, args.timeout)
        leaders_s = isr_s = None
        async with Admin(cluster.bootstrap) as admin:
            while time.monotonic() - t0 < args.timeout:
                info = (await admin.describe_topics(["scale"])).get("scale")
                if info is not None and len(info.partitions) == args.partitions and all(
                        p.leader >= 0 for p in info.partitions.values()):
                    leaders_s = time.monotonic() - t0
                    break
                await asyncio.sleep(0.2)
            else:
                raise TimeoutError(f"leaders not elected after {args.timeout}s")
        # every broker hosts every partition (RF=3 on 3 brokers): done when each has
        # made every log (counted on disk: asking the brokers, e.g. their /metrics with
        # a line per partition, would load them while they work) and the controller
        # has every ISR full
        async with Admin(cluster.bootstrap) as admin:
            while time.monotonic() - t0 < args.timeout:
                made = [_count_dirs(root / f"node-{n.node_id}" / "partitions") for n in brokers]
                if all(m >= args.partitions for m in made):
                    info = (await admin.describe_topics(["scale"])).get("scale")
                    if info is not None and all(len(p.isr) == 3 and p.leader >= 0
                                                for p in info.partitions.values()):
                        isr_s = time.monotonic() - t0
                        break
                await asyncio.sleep(1.0)
            else:
                raise TimeoutError(f"replicas not all created and in sync after "
                                   f"{args.timeout}s")
        await asyncio.sleep(args.settle)
        if args.profile:
            Path(str(profile_out) + ".start").touch()
        cpu0 = {b: proc_cpu_s(p) for b, p in pids.items()}
        w0 = time.monotonic()
        await asyncio.sleep(args.idle)
        wall = time.monotonic() - w0
        cpu = {b: (proc_cpu_s(p) - cpu0[b]) / wall * 100 for b, p in pids.items()}
        rss = {b: proc_rss_mb(p) for b, p in pids.items()}
        result: dict[str, Any] = {"run": run, "leaders_s": leaders_s, "isr_s": isr_s,
                                  "rss_before": before, "rss": rss, "cpu": cpu,
                                  "load": loadavg()}
        if args.profile:
            deadline = time.monotonic() + args.profile + 30
            while not profile_out.exists() and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            if profile_out.exists():
                result["profile"] = json.loads(profile_out.read_text())
        return result
    finally:
        await cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def show(r: dict[str, Any]) -> None:
    per = "  ".join(f"broker {b}: RSS {r['rss'][b]:.0f} MB (before {r['rss_before'][b]:.0f}), "
                    f"idle CPU {r['cpu'][b]:.1f}%" for b in sorted(r["rss"]))
    print(f"run {r['run']}: leaders in {r['leaders_s']:.1f} s, all replicas in sync in "
          f"{r['isr_s']:.1f} s; "
          f"{per}; load {r['load']}", flush=True)
    prof = r.get("profile")
    if prof:
        busy = prof["total"] - prof["idle"]
        print(f"  profile: {prof['total']} samples, {busy} busy "
              f"({100 * busy / max(1, prof['total']):.1f}%)")
        print("  busy samples by function on the stack (inclusive):")
        for name, n in prof["inclusive"]:
            print(f"    {n:6d}  {name}")
        print("  busy samples by leaf:")
        for name, n in prof["leaves"]:
            print(f"    {n:6d}  {name}")


async def main_async(args: argparse.Namespace) -> None:
    results = []
    for i in range(args.runs):
        r = await asyncio.wait_for(one_run(args, i + 1),
                                   args.timeout + args.settle + args.idle + 120)
        show(r)
        results.append(r)
    cpu = [max(r["cpu"].values()) for r in results]
    rss = [max(r["rss"].values()) for r in results]
    print(f"{args.partitions} partitions RF=3, 3 brokers, {args.runs} run(s): median of the "
          f"busiest broker: idle CPU {statistics.median(cpu):.1f}% of a core, RSS "
          f"{statistics.median(rss):.0f} MB; leaders in "
          f"{statistics.median(r['leaders_s'] for r in results):.1f} s, all replicas in sync in "
          f"{statistics.median(r['isr_s'] for r in results):.1f} s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--partitions", type=int, default=1000)
    ap.add_argument("--controllers", type=int, default=1)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--settle", type=float, default=10.0,
                    help="seconds between full ISRs and the idle window")
    ap.add_argument("--idle", type=float, default=20.0, help="idle window, seconds")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="bound on topic creation until full ISRs, seconds")
    ap.add_argument("--profile", type=float, default=0.0,
                    help="sample the first broker's event loop for this many seconds")
    ap.add_argument("--setting", action="append", default=[],
                    help="cluster setting key=value (repeatable)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    main()
