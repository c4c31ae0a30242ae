"""Read-path micro-benchmark: several interleaved sequential readers of one log.

A leader's partition is read by its two followers and by consumers, each sequentially
from where its last read ended. This measures `PartitionLog.read_span` for `--readers`
readers taking turns (reader 0 reads, then reader 1, ...), each starting at its own
place in the log (spread evenly over it) and reading `--max-bytes` per call, against
the same loop with one reader. The log holds `--batches` batches of 10 records of 100 B
(~1.2 KiB each, one segment, an index entry every 4 KiB); a reader reaching the log end
starts again at offset 0. Printed: the time per read, the minimum over `--rounds`
rounds of `--reads` reads each (time.perf_counter; the log is in the page cache).

Imports dmq from the usual path, so `PYTHONPATH=<another tree>` measures that tree:

    .venv/bin/python benchmarks/read_hints_bench.py
    PYTHONPATH=/tmp/before .venv/bin/python benchmarks/read_hints_bench.py
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import dmq
from dmq.clock import ManualClock
from dmq.log import LogConfig, PartitionLog
from dmq.log.batch import build_batch


def _build(directory: str, batches: int) -> PartitionLog:
    plog = PartitionLog(directory, LogConfig(segment_bytes=(1 << 31) - 1, retention_ms=None,
                                             index_interval_bytes=4096),
                        clock=ManualClock())
    records = [(None, bytes([i]) * 100) for i in range(10)]
    data = build_batch(records, timestamp_ms=1_700_000_000_000)
    for _ in range(batches):
        plog.append_as_leader(data, 0)
    return plog


def _round(plog: PartitionLog, starts: list[int], reads: int, max_bytes: int) -> float:
    offsets = list(starts)
    n = len(offsets)
    leo = plog.log_end_offset
    read_span = plog.read_span
    t0 = time.perf_counter()
    for k in range(reads):
        r = k % n
        _, end = read_span(offsets[r], max_bytes)
        offsets[r] = 0 if end >= leo else end
    return (time.perf_counter() - t0) / reads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=4000)
    ap.add_argument("--readers", type=int, default=3)
    ap.add_argument("--max-bytes", type=int, default=16384)
    ap.add_argument("--reads", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    directory = tempfile.mkdtemp(prefix="dmq-read-hints-")
    try:
        plog = _build(directory, args.batches)
        leo = plog.log_end_offset
        many = [leo * r // args.readers // 10 * 10 for r in range(args.readers)]
        best: dict[str, float] = {}
        for _ in range(args.rounds):  # the two cases alternate within the run
            for name, starts in (("1 reader", [0]), (f"{args.readers} readers", many)):
                t = _round(plog, starts, args.reads, args.max_bytes)
                best[name] = min(best.get(name, t), t)
        plog.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print(f"# dmq from {dmq.__file__}; {args.batches} batches, max_bytes {args.max_bytes}")
    for name, t in best.items():
        print(f"{name}: {t * 1e6:.2f} us per read (min of {args.rounds} rounds)")


if __name__ == "__main__":
    main()
