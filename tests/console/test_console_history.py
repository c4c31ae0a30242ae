"""The console's in-memory hour: the ring's bounds and the metrics it reads."""

from __future__ import annotations

import asyncio
import time
import tracemalloc

import pytest

from dmq.ops.console.history import (
    MAX_BROKERS,
    MAX_GROUPS,
    MAX_TOPICS,
    RING_SAMPLES,
    Ring,
    parse_metrics,
)
from tests.support.waiting import until


def test_ring_keeps_the_last_samples_in_order_with_gaps() -> None:
    ring = Ring(4, 10)
    for i in range(6):
        values = {("t", "a", "recordsIn"): float(i)}
        if i % 2:
            values[("b", "101", "bytesIn")] = 10.0 * i
        ring.append(1000 + i, values)
    assert ring.time_list() == [1002, 1003, 1004, 1005]
    assert ring.values(("t", "a", "recordsIn")) == [2.0, 3.0, 4.0, 5.0]
    assert ring.values(("b", "101", "bytesIn")) == [None, 30.0, None, 50.0]
    assert ring.latest(("t", "a", "recordsIn")) == 5.0
    assert ring.values(("t", "missing", "x")) == [None] * 4


def test_ring_caps_series_and_drops_those_silent_for_a_whole_ring() -> None:
    ring = Ring(3, 2)
    ring.append(1, {("t", "a", "m"): 1.0, ("t", "b", "m"): 1.0, ("t", "c", "m"): 1.0})
    assert len(ring.series) == 2  # the third is refused, not grown into
    for t in range(2, 6):
        ring.append(t, {("t", "a", "m"): 2.0})
    assert ring.keys("t") == [("t", "a", "m")]  # b had no value for a whole ring


def test_ring_memory_at_the_caps_is_a_few_megabytes() -> None:
    keys = ([("b", str(i), m) for i in range(MAX_BROKERS) for m in "wxyz"]
            + [("t", f"topic-{i}", m) for i in range(MAX_TOPICS) for m in "wxyz"]
            + [("g", f"group-{i}") for i in range(MAX_GROUPS)])
    tracemalloc.start()
    try:
        ring = Ring(RING_SAMPLES, len(keys))
        for t in range(RING_SAMPLES + 10):
            ring.append(t, {k: float(t) for k in keys})
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(ring.series) == len(keys) == 1156
    assert used < 8 * 1024 * 1024, used


def test_parse_metrics_reads_the_console_counters_only() -> None:
    text = "\n".join([
        "# HELP dmq_broker_bytes_in record batch bytes",
        "# TYPE dmq_broker_bytes_in counter",
        'dmq_broker_bytes_in_total{node="101",topic="a"} 1234.0',
        'dmq_broker_records_in_total{node="101",topic="a\\"b"} 7.0',
        'dmq_log_size_bytes{node="101",partition="0",topic="a"} 99.0',
        'dmq_broker_bytes_in_created{node="101",topic="a"} 1.7e9',
        'dmq_requests_total{api="FETCH",error="NONE"} 5.0',
        'dmq_broker_bytes_out_total{node="101",topic="a"} not-a-number',
        'dmq_broker_records_out_total{node="101",topic="a"} 5.0',
    ])
    m = parse_metrics(text)
    assert m["dmq_broker_bytes_in_total"] == [({"node": "101", "topic": "a"}, 1234.0)]
    assert m["dmq_broker_records_in_total"][0][1] == 7.0
    assert m["dmq_log_size_bytes"] == [({"node": "101", "partition": "0", "topic": "a"}, 99.0)]
    assert m["dmq_broker_bytes_out_total"] == []
    assert m["dmq_broker_records_out_total"] == [({"node": "101", "topic": "a"}, 5.0)]


async def test_sampler_runs_while_looked_at_and_its_task_ends_with_stop_or_idleness(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from dmq.ops.console import history

    samples: list[float] = []

    async def sample() -> None:
        samples.append(time.monotonic())

    monkeypatch.setattr(history, "IDLE_STOP_S", 0.3)
    monkeypatch.setattr(history, "SAMPLE_INTERVAL_S", 0.1)  # then it sleeps its 0.5 s floor
    sampler = history.Sampler(None)  # type: ignore[arg-type]
    monkeypatch.setattr(sampler, "sample", sample)
    sampler.touch()
    task = sampler._task
    assert task is not None
    sampler.touch()  # a second request keeps the one task
    assert sampler._task is task
    await asyncio.wait_for(asyncio.shield(task), 5)  # nobody looked for IDLE_STOP_S: it ends
    assert len(samples) == 1 and sampler._session is None
    sampler.touch()  # the next look starts it again
    restarted = sampler._task
    assert restarted is not None and restarted is not task
    await until(lambda: len(samples) == 2, "the restarted sampler's first sample")
    await sampler.stop()  # the console's close: cancelled and awaited
    assert restarted.done() and sampler._task is None and len(samples) == 2


def test_sampler_reads_a_brokers_http_port_and_says_why_when_it_has_none() -> None:
    from dmq.config import ClusterConfig, NodeAddress
    from dmq.ops.console.history import Sampler

    def sampler(settings: dict[str, object], http_port: int | None = None) -> Sampler:
        config = ClusterConfig((NodeAddress(1, "127.0.0.1", 9000),),
                               (NodeAddress(101, "10.0.0.1", 9101, None, http_port),), settings)
        reader = type("Reader", (), {"config": config, "admin": None, "groups": None})()
        return Sampler(reader)

    assert sampler({})._http_address(101, "10.0.0.1", 9101) == ("10.0.0.1", 9101)
    assert sampler({}, 8101)._http_address(101, "10.0.0.1", 9101) == ("10.0.0.1", 8101)
    sasl = {"sasl.enabled.mechanisms": "SCRAM-SHA-256", "sasl.protocol.listener": True}
    assert sampler(sasl, 8101)._http_address(101, "10.0.0.1", 9101) == ("10.0.0.1", 8101)
    for settings in (sasl, {"http.on.node.port": False}):
        with pytest.raises(OSError, match="its http_port is not in the cluster config"):
            sampler(settings)._http_address(101, "10.0.0.1", 9101)
