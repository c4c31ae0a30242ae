"""Controller discovery and routing over real loopback sockets: parallel probes, the
first answer naming a leader wins, NOT_CONTROLLER hints re-route, lost controllers are
re-discovered. The 'nodes' here are protocol servers with scripted answers."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from dmq.metadata.discovery import (
    ControllerAddress,
    ControllerChannel,
    backoff_ms,
    find_controller,
    parse_bootstrap,
)
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import NotControllerError
from dmq.protocol.server import ProtocolServer, RequestContext
from tests.support.procs import free_ports
from tests.support.waiting import until


class Node:
    """A fake node: answers METADATA naming `leader`, and CREATE_TOPICS only if it is
    the leader (else NOT_CONTROLLER with a hint)."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.hold: asyncio.Event | None = None  # METADATA answers wait for it when set
        self.silent = False  # a paused controller: writes are never answered
        self.leader: ControllerAddress | None = None
        self.hits = 0
        self.probes = 0  # METADATA requests answered
        self.server = ProtocolServer(host="127.0.0.1", port=0, node_id=node_id)
        self.server.register(ApiKey.METADATA, self.metadata)
        self.server.register(ApiKey.CREATE_TOPICS, self.write)

    @property
    def addr(self) -> tuple[str, int]:
        return ("127.0.0.1", self.server.bound_port)

    async def metadata(self, ctx: RequestContext, body: Any) -> Any:
        if self.hold is not None:
            await self.hold.wait()
        out: dict[str, Any] = {"controller_id": -1, "version": 0, "brokers": [], "topics": []}
        if self.leader is not None:
            out["controller_id"] = self.leader.node_id
            out["controller"] = [self.leader.node_id, self.leader.host, self.leader.port]
        self.probes += 1
        return out

    async def write(self, ctx: RequestContext, body: Any) -> Any:
        self.hits += 1
        if self.silent:
            await asyncio.get_running_loop().create_future()  # never answered
        if self.leader is None or self.leader.node_id != self.node_id:
            hint = None if self.leader is None else (self.leader.node_id, self.leader.host,
                                                     self.leader.port)
            raise NotControllerError("not me", leader=hint)
        return {"topics": [], "by": self.node_id}


@pytest.fixture
async def nodes() -> Any:
    ns = [Node(1), Node(2), Node(3)]
    for n in ns:
        await n.server.start()
    yield ns
    for n in ns:
        await n.server.close(100)


def _lead(nodes: list[Node], leader: Node | None, told: list[Node] | None = None) -> None:
    addr = None if leader is None else ControllerAddress(leader.node_id, *leader.addr)
    for n in told if told is not None else nodes:
        n.leader = addr


def test_parse_bootstrap() -> None:
    assert parse_bootstrap("a:1, b:2,a:1") == [("a", 1), ("b", 2)]
    assert parse_bootstrap(["[::1]:5"]) == [("[::1]", 5)]
    for bad in ("", "a", "a:b", ":1"):
        with pytest.raises(ValueError):
            parse_bootstrap(bad)


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    values = [backoff_ms(a, 50, 1000, rng) for a in range(10)]
    assert 25 <= values[0] <= 50 and all(500 <= v <= 1000 for v in values[5:])


async def test_first_answer_naming_a_leader_wins(nodes: list[Node]) -> None:
    nodes[0].hold = asyncio.Event()  # slow (answers once the test lets it) and knows the leader
    _lead(nodes, nodes[1], told=[nodes[0], nodes[2]])
    # node 1 answers only once the search has ended: a search that waited for every
    # answer would wait out its minute, and the 10 s bound fails it
    found = await asyncio.wait_for(find_controller([n.addr for n in nodes], 60_000), 10)
    assert found.node_id == 2 and nodes[0].probes == 0
    nodes[0].hold.set()
    # dead addresses are skipped
    dead = [("127.0.0.1", p) for p in free_ports(2)]
    assert (await find_controller([*dead, nodes[2].addr], 3000)).node_id == 2


async def test_no_leader_backs_off_then_fails(nodes: list[Node]) -> None:
    with pytest.raises(NotControllerError):
        await find_controller([n.addr for n in nodes], 300)


async def test_channel_follows_hints_and_failover(nodes: list[Node]) -> None:
    _lead(nodes, nodes[0])
    ch = ControllerChannel([n.addr for n in nodes])
    try:
        assert (await ch.request(ApiKey.CREATE_TOPICS, {"topics": []}, 3000))["by"] == 1
        # leadership moves: the old leader answers NOT_CONTROLLER naming node 3
        _lead(nodes, nodes[2])
        assert (await ch.request(ApiKey.CREATE_TOPICS, {"topics": []}, 3000))["by"] == 3
        assert ch.controller is not None and ch.controller.node_id == 3
        # the leader goes away: discovery finds the next one
        await nodes[2].server.close(100)
        _lead(nodes, nodes[1], told=nodes[:2])
        assert (await ch.request(ApiKey.CREATE_TOPICS, {"topics": []}, 5000))["by"] == 2
        # a pushed notice switches at once
        ch.set_controller(ControllerAddress(1, *nodes[0].addr, 9))
        _lead(nodes, nodes[0], told=nodes[:2])
        hits = nodes[1].hits
        assert (await ch.request(ApiKey.CREATE_TOPICS, {"topics": []}, 3000))["by"] == 1
        assert nodes[1].hits == hits
    finally:
        await ch.close()


def _client_tasks() -> set[asyncio.Task[Any]]:
    """Tasks other than this one and the fake nodes' own (their servers' connections and
    handlers)."""
    def servers(t: asyncio.Task[Any]) -> bool:
        code = getattr(t.get_coro(), "cr_code", None)
        return code is not None and code.co_filename.endswith(("server.py", __file__))
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()
            and not servers(t)}


async def test_channel_watch_leaves_a_silent_controller_and_owns_its_tasks(
        nodes: list[Node]) -> None:
    """The controller stops answering with its connection open: after `watch_after_ms`
    the channel asks the other nodes, switches to the controller they name and re-sends
    there, long before the request's timeout. Nothing it started outlives the request
    and `close`: probes, the abandoned request, the old connection's close."""
    _lead(nodes, nodes[0])
    ch = ControllerChannel([n.addr for n in nodes], watch_after_ms=100, watch_interval_ms=50)
    before = _client_tasks()
    try:
        assert (await ch.request(ApiKey.CREATE_TOPICS, {"topics": []}, 3000))["by"] == 1
        nodes[0].silent = True
        probed = [n.probes for n in nodes]
        req = asyncio.ensure_future(ch.request(ApiKey.CREATE_TOPICS, {"topics": []}, 10_000))
        # the watch asks every node, twice over, and all still name node 1: it stays
        await until(lambda: all(n.probes >= p + 2 for n, p in zip(nodes, probed, strict=True)),
                    "the channel's watch asking every node twice")
        assert not req.done() and nodes[0].hits == 2 and nodes[1].hits == 0
        _lead(nodes, nodes[1])
        # re-sent to node 2 once a node names it: answered, not timed out (the 10 s of the
        # request would end in RequestTimedOutError)
        assert (await req)["by"] == 2
        assert nodes[1].hits == 1
        assert ch.controller is not None and ch.controller.node_id == 2
        assert _client_tasks() - before == set()
        # a switch drops the open connection: `close` still waits for it to be closed
        ch.set_controller(ControllerAddress(3, *nodes[2].addr))
    finally:
        await ch.close()
    assert _client_tasks() - before == set()


async def test_a_pushed_controller_cuts_a_discovery_in_progress_short(
        nodes: list[Node]) -> None:
    """No node names a controller to probes (the new one answers them too late), so the
    request sits in discovery backing off; a ControllerChanged notice
    (`set_controller`) must end that discovery and route the request at once, not
    leave it probing until its time runs out."""
    _lead(nodes, nodes[0], told=[nodes[0]])
    nodes[0].hold = asyncio.Event()  # its METADATA answers never come
    ch = ControllerChannel([n.addr for n in nodes], discovery_timeout_ms=5000)
    try:
        req = asyncio.ensure_future(ch.request(ApiKey.CREATE_TOPICS, {"topics": []}, 3000))
        # in discovery: the other nodes answered probes naming no controller
        await until(lambda: nodes[1].probes >= 1 and nodes[2].probes >= 1, "probes answered")
        assert not req.done()
        ch.set_controller(ControllerAddress(1, *nodes[0].addr, 2))
        assert (await req)["by"] == 1
    finally:
        await ch.close()


async def test_a_pushed_controller_ends_a_retry_backoff_at_once(
        nodes: list[Node], monkeypatch: pytest.MonkeyPatch) -> None:
    """Discovery failed and the request backs off before trying again (made a minute
    here): a ControllerChanged notice names the controller meanwhile, and the request
    goes there at once instead of sleeping out its backoff."""
    import dmq.metadata.discovery as discovery

    monkeypatch.setattr(discovery, "backoff_ms", lambda *a: 60_000.0)
    _lead(nodes, nodes[0], told=[nodes[0]])
    nodes[0].hold = asyncio.Event()  # no probe gets its answer in time
    ch = ControllerChannel([n.addr for n in nodes], discovery_timeout_ms=1)
    backing_off = asyncio.Event()
    sleep_out = ch._backoff

    async def observed_backoff(delay_s: float) -> None:
        backing_off.set()
        await sleep_out(delay_s)

    ch._backoff = observed_backoff  # type: ignore[method-assign]
    try:
        req = asyncio.ensure_future(ch.request(ApiKey.CREATE_TOPICS, {"topics": []}, 120_000))
        # discovery gave up at once (whether or not its probes got an answer within its
        # millisecond, which depends on the machine's load): the request backs off
        await asyncio.wait_for(backing_off.wait(), 10)
        assert not req.done()
        ch.set_controller(ControllerAddress(1, *nodes[0].addr, 2))
        assert (await asyncio.wait_for(req, 10))["by"] == 1
    finally:
        await ch.close()
