"""Shared pieces of the abuse suite: a real 3-controller + 3-broker cluster, a canary
topic written with acks=all before a probe, and the check every cluster-killer probe
ends with (an active controller named by `dmq cluster status` within 10 s, and every
acknowledged canary record readable).

Raw frames are sent with `send_frames`/`request_raw` so a probe can put exactly the
bytes of its reproduction on the wire, whatever the client library would refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import msgpack

from dmq.cli.dev import ensure_topic
from dmq.client import Consumer, Producer, TopicPartition
from tests.support.procs import ProcessCluster
from tests.support.waiting import wait_until

CANARY_TOPIC = "canary"


def frame(obj: Any) -> bytes:
    payload = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(payload)) + payload


def read_frame(sock: socket.socket) -> Any:
    """The next response frame on `sock`, decoded; None when the node closed (or reset)
    the connection."""
    head = _read_exactly(sock, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    body = _read_exactly(sock, n)
    return None if body is None else msgpack.unpackb(body, raw=False, strict_map_key=False)


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks: list[bytes] = []
    while n:
        try:
            chunk = sock.recv(min(n, 1 << 20))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def call(sock: socket.socket, obj: Any) -> Any:
    """Send one request frame (any shape) on `sock`; its decoded response."""
    sock.sendall(frame(obj))
    return read_frame(sock)


def request_raw(port: int, obj: Any, timeout_s: float = 5.0, host: str = "127.0.0.1") -> Any:
    """Send one request frame on a new connection and return the decoded response, or
    None when the node closed the connection without answering."""
    with socket.create_connection((host, port), timeout=timeout_s) as s:
        return call(s, obj)


async def write_canary(bootstrap: str, n: int = 50, topic: str = CANARY_TOPIC) -> list[bytes]:
    """Create the canary topic (3 partitions, RF 3) and write `n` records with acks=all;
    returns the acknowledged values."""
    await ensure_topic(bootstrap, topic, 3, 3, timeout_s=30)
    values = [b"canary-%d" % i for i in range(n)]
    async with Producer(bootstrap, acks="all", linger_ms=1) as p:
        handles = [await p.send(topic, v, partition=i % 3) for i, v in enumerate(values)]
        await p.flush()
        for h in handles:
            h.result()
    return values


async def read_canary(bootstrap: str, topic: str = CANARY_TOPIC,
                      timeout_s: float = 20.0) -> set[bytes]:
    seen: set[bytes] = set()
    tps = [TopicPartition(topic, p) for p in range(3)]
    async with Consumer(bootstrap, auto_offset_reset="earliest") as c:
        c.assign(tps)
        ends = await c.end_offsets(tps)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = await c.getmany(timeout_ms=500)
            for recs in got.values():
                seen.update(r.value for r in recs)
            positions = [await c.position(tp) for tp in tps]
            if all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True)):
                break
    return seen


def cluster_status(pc: ProcessCluster, timeout_s: float = 10.0) -> dict[str, Any]:
    """`dmq cluster status --json` until it names an active controller, or raise."""
    last = ""

    def status() -> dict[str, Any] | None:
        nonlocal last
        out = subprocess.run(
            [sys.executable, "-m", "dmq.cli", "cluster", "status", "--bootstrap", pc.bootstrap,
             "--json", "--timeout-ms", "3000"],
            capture_output=True, text=True, timeout=30)
        last = out.stdout + out.stderr
        if out.returncode == 0:
            st = json.loads(out.stdout)
            if st.get("controller_id", -1) >= 0:
                return dict(st)
        return None

    return wait_until(status, timeout_s, lambda: f"an active controller; last output: {last}",
                      interval_s=0.2)


async def assert_cluster_healthy(pc: ProcessCluster, canary: list[bytes]) -> None:
    """The acceptance check after a cluster-killer probe."""
    await asyncio.get_running_loop().run_in_executor(None, cluster_status, pc)
    seen = await read_canary(pc.bootstrap)
    missing = set(canary) - seen
    assert not missing, f"{len(missing)} acknowledged canary records unreadable"


@contextlib.contextmanager
def canary_cluster(settings: dict[str, Any] | None = None
                   ) -> Iterator[tuple[ProcessCluster, list[bytes]]]:
    """A started 3-controller + 3-broker cluster and its acknowledged canary records."""
    with ProcessCluster(controllers=3, brokers=3, settings=settings or {}) as pc:
        pc.start()
        yield pc, asyncio.run(write_canary(pc.bootstrap))
