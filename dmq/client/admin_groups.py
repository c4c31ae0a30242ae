"""`GroupAdmin`: consumer group administration (list, describe with lag, reset offsets,
delete), the library behind `dmq groups ...`.

    async with GroupAdmin("127.0.0.1:9091") as ga:
        for g in await ga.list_groups():
            print(g.group_id, g.state)
        desc = await ga.describe_group("billing")     # members, offsets, lag
        await ga.reset_offsets("billing", "orders", to="earliest")

Group calls go to the active controller (the coordinator) through a
`ControllerChannel`; log end offsets come from each partition leader with LIST_OFFSETS
(latest = the high watermark, what a consumer can read), one request per leader.
Lag = log end offset - committed offset (the whole log end offset when nothing is
committed yet).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dmq.client.admin import Admin
from dmq.client.cluster import CONTROLLER_WATCH_AFTER_MS
from dmq.client.records import PartitionKey
from dmq.metadata.discovery import ControllerChannel, connect_security
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import Connection
from dmq.protocol.errors import (
    DmqError,
    ErrorCode,
    LeaderNotAvailableError,
    UnknownTopicOrPartitionError,
    error_for,
)

EARLIEST = -2
LATEST = -1


if TYPE_CHECKING:
    from dmq.security.client_config import ClientSecurity


@dataclass(frozen=True, slots=True)
class GroupListing:
    group_id: str
    state: str
    members: int


@dataclass(frozen=True, slots=True)
class MemberDescription:
    member_id: str
    instance_id: str | None
    member_epoch: int
    client_id: str
    host: str
    assignment: frozenset[PartitionKey]


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    committed: int | None  # None: nothing committed
    log_end_offset: int | None  # None: the leader could not be asked
    owner: str | None  # member id

    @property
    def lag(self) -> int | None:
        if self.log_end_offset is None:
            return None
        return self.log_end_offset - (self.committed or 0)


@dataclass(frozen=True, slots=True)
class GroupDescription:
    group_id: str
    state: str
    epoch: int
    assignor: str
    members: list[MemberDescription]
    partitions: list[PartitionLag] = field(default_factory=list)

    @property
    def total_lag(self) -> int:
        return sum(p.lag or 0 for p in self.partitions)


class GroupAdmin:
    def __init__(self, bootstrap: str | list[str] | Admin, *, client_id: str = "dmq-admin",
                 request_timeout_ms: int = 30_000,
                 security: ClientSecurity | None = None) -> None:
        """From bootstrap addresses, or on top of an open `Admin` (which stays the
        caller's to close; its `security` is used unless another is given).
        `security`: TLS and SASL of its connections (`ClientSecurity.from_file`)."""
        self._own_admin = not isinstance(bootstrap, Admin)
        self.admin = bootstrap if isinstance(bootstrap, Admin) else Admin(
            bootstrap, client_id=client_id, request_timeout_ms=request_timeout_ms,
            security=security)
        self.security = security if security is not None else self.admin.security
        self.request_timeout_ms = self.admin.request_timeout_ms
        self._channel = ControllerChannel(self.admin.addresses, client_id=client_id,
                                          watch_after_ms=CONTROLLER_WATCH_AFTER_MS,
                                          security=self.security)

    async def __aenter__(self) -> GroupAdmin:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()
        if self._own_admin:
            await self.admin.close()

    async def _request(self, key: ApiKey, body: dict[str, Any]) -> Any:
        return await self._channel.request(key, body, self.request_timeout_ms)

    # ---- groups ---------------------------------------------------------------------
    async def list_groups(self) -> list[GroupListing]:
        res = await self._request(ApiKey.LIST_GROUPS, {})
        return [GroupListing(g["group_id"], g["state"], g["members"]) for g in res["groups"]]

    async def committed_offsets(self, group_id: str) -> dict[PartitionKey, int]:
        res = await self._request(ApiKey.OFFSET_FETCH, {"group_id": group_id})
        return {(t, p): off for t, rows in res["topics"] for p, off, _md, err in rows
                if not err and off >= 0}

    async def describe_group(self, group_id: str, *, with_lag: bool = True
                             ) -> GroupDescription:
        """Members and their partitions; with `with_lag`, committed offset, log end
        offset and lag of every partition of the topics the group has offsets for or
        is assigned. Raises GROUP_ID_NOT_FOUND for an unknown group."""
        res = await self._request(ApiKey.DESCRIBE_GROUPS, {"groups": [group_id]})
        g = res["groups"][0]
        if g["error"]:
            raise error_for(g["error"], f"group {group_id!r}")
        members = [MemberDescription(m["member_id"], m["instance_id"], m["member_epoch"],
                                     m["client_id"], m["host"],
                                     frozenset((t, p) for t, ps in m["assignment"] for p in ps))
                   for m in g["members"]]
        desc = GroupDescription(g["group_id"], g["state"], g["epoch"], g["assignor"], members)
        if not with_lag:
            return desc
        committed = await self.committed_offsets(group_id)
        owners = {tp: m.member_id for m in members for tp in m.assignment}
        topics = sorted({t for t, _ in committed} | {t for t, _ in owners})
        image = await self.admin.metadata(topics)
        tps = sorted({(t, p) for t in topics if t in image.topics
                      for p in image.topics[t].partitions} | set(committed))
        ends = await self.list_offsets(tps, LATEST, image)
        parts = [PartitionLag(t, p, committed.get((t, p)), ends.get((t, p)), owners.get((t, p)))
                 for t, p in tps]
        return GroupDescription(desc.group_id, desc.state, desc.epoch, desc.assignor,
                                members, parts)

    async def delete_groups(self, group_ids: list[str]) -> dict[str, DmqError | None]:
        res = await self._request(ApiKey.DELETE_GROUPS, {"groups": list(group_ids)})
        return {g["group_id"]: (error_for(g["error"], g.get("msg")) if g["error"] else None)
                for g in res["groups"]}

    async def delete_offsets(self, group_id: str, partitions: list[PartitionKey]
                             ) -> dict[PartitionKey, DmqError | None]:
        """Delete the group's committed offsets of `partitions` (Kafka's OffsetDelete):
        per partition None, or the error (GROUP_SUBSCRIBED_TO_TOPIC while a member of
        the group consumes the topic; UNKNOWN_TOPIC_OR_PARTITION). GROUP_ID_NOT_FOUND is
        raised for a group without offsets or members."""
        by_topic: dict[str, list[int]] = {}
        for t, p in partitions:
            by_topic.setdefault(t, []).append(p)
        res = await self._request(ApiKey.OFFSET_DELETE, {
            "group_id": group_id, "topics": [[t, ps] for t, ps in sorted(by_topic.items())]})
        return {(t, p): (error_for(err) if err else None)
                for t, rows in res["topics"] for p, err in rows}

    async def reset_offsets(self, group_id: str, topic: str, *, to: str | int,
                            dry_run: bool = False) -> dict[PartitionKey, int]:
        """Set the committed offsets of every partition of `topic` for an empty group
        (NON_EMPTY_GROUP otherwise). `to`: "earliest", "latest", or an offset (clamped
        to the log's range); by time: `reset_offsets_to_time`. Returns the new offsets
        (not written with `dry_run`)."""
        tps, earliest = await self._topic_offsets(topic, EARLIEST)
        latest = await self.list_offsets(tps, LATEST)
        targets: dict[PartitionKey, int] = {}
        for tp in tps:
            lo, hi = earliest.get(tp), latest.get(tp)
            if lo is None or hi is None:
                raise LeaderNotAvailableError(f"{tp[0]}-{tp[1]} has no reachable leader")
            if to == "earliest":
                targets[tp] = lo
            elif to == "latest":
                targets[tp] = hi
            else:
                targets[tp] = min(max(int(to), lo), hi)
        return await self._write_reset(group_id, targets, dry_run)

    async def reset_offsets_to_time(self, group_id: str, topic: str, timestamp_ms: int, *,
                                    dry_run: bool = False) -> dict[PartitionKey, int]:
        """Each partition to its first offset with a timestamp >= `timestamp_ms` (the
        log end offset when there is none)."""
        tps, at = await self._topic_offsets(topic, timestamp_ms)
        latest = await self.list_offsets(tps, LATEST)
        targets = {}
        for tp in tps:
            off = at.get(tp)
            targets[tp] = off if off is not None and off >= 0 else latest.get(tp, 0) or 0
        return await self._write_reset(group_id, targets, dry_run)

    async def _topic_offsets(self, topic: str, timestamp: int
                             ) -> tuple[list[PartitionKey], dict[PartitionKey, int]]:
        """Every partition of `topic` and its LIST_OFFSETS answer for `timestamp`."""
        image = await self.admin.metadata([topic])
        if topic not in image.topics:
            raise UnknownTopicOrPartitionError(f"topic {topic!r} does not exist")
        tps = [(topic, p) for p in sorted(image.topics[topic].partitions)]
        return tps, await self.list_offsets(tps, timestamp, image)

    async def _write_reset(self, group_id: str, targets: dict[PartitionKey, int],
                           dry_run: bool) -> dict[PartitionKey, int]:
        by_topic: dict[str, list[list[int]]] = {}
        for (t, p), off in sorted(targets.items()):
            by_topic.setdefault(t, []).append([p, off])
        res = await self._request(ApiKey.RESET_OFFSETS, {
            "group_id": group_id, "topics": [[t, rows] for t, rows in by_topic.items()],
            "dry_run": dry_run})
        out = {}
        for t, rows in res["topics"]:
            for p, off, err in rows:
                if err:
                    raise error_for(err, f"reset {t}-{p}")
                out[(t, p)] = off
        return out

    # ---- log offsets ----------------------------------------------------------------
    async def list_offsets(self, tps: list[PartitionKey], timestamp: int,
                           image: Any = None) -> dict[PartitionKey, int]:
        """LIST_OFFSETS (-1 latest, -2 earliest, else by time) from each leader; a
        partition whose leader cannot answer is left out."""
        if image is None:
            image = await self.admin.metadata(sorted({t for t, _ in tps}))
        by_leader: dict[int, list[PartitionKey]] = {}
        for t, p in tps:
            info = image.partition(t, p)
            if info is not None and info.leader >= 0 and info.leader in image.brokers:
                by_leader.setdefault(info.leader, []).append((t, p))
        results = await asyncio.gather(*(
            self._list_offsets_from(image.brokers[leader], group, timestamp)
            for leader, group in by_leader.items()), return_exceptions=True)
        out: dict[PartitionKey, int] = {}
        for r in results:
            if isinstance(r, dict):
                out.update(r)
        return out

    async def _list_offsets_from(self, broker: Any, tps: list[PartitionKey],
                                 timestamp: int) -> dict[PartitionKey, int]:
        by_topic: dict[str, list[list[int]]] = {}
        for t, p in tps:
            by_topic.setdefault(t, []).append([p, timestamp])
        conn = await Connection.open(broker.host, broker.port, client_id="dmq-admin",
                                     connect_timeout_ms=min(5000, self.request_timeout_ms),
                                     **connect_security(self.security))
        try:
            res = await conn.request(ApiKey.LIST_OFFSETS,
                                     {"topics": [[t, rows] for t, rows in by_topic.items()]},
                                     timeout_ms=min(10_000, self.request_timeout_ms))
        finally:
            await conn.close()
        out = {}
        for t, rows in res["topics"]:
            for p, err, _ts, off in rows:
                if err == ErrorCode.NONE:
                    out[(t, p)] = off
        return out


__all__ = [
    "EARLIEST",
    "LATEST",
    "GroupAdmin",
    "GroupDescription",
    "GroupListing",
    "MemberDescription",
    "PartitionLag",
]
