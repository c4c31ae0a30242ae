"""The benchmark suite of issue 11: dmq and its Python-reachable peers (Redis Streams,
NATS JetStream) on this machine in one invocation, one table.

    .venv/bin/python benchmarks/run_all.py            # full: ~7-9 minutes
    .venv/bin/python benchmarks/run_all.py --quick    # ~2 minutes, smaller counts
    .venv/bin/python benchmarks/run_all.py --smoke    # dmq cases only, tiny counts (CI)
    .venv/bin/python benchmarks/run_all.py --only produce-100B-acks1,consume-100B

Every case runs `--runs` times (default 3) after one untimed warm-up; the table shows
the run with the median records/s (its latencies belong to that run). `ratio` is
dmq / peer for the same case measured in the same invocation. Every process started
here (dmq nodes, redis-server, nats-server) binds 127.0.0.1, keeps its data in a
temporary folder, and is stopped before the suite moves on, also on errors and
timeouts; every run is bounded in records and in seconds.

Cases (issue 11, item 2):
  produce-100B-acks1      1 combined node, topic RF=1, 1 partition, acks=1   vs Redis XADD
                          (pipelines of 1000) and NATS JetStream R1 (async publish)
  produce-100B-acksall    3 brokers (+ controllers), RF=3, acks=all, idempotent
                          vs NATS JetStream R3
  produce-1KiB-acks1      as produce-100B-acks1 with 1 KiB values    vs Redis, NATS R1
  consume-100B            read a filled topic from the beginning (CRC checked, every
                          record decoded)   vs Redis XRANGE of 1000, NATS pull fetch of 1000
  produce-100KiB-acks1    MB/s of 100 KiB records, RF=1   vs a raw Python asyncio (uvloop)
                          TCP socket pair on 127.0.0.1 moving the same bytes in 100 KiB writes
  e2e-10k/s-acksall       paced at 10,000 records/s, acks=all RF=3, linger 0: latency from
                          send() to the consumer (same process) seeing the record
  partitions-N            acks=1 RF=1 single node, records spread round-robin over N
                          partitions (explicit partition per record), N = 1, 10, 100, 1000;
                          latency from the first record of each batch to its ack
  failover                kill -9 of the active controller, 10 times (benchmarks/failover_bench.py;
                          not in --smoke)
  rss-1000-idle           broker RSS (and CPU while idle) of each of 3 brokers hosting a
                          1000-partition RF=3 topic, after it has been idle
  tls-*                   (issue 19; benchmarks/tls_perf.py) produce (send_many, acks=1) and
                          consume (getmany_batches) of 100 B and 100 KiB records, one
                          combined node RF=1 per mode: plaintext, TLS and (not in --smoke)
                          TLS + SASL SCRAM with ACLs on (`dmq dev --secure`), every mode's
                          cluster up at once and the modes measured in turn; `dmq/peer` is
                          mode / plaintext MB/s
  scale                   (issue 23; benchmarks/metadata_scale_bench.py; not in --smoke;
                          ~5-8 minutes) one 10,000-partition RF=3 topic on 3 brokers (2,000
                          with --quick): creation time, idle CPU and RSS per broker, acks=1
                          round-robin over it against 10 partitions of the same cluster, and
                          broker kill -9 restarts until an acks=all record reaches every
                          partition

Kafka-client cases (issue 17; drivers and checks in kafka_perf.py):
  kafka-100B-acks1        librdkafka (kcat -P, or confluent-kafka) into a 1-node cluster's
                          Kafka listener, RF=1, acks=1   vs `redis-benchmark -P 1000 -c 1
                          XADD` against a redis-server without persistence
  kafka-100B-acksall      the same into 1 controller + 3 brokers, RF=3, acks=all
  kafka-consume-100B      librdkafka (kcat -C -e) reading the filled RF=1 topic from
                          offset 0   vs `redis-benchmark -P 1 -c 1 XRANGE s - + COUNT 1000`
  For these rows `cpu us/rec` is the client process (kcat, redis-benchmark) + the
  server processes (dmq nodes, redis-server).

Latency columns: dmq produce = send() to acknowledgement, per record; Redis = one
pipeline of 1000 XADDs, per pipeline; NATS = publish to its ack, per message;
consume = time per getmany/fetch call. `cpu us/rec` = CPU time per record of the
client process + of all dmq node processes together, over the run (on a shared machine
it moves much less than records/s). Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import consume_perf  # noqa: E402
import failover_bench  # noqa: E402
import kafka_perf  # noqa: E402
import metadata_scale_bench  # noqa: E402
import produce_perf  # noqa: E402
import tls_perf  # noqa: E402
from perf_common import (  # noqa: E402
    CpuMeter,
    bounded_run,
    proc_cpu_s,
    proc_rss_mb,
    spread_once,
)

from dmq.cli.dev import (  # noqa: E402
    KAFKA_PORT_OFFSET,
    DevCluster,
    ensure_topic,
    free_base_port,
)
from dmq.client.admin import Admin  # noqa: E402
from dmq.client.consumer import Consumer  # noqa: E402

# ---------------------------------------------------------------------------- sizes


@dataclass(frozen=True)
class Sizes:
    produce_records: int       # dmq produce cases, 100 B
    produce_1k_records: int
    consume_records: int
    big_records: int           # 100 KiB records per run
    e2e_records: int           # at 10,000 records/s
    partition_records: int
    partition_counts: tuple[int, ...]
    idle_partitions: int
    idle_seconds: float
    peer_records: int
    peer_r3_records: int
    peer_1k_records: int
    runs: int
    controllers: int           # controllers of the 3-broker cluster
    kafka_records: int = 0     # kafka-100B-acks1 (and kafka-consume-100B) per run
    kafka_r3_records: int = 0  # kafka-100B-acksall per run
    redis_records: int = 0     # redis-benchmark XADD requests per run
    tls_records: int = 0       # tls-*-100B per run and mode
    tls_big_records: int = 0   # tls-*-100KiB per run and mode
    tls_modes: tuple[str, ...] = ("plaintext", "tls", "tls-scram")


FULL = Sizes(1_000_000, 300_000, 1_000_000, 2_000, 100_000, 300_000, (1, 10, 100, 1000),
             1000, 10.0, 200_000, 200_000, 200_000, 3, 3, 2_000_000, 1_000_000, 2_000_000,
             1_000_000, 2_000)
QUICK = Sizes(200_000, 50_000, 200_000, 500, 20_000, 50_000, (1, 10, 100, 1000),
              1000, 3.0, 50_000, 30_000, 30_000, 3, 1, 500_000, 300_000, 500_000,
              200_000, 500)
SMOKE = Sizes(3_000, 1_000, 3_000, 20, 500, 2_000, (1, 10), 20, 1.0, 0, 0, 0, 1, 1,
              3_000, 2_000, 0, 3_000, 20, ("plaintext", "tls"))

CASE_NAMES = ("produce-100B-acks1", "produce-100B-acksall", "produce-1KiB-acks1",
              "consume-100B", "produce-100KiB-acks1", "e2e-10k/s-acksall", "partitions",
              "rss-1000-idle", "failover", "scale", "tls", *kafka_perf.KAFKA_CASES)

RUN_TIMEOUT_S = 180.0  # any single timed run
BIG = 100 * 1024

# ---------------------------------------------------------------------------- rows


@dataclass
class Row:
    case: str
    system: str
    records_s: float = float("nan")
    mb_s: float = float("nan")
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    p999_ms: float = float("nan")
    note: str = ""
    runs: list[float] = field(default_factory=list)  # records/s (or the value) of each run
    is_dmq: bool = False
    ratio: float = float("nan")
    client_us: float = float("nan")  # CPU time per record: this (client) process
    nodes_us: float = float("nan")   # CPU time per record: every dmq node process together


def median_row(case: str, system: str, results: list[dict[str, float]], note: str = "",
               key: str = "records_s") -> Row:
    """The run with the median `key` (its latencies stay consistent with it)."""
    ordered = sorted(results, key=lambda r: r[key])
    m = ordered[len(ordered) // 2]
    nan = float("nan")
    return Row(case, system, m.get("records_s", nan), m.get("mb_s", nan), m.get("p50", nan),
               m.get("p99", nan), m.get("p99.9", nan), note, [r[key] for r in results],
               is_dmq=True, client_us=statistics.median(r.get("client_us", nan) for r in results),
               nodes_us=statistics.median(r.get("nodes_us", nan) for r in results))


def _fmt(v: float, spec: str) -> str:
    return "-" if v != v else format(v, spec)  # NaN -> "-"


def print_table(rows: list[Row], out: Callable[[str], None] = print) -> None:
    head = (f"{'case':<24}{'system':<30}{'records/s':>12}{'MB/s':>9}{'p50 ms':>9}"
            f"{'p99 ms':>9}{'p99.9 ms':>10}{'dmq/peer':>10}{'cpu us/rec':>14}  note")
    out(head)
    out("-" * len(head))
    for r in rows:
        cpu = "-" if r.client_us != r.client_us else (
            f"{r.client_us:.2f}+{r.nodes_us:.2f}")
        out(f"{r.case:<24}{r.system:<30}{_fmt(r.records_s, ',.0f'):>12}{_fmt(r.mb_s, '.1f'):>9}"
            f"{_fmt(r.p50_ms, '.2f'):>9}{_fmt(r.p99_ms, '.2f'):>9}{_fmt(r.p999_ms, '.2f'):>10}"
            f"{_fmt(r.ratio, '.2f'):>10}{cpu:>14}  {r.note}")


def fill_ratios(rows: list[Row]) -> None:
    """dmq / peer on every peer row (by records/s, or MB/s for the MB/s cases)."""
    for r in rows:
        if r.is_dmq:
            continue
        mine = next((d for d in rows if d.is_dmq and d.case == r.case), None)
        if mine is None:
            continue
        if r.case.startswith("produce-100KiB"):
            r.ratio = mine.mb_s / r.mb_s if r.mb_s else float("nan")
        else:
            r.ratio = mine.records_s / r.records_s if r.records_s else float("nan")


# ---------------------------------------------------------------------------- machine


def _cmd_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        return out.strip().splitlines()[0] if out.strip() else "?"
    except (OSError, subprocess.SubprocessError):
        return "not installed"


def machine_banner() -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    pkgs = []
    for pkg in ("dmq", "msgpack", "crc32c", "uvloop", "redis", "nats-py"):
        try:
            pkgs.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pkgs.append(f"{pkg} -")
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    redis_bin = shutil.which("redis-server") or "/usr/bin/redis-server"
    nats_bin = shutil.which("nats-server") or "nats-server"
    return [
        f"machine: {platform.node()}, {cpu}, {os.cpu_count()} CPUs, {mem} RAM, "
        f"{platform.system()} {platform.release()}, load average {load}",
        f"python {platform.python_version()} ({platform.machine()}), " + ", ".join(pkgs),
        f"peers: {_cmd_version([redis_bin, '--version'])}; "
        f"nats-server {_cmd_version([nats_bin, '--version'])}",
    ]


# ---------------------------------------------------------------------------- helpers


@contextlib.asynccontextmanager
async def dev_cluster(controllers: int, brokers: int, kafka: bool = False) -> Any:
    """A private cluster; with `kafka`, brokers also listen for Kafka clients from base
    port + 20 (as `dmq dev` does)."""
    root = Path(tempfile.mkdtemp(prefix="dmq-bench-"))
    base = free_base_port(controllers, brokers, kafka)
    cluster = DevCluster(root, controllers, brokers, base, quiet=True, echo=lambda s: None,
                         kafka_base_port=base + KAFKA_PORT_OFFSET if kafka else None)
    try:
        await cluster.start(timeout_s=60)
        yield cluster
    finally:
        await cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


async def create_topic(bootstrap: str, topic: str, partitions: int, rf: int,
                       timeout_s: float = 60) -> None:
    """Create the topic (unless it exists) and wait until every partition has a leader."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    await ensure_topic(bootstrap, topic, partitions, rf, timeout_s)
    async with Admin(bootstrap) as admin:
        while True:
            info = (await admin.describe_topics([topic])).get(topic)
            if info is not None and len(info.partitions) == partitions and all(
                    p.leader >= 0 for p in info.partitions.values()):
                return
            if loop.time() > deadline:
                raise TimeoutError(f"{topic}: leaders not elected after {timeout_s}s")
            await asyncio.sleep(0.2)


def perf_args(argv: list[str]) -> argparse.Namespace:
    return produce_perf.parse_args(argv)


async def bounded(coro: Awaitable[Any], what: str, timeout_s: float = RUN_TIMEOUT_S) -> Any:
    return await bounded_run(coro, what, timeout_s)


def log(msg: str) -> None:
    print(f"# [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def measured(pids: list[int], records: int, coro: Awaitable[dict[str, float]], what: str,
                   timeout_s: float = RUN_TIMEOUT_S) -> dict[str, float]:
    meter = CpuMeter(pids)
    r = await bounded(coro, what, timeout_s)
    return {**r, **meter.per_record(records)}


# ---------------------------------------------------------------------------- dmq cases


async def produce_case(cluster: DevCluster, topic: str, n: int, size: int, acks: str,
                       runs: int, case: str, system: str, batch_size: int = 65_536,
                       linger_ms: int = 5) -> Row:
    bootstrap = cluster.bootstrap
    argv = ["--topic", topic, "--num-records", str(n), "--record-size", str(size),
            "--acks", acks, "--batch-size", str(batch_size), "--linger-ms", str(linger_ms)]
    args = perf_args(argv)
    warm = perf_args(argv[:2] + ["--num-records", str(max(1, n // 5))] + argv[4:])
    await bounded(produce_perf.run_produce(bootstrap, warm), f"{case} warm-up")
    results = []
    for i in range(runs):
        r = await measured(cluster.pids(), n, produce_perf.run_produce(bootstrap, args), case)
        log(f"{case} run {i + 1}: {r['records_s']:,.0f} records/s, {r['mb_s']:.1f} MB/s, "
            f"cpu us/record {r['client_us']:.2f} client + {r['nodes_us']:.2f} nodes"
            + (f", {int(r['errors'])} errors" if r.get("errors") else ""))
        results.append(r)
    return median_row(case, system, results, f"{n:,} records x {runs} runs")


async def consume_case(cluster: DevCluster, topic: str, n: int, runs: int, system: str) -> Row:
    bootstrap = cluster.bootstrap
    args = consume_perf.parse_args(["--topic", topic, "--num-records", str(n),
                                    "--record-size", "100", "--api", "records"])
    async with Consumer(bootstrap) as probe:
        tps = await probe.topic_partitions(topic)
    await bounded(consume_perf.fill(bootstrap, args, tps, 0), "consume fill")
    await bounded(consume_perf.run_once(bootstrap, args, tps), "consume warm-up")
    results = []
    for i in range(runs):
        r = await measured(cluster.pids(), n, consume_perf.run_once(bootstrap, args, tps),
                           "consume")
        log(f"consume run {i + 1}: {r['records_s']:,.0f} records/s, {r['mb_s']:.1f} MB/s, "
            f"cpu us/record {r['client_us']:.2f} client + {r['nodes_us']:.2f} nodes")
        results.append(r)
    return median_row("consume-100B", system, results, f"{n:,} records from offset 0")


async def loopback_once(total_bytes: int, chunk: int) -> dict[str, float]:
    """Raw asyncio TCP on 127.0.0.1: one client writes `chunk`-byte buffers (awaiting
    drain), one server protocol counts what arrives; timed until all has arrived."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    received = 0

    class Sink(asyncio.Protocol):
        def data_received(self, data: bytes) -> None:
            nonlocal received
            received += len(data)
            if received >= total_bytes and not done.done():
                done.set_result(None)

    server = await loop.create_server(Sink, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        buf = b"x" * chunk
        t0 = time.perf_counter()
        sent = 0
        while sent < total_bytes:
            writer.write(buf)
            sent += chunk
            await writer.drain()
        await asyncio.wait_for(done, 60)
        dt = time.perf_counter() - t0
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()
    return {"records_s": total_bytes / chunk / dt, "mb_s": total_bytes / dt / 1e6}


async def single_node_section(sz: Sizes, wanted: set[str], rows: list[Row]) -> None:
    if not wanted & {"produce-100B-acks1", "produce-1KiB-acks1", "consume-100B",
                     "produce-100KiB-acks1", "partitions"}:
        return
    log("starting a 1-node dmq cluster (combined controller+broker)")
    async with dev_cluster(1, 1) as cluster:
        bs = cluster.bootstrap
        if "produce-100B-acks1" in wanted:
            await create_topic(bs, "p100", 1, 1)
            rows.append(await produce_case(cluster, "p100", sz.produce_records, 100, "1", sz.runs,
                                           "produce-100B-acks1", "dmq 1 node RF=1"))
        if "produce-1KiB-acks1" in wanted:
            await create_topic(bs, "p1k", 1, 1)
            rows.append(await produce_case(cluster, "p1k", sz.produce_1k_records, 1024, "1",
                                           sz.runs, "produce-1KiB-acks1", "dmq 1 node RF=1"))
        if "consume-100B" in wanted:
            await create_topic(bs, "c100", 1, 1)
            rows.append(await consume_case(cluster, "c100", sz.consume_records, sz.runs,
                                           "dmq 1 node"))
        if "produce-100KiB-acks1" in wanted:
            await create_topic(bs, "p100k", 1, 1)
            total = sz.big_records * BIG
            raw = []
            for _ in range(sz.runs):
                raw.append(await bounded(loopback_once(total, BIG), "loopback"))
            raw_row = median_row("produce-100KiB-acks1", "raw asyncio loopback (uvloop)",
                                 raw, f"{total / 1e6:,.0f} MB in 100 KiB writes", key="mb_s")
            raw_row.is_dmq = False
            row = await produce_case(cluster, "p100k", sz.big_records, BIG, "1", sz.runs,
                                     "produce-100KiB-acks1", "dmq 1 node RF=1",
                                     batch_size=1024 * 1024)
            # MB/s is what this case is about: median by MB/s (same order as records/s)
            rows.extend([row, raw_row])
        if "partitions" in wanted:
            for count in sz.partition_counts:
                topic = f"parts-{count}"
                await create_topic(bs, topic, count, 1)
                await bounded(spread_once(bs, topic, count, max(count, sz.partition_records // 5),
                                          100), f"partitions-{count} warm-up")
                results = []
                for i in range(sz.runs):
                    r = await measured(cluster.pids(), sz.partition_records,
                                       spread_once(bs, topic, count, sz.partition_records, 100),
                                       f"partitions-{count}")
                    log(f"partitions-{count} run {i + 1}: {r['records_s']:,.0f} records/s")
                    results.append(r)
                rows.append(median_row(f"partitions-{count}", "dmq 1 node RF=1 acks=1",
                                       results, "round-robin over the partitions"))


async def e2e_case(cluster: DevCluster, topic: str, n: int, runs: int) -> Row:
    bootstrap = cluster.bootstrap
    argv = ["--topic", topic, "--num-records", str(n), "--record-size", "100", "--acks",
            "all", "--linger-ms", "0", "--throughput", "10000", "--mode", "e2e"]
    args = perf_args(argv)
    warm = perf_args(["--topic", topic, "--num-records", str(max(1, n // 10))] + argv[4:])
    await bounded(produce_perf.run_e2e(bootstrap, warm), "e2e warm-up")
    results = []
    for i in range(runs):
        r = await measured(cluster.pids(), n, produce_perf.run_e2e(bootstrap, args), "e2e",
                           timeout_s=RUN_TIMEOUT_S + n / 10_000)
        log(f"e2e run {i + 1}: {r['records_s']:,.0f} records/s, p50 {r['p50']:.2f} ms, "
            f"p99 {r['p99']:.2f} ms, p99.9 {r['p99.9']:.2f} ms")
        results.append(r)
    # the median run by p99 (the rate is fixed)
    ordered = sorted(results, key=lambda r: r["p99"])
    m = ordered[len(ordered) // 2]
    return Row("e2e-10k/s-acksall", "dmq 3 brokers RF=3", m["records_s"], m["mb_s"], m["p50"],
               m["p99"], m["p99.9"], f"{n:,} records at 10,000/s, linger 0, median of "
               f"{runs} by p99", [r["p99"] for r in results], is_dmq=True,
               client_us=m["client_us"], nodes_us=m["nodes_us"])


async def idle_rss_case(cluster: DevCluster, partitions: int, idle_s: float) -> list[Row]:
    brokers = [n for n in cluster.nodes if "broker" in n.role and n.proc is not None]
    before = {n.node_id: proc_rss_mb(n.proc.pid) for n in brokers}  # type: ignore[union-attr]
    await create_topic(cluster.bootstrap, "idle", partitions, 3, timeout_s=120)
    await asyncio.sleep(idle_s)  # let every follower settle into its long-poll
    cpu0 = {n.node_id: proc_cpu_s(n.proc.pid) for n in brokers}  # type: ignore[union-attr]
    await asyncio.sleep(idle_s)
    rows = []
    for n in brokers:
        assert n.proc is not None
        rss = proc_rss_mb(n.proc.pid)
        cpu = (proc_cpu_s(n.proc.pid) - cpu0[n.node_id]) / idle_s * 100
        rows.append(Row("rss-1000-idle" if partitions == 1000 else f"rss-{partitions}-idle",
                        f"dmq broker {n.node_id}",
                        note=f"RSS {rss:.0f} MB with {partitions} idle replicas (before "
                             f"the topic: {before[n.node_id]:.0f} MB), idle CPU {cpu:.1f}%",
                        runs=[rss], is_dmq=True))
    return rows


async def three_broker_section(sz: Sizes, wanted: set[str], rows: list[Row]) -> None:
    if not wanted & {"produce-100B-acksall", "e2e-10k/s-acksall", "rss-1000-idle"}:
        return
    log(f"starting a dmq cluster of {sz.controllers} controller(s) and 3 brokers")
    async with dev_cluster(sz.controllers, 3) as cluster:
        bs = cluster.bootstrap
        if "produce-100B-acksall" in wanted:
            await create_topic(bs, "r3", 1, 3)
            rows.append(await produce_case(cluster, "r3", sz.produce_records, 100, "all", sz.runs,
                                           "produce-100B-acksall", "dmq 3 brokers RF=3"))
        if "e2e-10k/s-acksall" in wanted:
            await create_topic(bs, "e2e", 1, 3)
            rows.append(await e2e_case(cluster, "e2e", sz.e2e_records, sz.runs))
        if "rss-1000-idle" in wanted:
            rows.extend(await idle_rss_case(cluster, sz.idle_partitions, sz.idle_seconds))


# ---------------------------------------------------------------------------- TLS


async def tls_section(sz: Sizes, wanted: set[str], rows: list[Row]) -> None:
    """Issue 19: the cost of TLS (tls_perf.measure), a row per case and mode."""
    if "tls" not in wanted:
        return
    plan = tls_perf.Plan(sz.tls_records, sz.tls_big_records, sz.runs, sz.tls_modes)
    res = await tls_perf.measure(plan, log)
    for case in plan.cases:
        base: Row | None = None
        for mode in plan.modes:
            results = res.runs[(case, mode)]
            note = f"{plan.records(case):,} records x {plan.runs} runs"
            if mode != "plaintext":
                note += "; dmq/peer = MB/s / plaintext MB/s"
            row = median_row(f"tls-{case}", f"dmq 1 node {mode}", results, note)
            if base is None:
                base = row
            elif base.mb_s:
                row.ratio = row.mb_s / base.mb_s
            rows.append(row)


def tls_target_lines(rows: list[Row]) -> list[str]:
    """Issue 19: TLS costs at most 25% of plaintext throughput for 100 KiB records."""
    out = []
    for case in ("tls-produce-100KiB", "tls-consume-100KiB"):
        r = next((x for x in rows if x.case == case and x.system == "dmq 1 node tls"), None)
        if r is not None and r.ratio == r.ratio:
            out.append(f"  {f'TLS {case[4:]} >= 75% of plaintext MB/s':<58} "
                       f"{'met' if r.ratio >= 0.75 else 'NOT met':<8} {r.ratio:.2f}")
    return out


# ---------------------------------------------------------------------------- Kafka clients


def timed_runs(label: str, once: Callable[[int], dict[str, float]], n: int, runs: int,
               describe: Callable[[dict[str, float]], str]) -> list[dict[str, float]]:
    """A warm-up `once(n // 5)`, then `runs` timed `once(n)`, each logged as
    `<label> run <i>: <describe(result)>`."""
    once(max(1, n // 5))
    results = []
    for i in range(runs):
        r = once(n)
        log(f"{label} run {i + 1}: {describe(r)}")
        results.append(r)
    return results


async def end_offset(bootstrap: str, topic: str) -> int:
    """The end offset of partition 0 of `topic` (dmq's own client)."""
    async def ask() -> int:
        async with Consumer(bootstrap) as c:
            tp = next(t for t in await c.topic_partitions(topic) if t.partition == 0)
            return (await c.end_offsets([tp]))[tp]

    return int(await bounded(ask(), f"end offset of {topic}", 30))


async def kafka_produce_case(cluster: DevCluster, topic: str, n: int, acks: str, runs: int,
                             case: str, system: str, driver: str, data: Path) -> Row:
    kb = cluster.kafka_bootstrap
    assert kb is not None

    async def once(count: int) -> dict[str, float]:
        before = await end_offset(cluster.bootstrap, topic)
        r = kafka_perf.produce_once(driver, kb, topic, count, acks, data, cluster.pids())
        stored = await end_offset(cluster.bootstrap, topic) - before
        if stored != count:
            raise RuntimeError(f"{case}: produced {count} records, the log grew by {stored}")
        return r

    await once(max(1, n // 5))  # warm-up
    results = []
    for i in range(runs):
        r = await once(n)
        log(f"{case} run {i + 1}: {r['records_s']:,.0f} records/s, {r['mb_s']:.1f} MB/s, "
            f"cpu us/record {r['client_us']:.2f} {driver} + {r['nodes_us']:.2f} nodes; "
            f"nodes waited for a CPU {r['nodes_wait']:.2f} s per s")
        results.append(r)
    wait = statistics.median(r["nodes_wait"] for r in results)
    return median_row(case, system, results, f"{driver}, {n:,} records x {runs} runs, "
                      f"acks={acks}, stored count checked; nodes waited for a CPU "
                      f"{wait:.2f} s/s")


async def kafka_section(sz: Sizes, wanted: set[str], rows: list[Row], driver: str) -> None:
    if not wanted & set(kafka_perf.KAFKA_CASES):
        return
    data = Path(tempfile.mkdtemp(prefix="dmq-bench-kafka-"))
    try:
        if wanted & {"kafka-100B-acks1", "kafka-consume-100B"}:
            log(f"starting a 1-node dmq cluster with a Kafka listener ({driver})")
            async with dev_cluster(1, 1, kafka=True) as cluster:
                await create_topic(cluster.bootstrap, "k100", 1, 1)
                n = sz.kafka_records
                if "kafka-100B-acks1" in wanted:
                    rows.append(await kafka_produce_case(
                        cluster, "k100", n, "1", sz.runs, "kafka-100B-acks1",
                        "dmq 1 node RF=1 (Kafka)", driver, data))
                if "kafka-consume-100B" in wanted:
                    have = await end_offset(cluster.bootstrap, "k100")
                    if have < n:
                        kafka_perf.produce_once(driver, cluster.kafka_bootstrap or "", "k100",
                                                n - have, "1", data, cluster.pids())
                    kb = cluster.kafka_bootstrap or ""
                    results = timed_runs(
                        "kafka consume",
                        lambda count: kafka_perf.consume_once(driver, kb, "k100", count, data,
                                                              cluster.pids()),
                        n, sz.runs,
                        lambda r: f"{r['records_s']:,.0f} records/s, cpu us/record "
                                  f"{r['client_us']:.2f} {driver} + {r['nodes_us']:.2f} "
                                  f"nodes; nodes waited for a CPU {r['nodes_wait']:.2f} s per s")
                    rows.append(median_row("kafka-consume-100B", "dmq 1 node (Kafka)", results,
                                           f"{driver}, {n:,} records from offset 0, "
                                           "count checked"))
        if "kafka-100B-acksall" in wanted:
            log(f"starting 1 controller + 3 brokers with Kafka listeners ({driver})")
            async with dev_cluster(1, 3, kafka=True) as cluster:
                await create_topic(cluster.bootstrap, "k100r3", 1, 3)
                rows.append(await kafka_produce_case(
                    cluster, "k100r3", sz.kafka_r3_records, "all", sz.runs,
                    "kafka-100B-acksall", "dmq 3 brokers RF=3 (Kafka)", driver, data))
    finally:
        shutil.rmtree(data, ignore_errors=True)


def redis_benchmark_section(sz: Sizes, wanted: set[str], rows: list[Row]) -> None:
    """redis-benchmark (C) against a redis-server without persistence: the peer rows of
    the Kafka-client cases, in the same invocation."""
    if not sz.redis_records or not wanted & {"kafka-100B-acks1", "kafka-consume-100B"}:
        return
    from benchmarks.peers.common import ensure_binary

    log("peer: redis-benchmark")
    value = "x" * 100
    try:
        server = ensure_binary("redis-server", "redis-server")
        bench = ensure_binary("redis-benchmark", "redis-tools")
        data = Path(tempfile.mkdtemp(prefix="dmq-bench-redis-"))
        try:
            with kafka_perf.redis_server(server, data) as (port, pid):
                n = sz.redis_records
                if "kafka-100B-acks1" in wanted:
                    xadd = ["XADD", "s", "*", "f", value]
                    results = timed_runs(
                        "redis XADD",
                        lambda count: kafka_perf.redis_once(bench, port, pid, count, 1000, xadd),
                        n, sz.runs,
                        lambda r: f"{r['records_s']:,.0f} records/s, cpu us/record "
                                  f"{r['client_us']:.2f} + {r['nodes_us']:.2f} server")
                    row = median_row("kafka-100B-acks1", "redis-benchmark XADD", results,
                                     f"-P 1000 -c 1, {n:,} requests x {sz.runs} runs, no "
                                     "persistence; latency per pipeline")
                    row.is_dmq = False
                    rows.append(row)
                if "kafka-consume-100B" in wanted:
                    if "kafka-100B-acks1" not in wanted:
                        kafka_perf.redis_once(bench, port, pid, 1000, 1000,
                                              ["XADD", "s", "*", "f", value])
                    reqs = max(1, n // 1000)
                    xrange = ["XRANGE", "s", "-", "+", "COUNT", "1000"]
                    results = timed_runs(
                        "redis XRANGE",
                        lambda count: kafka_perf.redis_once(bench, port, pid, count, 1, xrange,
                                                            1000),
                        reqs, sz.runs, lambda r: f"{r['records_s']:,.0f} records/s")
                    row = median_row("kafka-consume-100B", "redis-benchmark XRANGE", results,
                                     f"COUNT 1000, -P 1 -c 1, {reqs:,} requests x {sz.runs} "
                                     "runs; records/s = requests/s x 1000")
                    row.is_dmq = False
                    rows.append(row)
        finally:
            shutil.rmtree(data, ignore_errors=True)
    except Exception as exc:  # a missing or failing peer must not sink the suite
        log(f"peer redis-benchmark failed: {type(exc).__name__}: {exc}")
        rows.append(Row("kafka-100B-acks1", "(peer failed)",
                        note=f"redis-benchmark: {type(exc).__name__}: {exc}"))


# ---------------------------------------------------------------------------- peers


class CaseTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise CaseTimeout in the main thread after `seconds` (finally blocks still run,
    so peer servers are stopped)."""
    def on_alarm(_sig: int, _frame: Any) -> None:
        raise CaseTimeout(f"not done within {seconds:.0f}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _peer_row(case: str, r: Any, note: str) -> Row:
    return Row(case, r.system, r.records_per_s, r.mb_per_s, r.pct(50), r.pct(99), r.pct(99.9),
               note)


def peer_section(sz: Sizes, wanted: set[str], rows: list[Row]) -> None:
    from benchmarks.peers import nats_jetstream, redis_streams

    def attempt(label: str, fn: Callable[[], list[Any]]) -> list[Any]:
        log(f"peer: {label}")
        try:
            with time_limit(RUN_TIMEOUT_S * 3):
                return fn()
        except Exception as exc:  # a missing or failing peer must not sink the suite
            log(f"peer {label} failed: {type(exc).__name__}: {exc}")
            rows.append(Row(label, "(peer failed)", note=f"{type(exc).__name__}: {exc}"))
            return []

    runs = sz.runs
    if wanted & {"produce-100B-acks1", "consume-100B"}:
        res = attempt("redis 100 B", lambda: redis_streams.run(sz.peer_records, 100, runs))
        if res:
            rows.append(_peer_row("produce-100B-acks1", res[0], "XADD, pipeline 1000, "
                                  "appendfsync everysec; latency per pipeline"))
            rows.append(_peer_row("consume-100B", res[1], "XRANGE count 1000"))
        res = attempt("nats R1 100 B",
                      lambda: nats_jetstream.run(sz.peer_records, 100, runs, 1))
        if res:
            rows.append(_peer_row("produce-100B-acks1", res[0], "file storage, async publish"))
            rows.append(_peer_row("consume-100B", res[1], "pull fetch 1000, ack each"))
    if "produce-1KiB-acks1" in wanted:
        res = attempt("redis 1 KiB", lambda: redis_streams.run(sz.peer_1k_records, 1024, runs))
        if res:
            rows.append(_peer_row("produce-1KiB-acks1", res[0], "XADD, pipeline 1000"))
        res = attempt("nats R1 1 KiB", lambda: nats_jetstream.run(
            sz.peer_1k_records, 1024, runs, 1, with_consume=False))
        if res:
            rows.append(_peer_row("produce-1KiB-acks1", res[0], "file storage, async publish"))
    if "produce-100B-acksall" in wanted:
        res = attempt("nats R3 100 B", lambda: nats_jetstream.run(
            sz.peer_r3_records, 100, runs, 3, with_consume=False))
        if res:
            rows.append(_peer_row("produce-100B-acksall", res[0],
                                  "3 servers, stream R3, async publish"))


# ---------------------------------------------------------------------------- scale


def scale_rows(quick: bool, runs: int) -> list[Row]:
    """Issue 23 at scale (`metadata_scale_bench.scale_run`): one RF=3 topic of 10,000
    partitions (2,000 with --quick) on 3 brokers and 1 controller: its creation, the
    brokers' idle CPU and RSS, acks=1 round-robin throughput over it against a
    10-partition topic of the same cluster, and kill -9 broker restarts."""
    n = 2_000 if quick else 10_000
    args = argparse.Namespace(partitions=n, controllers=1, restarts=1 if quick else 2,
                              clean=False, phase_timeout=240.0, idle=5.0 if quick else 20.0,
                              settle=3.0 if quick else 10.0,
                              spread=200_000 if quick else 1_000_000, spread_runs=runs)
    out = asyncio.run(asyncio.wait_for(metadata_scale_bench.scale_run(args), 1800))
    case = f"scale-{n}"
    rows = [Row(case, "dmq create (3 brokers RF=3)", runs=[out["create_in_sync_s"]],
                is_dmq=True,
                note=f"CreateTopics answered {out['create_answered_s']:.1f} s, every partition "
                     f"led {out['create_led_s']:.1f} s, a record on every partition "
                     f"{out['create_serving_s']:.1f} s, every ISR full "
                     f"{out['create_in_sync_s']:.1f} s")]
    for b in sorted(out["idle_cpu_pct"]):
        rows.append(Row(case, f"dmq broker {b} idle", runs=[out["idle_rss_mb"][b]], is_dmq=True,
                        note=f"RSS {out['idle_rss_mb'][b]:.0f} MB, idle CPU "
                             f"{out['idle_cpu_pct'][b]:.1f}% of a core"))
    big, small = statistics.median(out["spread_big"]), statistics.median(out["spread_small"])
    rows.append(Row(case, f"dmq round-robin over {n}", records_s=big, mb_s=big * 100 / 1e6,
                    runs=out["spread_big"], is_dmq=True,
                    note=f"acks=1 100 B; over 10 partitions of the same cluster "
                         f"{small:,.0f} records/s: ratio {out['spread_ratio']:.2f}"))
    rs = out["restarts"]

    def mm(key: str) -> str:
        vals = [r[key] for r in rs]
        return f"{statistics.median(vals):.1f}/{max(vals):.1f} s"
    rows.append(Row(case, "dmq broker restart (kill -9)", is_dmq=True,
                    runs=[r["produce_all_s"] for r in rs],
                    note=f"median/max of {len(rs)}: registered {mm('registered_s')}, unfenced "
                         f"{mm('unfenced_s')}, an acks=all record on every partition "
                         f"{mm('produce_all_s')}, its replicas all in the ISR "
                         f"{mm('in_sync_s')}"))
    return rows


def scale_target_lines(rows: list[Row]) -> list[str]:
    """Issue 23's targets, from the scale and failover rows of this run."""
    out: list[str] = []

    def check(name: str, ok: bool, measured: str) -> None:
        out.append(f"  {name:<58} {'met' if ok else 'NOT met':<8} {measured}")

    idle = [r for r in rows if r.case.startswith("scale-") and r.system.endswith(" idle")]
    if idle:
        rss = max(r.runs[0] for r in idle)
        cpu = max(float(r.note.rsplit("CPU ", 1)[1].split("%")[0]) for r in idle)
        check("broker RSS < 300 MB (10,000 RF=3 partitions)", rss < 300, f"max {rss:.0f} MB")
        check("idle CPU < 5% of a core per broker", cpu < 5, f"max {cpu:.1f}%")
    rr = next((r for r in rows if r.system.startswith("dmq round-robin over")), None)
    if rr:
        ratio = float(rr.note.rsplit("ratio ", 1)[1])
        check("round-robin over them >= 50% of 10 partitions", ratio >= 0.5, f"{ratio:.2f}")
    rs = next((r for r in rows if r.system == "dmq broker restart (kill -9)"), None)
    if rs and rs.runs:
        worst = max(rs.runs)
        check("broker restart serving again < 10 s", worst < 10,
              f"max {worst:.1f} s (an acks=all record on every partition)")
    fo = next((r for r in rows if r.case == "failover"), None)
    if fo and fo.runs:
        med, top = statistics.median(fo.runs), max(fo.runs)
        check("controller failover median <= 0.5 s", med <= 0.5, f"{med * 1000:.0f} ms")
        check("controller failover max <= 1 s", top <= 1.0, f"{top * 1000:.0f} ms")
    return out


# ---------------------------------------------------------------------------- targets


def target_lines(rows: list[Row]) -> list[str]:
    def dmq(case: str) -> Row | None:
        return next((r for r in rows if r.is_dmq and r.case == case), None)

    def peer(case: str, prefix: str) -> Row | None:
        return next((r for r in rows if not r.is_dmq and r.case == case
                     and r.system.startswith(prefix)), None)

    out = []

    def check(name: str, ok: bool | None, measured: str) -> None:
        mark = "n/a" if ok is None else ("met" if ok else "NOT met")
        out.append(f"  {name:<58} {mark:<8} {measured}")

    r = dmq("produce-100B-acks1")
    if r:
        check("produce 100 B acks=1 RF=1 >= 2,000,000 records/s", r.records_s >= 2e6,
              f"{r.records_s:,.0f}")
        p = peer("produce-100B-acks1", "redis")
        check(">= 10x Redis Streams XADD", (r.records_s / p.records_s >= 10) if p else None,
              f"{r.records_s / p.records_s:.2f}x" if p else "no peer row")
    r = dmq("produce-100B-acksall")
    if r:
        check("produce 100 B acks=all RF=3 >= 500,000 records/s", r.records_s >= 5e5,
              f"{r.records_s:,.0f}")
        p = peer("produce-100B-acksall", "nats")
        check(">= 5x NATS JetStream R3", (r.records_s / p.records_s >= 5) if p else None,
              f"{r.records_s / p.records_s:.2f}x" if p else "no peer row")
    r = dmq("consume-100B")
    if r:
        check("consume 100 B >= 3,000,000 records/s", r.records_s >= 3e6, f"{r.records_s:,.0f}")
    r = dmq("produce-100KiB-acks1")
    p = next((x for x in rows if x.system.startswith("raw asyncio")), None)
    if r and p:
        check("100 KiB records >= 50% of raw asyncio loopback", r.mb_s >= 0.5 * p.mb_s,
              f"{r.mb_s / p.mb_s:.1%} ({r.mb_s:,.0f} of {p.mb_s:,.0f} MB/s)")
    r = dmq("e2e-10k/s-acksall")
    if r:
        check("e2e at 10,000/s acks=all RF=3: p99 < 3 ms", r.p99_ms < 3, f"{r.p99_ms:.2f} ms")
        check("e2e at 10,000/s acks=all RF=3: p99.9 < 10 ms", r.p999_ms < 10,
              f"{r.p999_ms:.2f} ms")
    r10, r1000 = dmq("partitions-10"), dmq("partitions-1000")
    if r10 and r1000:
        check("1000 partitions >= half the throughput of 10",
              r1000.records_s >= 0.5 * r10.records_s,
              f"{r1000.records_s / r10.records_s:.2f} of partitions-10")
    rss = [x.runs[0] for x in rows if x.case == "rss-1000-idle" and x.runs]
    if rss:
        check("broker RSS with 1000 idle partitions < 200 MB", max(rss) < 200,
              f"max {max(rss):.0f} MB over {len(rss)} brokers")
    return out


def kafka_target_lines(rows: list[Row]) -> list[str]:
    """Issue 17: a C client producing 100 B acks=1 RF=1 through the Kafka listener."""
    r = next((x for x in rows if x.is_dmq and x.case == "kafka-100B-acks1"), None)
    if r is None:
        return []
    p = next((x for x in rows if not x.is_dmq and x.case == r.case
              and x.system.startswith("redis")), None)
    out = [f"  {'Kafka client, 100 B acks=1 RF=1 >= 2,000,000 records/s':<58} "
           f"{'met' if r.records_s >= 2e6 else 'NOT met':<8} {r.records_s:,.0f} "
           f"(broker {r.nodes_us:.2f} us CPU per record)"]
    if p is None:
        out.append(f"  {'>= 3x redis-benchmark XADD':<58} {'n/a':<8} no peer row")
    else:
        x = r.records_s / p.records_s
        out.append(f"  {'>= 3x redis-benchmark XADD':<58} {'met' if x >= 3 else 'NOT met':<8} "
                   f"{x:.2f}x")
    return out


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a ~2-minute version")
    mode.add_argument("--smoke", action="store_true",
                      help="dmq cases only, tiny counts, 1 run (CI: checks it works)")
    ap.add_argument("--runs", type=int, help="runs per case (default 3; smoke 1)")
    ap.add_argument("--only", help="comma-separated case names: " + ", ".join(CASE_NAMES))
    ap.add_argument("--no-peers", action="store_true", help="skip Redis and NATS")
    ap.add_argument("--kafka-driver", choices=["auto", "kcat", "confluent"], default="auto",
                    help="librdkafka client of the kafka-* cases (auto: kcat if installed)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sz = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.runs:
        sz = Sizes(**{**sz.__dict__, "runs": args.runs})
    wanted = set(CASE_NAMES) if not args.only else set(args.only.split(","))
    unknown = wanted - set(CASE_NAMES)
    if unknown:
        print(f"unknown case(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    try:
        import uvloop

        policy: Any = uvloop.EventLoopPolicy()
        asyncio.set_event_loop_policy(policy)  # dmq nodes run on uvloop; so do all clients here
        loop_name = f"uvloop {metadata.version('uvloop')}"
    except ImportError:  # pragma: no cover
        loop_name = "asyncio"
    banner = machine_banner()
    started = time.monotonic()
    rows: list[Row] = []
    asyncio.run(single_node_section(sz, wanted, rows))
    asyncio.run(three_broker_section(sz, wanted, rows))
    asyncio.run(tls_section(sz, wanted, rows))
    if "failover" in wanted and not args.smoke:
        note, runs = failover_bench.run_all_case(5 if args.quick else 10, log)
        rows.append(Row("failover", "dmq 3 controllers, 3 brokers", note=note, runs=runs,
                        is_dmq=True))
    if "scale" in wanted and not args.smoke:
        rows.extend(scale_rows(args.quick, sz.runs))
    if wanted & set(kafka_perf.KAFKA_CASES):
        driver = kafka_perf.driver_name(args.kafka_driver)
        asyncio.run(kafka_section(sz, wanted, rows, driver))
    if not (args.smoke or args.no_peers):
        peer_section(sz, wanted, rows)
        redis_benchmark_section(sz, wanted, rows)
    order = {c: i for i, c in enumerate(CASE_NAMES)}

    def case_key(r: Row) -> tuple[int, int, bool]:
        base = r.case.split("-")[0] if r.case.startswith(("partitions-", "rss-")) else r.case
        if r.case.startswith("partitions-"):
            return (order["partitions"], int(r.case.split("-")[1]), not r.is_dmq)
        if r.case.startswith("rss-"):
            return (order["rss-1000-idle"], 0, not r.is_dmq)
        if r.case.startswith("scale-"):
            return (order["scale"], 0, False)
        if r.case.startswith("tls-"):  # modes stay in the order measured (a stable sort)
            return (order["tls"], tls_perf.CASES.index(r.case[4:]), False)
        return (order.get(base, 99), 0, not r.is_dmq)

    rows.sort(key=case_key)
    fill_ratios(rows)
    elapsed = time.monotonic() - started
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    print()
    print("dmq benchmark suite (benchmarks/run_all.py"
          + (f" --{mode}" if mode != "full" else "") + ")")
    for line in banner:
        print(line)
    print(f"event loop: {loop_name} for dmq nodes and every client; median of {sz.runs} "
          f"run(s) per case after a warm-up; {mode} mode, {elapsed:.0f} s; load average "
          f"at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print()
    print_table(rows)
    print("cpu us/rec: CPU time per record of the benchmark client process + all dmq node "
          "processes together (load-independent, unlike records/s)")
    lines = target_lines(rows)
    if lines:
        print()
        print("issue 11 targets (medians of this run):")
        for line in lines:
            print(line)
    lines = scale_target_lines(rows)
    if lines:
        print()
        print("issue 23 targets (this run):")
        for line in lines:
            print(line)
    lines = kafka_target_lines(rows)
    if lines:
        print()
        print("issue 17 targets (medians of this run):")
        for line in lines:
            print(line)
    lines = tls_target_lines(rows)
    if lines:
        print()
        print("issue 19 targets (medians of this run):")
        for line in lines:
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
