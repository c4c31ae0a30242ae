"""Client quotas enforced by a real node with SASL on its protocol port (TLS, SCRAM):
user alice with a producer quota of 200 KB/s and user bob without one produce at the
same time; alice's acknowledged throughput stays within 10% of her quota while bob's
runs far above it. The same for fetching with a consumer quota. Quotas are set, listed
and removed through `Admin` (DescribeClientQuotas / AlterClientQuotas) and `dmq quotas`,
and throttle time shows in /metrics per principal."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmq.cli.dev import ensure_topic
from dmq.client import Consumer, Producer, TopicPartition
from dmq.client.admin import Admin
from dmq.protocol.errors import InvalidRequestError
from dmq.security.certs import CA
from dmq.security.client_config import ClientSecurity
from dmq.security.sasl import SaslCredentials, client_sasl
from dmq.security.tls import client_context, client_tls
from tests.security.support import tls_sasl_settings
from tests.support.broker_wire import logs_on_failure
from tests.support.procs import ProcessCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

MECH = "SCRAM-SHA-256"
USERS = {"admin": "admin-secret", "alice": "alice-secret", "bob": "bob-secret"}
QUOTA = 200 * 1024  # bytes/s
VALUE = 1000  # bytes per record
RUN_S = 4.5
SKIP_S = 1.0  # the first second (the bucket's burst) is not measured


def creds(user: str) -> SaslCredentials:
    return SaslCredentials(MECH, user, USERS[user])


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProcessCluster, CA]]:
    ca, settings = tls_sasl_settings(tmp_path_factory.mktemp("quotas"), (1,), USERS, MECH,
                                     **{"default.replication.factor": 1})
    with ProcessCluster(controllers=1, combined=True, settings=settings, http=True) as pc:
        pc.start()
        yield pc, ca


def rate_after_burst(points: list[tuple[float, int]], start: float, end: float) -> float:
    """bytes/s between the first point past `start` + SKIP_S and the last one before
    `end`, from (time, cumulative bytes) points."""
    window = [(t, b) for t, b in points if start + SKIP_S < t <= end]
    assert len(window) >= 2, "too little measured after the first second"
    (t0, b0), (t1, b1) = window[0], window[-1]
    return (b1 - b0) / (t1 - t0)


async def produce_for(bootstrap: str, user: str, topic: str, seconds: float
                      ) -> tuple[float, list[tuple[float, int]]]:
    """Produce as fast as the broker lets `user` for `seconds`; (start time, [(ack time,
    bytes acknowledged so far)])."""
    points: list[tuple[float, int]] = []
    handles: asyncio.Queue[object] = asyncio.Queue()
    with client_sasl(creds(user)):
        async with Producer(bootstrap, acks=1, linger_ms=2, batch_size=16_384,
                            buffer_memory=65_536) as p:
            acked = 0

            async def count() -> None:
                nonlocal acked
                while True:
                    h = await handles.get()
                    if h is None:
                        return
                    await h  # type: ignore[misc]
                    acked += VALUE
                    points.append((time.monotonic(), acked))

            counter = asyncio.create_task(count())
            await p.partitions_for(topic)
            start = time.monotonic()
            value = b"x" * VALUE
            while time.monotonic() - start < seconds:
                handles.put_nowait(await p.send(topic, value))
            handles.put_nowait(None)
            await counter
    return start, points



async def test_producer_quota_holds_a_user_to_its_rate(
        secure: tuple[ProcessCluster, CA]) -> None:
    pc, ca = secure
    with logs_on_failure(pc), client_tls(client_context(str(ca.cafile))):
        with client_sasl(creds("admin")):
            await ensure_topic(pc.bootstrap, "quota-a", 1, 1, 60)
            await ensure_topic(pc.bootstrap, "quota-b", 1, 1, 60)
            async with Admin(pc.bootstrap) as admin:
                assert await admin.alter_client_quotas(
                    {"alice": {"producer_byte_rate": QUOTA}}) == {"alice": None}
                bad = await admin.alter_client_quotas({"bob": {"request_percentage": 5}})
                assert isinstance(bad["bob"], InvalidRequestError)
                assert await admin.describe_client_quotas() == {
                    "alice": {"producer_byte_rate": QUOTA}}
        (a_start, a_points), (b_start, b_points) = await asyncio.gather(
            produce_for(pc.bootstrap, "alice", "quota-a", RUN_S),
            produce_for(pc.bootstrap, "bob", "quota-b", RUN_S))
        a_rate = rate_after_burst(a_points, a_start, a_start + RUN_S)
        b_rate = rate_after_burst(b_points, b_start, b_start + RUN_S)
        print(f"alice {a_rate / 1024:.0f} KB/s (quota {QUOTA / 1024:.0f} KB/s), "
              f"bob {b_rate / 1024:.0f} KB/s")
        assert abs(a_rate - QUOTA) <= 0.10 * QUOTA, (a_rate, QUOTA)
        assert b_rate >= 2 * QUOTA, b_rate
        metrics = scrape(pc, ca)
        assert 'principal="User:alice"' in metrics
        assert "dmq_broker_quota_throttle_time_ms_total" in metrics
        assert 'principal="User:bob"' not in metrics
        with client_sasl(creds("admin")):
            async with Admin(pc.bootstrap) as admin:
                assert await admin.alter_client_quotas(
                    {"alice": {"producer_byte_rate": None}}) == {"alice": None}
                assert await admin.describe_client_quotas() == {}


def scrape(pc: ProcessCluster, ca: CA) -> str:
    port = pc.nodes[1].http_port
    assert port is not None
    with urllib.request.urlopen(f"https://127.0.0.1:{port}/metrics", timeout=10,
                                context=client_context(str(ca.cafile))) as r:
        return r.read().decode()


async def consume_for(bootstrap: str, user: str, topic: str, seconds: float
                      ) -> tuple[float, list[tuple[float, int]]]:
    points: list[tuple[float, int]] = []
    got = 0
    with client_sasl(creds(user)):
        async with Consumer(bootstrap, auto_offset_reset="earliest",
                            max_partition_fetch_bytes=16_384, fetch_max_bytes=16_384,
                            prefetch_fetches=1) as c:
            tp = TopicPartition(topic, 0)
            c.assign([tp])
            start = time.monotonic()
            while time.monotonic() - start < seconds:
                batch = await c.getmany(timeout_ms=500)
                for records in batch.values():
                    got += sum(len(r.value) for r in records)
                if batch:
                    points.append((time.monotonic(), got))
    return start, points


async def test_consumer_quota_holds_a_user_to_its_rate(
        secure: tuple[ProcessCluster, CA]) -> None:
    pc, ca = secure
    with logs_on_failure(pc), client_tls(client_context(str(ca.cafile))):
        with client_sasl(creds("admin")):
            await ensure_topic(pc.bootstrap, "quota-c", 1, 1, 60)
            async with Producer(pc.bootstrap, acks=1, linger_ms=5) as p:
                for _ in range(3000):  # ~3 MB, more than alice may read in the run
                    await p.send("quota-c", b"y" * VALUE)
                await p.flush()
            async with Admin(pc.bootstrap) as admin:
                await admin.set_client_quotas("alice", consumer_byte_rate=QUOTA)
        (a_start, a_points), (b_start, b_points) = await asyncio.gather(
            consume_for(pc.bootstrap, "alice", "quota-c", RUN_S),
            consume_for(pc.bootstrap, "bob", "quota-c", RUN_S))
        a_rate = rate_after_burst(a_points, a_start, a_start + RUN_S)
        b_total = b_points[-1][1]
        b_rate = b_total / (b_points[-1][0] - b_start)
        print(f"alice {a_rate / 1024:.0f} KB/s (quota {QUOTA / 1024:.0f} KB/s), "
              f"bob {b_rate / 1024:.0f} KB/s over {b_total} bytes")
        assert abs(a_rate - QUOTA) <= 0.10 * QUOTA, (a_rate, QUOTA)
        assert b_rate >= 2 * QUOTA, b_rate
        with contextlib.suppress(Exception), client_sasl(creds("admin")):
            async with Admin(pc.bootstrap) as admin:
                await admin.alter_client_quotas({"alice": {"consumer_byte_rate": None}})


def test_quotas_cli(secure: tuple[ProcessCluster, CA], tmp_path: Path) -> None:
    pc, ca = secure
    props = tmp_path / "admin.properties"
    props.write_text(f"security.protocol=SASL_SSL\nssl.ca.location={ca.cafile}\n"
                     f"sasl.mechanism={MECH}\nsasl.username=admin\n"
                     f"sasl.password={USERS['admin']}\n")

    def quotas(*args: str, ok: bool = True) -> str:
        res = subprocess.run([sys.executable, "-m", "dmq.cli", "quotas", *args,
                              "--bootstrap", pc.bootstrap, "--timeout-ms", "20000",
                              "--command-config", str(props)],
                             capture_output=True, text=True, timeout=60)
        assert (res.returncode == 0) == ok, res.stdout + res.stderr
        return res.stdout + res.stderr

    assert "set quotas of bob" in quotas("set", "--user", "bob", "--producer-byte-rate",
                                         "1048576", "--consumer-byte-rate", "2097152")
    quotas("set", "--default", "--consumer-byte-rate", "4096")
    listed = quotas("list").splitlines()
    assert listed[0].split() == ["USER", "PRODUCER_BYTE_RATE", "CONSUMER_BYTE_RATE"]
    assert rows(listed)["<default>"] == ["-", "4096"]
    assert rows(listed)["bob"] == ["1048576", "2097152"]
    assert "whole number" in quotas("set", "--user", "bob", "--producer-byte-rate", "0",
                                    ok=False)
    assert "--user USER or --default" in quotas("set", "--producer-byte-rate", "5",
                                                ok=False)
    quotas("remove", "--user", "bob", "--consumer-byte-rate")
    quotas("remove", "--default")
    listed = quotas("list").splitlines()
    assert "<default>" not in rows(listed) and rows(listed)["bob"] == ["1048576", "-"]
    quotas("remove", "--user", "bob")
    assert "bob" not in rows(quotas("list").splitlines())


def rows(listed: list[str]) -> dict[str, list[str]]:
    """`dmq quotas list` lines by user (other tests' quotas may be left in the list)."""
    return {line.split()[0]: line.split()[1:] for line in listed[1:]}


async def test_admin_with_explicit_security_deletes_records(
        secure: tuple[ProcessCluster, CA]) -> None:
    """Admin(security=...) alone (no client_tls/client_sasl around it) reaches every
    node it asks, the partition leaders of DeleteRecords included (that request went
    out without the admin's TLS and SASL)."""
    pc, ca = secure
    security = ClientSecurity(client_context(str(ca.cafile)), creds("admin"))
    with logs_on_failure(pc):
        await ensure_topic(pc.bootstrap, "explicit-dr", 1, 1, 60, security=security)
        async with Producer(pc.bootstrap, acks=1, security=security) as p:
            for i in range(10):
                await p.send("explicit-dr", b"%d" % i, partition=0)
            await p.flush()
        async with Admin(pc.bootstrap, security=security) as admin:
            res = await admin.delete_records({("explicit-dr", 0): 4}, timeout_ms=10_000)
        assert res[("explicit-dr", 0)].error is None
        assert res[("explicit-dr", 0)].low_watermark == 4
