"""Prometheus metrics of one node.

Each node owns a `CollectorRegistry` (several nodes may share a test process). The
request counters and latency histograms are fed by the protocol server's observer,
once per request. Everything else is read from the role services at scrape time by a
custom collector, so the hot paths keep plain integer counters and pay nothing for
metrics between scrapes. Labels are bounded: API names, error names, topics,
partitions, broker ids; never client ids or record keys.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from dmq.protocol.api import ApiKey
from dmq.protocol.errors import ErrorCode
from dmq.services import Sample

log = logging.getLogger("dmq.ops.metrics")

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0, 30.0)


class _RoleCollector:
    def __init__(self, sources: Callable[[], Iterable[Callable[[], Iterable[Sample]]]]) -> None:
        self._sources = sources

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for source in self._sources():
            try:
                produced = list(source())
            except Exception:  # noqa: BLE001 - one broken source must not hide the rest
                log.exception("metrics source %s failed", getattr(source, "__qualname__", source))
                continue
            for name, kind, doc, samples in produced:
                fam = families.get(name)
                if fam is None:
                    labels = sorted({k for lab, _ in samples for k in lab})
                    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                    fam = cls(name, doc, labels=labels)
                    families[name] = fam
                names = fam._labelnames  # type: ignore[attr-defined]
                for lab, value in samples:
                    fam.add_metric([lab.get(k, "") for k in names], value)  # type: ignore[attr-defined]
        yield from families.values()


class NodeMetrics:
    def __init__(self, node_id: int,
                 sources: Callable[[], Iterable[Callable[[], Iterable[Sample]]]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.started = time.time()
        self.node_id = node_id
        self._requests = Counter("dmq_requests", "requests answered, by API and error",
                                 ["api", "error"], registry=self.registry)
        self._latency = Histogram("dmq_request_latency_seconds",
                                  "time from dispatch to response, by API", ["api"],
                                  buckets=_LATENCY_BUCKETS, registry=self.registry)
        # pre-bound children: one dict lookup per request instead of .labels()
        self._req_children: dict[tuple[int, int], Any] = {}
        self._lat_children: dict[int, Any] = {}
        self.registry.register(_RoleCollector(sources))

    def observe_request(self, key: ApiKey, code: int, seconds: float) -> None:
        child = self._req_children.get((key, code))
        if child is None:
            try:
                err = ErrorCode(code).name
            except ValueError:
                err = str(code)
            child = self._requests.labels(key.name, err)
            self._req_children[(key, code)] = child
        child.inc()
        lat = self._lat_children.get(key)
        if lat is None:
            lat = self._latency.labels(key.name)
            self._lat_children[key] = lat
        lat.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
