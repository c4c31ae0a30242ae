"""Kafka's ACL APIs on a broker's Kafka listener: CreateAcls, DescribeAcls, DeleteAcls
(v1-3, what librdkafka's and the Java AdminClient's create_acls/describe_acls/
delete_acls send).

Kafka's numbers (resource type, pattern type, operation, permission) are translated to
dmq's ACL names (`dmq.security.acl`). DescribeAcls is answered from this broker's
metadata image; CreateAcls and DeleteAcls are forwarded to the active controller, which
writes them to the metadata, after this broker checked Alter on the cluster (the
controller hears the broker, a node, not the client). It never imports the network
layer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from dmq.broker.errors import message_of
from dmq.kafka.errors import kafka_code
from dmq.kafka.server import Api
from dmq.metadata.image import MetadataImage
from dmq.metadata.records import AccessControlEntry
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import DmqError, ErrorCode
from dmq.security.acl import (
    ALTER,
    CLUSTER,
    CLUSTER_NAME,
    DESCRIBE,
    KAFKA_ANY,
    KAFKA_MATCH,
    KAFKA_OPERATIONS,
    KAFKA_PATTERN_TYPES,
    KAFKA_PERMISSIONS,
    KAFKA_RESOURCE_TYPES,
    AclError,
    AclFilter,
    Authorizer,
    entry_to_wire,
    filter_to_wire,
    make_entry,
    parse_filters,
)

if TYPE_CHECKING:
    from dmq.kafka.codec import RequestHeader

ControllerRequest = Callable[[ApiKey, Any, int], Awaitable[Any]]
ACL_TIMEOUT_MS = 10_000
_INVALID_REQUEST = int(ErrorCode.INVALID_REQUEST)
_CLUSTER_REFUSED = int(ErrorCode.CLUSTER_AUTHORIZATION_FAILED)


def _name(table: dict[str, int], code: int, what: str) -> str:
    for name, n in table.items():
        if n == code:
            return name
    raise AclError(f"{what} {code} is not supported")


def _filter_name(table: dict[str, int], code: int, what: str) -> str | None:
    return None if code == KAFKA_ANY else _name(table, code, what)


def kafka_filter(d: dict[str, Any]) -> AclFilter:
    """A DescribeAcls request or a DeleteAcls filter as dmq's filter."""
    ptype = d.get("PatternTypeFilter", KAFKA_PATTERN_TYPES["literal"])
    pattern = "match" if ptype == KAFKA_MATCH else _filter_name(KAFKA_PATTERN_TYPES, ptype,
                                                                "pattern type")
    return AclFilter(_filter_name(KAFKA_RESOURCE_TYPES, d["ResourceTypeFilter"],
                                  "resource type"),
                     d.get("ResourceNameFilter"), pattern, d.get("PrincipalFilter"),
                     d.get("HostFilter"),
                     _filter_name(KAFKA_OPERATIONS, d["Operation"], "operation"),
                     _filter_name(KAFKA_PERMISSIONS, d["PermissionType"], "permission"))


def _kafka_acl(e: AccessControlEntry) -> dict[str, Any]:
    return {"Principal": e.principal, "Host": e.host,
            "Operation": KAFKA_OPERATIONS[e.operation],
            "PermissionType": KAFKA_PERMISSIONS[e.permission]}


class AclApis:
    """The ACL handlers of a broker's Kafka listener, a part of `KafkaApis`."""

    _image: Callable[[], MetadataImage | None]
    _controller_request: ControllerRequest

    @property
    def authorizer(self) -> Authorizer | None:  # the data plane's (KafkaApis)
        raise NotImplementedError

    def acl_table(self) -> list[Api]:
        return [
            Api(29, "DescribeAcls", 1, 3, self.describe_acls),
            Api(30, "CreateAcls", 1, 3, self.create_acls),
            Api(31, "DeleteAcls", 1, 3, self.delete_acls),
        ]

    def _cluster_allowed(self, header: RequestHeader, operation: str, api: str) -> bool:
        authz = self.authorizer
        return authz is None or authz.check(header.principal, operation, CLUSTER,
                                            CLUSTER_NAME, api)

    def describe_acls(self, header: RequestHeader, body: dict[str, Any]) -> Any:
        if not self._cluster_allowed(header, DESCRIBE, "DescribeAcls"):
            return {"ThrottleTimeMs": 0, "ErrorCode": _CLUSTER_REFUSED,
                    "ErrorMessage": f"{header.principal} may not Describe the cluster",
                    "Resources": []}
        try:
            f = kafka_filter(body)
        except AclError as exc:
            return {"ThrottleTimeMs": 0, "ErrorCode": _INVALID_REQUEST,
                    "ErrorMessage": str(exc), "Resources": []}
        image = self._image()
        resources: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
        for e in sorted(image.acls if image is not None else (), key=lambda e: e.fields()):
            if f.matches(e):
                resources.setdefault((e.resource_type, e.resource_name, e.pattern_type),
                                     []).append(_kafka_acl(e))
        return {"ThrottleTimeMs": 0, "ErrorCode": 0, "ErrorMessage": None, "Resources": [
            {"Type": KAFKA_RESOURCE_TYPES[rtype], "Name": name,
             "PatternType": KAFKA_PATTERN_TYPES[ptype], "Acls": acls}
            for (rtype, name, ptype), acls in resources.items()]}

    async def create_acls(self, header: RequestHeader, body: dict[str, Any]) -> Any:
        creations = body["Creations"]
        if not self._cluster_allowed(header, ALTER, "CreateAcls"):
            msg = f"{header.principal} may not Alter the cluster"
            return {"ThrottleTimeMs": 0, "Results": [
                {"ErrorCode": _CLUSTER_REFUSED, "ErrorMessage": msg} for _ in creations]}
        results: list[dict[str, Any] | None] = []
        wanted = []
        for c in creations:
            try:
                e = make_entry(
                    _name(KAFKA_RESOURCE_TYPES, c["ResourceType"], "resource type"),
                    c["ResourceName"], c["Principal"],
                    _name(KAFKA_OPERATIONS, c["Operation"], "operation"),
                    _name(KAFKA_PERMISSIONS, c["PermissionType"], "permission"),
                    _name(KAFKA_PATTERN_TYPES, c.get("ResourcePatternType", 3),
                          "pattern type"), c["Host"])
                wanted.append(entry_to_wire(e))
                results.append(None)
            except AclError as exc:
                results.append({"ErrorCode": _INVALID_REQUEST, "ErrorMessage": str(exc)})
        answers, failed = await self._forward_acls(ApiKey.CREATE_ACLS, "acls", wanted, header)
        it = iter(answers)
        out = []
        for r in results:
            if r is not None:
                out.append(r)
            elif failed is not None:
                out.append({"ErrorCode": failed[0], "ErrorMessage": failed[1]})
            else:
                answer: list[Any] = next(it, [int(ErrorCode.UNKNOWN_SERVER_ERROR), None])
                out.append({"ErrorCode": kafka_code(int(answer[0])), "ErrorMessage": answer[1]})
        return {"ThrottleTimeMs": 0, "Results": out}

    async def _forward_acls(self, key: ApiKey, field: str, items: list[Any],
                            header: RequestHeader) -> tuple[list[Any], tuple[int, str] | None]:
        """Send `items` (nothing if empty) to the active controller for the principal:
        (its per-item results, or the Kafka error code and message that fails them all)."""
        if not items:
            return [], None
        try:
            resp = await self._controller_request(
                key, {field: items, "principal": header.principal}, ACL_TIMEOUT_MS)
        except (DmqError, OSError, TimeoutError) as exc:
            return [], (kafka_code(int(exc.code)) if isinstance(exc, DmqError)
                        else int(ErrorCode.REQUEST_TIMED_OUT), message_of(exc))
        results: list[Any] = resp["results"]
        return results, None

    async def delete_acls(self, header: RequestHeader, body: dict[str, Any]) -> Any:
        filters = body["Filters"]
        if not self._cluster_allowed(header, ALTER, "DeleteAcls"):
            msg = f"{header.principal} may not Alter the cluster"
            return {"ThrottleTimeMs": 0, "FilterResults": [
                {"ErrorCode": _CLUSTER_REFUSED, "ErrorMessage": msg, "MatchingAcls": []}
                for _ in filters]}
        parsed = parse_filters(filters, kafka_filter)
        good = [filter_to_wire(f) for f in parsed if isinstance(f, AclFilter)]
        answers, failed = await self._forward_acls(ApiKey.DELETE_ACLS, "filters", good, header)
        it = iter(answers)
        out = []
        for f in parsed:
            if isinstance(f, AclError):
                out.append({"ErrorCode": _INVALID_REQUEST, "ErrorMessage": str(f),
                            "MatchingAcls": []})
            elif failed is not None:
                out.append({"ErrorCode": failed[0], "ErrorMessage": failed[1],
                            "MatchingAcls": []})
            else:
                r = next(it)
                out.append({"ErrorCode": kafka_code(r["error"]), "ErrorMessage": r["msg"],
                            "MatchingAcls": [_matching(a) for a in r["acls"]]})
        return {"ThrottleTimeMs": 0, "FilterResults": out}


def _matching(a: dict[str, Any]) -> dict[str, Any]:
    return {"ErrorCode": 0, "ErrorMessage": None,
            "ResourceType": KAFKA_RESOURCE_TYPES[a["resource_type"]],
            "ResourceName": a["resource_name"],
            "PatternType": KAFKA_PATTERN_TYPES[a["pattern_type"]],
            "Principal": a["principal"], "Host": a["host"],
            "Operation": KAFKA_OPERATIONS[a["operation"]],
            "PermissionType": KAFKA_PERMISSIONS[a["permission"]]}


__all__ = ["AclApis", "kafka_filter"]
