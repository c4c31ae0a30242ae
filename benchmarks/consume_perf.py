"""Consumer performance, in the style of kafka-consumer-perf-test.

    python benchmarks/consume_perf.py --cluster dev --num-records 1000000 --record-size 100
    python benchmarks/consume_perf.py --bootstrap 127.0.0.1:9091 --topic t --num-records 100000

Reads `--num-records` records from the beginning of the topic's partitions (`--api
batch`, the default: `getmany_batches`, values only, no record object per record;
`--api records`: `getmany`, every record decoded into a `ConsumerRecord`; CRCs
checked unless `--no-check-crcs`) and
prints records/s, MB/s and the consumer process's CPU time per record per run and
the median of `--runs`. When the topic holds
fewer records than asked, it is first filled with a producer (acks=1, not timed).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from perf_common import (  # noqa: E402
    add_cluster_args,
    cluster_from_args,
    ensure_topic,
    install_uvloop,
    versions_banner,
)

from dmq.client.consumer import Consumer  # noqa: E402
from dmq.client.producer import Producer  # noqa: E402
from dmq.client.records import TopicPartition  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cluster_args(ap)
    ap.add_argument("--num-records", type=int, default=1_000_000)
    ap.add_argument("--record-size", type=int, default=100, help="value bytes when filling")
    ap.add_argument("--fetch-max-bytes", type=int, default=50 * 1024 * 1024)
    ap.add_argument("--max-partition-fetch-bytes", type=int, default=4 * 1024 * 1024)
    ap.add_argument("--no-check-crcs", action="store_true")
    ap.add_argument("--api", choices=["batch", "records"], default="batch")
    ap.add_argument("--runs", type=int, default=1, help="repeat and report the median")
    # accepted for symmetry with produce_perf (used only when filling the topic)
    ap.add_argument("--acks", default="1")
    ap.add_argument("--batch-size", type=int, default=65_536)
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--throughput", type=float, default=-1)
    return ap.parse_args(argv)


async def fill(bootstrap: str, args: argparse.Namespace, tps: list[TopicPartition],
               have: int) -> None:
    need = args.num_records - have
    if need <= 0:
        return
    print(f"# filling {args.topic} with {need:,} records of {args.record_size} bytes",
          flush=True)
    values = [b"x" * args.record_size] * 10_000
    async with Producer(bootstrap, acks=args.acks, batch_size=args.batch_size,
                        linger_ms=args.linger_ms) as producer:
        for i, start in enumerate(range(0, need, len(values))):
            await producer.send_many(args.topic, values[:min(len(values), need - start)],
                                     partition=tps[i % len(tps)].partition)
        await producer.flush()


async def run_once(bootstrap: str, args: argparse.Namespace,
                   tps: list[TopicPartition]) -> dict[str, float]:
    n = args.num_records
    async with Consumer(bootstrap, auto_offset_reset="earliest",
                        fetch_max_bytes=args.fetch_max_bytes,
                        max_partition_fetch_bytes=args.max_partition_fetch_bytes,
                        check_crcs=not args.no_check_crcs) as consumer:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        count = 0
        nbytes = 0
        cpu0 = time.process_time()
        start = time.perf_counter()
        if args.api == "batch":
            while count < n:
                got = await consumer.getmany_batches(timeout_ms=5000, max_records=n - count)
                if not got:
                    raise SystemExit(f"stalled after {count} records")
                for batches in got.values():
                    for b in batches:
                        values = b.values
                        count += len(values)
                        nbytes += sum(map(len, values))
        while count < n:
            got = await consumer.getmany(timeout_ms=5000, max_records=n - count)
            if not got:
                raise SystemExit(f"stalled after {count} records")
            for recs in got.values():
                count += len(recs)
                for r in recs:
                    nbytes += len(r.value) if r.value else 0
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu0
    return {"records_s": count / elapsed, "mb_s": nbytes / elapsed / 1e6, "seconds": elapsed,
            "cpu_us": cpu / count * 1e6}


async def main(args: argparse.Namespace) -> None:
    print(versions_banner())
    print(f"# records={args.num_records} partitions={args.partitions} api={args.api} "
          f"check_crcs={not args.no_check_crcs} cluster={args.cluster or args.bootstrap}",
          flush=True)
    async with cluster_from_args(args) as bootstrap:
        await ensure_topic(bootstrap, args)
        async with Consumer(bootstrap) as probe:
            tps = await probe.topic_partitions(args.topic)
            ends = await probe.end_offsets(tps)
            starts = await probe.beginning_offsets(tps)
        await fill(bootstrap, args, tps, sum(ends[tp] - starts[tp] for tp in tps))
        runs = []
        for i in range(args.runs):
            r = await run_once(bootstrap, args, tps)
            runs.append(r)
            print(f"run {i + 1}: {r['records_s']:,.0f} records/s, {r['mb_s']:.2f} MB/s "
                  f"({r['seconds']:.2f} s), client CPU {r['cpu_us']:.2f} us/record", flush=True)
        if args.runs > 1:
            print(f"median of {args.runs}: "
                  f"{statistics.median(r['records_s'] for r in runs):,.0f} records/s, "
                  f"{statistics.median(r['mb_s'] for r in runs):.2f} MB/s, client CPU "
                  f"{statistics.median(r['cpu_us'] for r in runs):.2f} us/record")


if __name__ == "__main__":
    install_uvloop()
    asyncio.run(main(parse_args()))
