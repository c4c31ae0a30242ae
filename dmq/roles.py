"""Which services a node runs for its roles. The controller and broker layers plug in
here; this file only wires, it holds no logic of either role."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dmq.node import Node, Service


def build_services(node: Node) -> list[Service]:
    services: list[Service] = []
    if "controller" in node.spec.roles:
        from dmq.controller.service import ControllerService

        services.append(ControllerService(node))
    if "broker" in node.spec.roles:
        from dmq.broker.service import BrokerService

        broker = BrokerService(node)
        if int(node.config.get("kafka.port")) >= 0:
            from dmq.kafka.service import KafkaService

            # before the broker: the listener's address goes into its registration
            services.append(KafkaService(node, broker))
        services.append(broker)
    return services
