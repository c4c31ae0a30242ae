"""HTTP Basic against the users kept in the metadata (in process, real sockets): a
remembered login is dropped as soon as the user's password changes or the user is
deleted in the metadata (it was remembered for a minute whatever happened), and a user
the metadata deleted is refused although the bootstrap file still names it."""

from __future__ import annotations

import base64

import aiohttp
from aiohttp import web

from dmq.metadata.records import RemoveUserScramCredential, UserScramCredential
from dmq.metadata.state import MetadataState
from dmq.ops.http import HttpServer
from dmq.security.http_auth import PRINCIPAL, HttpBasicAuth
from dmq.security.sasl import SaslAuthority
from dmq.security.scram import CredentialStore, make_credential
from dmq.security.users import UserDirectory


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _rec(user: str, password: str) -> list[object]:
    c = make_credential(password)
    return UserScramCredential(user, c.mechanism, c.salt, c.iterations, c.stored_key,
                               c.server_key).to_wire()


async def _status(port: int, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as s, \
            s.get(f"http://127.0.0.1:{port}/whoami", headers=headers) as r:
        return r.status


async def test_remembered_basic_login_ends_with_the_credential() -> None:
    state = MetadataState()
    state.apply_entry(1, [_rec("alice", "pw-1")])
    users = UserDirectory(CredentialStore({"root": {"SCRAM-SHA-256": make_credential("r")}}),
                          lambda: state)
    auth = HttpBasicAuth(SaslAuthority(("SCRAM-SHA-256",), users,
                                       allow_plain_without_tls=True))

    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"principal": request[PRINCIPAL]})

    http = HttpServer("127.0.0.1", 0, 1, render_metrics=lambda: b"", readiness=lambda: (True, {}),
                      routes=[("GET", "/whoami", whoami)], middlewares=[auth.middleware])
    await http.start()
    try:
        port = http.bound_port
        assert await _status(port, _basic("alice", "pw-1")) == 200
        checks = auth.stats_checks
        assert await _status(port, _basic("alice", "pw-1")) == 200  # remembered
        assert auth.stats_checks == checks
        state.apply_entry(2, [_rec("alice", "pw-2")])  # passwd, through the metadata
        assert await _status(port, _basic("alice", "pw-1")) == 401
        assert await _status(port, _basic("alice", "pw-2")) == 200
        state.apply_entry(3, [RemoveUserScramCredential("alice", "SCRAM-SHA-256").to_wire()])
        assert await _status(port, _basic("alice", "pw-2")) == 401
        assert await _status(port, _basic("root", "r")) == 200  # the file fills in
        state.apply_entry(4, [RemoveUserScramCredential("root", "SCRAM-SHA-256").to_wire()])
        assert await _status(port, _basic("root", "r")) == 401  # deleted wins over the file
    finally:
        await http.stop()
