"""SCRAM-SHA-256/512 and PLAIN, server side: the RFC 7677 exchange byte for byte, a
wrong password, an unknown user, malformed messages, and the credentials file (no
password stored)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from dmq.config import ConfigError
from dmq.security import scram
from dmq.security.scram import (
    AuthenticationFailed,
    CredentialStore,
    PlainServer,
    ScramServer,
    make_credential,
)
from tests.support.scram_client import client_final


def test_rfc7677_exchange(monkeypatch: pytest.MonkeyPatch) -> None:
    cred = make_credential("pencil", "SCRAM-SHA-256", 4096,
                           base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ=="))
    monkeypatch.setattr(scram.secrets, "token_urlsafe",
                        lambda n: "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0")
    server = ScramServer("SCRAM-SHA-256", lambda u, m: cred if u == "user" else None)
    first = server.step(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
    assert first == (b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    final = server.step(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    assert final == b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    assert server.done and server.user == "user"


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_right_and_wrong_password(mechanism: str) -> None:
    cred = make_credential("s3cret", mechanism)
    lookup = {("alice", mechanism): cred}.get

    def run(password: str) -> ScramServer:
        server = ScramServer(mechanism, lambda u, m: lookup((u, m)))
        bare = "n=alice,r=abcdef"
        server_first = server.step(f"n,,{bare}".encode()).decode()
        final, want_sig = client_final(mechanism, password, bare, server_first)
        assert server.step(final.encode()).decode() == want_sig
        return server

    assert run("s3cret").user == "alice"
    with pytest.raises(AuthenticationFailed, match="authentication failed for 'alice'"):
        run("wrong")


def test_unknown_user_and_malformed_messages() -> None:
    server = ScramServer("SCRAM-SHA-256", lambda u, m: None)
    with pytest.raises(AuthenticationFailed, match="authentication failed for 'bob'"):
        server.step(b"n,,n=bob,r=xyz")
    for bad in (b"p=tls-unique,,n=a,r=x", b"n,,r=x", b"\xff\xfe", b"n,,n=a,r=x" + b"x" * 5000):
        with pytest.raises(AuthenticationFailed):
            ScramServer("SCRAM-SHA-256", lambda u, m: None).step(bad)


def test_plain_checks_against_the_scram_entry() -> None:
    store = CredentialStore({"alice": {"SCRAM-SHA-512": make_credential("pw", "SCRAM-SHA-512")}})
    assert PlainServer(store).step(b"\0alice\0pw") == b""
    for bad in (b"\0alice\0nope", b"\0bob\0pw", b"x\0alice\0pw", b"alice\0pw"):
        with pytest.raises(AuthenticationFailed):
            PlainServer(store).step(bad)


def test_credentials_file_holds_no_password(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "users.json"
    monkeypatch.setenv("DMQ_PASSWORD", "hunter2-long")
    assert scram.main(["add", str(path), "alice"]) == 0
    text = path.read_text()
    assert "hunter2" not in text and path.stat().st_mode & 0o077 == 0
    store = CredentialStore.load(path)
    assert set(store.users["alice"]) == {"SCRAM-SHA-256", "SCRAM-SHA-512"}
    assert store.users["alice"]["SCRAM-SHA-256"].check_password("hunter2-long")
    raw = json.loads(text)
    raw["users"]["alice"]["SCRAM-SHA-256"]["iterations"] = 10
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="iterations 10 is below 4096"):
        CredentialStore.load(path)
