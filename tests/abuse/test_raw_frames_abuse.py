"""Abuse probes for raw-form frames (issue 20 item 4) against real processes: one
controller and two brokers, a topic replicated on both (its follower fetches in the
raw form). Malformed raw frames sent to the leader, each on its own connection, are
refused with an error naming the problem (or the connection closed when no
correlation id was readable); the broker stays up, a raw produce request written by
hand is stored, and every acknowledged record, written before and after the probes
by the client library (raw frames too), is read back from both replicas' leader."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import msgpack
import pytest

from dmq.cli.dev import ensure_topic
from dmq.client import Consumer, Producer, TopicPartition
from dmq.log.batch import build_batch
from dmq.protocol.api import ApiKey
from dmq.protocol.codec import RAW_FLAG, RAW_SECTION_EXT, VectoredBody, encode_request_raw
from dmq.protocol.errors import ErrorCode
from tests.abuse.support import read_frame
from tests.support.procs import ProcessCluster

pytestmark = pytest.mark.slow

TOPIC = "raw"


def _ref(off: int, length: int, code: int = RAW_SECTION_EXT) -> msgpack.ExtType:
    return msgpack.ExtType(code, struct.pack(">II", off, length))


def _raw(obj: Any, area: bytes, word_delta: int = 0) -> bytes:
    """A raw frame; with `word_delta` < 0 its length word (and what is sent) stops
    short of the sections its header references."""
    header = msgpack.packb(obj, use_bin_type=True)
    n = 4 + len(header) + len(area) + word_delta
    data = struct.pack(">II", RAW_FLAG | n, len(header)) + header + area
    return data[:4 + n]


def _produce(cid: int, records: Any) -> list[Any]:
    return [int(ApiKey.PRODUCE), 0, cid, "abuse",
            {"acks": 1, "timeout_ms": 5000, "topics": [[TOPIC, [[0, -1, records]]]]}]


def _send(port: int, data: bytes) -> Any:
    """`data` on a new connection; the decoded answer, or None if the node hung up."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        return read_frame(s)


async def _write(bootstrap: str, values: list[bytes]) -> None:
    async with Producer(bootstrap, acks="all", linger_ms=1) as p:
        handles = [await p.send(TOPIC, v, partition=0) for v in values]
        await p.flush()
        for h in handles:
            h.result()


async def _read_all(bootstrap: str, n: int) -> list[bytes]:
    out: list[bytes] = []
    async with Consumer(bootstrap, auto_offset_reset="earliest") as c:
        c.assign([TopicPartition(TOPIC, 0)])
        for _ in range(100):
            got = await c.getmany(timeout_ms=300)
            out += [r.value for recs in got.values() for r in recs]
            if len(out) >= n:
                break
    return out


def test_malformed_raw_frames_are_refused_and_the_cluster_keeps_serving() -> None:
    with ProcessCluster(controllers=1, brokers=2) as pc:
        pc.start()
        before = [b"before-%d" % i + b"." * 20_000 for i in range(20)]
        asyncio.run(ensure_topic(pc.bootstrap, TOPIC, 1, 2, timeout_s=30))
        asyncio.run(_write(pc.bootstrap, before))
        batch = build_batch([(None, b"by-hand")], timestamp_ms=1_700_000_000_000)
        n = len(batch)
        for port in (pc.nodes[b].port for b in pc.broker_ids):
            probes = [  # (frame, what the error names)
                (_raw(_produce(1, _ref(0, n + 1)), batch), "runs past the section area"),
                (_raw(_produce(2, [_ref(0, n), _ref(1, n)]), batch + batch),
                 "where the next one starts at"),
                (_raw(_produce(3, _ref(0, n)), batch + b"xyz"),
                 "references cover"),
                (_raw(_produce(4, _ref(0, n, code=9)), batch), "ext type 9"),
                (_raw(_produce(5, _ref(0, n)), batch, word_delta=-5),
                 "runs past the section area"),
                (_raw([int(ApiKey.PRODUCE), _ref(0, n), 6, "x", {}], batch),
                 "bad request header field types"),
            ]
            for data, why in probes:
                answer = _send(port, data)
                assert answer is not None and answer[1] != 0 and why in answer[2]["msg"], \
                    (why, answer)
            # no readable correlation id: the connection is closed
            assert _send(port, struct.pack(">I", RAW_FLAG | 3) + b"abc") is None
            assert _send(port, struct.pack(">I", RAW_FLAG | 0x7FFF_FFFF)) is None
            assert _send(port, struct.pack(">II", RAW_FLAG | 10, 999) + b"." * 6) is None
        # a well-formed raw produce written by hand is stored, on the leader
        answers = [_send(pc.nodes[b].port, b"".join(encode_request_raw(
            ApiKey.PRODUCE, 0, 7, "abuse", VectoredBody(
                acks=1, timeout_ms=5000, topics=[[TOPIC, [[0, -1, batch]]]]))))
            for b in pc.broker_ids]
        rows = [a[2]["topics"][0][1][0] for a in answers]
        assert sorted(r[1] for r in rows) == [0, int(ErrorCode.NOT_LEADER_OR_FOLLOWER)], rows
        for b in pc.broker_ids:
            assert pc.nodes[b].alive, pc.dump_logs()
        after = [b"after-%d" % i + b"." * 20_000 for i in range(20)]
        asyncio.run(_write(pc.bootstrap, after))
        got = asyncio.run(_read_all(pc.bootstrap, 41))
        assert got == [*before, b"by-hand", *after]
        for b in pc.broker_ids:
            assert pc.nodes[b].alive, pc.dump_logs()
