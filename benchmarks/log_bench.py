"""Log engine micro-benchmark: PartitionLog vs raw os.write / os.pread in the same run.

Measures, for 1 KiB, 16 KiB and 1 MiB batches:
- leader append: `PartitionLog.append_as_leader(batch, epoch)`, one batch per call as the
  broker's produce path calls it (validate header + CRC, stamp offset and epoch, one
  writev, index upkeep) vs `os.write` of the same bytes to a plain file;
- sequential read: `PartitionLog.read(offset, 1 MiB)` from offset 0 to the end vs
  `os.pread` of exactly the same (position, length) ranges of a plain file, each result
  held until the next read on both sides;
- follower append: `PartitionLog.append_as_follower` of ~1 MiB fetch responses made of
  such batches (validate + CRC per batch) vs `os.write` of the same; each response is
  copied (untimed) just before the call on both sides, as if just read from a socket;
- index lookup latency: `OffsetIndex.lookup` on a full 1 MiB index, random targets;
- the leader's record check (`check_client_batch`, part of every leader append above):
  its cost per batch and per record for a few record sizes and codecs, against the
  CRC-32C of the same batch in the same run.

`--open-logs N` instead measures opening N small logs (one 1 KiB batch each, fsync on,
one after another in this process as a broker's loader thread would): after a clean
stop (`close`) and after an unclean one (a new leader epoch and one more batch, then
`abandon`, as `kill -9` leaves them), the median of --runs runs each. `os.sync()` runs
(untimed) before each timed open.

Each figure is the median of --runs runs. Within a run the two sides of a comparison
alternate which goes first, and `os.sync()` runs (untimed) before every timed write
phase so both start with no dirty pages. No fsync inside the timed loops (the default
flush policy): both sides measure the page-cache path.

    .venv/bin/python benchmarks/log_bench.py [--total-mib 32] [--runs 5]
    .venv/bin/python benchmarks/log_bench.py --open-logs 10000 --runs 3
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
from collections.abc import Callable
from importlib.metadata import version

from crc32c import crc32c

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dmq.clock import ManualClock  # noqa: E402
from dmq.log import BatchBuilder, LogConfig, PartitionLog, stamp_batch  # noqa: E402
from dmq.log.batch import CRC_START, check_client_batch, validate_raw  # noqa: E402
from dmq.log.codecs import CODEC_LZ4, CODEC_NAMES, CODEC_NONE, CODEC_ZSTD  # noqa: E402
from dmq.log.index import OffsetIndex  # noqa: E402

READ_MAX_BYTES = 1 << 20
FETCH_BYTES = 1 << 20
LOG_CONFIG = LogConfig(segment_bytes=(1 << 31) - 1, retention_ms=None)


def make_batch(batch_bytes: int) -> bytes:
    record_bytes = min(1024, batch_bytes // 2)
    value = os.urandom(record_bytes)
    b = BatchBuilder(producer_id=-1)
    while b.estimated_size_bytes + record_bytes + 12 <= batch_bytes:
        b.append(1_700_000_000_000, None, value)
    if b.record_count == 0:
        b.append(1_700_000_000_000, None, value)
    return b.seal()


def timed(fn: Callable[[], None]) -> float:
    os.sync()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def raw_writer(path: str, bufs: list[bytes], first: bytes) -> Callable[[], None]:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    os.write(fd, first)  # warm-up, as on the log side

    def run() -> None:
        write = os.write
        for b in bufs:
            write(fd, b)
        os.close(fd)

    return run


def compare(raw: Callable[[], None], log: Callable[[], None], log_first: bool) -> tuple[
        float, float]:
    if log_first:
        log_s = timed(log)
        raw_s = timed(raw)
    else:
        raw_s = timed(raw)
        log_s = timed(log)
    return raw_s, log_s


def rotated(sides: dict[str, Callable[[], float]], rotation: int) -> dict[str, float]:
    """Run each side once (it returns its seconds), starting with a different side on
    each run so that none always meets the page cache in the same state."""
    names = list(sides)
    k = rotation % len(names)
    return {name: sides[name]() for name in names[k:] + names[:k]}


def crc_checked_writer(path: str, bufs: list[bytes], first: bytes,
                       batch_bytes: int) -> Callable[[], None]:
    """The floor: what any append must do with these bytes and nothing else. Checks the
    CRC-32C of every batch (as the log does, from a memoryview slice), then writes the
    buffer with one `os.write`; no offsets, stamping or index upkeep."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    os.write(fd, first)

    def run() -> None:
        write = os.write
        for b in bufs:
            mv = memoryview(b)
            for pos in range(0, len(b), batch_bytes):
                if crc32c(mv[pos + CRC_START : pos + batch_bytes]) != int.from_bytes(
                        mv[pos + 17 : pos + 21]):
                    raise AssertionError("CRC mismatch")
            write(fd, b)
        os.close(fd)

    return run


def run_once(batch: bytes, n: int, tmp: str, rotation: int) -> dict[str, float]:
    log_first = rotation % 2 == 1
    bsize = len(batch)
    rpb = int.from_bytes(batch[57:61], "big")
    out: dict[str, float] = {}
    # leader append, one batch per call
    plog = PartitionLog.open(os.path.join(tmp, "log"), LOG_CONFIG, ManualClock())
    plog.append_as_leader(batch, 1)  # warm-up: the first append of an epoch writes a file

    def log_append() -> None:
        append = plog.append_as_leader
        for _ in range(n):
            append(batch, 1)

    raw_path = os.path.join(tmp, "raw.bin")
    floor_path = os.path.join(tmp, "floor.bin")
    secs = rotated({"append": lambda: timed(log_append),
                    "raw_write": lambda: timed(raw_writer(raw_path, [batch] * n, batch)),
                    "floor": lambda: timed(crc_checked_writer(floor_path, [batch] * n, batch,
                                                              bsize))}, rotation)
    out.update({k: n * bsize / v for k, v in secs.items()})
    os.unlink(floor_path)
    # sequential read of what was just written
    ranges: list[tuple[int, int]] = []

    def log_read() -> None:
        read = plog.read
        end = plog.log_end_offset
        offset = pos = 0
        while offset < end:
            data = read(offset, READ_MAX_BYTES)
            k = len(data)
            ranges.append((pos, k))
            pos += k
            offset += (k // bsize) * rpb

    log_read()  # records the ranges; timed again below
    fd = os.open(raw_path, os.O_RDONLY)

    def raw_read() -> None:
        pread = os.pread
        data = b""
        for p, k in ranges:
            data = pread(fd, k, p)  # held until the next read, like the log side
        del data

    total = sum(k for _, k in ranges)
    ranges_copy = list(ranges)

    def log_read_timed() -> None:
        ranges.clear()
        log_read()

    raw_s, log_s = compare(raw_read, log_read_timed, log_first)
    assert ranges == ranges_copy
    os.close(fd)
    out["read"], out["raw_read"] = total / log_s, total / raw_s
    plog.close()
    # follower append of ~1 MiB fetch responses
    per = max(1, FETCH_BYTES // bsize)
    bufs = []
    offset = 0
    for _ in range(max(1, n // per)):
        buf = bytearray(batch * per)
        for i in range(per):
            stamp_batch(buf, i * bsize, offset, 1)
            offset += rpb
        bufs.append(bytes(buf))
    flog = PartitionLog.open(os.path.join(tmp, "flog"), LOG_CONFIG, ManualClock())

    def fed(fn: Callable[[bytes], object]) -> Callable[[], float]:
        """Feed each response freshly copied (untimed), as if just read from a socket."""
        def run() -> float:
            spent = 0.0
            clock = time.perf_counter
            for b in bufs:
                fresh = bytes(bytearray(b))
                t0 = clock()
                fn(fresh)
                spent += clock() - t0
            return spent
        return run

    raw_fd = os.open(os.path.join(tmp, "raw-f.bin"),
                     os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    floor_fd = os.open(os.path.join(tmp, "floor-f.bin"),
                       os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)

    def floor_follower(b: bytes) -> None:
        mv = memoryview(b)
        for pos in range(0, len(b), bsize):
            if crc32c(mv[pos + CRC_START : pos + bsize]) != int.from_bytes(
                    mv[pos + 17 : pos + 21]):
                raise AssertionError("CRC mismatch")
        os.write(floor_fd, b)

    def synced(run: Callable[[], float]) -> Callable[[], float]:
        def go() -> float:
            os.sync()
            return run()
        return go

    secs = rotated({"follower": synced(fed(flog.append_as_follower)),
                    "raw_follower": synced(fed(lambda b: os.write(raw_fd, b))),
                    "floor_follower": synced(fed(floor_follower))}, rotation)
    os.close(raw_fd)
    os.close(floor_fd)
    fbytes = len(bufs) * per * bsize
    out.update({k: fbytes / v for k, v in secs.items()})
    flog.close()
    return out


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


def bench_record_check() -> list[str]:
    """Rows of the record-check table: median of 5 timings of `check_client_batch` and
    of `crc32c` over the same batch (`ratio` = check / CRC time)."""
    rows = []
    rnd = random.Random(3)
    for codec in (CODEC_NONE, CODEC_ZSTD, CODEC_LZ4):
        for value_bytes, count in ((100, 1), (100, 150), (1024, 15), (1024, 1000), (10, 5000)):
            if codec != CODEC_NONE and count < 150:
                continue
            b = BatchBuilder(codec=codec)
            for i in range(count):  # half random, half repeated: compressible, not trivially
                half = value_bytes // 2
                b.append(1_700_000_000_000 + i, b"key-%d" % (i % 100),
                         rnd.randbytes(half) + bytes(value_bytes - half))
            mv = memoryview(b.seal())
            t = validate_raw(mv)[0]
            reps = max(20, 200_000 // count)
            check, crc = [], []
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(reps):
                    check_client_batch(mv, t)
                t1 = time.perf_counter()
                for _ in range(reps):
                    crc32c(mv[CRC_START:])
                t2 = time.perf_counter()
                check.append((t1 - t0) / reps)
                crc.append((t2 - t1) / reps)
            c = statistics.median(check)
            rows.append(f"| {CODEC_NAMES[codec]:5} | {value_bytes:5} B | {count:5} | "
                        f"{len(mv):8} | {c * 1e6:8.1f} | {c * 1e9 / count:6.0f} | "
                        f"{c / statistics.median(crc):6.1f} |")
    return rows


def bench_open_logs(n: int, runs: int, base_dir: str | None) -> None:
    tmp = tempfile.mkdtemp(prefix="dmq-log-bench-", dir=base_dir)
    batch = make_batch(1024)
    dirs = [os.path.join(tmp, f"t-{i}") for i in range(n)]
    try:
        for d in dirs:
            plog = PartitionLog.open(d, LOG_CONFIG)
            plog.append_as_leader(batch, 1)
            plog.close()
        clean: list[float] = []
        unclean: list[float] = []
        for run in range(runs):
            os.sync()
            t0 = time.perf_counter()
            logs = [PartitionLog.open(d, LOG_CONFIG) for d in dirs]
            clean.append(time.perf_counter() - t0)
            for plog in logs:  # a new leadership writes, then the process dies
                plog.append_as_leader(batch, 2 + run)
                plog.abandon()
            os.sync()
            t0 = time.perf_counter()
            logs = [PartitionLog.open(d, LOG_CONFIG) for d in dirs]
            unclean.append(time.perf_counter() - t0)
            for plog in logs:
                plog.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for label, xs in (("a clean stop", clean), ("an unclean stop", unclean)):
        med = statistics.median(xs)
        print(f"open {n} logs after {label}: median {med:.2f} s ({med / n * 1e6:.0f} us "
              f"per log), runs {', '.join(f'{x:.2f}' for x in xs)} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--total-mib", type=int, default=32, help="bytes appended per run")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default=None, help="folder for the files (default: a tempdir)")
    ap.add_argument("--open-logs", type=int, default=0, metavar="N",
                    help="only measure opening N small logs (clean and unclean stop)")
    args = ap.parse_args()
    if args.open_logs:
        print(f"python {platform.python_version()}, {os.cpu_count()} CPUs; opening "
              f"{args.open_logs} logs, median of {args.runs} runs, fsync on")
        bench_open_logs(args.open_logs, args.runs, args.dir)
        return
    print(f"python {platform.python_version()} ({platform.machine()}), msgpack "
          f"{version('msgpack')}, crc32c {version('crc32c')}, {os.cpu_count()} CPUs; "
          f"{args.total_mib} MiB per run, median of {args.runs} runs, no fsync in loops")
    print()
    cols = ["batch", "append MB/s", "raw write MB/s", "ratio", "floor", "batches/s",
            "read MB/s", "raw pread MB/s", "ratio", "follower MB/s", "raw write MB/s", "ratio",
            "floor"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("-" * (len(c) + 2) for c in cols) + "|")
    pairs = {"r_append": ("append", "raw_write"), "r_floor": ("floor", "raw_write"),
             "r_read": ("read", "raw_read"), "r_follower": ("follower", "raw_follower"),
             "r_floor_follower": ("floor_follower", "raw_follower")}
    for size in (1024, 16 * 1024, 1024 * 1024):
        batch = make_batch(size)
        n = max(1, (args.total_mib << 20) // len(batch))
        samples: dict[str, list[float]] = {}
        for run in range(args.runs):
            tmp = tempfile.mkdtemp(prefix="dmq-log-bench-", dir=args.dir)
            try:
                got = run_once(batch, n, tmp, rotation=run)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            for k, v in got.items():
                samples.setdefault(k, []).append(v / 1e6)
            for k, (a, b) in pairs.items():  # ratios within a run, then their median
                samples.setdefault(k, []).append(got[a] / got[b])
        m = {k: statistics.median(v) for k, v in samples.items()}
        label = f"{size // 1024} KiB" if size < 1 << 20 else "1 MiB"
        cells = [label, f"{m['append']:.0f}", f"{m['raw_write']:.0f}", f"{m['r_append']:.2f}",
                 f"{m['r_floor']:.2f}", f"{m['append'] * 1e6 / len(batch):.0f}",
                 f"{m['read']:.0f}", f"{m['raw_read']:.0f}", f"{m['r_read']:.2f}",
                 f"{m['follower']:.0f}", f"{m['raw_follower']:.0f}", f"{m['r_follower']:.2f}",
                 f"{m['r_floor_follower']:.2f}"]
        print("| " + " | ".join(c.rjust(len(h)) for c, h in zip(cells, cols, strict=True))
              + " |")
    tmp = tempfile.mkdtemp(prefix="dmq-log-bench-", dir=args.dir)
    try:
        us = bench_index(tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    print(f"OffsetIndex.lookup, 131072 entries, random targets: median {us:.2f} us per lookup")
    print()
    print("Leader record check (check_client_batch), median of 5; ratio = check / CRC-32C "
          "of the same batch")
    print()
    print("| codec | value   | records | batch B  | us/batch | ns/rec | ratio  |")
    print("|-------|---------|---------|----------|----------|--------|--------|")
    for row in bench_record_check():
        print(row)


if __name__ == "__main__":
    main()
