"""A client's security from a Kafka-style properties file (`--command-config FILE` of
the console tools), with Kafka's client property names:

    security.protocol=SASL_SSL          # PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL
    ssl.ca.location=certs/ca.pem        # (ssl.truststore.location is not read: PEM only)
    ssl.certificate.location=certs/alice.pem
    ssl.key.location=certs/alice.key
    ssl.endpoint.identification.algorithm=https
    sasl.mechanism=SCRAM-SHA-256        # SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN
    sasl.username=alice
    sasl.password=alice-secret

`#` and `!` start comment lines. An unknown or missing property is an error naming it.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from dmq.security.sasl import SaslCredentials, client_sasl
from dmq.security.tls import client_context, client_tls

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KNOWN = frozenset({"security.protocol", "ssl.ca.location", "ssl.certificate.location",
                   "ssl.key.location", "ssl.endpoint.identification.algorithm",
                   "sasl.mechanism", "sasl.mechanisms", "sasl.username", "sasl.password"})

T = TypeVar("T")


class ClientConfigError(ValueError):
    """The properties file is wrong; the message names the file and property."""


@dataclass(frozen=True)
class ClientSecurity:
    """A client's TLS context and SASL identity. Pass it as `security=` to `Producer`,
    `Consumer`, `Admin` or `GroupAdmin`, or run any client inside `applied()`."""

    ssl: ssl.SSLContext | None = None
    sasl: SaslCredentials | None = None

    @classmethod
    def from_properties(cls, props: dict[str, Any], where: str = "properties"
                        ) -> ClientSecurity:
        """From Kafka client properties (the names above); `ClientConfigError` names a
        wrong one."""
        return from_properties(props, where)

    @classmethod
    def from_file(cls, path: str | Path) -> ClientSecurity:
        """From a Kafka client properties file (as `--command-config FILE`)."""
        return load(path)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Connections opened inside (by the clients and their tasks) use these."""
        with client_tls(self.ssl), client_sasl(self.sasl):
            yield

    async def run(self, coro: Awaitable[T]) -> T:
        with self.applied():
            return await coro


def parse_properties(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#!":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            key, sep, value = line.partition(":")
        out[key.strip()] = value.strip()
    return out


def load(path: str | Path) -> ClientSecurity:
    try:
        props = parse_properties(Path(path).read_text())
    except OSError as exc:
        raise ClientConfigError(f"--command-config {path}: {exc.strerror or exc}") from None
    return from_properties(props, str(path))


def from_properties(props: dict[str, Any], where: str = "properties") -> ClientSecurity:
    unknown = sorted(set(props) - KNOWN)
    if unknown:
        raise ClientConfigError(f"{where}: unknown propert{'y' if len(unknown) == 1 else 'ies'} "
                                f"{', '.join(unknown)} (known: {', '.join(sorted(KNOWN))})")
    protocol = str(props.get("security.protocol", "PLAINTEXT")).upper()
    if protocol not in PROTOCOLS:
        raise ClientConfigError(f"{where}: security.protocol must be one of "
                                f"{', '.join(PROTOCOLS)}, got {protocol!r}")
    ctx = None
    if protocol in ("SSL", "SASL_SSL"):
        try:
            ctx = client_context(
                props.get("ssl.ca.location") or None, props.get("ssl.certificate.location"),
                props.get("ssl.key.location"),
                check_hostname=props.get("ssl.endpoint.identification.algorithm",
                                         "https") != "")
        except Exception as exc:  # noqa: BLE001 - ConfigError, OSError, SSLError alike
            raise ClientConfigError(f"{where}: {exc}") from None
    creds = None
    if protocol.startswith("SASL"):
        mechanism = str(props.get("sasl.mechanism") or props.get("sasl.mechanisms") or "")
        if not mechanism:
            raise ClientConfigError(f"{where}: {protocol} needs sasl.mechanism")
        for key in ("sasl.username", "sasl.password"):
            if not props.get(key):
                raise ClientConfigError(f"{where}: {protocol} needs {key}")
        try:
            creds = SaslCredentials(mechanism.upper(), str(props["sasl.username"]),
                                    str(props["sasl.password"]))
        except ValueError as exc:
            raise ClientConfigError(f"{where}: {exc}") from None
    return ClientSecurity(ctx, creds)
