"""ACLs enforced on dmq's own protocol by real nodes: one controller and two brokers with
TLS, client certificates requested, SASL on the protocol port and `authorizer.enabled`.
The nodes still form the cluster (registration, Raft, replication with RF=2: nodes are
superusers by certificate); an admin superuser grants roles; a producer-only principal
may write but not read or delete; a consumer may not write, commits only for its
group and topics; Metadata lists only the
topics a principal may Describe; a revocation reaches a live connection; refusals and
ACL changes are audit lines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dmq.cli.dev import ensure_topic
from dmq.client import Producer
from dmq.client.admin import Admin
from dmq.log.batch import encode_batch
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import Connection
from dmq.protocol.errors import (
    ErrorCode,
    GroupAuthorizationFailedError,
    TopicAuthorizationFailedError,
)
from dmq.security.acl import AclFilter, make_entry
from dmq.security.certs import CA
from dmq.security.sasl import SaslCredentials, client_sasl
from dmq.security.tls import client_context, client_tls
from tests.security.support import tls_sasl_settings
from tests.support.broker_wire import logs_on_failure
from tests.support.procs import ProcessCluster
from tests.support.waiting import async_wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

MECH = "SCRAM-SHA-256"
USERS = {"admin": "admin-secret", "alice": "alice-secret", "bob": "bob-secret",
         "carol": "carol-secret"}
REFUSED = int(ErrorCode.TOPIC_AUTHORIZATION_FAILED)


def creds(user: str) -> SaslCredentials:
    return SaslCredentials(MECH, user, USERS[user])


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProcessCluster, CA]]:
    ca, settings = tls_sasl_settings(
        tmp_path_factory.mktemp("acl-proto"), (1, 101, 102), USERS, MECH,
        **{"authorizer.enabled": True, "authorizer.super.users": "User:admin",
           "default.replication.factor": 2, "auto.create.topics.enable": False})
    with ProcessCluster(controllers=1, brokers=2, settings=settings) as pc:
        pc.start()
        yield pc, ca


def produce_body(topic: str) -> dict[str, Any]:
    # the refusal comes before the batch is looked at
    return {"acks": 1, "timeout_ms": 5000, "topics": [[topic, [[0, -1, b"\0" * 70]]]]}


async def leader_connection(pc: ProcessCluster, admin: Admin, topic: str,
                            user: str) -> Connection:
    img = await admin.metadata([topic])
    leader = img.topics[topic].partitions[0].leader
    return await Connection.open("127.0.0.1", pc.nodes[leader].port, sasl=creds(user))


async def test_roles_enforced_on_dmq_protocol(secure: tuple[ProcessCluster, CA]) -> None:
    pc, ca = secure
    ctl = f"127.0.0.1:{pc.nodes[1].port}"
    with logs_on_failure(pc), client_tls(client_context(str(ca.cafile))):
        with client_sasl(creds("admin")):
            # brokers registered and the topic is replicated on both: nodes pass the ACLs
            await ensure_topic(pc.bootstrap, "orders", 1, 2, 60)
            await ensure_topic(pc.bootstrap, "secret", 1, 2, 60)
            async with Admin(ctl) as admin:
                await admin.grant_role("producer", "User:alice", "orders")
                await admin.grant_role("consumer", "User:bob", "orders", "billing")
                # carol may write, but not as an idempotent producer
                assert await admin.create_acls([
                    make_entry("topic", "orders", "User:carol", op)
                    for op in ("Write", "Describe")]) == [None, None]
                listed = await admin.describe_acls(AclFilter(principal="User:alice"))
                assert {(e.operation, e.resource_name) for e in listed} == {
                    ("Write", "orders"), ("Describe", "orders"),
                    ("IdempotentWrite", "kafka-cluster")}
                alice = await leader_connection(pc, admin, "orders", "alice")
                bob = await leader_connection(pc, admin, "orders", "bob")
                carol = await leader_connection(pc, admin, "orders", "carol")
        try:
            # alice writes (idempotent producer: IdempotentWrite on the cluster)...
            with client_sasl(creds("alice")):
                async with Producer(pc.bootstrap, acks=-1, linger_ms=0) as p:
                    md = await p.send_and_wait("orders", b"hello")
                assert md.offset == 0
                with pytest.raises(TopicAuthorizationFailedError):
                    async with Producer(pc.bootstrap, acks=-1, linger_ms=0) as p:
                        await p.send_and_wait("secret", b"nope")
            # ...but neither reads nor deletes
            fetch = {"max_wait_ms": 0, "min_bytes": 0, "max_bytes": 1 << 20,
                     "topics": [["orders", [[0, 0, -1, 1 << 20]]]]}
            rows = (await alice.request(ApiKey.FETCH, fetch))["topics"]
            assert rows[0][1][0][1] == REFUSED
            rows = (await alice.request(ApiKey.DELETE_RECORDS,
                                        {"topics": [["orders", [[0, -1]]]]}))["topics"]
            assert rows == [["orders", [[0, REFUSED, -1]]]]
            # Metadata lists only what alice may Describe; a named hidden topic is refused
            md_all = await alice.request(ApiKey.METADATA, {"topics": None})
            assert [t["name"] for t in md_all["topics"]] == ["orders"]
            md_named = await alice.request(ApiKey.METADATA, {"topics": ["secret"]})
            assert md_named["topics"][0]["error"] == REFUSED
            # bob reads but does not write
            rows = (await bob.request(ApiKey.FETCH, fetch))["topics"]
            assert rows[0][1][0][1] == 0 and rows[0][1][0][5]
            rows = (await bob.request(ApiKey.PRODUCE, produce_body("orders")))["topics"]
            assert rows[0][1][0][1] == REFUSED
            # groups (at the controller): bob commits for billing on orders, not on a
            # topic he may not read; alice may not use the group at all
            cb = await Connection.open("127.0.0.1", pc.nodes[1].port, sasl=creds("bob"))
            try:
                commit = {"group_id": "billing", "member_id": "", "member_epoch": -1,
                          "topics": [["orders", [[0, 1, None]]], ["secret", [[0, 1, None]]]]}
                rows = dict((await cb.request(ApiKey.OFFSET_COMMIT, commit))["topics"])
                assert rows == {"orders": [[0, 0]], "secret": [[0, REFUSED]]}
            finally:
                await cb.close()
            ca_ = await Connection.open("127.0.0.1", pc.nodes[1].port, sasl=creds("alice"))
            try:
                with pytest.raises(GroupAuthorizationFailedError):
                    await ca_.request(ApiKey.OFFSET_COMMIT, commit)
                listed = await ca_.request(ApiKey.LIST_GROUPS, {})
                assert listed["groups"] == []
            finally:
                await ca_.close()
            # a batch naming a producer id needs IdempotentWrite on the cluster
            for pid, code in ((5000, int(ErrorCode.CLUSTER_AUTHORIZATION_FAILED)), (-1, 0)):
                batch = encode_batch([[0, None, b"c", []]], 0, 0, 0, producer_id=pid,
                                     producer_epoch=0 if pid >= 0 else -1,
                                     base_sequence=0 if pid >= 0 else -1)
                body = {"acks": 1, "timeout_ms": 5000, "topics": [["orders", [[0, -1, batch]]]]}
                rows = (await carol.request(ApiKey.PRODUCE, body))["topics"]
                assert rows[0][1][0][1] == code, rows
            # alice deleting the topic at the controller: refused in its row
            with client_sasl(creds("alice")):
                async with Admin(ctl) as a:
                    errors = await a.delete_topics(["orders"])
                    assert isinstance(errors["orders"], TopicAuthorizationFailedError)
                    with pytest.raises(Exception, match="CLUSTER_AUTHORIZATION_FAILED"):
                        await a.grant_role("admin", "User:alice")

            # revocation reaches alice's live connection
            async def refused_now() -> bool:
                ans = await alice.request(ApiKey.PRODUCE, produce_body("orders"))
                return bool(ans["topics"][0][1][0][1] == REFUSED)

            assert not await refused_now()  # still allowed (the batch is refused, not her)
            with client_sasl(creds("admin")):
                async with Admin(ctl) as admin:
                    removed = await admin.revoke_role("producer", "User:alice", "orders")
                    assert len(removed) == 3
            await async_wait_until(refused_now, 10, "alice's produce refused after revoke")
        finally:
            await alice.close()
            await bob.close()
            await carol.close()
        # the replicated topic is in sync on both brokers (replica fetches pass)
        with client_sasl(creds("admin")):
            async with Admin(ctl) as admin:
                async def in_sync() -> bool:
                    img = await admin.metadata(["orders"])
                    return len(img.topics["orders"].partitions[0].isr) == 2

                await async_wait_until(in_sync, 20, "orders-0 ISR of 2")
    logs = "".join(pc.nodes[n].log_text() for n in pc.nodes)
    assert "DENIED principal=User:alice operation=Read resource=topic:orders api=Fetch" in logs
    assert "DENIED principal=User:bob operation=Write resource=topic:orders api=Produce" in logs
    assert "ACL added by User:admin: allow User:alice Write on literal topic:orders" in logs
    assert "ACL removed by User:admin: allow User:alice Write on literal topic:orders" in logs
    assert all(pc.nodes[n].alive for n in pc.nodes)
