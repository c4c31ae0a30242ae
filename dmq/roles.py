"""Which services a node runs, and who talks to whom: the composition root.

Each service gets the node's `ServiceContext` and, explicitly, the other services'
parts it works with (the broker's lifecycle for the controller's notices in combined
mode and for the Kafka listener's address; the broker's replicas for the REST paths).
A new listener is one more service in this list. This file only wires; it holds no
logic of any role.
"""

from __future__ import annotations

from dmq.services import Service, ServiceContext


def build_services(ctx: ServiceContext) -> list[Service]:
    """The services of a node, in start order (they stop in reverse): the roles, then
    the HTTP-side services, which therefore stop first."""
    services: list[Service] = []
    controller = broker = None
    if "controller" in ctx.spec.roles:
        from dmq.controller.service import ControllerService

        controller = ControllerService(ctx)
        services.append(controller)
    if "broker" in ctx.spec.roles:
        from dmq.broker.service import BrokerService

        broker = BrokerService(ctx)
        if int(ctx.config.get("kafka.port")) >= 0:
            from dmq.kafka.service import KafkaService

            # before the broker: the listener's address goes into its registration
            replicas = broker.replicas
            services.append(KafkaService(ctx, broker.data_plane, broker.lifecycle,
                                         lambda: replicas.image))
        services.append(broker)
    if controller is not None and broker is not None:
        # combined mode: the controller answers CONTROLLER_CHANGED for the local broker
        controller.controller_changed_listeners.append(
            broker.lifecycle.handle_controller_changed)

    from dmq.ops.console import Console
    from dmq.ops.rest import RestApi

    # the REST paths first, then the web console at / and /ui/ (route order matters)
    services.append(RestApi(ctx.spec, broker.replicas if broker is not None else None))
    services.append(Console(ctx.config, ctx.node_id))
    return services
