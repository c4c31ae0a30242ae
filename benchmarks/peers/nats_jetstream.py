"""NATS JetStream peer: a single server with a file-storage R1 stream, or a 3-server
cluster with an R3 stream; async publishing with as many acks pending as nats-py
allows, pull consumers fetching batches of 1000. Data in a temporary folder.

    python -m benchmarks.peers.nats_jetstream [--records 200000] [--size 100] [--replicas 1|3]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from benchmarks.peers.common import (
    Result,
    ensure_binary,
    ensure_module,
    free_port,
    median_result,
    print_table,
    server_procs,
    temp_dir,
)

BATCH = 1000
MAX_PENDING = 4000


def _commands(server: str, d: Path, replicas: int) -> tuple[list[list[str]], list[int]]:
    if replicas == 1:
        port = free_port()
        return [[server, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(d / "n0")]], [port]
    ports = [free_port() for _ in range(3)]
    cports = [free_port() for _ in range(3)]
    routes = ",".join(f"nats-route://127.0.0.1:{p}" for p in cports)
    cmds = []
    for i in range(3):
        cmds.append([server, "-a", "127.0.0.1", "-p", str(ports[i]), "-js", "-sd",
                     str(d / f"n{i}"), "-n", f"n{i}", "--cluster_name", "bench",
                     "--cluster", f"nats://127.0.0.1:{cports[i]}", "--routes", routes])
    return cmds, ports


async def _connect(ports: list[int]):  # type: ignore[no-untyped-def]
    import nats

    return await nats.connect(servers=[f"nats://127.0.0.1:{p}" for p in ports],
                              pending_size=64 * 1024 * 1024)


async def setup_stream(ports: list[int], replicas: int) -> None:
    from nats.js.api import StorageType, StreamConfig

    nc = await _connect(ports)
    js = nc.jetstream(publish_async_max_pending=MAX_PENDING)
    deadline = time.monotonic() + 30
    while True:
        try:
            try:
                await js.delete_stream("bench")
            except Exception:  # noqa: BLE001 - absent on first run
                pass
            await js.add_stream(StreamConfig(name="bench", subjects=["bench"],
                                             storage=StorageType.FILE, num_replicas=replicas))
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)  # the cluster is still electing its meta leader
    await nc.close()


async def produce(ports: list[int], records: int, size: int, replicas: int) -> Result:
    nc = await _connect(ports)
    js = nc.jetstream(publish_async_max_pending=MAX_PENDING)
    payload = b"x" * size
    lat: list[float] = []
    t0 = time.perf_counter()
    for _ in range(records):
        sent = time.perf_counter()
        fut = await js.publish_async("bench", payload)
        fut.add_done_callback(lambda _f, s=sent: lat.append((time.perf_counter() - s) * 1000))
    await js.publish_async_completed()
    dt = time.perf_counter() - t0
    await nc.close()
    return Result(f"nats-jetstream R{replicas}", f"produce {size} B async", records, size, dt, lat)


async def consume(ports: list[int], records: int, size: int, replicas: int) -> Result:
    nc = await _connect(ports)
    js = nc.jetstream()
    sub = await js.pull_subscribe("bench", durable=f"bench-{time.monotonic_ns()}")
    lat: list[float] = []
    got = 0
    t0 = time.perf_counter()
    while got < records:
        b0 = time.perf_counter()
        msgs = await sub.fetch(BATCH, timeout=5)
        for m in msgs:
            await m.ack()  # noqa: PERF401 - ack is what a JetStream consumer must do
        lat.append((time.perf_counter() - b0) * 1000)
        got += len(msgs)
    dt = time.perf_counter() - t0
    await nc.close()
    return Result(f"nats-jetstream R{replicas}", f"consume {size} B batches of {BATCH}", got,
                  size, dt, lat)


def run(records: int, size: int, runs: int, replicas: int,
        with_consume: bool = True) -> list[Result]:
    server = ensure_binary("nats-server", "nats-server")
    ensure_module("nats", "nats-py")
    prod: list[Result] = []
    cons: list[Result] = []
    with temp_dir("dmq-peer-nats-") as d:
        cmds, ports = _commands(server, d, replicas)
        with server_procs(cmds, ports, d):
            for _ in range(runs):
                asyncio.run(setup_stream(ports, replicas))
                prod.append(asyncio.run(produce(ports, records, size, replicas)))
                if with_consume:
                    cons.append(asyncio.run(consume(ports, records, size, replicas)))
    return [median_result(prod)] + ([median_result(cons)] if cons else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--replicas", type=int, default=1, choices=(1, 3))
    args = ap.parse_args()
    print_table(run(args.records, args.size, args.runs, args.replicas),
                f"NATS JetStream R{args.replicas}, medians of {args.runs} runs")


if __name__ == "__main__":
    main()
