"""The cost of TLS (issue 19): produce and consume throughput of the same cluster shape
in plaintext and over TLS (and optionally TLS + SASL SCRAM with the authorizer on, as
`dmq dev --secure`), side by side in one run.

    .venv/bin/python benchmarks/tls_perf.py                      # 3 runs, ~1-2 minutes
    .venv/bin/python benchmarks/tls_perf.py --modes plaintext,tls,tls-scram --runs 5
    .venv/bin/python benchmarks/tls_perf.py --records-100b 20000 --records-100k 50 --runs 1

One combined node per mode (`dmq server` processes on 127.0.0.1, data in a temporary
folder), topic RF=1 with 1 partition, every cluster started before the first
measurement and stopped at the end (also on errors). Each run measures every case in
every mode one after the other (plaintext, tls, ... then the next case), so that a
change of the machine's load falls on all modes alike; the figures are the medians of
`--runs` runs after one untimed warm-up per case and mode.

Cases: produce = `Producer.send_many` (the fast path), acks=1, 100 B and 100 KiB
values; consume = `Consumer.getmany_batches` (values only) of a filled topic from
offset 0. Per case and mode: records/s, MB/s, the client's and the broker's CPU time
per record, and the ratio mode / plaintext of MB/s. Every run is bounded in records
and in seconds (`RUN_TIMEOUT_S`). Nothing here asserts a speed.

`tls`: the node's certificate from a throwaway CA (`dmq.cli.dev.secure_setup`), TLS on
its listener, the client verifies it; no SASL, no authorizer. `tls-scram`: all of
`dmq dev --secure` (SCRAM-SHA-256 login as the superuser, ACLs enforced).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import consume_perf  # noqa: E402
import produce_perf  # noqa: E402
from perf_common import (  # noqa: E402
    CpuMeter,
    bounded_run,
    install_uvloop,
    versions_banner,
)

from dmq.cli.dev import DevCluster, free_base_port, secure_setup  # noqa: E402
from dmq.cli.dev import ensure_topic as ensure_topic_on  # noqa: E402
from dmq.client.consumer import Consumer  # noqa: E402
from dmq.security.client_config import ClientSecurity  # noqa: E402
from dmq.security.tls import client_context  # noqa: E402

MODES = ("plaintext", "tls", "tls-scram")
BIG = 100 * 1024
RUN_TIMEOUT_S = 120.0
CASES = ("produce-100B", "produce-100KiB", "consume-100B", "consume-100KiB")
TLS_KEYS = ("ssl.certificate.location", "ssl.key.location", "ssl.ca.location",
            "ssl.client.auth")


@dataclass
class ModeCluster:
    mode: str
    cluster: DevCluster
    security: ClientSecurity | None

    def applied(self) -> contextlib.AbstractContextManager[None]:
        return self.security.applied() if self.security else contextlib.nullcontext()


@contextlib.asynccontextmanager
async def mode_cluster(mode: str) -> AsyncIterator[ModeCluster]:
    """A 1-node cluster (combined controller+broker) in `mode`, with the client
    security to reach it."""
    root = Path(tempfile.mkdtemp(prefix=f"dmq-tls-perf-{mode}-"))
    cluster = DevCluster(root, 1, 1, free_base_port(1, 1), quiet=True, echo=lambda s: None)
    security: ClientSecurity | None = None
    try:
        if mode != "plaintext":
            sec = secure_setup(root, [n.node_id for n in cluster.nodes], cluster.host)
            if mode == "tls":
                cluster.settings.update({k: sec.settings[k] for k in TLS_KEYS})
                security = ClientSecurity(ssl=client_context(str(sec.cafile)))
            else:
                cluster.settings.update(sec.settings)
                security = sec.client
            cluster.security = security
        await cluster.start(timeout_s=60)
        yield ModeCluster(mode, cluster, security)
    finally:
        await cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


async def bounded(coro: Awaitable[Any], what: str, timeout_s: float = RUN_TIMEOUT_S) -> Any:
    return await bounded_run(coro, what, timeout_s)


def _produce_args(topic: str, n: int, size: int) -> argparse.Namespace:
    big = size >= BIG
    return produce_perf.parse_args([
        "--topic", topic, "--num-records", str(n), "--record-size", str(size), "--acks", "1",
        "--batch-size", str(1024 * 1024 if big else 65_536), "--idempotence", "off",
        "--chunk", str(16 if big else 5000)])


def _consume_args(topic: str, n: int, size: int) -> argparse.Namespace:
    return consume_perf.parse_args(["--topic", topic, "--num-records", str(n),
                                    "--record-size", str(size), "--api", "batch",
                                    "--batch-size", str(1024 * 1024 if size >= BIG else 65_536)])


@dataclass
class Plan:
    records_100b: int
    records_100k: int
    runs: int
    modes: tuple[str, ...] = ("plaintext", "tls")
    cases: tuple[str, ...] = CASES

    def records(self, case: str) -> int:
        return self.records_100k if case.endswith("KiB") else self.records_100b


@dataclass
class Results:
    plan: Plan
    runs: dict[tuple[str, str], list[dict[str, float]]] = field(default_factory=dict)

    def median(self, case: str, mode: str, key: str) -> float:
        xs = [r[key] for r in self.runs.get((case, mode), []) if key in r]
        return statistics.median(xs) if xs else float("nan")

    def ratio(self, case: str, mode: str) -> float:
        base = self.median(case, "plaintext", "mb_s")
        return self.median(case, mode, "mb_s") / base if base else float("nan")


async def _once(mc: ModeCluster, case: str, n: int) -> dict[str, float]:
    """One timed run of `case` (n records) against the mode's cluster."""
    kind, size_name = case.split("-")
    size = BIG if size_name == "100KiB" else 100
    bs = mc.cluster.bootstrap
    with mc.applied():
        meter = CpuMeter(mc.cluster.pids())
        if kind == "produce":
            r = await bounded(produce_perf.run_produce_batch(bs, _produce_args(
                f"p{size_name}", n, size)), f"{mc.mode} {case}")
            if r.get("errors"):
                raise RuntimeError(f"{mc.mode} {case}: {int(r['errors'])} records failed")
        else:
            topic = f"c{size_name}"
            args = _consume_args(topic, n, size)
            async with Consumer(bs) as probe:
                tps = await probe.topic_partitions(topic)
            r = await bounded(consume_perf.run_once(bs, args, tps), f"{mc.mode} {case}")
        return {**r, **meter.per_record(n)}


async def _prepare(mc: ModeCluster, plan: Plan) -> None:
    """Topics (RF=1, 1 partition) and the filled consume topics of one mode."""
    bs = mc.cluster.bootstrap
    with mc.applied():
        for size_name in ("100B", "100KiB"):
            await ensure_topic_on(bs, f"p{size_name}", 1, 1, 60)
            await ensure_topic_on(bs, f"c{size_name}", 1, 1, 60)
        for case in plan.cases:
            kind, size_name = case.split("-")
            if kind != "consume":
                continue
            size = BIG if size_name == "100KiB" else 100
            topic = f"c{size_name}"
            args = _consume_args(topic, plan.records(case), size)
            async with Consumer(bs) as probe:
                tps = await probe.topic_partitions(topic)
            await bounded(consume_perf.fill(bs, args, tps, 0), f"{mc.mode} fill {topic}")


async def measure(plan: Plan, log: Callable[[str], None]) -> Results:
    """Every mode's cluster up at once; per run, every case in every mode in turn."""
    res = Results(plan)
    async with contextlib.AsyncExitStack() as stack:
        clusters = []
        for mode in plan.modes:
            log(f"starting a 1-node cluster: {mode}")
            clusters.append(await stack.enter_async_context(mode_cluster(mode)))
        for mc in clusters:
            await _prepare(mc, plan)
        for case in plan.cases:  # warm-up: a fifth of a run, untimed
            for mc in clusters:
                await _once(mc, case, max(1, plan.records(case) // 5))
        for i in range(plan.runs):
            for case in plan.cases:
                for mc in clusters:
                    r = await _once(mc, case, plan.records(case))
                    res.runs.setdefault((case, mc.mode), []).append(r)
                    log(f"run {i + 1} {case} {mc.mode}: {r['records_s']:,.0f} records/s, "
                        f"{r['mb_s']:.1f} MB/s, cpu us/record {r['client_us']:.2f} client + "
                        f"{r['nodes_us']:.2f} broker")
    return res


def table(res: Results) -> list[str]:
    head = (f"{'case':<16}{'mode':<11}{'records/s':>12}{'MB/s':>9}{'vs plain':>10}"
            f"{'client us/rec':>15}{'broker us/rec':>15}  runs (MB/s)")
    out = [head, "-" * len(head)]
    for case in res.plan.cases:
        for mode in res.plan.modes:
            runs = res.runs.get((case, mode), [])
            if not runs:
                continue
            ratio = res.ratio(case, mode)
            out.append(
                f"{case:<16}{mode:<11}{res.median(case, mode, 'records_s'):>12,.0f}"
                f"{res.median(case, mode, 'mb_s'):>9.1f}"
                f"{'-' if mode == 'plaintext' else f'{ratio:.2f}':>10}"
                f"{res.median(case, mode, 'client_us'):>15.2f}"
                f"{res.median(case, mode, 'nodes_us'):>15.2f}  "
                + " ".join(f"{r['mb_s']:.1f}" for r in runs))
    return out


def target_lines(res: Results) -> list[str]:
    """Issue 19: TLS costs at most 25% of plaintext throughput for 100 KiB records."""
    out = []
    for case in ("produce-100KiB", "consume-100KiB"):
        if (case, "tls") in res.runs and (case, "plaintext") in res.runs:
            r = res.ratio(case, "tls")
            out.append(f"  {f'TLS {case} >= 75% of plaintext MB/s':<58} "
                       f"{'met' if r >= 0.75 else 'NOT met':<8} {r:.2f}")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", default="plaintext,tls",
                    help=f"comma-separated, plaintext first: {', '.join(MODES)}")
    ap.add_argument("--records-100b", type=int, default=1_000_000)
    ap.add_argument("--records-100k", type=int, default=3_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cases", default=",".join(CASES))
    args = ap.parse_args(argv)
    modes = tuple(args.modes.split(","))
    if modes[0] != "plaintext" or set(modes) - set(MODES):
        ap.error(f"--modes: plaintext first, then any of {', '.join(MODES[1:])}")
    cases = tuple(args.cases.split(","))
    if set(cases) - set(CASES):
        ap.error(f"--cases: any of {', '.join(CASES)}")
    args.plan = Plan(args.records_100b, args.records_100k, args.runs, modes, cases)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_uvloop()
    load0 = os.getloadavg()

    def log(msg: str) -> None:
        print(f"# [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    started = time.monotonic()
    res = asyncio.run(measure(args.plan, log))
    load1 = os.getloadavg()
    print(versions_banner())
    print(f"# {os.cpu_count()} CPUs; load average at the start "
          f"{' '.join(f'{x:.2f}' for x in load0)}, at the end "
          f"{' '.join(f'{x:.2f}' for x in load1)}; {time.monotonic() - started:.0f} s")
    plan = args.plan
    sizes = [f"{size} x {n:,}" for size, n in (("100 B", plan.records_100b),
                                                  ("100 KiB", plan.records_100k))
             if any(c.endswith(size.replace(" ", "")) for c in plan.cases)]
    print(f"# 1 combined node per mode, RF=1, 1 partition, acks=1; {' and '.join(sizes)} "
          f"records per run; median of {plan.runs} run(s)")
    for line in table(res):
        print(line)
    lines = target_lines(res)
    if lines:
        print("issue 19 target (medians of this run):")
        for line in lines:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
