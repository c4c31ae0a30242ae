"""The controller's `dmq_group_members` gauge reads GroupService.member_counts()."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from dmq.controller.group_service import GroupService
from tests.unit.groups.fake_host import FakeHost

CTX: Any = SimpleNamespace(header=SimpleNamespace(client_id="c"), peer="127.0.0.1:1")


def _join(group: str) -> dict[str, Any]:
    return {"group_id": group, "member_id": "", "member_epoch": 0, "instance_id": None,
            "rebalance_timeout_ms": 60_000, "session_timeout_ms": 10_000, "topics": ["t"],
            "pattern": None, "owned": None, "assignor": None}


async def test_member_counts_follow_the_coordinator_of_the_term() -> None:
    host = FakeHost()
    svc = GroupService(host)
    assert svc.member_counts() is None  # no coordinator before the first group request
    for group in ("a", "a", "b"):
        svc.heartbeat(CTX, _join(group))
    assert svc.member_counts() == {"a": 2, "b": 1}
    host.term = 2  # a new term starts with a new, empty coordinator
    svc.coordinator()
    assert svc.member_counts() == {}
    await svc.close()
