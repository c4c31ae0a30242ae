"""`ControllerService`: the controller role of a node.

Owns the metadata state machine, the Raft node that feeds it, and the controller's
request handlers. Reads (Metadata, DescribeCluster, MetadataFetch, DescribeConfigs) are
answered by every controller from its applied state. Writes are answered only by the
*active* controller: the Raft leader once it has applied everything committed before
its term. Others answer NOT_CONTROLLER naming the leader.

Writes are serialized by one lock: plan against the applied state (`Planner`), propose
the records as one Raft entry, wait until it is applied, answer from the new state. So a
plan is always made against the state its records apply to.

Background work, all owned here and stopped by `stop()`: the leadership watcher (on
becoming active: a barrier entry, fresh broker sessions, ControllerChanged notices to
every broker), the session checker (fences brokers whose session expired), the
preferred-leader balancer (`auto.leader.rebalance.enable`) and the reassignment driver
(completes a partition reassignment once its target replicas are all in the ISR).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from dmq.aio import wait_for
from dmq.controller.acls import ControllerAcls, guard_group_handler
from dmq.controller.cluster_id import new_cluster_id
from dmq.controller.group_service import GroupService, register_group_handlers
from dmq.controller.liveness import BrokerSessions
from dmq.controller.planner import Planner
from dmq.controller.raft_glue import RaftGlue
from dmq.controller.state_machine import MetadataStateMachine
from dmq.controller.users import register_user_handlers
from dmq.controller.validation import (
    DYNAMIC_CONFIG_CHECKS,
    effective_topic_configs,
    validate_topic_name,
)
from dmq.metadata.discovery import ControllerChannel
from dmq.metadata.image import FENCED, MetadataImage, PartitionInfo, metadata_body
from dmq.metadata.records import ClusterId, ProducerIds, Record
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import request_once
from dmq.protocol.errors import (
    BrokerIdNotRegisteredError,
    DmqError,
    ErrorCode,
    InvalidTopicError,
    NotControllerError,
    RaftNotReadyError,
    RequestTimedOutError,
    UnknownTopicOrPartitionError,
)
from dmq.protocol.server import RequestContext
from dmq.security.acl import (
    ALTER,
    ALTER_CONFIGS,
    CREATE,
    DELETE,
    DESCRIBE,
    DESCRIBE_CONFIGS,
    IDEMPOTENT_WRITE,
    TOPIC,
    TRANSACTIONAL_ID,
    WRITE,
    Authorizer,
    connection_principal,
    is_node,
)
from dmq.security.quotas import entries as quota_entries
from dmq.services import Service

if TYPE_CHECKING:
    from dmq.services import ServiceContext

log = logging.getLogger("dmq.controller")

T = TypeVar("T")


MAX_FETCH_ENTRIES = 2000
WRITE_TIMEOUT_MS = 10_000
NOTICE_TIMEOUT_MS = 1000
PEER_STATUS_TIMEOUT_MS = 500
REASSIGNMENT_CHECK_MS = 100


class ControllerService(Service):
    def __init__(self, ctx: ServiceContext, *,
                 preferred_leader_check_ms: int | None = None) -> None:
        self.config = ctx.config
        self.node_id = ctx.node_id
        self.roles = ctx.spec.roles
        self.server = ctx.server
        self.clock = ctx.clock
        self.rng = ctx.rng
        self._supervise = ctx.supervise
        # combined mode: the local broker's lifecycle takes CONTROLLER_CHANGED notices
        # (wired by dmq.roles)
        self.controller_changed_listeners: list[Callable[[dict[str, Any]], object]] = []
        # the balancer's period (`leader.imbalance.check.interval.seconds`) and threshold
        self.preferred_leader_check_ms = preferred_leader_check_ms if \
            preferred_leader_check_ms is not None else \
            int(self.config.get("leader.imbalance.check.interval.seconds")) * 1000
        self.leader_imbalance_percentage = int(
            self.config.get("leader.imbalance.per.broker.percentage"))
        self.sm = MetadataStateMachine()
        self.state = self.sm.state
        self.planner = Planner(self.state, self.config.get, self.rng)
        self.sessions = BrokerSessions(self.clock,
                                       int(self.config.get("broker.session.timeout.ms")))
        self.raft = RaftGlue(ctx, self.sm)
        self.sm.add_listener(self._on_applied)
        self._applied = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._active_term = -1  # the term in which this node became the active controller
        self._seen_term = -1
        self._tasks: list[asyncio.Task[None]] = []
        self._notice_tasks: set[asyncio.Task[Any]] = set()
        self._forward = ControllerChannel(
            [(c.host, c.port) for c in self.config.controllers if c.node_id != self.node_id],
            client_id=f"controller-{self.node_id}", rng=self.rng,
            node_id=self.node_id) \
            if len(self.config.controllers) > 1 else None  # as a node: ACLs (auto-create)
        self._stopping = False
        self.stats_writes = 0
        self.stats_write_seconds = 0.0
        self.stats_leader_changes = 0
        self._last_leader_seen = 0
        self.stats_fenced = 0
        # ACLs are enforced from this controller's applied state (dmq.security.acl)
        self.authorizer = Authorizer.from_config(self.config, lambda: self.state.acls,
                                                 self.node_id)
        self.acls = ControllerAcls(lambda: self.state.acls, self.mutate, self.authorizer,
                                   self.node_id)
        # reassignment progress as partition leaders report it in their heartbeats:
        # broker id -> (topic, partition) -> bytes left (kept in memory only: a new
        # active controller knows it after one heartbeat)
        self._reassign_progress: dict[int, dict[tuple[str, int], int]] = {}
        self._register_handlers()
        self.groups = self._register_groups()
        self.users = register_user_handlers(self.server, self, ctx.users, self._forward)

    # wiring -----------------------------------------------------------------------------
    def _register_handlers(self) -> None:
        server = self.server
        handlers: dict[ApiKey, Callable[[RequestContext, Any], Any]] = {
            ApiKey.METADATA: self.handle_metadata,
            ApiKey.DESCRIBE_CLUSTER: self.handle_describe_cluster,
            ApiKey.METADATA_FETCH: self.handle_metadata_fetch,
            ApiKey.BROKER_REGISTRATION: self.handle_broker_registration,
            ApiKey.BROKER_HEARTBEAT: self.handle_broker_heartbeat,
            ApiKey.CONTROLLED_SHUTDOWN: self.handle_controlled_shutdown,
            ApiKey.CREATE_TOPICS: self.handle_create_topics,
            ApiKey.DELETE_TOPICS: self.handle_delete_topics,
            ApiKey.CREATE_PARTITIONS: self.handle_create_partitions,
            ApiKey.ALTER_PARTITION: self.handle_alter_partition,
            ApiKey.ALLOCATE_PRODUCER_IDS: self.handle_allocate_producer_ids,
            ApiKey.INIT_PRODUCER_ID: self.handle_init_producer_id,
            ApiKey.DESCRIBE_CONFIGS: self.handle_describe_configs,
            ApiKey.ALTER_CONFIGS: self.handle_alter_configs,
            ApiKey.DESCRIBE_CLIENT_QUOTAS: self.handle_describe_client_quotas,
            ApiKey.ALTER_CLIENT_QUOTAS: self.handle_alter_client_quotas,
            ApiKey.ALTER_PARTITION_REASSIGNMENTS: self.handle_alter_partition_reassignments,
            ApiKey.LIST_PARTITION_REASSIGNMENTS: self.handle_list_partition_reassignments,
            ApiKey.ELECT_LEADERS: self.handle_elect_leaders,
            ApiKey.UNREGISTER_BROKER: self.handle_unregister_broker,
            ApiKey.CREATE_ACLS: self.handle_create_acls,
            ApiKey.DESCRIBE_ACLS: self.handle_describe_acls,
            ApiKey.DELETE_ACLS: self.handle_delete_acls,
        }
        if "broker" in self.roles:
            # combined mode: the local broker's lifecycle takes the notices
            handlers[ApiKey.CONTROLLER_CHANGED] = self.handle_controller_changed
        for key, fn in handlers.items():
            server.register(key, fn)

    def _register_groups(self) -> GroupService:
        """The group coordinator (dmq.controller.group_service) runs on the active
        controller and writes offsets through `mutate`."""
        authorizer = self.authorizer
        guard = None if not authorizer.enabled else \
            (lambda key, fn: guard_group_handler(key, fn, authorizer))
        return register_group_handlers(self.server, self, guard=guard)

    async def start(self) -> None:
        await self.raft.start()
        # essential: if one dies the node ends (crash-only, see dmq.node)
        supervise = self._supervise
        self._tasks.append(supervise(self._watch_leadership(),
                                     f"controller-{self.node_id}-watch"))
        self._tasks.append(supervise(self._check_sessions(),
                                     f"controller-{self.node_id}-sessions"))
        self._tasks.append(supervise(self._drive_reassignments(),
                                     f"controller-{self.node_id}-reassign"))
        if self.config.get("auto.leader.rebalance.enable"):
            self._tasks.append(supervise(self._balance_leaders(),
                                         f"controller-{self.node_id}-balance"))

    async def stop(self) -> None:
        self._stopping = True
        if self.authorizer.enabled:
            self.authorizer.denials.flush()  # the counts still held back
        for t in [*self._tasks, *self._notice_tasks]:
            t.cancel()
        await asyncio.gather(*self._tasks, *self._notice_tasks, return_exceptions=True)
        self._tasks.clear()
        await self.groups.close()
        if self.is_active:
            await self.raft.maybe_transfer_leadership()
        if self._forward is not None:
            await self._forward.close()
        await self.raft.stop()

    def ready(self) -> tuple[bool, str]:
        """Ready when this controller is in a quorum with a known leader that has
        committed in its term (the active controller itself, or a follower of it)."""
        st = self.raft.status()
        if st["term"] < 0:
            return False, "starting"
        if st["leader_id"] <= 0:
            return False, f"no known controller leader (term {st['term']}, role {st['role']})"
        if st["role"] == "LEADER" and not self.is_active:
            return False, "elected, not yet active"
        return True, ""

    def metrics(self) -> list[Any]:
        """Read at scrape time (dmq.ops.metrics): no cost between scrapes."""
        st = self.raft.status()
        lab = {"node": str(self.node_id)}
        by_state: dict[str, int] = {}
        for b in self.state.brokers.values():
            by_state[str(b.state)] = by_state.get(str(b.state), 0) + 1
        out: list[Any] = [
            ("dmq_controller_raft_role", "gauge", "1 for the role this controller is in",
             [({**lab, "role": r}, 1.0 if st["role"] == r else 0.0)
              for r in ("LEADER", "FOLLOWER", "CANDIDATE", "PRE_CANDIDATE")]),
            ("dmq_controller_raft_term", "gauge", "current Raft term", [(lab, float(st["term"]))]),
            ("dmq_controller_raft_commit_index", "gauge", "Raft commit index",
             [(lab, float(st["commit_index"]))]),
            ("dmq_controller_raft_last_applied", "gauge", "last Raft index applied",
             [(lab, float(st["last_applied"]))]),
            ("dmq_controller_leader_changes", "counter", "controller leader changes seen",
             [(lab, float(self.stats_leader_changes))]),
            ("dmq_controller_writes", "counter", "metadata writes proposed by this node",
             [(lab, float(self.stats_writes))]),
            ("dmq_controller_write_seconds", "counter",
             "time from proposal to applied, summed over writes (divide by writes)",
             [(lab, self.stats_write_seconds)]),
            ("dmq_controller_metadata_version", "gauge", "last applied metadata version",
             [(lab, float(self.state.version))]),
            ("dmq_controller_brokers", "gauge", "registered brokers by state",
             [({**lab, "state": k}, float(v)) for k, v in sorted(by_state.items())]),
            ("dmq_controller_topics", "gauge", "topics", [(lab, float(len(self.state.topics)))]),
        ]
        sizes = self.groups.member_counts()
        if sizes is not None and self.is_active:
            out.append(("dmq_group_members", "gauge", "members of each consumer group",
                        [({**lab, "group": g}, float(n)) for g, n in sorted(sizes.items())]))
        return out

    def info(self) -> dict[str, Any]:
        st = self.raft.status()
        return {"controller": {"node_id": self.node_id, "role": st["role"], "term": st["term"],
                               "leader_id": st["leader_id"], "active": self.is_active,
                               "metadata_version": self.state.version}}

    # activity ---------------------------------------------------------------------------
    @property
    def is_active(self) -> bool:
        st = self.raft.status()
        return bool(st["role"] == "LEADER" and st["term"] == self._active_term)

    def leader_hint(self) -> tuple[int, str, int] | None:
        leader_id = self.raft.status()["leader_id"]
        addr = self.config.node(leader_id) if leader_id > 0 else None
        return (leader_id, addr.host, addr.port) if addr is not None else None

    def _require_active(self) -> None:
        if self.is_active:
            return
        st = self.raft.status()
        if st["role"] == "LEADER":
            raise RaftNotReadyError(f"controller {self.node_id} was just elected and is "
                                    "catching up")
        raise NotControllerError(f"controller {self.node_id} is not the active controller",
                                 leader=self.leader_hint())

    def image(self) -> MetadataImage:
        st = self.raft.status()
        leader = st["leader_id"] if st["leader_id"] > 0 else -1
        addr = self.config.node(leader) if leader > 0 else None
        return self.state.image(leader, st["term"] if leader > 0 else -1,
                                (addr.host, addr.port) if addr is not None else None)

    def _on_applied(self, version: int) -> None:
        ev, self._applied = self._applied, asyncio.Event()
        ev.set()

    async def wait_version(self, version: int, timeout_ms: int) -> bool:
        """Wait until the applied version passes `version`; False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while self.state.version <= version:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await wait_for(self._applied.wait(), remaining)
            except TimeoutError:
                return False
        return True

    # writes -----------------------------------------------------------------------------
    async def write(self, records: list[Record], timeout_ms: int = WRITE_TIMEOUT_MS) -> int:
        """Propose records as one entry and wait until applied. Caller holds the lock."""
        if not records:
            return self.state.version
        self.stats_writes += 1
        t0 = time.perf_counter()
        version = await self.raft.propose_records(records, timeout_ms)
        self.stats_write_seconds += time.perf_counter() - t0
        return version

    async def mutate(self, plan: Callable[[], tuple[list[Record], T]],
                     timeout_ms: int = WRITE_TIMEOUT_MS) -> T:
        """Plan against the applied state and write, serialized with all other writes.
        Raises NOT_CONTROLLER (with the leader) unless this is the active controller."""
        self._require_active()
        try:
            await wait_for(self._write_lock.acquire(), timeout_ms / 1000)
        except TimeoutError:
            raise RequestTimedOutError("controller write queue is busy") from None
        try:
            self._require_active()
            records, result = plan()
            await self.write(records, timeout_ms)
            return result
        finally:
            self._write_lock.release()

    @staticmethod
    def _plan(fn: Callable[..., list[Record]], *args: Any
              ) -> Callable[[], tuple[list[Record], None]]:
        """A plan for `mutate` from a planner method that only returns records."""
        return lambda: (fn(*args), None)

    async def _write_planned(self, fn: Callable[[], list[Record]]) -> int:
        """`mutate` with a planner method that only returns records; how many it wrote."""
        def plan() -> tuple[list[Record], int]:
            recs = fn()
            return recs, len(recs)

        return await self.mutate(plan)

    # background -------------------------------------------------------------------------
    async def _watch_leadership(self) -> None:
        tick_s = max(0.01, int(self.config.get("raft.tick.ms")) / 1000)
        while not self._stopping:
            st = self.raft.status()
            if st["leader_id"] != self._last_leader_seen:
                if st["leader_id"] > 0:
                    self.stats_leader_changes += 1
                self._last_leader_seen = st["leader_id"]
            if st["role"] == "LEADER" and st["term"] != self._active_term \
                    and st["term"] != self._seen_term:
                self._seen_term = st["term"]
                try:
                    await self._activate(st["term"])
                except DmqError as exc:
                    log.warning("controller=%d could not become active in term %d: %s",
                                self.node_id, st["term"], exc)
                    self._seen_term = -1
                except Exception:
                    log.exception("controller=%d activation failed", self.node_id)
                    self._seen_term = -1
            await self.clock.sleep(tick_s * 1000)

    async def _activate(self, term: int) -> None:
        # a barrier entry: once applied, every entry of earlier terms is applied too
        async with self._write_lock:
            await self.raft.propose_records([], WRITE_TIMEOUT_MS, barrier=True)
            if self.state.cluster_id is None:
                # the cluster's first active controller names it, once (see new_cluster_id)
                await self.raft.propose_records(
                    [ClusterId(new_cluster_id(self.state, self.config))], WRITE_TIMEOUT_MS)
            self.sessions.reset(self.state.brokers)
            self._active_term = term
        log.info("controller=%d is the active controller (term %d, metadata version %d)",
                 self.node_id, term, self.state.version)
        self._push_controller_changed(term)

    def _push_controller_changed(self, term: int) -> None:
        me = self.config.node(self.node_id)
        assert me is not None
        body = {"controller_id": self.node_id, "term": term, "host": me.host, "port": me.port}
        for b in list(self.state.brokers.values()):
            if b.broker_id == self.node_id:
                continue
            task = asyncio.create_task(self._notify_broker(b.host, b.port, b.broker_id, body))
            self._notice_tasks.add(task)
            task.add_done_callback(self._notice_tasks.discard)

    async def _notify_broker(self, host: str, port: int, broker_id: int,
                             body: dict[str, Any]) -> None:
        try:
            await request_once(host, port, ApiKey.CONTROLLER_CHANGED, dict(body),
                               timeout_ms=NOTICE_TIMEOUT_MS,
                               client_id=f"controller-{self.node_id}", node_id=self.node_id)
        except DmqError as exc:
            log.debug("controller=%d ControllerChanged to broker %d failed: %s", self.node_id,
                      broker_id, exc)

    async def _check_sessions(self) -> None:
        timeout = self.sessions.session_timeout_ms
        period_ms = max(20.0, min(timeout / 8, 250))
        while not self._stopping:
            await self.clock.sleep(period_ms)
            if not self.is_active:
                continue
            live = [b.broker_id for b in self.state.brokers.values() if b.state != FENCED]
            for broker_id in self.sessions.expired(live):
                try:
                    await self.mutate(self._plan(self.planner.fence_broker, broker_id))
                    self.stats_fenced += 1
                    log.warning("controller=%d fenced broker %d: no heartbeat for %d ms",
                                self.node_id, broker_id, timeout)
                except DmqError as exc:
                    log.info("controller=%d fencing broker %d failed: %s", self.node_id,
                             broker_id, exc)

    async def _balance_leaders(self) -> None:
        while not self._stopping:
            await self.clock.sleep(self.preferred_leader_check_ms)
            if not self.is_active:
                continue
            try:
                n = await self._write_planned(lambda: self.planner.preferred_leader_elections(
                    imbalance_percentage=self.leader_imbalance_percentage))
                if n:
                    log.info("controller=%d moved %d leaderships back to preferred replicas",
                             self.node_id, n)
            except DmqError as exc:
                log.info("controller=%d preferred leader election failed: %s", self.node_id, exc)

    async def _drive_reassignments(self) -> None:
        """On the active controller: complete reassignments whose target replicas have
        all caught up. Everything it needs is in the applied state, so a new active
        controller carries on where the last one stopped."""
        checked = -1
        while not self._stopping:
            await self.clock.sleep(REASSIGNMENT_CHECK_MS)
            if not self.is_active or self.state.version == checked:
                continue
            checked = self.state.version
            try:
                n = await self._write_planned(self.planner.reassignment_steps)
                if n:
                    log.info("controller=%d completed %d partition reassignment(s)",
                             self.node_id, n)
            except DmqError as exc:
                checked = -1
                log.info("controller=%d reassignment step failed: %s", self.node_id, exc)

    # read handlers ----------------------------------------------------------------------
    async def handle_metadata(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        image = self.image()
        principal = connection_principal(ctx.connection)
        topics, refused = self.authorizer.metadata_view(principal, body["topics"], image.topics)
        if topics and body["allow_auto_create"] and self.config.get("auto.create.topics.enable"):
            unknown = [t for t in topics if t not in image.topics and t not in refused]
            if unknown:
                return await self._auto_create(body, unknown, principal, refused)
        return metadata_body(image, topics, refused)

    async def _auto_create(self, body: dict[str, Any], unknown: list[str], principal: str,
                           refused: dict[str, int]) -> Any:
        errors: dict[str, int] = dict(refused)
        valid = []
        for name in unknown:
            if not self.authorizer.may_create_topic(principal, name, "Metadata"):
                errors[name] = int(ErrorCode.TOPIC_AUTHORIZATION_FAILED)
                continue
            try:
                validate_topic_name(name)
                valid.append(name)
            except InvalidTopicError:
                errors[name] = int(ErrorCode.INVALID_TOPIC)
        if not self.is_active:
            if self._forward is not None and valid:
                try:
                    return await self._forward.request(ApiKey.METADATA, body, timeout_ms=5000)
                except DmqError as exc:
                    log.info("controller=%d auto-create forward failed: %s", self.node_id, exc)
            for name in valid:
                errors[name] = int(ErrorCode.LEADER_NOT_AVAILABLE)
            return metadata_body(self.image(), body["topics"], errors)
        reqs = [{"name": n, "partitions": -1, "replication_factor": -1, "configs": {}}
                for n in valid]
        results = await self.mutate(lambda: self.planner.create_topics(reqs))
        for r in results:
            if r["error"] and r["error"] != ErrorCode.TOPIC_ALREADY_EXISTS:
                errors[r["name"]] = r["error"]
        return metadata_body(self.image(), body["topics"], errors)

    async def handle_describe_cluster(self, ctx: RequestContext, body: Any) -> Any:
        st = self.raft.status()
        active = self.is_active
        controllers = await asyncio.gather(*(self._controller_status(c.node_id, c.host, c.port)
                                             for c in self.config.controllers))
        brokers = [{"broker_id": b.broker_id, "host": b.host, "port": b.port, "rack": b.rack,
                    "state": b.state, "broker_epoch": b.broker_epoch,
                    "last_heartbeat_ms_ago": self.sessions.ms_since_heartbeat(b.broker_id)
                    if active else -1}
                   for _, b in sorted(self.state.brokers.items())]
        return {"controller_id": st["leader_id"] if st["leader_id"] > 0 else -1,
                "controller_term": st["term"], "metadata_version": self.state.version,
                "cluster_id": self.state.cluster_id,
                "controllers": list(controllers), "brokers": brokers, "active": active,
                "answered_by": self.node_id,
                "reassignments": [
                    {"topic": p.topic, "partition": p.partition, "replicas": list(p.replicas),
                     "adding": list(p.adding), "removing": list(p.removing),
                     "leader": p.leader, "isr": list(p.isr),
                     "bytes_left": self.reassignment_bytes_left(p)}
                    for p in sorted(self.planner.reassignments(),
                                    key=lambda p: (p.topic, p.partition))]}

    async def _controller_status(self, node_id: int, host: str, port: int) -> dict[str, Any]:
        row = {"node_id": node_id, "host": host, "port": port}
        if node_id == self.node_id:
            st = self.raft.status()
        else:
            try:
                st = await request_once(host, port, ApiKey.RAFT_STATUS, {},
                                        timeout_ms=PEER_STATUS_TIMEOUT_MS,
                                        client_id=f"controller-{self.node_id}")
            except DmqError:
                return {**row, "role": "UNREACHABLE", "term": -1, "commit_index": -1,
                        "last_applied": -1}
        role = str(st.get("role", "UNREACHABLE")).upper()
        if role == "PRE_CANDIDATE":
            role = "CANDIDATE"
        return {**row, "role": role, "term": st.get("term", -1),
                "commit_index": st.get("commit_index", -1),
                "last_applied": st.get("last_applied", -1)}

    async def handle_metadata_fetch(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        version = body["version"]
        max_wait_ms = max(0, min(int(body["max_wait_ms"]), 30_000))
        if version >= self.state.version and max_wait_ms:
            await self.wait_version(version, max_wait_ms)
        image = self.image()
        out: dict[str, Any] = {"controller_id": image.controller_id,
                               "controller_term": image.controller_term}
        if image.controller_address is not None:
            out["controller"] = [image.controller_id, *image.controller_address]
        recs = self.state.records_since(version, MAX_FETCH_ENTRIES) if version > 0 else None
        if recs is None:
            out["version"] = self.state.version
            out["snapshot"] = self.state.to_snapshot(include_offsets=False)
        else:
            out["version"] = recs[-1][0] if len(recs) == MAX_FETCH_ENTRIES else self.state.version
            out["records"] = recs
        return out

    async def handle_describe_configs(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        out = []
        principal = connection_principal(ctx.connection)
        for name in body["topics"]:
            t = self.state.topics.get(name)
            if not self.authorizer.check(principal, DESCRIBE_CONFIGS, TOPIC, name,
                                         "DescribeConfigs"):
                out.append(_refused(name, principal, DESCRIBE_CONFIGS) | {"configs": {}})
            elif t is None:
                out.append({"name": name, "error": int(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
                            "msg": f"topic {name!r} does not exist", "configs": {}})
            else:
                out.append({"name": name, "error": 0, "msg": None,
                            "configs": effective_topic_configs(t.configs, self.config.get),
                            "overrides": dict(t.configs)})
        if body.get("dynamic"):
            self.authorizer.require_cluster(principal, DESCRIBE_CONFIGS, "DescribeConfigs")
            overrides = dict(self.state.dynamic_configs)
            return {"topics": out, "dynamic": {
                "configs": {k: overrides.get(k, str(self.config.get(k)))
                            for k in sorted(DYNAMIC_CONFIG_CHECKS)},
                "overrides": overrides}}
        return {"topics": out}

    async def handle_describe_client_quotas(self, ctx: RequestContext,
                                            body: dict[str, Any]) -> Any:
        """Client quotas (dmq.security.quotas) from the applied state: DescribeConfigs
        on the cluster, as Kafka's DescribeClientQuotas."""
        principal = connection_principal(ctx.connection)
        self.authorizer.require_cluster(principal, DESCRIBE_CONFIGS, "DescribeClientQuotas")
        found = quota_entries(self.state.dynamic_configs)
        wanted = body["users"]
        names = sorted(found, key=lambda u: (u is not None, u or ""))
        return {"entries": [[u, found[u]] for u in names if wanted is None or u in wanted]}

    async def handle_alter_client_quotas(self, ctx: RequestContext,
                                         body: dict[str, Any]) -> Any:
        """Set or remove client quotas: AlterConfigs on the cluster, as Kafka's
        AlterClientQuotas."""
        principal = connection_principal(ctx.connection)
        self.authorizer.require_cluster(principal, ALTER_CONFIGS, "AlterClientQuotas")
        results = await self.mutate(lambda: self.planner.alter_client_quotas(
            body["entries"], body["validate_only"]))
        if not body["validate_only"]:
            for user, code, _ in results:
                if code == 0:
                    log.info("controller=%d client quotas of %s changed by %s",
                             self.node_id, "<default>" if user is None else repr(user),
                             principal)
        return {"results": results}

    # write handlers ---------------------------------------------------------------------
    async def handle_broker_registration(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        bid = body["broker_id"]

        def plan() -> tuple[list[Record], None]:
            return self.planner.register_broker(bid, body["host"], body["port"], body["rack"],
                                                body["incarnation_id"], body["kafka_host"],
                                                body["kafka_port"]), None

        await self.mutate(plan)
        self.sessions.touch(bid)
        b = self.state.brokers[bid]
        log.info("controller=%d broker %d registered at %s:%d epoch %d", self.node_id, bid,
                 b.host, b.port, b.broker_epoch)
        return {"broker_epoch": b.broker_epoch}

    async def handle_broker_heartbeat(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        self._require_active()
        bid, epoch = body["broker_id"], body["broker_epoch"]
        self.planner.check_broker(bid, epoch)
        self.sessions.touch(bid)
        report = body.get("reassigning")
        if report is not None:
            self._reassign_progress[bid] = {(t, p): n for t, p, n in report}
        should_shutdown = False
        b = self.state.brokers[bid]
        if body["want_shutdown"]:
            await self.mutate(lambda: (self.planner.controlled_shutdown(bid), None))
            should_shutdown = self.planner.leaderships(bid) == 0
        elif b.state == FENCED and not body["want_fence"] \
                and body["metadata_version"] >= self.state.broker_changed_at.get(bid, 0):
            # caught up: the broker has seen its own registration or fencing, and with it
            # every leadership that moved away from it
            def plan() -> tuple[list[Record], None]:
                self.planner.check_broker(bid, epoch)
                return self.planner.unfence_broker(bid), None

            await self.mutate(plan)
            log.info("controller=%d broker %d unfenced (caught up to %d)", self.node_id, bid,
                     body["metadata_version"])
        # a write above waited: the broker may have been unregistered (or registered
        # again) meanwhile, which the broker answers by registering again
        self.planner.check_broker(bid, epoch)
        b = self.state.brokers[bid]
        return {"is_fenced": b.state == FENCED, "should_shutdown": should_shutdown,
                "metadata_version": self.state.version}

    async def handle_controlled_shutdown(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        bid, epoch = body["broker_id"], body["broker_epoch"]

        def plan() -> tuple[list[Record], None]:
            self.planner.check_broker(bid, epoch)
            return self.planner.controlled_shutdown(bid), None

        await self.mutate(plan)
        left = self.planner.leaderships(bid)
        log.info("controller=%d controlled shutdown of broker %d: %d leaderships left",
                 self.node_id, bid, left)
        return {"remaining_leaderships": left,
                "unmovable_leaderships": self.planner.unmovable_leaderships(bid)}

    async def handle_create_topics(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        principal = connection_principal(ctx.connection)
        allowed, refused = self._split(
            body["topics"], lambda t: self.authorizer.may_create_topic(
                principal, t["name"], "CreateTopics"), principal, CREATE)
        results = await self.mutate(
            lambda: self.planner.create_topics(allowed, body["validate_only"]),
            body["timeout_ms"])
        return {"topics": refused + results}

    async def handle_delete_topics(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        principal = connection_principal(ctx.connection)
        allowed, refused = self._split(
            body["topics"], lambda t: self.authorizer.check(principal, DELETE, TOPIC, t,
                                                            "DeleteTopics"), principal, DELETE)
        results = await self.mutate(lambda: self.planner.delete_topics(allowed),
                                    body["timeout_ms"])
        return {"topics": refused + results}

    async def handle_create_partitions(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        principal = connection_principal(ctx.connection)
        allowed, refused = self._split(
            body["topics"], lambda t: self.authorizer.check(principal, ALTER, TOPIC, t["name"],
                                                            "CreatePartitions"),
            principal, ALTER)
        results = await self.mutate(
            lambda: self.planner.create_partitions(allowed, body["validate_only"]),
            body["timeout_ms"])
        return {"topics": refused + results}

    @staticmethod
    def _split(items: list[Any], may: Callable[[Any], bool], principal: str, operation: str
               ) -> tuple[list[Any], list[dict[str, Any]]]:
        """(the items of a per-topic request the principal may act on, the answer rows
        of those it may not)."""
        allowed, refused = [], []
        for item in items:
            if may(item):
                allowed.append(item)
            else:
                name = item if isinstance(item, str) else item["name"]
                refused.append(_refused(name, principal, operation))
        return allowed, refused

    async def handle_alter_configs(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        principal = connection_principal(ctx.connection)
        dynamic = body.get("dynamic")
        dynamic_result = None
        if dynamic is not None:  # cluster-wide broker configs: AlterConfigs on the cluster
            self.authorizer.require_cluster(principal, ALTER_CONFIGS, "AlterConfigs")
            dynamic_result = await self.mutate(
                lambda: self.planner.alter_dynamic_configs(dynamic, body["validate_only"]))
        allowed, refused = self._split(
            body["topics"], lambda t: self.authorizer.check(
                principal, ALTER_CONFIGS, TOPIC, t["name"], "AlterConfigs"),
            principal, ALTER_CONFIGS)
        body = {**body, "topics": allowed}
        results = refused + await self.mutate(
            lambda: self.planner.alter_configs(body["topics"], body["validate_only"]))
        # turning unclean election on can bring offline partitions back at once
        for req in body["topics"]:
            if not body["validate_only"] and req["name"] in self.state.topics and \
                    req["configs"].get("unclean.leader.election.enable") == "true":
                await self.mutate(self._plan(self.planner.elect_offline_leaders, (),
                                             req["name"]))
        if dynamic_result is not None:
            return {"topics": results, "dynamic": dynamic_result}
        return {"topics": results}

    async def handle_alter_partition(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        bid, epoch = body["broker_id"], body["broker_epoch"]
        results = await self.mutate(
            lambda: self.planner.alter_partition(bid, epoch, body["topics"]))
        out = []
        for topic, parts in results:
            t = self.state.topics.get(topic)
            rows = []
            for partition, error, _msg in parts:
                p = None if t is None else t.partitions.get(partition)
                if error or p is None:
                    rows.append([partition, error or int(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION),
                                 -1, -1, [], -1])
                else:
                    rows.append([partition, 0, p.leader, p.leader_epoch, list(p.isr),
                                 p.partition_epoch])
            out.append([topic, rows])
        return {"topics": out}

    async def handle_alter_partition_reassignments(self, ctx: RequestContext,
                                                   body: dict[str, Any]) -> Any:
        self.authorizer.require_cluster(connection_principal(ctx.connection), ALTER,
                                        "AlterPartitionReassignments")
        if body["decommission"] is not None:  # the controller plans the moves
            bid = body["decommission"]
            answer = await self.mutate(lambda: self.planner.decommission_broker(bid))
            log.info("controller=%d decommission of broker %d: %d move(s) started, %d "
                     "already moving", self.node_id, bid,
                     sum(1 for r in answer["partitions"] if r[2] == 0), answer["moving"])
            return answer
        results = await self.mutate(lambda: self.planner.reassign_partitions(body["partitions"]))
        return {"partitions": results}

    async def handle_list_partition_reassignments(self, ctx: RequestContext,
                                                  body: dict[str, Any]) -> Any:
        self.authorizer.require_cluster(connection_principal(ctx.connection), DESCRIBE,
                                        "ListPartitionReassignments")
        topics = set(body["topics"]) if body["topics"] is not None else None
        rows = [[p.topic, p.partition, list(p.replicas), list(p.adding), list(p.removing),
                 p.leader, list(p.isr), self.reassignment_bytes_left(p)]
                for p in self.planner.reassignments() if topics is None or p.topic in topics]
        return {"partitions": sorted(rows, key=lambda r: (r[0], r[1]))}

    def reassignment_bytes_left(self, p: PartitionInfo) -> int:
        """Bytes the adding replicas of `p` still have to copy, as its leader last
        reported them (-1: not reported yet, e.g. just after a controller change)."""
        return self._reassign_progress.get(p.leader, {}).get((p.topic, p.partition), -1)

    async def handle_elect_leaders(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        self.authorizer.require_cluster(connection_principal(ctx.connection), ALTER,
                                        "ElectLeaders")
        results = await self.mutate(lambda: self.planner.elect_preferred_leaders(body["topic"]))
        return {"partitions": results}

    async def handle_unregister_broker(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        self.authorizer.require_cluster(connection_principal(ctx.connection), ALTER,
                                        "UnregisterBroker")
        bid = body["broker_id"]
        await self.mutate(self._plan(self.planner.unregister_broker, bid))
        log.info("controller=%d broker %d unregistered", self.node_id, bid)
        return {}

    async def handle_allocate_producer_ids(self, ctx: RequestContext,
                                           body: dict[str, Any]) -> Any:
        bid, epoch = body["broker_id"], body["broker_epoch"]

        def plan() -> tuple[list[Record], int]:
            self.planner.check_broker(bid, epoch)
            return self.planner.allocate_producer_ids(bid)

        first = await self.mutate(plan)
        return {"first_producer_id": first, "count": self.state.next_producer_id - first}

    async def handle_init_producer_id(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        principal = connection_principal(ctx.connection)
        txn = body["transactional_id"]
        if txn is not None:
            self.authorizer.require(principal, WRITE, TRANSACTIONAL_ID, txn, "InitProducerId")
        else:
            self.authorizer.require_cluster(principal, IDEMPOTENT_WRITE, "InitProducerId")
        def plan() -> tuple[list[Record], int]:
            first = self.state.next_producer_id
            return [ProducerIds(-1, first + 1)], first

        pid = await self.mutate(plan)
        return {"producer_id": pid, "producer_epoch": 0}

    async def handle_create_acls(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        return await self.acls.create(connection_principal(ctx.connection), body["acls"],
                                      _requester(ctx, body))

    async def handle_describe_acls(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        return self.acls.describe(connection_principal(ctx.connection), body)

    async def handle_delete_acls(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        return await self.acls.delete(connection_principal(ctx.connection), body["filters"],
                                      _requester(ctx, body))

    async def handle_controller_changed(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        for listener in self.controller_changed_listeners:
            listener(body)
        return {}

    # library API for other controller-side layers (group coordinator) -------------------
    async def commit_offsets(self, group: str, offsets: list[list[Any]]) -> list[list[Any]]:
        """Replicate committed offsets: [[topic, [[partition, offset, metadata]]]];
        returns [[topic, [[partition, error]]]]."""
        now = self.clock.wall_ms()
        limit = int(self.config.get("offset.metadata.max.bytes"))
        return await self.mutate(lambda: self.planner.commit_offsets(group, offsets, now, limit))

    def committed_offsets(self, group: str) -> dict[tuple[str, int], tuple[int, str | None, int]]:
        return self.state.offsets_of(group)

    def check_broker(self, broker_id: int, broker_epoch: int) -> None:
        if broker_id not in self.state.brokers:
            raise BrokerIdNotRegisteredError(f"broker {broker_id} is not registered")
        self.planner.check_broker(broker_id, broker_epoch)

    def topic(self, name: str) -> Any:
        t = self.state.topics.get(name)
        if t is None:
            raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
        return t


def _requester(ctx: RequestContext, body: dict[str, Any]) -> str:
    """Who asks: the connection's principal, or, for a node forwarding a Kafka client's
    request (which it authorized), "<client> via <node>" (for the audit line)."""
    who = connection_principal(ctx.connection)
    if is_node(who) and body.get("principal"):
        return f"{body['principal']} (via {who})"
    return who


def _refused(name: str, principal: str, operation: str) -> dict[str, Any]:
    return {"name": name, "error": int(ErrorCode.TOPIC_AUTHORIZATION_FAILED),
            "msg": f"{principal} may not {operation} topic {name!r}"}


__all__ = ["ControllerService"]
