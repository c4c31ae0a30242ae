"""The cluster id is written once to the metadata log by the cluster's first active
controller and then answered by every node, through a controller failover and a restart
of the whole quorum (in-process nodes, real Raft on loopback sockets and files)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dmq.client.admin import Admin
from dmq.config import parse_config
from dmq.controller.cluster_id import quorum_cluster_id
from dmq.controller.service import ControllerService
from dmq.node import Node, resolve_node
from tests.support.procs import free_ports
from tests.support.waiting import async_wait_until

SETTINGS = {"raft.tick.ms": 20, "broker.session.timeout.ms": 3000,
            "broker.heartbeat.interval.ms": 200}


class Quorum:
    def __init__(self, root: Path) -> None:
        ports = free_ports(3)
        self.config = parse_config({
            "controllers": [{"id": i + 1, "host": "127.0.0.1", "port": ports[i]}
                            for i in range(3)],
            "brokers": [], "settings": SETTINGS})
        self.root = root
        self.nodes: dict[int, Node] = {}

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{c.port}" for c in self.config.controllers)

    async def start(self, node_id: int) -> None:
        spec = resolve_node(self.config, node_id, ("controller",), self.root / f"n{node_id}")
        node = Node(self.config, spec)
        await node.start()
        self.nodes[node_id] = node

    async def stop(self, node_id: int) -> None:
        await self.nodes.pop(node_id).stop()

    def controllers(self) -> dict[int, ControllerService]:
        return {nid: s for nid, n in self.nodes.items() for s in n.services
                if isinstance(s, ControllerService)}

    def ids_answered(self) -> dict[int, str | None]:
        """node -> the cluster id its controller state holds."""
        return {nid: c.state.cluster_id for nid, c in self.controllers().items()}

    def active(self) -> int | None:
        return next((nid for nid, c in self.controllers().items() if c.is_active), None)


@pytest.fixture
async def quorum(tmp_path: Path) -> AsyncIterator[Quorum]:
    q = Quorum(tmp_path)
    try:
        for nid in (1, 2, 3):
            await q.start(nid)
        yield q
    finally:
        for nid in list(q.nodes):
            await q.stop(nid)


async def _described(q: Quorum) -> str:
    async with Admin(q.bootstrap) as admin:
        cluster_id: str = (await admin.describe_cluster())["cluster_id"]
        return cluster_id


async def test_the_first_active_controller_names_the_cluster_once(quorum: Quorum) -> None:
    await async_wait_until(lambda: quorum.active() is not None, 10, "an active controller")
    await async_wait_until(lambda: len(set(quorum.ids_answered().values())) == 1
                           and None not in quorum.ids_answered().values(),
                           10, "every controller applied the cluster id")
    first = await _described(quorum)
    assert len(first) == 22 and first != quorum_cluster_id(quorum.config)  # a new cluster

    # the active controller dies: its successor keeps the id (writes no second one)
    old = quorum.active()
    assert old is not None
    await quorum.stop(old)
    await async_wait_until(lambda: quorum.active() not in (None, old), 10,
                           "a new active controller")
    assert await _described(quorum) == first
    await quorum.start(old)

    # the whole quorum restarts from its files: the same id
    for nid in list(quorum.nodes):
        await quorum.stop(nid)
    for nid in (1, 2, 3):
        await quorum.start(nid)
    await async_wait_until(lambda: quorum.active() is not None, 10, "an active controller")
    assert await _described(quorum) == first
    assert set(quorum.ids_answered().values()) == {first}
    assert all(c.state.skipped_records == 0 for c in quorum.controllers().values())
