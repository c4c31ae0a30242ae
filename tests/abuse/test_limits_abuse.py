"""Abuse probes for resource limits (issue #25 items 5, 7, 8 group half, 13 name half),
against a real cluster of 3 controllers and 3 brokers.

- 5: a topic too large for the brokers' descriptors is refused at create time
  (`max.partition.replicas.per.broker`, set low here instead of creating 20,000
  partitions); nodes raise their soft open-files limit at start; a broker out of
  descriptors isolates the logs it cannot open and recovers them without a new
  metadata image once descriptors are back.
- 7: a validate-only CreateTopics of 10 topics x 100,000 partitions is refused before
  any placement work.
- 8: offset-commit metadata past `offset.metadata.max.bytes` and oversized group ids
  are refused before they reach the Raft log.
- 13: the topic name "nl\\n" is refused.

Each probe ends with the acceptance check: an active controller within 10 s and every
acknowledged canary record readable.
"""

from __future__ import annotations

import asyncio
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from dmq.client import Producer
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import ErrorCode
from tests.abuse.support import (
    assert_cluster_healthy,
    cluster_status,
    request_raw,
    write_canary,
)
from tests.support.procs import ProcessCluster
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.slow

REPLICA_CAP = 60
START_SOFT_NOFILE = 1024


@pytest.fixture(scope="module")
def cluster() -> Iterator[ProcessCluster]:
    """The nodes start with a soft open-files limit below the hard one (inherited from
    this process, lowered only while they start), so the raise at start is visible."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    pc = ProcessCluster(controllers=3, brokers=3,
                        settings={"max.partition.replicas.per.broker": REPLICA_CAP})
    with pc:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, START_SOFT_NOFILE), hard))
        try:
            pc.start()
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        yield pc


@pytest.fixture(scope="module")
def canary(cluster: ProcessCluster) -> list[bytes]:
    return asyncio.run(write_canary(cluster.bootstrap))


def _controller_port(pc: ProcessCluster) -> int:
    status = cluster_status(pc)
    return pc.nodes[int(status["controller_id"])].port


def _request(pc: ProcessCluster, api_key: ApiKey, body: dict[str, Any],
             timeout_s: float = 30.0) -> list[Any]:
    """One raw request to the active controller; [correlation_id, error, body]."""
    resp = request_raw(_controller_port(pc), [int(api_key), 0, 7, "abuse", body],
                       timeout_s=timeout_s)
    assert resp is not None, "the controller closed the connection without answering"
    return list(resp)


def _dmq(pc: ProcessCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dmq.cli", *args, "--bootstrap", pc.bootstrap],
                          capture_output=True, text=True, timeout=60)


async def _wait_log(pc: ProcessCluster, node_id: int, pattern: str,
                    timeout_s: float = 15.0) -> None:
    await async_wait_until(lambda: re.search(pattern, pc.nodes[node_id].log_text()),
                           timeout_s, f"node {node_id} logging {pattern!r}", interval_s=0.1)


def _wait_metadata_quiet(pc: ProcessCluster, quiet_s: float = 2.0,
                         timeout_s: float = 20.0) -> None:
    """Until the controller's metadata version has not moved for `quiet_s` (brokers
    long-poll it, so by then each has fetched and applied the last image). A quiet
    window by design: which writes follow a change is the controller's business, so
    there is no last one to wait for by name."""
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        version = int(cluster_status(pc)["metadata_version"])
        if version != last:
            last, since = version, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.2)
    raise AssertionError(f"metadata version still moving after {timeout_s} s")


# ---- item 5 ---------------------------------------------------------------------------

async def test_nodes_raise_their_soft_open_files_limit_at_start(
        cluster: ProcessCluster, canary: list[bytes]) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= START_SOFT_NOFILE:
        pytest.skip(f"hard open-files limit {hard} leaves nothing to raise")
    for node in cluster.nodes.values():
        assert node.proc is not None
        soft_now, hard_now = resource.prlimit(node.proc.pid, resource.RLIMIT_NOFILE)
        assert (soft_now, hard_now) == (hard, hard), node.node_id
        assert f"open files limit {hard} (soft), {hard} (hard)" in node.log_text()
    await assert_cluster_healthy(cluster, canary)


async def test_topic_past_the_replica_cap_is_refused_at_create_time(
        cluster: ProcessCluster, canary: list[bytes]) -> None:
    """The reproduction, scaled down: more partitions than the brokers may host."""
    out = _dmq(cluster, "topics", "create", "big", "--partitions", str(4 * REPLICA_CAP),
               "--replication-factor", "1")
    assert out.returncode != 0, out.stdout
    assert "max.partition.replicas.per.broker" in out.stdout + out.stderr
    # validate-only answers the same, and the 20,000 is refused by the request
    # bound before any placement
    _, err, body = _request(cluster, ApiKey.CREATE_TOPICS, {
        "topics": [{"name": "big", "partitions": 4 * REPLICA_CAP, "replication_factor": 1}],
        "validate_only": True})
    assert err == 0
    (row,) = body["topics"]
    assert row["error"] == ErrorCode.POLICY_VIOLATION
    assert "max.partition.replicas.per.broker" in row["msg"] and str(REPLICA_CAP) in row["msg"]
    out = _dmq(cluster, "topics", "create", "big", "--partitions", "20000",
               "--replication-factor", "1")
    assert out.returncode != 0 and "max.partitions.per.request" in out.stdout + out.stderr
    listed = _dmq(cluster, "topics", "list")
    assert listed.returncode == 0 and "big" not in listed.stdout.split()
    await assert_cluster_healthy(cluster, canary)


async def test_broker_out_of_descriptors_recovers_its_logs_without_a_new_image(
        cluster: ProcessCluster, canary: list[bytes]) -> None:
    """Broker 101 runs out of descriptors (its soft limit lowered to what it holds) while
    a topic is created: its log for that topic cannot be made. Once descriptors are back,
    with no metadata change at all, the partition must become writable: the broker
    retries it rather than waiting for an image that may never come."""
    broker = cluster.nodes[101]
    assert broker.proc is not None
    pid = broker.proc.pid
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    in_use = len(os.listdir(f"/proc/{pid}/fd"))
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (in_use, hard))
    try:
        out = _dmq(cluster, "topics", "create", "after", "--partitions", "3",
                   "--replication-factor", "1")
        assert out.returncode == 0, out.stdout + out.stderr
        await _wait_log(cluster, 101, r"after-\d.*(Too many open files|unavailable)")
        # any later image would make the broker try again by itself: let every write
        # that follows the creation reach it while it is still out of descriptors
        await asyncio.get_running_loop().run_in_executor(None, _wait_metadata_quiet, cluster)
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
    # not idempotent: a producer id allocation is a metadata write, a new image
    async with Producer(cluster.bootstrap, acks="all", linger_ms=1, enable_idempotence=False,
                        delivery_timeout_ms=40_000) as producer:
        handles = [await producer.send("after", b"v%d" % p, partition=p) for p in range(3)]
        await producer.flush()
        for h in handles:
            h.result()
    await assert_cluster_healthy(cluster, canary)


# ---- item 7 ---------------------------------------------------------------------------

async def test_validate_only_create_of_a_million_partitions_is_refused_up_front(
        cluster: ProcessCluster, canary: list[bytes]) -> None:
    topics = [{"name": f"huge{i}", "partitions": 100_000, "replication_factor": 1}
              for i in range(10)]
    _, err, body = _request(cluster, ApiKey.CREATE_TOPICS,
                            {"topics": topics, "validate_only": True})
    assert err == 0
    assert [r["error"] for r in body["topics"]] == [ErrorCode.INVALID_REQUEST] * 10
    assert all("max.partitions.per.request" in r["msg"] for r in body["topics"])
    await assert_cluster_healthy(cluster, canary)


# ---- item 8 (group half) ----------------------------------------------------------------

async def test_huge_commit_metadata_and_group_ids_are_refused(
        cluster: ProcessCluster, canary: list[bytes]) -> None:
    big = "m" * (1 << 20)
    _, err, body = _request(cluster, ApiKey.OFFSET_COMMIT, {
        "group_id": "g-abuse", "member_id": "", "member_epoch": -1,
        "topics": [["canary", [[0, 1, big], [1, 1, "small"]]]]})
    assert err == 0
    assert body["topics"] == [["canary", [[0, int(ErrorCode.OFFSET_METADATA_TOO_LARGE)],
                                          [1, 0]]]]
    _, err, body = _request(cluster, ApiKey.OFFSET_FETCH, {"group_id": "g-abuse"})
    assert err == 0 and body["topics"] == [["canary", [[1, 1, "small", 0]]]]
    _, err, _ = _request(cluster, ApiKey.OFFSET_COMMIT, {
        "group_id": "g" * 100_000, "member_id": "", "member_epoch": -1,
        "topics": [["canary", [[0, 1, None]]]]})
    assert err == ErrorCode.INVALID_GROUP_ID
    _, err, _ = _request(cluster, ApiKey.CONSUMER_GROUP_HEARTBEAT, {
        "group_id": "g-abuse", "member_id": "", "member_epoch": 0,
        "instance_id": "i" * 100_000, "topics": ["canary"]})
    assert err == ErrorCode.INVALID_REQUEST
    await assert_cluster_healthy(cluster, canary)


# ---- item 13 (name half) ----------------------------------------------------------------

async def test_topic_name_ending_in_newline_is_refused(
        cluster: ProcessCluster, canary: list[bytes]) -> None:
    _, err, body = _request(cluster, ApiKey.CREATE_TOPICS, {
        "topics": [{"name": "nl\n", "partitions": 1, "replication_factor": 1}]})
    assert err == 0
    (row,) = body["topics"]
    assert row["error"] == ErrorCode.INVALID_TOPIC, row
    listed = _dmq(cluster, "topics", "list")
    assert listed.returncode == 0 and "nl" not in listed.stdout.split()
    await assert_cluster_healthy(cluster, canary)
