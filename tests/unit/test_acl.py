"""The ACL authorizer (dmq.security.acl) and the ACL records in the metadata state."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmq.config import ClusterConfig, ConfigError
from dmq.metadata.image import image_changes
from dmq.metadata.records import (
    AccessControlEntry,
    RemoveAccessControlEntry,
    decode_batch,
    encode_batch,
)
from dmq.metadata.state import MetadataState
from dmq.protocol.errors import GroupAuthorizationFailedError, TopicAuthorizationFailedError
from dmq.security.acl import (
    ALL,
    ALTER_CONFIGS,
    CLUSTER,
    CLUSTER_NAME,
    CREATE,
    DELETE,
    DESCRIBE,
    DESCRIBE_CONFIGS,
    GROUP,
    IDEMPOTENT_WRITE,
    OPERATIONS,
    READ,
    TOPIC,
    WRITE,
    AclError,
    AclFilter,
    Authorizer,
    make_entry,
    role_entries,
)

ALICE = "User:alice"
BOB = "User:bob"


def authz(*entries: AccessControlEntry, **kw: object) -> Authorizer:
    acls = frozenset(entries)
    return Authorizer(lambda: acls, **kw)  # type: ignore[arg-type]


def allow(op: str, name: str = "orders", rtype: str = TOPIC, principal: str = ALICE,
          pattern: str = "literal") -> AccessControlEntry:
    return make_entry(rtype, name, principal, op, "allow", pattern)


def deny(op: str, name: str = "orders", rtype: str = TOPIC, principal: str = ALICE,
         pattern: str = "literal") -> AccessControlEntry:
    return make_entry(rtype, name, principal, op, "deny", pattern)


def test_no_acl_no_access_once_enabled_and_everything_when_disabled() -> None:
    assert not authz().allowed(ALICE, READ, TOPIC, "orders")
    assert authz(enabled=False).allowed(ALICE, READ, TOPIC, "orders")


def test_deny_beats_allow_for_the_operation_and_for_all() -> None:
    a = authz(allow(READ), deny(READ))
    assert not a.allowed(ALICE, READ, TOPIC, "orders")
    b = authz(allow(ALL, "*"), deny(ALL, "orders"))
    assert not b.allowed(ALICE, WRITE, TOPIC, "orders")
    assert b.allowed(ALICE, WRITE, TOPIC, "other")
    # a deny of another operation takes nothing away
    assert authz(allow(READ), deny(WRITE)).allowed(ALICE, READ, TOPIC, "orders")


def test_prefixed_grant_covers_exactly_its_prefix() -> None:
    a = authz(allow(READ, "orders.", pattern="prefixed"))
    assert a.allowed(ALICE, READ, TOPIC, "orders.eu")
    assert a.allowed(ALICE, READ, TOPIC, "orders.")
    for name in ("orders", "orders-eu", "xorders.eu", "Orders.eu"):
        assert not a.allowed(ALICE, READ, TOPIC, name), name


def test_literal_star_is_every_resource_of_its_type_only() -> None:
    a = authz(allow(READ, "*"))
    assert a.allowed(ALICE, READ, TOPIC, "anything")
    assert not a.allowed(ALICE, READ, GROUP, "anything")
    # "*" as a principal: everyone
    assert authz(allow(READ, principal="User:*")).allowed(BOB, READ, TOPIC, "orders")


def test_implied_operations() -> None:
    for op in (READ, WRITE, DELETE, "Alter"):
        assert authz(allow(op)).allowed(ALICE, DESCRIBE, TOPIC, "orders"), op
    assert authz(allow(ALTER_CONFIGS)).allowed(ALICE, DESCRIBE_CONFIGS, TOPIC, "orders")
    assert not authz(allow(DESCRIBE)).allowed(ALICE, READ, TOPIC, "orders")
    assert not authz(allow(DESCRIBE_CONFIGS)).allowed(ALICE, ALTER_CONFIGS, TOPIC, "orders")
    assert not authz(allow(CREATE)).allowed(ALICE, DESCRIBE, TOPIC, "orders")
    # a deny of Describe does not hide Read, as in Kafka (deny is per operation)
    assert authz(allow(READ), deny(DESCRIBE)).allowed(ALICE, READ, TOPIC, "orders")


def test_superusers_and_nodes_may_do_everything() -> None:
    a = authz(deny(ALL, "*", principal="User:*"), super_users=["User:admin"])
    assert a.allowed("User:admin", DELETE, TOPIC, "orders")
    assert a.allowed("node:3", "ClusterAction", CLUSTER, CLUSTER_NAME)
    assert not a.allowed(ALICE, DESCRIBE, TOPIC, "orders")


def test_super_users_setting() -> None:
    cfg = ClusterConfig((), (), {"authorizer.enabled": True,
                                 "authorizer.super.users": "User:a; User:b"})
    a = Authorizer.from_config(cfg, frozenset)
    assert a.enabled and a.super_users == {"User:a", "User:b"}
    bad = ClusterConfig((), (), {"authorizer.super.users": "admin"})
    with pytest.raises(ConfigError, match="not a principal"):
        Authorizer.from_config(bad, frozenset)


def test_role_bundles_expand_to_plain_acls() -> None:
    prod = role_entries("producer", ALICE, "orders.", prefixed=True)
    assert set(prod) == {allow(WRITE, "orders.", pattern="prefixed"),
                         allow(DESCRIBE, "orders.", pattern="prefixed"),
                         allow(IDEMPOTENT_WRITE, CLUSTER_NAME, CLUSTER)}
    p = authz(*prod)
    assert p.allowed(ALICE, WRITE, TOPIC, "orders.eu")
    assert not p.allowed(ALICE, READ, TOPIC, "orders.eu")
    assert not p.allowed(ALICE, DELETE, TOPIC, "orders.eu")
    c = authz(*role_entries("Consumer", BOB, "orders", "billing"))
    assert c.allowed(BOB, READ, TOPIC, "orders") and c.allowed(BOB, READ, GROUP, "billing")
    assert not c.allowed(BOB, WRITE, TOPIC, "orders")
    assert not c.allowed(BOB, READ, GROUP, "other")
    adm = authz(*role_entries("admin", ALICE))
    for rtype, name in ((TOPIC, "x"), (GROUP, "g"), (CLUSTER, CLUSTER_NAME)):
        assert adm.allowed(ALICE, DELETE, rtype, name)
    with pytest.raises(AclError, match="role 'reader'"):
        role_entries("reader", ALICE)


def test_bad_entries_are_named() -> None:
    with pytest.raises(AclError, match="operation 'Eat'"):
        make_entry(TOPIC, "t", ALICE, "Eat")
    with pytest.raises(AclError, match="principal 'alice'"):
        make_entry(TOPIC, "t", "alice", READ)
    with pytest.raises(AclError, match="only '\\*'"):
        make_entry(TOPIC, "t", ALICE, READ, host="10.0.0.1")
    with pytest.raises(AclError, match="cluster resource"):
        make_entry(CLUSTER, "other", ALICE, READ)
    assert make_entry("TOPIC", "t", ALICE, "read").operation == READ


def test_require_raises_the_resource_types_error_and_audits(
        caplog: pytest.LogCaptureFixture) -> None:
    a = authz(node_id=7)
    with caplog.at_level(logging.INFO, logger="dmq.audit"):
        with pytest.raises(TopicAuthorizationFailedError):
            a.require(ALICE, WRITE, TOPIC, "orders", "Produce")
        with pytest.raises(GroupAuthorizationFailedError):
            a.require(ALICE, READ, GROUP, "g", "JoinGroup")
    lines = [r.getMessage() for r in caplog.records if r.name == "dmq.audit"]
    assert lines == [
        "node=7 DENIED principal=User:alice operation=Write resource=topic:orders api=Produce",
        "node=7 DENIED principal=User:alice operation=Read resource=group:g api=JoinGroup"]


def test_cache_follows_the_acl_set() -> None:
    current: list[frozenset[AccessControlEntry]] = [frozenset({allow(READ)})]
    a = Authorizer(lambda: current[0])
    assert a.allowed(ALICE, READ, TOPIC, "orders")
    current[0] = frozenset()  # revoked: a new set object
    assert not a.allowed(ALICE, READ, TOPIC, "orders")


def test_filters() -> None:
    entries = [allow(READ, "orders"), allow(READ, "ord", pattern="prefixed"), allow(READ, "*"),
               allow(WRITE, "other"), deny(READ, "orders", principal=BOB)]
    match = AclFilter.of("topic", "orders", "match")
    assert [e for e in entries if match.matches(e)] == [entries[0], entries[1], entries[2],
                                                        entries[4]]
    assert [e for e in entries if AclFilter.of(permission="deny").matches(e)] == [entries[4]]
    lit = AclFilter.of("topic", "orders", "literal", ALICE)
    assert [e for e in entries if lit.matches(e)] == [entries[0]]


def test_state_applies_acl_records_into_the_image_and_snapshot() -> None:
    st_ = MetadataState()
    e1, e2 = allow(READ), deny(WRITE, "*", principal="User:*")
    img0 = st_.image()
    batch = decode_batch(encode_batch([e1, e2]))
    assert batch == [e1, e2]
    for rec in batch:
        st_.apply_record(rec, 1)
    st_.advance_to(1)
    img1 = st_.image()
    assert img1.acls == {e1, e2}
    ch = image_changes(img0, img1)
    assert ch is not None and ch.acls and not ch.empty
    img2 = st_.image(controller_id=1)  # no ACL change: the same set object
    assert img2.acls is img1.acls
    st_.apply_record(e1, 2)  # again: skipped
    assert st_.skipped_records == 1
    st_.apply_record(RemoveAccessControlEntry(e1), 3)
    st_.advance_to(3)
    assert st_.image().acls == {e2}
    snap = st_.to_snapshot(include_offsets=False)
    other = MetadataState()
    other.restore(snap)
    assert other.acls == {e2} and other.to_snapshot(include_offsets=False) == snap
    st_.apply_record(RemoveAccessControlEntry(e2), 4)
    assert "acls" not in st_.to_snapshot()  # none left: no key (older snapshots read alike)


# ---- a property: the cached authorizer decides as the rules read ---------------------

_names = st.sampled_from(["orders", "orders.eu", "ord", "logs", "*"])
_entries = st.builds(
    lambda name, principal, op, perm, prefixed: make_entry(
        TOPIC, name, principal, op, perm,
        "prefixed" if prefixed and name != "*" else "literal"),
    _names, st.sampled_from([ALICE, BOB, "User:*"]), st.sampled_from(OPERATIONS),
    st.sampled_from(["allow", "deny"]), st.booleans())


def _reference(entries: frozenset[AccessControlEntry], principal: str, op: str,
               name: str) -> bool:
    implied = {DESCRIBE: {READ, WRITE, DELETE, "Alter"}, DESCRIBE_CONFIGS: {ALTER_CONFIGS}}
    hits = [e for e in entries if e.principal in (principal, "User:*") and (
        name.startswith(e.resource_name) if e.pattern_type == "prefixed"
        else e.resource_name in ("*", name))]
    if any(e.permission == "deny" and e.operation in (op, ALL) for e in hits):
        return False
    return any(e.permission == "allow" and e.operation in {op, ALL} | implied.get(op, set())
               for e in hits)


@settings(max_examples=200, deadline=None)
@given(st.frozensets(_entries, max_size=8),
       st.lists(st.tuples(st.sampled_from([ALICE, BOB]), st.sampled_from(OPERATIONS),
                          st.sampled_from(["orders", "orders.eu", "ord", "logs", "x"])),
                min_size=1, max_size=10))
def test_decisions_match_the_rules(entries: frozenset[AccessControlEntry],
                                   asks: list[tuple[str, str, str]]) -> None:
    a = Authorizer(lambda: entries)
    for _ in range(2):  # the second pass answers from the cache
        for principal, op, name in asks:
            assert a.allowed(principal, op, TOPIC, name) == _reference(entries, principal, op,
                                                                       name)


def test_kafka_filters_translate_kafkas_numbers() -> None:
    from dmq.kafka.acls import kafka_filter

    any_ = {"ResourceTypeFilter": 1, "ResourceNameFilter": None, "PatternTypeFilter": 1,
            "PrincipalFilter": None, "HostFilter": None, "Operation": 1, "PermissionType": 1}
    assert kafka_filter(any_) == AclFilter()
    f = kafka_filter({**any_, "ResourceTypeFilter": 2, "ResourceNameFilter": "orders.eu",
                      "PatternTypeFilter": 2, "Operation": 3, "PermissionType": 3})
    assert f == AclFilter(TOPIC, "orders.eu", "match", None, None, READ, "allow")
    assert f.matches(allow(READ, "orders.", pattern="prefixed"))
    assert kafka_filter({**any_, "PatternTypeFilter": 4}).pattern_type == "prefixed"
    with pytest.raises(AclError, match="resource type 7 is not supported"):
        kafka_filter({**any_, "ResourceTypeFilter": 7})  # USER (delegation tokens)


def test_any_producer_id_looks_at_every_batch_header() -> None:
    from dmq.log.batch import any_producer_id, encode_batch

    plain = encode_batch([[0, None, b"a", []]], 0, 0, 0)
    idem = encode_batch([[0, None, b"b", []]], 0, 0, 0, producer_id=7, producer_epoch=0,
                        base_sequence=0)
    assert not any_producer_id(plain) and not any_producer_id(plain + plain)
    assert any_producer_id(idem) and any_producer_id(plain + idem)
    assert not any_producer_id(b"") and not any_producer_id(plain[:20])
