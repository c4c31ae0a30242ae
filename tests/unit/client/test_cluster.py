"""Bootstrap parsing and the metadata cache's rules."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dmq.client.cluster import ClusterClient, parse_bootstrap
from dmq.clock import ManualClock
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import DmqError, ErrorCode, error_for
from tests.support.fake_cluster import FakeCluster


def test_parse_bootstrap_forms() -> None:
    assert parse_bootstrap("a:1, b:2") == [("a", 1), ("b", 2)]
    assert parse_bootstrap(["a:1"]) == [("a", 1)]
    assert parse_bootstrap([("h", 9)]) == [("h", 9)]
    assert parse_bootstrap("[::1]:9091") == [("::1", 9091)]
    for bad in ("", "host", "host:x", "host:0", ":9"):
        with pytest.raises(ValueError):
            parse_bootstrap(bad)


def _md(version: int, leader: int) -> dict:
    return {"controller_id": 1, "version": version,
            "brokers": [[101, "127.0.0.1", 1, None], [102, "127.0.0.1", 2, None]],
            "topics": [{"name": "t", "id": "x", "error": 0,
                        "partitions": [[1, 102, 4, [101, 102], [101, 102], 0],
                                       [0, leader, 3, [101, 102], [101], 0]]},
                       {"name": "gone", "id": None, "error": 3, "partitions": []}]}


def test_apply_metadata_and_leaders() -> None:
    c = ClusterClient("127.0.0.1:1")
    c.apply_metadata(_md(5, 101))
    assert c.leader_for("t", 0) == (101, 3)
    assert c.leader_for("t", 1) == (102, 4)
    assert c.leader_for("t", 9) == (-1, -1)
    info = c.topic("t")
    assert info is not None and [p.partition for p in info.partitions] == [0, 1]
    assert info.available == [0, 1]
    assert c.topic("gone") is None and c.topics["gone"].error == 3
    # an older image (a lagging broker) never overwrites a newer one
    c.apply_metadata(_md(4, 102))
    assert c.leader_for("t", 0) == (101, 3)
    c.apply_metadata(_md(6, -1))
    assert c.leader_for("t", 0) == (-1, 3)
    assert c.topic("t").available == [1]  # type: ignore[union-attr]


def test_backoff_is_exponential_capped_and_jittered() -> None:
    c = ClusterClient("127.0.0.1:1", retry_backoff_ms=100, retry_backoff_max_ms=1000)
    for attempt, base in ((1, 100), (2, 200), (3, 400), (10, 1000)):
        for _ in range(20):
            assert 0.8 * base <= c.backoff_ms(attempt) <= 1.2 * base


async def test_controller_switch_only_to_another_node_in_a_term_not_older() -> None:
    from dmq.metadata.discovery import ControllerAddress, ControllerChannel

    ch = ControllerChannel([("127.0.0.1", 1)], watch_after_ms=500)
    try:
        assert not ch.maybe_switch(ControllerAddress(2, "h", 2, 5))  # none known: discovery
        ch.set_controller(ControllerAddress(1, "h", 1, 5))
        assert not ch.maybe_switch(ControllerAddress(1, "h", 1, 6))  # same node
        assert not ch.maybe_switch(ControllerAddress(3, "h", 3, 4))  # a lagging node's view
        assert ch.maybe_switch(ControllerAddress(2, "h", 2, 6))
        assert ch.controller == ControllerAddress(2, "h", 2, 6)
        ch.set_controller(ControllerAddress(3, "h", 3))  # from a hint: term unknown
        assert ch.maybe_switch(ControllerAddress(1, "h", 1, 2))
    finally:
        await ch.close()


async def test_metadata_naming_a_newer_controller_moves_the_channel() -> None:
    from dmq.metadata.discovery import ControllerAddress

    c = ClusterClient("127.0.0.1:1")
    try:
        c.controller.set_controller(ControllerAddress(1, "127.0.0.1", 9001, 3))
        c.apply_metadata({"version": 5, "controller_id": 2, "controller_term": 4,
                          "controller": [2, "127.0.0.1", 9002], "brokers": [], "topics": []})
        assert c.controller.controller == ControllerAddress(2, "127.0.0.1", 9002, 4)
        c.apply_metadata({"version": 6, "controller_id": 1, "controller_term": 3,
                          "controller": [1, "127.0.0.1", 9001], "brokers": [], "topics": []})
        assert c.controller.controller is not None and c.controller.controller.node_id == 2
    finally:
        await c.close()


def test_missing_reason_names_what_does_not_exist() -> None:
    c = ClusterClient("127.0.0.1:1")
    c.apply_metadata({"version": 1, "controller_id": -1, "brokers": [[101, "h", 1, None]],
                      "topics": [
                          {"name": "t", "id": "x", "error": 0, "partitions": [
                              [i, 101, 0, [101], [101], 0] for i in range(3)]},
                          {"name": "gone", "id": None, "error": 3, "partitions": []}]})
    assert c.missing_reason("t", 2) is None
    assert c.missing_reason("t", 99) == "topic 't' has 3 partition(s), numbered 0 to 2"
    assert c.missing_reason("gone", 0) == "topic 'gone' does not exist"
    assert c.missing_reason("unasked", 0) is None


async def test_any_request_asks_past_a_silent_node_and_raises_what_all_nodes_said() -> None:
    """The first node asked never answers (its connection stays open): the next one is
    asked after NODE_HEDGE_AFTER_MS and its answer wins, long before the request
    timeout, and the call leaves no task behind. When every node answers a retriable
    error, the error keeps its code and says so; a non-retriable one is the answer."""
    fake = await FakeCluster(2).start()
    silent: list[Any] = []

    def hook(node: Any, body: Any) -> Any:
        if not silent:
            silent.append(node)
        return asyncio.sleep(3600) if node is silent[0] else None

    fake.metadata_hook = hook
    c = ClusterClient(fake.bootstrap, request_timeout_ms=120_000)
    try:
        before = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
        # the deadline is far below the request timeout: only the hedge can answer
        body = await asyncio.wait_for(
            c.any_request(ApiKey.METADATA, {"topics": [], "allow_auto_create": False}), 30)
        assert {b[0] for b in body["brokers"]} == {101, 102}
        assert {t for t in asyncio.all_tasks() if t is not asyncio.current_task()
                and "any_request" in repr(t.get_coro())} - before == set()

        def not_ready(node: Any, body: Any) -> None:
            raise error_for(ErrorCode.RAFT_NOT_READY, "restarting")

        fake.metadata_hook = not_ready
        with pytest.raises(DmqError, match="no node could answer METADATA") as err:
            await c.any_request(ApiKey.METADATA, {"topics": [], "allow_auto_create": False})
        assert err.value.code is ErrorCode.RAFT_NOT_READY

        def refused(node: Any, body: Any) -> None:
            raise error_for(ErrorCode.INVALID_REQUEST, "no")

        fake.metadata_hook = refused
        with pytest.raises(DmqError) as err:
            await c.any_request(ApiKey.METADATA, {"topics": [], "allow_auto_create": False})
        assert err.value.code is ErrorCode.INVALID_REQUEST
    finally:
        await c.close()
        await fake.stop()


async def test_stale_metadata_is_refreshed_in_the_background() -> None:
    """Older than metadata_max_age_ms of the client's clock, the cache is refreshed by
    maybe_refresh_stale (new partitions show up without an error to provoke it), once
    per period."""
    fake = await FakeCluster(1).start()
    fake.create_topic("t", 1)
    clock = ManualClock()
    c = ClusterClient(fake.bootstrap, metadata_max_age_ms=200, clock=clock)

    async def background_refresh() -> None:
        assert c._bg  # noqa: SLF001 - the refresh it started
        await asyncio.wait_for(asyncio.gather(*c._bg), 10)  # noqa: SLF001

    try:
        await c.refresh(["t"])
        assert len(c.topics["t"].partitions) == 1
        fake.create_topic("t", 3)
        asked = fake.metadata_requests
        clock.advance(200)
        c.maybe_refresh_stale()  # exactly max age, not older: nothing asked
        assert not c._bg  # noqa: SLF001
        clock.advance(1)
        for _ in range(5):
            c.maybe_refresh_stale()
        await background_refresh()
        assert len(c.topics["t"].partitions) == 3
        assert fake.metadata_requests == asked + 1
        clock.advance(200)  # the next period starts at that refresh
        c.maybe_refresh_stale()
        assert not c._bg  # noqa: SLF001
        clock.advance(1)
        c.maybe_refresh_stale()
        await background_refresh()
        assert fake.metadata_requests == asked + 2
    finally:
        await c.close()
        await fake.stop()
