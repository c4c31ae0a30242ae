"""Wire-protocol helpers for the broker's real-process tests (no dmq.client); used by
the e2e, security and chaos tests too, so they live with the shared test support."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from dmq.log.batch import build_batch, iter_headers, iter_records
from dmq.log.partition_log import PartitionLog
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import Connection
from dmq.protocol.errors import DmqError
from tests.support.inproc_broker import bytes_below
from tests.support.procs import ProcessCluster
from tests.support.waiting import async_wait_until

FAST: dict[str, Any] = {
    "broker.session.timeout.ms": 2000,
    "broker.heartbeat.interval.ms": 200,
    "replica.lag.time.max.ms": 1500,
    "replica.fetch.wait.max.ms": 200,
    "auto.leader.rebalance.enable": False,
}


async def wait_until(pred: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    """`async_wait_until` of an awaited predicate; a protocol or socket error counts
    as "not yet" (the node may be starting or restarting)."""
    await async_wait_until(pred, timeout_s, what, ignore=(DmqError, OSError))


class Wire:
    """Connections to the nodes of a ProcessCluster, opened on demand."""

    def __init__(self, cluster: ProcessCluster) -> None:
        self.cluster = cluster
        self.conns: dict[int, Connection] = {}

    async def conn(self, node_id: int) -> Connection:
        c = self.conns.get(node_id)
        if c is None or c.closed:
            c = await Connection.open("127.0.0.1", self.cluster.nodes[node_id].port,
                                      connect_timeout_ms=2000)
            self.conns[node_id] = c
        return c

    def drop(self, node_id: int) -> None:
        c = self.conns.pop(node_id, None)
        if c is not None and c._transport is not None:
            c._transport.abort()

    async def close(self) -> None:
        conns, self.conns = list(self.conns.values()), {}
        for c in conns:
            await c.close()

    async def controller(self, api: ApiKey, body: Any, timeout_ms: int = 10_000) -> Any:
        last: Exception | None = None
        for _ in range(50):
            for cid in self.cluster.controller_ids:
                try:
                    return await (await self.conn(cid)).request(api, body, timeout_ms=timeout_ms)
                except DmqError as exc:
                    last = exc
                    if not exc.retriable:
                        raise
            await asyncio.sleep(0.1)  # backoff before asking the controllers again
        raise AssertionError(f"no controller answered {api.name}: {last}")

    async def create_topic(self, name: str, partitions: int, rf: int,
                           configs: dict[str, str] | None = None, timeout_s: float = 20) -> None:
        async def created() -> bool:
            resp = await self.controller(ApiKey.CREATE_TOPICS, {"topics": [
                {"name": name, "partitions": partitions, "replication_factor": rf,
                 "configs": configs or {}}]})
            return resp["topics"][0]["error"] in (0, 36)

        await wait_until(created, timeout_s, f"topic {name} created")
        await wait_until(lambda: self.isr_full(name, partitions, rf), timeout_s,
                         f"{name}: leaders and full ISR")
        await wait_until(lambda: self.leaders_serving(name), timeout_s,
                         f"{name}: every leader serving")

    async def leaders_serving(self, topic: str) -> bool:
        """Every partition's leader answers for it (its log exists and it leads)."""
        by_leader: dict[int, list[int]] = {}
        for row in await self.partitions(topic):
            by_leader.setdefault(row[1], []).append(row[0])
        for leader, parts in by_leader.items():
            if leader < 0:
                return False
            resp = await (await self.conn(leader)).request(ApiKey.LIST_OFFSETS, {
                "topics": [[topic, [[p, -1] for p in parts]]]})
            if any(r[1] != 0 for r in resp["topics"][0][1]):
                return False
        return True

    async def partitions(self, topic: str) -> list[list[Any]]:
        body = await self.controller(ApiKey.METADATA, {"topics": [topic]})
        return list(body["topics"][0]["partitions"])

    async def isr_full(self, topic: str, partitions: int, rf: int) -> bool:
        parts = await self.partitions(topic)
        return len(parts) == partitions and all(p[1] >= 0 and len(p[4]) == rf for p in parts)

    async def leader(self, topic: str, p: int = 0) -> tuple[int, int, list[int]]:
        row = (await self.partitions(topic))[p]
        return row[1], row[2], list(row[4])

    async def produce(self, node_id: int, topic: str, p: int, records: bytes, acks: int = -1,
                      timeout_ms: int = 5000) -> list[Any]:
        resp = await (await self.conn(node_id)).request(ApiKey.PRODUCE, {
            "acks": acks, "timeout_ms": timeout_ms, "topics": [[topic, [[p, -1, records]]]]},
            timeout_ms=timeout_ms + 5000)
        return list(resp["topics"][0][1][0])

    async def fetch(self, node_id: int, topic: str, p: int, offset: int,
                    max_wait_ms: int = 0, max_bytes: int = 8 << 20) -> list[Any]:
        resp = await (await self.conn(node_id)).request(ApiKey.FETCH, {
            "max_wait_ms": max_wait_ms, "min_bytes": 1, "max_bytes": max_bytes,
            "topics": [[topic, [[p, offset, -1, max_bytes]]]]}, timeout_ms=max_wait_ms + 5000)
        return list(resp["topics"][0][1][0])

    async def read_all(self, node_id: int, topic: str, p: int = 0) -> list[bytes | None]:
        """Every record value up to the HW, read from the leader `node_id`."""
        values: list[bytes | None] = []
        offset = 0
        while True:
            row = await self.fetch(node_id, topic, p, offset)
            assert row[1] == 0, row
            data = bytes(row[5])
            if not data:
                return values
            for rec in iter_records(data):
                if rec.offset >= offset:
                    values.append(rec.value)
            offset = list(iter_headers(data))[-1].next_offset


@contextlib.contextmanager
def logs_on_failure(cluster: ProcessCluster) -> Iterator[None]:
    """Print the nodes' logs when the block fails (pytest shows them with the failure)."""
    try:
        yield
    except BaseException:
        print(cluster.dump_logs())
        raise


def values_batch(values: list[bytes], pid: int = -1, seq: int = -1) -> bytes:
    return build_batch([(None, v) for v in values], timestamp_ms=int(time.time() * 1000),
                       producer_id=pid, producer_epoch=0 if pid >= 0 else -1,
                       base_sequence=seq)


def replica_bytes(cluster: ProcessCluster, node_id: int, topic: str, p: int, upto: int) -> bytes:
    """Bytes of a broker's replica for offsets < `upto`, read from a copy of its folder."""
    src = cluster.nodes[node_id].data_dir / "partitions" / f"{topic}-{p}"
    tmp = Path(tempfile.mkdtemp(prefix="dmq-replica-copy-"))
    try:
        shutil.copytree(src, tmp / "copy")
        plog = PartitionLog.open(str(tmp / "copy"))
        try:
            return bytes_below(plog, upto)
        finally:
            plog.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
