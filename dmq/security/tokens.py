"""HTTP bearer tokens: `POST /api/v1/auth/login` trades a user's password for a signed,
expiring JWT (HS256, PyJWT), which HTTP accepts as `Authorization: Bearer <token>`
wherever it accepts Basic (`dmq.security.http_auth`).

Signing key: per user, HMAC-SHA256(the user's SCRAM ServerKey, "dmq http token" +
the contents of the `http.token.secret` file when set). Every node has the users in its
metadata (`dmq.security.users`), so every node verifies the tokens of every other with
no key to distribute, and a token dies with its user's password: changing the password
or deleting the user invalidates every token issued before. The key is never logged
nor sent. Without `http.token.secret`, whoever can read the metadata (a node's data
directory) can forge tokens; with it, they need that file too (keep it the same on
every node).

Claims: `sub` (user), `iat`, `exp` (`http.token.ttl.ms` later), `jti` (a random id),
`iss` "dmq". `POST /api/v1/auth/refresh` with a valid token returns a new one (the old
one stays valid until it expires or is revoked); `POST /api/v1/auth/logout` revokes the
presented token: the node sends the token to the active controller, which verifies it
(only a holder of a valid token can revoke it, so nobody can fill the set with made-up
ids) and writes a REVOKE_TOKEN record (its id and expiry); every node refuses it once
its metadata has the record (one metadata round trip; the node that answered the
logout refuses it at once). Revocations are dropped from the
metadata once the token has expired, so the set stays bounded.

PyJWT is an optional dependency (the `security` extra): without it the login answers
501 naming the missing package, and a Bearer header 501 too.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmq.config import ClusterConfig, ConfigError
from dmq.security.users import UserDirectory

audit = logging.getLogger("dmq.audit")

ALGORITHM = "HS256"
ISSUER = "dmq"
KEY_LABEL = b"dmq http token"
MAX_TOKEN_BYTES = 4096
MAX_LOCAL_REVOKED = 10_000

Revoke = Callable[[str, str], Awaitable[None]]
"""(token, who) -> revoked through the active controller."""


class TokenUnavailable(Exception):
    """PyJWT is not installed."""


class TokenInvalid(Exception):
    """The token is refused; the text says why (never which part of a key)."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user: str
    token_id: str
    expires_ms: int
    token: str = field(default="", repr=False)  # the token itself, once verified


def _jwt() -> Any:
    try:
        import jwt
    except ImportError:
        raise TokenUnavailable("HTTP token login needs the PyJWT package (pip install "
                               "'pyjwt>=2.8', or the 'security' extra of dmq)") from None
    return jwt


def read_secret(config: ClusterConfig) -> bytes:
    path = str(config.get("http.token.secret") or "")
    if not path:
        return b""
    try:
        secret = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"http.token.secret {path}: {exc.strerror or exc}") from None
    if not secret.strip():
        raise ConfigError(f"http.token.secret {path}: the file is empty")
    return secret


class TokenIssuer:
    def __init__(self, users: UserDirectory, ttl_ms: int, secret: bytes = b"",
                 revoke: Revoke | None = None) -> None:
        if ttl_ms <= 0:
            raise ConfigError(f"http.token.ttl.ms must be positive, got {ttl_ms}")
        self.users = users
        self.ttl_ms = ttl_ms
        self._secret = secret
        self.revoke = revoke
        # revoked here, until the metadata has the record (ids -> expiry ms)
        self._revoked_here: OrderedDict[str, int] = OrderedDict()

    @classmethod
    def from_config(cls, config: ClusterConfig, users: UserDirectory) -> TokenIssuer:
        return cls(users, int(config.get("http.token.ttl.ms")), read_secret(config))

    def _key(self, user: str) -> bytes | None:
        cred = self.users.any_credential(user)
        if cred is None:
            return None
        return hmac.new(cred.server_key, KEY_LABEL + self._secret, hashlib.sha256).digest()

    def issue(self, user: str, now_s: float | None = None) -> tuple[str, TokenClaims]:
        jwt = _jwt()
        key = self._key(user)
        if key is None:
            raise TokenInvalid(f"no user {user!r}")
        now = time.time() if now_s is None else now_s
        exp_ms = int(now * 1000) + self.ttl_ms
        claims = TokenClaims(user, secrets.token_urlsafe(16), exp_ms)
        token: str = jwt.encode({"sub": user, "iat": int(now), "exp": exp_ms / 1000,
                                 "jti": claims.token_id, "iss": ISSUER}, key,
                                algorithm=ALGORITHM)
        return token, claims

    def verify(self, token: str) -> TokenClaims:
        jwt = _jwt()
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenInvalid(f"token longer than {MAX_TOKEN_BYTES} bytes")
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
            user = unverified.get("sub") if isinstance(unverified, dict) else None
            if not isinstance(user, str) or not user:
                raise TokenInvalid("invalid token: no subject")
            key = self._key(user)
            if key is None:
                raise TokenInvalid("invalid token")  # unknown or deleted user
            claims = jwt.decode(token, key, algorithms=[ALGORITHM], issuer=ISSUER,
                                options={"require": ["exp", "iat", "sub", "jti"]})
        except jwt.ExpiredSignatureError:
            raise TokenInvalid("token expired: log in again") from None
        except jwt.InvalidTokenError as exc:
            raise TokenInvalid(f"invalid token: {exc}") from None
        token_id = str(claims["jti"])
        if token_id in self._revoked_here or self.users.is_revoked(token_id):
            raise TokenInvalid("token revoked: log in again")
        return TokenClaims(user, token_id, int(float(claims["exp"]) * 1000), token)

    async def logout(self, claims: TokenClaims, who: str) -> None:
        """Revoke the token everywhere (through the active controller), and here at once."""
        if self.revoke is None:
            raise TokenUnavailable("this node cannot reach a controller to revoke tokens")
        await self.revoke(claims.token, who)
        self._revoked_here[claims.token_id] = claims.expires_ms
        now_ms = int(time.time() * 1000)
        while self._revoked_here and (len(self._revoked_here) > MAX_LOCAL_REVOKED
                                      or next(iter(self._revoked_here.values())) <= now_ms):
            self._revoked_here.popitem(last=False)


__all__ = ["TokenClaims", "TokenInvalid", "TokenIssuer", "TokenUnavailable", "read_secret"]
