"""DELETE_RECORDS (ApiKey 21) over dmq's own protocol against real `dmq server`
processes: `Admin.delete_records` moves a partition's log start on its leader, the
followers' log starts follow, a consumer from offset 0 starts at the new start; an
offset above the high watermark is OFFSET_OUT_OF_RANGE, a follower answers
NOT_LEADER_OR_FOLLOWER; and `dmq topics delete-records` does the same from the shell."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dmq.cli import main
from dmq.cli.dev import ensure_topic
from dmq.client import Admin, Consumer, Producer, TopicPartition
from dmq.client.admin import DeletedRecords
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import request_once
from dmq.protocol.errors import (
    ErrorCode,
    OffsetOutOfRangeError,
    UnknownTopicOrPartitionError,
)
from tests.support.procs import ProcessCluster
from tests.support.replicas import replica_log_starts
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pc() -> Iterator[ProcessCluster]:
    with ProcessCluster(controllers=3, combined=True) as c:
        c.start()
        yield c


def _fill(pc: ProcessCluster, topic: str, partitions: int, per_partition: int) -> None:
    async def go() -> None:
        assert await ensure_topic(pc.bootstrap, topic, partitions, 3, timeout_s=30)
        async with Producer(pc.bootstrap, acks="all", linger_ms=1) as p:
            sent = [await p.send(topic, b"%d-%d" % (part, i), partition=part)
                    for part in range(partitions) for i in range(per_partition)]
            await asyncio.gather(*sent)

    asyncio.run(go())


def _leader(pc: ProcessCluster, topic: str, partition: int) -> int:
    async def go() -> int:
        async with Admin(pc.bootstrap) as admin:
            info = (await admin.metadata([topic])).partition(topic, partition)
            assert info is not None
            return info.leader

    return asyncio.run(go())


def test_delete_records_moves_every_replicas_log_start(pc: ProcessCluster) -> None:
    _fill(pc, "drd", 2, 100)

    async def delete() -> dict[tuple[str, int], tuple[int, Exception | None]]:
        async with Admin(pc.bootstrap) as admin:
            res = await admin.delete_records({("drd", 0): 40, ("drd", 1): -1})
        return {tp: (r.low_watermark, r.error) for tp, r in res.items()}

    assert asyncio.run(delete()) == {("drd", 0): (40, None), ("drd", 1): (100, None)}
    wait_until(lambda: replica_log_starts(pc, "drd", 0) == [40, 40, 40], 20,
               "every replica's log start at 40 (the followers follow the leader's)")

    async def read_from_zero() -> list[tuple[int, bytes]]:
        tp = TopicPartition("drd", 0)
        async with Consumer(pc.bootstrap, auto_offset_reset="earliest") as c:
            c.assign([tp])
            c.seek(tp, 0)  # below the log start now: reset to the earliest, 40
            got: list[tuple[int, bytes]] = []
            for _ in range(50):
                for recs in (await c.getmany(tp, timeout_ms=500)).values():
                    got += [(r.offset, r.value) for r in recs]
                if len(got) >= 60:
                    break
            return got

    got = asyncio.run(read_from_zero())
    assert got == [(o, b"0-%d" % o) for o in range(40, 100)]


def test_delete_records_refuses_past_the_high_watermark_and_on_a_follower(
        pc: ProcessCluster) -> None:
    _fill(pc, "drd-range", 1, 10)
    leader = _leader(pc, "drd-range", 0)
    follower = next(n for n in pc.broker_ids if n != leader)

    async def go() -> tuple[DeletedRecords, DeletedRecords, DeletedRecords, Any]:
        async with Admin(pc.bootstrap) as admin:
            res = await admin.delete_records({("drd-range", 0): 11, ("nope", 0): 1})
            at_hw = await admin.delete_records({("drd-range", 0): 10})
        raw = await request_once("127.0.0.1", pc.nodes[follower].port,
                                 ApiKey.DELETE_RECORDS, {"topics": [["drd-range", [[0, 5]]]]})
        return res[("drd-range", 0)], res[("nope", 0)], at_hw[("drd-range", 0)], raw

    past, unknown, at_hw, raw = asyncio.run(go())
    assert isinstance(past.error, OffsetOutOfRangeError), past
    assert isinstance(unknown.error, UnknownTopicOrPartitionError)
    assert raw == {"topics": [["drd-range", [[0, int(ErrorCode.NOT_LEADER_OR_FOLLOWER), -1]]]]}
    # the refused ones moved nothing; up to the high watermark itself is allowed
    assert (at_hw.low_watermark, at_hw.error) == (10, None)


def test_cli_delete_records(pc: ProcessCluster, tmp_path: Path) -> None:
    _fill(pc, "drd-cli", 2, 20)
    runner = CliRunner()
    res = runner.invoke(main, ["topics", "delete-records", "--bootstrap", pc.bootstrap,
                               "--topic", "drd-cli", "--partition", "0",
                               "--before-offset", "5"])
    assert res.exit_code == 0, res.output
    assert "drd-cli-0: log start (low watermark) 5" in res.output

    offsets = tmp_path / "offsets.json"  # kafka-delete-records.sh's file
    offsets.write_text(json.dumps({"version": 1, "partitions": [
        {"topic": "drd-cli", "partition": 0, "offset": 12},
        {"topic": "drd-cli", "partition": 1, "offset": -1}]}))
    res = runner.invoke(main, ["topics", "delete-records", "--bootstrap", pc.bootstrap,
                               "--offset-json-file", str(offsets)])
    assert res.exit_code == 0, res.output
    assert "drd-cli-0: log start (low watermark) 12" in res.output
    assert "drd-cli-1: log start (low watermark) 20" in res.output

    res = runner.invoke(main, ["topics", "delete-records", "--bootstrap", pc.bootstrap,
                               "--topic", "drd-cli", "--partition", "0",
                               "--before-offset", "21"])
    assert res.exit_code == 1
    assert "OFFSET_OUT_OF_RANGE" in res.output

    res = runner.invoke(main, ["topics", "delete-records", "--bootstrap", pc.bootstrap,
                               "--topic", "drd-cli"])
    assert res.exit_code == 2 and "--before-offset" in res.output
