"""Log engine micro-benchmark: PartitionLog vs raw os.write / os.pread in the same run.

Measures, for 1 KiB, 16 KiB and 1 MiB batches:
- append: `PartitionLog.append_as_leader(batch, epoch)` (validate header + CRC, stamp
  offset and epoch, one writev, index maintenance) vs `os.write` of the same bytes to a
  plain file;
- sequential read: `PartitionLog.read(offset, max_bytes)` from offset 0 to the end vs
  `os.pread` of exactly the same (position, length) ranges of a plain file;
- follower append: `PartitionLog.append_as_follower` of ~1 MiB fetch responses made of
  such batches (validate + CRC per batch, one writev per call) vs `os.write` of the same;
- index lookup latency: `OffsetIndex.lookup` on a full 1 MiB index, random targets.

Each figure is the median of --runs runs (default 5); runs alternate baseline and log.
No fsync anywhere (the default flush policy): both sides measure the page cache path.

    .venv/bin/python benchmarks/log_bench.py [--total-mib 64] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from importlib.metadata import version

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dmq.clock import ManualClock  # noqa: E402
from dmq.log import BatchBuilder, LogConfig, PartitionLog, stamp_batch  # noqa: E402
from dmq.log.index import OffsetIndex  # noqa: E402

READ_MAX_BYTES = 1 << 20


def make_batch(batch_bytes: int) -> bytes:
    record_bytes = min(1024, batch_bytes // 2)
    value = os.urandom(record_bytes)
    b = BatchBuilder(producer_id=-1)
    while b.estimated_size_bytes + record_bytes + 12 <= batch_bytes:
        b.append(1_700_000_000_000, None, value)
    if b.record_count == 0:
        b.append(1_700_000_000_000, None, value)
    return b.seal()


def bench_append(batch: bytes, n: int, tmp: str) -> tuple[float, float, PartitionLog, str]:
    """Returns (raw seconds, log seconds, the open log, the raw file path)."""
    raw_path = os.path.join(tmp, "raw.bin")
    fd = os.open(raw_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    write = os.write
    write(fd, batch)  # warm-up, as on the log side
    t0 = time.perf_counter()
    for _ in range(n):
        write(fd, batch)
    raw_s = time.perf_counter() - t0
    os.close(fd)
    cfg = LogConfig(segment_bytes=1 << 31, retention_ms=None)
    plog = PartitionLog.open(os.path.join(tmp, "log"), cfg, ManualClock())
    append = plog.append_as_leader
    append(batch, 1)  # warm-up: the first append of an epoch persists the epoch file
    t0 = time.perf_counter()
    for _ in range(n):
        append(batch, 1)
    log_s = time.perf_counter() - t0
    return raw_s, log_s, plog, raw_path


def bench_follower(batch: bytes, n: int, tmp: str) -> tuple[float, float]:
    """Follower appends of ~1 MiB fetch responses made of `batch`-sized batches."""
    per = max(1, (1 << 20) // len(batch))
    bufs = []
    offset = 0
    rpb = int.from_bytes(batch[57:61], "big")
    for _ in range(max(1, n // per)):
        buf = bytearray(batch * per)
        for i in range(per):
            stamp_batch(buf, i * len(batch), offset, 1)
            offset += rpb
        bufs.append(bytes(buf))
    raw_path = os.path.join(tmp, "raw-f.bin")
    fd = os.open(raw_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    write = os.write
    t0 = time.perf_counter()
    for b in bufs:
        write(fd, b)
    raw_s = time.perf_counter() - t0
    os.close(fd)
    plog = PartitionLog.open(os.path.join(tmp, "flog"), LogConfig(segment_bytes=1 << 31),
                             ManualClock())
    append = plog.append_as_follower
    t0 = time.perf_counter()
    for b in bufs:
        append(b)
    log_s = time.perf_counter() - t0
    plog.close()
    return raw_s, log_s


def bench_read(plog: PartitionLog, raw_path: str, records_per_batch: int,
               batch_size: int) -> tuple[float, float, int]:
    ranges: list[tuple[int, int]] = []
    read = plog.read
    end = plog.log_end_offset
    offset = 0
    pos = 0
    total = 0
    t0 = time.perf_counter()
    offset = plog.read(0, READ_MAX_BYTES).nbytes and 0  # warm-up
    while offset < end:
        data = read(offset, READ_MAX_BYTES)
        n = len(data)
        ranges.append((pos, n))
        pos += n
        total += n
        offset += (n // batch_size) * records_per_batch
    log_s = time.perf_counter() - t0
    fd = os.open(raw_path, os.O_RDONLY)
    pread = os.pread
    t0 = time.perf_counter()
    data = b""
    for p, n in ranges:
        data = pread(fd, n, p)  # held until the next read, like the log side's result
    del data
    raw_s = time.perf_counter() - t0
    os.close(fd)
    return raw_s, log_s, total


def bench_index(tmp: str) -> float:
    path = os.path.join(tmp, "bench.index")
    idx = OffsetIndex(path, 0, 1 << 20, True)
    n = idx.capacity_entries
    for i in range(n):
        idx.append(i * 10 + 1, i * 4096 + 1)
    rnd = random.Random(7)
    targets = [rnd.randrange(0, n * 10) for _ in range(100_000)]
    lookup = idx.lookup
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for t in targets:
            lookup(t)
        samples.append((time.perf_counter() - t0) / len(targets))
    idx.close()
    return statistics.median(samples) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--total-mib", type=int, default=64, help="bytes appended per run")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default=None, help="folder for the files (default: a tempdir)")
    args = ap.parse_args()
    print(f"python {platform.python_version()} ({platform.machine()}), msgpack "
          f"{version('msgpack')}, crc32c {version('crc32c')}, {os.cpu_count()} CPUs; "
          f"{args.total_mib} MiB per run, median of {args.runs} runs, no fsync")
    print()
    hdr = (f"| {'batch':>7} | {'append MB/s':>11} | {'raw write MB/s':>14} | {'ratio':>5} | "
           f"{'batches/s':>9} | {'read MB/s':>9} | {'raw pread MB/s':>14} | {'ratio':>5} | "
           f"{'follower MB/s':>13} | {'raw MB/s':>8} | {'ratio':>5} |")
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for size in (1024, 16 * 1024, 1024 * 1024):
        batch = make_batch(size)
        bsize = len(batch)
        rpb = int.from_bytes(batch[57:61], "big")
        n = max(1, (args.total_mib << 20) // bsize)
        raw_w, log_w, raw_r, log_r, raw_f, log_f = [], [], [], [], [], []
        for _ in range(args.runs):
            tmp = tempfile.mkdtemp(prefix="dmq-log-bench-", dir=args.dir)
            try:
                rw, lw, plog, raw_path = bench_append(batch, n, tmp)
                rr, lr, total = bench_read(plog, raw_path, rpb, bsize)
                plog.close()
                rf, lf = bench_follower(batch, n, tmp)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            mb = n * bsize / 1e6
            raw_w.append(mb / rw)
            log_w.append(mb / lw)
            raw_r.append(total / 1e6 / rr)
            log_r.append(total / 1e6 / lr)
            per = max(1, (1 << 20) // bsize)
            fmb = max(1, n // per) * per * bsize / 1e6
            raw_f.append(fmb / rf)
            log_f.append(fmb / lf)
        a, ra = statistics.median(log_w), statistics.median(raw_w)
        r, rr_ = statistics.median(log_r), statistics.median(raw_r)
        f, rf_ = statistics.median(log_f), statistics.median(raw_f)
        label = f"{size // 1024} KiB" if size < 1 << 20 else "1 MiB"
        print(f"| {label:>7} | {a:>11.0f} | {ra:>14.0f} | {a / ra:>5.2f} | "
              f"{a * 1e6 / bsize:>9.0f} | {r:>9.0f} | {rr_:>14.0f} | {r / rr_:>5.2f} | "
              f"{f:>13.0f} | {rf_:>8.0f} | {f / rf_:>5.2f} |")
    tmp = tempfile.mkdtemp(prefix="dmq-log-bench-", dir=args.dir)
    try:
        us = bench_index(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(f"OffsetIndex.lookup, 131072 entries, random targets: median {us:.2f} us per lookup")


if __name__ == "__main__":
    main()
