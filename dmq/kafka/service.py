"""`KafkaService`: the Kafka listener of a broker (or combined) node.

Wires `KafkaServer` (framing, order, bounds) to `KafkaApis` (the handlers) on top of
the node's `BrokerService`, and advertises the listener's address in the broker's
registration so that Kafka Metadata answers name every broker's Kafka address. It
starts before the broker registers (the address must be known by then) and stops
after it. Off unless `kafka.port` is set (>= 0; 0 picks a free port).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from dmq.config import ConfigError
from dmq.kafka.apis import KafkaApis
from dmq.kafka.server import KafkaServer
from dmq.security.sasl import SaslAuthority

if TYPE_CHECKING:
    from dmq.broker.service import BrokerService
    from dmq.node import Node

log = logging.getLogger("dmq.kafka")


class KafkaService:
    def __init__(self, node: Node, broker: BrokerService) -> None:
        self.node = node
        self.broker = broker
        config = node.config
        self.apis = KafkaApis(config, node.spec.node_id, broker.data_plane,
                              lambda: broker.replicas.image, broker.lifecycle.controller_request)
        self.server = KafkaServer(node.spec.address.host, int(config.get("kafka.port")),
                                  self.apis.table(), node.spec.node_id,
                                  max_frame_bytes=int(config.get("max.frame.bytes")),
                                  max_connections=int(config.get("max.connections")),
                                  max_connections_per_ip=int(config.get("max.connections.per.ip")),
                                  connections_max_idle_ms=int(config.get("connections.max.idle.ms")),
                                  queued_max_request_bytes=int(
                                      config.get("queued.max.request.bytes")))
        self.server.ssl = node.server.ssl  # TLS on this listener too when the node has it
        self.server.sasl = SaslAuthority.from_config(config, node.spec.node_id)
        self.apis.listener_apis = self.server.listener_apis()

    async def start(self) -> None:
        try:
            await self.server.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen for Kafka clients on {self.server.host}:"
                              f"{self.server.port}: {exc.strerror or exc}") from None
        self.broker.lifecycle.kafka_address = (self.server.host, self.server.port)

    async def stop(self) -> None:
        await self.server.close()

    def info(self) -> dict[str, Any]:
        return {"kafka": {"port": self.server.port, "cluster_id": self.apis.cluster_id}}

    def metrics(self) -> list[Any]:
        lab = {"node": str(self.node.spec.node_id)}
        return [
            ("dmq_kafka_connections", "gauge", "Kafka client connections open",
             [(lab, float(self.server.connection_count))]),
            ("dmq_kafka_requests", "counter", "Kafka requests decoded",
             [(lab, float(self.server.stats_requests))]),
            ("dmq_kafka_protocol_violations", "counter",
             "Kafka connections closed for invalid frames or requests",
             [(lab, float(self.server.stats_violations))]),
        ]
