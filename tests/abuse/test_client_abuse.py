"""Client behaviour under faults and bad input, against real processes (issues 24 and 25):
a paused controller, a restarting broker, a closed port, a producer whose records can
never be delivered or never be sent, and consumers of partitions that do not exist.

Each test starts the smallest real cluster that reproduces its report; none sleeps to
synchronise (they wait on conditions with a deadline) and none asserts a wall-clock
bound: where a fix is about not waiting out a timeout, the timeout is made far longer
than the bounded wait for the answer, so only the fixed behaviour can meet it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dmq.cli.dev import ensure_topic, free_base_port
from dmq.client import Admin, Consumer, Producer, TopicPartition
from dmq.client.cluster import ClusterClient
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import request_once
from dmq.protocol.errors import (
    DmqError,
    LeaderNotAvailableError,
    MessageTooLargeError,
    RequestTimedOutError,
    UnknownTopicOrPartitionError,
)
from tests.support.procs import ProcessCluster, free_ports, run_group
from tests.support.tmpfs import tmpfs_data_dir, tmpfs_skip_reason
from tests.support.waiting import async_wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def _raft_status(pc: ProcessCluster, node_id: int) -> dict[str, Any] | None:
    try:
        return dict(await request_once("127.0.0.1", pc.nodes[node_id].port, ApiKey.RAFT_STATUS,
                                       {}, timeout_ms=500))
    except DmqError:
        return None


async def _leader(pc: ProcessCluster, among: list[int], deadline_s: float,
                  newer_than: int = -1) -> tuple[int, int]:
    """(leader id, term) once one of `among` reports itself LEADER in a term above
    `newer_than`; the time it was first seen is when the test observed the election."""
    async def find() -> tuple[int, int] | None:
        for st in await asyncio.gather(*(_raft_status(pc, n) for n in among)):
            if st and str(st.get("role", "")).upper() == "LEADER" and st["term"] > newer_than:
                return int(st["node_id"]) if "node_id" in st else -1, int(st["term"])
        return None

    return await async_wait_until(find, deadline_s, f"a leader among {among}", interval_s=0.02)


async def _lists_brokers(cluster: ClusterClient, n: int, retriable_ok: bool = False) -> bool:
    """Refresh metadata; True once it names `n` brokers. With `retriable_ok` a
    retriable error counts as "not yet" (any other fails the test)."""
    if len(cluster.brokers) >= n:
        return True
    try:
        await cluster.refresh()
    except DmqError as exc:
        if not (retriable_ok and exc.retriable):
            raise
        return False
    return len(cluster.brokers) >= n


async def test_request_waiting_on_a_paused_controller_is_resent_to_the_new_one(
        caplog: pytest.LogCaptureFixture) -> None:
    """Issue 24 item 2: INIT_PRODUCER_ID in flight to a controller that is then
    SIGSTOPped waited out its whole timeout although a new controller was active 0.6 s
    later. Now the client notices the new controller and re-sends there."""
    caplog.set_level(logging.INFO, logger="dmq.metadata.discovery")
    # far longer than the wait for the answer below: a request that waits it out
    # cannot be answered in time
    request_timeout_ms = 120_000
    with ProcessCluster(controllers=3) as pc:
        pc.start()
        ids = pc.controller_ids
        cluster = ClusterClient(pc.bootstrap, request_timeout_ms=request_timeout_ms)
        try:
            # the channel knows the active controller and holds a connection to it
            await cluster.controller_request(ApiKey.INIT_PRODUCER_ID, {})
            assert cluster.controller.controller is not None
            old = cluster.controller.controller
            old_term = int((await _raft_status(pc, old.node_id) or {}).get("term", -1))
            pc.signal(old.node_id, signal.SIGSTOP)
            loop = asyncio.get_running_loop()
            sent_at = loop.time()
            request = asyncio.ensure_future(
                cluster.controller_request(ApiKey.INIT_PRODUCER_ID, {}))
            others = [n for n in ids if n != old.node_id]
            await _leader(pc, others, 15, newer_than=old_term)
            elected_at = loop.time()
            body = await asyncio.wait_for(request, 30)
            done_at = loop.time()
            new = cluster.controller.controller
            assert body["producer_id"] >= 0
            assert new is not None and new.node_id != old.node_id, "answered by the old one?"
            print(f"election observed {elected_at - sent_at:.2f} s after the send; answered "
                  f"{done_at - elected_at:.2f} s after the election (request timeout "
                  f"{request_timeout_ms} ms)")
            # not waited out: the channel learnt of the new controller while the request
            # waited (its watch) and moved the request there
            assert f"active controller moved from {old.node_id} " in caplog.text
        finally:
            for n in ids:
                pc.signal(n, signal.SIGCONT)
            await cluster.close()


class _InOrder(random.Random):
    """Candidate addresses in the order given (the client shuffles them otherwise)."""

    def shuffle(self, x: Any) -> None:  # type: ignore[override]
        return None


async def test_restarting_broker_without_metadata_moves_the_client_to_another_node() -> None:
    """Issue 24 item 3: a broker that had just restarted answered METADATA with
    LEADER_NOT_AVAILABLE "broker has no metadata yet" and the client gave up although
    other nodes were healthy. Any retriable error from one node moves on to the next."""
    with ProcessCluster(controllers=1, brokers=2) as pc:
        pc.start()
        restarting, healthy = pc.broker_ids
        boot = f"127.0.0.1:{pc.nodes[healthy].port}"
        cluster = ClusterClient(boot)
        try:
            # the healthy broker has its metadata image (it names both brokers); until
            # registered and fed metadata, LEADER_NOT_AVAILABLE
            await async_wait_until(lambda: _lists_brokers(cluster, 2), 20, "both brokers listed",
                                   ignore=(LeaderNotAvailableError,))
        finally:
            await cluster.close()
        # the restarted broker cannot get metadata while the controller is paused
        pc.kill(restarting)
        ctl = pc.controller_ids[0]
        pc.signal(ctl, signal.SIGSTOP)
        try:
            pc.start(restarting)
            with pytest.raises(LeaderNotAvailableError, match="no metadata"):
                await request_once("127.0.0.1", pc.nodes[restarting].port, ApiKey.METADATA,
                                   {"topics": []}, timeout_ms=5000)
            order = f"127.0.0.1:{pc.nodes[restarting].port},{boot}"
            cluster = ClusterClient(order, rng=_InOrder())
            try:
                body = await cluster.any_request(ApiKey.METADATA, {"topics": []})
                assert {b[0] for b in body["brokers"]} == {restarting, healthy}
                await cluster.refresh()  # the same path every producer and consumer takes
                assert set(cluster.brokers) == {restarting, healthy}
            finally:
                await cluster.close()
        finally:
            pc.signal(ctl, signal.SIGCONT)


async def test_metadata_from_a_paused_broker_is_asked_elsewhere_too() -> None:
    """A paused node keeps its connection open: a metadata refresh sent to it waited the
    whole request timeout before the next node was asked (a producer then could not
    learn a new leader for that long). Now a silent node makes the client ask the next
    one as well."""
    # far longer than the wait for the refresh below: a refresh that waits on the paused
    # node for its request timeout cannot end in time
    request_timeout_ms = 120_000
    with ProcessCluster(controllers=1, brokers=2) as pc:
        pc.start()
        paused, healthy = pc.broker_ids
        order = f"127.0.0.1:{pc.nodes[paused].port},127.0.0.1:{pc.nodes[healthy].port}"
        cluster = ClusterClient(order, rng=_InOrder(), request_timeout_ms=request_timeout_ms)
        try:
            loop = asyncio.get_running_loop()
            # both brokers registered and fed metadata (until then a retriable error)
            await async_wait_until(lambda: _lists_brokers(cluster, 2, retriable_ok=True), 20,
                                   "both brokers listed")
            await cluster.connection(("127.0.0.1", pc.nodes[paused].port))  # open: tried first
            pc.signal(paused, signal.SIGSTOP)
            try:
                t0 = loop.time()
                await asyncio.wait_for(cluster.refresh(), 20)
                elapsed = loop.time() - t0
            finally:
                pc.signal(paused, signal.SIGCONT)
            print(f"refresh answered in {elapsed:.2f} s with one node paused")
            assert healthy in cluster.brokers  # answered by the next node meanwhile
        finally:
            await cluster.close()


def test_dev_check_twice_on_the_same_data_folder(tmp_path: Path) -> None:
    """Issue 25 item 11: `dmq dev` could not restart on its existing data folder
    (`error: [LEADER_NOT_AVAILABLE] broker has no metadata yet`, then it stopped)."""
    base = free_base_port(3, 3, kafka=True)  # `dmq dev`'s default shape
    for run in (1, 2):
        out = run_group(
            [sys.executable, "-m", "dmq.cli", "dev", "--check", "--data-dir", str(tmp_path),
             "--base-port", str(base)], timeout=100, text=True)
        assert out.returncode == 0, f"run {run}: {out.stdout[-2000:]}{out.stderr[-2000:]}"
        assert f"at offset {run - 1}" in out.stdout, out.stdout


def test_cluster_status_against_a_closed_port_says_connection_refused() -> None:
    """Issue 24 item 4: `dmq cluster status --bootstrap 127.0.0.1:1` printed
    `[NOT_CONTROLLER] no active controller found ... within 193 ms`."""
    (closed,) = free_ports(1)
    out = subprocess.run(
        [sys.executable, "-m", "dmq.cli", "cluster", "status", "--bootstrap",
         f"127.0.0.1:{closed}", "--timeout-ms", "2000"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "Connection refused" in out.stderr, out.stderr
    assert f"127.0.0.1:{closed}" in out.stderr
    assert "NOT_CONTROLLER" not in out.stderr, out.stderr


# ---- producer and consumer errors (issue 25 items 12 and 14) ------------------------

@pytest.fixture(scope="module")
def small() -> Iterator[ProcessCluster]:
    with ProcessCluster(controllers=1, brokers=2) as pc:
        pc.start()
        yield pc


async def test_delivery_timeout_names_the_last_broker_error(small: ProcessCluster) -> None:
    """NOT_ENOUGH_REPLICAS surfaced as a bare `REQUEST_TIMED_OUT ... not delivered`."""
    await ensure_topic(small.bootstrap, "needs-two", 1, 1,
                       configs={"min.insync.replicas": "2"})
    async with Producer(small.bootstrap, linger_ms=0, request_timeout_ms=1000,
                        delivery_timeout_ms=3000, retry_backoff_ms=50) as p:
        with pytest.raises(RequestTimedOutError) as err:
            await p.send_and_wait("needs-two", b"v")
    text = str(err.value)
    assert "delivery_timeout_ms=3000" in text
    assert "last error: [NOT_ENOUGH_REPLICAS]" in text, text


async def test_inconsistent_delivery_timeout_is_refused_not_silently_raised(
        small: ProcessCluster, caplog: pytest.LogCaptureFixture) -> None:
    """`delivery_timeout_ms=5000` was silently raised to 30005."""
    with pytest.raises(ValueError, match="delivery_timeout_ms=5000 must be at least "
                                         "linger_ms \\+ request_timeout_ms = 5 \\+ 30000"):
        Producer(small.bootstrap, delivery_timeout_ms=5000)
    # left at its default, it is raised to fit a long request timeout, and says so
    with caplog.at_level("WARNING", logger="dmq.client.producer"):
        p = Producer(small.bootstrap, request_timeout_ms=200_000)
    assert p.delivery_timeout_ms == 200_005
    assert "raised from its default 120000 to" in caplog.text


async def test_record_that_can_never_be_sent_is_refused_at_once(small: ProcessCluster) -> None:
    """A 101 MiB value was resent for 60 s and failed with NETWORK_EXCEPTION."""
    await ensure_topic(small.bootstrap, "big", 1, 1)
    async with Producer(small.bootstrap, max_request_size=200 * 1024 * 1024) as p:
        with pytest.raises(MessageTooLargeError, match="max.frame.bytes=104857600"):
            await p.send("big", b"x" * (101 * 1024 * 1024))
        # within the frame but above the broker's message.max.bytes (8 MiB): the
        # broker's MESSAGE_TOO_LARGE fails the send on its first answer, no retries
        handle = await p.send("big", b"x" * (9 * 1024 * 1024))
        with pytest.raises(MessageTooLargeError):
            await asyncio.wait_for(handle, p.request_timeout_ms / 1000)
    async with Producer(small.bootstrap) as p:
        with pytest.raises(MessageTooLargeError, match="max_request_size=1048576"):
            await p.send("big", b"x" * (2 * 1024 * 1024))


async def test_consumer_of_a_partition_that_does_not_exist_raises(
        small: ProcessCluster) -> None:
    """Partition 99 of a 3-partition topic, partition -1, or a deleted topic: the
    consumer returned nothing, silently, forever."""
    b = small.bootstrap
    await ensure_topic(b, "three", 3, 1)
    await ensure_topic(b, "doomed", 1, 1)
    async with Consumer(b, auto_offset_reset="earliest") as c:
        with pytest.raises(UnknownTopicOrPartitionError, match="three--1"):
            c.assign([TopicPartition("three", -1)])
        c.assign([TopicPartition("three", 99)])
        with pytest.raises(UnknownTopicOrPartitionError,
                           match="three-99 does not exist: topic 'three' has 3 partition"):
            await c.getmany(timeout_ms=c.request_timeout_ms)
        c.assign([TopicPartition("never-created", 0)])
        with pytest.raises(UnknownTopicOrPartitionError,
                           match="never-created-0 does not exist: topic 'never-created' "
                                 "does not exist"):
            await c.getmany(timeout_ms=c.request_timeout_ms)
        # an existing partition still reads normally
        c.assign([TopicPartition("three", 0)])
        assert await c.getmany(timeout_ms=200) == {}
    async with Producer(b) as p:
        await p.send_and_wait("doomed", b"before delete", partition=0)
    async with Consumer(b, auto_offset_reset="earliest") as c:
        tp = TopicPartition("doomed", 0)
        c.assign([tp])
        got = await c.getmany(timeout_ms=10_000)
        assert [r.value for r in got[tp]] == [b"before delete"]
        async with Admin(b) as admin:
            errors = await admin.delete_topics(["doomed"])
            assert errors["doomed"] is None
        with pytest.raises(UnknownTopicOrPartitionError, match="doomed-0 does not exist"):
            deadline = asyncio.get_running_loop().time() + c.request_timeout_ms / 1000
            while asyncio.get_running_loop().time() < deadline:
                assert await c.getmany(timeout_ms=1000) == {}


async def test_disk_full_is_named_by_the_producer_and_logged_by_the_broker() -> None:
    """A disk-full STORAGE_ERROR surfaced as a bare delivery timeout, and the broker
    wrote no log line about refusing the write."""
    why = tmpfs_skip_reason()
    if why is not None:
        pytest.skip(why)
    with ProcessCluster(controllers=1, brokers=1) as pc, tmpfs_data_dir(pc, 101, "3m"):
        pc.start()
        await ensure_topic(pc.bootstrap, "full", 1, 1)
        async with Producer(pc.bootstrap, linger_ms=0, request_timeout_ms=1000,
                            delivery_timeout_ms=2000, retry_backoff_ms=50) as p:
            with pytest.raises(RequestTimedOutError) as err:
                for i in range(400):  # 400 x 16 KB is well past 3 MB
                    await p.send_and_wait("full", b"%06d" % i + b"x" * 16_000)
        assert "last error: [STORAGE_ERROR]" in str(err.value), err.value
        assert "No space left" in str(err.value), err.value
        log_text = pc.nodes[101].log_text()
        assert "refused with STORAGE_ERROR" in log_text, log_text[-3000:]
        # one line per 10 s however many refusals (retries every 50 ms for 2 s)
        assert log_text.count("refused with STORAGE_ERROR") == 1
