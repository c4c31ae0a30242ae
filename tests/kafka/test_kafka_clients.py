"""Unmodified Kafka clients against real `dmq server` processes on loopback: one
combined node and two brokers, each with a Kafka listener. kcat (librdkafka's CLI) and
confluent-kafka (librdkafka 2.x) list metadata, create topics, produce and consume;
raw frames check answer order, acks=0 and the ApiVersions fallback."""

from __future__ import annotations

import json
import random
import subprocess
import time
from typing import Any

import pytest

from tests.kafka.clients import bootstrap, create_topic, leader_serves
from tests.kafka.support import KafkaConn, needs_kcat
from tests.support.procs import ProcessCluster
from tests.support.waiting import wait_until

ck = pytest.importorskip("confluent_kafka")
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

pytestmark = pytest.mark.slow


@needs_kcat
def test_kcat_metadata_lists_brokers_topics_partitions(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    pc, ports = cluster
    create_topic(ports, "meta", 3, 2)
    out = subprocess.run(["kcat", "-b", f"127.0.0.1:{ports[101]}", "-L", "-J", "-m", "10"],
                         capture_output=True, text=True, timeout=30, check=True)
    md = json.loads(out.stdout)
    assert {(b["id"], b["name"]) for b in md["brokers"]} == {
        (nid, f"127.0.0.1:{port}") for nid, port in ports.items()}
    topic = next(t for t in md["topics"] if t["topic"] == "meta")
    assert sorted(p["partition"] for p in topic["partitions"]) == [0, 1, 2]
    for p in topic["partitions"]:
        assert p["leader"] in ports
        assert len(p["replicas"]) == 2 and len(p["isrs"]) == 2


@pytest.mark.parametrize("compression", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_confluent_produce_consume_byte_for_byte(
        cluster: tuple[ProcessCluster, dict[int, int]], compression: str) -> None:
    """Idempotent acks=all producer; keys, values and headers (binary, empty, absent)
    read back identical at the offsets the producer was told, in order."""
    _, ports = cluster
    topic = f"rt-{compression}"
    create_topic(ports, topic, 3, 3)
    rng = random.Random(compression)
    sent: dict[tuple[int, int], tuple[Any, Any, Any]] = {}
    errors: list[Any] = []

    def delivered(err: Any, msg: Any, headers: Any) -> None:
        # (a delivery report carries key and value; the headers are the ones we sent)
        if err is not None:
            errors.append(err)
        else:
            sent[(msg.partition(), msg.offset())] = (msg.key(), msg.value(), headers)

    producer = ck.Producer({"bootstrap.servers": bootstrap(ports), "enable.idempotence": True,
                            "acks": "all", "compression.type": compression,
                            "linger.ms": 5})
    n = 3000
    for i in range(n):
        key = None if i % 7 == 0 else rng.randbytes(rng.randrange(0, 20))
        value = rng.randbytes(rng.randrange(0, 300))
        headers = [(f"h{j}", rng.randbytes(rng.randrange(0, 10))) for j in range(i % 3)]
        producer.produce(topic, value=value, key=key, headers=headers or None,
                         on_delivery=lambda err, msg, h=headers: delivered(err, msg, h))
        if i % 500 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0
    assert not errors and len(sent) == n

    consumer = ck.Consumer({"bootstrap.servers": bootstrap(ports), "group.id": "unused",
                            "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    consumer.assign([ck.TopicPartition(topic, p, 0) for p in range(3)])
    got: dict[tuple[int, int], tuple[Any, Any, Any]] = {}
    deadline = time.monotonic() + 30
    try:
        while len(got) < n and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got[(msg.partition(), msg.offset())] = (msg.key(), msg.value(), msg.headers())
    finally:
        consumer.close()
    assert got.keys() == sent.keys()
    for where, (key, value, headers) in sent.items():
        g_key, g_value, g_headers = got[where]
        assert (g_key, g_value) == (key, value), where
        assert (g_headers or []) == (headers or []), where


@needs_kcat
def test_kcat_produce_then_consume(cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    _, ports = cluster
    create_topic(ports, "kc", 1, 3)
    lines = [f"key{i}:value {i} é" for i in range(200)]
    subprocess.run(["kcat", "-b", bootstrap(ports), "-P", "-t", "kc", "-K:", "-H", "source=kcat",
                    "-z", "lz4", "-X", "acks=all"], input="\n".join(lines) + "\n",
                   text=True, timeout=30, check=True)
    out = subprocess.run(["kcat", "-b", bootstrap(ports), "-C", "-t", "kc", "-e", "-q",
                          "-f", "%k:%s|%h|%o\n"], capture_output=True, text=True, timeout=30,
                         check=True)
    rows = out.stdout.splitlines()
    assert rows == [f"{line}|source=kcat|{i}" for i, line in enumerate(lines)]


def test_api_versions_of_an_unknown_version_lists_our_ranges(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    _, ports = cluster
    with KafkaConn(ports[1]) as conn:
        # a version from the future: the header can still be read, the answer is v0
        conn.correlation_id = 41
        frame = bytearray()
        from dmq.kafka.codec import encode_request

        frame += encode_request("ApiVersions", 3, 42, "future", {})
        frame[6:8] = (99).to_bytes(2, "big")  # api_version 99
        conn.sock.sendall(bytes(frame))
        cid, body = conn.receive("ApiVersions", 0)
        assert cid == 42 and body["ErrorCode"] == 35
        ranges = {a["ApiKey"]: (a["MinVersion"], a["MaxVersion"]) for a in body["ApiKeys"]}
        assert ranges[18] == (0, 3) and ranges[0] == (3, 9) and ranges[1] == (4, 12)
        # the connection stays usable
        assert conn.request("ApiVersions", 3, {})["ErrorCode"] == 0


def test_answers_come_back_in_request_order(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    """A long-poll fetch, then an acks=0 produce (no answer), then ApiVersions, all on
    one connection: the fetch is answered first, then ApiVersions."""
    _, ports = cluster
    create_topic(ports, "order", 1, 1)
    with KafkaConn(ports[1]) as conn:
        md = conn.request("Metadata", 12, {"Topics": [{"Name": "order"}]})
        leader = md["Topics"][0]["Partitions"][0]["LeaderId"]
    with KafkaConn(ports[leader]) as conn:
        fetch_id = conn.send("Fetch", 11, {
            "ReplicaId": -1, "MaxWaitMs": 400, "MinBytes": 1, "MaxBytes": 1 << 20,
            "SessionEpoch": -1, "Topics": [{"Topic": "order", "Partitions": [
                {"Partition": 0, "FetchOffset": 0, "PartitionMaxBytes": 1 << 20,
                 "CurrentLeaderEpoch": -1, "LogStartOffset": -1}]}]})
        conn.send("Produce", 9, {"Acks": 0, "TimeoutMs": 1000, "TopicData": [
            {"Name": "order", "PartitionData": [{"Index": 0, "Records": b"not a batch"}]}]})
        versions_id = conn.send("ApiVersions", 3, {})
        cid, fetch = conn.receive("Fetch", 11)
        assert cid == fetch_id
        assert fetch["Responses"][0]["Partitions"][0]["ErrorCode"] == 0
        cid, _ = conn.receive("ApiVersions", 3)
        assert cid == versions_id


def _records(seed: str, n: int) -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
    rng = random.Random(seed)
    return [(b"k%d" % i, rng.randbytes(rng.randrange(0, 200)),
             [("h", rng.randbytes(rng.randrange(0, 8)))] if i % 2 else [])
            for i in range(n)]


def test_kafka_python_admin_produce_consume(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    kp = pytest.importorskip("kafka")
    from kafka.admin import KafkaAdminClient
    from kafka.admin import NewTopic as KpNewTopic

    _, ports = cluster
    admin = KafkaAdminClient(bootstrap_servers=bootstrap(ports))
    try:
        created = admin.create_topics([KpNewTopic("kpy", 1, 3)])
        assert [t["error_code"] for t in created["topics"]] == [0]
        wait_until(lambda: _leader_ready(ports, "kpy"), 20, "a leader for kpy",
                   interval_s=0.1)
        records = _records("kafka-python", 2000)
        producer = kp.KafkaProducer(bootstrap_servers=bootstrap(ports), acks="all",
                                    compression_type="gzip")
        for key, value, headers in records:
            producer.send("kpy", key=key, value=value, headers=headers)
        producer.flush(30)
        producer.close()
        consumer = kp.KafkaConsumer(bootstrap_servers=bootstrap(ports),
                                    enable_auto_commit=False)
        consumer.assign([kp.TopicPartition("kpy", 0)])
        consumer.seek_to_beginning()
        got: list[Any] = []
        deadline = time.monotonic() + 30
        while len(got) < len(records) and time.monotonic() < deadline:
            for msgs in consumer.poll(timeout_ms=500).values():
                got += [(m.key, m.value, list(m.headers)) for m in msgs]
        consumer.close()
        assert got == records
        deleted = admin.delete_topics(["kpy"])
        assert [t["error_code"] for t in deleted["topics"]] == [0]
    finally:
        admin.close()


def _leader_ready(ports: dict[int, int], topic: str) -> bool:
    with KafkaConn(next(iter(ports.values()))) as conn:
        md = conn.request("Metadata", 12, {"Topics": [{"Name": topic}],
                                            "AllowAutoTopicCreation": False})
    t = md["Topics"][0]
    return t["ErrorCode"] == 0 and all(
        p["LeaderId"] >= 0 and leader_serves(ports[p["LeaderId"]], topic, p["PartitionIndex"])
        for p in t["Partitions"])


def test_aiokafka_idempotent_produce_consume(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    aiokafka = pytest.importorskip("aiokafka")
    import asyncio

    _, ports = cluster
    create_topic(ports, "aio", 1, 3)
    records = _records("aiokafka", 2000)

    async def run() -> list[tuple[bytes, bytes, list[tuple[str, bytes]]]]:
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap(ports),
                                             enable_idempotence=True, compression_type="gzip")
        await producer.start()
        try:
            for key, value, headers in records:
                await producer.send("aio", key=key, value=value, headers=headers)
            await producer.flush()
        finally:
            await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers=bootstrap(ports),
                                             enable_auto_commit=False)
        await consumer.start()
        got: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []
        try:
            consumer.assign([aiokafka.TopicPartition("aio", 0)])
            await consumer.seek_to_beginning()
            deadline = time.monotonic() + 30
            while len(got) < len(records) and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500)
                for msgs in batch.values():
                    got += [(m.key, m.value, list(m.headers)) for m in msgs]
        finally:
            await consumer.stop()
        return got

    assert asyncio.run(run()) == records


def test_confluent_admin_partitions_configs_cluster(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    from confluent_kafka.admin import ConfigResource, NewPartitions

    _, ports = cluster
    admin = AdminClient({"bootstrap.servers": bootstrap(ports)})
    create = admin.create_topics([NewTopic("adm", 1, 2, config={"retention.ms": "3600000"})],
                                 operation_timeout=15)
    create["adm"].result(20)
    admin.create_partitions([NewPartitions("adm", 4)], operation_timeout=15)["adm"].result(20)
    wait_until(lambda: len(admin.list_topics("adm", timeout=5).topics["adm"].partitions) == 4,
               20, "adm with 4 partitions", interval_s=0.1)
    resource = ConfigResource(ConfigResource.Type.TOPIC, "adm")
    configs = admin.describe_configs([resource])[resource].result(20)
    assert configs["retention.ms"].value == "3600000"
    assert configs["retention.ms"].source == 1  # DYNAMIC_TOPIC_CONFIG: set on the topic
    assert configs["cleanup.policy"].is_default
    missing = ConfigResource(ConfigResource.Type.TOPIC, "no-such-topic")
    with pytest.raises(ck.KafkaException):
        admin.describe_configs([missing])[missing].result(20)
    described = admin.describe_cluster().result(20)
    assert {n.id for n in described.nodes} == set(ports)
    admin.delete_topics(["adm"], operation_timeout=15)["adm"].result(20)


@pytest.mark.filterwarnings("ignore:alter_configs has been deprecated:DeprecationWarning")
def test_alter_configs_full_and_incremental(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    _, ports = cluster
    admin = AdminClient({"bootstrap.servers": bootstrap(ports)})
    admin.create_topics([NewTopic("cfg", 1, 1, config={"retention.ms": "1000000"})],
                        operation_timeout=15)["cfg"].result(20)
    res = ConfigResource(ConfigResource.Type.TOPIC, "cfg")

    def current() -> dict[str, Any]:
        return admin.describe_configs([res])[res].result(20)

    def seen(segment_ms: str, why: str) -> None:
        wait_until(lambda: current()["segment.ms"].value == segment_ms, 20, why,
                   interval_s=0.1)

    # incremental: SET one, APPEND to a list, the other override stays
    inc = ConfigResource(ConfigResource.Type.TOPIC, "cfg", incremental_configs=[
        ConfigEntry("segment.ms", "600000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("cleanup.policy", "compact",
                    incremental_operation=AlterConfigOpType.APPEND)])
    admin.incremental_alter_configs([inc])[inc].result(20)
    seen("600000", "incremental change never seen")
    got = current()
    assert set(got["cleanup.policy"].value.split(",")) == {"delete", "compact"}
    assert got["retention.ms"].value == "1000000"
    # full replacement: configs not named go back to their defaults
    full = ConfigResource(ConfigResource.Type.TOPIC, "cfg", set_config={"segment.ms": "700000"})
    admin.alter_configs([full])[full].result(20)
    seen("700000", "replacement never seen")
    got = current()
    assert got["retention.ms"].is_default and got["cleanup.policy"].is_default
    bad = ConfigResource(ConfigResource.Type.TOPIC, "cfg", set_config={"no.such": "1"})
    with pytest.raises(ck.KafkaException):
        admin.alter_configs([bad])[bad].result(20)
