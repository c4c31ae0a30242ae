"""ACL authorization: who may do what to which resource.

An ACL (`AccessControlEntry`, kept in the Raft metadata by the ACCESS_CONTROL_ENTRY and
REMOVE_ACCESS_CONTROL_ENTRY records) allows or denies one principal (`User:<name>`, or
`User:*` for everyone) one operation on the resources of one type that its pattern
covers: a literal name, the literal `*` (every resource of the type), or a prefix
(`prefixed`). The host is always `*`. The `Authorizer` decides as Kafka's
StandardAuthorizer does:

- with `authorizer.enabled` false (the default) everything is allowed;
- superusers (`authorizer.super.users`, `;`-separated principals) and cluster nodes
  (a connection proven to come from a node of the cluster, principal `node:<id>`) may
  do everything;
- a matching deny ACL (for the operation or All) refuses, whatever allows;
- else a matching allow ACL for the operation, for All, or for an operation that
  implies it (Read, Write, Delete and Alter imply Describe; AlterConfigs implies
  DescribeConfigs) allows;
- else the request is refused (no ACL: no access).

Role bundles (`ROLES`: admin, producer, consumer) are shorthands that expand to plain
ACL entries when granted; nothing remembers the role.

Decisions are cached per (principal, operation, resource), cleared whenever the ACL set
changes (the metadata image hands the same frozenset out until then), so a request
costs a dict lookup per resource it names, never a walk of every ACL. Refusals are
lines on the `dmq.audit` logger, rate-limited per (principal, operation, resource) by
`dmq.security.audit.DenialLog` (the first at once, then at most one a second with the
count held back); each ACL change is one line, always (by the active controller).

This module decides; it never does I/O and never touches a connection. The faces (dmq's
protocol, the Kafka listener) ask it with the principal of the connection a request
came on (`connection_principal`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dmq.config import ConfigError
from dmq.metadata.records import AccessControlEntry
from dmq.protocol.errors import (
    ClusterAuthorizationFailedError,
    DmqError,
    GroupAuthorizationFailedError,
    TopicAuthorizationFailedError,
)
from dmq.security.audit import DenialLog, audit
from dmq.security.tls import principal as certificate_principal

TOPIC = "topic"
GROUP = "group"
CLUSTER = "cluster"
TRANSACTIONAL_ID = "transactional_id"
RESOURCE_TYPES = (TOPIC, GROUP, CLUSTER, TRANSACTIONAL_ID)
CLUSTER_NAME = "kafka-cluster"  # the one cluster resource, as Kafka names it
LITERAL = "literal"
PREFIXED = "prefixed"
PATTERN_TYPES = (LITERAL, PREFIXED)
ALLOW = "allow"
DENY = "deny"
PERMISSIONS = (ALLOW, DENY)
WILDCARD = "*"
ANY_USER = "User:*"
ANONYMOUS = "User:ANONYMOUS"

ALL = "All"
READ = "Read"
WRITE = "Write"
CREATE = "Create"
DELETE = "Delete"
ALTER = "Alter"
DESCRIBE = "Describe"
CLUSTER_ACTION = "ClusterAction"
DESCRIBE_CONFIGS = "DescribeConfigs"
ALTER_CONFIGS = "AlterConfigs"
IDEMPOTENT_WRITE = "IdempotentWrite"
OPERATIONS = (ALL, READ, WRITE, CREATE, DELETE, ALTER, DESCRIBE, CLUSTER_ACTION,
              DESCRIBE_CONFIGS, ALTER_CONFIGS, IDEMPOTENT_WRITE)

# an allow ACL for any of these also allows the key (Kafka's implied operations)
IMPLIED_BY: dict[str, frozenset[str]] = {
    DESCRIBE: frozenset({READ, WRITE, DELETE, ALTER}),
    DESCRIBE_CONFIGS: frozenset({ALTER_CONFIGS}),
}

# Kafka's wire numbers (org.apache.kafka.common.resource / acl enums)
KAFKA_RESOURCE_TYPES = {TOPIC: 2, GROUP: 3, CLUSTER: 4, TRANSACTIONAL_ID: 5}
KAFKA_PATTERN_TYPES = {LITERAL: 3, PREFIXED: 4}
KAFKA_OPERATIONS = {ALL: 2, READ: 3, WRITE: 4, CREATE: 5, DELETE: 6, ALTER: 7, DESCRIBE: 8,
                    CLUSTER_ACTION: 9, DESCRIBE_CONFIGS: 10, ALTER_CONFIGS: 11,
                    IDEMPOTENT_WRITE: 12}
KAFKA_PERMISSIONS = {DENY: 2, ALLOW: 3}
KAFKA_ANY = 1  # the filter value "any" of every enum
KAFKA_MATCH = 2  # pattern type filter: the ACLs that apply to the literal name given

MAX_CACHED_DECISIONS = 100_000

_REFUSAL: dict[str, type[DmqError]] = {TOPIC: TopicAuthorizationFailedError,
                                       GROUP: GroupAuthorizationFailedError,
                                       CLUSTER: ClusterAuthorizationFailedError,
                                       TRANSACTIONAL_ID: ClusterAuthorizationFailedError}


class AclError(ValueError):
    """An ACL or filter that is not valid (the message names the field)."""


def _pick(value: str, choices: Iterable[str], what: str) -> str:
    for c in choices:
        if value.lower() == c.lower():
            return c
    raise AclError(f"{what} {value!r}: one of {', '.join(choices)}")


def make_entry(resource_type: str, resource_name: str, principal: str, operation: str,
               permission: str = ALLOW, pattern_type: str = LITERAL,
               host: str = WILDCARD) -> AccessControlEntry:
    """A validated ACL (names case-insensitive: `read`, `READ` and `Read` are Read)."""
    rtype = _pick(resource_type, RESOURCE_TYPES, "resource type")
    ptype = _pick(pattern_type, PATTERN_TYPES, "pattern type")
    op = _pick(operation, OPERATIONS, "operation")
    perm = _pick(permission, PERMISSIONS, "permission")
    if not principal.startswith("User:") or len(principal) == len("User:"):
        raise AclError(f"principal {principal!r}: User:<name> or User:*")
    if host != WILDCARD:
        raise AclError(f"host {host!r}: only '*' (any host) is supported")
    if not resource_name:
        raise AclError("resource name is empty")
    if rtype == CLUSTER and (resource_name != CLUSTER_NAME or ptype != LITERAL):
        raise AclError(f"the cluster resource is the literal {CLUSTER_NAME!r}")
    if ptype == PREFIXED and resource_name == WILDCARD:
        raise AclError("a prefixed pattern '*' means nothing: use the literal '*'")
    return AccessControlEntry(rtype, resource_name, ptype, principal, host, op, perm)


def covers(entry: AccessControlEntry, name: str) -> bool:
    """Whether the entry's resource pattern covers resource `name`."""
    if entry.pattern_type == PREFIXED:
        return name.startswith(entry.resource_name)
    return entry.resource_name == WILDCARD or entry.resource_name == name


@dataclass(frozen=True, slots=True)
class AclFilter:
    """Which ACLs a describe or delete names; None in a field matches anything.
    `pattern_type` "match" selects the ACLs that apply to the literal `resource_name`
    (that literal, the `*` literal, every prefix of it)."""

    resource_type: str | None = None
    resource_name: str | None = None
    pattern_type: str | None = None  # literal | prefixed | match | None (any)
    principal: str | None = None
    host: str | None = None
    operation: str | None = None
    permission: str | None = None

    def matches(self, e: AccessControlEntry) -> bool:
        if self.resource_type is not None and e.resource_type != self.resource_type:
            return False
        if self.principal is not None and e.principal != self.principal:
            return False
        if self.host is not None and e.host != self.host:
            return False
        if self.operation is not None and e.operation != self.operation:
            return False
        if self.permission is not None and e.permission != self.permission:
            return False
        if self.pattern_type == "match":
            return self.resource_name is None or covers(e, self.resource_name)
        if self.pattern_type is not None and e.pattern_type != self.pattern_type:
            return False
        return self.resource_name is None or e.resource_name == self.resource_name

    @classmethod
    def of(cls, resource_type: str | None = None, resource_name: str | None = None,
           pattern_type: str | None = None, principal: str | None = None,
           host: str | None = None, operation: str | None = None,
           permission: str | None = None) -> AclFilter:
        """A validated filter (names case-insensitive; "any" is None)."""
        def norm(v: str | None, choices: Iterable[str], what: str) -> str | None:
            if v is None or v.lower() == "any":
                return None
            return _pick(v, choices, what)

        return cls(norm(resource_type, RESOURCE_TYPES, "resource type"), resource_name,
                   norm(pattern_type, (*PATTERN_TYPES, "match"), "pattern type"),
                   principal, host, norm(operation, OPERATIONS, "operation"),
                   norm(permission, PERMISSIONS, "permission"))


def entry_to_wire(e: AccessControlEntry) -> dict[str, str]:
    """dmq's protocol form of an ACL (DESCRIBE_ACLS answers, CREATE_ACLS bodies)."""
    return {"resource_type": e.resource_type, "resource_name": e.resource_name,
            "pattern_type": e.pattern_type, "principal": e.principal, "host": e.host,
            "operation": e.operation, "permission": e.permission}


def entry_from_wire(d: dict[str, Any]) -> AccessControlEntry:
    return make_entry(d["resource_type"], d["resource_name"], d["principal"], d["operation"],
                      d.get("permission", ALLOW), d.get("pattern_type", LITERAL),
                      d.get("host", WILDCARD))


def filter_to_wire(f: AclFilter) -> dict[str, Any]:
    return {"resource_type": f.resource_type, "resource_name": f.resource_name,
            "pattern_type": f.pattern_type, "principal": f.principal, "host": f.host,
            "operation": f.operation, "permission": f.permission}


def filter_from_wire(d: dict[str, Any]) -> AclFilter:
    return AclFilter.of(d.get("resource_type"), d.get("resource_name"),
                        d.get("pattern_type"), d.get("principal"), d.get("host"),
                        d.get("operation"), d.get("permission"))


# ---- role bundles -------------------------------------------------------------------

ROLES = ("admin", "producer", "consumer")


def parse_filters(items: Iterable[Any],
                  parse: Callable[[Any], AclFilter]) -> list[AclFilter | AclError]:
    """Each item parsed into a filter, or the AclError saying why it is not one (a
    request's other filters still run)."""
    out: list[AclFilter | AclError] = []
    for item in items:
        try:
            out.append(parse(item))
        except AclError as exc:
            out.append(exc)
    return out


def role_entries(role: str, principal: str, topic: str = WILDCARD, group: str = WILDCARD,
                 prefixed: bool = False) -> list[AccessControlEntry]:
    """The plain ACLs a role grant stands for (a revoke removes exactly these):

    admin     All on the cluster, on every topic, group and transactional id;
    producer  Write and Describe on `topic`, IdempotentWrite on the cluster;
    consumer  Read and Describe on `topic`, Read on `group`.

    `prefixed`: `topic` and `group` are prefixes, not names."""
    role = _pick(role, ROLES, "role")
    ptype = PREFIXED if prefixed else LITERAL

    def on(rtype: str, name: str, op: str, pattern: str = ptype) -> AccessControlEntry:
        return make_entry(rtype, name, principal, op, ALLOW, pattern)

    if role == "admin":
        return [on(CLUSTER, CLUSTER_NAME, ALL, LITERAL), on(TOPIC, WILDCARD, ALL, LITERAL),
                on(GROUP, WILDCARD, ALL, LITERAL),
                on(TRANSACTIONAL_ID, WILDCARD, ALL, LITERAL)]
    if role == "producer":
        return [on(TOPIC, topic, WRITE), on(TOPIC, topic, DESCRIBE),
                on(CLUSTER, CLUSTER_NAME, IDEMPOTENT_WRITE, LITERAL)]
    return [on(TOPIC, topic, READ), on(TOPIC, topic, DESCRIBE), on(GROUP, group, READ)]


# ---- who is asking --------------------------------------------------------------------

def connection_principal(conn: Any) -> str:
    """The principal of a dmq protocol connection (`dmq.protocol.server`): `node:<id>`
    for a connection identified as a cluster node (NODE_HELLO, proven by certificate
    under mTLS; or a node's certificate on a SASL port), else the SASL user, else the
    client certificate's subject (mTLS), else User:ANONYMOUS."""
    if conn is None:
        return ANONYMOUS
    if conn.peer_node_id is not None:
        return f"node:{conn.peer_node_id}"
    if conn.principal:
        return str(conn.principal)
    return certificate_principal(conn.peer_cert) or ANONYMOUS


def is_node(principal: str) -> bool:
    return principal.startswith("node:")


# ---- deciding -------------------------------------------------------------------------

class Authorizer:
    """Decides requests against the ACLs `acls()` returns (the metadata image's set)."""

    def __init__(self, acls: Callable[[], frozenset[AccessControlEntry]], *,
                 enabled: bool = True, super_users: Iterable[str] = (),
                 node_id: int | str = "?", denials: DenialLog | None = None) -> None:
        self._acls = acls
        self.enabled = enabled
        self.super_users = frozenset(super_users)
        self.node_id = node_id
        self._seen: frozenset[AccessControlEntry] | None = None
        self._by_type: dict[str, list[AccessControlEntry]] = {}
        self._cache: dict[tuple[str, str, str, str], bool] = {}
        self.stats_denied = 0
        self.denials = denials if denials is not None else DenialLog()

    @classmethod
    def from_config(cls, config: Any, acls: Callable[[], frozenset[AccessControlEntry]],
                    node_id: int | str = "?") -> Authorizer:
        raw = str(config.get("authorizer.super.users"))
        supers = [s.strip() for s in raw.split(";") if s.strip()]
        bad = [s for s in supers if not s.startswith("User:")]
        if bad:
            raise ConfigError(f"authorizer.super.users: {', '.join(bad)} is not a principal "
                              f"(User:<name>)")
        return cls(acls, enabled=bool(config.get("authorizer.enabled")), super_users=supers,
                   node_id=node_id)

    def allowed(self, principal: str, operation: str, resource_type: str, name: str) -> bool:
        """Whether `principal` may do `operation` on the resource (no log line)."""
        if not self.enabled or principal in self.super_users or is_node(principal):
            return True
        acls = self._acls()
        if acls is not self._seen:
            self._seen = acls
            self._cache = {}
            by_type: dict[str, list[AccessControlEntry]] = {}
            for e in acls:
                by_type.setdefault(e.resource_type, []).append(e)
            self._by_type = by_type
        key = (principal, operation, resource_type, name)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._decide(principal, operation, resource_type, name)
            if len(self._cache) >= MAX_CACHED_DECISIONS:
                self._cache = {}
            self._cache[key] = hit
        return hit

    def _decide(self, principal: str, operation: str, resource_type: str, name: str) -> bool:
        granting = {operation, ALL} | IMPLIED_BY.get(operation, frozenset())
        allow = False
        for e in self._by_type.get(resource_type, ()):
            if e.principal != principal and e.principal != ANY_USER:
                continue
            if not covers(e, name):
                continue
            if e.permission == DENY:
                if e.operation == operation or e.operation == ALL:
                    return False
            elif e.operation in granting:
                allow = True
        return allow

    def check(self, principal: str, operation: str, resource_type: str, name: str,
              api: str = "") -> bool:
        """`allowed`, with the (rate-limited) audit line of a refusal."""
        if self.allowed(principal, operation, resource_type, name):
            return True
        self.stats_denied += 1
        self.denials.denied(self.node_id, principal, operation, resource_type, name, api)
        return False

    def require(self, principal: str, operation: str, resource_type: str, name: str,
                api: str = "") -> None:
        """Raise the resource type's AUTHORIZATION_FAILED error unless allowed."""
        if not self.check(principal, operation, resource_type, name, api):
            raise _REFUSAL[resource_type](
                f"{principal} may not {operation} {resource_type} {name!r}")

    def require_cluster(self, principal: str, operation: str, api: str = "") -> None:
        self.require(principal, operation, CLUSTER, CLUSTER_NAME, api)

    def exempt(self, principal: str) -> bool:
        """Allowed everything: no authorizer, a superuser or a node."""
        return not self.enabled or principal in self.super_users or is_node(principal)

    def metadata_view(self, principal: str, names: list[str] | None,
                      all_topics: Iterable[str]) -> tuple[list[str] | None, dict[str, int]]:
        """(the topics a Metadata answer lists, errors of named topics it must refuse):
        every topic when none is named, filtered to those the principal may Describe
        (quietly, as Kafka); a named one it may not Describe is TOPIC_AUTHORIZATION_FAILED."""
        if self.exempt(principal):
            return names, {}
        if names is None:
            return [t for t in sorted(all_topics)
                    if self.allowed(principal, DESCRIBE, TOPIC, t)], {}
        refused = int(TopicAuthorizationFailedError.code)
        return names, {n: refused for n in names
                       if not self.check(principal, DESCRIBE, TOPIC, n, "Metadata")}

    def may_create_some_topic(self, principal: str) -> bool:
        """Whether some allow ACL gives the principal Create (or All) on topics: the
        console offers topic creation then (the name decides on the request)."""
        if self.exempt(principal) or self.allowed(principal, CREATE, CLUSTER, CLUSTER_NAME):
            return True
        return any(e.permission == ALLOW and e.operation in (CREATE, ALL)
                   and e.principal in (principal, ANY_USER)
                   for e in self._acls() if e.resource_type == TOPIC)

    def may_create_topic(self, principal: str, topic: str, api: str = "") -> bool:
        """Create on the cluster or on the topic (Kafka accepts either)."""
        return (self.allowed(principal, CREATE, CLUSTER, CLUSTER_NAME)
                or self.check(principal, CREATE, TOPIC, topic, api))


def audit_change(node_id: int | str, principal: str, action: str,
                 entries: Iterable[AccessControlEntry]) -> None:
    """One audit line per ACL added or removed."""
    for e in entries:
        audit.info("node=%s ACL %s by %s: %s %s %s on %s %s:%s", node_id, action, principal,
                   e.permission, e.principal, e.operation, e.pattern_type, e.resource_type,
                   e.resource_name)


def describe_entry(e: AccessControlEntry) -> str:
    return (f"{e.permission:<5} {e.principal} {e.operation} on {e.resource_type} "
            f"{e.pattern_type} {e.resource_name!r}")


__all__ = [
    "ALL", "ALLOW", "ANONYMOUS", "CLUSTER", "CLUSTER_NAME", "DENY", "GROUP", "LITERAL",
    "OPERATIONS", "PREFIXED", "ROLES", "TOPIC", "TRANSACTIONAL_ID", "AccessControlEntry",
    "AclError", "AclFilter", "Authorizer", "audit_change", "connection_principal", "covers",
    "make_entry", "role_entries",
]
