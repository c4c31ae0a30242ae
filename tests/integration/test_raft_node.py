"""RaftNode in one process: three nodes on ephemeral loopback ports, real files, real
protocol, system clock with short ticks."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import pytest

from dmq.clock import SystemClock
from dmq.protocol.errors import DmqError
from dmq.protocol.server import ProtocolServer
from dmq.raft import Entry, FileStorage, NotLeaderError, Snapshot
from dmq.raft.node import RaftNode, RaftNodeConfig
from dmq.types import NodeId
from tests.support.waiting import async_wait_until, until

TICK_MS = 10


class KV:
    """A minimal key-value state machine: entry data is b"key=value"."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.applied = 0
        self.restored_from: int | None = None

    def apply(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            if e.data:
                k, _, v = e.data.decode().partition("=")
                self.data[k] = v
            self.applied = e.index

    def snapshot(self) -> bytes:
        return msgpack.packb([self.applied, self.data])  # type: ignore[no-any-return]

    def restore(self, snapshot: Snapshot) -> None:
        self.applied, self.data = msgpack.unpackb(snapshot.data)
        self.restored_from = snapshot.index


class Harness:
    def __init__(self, tmp: Path, size: int = 3, snapshot_interval: int = 10_000,
                 tick_ms: int = TICK_MS, election_ticks: int = 10, heartbeat_ticks: int = 2,
                 seed: int = 0,
                 node_configs: dict[NodeId, dict[str, Any]] | None = None,
                 **node_kwargs: Any) -> None:
        self.tmp = tmp
        self.node_configs = node_configs or {}  # RaftNodeConfig fields of single nodes
        self.node_kwargs = node_kwargs  # extra RaftNode arguments (validators, on_fatal)
        self.tick_ms = tick_ms
        self.election_ticks = election_ticks
        self.heartbeat_ticks = heartbeat_ticks
        self.rng = random.Random(seed)
        self.ids = [NodeId(i) for i in range(1, size + 1)]
        self.snapshot_interval = snapshot_interval
        self.ports: dict[NodeId, int] = {}
        self.servers: dict[NodeId, ProtocolServer] = {}
        self.nodes: dict[NodeId, RaftNode] = {}
        self.sms: dict[NodeId, KV] = {}
        self.storages: dict[NodeId, FileStorage] = {}

    async def start_all(self) -> None:
        for i in self.ids:
            server = ProtocolServer(host="127.0.0.1", port=self.ports.get(i, 0), node_id=i)
            await server.start()
            self.servers[i] = server
            self.ports[i] = server.bound_port
        for i in self.ids:
            await self._start_node(i)

    async def _start_node(self, i: NodeId) -> None:
        peers = {p: ("127.0.0.1", self.ports[p]) for p in self.ids if p != i}
        config = RaftNodeConfig(node_id=i, peers=peers, tick_ms=self.tick_ms,
                                election_ticks=self.election_ticks,
                                heartbeat_ticks=self.heartbeat_ticks,
                                snapshot_interval_entries=self.snapshot_interval)
        config = dataclasses.replace(config, **self.node_configs.get(i, {}))
        storage = FileStorage(str(self.tmp / f"node{i}"))
        sm = KV()
        node = RaftNode(config, storage, sm, SystemClock(), random.Random(self.rng.random()),
                        **self.node_kwargs)
        node.register(self.servers[i])
        await node.start()
        self.nodes[i], self.sms[i], self.storages[i] = node, sm, storage

    async def stop(self, i: NodeId) -> None:
        await self.nodes.pop(i).stop()
        await self.servers.pop(i).close(grace_ms=100)
        self.storages.pop(i).close()

    async def restart(self, i: NodeId) -> None:
        server = ProtocolServer(host="127.0.0.1", port=self.ports[i], node_id=i)
        await server.start()
        self.servers[i] = server
        await self._start_node(i)

    async def stop_all(self) -> None:
        for i in list(self.nodes):
            await self.stop(i)

    async def __aenter__(self) -> Harness:
        await self.start_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_all()

    async def leader(self, timeout_s: float = 5.0, not_: NodeId | None = None) -> RaftNode:
        def single_leader() -> RaftNode | None:
            leaders = [n for i, n in self.nodes.items()
                       if n.status()["role"] == "LEADER" and i != not_]
            return leaders[0] if len(leaders) == 1 else None

        def views() -> str:
            # each node's view, so that a failure says whether votes were split, a node
            # was stuck in another term, or a pump had stopped
            return "a single leader elected: " + repr(
                {int(i): {k: n.status()[k] for k in ("role", "term", "leader_id",
                                                     "last_log_index", "refused_messages")}
                 | {"pump_done": n._pump_task is not None and n._pump_task.done()}
                 for i, n in self.nodes.items()})

        return await async_wait_until(single_leader, timeout_s, views,
                                      interval_s=TICK_MS / 1000)

    async def wait_applied(self, index: int, nodes: Sequence[NodeId] | None = None,
                           timeout_s: float = 5.0) -> None:
        await async_wait_until(
            lambda: all(self.nodes[i].status()["last_applied"] >= index
                        for i in nodes or list(self.nodes)),
            timeout_s, lambda: f"index {index} applied: " + repr(
                {int(i): self.nodes[i].status()["last_applied"] for i in nodes or self.nodes}),
            interval_s=TICK_MS / 1000)


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_elect_replicate_read_and_refuse_on_followers(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            leader = await h.leader()
            index = await leader.propose(b"a=1")
            await h.wait_applied(index)
            assert all(sm.data == {"a": "1"} for sm in h.sms.values())
            read = await leader.read_index()
            assert read >= index
            follower = next(n for n in h.nodes.values() if n is not leader)
            with pytest.raises(NotLeaderError) as err:
                await follower.propose(b"b=2")
            assert err.value.leader_id == leader.id
            with pytest.raises(NotLeaderError):
                await follower.read_index()
            results = await asyncio.gather(*(leader.propose(b"k%d=%d" % (i, i))
                                             for i in range(200)))
            assert len(set(results)) == 200
            await h.wait_applied(max(results))
            assert all(len(sm.data) == 201 for sm in h.sms.values())
            st = leader.status()
            assert st["role"] == "LEADER" and st["commit_index"] >= max(results)
            assert set(st["peers"]) == {1, 2, 3}

    run(main())


def test_leader_failover_and_catch_up(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            old = await h.leader()
            await old.propose(b"before=1")
            old_id = old.id
            await h.stop(old_id)
            new = await h.leader(not_=old_id)
            assert new.id != old_id
            index = await new.propose(b"after=2")
            await h.restart(old_id)
            await h.wait_applied(index)
            assert h.sms[old_id].data == {"before": "1", "after": "2"}

    run(main())


def test_leadership_transfer(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path) as h:
            leader = await h.leader()
            await leader.propose(b"x=1")
            target = next(i for i in h.ids if i != leader.id)
            assert await leader.transfer_leadership(target) == target
            assert (await h.leader()).id == target

    run(main())


def test_lagging_node_catches_up_by_snapshot(tmp_path: Path) -> None:
    async def main() -> None:
        async with Harness(tmp_path, snapshot_interval=50) as h:
            leader = await h.leader()
            down = next(i for i in h.ids if i != leader.id)
            await h.stop(down)
            last = 0
            for batch in range(6):
                last = max(await asyncio.gather(*(leader.propose(b"k%d=%d" % (batch * 50 + i, i))
                                                  for i in range(50))))
            assert leader.status()["snapshot_index"] > 0
            await h.restart(down)
            await h.wait_applied(last, [down])
            assert h.sms[down].restored_from is not None
            assert h.sms[down].data == h.sms[leader.id].data

    run(main())


def test_full_cluster_restart_keeps_committed_entries(tmp_path: Path) -> None:
    async def main() -> None:
        h = Harness(tmp_path)
        await h.start_all()
        leader = await h.leader()
        index = await leader.propose(b"precious=yes")
        await h.stop_all()
        for i in h.ids:
            await h.restart(i)
        try:
            leader = await h.leader()
            await h.wait_applied(index)
            assert all(sm.data == {"precious": "yes"} for sm in h.sms.values())
        finally:
            await h.stop_all()

    run(main())


def failover_times(tmp_path: Path, trials: int, tick_ms: int, election_ticks: int,
                   heartbeat_ticks: int, seed: int = 0) -> list[float]:
    """Stop the leader (its peers see the connection drop, as after kill -9) and time
    until a new leader has committed a proposal, `trials` times."""

    async def main() -> list[float]:
        times = []
        async with Harness(tmp_path, tick_ms=tick_ms, election_ticks=election_ticks,
                           heartbeat_ticks=heartbeat_ticks, seed=seed) as h:
            for _ in range(trials):
                leader = await h.leader()
                await leader.propose(b"warm=1")
                old = leader.id
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                await h.stop(old)
                while True:
                    new = await h.leader(not_=old, timeout_s=15.0)
                    try:
                        await new.propose(b"after=1", timeout_ms=2000)
                        break
                    except (NotLeaderError, DmqError):
                        continue
                times.append(loop.time() - t0)
                await h.restart(old)
        return times

    return asyncio.run(main())


def test_failover_time_with_a_500ms_election_timeout(tmp_path: Path) -> None:
    # 10 ms ticks x 50: the same 500-1000 ms timeout as 50 ms x 10, but 50 possible
    # timeout values instead of 10, so two followers rarely time out together.
    times = failover_times(tmp_path, 6, tick_ms=10, election_ticks=50, heartbeat_ticks=10)
    # Liveness only: after each leader stop a new leader commits (within the harness's
    # 15 s wait). How fast is measured by benchmarks/raft_bench.py (failover times of
    # real processes), not asserted here: on a loaded CPU a wall-clock bound flakes.
    print("failover seconds:", [round(t, 3) for t in times])
    assert len(times) == 6


def test_malformed_raft_messages_get_an_error_and_change_nothing(tmp_path: Path) -> None:
    from dmq.protocol.api import ApiKey
    from dmq.protocol.connection import Connection
    from dmq.protocol.errors import InvalidRequestError

    async def main() -> None:
        async with Harness(tmp_path) as h:
            leader = await h.leader()
            term = leader.status()["term"]
            conn = await Connection.open("127.0.0.1", h.ports[leader.id])
            try:
                for body in ({"from": 2, "msg": [3, 2, leader.id, 99, "junk"]},
                             {"from": 2, "msg": [42]},
                             {"from": 3, "msg": [9, 2, leader.id, 99]}):  # src != from
                    with pytest.raises(InvalidRequestError):
                        await conn.request(ApiKey.RAFT_APPEND_ENTRIES, body, timeout_ms=2000)
            finally:
                await conn.close()
            assert leader.status()["term"] == term and leader.status()["role"] == "LEADER"
            assert leader.stats["malformed"] == 2

    run(main())


def _kv_entry_problem(data: bytes) -> str | None:
    """What KV cannot apply: anything but UTF-8 `key=value`."""
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return "not UTF-8"
    return None if "=" in text else "no '='"


def test_append_with_an_entry_the_state_machine_cannot_apply_is_refused(tmp_path: Path) -> None:
    # issue #25 item 2: [3, L, F, T, last, T, last+1, [[T, 0, b"\xc1forged"]]] sent as
    # RAFT_APPEND_ENTRIES to a follower was appended, committed and applied everywhere
    from dmq.protocol.api import ApiKey
    from dmq.protocol.connection import Connection
    from dmq.protocol.errors import InvalidRequestError

    async def main() -> None:
        async with Harness(tmp_path, validate_entry=_kv_entry_problem) as h:
            leader = await h.leader()
            await h.wait_applied(await leader.propose(b"a=1"))
            follower = next(n for n in h.nodes.values() if n is not leader)
            st = follower.status()
            term, last = st["term"], st["last_log_index"]
            forged = [3, leader.id, follower.id, term, last, term, last + 1,
                      [[term, 0, b"\xc1forged"]]]
            conn = await Connection.open("127.0.0.1", h.ports[follower.id])
            try:
                with pytest.raises(InvalidRequestError, match="entry .* refused.*not UTF-8"):
                    await conn.request(ApiKey.RAFT_APPEND_ENTRIES,
                                       {"from": leader.id, "msg": forged}, timeout_ms=2000)
            finally:
                await conn.close()
            assert follower.stats["refused_entries"] == 1
            assert follower.status()["last_log_index"] == last
            index = await leader.propose(b"b=2")  # the leader and its loop are fine
            await h.wait_applied(index)
            assert all(sm.data == {"a": "1", "b": "2"} for sm in h.sms.values())
            assert leader.status()["role"] == "LEADER"

    run(main())


def test_leader_that_loses_its_quorum_fails_pending_proposals_at_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # issue #24 item 1: they were answered "proposal not done" when their timeout ran
    # out, and their futures failed later with nobody awaiting them
    import gc

    async def main() -> None:
        async with Harness(tmp_path) as h:
            leader = await h.leader()
            await h.wait_applied(await leader.propose(b"a=1"))
            for i in [i for i in h.ids if i != leader.id]:
                await h.stop(i)
            # far longer than CheckQuorum takes (one election timeout, 100 ms here)
            pending = [asyncio.ensure_future(leader.propose(b"k%d=1" % i, timeout_ms=20_000))
                       for i in range(3)]
            short = asyncio.ensure_future(leader.propose(b"s=1", timeout_ms=1))
            done, _ = await asyncio.wait(pending, timeout=15)
            assert len(done) == 3
            for fut in pending:
                assert isinstance(fut.exception(), NotLeaderError)
            assert leader.status()["role"] != "LEADER"
            with pytest.raises(DmqError, match="not done in 1 ms"):
                await short  # timed out first; its late failure must not go unseen

    with caplog.at_level("ERROR", logger="asyncio"):
        run(main())
        gc.collect()
    assert "never retrieved" not in caplog.text


def test_proposal_larger_than_a_follower_accepts_fails_at_once(tmp_path: Path) -> None:
    # issue #25 item 8: a 141 MB entry went out, followers refused the frame, an
    # election followed; now the leader refuses it before it is appended
    from dmq.raft import EntryTooLargeError
    from dmq.raft.node import FRAME_OVERHEAD_BYTES

    async def main() -> None:
        # a one-second election timeout (not 100 ms): writing and sending the 2 MiB
        # entry on a loaded machine must not pass for the silence of a dead leader
        async with Harness(tmp_path, election_ticks=100, heartbeat_ticks=10) as h:
            leader = await h.leader()
            limit = leader.config.max_frame_bytes - FRAME_OVERHEAD_BYTES
            term = leader.status()["term"]
            with pytest.raises(EntryTooLargeError, match=f"exceeds the limit of {limit}"):
                await leader.propose(b"k=" + b"v" * limit)
            index = await leader.propose(b"k=" + b"v" * (2 << 20))  # 2 MiB is fine
            await h.wait_applied(index)
            assert leader.status()["term"] == term and leader.status()["role"] == "LEADER"

    run(main())


def test_a_dead_raft_pump_calls_on_fatal_instead_of_lingering(tmp_path: Path) -> None:
    # issue #25 item 2: the pump died on an assertion, the process stayed up and kept
    # reporting LEADER; now the owner's on_fatal hook ends it (crash-only)
    async def main() -> None:
        died: list[tuple[str, BaseException]] = []
        async with Harness(tmp_path, on_fatal=lambda what, exc: died.append((what, exc))) as h:
            leader = await h.leader()
            broken = h.sms[leader.id]

            def apply(entries: Sequence[Entry]) -> None:
                raise RuntimeError("state machine bug")

            broken.apply = apply  # type: ignore[method-assign]
            with pytest.raises(DmqError, match="raft task .*pump failed"):
                await leader.propose(b"x=1", timeout_ms=5000)
            assert [w for w, _ in died] == [f"raft task raft-{leader.id}-pump"]
            assert isinstance(died[0][1], RuntimeError)

    run(main())


def test_pending_proposals_fail_naming_the_leader_that_replaced_this_one(
        tmp_path: Path) -> None:
    # issue #24 item 1: the client should retry at the new leader within milliseconds
    from dmq.protocol.api import ApiKey
    from dmq.protocol.connection import Connection

    async def main() -> None:
        # a long election timeout, so CheckQuorum does not step the leader down first
        async with Harness(tmp_path, election_ticks=300) as h:
            leader = await h.leader(timeout_s=15)
            await h.wait_applied(await leader.propose(b"a=1"))
            others = [i for i in h.ids if i != leader.id]
            await h.stop(others[1])
            # the remaining follower stops answering: its server is closed, the node kept
            await h.servers[others[0]].close(grace_ms=10)
            last = leader.status()["last_log_index"]
            pending = asyncio.ensure_future(leader.propose(b"b=2", timeout_ms=20_000))
            await until(lambda: leader.status()["last_log_index"] > last,
                        "the proposal is in the leader's log")
            assert not pending.done()
            # a heartbeat of a newer term from the other node: it won an election
            term = leader.status()["term"]
            conn = await Connection.open("127.0.0.1", h.ports[leader.id])
            try:
                await conn.request(ApiKey.RAFT_APPEND_ENTRIES,
                                   {"from": others[0],
                                    "msg": [5, others[0], leader.id, term + 1, 0, 0]},
                                   timeout_ms=2000)
            finally:
                await conn.close()
            with pytest.raises(NotLeaderError) as err:
                await asyncio.wait_for(pending, 10)
            assert err.value.leader_id == others[0]

    run(main())


def _slow_followers(leader_loss_ticks: int) -> dict[NodeId, dict[str, Any]]:
    """Node 1 times out fast and so leads first; nodes 2 and 3 wait 10-20 s of silence
    before an ordinary election, so only the leader-loss path elects them sooner."""
    slow = {"election_ticks": 1000, "heartbeat_ticks": 2,
            "leader_loss_ticks": leader_loss_ticks}
    return {NodeId(1): {"election_ticks": 20, "heartbeat_ticks": 10}, NodeId(2): slow,
            NodeId(3): slow}


def test_followers_campaign_at_once_when_the_leaders_connection_closes(
        tmp_path: Path) -> None:
    # Stopping node 1 closes its connections, as a kill -9 does. Its followers' election
    # timeout is 10-20 s; they elect one of themselves within the 8 s wait only because
    # the closed connection tells them the leader is gone.
    async def main() -> None:
        async with Harness(tmp_path, node_configs=_slow_followers(5)) as h:
            first = await h.leader()
            assert first.id == 1
            index = await first.propose(b"before=1")
            await h.wait_applied(index)
            await h.stop(NodeId(1))
            new = await h.leader(timeout_s=8.0)
            assert new.id in (2, 3)
            assert all(h.nodes[i].stats["leader_links_lost"] == 1 for i in (2, 3))
            await h.wait_applied(await new.propose(b"after=2"))
            assert h.sms[new.id].data == {"before": "1", "after": "2"}

    run(main())


def test_a_closed_connection_to_a_live_leader_disrupts_nothing(tmp_path: Path) -> None:
    # A follower's link to a live leader closes (it reconnects at its next answer): it
    # stops counting on the leader and campaigns within a few ticks, but PreVote is
    # refused by the leader and by the other follower, which still hears it: no new
    # term, the same leader.
    async def main() -> None:
        async with Harness(tmp_path, node_configs=_slow_followers(2)) as h:
            leader = await h.leader()
            term = leader.status()["term"]
            follower = h.nodes[NodeId(3)]

            async def close_link_until_three_noticed() -> bool:
                # the leader heartbeats every 100 ms: the follower's tick sees the closed
                # connection before its next answer reopens it, most of the time
                if follower.stats["leader_links_lost"] >= 3:
                    return True
                conn = follower._senders[leader.id].conn
                if conn is not None and not conn.closed:
                    await conn.close()
                return False

            await async_wait_until(close_link_until_three_noticed, 5.0,
                                   "closed connections noticed", interval_s=0.05)
            await async_wait_until(lambda: follower.status()["leader_id"] == leader.id,
                                   5.0, lambda: f"the leader followed: {follower.status()}",
                                   interval_s=TICK_MS / 1000)
            assert all(n.status()["term"] == term for n in h.nodes.values())
            assert (await h.leader()).id == leader.id
            await h.wait_applied(await leader.propose(b"still=1"))

    run(main())
