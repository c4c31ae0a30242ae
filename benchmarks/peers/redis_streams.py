"""Redis Streams peer: XADD in pipelines of 1000, XRANGE reads of 1000, redis-server
with appendonly yes / appendfsync everysec, data in a temporary folder.

    python -m benchmarks.peers.redis_streams [--records 200000] [--size 100] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time

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

PIPELINE = 1000


async def produce(port: int, records: int, size: int) -> Result:
    import redis.asyncio as aioredis

    r = aioredis.Redis(host="127.0.0.1", port=port)
    payload = b"x" * size
    lat: list[float] = []
    await r.delete("bench")
    t0 = time.perf_counter()
    sent = 0
    while sent < records:
        n = min(PIPELINE, records - sent)
        pipe = r.pipeline(transaction=False)
        for _ in range(n):
            pipe.xadd("bench", {"v": payload})
        b0 = time.perf_counter()
        await pipe.execute()
        lat.append((time.perf_counter() - b0) * 1000)
        sent += n
    dt = time.perf_counter() - t0
    await r.aclose()
    return Result("redis-streams", f"produce {size} B pipeline {PIPELINE}", records, size, dt, lat)


async def consume(port: int, records: int, size: int) -> Result:
    import redis.asyncio as aioredis

    r = aioredis.Redis(host="127.0.0.1", port=port)
    lat: list[float] = []
    got = 0
    last = "-"
    t0 = time.perf_counter()
    while got < records:
        b0 = time.perf_counter()
        batch = await r.xrange("bench", min=last, max="+", count=PIPELINE + (last != "-"))
        if last != "-":
            batch = batch[1:]
        if not batch:
            break
        lat.append((time.perf_counter() - b0) * 1000)
        got += len(batch)
        last = batch[-1][0].decode()
    dt = time.perf_counter() - t0
    await r.aclose()
    return Result("redis-streams", f"consume {size} B batches of {PIPELINE}", got, size, dt, lat)


def run(records: int, size: int, runs: int) -> list[Result]:
    server = ensure_binary("redis-server", "redis-server")
    ensure_module("redis", "redis")
    prod: list[Result] = []
    cons: list[Result] = []
    with temp_dir("dmq-peer-redis-") as d:
        port = free_port()
        cmd = [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
               "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
               "--protected-mode", "no"]
        with server_procs([cmd], [port], d):
            for _ in range(runs):
                prod.append(asyncio.run(produce(port, records, size)))
                cons.append(asyncio.run(consume(port, records, size)))
    return [median_result(prod), median_result(cons)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    print_table(run(args.records, args.size, args.runs),
                f"Redis Streams, medians of {args.runs} runs")


if __name__ == "__main__":
    main()
