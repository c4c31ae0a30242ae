"""The users a node checks logins against: SCRAM credentials kept in the metadata
(Raft), with the node's `sasl.credentials.file` as the bootstrap source.

Precedence, per user: a user the metadata knows is what the metadata says (its
credentials, or deleted), whatever the file holds; the file fills in the users the
metadata has never heard of. So the first administrator comes from the file at the
first start, a user created, changed or deleted through the API (AlterUserScram-
Credentials, `dmq users`) is the same on every node within one metadata round trip,
and deleting a user that the file also names keeps it deleted (the metadata remembers
the deletion). Every controller reads its applied `MetadataState`, every broker its
metadata image (`dmq.roles` wires which: `UserDirectory.source`).

Changing users goes through the active controller, which writes USER_SCRAM_CREDENTIAL
and REMOVE_USER_SCRAM_CREDENTIAL records (`plan_alter`): as in Kafka's
AlterUserScramCredentials, a client sends the salt, the iteration count and the
*salted password* (PBKDF2 of the password; never the password itself), and the
controller derives StoredKey and ServerKey from it. The salted password is
equivalent to the password for logging in with SCRAM, so it must travel over TLS (or a
trusted network), like the password of a SASL PLAIN login; it is never stored nor
logged. Every change is logged on the `dmq.audit` logger.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

from dmq.config import ClusterConfig
from dmq.metadata.records import (
    Record,
    RemoveUserScramCredential,
    UserScramCredential,
)
from dmq.protocol.errors import ErrorCode
from dmq.security.scram import MIN_ITERATIONS, SCRAM_HASHES, CredentialStore, ScramCredential

audit = logging.getLogger("dmq.audit")

MAX_ITERATIONS = 16_384  # Kafka's limit
MAX_USER_NAME = 256
MIN_SALT_BYTES = 8
MAX_SALT_BYTES = 256
# Kafka's numbers for the mechanisms (ScramMechanism): 1 SCRAM-SHA-256, 2 SCRAM-SHA-512
MECHANISM_NUMBERS = {"SCRAM-SHA-256": 1, "SCRAM-SHA-512": 2}
MECHANISM_NAMES = {n: m for m, n in MECHANISM_NUMBERS.items()}


class UsersView(Protocol):
    """What the directory reads of a node's metadata (a MetadataState or an image)."""

    @property
    def users(self) -> Mapping[str, Mapping[str, UserScramCredential]]: ...

    @property
    def revoked_tokens(self) -> Mapping[str, int]: ...


def credential_of(rec: UserScramCredential) -> ScramCredential:
    return ScramCredential(rec.mechanism, rec.salt, rec.iterations, rec.stored_key,
                           rec.server_key)


class UserDirectory:
    """Lookups for SASL (SCRAM and PLAIN) and HTTP logins: the metadata's users first,
    then the bootstrap file's (see the module doc). Quacks like `CredentialStore`."""

    def __init__(self, bootstrap: CredentialStore | None = None,
                 source: Callable[[], UsersView | None] | None = None) -> None:
        self.bootstrap = bootstrap or CredentialStore()
        # the node's metadata; set by the composition root (dmq.roles) once the roles
        # exist; None (or returning None): the file alone
        self.source = source
        # revokes an HTTP token through the active controller (the token, who asks);
        # set by the composition root too
        self.revoke_token: Callable[[str, str], Awaitable[None]] | None = None

    def view(self) -> UsersView | None:
        return self.source() if self.source is not None else None

    def credentials(self, user: str) -> dict[str, ScramCredential]:
        """The user's credentials by mechanism ({}: no such user, or deleted)."""
        view = self.view()
        if view is not None:
            creds = view.users.get(user)
            if creds is not None:
                return {m: credential_of(c) for m, c in creds.items()}
        return dict(self.bootstrap.users.get(user, {}))

    def lookup(self, user: str, mechanism: str) -> ScramCredential | None:
        view = self.view()
        if view is not None:
            creds = view.users.get(user)
            if creds is not None:
                rec = creds.get(mechanism)
                return credential_of(rec) if rec is not None else None
        return self.bootstrap.lookup(user, mechanism)

    def users_marker(self) -> object:
        """The metadata's users mapping (replaced, never changed in place, whenever a
        user is created, changed or deleted), or the file's without metadata."""
        view = self.view()
        return view.users if view is not None else self.bootstrap.users

    def any_credential(self, user: str) -> ScramCredential | None:
        creds = self.credentials(user)
        return creds[min(creds)] if creds else None

    def all_users(self) -> dict[str, dict[str, ScramCredential]]:
        """Every user that can log in, with its credentials."""
        out = {u: dict(c) for u, c in self.bootstrap.users.items()}
        view = self.view()
        if view is not None:
            for u, creds in view.users.items():
                if creds:
                    out[u] = {m: credential_of(c) for m, c in creds.items()}
                else:
                    out.pop(u, None)
        return out

    def is_revoked(self, token_id: str) -> bool:
        view = self.view()
        return view is not None and token_id in view.revoked_tokens


def derive(mechanism: str, salted_password: bytes) -> tuple[bytes, bytes]:
    """(StoredKey, ServerKey) of a salted password (RFC 5802)."""
    h = SCRAM_HASHES[mechanism]
    client_key = hmac.new(salted_password, b"Client Key", h).digest()
    return (hashlib.new(h, client_key).digest(),
            hmac.new(salted_password, b"Server Key", h).digest())


def salted_password(mechanism: str, password: str, salt: bytes, iterations: int) -> bytes:
    """What a client sends to set a password (AlterUserScramCredentials)."""
    return hashlib.pbkdf2_hmac(SCRAM_HASHES[mechanism], password.encode(), salt, iterations)


class AlterRefused(ValueError):
    """One user's part of an alteration is refused: `code` is the error to answer."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


RESOURCE_NOT_FOUND = int(ErrorCode.RESOURCE_NOT_FOUND)
DUPLICATE_RESOURCE = int(ErrorCode.DUPLICATE_RESOURCE)
UNACCEPTABLE_CREDENTIAL = int(ErrorCode.UNACCEPTABLE_CREDENTIAL)
UNSUPPORTED_SASL_MECHANISM = int(ErrorCode.UNSUPPORTED_SASL_MECHANISM)


def plan_alter(directory: UserDirectory, deletions: list[tuple[str, str]],
               upsertions: list[tuple[str, str, int, bytes, bytes]]
               ) -> tuple[list[Record], list[tuple[str, int, str | None]]]:
    """The records of one AlterUserScramCredentials request, and a result per user
    named ([user, error code, message]). A user named twice for the same mechanism is
    refused (DUPLICATE_RESOURCE); a user refused in part is not changed at all. A user
    known only from the bootstrap file is first copied into the metadata whole, so a
    change to one of its mechanisms keeps the others."""
    per_user: dict[str, list[tuple[str, str, tuple[int, bytes, bytes] | None]]] = {}
    for user, mech in deletions:
        per_user.setdefault(user, []).append(("delete", mech, None))
    for user, mech, iterations, salt, salted in upsertions:
        per_user.setdefault(user, []).append(("upsert", mech, (iterations, salt, salted)))
    records: list[Record] = []
    results: list[tuple[str, int, str | None]] = []
    for user, ops in per_user.items():
        try:
            recs = _plan_user(directory, user, ops)
        except AlterRefused as exc:
            results.append((user, exc.code, str(exc)))
            continue
        records += recs
        results.append((user, 0, None))
    return records, results


def audit_alter(deletions: list[tuple[str, str]],
                upsertions: list[tuple[str, str, int, bytes, bytes]],
                results: list[tuple[str, int, str | None]], by: str) -> None:
    """One `dmq.audit` line per credential changed (once written), and per user refused."""
    for user, code, msg in results:
        if code:
            audit.info("user %s: change by %s refused: %s", user, by, msg)
            continue
        for u, mech, *_ in upsertions:
            if u == user:
                audit.info("user %s: set %s credential by %s", user, mech, by)
        for u, mech in deletions:
            if u == user:
                audit.info("user %s: removed %s credential by %s", user, mech, by)


def _plan_user(directory: UserDirectory, user: str,
               ops: list[tuple[str, str, tuple[int, bytes, bytes] | None]]) -> list[Record]:
    if not user or len(user) > MAX_USER_NAME or any(ord(c) < 32 for c in user):
        raise AlterRefused(UNACCEPTABLE_CREDENTIAL,
                           f"user name must be 1 to {MAX_USER_NAME} printable characters")
    mechs = [m for _, m, _ in ops]
    if len(set(mechs)) != len(mechs):
        raise AlterRefused(DUPLICATE_RESOURCE,
                           f"user {user!r}: a mechanism is named twice in one request")
    current = directory.credentials(user)
    view = directory.view()
    in_metadata = view is not None and user in view.users
    out: list[Record] = []
    if not in_metadata:  # adopt a bootstrap-file user whole before changing it
        for mech, c in sorted(current.items()):
            out.append(UserScramCredential(user, mech, c.salt, c.iterations, c.stored_key,
                                           c.server_key))
    for kind, mech, up in ops:
        if mech not in SCRAM_HASHES:
            raise AlterRefused(UNSUPPORTED_SASL_MECHANISM,
                               f"unknown SCRAM mechanism {mech!r} (one of "
                               f"{', '.join(SCRAM_HASHES)})")
        if kind == "delete":
            if mech not in current:
                raise AlterRefused(RESOURCE_NOT_FOUND,
                                   f"user {user!r} has no {mech} credential")
            out.append(RemoveUserScramCredential(user, mech))
            continue
        assert up is not None
        iterations, salt, salted = up
        digest_size = hashlib.new(SCRAM_HASHES[mech]).digest_size
        if not MIN_ITERATIONS <= iterations <= MAX_ITERATIONS:
            raise AlterRefused(UNACCEPTABLE_CREDENTIAL,
                               f"iterations {iterations}: from {MIN_ITERATIONS} to "
                               f"{MAX_ITERATIONS}")
        if not MIN_SALT_BYTES <= len(salt) <= MAX_SALT_BYTES:
            raise AlterRefused(UNACCEPTABLE_CREDENTIAL,
                               f"salt of {len(salt)} bytes: from {MIN_SALT_BYTES} to "
                               f"{MAX_SALT_BYTES}")
        if len(salted) != digest_size:
            raise AlterRefused(UNACCEPTABLE_CREDENTIAL,
                               f"salted password of {len(salted)} bytes: {mech} makes "
                               f"{digest_size}")
        stored, server = derive(mech, salted)
        out.append(UserScramCredential(user, mech, salt, iterations, stored, server))
    return out




def user_directory(config: ClusterConfig) -> UserDirectory | None:
    """The node's directory over its bootstrap file; None when SASL is off."""
    if not str(config.get("sasl.enabled.mechanisms")).strip():
        return None
    path = config.get("sasl.credentials.file")
    return UserDirectory(CredentialStore.load(path) if path else None)


__all__ = ["MECHANISM_NAMES", "MECHANISM_NUMBERS", "UserDirectory", "UsersView",
           "audit_alter", "derive", "plan_alter", "salted_password", "user_directory"]
