"""Producer performance, in the style of kafka-producer-perf-test.

    python benchmarks/produce_perf.py --cluster dev --num-records 1000000 \\
        --record-size 100 --acks 1
    python benchmarks/produce_perf.py --bootstrap 127.0.0.1:9091 --topic t \\
        --num-records 100000 --throughput 10000 --acks all --linger-ms 0

Prints records/s, MB/s and latency avg/p50/p95/p99/p99.9/max per run and the median
of `--runs` runs, plus the producer process's CPU time per record (independent of how
busy the machine is: 1e6 / that is what one free core could push). Latency is
send-to-ack (from the `send`/`send_many` call to the moment the record's batch is
acknowledged; measured once per batch, no per-record callback), or with `--mode e2e`
send-to-consume (a consumer in the same process reads the records back; each value
starts with its send time). `--throughput N` paces sends at N records/s (-1: as fast
as possible). `--api batch` (default) hands the producer `--chunk` records per
`send_many` call, `--api send` one `await send()` per record. `--cluster dev` starts
a private local cluster (`--brokers 1`: one combined node) and stops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from perf_common import (  # noqa: E402
    add_cluster_args,
    cluster_from_args,
    ensure_topic,
    format_latency,
    install_uvloop,
    percentiles_ms,
    versions_banner,
)

from dmq.client.consumer import Consumer  # noqa: E402
from dmq.client.producer import Producer  # noqa: E402
from dmq.client.records import TopicPartition  # noqa: E402

_TS = struct.Struct(">d")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cluster_args(ap)
    ap.add_argument("--num-records", type=int, default=1_000_000)
    ap.add_argument("--record-size", type=int, default=100, help="value bytes")
    ap.add_argument("--acks", choices=["0", "1", "all", "-1"], default="1")
    ap.add_argument("--batch-size", type=int, default=65_536)
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--throughput", type=float, default=-1, help="records/s, -1 unlimited")
    ap.add_argument("--max-in-flight", type=int, default=5)
    ap.add_argument("--compression", choices=["none", "zstd", "lz4"], default="none")
    ap.add_argument("--idempotence", choices=["auto", "on", "off"], default="auto")
    ap.add_argument("--mode", choices=["produce", "e2e"], default="produce")
    ap.add_argument("--key-count", type=int, default=0,
                    help="keyed records cycling over this many distinct keys (0: no key)")
    ap.add_argument("--partitioner", choices=["default", "murmur2", "crc32c"],
                    default="default", help="key placement (default: the producer's)")
    ap.add_argument("--api", choices=["batch", "send"], default="batch",
                    help="batch: Producer.send_many of --chunk records per call (the fast "
                         "path); send: one `await send()` per record")
    ap.add_argument("--chunk", type=int, default=5000, help="records per send_many call")
    ap.add_argument("--runs", type=int, default=1, help="repeat and report the median")
    return ap.parse_args(argv)


async def _pace(i: int, start: float, rate: float) -> None:
    ahead = i / rate - (time.perf_counter() - start)
    if ahead > 0.0005:
        await asyncio.sleep(ahead)


def _producer(bootstrap: str, args: argparse.Namespace) -> Producer:
    """The producer the flags describe (acks, batching, idempotence, compression,
    partitioner)."""
    extra = {} if args.partitioner == "default" else {"partitioner": args.partitioner}
    return Producer(bootstrap, acks=args.acks, linger_ms=args.linger_ms,
                    batch_size=args.batch_size, max_in_flight=args.max_in_flight,
                    enable_idempotence={"auto": None, "on": True, "off": False}[args.idempotence],
                    compression_type=None if args.compression == "none" else args.compression,
                    **extra)


async def run_produce_batch(bootstrap: str, args: argparse.Namespace) -> dict[str, float]:
    """`send_many` of `--chunk` records a call; latency measured once per batch, from
    the call that appended its records to its acknowledgement."""
    n = args.num_records
    chunk = max(1, args.chunk)
    value = b"x" * args.record_size
    perf = time.perf_counter
    keys = ([b"key-%08d" % (i % args.key_count) for i in range(n)]
            if args.key_count > 0 else None)
    segments: list[tuple[float, int, asyncio.Future[int]]] = []
    done_at: dict[int, float] = {}

    def on_done(f: asyncio.Future[int]) -> None:
        done_at[id(f)] = perf()

    async with _producer(bootstrap, args) as producer:
        await producer.send_and_wait(args.topic, value)  # metadata and connections warm
        rate = args.throughput
        values = [value] * chunk
        hooked: set[int] = set()
        cpu0 = time.process_time()
        start = perf()
        send_many = producer.send_many
        topic = args.topic
        for i in range(0, n, chunk):
            if rate > 0:
                await _pace(i, start, rate)
            m = min(chunk, n - i)
            t = perf()
            h = await send_many(topic, values if m == chunk else values[:m],
                                keys=None if keys is None else keys[i:i + m])
            for seg in h.segments:
                f = seg.batch.future
                segments.append((t, seg.record_count, f))
                if id(f) not in hooked:
                    hooked.add(id(f))
                    f.add_done_callback(on_done)
        await producer.flush()
        elapsed = perf() - start
        cpu = time.process_time() - cpu0
        errors = sum(c for _t, c, f in segments if f.exception() is not None)
    lat: list[float] = []
    if args.acks != "0":
        for t, c, f in segments:
            lat += [done_at[id(f)] - t] * c
    return {"records_s": n / elapsed, "mb_s": n * args.record_size / elapsed / 1e6,
            "cpu_us": cpu / n * 1e6, "errors": errors, **percentiles_ms(lat)}


async def run_produce(bootstrap: str, args: argparse.Namespace) -> dict[str, float]:
    n = args.num_records
    value = b"x" * args.record_size
    sent_at = [0.0] * n
    batch_of = [0] * n
    done_at: list[float] = []
    futs: list[asyncio.Future[int]] = []
    perf = time.perf_counter
    keys: list[bytes | None] = ([b"key-%08d" % (i % args.key_count) for i in range(n)]
                                if args.key_count > 0 else [None] * n)

    def on_batch(idx: int) -> object:
        def cb(_f: object) -> None:
            done_at[idx] = perf()
        return cb

    async with _producer(bootstrap, args) as producer:
        await producer.send_and_wait(args.topic, value)  # metadata and connections warm
        rate = args.throughput
        last = None
        cpu0 = time.process_time()
        start = perf()
        send = producer.send
        topic = args.topic
        for i in range(n):
            if rate > 0:
                await _pace(i, start, rate)
            sent_at[i] = perf()
            h = await send(topic, value, keys[i])
            f = h.batch_future
            if f is not last:
                last = f
                futs.append(f)
                done_at.append(0.0)
                f.add_done_callback(on_batch(len(futs) - 1))  # type: ignore[arg-type]
            batch_of[i] = len(futs) - 1
        await producer.flush()
        elapsed = perf() - start
        cpu = time.process_time() - cpu0
        errors = sum(1 for f in futs if f.exception() is not None)
    lat = [done_at[batch_of[i]] - sent_at[i] for i in range(n)] if args.acks != "0" else []
    res = {"records_s": n / elapsed, "mb_s": n * args.record_size / elapsed / 1e6,
           "cpu_us": cpu / n * 1e6, "errors": errors, **percentiles_ms(lat)}
    return res


async def run_e2e(bootstrap: str, args: argparse.Namespace) -> dict[str, float]:
    n = args.num_records
    pad = b"x" * max(0, args.record_size - _TS.size)
    latencies: list[float] = []
    perf = time.perf_counter
    async with Consumer(bootstrap, fetch_max_wait_ms=100) as consumer, \
            Producer(bootstrap, acks=args.acks, linger_ms=args.linger_ms,
                     batch_size=args.batch_size, max_in_flight=args.max_in_flight) as producer:
        parts = await consumer.partitions_for_topic(args.topic)
        tps = [TopicPartition(args.topic, p) for p in parts]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)

        async def consume() -> None:
            while len(latencies) < n:
                got = await consumer.getmany(timeout_ms=1000)
                now = perf()
                for recs in got.values():
                    for r in recs:
                        latencies.append(now - _TS.unpack_from(r.value)[0])

        reader = asyncio.ensure_future(consume())
        try:
            start = perf()
            rate = args.throughput
            for i in range(n):
                if rate > 0:
                    await _pace(i, start, rate)
                await producer.send(args.topic, _TS.pack(perf()) + pad)
            await producer.flush()
            await asyncio.wait_for(reader, 60)
            elapsed = perf() - start
        finally:
            reader.cancel()  # a failed send must not leave it reading
    return {"records_s": n / elapsed, "mb_s": n * args.record_size / elapsed / 1e6,
            "errors": 0, **percentiles_ms(latencies)}


def report(r: dict[str, float], label: str) -> str:
    lat = {k: v for k, v in r.items() if k in ("avg", "p50", "p95", "p99", "p99.9", "max")}
    return (f"{label}: {r['records_s']:,.0f} records/s, {r['mb_s']:.2f} MB/s"
            + (f", client CPU {r['cpu_us']:.2f} us/record" if "cpu_us" in r else "")
            + (f", errors {int(r['errors'])}" if r.get("errors") else "")
            + (f"; latency {format_latency(lat)}" if lat else ""))


async def main(args: argparse.Namespace) -> None:
    print(versions_banner())
    print(f"# mode={args.mode} records={args.num_records} size={args.record_size} "
          f"acks={args.acks} batch_size={args.batch_size} linger_ms={args.linger_ms} "
          f"throughput={args.throughput} partitions={args.partitions} "
          f"key_count={args.key_count} partitioner={args.partitioner} "
          f"api={args.api} chunk={args.chunk} "
          f"cluster={args.cluster or args.bootstrap} brokers={args.brokers}", flush=True)
    async with cluster_from_args(args) as bootstrap:
        await ensure_topic(bootstrap, args)
        runs = []
        for i in range(args.runs):
            fn = run_e2e if args.mode == "e2e" else \
                run_produce_batch if args.api == "batch" else run_produce
            r = await fn(bootstrap, args)
            runs.append(r)
            print(report(r, f"run {i + 1}"), flush=True)
        if args.runs > 1:
            med = {k: statistics.median(x[k] for x in runs) for k in runs[0]}
            print(report(med, f"median of {args.runs}"))


if __name__ == "__main__":
    install_uvloop()
    asyncio.run(main(parse_args()))
