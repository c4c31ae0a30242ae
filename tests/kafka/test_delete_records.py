"""DeleteRecords (API 21, versions 0-2) from unmodified Kafka clients against real
`dmq server` processes: the log start moves up to the offset asked (-1: the high
watermark), a consumer from the beginning starts there, followers follow, an offset
past the high watermark and a compacted topic are refused."""

from __future__ import annotations

from typing import Any

import pytest

from tests.kafka.clients import bootstrap, create_topic
from tests.kafka.support import KafkaConn
from tests.support.procs import ProcessCluster
from tests.support.replicas import replica_log_starts
from tests.support.waiting import wait_until

ck = pytest.importorskip("confluent_kafka")
from confluent_kafka import KafkaException, TopicPartition  # noqa: E402
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

pytestmark = pytest.mark.slow


def _produce(ports: dict[int, int], topic: str, partitions: int, per_partition: int) -> None:
    producer = ck.Producer({"bootstrap.servers": bootstrap(ports), "acks": "all",
                            "linger.ms": 5})
    for p in range(partitions):
        for i in range(per_partition):
            producer.produce(topic, value=f"{p}-{i}".encode(), partition=p)
    assert producer.flush(30) == 0


def _log_starts(ports: dict[int, int], topic: str, partition: int) -> list[int]:
    """ListOffsets earliest asked of every broker: only the partition's leader answers
    (the others say NOT_LEADER_OR_FOLLOWER and are left out)."""
    starts = []
    for port in ports.values():
        with KafkaConn(port) as conn:
            res = conn.request("ListOffsets", 1, {"ReplicaId": -1, "Topics": [
                {"Name": topic, "Partitions": [{"PartitionIndex": partition,
                                                "Timestamp": -2}]}]})
        row = res["Topics"][0]["Partitions"][0]
        if row["ErrorCode"] == 0:
            starts.append(row["Offset"])
    return starts


def test_delete_records_moves_the_log_start(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    pc, ports = cluster
    create_topic(ports, "dr", 2, 3)
    _produce(ports, "dr", 2, 100)
    admin = AdminClient({"bootstrap.servers": bootstrap(ports)})
    futures = admin.delete_records([TopicPartition("dr", 0, 40), TopicPartition("dr", 1, -1)],
                                   request_timeout=15, operation_timeout=15)
    lows = {tp.partition: f.result(20).low_watermark for tp, f in futures.items()}
    assert lows == {0: 40, 1: 100}
    assert _log_starts(ports, "dr", 0) == [40]  # answered by the leader alone
    # the followers move their log start on their next fetch
    wait_until(lambda: replica_log_starts(pc, "dr", 0) == [40, 40, 40], 20,
               "every replica's log start at 40")

    consumer = ck.Consumer({"bootstrap.servers": bootstrap(ports), "group.id": "dr-read",
                            "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition("dr", 0), timeout=10)
        assert (low, high) == (40, 100)
        consumer.assign([TopicPartition("dr", 0, ck.OFFSET_BEGINNING)])
        got: list[tuple[int, bytes]] = []
        while len(got) < 60:
            msg = consumer.poll(10)
            assert msg is not None, f"only {len(got)} records read back"
            assert msg.error() is None, msg.error()
            got.append((msg.offset(), msg.value()))
        assert got == [(o, f"0-{o}".encode()) for o in range(40, 100)]
    finally:
        consumer.close()


def test_delete_records_refuses_past_the_high_watermark_and_compacted_topics(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    _, ports = cluster
    create_topic(ports, "dr-range", 1, 3)
    _produce(ports, "dr-range", 1, 10)
    admin = AdminClient({"bootstrap.servers": bootstrap(ports)})
    (future,) = admin.delete_records([TopicPartition("dr-range", 0, 11)],
                                     request_timeout=15, operation_timeout=15).values()
    with pytest.raises(KafkaException, match="OFFSET_OUT_OF_RANGE"):
        future.result(20)

    admin.create_topics([NewTopic("dr-compact", 1, 3, config={"cleanup.policy": "compact"})],
                        operation_timeout=15)["dr-compact"].result(20)
    wait_until(lambda: _log_starts(ports, "dr-compact", 0) == [0], 20, "a serving leader")
    (future,) = admin.delete_records([TopicPartition("dr-compact", 0, 0)],
                                     request_timeout=15, operation_timeout=15).values()
    with pytest.raises(KafkaException, match="POLICY_VIOLATION"):
        future.result(20)


def test_kafka_python_delete_records(cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    kafka = pytest.importorskip("kafka")
    from kafka.admin import KafkaAdminClient

    _, ports = cluster
    create_topic(ports, "dr-kp", 1, 3)
    _produce(ports, "dr-kp", 1, 30)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap(ports))
    try:
        result = admin.delete_records({kafka.TopicPartition("dr-kp", 0): 25})
    finally:
        admin.close()
    assert {tp.partition: r["low_watermark"] for tp, r in result.items()} == {0: 25}
    assert _log_starts(ports, "dr-kp", 0) == [25]


def test_delete_records_sent_to_a_follower_is_refused(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    """Each follower answers NOT_LEADER_OR_FOLLOWER and moves nothing; the leader
    then does it."""
    _, ports = cluster
    create_topic(ports, "dr-follower", 1, 3)
    _produce(ports, "dr-follower", 1, 10)
    with KafkaConn(next(iter(ports.values()))) as conn:
        md = conn.request("Metadata", 12, {"Topics": [{"Name": "dr-follower"}]})
    leader = md["Topics"][0]["Partitions"][0]["LeaderId"]
    request = {"Topics": [{"Name": "dr-follower", "Partitions": [
        {"PartitionIndex": 0, "Offset": 5}]}], "TimeoutMs": 5000}

    def ask(node: int) -> dict[str, Any]:
        with KafkaConn(ports[node]) as conn:
            row: dict[str, Any] = conn.request("DeleteRecords", 2, request)[
                "Topics"][0]["Partitions"][0]
        return row

    followers = [n for n in ports if n != leader]
    assert len(followers) == 2
    for node in followers:
        assert ask(node) == {"PartitionIndex": 0, "LowWatermark": -1,
                             "ErrorCode": 6}  # NOT_LEADER_OR_FOLLOWER
    assert _log_starts(ports, "dr-follower", 0) == [0]
    assert ask(leader) == {"PartitionIndex": 0, "LowWatermark": 5, "ErrorCode": 0}
