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
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from aiohttp import web

from dmq.security.sasl import SaslAuthority

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
PRINCIPAL: web.RequestKey[str] = web.RequestKey("principal", str)
"""Where a handler finds the logged-in user (`request[PRINCIPAL]`, `User:<name>`)."""
REALM = 'Basic realm="dmq", charset="UTF-8"'
REMEMBER_S = 60.0
MAX_REMEMBERED = 1024
MAX_CHECKS_AT_ONCE = 4
MAX_CREDENTIALS_BYTES = 1024

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpBasicAuth:
    def __init__(self, authority: SaslAuthority) -> None:
        self.authority = authority
        self._remembered: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._checks = asyncio.Semaphore(MAX_CHECKS_AT_ONCE)
        self.stats_checks = 0  # passwords checked (PBKDF2 runs), remembered ones not counted

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS:
            request[PRINCIPAL] = await self.principal(request)
        return await handler(request)

    async def principal(self, request: web.Request) -> str:
        """`User:<name>` for a request with valid credentials; else raises the HTTP
        error to answer (401 asking for a login, 403 over plain HTTP)."""
        host = request.remote or "?"
        header = request.headers.get("Authorization", "")
        if not header:
            raise _unauthorized("this node requires a login (HTTP Basic, the SASL users)")
        if not request.secure and not self.authority.allow_plain_without_tls:
            raise web.HTTPForbidden(text="HTTP Basic credentials are refused over plain "
                                         "HTTP (serve TLS, or set sasl.plain.allow.plaintext)")
        user, password = _parse_basic(header)
        key = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        now = time.monotonic()
        hit = self._remembered.get(key)
        if hit is not None and hit[1] > now:
            return hit[0]
        cred = self.authority.store.any_credential(user) if user is not None else None
        ok = False
        if cred is not None and password is not None:
            async with self._checks:
                self.stats_checks += 1
                ok = await asyncio.to_thread(cred.check_password, password)
        if not ok:
            self.authority.note_failure(host, user, f"HTTP login failed for {user!r}")
            await asyncio.sleep(self.authority.failure_delay(host))
            raise _unauthorized("wrong user name or password")
        self.authority.note_success(host)
        principal = f"User:{user}"
        self._remembered[key] = (principal, now + REMEMBER_S)
        self._remembered.move_to_end(key)
        while len(self._remembered) > MAX_REMEMBERED:
            self._remembered.popitem(last=False)
        return principal


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


def _unauthorized(text: str) -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(text=text, headers={"WWW-Authenticate": REALM})


__all__ = ["OPEN_PATHS", "PRINCIPAL", "HttpBasicAuth"]
