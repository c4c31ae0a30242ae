"""SASL on dmq's own protocol port of real nodes (`sasl.protocol.listener`): three
combined nodes with TLS and client certificates requested form a cluster (Raft,
broker registration, replication: nodes prove themselves by certificate); a dmq
client with SCRAM credentials produces and consumes; a wrong password, an unknown user
and a request before authentication are refused with SASL_AUTHENTICATION_FAILED and
the connection is closed; ApiVersions is answered before authentication."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmq.cli.dev import ensure_topic
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import Connection
from dmq.protocol.errors import SaslAuthenticationFailedError
from dmq.security.certs import CA
from dmq.security.sasl import SaslCredentials, client_sasl
from dmq.security.scram import CredentialStore, make_credential
from dmq.security.tls import client_context, client_tls
from tests.security.support import produce_then_consume
from tests.support.broker_wire import FAST, logs_on_failure
from tests.support.procs import ProcessCluster
from tests.support.tools import run_tool as run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProcessCluster, CA]]:
    root = tmp_path_factory.mktemp("sasl-proto")
    ca = CA(root / "pki")
    for n in (1, 2, 3):
        ca.issue(f"node-{n}")
    users = root / "users.json"
    CredentialStore({"alice": {"SCRAM-SHA-512": make_credential("alice-secret",
                                                                "SCRAM-SHA-512")}}).save(users)
    settings = {**FAST, "ssl.certificate.location": str(ca.dir / "node-{id}.pem"),
                "ssl.key.location": str(ca.dir / "node-{id}.key"),
                "ssl.ca.location": str(ca.cafile), "ssl.client.auth": "requested",
                "sasl.enabled.mechanisms": "SCRAM-SHA-512", "sasl.credentials.file": str(users),
                "sasl.protocol.listener": True, "default.replication.factor": 3,
                "min.insync.replicas": 2}
    with ProcessCluster(controllers=3, combined=True, settings=settings) as pc:
        pc.start()
        yield pc, ca


async def test_scram_client_produces_and_consumes(secure: tuple[ProcessCluster, CA]) -> None:
    pc, ca = secure
    alice = SaslCredentials("SCRAM-SHA-512", "alice", "alice-secret")
    with logs_on_failure(pc), client_tls(client_context(str(ca.cafile))), client_sasl(alice):
        await ensure_topic(pc.bootstrap, "authed", 1, 3, 60)
        values = [b"a%d" % i for i in range(10)]
        got = await produce_then_consume(pc.bootstrap, "authed", values)
    assert got == values


async def test_refusals(secure: tuple[ProcessCluster, CA]) -> None:
    pc, ca = secure
    port = pc.nodes[1].port
    tls = client_context(str(ca.cafile))
    for user, password in (("alice", "wrong"), ("mallory", "x")):
        with pytest.raises(SaslAuthenticationFailedError, match="authentication failed for"):
            await Connection.open("127.0.0.1", port, ssl=tls,
                                  sasl=SaslCredentials("SCRAM-SHA-512", user, password))
    conn = await Connection.open("127.0.0.1", port, ssl=tls)
    try:
        assert (await conn.request(ApiKey.API_VERSIONS, {}))["node_id"] == 1
        with pytest.raises(SaslAuthenticationFailedError, match="METADATA before SASL"):
            await conn.request(ApiKey.METADATA, {"topics": []})
        await asyncio.wait_for(conn._closed_event.wait(), 10)  # the node closed it
        assert conn.closed
    finally:
        await conn.close()
    assert "SASL authentication from 127.0.0.1 failed" in pc.nodes[1].log_text()
    assert pc.nodes[1].alive




def test_console_tools_with_command_config(secure: tuple[ProcessCluster, CA],
                                           tmp_path: Path) -> None:
    pc, ca = secure
    good = tmp_path / "client.properties"
    good.write_text(f"# Kafka client properties\nsecurity.protocol=SASL_SSL\n"
                    f"ssl.ca.location={ca.cafile}\nsasl.mechanism=SCRAM-SHA-512\n"
                    f"sasl.username=alice\nsasl.password=alice-secret\n")
    r = run("produce", "-b", pc.bootstrap, "-t", "tools-authed", "--command-config", str(good),
            stdin=b"x1\nx2\n")
    assert r.returncode == 0, r.stderr
    r = run("consume", "-b", pc.bootstrap, "-t", "tools-authed", "--from-beginning",
            "--max-messages", "2", "--timeout-ms", "20000", "--command-config", str(good))
    assert r.returncode == 0 and r.stdout.split() == [b"x1", b"x2"], r.stderr
    bad = tmp_path / "bad.properties"
    bad.write_text(good.read_text().replace("alice-secret", "wrong"))
    r = run("produce", "-b", pc.bootstrap, "-t", "tools-authed", "--command-config", str(bad),
            stdin=b"x3\n")
    assert r.returncode != 0 and b"authentication failed for 'alice'" in r.stderr, r.stderr
    typo = tmp_path / "typo.properties"
    typo.write_text("security.protocl=SSL\n")
    r = run("consume", "-b", pc.bootstrap, "-t", "x", "--command-config", str(typo))
    assert r.returncode != 0 and b"unknown property security.protocl" in r.stderr, r.stderr
