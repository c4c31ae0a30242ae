"""ACLs on the Kafka listener of a real node, managed and met by confluent-kafka: the
superuser creates, describes and deletes ACLs with the AdminClient (CreateAcls,
DescribeAcls, DeleteAcls); a principal allowed to write produces; reading, and
writing without an ACL, fail with TOPIC_AUTHORIZATION_FAILED, using a group without
its ACLs with GROUP_AUTHORIZATION_FAILED; the node goes on serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dmq.security.scram import CredentialStore, make_credential
from tests.kafka.support import kafka_ports
from tests.support.procs import ProcessCluster
from tests.support.waiting import wait_until

ck = pytest.importorskip("confluent_kafka")
from confluent_kafka.admin import (  # noqa: E402
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

MECH = "SCRAM-SHA-256"
USERS = {"admin": "admin-secret", "alice": "alice-secret", "bob": "bob-secret"}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProcessCluster, int]]:
    users = Path(tmp_path_factory.mktemp("acl-kafka")) / "users.json"
    CredentialStore({u: {MECH: make_credential(p, MECH)} for u, p in USERS.items()}).save(users)
    settings = {"kafka.port": 0, "sasl.enabled.mechanisms": MECH,
                "sasl.credentials.file": str(users), "authorizer.enabled": True,
                "authorizer.super.users": "User:admin", "auto.create.topics.enable": False}
    with ProcessCluster(controllers=1, combined=True, settings=settings) as pc:
        pc.start()
        yield pc, kafka_ports(pc)[1]


def conf(port: int, user: str) -> dict[str, Any]:
    return {"bootstrap.servers": f"127.0.0.1:{port}", "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": MECH, "sasl.username": user, "sasl.password": USERS[user]}


def binding(principal: str, op: Any, name: str = "orders",
            rtype: Any = ResourceType.TOPIC) -> AclBinding:
    return AclBinding(rtype, name, ResourcePatternType.LITERAL, principal, "*", op,
                      AclPermissionType.ALLOW)


def produce_error(c: dict[str, Any], topic: str) -> Any:
    """The delivery error of one record (None: delivered)."""
    outcome: list[Any] = []
    p = ck.Producer({**c, "message.timeout.ms": 10_000})
    p.produce(topic, b"x", on_delivery=lambda err, msg: outcome.append(err))
    p.flush(20)
    assert outcome, "no delivery report"
    return outcome[0]


def test_acls_through_the_kafka_admin_client_and_enforcement(
        node: tuple[ProcessCluster, int]) -> None:
    pc, port = node
    admin = AdminClient(conf(port, "admin"))

    def registered() -> bool:  # librdkafka finds its controller in the broker list
        return bool(admin.list_topics(timeout=5).brokers)

    wait_until(registered, 30, "the node's broker listed", ignore=(ck.KafkaException,))
    for f in admin.create_topics([NewTopic("orders", 1, 1), NewTopic("hidden", 1, 1)]).values():
        f.result(30)
    alice = [binding("User:alice", AclOperation.WRITE),
             binding("User:alice", AclOperation.DESCRIBE),
             binding("User:alice", AclOperation.IDEMPOTENT_WRITE, "kafka-cluster",
                      ResourceType.BROKER),
             # she finds g-commit's coordinator but may not commit (Read) there
             binding("User:alice", AclOperation.DESCRIBE, "g-commit", ResourceType.GROUP)]
    for f in admin.create_acls(alice).values():
        assert f.result(30) is None
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None,
                                  AclOperation.ANY, AclPermissionType.ANY)
    described = admin.describe_acls(everything).result(30)
    assert set(described) == set(alice)

    # alice writes; she may not read; bob, with no ACL, may not write
    assert produce_error(conf(port, "alice"), "orders") is None
    err = produce_error(conf(port, "bob"), "orders")
    assert err is not None and err.code() == ck.KafkaError.TOPIC_AUTHORIZATION_FAILED
    cons = ck.Consumer({**conf(port, "alice"), "group.id": "g-alice",
                        "enable.auto.commit": False})
    try:
        cons.assign([ck.TopicPartition("orders", 0, 0)])
        # no ACL on the group either: finding its coordinator is refused
        want = {ck.KafkaError.TOPIC_AUTHORIZATION_FAILED,
                ck.KafkaError.GROUP_AUTHORIZATION_FAILED}
        codes = set()
        for _ in range(30):
            m = cons.poll(1.0)
            if m is not None and m.error() is not None:
                codes.add(m.error().code())
            if want <= codes:
                break
        assert want <= codes
    finally:
        cons.close()
    committer = ck.Consumer({**conf(port, "alice"), "group.id": "g-commit",
                             "enable.auto.commit": False})
    try:
        with pytest.raises(ck.KafkaException) as refusal:
            committer.commit(offsets=[ck.TopicPartition("orders", 0, 1)], asynchronous=False)
        assert refusal.value.args[0].code() == ck.KafkaError.GROUP_AUTHORIZATION_FAILED
    finally:
        committer.close()
    # Metadata shows alice only what she may Describe
    as_alice = AdminClient(conf(port, "alice"))
    md = as_alice.list_topics(timeout=10)
    assert "orders" in md.topics and "hidden" not in md.topics

    # a non-superuser may not manage ACLs
    refused = as_alice.create_acls([binding("User:alice", AclOperation.READ)])
    with pytest.raises(ck.KafkaException) as exc:
        next(iter(refused.values())).result(30)
    assert exc.value.args[0].code() == ck.KafkaError.CLUSTER_AUTHORIZATION_FAILED

    alice_only = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY,
                                  "User:alice", None, AclOperation.ANY, AclPermissionType.ANY)
    deleted = list(admin.delete_acls([alice_only]).values())[0].result(30)
    assert set(deleted) == set(alice)
    assert admin.describe_acls(everything).result(30) == []
    log = pc.nodes[1].log_text()
    # (bob is refused at Metadata already: librdkafka asks for the topic first)
    assert "DENIED principal=User:bob operation=Describe resource=topic:orders" in log
    assert "ACL removed by User:admin" in log
    assert pc.nodes[1].alive
