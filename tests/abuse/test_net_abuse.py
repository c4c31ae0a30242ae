"""Network abuse against real `dmq server` processes (issue #25, items 3, 4 and 9).

- Item 3: inter-node APIs (Raft, broker registration and heartbeats, metadata fetch,
  replica fetch, controller notices) from a connection that did not identify itself as
  a configured node, or that speaks for another node than the one it identified as,
  are refused with CLUSTER_AUTHORIZATION_FAILED and change nothing.
- Item 4: pipelined fetches whose large answers are never read hold at most the
  per-connection response bound (plus one answer) in the broker, not one answer each;
  a closed connection gives back what was queued for it.
- Item 9: partial frames are held within the node-wide request budget (plus one frame);
  connections from one address are capped; idle ones are closed.

Memory is measured as the broker's RSS from /proc/<pid>/status after the probe's bytes
have been handled (two round trips on another connection after the last write), and
the bound is a generous multiple of the configured limits, never a time.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from dmq.cli.dev import ensure_topic
from dmq.client import Admin, Producer
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import ErrorCode
from tests.abuse.support import (
    assert_cluster_healthy,
    canary_cluster,
    cluster_status,
    frame,
    read_canary,
    request_raw,
)
from tests.abuse.wire import call, identify
from tests.support.procs import ProcessCluster
from tests.support.waiting import until

pytestmark = pytest.mark.slow

MiB = 1 << 20
SEND_HIGH = 8 * MiB  # socket.send.buffer.high.bytes: the per-connection response bound
BUDGET = 64 * MiB  # queued.max.request.bytes
PER_IP = 300  # max.connections.per.ip
IDLE_MS = 5000  # connections.max.idle.ms
SETTINGS = {"socket.send.buffer.high.bytes": SEND_HIGH, "queued.max.request.bytes": BUDGET,
            "max.connections.per.ip": PER_IP, "connections.max.idle.ms": IDLE_MS}
DENIED = int(ErrorCode.CLUSTER_AUTHORIZATION_FAILED)


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[ProcessCluster, list[bytes]]]:
    with canary_cluster(SETTINGS) as started:
        yield started


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def pid_of(pc: ProcessCluster, node_id: int) -> int:
    proc = pc.nodes[node_id].proc
    assert proc is not None and proc.poll() is None, f"node {node_id} is not running"
    return proc.pid


def settle(port: int) -> None:
    """Two round trips on a fresh connection: once the second is answered, the node's
    event loop has run past everything that arrived before the first was sent."""
    for _ in range(2):
        assert request_raw(port, [int(ApiKey.API_VERSIONS), 0, 1, "probe", {}]) is not None


def code(answer: Any) -> int:
    assert isinstance(answer, list) and len(answer) == 3, f"no answer: {answer!r}"
    return int(answer[1])


# ---- item 3 ---------------------------------------------------------------------------

async def test_inter_node_apis_need_a_connection_identified_as_that_node(
        cluster: tuple[ProcessCluster, list[bytes]]) -> None:
    pc, canary = cluster
    status = cluster_status(pc)
    leader = status["controller_id"]
    term = status["controller_term"]
    follower = next(i for i in pc.controller_ids if i != leader)
    fport, lport = pc.nodes[follower].port, pc.nodes[leader].port

    # issue item 1's forged Raft message and item 2's forged append, from a stranger
    forged = {"from": leader, "msg": [5, leader, 1, 2**64 - 1, 0, 0]}
    answer = request_raw(fport, [int(ApiKey.RAFT_MESSAGE), 0, 1, "x", forged])
    assert code(answer) == DENIED and "NODE_HELLO" in answer[2]["msg"]
    append = {"from": leader, "msg": [3, leader, follower, term, 0, term, 1,
                                      [[term, 0, b"\xc1forged"]]]}
    assert code(request_raw(fport, [int(ApiKey.RAFT_APPEND_ENTRIES), 0, 2, "x", append])) \
        == DENIED

    # a broker's identity does not make Raft messages acceptable
    with identify(fport, 101) as s:
        assert code(call(s, [int(ApiKey.RAFT_MESSAGE), 0, 4, "x", forged])) == DENIED
        assert code(call(s, [int(ApiKey.RAFT_MESSAGE), 0, 5, "x",
                             {**forged, "from": 101}])) == DENIED

    # broker APIs: only for the broker the connection identified as
    beat = {"broker_id": 102, "broker_epoch": 1, "metadata_version": 0}
    assert code(request_raw(lport, [int(ApiKey.BROKER_HEARTBEAT), 0, 6, "x", beat])) == DENIED
    with identify(lport, 101) as s:
        assert code(call(s, [int(ApiKey.BROKER_HEARTBEAT), 0, 7, "x", beat])) == DENIED
        assert code(call(s, [int(ApiKey.CONTROLLED_SHUTDOWN), 0, 8, "x",
                             {"broker_id": 102, "broker_epoch": 1}])) == DENIED
        assert code(call(s, [int(ApiKey.METADATA_FETCH), 0, 9, "x",
                             {"broker_id": 102, "version": 0}])) == DENIED
        assert code(call(s, [int(ApiKey.BROKER_REGISTRATION), 0, 10, "x",
                             {"broker_id": 102, "host": "127.0.0.1", "port": 1,
                              "incarnation_id": "probe"}])) == DENIED
        assert code(call(s, [int(ApiKey.ALTER_PARTITION), 0, 11, "x",
                             {"broker_id": 102, "broker_epoch": 1, "topics": []}])) == DENIED

    # replica fetches and controller notices on a broker
    bport = pc.nodes[101].port
    fetch = {"max_wait_ms": 0, "min_bytes": 1, "max_bytes": MiB, "replica_id": 102,
             "topics": [["canary", [[0, 0, -1, MiB]]]]}
    assert code(request_raw(bport, [int(ApiKey.FETCH), 0, 12, "x", fetch])) == DENIED
    with identify(bport, 103) as s:
        assert code(call(s, [int(ApiKey.FETCH), 0, 13, "x", fetch])) == DENIED
    notice = {"controller_id": follower, "term": 2**62, "host": "127.0.0.1", "port": 1}
    assert code(request_raw(bport, [int(ApiKey.CONTROLLER_CHANGED), 0, 14, "x", notice])) \
        == DENIED
    # a consumer's fetch on the same broker is served as always
    assert code(request_raw(bport, [int(ApiKey.FETCH), 0, 15, "x",
                                    {**fetch, "replica_id": -1}])) == 0

    # an id the configuration does not list cannot be claimed
    with pytest.raises(AssertionError, match="refused"):
        identify(lport, 999)

    after = cluster_status(pc)
    assert after["controller_term"] < 2**31
    assert {b["broker_id"]: b["state"] for b in after["brokers"]} == {
        b: "ONLINE" for b in pc.broker_ids}
    await assert_cluster_healthy(pc, canary)


# ---- item 4 ---------------------------------------------------------------------------

async def _bulky_partition(pc: ProcessCluster, record_bytes: int) -> int:
    """A one-partition topic holding three records of `record_bytes`; its leader."""
    await ensure_topic(pc.bootstrap, "bulky", 1, 1)
    async with Producer(pc.bootstrap, acks="all", linger_ms=0,
                        max_request_size=2 * record_bytes) as p:
        handles = [await p.send("bulky", bytes([i]) * record_bytes, partition=0)
                   for i in range(3)]
        await p.flush()
        for h in handles:
            h.result()
    async with Admin(pc.bootstrap) as admin:
        image = await admin.metadata(["bulky"])
    return int(image.topics["bulky"].partitions[0].leader)


def _non_reader(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    s.connect(("127.0.0.1", port))
    return s


async def test_unread_fetch_responses_are_bounded_per_connection(
        cluster: tuple[ProcessCluster, list[bytes]]) -> None:
    pc, canary = cluster
    record = 4 * MiB
    leader = await _bulky_partition(pc, record)
    port, pid = pc.nodes[leader].port, pid_of(pc, leader)
    settle(port)
    rss0, fds0 = rss_bytes(pid), open_fds(pid)
    fetch = {"max_wait_ms": 0, "min_bytes": 1, "max_bytes": 50 * MiB,
             "topics": [["bulky", [[0, 0, -1, 50 * MiB]]]]}
    burst = b"".join(frame([int(ApiKey.FETCH), 0, cid, "probe", fetch]) for cid in range(60))
    socks = [_non_reader(port) for _ in range(2)]
    try:
        for s in socks:
            s.sendall(burst)  # 60 fetches of 12 MiB each, in one write, never read
        settle(port)
        grown = rss_bytes(pid) - rss0
        # each connection: the response bound plus one answer (3 x 4 MiB); before the
        # fix every answer was queued: 2 x 60 x 12 MiB = 1.4 GiB
        bound = 2 * (SEND_HIGH + 3 * record) + 100 * MiB
        print(f"\nunread fetches: broker RSS +{grown / MiB:.0f} MiB (bound {bound / MiB:.0f})")
        assert grown < bound, f"broker RSS grew {grown / MiB:.0f} MiB (bound {bound / MiB:.0f})"
    finally:
        for s in socks:  # close with unread data: RST, as the client did
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
    # the closed connections and what was queued for them are gone
    await _until(lambda: open_fds(pid) <= fds0 + 5, "probe connections closed")
    await _until(lambda: rss_bytes(pid) < rss0 + 2 * (SEND_HIGH + 3 * record) + 100 * MiB,
                 "queued answers released")
    await assert_cluster_healthy(pc, canary)


async def _until(cond: Any, what: str, timeout_s: float = 20.0) -> None:
    await until(cond, what, timeout_s, poll_s=0.05)


# ---- item 9 ---------------------------------------------------------------------------

def _push_partial_frame(sock: socket.socket, declared: int, data: memoryview,
                        sent: list[int]) -> None:
    """Send a frame header and part of its body; give up when the node stops reading."""
    try:
        sock.sendall(struct.pack(">I", declared))
        sock.sendall(data)
        sent.append(len(data))
    except (TimeoutError, OSError):
        sent.append(-1)


async def test_partial_frames_are_held_within_the_request_budget(
        cluster: tuple[ProcessCluster, list[bytes]]) -> None:
    pc, canary = cluster
    node = pc.broker_ids[-1]
    port, pid = pc.nodes[node].port, pid_of(pc, node)
    settle(port)
    rss0 = rss_bytes(pid)
    body = memoryview(bytes(90 * MiB))
    socks: list[socket.socket] = []
    sent: list[int] = []
    try:
        threads = []
        for _ in range(10):  # as in the issue: a length of 100 MiB-1, then 90 MiB
            s = socket.create_connection(("127.0.0.1", port))
            s.settimeout(3.0)
            socks.append(s)
            t = threading.Thread(target=_push_partial_frame,
                                 args=(s, 100 * MiB - 1, body, sent))
            t.start()
            threads.append(t)
        for t in threads:
            t.join(60)
        settle(port)
        grown = rss_bytes(pid) - rss0
        # one frame in progress always fits (100 MiB), the others wait unread; before
        # the fix all ten were buffered: ~900 MiB
        bound = 100 * MiB + BUDGET + 100 * MiB
        print(f"\npartial frames: node RSS +{grown / MiB:.0f} MiB (bound {bound / MiB:.0f})")
        assert grown < bound, f"node RSS grew {grown / MiB:.0f} MiB (bound {bound / MiB:.0f})"
        assert sum(1 for n in sent if n < 0) >= 8, "the node kept reading past its budget"
        assert "waits to receive a 104857599-byte request" in pc.nodes[node].log_text()
        # meanwhile the node serves everyone else
        assert set(canary) <= await read_canary(pc.bootstrap)
    finally:
        for s in socks:
            s.close()
    await assert_cluster_healthy(pc, canary)


async def test_connections_from_one_address_are_capped_and_idle_ones_closed(
        cluster: tuple[ProcessCluster, list[bytes]]) -> None:
    pc, canary = cluster
    node = pc.broker_ids[0]
    port, pid = pc.nodes[node].port, pid_of(pc, node)
    settle(port)
    fds0 = open_fds(pid)
    socks: list[socket.socket] = []
    try:
        for _ in range(2 * PER_IP):  # idle connections from one address (127.0.0.2)
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", port))
            socks.append(s)
        settle(port)
        print(f"\n{2 * PER_IP} connections from one address: +{open_fds(pid) - fds0} fds")
        assert open_fds(pid) - fds0 <= PER_IP + 10
        assert "connections open from 127.0.0.2 (max.connections.per.ip)" \
            in pc.nodes[node].log_text()
        # other addresses are still served
        assert code(request_raw(port, [int(ApiKey.API_VERSIONS), 0, 1, "x", {}])) == 0

        # silent connections are closed after connections.max.idle.ms
        def all_closed() -> bool:
            return open_fds(pid) <= fds0 + 5

        await _until(all_closed, "idle connections closed", IDLE_MS / 1000 + 20)
        for s in socks[:5]:
            s.settimeout(5)
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
    finally:
        for s in socks:
            s.close()
    await assert_cluster_healthy(pc, canary)
