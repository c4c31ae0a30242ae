"""The chaos workload records every record that did not get through, with the time
budget its producer had (what `needless_failures` judges): a send refused within
max_block, a delivery that failed within the delivery timeout, and a record still
unresolved when producing stopped. Driven with a stand-in producer, no cluster."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from dmq.client.records import RecordMetadata
from dmq.protocol.errors import NotEnoughReplicasError
from tests.chaos import workload as wl
from tests.chaos.checker import History


class _Producer:
    """send #0 is refused, #1's delivery fails, #2 never resolves, #3 is acknowledged."""

    def __init__(self, *_a: Any, **_kw: Any) -> None:
        self.sent = 0

    async def start(self) -> None:
        pass

    async def close(self, timeout_ms: int = 0) -> None:
        pass

    async def send(self, topic: str, value: bytes, **_kw: Any) -> asyncio.Future[Any]:
        i, self.sent = self.sent, self.sent + 1
        if i == 0:
            raise TimeoutError("buffer full for max_block_ms")
        f: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if i == 1:
            f.set_exception(NotEnoughReplicasError("isr too small"))
        elif i == 3:
            f.set_result(RecordMetadata(topic, 0, 7, 0))
        elif i > 3:
            f.set_result(RecordMetadata(topic, 0, 7 + i, 0))
        return f


class _Cluster:
    bootstrap = "127.0.0.1:1"


async def test_each_kind_of_failure_is_recorded_with_its_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wl, "Producer", _Producer)
    history = History()
    w = wl.Workload(_Cluster(), "t", 1, history, lambda _s: None,  # type: ignore[arg-type]
                    random.Random(1), producers=1, consumers=0, rate_per_s=200)
    w.producing.set()
    w._spawn(w._produce("p0"), "producer p0")
    w._spawn(w._collect(), "ack collector")
    try:
        for _ in range(200):
            if ("p0", 3) in history.acked:
                break
            await asyncio.sleep(0.01)
        await w.stop_producing(timeout_s=0.2)
    finally:
        await w.stop()
    by_rid = {f[0]: f for f in w.failures}
    refused, failed, unresolved = by_rid[("p0", 0)], by_rid[("p0", 1)], by_rid[("p0", 2)]
    assert refused[3] == wl.MAX_BLOCK_MS / 1000 and "TimeoutError" in refused[4]
    assert failed[3] == wl.DELIVERY_TIMEOUT_MS / 1000 and "NotEnoughReplicas" in failed[4]
    assert unresolved[3] == wl.DELIVERY_TIMEOUT_MS / 1000
    assert unresolved[4] == "unresolved when producing stopped"
    for _rid, sent, failed_at, _budget, _err in w.failures:
        assert sent <= failed_at
    assert ("p0", 3) not in by_rid and ("p0", 3) in history.acked
    assert ("p0", 0) in history.failed
    assert {("p0", 1), ("p0", 2)} <= history.indeterminate
