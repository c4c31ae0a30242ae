"""The web console on a secure cluster (one controller and one broker with TLS, SASL,
HTTP Basic logins and the authorizer; tests/security/http_acl_support.py): a
producer-only user (alice) sees only her topic, no create, config, partition or delete
forms, cannot browse but can produce; the cluster page, which needs Describe on the
cluster, shows the refusal's message. A group reading `orders` and `secret` shows her
the offsets and lag of `orders` only. The overview and the banner tell the node's
security as configured, and the throughput sampler reads the brokers over HTTPS.

The cluster is tests/security/http_acl_support.py's, with each node's HTTP port in
the cluster config (the node ports are SASL ports, which serve no HTTP: the console
reads the brokers' metrics on their HTTP ports). The browser part is skipped like
tests/console/test_console_browser.py without Playwright or chromium; the JSON checks
run without them."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from dmq.client.admin import Admin
from dmq.metadata.records import AccessControlEntry
from dmq.security.acl import (
    ALLOW,
    CLUSTER,
    CLUSTER_NAME,
    DESCRIBE,
    GROUP,
    LITERAL,
    READ,
    AclFilter,
    make_entry,
)
from dmq.security.certs import CA
from dmq.security.sasl import SaslCredentials, client_sasl
from dmq.security.tls import client_context, client_tls
from tests.console.test_console_browser import WAIT_MS, _chromium, sync_playwright
from tests.security import http_acl_support
from tests.security.http_acl_support import MECH, USERS, acl_cluster
from tests.support.procs import ProcessCluster
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

def _acls(pc: ProcessCluster, ca: CA, action: str, entry: AccessControlEntry) -> None:
    """Add or remove one ACL, as the superuser."""
    async def run() -> None:
        async with Admin(f"127.0.0.1:{pc.nodes[1].port}") as admin:
            if action == "create":
                assert await admin.create_acls([entry]) == [None]
            else:
                assert await admin.delete_acls([AclFilter(*entry.fields())]) == [entry]

    with client_tls(client_context(str(ca.cafile))), \
            client_sasl(SaslCredentials(MECH, "admin", USERS["admin"])):
        asyncio.run(run())


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        yield mp


GROUP_ID = "mixed"  # commits on orders (alice may Describe it) and secret (she may not)


def _call(pc: ProcessCluster, ca: CA, user: str, method: str, path: str,
          body: Any = None) -> tuple[int, Any]:
    login = base64.b64encode(f"{user}:{USERS[user]}".encode()).decode()
    req = urllib.request.Request(
        f"https://127.0.0.1:{pc.nodes[1].http_port}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Basic {login}", "Content-Type": "application/json"})
    ctx = ssl.create_default_context(cafile=str(ca.cafile))
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class _WithHttpPorts(ProcessCluster):
    """A ProcessCluster whose config names each node's HTTP port."""

    def start(self, node_id: int | None = None, wait: bool = True) -> None:
        text = self.config_path.read_text()
        for n in self.nodes.values():
            text = re.sub(rf"^id = {n.node_id}$", f"id = {n.node_id}\nhttp_port = {n.http_port}",
                          text, count=1, flags=re.M)
        self.config_path.write_text(text)
        super().start(node_id, wait)


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch
           ) -> Iterator[tuple[ProcessCluster, CA]]:
    monkeypatch_module.setattr(http_acl_support, "ProcessCluster", _WithHttpPorts)
    with acl_cluster(tmp_path_factory.mktemp("console-acl")) as (pc, ca):
        # one record in orders, two in secret; the group's offsets at 0 on both
        for topic, n in (("orders", 1), ("secret", 2)):
            for i in range(n):
                status, d = _call(pc, ca, "admin", "POST", f"/ui/api/topics/{topic}/records",
                                  {"value": f"r{i}"})
                assert status == 201, d
            status, d = _call(pc, ca, "admin", "POST", f"/ui/api/groups/{GROUP_ID}/reset",
                              {"topic": topic, "to": "earliest"})
            assert status == 200, d

        # alice may Read (so Describe) the group
        _acls(pc, ca, "create", make_entry(GROUP, GROUP_ID, "User:alice", READ, ALLOW, LITERAL))
        yield pc, ca


def test_group_offsets_and_lag_only_of_topics_the_user_may_describe(
        secure: tuple[ProcessCluster, CA]) -> None:
    pc, ca = secure
    status, d = _call(pc, ca, "admin", "GET", f"/ui/api/groups/{GROUP_ID}")
    assert status == 200, d
    assert sorted((p["topic"], p["lag"]) for p in d["partitions"]) == [("orders", 1),
                                                                        ("secret", 2)]
    assert (d["totalLag"], d["hiddenTopics"]) == (3, 0)
    status, d = _call(pc, ca, "alice", "GET", f"/ui/api/groups/{GROUP_ID}")
    assert status == 200, d
    assert [(p["topic"], p["lag"]) for p in d["partitions"]] == [("orders", 1)]
    assert (d["totalLag"], d["hiddenTopics"]) == (1, 1)
    assert [lag for _, lag in d["lagHistory"]] == [1]  # the all-topics history is withheld

    def listed_lag(user: str) -> Any:  # the sampler's lag, summed over what the user sees
        return {g["id"]: g["lag"] for g in _call(pc, ca, user, "GET", "/ui/api/groups")[1]
                ["groups"]}.get(GROUP_ID)

    wait_until(lambda: listed_lag("admin") == 3, 20, "the sampled lag of the group",
               interval_s=0.3)
    assert listed_lag("alice") == 1


def test_overview_and_security_tell_the_nodes_settings_and_rates_come_over_https(
        secure: tuple[ProcessCluster, CA]) -> None:
    pc, ca = secure
    expected = {"enabled": True, "tls": True, "clientAuth": "requested",
                "saslMechanisms": [MECH], "saslOnProtocolPort": True, "httpLogin": True,
                "authorizer": True}
    status, d = _call(pc, ca, "admin", "GET", "/ui/api/overview")
    assert status == 200 and d["security"] == expected, d
    status, d = _call(pc, ca, "alice", "GET", "/ui/api/security")  # no cluster Describe
    assert status == 200 and d == expected, d
    # the sampler reads the broker's /metrics over HTTPS (a rate needs two samples)
    wait_until(lambda: "101" in _call(pc, ca, "admin", "GET", "/ui/api/throughput")[1]
               ["brokers"], 20, lambda: "broker 101's rates sampled over HTTPS; node 1 log:\n"
               + pc.nodes[1].log_text()[-3000:], interval_s=0.5)
    assert {"orders", "secret"} <= set(_call(pc, ca, "admin", "GET", "/ui/api/throughput")[1]
                                       ["topics"])
    # with Describe on the cluster, alice still sees only the topics she may Describe
    cluster_describe = make_entry(CLUSTER, CLUSTER_NAME, "User:alice", DESCRIBE)
    _acls(pc, ca, "create", cluster_describe)
    try:
        wait_until(lambda: _call(pc, ca, "alice", "GET", "/ui/api/overview")[0] == 200, 10,
                   "alice's Describe on the cluster applied", interval_s=0.2)
        _, d = _call(pc, ca, "alice", "GET", "/ui/api/overview")
        assert (d["topics"], d["partitions"]) == (1, 1), d
        _, d = _call(pc, ca, "alice", "GET", "/ui/api/throughput")
        assert set(d["topics"]) == {"orders"} and "101" in d["brokers"], d
    finally:
        _acls(pc, ca, "delete", cluster_describe)
    wait_until(lambda: _call(pc, ca, "alice", "GET", "/ui/api/overview")[0] == 403, 10,
               "alice's Describe on the cluster removed", interval_s=0.2)


def test_producer_only_user_sees_and_may_only_what_acls_allow(
        secure: tuple[ProcessCluster, CA]) -> None:
    if sync_playwright is None:
        pytest.skip("playwright is not installed (pip install '.[test]')")
    if _chromium() is None:
        pytest.skip("no chromium executable (apt-get install chromium)")
    pc, _ca = secure
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(),
                                    args=["--no-sandbox", "--disable-gpu"])
        ctx = browser.new_context(ignore_https_errors=True, http_credentials={
            "username": "alice", "password": USERS["alice"]})
        page = ctx.new_page()
        page.set_default_timeout(WAIT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        base = f"https://127.0.0.1:{pc.nodes[1].http_port}"

        def goto(fragment: str) -> None:
            page.goto(f"{base}/#/{fragment}")
            page.wait_for_selector(f"body[data-page='{fragment.split('/')[0]}']")

        try:
            goto("cluster")
            banner = page.locator("#security").inner_text()
            assert "Security is on" in banner and "ACLs enforced" in banner, banner
            assert "TLS" in banner and MECH in banner and "Logged in as User:alice" in banner
            page.wait_for_selector(".msg.error")
            assert page.locator(".msg.error").inner_text() == (
                "Cannot read the cluster: User:alice may not Describe cluster 'kafka-cluster'")
            goto("topics")
            page.wait_for_selector("tr[data-topic='orders']")
            assert page.locator("tr[data-topic]").count() == 1
            assert page.locator("#create-topic").count() == 0
            goto("topics/orders")
            page.wait_for_selector("text=You may not read this topic's configs.")
            assert page.locator("text=Browse messages").count() == 0
            for form in ("#alter-configs", "#add-partitions", "#delete-topic"):
                assert page.locator(form).count() == 0, form
            goto("messages")
            assert page.locator("#browse button[type=submit]").is_disabled()
            page.fill("#produce-value", "from the console")
            page.click("#produce button[type=submit]")
            page.wait_for_selector("text=Written to orders-0")
            goto(f"groups/{GROUP_ID}")
            page.wait_for_selector("#hidden-topics")
            rows = page.locator("table[aria-label='Offsets and lag'] tbody tr")
            assert [t.split()[0] for t in rows.all_inner_texts()] == ["orders-0"]
        finally:
            browser.close()
        assert not errors, f"JavaScript errors in the console: {errors}"
