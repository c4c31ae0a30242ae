"""Client quotas (dmq.security.quotas): config keys, the look-up of a user's quota, the
token bucket's throttle time (Kafka's: the delay that brings the rate back to the
quota), the bound on tracked users; the controller's validation of quota configs and
entries."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmq.controller.validation import validate_dynamic_config
from dmq.protocol.errors import ErrorCode, InvalidConfigError
from dmq.security.quotas import (
    FETCH,
    MAX_THROTTLE_MS,
    PRODUCE,
    QuotaManager,
    config_key,
    entries,
    parse_config_key,
    user_of,
)
from tests.unit.controller.helpers import Harness


def manager(configs: dict[str, str], **kw: int) -> QuotaManager:
    q = QuotaManager(**kw)
    q.update(configs)
    return q


def test_config_keys_round_trip() -> None:
    for key in ("producer_byte_rate", "consumer_byte_rate"):
        for user in (None, "alice", "a:b", "CN=x,O=y"):
            assert parse_config_key(config_key(key, user)) == (key, user)
    assert config_key("producer_byte_rate", None) == "quota.producer.byte.rate"
    assert config_key("consumer_byte_rate", "bob") == "quota.consumer.byte.rate:bob"
    assert parse_config_key("follower.replication.throttled.rate") is None
    assert entries({"quota.producer.byte.rate": "100", "quota.consumer.byte.rate:bob": "7",
                    "follower.replication.throttled.rate": "5"}) == {
        None: {"producer_byte_rate": 100}, "bob": {"consumer_byte_rate": 7}}


def test_user_of_principal() -> None:
    assert user_of("User:alice") == "alice"
    assert user_of("User:ANONYMOUS") == "ANONYMOUS"
    assert user_of("node:3") is None


def test_own_quota_over_default_key_by_key() -> None:
    q = manager({"quota.producer.byte.rate": "1000", "quota.consumer.byte.rate": "2000",
                 "quota.producer.byte.rate:alice": "50"})
    assert q.rate("alice", PRODUCE) == 50
    assert q.rate("alice", FETCH) == 2000  # no own consumer quota: the default
    assert q.rate("bob", PRODUCE) == 1000
    assert manager({"quota.producer.byte.rate:alice": "50"}).rate("bob", PRODUCE) == 0


def test_no_quota_nodes_and_unlisted_users_are_not_throttled() -> None:
    q = manager({"quota.producer.byte.rate:alice": "1000"})
    assert q.record("node:1", PRODUCE, 10**9, 0) == -1
    assert q.record("User:bob", PRODUCE, 10**9, 0) == -1
    assert q.record("User:alice", FETCH, 10**9, 0) == -1
    assert manager({}).record("User:alice", PRODUCE, 10**9, 0) == -1


def test_throttle_time_is_the_debt_over_the_rate() -> None:
    q = manager({"quota.producer.byte.rate:alice": "1000"})  # bucket: 1000 bytes
    assert q.record("User:alice", PRODUCE, 1000, 0) == 0  # the burst
    assert q.record("User:alice", PRODUCE, 500, 0) == 500  # 500 bytes over: 0.5 s
    assert q.record("User:alice", PRODUCE, 0, 500) == 0  # waited it out
    assert q.record("User:alice", PRODUCE, 250, 600) == 150  # 100 refilled, 250 taken
    # a huge request is held at most MAX_THROTTLE_MS, and the rest of its debt stays
    assert q.record("User:alice", PRODUCE, 100_000, 750) == MAX_THROTTLE_MS
    assert q.record("User:alice", PRODUCE, 0, 750 + MAX_THROTTLE_MS) > 0
    # the produce and fetch quotas are separate buckets
    q2 = manager({"quota.producer.byte.rate": "1000", "quota.consumer.byte.rate": "1000"})
    assert q2.record("User:x", PRODUCE, 3000, 0) == 2000
    assert q2.record("User:x", FETCH, 1000, 0) == 0
    assert q2.throttle_stats() == [(PRODUCE, "x", 2000, 1)]


def test_idle_time_refills_at_most_one_window() -> None:
    q = manager({"quota.consumer.byte.rate:c": "1000"})
    assert q.record("User:c", FETCH, 1000, 0) == 0
    # an hour idle: still only one second of burst
    assert q.record("User:c", FETCH, 2000, 3_600_000) == 1000


def test_tracked_users_are_bounded_least_recently_used_dropped() -> None:
    q = manager({"quota.producer.byte.rate": "1000"}, max_tracked=3)
    for i in range(3):
        q.record(f"User:u{i}", PRODUCE, 2000, 0)
    q.record("User:u0", PRODUCE, 0, 1)  # u0 used again: u1 is now the oldest
    q.record("User:u9", PRODUCE, 0, 2)
    users = {u for _, u, _, _ in q.throttle_stats()}
    assert users == {"u0", "u2"}  # u9 was not throttled; u1 dropped
    assert q.dropped_throttle_ms[PRODUCE] == 1000
    for i in range(100):
        q.record(f"User:v{i}", PRODUCE, 1, 3)
    assert sum(len(b) for b in q._buckets.values()) <= 3


def test_a_new_config_mapping_is_read_again() -> None:
    q = manager({"quota.producer.byte.rate:a": "1000"})
    assert q.active
    q.update({})
    assert not q.active
    assert q.record("User:a", PRODUCE, 10**6, 0) == -1


@settings(max_examples=200, deadline=None)
@given(rate=st.integers(1_000, 10_000_000), sizes=st.lists(st.integers(1, 200_000),
                                                           min_size=1, max_size=200),
       gaps=st.lists(st.integers(0, 50), min_size=200, max_size=200))
def test_a_client_that_waits_out_its_throttle_gets_its_quota(
        rate: int, sizes: list[int], gaps: list[int]) -> None:
    """A client that sends its next request only after the throttle time (plus some
    think time) has, at every moment, sent at most one window of burst plus the quota
    over the elapsed time plus one request; and when it never thinks, at least the
    quota over the time it was held."""
    sizes = [min(s, rate * MAX_THROTTLE_MS // 1000) for s in sizes]  # held whole
    for think in (True, False):
        q = manager({"quota.producer.byte.rate:a": str(rate)})
        now = sent = 0
        for size, gap in zip(sizes, gaps, strict=False):
            throttle_ms = q.record("User:a", PRODUCE, size, now)
            assert throttle_ms >= 0
            sent += size
            assert sent <= rate + rate * now / 1000 + size
            now += throttle_ms + (gap if think else 0)
        if not think and now > 0:
            # the bucket ends no lower than -rate/1000 (ceil of the last wait)
            assert sent >= rate * now / 1000 - 1


def test_validation_of_quota_configs() -> None:
    assert validate_dynamic_config("quota.producer.byte.rate:alice", "1024") == "1024"
    assert validate_dynamic_config("quota.consumer.byte.rate", "2e6") == "2000000"
    assert validate_dynamic_config("quota.consumer.byte.rate:bob", None) is None
    for key, value, why in (
            ("quota.producer.byte.rate", "0", ">= 1"),
            ("quota.producer.byte.rate", "1.5", "whole"),
            ("quota.producer.byte.rate", "fast", "a number"),
            ("quota.producer.byte.rate:", "10", "unknown quota config"),
            ("quota.request.percentage", "10", "unknown quota config"),
            ("quota.producer.byte.rate:" + "u" * 513, "10", "1 to 512 bytes")):
        with pytest.raises(InvalidConfigError, match=why):
            validate_dynamic_config(key, value)


def test_planner_alters_quota_entries_each_all_or_nothing() -> None:
    h = Harness()
    recs, res = h.planner.alter_client_quotas([
        ["alice", {"producer_byte_rate": 1000, "consumer_byte_rate": 2000}],
        [None, {"producer_byte_rate": 500}],
        ["bob", {"producer_byte_rate": 10, "request_percentage": 5}],
        ["", {"producer_byte_rate": 10}],
        ["carol", {"consumer_byte_rate": 0}]])
    assert [r[1] for r in res] == [0, 0] + [int(ErrorCode.INVALID_REQUEST)] * 3
    assert "request_percentage" in res[2][2] and ">= 1" in res[4][2]
    h.commit(recs)
    assert entries(h.state.dynamic_configs) == {
        "alice": {"producer_byte_rate": 1000, "consumer_byte_rate": 2000},
        None: {"producer_byte_rate": 500}}
    recs, res = h.planner.alter_client_quotas([["alice", {"producer_byte_rate": None}]],
                                              validate_only=True)
    assert recs == [] and res == [["alice", 0, None]]
    h.commit(h.planner.alter_client_quotas([["alice", {"producer_byte_rate": None}]])[0])
    assert entries(h.state.dynamic_configs)["alice"] == {"consumer_byte_rate": 2000}


def test_a_client_that_throttles_itself_is_muted_meanwhile() -> None:
    """KIP-219: the answer comes at once and the client waits; a request it sends
    before the throttle time ended is held back until then, and its answer reports
    only the rest."""
    q = manager({"quota.producer.byte.rate:a": "1000"})
    t1 = q.record("User:a", PRODUCE, 2000, 0)  # 1000 over: 1 s
    assert (t1, q.mute("User:a", PRODUCE, 0, t1)) == (1000, 0)  # answered at once
    # pipelined: sent at 100 ms, 500 more bytes: debt clears at 1500 ms
    t2 = q.record("User:a", PRODUCE, 500, 100)
    assert t2 == 1400
    assert q.mute("User:a", PRODUCE, 100, t2) == 900  # held until the mute ends (1000)
    # a client that waited its throttle time out is not held
    t3 = q.record("User:a", PRODUCE, 100, 1500)
    assert q.mute("User:a", PRODUCE, 1500, t3) == 0
    assert q.mute("node:1", PRODUCE, 0, 10) == 0
