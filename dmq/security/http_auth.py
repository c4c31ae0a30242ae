"""HTTP Basic authentication for a node's HTTP surface (REST, console, metrics) against
the same users as SASL (the node's `sasl.credentials.file`), so turning SASL on does
not leave the HTTP port open to anyone.

A request must carry `Authorization: Basic base64(user:password)`; the answer to one
without it is 401 with `WWW-Authenticate: Basic realm="dmq"` (a browser then asks for a
login, which is how the console logs in). As for SASL PLAIN, credentials are refused
over plain HTTP unless `sasl.plain.allow.plaintext` is on. Checking a password costs a
PBKDF2 of the stored iterations (milliseconds): it runs in a worker thread, a bounded
number at a time, and a success is remembered for a minute (by a hash of the
credentials, a bounded number of entries). Failures go through the node's SASL failure
books: logged once per address per period and answered after the growing delay.
`/healthz`, `/readyz` and `/metrics` stay open: probes and Prometheus scrape them,
and nodes read each other's `/metrics` for the console's graphs (the metrics name
topics and groups, never records).

`Authorization: Bearer <token>` is accepted wherever Basic is: a token from `POST
/api/v1/auth/login` (open: it takes {"username", "password"} as JSON and answers
{"token", "token_type", "expires_at_ms", "expires_in"}), renewed by `POST
/api/v1/auth/refresh` and revoked by `POST /api/v1/auth/logout` (see
`dmq.security.tokens`). A remembered Basic login holds only while the user's credential
is unchanged: a deleted user or a changed password is refused at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from aiohttp import web

from dmq.security.sasl import SaslAuthority
from dmq.security.scram import ScramCredential
from dmq.security.tokens import TokenClaims, TokenInvalid, TokenIssuer, TokenUnavailable

audit = logging.getLogger("dmq.audit")

LOGIN_PATH = "/api/v1/auth/login"
REFRESH_PATH = "/api/v1/auth/refresh"
LOGOUT_PATH = "/api/v1/auth/logout"
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", LOGIN_PATH})
PRINCIPAL: web.RequestKey[str] = web.RequestKey("principal", str)
"""Where a handler finds the logged-in user (`request[PRINCIPAL]`, `User:<name>`)."""
TOKEN: web.RequestKey[TokenClaims] = web.RequestKey("token", TokenClaims)
"""The bearer token a request logged in with (absent for Basic)."""
MAX_LOGIN_BODY = 4096
REALM = 'Basic realm="dmq", charset="UTF-8"'
REMEMBER_S = 60.0
MAX_REMEMBERED = 1024
MAX_CHECKS_AT_ONCE = 4
MAX_CREDENTIALS_BYTES = 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpBasicAuth:
    def __init__(self, authority: SaslAuthority, tokens: TokenIssuer | None = None) -> None:
        self.authority = authority
        self.tokens = tokens
        self._remembered: OrderedDict[bytes, tuple[str, float, ScramCredential]] = \
            OrderedDict()
        self._checks = asyncio.Semaphore(MAX_CHECKS_AT_ONCE)
        self.stats_checks = 0  # passwords checked (PBKDF2 runs), remembered ones not counted

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            request[PRINCIPAL] = await self.principal(request)
        return await handler(request)

    def routes(self) -> list[tuple[str, str, Callable[[web.Request],
                                                      Awaitable[web.StreamResponse]]]]:
        return [("POST", LOGIN_PATH, self.login), ("POST", REFRESH_PATH, self.refresh),
                ("POST", LOGOUT_PATH, self.logout)]

    async def principal(self, request: web.Request) -> str:
        """`User:<name>` for a request with valid credentials; else raises the HTTP
        error to answer (401 asking for a login, 403 over plain HTTP)."""
        host = request.remote or "?"
        header = request.headers.get("Authorization", "")
        if not header:
            raise _unauthorized("this node requires a login (HTTP Basic, the SASL users)")
        self._require_tls(request, "HTTP Basic credentials" if not _is_bearer(header)
                          else "Bearer tokens")
        if _is_bearer(header):
            claims = await self._check_token(request, header.partition(" ")[2].strip())
            request[TOKEN] = claims
            return f"User:{claims.user}"
        user, password = _parse_basic(header)
        key = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        now = time.monotonic()
        cred = self.authority.store.any_credential(user) if user is not None else None
        hit = self._remembered.get(key)
        if hit is not None and hit[1] > now and cred is not None and hit[2] == cred:
            return hit[0]
        if not await self._check_password(cred, password):
            await self._failed(host, user, f"HTTP login failed for {user!r}")
            raise _unauthorized("wrong user name or password")
        assert cred is not None
        self.authority.note_success(host)
        principal = f"User:{user}"
        self._remembered[key] = (principal, now + REMEMBER_S, cred)
        self._remembered.move_to_end(key)
        while len(self._remembered) > MAX_REMEMBERED:
            self._remembered.popitem(last=False)
        return principal


    def _require_tls(self, request: web.Request, what: str) -> None:
        if not request.secure and not self.authority.allow_plain_without_tls:
            raise web.HTTPForbidden(text=f"{what} are refused over plain HTTP (serve TLS, "
                                         "or set sasl.plain.allow.plaintext)")

    async def _check_password(self, cred: ScramCredential | None,
                              password: str | None) -> bool:
        if cred is None or password is None:
            return False
        async with self._checks:
            self.stats_checks += 1
            return await asyncio.to_thread(cred.check_password, password)

    async def _failed(self, host: str, user: str | None, why: str) -> None:
        """Log (rate-limited) and hold the answer, as for a failed SASL attempt."""
        self.authority.note_failure(host, user, why)
        await asyncio.sleep(self.authority.failure_delay(host))

    def _issuer(self) -> TokenIssuer:
        if self.tokens is None:
            raise web.HTTPNotImplemented(text="HTTP tokens are not served by this node")
        return self.tokens

    async def _check_token(self, request: web.Request, token: str) -> TokenClaims:
        try:
            if self.tokens is None:
                raise TokenInvalid("this node takes no bearer tokens")
            return self.tokens.verify(token)
        except TokenUnavailable as exc:
            raise web.HTTPNotImplemented(text=str(exc)) from None
        except TokenInvalid as exc:
            await self._failed(request.remote or "?", None, f"HTTP token refused: {exc}")
            raise _unauthorized(str(exc), bearer=True) from None

    def _token_answer(self, token: str, claims: TokenClaims) -> web.Response:
        assert self.tokens is not None
        return web.json_response({"token": token, "token_type": "Bearer",
                                  "expires_at_ms": claims.expires_ms,
                                  "expires_in": self.tokens.ttl_ms // 1000})

    async def login(self, request: web.Request) -> web.StreamResponse:
        """POST {"username", "password"} -> a bearer token (see dmq.security.tokens)."""
        issuer = self._issuer()
        self._require_tls(request, "passwords")
        host = request.remote or "?"
        size = request.content_length
        raw = b"" if size is not None and size > MAX_LOGIN_BODY else await request.read()
        if len(raw) > MAX_LOGIN_BODY or (size is not None and size > MAX_LOGIN_BODY):
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_LOGIN_BODY,
                                                actual_size=size or len(raw),
                                                text=f"login body over {MAX_LOGIN_BODY} "
                                                     "bytes")
        try:
            body = json.loads(raw)
            user, password = body["username"], body["password"]
            if not isinstance(user, str) or not isinstance(password, str) or not user:
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise web.HTTPBadRequest(text='the login body must be JSON {"username": ..., '
                                          '"password": ...} (strings)') from None
        try:
            cred = self.authority.store.any_credential(user)
            if not await self._check_password(cred, password):
                await self._failed(host, user, f"HTTP token login failed for {user!r}")
                raise _unauthorized("wrong user name or password", bearer=True)
            token, claims = issuer.issue(user)
        except TokenUnavailable as exc:
            raise web.HTTPNotImplemented(text=str(exc)) from None
        except TokenInvalid:
            await self._failed(host, user, f"HTTP token login failed for {user!r}")
            raise _unauthorized("wrong user name or password", bearer=True) from None
        self.authority.note_success(host)
        audit.info("HTTP token %s issued to User:%s from %s", claims.token_id, user, host)
        return self._token_answer(token, claims)

    async def refresh(self, request: web.Request) -> web.StreamResponse:
        """A valid token (the request's) -> a new one."""
        claims = request.get(TOKEN)
        if claims is None:
            raise web.HTTPBadRequest(text="refresh needs Authorization: Bearer <token>")
        try:
            token, new = self._issuer().issue(claims.user)
        except TokenInvalid:
            raise _unauthorized("invalid token", bearer=True) from None
        audit.info("HTTP token %s refreshed as %s for User:%s", claims.token_id, new.token_id,
                   claims.user)
        return self._token_answer(token, new)

    async def logout(self, request: web.Request) -> web.StreamResponse:
        """Revoke the request's token on every node."""
        claims = request.get(TOKEN)
        if claims is None:
            raise web.HTTPBadRequest(text="logout needs Authorization: Bearer <token>")
        who = f"User:{claims.user} from {request.remote or '?'}"
        try:
            await self._issuer().logout(claims, who)
        except TokenUnavailable as exc:
            raise web.HTTPServiceUnavailable(text=str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - the controller's error, told to the caller
            raise web.HTTPServiceUnavailable(text=f"could not revoke the token: {exc}") \
                from None
        return web.json_response({"revoked": claims.token_id})


def _is_bearer(header: str) -> bool:
    return header.partition(" ")[0].lower() == "bearer"


def _parse_basic(header: str) -> tuple[str | None, str | None]:
    """(user, password) of a Basic Authorization header, (None, None) when it is not one
    or is malformed (it is then refused like wrong credentials)."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or len(value) > MAX_CREDENTIALS_BYTES:
        return None, None
    try:
        text = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    user, sep, password = text.partition(":")
    if not sep or not user:
        return None, None
    return user, password


def _unauthorized(text: str, bearer: bool = False) -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(text=text, headers={
        "WWW-Authenticate": 'Bearer realm="dmq"' if bearer else REALM})


__all__ = ["LOGIN_PATH", "LOGOUT_PATH", "OPEN_PATHS", "PRINCIPAL", "REFRESH_PATH", "TOKEN",
           "HttpBasicAuth"]
