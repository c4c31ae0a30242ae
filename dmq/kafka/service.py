"""`KafkaService`: the Kafka listener of a broker (or combined) node.

Wires `KafkaServer` (framing, order, bounds) to `KafkaApis` (the handlers) on top of
the node's broker (its data plane, lifecycle and metadata image, handed in by
`dmq.roles`), and advertises the listener's address in the broker's
registration so that Kafka Metadata answers name every broker's Kafka address. It
starts before the broker registers (the address must be known by then) and stops
after it. Off unless `kafka.port` is set (>= 0; 0 picks a free port).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dmq.config import ConfigError
from dmq.kafka.apis import KafkaApis
from dmq.kafka.server import KafkaServer
from dmq.security.sasl import SaslAuthority
from dmq.services import Service

if TYPE_CHECKING:
    from dmq.broker.handlers import DataPlane
    from dmq.broker.lifecycle import BrokerLifecycle
    from dmq.metadata.image import MetadataImage
    from dmq.services import ServiceContext

log = logging.getLogger("dmq.kafka")


class KafkaService(Service):
    def __init__(self, ctx: ServiceContext, data_plane: DataPlane, lifecycle: BrokerLifecycle,
                 image: Callable[[], MetadataImage | None]) -> None:
        self.node_id = ctx.node_id
        self.lifecycle = lifecycle
        config = ctx.config
        self.apis = KafkaApis(config, ctx.node_id, data_plane, image,
                              lifecycle.controller_request)
        self.apis.clock = ctx.clock
        self.server = KafkaServer(ctx.spec.address.host, int(config.get("kafka.port")),
                                  self.apis.table(), ctx.node_id,
                                  max_frame_bytes=int(config.get("max.frame.bytes")),
                                  max_connections=int(config.get("max.connections")),
                                  max_connections_per_ip=int(config.get("max.connections.per.ip")),
                                  connections_max_idle_ms=int(config.get("connections.max.idle.ms")),
                                  queued_max_request_bytes=int(
                                      config.get("queued.max.request.bytes")))
        self.server.ssl = ctx.server.ssl  # TLS on this listener too when the node has it
        self.server.sasl = SaslAuthority.from_config(config, ctx.node_id, ctx.users)
        self.apis.listener_apis = self.server.listener_apis()

    async def start(self) -> None:
        try:
            await self.server.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen for Kafka clients on {self.server.host}:"
                              f"{self.server.port}: {exc.strerror or exc}") from None
        self.lifecycle.kafka_address = (self.server.host, self.server.port)

    async def stop(self) -> None:
        await self.server.close()

    def info(self) -> dict[str, Any]:
        return {"kafka": {"port": self.server.port, "cluster_id": self.apis.cluster_id}}

    def metrics(self) -> list[Any]:
        lab = {"node": str(self.node_id)}
        return [
            ("dmq_kafka_connections", "gauge", "Kafka client connections open",
             [(lab, float(self.server.connection_count))]),
            ("dmq_kafka_requests", "counter", "Kafka requests decoded",
             [(lab, float(self.server.stats_requests))]),
            ("dmq_kafka_protocol_violations", "counter",
             "Kafka connections closed for invalid frames or requests",
             [(lab, float(self.server.stats_violations))]),
        ]
