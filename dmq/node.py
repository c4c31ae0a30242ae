"""One dmq process: the protocol server plus the roles it plays.

A node is a controller (a Raft voter of the metadata quorum), a broker, or both
(combined mode). This module composes the layers; it holds no protocol, log, Raft or
replication logic of its own. Its services (the roles, the Kafka listener, the REST
paths, the web console) are `dmq.services.Service`s that `dmq.roles` builds from the
node's `ServiceContext` (config, spec, protocol server, clock, random source,
supervision): they register their handlers on the shared server and start and stop
with the node, and never see the node itself.

Crash-only supervision: a background task a role cannot work without (the Raft pump
and senders, the broker's registration/heartbeat and metadata loops, the replica
fetchers and the ISR reporter, the controller's leadership watcher...) is either
created with `supervise()` or reports its death to `fatal()`. The node then logs one
CRITICAL line and calls `on_fatal` (the `dmq server` command stops the node within a
bound and exits with status 70, so its supervisor restarts it from disk) rather than
living on half-working.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

from dmq.clock import Clock, SystemClock
from dmq.config import ClusterConfig, ConfigError
from dmq.ops.http import HttpServer, http_handoff
from dmq.ops.metrics import NodeMetrics
from dmq.protocol.connection import DEFAULT_TLS
from dmq.protocol.server import ProtocolServer
from dmq.roles import build_services
from dmq.security.http_auth import HttpBasicAuth
from dmq.security.sasl import SaslAuthority
from dmq.security.tls import (
    REFUSALS,
    CertificateReloader,
    TlsSettings,
    certificate_principal,
)
from dmq.security.tokens import TokenIssuer
from dmq.security.users import UserDirectory, user_directory
from dmq.services import NodeSpec, Sample, Service, ServiceContext

log = logging.getLogger("dmq.node")

ROLES = ("controller", "broker")
EXIT_FATAL = 70  # EX_SOFTWARE: an essential task died


def parse_roles(text: str) -> tuple[str, ...]:
    roles = tuple(sorted({r.strip() for r in text.split(",") if r.strip()}))
    bad = [r for r in roles if r not in ROLES]
    if not roles or bad:
        raise ConfigError(f"--role must be controller, broker or controller,broker; got {text!r}")
    return roles


def resolve_node(config: ClusterConfig, node_id: int, roles: tuple[str, ...],
                 data_dir: str | Path | None, http_port: int | None = None) -> NodeSpec:
    """Check that the node's roles match where the config lists it."""
    if "controller" in roles and not config.is_controller(node_id):
        raise ConfigError(f"node {node_id} runs the controller role but is not listed among the "
                          f"controllers of {config.source}")
    if roles == ("broker",) and not config.is_broker(node_id):
        raise ConfigError(f"node {node_id} is not listed among the brokers of {config.source}")
    address = config.node(node_id)
    assert address is not None
    path = Path(data_dir) if data_dir else Path("dmq-data") / f"node-{node_id}"
    if http_port is None:
        http_port = address.http_port
    return NodeSpec(node_id, roles, address, path, http_port)


def cluster_node_roles(config: ClusterConfig) -> dict[int, frozenset[str]]:
    """The roles each configured node may play, for the inter-node API checks. A
    controller may also be a broker: a combined-mode node is listed only among the
    controllers."""
    roles = {n.node_id: frozenset({"controller", "broker"}) for n in config.controllers}
    for n in config.brokers:
        roles[n.node_id] = roles.get(n.node_id, frozenset()) | {"broker"}
    return roles


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit: every partition replica holds
    open descriptors, and a broker that runs out (EMFILE) can open no log, file or
    connection. Returns (soft, hard) as they are afterwards."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return -1, -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open files limit from %d to %d: %s", soft, hard, exc)
    return soft, hard


class Node:
    def __init__(self, config: ClusterConfig, spec: NodeSpec, *, clock: Clock | None = None,
                 rng: random.Random | None = None) -> None:
        self.config = config
        self.spec = spec
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.rng = rng if rng is not None else random.Random()
        self.server = ProtocolServer(
            host=spec.address.host, port=spec.address.port, node_id=spec.node_id,
            max_frame_bytes=config.get("max.frame.bytes"),
            max_in_flight=config.get("max.in.flight.requests.per.connection"),
            max_buffered_bytes=config.get("socket.send.buffer.high.bytes"),
            max_connections=config.get("max.connections"),
            max_connections_per_ip=config.get("max.connections.per.ip"),
            connections_max_idle_ms=config.get("connections.max.idle.ms"),
            queued_max_request_bytes=config.get("queued.max.request.bytes"),
            cluster_nodes=cluster_node_roles(config), extra_info=self._info)
        self.tls = TlsSettings.from_config(config, spec.node_id)  # None: plaintext everywhere
        self.services: list[Service] = []
        self._stopped = asyncio.Event()
        self.metrics = NodeMetrics(spec.node_id, self._metric_sources)
        self.server.observer = self.metrics.observe_request
        self.http: HttpServer | None = None
        self.started_monotonic = time.monotonic()
        self.failure: str | None = None  # why an essential task died, once one has
        self.on_fatal: Callable[[], None] | None = None
        self._stopping = False
        # the users every login is checked against: the metadata's, then the bootstrap
        # file's (dmq.security.users); None when SASL is off
        self.users: UserDirectory | None = None
        self.tls_reloader: CertificateReloader | None = None
        self._tls_reload_task: asyncio.Task[None] | None = None

    # crash-only supervision ----------------------------------------------------------

    def fatal(self, what: str, exc: BaseException) -> None:
        """An essential task died: record it, log it once, tell the owner to end us."""
        if self.failure is not None or self._stopping:
            return
        self.failure = f"{what} died: {type(exc).__name__}: {exc}"[:500]
        log.critical("node %d: %s; exiting", self.spec.node_id, self.failure, exc_info=exc)
        if self.on_fatal is not None:
            self.on_fatal()

    def supervise(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run an essential task: if it raises (or returns while the node runs), the
        node is failed with `fatal()`. Cancelling it is the normal way to stop it."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        task.add_done_callback(self._essential_done)
        return task

    def _essential_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        self.fatal(f"task {task.get_name()}",
                   exc if exc is not None else RuntimeError("returned while the node ran"))

    def _metric_sources(self) -> list[Callable[[], Iterable[Sample]]]:
        sources: list[Callable[[], Iterable[Sample]]] = [self._node_metrics]
        sources += [svc.metrics for svc in self.services]
        return sources

    def _node_metrics(self) -> Iterable[Sample]:
        lab = {"node": str(self.spec.node_id)}
        return [
            ("dmq_uptime_seconds", "gauge", "seconds since the node started",
             [(lab, time.monotonic() - self.started_monotonic)]),
            ("dmq_open_connections", "gauge", "client connections open",
             [(lab, float(self.server.connection_count))]),
            ("dmq_protocol_violations", "counter", "connections that sent invalid frames",
             [(lab, float(self.server.stats_violations))]),
        ]

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready when every role says so; the reasons of those that do not."""
        reasons: dict[str, Any] = {}
        for svc in self.services:
            ok, why = svc.ready()
            if not ok:
                reasons[type(svc).__name__] = why
        return (not reasons, {"reasons": reasons} if reasons else {})

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"roles": list(self.spec.roles)}
        for svc in self.services:
            info.update(svc.info())
        return info

    async def start(self) -> None:
        soft, hard = raise_open_files_limit()
        log.info("node %d: open files limit %d (soft), %d (hard)", self.spec.node_id, soft, hard)
        self.spec.data_dir.mkdir(parents=True, exist_ok=True)
        if self.tls is not None:
            # every listener serves TLS; every link this node opens is a TLS client
            self.server.ssl = self.tls.server_context()
            REFUSALS.node = self.spec.node_id
            self.server.node_authenticator = self.tls.node_authenticator()
            client_ctx = self.tls.node_client_context()
            DEFAULT_TLS.set(client_ctx)
            self.tls_reloader = CertificateReloader(self.tls, (self.server.ssl, client_ctx))
            interval_ms = int(self.config.get("ssl.reload.interval.ms"))
            if interval_ms > 0:
                self._tls_reload_task = asyncio.get_running_loop().create_task(
                    self._reload_tls_every(interval_ms / 1000), name="tls-reload")
        self.users = user_directory(self.config)
        if self.config.get("sasl.protocol.listener"):
            # clients authenticate with SASL; nodes (and their tools) by certificate
            if self.tls is None or self.tls.client_auth == "none":
                raise ConfigError("sasl.protocol.listener needs TLS with ssl.client.auth "
                                  "requested or required: nodes prove themselves to each "
                                  "other by certificate")
            self.server.sasl = SaslAuthority.from_config(self.config, self.spec.node_id,
                                                         self.users)
            if self.server.sasl is None:
                raise ConfigError("sasl.protocol.listener needs sasl.enabled.mechanisms")
            self.server.certificate_principal = certificate_principal(
                self.tls.node_cn_format, cluster_node_roles(self.config))
        if self.config.get("authorizer.enabled") and (self.tls is None
                                                      or self.tls.client_auth == "none"):
            log.warning("node %d: authorizer.enabled without client certificates: on dmq's "
                        "protocol port a connection's NODE_HELLO claim is trusted and a node "
                        "is not subject to ACLs, so the ACLs bind there only with "
                        "ssl.client.auth requested or required (the Kafka listener is not "
                        "affected)", self.spec.node_id)
        self.services = build_services(self.context())
        routes = [r for svc in self.services for r in svc.http_routes()]
        # with SASL users configured, HTTP asks for them too (Basic; see http_auth)
        # (and bearer tokens: dmq.security.tokens)
        users = self.server.sasl or SaslAuthority.from_config(self.config, self.spec.node_id,
                                                              self.users)
        self.http_auth = None
        if users is not None and self.users is not None:
            tokens = TokenIssuer.from_config(self.config, self.users)
            tokens.revoke = self.users.revoke_token
            self.http_auth = HttpBasicAuth(users, tokens)
            routes += self.http_auth.routes()
        self.http = HttpServer(self.spec.address.host, self.spec.http_port,
                               self.spec.node_id, render_metrics=self.metrics.render,
                               readiness=self.readiness, routes=routes,
                               middlewares=[self.http_auth.middleware] if self.http_auth
                               else [])
        self.http.ssl_context = self.server.ssl
        # a SASL port serves frames only (its HTTP would need the login as well: use the
        # HTTP port)
        self.server.http_handoff = None if self.server.sasl is not None \
            else http_handoff(self.config, self.http)
        await self.http.setup()  # HTTP on the node's port works from its first connection
        try:
            await self.server.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.spec.address.address}: "
                              f"{exc.strerror or exc}") from None
        for svc in self.services:
            await svc.start()
        try:
            await self.http.start()
        except OSError as exc:
            raise ConfigError(f"cannot listen for HTTP on {self.spec.address.host}:"
                              f"{self.spec.http_port}: {exc.strerror or exc}") from None
        log.info("node %d started: roles=%s data_dir=%s pid=%d", self.spec.node_id,
                 ",".join(self.spec.roles), self.spec.data_dir, os.getpid())

    def context(self) -> ServiceContext:
        """What the node's services may use of it (see dmq.services)."""
        return ServiceContext(config=self.config, spec=self.spec, server=self.server,
                              clock=self.clock, rng=self.rng, supervise=self.supervise,
                              fatal=self.fatal, users=self.users)

    def reload_tls(self) -> bool | None:
        """Load renewed certificate, key and CA files now (SIGHUP): see
        `CertificateReloader.check`; None without TLS, when nothing changed, or once
        the node is stopping (the signal is handled until the loop closes)."""
        if self.tls_reloader is None or self._stopping:
            return None
        return self.tls_reloader.check()

    async def _reload_tls_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                self.reload_tls()
            except Exception:  # noqa: BLE001 - never ends the node; the next check retries
                log.exception("node %d: checking the TLS files failed", self.spec.node_id)

    async def stop(self) -> None:
        self._stopping = True
        log.info("node %d stopping", self.spec.node_id)
        task, self._tls_reload_task = self._tls_reload_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.http is not None:
            await self.http.stop()
        for svc in reversed(self.services):
            try:
                await svc.stop()
            except Exception:
                log.exception("node %d: stopping %s failed", self.spec.node_id, svc)
        await self.server.close(self.config.get("shutdown.grace.ms"))
        log.info("node %d stopped", self.spec.node_id)
        self._stopped.set()


__all__ = ["EXIT_FATAL", "ROLES", "Node", "NodeSpec", "cluster_node_roles", "parse_roles",
           "raise_open_files_limit", "resolve_node"]
