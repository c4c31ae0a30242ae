"""ACLs on a node's HTTP paths (the REST API and the web console's JSON).

The HTTP handlers reach the cluster over a node's own connection, which ACLs do not
bind; so each handler asks `HttpAcl` first, with the principal the login put in the
request (`dmq.security.http_auth.PRINCIPAL`; `User:ANONYMOUS` when HTTP takes no
login), the same operation its dmq-protocol equivalent needs (see README, Security:
ACLs on HTTP). A refusal is HTTP 403 with a JSON body naming the principal, the
operation and the resource, and one `dmq.audit` line (the authorizer's, `api=HTTP
<method> <path>`). Lists are filtered quietly, as Metadata is. Without an enabled
authorizer every check passes and nothing changes.
"""

from __future__ import annotations

import json

from aiohttp import web

from dmq.security.acl import (
    ALTER,
    ALTER_CONFIGS,
    ANONYMOUS,
    CLUSTER,
    CLUSTER_NAME,
    CREATE,
    DELETE,
    DESCRIBE,
    DESCRIBE_CONFIGS,
    GROUP,
    READ,
    TOPIC,
    WRITE,
    Authorizer,
)
from dmq.security.http_auth import PRINCIPAL

_CODES = {TOPIC: "TOPIC_AUTHORIZATION_FAILED", GROUP: "GROUP_AUTHORIZATION_FAILED",
          CLUSTER: "CLUSTER_AUTHORIZATION_FAILED"}

# GET /api/v1/auth/me: what the principal may do on the cluster (the console's buttons)
CLUSTER_RIGHTS = {"describeCluster": (DESCRIBE, CLUSTER, CLUSTER_NAME),
                  "createTopics": (CREATE, CLUSTER, CLUSTER_NAME),
                  "alterConfigs": (ALTER_CONFIGS, CLUSTER, CLUSTER_NAME)}
# per-topic and per-group flags in list answers
TOPIC_RIGHTS = {"read": READ, "write": WRITE, "delete": DELETE, "alter": ALTER,
                "alterConfigs": ALTER_CONFIGS, "describeConfigs": DESCRIBE_CONFIGS}
GROUP_RIGHTS = {"read": READ, "delete": DELETE}


def request_principal(request: web.Request) -> str:
    """The logged-in principal of an HTTP request (User:ANONYMOUS without a login)."""
    return request[PRINCIPAL] if PRINCIPAL in request else ANONYMOUS


def forbidden(principal: str, operation: str, resource_type: str, name: str) -> web.HTTPForbidden:
    body = {"error": f"{principal} may not {operation} {resource_type} {name!r}",
            "code": _CODES.get(resource_type, "CLUSTER_AUTHORIZATION_FAILED"),
            "principal": principal, "operation": operation,
            "resource": {"type": resource_type, "name": name}}
    return web.HTTPForbidden(text=json.dumps(body), content_type="application/json")


class HttpAcl:
    """The ACL checks of a node's HTTP handlers (`authorizer` None: ACLs off)."""

    def __init__(self, authorizer: Authorizer | None) -> None:
        self.authorizer = authorizer if authorizer is not None and authorizer.enabled \
            else None

    def allowed(self, request: web.Request, operation: str, resource_type: str,
                name: str) -> bool:
        """Whether the request's principal may (quietly: no audit line)."""
        authz = self.authorizer
        return authz is None or authz.allowed(request_principal(request), operation,
                                              resource_type, name)

    def require(self, request: web.Request, operation: str, resource_type: str,
                name: str) -> None:
        """Raise the 403 (and write the audit line) unless allowed."""
        authz = self.authorizer
        if authz is None:
            return
        principal = request_principal(request)
        if not authz.check(principal, operation, resource_type, name,
                           f"HTTP {request.method} {request.path}"):
            raise forbidden(principal, operation, resource_type, name)

    def require_cluster(self, request: web.Request, operation: str) -> None:
        self.require(request, operation, CLUSTER, CLUSTER_NAME)

    def require_create_topic(self, request: web.Request, topic: str) -> None:
        """Create on the cluster or on the topic (as CreateTopics)."""
        authz = self.authorizer
        if authz is None:
            return
        principal = request_principal(request)
        if not authz.may_create_topic(principal, topic, f"HTTP {request.method} "
                                                        f"{request.path}"):
            raise forbidden(principal, CREATE, TOPIC, topic)

    def visible_topics(self, request: web.Request, names: list[str]) -> set[str]:
        """The topics of `names` the principal may Describe."""
        return {n for n in names if self.allowed(request, DESCRIBE, TOPIC, n)}

    def topic_rights(self, request: web.Request, topic: str) -> dict[str, bool]:
        return {k: self.allowed(request, op, TOPIC, topic) for k, op in TOPIC_RIGHTS.items()}

    def group_rights(self, request: web.Request, group: str) -> dict[str, bool]:
        return {k: self.allowed(request, op, GROUP, group) for k, op in GROUP_RIGHTS.items()}

    async def me(self, request: web.Request) -> web.Response:
        """GET /api/v1/auth/me: the principal and what it may do on the cluster."""
        may = {k: self.allowed(request, op, rtype, name)
               for k, (op, rtype, name) in CLUSTER_RIGHTS.items()}
        authz = self.authorizer
        if authz is not None:  # Create on the cluster or on some topic pattern
            may["createTopics"] = authz.may_create_some_topic(request_principal(request))
        return web.json_response({"principal": request_principal(request),
                                  "aclsEnforced": authz is not None, "cluster": may})


__all__ = ["HttpAcl", "forbidden", "request_principal"]
