"""A group write a broker forwards to the controller and then gives up on can never
take effect afterwards (the fence of `deadline_ms`).

The chaos run's commit-backwards: a Kafka consumer's OffsetCommit went through a broker
just as that broker was cut from the controller; the broker answered
COORDINATOR_NOT_AVAILABLE once its route timed out, the consumer committed newer offsets
through another broker, and when the link healed TCP delivered the stalled forward,
which the controller applied over the newer commit. Here, in process with real sockets:
two brokers' Kafka group handlers (`KafkaApis`) forward over their own connections to
one controller's group service; the controller's handling of the first forward is held
(as a cut link holds it) until its broker has answered the client and a newer commit
went through the other broker, then released.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest

from dmq.clock import ManualClock
from dmq.config import ClusterConfig, NodeAddress
from dmq.controller.group_service import GroupService, live_offsets
from dmq.kafka import groups
from dmq.kafka.apis import KafkaApis
from dmq.kafka.codec import RequestHeader
from dmq.metadata.image import EMPTY_IMAGE
from dmq.protocol.api import REQUEST_SCHEMAS, ApiKey
from dmq.protocol.connection import Connection
from dmq.protocol.errors import ErrorCode, InvalidRequestError, RequestTimedOutError
from dmq.protocol.server import ProtocolServer
from tests.support.waiting import until
from tests.unit.groups.fake_host import FakeHost, start_fake_controller

COORDINATOR_NOT_AVAILABLE = int(ErrorCode.COORDINATOR_NOT_AVAILABLE)
ROUTE_MS = 300  # the brokers' group route timeout here (3 s in a node)
CTX: Any = SimpleNamespace(header=SimpleNamespace(client_id="broker-101"),
                           peer="127.0.0.1:1")


def commit_body(offset: int) -> dict[str, Any]:
    """A Kafka OffsetCommit v8 from outside the group's membership (as `assign()`)."""
    return {"GroupId": "g", "GenerationIdOrMemberEpoch": -1, "MemberId": "",
            "GroupInstanceId": None, "Topics": [{"Name": "t", "Partitions": [
                {"PartitionIndex": 0, "CommittedOffset": offset, "CommittedLeaderEpoch": -1,
                 "CommittedMetadata": None}]}]}


def code_of(answer: dict[str, Any]) -> int:
    return int(answer["Topics"][0]["Partitions"][0]["ErrorCode"])


class HeldCommits:
    """The controller's OFFSET_COMMIT handler, with the first request held until
    `release` (what a cut link does to a forward already on its way)."""

    def __init__(self, svc: GroupService) -> None:
        self.svc = svc
        self.release = asyncio.Event()
        self.held_arrived = asyncio.Event()
        self.held_outcome: list[object] = []
        self.calls = 0

    async def __call__(self, ctx: Any, body: dict[str, Any]) -> Any:
        self.calls += 1
        if self.calls > 1:
            return await self.svc.offset_commit(ctx, body)
        self.held_arrived.set()
        await self.release.wait()
        try:
            answer = await self.svc.offset_commit(ctx, body)
        except Exception as exc:
            self.held_outcome.append(exc)
            raise
        self.held_outcome.append(answer)
        return answer


@pytest.fixture
async def controller() -> AsyncIterator[tuple[FakeHost, ProtocolServer, GroupService]]:
    host = FakeHost()
    server, svc = await start_fake_controller(host)
    yield host, server, svc
    await svc.close()
    await server.close()


async def broker(broker_id: int, port: int) -> tuple[KafkaApis, Connection]:
    """A broker's Kafka group handlers forwarding over their own connection."""
    conn = await Connection.open("127.0.0.1", port, client_id=f"broker-{broker_id}")

    async def route(key: ApiKey, body: Any, timeout_ms: int) -> Any:
        return await conn.request(key, body, timeout_ms=timeout_ms)

    config = ClusterConfig((NodeAddress(1, "127.0.0.1", port),), ())
    apis = KafkaApis(config, broker_id, None, lambda: EMPTY_IMAGE, route)  # type: ignore[arg-type]
    return apis, conn


async def test_a_commit_forward_given_up_on_is_not_applied_over_a_newer_commit(
        controller: tuple[FakeHost, ProtocolServer, GroupService],
        monkeypatch: pytest.MonkeyPatch) -> None:
    host, server, svc = controller
    monkeypatch.setattr(groups, "GROUP_ROUTE_TIMEOUT_MS", ROUTE_MS)
    held = HeldCommits(svc)
    server._handlers[ApiKey.OFFSET_COMMIT] = held  # noqa: SLF001
    a, conn_a = await broker(101, server.bound_port)
    b, conn_b = await broker(102, server.bound_port)
    header = RequestHeader(8, 8, 1, "kafka-consumer")
    try:
        # through broker 101: the forward reaches the controller and is held there;
        # the broker gives up on it and tells its client the coordinator is away
        assert code_of(await a.offset_commit(header, commit_body(5))) == \
            COORDINATOR_NOT_AVAILABLE
        assert held.held_arrived.is_set()
        assert ("t", 0) not in live_offsets(host.state, "g")
        # the client looks the coordinator up again and commits newer offsets through
        # broker 102: applied
        assert code_of(await b.offset_commit(header, commit_body(10))) == 0
        assert live_offsets(host.state, "g")[("t", 0)][0] == 10
        # the link heals: the stalled forward is handled now, and refused
        held.release.set()
        await until(lambda: held.held_outcome, "the held forward handled")
        assert live_offsets(host.state, "g")[("t", 0)][0] == 10  # not back to 5
        assert isinstance(held.held_outcome[0], RequestTimedOutError), held.held_outcome
        assert svc.stale_refused == 1
    finally:
        held.release.set()
        await conn_a.close()
        await conn_b.close()


async def test_a_commit_queued_past_its_deadline_is_not_proposed() -> None:
    """A forward that arrived in time but waits behind a slow proposal (a quorum that
    lost a member) is dropped once its deadline passes, before it is proposed; a
    commit without a deadline (dmq's own consumers) waits and is applied as before."""
    host = FakeHost()
    svc = GroupService(host)
    gate = asyncio.Event()
    proposing = asyncio.Event()
    propose = host.propose

    async def slow_propose(records: list[Any]) -> None:
        proposing.set()
        await gate.wait()
        await propose(records)

    host.propose = slow_propose  # type: ignore[method-assign]

    def body(offset: int, deadline_ms: int | None, partition: int = 0) -> dict[str, Any]:
        return {"group_id": "g", "member_id": "", "member_epoch": -1,
                "topics": [["t", [[partition, offset, None]]]], "deadline_ms": deadline_ms}

    try:
        first = asyncio.ensure_future(svc.offset_commit(CTX, body(3, None)))
        await asyncio.wait_for(proposing.wait(), 5)  # the first commit in flight
        deadline = host.clock.wall_ms() + 50
        fenced = asyncio.ensure_future(svc.offset_commit(CTX, body(7, deadline)))
        native = asyncio.ensure_future(svc.offset_commit(CTX, body(9, None, partition=1)))
        await until(lambda: len(svc._pending) == 2, "both commits queued")
        await until(lambda: host.clock.wall_ms() > deadline, "the deadline passed",
                    poll_s=0.01)
        gate.set()
        assert (await first)["topics"] == [["t", [[0, 0]]]]
        with pytest.raises(RequestTimedOutError, match="deadline"):
            await fenced
        assert (await native)["topics"] == [["t", [[1, 0]]]]
        offsets = live_offsets(host.state, "g")
        assert offsets[("t", 0)][0] == 3 and offsets[("t", 1)][0] == 9
        assert svc.stale_refused == 1
    finally:
        gate.set()
        await svc.close()


async def test_every_forwarded_group_write_carries_the_brokers_deadline() -> None:
    """OffsetCommit, OffsetDelete, Heartbeat, LeaveGroup, SyncGroup, JoinGroup and
    ConsumerGroupHeartbeat, each with the time its broker stops waiting for it."""
    sent: list[tuple[ApiKey, dict[str, Any], int]] = []

    async def route(key: ApiKey, body: Any, timeout_ms: int) -> Any:
        sent.append((key, body, timeout_ms))
        raise TimeoutError

    config = ClusterConfig((NodeAddress(1, "127.0.0.1", 1),), ())
    apis = KafkaApis(config, 101, None, lambda: EMPTY_IMAGE, route)  # type: ignore[arg-type]
    clock = ManualClock()
    apis.clock = clock
    h = RequestHeader(8, 8, 1, "k")
    await apis.offset_commit(h, commit_body(5))
    await apis.offset_delete(RequestHeader(47, 0, 1, "k"), {
        "GroupId": "g", "Topics": [{"Name": "t", "Partitions": [{"PartitionIndex": 0}]}]})
    await apis.heartbeat(RequestHeader(12, 4, 1, "k"), {
        "GroupId": "g", "GenerationId": 1, "MemberId": "m", "GroupInstanceId": None})
    await apis.leave_group(RequestHeader(13, 5, 1, "k"), {
        "GroupId": "g", "Members": [{"MemberId": "m", "GroupInstanceId": None}]})
    await apis.sync_group(RequestHeader(14, 5, 1, "k"), {
        "GroupId": "g", "GenerationId": 1, "MemberId": "m", "GroupInstanceId": None,
        "ProtocolType": "consumer", "ProtocolName": "range", "Assignments": []})
    await apis.join_group(RequestHeader(11, 9, 1, "k"), {
        "GroupId": "g", "SessionTimeoutMs": 10_000, "RebalanceTimeoutMs": 1_000,
        "MemberId": "", "GroupInstanceId": None, "ProtocolType": "consumer",
        "Protocols": [{"Name": "range", "Metadata": b""}], "Reason": None})
    await apis.consumer_group_heartbeat(RequestHeader(68, 0, 1, "k"), {
        "GroupId": "g", "MemberId": "m", "MemberEpoch": 0, "InstanceId": None,
        "RackId": None, "RebalanceTimeoutMs": 60_000, "SubscribedTopicNames": ["t"],
        "ServerAssignor": None, "TopicPartitions": []})
    assert [k for k, _, _ in sent] == [
        ApiKey.OFFSET_COMMIT, ApiKey.OFFSET_DELETE, ApiKey.HEARTBEAT, ApiKey.LEAVE_GROUP,
        ApiKey.SYNC_GROUP, ApiKey.JOIN_GROUP, ApiKey.CONSUMER_GROUP_HEARTBEAT]
    for key, body, timeout_ms in sent:
        assert body["deadline_ms"] == clock.wall_ms() + timeout_ms, key
        REQUEST_SCHEMAS[key].check(dict(body))  # a body the controller accepts


def test_a_deadline_that_is_not_a_time_is_refused() -> None:
    schema = REQUEST_SCHEMAS[ApiKey.OFFSET_COMMIT]
    body = {"group_id": "g", "member_id": "", "member_epoch": -1, "topics": []}
    assert schema.check(dict(body))["deadline_ms"] is None  # dmq's own clients
    for bad in (-1, 2**63, "soon"):
        with pytest.raises(InvalidRequestError, match="deadline_ms"):
            schema.check({**body, "deadline_ms": bad})


@pytest.mark.parametrize("handler", ["heartbeat", "offset_commit", "offset_delete",
                                     "join_group", "sync_group", "classic_heartbeat",
                                     "leave_group"])
async def test_every_fenced_group_write_is_refused_past_its_deadline(handler: str) -> None:
    """Each group write a broker forwards is refused by the controller when it arrives
    after its deadline, before it touches the group; one arriving in time is not."""
    host = FakeHost()
    svc = GroupService(host)
    try:
        late = {"group_id": "g", "deadline_ms": host.clock.wall_ms() - 1}
        with pytest.raises(RequestTimedOutError, match="after its deadline"):
            result = getattr(svc, handler)(CTX, late)
            if asyncio.iscoroutine(result):
                await result
        assert svc.stale_refused == 1
        # in time: past the fence (the minimal body then fails on what it lacks)
        in_time = {"group_id": "g", "deadline_ms": host.clock.wall_ms() + 60_000}
        with pytest.raises(Exception) as exc:
            result = getattr(svc, handler)(CTX, in_time)
            if asyncio.iscoroutine(result):
                await result
        assert not isinstance(exc.value, RequestTimedOutError)
        assert svc.stale_refused == 1
    finally:
        await svc.close()
