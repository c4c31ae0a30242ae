"""HTTP Basic login on a node's HTTP surface when SASL users are configured: the REST
API and console answer 401 (asking for a login) without credentials and with wrong
ones, serve a SASL user, keep /healthz, /readyz and /metrics open, refuse credentials over
plain HTTP unless `sasl.plain.allow.plaintext`, and check a password once a minute
rather than once a request. Real sockets: an HttpServer, and an in-process node."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dmq.config import parse_config
from dmq.node import Node, resolve_node
from dmq.ops.http import HttpServer
from dmq.security.http_auth import PRINCIPAL, HttpBasicAuth
from dmq.security.sasl import SaslAuthority
from dmq.security.scram import CredentialStore, make_credential
from tests.support.procs import free_ports


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _authority(allow_plaintext: bool) -> SaslAuthority:
    store = CredentialStore({"alice": {"SCRAM-SHA-256": make_credential("pw-123456")}})
    return SaslAuthority(("SCRAM-SHA-256",), store, allow_plain_without_tls=allow_plaintext)


async def _server(auth: HttpBasicAuth) -> HttpServer:
    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"principal": request[PRINCIPAL]})

    http = HttpServer("127.0.0.1", 0, 1, render_metrics=lambda: b"m 1\n",
                      readiness=lambda: (True, {}), routes=[("GET", "/whoami", whoami)],
                      middlewares=[auth.middleware])
    await http.start()
    return http


async def _get(port: int, path: str, headers: dict[str, str] | None = None
               ) -> tuple[int, str, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, \
            s.get(f"http://127.0.0.1:{port}{path}", headers=headers or {}) as r:
        return r.status, await r.text(), dict(r.headers)


async def test_basic_login_guards_every_route_but_the_probes() -> None:
    auth = HttpBasicAuth(_authority(allow_plaintext=True))
    http = await _server(auth)
    try:
        port = http.bound_port
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await _get(port, path))[0] == 200
        status, _, headers = await _get(port, "/whoami")
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        assert (await _get(port, "/whoami", _basic("alice", "wrong")))[0] == 401
        assert (await _get(port, "/whoami", _basic("bob", "pw-123456")))[0] == 401
        assert (await _get(port, "/whoami", {"Authorization": "Basic !!!"}))[0] == 401
        assert (await _get(port, "/whoami", {"Authorization": "Bearer x"}))[0] == 401
        checks = auth.stats_checks
        for _ in range(3):
            status, text, _ = await _get(port, "/whoami", _basic("alice", "pw-123456"))
            assert status == 200 and json.loads(text) == {"principal": "User:alice"}
        assert auth.stats_checks == checks + 1  # a success is remembered
    finally:
        await http.stop()


async def test_credentials_over_plain_http_are_refused_unless_allowed() -> None:
    http = await _server(HttpBasicAuth(_authority(allow_plaintext=False)))
    try:
        status, text, _ = await _get(http.bound_port, "/whoami", _basic("alice", "pw-123456"))
        assert status == 403 and "plain HTTP" in text
    finally:
        await http.stop()


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    users = tmp_path / "users.json"
    CredentialStore({"alice": {"SCRAM-SHA-256": make_credential("pw-123456")}}).save(users)
    port, http_port = free_ports(2)
    config = parse_config({
        "controllers": [{"id": 1, "host": "127.0.0.1", "port": port}], "brokers": [],
        "settings": {"raft.tick.ms": 20, "sasl.enabled.mechanisms": "SCRAM-SHA-256",
                     "sasl.credentials.file": str(users),
                     "sasl.plain.allow.plaintext": True}})
    spec = resolve_node(config, 1, ("controller", "broker"), tmp_path / "n1",
                        http_port=http_port)
    n = Node(config, spec)
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


async def test_a_node_with_sasl_users_asks_for_them_on_http(node: Node) -> None:
    port = node.spec.http_port
    assert port is not None
    assert (await _get(port, "/healthz"))[0] == 200
    assert (await _get(port, "/api/v1/metadata/topics"))[0] == 401
    status, _, _ = await _get(port, "/api/v1/metadata/topics", _basic("alice", "pw-123456"))
    assert status in (200, 503)  # served (503 only while no controller is active yet)
    assert (await _get(port, "/", _basic("alice", "nope")))[0] == 401  # the console too
