"""HTTP bearer tokens on a real HTTP listener (in process): login with the right
password returns a token the guarded routes take, a wrong password is 401 (logged and
held back like a SASL failure), an expired, a tampered, a foreign-signed or a revoked
token is 401, refresh returns a new token, logout revokes the token (here at once, and
through the revocation hook), a changed password or a deleted user ends its tokens,
and without PyJWT login is 501 naming the package."""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dmq.metadata.records import RemoveUserScramCredential, UserScramCredential
from dmq.metadata.state import MetadataState
from dmq.ops.http import HttpServer
from dmq.security.http_auth import PRINCIPAL, HttpBasicAuth
from dmq.security.sasl import SaslAuthority
from dmq.security.scram import CredentialStore, make_credential
from dmq.security.tokens import TokenIssuer
from dmq.security.users import UserDirectory

jwt = pytest.importorskip("jwt")


def _rec(user: str, password: str) -> UserScramCredential:
    c = make_credential(password)
    return UserScramCredential(user, c.mechanism, c.salt, c.iterations, c.stored_key,
                               c.server_key)


class Setup:
    def __init__(self) -> None:
        self.state = MetadataState()
        self.state.apply_entry(1, [_rec("alice", "pw-123456").to_wire()])
        self.users = UserDirectory(CredentialStore(), lambda: self.state)
        self.revoked: list[tuple[str, str]] = []

        async def revoke(token: str, who: str) -> None:
            self.revoked.append((token, who))

        self.tokens = TokenIssuer(self.users, 60_000, b"secret", revoke)
        authority = SaslAuthority(("SCRAM-SHA-256",), self.users, allow_plain_without_tls=True)
        self.auth = HttpBasicAuth(authority, self.tokens)


@pytest.fixture
def setup() -> Iterator[Setup]:
    yield Setup()


async def _server(auth: HttpBasicAuth) -> HttpServer:
    async def whoami(request: web.Request) -> web.Response:
        return web.json_response({"principal": request[PRINCIPAL]})

    http = HttpServer("127.0.0.1", 0, 1, render_metrics=lambda: b"m 1\n",
                      readiness=lambda: (True, {}),
                      routes=[("GET", "/whoami", whoami), *auth.routes()],
                      middlewares=[auth.middleware])
    await http.start()
    return http


async def _call(port: int, method: str, path: str, token: str | None = None,
                body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as s, \
            s.request(method, f"http://127.0.0.1:{port}{path}", headers=headers,
                      json=body) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


async def _login(port: int, user: str, password: str) -> tuple[int, Any]:
    return await _call(port, "POST", "/api/v1/auth/login", body={"username": user,
                                                                  "password": password})


async def test_login_use_refresh_logout(setup: Setup) -> None:
    http = await _server(setup.auth)
    try:
        port = http.bound_port
        status, body = await _login(port, "alice", "pw-123456")
        assert status == 200 and body["token_type"] == "Bearer", body
        token = body["token"]
        assert await _call(port, "GET", "/whoami", token) == (200, {"principal": "User:alice"})
        status, fresh = await _call(port, "POST", "/api/v1/auth/refresh", token)
        assert status == 200 and fresh["token"] != token
        assert (await _call(port, "GET", "/whoami", fresh["token"]))[0] == 200
        status, out = await _call(port, "POST", "/api/v1/auth/logout", token)
        assert status == 200
        assert setup.revoked == [(token, "User:alice from 127.0.0.1")]
        assert out == {"revoked": jwt.decode(token, options={"verify_signature": False})["jti"]}
        status, text = await _call(port, "GET", "/whoami", token)
        assert status == 401 and "revoked" in text
        assert (await _call(port, "GET", "/whoami", fresh["token"]))[0] == 200  # not that one
    finally:
        await http.stop()


async def test_wrong_password_and_bad_tokens_are_401(setup: Setup) -> None:
    http = await _server(setup.auth)
    try:
        port = http.bound_port
        status, _ = await _login(port, "alice", "wrong")
        assert status == 401
        assert (await _login(port, "mallory", "pw-123456"))[0] == 401
        assert (await _call(port, "POST", "/api/v1/auth/login", body={"username": 1}))[0] == 400
        big = {"username": "alice", "password": "x" * 10_000}
        assert (await _call(port, "POST", "/api/v1/auth/login", body=big))[0] == 413
        token = (await _login(port, "alice", "pw-123456"))[1]["token"]
        head, payload, sig = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        claims["sub"] = "alice"
        claims["exp"] = claims["exp"] + 3600  # tampered: a longer life
        forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
        status, text = await _call(port, "GET", "/whoami", f"{head}.{forged}.{sig}")
        assert status == 401 and "invalid token" in text
        # signed with a key of our own choosing
        own = jwt.encode({**claims, "exp": time.time() + 60}, "guess", algorithm="HS256")
        assert (await _call(port, "GET", "/whoami", own))[0] == 401
        none_alg = jwt.encode({**claims, "exp": time.time() + 60}, None, algorithm="none")
        assert (await _call(port, "GET", "/whoami", none_alg))[0] == 401
    finally:
        await http.stop()


async def test_expired_token_is_401(setup: Setup) -> None:
    token, _ = setup.tokens.issue("alice", now_s=time.time() - 3600)  # expired 59 min ago
    http = await _server(setup.auth)
    try:
        status, text = await _call(http.bound_port, "GET", "/whoami", token)
        assert status == 401 and "expired" in text
    finally:
        await http.stop()


async def test_revocation_from_the_metadata_and_password_change_end_tokens(
        setup: Setup) -> None:
    t1, c1 = setup.tokens.issue("alice")
    t2, _ = setup.tokens.issue("alice")
    assert setup.tokens.verify(t1).user == "alice"
    from dmq.metadata.records import RevokeToken

    setup.state.apply_entry(2, [RevokeToken(c1.token_id, c1.expires_ms,
                                            int(time.time() * 1000)).to_wire()])
    with pytest.raises(Exception, match="revoked"):
        setup.tokens.verify(t1)
    assert setup.tokens.verify(t2).user == "alice"
    setup.state.apply_entry(3, [_rec("alice", "new-password").to_wire()])  # passwd
    with pytest.raises(Exception, match="invalid token"):
        setup.tokens.verify(t2)
    t3, _ = setup.tokens.issue("alice")
    setup.state.apply_entry(4, [RemoveUserScramCredential("alice", "SCRAM-SHA-256").to_wire()])
    with pytest.raises(Exception, match="invalid token"):
        setup.tokens.verify(t3)


async def test_without_pyjwt_login_is_501(setup: Setup, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.setitem(sys.modules, "jwt", None)  # import jwt -> ImportError
    http = await _server(setup.auth)
    try:
        status, text = await _login(http.bound_port, "alice", "pw-123456")
        assert status == 501 and "PyJWT" in text
    finally:
        await http.stop()
