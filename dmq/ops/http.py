"""The node's optional HTTP listener (aiohttp, same event loop): /metrics, /healthz,
/readyz, and the JSON status routes the role services contribute."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

log = logging.getLogger("dmq.ops.http")

Route = tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]


class HttpServer:
    def __init__(self, host: str, port: int, node_id: int, *,
                 render_metrics: Callable[[], bytes],
                 readiness: Callable[[], tuple[bool, dict[str, Any]]],
                 routes: Iterable[Route] = ()) -> None:
        self.host = host
        self.port = port
        self.node_id = node_id
        self._render_metrics = render_metrics
        self._readiness = readiness
        self._app = web.Application(client_max_size=1024 * 1024)
        self._app.router.add_get("/metrics", self._metrics)
        self._app.router.add_get("/healthz", self._healthz)
        self._app.router.add_get("/readyz", self._readyz)
        for method, path, handler in routes:
            self._app.router.add_route(method, path, handler)
        self._runner: web.AppRunner | None = None
        self.bound_port = 0

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.bound_port = sockets[0].getsockname()[1] if sockets else self.port
        log.info("node=%s HTTP on %s:%d", self.node_id, self.host, self.bound_port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

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
