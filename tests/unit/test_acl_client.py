"""The client meets ACL refusals: a topic whose metadata says TOPIC_AUTHORIZATION_FAILED
is reported at once, not waited for until `max_block_ms` (waiting changes nothing)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dmq.client.cluster import ClusterClient
from dmq.clock import ManualClock
from dmq.protocol.errors import ErrorCode, TopicAuthorizationFailedError


class RefusingCluster(ClusterClient):
    """Every metadata refresh answers the topic TOPIC_AUTHORIZATION_FAILED."""

    async def refresh(self, topics: Any = None, *, force: bool = False) -> None:
        self.refreshes = getattr(self, "refreshes", 0) + 1
        self.apply_metadata({"version": self.refreshes, "controller_id": 1,
                             "brokers": [[101, "127.0.0.1", 1, None]],
                             "topics": [{"name": "secret", "id": None, "partitions": [],
                                         "error": int(ErrorCode.TOPIC_AUTHORIZATION_FAILED)}]})


async def test_wait_for_topic_raises_an_authorization_refusal_at_once() -> None:
    # the manual clock never moves: a client that backs off and retries never returns
    c = RefusingCluster("127.0.0.1:1", clock=ManualClock())
    try:
        with pytest.raises(TopicAuthorizationFailedError, match="not authorized"):
            await asyncio.wait_for(c.wait_for_topic("secret", 60_000), 5)
        assert c.refreshes == 1
    finally:
        await c.close()
