"""The group APIs over real loopback sockets against a fake controller host: handler
schemas, commit batching through `propose`, fencing answers, NOT_CONTROLLER."""

from __future__ import annotations

import asyncio

import pytest

from dmq.protocol.api import ApiKey
from dmq.protocol.connection import Connection
from dmq.protocol.errors import (
    NonEmptyGroupError,
    NotControllerError,
    StaleMemberEpochError,
    UnknownMemberIdError,
)
from tests.unit.groups.fake_host import FakeHost, start_fake_controller


@pytest.fixture
async def node():
    host = FakeHost()
    server, svc = await start_fake_controller(host)
    conn = await Connection.open("127.0.0.1", server.bound_port, client_id="test-client")
    yield host, conn, svc
    await conn.close()
    await svc.close()
    await server.close()


async def hb(conn, member_id="", epoch=0, owned=None, **kw):
    body = {"group_id": "g", "member_id": member_id, "member_epoch": epoch,
            "topics": ["t"], "owned": owned, **kw}
    return await conn.request(ApiKey.CONSUMER_GROUP_HEARTBEAT, body, timeout_ms=5000)


async def test_join_commit_fetch_describe(node) -> None:
    host, conn, svc = node
    res = await hb(conn)
    assert res["member_epoch"] == 1 and res["assignment"] == [["t", [0, 1, 2, 3, 4, 5]]]
    mid = res["member_id"]
    commits = [conn.request(ApiKey.OFFSET_COMMIT, {
        "group_id": "g", "member_id": mid, "member_epoch": 1,
        "topics": [["t", [[p, 10 + i, None]]]]}) for i, p in enumerate(range(6))]
    answers = await asyncio.gather(*commits)
    assert all(a["topics"][0][1][0][1] == 0 for a in answers)
    # six concurrent commits took fewer Raft entries than commits (group commit)
    assert svc.commits_proposed == 6 and svc.entries_proposed < 6
    fetched = await conn.request(ApiKey.OFFSET_FETCH, {"group_id": "g"})
    assert fetched["topics"] == [["t", [[p, 10 + p, None, 0] for p in range(6)]]]
    one = await conn.request(ApiKey.OFFSET_FETCH, {"group_id": "g", "topics": [["t", [0, 9]]]})
    assert one["topics"] == [["t", [[0, 10, None, 0], [9, -1, None, 0]]]]
    desc = await conn.request(ApiKey.DESCRIBE_GROUPS, {"groups": ["g", "nope"]})
    g, nope = desc["groups"]
    assert g["state"] == "Stable" and g["members"][0]["client_id"] == "test-client"
    assert g["members"][0]["host"] == "127.0.0.1"
    assert nope["error"] == 69
    groups = await conn.request(ApiKey.LIST_GROUPS, {})
    assert groups["groups"] == [{"group_id": "g", "state": "Stable", "members": 1}]


async def test_commit_fencing_answers(node) -> None:
    host, conn, _ = node
    a = await hb(conn)
    b = await hb(conn)
    # a is told to revoke: its epoch is unchanged, so it can commit before revoking
    a2 = await hb(conn, a["member_id"], a["member_epoch"], owned=a["assignment"])
    assert a2["member_epoch"] == a["member_epoch"]
    await conn.request(ApiKey.OFFSET_COMMIT, {
        "group_id": "g", "member_id": a["member_id"], "member_epoch": a["member_epoch"],
        "topics": [["t", [[0, 5, "m"]]]]})
    a3 = await hb(conn, a["member_id"], a["member_epoch"], owned=a2["assignment"])
    assert a3["member_epoch"] > a["member_epoch"]
    with pytest.raises(StaleMemberEpochError):
        await conn.request(ApiKey.OFFSET_COMMIT, {
            "group_id": "g", "member_id": a["member_id"], "member_epoch": a["member_epoch"],
            "topics": [["t", [[0, 6, None]]]]})
    with pytest.raises(UnknownMemberIdError):
        await conn.request(ApiKey.OFFSET_COMMIT, {
            "group_id": "g", "member_id": "ghost", "member_epoch": 1,
            "topics": [["t", [[0, 6, None]]]]})
    bad = await conn.request(ApiKey.OFFSET_COMMIT, {
        "group_id": "g", "member_id": b["member_id"], "member_epoch": b["member_epoch"],
        "topics": [["nope", [[0, 6, None]]]]})
    assert bad["topics"] == [["nope", [[0, 3]]]]


async def test_reset_and_delete_need_an_empty_group(node) -> None:
    host, conn, _ = node
    a = await hb(conn)
    body = {"group_id": "g", "topics": [["t", [[0, 3], [1, 4]]]]}
    with pytest.raises(NonEmptyGroupError):
        await conn.request(ApiKey.RESET_OFFSETS, body)
    await hb(conn, a["member_id"], -1)
    dry = await conn.request(ApiKey.RESET_OFFSETS, {**body, "dry_run": True})
    assert dry["topics"] == [["t", [[0, 3, 0], [1, 4, 0]]]]
    assert (await conn.request(ApiKey.OFFSET_FETCH, {"group_id": "g"}))["topics"] == []
    await conn.request(ApiKey.RESET_OFFSETS, body)
    fetched = await conn.request(ApiKey.OFFSET_FETCH, {"group_id": "g"})
    assert fetched["topics"] == [["t", [[0, 3, None, 0], [1, 4, None, 0]]]]
    deleted = await conn.request(ApiKey.DELETE_GROUPS, {"groups": ["g", "nope"]})
    assert [g["error"] for g in deleted["groups"]] == [0, 69]
    assert (await conn.request(ApiKey.OFFSET_FETCH, {"group_id": "g"}))["topics"] == []
    assert (await conn.request(ApiKey.LIST_GROUPS, {}))["groups"] == []


async def test_follower_answers_not_controller_with_the_leader(node) -> None:
    host, conn, _ = node
    host.term = None
    with pytest.raises(NotControllerError) as info:
        await hb(conn)
    assert info.value.leader == (2, "127.0.0.1", 9)


async def test_new_term_starts_a_fresh_coordinator_that_adopts_members(node) -> None:
    host, conn, _ = node
    a = await hb(conn)
    await conn.request(ApiKey.OFFSET_COMMIT, {
        "group_id": "g", "member_id": a["member_id"], "member_epoch": a["member_epoch"],
        "topics": [["t", [[0, 7, None]]]]})
    host.term = 2  # failover and back: soft state is gone, offsets are not
    again = await hb(conn, a["member_id"], a["member_epoch"], owned=a["assignment"])
    assert again["member_id"] == a["member_id"]
    assert again["assignment"] == a["assignment"]
    fetched = await conn.request(ApiKey.OFFSET_FETCH, {"group_id": "g"})
    assert fetched["topics"] == [["t", [[0, 7, None, 0]]]]
