"""ACLs on the HTTP paths, on real processes: one controller and one broker with TLS,
SASL, HTTP (Basic logins) and `authorizer.enabled`. A producer-only user (alice: Write
and Describe on `orders`) sees only `orders` in the REST and console topic lists,
produces to it over REST, but is refused (403, a JSON error naming principal, operation
and resource, one audit line) browsing it, deleting it, creating topics and reading the
cluster's brokers; GET /api/v1/auth/me tells what she may do. The superuser does all
of it. /metrics stays open."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterator
from typing import Any

import pytest

from dmq.security.certs import CA
from tests.security.http_acl_support import USERS, acl_cluster
from tests.support.broker_wire import logs_on_failure
from tests.support.procs import ProcessCluster
from tests.support.waiting import async_wait_until

aiohttp = pytest.importorskip("aiohttp")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProcessCluster, CA]]:
    with acl_cluster(tmp_path_factory.mktemp("http-acl")) as (pc, ca):
        yield pc, ca


class Http:
    def __init__(self, pc: ProcessCluster, ca: CA) -> None:
        self.pc = pc
        self.ctx = ssl.create_default_context(cafile=str(ca.cafile))

    async def __call__(self, user: str | None, method: str, path: str, node: int = 1,
                       body: Any = None) -> tuple[int, Any]:
        login = base64.b64encode(f"{user}:{USERS[user]}".encode()).decode() if user else ""
        headers = {"Authorization": f"Basic {login}"} if user else {}
        url = f"https://127.0.0.1:{self.pc.nodes[node].http_port}{path}"
        async with aiohttp.ClientSession() as sess, sess.request(
                method, url, headers=headers, json=body, ssl=self.ctx) as r:
            if r.content_type == "application/json":
                return r.status, await r.json()
            return r.status, await r.text()


def refused(answer: tuple[int, Any], operation: str, resource: str, name: str) -> None:
    status, body = answer
    assert status == 403, answer
    assert body["principal"] == "User:alice" and body["operation"] == operation
    assert body["resource"] == {"type": resource, "name": name}
    assert body["error"] == f"User:alice may not {operation} {resource} {name!r}"


async def test_producer_only_user_on_http(secure: tuple[ProcessCluster, CA]) -> None:
    pc, ca = secure
    http = Http(pc, ca)
    with logs_on_failure(pc):
        # lists hold only what alice may Describe
        status, topics = await http("alice", "GET", "/api/v1/metadata/topics")
        assert status == 200 and [t["topicName"] for t in topics] == ["orders"]
        status, ui = await http("alice", "GET", "/ui/api/topics")
        assert status == 200 and [t["name"] for t in ui["topics"]] == ["orders"]
        assert ui["topics"][0]["may"]["write"] and not ui["topics"][0]["may"]["delete"]
        refused(await http("alice", "GET", "/api/v1/metadata/topics/secret"),
                "Describe", "topic", "secret")
        # she writes to her topic, not to another
        status, out = await http("alice", "POST", "/api/v1/storage/topics/orders/partitions/0",
                                 101, {"value": "hello"})
        assert status == 200 and out["offset"] >= 0, out
        refused(await http("alice", "POST", "/api/v1/storage/topics/secret/partitions/0",
                           101, {"value": "x"}), "Write", "topic", "secret")
        # browse, delete, create, cluster views: refused
        refused(await http("alice", "GET", "/api/v1/storage/topics/orders/partitions/0", 101),
                "Read", "topic", "orders")
        refused(await http("alice", "GET", "/ui/api/topics/orders/records"),
                "Read", "topic", "orders")
        refused(await http("alice", "DELETE", "/ui/api/topics/orders?confirm=orders"),
                "Delete", "topic", "orders")
        refused(await http("alice", "POST", "/api/v1/metadata/topics", body={
            "topicName": "mine"}), "Create", "topic", "mine")
        refused(await http("alice", "GET", "/api/v1/metadata/brokers"),
                "Describe", "cluster", "kafka-cluster")
        status, me = await http("alice", "GET", "/api/v1/auth/me")
        assert status == 200 and me == {"principal": "User:alice", "aclsEnforced": True,
                                        "cluster": {"describeCluster": False,
                                                    "createTopics": False,
                                                    "alterConfigs": False}}
        # probes and metrics stay open
        assert (await http(None, "GET", "/metrics"))[0] == 200
        assert (await http(None, "GET", "/healthz", 101))[0] == 200
        # each refusal is one audit line on the node that refused
        await async_wait_until(
            lambda: "DENIED principal=User:alice operation=Delete resource=topic:orders "
                    "api=HTTP DELETE /ui/api/topics/orders" in pc.nodes[1].log_text(),
            10, "the audit line of the refused delete")
        log = pc.nodes[101].log_text()
        assert log.count("DENIED principal=User:alice operation=Read resource=topic:orders "
                         "api=HTTP GET /api/v1/storage/topics/orders/partitions/0") == 1


async def test_superuser_may_do_everything(secure: tuple[ProcessCluster, CA]) -> None:
    pc, ca = secure
    http = Http(pc, ca)
    with logs_on_failure(pc):
        status, me = await http("admin", "GET", "/api/v1/auth/me")
        assert status == 200 and all(me["cluster"].values()), me
        status, topics = await http("admin", "GET", "/api/v1/metadata/topics")
        assert status == 200 and {"orders", "secret"} <= {t["topicName"] for t in topics}
        assert (await http("admin", "GET", "/api/v1/metadata/brokers"))[0] == 200
        status, out = await http("admin", "POST", "/api/v1/metadata/topics",
                                 body={"topicName": "scratch"})
        assert status == 201, out
        status, out = await http("admin", "POST",
                                 "/api/v1/storage/topics/secret/partitions/0", 101,
                                 {"value": "v"})
        assert status == 200, out
        status, out = await http("admin", "GET",
                                 "/api/v1/storage/topics/secret/partitions/0", 101)
        assert status == 200 and [r["value"] for r in out["records"]] == ["v"], out
        status, out = await http("admin", "DELETE", "/ui/api/topics/scratch?confirm=scratch")
        assert status == 200, out
