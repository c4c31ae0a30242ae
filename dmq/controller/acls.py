"""The controller's ACL requests: CREATE_ACLS, DESCRIBE_ACLS, DELETE_ACLS.

ACLs are metadata records (ACCESS_CONTROL_ENTRY, REMOVE_ACCESS_CONTROL_ENTRY) written by
the active controller like any other metadata change; every controller and broker
applies them and enforces them from its own state (`dmq.security.acl.Authorizer`).
Creating or deleting needs Alter on the cluster, describing needs Describe on it. Each
change is one audit line (`dmq.audit`), written here, by the controller that made it.
It never decides an access itself beyond that: the authorizer does.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from dmq.metadata.records import AccessControlEntry, Record, RemoveAccessControlEntry
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import ErrorCode
from dmq.security.acl import (
    ALTER,
    DELETE,
    DESCRIBE,
    GROUP,
    READ,
    TOPIC,
    AclError,
    Authorizer,
    audit_change,
    connection_principal,
    entry_from_wire,
    entry_to_wire,
    filter_from_wire,
    parse_filters,
)

Mutate = Callable[[Callable[[], tuple[list[Record], Any]]], Awaitable[Any]]


class ControllerAcls:
    """The handlers, bound to the controller's state, write path and authorizer."""

    def __init__(self, acls: Callable[[], frozenset[AccessControlEntry]], mutate: Mutate,
                 authorizer: Authorizer, node_id: int) -> None:
        self._acls = acls
        self._mutate = mutate
        self.authorizer = authorizer
        self.node_id = node_id

    async def create(self, principal: str, wire_acls: list[dict[str, Any]],
                     requester: str | None = None) -> Any:
        """-> {"results": [[error, msg]]}, one per ACL asked for. `requester` names who
        asked in the audit line (default: `principal`)."""
        self.authorizer.require_cluster(principal, ALTER, "CreateAcls")
        results: list[list[Any]] = []
        wanted: list[AccessControlEntry] = []
        for d in wire_acls:
            try:
                wanted.append(entry_from_wire(d))
                results.append([0, None])
            except AclError as exc:
                results.append([int(ErrorCode.INVALID_REQUEST), str(exc)])

        def plan() -> tuple[list[Record], list[AccessControlEntry]]:
            have = self._acls()
            new = list(dict.fromkeys(e for e in wanted if e not in have))
            return list(new), new

        added = await self._mutate(plan)
        audit_change(self.node_id, requester or principal, "added", added)
        return {"results": results}

    def describe(self, principal: str, body: dict[str, Any]) -> Any:
        self.authorizer.require_cluster(principal, DESCRIBE, "DescribeAcls")
        f = filter_from_wire(body)
        return {"acls": [entry_to_wire(e) for e in sorted(
            (e for e in self._acls() if f.matches(e)), key=lambda e: e.fields())]}

    async def delete(self, principal: str, wire_filters: list[dict[str, Any]],
                     requester: str | None = None) -> Any:
        """-> {"results": [{"error", "msg", "acls": [removed...]}]}, one per filter."""
        self.authorizer.require_cluster(principal, ALTER, "DeleteAcls")
        filters = parse_filters(wire_filters, filter_from_wire)

        def plan() -> tuple[list[Record], list[list[AccessControlEntry]]]:
            have = sorted(self._acls(), key=lambda e: e.fields())
            gone: set[AccessControlEntry] = set()
            per_filter: list[list[AccessControlEntry]] = []
            for f in filters:
                hits = [] if isinstance(f, AclError) else [e for e in have if f.matches(e)]
                per_filter.append(hits)
                gone.update(hits)
            records: list[Record] = [RemoveAccessControlEntry(e) for e in have if e in gone]
            return records, per_filter

        removed = await self._mutate(plan)
        audit_change(self.node_id, requester or principal, "removed",
                     dict.fromkeys(e for hits in removed for e in hits))
        out = []
        for f, hits in zip(filters, removed, strict=True):
            if isinstance(f, AclError):
                out.append({"error": int(ErrorCode.INVALID_REQUEST), "msg": str(f), "acls": []})
            else:
                out.append({"error": 0, "msg": None, "acls": [entry_to_wire(e) for e in hits]})
        return {"results": out}


# ---- the group APIs -------------------------------------------------------------------
# Kafka's rules: joining, syncing, heartbeats, leaving and committing need Read on the
# group (and a commit Read on each topic); fetching offsets and describing need Describe
# on the group, deleting Delete. Refused groups and topics are answered in their rows
# where the answer has rows, else the request is refused whole.
GROUP_OPERATION = {ApiKey.CONSUMER_GROUP_HEARTBEAT: READ, ApiKey.JOIN_GROUP: READ,
                   ApiKey.SYNC_GROUP: READ, ApiKey.HEARTBEAT: READ, ApiKey.LEAVE_GROUP: READ,
                   ApiKey.OFFSET_COMMIT: READ, ApiKey.OFFSET_FETCH: DESCRIBE,
                   ApiKey.RESET_OFFSETS: READ, ApiKey.OFFSET_DELETE: DELETE}
Handler = Callable[[Any, dict[str, Any]], Any]
_TOPIC_REFUSED = int(ErrorCode.TOPIC_AUTHORIZATION_FAILED)
_GROUP_REFUSED = int(ErrorCode.GROUP_AUTHORIZATION_FAILED)


async def _result(answer: Any) -> Any:
    return await answer if inspect.isawaitable(answer) else answer


def guard_group_handler(key: ApiKey, handler: Handler, authorizer: Authorizer) -> Handler:
    """`handler` (a group API of `dmq.controller.group_service`) behind the ACL check."""
    api = key.name
    if key in GROUP_OPERATION:
        op = GROUP_OPERATION[key]

        def guarded(ctx: Any, body: dict[str, Any]) -> Any:
            principal = connection_principal(ctx.connection)
            authorizer.require(principal, op, GROUP, body["group_id"], api)
            if key is ApiKey.OFFSET_DELETE:  # Kafka: Delete on the group, Read on each topic
                for t, _ in body["topics"]:
                    authorizer.require(principal, READ, TOPIC, t, api)
            if key in (ApiKey.OFFSET_COMMIT, ApiKey.RESET_OFFSETS):
                refused = {t for t, _ in body["topics"]
                           if not authorizer.check(principal, READ, TOPIC, t, api)}
                if refused:
                    return _commit_some(handler, ctx, body, refused, key)
            return handler(ctx, body)

        return guarded
    if key is ApiKey.DESCRIBE_GROUPS or key is ApiKey.DELETE_GROUPS:
        op = DESCRIBE if key is ApiKey.DESCRIBE_GROUPS else DELETE

        async def per_group(ctx: Any, body: dict[str, Any]) -> Any:
            principal = connection_principal(ctx.connection)
            refused = [g for g in body["groups"]
                       if not authorizer.check(principal, op, GROUP, g, api)]
            keep = [g for g in body["groups"] if g not in refused]
            answer = await _result(handler(ctx, {**body, "groups": keep})) if keep \
                else {"groups": []}
            return {**answer, "groups": answer["groups"] + [
                {"group_id": g, "error": _GROUP_REFUSED,
                 "msg": f"{principal} may not {op} group {g!r}"} for g in refused]}

        return per_group
    if key is ApiKey.LIST_GROUPS:
        def listed(ctx: Any, body: dict[str, Any]) -> Any:
            principal = connection_principal(ctx.connection)
            answer = handler(ctx, body)
            return {**answer, "groups": [g for g in answer["groups"] if authorizer.allowed(
                principal, DESCRIBE, GROUP, g["group_id"])]}

        return listed
    return handler


async def _commit_some(handler: Handler, ctx: Any, body: dict[str, Any], refused: set[str],
                       key: ApiKey) -> Any:
    keep = [t for t in body["topics"] if t[0] not in refused]
    answer = await _result(handler(ctx, {**body, "topics": keep})) if keep else {"topics": []}
    if key is ApiKey.RESET_OFFSETS:  # rows [partition, offset, error]
        rows = [[t, [[p, o, _TOPIC_REFUSED] for p, o in parts]]
                for t, parts in body["topics"] if t in refused]
    else:  # rows [partition, error]
        rows = [[t, [[p[0], _TOPIC_REFUSED] for p in parts]]
                for t, parts in body["topics"] if t in refused]
    return {**answer, "topics": answer["topics"] + rows}


__all__ = ["ControllerAcls", "guard_group_handler"]
