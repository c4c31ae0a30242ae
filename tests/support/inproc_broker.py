"""In-process broker harness for broker tests: real `ReplicaManager`s, real logs in
temporary folders and real protocol servers on ephemeral ports, with a small
stand-in for the controller that owns the `MetadataImage`, accepts AlterPartition
with the controller's epoch checks, and publishes every new image to the brokers.

The stand-in is only the part of the controller the broker talks to; the real
controller is exercised by the real-process tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from dmq.broker.handlers import DataPlane
from dmq.broker.replica_manager import ReplicaManager
from dmq.config import ClusterConfig, NodeAddress
from dmq.log.batch import build_batch, iter_headers
from dmq.log.partition_log import PartitionLog
from dmq.metadata.image import BrokerInfo, MetadataImage, PartitionInfo, TopicInfo
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import Connection
from dmq.protocol.errors import ErrorCode, NotControllerError
from dmq.protocol.server import ProtocolServer
from tests.support.waiting import async_wait_until

FAST_SETTINGS: dict[str, Any] = {
    "replica.lag.time.max.ms": 1500,
    "replica.fetch.wait.max.ms": 200,
}


def make_config(**settings: Any) -> ClusterConfig:
    merged = dict(FAST_SETTINGS)
    merged.update({k.replace("_", "."): v for k, v in settings.items()})
    return ClusterConfig((NodeAddress(1, "127.0.0.1", 1),), (), merged)


def batch(values: list[bytes], *, pid: int = -1, epoch: int = -1, seq: int = -1,
          ts: int = 1_700_000_000_000) -> bytes:
    return build_batch([(None, v) for v in values], timestamp_ms=ts, producer_id=pid,
                       producer_epoch=epoch, base_sequence=seq)


class StandInController:
    """Owns the image; answers ALTER_PARTITION; pushes images to the brokers."""

    def __init__(self) -> None:
        self.image = MetadataImage(1, 1, {}, {})
        self.brokers: dict[int, InProcBroker] = {}
        self.alter_requests: list[Any] = []
        self.accept_alter = True

    def _publish(self, **changes: Any) -> None:
        self.image = dataclasses.replace(self.image, version=self.image.version + 1, **changes)
        for b in self.brokers.values():
            if b.running and b.follow_images:
                b.replicas.apply_image(self.image)

    def add_broker(self, b: InProcBroker) -> None:
        self.brokers[b.broker_id] = b
        brokers = dict(self.image.brokers)
        brokers[b.broker_id] = BrokerInfo(b.broker_id, "127.0.0.1", b.port, None, 1, "ONLINE")
        self._publish(brokers=brokers)

    async def create_topic(self, name: str, assignment: list[list[int]],
                           configs: dict[str, str] | None = None) -> None:
        """Publish the topic and wait until every broker has made its logs."""
        parts = {p: PartitionInfo(name, p, tuple(r), r[0], 0, tuple(r), 0)
                 for p, r in enumerate(assignment)}
        topics = dict(self.image.topics)
        topics[name] = TopicInfo(name, f"id-{name}-{self.image.version}", parts, configs or {})
        self._publish(topics=topics)
        await self.settle()

    async def settle(self) -> None:
        for b in self.brokers.values():
            if b.running:
                await b.replicas.wait_idle()

    def delete_topic(self, name: str) -> None:
        topics = dict(self.image.topics)
        del topics[name]
        self._publish(topics=topics)

    def set_partition(self, topic: str, p: int, **changes: Any) -> PartitionInfo:
        t = self.image.topics[topic]
        old = t.partitions[p]
        new = dataclasses.replace(old, partition_epoch=old.partition_epoch + 1, **changes)
        if "leader" in changes:
            new = dataclasses.replace(new, leader_epoch=old.leader_epoch + 1)
        parts = dict(t.partitions)
        parts[p] = new
        topics = dict(self.image.topics)
        topics[topic] = dataclasses.replace(t, partitions=parts)
        self._publish(topics=topics)
        return new

    def fail_broker(self, broker_id: int) -> None:
        """What the controller does when a broker's session expires."""
        for t in list(self.image.topics.values()):
            for p, info in t.partitions.items():
                if broker_id not in info.isr:
                    continue
                isr = tuple(b for b in info.isr if b != broker_id)
                if info.leader == broker_id:
                    self.set_partition(t.name, p, isr=isr, leader=isr[0] if isr else -1)
                else:
                    self.set_partition(t.name, p, isr=isr)

    def partition(self, topic: str, p: int = 0) -> PartitionInfo:
        info = self.image.partition(topic, p)
        assert info is not None
        return info

    def requester(self, broker_id: int) -> Any:
        async def request(api_key: ApiKey, body: Any, timeout_ms: int) -> Any:
            if api_key != ApiKey.ALTER_PARTITION:
                raise NotControllerError("stand-in controller serves ALTER_PARTITION only")
            if not self.accept_alter:
                raise NotControllerError("no controller right now")
            self.alter_requests.append(body)
            out = []
            for topic, rows in body["topics"]:
                res = []
                for p, leader_epoch, partition_epoch, new_isr in rows:
                    info = self.partition(topic, p)
                    if (leader_epoch != info.leader_epoch or info.leader != broker_id
                            or partition_epoch != info.partition_epoch):
                        res.append([p, int(ErrorCode.FENCED_LEADER_EPOCH), info.leader,
                                    info.leader_epoch, list(info.isr), info.partition_epoch])
                        continue
                    info = self.set_partition(topic, p, isr=tuple(new_isr))
                    res.append([p, 0, info.leader, info.leader_epoch, list(info.isr),
                                info.partition_epoch])
                out.append([topic, res])
            return {"topics": out}

        return request


class InProcBroker:
    def __init__(self, broker_id: int, root: Path, controller: StandInController,
                 config: ClusterConfig) -> None:
        self.broker_id = broker_id
        self.root = root
        self.controller = controller
        self.config = config
        self.running = False
        self.follow_images = True
        self.port = 0

    async def start(self) -> None:
        self.server = ProtocolServer(host="127.0.0.1", port=self.port, node_id=self.broker_id)
        self.replicas = ReplicaManager(self.config, self.broker_id,
                                       self.root / f"b{self.broker_id}",
                                       self.controller.requester(self.broker_id), lambda: 1)
        self.plane = DataPlane(self.replicas)
        self.plane.register(self.server)
        await self.server.start()
        self.port = self.server.bound_port
        await self.replicas.load_logs()
        self.replicas.start()
        self.running = True
        if self.broker_id in self.controller.brokers:
            self.replicas.apply_image(self.controller.image)
        else:
            self.controller.add_broker(self)
        await self.replicas.wait_idle()

    async def stop(self) -> None:
        """A clean stop: logs closed."""
        self.running = False
        await self.replicas.stop()
        await self.server.close(500)

    async def crash(self) -> None:
        """Stop serving without closing logs cleanly (files are abandoned)."""
        self.running = False
        self.replicas._running = False
        await self.replicas.fetchers.stop()
        for part in self.replicas.partitions.values():
            part.log.abandon()
        await self.server.close(0)

    def partition(self, topic: str, p: int = 0) -> Any:
        return self.replicas.get_partition(topic, p)

    async def connect(self) -> Connection:
        return await Connection.open("127.0.0.1", self.port)


async def produce(conn: Connection, topic: str, p: int, records: bytes, acks: int = -1,
                  timeout_ms: int = 5000, leader_epoch: int = -1) -> list[Any]:
    resp = await conn.request(ApiKey.PRODUCE, {
        "acks": acks, "timeout_ms": timeout_ms,
        "topics": [[topic, [[p, leader_epoch, records]]]]}, timeout_ms=timeout_ms + 5000)
    return list(resp["topics"][0][1][0])


async def fetch(conn: Connection, topic: str, p: int, offset: int, *, max_wait_ms: int = 0,
                min_bytes: int = 1, max_bytes: int = 1 << 20, partition_max_bytes: int = 1 << 20,
                replica_id: int = -1, epoch: int = -1) -> list[Any]:
    resp = await conn.request(ApiKey.FETCH, {
        "max_wait_ms": max_wait_ms, "min_bytes": min_bytes, "max_bytes": max_bytes,
        "replica_id": replica_id,
        "topics": [[topic, [[p, offset, epoch, partition_max_bytes]]]]},
        timeout_ms=max_wait_ms + 5000)
    return list(resp["topics"][0][1][0])


def bytes_below(plog: PartitionLog, upto: int) -> bytes:
    """The raw bytes of a log's whole batches for offsets < `upto`."""
    out = []
    offset = plog.log_start_offset
    while offset < upto:
        data = bytes(plog.read(offset, 8 << 20, max_offset=upto))
        if not data:
            break
        out.append(data)
        offset = list(iter_headers(data))[-1].next_offset
    return b"".join(out)


def log_bytes(broker: InProcBroker, topic: str, p: int, upto: int) -> bytes:
    """The raw bytes of an in-process replica for offsets < `upto`."""
    return bytes_below(broker.partition(topic, p).log, upto)


async def wait_for(cond: Callable[[], Any], timeout_s: float = 10.0,
                   what: str = "condition") -> None:
    """Poll a synchronous condition every 10 ms until it holds."""
    await async_wait_until(cond, timeout_s, what, interval_s=0.01)


@asynccontextmanager
async def started_brokers(tmp_path: Path, ids: tuple[int, ...], **settings: Any
                          ) -> AsyncIterator[tuple[StandInController, list[InProcBroker]]]:
    """A stand-in controller and started in-process brokers `ids` (`make_config` with
    `settings`); those still running are stopped on exit."""
    ctl = StandInController()
    config = make_config(**settings)
    brokers = [InProcBroker(i, tmp_path, ctl, config) for i in ids]
    for b in brokers:
        await b.start()
    try:
        yield ctl, brokers
    finally:
        for b in brokers:
            if b.running:
                await b.stop()
