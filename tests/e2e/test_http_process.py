"""The HTTP surface of a real node: /healthz, /readyz, and /metrics that parse as
Prometheus text and whose request counters move as requests are answered."""

from __future__ import annotations

import json
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from dmq.protocol.api import ApiKey
from tests.support.procs import ProcessCluster, wait_port
from tests.support.raw_frames import api_versions_ok


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _api_versions_count(port: int) -> float:
    _, body = _get(port, "/metrics")
    for fam in text_string_to_metric_families(body.decode()):
        if fam.name == "dmq_requests":
            for s in fam.samples:
                if (s.name == "dmq_requests_total" and s.labels["api"] == ApiKey.API_VERSIONS.name
                        and s.labels["error"] == "NONE"):
                    return s.value
    return 0.0


def test_health_and_metrics_endpoints() -> None:
    with ProcessCluster(controllers=1, http=True) as cluster:
        cluster.start()
        node = cluster.nodes[1]
        assert node.http_port is not None
        wait_port(node.http_port)
        status, body = _get(node.http_port, "/healthz")
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, body = _get(node.http_port, "/readyz")
        assert status in (200, 503) and "ready" in json.loads(body)
        before = _api_versions_count(node.http_port)
        for _ in range(3):
            assert api_versions_ok(node.port)
        assert _api_versions_count(node.http_port) == before + 3
        _, text = _get(node.http_port, "/metrics")
        names = {f.name for f in text_string_to_metric_families(text.decode())}
        assert {"dmq_uptime_seconds", "dmq_open_connections",
                "dmq_request_latency_seconds"} <= names


def test_a_failing_metrics_source_does_not_break_the_scrape() -> None:
    from dmq.ops.metrics import NodeMetrics

    def broken() -> list:
        raise RuntimeError("bug in a role")

    def good() -> list:
        return [("dmq_test_gauge", "gauge", "a test gauge", [({"node": "1"}, 7.0)])]

    text = NodeMetrics(1, lambda: [broken, good]).render().decode()
    assert 'dmq_test_gauge{node="1"} 7.0' in text
