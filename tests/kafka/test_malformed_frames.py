"""Malformed Kafka input against a live broker: each bad frame closes that one
connection (with one log line) and the node keeps serving both listeners: Kafka
clients on the Kafka port, dmq's protocol on its own port."""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Iterator

import pytest

from dmq.client import Admin
from dmq.kafka.codec import encode_request
from tests.kafka.support import KafkaConn, kafka_cluster
from tests.support.procs import ProcessCluster
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node() -> Iterator[tuple[ProcessCluster, int]]:
    with kafka_cluster(combined=True) as (pc, ports):
        yield pc, ports[1]


def _metadata_v12() -> bytes:
    return encode_request("Metadata", 12, 5, "bad", {"Topics": [{"Name": "abc"}]})


def _cases() -> list[tuple[str, bytes]]:
    rng = random.Random(17)
    good = _metadata_v12()
    body = good[4:]
    cases = [
        ("size over the frame limit", struct.pack(">i", 2**31 - 1) + b"\0" * 16),
        ("negative size", struct.pack(">i", -1) + b"\0" * 16),
        ("size below a header", struct.pack(">i", 3) + b"abc"),
        ("truncated header", struct.pack(">i", 6) + body[:6]),
        ("header only, body missing", struct.pack(">i", 17) + body[:17]),
        ("unknown api key", struct.pack(">i", 10) + struct.pack(">hhih", 999, 0, 1, -1)),
        ("produce version below the window", struct.pack(">i", 10)
         + struct.pack(">hhih", 0, 2, 1, -1)),
        ("array count past the end", struct.pack(">i", len(body[:18]) + 4)
         + body[:18] + b"\xff\xff\xff\x0f"),
        ("random bytes", bytes(rng.randrange(256) for _ in range(64))),
    ]
    for i in range(5):  # fuzzed sizes with a body that does not match them
        size = rng.choice([rng.randrange(8, 64), rng.randrange(1 << 20, 1 << 31)])
        cases.append((f"fuzzed size {i}", struct.pack(">i", size)
                      + bytes(rng.randrange(256) for _ in range(min(size, 40)))))
    return cases


@pytest.mark.parametrize(("what", "data"), _cases(), ids=[c[0] for c in _cases()])
def test_malformed_frame_closes_only_that_connection(
        node: tuple[ProcessCluster, int], what: str, data: bytes) -> None:
    pc, port = node
    with KafkaConn(port, timeout_s=3) as bystander, KafkaConn(port, timeout_s=3) as bad:
        assert bystander.request("ApiVersions", 3, {})["ErrorCode"] == 0
        bad.sock.sendall(data)
        if what.startswith("fuzzed size") or what == "header only, body missing":
            # a size that promises more bytes than sent: the broker waits for them
            # (bounded by the frame limit); end the frame early instead
            bad.sock.shutdown(1)
        assert bad.closed_by_peer(), f"{what}: connection left open"
        # the other connection on the same listener is untouched
        md = bystander.request("Metadata", 12, {"Topics": None})
        assert [b["NodeId"] for b in md["Brokers"]] == [1]
    assert pc.nodes[1].alive
    # and dmq's own listener still answers
    asyncio.run(_dmq_listener_answers(pc))


async def _dmq_listener_answers(pc: ProcessCluster) -> None:
    async with Admin(pc.bootstrap) as admin:
        await asyncio.wait_for(admin.list_topics(), 10)


def test_violation_is_logged_once_per_connection(node: tuple[ProcessCluster, int]) -> None:
    pc, port = node
    before = pc.nodes[1].log_text().count("Kafka connection from")
    with KafkaConn(port, timeout_s=3) as bad:
        bad.sock.sendall(struct.pack(">i", 10) + struct.pack(">hhih", 999, 0, 1, -1))
        assert bad.closed_by_peer()
    def logged() -> str | None:
        text = pc.nodes[1].log_text()
        return text if text.count("Kafka connection from") > before else None

    text = wait_until(logged, 5, "the violation logged", interval_s=0.02)
    assert text.count("Kafka connection from") == before + 1
    assert "unknown API key 999" in text
