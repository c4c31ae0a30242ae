"""The Kafka handlers' ACL checks without a broker: what a principal may not do is
answered in its rows and never forwarded to the controller (which would hear the
broker, a node, not the client); DescribeAcls answers from the image."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

from dmq.config import ClusterConfig, NodeAddress
from dmq.kafka.apis import KafkaApis
from dmq.kafka.codec import RequestHeader
from dmq.metadata.image import MetadataImage, TopicInfo
from dmq.security.acl import Authorizer, make_entry

ALICE = RequestHeader(0, 3, 1, "t", "User:alice")
ADMIN = replace(ALICE, principal="User:admin")
ACLS = frozenset({make_entry("topic", "orders", "User:alice", "Write")})
IMAGE = MetadataImage(5, 1, {}, {n: TopicInfo(n, n, {}, {}) for n in ("orders", "secret")},
                      acls=ACLS)


def kafka_apis(asked: list[Any]) -> KafkaApis:
    async def controller(key: Any, body: Any, timeout_ms: int) -> Any:
        asked.append((key, body))
        return {"topics": [{"name": t if isinstance(t, str) else t["name"], "error": 0}
                           for t in body.get("topics", [])], "results": []}

    authz = Authorizer(lambda: ACLS, super_users=["User:admin"])
    config = ClusterConfig((NodeAddress(1, "c", 1),), ())
    return KafkaApis(config, 7, SimpleNamespace(authorizer=authz),  # type: ignore[arg-type]
                     lambda: IMAGE, controller)


def test_metadata_lists_only_described_topics() -> None:
    k = kafka_apis([])
    listed = k.metadata(ALICE, {"Topics": None})
    assert [t["Name"] for t in listed["Topics"]] == ["orders"]  # Write implies Describe
    named = k.metadata(ALICE, {"Topics": [{"Name": "secret"}], "AllowAutoTopicCreation": True})
    assert named["Topics"][0]["ErrorCode"] == 29
    everything = k.metadata(ADMIN, {"Topics": None})
    assert [t["Name"] for t in everything["Topics"]] == ["orders", "secret"]


async def test_refused_topic_admin_is_answered_here_and_not_forwarded() -> None:
    asked: list[Any] = []
    k = kafka_apis(asked)
    created = await k.create_topics(ALICE, {"Topics": [
        {"Name": "new", "NumPartitions": 1, "ReplicationFactor": 1, "Assignments": [],
         "Configs": []}], "TimeoutMs": 1000, "ValidateOnly": False})
    assert created["Topics"][0]["ErrorCode"] == 29
    deleted = await k.delete_topics(ALICE, {"TopicNames": ["orders"], "TimeoutMs": 1000})
    assert deleted["Responses"][0]["ErrorCode"] == 29
    altered = await k.alter_configs(ALICE, {"Resources": [
        {"ResourceType": 2, "ResourceName": "orders", "Configs": []}], "ValidateOnly": False})
    assert altered["Responses"][0]["ErrorCode"] == 29
    configs = k.describe_configs(ALICE, {"Resources": [
        {"ResourceType": 2, "ResourceName": "orders", "ConfigurationKeys": None},
        {"ResourceType": 4, "ResourceName": "7", "ConfigurationKeys": None}]})
    assert [r["ErrorCode"] for r in configs["Results"]] == [29, 31]
    acl = await k.create_acls(ALICE, {"Creations": [
        {"ResourceType": 2, "ResourceName": "orders", "ResourcePatternType": 3,
         "Principal": "User:alice", "Host": "*", "Operation": 3, "PermissionType": 3}]})
    assert acl["Results"][0]["ErrorCode"] == 31
    assert k.init_producer_id(ALICE, {"TransactionalId": None})["ErrorCode"] == 31
    assert asked == []
    # the superuser's go through
    await k.delete_topics(ADMIN, {"TopicNames": ["orders"], "TimeoutMs": 1000})
    assert [key.name for key, _ in asked] == ["DELETE_TOPICS"]


def test_describe_acls_from_the_image() -> None:
    k = kafka_apis([])
    any_ = {"ResourceTypeFilter": 1, "ResourceNameFilter": None, "PatternTypeFilter": 1,
            "PrincipalFilter": None, "HostFilter": None, "Operation": 1, "PermissionType": 1}
    assert k.describe_acls(ALICE, any_)["ErrorCode"] == 31
    answer = k.describe_acls(ADMIN, any_)
    assert answer["Resources"] == [{"Type": 2, "Name": "orders", "PatternType": 3, "Acls": [
        {"Principal": "User:alice", "Host": "*", "Operation": 4, "PermissionType": 3}]}]
