"""Both record formats on the same brokers: what dmq's client writes, Kafka clients
read (converted by the Kafka listener), and what Kafka clients write, dmq's client
reads (Kafka records decoded by the client), with keys, headers and timestamps."""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dmq.cli.dev import ensure_topic
from dmq.client import Consumer, Producer, TopicPartition
from tests.kafka.support import consume_partition, kafka_cluster, needs_kcat
from tests.support.procs import ProcessCluster

ck = pytest.importorskip("confluent_kafka")

pytestmark = pytest.mark.slow
T0 = 1_700_000_000_000


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[ProcessCluster, int]]:
    with kafka_cluster(combined=True) as (pc, ports):
        yield pc, ports[1]


def _records(seed: str, n: int) -> list[tuple[bytes | None, bytes, list[tuple[str, bytes]],
                                              int]]:
    rng = random.Random(seed)
    return [(None if i % 5 == 0 else b"key-%d" % i, rng.randbytes(rng.randrange(0, 300)),
             [("n", b"%d" % i), ("bin", rng.randbytes(4))] if i % 3 else [], T0 + i)
            for i in range(n)]


async def _dmq_produce(bootstrap: str, topic: str, records: list[Any], compression: str | None
                       ) -> None:
    await ensure_topic(bootstrap, topic, 1, 1, timeout_s=30)
    async with Producer(bootstrap, acks="all", linger_ms=5,
                        compression_type=compression) as p:
        handles = [await p.send(topic, value, key=key, partition=0, headers=headers,
                                timestamp_ms=ts) for key, value, headers, ts in records]
        await p.flush()
        for h in handles:
            h.result()


async def _dmq_consume(bootstrap: str, topic: str, n: int) -> list[Any]:
    got: list[Any] = []
    async with Consumer(bootstrap, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition(topic, 0)])
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            for recs in (await c.getmany(timeout_ms=500)).values():
                got += [(r.offset, r.key, r.value, [tuple(h) for h in r.headers], r.timestamp)
                        for r in recs]
    return got


@pytest.mark.parametrize("compression", [None, "zstd", "lz4"])
def test_dmq_produce_confluent_consume(node: tuple[ProcessCluster, int],
                                       compression: str | None) -> None:
    pc, port = node
    topic = f"from-dmq-{compression}"
    records = _records(topic, 2000)
    asyncio.run(_dmq_produce(pc.bootstrap, topic, records, compression))
    got = consume_partition(port, topic, len(records), lambda m: (
        m.key(), m.value(), m.headers() or [], m.timestamp()[1]))
    assert got == [(k, v, h, ts) for k, v, h, ts in records]


@pytest.mark.parametrize("compression", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_confluent_produce_dmq_consume(node: tuple[ProcessCluster, int],
                                       compression: str) -> None:
    pc, port = node
    topic = f"from-kafka-{compression}"
    asyncio.run(ensure_topic(pc.bootstrap, topic, 1, 1, timeout_s=30))
    records = _records(topic, 2000)
    producer = ck.Producer({"bootstrap.servers": f"127.0.0.1:{port}", "acks": "all",
                            "enable.idempotence": True, "compression.type": compression,
                            "linger.ms": 5})
    for key, value, headers, ts in records:
        producer.produce(topic, value=value, key=key, headers=headers or None, partition=0,
                         timestamp=ts)
    assert producer.flush(30) == 0
    got = asyncio.run(_dmq_consume(pc.bootstrap, topic, len(records)))
    assert got == [(i, k, v, h, ts) for i, (k, v, h, ts) in enumerate(records)]


@needs_kcat
def test_kcat_and_dmq_both_ways(node: tuple[ProcessCluster, int]) -> None:
    pc, port = node
    records = [(b"a", b"from dmq", [("h", b"1")], T0)]
    asyncio.run(_dmq_produce(pc.bootstrap, "both", records, None))
    subprocess.run(["kcat", "-b", f"127.0.0.1:{port}", "-P", "-t", "both", "-p", "0", "-K:",
                    "-H", "h=2"], input="b:from kcat\n", text=True, timeout=30, check=True)
    out = subprocess.run(["kcat", "-b", f"127.0.0.1:{port}", "-C", "-t", "both", "-e", "-q",
                          "-f", "%o %k %s %h\n"], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    assert out.splitlines() == ["0 a from dmq h=1", "1 b from kcat h=2"]
    got = asyncio.run(_dmq_consume(pc.bootstrap, "both", 2))
    assert [(o, k, v, h) for o, k, v, h, _ in got] == [
        (0, b"a", b"from dmq", [("h", b"1")]), (1, b"b", b"from kcat", [("h", b"2")])]
    assert got[0][4] == T0
