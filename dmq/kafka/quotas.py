"""Kafka's DescribeClientQuotas (48) and AlterClientQuotas (49) on a broker's Kafka
listener, a part of `KafkaApis`: checked against the ACLs here (DescribeConfigs /
AlterConfigs on the cluster, as Kafka's), then forwarded to the active controller,
which keeps quotas in the metadata (dmq.security.quotas).

Only the `user` entity is supported (a name, or null: the default of every user), with
the keys `producer_byte_rate` and `consumer_byte_rate` in whole bytes/s; an entity with
a `client-id` or `ip` component is refused with INVALID_REQUEST, and a describe filter
on them matches nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from dmq.broker.errors import message_of
from dmq.kafka.errors import forward_error_code, kafka_code
from dmq.kafka.server import Api
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import DmqError, ErrorCode
from dmq.security.acl import ALTER_CONFIGS, CLUSTER, CLUSTER_NAME, DESCRIBE_CONFIGS, Authorizer
from dmq.security.quotas import QUOTA_KEYS, check_rate

if TYPE_CHECKING:
    from dmq.kafka.codec import RequestHeader

ControllerRequest = Callable[[ApiKey, Any, int], Awaitable[Any]]
QUOTA_TIMEOUT_MS = 10_000
USER = "user"
KNOWN_ENTITY_TYPES = frozenset({USER, "client-id", "ip"})
MATCH_EXACT, MATCH_DEFAULT, MATCH_ANY = 0, 1, 2
_INVALID_REQUEST = int(ErrorCode.INVALID_REQUEST)
_CLUSTER_REFUSED = int(ErrorCode.CLUSTER_AUTHORIZATION_FAILED)


def _matches(user: str | None, components: list[dict[str, Any]]) -> bool:
    for c in components:
        if c["EntityType"] != USER:
            return False  # dmq's entities have a user component only
        kind = c["MatchType"]
        if kind == MATCH_EXACT and user != c["Match"]:
            return False
        if kind == MATCH_DEFAULT and user is not None:
            return False
        if kind == MATCH_ANY and user is None:
            return False
    return True


def _entity(user: str | None) -> list[dict[str, Any]]:
    return [{"EntityType": USER, "EntityName": user}]


def _operations(entry: dict[str, Any]) -> tuple[str | None, dict[str, int | None]]:
    """(user, {quota key: bytes/s | None}) of an AlterClientQuotas entry, or ValueError."""
    entity = entry["Entity"]
    if len(entity) != 1 or entity[0]["EntityType"] != USER:
        raise ValueError("only quotas of a user entity (or the default user) are "
                         "supported, got " + ", ".join(e["EntityType"] for e in entity))
    changes: dict[str, int | None] = {}
    for op in entry["Ops"]:
        key = op["Key"]
        if key not in QUOTA_KEYS:
            raise ValueError(f"unknown quota {key!r}; known: {', '.join(QUOTA_KEYS)}")
        changes[key] = None if op["Remove"] else int(check_rate(op["Value"]))
    return entity[0]["EntityName"], changes


class QuotaApis:
    """The client quota handlers of a broker's Kafka listener, a part of `KafkaApis`."""

    _controller_request: ControllerRequest

    @property
    def authorizer(self) -> Authorizer | None:  # the data plane's (KafkaApis)
        raise NotImplementedError

    def quota_table(self) -> list[Api]:
        return [
            Api(48, "DescribeClientQuotas", 0, 1, self.describe_client_quotas),
            Api(49, "AlterClientQuotas", 0, 1, self.alter_client_quotas),
        ]

    def _quota_allowed(self, header: RequestHeader, operation: str, api: str) -> bool:
        authz = self.authorizer
        return authz is None or authz.check(header.principal, operation, CLUSTER,
                                            CLUSTER_NAME, api)

    async def describe_client_quotas(self, header: RequestHeader,
                                     body: dict[str, Any]) -> Any:
        def failed(code: int, msg: str) -> dict[str, Any]:
            return {"ThrottleTimeMs": 0, "ErrorCode": code, "ErrorMessage": msg,
                    "Entries": None}

        if not self._quota_allowed(header, DESCRIBE_CONFIGS, "DescribeClientQuotas"):
            return failed(_CLUSTER_REFUSED,
                          f"{header.principal} may not DescribeConfigs the cluster")
        components = body["Components"]
        for c in components:
            if c["EntityType"] not in KNOWN_ENTITY_TYPES:
                return failed(_INVALID_REQUEST, f"unknown entity type {c['EntityType']!r}")
            if c["MatchType"] not in (MATCH_EXACT, MATCH_DEFAULT, MATCH_ANY):
                return failed(_INVALID_REQUEST, f"unknown match type {c['MatchType']}")
        try:
            resp = await self._controller_request(ApiKey.DESCRIBE_CLIENT_QUOTAS,
                                                  {"users": None}, QUOTA_TIMEOUT_MS)
        except (DmqError, OSError, TimeoutError) as exc:
            return failed(forward_error_code(exc), message_of(exc))
        return {"ThrottleTimeMs": 0, "ErrorCode": 0, "ErrorMessage": None, "Entries": [
            {"Entity": _entity(user),
             "Values": [{"Key": k, "Value": float(v)} for k, v in sorted(quotas.items())]}
            for user, quotas in resp["entries"] if _matches(user, components)]}

    async def alter_client_quotas(self, header: RequestHeader, body: dict[str, Any]) -> Any:
        allowed = self._quota_allowed(header, ALTER_CONFIGS, "AlterClientQuotas")
        rows: list[dict[str, Any]] = []
        forward: list[tuple[dict[str, Any], str | None, dict[str, int | None]]] = []
        for entry in body["Entries"]:
            row = {"ErrorCode": 0, "ErrorMessage": None, "Entity": entry["Entity"]}
            rows.append(row)
            if not allowed:
                row.update(ErrorCode=_CLUSTER_REFUSED,
                           ErrorMessage=f"{header.principal} may not AlterConfigs the cluster")
                continue
            try:
                user, changes = _operations(entry)
            except ValueError as exc:
                row.update(ErrorCode=_INVALID_REQUEST, ErrorMessage=str(exc))
                continue
            forward.append((row, user, changes))
        if forward:
            request = {"entries": [[user, changes] for _, user, changes in forward],
                       "validate_only": bool(body["ValidateOnly"])}
            try:
                resp = await self._controller_request(ApiKey.ALTER_CLIENT_QUOTAS, request,
                                                      QUOTA_TIMEOUT_MS)
                for (row, _, _), (_, code, msg) in zip(forward, resp["results"], strict=True):
                    row.update(ErrorCode=kafka_code(code), ErrorMessage=msg)
            except (DmqError, OSError, TimeoutError) as exc:
                for row, _, _ in forward:
                    row.update(ErrorCode=forward_error_code(exc), ErrorMessage=message_of(exc))
        return {"ThrottleTimeMs": 0, "Entries": rows}
