"""SASL sessions for a listener: which mechanisms are offered, one exchange per
connection, and the per-address throttle on failed attempts.

Settings: `sasl.enabled.mechanisms` (empty: no authentication), the users (kept in the
metadata, with `sasl.credentials.file` as the bootstrap source: see
`dmq.security.users` and `dmq.security.scram`), and PLAIN offered only on a TLS
listener unless `sasl.plain.allow.plaintext` is true. A failed attempt is logged
(one line per address per `LOG_EVERY_S`, with a count) and answered after a delay
that doubles with each consecutive failure from that address (up to
`sasl.failure.delay.max.ms`, `MAX_FAILURE_DELAY_S` by default); a success clears it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from dmq.config import ClusterConfig, ConfigError
from dmq.protocol.connection import DEFAULT_SASL
from dmq.security.scram import (
    MECHANISMS,
    SCRAM_HASHES,
    AuthenticationFailed,
    Credentials,
    CredentialStore,
    PlainServer,
    ScramServer,
)
from dmq.security.users import UserDirectory

log = logging.getLogger("dmq.security.sasl")

LOG_EVERY_S = 10.0
FIRST_FAILURE_DELAY_S = 0.1
MAX_FAILURE_DELAY_S = 5.0
MAX_TRACKED_ADDRESSES = 10_000


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    held: int = 0
    next_log: float = 0.0


@dataclass
class SaslAuthority:
    """The node's SASL configuration and failure books, shared by its connections."""

    mechanisms: tuple[str, ...]
    store: Credentials
    allow_plain_without_tls: bool = False
    node_id: int | str = "?"
    max_failure_delay_s: float = MAX_FAILURE_DELAY_S
    _failures: dict[str, _Failures] = field(default_factory=dict)
    stats_failures: int = 0

    @classmethod
    def from_config(cls, config: ClusterConfig, node_id: int,
                    users: UserDirectory | None = None) -> SaslAuthority | None:
        """None when SASL is off. `users`: the node's directory (the metadata's users,
        then the file's); without it, the file's users alone."""
        raw = config.get("sasl.enabled.mechanisms")
        mechs = tuple(m.strip().upper() for m in raw.split(",") if m.strip())
        if not mechs:
            return None
        bad = [m for m in mechs if m not in MECHANISMS]
        if bad:
            raise ConfigError(f"sasl.enabled.mechanisms: {', '.join(bad)} unknown (one of "
                              f"{', '.join(MECHANISMS)})")
        path = config.get("sasl.credentials.file")
        if not path:
            raise ConfigError("sasl.enabled.mechanisms is set but sasl.credentials.file is "
                              "not: the users come from that file")
        cap_ms = int(config.get("sasl.failure.delay.max.ms"))
        if cap_ms < 0:
            raise ConfigError(f"sasl.failure.delay.max.ms must be >= 0, got {cap_ms}")
        store = users if users is not None else UserDirectory(CredentialStore.load(path))
        return cls(mechs, store, bool(config.get("sasl.plain.allow.plaintext")), node_id,
                   cap_ms / 1000)

    def offered(self, tls: bool) -> list[str]:
        return [m for m in self.mechanisms
                if m != "PLAIN" or tls or self.allow_plain_without_tls]

    def session(self, peer_host: str, tls: bool) -> SaslSession:
        return SaslSession(self, peer_host, tls)

    # failure books -------------------------------------------------------------------
    def _entry(self, host: str) -> _Failures:
        f = self._failures.pop(host, None)
        if f is None:
            if len(self._failures) >= MAX_TRACKED_ADDRESSES:
                self._failures.pop(next(iter(self._failures)))  # the longest idle address
            f = _Failures()
        self._failures[host] = f  # (re)inserted last: the table is in order of last use
        return f

    def failure_delay(self, host: str) -> float:
        """How long to hold the answer to a failed attempt from `host` (this one
        included)."""
        f = self._entry(host)
        f.count += 1
        f.last = time.monotonic()
        # the exponent is capped first: 2.0 ** 1100 overflows, and the cap is reached
        # long before 30 doublings anyway
        delay: float = FIRST_FAILURE_DELAY_S * 2.0 ** min(f.count - 1, 30)
        return min(delay, self.max_failure_delay_s)

    def note_failure(self, host: str, user: str | None, why: str) -> None:
        self.stats_failures += 1
        f = self._entry(host)
        now = time.monotonic()
        if now < f.next_log:
            f.held += 1
            return
        f.next_log = now + LOG_EVERY_S
        more = f" (and {f.held} more from there in the last {LOG_EVERY_S:.0f} s)" if f.held \
            else ""
        f.held = 0
        log.warning("node=%s SASL authentication from %s failed: %s%s", self.node_id, host,
                    why, more)

    def note_success(self, host: str) -> None:
        self._failures.pop(host, None)


class SaslSession:
    """One connection's authentication: a handshake naming a mechanism, then the
    exchange's messages; `principal` (`User:<name>`) once it succeeded."""

    def __init__(self, authority: SaslAuthority, peer_host: str, tls: bool) -> None:
        self.authority = authority
        self.peer_host = peer_host
        self.tls = tls
        self.mechanism: str | None = None
        self.exchange: ScramServer | PlainServer | None = None
        self.principal: str | None = None
        self.failed = False
        self.raw = False  # after SaslHandshake v0: raw tokens until authenticated
        self.user: str | None = None
        self._users_seen: object = None  # the store's users when last checked

    @property
    def authenticated(self) -> bool:
        return self.principal is not None

    def handshake(self, mechanism: str) -> tuple[bool, list[str]]:
        """(accepted, the mechanisms offered on this connection)."""
        offered = self.authority.offered(self.tls)
        if mechanism not in offered or self.exchange is not None:
            return False, offered
        self.mechanism = mechanism
        if mechanism in SCRAM_HASHES:
            self.exchange = ScramServer(mechanism, self.authority.store.lookup)
        else:
            self.exchange = PlainServer(self.authority.store)
        return True, offered

    def authenticate(self, token: bytes) -> bytes:
        """The server's answer to one client message; raises AuthenticationFailed (the
        connection is then done: `failed` is set and the attempt is logged)."""
        if self.exchange is None:
            raise AuthenticationFailed("no SASL handshake on this connection")
        try:
            answer = self.exchange.step(token)
        except AuthenticationFailed as exc:
            self.failed = True
            self.authority.note_failure(self.peer_host, None, str(exc))
            raise
        if self.exchange.done:
            self.user = self.exchange.user
            self.principal = f"User:{self.user}"
            self._users_seen = self.authority.store.users_marker()
            self.authority.note_success(self.peer_host)
            log.info("node=%s %s authenticated as %s (%s)", self.authority.node_id,
                     self.peer_host, self.principal, self.mechanism)
        return answer

    def user_deleted(self) -> bool:
        """True once the user this connection authenticated as can no longer log in
        (deleted from the metadata since): its connections are closed at their next
        request instead of keeping the rights of a user that is gone. A changed
        password leaves them open, as Kafka does. Asked on every request after
        authentication: an identity check unless the users changed meanwhile."""
        if self.user is None:
            return False
        store = self.authority.store
        marker = store.users_marker()
        if marker is self._users_seen:
            return False
        self._users_seen = marker
        if store.any_credential(self.user) is not None:
            return False
        log.warning("node=%s %s: %s was deleted; closing its connection",
                    self.authority.node_id, self.peer_host, self.principal)
        return True


@dataclass(frozen=True)
class SaslCredentials:
    """A dmq client's SASL identity: pass as `sasl=` to `Connection.open`, or run the
    client inside `client_sasl(...)`."""

    mechanism: str
    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if self.mechanism not in MECHANISMS:
            raise ValueError(f"sasl mechanism {self.mechanism!r}: one of "
                             f"{', '.join(MECHANISMS)}")

    async def authenticate(self, conn: Any, timeout_ms: int) -> None:
        from dmq.protocol.api import ApiKey
        from dmq.protocol.errors import SaslAuthenticationFailedError
        from dmq.security.scram import ScramClient

        await conn.request(ApiKey.SASL_HANDSHAKE, {"mechanism": self.mechanism},
                           timeout_ms=timeout_ms)
        if self.mechanism == "PLAIN":
            token = f"\0{self.username}\0{self.password}".encode()
            await conn.request(ApiKey.SASL_AUTHENTICATE, {"auth_bytes": token},
                               timeout_ms=timeout_ms)
            return
        client = ScramClient(self.mechanism, self.username, self.password)
        try:
            first = await conn.request(ApiKey.SASL_AUTHENTICATE,
                                       {"auth_bytes": client.first()}, timeout_ms=timeout_ms)
            final = await conn.request(
                ApiKey.SASL_AUTHENTICATE,
                {"auth_bytes": client.final(bytes(first["auth_bytes"]))}, timeout_ms=timeout_ms)
            client.verify(bytes(final["auth_bytes"]))
        except AuthenticationFailed as exc:
            raise SaslAuthenticationFailedError(str(exc)) from None


@contextlib.contextmanager
def client_sasl(credentials: SaslCredentials | None) -> Iterator[None]:
    """Connections opened inside this block (and by tasks started in it) authenticate
    with `credentials`."""
    token = DEFAULT_SASL.set(credentials)
    try:
        yield
    finally:
        DEFAULT_SASL.reset(token)
