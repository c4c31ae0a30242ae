"""`Admin`: the administrative client (topics, configs, cluster status, ACLs).

    async with Admin("127.0.0.1:9091,127.0.0.1:9092") as admin:
        await admin.create_topic("orders", partitions=6, replication_factor=3)
        print(await admin.describe_cluster())

Any controller or broker address works as bootstrap: the active controller is found by
`dmq.metadata.discovery` and followed across failovers. Writes go to the active
controller; reads too, so an admin sees its own writes. Per-topic failures come back as
typed exceptions (`dmq.protocol.errors`) in the result maps, or are raised by the
single-topic helpers. Self-contained: it needs only the protocol and discovery.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dmq.client.cluster import CONTROLLER_WATCH_AFTER_MS
from dmq.clock import Clock, SystemClock
from dmq.metadata.discovery import ControllerChannel, connect_security, parse_bootstrap
from dmq.metadata.image import MetadataImage, TopicInfo, image_from_metadata
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import request_once
from dmq.protocol.errors import DmqError, ErrorCode, error_for
from dmq.security.acl import (
    WILDCARD,
    AccessControlEntry,
    AclFilter,
    entry_from_wire,
    entry_to_wire,
    filter_to_wire,
    role_entries,
)

DEFAULT_TIMEOUT_MS = 30_000
DEFAULT_SCRAM_ITERATIONS = 8192
SCRAM_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512")


if TYPE_CHECKING:
    from dmq.security.client_config import ClientSecurity


@dataclass(frozen=True, slots=True)
class NewTopic:
    name: str
    partitions: int = -1  # -1: the cluster's num.partitions
    replication_factor: int = -1  # -1: the cluster's default.replication.factor
    configs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TopicResult:
    name: str
    error: DmqError | None
    topic_id: str | None = None

    def raise_for_error(self) -> None:
        if self.error is not None:
            raise self.error


@dataclass(frozen=True, slots=True)
class DeletedRecords:
    """One partition's answer to `delete_records`: its new log start (the low
    watermark), or why it did not move."""

    low_watermark: int
    error: DmqError | None = None

    def raise_for_error(self) -> None:
        if self.error is not None:
            raise self.error


DELETE_RECORDS_ATTEMPTS = 3  # rounds for partitions whose leader moved or is missing


def _error(row: dict[str, Any]) -> DmqError | None:
    code = row.get("error", 0)
    return None if not code else error_for(code, row.get("msg"))


class Admin:
    def __init__(self, bootstrap: str | list[str], *, client_id: str = "dmq-admin",
                 request_timeout_ms: int = DEFAULT_TIMEOUT_MS,
                 rng: random.Random | None = None, clock: Clock | None = None,
                 security: ClientSecurity | None = None) -> None:
        """`security`: TLS and SASL of its connections (`ClientSecurity.from_file` of
        Kafka client properties); None: those of the context (`ClientSecurity.applied`)."""
        self.addresses = parse_bootstrap(bootstrap)
        self.security = security
        self.client_id = client_id
        self.request_timeout_ms = request_timeout_ms
        self._clock = clock or SystemClock()
        self._channel = ControllerChannel(self.addresses, client_id=client_id,
                                          rng=rng or random.Random(),
                                          watch_after_ms=CONTROLLER_WATCH_AFTER_MS,
                                          security=security)

    async def __aenter__(self) -> Admin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _request(self, key: ApiKey, body: dict[str, Any],
                       timeout_ms: int | None = None) -> Any:
        return await self._channel.request(key, body, timeout_ms or self.request_timeout_ms)

    # topics -----------------------------------------------------------------------------
    async def create_topics(self, topics: list[NewTopic], *, validate_only: bool = False,
                            timeout_ms: int | None = None) -> dict[str, TopicResult]:
        body = {"topics": [{"name": t.name, "partitions": t.partitions,
                            "replication_factor": t.replication_factor,
                            "configs": dict(t.configs)} for t in topics],
                "validate_only": validate_only,
                "timeout_ms": timeout_ms or self.request_timeout_ms}
        resp = await self._request(ApiKey.CREATE_TOPICS, body, timeout_ms)
        return {r["name"]: TopicResult(r["name"], _error(r), r.get("id"))
                for r in resp["topics"]}

    async def create_topic(self, name: str, partitions: int = -1, replication_factor: int = -1,
                           configs: dict[str, str] | None = None) -> str:
        """Create one topic; returns its id or raises the error."""
        res = (await self.create_topics([NewTopic(name, partitions, replication_factor,
                                                  dict(configs or {}))]))[name]
        res.raise_for_error()
        assert res.topic_id is not None
        return res.topic_id

    async def delete_topics(self, names: list[str], *,
                            timeout_ms: int | None = None) -> dict[str, DmqError | None]:
        resp = await self._request(ApiKey.DELETE_TOPICS, {
            "topics": list(names), "timeout_ms": timeout_ms or self.request_timeout_ms},
            timeout_ms)
        return {r["name"]: _error(r) for r in resp["topics"]}

    async def create_partitions(self, counts: dict[str, int], *, validate_only: bool = False,
                                timeout_ms: int | None = None) -> dict[str, DmqError | None]:
        """Grow topics to the given total partition counts."""
        resp = await self._request(ApiKey.CREATE_PARTITIONS, {
            "topics": [{"name": n, "count": c} for n, c in counts.items()],
            "validate_only": validate_only,
            "timeout_ms": timeout_ms or self.request_timeout_ms}, timeout_ms)
        return {r["name"]: _error(r) for r in resp["topics"]}

    async def metadata(self, topics: list[str] | None = None, *,
                       allow_auto_create: bool = False) -> MetadataImage:
        """The active controller's view. Unknown named topics are left out of the image."""
        resp = await self._request(ApiKey.METADATA, {"topics": topics,
                                                     "allow_auto_create": allow_auto_create})
        return image_from_metadata(resp)

    async def list_topics(self) -> list[str]:
        return sorted((await self.metadata(None)).topics)

    async def describe_topics(self, names: list[str] | None = None) -> dict[str, TopicInfo]:
        """Partitions with leader, replicas and ISR, plus the topic's explicit configs.
        Raises UNKNOWN_TOPIC_OR_PARTITION if a named topic does not exist."""
        resp = await self._request(ApiKey.METADATA, {"topics": names})
        for t in resp["topics"]:
            if t.get("error") and t["error"] != ErrorCode.LEADER_NOT_AVAILABLE:
                raise error_for(t["error"], f"topic {t['name']!r}: "
                                f"{ErrorCode(t['error']).name.lower()}")
        image = image_from_metadata(resp)
        if not image.topics:
            return {}
        cfg = await self._request(ApiKey.DESCRIBE_CONFIGS, {"topics": sorted(image.topics)})
        overrides = {r["name"]: r.get("overrides", {}) for r in cfg["topics"] if not r["error"]}
        return {name: TopicInfo(t.name, t.topic_id, t.partitions, overrides.get(name, {}))
                for name, t in sorted(image.topics.items())}

    async def delete_records(self, before: dict[tuple[str, int], int], *,
                             timeout_ms: int | None = None
                             ) -> dict[tuple[str, int], DeletedRecords]:
        """Delete the records below an offset (-1: the high watermark) of each
        partition, as Kafka's deleteRecords: the partition's log start moves up to it,
        on its leader at once and on followers with their next fetch. Sent to each
        partition's leader; a partition whose leader moved or is not known yet is asked
        again after a metadata refresh (up to `DELETE_RECORDS_ATTEMPTS` rounds). An
        offset past the high watermark is OFFSET_OUT_OF_RANGE, a compacted topic
        POLICY_VIOLATION, a missing partition UNKNOWN_TOPIC_OR_PARTITION."""
        timeout = timeout_ms or self.request_timeout_ms
        out: dict[tuple[str, int], DeletedRecords] = {}
        todo = dict(before)
        for attempt in range(DELETE_RECORDS_ATTEMPTS):
            if attempt:
                await self._clock.sleep(100 * attempt)
            image = await self.metadata(sorted({t for t, _ in todo}))
            by_leader: dict[int, list[tuple[str, int]]] = {}
            for (t, p) in todo:
                info = image.partition(t, p)
                if info is None:
                    out[(t, p)] = DeletedRecords(-1, error_for(
                        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, f"{t}-{p} does not exist"))
                elif info.leader < 0 or info.leader not in image.brokers:
                    out[(t, p)] = DeletedRecords(-1, error_for(
                        ErrorCode.LEADER_NOT_AVAILABLE, f"{t}-{p} has no leader"))
                else:
                    by_leader.setdefault(info.leader, []).append((t, p))
            answers = await asyncio.gather(*(
                self._delete_records_at(image.brokers[leader], tps, todo, timeout)
                for leader, tps in by_leader.items()), return_exceptions=True)
            for (_, tps), answer in zip(by_leader.items(), answers, strict=True):
                if isinstance(answer, DmqError):
                    answer = {tp: DeletedRecords(-1, answer) for tp in tps}
                elif isinstance(answer, BaseException):
                    raise answer
                out.update(answer)
            todo = {tp: todo[tp] for tp in todo
                    if (err := out[tp].error) is not None and err.refresh_metadata
                    and err.retriable}
            if not todo:
                break
        return out

    async def _delete_records_at(self, broker: Any, tps: list[tuple[str, int]],
                                 before: dict[tuple[str, int], int], timeout_ms: int
                                 ) -> dict[tuple[str, int], DeletedRecords]:
        by_topic: dict[str, list[list[int]]] = {}
        for t, p in tps:
            by_topic.setdefault(t, []).append([p, before[(t, p)]])
        res = await request_once(broker.host, broker.port, ApiKey.DELETE_RECORDS,
                                 {"topics": [[t, rows] for t, rows in by_topic.items()]},
                                 timeout_ms=timeout_ms, client_id=self.client_id,
                                 **connect_security(self.security))
        out = {}
        for t, rows in res["topics"]:
            for p, err, low in rows:
                out[(t, p)] = DeletedRecords(low, error_for(err, f"{t}-{p}") if err else None)
        return out

    # configs ----------------------------------------------------------------------------
    async def describe_configs(self, names: list[str]) -> dict[str, dict[str, str]]:
        """Effective configs (explicit values over cluster defaults) per topic."""
        resp = await self._request(ApiKey.DESCRIBE_CONFIGS, {"topics": list(names)})
        out = {}
        for r in resp["topics"]:
            err = _error(r)
            if err is not None:
                raise err
            out[r["name"]] = dict(r["configs"])
        return out

    async def alter_configs(self, changes: dict[str, dict[str, str | None]], *,
                            validate_only: bool = False) -> dict[str, DmqError | None]:
        """Set (value) or reset to the default (None) topic configs, per topic."""
        resp = await self._request(ApiKey.ALTER_CONFIGS, {
            "topics": [{"name": n, "configs": dict(c)} for n, c in changes.items()],
            "validate_only": validate_only})
        return {r["name"]: _error(r) for r in resp["topics"]}

    async def describe_dynamic_configs(self, overrides_only: bool = False) -> dict[str, str]:
        """The cluster-wide dynamic broker configs in effect (a set value, else the
        static setting), e.g. follower.replication.throttled.rate; with
        `overrides_only`, only those set, also those of one broker (`KEY:ID`)."""
        resp = await self._request(ApiKey.DESCRIBE_CONFIGS, {"topics": [], "dynamic": True})
        return dict(resp["dynamic"]["overrides" if overrides_only else "configs"])

    async def alter_dynamic_configs(self, changes: dict[str, str | None], *,
                                    validate_only: bool = False) -> None:
        """Set (value) or reset to the static setting (None) dynamic broker configs,
        cluster-wide (`KEY`) or for one broker (`KEY:ID`, over the cluster-wide value:
        the replication throttles); raises the error of a refused change (nothing is
        changed then)."""
        resp = await self._request(ApiKey.ALTER_CONFIGS, {
            "topics": [], "dynamic": dict(changes), "validate_only": validate_only})
        err = _error(resp["dynamic"])
        if err is not None:
            raise err

    # cluster ----------------------------------------------------------------------------
    async def describe_cluster(self, timeout_ms: int = 5000) -> dict[str, Any]:
        """Controller id and term, each controller's Raft status, brokers with state and
        last heartbeat (see DESCRIBE_CLUSTER in dmq/protocol/api.py). Asks the active
        controller; with no active controller, the first controller that answers."""
        try:
            return dict(await self._channel.request(ApiKey.DESCRIBE_CLUSTER, {}, timeout_ms))
        except DmqError as first:
            for host, port in self.addresses:
                try:
                    return dict(await request_once(host, port, ApiKey.DESCRIBE_CLUSTER, {},
                                                   timeout_ms=min(timeout_ms, 2000),
                                                   client_id=self.client_id,
                                                   **connect_security(self.security)))
                except DmqError:
                    continue
            raise first

    async def cluster_status(self, timeout_ms: int = 5000) -> dict[str, Any]:
        """`describe_cluster` in the shape of `dmq cluster status --json`."""
        d = await self.describe_cluster(timeout_ms)
        return {
            "controller_id": d["controller_id"], "controller_term": d["controller_term"],
            "metadata_version": d["metadata_version"],
            "controllers": [{k: c[k] for k in ("node_id", "role", "term", "commit_index",
                                               "last_applied")} for c in d["controllers"]],
            "brokers": [{k: b[k] for k in ("broker_id", "host", "port", "state",
                                           "last_heartbeat_ms_ago")} for b in d["brokers"]],
        }

    # partitions: reassignment (KIP-455) and preferred leaders ----------------------------
    async def alter_partition_reassignments(
            self, moves: list[tuple[str, int, list[int] | None]]) -> dict[tuple[str, int],
                                                                         DmqError | None]:
        """Start (replicas) or cancel (None) reassignments; the error per partition."""
        resp = await self._request(ApiKey.ALTER_PARTITION_REASSIGNMENTS, {
            "partitions": [[t, p, None if r is None else list(r)] for t, p, r in moves]})
        return {(t, p): (error_for(code, msg) if code else None)
                for t, p, code, msg in resp["partitions"]}

    async def decommission_broker(self, broker_id: int
                                  ) -> tuple[dict[tuple[str, int], DmqError | None], int]:
        """Start the reassignments that move every replica off a broker (alive or dead),
        planned by the controller: each replica goes to the least loaded online broker
        the partition does not use (another rack when there is one). Asked again, it
        starts only what is missing. Returns the error per partition of the moves started
        (None: started) and how many partitions were already moving off the broker."""
        resp = await self._request(ApiKey.ALTER_PARTITION_REASSIGNMENTS, {
            "partitions": [], "decommission": broker_id})
        if "moving" not in resp:
            raise error_for(ErrorCode.UNSUPPORTED_VERSION,
                            "the controller does not plan decommissions (an older dmq)")
        return ({(t, p): (error_for(code, msg) if code else None)
                 for t, p, code, msg in resp["partitions"]}, int(resp["moving"]))

    async def list_partition_reassignments(self, topics: list[str] | None = None
                                           ) -> list[dict[str, Any]]:
        """Reassignments in progress: topic, partition, replicas, adding, removing,
        leader, isr, bytes_left (what the adding replicas still have to copy, as the
        leader last reported it; -1: not known yet)."""
        resp = await self._request(ApiKey.LIST_PARTITION_REASSIGNMENTS, {"topics": topics})
        keys = ("topic", "partition", "replicas", "adding", "removing", "leader", "isr",
                "bytes_left")
        out = []
        for row in resp["partitions"]:
            r = dict(zip(keys, row, strict=False))
            r.setdefault("bytes_left", -1)  # an older controller does not say
            out.append(r)
        return out

    async def elect_leaders(self, topic: str | None = None
                            ) -> dict[tuple[str, int], DmqError | None]:
        """Preferred leader election; per partition that was not led by its preferred
        replica: None (moved) or why not."""
        resp = await self._request(ApiKey.ELECT_LEADERS, {"topic": topic})
        return {(t, p): (error_for(code, msg) if code else None)
                for t, p, code, msg in resp["partitions"]}

    async def unregister_broker(self, broker_id: int) -> None:
        """Forget a broker that will never return (refused while it hosts replicas)."""
        await self._request(ApiKey.UNREGISTER_BROKER, {"broker_id": broker_id})

    # ACLs (dmq.security.acl) ------------------------------------------------------------
    async def create_acls(self, acls: list[AccessControlEntry]) -> list[DmqError | None]:
        """Add ACLs (one already present is no change); per ACL, None or its error."""
        resp = await self._request(ApiKey.CREATE_ACLS,
                                   {"acls": [entry_to_wire(e) for e in acls]})
        return [error_for(code, msg) if code else None for code, msg in resp["results"]]

    async def describe_acls(self, acl_filter: AclFilter | None = None
                            ) -> list[AccessControlEntry]:
        """The ACLs the filter matches (every ACL without one)."""
        resp = await self._request(ApiKey.DESCRIBE_ACLS,
                                   filter_to_wire(acl_filter or AclFilter()))
        return [entry_from_wire(a) for a in resp["acls"]]

    async def delete_acls(self, filters: list[AclFilter]) -> list[AccessControlEntry]:
        """Remove every ACL a filter matches; returns those removed (raises the first
        filter's error, if any)."""
        resp = await self._request(ApiKey.DELETE_ACLS,
                                   {"filters": [filter_to_wire(f) for f in filters]})
        removed: list[AccessControlEntry] = []
        for r in resp["results"]:
            if r["error"]:
                raise error_for(r["error"], r["msg"])
            removed += [entry_from_wire(a) for a in r["acls"]]
        return removed

    async def grant_role(self, role: str, principal: str, topic: str = WILDCARD,
                         group: str = WILDCARD, prefixed: bool = False
                         ) -> list[AccessControlEntry]:
        """Add the ACLs a role stands for (`dmq.security.acl.role_entries`)."""
        entries = role_entries(role, principal, topic, group, prefixed)
        for err in await self.create_acls(entries):
            if err is not None:
                raise err
        return entries

    async def revoke_role(self, role: str, principal: str, topic: str = WILDCARD,
                          group: str = WILDCARD, prefixed: bool = False
                          ) -> list[AccessControlEntry]:
        """Remove exactly the ACLs `grant_role` with the same arguments adds."""
        entries = role_entries(role, principal, topic, group, prefixed)
        return await self.delete_acls([AclFilter(*e.fields()) for e in entries])

    async def wait_for_controller(self, timeout_ms: int = 10_000) -> dict[str, Any]:
        """Wait until an active controller answers; returns describe_cluster()."""
        clock = self._clock
        deadline = clock.monotonic_ms() + timeout_ms
        while True:
            try:
                d = await self.describe_cluster(timeout_ms=1000)
                if d.get("controller_id", -1) >= 0:
                    return d
            except DmqError:
                pass
            if clock.monotonic_ms() > deadline:
                raise error_for(ErrorCode.NOT_CONTROLLER,
                                f"no active controller after {timeout_ms} ms")
            await clock.sleep(100)

    # users (SCRAM credentials kept in the metadata; see dmq.security.users) -------------
    async def describe_user_scram_credentials(self, users: list[str] | None = None
                                              ) -> dict[str, list[tuple[str, int]]]:
        """user -> [(mechanism, iterations)] of every user that can log in (or of the
        named ones: an unknown one raises RESOURCE_NOT_FOUND)."""
        resp = await self._request(ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS, {"users": users})
        out: dict[str, list[tuple[str, int]]] = {}
        for user, code, msg, creds in resp["results"]:
            if code:
                raise error_for(code, msg)
            out[user] = [(m, int(i)) for m, i in creds]
        return out

    async def alter_user_scram_credentials(
            self, upsertions: list[tuple[str, str, str]] | None = None,
            deletions: list[tuple[str, str]] | None = None, *,
            iterations: int = DEFAULT_SCRAM_ITERATIONS) -> dict[str, DmqError | None]:
        """Set (user, mechanism, password) credentials and remove (user, mechanism)
        ones. The password never leaves this process: a random salt and the salted
        password (PBKDF2) are sent, as with Kafka's AlterUserScramCredentials. Result:
        user -> None or its error (a user refused in part is not changed)."""
        import secrets

        from dmq.security.users import salted_password

        ups = []
        for user, mech, password in upsertions or []:
            if not password:
                raise ValueError(f"user {user!r}: empty password")
            salt = secrets.token_bytes(24)
            ups.append([user, mech, iterations, salt,
                        salted_password(mech, password, salt, iterations)])
        resp = await self._request(ApiKey.ALTER_USER_SCRAM_CREDENTIALS, {
            "upsertions": ups, "deletions": [list(d) for d in deletions or []]})
        return {user: (None if not code else error_for(code, msg))
                for user, code, msg in resp["results"]}

    async def set_user_password(self, user: str, password: str,
                                mechanisms: tuple[str, ...] = SCRAM_MECHANISMS) -> None:
        """Create the user or change its password (every mechanism in `mechanisms`)."""
        err = (await self.alter_user_scram_credentials(
            [(user, m, password) for m in mechanisms]))[user]
        if err is not None:
            raise err

    async def delete_user(self, user: str) -> None:
        """Remove every credential of the user: it can no longer log in anywhere."""
        creds = (await self.describe_user_scram_credentials([user]))[user]
        err = (await self.alter_user_scram_credentials(
            deletions=[(user, m) for m, _ in creds])).get(user)
        if err is not None:
            raise err

    # client quotas (kept in the metadata; see dmq.security.quotas) -----------------------
    async def describe_client_quotas(self, users: list[str | None] | None = None
                                     ) -> dict[str | None, dict[str, int]]:
        """user (None: the default of every user) -> {"producer_byte_rate" |
        "consumer_byte_rate": bytes/s} of every quota entry (or of the named users)."""
        resp = await self._request(ApiKey.DESCRIBE_CLIENT_QUOTAS, {"users": users})
        return {user: {k: int(v) for k, v in quotas.items()}
                for user, quotas in resp["entries"]}

    async def alter_client_quotas(self, changes: dict[str | None, dict[str, int | None]],
                                  *, validate_only: bool = False
                                  ) -> dict[str | None, DmqError | None]:
        """Set (bytes/s) or remove (None) quotas per user (None: the default of every
        user); a per-broker byte rate, as Kafka's. Result: user -> None or its error (an
        entry refused in part is not changed)."""
        resp = await self._request(ApiKey.ALTER_CLIENT_QUOTAS, {
            "entries": [[user, dict(q)] for user, q in changes.items()],
            "validate_only": validate_only})
        return {user: (None if not code else error_for(code, msg))
                for user, code, msg in resp["results"]}

    async def set_client_quotas(self, user: str | None, *,
                                producer_byte_rate: int | None = None,
                                consumer_byte_rate: int | None = None) -> None:
        """Set the given quotas of `user` (None: the default); raises a refusal."""
        quotas: dict[str, int | None] = {}
        if producer_byte_rate is not None:
            quotas["producer_byte_rate"] = producer_byte_rate
        if consumer_byte_rate is not None:
            quotas["consumer_byte_rate"] = consumer_byte_rate
        err = (await self.alter_client_quotas({user: quotas}))[user]
        if err is not None:
            raise err

    async def revoke_token(self, token: str) -> str:
        """Refuse an HTTP token from now on, on every node (see dmq.security.tokens);
        returns its id."""
        resp = await self._request(ApiKey.REVOKE_TOKEN, {"token": token})
        return str(resp["token_id"])


__all__ = ["Admin", "DeletedRecords", "NewTopic", "TopicResult"]
