"""The rate limit of the `dmq.audit` refusal lines (dmq.security.audit.DenialLog, used by
the ACL authorizer): the first refusal of a (principal, operation, resource) at once,
then at most one line a second for it with the count held back; a bounded number of
keys; ACL and user changes never held back. A fake clock: no sleeping."""

from __future__ import annotations

import logging

import pytest

from dmq.metadata.records import AccessControlEntry
from dmq.security.acl import READ, TOPIC, WRITE, Authorizer, audit_change, make_entry
from dmq.security.audit import DenialLog
from dmq.security.users import audit_alter

ALICE = "User:alice"
BOB = "User:bob"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def authz(clock: Clock, *entries: AccessControlEntry, max_keys: int = 4096) -> Authorizer:
    acls = frozenset(entries)
    return Authorizer(lambda: acls, node_id=7,
                      denials=DenialLog(clock=clock, max_keys=max_keys))


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "dmq.audit"]


LINE = "node=7 DENIED principal=User:alice operation=Write resource=topic:orders api=Produce"


def test_a_looping_refused_client_gets_one_line_a_second_with_the_count(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    a = authz(clock)
    with caplog.at_level(logging.INFO, logger="dmq.audit"):
        for _ in range(100):  # a client looping on a refused Produce, all within 0.5 s
            assert not a.check(ALICE, WRITE, TOPIC, "orders", "Produce")
            clock.now += 0.005
        assert audit_lines(caplog) == [LINE]
        clock.now = 1001.0  # one second after the first line
        assert not a.check(ALICE, WRITE, TOPIC, "orders", "Produce")
        assert audit_lines(caplog) == [
            LINE, LINE + " (99 more denials suppressed in the last 1.0 s)"]
        # the next second starts counting afresh
        for _ in range(37):
            clock.now += 0.02
            a.check(ALICE, WRITE, TOPIC, "orders", "Produce")
        clock.now = 1002.5
        a.check(ALICE, WRITE, TOPIC, "orders", "Produce")
        # a refusal alone after a quiet second is logged plainly
        clock.now = 1010.0
        a.check(ALICE, WRITE, TOPIC, "orders", "Produce")
    assert audit_lines(caplog)[2:] == [
        LINE + " (37 more denials suppressed in the last 1.5 s)", LINE]
    assert a.stats_denied == 140  # every refusal counted, logged or not
    assert a.denials.suppressed_total == 136


def test_each_principal_operation_and_resource_has_its_own_first_line(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    a = authz(clock)
    with caplog.at_level(logging.INFO, logger="dmq.audit"):
        for _ in range(3):
            a.check(ALICE, WRITE, TOPIC, "orders", "Produce")
            a.check(BOB, WRITE, TOPIC, "orders", "Produce")
            a.check(ALICE, READ, TOPIC, "orders", "Fetch")
            a.check(ALICE, WRITE, TOPIC, "billing", "Produce")
    assert audit_lines(caplog) == [
        LINE,
        "node=7 DENIED principal=User:bob operation=Write resource=topic:orders api=Produce",
        "node=7 DENIED principal=User:alice operation=Read resource=topic:orders api=Fetch",
        "node=7 DENIED principal=User:alice operation=Write resource=topic:billing api=Produce"]


def test_allowed_requests_write_nothing_and_track_no_key(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    a = authz(clock, make_entry(TOPIC, "orders", ALICE, WRITE))
    with caplog.at_level(logging.INFO, logger="dmq.audit"):
        for _ in range(50):
            assert a.check(ALICE, WRITE, TOPIC, "orders", "Produce")
    assert audit_lines(caplog) == []
    assert len(a.denials) == 0 and a.stats_denied == 0


def test_tracked_keys_are_bounded_and_an_evicted_key_reports_what_it_held(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    a = authz(clock, max_keys=2)
    with caplog.at_level(logging.INFO, logger="dmq.audit"):
        for _ in range(5):
            a.check(ALICE, WRITE, TOPIC, "orders", "Produce")  # 1 line, 4 held back
        a.check(ALICE, WRITE, TOPIC, "t1", "Produce")
        clock.now += 0.25
        a.check(ALICE, WRITE, TOPIC, "t2", "Produce")  # evicts orders, the least recent
        assert len(a.denials) == 2
        for i in range(100):  # a client cycling over names: still two keys
            a.check(ALICE, WRITE, TOPIC, f"n{i}", "Produce")
            assert len(a.denials) == 2
    lines = audit_lines(caplog)
    assert lines[:4] == [
        LINE,
        "node=7 DENIED principal=User:alice operation=Write resource=topic:t1 api=Produce",
        LINE + ": 4 more denials suppressed in the last 0.2 s",
        "node=7 DENIED principal=User:alice operation=Write resource=topic:t2 api=Produce"]
    # t1 and t2 held nothing back: leaving, they add no line
    assert len(lines) == 104


def test_flush_reports_every_key_holding_refusals(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    a = authz(clock)
    with caplog.at_level(logging.INFO, logger="dmq.audit"):
        for _ in range(3):
            a.check(ALICE, WRITE, TOPIC, "orders", "Produce")
        a.check(BOB, READ, TOPIC, "orders", "Fetch")
        clock.now += 0.5
        a.denials.flush()
        a.denials.flush()  # nothing held any more
    assert audit_lines(caplog)[2:] == [
        LINE + ": 2 more denials suppressed in the last 0.5 s"]


def test_acl_and_user_changes_are_never_held_back(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    a = authz(clock)
    entry = make_entry(TOPIC, "orders", ALICE, WRITE)
    with caplog.at_level(logging.INFO, logger="dmq.audit"):
        for _ in range(20):
            a.check(ALICE, WRITE, TOPIC, "orders", "Produce")
            audit_change(7, "User:admin", "added", [entry])
            audit_change(7, "User:admin", "removed", [entry])
            audit_alter([], [], [("alice", 1, "denied")], "User:admin")
            audit_alter([], [("alice", "SCRAM-SHA-256", 4096, b"s", b"k")], [("alice", 0, None)],
                        "User:admin")
    lines = audit_lines(caplog)
    assert sum("ACL added" in x for x in lines) == 20
    assert sum("ACL removed" in x for x in lines) == 20
    assert sum("change by User:admin refused" in x for x in lines) == 20
    assert sum("set SCRAM-SHA-256 credential" in x for x in lines) == 20
    assert sum("DENIED" in x for x in lines) == 1


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        DenialLog(max_keys=0)
