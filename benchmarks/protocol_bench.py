"""Protocol benchmark: frame encode+decode throughput, and request/response round trips
over a real loopback connection with 1 and with 64 requests in flight.

    python benchmarks/protocol_bench.py [--runs 5] [--quick]

Prints medians of `--runs` runs. Baseline for the round-trip case: a bare asyncio
protocol echoing length-prefixed frames in the same process (no msgpack, no dispatch),
so the ratio shows what our codec, dispatch and futures cost.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import struct
import sys
import time
from typing import Any

import msgpack
import uvloop

from dmq.protocol.api import ApiKey
from dmq.protocol.codec import FrameDecoder, decode_request, encode_request
from dmq.protocol.connection import Connection
from dmq.protocol.server import ProtocolServer, RequestContext


def bench_codec(body_bytes: int, count: int) -> tuple[float, float]:
    """frames/s and MB/s for encode + incremental decode + parse of requests."""
    body = {"v": b"x" * body_bytes}
    dec = FrameDecoder(max_frame_bytes=64 * 1024 * 1024)
    t0 = time.perf_counter()
    total = 0
    for i in range(count):
        frame = encode_request(ApiKey.PRODUCE, 0, i, "bench", body)
        total += len(frame)
        for payload in dec.feed(frame):
            decode_request(payload)
    dt = time.perf_counter() - t0
    return count / dt, total / dt / 1e6


async def bench_rtt(in_flight: int, total: int) -> float:
    server = ProtocolServer(host="127.0.0.1", port=0, node_id="bench")

    def echo(ctx: RequestContext, body: Any) -> Any:
        return body

    server.register(ApiKey.METADATA, echo)
    await server.start()
    conn = await Connection.open("127.0.0.1", server.bound_port)
    body = {"v": b"x" * 100}
    per_worker = total // in_flight

    async def worker() -> None:
        for _ in range(per_worker):
            await conn.request(ApiKey.METADATA, body)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    dt = time.perf_counter() - t0
    await conn.close()
    await server.close()
    return per_worker * in_flight / dt


class _RawEcho(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        self.t.write(data)


class _RawClient(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiters: list[asyncio.Future[None]] = []

    def connection_made(self, transport: Any) -> None:
        self.t = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            (n,) = struct.unpack_from(">I", self.buf)
            if len(self.buf) < 4 + n:
                break
            del self.buf[: 4 + n]
            self.waiters.pop(0).set_result(None)


async def bench_raw_rtt(in_flight: int, total: int) -> float:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_RawEcho, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    _, proto = await loop.create_connection(_RawClient, "127.0.0.1", port)
    payload = msgpack.packb([3, 0, 1, "bench", {"v": b"x" * 100}])
    frame = struct.pack(">I", len(payload)) + payload
    per_worker = total // in_flight

    async def worker() -> None:
        for _ in range(per_worker):
            fut = loop.create_future()
            proto.waiters.append(fut)
            proto.t.write(frame)
            await fut

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    dt = time.perf_counter() - t0
    proto.t.close()
    server.close()
    await server.wait_closed()
    return per_worker * in_flight / dt


def median_of(runs: int, fn: Any) -> Any:
    results = [fn() for _ in range(runs)]
    if isinstance(results[0], tuple):
        return tuple(statistics.median(r[i] for r in results) for i in range(len(results[0])))
    return statistics.median(results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small counts (smoke test)")
    args = ap.parse_args()
    scale = 0.05 if args.quick else 1.0
    uvloop.install() if sys.version_info < (3, 12) else None
    print(f"python {platform.python_version()} msgpack {msgpack.version} uvloop "
          f"{uvloop.__version__} on {platform.machine()} ({platform.system()})")
    print(f"medians of {args.runs} runs\n")
    print(f"{'case':<44}{'frames/s':>14}{'MB/s':>12}")
    for label, size, count in (("encode+decode 100 B body", 100, 200_000),
                               ("encode+decode 1 MiB body", 1 << 20, 400)):
        n = max(10, int(count * scale))
        fps, mbs = median_of(args.runs, lambda s=size, c=n: bench_codec(s, c))
        print(f"{label:<44}{fps:>14,.0f}{mbs:>12,.1f}")
    print()
    head = "round trips over loopback (100 B body)"
    print(f"{head:<44}{'req/s':>14}{'raw echo':>12}{'ratio':>8}")
    for in_flight, total in ((1, 20_000), (64, 128_000)):
        n = max(in_flight * 10, int(total * scale))
        ours = median_of(args.runs, lambda f=in_flight, t=n: asyncio.run(bench_rtt(f, t)))
        raw = median_of(args.runs, lambda f=in_flight, t=n: asyncio.run(bench_raw_rtt(f, t)))
        print(f"{f'{in_flight} in flight':<44}{ours:>14,.0f}{raw:>12,.0f}{ours / raw:>8.2f}")


if __name__ == "__main__":
    main()
