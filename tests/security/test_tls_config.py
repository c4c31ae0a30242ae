"""TLS settings: what a node refuses to start with, and the contexts it builds."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from dmq.config import ClusterConfig, ConfigError
from dmq.security.certs import CA
from dmq.security.tls import TlsSettings, common_name, principal


def _config(settings: dict[str, str] | None = None) -> ClusterConfig:
    return ClusterConfig((), (), settings or {})


def test_no_certificate_means_no_tls() -> None:
    assert TlsSettings.from_config(_config(), 1) is None


def test_bad_tls_settings_are_named(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    ca.issue("node-7")
    cert = str(tmp_path / "node-{id}.pem")
    with pytest.raises(ConfigError, match="ssl.ca.location is not"):
        TlsSettings.from_config(_config({"ssl.certificate.location": cert}), 7)
    base = {"ssl.certificate.location": cert, "ssl.key.location": str(tmp_path / "node-{id}.key"),
            "ssl.ca.location": str(ca.cafile)}
    with pytest.raises(ConfigError, match="ssl.client.auth must be one of"):
        TlsSettings.from_config(_config({**base, "ssl.client.auth": "yes"}), 7)
    with pytest.raises(ConfigError, match="ssl.certificate.location: no such file"):
        TlsSettings.from_config(_config(base), 8)  # no node-8.pem
    with pytest.raises(ConfigError, match="must contain"):
        TlsSettings.from_config(_config({**base, "ssl.node.cn.format": "x"}), 7)
    tls = TlsSettings.from_config(_config({**base, "ssl.client.auth": "required"}),
                                  7)
    assert tls is not None and tls.certfile.endswith("node-7.pem")
    assert tls.server_context().verify_mode == ssl.CERT_REQUIRED
    assert tls.node_client_context().check_hostname


def test_principal_is_the_certificate_subject() -> None:
    cert = {"subject": ((("organizationName", "dmq-test"),), (("commonName", "alice"),))}
    assert common_name(cert) == "alice"
    assert principal(cert) == "User:O=dmq-test,CN=alice"
    assert principal(None) is None


def test_failed_handshakes_are_counted_and_logged_once_per_period(
        caplog: pytest.LogCaptureFixture) -> None:
    from dmq.security.tls import _Refusals

    refusals = _Refusals()
    refusals.node = 7
    exc = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    exc.reason = "WRONG_VERSION_NUMBER"
    with caplog.at_level("WARNING", logger="dmq.security.tls"):
        for _ in range(5):
            refusals.note(exc)
    assert refusals.total == 5
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("node=7 refused a connection: TLS handshake failed: ")
    assert "a plaintext client on a TLS listener?" in line
