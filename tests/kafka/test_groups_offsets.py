"""Kafka clients' committed offsets against real `dmq server` processes on loopback:
FindCoordinator names the broker asked, OffsetCommit/OffsetFetch are forwarded to the
active controller's store (the one dmq's own consumers use), raw frames for each
version range and a confluent-kafka consumer with `assign()` + `commit()`, whose
commits `dmq groups describe` then shows with their lag."""

from __future__ import annotations

import json
import time

import pytest

from tests.kafka.clients import bootstrap, create_topic, dmq_cli
from tests.kafka.support import KafkaConn
from tests.support.procs import ProcessCluster

ck = pytest.importorskip("confluent_kafka")

pytestmark = pytest.mark.slow

COORDINATOR_NOT_AVAILABLE = 15
INVALID_REQUEST = 42
UNKNOWN_TOPIC_OR_PARTITION = 3
UNKNOWN_MEMBER_ID = 25


def test_find_coordinator_names_the_broker_asked_in_every_version(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    _, ports = cluster
    for node, port in ports.items():
        with KafkaConn(port) as conn:
            for v in (0, 1, 2, 3):
                body = {"Key": "g1"} if v == 0 else {"Key": "g1", "KeyType": 0}
                a = conn.request("FindCoordinator", v, body)
                assert (a["ErrorCode"], a["NodeId"], a["Host"], a["Port"]) == (
                    0, node, "127.0.0.1", port), (v, a)
            a = conn.request("FindCoordinator", 4, {"KeyType": 0,
                                                    "CoordinatorKeys": ["g1", "g2"]})
            assert [(c["Key"], c["ErrorCode"], c["NodeId"], c["Port"])
                    for c in a["Coordinators"]] == [("g1", 0, node, port),
                                                    ("g2", 0, node, port)]
            # transactions are not served: a clear refusal, not a coordinator
            a = conn.request("FindCoordinator", 4, {"KeyType": 1, "CoordinatorKeys": ["t"]})
            c = a["Coordinators"][0]
            assert c["ErrorCode"] == INVALID_REQUEST and "key type 1" in c["ErrorMessage"]


def test_raw_offset_commit_and_fetch_across_versions(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    pc, ports = cluster
    create_topic(ports, "offs", 3, 2)
    port = ports[101]
    with KafkaConn(port) as conn:
        for v in (2, 5, 7, 8, 9):
            group = f"raw-{v}"
            body = {"GroupId": group, "GenerationIdOrMemberEpoch": -1, "MemberId": "",
                    "Topics": [{"Name": "offs", "Partitions": [
                        {"PartitionIndex": 0, "CommittedOffset": 5 + v,
                         "CommittedMetadata": f"m{v}"},
                        {"PartitionIndex": 7, "CommittedOffset": 1,
                         "CommittedMetadata": None}]}]}
            if v < 5:
                body["RetentionTimeMs"] = -1
            a = conn.request("OffsetCommit", v, body)
            assert [(p["PartitionIndex"], p["ErrorCode"]) for p in a["Topics"][0]["Partitions"]
                    ] == [(0, 0), (7, UNKNOWN_TOPIC_OR_PARTITION)], (v, a)
        # v1: one group, named partitions; v7: all of a group's offsets (Topics null)
        a = conn.request("OffsetFetch", 1, {"GroupId": "raw-2", "Topics": [
            {"Name": "offs", "PartitionIndexes": [0, 1]}]})
        assert [(p["PartitionIndex"], p["CommittedOffset"], p["Metadata"], p["ErrorCode"])
                for p in a["Topics"][0]["Partitions"]] == [(0, 7, "m2", 0), (1, -1, "", 0)]
        a = conn.request("OffsetFetch", 7, {"GroupId": "raw-7", "Topics": None,
                                            "RequireStable": True})
        assert a["ErrorCode"] == 0
        assert [(t["Name"], p["PartitionIndex"], p["CommittedOffset"])
                for t in a["Topics"] for p in t["Partitions"]] == [("offs", 0, 12)]
        # v8+: several groups in one request
        a = conn.request("OffsetFetch", 9, {"Groups": [
            {"GroupId": "raw-8", "MemberId": None, "MemberEpoch": -1, "Topics": None},
            {"GroupId": "raw-9", "MemberId": None, "MemberEpoch": -1,
             "Topics": [{"Name": "offs", "PartitionIndexes": [0]}]},
            {"GroupId": "never", "MemberId": None, "MemberEpoch": -1, "Topics": None}],
            "RequireStable": False})
        assert [(g["GroupId"], g["ErrorCode"],
                 [(p["PartitionIndex"], p["CommittedOffset"], p["Metadata"])
                  for t in g["Topics"] for p in t["Partitions"]]) for g in a["Groups"]] == [
            ("raw-8", 0, [(0, 13, "m8")]), ("raw-9", 0, [(0, 14, "m9")]), ("never", 0, [])]
        # a commit naming a member the group does not have is fenced with Kafka's code
        a = conn.request("OffsetCommit", 8, {
            "GroupId": "raw-8", "GenerationIdOrMemberEpoch": 3, "MemberId": "ghost",
            "GroupInstanceId": None, "Topics": [{"Name": "offs", "Partitions": [
                {"PartitionIndex": 0, "CommittedOffset": 99, "CommittedLeaderEpoch": -1,
                 "CommittedMetadata": None}]}]})
        assert a["Topics"][0]["Partitions"][0]["ErrorCode"] == UNKNOWN_MEMBER_ID
    # the same store as dmq's own consumers: dmq's CLI reads the Kafka client's commit
    d = json.loads(dmq_cli(pc, "groups", "describe", "raw-8", "--json"))
    assert [(p["topic"], p["partition"], p["committed"]) for p in d["partitions"]
            if p["committed"] is not None] == [("offs", 0, 13)]


def test_confluent_assign_commit_shows_in_dmq_groups_describe(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    pc, ports = cluster
    create_topic(ports, "ck-offs", 2, 2)
    producer = ck.Producer({"bootstrap.servers": bootstrap(ports), "acks": "all"})
    for i in range(10):
        producer.produce("ck-offs", value=b"v%d" % i, partition=i % 2)
    assert producer.flush(20) == 0

    conf = {"bootstrap.servers": bootstrap(ports), "group.id": "ck-manual",
            "enable.auto.commit": False, "auto.offset.reset": "earliest"}
    consumer = ck.Consumer(conf)
    try:
        consumer.assign([ck.TopicPartition("ck-offs", 0, 0), ck.TopicPartition("ck-offs", 1, 0)])
        got: list[bytes] = []
        deadline = time.monotonic() + 20
        while len(got) < 10 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got.append(msg.value())
        assert sorted(got) == sorted(b"v%d" % i for i in range(10))
        # commit partition 0 fully and partition 1 up to 3 (lag 2)
        committed = consumer.commit(offsets=[ck.TopicPartition("ck-offs", 0, 5),
                                             ck.TopicPartition("ck-offs", 1, 3)],
                                    asynchronous=False)
        assert all(tp.error is None for tp in committed)
    finally:
        consumer.close()

    # a second consumer of the group reads the commits back (OffsetFetch)
    reader = ck.Consumer(conf)
    try:
        back = reader.committed([ck.TopicPartition("ck-offs", 0),
                                 ck.TopicPartition("ck-offs", 1)], timeout=20)
        assert [(tp.partition, tp.offset) for tp in back] == [(0, 5), (1, 3)]
    finally:
        reader.close()

    d = json.loads(dmq_cli(pc, "groups", "describe", "ck-manual", "--json"))
    assert [(p["partition"], p["committed"], p["log_end_offset"], p["lag"])
            for p in d["partitions"]] == [(0, 5, 5, 0), (1, 3, 5, 2)]
    assert d["total_lag"] == 2
    listed = dmq_cli(pc, "groups", "list")
    assert "ck-manual" in listed
