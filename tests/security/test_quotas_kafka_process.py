"""Client quotas through a broker's Kafka listener (a real node, no authentication:
every client is User:ANONYMOUS, held by the default user's quota): AlterClientQuotas
and DescribeClientQuotas (48/49) as Kafka's admin clients send them, refusals of
unsupported entities and keys, and a confluent-kafka producer and consumer over their
quotas that read ThrottleTimeMs (librdkafka's throttle statistics)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.kafka.clients import bootstrap, create_topic
from tests.kafka.support import KafkaConn, kafka_cluster
from tests.support.procs import ProcessCluster

ck = pytest.importorskip("confluent_kafka")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

QUOTA = 100 * 1024
INVALID_REQUEST = 42


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[ProcessCluster, dict[int, int]]]:
    with kafka_cluster(controllers=1, combined=True,
                       settings={"default.replication.factor": 1}) as (pc, ports):
        yield pc, ports


def user(name: str | None) -> list[dict[str, Any]]:
    return [{"EntityType": "user", "EntityName": name}]


def alter(port: int, entries: list[dict[str, Any]], version: int = 1) -> list[dict[str, Any]]:
    with KafkaConn(port) as conn:
        answer = conn.request("AlterClientQuotas", version,
                              {"Entries": entries, "ValidateOnly": False})
    rows: list[dict[str, Any]] = answer["Entries"]
    return rows


def describe(port: int, components: list[dict[str, Any]], version: int = 1
             ) -> dict[str | None, dict[str, float]]:
    with KafkaConn(port) as conn:
        answer = conn.request("DescribeClientQuotas", version,
                              {"Components": components, "Strict": False})
    assert answer["ErrorCode"] == 0, answer
    return {e["Entity"][0]["EntityName"]: {v["Key"]: v["Value"] for v in e["Values"]}
            for e in answer["Entries"]}


def op(key: str, value: float = 0.0, remove: bool = False) -> dict[str, Any]:
    return {"Key": key, "Value": value, "Remove": remove}


def test_alter_and_describe_client_quotas(cluster: tuple[ProcessCluster, dict[int, int]]
                                          ) -> None:
    _, ports = cluster
    port = next(iter(ports.values()))
    rows = alter(port, [
        {"Entity": user("carol"), "Ops": [op("producer_byte_rate", 5000.0),
                                          op("consumer_byte_rate", 7000.0)]},
        {"Entity": user(None), "Ops": [op("consumer_byte_rate", 9000.0)]},
        {"Entity": [{"EntityType": "client-id", "EntityName": "x"}],
         "Ops": [op("producer_byte_rate", 1.0)]},
        {"Entity": user("dave"), "Ops": [op("request_percentage", 50.0)]},
        {"Entity": user("erin"), "Ops": [op("producer_byte_rate", 0.5)]}], version=0)
    assert [r["ErrorCode"] for r in rows] == [0, 0, INVALID_REQUEST, INVALID_REQUEST,
                                              INVALID_REQUEST]
    assert "client-id" in rows[2]["ErrorMessage"]
    assert "request_percentage" in rows[3]["ErrorMessage"]
    assert describe(port, []) == {None: {"consumer_byte_rate": 9000.0},
                                  "carol": {"producer_byte_rate": 5000.0,
                                            "consumer_byte_rate": 7000.0}}
    exact = [{"EntityType": "user", "MatchType": 0, "Match": "carol"}]
    assert list(describe(port, exact, version=0)) == ["carol"]
    assert list(describe(port, [{"EntityType": "user", "MatchType": 1, "Match": None}])) \
        == [None]
    assert list(describe(port, [{"EntityType": "user", "MatchType": 2, "Match": None}])) \
        == ["carol"]
    assert describe(port, [{"EntityType": "client-id", "MatchType": 2, "Match": None}]) == {}
    rows = alter(port, [
        {"Entity": user("carol"), "Ops": [op("producer_byte_rate", remove=True),
                                          op("consumer_byte_rate", remove=True)]},
        {"Entity": user(None), "Ops": [op("consumer_byte_rate", remove=True)]}])
    assert [r["ErrorCode"] for r in rows] == [0, 0]
    assert describe(port, []) == {}


def test_kafka_clients_over_quota_see_throttle_time(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    _, ports = cluster
    port = next(iter(ports.values()))
    create_topic(ports, "kq", 1, 1)
    assert [r["ErrorCode"] for r in alter(port, [
        {"Entity": user(None), "Ops": [op("producer_byte_rate", float(QUOTA)),
                                       op("consumer_byte_rate", float(QUOTA))]}])] == [0]
    throttles: list[int] = []

    def stats(raw: str) -> None:
        for b in json.loads(raw).get("brokers", {}).values():
            throttles.append(int(b.get("throttle", {}).get("max", 0)))

    # 400 KB at 100 KB/s: past the one second of burst, the broker holds answers back
    producer = ck.Producer({"bootstrap.servers": bootstrap(ports), "linger.ms": 5,
                            "batch.size": 16384, "statistics.interval.ms": 200,
                            "stats_cb": stats})
    try:
        for _ in range(400):
            producer.produce("kq", value=b"k" * 1024)
            producer.poll(0)
        assert producer.flush(60) == 0
        deadline = time.monotonic() + 5
        while not any(throttles) and time.monotonic() < deadline:
            producer.poll(0.2)
    finally:
        producer.flush(10)
    assert any(throttles), "the producer never saw a throttle time"
    throttles.clear()
    consumer = ck.Consumer({"bootstrap.servers": bootstrap(ports), "group.id": "kq",
                            "enable.auto.commit": False, "auto.offset.reset": "earliest",
                            "fetch.max.bytes": 65536, "message.max.bytes": 65536,
                            "max.partition.fetch.bytes": 65536,
                            "statistics.interval.ms": 200, "stats_cb": stats})
    try:
        consumer.assign([ck.TopicPartition("kq", 0, 0)])
        got = 0
        deadline = time.monotonic() + 30
        while (got < 400 or not any(throttles)) and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                got += 1
    finally:
        consumer.close()
    assert got == 400
    assert any(throttles), "the consumer never saw a throttle time"
