"""The seam between a node and the services it runs.

A service (a role: controller, broker; a listener: Kafka, the REST paths, the web
console) is built from a `ServiceContext`, the narrow part of the node it may use: the
cluster config, this node's spec, the shared protocol server to register handlers on,
the injected clock and random source, and the node's supervision (`supervise`,
`fatal`). It never receives the node itself and never looks other services up: the
composition root (`dmq.roles`) hands each service what it talks to.

`Service` declares every hook the node calls; a service overrides those it has. The
node reads `info()` for its status answer, `ready()` for /readyz, `metrics()` at
scrape time and `http_routes()` once before the HTTP listener starts.

This module holds no logic of any role and imports none of them.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dmq.clock import Clock
from dmq.config import ClusterConfig, NodeAddress

if TYPE_CHECKING:
    from aiohttp import web

    from dmq.protocol.server import ProtocolServer
    from dmq.security.users import UserDirectory

# A metrics sample: (name, kind "gauge"|"counter", help, [(labels, value), ...])
Sample = tuple[str, str, str, list[tuple[dict[str, str], float]]]
# An HTTP route: (method, path, aiohttp handler)
Route = tuple[str, str, "Callable[[web.Request], Awaitable[web.StreamResponse]]"]


@dataclass(frozen=True)
class NodeSpec:
    node_id: int
    roles: tuple[str, ...]
    address: NodeAddress
    data_dir: Path
    http_port: int | None = None  # None: no HTTP listener; 0: an ephemeral port


@dataclass(frozen=True)
class ServiceContext:
    """What a service may use of the node that runs it."""

    config: ClusterConfig
    spec: NodeSpec
    server: ProtocolServer  # the node's protocol server: handlers, TLS context
    clock: Clock
    rng: random.Random
    # run an essential task: if it dies the node ends (crash-only, see dmq.node)
    supervise: Callable[[Coroutine[Any, Any, Any], str], asyncio.Task[Any]]
    # an essential part died: fatal(what, exc) ends the node
    fatal: Callable[[str, BaseException], None]
    # the users logins are checked against (None: SASL is off): the node's SASL
    # listeners and HTTP share it; the composition root points it at the metadata
    users: UserDirectory | None = None

    @property
    def node_id(self) -> int:
        return self.spec.node_id


class Service:
    """A part of a node that starts and stops with it. Every hook has a default that
    contributes nothing, so a service overrides only what it offers."""

    async def start(self) -> None:
        """Called once the protocol server listens, in registration order."""

    async def stop(self) -> None:
        """Called on shutdown, in reverse registration order, even if `start` was
        not (a node that failed to start is stopped too)."""

    def info(self) -> dict[str, Any]:
        """Merged into the node's status answer."""
        return {}

    def ready(self) -> tuple[bool, str]:
        """(ready, why not) for /readyz."""
        return True, ""

    def metrics(self) -> Iterable[Sample]:
        """Samples read at scrape time (dmq.ops.metrics)."""
        return ()

    def http_routes(self) -> list[Route]:
        """(method, path, handler) routes of the node's HTTP listener."""
        return []


__all__ = ["NodeSpec", "Route", "Sample", "Service", "ServiceContext"]
