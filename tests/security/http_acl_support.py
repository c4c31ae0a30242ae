"""A secure cluster for the HTTP ACL tests (tests/security/test_http_acl_process.py and
the console's browser test): one controller and one broker with TLS, SASL (Basic logins
on HTTP), HTTP ports and `authorizer.enabled`; `admin` is a superuser, `alice` has the
producer role on `orders`; topics `orders` and `secret` exist."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

from dmq.cli.dev import ensure_topic
from dmq.client.admin import Admin
from dmq.security.certs import CA
from dmq.security.sasl import SaslCredentials, client_sasl
from dmq.security.tls import client_context, client_tls
from tests.security.support import tls_sasl_settings
from tests.support.procs import ProcessCluster

MECH = "SCRAM-SHA-256"
USERS = {"admin": "admin-secret", "alice": "alice-secret"}


@contextlib.contextmanager
def acl_cluster(root: Path) -> Iterator[tuple[ProcessCluster, CA]]:
    ca, settings = tls_sasl_settings(
        root, (1, 101), USERS, MECH,
        **{"authorizer.enabled": True, "authorizer.super.users": "User:admin",
           "default.replication.factor": 1, "auto.create.topics.enable": False})
    with ProcessCluster(controllers=1, brokers=1, http=True, settings=settings) as pc:
        pc.start()

        async def setup() -> None:
            await ensure_topic(pc.bootstrap, "orders", 1, 1, 60)
            await ensure_topic(pc.bootstrap, "secret", 1, 1, 60)
            async with Admin(f"127.0.0.1:{pc.nodes[1].port}") as admin:
                await admin.grant_role("producer", "User:alice", "orders")

        with client_tls(client_context(str(ca.cafile))), \
                client_sasl(SaslCredentials(MECH, "admin", USERS["admin"])):
            asyncio.run(setup())
        yield pc, ca
