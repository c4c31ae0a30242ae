"""The classic group protocol in the controller's group service, in process (no
sockets): it and dmq's own consumer protocol exclude each other per group, a classic
group with members keeps its offsets past the retention, a member that does not rejoin
is dropped at the rebalance deadline, and a new controller term answers waiting members
NOT_COORDINATOR."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from dmq.controller.classic_groups import (
    INCONSISTENT_GROUP_PROTOCOL,
    NOT_COORDINATOR,
    ClassicGroups,
)
from dmq.controller.group_service import GroupService, live_offsets
from dmq.protocol.errors import GroupIdNotFoundError
from tests.support.waiting import until
from tests.unit.groups.fake_host import FakeHost

CTX: Any = SimpleNamespace(header=SimpleNamespace(client_id="c"), peer="127.0.0.1:1")


def join_body(group: str, member_id: str = "", rebalance_ms: int = 1000) -> dict[str, Any]:
    return {"group_id": group, "member_id": member_id, "session_timeout_ms": 10_000,
            "rebalance_timeout_ms": rebalance_ms, "protocol_type": "consumer",
            "protocols": [["range", b"m"]], "instance_id": None,
            "require_known_member_id": False, "client_id": "c", "host": ""}


def native_heartbeat(group: str) -> dict[str, Any]:
    return {"group_id": group, "member_id": "", "member_epoch": 0, "instance_id": None,
            "rebalance_timeout_ms": 60_000, "session_timeout_ms": 10_000, "topics": ["t"],
            "pattern": None, "owned": None, "assignor": None}


def test_classic_and_native_members_exclude_each_other() -> None:
    async def run() -> None:
        svc = GroupService(FakeHost())
        try:
            svc.heartbeat(CTX, native_heartbeat("native"))
            answer = await svc.join_group(CTX, join_body("native"))
            assert answer["error"] == INCONSISTENT_GROUP_PROTOCOL
            joined = await svc.join_group(CTX, join_body("classic"))
            assert joined["error"] == 0
            with pytest.raises(GroupIdNotFoundError, match="classic-protocol"):
                svc.heartbeat(CTX, native_heartbeat("classic"))
        finally:
            await svc.close()
    asyncio.run(run())


def test_classic_group_with_members_keeps_offsets_past_retention() -> None:
    async def run() -> None:
        host = FakeHost(offsets_retention_ms=1)
        svc = GroupService(host)
        try:
            joined = await svc.join_group(CTX, join_body("busy"))
            mid, gen = joined["member_id"], joined["generation"]
            sync = {"group_id": "busy", "generation": gen, "member_id": mid,
                    "instance_id": None, "assignments": [[mid, b""]]}
            commit = {"group_id": "busy", "member_id": mid, "member_epoch": gen,
                      "topics": [["t", [[0, 3, None]]]]}
            # until the leader's SyncGroup the generation's commits are refused
            assert await svc.offset_commit(CTX, dict(commit)) == {
                "topics": [["t", [[0, 27]]]]}  # REBALANCE_IN_PROGRESS
            assert (await svc.sync_group(CTX, sync))["error"] == 0
            for group, member, epoch in (("busy", mid, gen), ("idle", "", -1)):
                out = await svc.offset_commit(CTX, {
                    "group_id": group, "member_id": member, "member_epoch": epoch,
                    "topics": [["t", [[0, 3, None]]]]})
                assert out == {"topics": [["t", [[0, 0]]]]}
            committed_ms = host.clock.wall_ms()
            await until(lambda: host.clock.wall_ms() > committed_ms + 1,
                        "both commits past their 1 ms retention")
            svc._retention_due_ms = 0
            svc._on_timer()
            await until(lambda: not svc._pending and (
                svc._proposer is None or svc._proposer.done()), "the expiry proposed")
            assert not live_offsets(host.state, "idle")  # expired
            assert live_offsets(host.state, "busy")[("t", 0)][0] == 3
        finally:
            await svc.close()
    asyncio.run(run())


def test_member_not_rejoining_is_dropped_at_the_rebalance_deadline() -> None:
    async def run() -> None:
        host = FakeHost()
        svc = GroupService(host)
        try:
            first = await svc.join_group(CTX, join_body("g"))
            classic = svc.classic()
            assert classic.sync({"group_id": "g", "generation": first["generation"],
                                 "member_id": first["member_id"], "instance_id": None,
                                 "assignments": [[first["member_id"], b"a"]]})["error"] == 0
            # a second member joins; the first never rejoins: after its rebalance
            # timeout (1 s) the second's join completes without it
            second = await asyncio.wait_for(svc.join_group(CTX, join_body("g")), 10)
            assert second["error"] == 0 and second["generation"] == first["generation"] + 1
            assert second["leader"] == second["member_id"]
            assert [m[0] for m in second["members"]] == [second["member_id"]]
            assert classic.heartbeat({"group_id": "g", "generation": first["generation"],
                                      "member_id": first["member_id"]})["error"] == 25
        finally:
            await svc.close()
    asyncio.run(run())


def test_a_new_term_answers_waiting_members_not_coordinator() -> None:
    async def run() -> None:
        host = FakeHost()
        svc = GroupService(host)
        try:
            first = await svc.join_group(CTX, join_body("g", rebalance_ms=60_000))
            waiting = asyncio.ensure_future(svc.join_group(CTX, join_body("g")))

            def parked() -> bool:
                group = svc.classic().groups.get("g")
                return group is not None and len(group.members) == 2 and any(
                    m.join is not None and not m.join.done() for m in group.members.values())

            await until(parked, "the second join parked in the group")
            assert not waiting.done()  # waits for the first member to rejoin
            old: ClassicGroups = svc.classic()
            host.term = 2
            fresh = svc.classic()
            assert fresh is not old and not fresh.groups
            answer = await asyncio.wait_for(waiting, 5)
            assert answer["error"] == NOT_COORDINATOR
            assert first["error"] == 0
        finally:
            await svc.close()
    asyncio.run(run())


def test_member_ids_handed_out_unjoined_are_bounded_per_group() -> None:
    async def run() -> None:
        from dmq.controller import classic_groups

        svc = GroupService(FakeHost())
        try:
            body = join_body("crowd") | {"require_known_member_id": True}
            limit = classic_groups.MAX_MEMBERS_PER_GROUP
            codes = [(await svc.join_group(CTX, dict(body)))["error"]
                     for _ in range(limit + 1)]
            assert codes[:limit] == [classic_groups.MEMBER_ID_REQUIRED] * limit
            assert codes[limit] == classic_groups.GROUP_MAX_SIZE_REACHED
        finally:
            await svc.close()
    asyncio.run(run())


def test_classic_groups_held_at_once_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from dmq.controller import classic_groups

    monkeypatch.setattr(classic_groups, "MAX_CLASSIC_GROUPS", 3)

    async def run() -> None:
        svc = GroupService(FakeHost())
        try:
            asked = [(await svc.join_group(CTX, join_body(f"g{i}") | {
                "require_known_member_id": True}))["error"] for i in range(4)]
            assert asked == [classic_groups.MEMBER_ID_REQUIRED] * 3 + [
                classic_groups.COORDINATOR_NOT_AVAILABLE]
            assert sorted(svc.classic().groups) == ["g0", "g1", "g2"]
            # a group already held is served as before
            again = await svc.join_group(CTX, join_body("g0") | {
                "require_known_member_id": True})
            assert again["error"] == classic_groups.MEMBER_ID_REQUIRED
        finally:
            await svc.close()
    asyncio.run(run())


def test_join_group_v2_style_without_member_id_required() -> None:
    async def run() -> None:
        svc = GroupService(FakeHost())
        try:
            answer = await svc.join_group(CTX, join_body("old"))
            assert answer["error"] == 0 and answer["member_id"].startswith("c-")
            assert answer["leader"] == answer["member_id"]
            assert answer["members"] == [[answer["member_id"], None, b"m"]]
        finally:
            await svc.close()
    asyncio.run(run())
