"""Three controllers (real Raft, real sockets on ephemeral loopback ports) in one
process, with brokers played by in-process `BrokerLifecycle`s that each listen for
ControllerChanged notices. Covers registration, heartbeats, metadata propagation,
controller failover, fencing and return of a broker, controlled shutdown, bad input,
and a full restart of the quorum from disk."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dmq.client.admin import Admin, NewTopic
from dmq.config import parse_config
from dmq.metadata.image import FENCED, NO_LEADER, ONLINE
from dmq.metadata.records import CreateTopic
from dmq.node import Node, resolve_node
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import request_once
from dmq.protocol.errors import DmqError, ErrorCode
from tests.support.fake_broker import FakeBroker
from tests.support.procs import free_ports
from tests.support.waiting import async_wait_until as wait_for

SETTINGS = {"broker.session.timeout.ms": 1500, "broker.heartbeat.interval.ms": 200,
            "raft.tick.ms": 20, "auto.leader.rebalance.enable": False,
            "default.replication.factor": 3, "num.partitions": 2}


class InProcCluster:
    def __init__(self, root: Path, controllers: int = 3, brokers: int = 3,
                 settings: dict[str, Any] | None = None) -> None:
        ports = free_ports(controllers + brokers)
        self.config = parse_config({
            "controllers": [{"id": i + 1, "host": "127.0.0.1", "port": ports[i]}
                            for i in range(controllers)],
            "brokers": [{"id": 101 + i, "host": "127.0.0.1", "port": ports[controllers + i]}
                        for i in range(brokers)],
            "settings": {**SETTINGS, **(settings or {})}})
        self.root = root
        self.nodes: dict[int, Node] = {}
        self.brokers = {101 + i: FakeBroker(self.config, 101 + i) for i in range(brokers)}

    @property
    def bootstrap(self) -> str:
        return ",".join(c.address for c in self.config.controllers)

    async def start_controller(self, node_id: int) -> Node:
        spec = resolve_node(self.config, node_id, ("controller",), self.root / f"node-{node_id}")
        node = Node(self.config, spec)
        await node.start()
        self.nodes[node_id] = node
        return node

    async def stop_controller(self, node_id: int) -> None:
        node = self.nodes.pop(node_id)
        await node.stop()

    def controller(self, node_id: int) -> Any:
        return self.nodes[node_id].services[0]

    def active(self) -> Any | None:
        for node in self.nodes.values():
            svc = node.services[0]
            if svc.is_active:
                return svc
        return None

    async def wait_active(self, timeout_s: float = 5.0) -> Any:
        return await wait_for(self.active, timeout_s, "an active controller")

    async def start(self) -> None:
        for c in self.config.controllers:
            await self.start_controller(c.node_id)
        await self.wait_active()
        await asyncio.gather(*(b.start() for b in self.brokers.values()))

    async def stop(self) -> None:
        for b in self.brokers.values():
            await b.kill()
        for node_id in list(self.nodes):
            await self.stop_controller(node_id)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[InProcCluster]:
    c = InProcCluster(tmp_path)
    try:
        await c.start()
        yield c
    finally:
        await c.stop()


def _states(ctl: Any) -> dict[int, str]:
    return {b.broker_id: b.state for b in ctl.state.brokers.values()}


async def test_brokers_register_and_metadata_propagates(cluster: InProcCluster) -> None:
    ctl = await cluster.wait_active()
    await wait_for(lambda: _states(ctl) == {101: ONLINE, 102: ONLINE, 103: ONLINE}, 5,
                   "all brokers ONLINE")
    async with Admin(cluster.bootstrap) as admin:
        status = await admin.cluster_status()
        assert status["controller_id"] == ctl.node_id
        assert sorted(c["role"] for c in status["controllers"]) == ["FOLLOWER", "FOLLOWER",
                                                                     "LEADER"]
        assert all(b["state"] == ONLINE and 0 <= b["last_heartbeat_ms_ago"] < 1500
                   for b in status["brokers"])
        # propagation: every broker's image reaches the version of the change
        t0 = time.monotonic()
        await admin.create_topic("orders", 6, 3)
        version = ctl.state.version
        lags = []
        for b in cluster.brokers.values():
            await wait_for(lambda b=b: b.lifecycle.image.version >= version, 5,
                           f"broker {b.broker_id} catching up")
            seen = next(ts for ts, img in b.images if img.version >= version)
            lags.append(seen - t0)
        print(f"\nmetadata propagation after CreateTopics: max {max(lags) * 1000:.1f} ms")
        img = cluster.brokers[101].lifecycle.image
        assert len(img.topics["orders"].partitions) == 6
        assert img.controller_id == ctl.node_id
        described = await admin.describe_topics(["orders"])
        def shape(t: Any) -> dict[int, Any]:
            return {p: (i.leader, i.replicas, i.isr) for p, i in t.partitions.items()}

        assert shape(described["orders"]) == shape(img.topics["orders"])
        assert await admin.list_topics() == ["orders"]


async def test_controller_failover_brokers_follow(cluster: InProcCluster) -> None:
    old = await cluster.wait_active()
    await wait_for(lambda: set(_states(old).values()) == {ONLINE}, 5, "brokers ONLINE")
    t0 = time.monotonic()
    await cluster.stop_controller(old.node_id)
    new = await cluster.wait_active(5)
    elected = time.monotonic() - t0
    beats = {b: cluster.brokers[b].lifecycle.stats_heartbeats for b in cluster.brokers}

    def following() -> bool:
        return all(b.lifecycle.controller is not None
                   and b.lifecycle.controller.node_id == new.node_id
                   and b.lifecycle.stats_heartbeats > beats[bid]
                   for bid, b in cluster.brokers.items())

    await wait_for(following, 3, "brokers heartbeating to the new controller")
    followed = time.monotonic() - t0
    print(f"\nfailover: new controller after {elected * 1000:.0f} ms, brokers following after "
          f"{followed * 1000:.0f} ms")
    assert set(_states(new).values()) == {ONLINE}
    # writes work on the new controller
    async with Admin(cluster.bootstrap) as admin:
        await admin.create_topic("after", 3, 3)
    await cluster.start_controller(old.node_id)  # rejoins as a follower and catches up
    await wait_for(lambda: "after" in cluster.controller(old.node_id).state.topics, 5,
                   "old controller catching up")


async def test_broker_failure_fences_and_moves_leaders_then_returns(
        cluster: InProcCluster) -> None:
    ctl = await cluster.wait_active()
    await wait_for(lambda: set(_states(ctl).values()) == {ONLINE}, 5, "brokers ONLINE")
    async with Admin(cluster.bootstrap) as admin:
        await admin.create_topic("t", 12, 3)
        await admin.create_topic("solo", 6, 1)
    led = [p for p in ctl.state.topics["t"].partitions.values() if p.leader == 102]
    assert led
    t0 = time.monotonic()
    await cluster.brokers[102].kill()
    await wait_for(lambda: ctl.state.brokers[102].state == FENCED, 5, "broker 102 FENCED")
    print(f"\nbroker fenced {(time.monotonic() - t0) * 1000:.0f} ms after it stopped "
          f"(session timeout 1500 ms)")
    for p in ctl.state.topics["t"].partitions.values():
        assert p.leader != 102 and p.leader in p.isr and 102 not in p.isr
    for old in led:
        new = ctl.state.topics["t"].partitions[old.partition]
        assert new.leader in old.isr and new.leader_epoch == old.leader_epoch + 1
    for p in ctl.state.topics["solo"].partitions.values():
        if p.replicas == (102,):
            assert p.leader == NO_LEADER and p.isr == (102,)
    # the others saw it too
    for bid in (101, 103):
        await wait_for(lambda bid=bid: cluster.brokers[bid].lifecycle.image.brokers[102].state
                       == FENCED, 5, "brokers seeing the fence")
    await cluster.brokers[102].restart()
    await wait_for(lambda: ctl.state.brokers[102].state == ONLINE, 5, "broker 102 back ONLINE")
    # the broker learns it is unfenced from the answer to its next heartbeat, which may
    # arrive after the controller has applied the change
    await wait_for(lambda: not cluster.brokers[102].lifecycle.is_fenced, 5,
                   "broker 102 seeing itself unfenced")
    for p in ctl.state.topics["solo"].partitions.values():
        assert p.leader == p.replicas[0]  # offline partitions came back with their replica


async def test_controlled_shutdown_moves_leadership(cluster: InProcCluster) -> None:
    ctl = await cluster.wait_active()
    await wait_for(lambda: set(_states(ctl).values()) == {ONLINE}, 5, "brokers ONLINE")
    async with Admin(cluster.bootstrap) as admin:
        await admin.create_topic("t", 9, 3)
    assert await cluster.brokers[101].lifecycle.controlled_shutdown(5000)
    assert all(p.leader != 101 for p in ctl.state.topics["t"].partitions.values())
    assert ctl.state.brokers[101].state == "SHUTTING_DOWN"
    # a leadership with nowhere to go ends the wait at once instead of at the timeout
    async with Admin(cluster.bootstrap) as admin:
        await admin.create_topic("solo", 3, 1)
    lc = cluster.brokers[102].lifecycle
    if any(p.leader == 102 for p in ctl.state.topics["solo"].partitions.values()):
        sent: list[ApiKey] = []
        request = lc.channel.request

        async def counted(api_key: ApiKey, body: Any, timeout_ms: int = 10_000) -> Any:
            sent.append(api_key)
            return await request(api_key, body, timeout_ms)

        lc.channel.request = counted  # type: ignore[method-assign]
        assert not await lc.controlled_shutdown(5000)
        # one answer naming only unmovable leaderships ends it: not asked again every
        # 200 ms until the 5 s are over
        assert sent.count(ApiKey.CONTROLLED_SHUTDOWN) == 1


async def test_thousand_partitions_created_fast_and_spread(cluster: InProcCluster) -> None:
    ctl = await cluster.wait_active()
    await wait_for(lambda: set(_states(ctl).values()) == {ONLINE}, 5, "brokers ONLINE")
    async with Admin(cluster.bootstrap) as admin:
        before = ctl.state.version
        t0 = time.monotonic()
        await admin.create_topic("big", 1000, 3)
        took = time.monotonic() - t0
        print(f"\n1000 partitions x RF 3 created in {took * 1000:.0f} ms")
    # created as one record in one Raft entry, not an entry (a quorum round) per partition
    entries = [recs for _, recs in ctl.state.records_since(before, 1 << 20) or ()
               if any(r[0] == CreateTopic.TYPE and r[1] == "big" for r in recs)]
    assert [[len(r[4]) for r in recs if r[0] == CreateTopic.TYPE] for recs in entries] == [
        [1000]]
    leaders = Counter(p.leader for p in ctl.state.topics["big"].partitions.values())
    assert set(leaders) == {101, 102, 103}
    assert max(leaders.values()) - min(leaders.values()) <= 1
    for b in cluster.brokers.values():
        await wait_for(lambda b=b: "big" in b.lifecycle.image.topics, 5, "brokers see it")


async def test_bad_input_gets_its_own_code_and_changes_nothing(cluster: InProcCluster) -> None:
    ctl = await cluster.wait_active()
    await wait_for(lambda: set(_states(ctl).values()) == {ONLINE}, 5, "brokers ONLINE")
    follower = next(n for n in cluster.nodes if n != ctl.node_id)
    fport = cluster.config.node(follower).port
    aport = cluster.config.node(ctl.node_id).port

    async def code(port: int, key: ApiKey, body: Any, node_id: int | None = 101) -> ErrorCode:
        try:
            await request_once("127.0.0.1", port, key, body, node_id=node_id)
        except DmqError as exc:
            return exc.code
        return ErrorCode.NONE

    # a follower names the leader
    try:
        await request_once("127.0.0.1", fport, ApiKey.CREATE_TOPICS, {"topics": []})
        raise AssertionError("follower accepted a write")
    except DmqError as exc:
        assert exc.code is ErrorCode.NOT_CONTROLLER and exc.leader is not None
        assert exc.leader[0] == ctl.node_id
    version = ctl.state.version
    # broker APIs only on a connection identified as that broker
    assert await code(aport, ApiKey.BROKER_HEARTBEAT, {
        "broker_id": 999, "broker_epoch": 1, "metadata_version": 0}) \
        is ErrorCode.CLUSTER_AUTHORIZATION_FAILED
    assert await code(aport, ApiKey.BROKER_HEARTBEAT, {
        "broker_id": 101, "broker_epoch": 1, "metadata_version": 0}, node_id=None) \
        is ErrorCode.CLUSTER_AUTHORIZATION_FAILED
    epoch = ctl.state.brokers[101].broker_epoch
    assert await code(aport, ApiKey.BROKER_HEARTBEAT, {
        "broker_id": 101, "broker_epoch": epoch - 1, "metadata_version": 0}) \
        is ErrorCode.STALE_BROKER_EPOCH
    assert await code(aport, ApiKey.ALTER_PARTITION, {
        "broker_id": 101, "broker_epoch": epoch - 1, "topics": []}) \
        is ErrorCode.STALE_BROKER_EPOCH
    assert await code(aport, ApiKey.CREATE_TOPICS, {"topics": [{"name": 5}]}) \
        is ErrorCode.INVALID_REQUEST
    async with Admin(cluster.bootstrap) as admin:
        res = await admin.create_topics([NewTopic("ok", 1, 1), NewTopic("bad/name", 1, 1),
                                         NewTopic("zero", 0, 1), NewTopic("rf", 1, 4),
                                         NewTopic("cfg", 1, 1, {"retention.ms": "x"})])
        assert res["ok"].error is None
        assert {n: r.error.code for n, r in res.items() if r.error} == {
            "bad/name": ErrorCode.INVALID_TOPIC, "zero": ErrorCode.INVALID_PARTITIONS,
            "rf": ErrorCode.INVALID_REPLICATION_FACTOR, "cfg": ErrorCode.INVALID_CONFIG}
        res = await admin.create_topics([NewTopic("ok", 1, 1)])
        assert res["ok"].error.code is ErrorCode.TOPIC_ALREADY_EXISTS
        assert set(ctl.state.topics) == {"ok"} and ctl.state.version > version
        # configs and partitions through the admin
        assert (await admin.alter_configs({"ok": {"retention.ms": "1000"}}))["ok"] is None
        assert (await admin.alter_configs({"ok": {"bogus": "1"}}))["ok"].code \
            is ErrorCode.INVALID_CONFIG
        cfg = (await admin.describe_configs(["ok"]))["ok"]
        assert cfg["retention.ms"] == "1000" and cfg["cleanup.policy"] == "delete"
        assert (await admin.create_partitions({"ok": 3}))["ok"] is None
        assert (await admin.create_partitions({"ok": 2}))["ok"].code \
            is ErrorCode.INVALID_PARTITIONS
        assert (await admin.delete_topics(["ok", "nope"])) ["nope"].code \
            is ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
        assert "ok" not in ctl.state.topics
        # auto-creation through any controller, with the cluster defaults
        img = await admin.metadata(["auto"], allow_auto_create=True)
        assert len(img.topics["auto"].partitions) == 2
        body = await request_once("127.0.0.1", fport, ApiKey.METADATA,
                                  {"topics": ["auto2"], "allow_auto_create": True})
        assert body["topics"][0]["error"] == 0
        assert body["controller"][0] == ctl.node_id
        pid = await request_once("127.0.0.1", aport, ApiKey.INIT_PRODUCER_ID, {})
        block = await request_once("127.0.0.1", aport, ApiKey.ALLOCATE_PRODUCER_IDS,
                                   {"broker_id": 101, "broker_epoch": epoch}, node_id=101)
        assert block["first_producer_id"] > pid["producer_id"] and block["count"] == 1000


async def test_full_quorum_restart_keeps_everything(tmp_path: Path) -> None:
    c = InProcCluster(tmp_path)
    try:
        await c.start()
        ctl = await c.wait_active()
        await wait_for(lambda: set(_states(ctl).values()) == {ONLINE}, 5, "brokers ONLINE")
        async with Admin(c.bootstrap) as admin:
            await admin.create_topic("keep", 4, 3, {"retention.ms": "12345"})
        await ctl.commit_offsets("g1", [["keep", [[0, 42, "meta"], [3, 7, None]]]])
        before = ctl.state.to_snapshot()
        epochs = {b: ctl.state.brokers[b].broker_epoch for b in c.brokers}
        for node_id in list(c.nodes):
            await c.stop_controller(node_id)
        for cfg in c.config.controllers:
            await c.start_controller(cfg.node_id)
        new = await c.wait_active(10)
        state = new.state
        assert state.topics["keep"].configs == {"retention.ms": "12345"}
        assert state.to_snapshot()["topics"] == before["topics"]
        assert {b: state.brokers[b].broker_epoch for b in c.brokers} == epochs
        offsets = {tp: v[:2] for tp, v in state.offsets_of("g1").items()}
        assert offsets == {("keep", 0): (42, "meta"), ("keep", 3): (7, None)}
        # brokers kept their registrations and are ONLINE under the new controller
        await wait_for(lambda: set(_states(new).values()) == {ONLINE}, 5, "brokers ONLINE")
    finally:
        await c.stop()


async def test_fenced_broker_that_heartbeats_again_is_unfenced(cluster: InProcCluster) -> None:
    """A broker fenced while it was still alive (a long pause, a partition) comes back
    by itself once it has seen its own fencing."""
    ctl = await cluster.wait_active()
    await wait_for(lambda: set(_states(ctl).values()) == {ONLINE}, 5, "brokers ONLINE")
    await ctl.mutate(ctl._plan(ctl.planner.fence_broker, 103))
    fenced_at = ctl.state.broker_changed_at[103]
    assert ctl.state.brokers[103].state == FENCED
    await wait_for(lambda: ctl.state.brokers[103].state == ONLINE, 3, "broker 103 unfenced")
    assert ctl.state.broker_changed_at[103] > fenced_at
    assert cluster.brokers[103].lifecycle.state.version >= fenced_at


async def test_stale_controller_notice_is_ignored(cluster: InProcCluster) -> None:
    ctl = await cluster.wait_active()
    lc = cluster.brokers[101].lifecycle
    await wait_for(lambda: lc.controller is not None and lc.controller.node_id == ctl.node_id,
                   3, "broker following the controller")
    term = ctl.raft.status()["term"]
    other = next(c for c in cluster.config.controllers if c.node_id != ctl.node_id)
    port = cluster.config.node(101).port
    await request_once("127.0.0.1", port, ApiKey.CONTROLLER_CHANGED, {
        "controller_id": other.node_id, "term": term - 1, "host": other.host,
        "port": other.port})
    assert lc.controller.node_id == ctl.node_id
    # a newer term switches at once (here to a follower, which then names the leader)
    await request_once("127.0.0.1", port, ApiKey.CONTROLLER_CHANGED, {
        "controller_id": other.node_id, "term": term + 1, "host": other.host,
        "port": other.port})
    assert lc.controller.node_id == other.node_id
    beats = lc.stats_heartbeats
    await wait_for(lambda: lc.stats_heartbeats > beats + 1, 3, "heartbeats continuing")
    assert lc.controller.node_id == ctl.node_id and not lc.is_fenced


async def test_lagging_controller_catches_up_from_a_snapshot(tmp_path: Path) -> None:
    """With a small snapshot interval, a controller kept down while many changes commit
    is brought back by an InstallSnapshot of the metadata state, and brokers fetching
    from it get the same image."""
    c = InProcCluster(tmp_path, settings={"raft.snapshot.interval.entries": 40})
    try:
        await c.start()
        ctl = await c.wait_active()
        await wait_for(lambda: set(_states(ctl).values()) == {ONLINE}, 5, "brokers ONLINE")
        lagging = next(n for n in c.nodes if n != ctl.node_id)
        await c.stop_controller(lagging)
        async with Admin(c.bootstrap) as admin:
            await admin.create_topic("s", 3, 3)
            for i in range(120):
                await admin.alter_configs({"s": {"retention.ms": str(1000 + i)}})
        await c.start_controller(lagging)
        back = c.controller(lagging)
        await wait_for(lambda: back.state.version >= ctl.state.version, 10, "catching up")
        assert back.state.to_snapshot() == ctl.state.to_snapshot()
        assert back.state.topics["s"].configs == {"retention.ms": "1119"}
        assert back.raft.status()["snapshot_index"] > 0
    finally:
        await c.stop()


async def test_heartbeat_of_a_broker_unregistered_meanwhile_is_refused_and_it_returns(
        cluster: InProcCluster) -> None:
    """A heartbeat whose write (here a controlled shutdown) lets an unregistration of
    its broker apply first answers BROKER_ID_NOT_REGISTERED (not an internal error), and
    the broker, still running, registers again by itself."""
    ctl = await cluster.wait_active()
    await wait_for(lambda: set(_states(ctl).values()) == {ONLINE}, 5, "brokers ONLINE")
    epoch = ctl.state.brokers[103].broker_epoch
    write = ctl.mutate

    async def write_then_unregister(plan: Any, *args: Any) -> Any:
        out = await write(plan, *args)
        ctl.mutate = write
        await write(ctl._plan(ctl.planner.unregister_broker, 103))
        return out

    ctl.mutate = write_then_unregister
    with pytest.raises(DmqError) as err:
        await ctl.handle_broker_heartbeat(None, {
            "broker_id": 103, "broker_epoch": epoch, "metadata_version": ctl.state.version,
            "want_shutdown": True, "want_fence": False})
    assert err.value.code is ErrorCode.BROKER_ID_NOT_REGISTERED
    await wait_for(lambda: 103 in ctl.state.brokers and ctl.state.brokers[103].state == ONLINE
                   and ctl.state.brokers[103].broker_epoch > epoch, 5,
                   "broker 103 registered again")
