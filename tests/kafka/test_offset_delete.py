"""Kafka's OffsetDelete (API 47) against real `dmq server` processes on loopback:
kafka-python's admin deletes a group's committed offsets of some partitions (the others
stay, in the same Raft-replicated store dmq's consumers read); a topic the group is
subscribed to is refused GROUP_SUBSCRIBED_TO_TOPIC, for a consumer-protocol (KIP-848)
and a classic member alike, until the member leaves; an unknown group and an unknown
topic get Kafka's errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.kafka.clients import bootstrap, create_topic, dmq_cli
from tests.kafka.support import KafkaConn
from tests.support.procs import ProcessCluster
from tests.support.waiting import wait_until

ck = pytest.importorskip("confluent_kafka")
kafka_admin = pytest.importorskip("kafka.admin")
import kafka  # noqa: E402
import kafka.errors as kerrors  # noqa: E402

pytestmark = pytest.mark.slow

UNKNOWN_TOPIC_OR_PARTITION = 3
GROUP_ID_NOT_FOUND = 69
GROUP_SUBSCRIBED_TO_TOPIC = 86


def _commit(ports: dict[int, int], group: str, offsets: dict[tuple[str, int], int]) -> None:
    """Commit from outside the group's membership (as an admin tool or an assign()
    consumer does)."""
    c = ck.Consumer({"bootstrap.servers": bootstrap(ports), "group.id": group,
                     "enable.auto.commit": False})
    try:
        c.commit(offsets=[ck.TopicPartition(t, p, o) for (t, p), o in offsets.items()],
                 asynchronous=False)
    finally:
        c.close()


def _fetched(port: int, group: str, topics: dict[str, list[int]]) -> dict[tuple[str, int], int]:
    with KafkaConn(port) as conn:
        answer = conn.request("OffsetFetch", 7, {"GroupId": group, "Topics": [
            {"Name": t, "PartitionIndexes": ps} for t, ps in topics.items()],
            "RequireStable": False})
    assert answer["ErrorCode"] == 0, answer
    return {(t["Name"], p["PartitionIndex"]): p["CommittedOffset"]
            for t in answer["Topics"] for p in t["Partitions"]}


def _delete(port: int, group: str, topics: dict[str, list[int]]) -> dict[str, Any]:
    with KafkaConn(port) as conn:
        return conn.request("OffsetDelete", 0, {"GroupId": group, "Topics": [
            {"Name": t, "Partitions": [{"PartitionIndex": p} for p in ps]}
            for t, ps in topics.items()]})


def test_kafka_python_deletes_some_offsets_of_an_empty_group(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    pc, ports = cluster
    create_topic(ports, "od-a", 2, 2)
    create_topic(ports, "od-b", 1, 2)
    group = "od-empty"
    _commit(ports, group, {("od-a", 0): 5, ("od-a", 1): 6, ("od-b", 0): 7})
    port = next(iter(ports.values()))
    both = {"od-a": [0, 1], "od-b": [0]}
    assert _fetched(port, group, both) == {("od-a", 0): 5, ("od-a", 1): 6, ("od-b", 0): 7}

    admin = kafka_admin.KafkaAdminClient(bootstrap_servers=bootstrap(ports))
    try:
        result = admin.delete_group_offsets(group, [kafka.TopicPartition("od-a", 0),
                                                    kafka.TopicPartition("od-a", 1)])
        assert result == {kafka.TopicPartition("od-a", 0): kerrors.NoError,
                          kafka.TopicPartition("od-a", 1): kerrors.NoError}
        # every broker's listener reads the same store
        for p in ports.values():
            assert _fetched(p, group, both) == {("od-a", 0): -1, ("od-a", 1): -1,
                                                ("od-b", 0): 7}
        d = json.loads(dmq_cli(pc, "groups", "describe", group, "--json"))
        assert [(x["topic"], x["partition"], x["committed"]) for x in d["partitions"]] == [
            ("od-b", 0, 7)]

        with pytest.raises(kerrors.GroupIdNotFoundError):
            admin.delete_group_offsets("od-no-such-group", [kafka.TopicPartition("od-a", 0)])
    finally:
        admin.close()

    # raw frames: an unknown topic per partition; a partition without an offset is fine
    answer = _delete(port, group, {"od-gone": [0], "od-a": [0]})
    assert answer["ErrorCode"] == 0
    rows = {(t["Name"], p["PartitionIndex"]): p["ErrorCode"]
            for t in answer["Topics"] for p in t["Partitions"]}
    assert rows == {("od-gone", 0): UNKNOWN_TOPIC_OR_PARTITION, ("od-a", 0): 0}
    missing = _delete(port, "od-nothing", {"od-a": [0]})
    assert missing["ErrorCode"] == GROUP_ID_NOT_FOUND and missing["Topics"] == []


@pytest.mark.parametrize("protocol", ["consumer", "classic"])
def test_subscribed_topic_is_refused_until_the_member_leaves(
        cluster: tuple[ProcessCluster, dict[int, int]], protocol: str) -> None:
    _pc, ports = cluster
    sub, other = f"od-sub-{protocol}", f"od-other-{protocol}"
    create_topic(ports, sub, 2, 2)
    create_topic(ports, other, 1, 2)
    group = f"od-busy-{protocol}"
    _commit(ports, group, {(sub, 0): 3, (sub, 1): 4, (other, 0): 9})
    settings = {"group.protocol": "consumer"} if protocol == "consumer" else {
        "session.timeout.ms": 6000, "heartbeat.interval.ms": 300}
    member = ck.Consumer({"bootstrap.servers": bootstrap(ports), "group.id": group,
                          "enable.auto.commit": False, **settings})
    member.subscribe([sub])
    port = next(iter(ports.values()))
    try:
        def assigned() -> bool:
            member.poll(0.1)
            return len(member.assignment()) == 2
        wait_until(assigned, 30, "the member's assignment")
        answer = _delete(port, group, {sub: [0, 1], other: [0]})
        assert answer["ErrorCode"] == 0
        rows = {(t["Name"], p["PartitionIndex"]): p["ErrorCode"]
                for t in answer["Topics"] for p in t["Partitions"]}
        assert rows == {(sub, 0): GROUP_SUBSCRIBED_TO_TOPIC,
                        (sub, 1): GROUP_SUBSCRIBED_TO_TOPIC, (other, 0): 0}
        assert _fetched(port, group, {sub: [0, 1], other: [0]}) == {
            (sub, 0): 3, (sub, 1): 4, (other, 0): -1}
    finally:
        member.close()

    def deleted() -> bool:
        again = _delete(port, group, {sub: [0, 1]})
        return all(p["ErrorCode"] == 0 for t in again["Topics"] for p in t["Partitions"])
    wait_until(deleted, 20, "the offsets deleted once the member left")
    assert _fetched(port, group, {sub: [0, 1]}) == {(sub, 0): -1, (sub, 1): -1}


def test_dmq_cli_deletes_offsets_over_dmqs_protocol(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    pc, ports = cluster
    create_topic(ports, "od-cli", 2, 2)
    create_topic(ports, "od-cli-keep", 1, 2)
    group = "od-cli"
    _commit(ports, group, {("od-cli", 0): 2, ("od-cli", 1): 3, ("od-cli-keep", 0): 4})
    out = dmq_cli(pc, "groups", "delete-offsets", group, "--topic", "od-cli")
    assert out.splitlines() == ["deleted the committed offset of od-cli-0",
                                "deleted the committed offset of od-cli-1"]
    d = json.loads(dmq_cli(pc, "groups", "describe", group, "--json"))
    assert [(x["topic"], x["partition"], x["committed"]) for x in d["partitions"]] == [
        ("od-cli-keep", 0, 4)]
