"""TLS for every listener and inter-node link, from PEM files named in the config.

One set of files per node (`ssl.certificate.location`, `ssl.key.location`,
`ssl.ca.location`, librdkafka's names; `{id}` in a name stands for the node id).
When a certificate is configured, the node's protocol port, its Kafka listener and
its separate HTTP port all speak TLS with it, and every connection the node opens
to another node (Raft, broker -> controller, replica fetchers, discovery) is a TLS
client verifying the peer against the CA and, unless
`ssl.endpoint.identification.algorithm` is empty, against the host name or IP it
dialled. With `ssl.client.auth=required` a peer must present a certificate signed by
that CA (mTLS); a connection's principal is then its certificate's subject, and a
NODE_HELLO claiming node N is accepted only when the certificate's common name is
`ssl.node.cn.format` with N filled in (default `node-{id}`). HTTP handed off from
the protocol port is HTTPS on a TLS node. Without a certificate nothing changes.

Renewed files are taken without a restart (`CertificateReloader`): every
`ssl.reload.interval.ms`, and at once on SIGHUP, a node whose certificate, key or CA
file changed loads them into its live contexts; new handshakes use them, connections
already open keep what they agreed on.

Clients take a context from `client_context(...)`: pass it as `ssl=` to
`Connection.open`, or run a client inside `with client_tls(ctx):` so that every
connection it and the tasks it starts there open uses it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmq.config import ClusterConfig, ConfigError
from dmq.protocol.connection import DEFAULT_TLS
from dmq.protocol.errors import ClusterAuthorizationFailedError
from dmq.protocol.server import LogLimiter

log = logging.getLogger("dmq.security.tls")

CLIENT_AUTH = ("none", "requested", "required")
_PLAINTEXT = ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "UNEXPECTED_RECORD",
              "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL")


def handshake_failure(exc: ssl.SSLError) -> str:
    """Why a server-side TLS handshake failed, in words a log reader can act on."""
    reason = exc.reason or ""
    text = getattr(exc, "verify_message", None) or reason or str(exc)
    if reason in _PLAINTEXT:
        return f"{text} (a plaintext client on a TLS listener?)"
    if "CERTIFICATE" in reason:
        return f"{text} (client certificate missing or not signed by ssl.ca.location)"
    return text


class _Refusals:
    """Failed handshakes: a count, and a log line per `LogLimiter` period."""

    def __init__(self) -> None:
        self.node: int | str = "?"
        self.total = 0
        self._log = LogLimiter(log)

    def note(self, exc: ssl.SSLError) -> None:
        self.total += 1
        self._log.warning("handshake", "node=%s refused a connection: TLS handshake failed: "
                          "%s", self.node, handshake_failure(exc))


REFUSALS = _Refusals()
"""Failed server-side handshakes of this process (a node runs one per process)."""


class _ServerSSLObject(ssl.SSLObject):
    """Logs failed handshakes: asyncio's TLS servers (and uvloop's) drop them silently."""

    def do_handshake(self) -> None:
        try:
            super().do_handshake()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            raise
        except ssl.SSLError as exc:
            REFUSALS.note(exc)
            raise


@dataclass(frozen=True, slots=True)
class TlsSettings:
    certfile: str
    keyfile: str
    cafile: str
    client_auth: str = "none"
    check_hostname: bool = True
    node_cn_format: str = "node-{id}"

    @classmethod
    def from_config(cls, config: ClusterConfig, node_id: int) -> TlsSettings | None:
        """Node `node_id`'s TLS settings, or None when `ssl.certificate.location` is
        unset. `{id}` in a file name stands for the node id, so one cluster file names
        every node's own certificate and key."""
        cert = config.get("ssl.certificate.location").replace("{id}", str(node_id))
        if not cert:
            return None
        key = config.get("ssl.key.location").replace("{id}", str(node_id)) or cert
        ca = config.get("ssl.ca.location")
        auth = config.get("ssl.client.auth")
        if auth not in CLIENT_AUTH:
            raise ConfigError(f"ssl.client.auth must be one of {', '.join(CLIENT_AUTH)}, "
                              f"got {auth!r}")
        if not ca:
            raise ConfigError("ssl.certificate.location is set but ssl.ca.location is not: "
                              "nodes verify each other against that CA")
        for name, path in (("ssl.certificate.location", cert), ("ssl.key.location", key),
                           ("ssl.ca.location", ca)):
            if not Path(path).is_file():
                raise ConfigError(f"{name}: no such file {path!r}")
        algo = config.get("ssl.endpoint.identification.algorithm")
        if algo not in ("https", ""):
            raise ConfigError("ssl.endpoint.identification.algorithm must be 'https' or "
                              f"empty, got {algo!r}")
        fmt = config.get("ssl.node.cn.format")
        if "{id}" not in fmt:
            raise ConfigError(f"ssl.node.cn.format must contain {{id}}, got {fmt!r}")
        return cls(cert, key, ca, auth, algo == "https", fmt)

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.cafile)
        _load_chain(ctx, self.certfile, self.keyfile)
        ctx.verify_mode = {"none": ssl.CERT_NONE, "requested": ssl.CERT_OPTIONAL,
                           "required": ssl.CERT_REQUIRED}[self.client_auth]
        ctx.sslobject_class = _ServerSSLObject
        return ctx

    def node_client_context(self) -> ssl.SSLContext:
        """The context of the connections this node opens to other nodes: it verifies
        them and presents the node's own certificate (its identity under mTLS)."""
        return client_context(self.cafile, self.certfile, self.keyfile,
                              check_hostname=self.check_hostname)

    def node_authenticator(self) -> Any:
        """A `ProtocolServer.node_authenticator`: with client certificates (required or
        requested), the certificate must name the node claimed; otherwise None (the
        claim is trusted, as without TLS)."""
        if self.client_auth == "none":
            return None
        fmt = self.node_cn_format

        def check(ctx: Any, claimed: int, body: Any) -> None:
            cn = common_name(peer_certificate(ctx.connection.transport))
            want = fmt.format(id=claimed)
            if cn != want:
                raise ClusterAuthorizationFailedError(
                    f"this connection's certificate (CN={cn}) does not prove node {claimed} "
                    f"(CN={want} expected, ssl.node.cn.format)")

        return check


class CertificateReloader:
    """Loads renewed certificate, key and CA files into a node's live TLS contexts (its
    listeners' and the one of the links it opens), so a certificate can be rotated
    without a restart: new handshakes present and verify with the new files,
    connections already open keep theirs.

    `check()` compares each file's (mtime, size, inode) with what it last saw and,
    when any changed, first loads the three into a scratch context: a set that does
    not load (a file half written, a key that does not match the certificate) is
    refused with one warning and the live contexts keep what they had; the next
    change of the files is tried again. A CA file's new certificates are added to the
    ones trusted; a CA dropped from the file stays trusted until the node restarts
    (OpenSSL cannot remove one from a context)."""

    def __init__(self, settings: TlsSettings, contexts: tuple[ssl.SSLContext, ...]) -> None:
        self.settings = settings
        self.contexts = contexts
        self._seen: tuple[tuple[int, int, int] | None, ...] | None = self._stamp()
        self.reloads = 0
        self.refusals = 0

    def _files(self) -> tuple[str, str, str]:
        s = self.settings
        return s.certfile, s.keyfile, s.cafile

    def _stamp(self) -> tuple[tuple[int, int, int] | None, ...]:
        out: list[tuple[int, int, int] | None] = []
        for path in self._files():
            try:
                st = os.stat(path)
            except OSError:
                out.append(None)
            else:
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def check(self) -> bool | None:
        """None: no file changed; True: the changed files were loaded; False: they were
        refused (warned, the contexts unchanged)."""
        stamp = self._stamp()
        if stamp == self._seen:
            return None
        self._seen = stamp
        cert, key, ca = self._files()
        try:
            scratch = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=ca)
            scratch.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            self.refusals += 1
            log.warning("TLS files changed but were not loaded (the node keeps its current "
                        "certificate): certificate %s, key %s, CA %s: %s", cert, key, ca, exc)
            return False
        try:
            for ctx in self.contexts:
                ctx.load_verify_locations(ca)
                ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            # the files changed again after the scratch load: a context may hold a part
            # of them; the next check loads them again whatever their stamp
            self._seen = None
            self.refusals += 1
            log.warning("TLS files changed while being loaded (certificate %s, key %s, CA "
                        "%s: %s); loading them again at the next check", cert, key, ca, exc)
            return False
        self.reloads += 1
        log.info("TLS: loaded certificate %s, key %s and CA %s; new connections use them",
                 cert, key, ca)
        return True


def certificate_principal(fmt: str, node_ids: Any) -> Any:
    """A `ProtocolServer.certificate_principal`: "node:<id>" for a certificate whose
    common name is `fmt` with the id of a node in `node_ids`, else None."""
    names = {fmt.format(id=n): n for n in node_ids}

    def principal_of(cert: dict[str, Any] | None) -> str | None:
        node = names.get(common_name(cert) or "")
        return None if node is None else f"node:{node}"

    return principal_of


def _load_chain(ctx: ssl.SSLContext, certfile: str, keyfile: str | None) -> None:
    try:
        ctx.load_cert_chain(certfile, keyfile or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load certificate {certfile} / key {keyfile}: {exc}") from None


def client_context(cafile: str | None = None, certfile: str | None = None,
                   keyfile: str | None = None, *, check_hostname: bool = True
                   ) -> ssl.SSLContext:
    """A TLS client context verifying servers against `cafile` (the system's CAs when
    None), presenting `certfile`/`keyfile` when given (mTLS)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    ctx.check_hostname = check_hostname
    if certfile:
        _load_chain(ctx, certfile, keyfile)
    return ctx


@contextlib.contextmanager
def client_tls(ctx: ssl.SSLContext | None) -> Iterator[None]:
    """Connections opened inside this block (and by tasks started in it) use `ctx`."""
    token = DEFAULT_TLS.set(ctx)
    try:
        yield
    finally:
        DEFAULT_TLS.reset(token)


def peer_certificate(transport: Any) -> dict[str, Any] | None:
    if transport is None:
        return None
    cert = transport.get_extra_info("peercert")
    return cert or None


def common_name(cert: dict[str, Any] | None) -> str | None:
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def principal(cert: dict[str, Any] | None) -> str | None:
    """Kafka's form of a certificate principal: `User:CN=...,O=...` (None: no cert)."""
    if not cert:
        return None
    short = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
             "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST"}
    parts = [f"{short.get(k, k)}={v}" for rdn in cert.get("subject", ()) for k, v in rdn]
    return "User:" + ",".join(parts)
