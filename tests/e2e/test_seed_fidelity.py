"""dmq tried as a user of the original DistributedMQ would: its services.json, its
curl examples against `dmq dev`, its field values, and the REST inputs a careless or
hostile user sends. Real processes, real sockets, the seed README's exact texts.

The seed's examples name its fixed ports (controllers 9091-9093, brokers 8081-8083),
which `dmq dev` takes by default. Tests share the machine, so the curl examples run
against a `dmq dev` moved to free ports (`--base-port`, `--broker-base-port`) with
every port of the printed command mapped; that the defaults are the seed's ports is
shown by `dmq dev` refusing a taken 8081 by name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dmq.log.batch import HEADER_SIZE, encode_batch
from tests.support.procs import ProcessCluster, free_ports
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

# The seed README's curl examples, exactly as printed there ("Verify Cluster Status"
# and "Testing"), in the order a new user runs them.
SEED_CURLS = [
    "curl http://localhost:9091/api/v1/metadata/controller",
    "curl http://localhost:9092/api/v1/metadata/brokers",
    "curl http://localhost:9092/api/v1/raft/status",
    """curl -X POST http://localhost:9092/api/v1/metadata/topics \\
  -H "Content-Type: application/json" \\
  -d '{
    "topicName": "test-topic",
    "numPartitions": 3,
    "replicationFactor": 2
  }'""",
    "curl http://localhost:9092/api/v1/metadata/topics",
]

# The seed's API reference, path by path (method, path, body), with {placeholders}
# filled as its README's own examples fill them.
SEED_API = [
    ("GET", "9091", "/api/v1/metadata/controller", None),
    ("GET", "9091", "/api/v1/metadata/cluster", None),
    ("POST", "9093", "/api/v1/metadata/topics",
     {"topicName": "orders", "numPartitions": 3, "replicationFactor": 2}),
    ("GET", "9093", "/api/v1/metadata/topics/orders", None),
    ("GET", "9093", "/api/v1/metadata/topics", None),
    ("GET", "9091", "/api/v1/metadata/brokers", None),
    ("GET", "9091", "/api/v1/metadata/brokers/101", None),
    ("GET", "9091", "/api/v1/raft/status", None),
    ("POST", "8081", "/api/v1/storage/topics/orders/partitions/0",
     {"key": "order-123", "value": "order data...", "timestamp": 1731347234567}),
    ("GET", "8082", "/api/v1/storage/topics/orders/partitions/0?offset=0&limit=100", None),
    ("GET", "8081", "/api/v1/storage/replication/status", None),
]


def http(port: int, path: str, body: Any = None, method: str | None = None,
         raw: bytes | None = None, host: str = "127.0.0.1") -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://{host}:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, text


def wait_for(fn: Any, timeout_s: float = 30.0, what: str = "condition") -> Any:
    return wait_until(fn, timeout_s, what, interval_s=0.1,
                      ignore=(OSError, KeyError, ValueError, TypeError))


def curl(command: str, ports: dict[str, int]) -> tuple[int, Any]:
    """Run a seed README curl command as printed, its seed ports mapped to ours; adds
    only `-s -w` to read the status code."""
    mapped = re.sub(r"localhost:(\d+)", lambda m: f"localhost:{ports[m.group(1)]}", command)
    assert mapped.startswith("curl ")
    r = subprocess.run(["bash", "-c", "curl -s -w '\\n%{http_code}' " + mapped[5:]],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, (command, r.stderr)
    body, _, code = r.stdout.rpartition("\n")
    return int(code), json.loads(body) if body else None


# ---- dmq dev with the seed's layout -------------------------------------------------
def test_dmq_dev_takes_the_seed_ports_and_names_a_taken_one(tmp_path: Path) -> None:
    """Defaults: controllers 9091-9093, brokers 8081-8083. Holding 8081 makes `dmq dev`
    refuse before starting anything, naming the port and its node (and any other seed
    port that something else on this machine holds)."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as dev checks it
    try:
        holder.bind(("127.0.0.1", 8081))
        holder.listen()
    except OSError:
        holder.close()
        holder = None  # listened on by someone else: dev must refuse it all the same
    try:
        r = subprocess.run([sys.executable, "-m", "dmq", "dev", "--data-dir",
                            str(tmp_path / "dev")], capture_output=True, text=True,
                           timeout=60)
    finally:
        if holder is not None:
            holder.close()
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "port 8081 of node 101 (broker)" in out, out
    assert "--base-port" in out and "--broker-base-port" in out
    assert not (tmp_path / "dev" / "node-1").exists()  # nothing was started


@pytest.fixture
def dev_cluster(tmp_path: Path):
    """`dmq dev` (3 controllers, 3 brokers) on free ports; yields seed port -> ours."""
    for _ in range(50):  # the layout needs three consecutive free ports for each role
        ctl, brk = free_ports(2)
        if _free_run(ctl, 3) and _free_run(brk, 3) and abs(ctl - brk) >= 3:
            break
    mapping = {str(9091 + i): ctl + i for i in range(3)} | {str(8081 + i): brk + i
                                                            for i in range(3)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "dmq", "dev", "--quiet", "--data-dir", str(tmp_path / "dev"),
         "--base-port", str(ctl), "--broker-base-port", str(brk)],
        stdout=open(tmp_path / "dev.out", "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
        start_new_session=True)
    try:
        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "dev.out").read_text()
            status, brokers = http(ctl + 1, "/api/v1/metadata/brokers")
            return status == 200 and len(brokers) == 3 and all(
                b["status"] == "ONLINE" for b in brokers)
        wait_for(up, 90, "dmq dev up with three ONLINE brokers")
        yield mapping
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _free_run(start: int, n: int) -> bool:
    for port in range(start, start + n):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_seed_readme_curl_examples_work_as_printed(dev_cluster: dict[str, int]) -> None:
    ports = dev_cluster
    results = [curl(c, ports) for c in SEED_CURLS]
    (s1, ctl), (s2, brokers), (s3, raft), (s4, created), (s5, topics) = results

    assert s1 == 200 and set(ctl) >= {"controllerId", "controllerUrl", "controllerTerm",
                                      "timestamp"}
    leader = ctl["controllerId"]
    assert leader in (1, 2, 3)
    assert ctl["controllerUrl"] == f"http://127.0.0.1:{ports[str(9090 + leader)]}"
    # the controller's URL answers HTTP itself, as in the seed
    assert http(ports[str(9090 + leader)], "/api/v1/raft/status")[1]["isLeader"] is True

    assert s2 == 200 and [b["brokerId"] for b in brokers] == [101, 102, 103]
    for b, seed_port in zip(brokers, ("8081", "8082", "8083"), strict=True):
        assert b["port"] == ports[seed_port] and b["host"] == "127.0.0.1"
        assert b["status"] == "ONLINE" and isinstance(b["lastHeartbeat"], int)

    assert s3 == 200 and set(raft) >= {"nodeId", "currentTerm", "state", "isLeader",
                                       "leaderId", "commitIndex", "lastApplied"}
    assert raft["nodeId"] == 2 and raft["state"] in ("LEADER", "FOLLOWER")
    assert raft["leaderId"] == leader

    # created whichever controller leads: node 2 hands it to the active one if need be
    assert s4 == 201 and created["topicName"] == "test-topic", created
    assert s5 == 200 and "test-topic" in [t["topicName"] for t in topics]


def test_every_path_of_the_seed_api_reference(dev_cluster: dict[str, int]) -> None:
    ports = dev_cluster
    got: dict[str, tuple[int, Any]] = {}
    for method, seed_port, path, body in SEED_API:
        if path.startswith("/api/v1/storage/topics/orders/partitions/0?"):
            wait_for(lambda p=path: http(ports["8082"], p)[0] == 200, what="orders readable")
        got[f"{method} {path}"] = http(ports[seed_port], path, body, method)
    status, c = got["GET /api/v1/metadata/controller"]
    assert status == 200 and c["controllerUrl"].startswith("http://")
    status, cl = got["GET /api/v1/metadata/cluster"]
    assert status == 200 and set(cl) >= {"version", "brokers", "topics", "controllerLeaderId",
                                         "totalPartitions", "controllerInfo",
                                         "activeMetadataNodes"}
    assert cl["controllerInfo"]["controllerId"] == cl["controllerLeaderId"] == c["controllerId"]
    assert sorted(n["nodeId"] for n in cl["activeMetadataNodes"]) == [1, 2, 3]
    assert got["POST /api/v1/metadata/topics"][0] == 201
    status, t = got["GET /api/v1/metadata/topics/orders"]
    assert status == 200 and t["numPartitions"] == 3 and t["replicationFactor"] == 2
    assert got["GET /api/v1/metadata/topics"][0] == 200
    status, b101 = got["GET /api/v1/metadata/brokers/101"]
    assert status == 200 and b101["port"] == ports["8081"] and b101["status"] == "ONLINE"
    assert got["GET /api/v1/raft/status"][1]["nodeId"] == 1
    status, produced = got["POST /api/v1/storage/topics/orders/partitions/0"]
    assert status == 200 and produced["offset"] == 0 and produced["timestamp"] == 1731347234567
    status, fetched = got["GET /api/v1/storage/topics/orders/partitions/0?offset=0&limit=100"]
    assert status == 200 and fetched["records"] == [
        {"offset": 0, "timestamp": 1731347234567, "key": "order-123", "value": "order data..."}]
    status, rep = got["GET /api/v1/storage/replication/status"]
    assert status == 200 and rep["brokerId"] == 101
    assert any(p["topic"] == "orders" for p in rep["partitions"])  # RF 2 of 3 brokers
    # the seed's node-to-node endpoints answer why they are not served, not a 404
    for path in ("/api/v1/metadata/brokers", "/api/v1/metadata/heartbeat/101",
                 "/api/v1/raft/request-vote", "/api/v1/raft/append-entries"):
        status, body = http(ports["9091"], path, {"brokerId": 101}, "POST")
        assert status == 501 and "native protocol" in body["error"], (path, body)


# ---- the seed's services.json, its field values, and bad REST input ---------------------
def test_dmq_server_runs_from_the_seed_services_json(tmp_path: Path) -> None:
    """The exact file of the seed's README (config/services.json), its ports moved to free
    ones; the old code exited 2 with "at least one controller is required"."""
    text = (ROOT / "config" / "services.json").read_text()
    seed_ports = re.findall(r'"port": (\d+)', text)
    mapping = dict(zip(seed_ports, map(str, free_ports(len(seed_ports))), strict=True))
    text = re.sub(r"\b(9091|9092|9093|8081|8082|8083)\b", lambda m: mapping[m.group(1)], text)
    cfg = tmp_path / "services.json"
    cfg.write_text(text)
    port = int(mapping["9091"])
    proc = subprocess.Popen([sys.executable, "-m", "dmq", "server", "--role", "controller",
                             "--node-id", "1", "--config", str(cfg), "--data-dir",
                             str(tmp_path / "d")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is None and http(port, "/healthz", host="localhost")[0]
                 == 200, 20, "node 1 answering HTTP on its own port")
        # the protocol on the very same port still works
        r = subprocess.run([sys.executable, "-m", "dmq", "api-versions", "--bootstrap",
                            f"localhost:{port}"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "API_VERSIONS" in r.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


SETTINGS = {"broker.session.timeout.ms": 1500, "broker.heartbeat.interval.ms": 300}


@pytest.fixture
def small_cluster():
    """One controller and two brokers, each with a separate HTTP port as well (`hp`)."""
    with ProcessCluster(controllers=1, brokers=2, settings=SETTINGS, http=True) as c:
        c.start()
        ctl = hp(c, 1)
        wait_for(lambda: [b["status"] for b in http(ctl, "/api/v1/metadata/brokers")[1]]
                 == ["ONLINE", "ONLINE"], what="two ONLINE brokers")
        yield c


def hp(cluster: ProcessCluster, node_id: int) -> int:
    port = cluster.nodes[node_id].http_port
    assert port is not None
    return port


def test_a_killed_broker_shows_offline(small_cluster: ProcessCluster) -> None:
    ctl = hp(small_cluster, 1)
    small_cluster.kill(102, signal.SIGKILL)
    b = wait_for(lambda: (lambda r: r if r["status"] == "OFFLINE" else None)(
        http(ctl, "/api/v1/metadata/brokers/102")[1]), what="broker 102 OFFLINE")
    assert b["state"] == "FENCED"  # dmq's own value, as an extra field
    status, brokers = http(ctl, "/api/v1/metadata/brokers")
    assert {x["brokerId"]: x["status"] for x in brokers} == {101: "ONLINE", 102: "OFFLINE"}
    status, cl = http(ctl, "/api/v1/metadata/cluster")
    assert {x["brokerId"]: x["status"] for x in cl["brokers"]} == {101: "ONLINE",
                                                                  102: "OFFLINE"}


def test_bad_rest_input_gets_a_4xx_naming_the_problem(small_cluster: ProcessCluster) -> None:
    ctl = hp(small_cluster, 1)
    brk = hp(small_cluster, 101)
    topics = "/api/v1/metadata/topics"
    big = 10**20
    cases: list[tuple[int, str, Any, bytes | None, int, str]] = [
        (ctl, topics, {"topicName": "t", "numPartitions": big, "replicationFactor": 1}, None,
         400, "numPartitions must be in [1, 2147483647]"),
        (ctl, topics, {"topicName": "t", "numPartitions": 1, "replicationFactor": big}, None,
         400, "replicationFactor must be in [1, 32767]"),
        (ctl, topics, {"topicName": "t", "numPartitions": 1, "replicationFactor": 1,
                       "configs": {"retention.ms": {"a": 1}}}, None,
         400, "must be a string or an integer, got an object"),
        (ctl, topics, None, b"[" * 100_000 + b"]" * 100_000, 400, "nested deeper than 32"),
        (ctl, topics, None, b'{"topicName": "\\ud800x"}', 400, "not valid Unicode"),
        (ctl, topics, None, b"{" + b" " * (2 * 1024 * 1024) + b"}", 413,
         "body exceeds 1048576 bytes"),
        (brk, "/api/v1/storage/topics/good/partitions/0", {"key": {"a": 1}, "value": "v"},
         None, 400, "key must be a string or null, got an object"),
        (brk, "/api/v1/storage/topics/good/partitions/0", {"key": "k", "value": 5}, None,
         400, "value must be a string or null, got a number"),
        (brk, "/api/v1/storage/topics/good/partitions/0", None,
         b'{"key": "\\udc80", "value": "v"}', 400, "key is not valid Unicode"),
        (brk, "/api/v1/storage/topics/good/partitions/0", {"value": "v", "timestamp": big},
         None, 400, "timestamp (ms) must be in [0, 9223372036854775807]"),
        (brk, "/api/v1/storage/topics/good/partitions/0", None,
         b'{"value": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "nested deeper"),
        (brk, f"/api/v1/storage/topics/good/partitions/{big}", {"value": "v"}, None,
         400, "partition must be in [0, 2147483647]"),
        (brk, f"/api/v1/storage/topics/good/partitions/0?offset={big}", None, None,
         400, "offset must be in [0, 9223372036854775807]"),
        (brk, "/api/v1/storage/topics/good/partitions/0?offset=0&limit=0", None, None,
         400, "limit must be in [1, 10000]"),
        (ctl, f"/api/v1/metadata/brokers/{big}", None, None, 400, "broker id must be in"),
    ]
    assert http(ctl, topics, {"topicName": "good", "numPartitions": 1,
                              "replicationFactor": 2})[0] == 201
    for port, path, body, raw, want_status, want in cases:
        method = "POST" if body is not None or raw is not None else "GET"
        status, answer = http(port, path, body, method, raw)
        assert status == want_status and want in answer["error"], (path, body, raw and
                                                                  raw[:40], answer)
    # nothing was stored as a Python repr, and the nodes answer as before
    status, produced = http(brk, "/api/v1/storage/topics/good/partitions/0",
                            {"key": "k", "value": "v"}, "POST")
    assert status == 200 and produced["offset"] == 0
    status, fetched = http(brk, "/api/v1/storage/topics/good/partitions/0?offset=0")
    assert [(r["key"], r["value"]) for r in fetched["records"]] == [("k", "v")]
    assert all(n.alive for n in small_cluster.nodes.values())


def _undecodable_batch(base_offset: int, timestamp_ms: int) -> bytes:
    """A batch with a valid header and CRC whose records are not msgpack."""
    b = bytearray(encode_batch([[0, b"key", b"value", []]], base_offset, timestamp_ms,
                               timestamp_ms, partition_leader_epoch=0))
    b[HEADER_SIZE:] = b"\xc1" * (len(b) - HEADER_SIZE)  # 0xc1: never used in msgpack
    from crc32c import crc32c

    struct.pack_into(">I", b, 17, crc32c(bytes(b[21:])))
    return bytes(b)


def test_a_stored_record_that_does_not_decode_gets_a_clear_error(tmp_path: Path) -> None:
    """Written into the segment behind the broker's back (a broker that validates what
    it is sent never stores it): the REST GET names the offsets, never a 500."""
    with ProcessCluster(controllers=1, combined=True) as c:
        c.start()
        port = c.nodes[1].port
        wait_for(lambda: http(port, "/api/v1/metadata/topics", {"topicName": "bad",
                 "numPartitions": 1, "replicationFactor": 1}, "POST")[0] in (201, 409),
                 what="topic created")
        path = "/api/v1/storage/topics/bad/partitions/0"
        for i in range(2):
            assert wait_for(lambda i=i: http(port, path, {"value": f"v{i}"}, "POST")[0] == 200,
                            what="produce")
        c.kill(1, signal.SIGTERM)
        (segment,) = (c.nodes[1].data_dir / "partitions" / "bad-0").glob("*.log")
        with open(segment, "ab") as f:
            f.write(_undecodable_batch(2, int(time.time() * 1000)))
        c.start(1)
        wait_for(lambda: http(port, path, {"value": "v3"}, "POST")[0] == 200, what="produce")

        status, body = http(port, path + "?offset=0")
        assert status == 200 and [r["value"] for r in body["records"]] == ["v0", "v1"]
        assert body["error"]["offset"] == 2 and body["error"]["nextOffset"] == 3
        assert "cannot be decoded" in body["error"]["error"]
        status, body = http(port, path + "?offset=2")
        assert status == 422 and body["code"] == "CORRUPT_MESSAGE", body
        assert "records at offsets 2..2 cannot be decoded" in body["error"]
        status, body = http(port, path + f"?offset={body['nextOffset']}")
        assert status == 200 and [r["value"] for r in body["records"]] == ["v3"]
        assert c.nodes[1].alive
