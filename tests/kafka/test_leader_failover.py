"""An idempotent confluent-kafka producer with acks=all while the partition leader is
killed (kill -9): every acknowledged record is read back exactly once, in order."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from tests.kafka.support import KafkaConn, consume_partition, kafka_cluster
from tests.support.waiting import wait_until

ck = pytest.importorskip("confluent_kafka")
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402

pytestmark = pytest.mark.slow


def _leader(port: int, topic: str) -> int:
    with KafkaConn(port) as conn:
        md = conn.request("Metadata", 12, {"Topics": [{"Name": topic}],
                                            "AllowAutoTopicCreation": False})
    parts = md["Topics"][0]["Partitions"]
    return int(parts[0]["LeaderId"]) if parts else -1


def test_idempotent_acks_all_survives_leader_kill() -> None:
    with kafka_cluster(brokers=3, settings={
            "broker.session.timeout.ms": 2000, "broker.heartbeat.interval.ms": 300,
            "min.insync.replicas": 2}) as (pc, ports):
        bootstrap = ",".join(f"127.0.0.1:{p}" for p in ports.values())
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic("fo", 1, 3)], operation_timeout=15)["fo"].result(20)
        wait_until(lambda: _leader(ports[101], "fo") >= 0, 20, "a leader for fo",
                   interval_s=0.1)

        acked: list[int] = []
        failed: list[Any] = []

        def delivered(err: Any, msg: Any) -> None:
            if err is None:
                acked.append(int(msg.value()))
            else:
                failed.append(err)

        producer = ck.Producer({
            "bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
            "linger.ms": 2, "batch.num.messages": 100, "message.timeout.ms": 60000,
            "retry.backoff.ms": 100, "topic.metadata.refresh.interval.ms": 1000})
        n = 6000

        def produce(values: range) -> None:
            for i in values:
                while True:
                    try:
                        producer.produce("fo", key=b"k", value=b"%d" % i,
                                         on_delivery=delivered)
                        break
                    except BufferError:
                        producer.poll(0.05)
                producer.poll(0)

        produce(range(0, n // 2))
        deadline = time.monotonic() + 30
        while len(acked) < 500:  # some acknowledged, the rest in flight: kill the leader
            assert time.monotonic() < deadline, "nothing acknowledged"
            producer.poll(0.001)
        killed = _leader(ports[101], "fo")
        pc.kill(killed, signal.SIGKILL)
        assert len(producer) > 0, "nothing was in flight when the leader died"
        produce(range(n // 2, n))
        assert producer.flush(90) == 0, "records left unacknowledged"
        assert not failed, failed[:3]
        survivor = next(p for nid, p in ports.items() if nid != killed)
        got = consume_partition(survivor, "fo", len(acked), lambda m: int(m.value()))
        assert sorted(acked) == list(range(n))
        assert got == list(range(n)), "records lost, duplicated or reordered"
