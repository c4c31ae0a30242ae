"""Shared pieces of produce_perf.py and consume_perf.py: flags for where the cluster is,
starting a private `dmq dev` cluster (`--cluster dev`), topic creation, statistics,
and the version banner. Not a test; nothing here asserts a speed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from dmq.cli.dev import DevCluster, free_base_port
from dmq.cli.dev import ensure_topic as ensure_topic_on


def add_cluster_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--bootstrap", help="HOST:PORT[,...] of a running cluster")
    ap.add_argument("--cluster", choices=["dev"], help="start a private local cluster first")
    ap.add_argument("--controllers", type=int, default=1, help="with --cluster dev")
    ap.add_argument("--brokers", type=int, default=1,
                    help="with --cluster dev (1+1: a single combined node)")
    ap.add_argument("--topic", default="perf-test")
    ap.add_argument("--partitions", type=int, default=1, help="when the topic is created")
    ap.add_argument("--replication-factor", type=int, default=None,
                    help="when the topic is created (default min(3, brokers))")


@contextlib.asynccontextmanager
async def cluster_from_args(args: argparse.Namespace) -> AsyncIterator[str]:
    """Yields a bootstrap string; with --cluster dev, owns a private cluster."""
    if args.cluster != "dev":
        if not args.bootstrap:
            sys.exit("error: give --bootstrap HOST:PORT or --cluster dev")
        yield args.bootstrap
        return
    root = Path(tempfile.mkdtemp(prefix="dmq-perf-"))
    base = free_base_port(args.controllers, args.brokers)
    cluster = DevCluster(root, args.controllers, args.brokers, base, quiet=True,
                         echo=lambda s: None)
    try:
        await cluster.start()
        yield cluster.bootstrap
    finally:
        await cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


async def ensure_topic(bootstrap: str, args: argparse.Namespace, timeout_s: float = 30) -> None:
    rf = args.replication_factor or min(3, max(1, args.brokers))
    await ensure_topic_on(bootstrap, args.topic, args.partitions, rf, timeout_s)


def percentiles_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    if not latencies_s:
        return {}
    xs = sorted(latencies_s)
    n = len(xs)

    def pct(p: float) -> float:
        return xs[min(n - 1, int(p * n))] * 1000

    return {"avg": statistics.fmean(xs) * 1000, "p50": pct(0.50), "p95": pct(0.95),
            "p99": pct(0.99), "p99.9": pct(0.999), "max": xs[-1] * 1000}


def format_latency(lat: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f} ms" for k, v in lat.items())


def versions_banner() -> str:
    parts = [f"Python {platform.python_version()}"]
    for pkg in ("dmq", "msgpack", "crc32c", "uvloop", "zstandard", "lz4"):
        try:
            parts.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            pass
    return "# " + ", ".join(parts)


def install_uvloop() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover
        pass


def proc_rss_mb(pid: int) -> float:
    """Resident set size of a process, MB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds of this process and of the cluster's node processes over one run,
    per record: a figure that moves far less than records/s on a shared machine."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.client0 = time.process_time()
        self.nodes0 = self._nodes()

    def _nodes(self) -> float:
        total = 0.0
        for pid in self.pids:
            with contextlib.suppress(OSError, ValueError, IndexError):
                total += proc_cpu_s(pid)
        return total

    def per_record(self, records: int) -> dict[str, float]:
        n = max(records, 1)
        return {"client_us": (time.process_time() - self.client0) / n * 1e6,
                "nodes_us": (self._nodes() - self.nodes0) / n * 1e6}


async def bounded_run(coro: Awaitable[Any], what: str, timeout_s: float) -> Any:
    """`coro`, or a TimeoutError naming `what` after `timeout_s` (every timed run)."""
    try:
        return await asyncio.wait_for(coro, timeout_s)
    except TimeoutError:
        raise TimeoutError(f"{what}: not done within {timeout_s:.0f}s") from None


async def spread_once(bootstrap: str, topic: str, partitions: int, n: int,
                      size: int) -> dict[str, float]:
    """acks=1 produce with records spread round-robin over every partition."""
    value = b"x" * size
    perf = time.perf_counter
    lat: list[float] = []
    from dmq.client.producer import Producer

    async with Producer(bootstrap, acks=1, linger_ms=5, batch_size=65_536,
                        enable_idempotence=False) as producer:
        for p in range(partitions):  # metadata, connections, first batch per partition
            await producer.send(topic, value, partition=p)
        await producer.flush()
        send = producer.send
        seen: set[asyncio.Future[int]] = set()  # round-robin: batches interleave

        def on_done(sent: float) -> Callable[[Any], None]:
            return lambda _f: lat.append(perf() - sent)

        start = perf()
        for i in range(n):
            h = await send(topic, value, partition=i % partitions)
            f = h.batch_future
            if f not in seen:
                seen.add(f)
                f.add_done_callback(on_done(perf()))
        await producer.flush()
        elapsed = perf() - start
    return {"records_s": n / elapsed, "mb_s": n * size / elapsed / 1e6,
            **percentiles_ms(lat)}
