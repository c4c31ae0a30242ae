"""Bounds on what one group request may put into the metadata log: commit metadata
(`offset.metadata.max.bytes`), id lengths, partitions per commit, and the size of
the Raft entry that batched commits make."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from dmq.controller.group_coordinator import (
    MAX_CLIENT_ID_CHARS,
    MAX_GROUP_ID_CHARS,
    MAX_MEMBER_ID_CHARS,
)
from dmq.controller.group_service import (
    MAX_COMMIT_ENTRY_BYTES,
    MAX_COMMIT_PARTITIONS,
    GroupService,
)
from dmq.protocol.errors import ErrorCode, InvalidGroupIdError, InvalidRequestError
from tests.unit.groups.fake_host import FakeHost

CTX: Any = SimpleNamespace(header=SimpleNamespace(client_id="c"), peer="127.0.0.1:1")


def _commit(group: str, rows: list[list[Any]], topic: str = "t") -> dict[str, Any]:
    return {"group_id": group, "member_id": "", "member_epoch": -1, "topics": [[topic, rows]]}


def _metadata_of(host: FakeHost) -> list[str | None]:
    return [m for recs in host.proposals for r in recs for _, _, _, m in r.offsets]


async def test_metadata_over_the_limit_is_refused_for_its_partition_only() -> None:
    host = FakeHost()
    svc = GroupService(host)
    big = "m" * 4097
    multibyte = "é" * 2049  # 2049 chars, 4098 UTF-8 bytes
    res = await svc.offset_commit(CTX, _commit("g", [[0, 1, big], [1, 1, multibyte],
                                                      [2, 1, "m" * 4096], [3, 1, None]]))
    assert res["topics"] == [["t", [[0, int(ErrorCode.OFFSET_METADATA_TOO_LARGE)],
                                    [1, int(ErrorCode.OFFSET_METADATA_TOO_LARGE)],
                                    [2, 0], [3, 0]]]]
    assert _metadata_of(host) == ["m" * 4096, None]
    await svc.close()


async def test_metadata_limit_is_a_setting() -> None:
    host = FakeHost(offset_metadata_max_bytes=8)
    svc = GroupService(host)
    res = await svc.offset_commit(CTX, _commit("g", [[0, 1, "123456789"], [1, 1, "12345678"]]))
    assert res["topics"][0][1] == [[0, int(ErrorCode.OFFSET_METADATA_TOO_LARGE)], [1, 0]]
    await svc.close()


async def test_commit_ids_and_partition_count_are_bounded() -> None:
    host = FakeHost()
    svc = GroupService(host)
    with pytest.raises(InvalidGroupIdError, match=str(MAX_GROUP_ID_CHARS)):
        await svc.offset_commit(CTX, _commit("g" * (MAX_GROUP_ID_CHARS + 1), [[0, 1, None]]))
    with pytest.raises(InvalidGroupIdError):
        await svc.offset_commit(CTX, _commit("", [[0, 1, None]]))
    body = _commit("g", [[0, 1, None]])
    body["member_id"] = "m" * (MAX_MEMBER_ID_CHARS + 1)
    with pytest.raises(InvalidRequestError, match="member_id"):
        await svc.offset_commit(CTX, body)
    rows = [[p % 6, 1, None] for p in range(MAX_COMMIT_PARTITIONS + 1)]
    with pytest.raises(InvalidRequestError, match=str(MAX_COMMIT_PARTITIONS)):
        await svc.offset_commit(CTX, _commit("g", rows))
    with pytest.raises(InvalidGroupIdError):
        await svc.reset_offsets(CTX, {"group_id": "g" * 300, "topics": [["t", [[0, 1]]]],
                                      "dry_run": True})
    assert host.proposals == []
    await svc.close()


@pytest.mark.parametrize("field,value,error", [
    ("group_id", "g" * (MAX_GROUP_ID_CHARS + 1), InvalidGroupIdError),
    ("group_id", "", InvalidGroupIdError),
    ("member_id", "m" * (MAX_MEMBER_ID_CHARS + 1), InvalidRequestError),
    ("instance_id", "i" * (MAX_MEMBER_ID_CHARS + 1), InvalidRequestError),
])
async def test_heartbeat_ids_are_bounded(field: str, value: str, error: type[Exception]) -> None:
    svc = GroupService(FakeHost())
    body: dict[str, Any] = {"group_id": "g", "member_id": "", "member_epoch": 0,
                            "instance_id": None, "rebalance_timeout_ms": 60_000,
                            "session_timeout_ms": 10_000, "topics": ["t"], "pattern": None,
                            "owned": None, "assignor": None, field: value}
    with pytest.raises(error):
        svc.heartbeat(CTX, body)
    assert svc.coordinator().groups == {}
    await svc.close()


async def test_heartbeat_client_id_is_bounded() -> None:
    svc = GroupService(FakeHost())
    ctx: Any = SimpleNamespace(header=SimpleNamespace(client_id="c" * (MAX_CLIENT_ID_CHARS + 1)),
                               peer="127.0.0.1:1")
    with pytest.raises(InvalidRequestError, match="client_id"):
        svc.heartbeat(ctx, {"group_id": "g", "member_id": "", "member_epoch": 0,
                            "instance_id": None, "rebalance_timeout_ms": 60_000,
                            "session_timeout_ms": 10_000, "topics": ["t"], "pattern": None,
                            "owned": None, "assignor": None})
    await svc.close()


async def test_concurrent_large_commits_are_not_merged_into_one_huge_entry() -> None:
    """The reproduction's shape: four concurrent commits, each large, used to become one
    Raft entry of their sum. Each now goes alone once the batch would pass the bound."""
    host = FakeHost(topics={"t": 1000})
    svc = GroupService(host)
    rows = [[p, 1, "x" * 4000] for p in range(1000)]
    answers = await asyncio.gather(*(svc.offset_commit(CTX, _commit(f"g{i}", rows))
                                     for i in range(4)))
    assert all(err == 0 for a in answers for _, prow in a["topics"] for _, err in prow)
    sizes = [sum(len(m or "") for r in recs for _, _, _, m in r.offsets)
             for recs in host.proposals]
    assert len(host.proposals) == 4
    assert max(sizes) <= MAX_COMMIT_ENTRY_BYTES
    await svc.close()


async def test_small_concurrent_commits_still_share_an_entry() -> None:
    host = FakeHost()
    svc = GroupService(host)
    await asyncio.gather(*(svc.offset_commit(CTX, _commit(f"g{i}", [[0, i, "m"]]))
                           for i in range(20)))
    assert svc.commits_proposed == 20 and svc.entries_proposed < 20
    await svc.close()
