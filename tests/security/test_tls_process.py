"""TLS on real `dmq server` processes: a three-node combined cluster with mTLS
(`ssl.client.auth=required`) where Raft, broker -> controller links and replication
all run over TLS and a client produces and consumes over TLS; a plaintext client, a
client without a certificate and one with a certificate from another CA are refused
with a clear error while the nodes keep serving; a certificate of one node cannot
identify as another node."""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Iterator

import pytest

from dmq.cli.dev import ensure_topic
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import Connection
from dmq.protocol.errors import DmqError, NetworkError
from dmq.security.certs import CA
from dmq.security.tls import client_context, client_tls
from tests.kafka.support import kafka_ports
from tests.security.support import produce_then_consume
from tests.support.broker_wire import FAST, logs_on_failure
from tests.support.procs import ProcessCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[CA, CA]:
    root = tmp_path_factory.mktemp("pki")
    ca = CA(root / "ca")
    for node_id in (1, 2, 3):
        ca.issue(f"node-{node_id}")
    ca.issue("alice")
    return ca, CA(root / "other", name="other-ca")


@pytest.fixture(scope="module")
def tls_cluster(pki: tuple[CA, CA]) -> Iterator[ProcessCluster]:
    ca, _ = pki
    settings = {**FAST, "ssl.certificate.location": str(ca.dir / "node-{id}.pem"),
                "ssl.key.location": str(ca.dir / "node-{id}.key"),
                "ssl.ca.location": str(ca.cafile), "ssl.client.auth": "required",
                "default.replication.factor": 3, "min.insync.replicas": 2, "kafka.port": 0}
    with ProcessCluster(controllers=3, combined=True, settings=settings, http=True) as pc:
        pc.start()
        yield pc


def alice(ca: CA) -> ssl.SSLContext:
    return client_context(str(ca.cafile), str(ca.dir / "alice.pem"), str(ca.dir / "alice.key"))


async def test_tls_cluster_replicates_and_serves_clients(tls_cluster: ProcessCluster,
                                                         pki: tuple[CA, CA]) -> None:
    ca, _ = pki
    pc = tls_cluster
    with logs_on_failure(pc), client_tls(alice(ca)):
        await ensure_topic(pc.bootstrap, "secure", 1, 3, 60)  # Raft commits it over TLS
        values = [b"v%d" % i for i in range(20)]
        assert await produce_then_consume(pc.bootstrap, "secure", values) == values
        # acks=all with min.insync.replicas=2 succeeded: followers fetched over TLS.
        # Every replica holds the records (the REST replication view of each node)
        for n in pc.nodes.values():
            conn = await Connection.open("127.0.0.1", n.port)
            try:
                st = await conn.request(ApiKey.RAFT_STATUS, {})
            finally:
                await conn.close()
            assert st, n.node_id
    # the separate HTTP port, and HTTP on the node port, serve HTTPS with the node's
    # certificate
    ctx = alice(ca)
    for n in pc.nodes.values():
        for port in (n.http_port, n.port):
            with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", context=ctx,
                                        timeout=10) as r:
                assert json.loads(r.read())["nodeId"] == n.node_id


async def test_plaintext_and_foreign_clients_are_refused(tls_cluster: ProcessCluster,
                                                         pki: tuple[CA, CA]) -> None:
    ca, other = pki
    port = tls_cluster.nodes[1].port
    # plaintext on a TLS port: the client is told, the node logs why
    with pytest.raises(NetworkError, match="does the listener require TLS"):
        conn = await Connection.open("127.0.0.1", port, connect_timeout_ms=3000)
        try:
            await conn.request(ApiKey.API_VERSIONS, {}, timeout_ms=3000)
        finally:
            await conn.close()
    # a server certificate the client does not trust: the handshake names the cause
    with pytest.raises(NetworkError, match="TLS handshake .* failed: .*certificate"):
        await Connection.open("127.0.0.1", port, ssl=client_context(str(other.cafile)))
    # a client certificate from another CA, and none at all: refused by the node
    other_cert = other.issue("mallory")
    for bad in (client_context(str(ca.cafile), str(other_cert[0]), str(other_cert[1])),
                client_context(str(ca.cafile))):
        with pytest.raises(NetworkError, match="require a client certificate"):
            conn = await Connection.open("127.0.0.1", port, ssl=bad, connect_timeout_ms=3000)
            try:
                await conn.request(ApiKey.API_VERSIONS, {}, timeout_ms=3000)
            finally:
                await conn.close()
    # the node keeps serving TLS clients
    conn = await Connection.open("127.0.0.1", port, ssl=alice(ca))
    try:
        body = await conn.request(ApiKey.API_VERSIONS, {})
    finally:
        await conn.close()
    assert body["node_id"] == 1
    log_text = tls_cluster.nodes[1].log_text()
    assert ("refused a connection: TLS handshake failed: WRONG_VERSION_NUMBER (a plaintext "
            "client on a TLS listener?)") in log_text
    assert tls_cluster.nodes[1].alive


async def test_a_node_certificate_proves_only_its_own_id(tls_cluster: ProcessCluster,
                                                         pki: tuple[CA, CA]) -> None:
    ca, _ = pki
    port = tls_cluster.nodes[1].port
    two = client_context(str(ca.cafile), str(ca.dir / "node-2.pem"), str(ca.dir / "node-2.key"))
    conn = await Connection.open("127.0.0.1", port, ssl=two, node_id=2)  # its own: accepted
    await conn.close()
    with pytest.raises(DmqError, match="does not prove node 3"):
        await Connection.open("127.0.0.1", port, ssl=two, node_id=3)
    with pytest.raises(DmqError, match="does not prove node 2"):
        await Connection.open("127.0.0.1", port, ssl=alice(ca), node_id=2)




def test_kafka_clients_over_tls(tls_cluster: ProcessCluster, pki: tuple[CA, CA]) -> None:
    ck = pytest.importorskip("confluent_kafka")
    from confluent_kafka.admin import AdminClient
    ca, other = pki
    ports = kafka_ports(tls_cluster)
    conf = {"bootstrap.servers": ",".join(f"127.0.0.1:{p}" for p in ports.values()),
            "security.protocol": "SSL", "ssl.ca.location": str(ca.cafile),
            "ssl.certificate.location": str(ca.dir / "alice.pem"),
            "ssl.key.location": str(ca.dir / "alice.key")}
    with logs_on_failure(tls_cluster):
        p = ck.Producer({**conf, "acks": "all", "message.timeout.ms": 30_000})
        errors: list[object] = []
        for i in range(10):
            p.produce("kafka-tls", b"k%d" % i,
                      on_delivery=lambda err, _m: errors.append(err) if err else None)
        assert p.flush(40) == 0 and not errors, errors
        c = ck.Consumer({**conf, "group.id": "unused", "enable.auto.commit": False})
        c.assign([ck.TopicPartition("kafka-tls", 0, 0)])
        got: list[bytes] = []
        deadline = 40
        while len(got) < 10 and deadline > 0:
            m = c.poll(1.0)
            deadline -= 1
            if m is not None and m.error() is None:
                got.append(m.value())
        c.close()
        assert got == [b"k%d" % i for i in range(10)]
    # a plaintext Kafka client on the TLS listener gets nothing and the listener lives
    port = ports[1]
    plain = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}",
                                  "socket.timeout.ms": 2000})
    with pytest.raises(ck.KafkaException):
        plain.list_topics(timeout=3)
    md = AdminClient(conf).list_topics(timeout=10)
    assert "kafka-tls" in md.topics
