"""An in-process stand-in for a dmq node, for client tests that need a peer that
misbehaves on purpose (drops responses, answers errors, changes leaders).

It speaks exactly the schemas of `dmq.protocol.api` for METADATA, INIT_PRODUCER_ID,
PRODUCE, FETCH and LIST_OFFSETS on a real `ProtocolServer`, keeps partition logs in
memory as lists of stamped batches, and deduplicates idempotent batches with the log
layer's own `ProducerStateManager`. It is not a broker: no replication, no disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from dmq.log.batch import stamp_batch, validate_batches
from dmq.log.errors import InvalidProducerEpochError, OutOfOrderSequenceError
from dmq.log.producer_state import ProducerStateManager
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import (
    DmqError,
    ErrorCode,
    NotControllerError,
    OutOfOrderSequenceNumberError,
)
from dmq.protocol.errors import InvalidProducerEpochError as WireEpochError
from dmq.protocol.server import NO_RESPONSE, ProtocolServer, RequestContext


@dataclass
class FakePartition:
    leader: int
    epoch: int = 0
    batches: list[tuple[int, int, int, bytes]] = field(default_factory=list)  # base, last, ts
    end: int = 0
    start: int = 0
    producers: ProducerStateManager = field(default_factory=ProducerStateManager)

    def append(self, data: bytes, epoch: int) -> int:
        hs = validate_batches(data)
        first_base = self.end
        for h in hs:
            dup = self.producers.check(h.producer_id, h.producer_epoch, h.base_sequence,
                                       h.last_sequence)
            if dup is not None:
                return dup.base_offset
            buf = bytearray(data[h.position:h.position + h.size_bytes])
            stamp_batch(buf, 0, self.end, epoch)
            self.producers.update_from_header(h, self.end)
            self.batches.append((self.end, self.end + h.last_offset_delta, h.max_timestamp,
                                 bytes(buf)))
            self.end += h.last_offset_delta + 1
        return first_base

    def read(self, offset: int, max_bytes: int) -> bytes:
        out: list[bytes] = []
        size = 0
        for _base, last, _ts, data in self.batches:
            if last < offset:
                continue
            if out and size + len(data) > max_bytes:
                break
            out.append(data)
            size += len(data)
        return b"".join(out)


class FakeNode:
    """One fake node; several share a `FakeCluster`'s state."""

    def __init__(self, cluster: FakeCluster, node_id: int) -> None:
        self.cluster = cluster
        self.node_id = node_id
        self.server = ProtocolServer(host="127.0.0.1", port=0, node_id=node_id)
        for key, fn in ((ApiKey.METADATA, self.metadata), (ApiKey.PRODUCE, self.produce),
                        (ApiKey.FETCH, self.fetch), (ApiKey.LIST_OFFSETS, self.list_offsets),
                        (ApiKey.INIT_PRODUCER_ID, self.init_producer_id)):
            self.server.register(key, fn)
        self.port = 0

    async def start(self) -> None:
        await self.server.start()
        self.port = self.server.bound_port

    async def metadata(self, ctx: RequestContext, body: Any) -> Any:
        c = self.cluster
        c.metadata_requests += 1
        if c.metadata_hook is not None:
            # may raise the error to answer with, or return an awaitable to wait for first
            pause = c.metadata_hook(self, body)
            if pause is not None:
                await pause
        names = body["topics"] if body["topics"] is not None else list(c.topics)
        topics = []
        for name in names:
            parts = c.topics.get(name)
            if parts is None and body["allow_auto_create"] and c.auto_create:
                c.create_topic(name, 1)
                parts = c.topics[name]
            if parts is None:
                topics.append({"name": name, "id": None, "error": 3, "partitions": []})
                continue
            topics.append({"name": name, "id": name, "error": 0, "partitions": [
                [i, p.leader, p.epoch, [p.leader], [p.leader], 0] for i, p in enumerate(parts)]})
        ctl = c.nodes[0]
        return {"controller_id": ctl.node_id, "controller": [ctl.node_id, "127.0.0.1", ctl.port],
                "version": c.version,
                "brokers": [[n.node_id, "127.0.0.1", n.port, None] for n in c.nodes],
                "topics": topics}

    async def init_producer_id(self, ctx: RequestContext, body: Any) -> Any:
        c = self.cluster
        if self is not c.nodes[0]:
            n = c.nodes[0]
            raise NotControllerError(leader=(n.node_id, "127.0.0.1", n.port))
        c.next_producer_id += 1
        return {"producer_id": c.next_producer_id, "producer_epoch": 0}

    async def produce(self, ctx: RequestContext, body: Any) -> Any:
        c = self.cluster
        c.produce_requests += 1
        hook = c.produce_hook
        if hook is not None:
            verdict = hook(self, body)
            if verdict == "drop":
                return NO_RESPONSE
            if verdict == "drop-after-append":
                self._produce(body)
                return NO_RESPONSE
            if isinstance(verdict, DmqError):
                raise verdict
            if isinstance(verdict, int):
                return {"topics": [[t, [[p[0], verdict, -1, 0, "injected"] for p in ps]]
                                   for t, ps in body["topics"]]}
        if c.produce_delay_s:
            await asyncio.sleep(c.produce_delay_s)
        result = self._produce(body)
        return NO_RESPONSE if body["acks"] == 0 else result

    def _produce(self, body: Any) -> Any:
        c = self.cluster
        out = []
        for topic, parts in body["topics"]:
            res = []
            for partition, _epoch, data in parts:
                ps = c.topics.get(topic)
                if ps is None or partition >= len(ps):
                    res.append([partition, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, -1, 0, None])
                    continue
                p = ps[partition]
                if p.leader != self.node_id:
                    res.append([partition, ErrorCode.NOT_LEADER_OR_FOLLOWER, -1, 0, None])
                    continue
                try:
                    base = p.append(data, p.epoch)
                except OutOfOrderSequenceError as exc:
                    res.append([partition, OutOfOrderSequenceNumberError.code, -1, 0, str(exc)])
                    continue
                except InvalidProducerEpochError as exc:
                    res.append([partition, WireEpochError.code, -1, 0, str(exc)])
                    continue
                c.appended.set()
                res.append([partition, 0, base, p.start, None])
            out.append([topic, res])
        return {"topics": out}

    async def fetch(self, ctx: RequestContext, body: Any) -> Any:
        c = self.cluster
        c.fetch_requests += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + body["max_wait_ms"] / 1000
        while True:
            out = []
            total = 0
            for topic, parts in body["topics"]:
                res = []
                for partition, offset, _epoch, pmax in parts:
                    ps = c.topics.get(topic)
                    if ps is None or partition >= len(ps):
                        res.append([partition, 3, -1, -1, -1, b""])
                        continue
                    p = ps[partition]
                    if p.leader != self.node_id:
                        res.append([partition, 6, -1, -1, -1, b""])
                        continue
                    if offset < p.start or offset > p.end:
                        res.append([partition, 1, p.end, p.start, p.end, b""])
                        continue
                    data = p.read(offset, pmax)
                    if c.corrupt_fetch and data:
                        data = data[:-1] + bytes([data[-1] ^ 0xFF])
                    total += len(data)
                    res.append([partition, 0, p.end, p.start, p.end, data])
                out.append([topic, res])
            if total >= body["min_bytes"] or loop.time() >= deadline:
                return {"topics": out}
            c.appended.clear()
            try:
                await asyncio.wait_for(c.appended.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                pass

    async def list_offsets(self, ctx: RequestContext, body: Any) -> Any:
        c = self.cluster
        out = []
        for topic, parts in body["topics"]:
            res = []
            for partition, ts in parts:
                p = c.topics[topic][partition]
                if ts == -1:
                    res.append([partition, 0, -1, p.end])
                elif ts == -2:
                    res.append([partition, 0, -1, p.start])
                else:
                    found = [(b, t) for b, _l, t, _d in p.batches if t >= ts]
                    res.append([partition, 0, found[0][1], found[0][0]] if found
                               else [partition, 0, -1, -1])
            out.append([topic, res])
        return {"topics": out}


class FakeCluster:
    def __init__(self, nodes: int = 1, auto_create: bool = True) -> None:
        self.nodes = [FakeNode(self, 101 + i) for i in range(nodes)]
        self.topics: dict[str, list[FakePartition]] = {}
        self.version = 1
        self.auto_create = auto_create
        self.next_producer_id = 1000
        self.produce_requests = 0
        self.fetch_requests = 0
        self.metadata_requests = 0
        self.produce_delay_s = 0.0
        self.corrupt_fetch = False
        self.produce_hook: Callable[[FakeNode, Any], Any] | None = None
        self.metadata_hook: Callable[[FakeNode, Any], Awaitable[None] | None] | None = None
        self.appended = asyncio.Event()

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    async def start(self) -> FakeCluster:
        for n in self.nodes:
            await n.start()
        return self

    async def stop(self) -> None:
        for n in self.nodes:
            await n.server.close(100)

    def create_topic(self, name: str, partitions: int) -> None:
        self.topics[name] = [FakePartition(self.nodes[i % len(self.nodes)].node_id)
                             for i in range(partitions)]
        self.version += 1

    def answer_first_produces(self, verdict: Any, count: int = 1) -> None:
        """The next `count` produce requests get `verdict` (as a `produce_hook` returns
        it: "drop", "drop-after-append", an error code or a DmqError); later ones are
        answered normally."""
        start = self.produce_requests

        def hook(node: FakeNode, body: Any) -> Any:
            return verdict if self.produce_requests - start <= count else None

        self.produce_hook = hook

    def move_leader(self, topic: str, partition: int, node_id: int) -> None:
        p = self.topics[topic][partition]
        p.leader = node_id
        p.epoch += 1
        self.version += 1

    def records(self, topic: str, partition: int) -> list[tuple[int, bytes | None]]:
        from dmq.log.batch import iter_records

        data = b"".join(d for *_x, d in self.topics[topic][partition].batches)
        return [(r.offset, r.value) for r in iter_records(data)] if data else []
