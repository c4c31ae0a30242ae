"""A real node's audit log under a client looping on a refused request: one line for the
first refusal, then at most one a second carrying the count held back, and every
refusal accounted for (dmq.security.audit.DenialLog behind the authorizer)."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator

import pytest

from dmq.protocol.api import ApiKey
from dmq.protocol.connection import Connection
from dmq.protocol.errors import ErrorCode
from tests.support.broker_wire import FAST, logs_on_failure
from tests.support.procs import ProcessCluster
from tests.support.waiting import async_wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

REFUSED = int(ErrorCode.TOPIC_AUTHORIZATION_FAILED)
KEY = "DENIED principal=User:ANONYMOUS operation=Write resource=topic:secret api=Produce"
HELD = re.compile(r"\((\d+) more denials suppressed in the last [0-9.]+ s\)")


@pytest.fixture(scope="module")
def node() -> Iterator[ProcessCluster]:
    # the authorizer on and no ACL: an anonymous client may do nothing
    with ProcessCluster(controllers=1, combined=True,
                        settings={**FAST, "authorizer.enabled": True}) as pc:
        pc.start()
        yield pc


def produce_body(topic: str) -> dict[str, object]:
    return {"acks": 1, "timeout_ms": 5000, "topics": [[topic, [[0, -1, b"\0" * 70]]]]}


def denial_lines(pc: ProcessCluster) -> list[str]:
    return [line for line in pc.nodes[1].log_text().splitlines() if KEY in line]


async def test_a_client_looping_on_a_refused_produce_does_not_flood_the_audit_log(
        node: ProcessCluster) -> None:
    pc = node
    sent = 0
    with logs_on_failure(pc):
        conn = await Connection.open("127.0.0.1", pc.nodes[1].port)
        try:
            async def refused() -> None:
                nonlocal sent
                rows = (await conn.request(ApiKey.PRODUCE, produce_body("secret")))["topics"]
                sent += 1
                assert rows[0][1][0][1] == REFUSED, rows

            t0 = time.monotonic()
            for _ in range(300):
                await refused()
            elapsed = time.monotonic() - t0
            lines = denial_lines(pc)
            assert lines and HELD.search(lines[0]) is None  # the first one, at once
            # at most one line per second after the first (whatever the machine's speed)
            assert len(lines) <= 2 + int(elapsed)

            async def counted_line() -> bool:
                # keep refusing, slowly, until a line carries the count held back; the
                # refusal that wrote it is the last one sent, so nothing is held now
                await refused()
                return HELD.search(denial_lines(pc)[-1]) is not None

            await async_wait_until(counted_line, 15, "a line with the held-back count",
                                   interval_s=0.25)
        finally:
            await conn.close()
    lines = denial_lines(pc)
    held = sum(int(m.group(1)) for line in lines if (m := HELD.search(line)))
    assert len(lines) + held == sent  # every refusal logged or counted
    assert pc.nodes[1].alive


FLUSHED = re.compile(r"api=Produce: (\d+) more denials suppressed in the last [0-9.]+ s")


async def test_refusals_held_back_are_counted_when_the_node_stops() -> None:
    """Refusals held back when the node stops are written out by its shutdown: a key
    refused in a burst and never again would otherwise take its count with it."""
    with ProcessCluster(controllers=1, combined=True,
                        settings={**FAST, "authorizer.enabled": True}) as pc:
        pc.start()
        with logs_on_failure(pc):
            conn = await Connection.open("127.0.0.1", pc.nodes[1].port)
            try:
                for _ in range(30):  # well within a second: the first line, then held
                    rows = (await conn.request(ApiKey.PRODUCE, produce_body("secret")))["topics"]
                    assert rows[0][1][0][1] == REFUSED, rows
            finally:
                await conn.close()
            pc.kill(1, signal.SIGTERM)  # a clean stop
            text = pc.nodes[1].log_text()
            lines = [line for line in text.splitlines() if KEY in line]
            held = sum(int(m.group(1)) for line in lines
                       if (m := HELD.search(line) or FLUSHED.search(line)))
            assert any(FLUSHED.search(line) for line in lines), lines
            assert len([line for line in lines if not FLUSHED.search(line)]) + held == 30
