"""The node's HTTP surface (aiohttp, same event loop): /metrics, /healthz, /readyz,
and the JSON status routes the role services contribute.

It is served two ways. On the node's own protocol port: the protocol server hands a
connection whose first bytes are an HTTP method to `handoff` (a frame starts with its
length, whose first byte is far below any method's first letter), which attaches
aiohttp's request handler to that transport. And, optionally, on a port of its own
(`--http-port`). Both run the same application; `stop` closes the connections of both.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from dmq.config import ClusterConfig
from dmq.protocol.server import HTTP_METHOD_PREFIXES
from dmq.services import Route

log = logging.getLogger("dmq.ops.http")

MAX_HTTP_CONNECTIONS = 256
"""HTTP connections a node keeps open at once; one handed over past this is answered
503 and closed (aiohttp closes an idle one after its keep-alive timeout, 75 s)."""



def _busy_response(limit: int) -> bytes:
    body = json.dumps({"error": f"too many HTTP connections to this node (limit {limit})",
                       "code": "BUSY"}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


class HttpServer:
    def __init__(self, host: str, port: int | None, node_id: int, *,
                 render_metrics: Callable[[], bytes],
                 readiness: Callable[[], tuple[bool, dict[str, Any]]],
                 routes: Iterable[Route] = (),
                 max_connections: int = MAX_HTTP_CONNECTIONS,
                 middlewares: Iterable[Any] = ()) -> None:
        self.host = host
        self.max_connections = max_connections
        self._busy = _busy_response(max_connections)
        self.refused_connections = 0
        self.port = port
        self.node_id = node_id
        self._render_metrics = render_metrics
        self._readiness = readiness
        # middlewares: e.g. dmq.security.http_auth's login check when SASL users exist
        self._app = web.Application(client_max_size=1024 * 1024,
                                    middlewares=list(middlewares))
        self._app.router.add_get("/metrics", self._metrics)
        self._app.router.add_get("/healthz", self._healthz)
        self._app.router.add_get("/readyz", self._readyz)
        for method, path, handler in routes:
            self._app.router.add_route(method, path, handler)
        self._runner: web.AppRunner | None = None
        self.ssl_context: Any = None  # an ssl.SSLContext set before `start()`: HTTPS
        self.bound_port = 0

    async def setup(self) -> None:
        """Ready the application for connections handed over by the protocol server."""
        if self._runner is None:
            self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
            await self._runner.setup()

    async def start(self) -> None:
        """`setup`, and listen on the HTTP port of its own when there is one."""
        await self.setup()
        if self.port is None:
            return
        assert self._runner is not None
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True,
                           ssl_context=self.ssl_context)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.port
        log.info("node=%s HTTP on %s:%d", self.node_id, self.host, self.bound_port)

    def handoff(self, transport: asyncio.Transport, first: bytes) -> None:
        """Serve HTTP on a connection the protocol server received: `first` holds the
        bytes read so far (at least the method). The protocol server keeps no part of
        the connection; aiohttp's handler owns it from here (keep-alive, limits,
        timeouts) and the runner closes it on `stop`."""
        runner = self._runner
        if runner is None or runner.server is None:  # not started yet, or stopping
            transport.close()
            return
        server = runner.server
        if len(server.connections) >= self.max_connections:
            self.refused_connections += 1
            if self.refused_connections % 1000 == 1:  # a flood logs a line per thousand
                log.warning("node=%s refused %d HTTP connection(s) so far: %d open is the "
                            "limit", self.node_id, self.refused_connections,
                            self.max_connections)
            transport.write(self._busy)
            transport.close()
            return
        proto = server()
        transport.set_protocol(proto)
        proto.connection_made(transport)
        proto.data_received(first)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        body = self._render_metrics()
        return web.Response(body=body, headers={
            "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "nodeId": self.node_id})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, detail = self._readiness()
        return web.json_response({"ready": ready, "nodeId": self.node_id, **detail},
                                 status=200 if ready else 503)


def http_handoff(config: ClusterConfig, http: HttpServer
                 ) -> Callable[[asyncio.Transport, bytes], None] | None:
    """The protocol server's `http_handoff` for this node, or None when the node's
    port serves frames only: `http.on.node.port` is off, or `max.frame.bytes` is so
    large that a frame's length could read as an HTTP method."""
    if not config.get("http.on.node.port"):
        return None
    smallest_method = min(int.from_bytes(p, "big") for p in HTTP_METHOD_PREFIXES)
    if config.get("max.frame.bytes") >= smallest_method:
        log.warning("node=%s max.frame.bytes %d reaches the first bytes of an HTTP request: "
                    "HTTP is served only on --http-port", http.node_id,
                    config.get("max.frame.bytes"))
        return None
    return http.handoff
