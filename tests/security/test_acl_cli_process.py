"""`dmq acls` and `dmq roles` against a real node with the authorizer on (the CLI
connects unauthenticated, so User:ANONYMOUS is made a superuser here): a role grant
shows up as its plain ACLs, a deny is added and removed, a revoke removes exactly the
grant's ACLs, bad input is a usage error naming the problem."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.procs import ProcessCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def dmq(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "dmq.cli", *args], capture_output=True,
                         text=True, timeout=60)
    assert (out.returncode == 0) == ok, out.stderr
    return out


def test_acls_and_roles_commands() -> None:
    settings = {"authorizer.enabled": True, "authorizer.super.users": "User:ANONYMOUS"}
    with ProcessCluster(controllers=1, combined=True, settings=settings) as pc:
        pc.start()
        b = ["--bootstrap", pc.bootstrap, "--timeout-ms", "20000"]
        out = dmq("roles", "grant", "producer", "User:alice", "--topic", "orders.",
                  "--prefixed", *b).stdout
        assert "granted producer for User:alice: 3 ACL(s)" in out
        rows = dmq("acls", "list", "--principal", "User:alice", *b).stdout.splitlines()
        assert rows[0].split() == ["PERMISSION", "PRINCIPAL", "OPERATION", "RESOURCE",
                                   "PATTERN", "NAME"]
        assert sorted(r.split() for r in rows[1:]) == [
            ["allow", "User:alice", "Describe", "topic", "prefixed", "orders."],
            ["allow", "User:alice", "IdempotentWrite", "cluster", "literal", "kafka-cluster"],
            ["allow", "User:alice", "Write", "topic", "prefixed", "orders."]]
        dmq("acls", "add", "--principal", "User:alice", "--operation", "write", "--topic",
            "orders.secret", "--deny", *b)
        deny = dmq("acls", "list", "--topic", "orders.secret", *b).stdout
        assert "deny" in deny and "Write" in deny
        assert "removed 1 ACL(s)" in dmq("acls", "remove", "--principal", "User:alice",
                                         "--topic", "orders.secret", *b).stdout
        assert "revoked producer for User:alice: 3 ACL(s)" in dmq(
            "roles", "revoke", "producer", "User:alice", "--topic", "orders.", "--prefixed",
            *b).stdout
        assert len(dmq("acls", "list", *b).stdout.splitlines()) == 1  # the header only
        bad = dmq("acls", "add", "--principal", "alice", "--operation", "Read", "--topic", "t",
                  *b, ok=False)
        assert "principal 'alice': User:<name> or User:*" in bad.stderr
        bad = dmq("acls", "add", "--principal", "User:a", "--operation", "Read", *b, ok=False)
        assert "name a resource" in bad.stderr
        assert pc.nodes[1].alive
