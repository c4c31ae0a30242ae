"""Which services a node runs, and who talks to whom: the composition root.

Each service gets the node's `ServiceContext` and, explicitly, the other services'
parts it works with (the broker's lifecycle for the controller's notices in combined
mode and for the Kafka listener's address; the broker's replicas for the REST paths).
A new listener is one more service in this list. This file only wires; it holds no
logic of any role.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dmq.services import Service, ServiceContext

if TYPE_CHECKING:
    from dmq.broker.service import BrokerService
    from dmq.controller.service import ControllerService


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
    _wire_users(ctx, controller, broker)

    from dmq.ops.console import Console
    from dmq.ops.rest import RestApi
    from dmq.security.http_acl import HttpAcl

    # HTTP checks the ACLs with this node's authorizer (the controller's, else the
    # broker's data plane's; None when ACLs are off)
    authorizer = controller.authorizer if controller is not None else \
        broker.data_plane.authorizer if broker is not None else None
    acl = HttpAcl(authorizer)
    # the REST paths first, then the web console at / and /ui/ (route order matters)
    services.append(RestApi(ctx.spec, broker.replicas if broker is not None else None, acl))
    services.append(Console(ctx.config, ctx.node_id, acl))
    return services


def _wire_users(ctx: ServiceContext, controller: ControllerService | None,
                broker: BrokerService | None) -> None:
    """Logins look users up in this node's metadata: a controller's applied state
    (set by the controller itself), else the broker's image; token revocations go to
    the active controller: from the controller role when there is one (forwarded by it
    when it is not active), else through the broker's route."""
    users = ctx.users
    if users is None:
        return
    if controller is not None:
        users.revoke_token = controller.users.revoke_anywhere
        return
    if broker is not None:
        from dmq.protocol.api import ApiKey

        replicas, lifecycle = broker.replicas, broker.lifecycle
        users.source = lambda: replicas.image

        async def revoke(token: str, who: str) -> None:
            body: dict[str, Any] = {"token": token}
            await lifecycle.controller_request(ApiKey.REVOKE_TOKEN, body, 10_000)

        users.revoke_token = revoke
