"""The seed's REST paths on a real cluster: shapes and values, topic creation on the
leader and on a follower, records in and out with curl-like calls, the controller view
after the leader is killed, and /readyz of a broker cut off from the controllers."""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.chaos.network import LinkFaults, available
from tests.support.procs import ProcessCluster, wait_port
from tests.support.waiting import wait_until

SETTINGS = {"broker.session.timeout.ms": 2000, "broker.heartbeat.interval.ms": 400}


def http(port: int, path: str, body: Any = None, method: str | None = None
         ) -> tuple[int, Any, dict[str, str]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, json.loads(r.read() or b"null"), dict(r.headers)
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None, dict(e.headers)


def wait_for(fn: Any, timeout_s: float = 15.0, what: str = "condition") -> Any:
    return wait_until(fn, timeout_s, what, interval_s=0.1,
                      ignore=(OSError, KeyError, ValueError))


def controller_id(port: int) -> int:
    status, body, _ = http(port, "/api/v1/metadata/controller")
    return body["controllerId"] if status == 200 else -1


@pytest.fixture
def cluster():
    with ProcessCluster(controllers=3, brokers=2, http=True, settings=SETTINGS) as c:
        c.start()
        for n in c.nodes.values():
            assert n.http_port is not None
            wait_port(n.http_port)
        yield c


def test_rest_paths_on_a_live_cluster(cluster: ProcessCluster) -> None:
    hp = {nid: n.http_port for nid, n in cluster.nodes.items()}
    leader = wait_for(lambda: controller_id(hp[1]) if controller_id(hp[1]) > 0 else None,
                      what="a controller leader")
    wait_for(lambda: all(http(hp[n], "/readyz")[0] == 200 for n in (1, 2, 3, 101, 102)),
             what="every node ready")

    status, body, _ = http(hp[leader], "/api/v1/metadata/controller")
    assert status == 200 and set(body) >= {"controllerId", "controllerUrl", "controllerTerm",
                                           "timestamp"}
    assert body["controllerUrl"] == f"http://127.0.0.1:{cluster.nodes[leader].port}"
    assert body["controllerAddress"] == f"127.0.0.1:{cluster.nodes[leader].port}"

    # a follower controller hands the creation to the active one (the seed's quick
    # start posts to whichever controller it names)
    follower = next(c for c in (1, 2, 3) if c != leader)
    status, body, headers = http(hp[follower], "/api/v1/metadata/topics",
                                 {"topicName": "rest", "numPartitions": 2,
                                  "replicationFactor": 2})
    assert status == 201 and body["topicName"] == "rest"
    assert http(hp[leader], "/api/v1/metadata/topics",
                {"topicName": "rest", "numPartitions": 2, "replicationFactor": 2})[0] == 409
    assert http(hp[leader], "/api/v1/metadata/topics",
                {"topicName": "bad name!", "numPartitions": 1, "replicationFactor": 1})[0] == 400
    assert http(hp[leader], "/api/v1/metadata/topics", {"topicName": "x"} | {
        "numPartitions": "two"})[0] == 400

    topic = wait_for(lambda: http(hp[follower], "/api/v1/metadata/topics/rest")[1]
                     if http(hp[follower], "/api/v1/metadata/topics/rest")[0] == 200 else None,
                     what="topic visible on a follower controller")
    assert topic["numPartitions"] == 2 and topic["replicationFactor"] == 2
    assert {p["partitionId"] for p in topic["partitions"]} == {0, 1}
    assert http(hp[leader], "/api/v1/metadata/topics/nope")[0] == 404

    status, brokers, _ = http(hp[leader], "/api/v1/metadata/brokers")
    assert status == 200 and {b["brokerId"] for b in brokers} == {101, 102}
    assert all(b["status"] == "ONLINE" and b["lastHeartbeat"] for b in brokers)
    status, b101, _ = http(hp[leader], "/api/v1/metadata/brokers/101")
    assert status == 200 and set(b101) >= {"brokerId", "host", "port", "status", "lastHeartbeat"}
    assert http(hp[leader], "/api/v1/metadata/brokers/999")[0] == 404

    status, cl, _ = http(hp[leader], "/api/v1/metadata/cluster")
    assert status == 200 and cl["controllerLeaderId"] == leader and cl["totalPartitions"] >= 2
    status, raft, _ = http(hp[leader], "/api/v1/raft/status")
    assert status == 200 and raft["isLeader"] and raft["nodeId"] == leader
    assert raft["commitIndex"] >= 1 and raft["lastApplied"] >= 1

    # records in and out through a broker (forwarded to the partition leader)
    offsets = []
    for i in range(3):
        status, body, _ = http(hp[101], "/api/v1/storage/topics/rest/partitions/1",
                               {"key": f"k{i}", "value": f"v{i}"})
        assert status == 200, body
        offsets.append(body["offset"])
    assert offsets == sorted(offsets) and len(set(offsets)) == 3
    status, body, _ = http(hp[102], f"/api/v1/storage/topics/rest/partitions/1?offset="
                                    f"{offsets[0]}&limit=10")
    assert status == 200 and [r["value"] for r in body["records"]] == ["v0", "v1", "v2"]
    assert body["highWatermark"] == offsets[-1] + 1
    assert http(hp[101], "/api/v1/storage/topics/nope/partitions/0", {"value": "x"})[0] == 404
    assert http(hp[101], "/api/v1/storage/topics/rest/partitions/x?offset=0")[0] == 400

    # the metrics move as records flow, and parse as Prometheus text
    def metric_sum(port: int, name: str, **labels: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        total = 0.0
        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                if smp.name == name and all(smp.labels.get(k) == v for k, v in labels.items()):
                    total += smp.value
        return total

    records_in = sum(metric_sum(hp[b], "dmq_broker_records_in_total", topic="rest")
                     for b in (101, 102))
    assert records_in == 3
    assert sum(metric_sum(hp[b], "dmq_broker_bytes_out_total", topic="rest")
               for b in (101, 102)) > 0
    assert metric_sum(hp[leader], "dmq_controller_raft_role", role="LEADER") == 1
    assert metric_sum(hp[follower], "dmq_controller_raft_role", role="FOLLOWER") == 1
    assert metric_sum(hp[leader], "dmq_controller_brokers", state="ONLINE") == 2
    assert metric_sum(hp[leader], "dmq_controller_metadata_version") > 0
    assert metric_sum(hp[101], "dmq_log_segments") >= 2

    status, rep, _ = http(hp[101], "/api/v1/storage/replication/status")
    assert status == 200 and rep["brokerId"] == 101
    assert {(p["topic"], p["partition"]) for p in rep["partitions"]} >= {("rest", 0), ("rest", 1)}

    # kill the controller leader: every remaining controller names the new one (the
    # election's time is a figure, printed; the 10 s wait is a sanity bound)
    cluster.kill(leader, signal.SIGKILL)
    t0 = time.monotonic()
    rest = [c for c in (1, 2, 3) if c != leader]
    new = wait_for(lambda: (lambda ids: ids[0] if len(set(ids)) == 1 and ids[0] not in
                            (-1, leader) else None)([controller_id(hp[c]) for c in rest]),
                   timeout_s=10, what="a new controller on every controller")
    print(f"\nevery controller's REST view names the new controller after "
          f"{time.monotonic() - t0:.2f}s")
    assert new in rest


@pytest.mark.skipif(not available()[0], reason=available()[1])
def test_readyz_turns_not_ready_when_a_broker_is_fenced() -> None:
    gids = {1: 42001, 101: 42101}
    with ProcessCluster(controllers=1, brokers=1, http=True, settings=SETTINGS,
                        node_gids=gids) as cluster:
        cluster.start()
        hp = cluster.nodes[101].http_port
        assert hp is not None
        wait_port(hp)
        wait_for(lambda: http(hp, "/readyz")[0] == 200, what="broker ready")
        faults = LinkFaults(gids, {n: p.port for n, p in cluster.nodes.items()})
        try:
            faults.cut(101, 1)
            status, body, _ = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(
                http(hp, "/readyz")), timeout_s=10, what="broker not ready")
            assert body["ready"] is False and body["reasons"]
            faults.heal_all()
            wait_for(lambda: http(hp, "/readyz")[0] == 200, timeout_s=15, what="ready again")
        finally:
            faults.close()
