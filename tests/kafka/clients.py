"""Helpers of the tests that drive confluent-kafka (librdkafka) against a dmq cluster:
the bootstrap string of its Kafka listeners, creating a topic until every broker serves
it, a producer of numbered records, a threaded group member, and the dmq CLI. Importing
this module skips the importing test module when confluent-kafka is not installed."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.kafka.support import KafkaConn
from tests.support.procs import ProcessCluster
from tests.support.waiting import wait_until

ck = pytest.importorskip("confluent_kafka")
from confluent_kafka.admin import AdminClient, NewTopic  # noqa: E402


def bootstrap(ports: dict[int, int]) -> str:
    return ",".join(f"127.0.0.1:{p}" for p in ports.values())


def create_topic(ports: dict[int, int], name: str, partitions: int, rf: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap(ports)})
    futures = admin.create_topics([NewTopic(name, partitions, rf)], operation_timeout=15)
    futures[name].result(20)
    # wait until every broker's image has leaders for it (Kafka clients retry anyway)
    def ready() -> bool:
        ok = True
        for port in ports.values():
            with KafkaConn(port) as conn:
                md = conn.request("Metadata", 12, {"Topics": [{"Name": name}],
                                                    "AllowAutoTopicCreation": False})
            t = md["Topics"][0]
            ok &= t["ErrorCode"] == 0 and len(t["Partitions"]) == partitions and all(
                p["LeaderId"] >= 0 for p in t["Partitions"])
        # and every leader serves its partition (its log is opened after the image)
        return ok and all(leader_serves(ports[p["LeaderId"]], name, p["PartitionIndex"])
                          for p in t["Partitions"])

    wait_until(ready, 20, f"topic {name} with leaders on every broker", interval_s=0.1)


def leader_serves(port: int, topic: str, partition: int) -> bool:
    with KafkaConn(port) as conn:
        answer = conn.request("ListOffsets", 7, {"ReplicaId": -1, "Topics": [
            {"Name": topic, "Partitions": [{"PartitionIndex": partition, "Timestamp": -1}]}]})
    return bool(answer["Topics"][0]["Partitions"][0]["ErrorCode"] == 0)


REPO = Path(__file__).resolve().parents[2]


def dmq_cli(pc: ProcessCluster, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "dmq.cli", *args, "--bootstrap",
                          pc.bootstrap], cwd=REPO, capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout


def produce(ports: dict[int, int], topic: str, count: int, partitions: int) -> None:
    producer = ck.Producer({"bootstrap.servers": bootstrap(ports), "acks": "all"})
    for i in range(count):
        producer.produce(topic, value=b"%d" % i, partition=i % partitions)
    assert producer.flush(20) == 0


class Member:
    """One confluent-kafka group consumer polling on its own thread."""

    def __init__(self, ports: dict[int, int], group: str, topic: str,
                 strategy: str = "range") -> None:
        self.consumer = ck.Consumer({
            "bootstrap.servers": bootstrap(ports), "group.id": group,
            "auto.offset.reset": "earliest", "enable.auto.commit": False,
            "session.timeout.ms": 6000, "heartbeat.interval.ms": 300,
            "partition.assignment.strategy": strategy})
        self.cooperative = strategy == "cooperative-sticky"
        self.records: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        self.owned: set[int] = set()
        self.commit_errors: list[int] = []
        # the callbacks run on the polling thread (librdkafka calls from another thread
        # could wait on that one)
        self.consumer.subscribe([topic], on_assign=self._assigned, on_revoke=self._revoked)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            msg = self.consumer.poll(0.1)
            if msg is not None and msg.error() is None:
                with self.lock:
                    self.records.append((msg.partition(), msg.offset()))
                try:
                    self.consumer.commit(message=msg, asynchronous=False)
                except ck.KafkaException as exc:  # e.g. fenced by a rebalance: re-read
                    self.commit_errors.append(exc.args[0].code())
        self.consumer.close()

    def _assigned(self, consumer: Any, partitions: list[Any]) -> None:
        with self.lock:  # cooperative: partitions added; eager: the whole assignment
            got = {tp.partition for tp in partitions}
            self.owned = self.owned | got if self.cooperative else got

    def _revoked(self, consumer: Any, partitions: list[Any]) -> None:
        with self.lock:
            self.owned = self.owned - {tp.partition for tp in partitions} \
                if self.cooperative else set()

    def assignment(self) -> set[int]:
        with self.lock:
            return set(self.owned)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)
