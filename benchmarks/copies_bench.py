"""Copies of record bytes on the wire path (issue 20 item 4), in one process: a real
`Connection` sends PRODUCE requests of 1 MiB batches (ten 100 KiB records) over
loopback to a real `ProtocolServer`, whose handler appends them to a real
`PartitionLog`; then FETCH requests read them back (the log's bytes answered as a
`VectoredBody`, as the broker does). Only the wire layer and the log are in the
path, so the figures isolate what the frame format costs.

Per MiB of records it prints, for each direction:
- `alloc MiB`: tracemalloc's peak of memory allocated above the level before the
  request, while it is sent, received, decoded and handled (client and server both in
  this process, one request at a time). Every user-space copy of a batch is an
  allocation of its size alive until the next stage copies it again, so this counts
  the copies alive at once: a 1 MiB frame buffer the socket is read into is 1.0; a
  frame joined from chunks and unpacked again, ~3.
- `cpu ms`: process CPU per MiB (a separate pass without tracemalloc).

Runs against whatever `dmq` is imported (PYTHONPATH selects a tree), so the same
script measures the code before and after a change:

    .venv/bin/python benchmarks/copies_bench.py [--loop uvloop|asyncio] [--mib 64]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
import tracemalloc
from typing import Any

from dmq.clock import ManualClock
from dmq.log import LogConfig, PartitionLog
from dmq.log.batch import BatchBuilder
from dmq.protocol.api import ApiKey
from dmq.protocol.codec import VectoredBody
from dmq.protocol.connection import Connection
from dmq.protocol.server import ProtocolServer

MiB = 1 << 20
RECORD = 100 * 1024


def _batches(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        b = BatchBuilder(0)
        for j in range(10):
            b.append(1_700_000_000_000, None, bytes([(i + j) % 251]) * RECORD)
        out.append(b.seal())
    return out


async def run(mib: int) -> dict[str, float]:
    d = tempfile.mkdtemp(prefix="dmq-copies-")
    plog = PartitionLog.open(d, LogConfig(max_message_bytes=8 * MiB), ManualClock(),
                             fsync_enabled=False)
    server = ProtocolServer(host="127.0.0.1", port=0, node_id=1)

    def produce(_ctx: Any, body: Any) -> Any:
        for _, rows in body["topics"]:
            for _, _, records in rows:
                plog.append_as_leader(records, 0)
        return {"topics": []}

    def fetch(_ctx: Any, body: Any) -> Any:
        offset = body["topics"][0][1][0][1]
        return VectoredBody(records=plog.read(offset, 2 * MiB))

    server.register(ApiKey.PRODUCE, produce)
    server.register(ApiKey.FETCH, fetch)
    await server.start()

    async def connect() -> Connection:
        try:
            return await Connection.open("127.0.0.1", server.bound_port, raw_frames=True)
        except TypeError:  # a tree without raw-form frames
            return await Connection.open("127.0.0.1", server.bound_port)

    conn = await connect()
    batches = _batches(mib)
    out: dict[str, float] = {"raw": float(getattr(conn, "raw_frames", False))}

    async def produce_one(c: Connection, b: bytes) -> int:
        await c.request(ApiKey.PRODUCE, VectoredBody(
            acks=1, timeout_ms=30_000, topics=[["t", [[0, -1, b]]]]))
        return len(b)

    async def fetch_one(c: Connection, offset: int) -> int:
        body = {"max_wait_ms": 0, "min_bytes": 1, "max_bytes": 2 * MiB,
                "topics": [["t", [[0, offset, -1, 2 * MiB]]]]}
        resp = await c.request(ApiKey.FETCH, VectoredBody(body))
        return len(resp["records"])

    async def peak_per_mib(step: Any) -> float:
        """Peak allocation above the start of one request, per MiB it moved; on a
        connection of its own (a transport may hold the last buffer it read into
        until its next read, which would hide the previous frame's release)."""
        c = await connect()
        try:
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            moved = await step(c)
            return (tracemalloc.get_traced_memory()[1] - base) / moved
        finally:
            await c.close()

    try:
        for b in batches[:4]:  # warm-up
            await produce_one(conn, b)
        for o in range(0, 40, 10):
            await fetch_one(conn, o)
        start = plog.log_end_offset
        t0 = time.process_time()
        moved = 0
        for b in batches:
            moved += await produce_one(conn, b)
        out["produce cpu ms"] = (time.process_time() - t0) * 1000 / (moved / MiB)
        t0 = time.process_time()
        moved = 0
        for i in range(mib):
            moved += await fetch_one(conn, start + 10 * i)
        out["fetch cpu ms"] = (time.process_time() - t0) * 1000 / (moved / MiB)
        tracemalloc.start()
        n = max(8, mib // 4)
        out["produce alloc MiB"] = statistics.median(
            [await peak_per_mib(lambda c, b=b: produce_one(c, b)) for b in batches[:n]])
        out["fetch alloc MiB"] = statistics.median(
            [await peak_per_mib(lambda c, i=i: fetch_one(c, start + 10 * i)) for i in range(n)])
        tracemalloc.stop()
    finally:
        await conn.close()
        await server.close()
        plog.close()
        shutil.rmtree(d, ignore_errors=True)
    return out




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    ap.add_argument("--mib", type=int, default=64, help="MiB of records per direction")
    args = ap.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.install()
    r = asyncio.run(run(args.mib))
    print(f"loop={args.loop} raw_frames={bool(r['raw'])} "
          + " ".join(f"{k}={v:.2f}" for k, v in r.items() if k != "raw"))


if __name__ == "__main__":
    main()
