"""A chaos cluster: real `dmq server` processes (3 controllers, 3 brokers by default;
`run_chaos` uses 4 brokers), each node in its own group id so `LinkFaults` can cut
links between nodes, plus what the nemesis and the final read-back need to look at it
from outside: Raft roles, broker states, partition leaders and ISRs, a partition's
records up to the HW from its leader, and a replica's bytes below the HW read from a
copy of its folder.

The test process keeps its own group id, so it is never cut off: it can always reach
every node (a paused node still times out, of course). Every look is one request with
a short timeout; nothing here waits without a bound.

`secure=True` runs the cluster as `dmq dev --secure` does (`secure_setup`: a throwaway
CA and node certificates, TLS on every listener and link, client certificates
requested so that nodes prove themselves by certificate, SASL SCRAM on dmq's protocol
and the Kafka listener, the authorizer on with the superuser `admin`). The looks from
outside run as `admin`; `add_workload_user` creates the non-superuser the workloads
run as, with exactly the ACLs they need.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmq.cli.dev import SECURE_MECHANISM, secure_setup
from dmq.client.admin import Admin
from dmq.log.batch import iter_headers, iter_records
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import request_once
from dmq.protocol.errors import DmqError, ErrorCode
from dmq.security.client_config import ClientSecurity
from tests.chaos.network import LinkFaults
from tests.support.broker_wire import replica_bytes
from tests.support.procs import ProcessCluster, free_ports
from tests.support.waiting import async_wait_until

TopicPartition = tuple[str, int]
LOOK_TIMEOUT_MS = 1500

# Short timeouts so that a fault is noticed (and healed) within seconds.
CHAOS_SETTINGS: dict[str, Any] = {
    "broker.session.timeout.ms": 3000,
    "broker.heartbeat.interval.ms": 300,
    "replica.lag.time.max.ms": 2500,
    "replica.fetch.wait.max.ms": 200,
    "group.session.timeout.ms": 4000,
    "group.heartbeat.interval.ms": 300,
    "auto.leader.rebalance.enable": True,
}
SESSION_TIMEOUT_S = 4.0  # the longest session timeout above (pauses last longer)
# group ids of one run's nodes: distinct per test process, so rules of two runs going on
# at once never match each other's nodes even if a port is reused
GID_BASE = 42000 + (os.getpid() % 1000) * 1000
WORKLOAD_USER = "chaos"  # the principal the workloads run as on a secure cluster


@dataclass
class WorkloadSecurity:
    """How the workloads of a secure cluster connect: Kafka client properties
    (SASL_SSL, SCRAM-SHA-256 as `WORKLOAD_USER`, the cluster's CA) for confluent-kafka,
    and the same as a `ClientSecurity` for dmq's client (`security=`)."""

    properties: dict[str, str]
    client: ClientSecurity


@dataclass
class ClusterView:
    """One look at the cluster from outside."""

    raft: dict[int, dict[str, Any] | None] = field(default_factory=dict)  # None: no answer
    brokers: dict[int, str] = field(default_factory=dict)  # broker id -> state
    partitions: dict[TopicPartition, tuple[int, list[int], list[int]]] = field(
        default_factory=dict)  # tp -> (leader, replicas, isr)

    @property
    def leaders(self) -> list[int]:
        """Controllers that say they lead, in the highest term any of them reports."""
        terms = [s["term"] for s in self.raft.values() if s]
        top = max(terms, default=-1)
        return [n for n, s in self.raft.items()
                if s and str(s.get("role")).upper() == "LEADER" and s["term"] == top]

    @property
    def all_leaders(self) -> list[int]:
        return [n for n, s in self.raft.items() if s and str(s.get("role")).upper() == "LEADER"]


class ChaosCluster:
    """Use as a context manager: processes killed, folder removed, iptables chain gone."""

    def __init__(self, settings: dict[str, Any] | None = None, brokers: int = 3,
                 controllers: int = 3, link_faults: bool = True, secure: bool = False,
                 kafka: bool = False) -> None:
        gids = {i + 1: GID_BASE + i + 1 for i in range(controllers)}
        gids.update({101 + i: GID_BASE + 101 + i for i in range(brokers)})
        root = Path(tempfile.mkdtemp(prefix="dmq-chaos-"))
        self.admin: ClientSecurity | None = None  # the superuser's (secure) or None
        self.cafile: Path | None = None
        more: dict[str, Any] = {}
        if secure:
            try:
                sec = secure_setup(root / "security", list(gids), "127.0.0.1")
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)
                raise
            self.admin, self.cafile, more = sec.client, sec.cafile, sec.settings
        self.procs = ProcessCluster(controllers=controllers, brokers=brokers,
                                    settings={**CHAOS_SETTINGS, **more, **(settings or {})},
                                    node_gids=gids if link_faults else None, root=root)
        if kafka:
            # fixed ports: a broker restarted on a new ephemeral Kafka port left Kafka
            # clients whose every known address had gone stale unable to reconnect (a
            # rolling restart moved all of them) until their messages timed out
            brokers_ = [n for n in self.procs.nodes.values() if "broker" in n.role]
            for n, port in zip(brokers_, free_ports(len(brokers_)), strict=True):
                n.kafka_port = port
        self.gids = gids
        self.link_faults = link_faults
        self.links: LinkFaults | None = None

    @property
    def secure(self) -> bool:
        return self.admin is not None

    # ---- lifecycle -----------------------------------------------------------------
    def __enter__(self) -> ChaosCluster:
        try:
            if self.link_faults:
                self.links = LinkFaults(self.gids,
                                        {n: p.port for n, p in self.procs.nodes.items()})
            self.procs.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.links is not None:
                self.links.close()
        finally:
            self.procs.__exit__(*exc)

    @property
    def bootstrap(self) -> str:
        return self.procs.bootstrap

    @property
    def controller_ids(self) -> list[int]:
        return self.procs.controller_ids

    @property
    def broker_ids(self) -> list[int]:
        return self.procs.broker_ids

    def port(self, node_id: int) -> int:
        return self.procs.nodes[node_id].port

    # ---- looking -------------------------------------------------------------------
    async def ask(self, node_id: int, api: ApiKey, body: Any,
                  timeout_ms: int = LOOK_TIMEOUT_MS) -> Any:
        admin = self.admin
        return await request_once("127.0.0.1", self.port(node_id), api, body,
                                  timeout_ms=timeout_ms, client_id="chaos",
                                  ssl=admin and admin.ssl, sasl=admin and admin.sasl)

    # ---- the workloads' principal (secure) -----------------------------------------
    async def add_workload_user(self, grants: list[tuple[str, str]],
                                timeout_s: float = 30.0) -> WorkloadSecurity:
        """Create `WORKLOAD_USER` (SCRAM, through the controller as `admin`) with the
        ACLs of a producer and a consumer on each (topic, group) of `grants` and nothing
        else; return once every broker lets it see every topic."""
        assert self.admin is not None and self.cafile is not None, "not a secure cluster"
        password = secrets.token_urlsafe(18)
        async with Admin(self.bootstrap, security=self.admin) as admin:
            await admin.set_user_password(WORKLOAD_USER, password)
            for topic, group in grants:
                await admin.grant_role("producer", f"User:{WORKLOAD_USER}", topic)
                await admin.grant_role("consumer", f"User:{WORKLOAD_USER}", topic, group)
        props = {"security.protocol": "SASL_SSL", "sasl.mechanism": SECURE_MECHANISM,
                 "sasl.username": WORKLOAD_USER, "sasl.password": password,
                 "ssl.ca.location": str(self.cafile)}
        ws = WorkloadSecurity(props, ClientSecurity.from_properties(props))
        topics = sorted({t for t, _ in grants})

        async def every_broker_knows() -> bool:
            for b in self.broker_ids:
                try:
                    md = await request_once("127.0.0.1", self.port(b), ApiKey.METADATA,
                                            {"topics": None}, timeout_ms=LOOK_TIMEOUT_MS,
                                            ssl=ws.client.ssl, sasl=ws.client.sasl)
                except (DmqError, OSError):
                    return False
                if sorted(t["name"] for t in md["topics"]) != topics:
                    return False
            return True

        await async_wait_until(every_broker_knows, timeout_s,
                               f"every broker knows {WORKLOAD_USER} and its ACLs")
        # and it is no superuser: the authorizer is on its path
        leader = await self.controller_leader()
        resp = await request_once("127.0.0.1", self.port(leader or self.controller_ids[0]),
                                  ApiKey.CREATE_TOPICS, {"topics": [
                                      {"name": "chaos-not-granted", "partitions": 1,
                                       "replication_factor": 1, "configs": {}}]},
                                  timeout_ms=10_000, ssl=ws.client.ssl, sasl=ws.client.sasl)
        if resp["topics"][0]["error"] != ErrorCode.TOPIC_AUTHORIZATION_FAILED:
            raise AssertionError(f"{WORKLOAD_USER} was not refused a topic create: {resp}")
        return ws

    async def _maybe(self, node_id: int, api: ApiKey, body: Any) -> Any:
        try:
            return await self.ask(node_id, api, body)
        except (DmqError, OSError):
            return None

    async def raft_statuses(self) -> dict[int, dict[str, Any] | None]:
        ids = self.controller_ids
        got = await asyncio.gather(*(self._maybe(c, ApiKey.RAFT_STATUS, {}) for c in ids))
        return dict(zip(ids, got, strict=True))

    async def controller_leader(self) -> int | None:
        leaders = (ClusterView(raft=await self.raft_statuses())).leaders
        return leaders[0] if len(leaders) == 1 else None

    async def view(self, topic: str | None = None) -> ClusterView:
        v = ClusterView(raft=await self.raft_statuses())
        leaders = v.leaders
        if len(leaders) != 1:
            return v
        leader = leaders[0]
        desc = await self._maybe(leader, ApiKey.DESCRIBE_CLUSTER, {})
        if desc:
            v.brokers = {b["broker_id"]: b["state"] for b in desc["brokers"]}
        if topic is not None:
            md = await self._maybe(leader, ApiKey.METADATA, {"topics": [topic]})
            if md:
                for t in md["topics"]:
                    for p, ldr, _epoch, replicas, isr, _err in t["partitions"]:
                        v.partitions[(t["name"], p)] = (ldr, list(replicas), list(isr))
        return v

    @staticmethod
    def problems(v: ClusterView, topic: str | None, partitions: int, rf: int) -> list[str]:
        """What keeps this view from being a healthy cluster (empty: healthy)."""
        out = []
        if len(v.leaders) != 1 or len(v.all_leaders) != 1:
            out.append(f"controller leaders {v.all_leaders} (raft {_roles(v)})")
            return out
        if len(v.brokers) < rf or any(s != "ONLINE" for s in v.brokers.values()):
            out.append(f"brokers {v.brokers}")
        if topic is not None:
            if len(v.partitions) != partitions:
                out.append(f"{len(v.partitions)}/{partitions} partitions known")
            for tp, (leader, replicas, isr) in sorted(v.partitions.items()):
                if leader < 0 or sorted(isr) != sorted(replicas) or len(replicas) != rf:
                    out.append(f"{tp[0]}-{tp[1]} leader {leader} isr {isr} of {replicas}")
        return out

    async def wait_healthy(self, topic: str | None, partitions: int, rf: int,
                           timeout_s: float) -> tuple[ClusterView, list[str]]:
        """Poll until healthy or `timeout_s`; returns the last view and its problems."""
        deadline = time.monotonic() + timeout_s
        while True:
            v = await self.view(topic)
            probs = self.problems(v, topic, partitions, rf)
            if not probs or time.monotonic() >= deadline:
                return v, probs
            await asyncio.sleep(0.25)

    # ---- reading back --------------------------------------------------------------
    async def read_partition(self, leader: int, tp: TopicPartition, settle_s: float = 10.0
                             ) -> tuple[int, list[tuple[int, bytes | None, bytes | None]]]:
        """(HW, [(offset, key, value)]) from the log start to the HW, from the leader,
        once the HW reached the leader's log end (or after `settle_s`): with no more
        writes and the ISR caught up, everything the leader holds becomes committed."""
        topic, p = tp
        records: list[tuple[int, bytes | None, bytes | None]] = []
        offset = 0
        hw = -1
        settle_until = time.monotonic() + settle_s
        for _ in range(100_000):
            resp = await self.ask(leader, ApiKey.FETCH, {
                "max_wait_ms": 0, "min_bytes": 1, "max_bytes": 4 << 20,
                "topics": [[topic, [[p, offset, -1, 4 << 20]]]]}, timeout_ms=10_000)
            row = resp["topics"][0][1][0]
            if row[1] != 0:
                raise DmqError(f"fetch {topic}-{p}@{offset} from {leader}: error {row[1]}")
            if offset == 0 and hw < 0 and row[2] < row[4] and time.monotonic() < settle_until:
                await asyncio.sleep(0.1)  # HW still below the log end: not settled yet
                continue
            hw = row[2]
            if offset == 0 and row[3] > 0:
                offset = row[3]
                continue
            data = bytes(row[5])
            if not data:
                return hw, records
            for rec in iter_records(data):
                if rec.offset >= offset:
                    records.append((rec.offset, rec.key, rec.value))
            offset = list(iter_headers(data))[-1].next_offset
        raise AssertionError(f"{topic}-{p}: read-back did not end")

    def replica_bytes(self, broker: int, tp: TopicPartition, upto: int) -> bytes:
        """A broker's replica bytes for offsets below `upto`, from a copy of its folder
        (the broker keeps running; below the HW nothing changes under the copy); empty
        when the broker holds no folder for it."""
        try:
            return replica_bytes(self.procs, broker, tp[0], tp[1], upto)
        except FileNotFoundError:
            return b""


def _roles(v: ClusterView) -> str:
    return ", ".join(f"{n}:{s['role']}/t{s['term']}" if s else f"{n}:-"
                     for n, s in sorted(v.raft.items()))
