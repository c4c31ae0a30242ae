"""SASL bookkeeping and client settings without a node: the per-address throttle and
log of failed attempts, the settings a node refuses, and `--command-config` files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dmq.config import ClusterConfig, ConfigError
from dmq.security.certs import CA
from dmq.security.client_config import ClientConfigError, load
from dmq.security.sasl import MAX_FAILURE_DELAY_S, SaslAuthority
from dmq.security.scram import AuthenticationFailed, CredentialStore, make_credential


def authority() -> SaslAuthority:
    store = CredentialStore({"alice": {"SCRAM-SHA-256": make_credential("pw-123456")}})
    return SaslAuthority(("SCRAM-SHA-256", "PLAIN"), store)


def test_failure_delay_doubles_per_address_and_success_clears_it() -> None:
    auth = authority()
    delays = [auth.failure_delay("10.0.0.1") for _ in range(8)]
    assert delays[:3] == [0.1, 0.2, 0.4] and delays[-1] == MAX_FAILURE_DELAY_S
    assert auth.failure_delay("10.0.0.2") == 0.1  # another address is not held back
    auth.note_success("10.0.0.1")
    assert auth.failure_delay("10.0.0.1") == 0.1


def test_failure_delay_stays_capped_after_thousands_of_failures() -> None:
    """The doubling is bounded before it is computed: 2 ** 1100 as a float overflowed, so
    an address that kept failing made every later attempt from it an internal error."""
    auth = authority()
    delays = [auth.failure_delay("10.0.0.1") for _ in range(1500)]
    assert delays[-1] == MAX_FAILURE_DELAY_S


def test_failed_attempts_are_logged_once_per_address_period(
        caplog: pytest.LogCaptureFixture) -> None:
    auth = authority()
    caplog.set_level(logging.WARNING, "dmq.security.sasl")
    for _ in range(5):
        session = auth.session("10.0.0.9", tls=False)
        assert session.handshake("SCRAM-SHA-256")[0]
        with pytest.raises(AuthenticationFailed):
            session.authenticate(b"n,,n=nobody,r=abc")
        assert session.failed
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "from 10.0.0.9 failed: authentication failed for 'nobody'" \
        in lines[0]
    assert auth.stats_failures == 5


def test_plain_only_over_tls_unless_allowed() -> None:
    auth = authority()
    assert auth.offered(tls=False) == ["SCRAM-SHA-256"]
    assert auth.offered(tls=True) == ["SCRAM-SHA-256", "PLAIN"]
    assert auth.session("h", tls=False).handshake("PLAIN") == (False, ["SCRAM-SHA-256"])


def test_node_refuses_bad_sasl_settings(tmp_path: Path) -> None:
    def cfg(**s: object) -> ClusterConfig:
        return ClusterConfig((), (), {k.replace("_", "."): v for k, v in s.items()})

    assert SaslAuthority.from_config(cfg(), 1) is None
    with pytest.raises(ConfigError, match="GSSAPI unknown"):
        SaslAuthority.from_config(cfg(sasl_enabled_mechanisms="GSSAPI"), 1)
    with pytest.raises(ConfigError, match="sasl.credentials.file is not"):
        SaslAuthority.from_config(cfg(sasl_enabled_mechanisms="PLAIN"), 1)
    with pytest.raises(ConfigError, match="no such file|No such file"):
        SaslAuthority.from_config(cfg(sasl_enabled_mechanisms="PLAIN",
                                      sasl_credentials_file=str(tmp_path / "none.json")), 1)


def test_command_config_files(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    p = tmp_path / "c.properties"
    p.write_text(f"! comment\nsecurity.protocol=sasl_ssl\nssl.ca.location={ca.cafile}\n"
                 "sasl.mechanism=SCRAM-SHA-512\nsasl.username=alice\nsasl.password=pw\n")
    sec = load(p)
    assert sec.ssl is not None and sec.sasl is not None
    assert sec.sasl.username == "alice" and "pw" not in repr(sec.sasl)
    for text, error in (("security.protocol=SASL_PLAINTEXT\nsasl.username=a\n"
                         "sasl.password=b\n", "needs sasl.mechanism"),
                        ("security.protocol=TLS\n", "must be one of"),
                        ("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=GSSAPI\n"
                         "sasl.username=a\nsasl.password=b\n", "one of SCRAM-SHA-256"),
                        ("sasl.jaas.config=x\n", "unknown property sasl.jaas.config")):
        p.write_text(text)
        with pytest.raises(ClientConfigError, match=error):
            load(p)


async def test_one_failed_attempt_per_connection_is_checked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Attempts pipelined behind a failed one are refused unchecked: the failure delay
    throttles answers, so checking each (PLAIN hashes the password) would let one
    connection try a thousand passwords per delay."""
    import asyncio

    from dmq.protocol.api import ApiKey
    from dmq.protocol.codec import FrameDecoder, decode_response, encode_request
    from dmq.protocol.errors import ErrorCode
    from dmq.protocol.server import ProtocolServer

    monkeypatch.setattr("dmq.security.sasl.FIRST_FAILURE_DELAY_S", 0.05)
    auth = SaslAuthority(("PLAIN",), authority().store, allow_plain_without_tls=True)
    server = ProtocolServer(host="127.0.0.1", port=0, node_id=1)
    server.sasl = auth
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
        writer.write(encode_request(ApiKey.SASL_HANDSHAKE, 0, 1, "t", {"mechanism": "PLAIN"}))
        for cid in range(2, 12):
            writer.write(encode_request(ApiKey.SASL_AUTHENTICATE, 0, cid, "t",
                                        {"auth_bytes": b"\0alice\0guess-%d" % cid}))
        await writer.drain()
        dec, got = FrameDecoder(1 << 20), []
        while data := await asyncio.wait_for(reader.read(65536), 5):
            got += [decode_response(f)[:2] for f in dec.feed(data)]
        writer.close()
        assert got[0] == (1, ErrorCode.NONE)
        assert all(code != ErrorCode.NONE for _, code in got[1:])
        assert auth.stats_failures == 1
    finally:
        await server.close()
