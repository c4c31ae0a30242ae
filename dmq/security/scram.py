"""SASL mechanisms: SCRAM-SHA-256/512 (RFC 5802, RFC 7677) and PLAIN, server side, and
the credentials they check.

Only salted credentials are stored: per user and mechanism the salt, the iteration
count, StoredKey = H(HMAC(SaltedPassword, "Client Key")) and ServerKey =
HMAC(SaltedPassword, "Server Key"); never a password. PLAIN is checked against the
same entry (the password is salted and hashed with the entry's salt and iterations).

A credentials file (`sasl.credentials.file`) is JSON::

    {"users": {"alice": {"SCRAM-SHA-256": {"salt": "<base64>", "iterations": 8192,
                                           "stored_key": "<base64>",
                                           "server_key": "<base64>"}}}}

written by ``python -m dmq.security.scram add FILE USER`` (the password from the
environment variable DMQ_PASSWORD, else asked for).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dmq.config import ConfigError

SCRAM_HASHES = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
MECHANISMS = (*SCRAM_HASHES, "PLAIN")
MIN_ITERATIONS = 4096
DEFAULT_ITERATIONS = 8192
MAX_TOKEN_BYTES = 4096


class AuthenticationFailed(Exception):
    """The client's credentials or messages are wrong; the text names which, and never
    whether the user exists."""


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


@dataclass(frozen=True, slots=True)
class ScramCredential:
    mechanism: str
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes

    def to_json(self) -> dict[str, Any]:
        return {"salt": _b64(self.salt), "iterations": self.iterations,
                "stored_key": _b64(self.stored_key), "server_key": _b64(self.server_key)}

    @classmethod
    def from_json(cls, mechanism: str, raw: Any, where: str) -> ScramCredential:
        if mechanism not in SCRAM_HASHES:
            raise ConfigError(f"{where}: unknown mechanism {mechanism!r} (one of "
                              f"{', '.join(SCRAM_HASHES)})")
        try:
            cred = cls(mechanism, base64.b64decode(raw["salt"], validate=True),
                       int(raw["iterations"]), base64.b64decode(raw["stored_key"], validate=True),
                       base64.b64decode(raw["server_key"], validate=True))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: needs salt, iterations, stored_key and server_key "
                              f"(base64): {exc}") from None
        if cred.iterations < MIN_ITERATIONS:
            raise ConfigError(f"{where}: iterations {cred.iterations} is below "
                              f"{MIN_ITERATIONS}")
        return cred

    def check_password(self, password: str) -> bool:
        h = SCRAM_HASHES[self.mechanism]
        salted = hashlib.pbkdf2_hmac(h, password.encode(), self.salt, self.iterations)
        client_key = hmac.new(salted, b"Client Key", h).digest()
        return hmac.compare_digest(hashlib.new(h, client_key).digest(), self.stored_key)


def make_credential(password: str, mechanism: str = "SCRAM-SHA-256",
                    iterations: int = DEFAULT_ITERATIONS, salt: bytes | None = None
                    ) -> ScramCredential:
    if not password:
        raise ValueError("empty password")
    if iterations < MIN_ITERATIONS:
        raise ValueError(f"iterations {iterations} is below {MIN_ITERATIONS}")
    h = SCRAM_HASHES[mechanism]
    salt = salt if salt is not None else secrets.token_bytes(24)
    salted = hashlib.pbkdf2_hmac(h, password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", h).digest()
    return ScramCredential(mechanism, salt, iterations, hashlib.new(h, client_key).digest(),
                           hmac.new(salted, b"Server Key", h).digest())


Lookup = Callable[[str, str], "ScramCredential | None"]
"""(user, mechanism) -> that user's credential for it, or None."""


class Credentials(Protocol):
    """Where logins are checked: a `CredentialStore`, or a node's
    `dmq.security.users.UserDirectory` (the metadata's users, then the file's)."""

    def lookup(self, user: str, mechanism: str) -> ScramCredential | None: ...

    def any_credential(self, user: str) -> ScramCredential | None: ...

    def users_marker(self) -> object:
        """An object that is another one whenever the set of users may have changed
        (compared by identity: cheap enough to ask on every request)."""
        ...


class CredentialStore:
    """Users and their SCRAM credentials, from a credentials file."""

    def __init__(self, users: dict[str, dict[str, ScramCredential]] | None = None) -> None:
        self.users = users or {}

    def users_marker(self) -> object:
        return self.users  # a file's users never change while a node runs

    @classmethod
    def load(cls, path: str | Path) -> CredentialStore:
        try:
            raw = json.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"sasl.credentials.file {path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise ConfigError(f"sasl.credentials.file {path}: not JSON: {exc}") from None
        users = raw.get("users") if isinstance(raw, dict) else None
        if not isinstance(users, dict):
            raise ConfigError(f"sasl.credentials.file {path}: needs a \"users\" object")
        out: dict[str, dict[str, ScramCredential]] = {}
        for user, mechs in users.items():
            if not isinstance(mechs, dict) or not mechs:
                raise ConfigError(f"{path}: user {user!r} has no credentials")
            out[user] = {m: ScramCredential.from_json(m, v, f"{path}: user {user!r} {m}")
                         for m, v in mechs.items()}
        return cls(out)

    def save(self, path: str | Path) -> None:
        body = {"users": {u: {m: c.to_json() for m, c in mechs.items()}
                          for u, mechs in sorted(self.users.items())}}
        tmp = Path(f"{path}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)

    def lookup(self, user: str, mechanism: str) -> ScramCredential | None:
        return self.users.get(user, {}).get(mechanism)

    def any_credential(self, user: str) -> ScramCredential | None:
        mechs = self.users.get(user)
        return next(iter(mechs.values())) if mechs else None


def _attrs(text: str, where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=":
            raise AuthenticationFailed(f"malformed SCRAM {where}: attribute {part[:20]!r}")
        out.setdefault(part[0], part[2:])
    return out


def _saslname(name: str) -> str:
    if "=" in name.replace("=2C", "").replace("=3D", ""):
        raise AuthenticationFailed("malformed SCRAM user name")
    return name.replace("=2C", ",").replace("=3D", "=")


class ScramServer:
    """One SCRAM exchange: `step(client-first)` -> server-first, `step(client-final)` ->
    server-final; `user` is set once `done`. Raises AuthenticationFailed."""

    def __init__(self, mechanism: str, lookup: Lookup) -> None:
        self.mechanism = mechanism
        self.hash = SCRAM_HASHES[mechanism]
        self.lookup = lookup
        self.user: str | None = None
        self.done = False
        self._state = 0
        self._cred: ScramCredential | None = None
        self._gs2 = ""
        self._first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._claimed = ""

    def step(self, token: bytes) -> bytes:
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthenticationFailed(f"SCRAM message of {len(token)} bytes (at most "
                                       f"{MAX_TOKEN_BYTES})")
        try:
            text = token.decode()
        except UnicodeDecodeError:
            raise AuthenticationFailed("SCRAM message is not UTF-8") from None
        if self._state == 0:
            return self._first(text)
        if self._state == 1:
            return self._final(text)
        raise AuthenticationFailed("SCRAM exchange already finished")

    def _first(self, text: str) -> bytes:
        parts = text.split(",", 2)
        if len(parts) != 3 or parts[0] not in ("n", "y"):
            raise AuthenticationFailed("malformed SCRAM client-first message (channel "
                                       "binding is not supported)")
        self._gs2 = f"{parts[0]},{parts[1]},"
        self._first_bare = parts[2]
        attrs = _attrs(parts[2], "client-first message")
        if "n" not in attrs or "r" not in attrs or not attrs["r"]:
            raise AuthenticationFailed("SCRAM client-first message needs n= and r=")
        self._claimed = _saslname(attrs["n"])
        self._cred = self.lookup(self._claimed, self.mechanism)
        if self._cred is None:
            raise AuthenticationFailed(f"authentication failed for {self._claimed!r} "
                                       f"({self.mechanism})")
        self._nonce = attrs["r"] + secrets.token_urlsafe(24)
        self._server_first = (f"r={self._nonce},s={_b64(self._cred.salt)},"
                              f"i={self._cred.iterations}")
        self._state = 1
        return self._server_first.encode()

    def _final(self, text: str) -> bytes:
        cred = self._cred
        assert cred is not None
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        if not sep:
            raise AuthenticationFailed("SCRAM client-final message has no proof")
        attrs = _attrs(without_proof, "client-final message")
        if attrs.get("c") != _b64(self._gs2.encode()):
            raise AuthenticationFailed("SCRAM channel binding does not match")
        # Kafka's broker checks that the nonce *ends with* the one it sent, and some
        # clients depend on it: librdkafka 2.0.x sends its own nonce twice
        if not attrs.get("r", "").endswith(self._nonce):
            raise AuthenticationFailed("SCRAM nonce does not match")
        try:
            proof = base64.b64decode(proof_b64, validate=True)
        except ValueError:
            raise AuthenticationFailed("SCRAM proof is not base64") from None
        auth = f"{self._first_bare},{self._server_first},{without_proof}".encode()
        signature = hmac.new(cred.stored_key, auth, self.hash).digest()
        if len(proof) != len(signature):
            raise AuthenticationFailed(f"authentication failed for {self._claimed!r} "
                                       f"({self.mechanism})")
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        if not hmac.compare_digest(hashlib.new(self.hash, client_key).digest(),
                                   cred.stored_key):
            raise AuthenticationFailed(f"authentication failed for {self._claimed!r} "
                                       f"({self.mechanism})")
        self._state = 2
        self.done = True
        self.user = self._claimed
        server_sig = hmac.new(cred.server_key, auth, self.hash).digest()
        return f"v={_b64(server_sig)}".encode()


class PlainServer:
    """SASL PLAIN (RFC 4616): one message `authzid NUL user NUL password`."""

    mechanism = "PLAIN"

    def __init__(self, store: Credentials) -> None:
        self.store = store
        self.user: str | None = None
        self.done = False

    def step(self, token: bytes) -> bytes:
        if self.done:
            raise AuthenticationFailed("PLAIN exchange already finished")
        parts = token.split(b"\0")
        if len(parts) != 3 or len(token) > MAX_TOKEN_BYTES:
            raise AuthenticationFailed("malformed PLAIN message")
        try:
            authzid, user, password = (p.decode() for p in parts)
        except UnicodeDecodeError:
            raise AuthenticationFailed("PLAIN message is not UTF-8") from None
        if authzid and authzid != user:
            raise AuthenticationFailed("PLAIN authorization id differs from the user")
        cred = self.store.any_credential(user)
        if cred is None or not cred.check_password(password):
            raise AuthenticationFailed(f"authentication failed for {user!r} (PLAIN)")
        self.done = True
        self.user = user
        return b""


def main(argv: list[str] | None = None) -> int:
    import argparse
    import getpass

    ap = argparse.ArgumentParser(prog="python -m dmq.security.scram",
                                 description="manage a SCRAM credentials file")
    sub = ap.add_subparsers(dest="cmd", required=True)
    add = sub.add_parser("add", help="add a user or set its password (DMQ_PASSWORD or asked)")
    add.add_argument("file", type=Path)
    add.add_argument("user")
    add.add_argument("--mechanisms", default="SCRAM-SHA-256,SCRAM-SHA-512")
    add.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS)
    delete = sub.add_parser("delete", help="remove a user")
    delete.add_argument("file", type=Path)
    delete.add_argument("user")
    lst = sub.add_parser("list", help="list users and their mechanisms")
    lst.add_argument("file", type=Path)
    args = ap.parse_args(argv)
    store = CredentialStore.load(args.file) if args.file.exists() else CredentialStore()
    if args.cmd == "add":
        password = os.environ.get("DMQ_PASSWORD") or getpass.getpass(f"password for {args.user}: ")
        mechs = [m for m in args.mechanisms.split(",") if m]
        bad = [m for m in mechs if m not in SCRAM_HASHES]
        if bad or not mechs:
            ap.error(f"--mechanisms: one or more of {', '.join(SCRAM_HASHES)}")
        store.users[args.user] = {m: make_credential(password, m, args.iterations)
                                  for m in mechs}
        store.save(args.file)
    elif args.cmd == "delete":
        if store.users.pop(args.user, None) is None:
            ap.error(f"no user {args.user!r} in {args.file}")
        store.save(args.file)
    else:
        for user, creds in sorted(store.users.items()):
            print(user, ",".join(sorted(creds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


class ScramClient:
    """The client side of one SCRAM exchange (for dmq's own clients)."""

    def __init__(self, mechanism: str, user: str, password: str) -> None:
        self.mechanism = mechanism
        self.hash = SCRAM_HASHES[mechanism]
        self.user = user
        self.password = password
        self.nonce = secrets.token_urlsafe(24)
        self._bare = ""
        self._server_signature = b""

    def first(self) -> bytes:
        name = self.user.replace("=", "=3D").replace(",", "=2C")
        self._bare = f"n={name},r={self.nonce}"
        return f"n,,{self._bare}".encode()

    def final(self, server_first: bytes) -> bytes:
        text = server_first.decode()
        attrs = _attrs(text, "server-first message")
        nonce, salt, iterations = attrs.get("r", ""), attrs.get("s", ""), attrs.get("i", "0")
        if not nonce.startswith(self.nonce) or len(nonce) == len(self.nonce):
            raise AuthenticationFailed("the server's SCRAM nonce does not extend ours")
        if not iterations.isdigit() or int(iterations) < MIN_ITERATIONS:
            raise AuthenticationFailed(f"the server asks for {iterations} SCRAM iterations "
                                       f"(at least {MIN_ITERATIONS})")
        salted = hashlib.pbkdf2_hmac(self.hash, self.password.encode(),
                                     base64.b64decode(salt), int(iterations))
        client_key = hmac.new(salted, b"Client Key", self.hash).digest()
        stored = hashlib.new(self.hash, client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth = f"{self._bare},{text},{without_proof}".encode()
        proof = bytes(a ^ b for a, b in zip(
            client_key, hmac.new(stored, auth, self.hash).digest(), strict=True))
        server_key = hmac.new(salted, b"Server Key", self.hash).digest()
        self._server_signature = hmac.new(server_key, auth, self.hash).digest()
        return f"{without_proof},p={_b64(proof)}".encode()

    def verify(self, server_final: bytes) -> None:
        """The server proved it knows the credential (mutual authentication)."""
        want = b"v=" + base64.b64encode(self._server_signature)
        if not hmac.compare_digest(server_final, want):
            raise AuthenticationFailed("the server's SCRAM signature is wrong: it does not "
                                       "hold this user's credential")
