"""Users kept in the metadata, on real processes: one controller and one broker with
TLS, SASL on dmq's protocol port and on the broker's Kafka listener, and HTTP. The
credentials file holds only the bootstrap administrator. `dmq users create` (through
the controller) makes a user that logs in on the broker with dmq's client and with
confluent-kafka on the Kafka listener; confluent-kafka's AdminClient describes and
alters users too; `dmq users passwd` refuses the old password from then on; `dmq
users delete` refuses new sessions. HTTP tokens: a token from the broker's HTTP port
works on the controller's; logout on the broker, then the controller refuses it."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dmq.protocol.api import ApiKey
from dmq.protocol.connection import Connection
from dmq.protocol.errors import InvalidRequestError, SaslAuthenticationFailedError
from dmq.security.certs import CA
from dmq.security.sasl import SaslCredentials
from dmq.security.scram import CredentialStore, make_credential
from dmq.security.tls import client_context
from tests.kafka.support import KafkaConn, kafka_ports
from tests.support.broker_wire import FAST, logs_on_failure
from tests.support.procs import ProcessCluster
from tests.support.scram_client import client_final
from tests.support.waiting import async_wait_until, wait_until

ck = pytest.importorskip("confluent_kafka")
aiohttp = pytest.importorskip("aiohttp")
pytest.importorskip("jwt")
from confluent_kafka.admin import (  # noqa: E402
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

MECH = "SCRAM-SHA-512"
BROKER_PATH = "/api/v1/storage/replication/status"  # a REST path of brokers


class Secure:
    def __init__(self, pc: ProcessCluster, ca: CA, root: Path) -> None:
        self.pc, self.ca, self.root = pc, ca, root
        self.tls = client_context(str(ca.cafile))
        self.broker = pc.nodes[101]
        self.controller = pc.nodes[1]
        self.kafka_port = kafka_ports(pc)[101]

    def properties(self, user: str, password: str) -> Path:
        path = self.root / f"{user}-{password}.properties"
        path.write_text(f"security.protocol=SASL_SSL\nssl.ca.location={self.ca.cafile}\n"
                        f"sasl.mechanism={MECH}\nsasl.username={user}\n"
                        f"sasl.password={password}\n")
        return path

    def users_cli(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        """`dmq users ARGS` as the bootstrap administrator, against the controller."""
        return subprocess.run(
            [sys.executable, "-m", "dmq.cli", "users", *args, "--bootstrap",
             f"127.0.0.1:{self.controller.port}", "--timeout-ms", "20000",
             "--command-config", str(self.properties("admin", "admin-secret"))],
            input=stdin, capture_output=True, timeout=60)

    async def dmq_login(self, user: str, password: str, node_id: int = 101) -> None:
        """Open an authenticated connection to a node (the broker by default) and ask
        it something."""
        conn = await Connection.open("127.0.0.1", self.pc.nodes[node_id].port, ssl=self.tls,
                                     sasl=SaslCredentials(MECH, user, password))
        try:
            await conn.request(ApiKey.METADATA, {"topics": []})
        finally:
            await conn.close()

    def kafka_conf(self, user: str, password: str) -> dict[str, Any]:
        return {"bootstrap.servers": f"127.0.0.1:{self.kafka_port}",
                "security.protocol": "SASL_SSL", "ssl.ca.location": str(self.ca.cafile),
                "sasl.mechanism": MECH, "sasl.username": user, "sasl.password": password}

    def kafka_login(self, user: str, password: str) -> bool:
        """True when confluent-kafka gets in with these credentials (lists topics)."""
        admin = AdminClient({**self.kafka_conf(user, password), "socket.timeout.ms": 5000})
        try:
            admin.list_topics(timeout=8)
            return True
        except ck.KafkaException:
            return False


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    root = tmp_path_factory.mktemp("users")
    ca = CA(root / "pki")
    for n in (1, 101):
        ca.issue(f"node-{n}")
    users = root / "users.json"
    CredentialStore({"admin": {MECH: make_credential("admin-secret", MECH)}}).save(users)
    settings = {**FAST, "ssl.certificate.location": str(ca.dir / "node-{id}.pem"),
                "ssl.key.location": str(ca.dir / "node-{id}.key"),
                "ssl.ca.location": str(ca.cafile), "ssl.client.auth": "requested",
                "sasl.enabled.mechanisms": "SCRAM-SHA-256,SCRAM-SHA-512",
                "sasl.credentials.file": str(users), "sasl.protocol.listener": True,
                "kafka.port": 0, "default.replication.factor": 1,
                # the refusals this module provokes come from one address: a short hold
                "sasl.failure.delay.max.ms": 300}
    with ProcessCluster(controllers=1, brokers=1, http=True, settings=settings) as pc:
        pc.start()
        yield Secure(pc, ca, root)


async def _refused(s: Secure, user: str, password: str, node_id: int = 101) -> bool:
    try:
        await s.dmq_login(user, password, node_id)
    except SaslAuthenticationFailedError:
        return True
    return False


async def test_cli_user_lifecycle_on_every_listener(secure: Secure) -> None:
    s = secure
    with logs_on_failure(s.pc):
        r = s.users_cli("create", "bob", "--password", "bob-pw-1")
        assert r.returncode == 0, r.stderr
        r = s.users_cli("create", "bob", stdin=b"whatever\n")
        assert r.returncode != 0 and b"exists" in r.stderr, r.stderr
        # a user made on the controller logs in on the broker (its metadata image)
        await async_wait_until(lambda: _ok(s, "bob", "bob-pw-1"), 20, "bob logs in on the broker")
        assert s.kafka_login("bob", "bob-pw-1")
        r = s.users_cli("list")
        assert r.returncode == 0 and b"bob" in r.stdout and b"admin" in r.stdout, r.stderr

        r = s.users_cli("passwd", "bob", stdin=b"bob-pw-2\n")
        assert r.returncode == 0, r.stderr
        await async_wait_until(lambda: _ok(s, "bob", "bob-pw-2"), 20, "the new password")
        assert await _refused(s, "bob", "bob-pw-1")
        assert not s.kafka_login("bob", "bob-pw-1")

        r = s.users_cli("delete", "bob")
        assert r.returncode == 0, r.stderr
        await async_wait_until(lambda: _refused(s, "bob", "bob-pw-2"), 20,
                               "bob refused on the broker")
        assert not s.kafka_login("bob", "bob-pw-2")
        r = s.users_cli("passwd", "bob", "--password", "x-12345")
        assert r.returncode != 0 and b"no user" in r.stderr, r.stderr
        log = s.controller.log_text()
        assert "user bob: set SCRAM-SHA-512 credential by User:admin" in log
        assert "user bob: removed SCRAM-SHA-512 credential by User:admin" in log
        assert "bob-pw" not in log and "bob-pw" not in s.broker.log_text()
        assert s.broker.alive and s.controller.alive


def _kafka_scram_login(s: Secure, user: str, password: str) -> KafkaConn:
    """One raw Kafka connection over TLS, authenticated with SCRAM as `user` (a client
    library may keep several connections and use any of them: this one is known)."""
    c = KafkaConn(s.kafka_port)
    c.sock = s.tls.wrap_socket(c.sock, server_hostname="127.0.0.1")
    assert c.request("SaslHandshake", 1, {"Mechanism": MECH})["ErrorCode"] == 0
    bare = f"n={user},r=deletednonce"
    first = c.request("SaslAuthenticate", 2, {"AuthBytes": f"n,,{bare}".encode()})
    assert first["ErrorCode"] == 0, first
    final, want = client_final(MECH, password, bare, bytes(first["AuthBytes"]).decode())
    done = c.request("SaslAuthenticate", 2, {"AuthBytes": final.encode()})
    assert done["ErrorCode"] == 0 and bytes(done["AuthBytes"]) == want.encode(), done
    return c


async def test_deleting_a_user_closes_its_open_connections(secure: Secure) -> None:
    """A connection authenticated as a user that is then deleted is closed at its next
    request, on dmq's protocol (answered SASL_AUTHENTICATION_FAILED first) and on the
    Kafka listener, instead of keeping the rights of a user that is gone."""
    s = secure
    with logs_on_failure(s.pc):
        assert s.users_cli("create", "carol", "--password", "carol-pw").returncode == 0
        await async_wait_until(lambda: _ok(s, "carol", "carol-pw"), 20, "carol logs in")
        conn = await Connection.open("127.0.0.1", s.broker.port, ssl=s.tls,
                                     sasl=SaslCredentials(MECH, "carol", "carol-pw"))
        kafka = _kafka_scram_login(s, "carol", "carol-pw")
        admin = AdminClient({**s.kafka_conf("carol", "carol-pw"), "socket.timeout.ms": 3000,
                             "reconnect.backoff.max.ms": 200})
        try:
            await conn.request(ApiKey.METADATA, {"topics": []})
            assert kafka.request("Metadata", 12, {"Topics": None})["ClusterId"]
            admin.list_topics(timeout=8)  # its connections are open and authenticated
            assert s.users_cli("delete", "carol").returncode == 0

            async def refused_on_the_open_connection() -> bool:
                try:
                    await conn.request(ApiKey.METADATA, {"topics": []})
                except SaslAuthenticationFailedError as exc:
                    assert "was deleted" in str(exc)
                    return True
                return False

            await async_wait_until(refused_on_the_open_connection, 20,
                                   "carol's open dmq connection refused")
            # the broker's image has the deletion: the open Kafka connection is closed at
            # its next request, unanswered
            kafka.send("Metadata", 12, {"Topics": None})
            assert kafka.closed_by_peer(), "carol's open Kafka connection still served"
            wait_until(lambda: s.broker.log_text().count("User:carol was deleted") >= 2, 10,
                       "both closes logged")
            # and a client library gets nothing either: whichever connection it uses is
            # closed at its next request, and reconnecting is refused at authentication
            with pytest.raises(ck.KafkaException):
                admin.list_topics(timeout=5)
        finally:
            kafka.sock.close()
            await conn.close()
        assert s.broker.alive


async def _ok(s: Secure, user: str, password: str, node_id: int = 101) -> bool:
    try:
        await s.dmq_login(user, password, node_id)
    except SaslAuthenticationFailedError:
        return False
    return True


def test_confluent_admin_client_alters_and_describes(secure: Secure) -> None:
    s = secure
    admin = AdminClient(s.kafka_conf("admin", "admin-secret"))
    futures = admin.alter_user_scram_credentials([UserScramCredentialUpsertion(
        "carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), b"carol-pw",
        b"some-salt-bytes")])
    for f in futures.values():
        f.result(timeout=30)
    described = admin.describe_user_scram_credentials(["carol"])["carol"].result(timeout=30)
    infos = described.scram_credential_infos
    assert [(i.mechanism, i.iterations) for i in infos] == [(ScramMechanism.SCRAM_SHA_512, 8192)]
    wait_until(lambda: s.kafka_login("carol", "carol-pw"), 30, "carol logs in on Kafka")
    assert asyncio.run(_ok(s, "carol", "carol-pw"))
    assert asyncio.run(_ok(s, "carol", "carol-pw", node_id=1))  # made through the broker
    futures = admin.alter_user_scram_credentials([UserScramCredentialDeletion(
        "carol", ScramMechanism.SCRAM_SHA_512)])
    for f in futures.values():
        f.result(timeout=30)
    everyone = admin.describe_user_scram_credentials().result(timeout=30)
    assert "carol" not in everyone and "admin" in everyone
    wait_until(lambda: not s.kafka_login("carol", "carol-pw"), 30, "carol refused")


async def _http(s: Secure, node_http_port: int, method: str, path: str,
                token: str | None = None, body: Any = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    ctx = ssl.create_default_context(cafile=str(s.ca.cafile))
    async with aiohttp.ClientSession() as sess, sess.request(
            method, f"https://127.0.0.1:{node_http_port}{path}", headers=headers, json=body,
            ssl=ctx) as r:
        text = await r.text()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text


async def test_token_from_one_node_works_on_the_other_until_logout(secure: Secure) -> None:
    s = secure
    bport, cport = s.broker.http_port, s.controller.http_port
    assert bport is not None and cport is not None
    with logs_on_failure(s.pc):
        status, _ = await _http(s, bport, "POST", "/api/v1/auth/login",
                                body={"username": "admin", "password": "wrong"})
        assert status == 401
        status, body = await _http(s, bport, "POST", "/api/v1/auth/login",
                                   body={"username": "admin", "password": "admin-secret"})
        assert status == 200, body
        token = body["token"]
        assert (await _http(s, cport, "GET", "/api/v1/metadata/brokers", token))[0] == 200
        status, fresh = await _http(s, cport, "POST", "/api/v1/auth/refresh", token)
        assert status == 200, fresh
        status, out = await _http(s, bport, "POST", "/api/v1/auth/logout", token)
        assert status == 200, out
        assert (await _http(s, bport, "GET", BROKER_PATH, token))[0] == 401
        deadline = time.monotonic() + 20
        while (await _http(s, cport, "GET", "/api/v1/metadata/brokers", token))[0] != 401:
            assert time.monotonic() < deadline, "the controller still takes the revoked token"
            await asyncio.sleep(0.1)
        assert (await _http(s, cport, "GET", "/api/v1/metadata/brokers", fresh["token"]))[0] == 200
        assert "HTTP token login failed for 'admin'" in s.broker.log_text()
        assert f"HTTP token {out['revoked']} of User:admin revoked by" in \
            s.controller.log_text()
        # and the other way: logout on the controller, refused by the broker
        status, body = await _http(s, cport, "POST", "/api/v1/auth/login",
                                   body={"username": "admin", "password": "admin-secret"})
        assert status == 200, body
        second = body["token"]
        assert (await _http(s, bport, "GET", BROKER_PATH, second))[0] == 200
        assert (await _http(s, cport, "POST", "/api/v1/auth/logout", second))[0] == 200
        deadline = time.monotonic() + 20
        while (await _http(s, bport, "GET", BROKER_PATH, second))[0] != 401:
            assert time.monotonic() < deadline, "the broker still takes the revoked token"
            await asyncio.sleep(0.1)


async def test_only_a_valid_token_can_be_revoked(secure: Secure) -> None:
    """RevokeToken carries the token, which the controller verifies: made-up or
    tampered tokens cannot fill the revocation set."""
    s = secure
    conn = await Connection.open("127.0.0.1", s.controller.port, ssl=s.tls,
                                 sasl=SaslCredentials(MECH, "admin", "admin-secret"))
    try:
        for bogus in ("x.y.z", "not a token"):
            with pytest.raises(InvalidRequestError, match="token not revoked"):
                await conn.request(ApiKey.REVOKE_TOKEN, {"token": bogus})
    finally:
        await conn.close()


async def test_users_survive_a_controller_restart(secure: Secure) -> None:
    s = secure
    with logs_on_failure(s.pc):
        assert s.users_cli("create", "erin", "--password", "erin-pw").returncode == 0
        assert s.users_cli("create", "frank", "--password", "frank-pw").returncode == 0
        assert s.users_cli("delete", "frank").returncode == 0
        s.pc.kill(1)
        s.pc.start(1)
        await async_wait_until(lambda: _ok(s, "erin", "erin-pw", node_id=1), 30,
                               "erin logs in on the restarted controller")
        assert await _refused(s, "frank", "frank-pw", node_id=1)
