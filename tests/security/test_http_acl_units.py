"""`dmq.security.http_acl` without a node: no authorizer (or a disabled one) checks
nothing; an enabled one refuses with a 403 JSON naming principal, operation and
resource and one audit line; a request without a login is User:ANONYMOUS; lists are
filtered quietly; /auth/me reports the cluster rights."""

from __future__ import annotations

import json
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from dmq.metadata.records import AccessControlEntry
from dmq.security.acl import Authorizer, make_entry
from dmq.security.http_acl import HttpAcl
from dmq.security.http_auth import PRINCIPAL

ACLS = frozenset({make_entry("topic", "orders", "User:alice", "Write"),
                  make_entry("topic", "new.", "User:alice", "Create", pattern_type="prefixed")})


def authorizer(enabled: bool = True, acls: frozenset[AccessControlEntry] = ACLS) -> Authorizer:
    return Authorizer(lambda: acls, enabled=enabled, super_users=["User:admin"], node_id=7)


def request(user: str | None, method: str = "GET", path: str = "/x") -> web.Request:
    r = make_mocked_request(method, path)
    if user is not None:
        r[PRINCIPAL] = f"User:{user}"
    return r


@pytest.mark.parametrize("acl", [HttpAcl(None), HttpAcl(authorizer(enabled=False))])
def test_without_an_enabled_authorizer_nothing_is_checked(acl: HttpAcl) -> None:
    acl.require(request("alice"), "Delete", "topic", "orders")
    acl.require_create_topic(request(None), "x")
    assert acl.visible_topics(request("alice"), ["orders", "secret"]) == {"orders", "secret"}
    assert acl.topic_rights(request(None), "secret")["delete"]


def test_refusal_is_a_403_json_and_one_audit_line(caplog: pytest.LogCaptureFixture) -> None:
    acl = HttpAcl(authorizer())
    acl.require(request("alice"), "Write", "topic", "orders")
    acl.require(request("admin"), "Delete", "topic", "orders")
    with caplog.at_level(logging.INFO, logger="dmq.audit"), \
            pytest.raises(web.HTTPForbidden) as refused:
        acl.require(request("alice", "DELETE", "/ui/api/topics/orders"), "Delete", "topic",
                    "orders")
    assert refused.value.content_type == "application/json"
    assert refused.value.text is not None
    assert json.loads(refused.value.text) == {
        "error": "User:alice may not Delete topic 'orders'",
        "code": "TOPIC_AUTHORIZATION_FAILED", "principal": "User:alice",
        "operation": "Delete", "resource": {"type": "topic", "name": "orders"}}
    assert [r.getMessage() for r in caplog.records] == [
        "node=7 DENIED principal=User:alice operation=Delete resource=topic:orders "
        "api=HTTP DELETE /ui/api/topics/orders"]


def test_no_login_is_anonymous_and_lists_are_filtered() -> None:
    acl = HttpAcl(authorizer())
    with pytest.raises(web.HTTPForbidden) as refused:
        acl.require_cluster(request(None), "Describe")
    assert refused.value.text is not None
    assert json.loads(refused.value.text)["principal"] == "User:ANONYMOUS"
    assert acl.visible_topics(request("alice"), ["orders", "secret"]) == {"orders"}
    acl.require_create_topic(request("alice"), "new.one")
    with pytest.raises(web.HTTPForbidden):
        acl.require_create_topic(request("alice"), "other")


async def test_me_reports_the_cluster_rights() -> None:
    acl = HttpAcl(authorizer())
    me = json.loads((await acl.me(request("alice"))).text or "")
    # Create on a topic prefix: the console offers creation (the name decides)
    assert me == {"principal": "User:alice", "aclsEnforced": True, "cluster": {
        "describeCluster": False, "createTopics": True, "alterConfigs": False}}
    me = json.loads((await acl.me(request("bob"))).text or "")
    assert not any(me["cluster"].values())
    me = json.loads((await HttpAcl(None).me(request(None))).text or "")
    assert me == {"principal": "User:ANONYMOUS", "aclsEnforced": False, "cluster": {
        "describeCluster": True, "createTopics": True, "alterConfigs": True}}
