"""Abuse probes against the controller quorum's Raft (issue #25 items 1, 2 and the
crash-only rule; issue #24 item 1), with real `dmq server` processes on loopback.

Each cluster-killer probe sends exactly the frame of its reproduction and ends with the
suite's health check: `dmq cluster status` names an active controller within 10 s and
every acknowledged canary record is readable. The probes put raw frames on the wire,
so they hold whatever check a connection passes before reaching Raft: the refusals
tested here happen where the messages are decoded and stepped.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest

from dmq.cli.dev import ensure_topic
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import ErrorCode, InvalidReplicationFactorError, is_retriable
from tests.abuse.support import (
    assert_cluster_healthy,
    canary_cluster,
    frame,
    request_raw,
)
from tests.abuse.wire import call, identify
from tests.support.procs import ProcessCluster, wait_port
from tests.support.waiting import wait_until as wait_for

pytestmark = pytest.mark.slow

SETTINGS = {"broker.session.timeout.ms": 3000, "broker.heartbeat.interval.ms": 300,
            "auto.leader.rebalance.enable": False}


def raft_status(port: int) -> dict[str, Any] | None:
    try:
        resp = request_raw(port, [ApiKey.RAFT_STATUS, 0, 1, "abuse", {}], timeout_s=2.0)
    except OSError:
        return None
    return resp[2] if resp is not None and resp[1] == 0 else None


def leader_and_follower(pc: ProcessCluster) -> tuple[int, int]:
    def find() -> tuple[int, int] | None:
        st = {i: raft_status(pc.nodes[i].port) for i in pc.controller_ids}
        leaders = [i for i, s in st.items() if s is not None and s["role"] == "LEADER"]
        if len(leaders) != 1:
            return None
        followers = [i for i, s in st.items()
                     if s is not None and s["role"] == "FOLLOWER" and s["leader_id"] == leaders[0]]
        return (leaders[0], followers[0]) if followers else None

    return wait_for(find, 10, "one controller leader with a follower")


def controller_terms(pc: ProcessCluster) -> dict[int, int]:
    return {i: (raft_status(pc.nodes[i].port) or {"term": -1})["term"] for i in pc.controller_ids}


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[ProcessCluster, list[bytes]]]:
    with canary_cluster(SETTINGS) as started:
        yield started


def request_as(port: int, node_id: int, obj: Any) -> Any:
    """One request on a connection that identified itself as `node_id`: what a sender
    that passes the inter-node check (a real node gone wrong, or a forged identity
    while identities are taken on trust) can put in front of Raft."""
    sock = identify(port, node_id)
    try:
        return call(sock, obj)
    finally:
        sock.close()


def test_forged_heartbeat_with_a_term_past_64_bits_is_refused(
        cluster: tuple[ProcessCluster, list[bytes]]) -> None:
    # issue #25 item 1: this one frame moved every controller to term 2**64-1, where
    # they stayed PRE_CANDIDATE for good, across restarts
    pc, canary = cluster
    leader, follower = leader_and_follower(pc)
    port = pc.nodes[follower].port
    # from an anonymous connection it is refused at the door now (inter-node API)
    resp = request_raw(port, [1004, 0, 1, "x",
                              {"from": leader, "msg": [5, leader, follower, 2**64 - 1, 0, 0]}])
    assert resp is not None and resp[1] == ErrorCode.CLUSTER_AUTHORIZATION_FAILED, resp
    resp = request_as(port, leader, [1004, 0, 1, "x",
                      {"from": leader, "msg": [5, leader, follower, 2**64 - 1, 0, 0]}])
    assert resp is not None and resp[1] == ErrorCode.INVALID_REQUEST, resp
    assert "2**63-1" in resp[2]["msg"]
    # the largest i64 passes the wire check; the core refuses such a jump of its term
    resp = request_as(port, leader, [1004, 0, 2, "x",
                      {"from": leader, "msg": [5, leader, follower, 2**63 - 1, 0, 0]}])
    assert resp is not None and resp[1] == 0, resp
    wait_for(lambda: (raft_status(port) or {}).get("refused_messages", 0) >= 1, 5,
             "the follower's core refused the jump")
    asyncio.run(assert_cluster_healthy(pc, canary))
    terms = controller_terms(pc)
    assert all(0 < t < 2**32 for t in terms.values()), terms


def test_forged_append_with_an_entry_that_does_not_decode_is_refused(
        cluster: tuple[ProcessCluster, list[bytes]]) -> None:
    # issue #25 item 2: the entry was appended, replicated, committed ("metadata entry
    # N does not decode; skipped") and the old leader's Raft loop died on an assertion
    pc, canary = cluster
    leader, follower = leader_and_follower(pc)
    st = raft_status(pc.nodes[follower].port)
    assert st is not None
    term, last = st["term"], st["last_log_index"]
    forged = [3, leader, follower, term, last, term, last + 1, [[term, 0, b"\xc1forged"]]]
    resp = request_as(pc.nodes[follower].port, leader,
                      [1001, 0, 1, "x", {"from": leader, "msg": forged}])
    assert resp is not None and resp[1] == ErrorCode.INVALID_REQUEST, resp
    assert "cannot apply it" in resp[2]["msg"] and "not msgpack" in resp[2]["msg"]
    # msgpack, but not records: applying it would fail on every controller alike
    forged[7] = [[term, 0, msgpack.packb([[99, "x"]])]]
    resp = request_as(pc.nodes[follower].port, leader,
                      [1001, 0, 2, "x", {"from": leader, "msg": forged}])
    assert resp is not None and resp[1] == ErrorCode.INVALID_REQUEST, resp
    assert "bad metadata record" in resp[2]["msg"]
    asyncio.run(assert_cluster_healthy(pc, canary))
    for i in pc.controller_ids:
        text = pc.nodes[i].log_text()
        assert pc.nodes[i].alive, f"controller {i} exited:\n{text[-2000:]}"
        assert "does not decode" not in text and "CRITICAL" not in text, text[-2000:]


def test_leader_that_loses_its_quorum_answers_waiting_writes_not_controller_at_once() -> None:
    # issue #24 item 1: writes waiting on an isolated leader's proposals were answered
    # "proposal not done in 10000 ms" ten seconds after it had stepped down
    with ProcessCluster(controllers=3) as pc:
        pc.start()

        def active_leader() -> int | None:
            # a Raft leader is an active controller only once an entry of its term has
            # committed: stopping the followers before that would leave it answering
            # "not active yet" instead of stepping down with its proposals
            leader, _ = leader_and_follower(pc)
            r = request_raw(pc.nodes[leader].port, [ApiKey.INIT_PRODUCER_ID, 0, 6, "a", {}])
            return leader if r is not None and r[1] == 0 else None

        leader = wait_for(active_leader, 15, "an active controller")
        followers = [i for i in pc.controller_ids if i != leader]
        for i in followers:
            pc.signal(i, signal.SIGSTOP)
        try:
            # an INIT_PRODUCER_ID is one metadata write; with no quorum it cannot commit
            resp = request_raw(pc.nodes[leader].port,
                               [ApiKey.INIT_PRODUCER_ID, 0, 7, "abuse", {}], timeout_s=30)
            st = raft_status(pc.nodes[leader].port)
        finally:
            for i in followers:
                pc.signal(i, signal.SIGCONT)
        assert resp is not None and resp[0] == 7
        assert resp[1] == ErrorCode.NOT_CONTROLLER, resp  # retriable: the client moves on
        assert "is not the leader" in resp[2]["msg"]
        assert st is not None and st["role"] != "LEADER"
        # once the others run again a controller is active and the write goes through
        def init_producer() -> Any:
            for i in pc.controller_ids:
                r = request_raw(pc.nodes[i].port, [ApiKey.INIT_PRODUCER_ID, 0, 8, "a", {}])
                if r is not None and r[1] == 0:
                    return r
            return None

        assert wait_for(init_producer, 10, "an active controller")[2]["producer_id"] >= 0
        assert "never retrieved" not in pc.nodes[leader].log_text()


def _requests_in_one_write(port: int, requests: list[Any], timeout_s: float) -> list[Any]:
    """Send every request frame in one write; the decoded responses, by correlation id."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(b"".join(frame(r) for r in requests))
        buf = b""
        out: dict[int, Any] = {}
        while len(out) < len(requests):
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            buf += chunk
            while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                n = struct.unpack(">I", buf[:4])[0]
                resp = msgpack.unpackb(buf[4:4 + n], raw=False, strict_map_key=False)
                out[resp[0]] = resp
                buf = buf[4 + n:]
    return [out.get(r[2]) for r in requests]


def test_offset_commits_batched_past_the_frame_limit_force_no_failover() -> None:
    # issue #25 item 8: concurrent commits with huge metadata were batched into one
    # 141,557,914-byte Raft entry, the followers refused the frame ("exceeds the limit
    # of 104857600") and an election followed. Scaled down: frames of at most 256 KiB,
    # four commits of 100 KB metadata sent together (the first is proposed alone, the
    # other three arrive while it is in flight and are batched into one entry).
    limit = 256 * 1024
    with ProcessCluster(controllers=3, brokers=1,
                        settings={**SETTINGS, "max.frame.bytes": limit}) as pc:
        pc.start()
        asyncio.run(ensure_topic(pc.bootstrap, "offsets", 1, 1, timeout_s=30))
        leader, _ = leader_and_follower(pc)
        terms = controller_terms(pc)
        commits = [[ApiKey.OFFSET_COMMIT, 0, corr, "abuse",
                    {"group_id": f"g{corr}", "member_id": "", "member_epoch": -1,
                     "topics": [["offsets", [[0, corr, "m" * 100_000]]]]}]
                   for corr in (1, 2, 3, 4)]
        answers = _requests_in_one_write(pc.nodes[leader].port, commits, timeout_s=30)
        assert all(a is not None for a in answers), answers
        codes = sorted(a[1] for a in answers)
        # an entry too large is never sent: its commits fail at once with an error that
        # is not retriable and names the limit (a commit proposed alone may succeed)
        assert all(c == 0 or not is_retriable(ErrorCode(c)) for c in codes), answers
        refused = [a for a in answers if a[1] == ErrorCode.RECORD_LIST_TOO_LARGE]
        assert all(f"exceeds the limit of {limit - 64 * 1024}" in a[2]["msg"]
                   for a in refused)
        assert controller_terms(pc) == terms  # no election
        assert raft_status(pc.nodes[leader].port)["role"] == "LEADER"  # type: ignore[index]
        small = [ApiKey.OFFSET_COMMIT, 0, 9, "abuse",
                 {"group_id": "g9", "member_id": "", "member_epoch": -1,
                  "topics": [["offsets", [[0, 5, "m"]]]]}]
        assert request_raw(pc.nodes[leader].port, small)[1] == 0


# A node whose essential task dies must end (crash-only). No request kills one since
# the fixes above, so these probes run a real `dmq server` with a fault injected by the
# test's own launcher (not by dmq) once a marker file exists: in the controller's
# metadata state machine (under the Raft pump), or in the broker's metadata loop.
_FAULTY_SERVER = """
import os
import sys
from dmq.broker import lifecycle
from dmq.controller import state_machine
from dmq.cli import main

marker = os.environ["DMQ_TEST_FAULT_MARKER"]

def faulty(real):
    def wrapper(*args, **kwargs):
        if os.path.exists(marker):
            raise RuntimeError("injected fault")
        return real(*args, **kwargs)
    return wrapper

state_machine.MetadataStateMachine.apply = faulty(state_machine.MetadataStateMachine.apply)
# a fetch that does not apply is survived (the broker reports not ready and refetches a
# snapshot); the loop dies when that handling itself fails
lifecycle.BrokerLifecycle._apply_fetch = faulty(lifecycle.BrokerLifecycle._apply_fetch)
lifecycle.BrokerLifecycle._set_metadata_error = faulty(
    lifecycle.BrokerLifecycle._set_metadata_error)
sys.argv[0] = "dmq"
main()
"""


def _start_faulty(pc: ProcessCluster, node_id: int) -> None:
    node = pc.nodes[node_id]
    logf = open(node.log_path, "ab")  # noqa: SIM115 - closed right after Popen
    node.proc = subprocess.Popen(
        [sys.executable, "-c", _FAULTY_SERVER, "server", "--role", node.role,
         "--node-id", str(node_id), "--config", str(pc.config_path), "--data-dir",
         str(node.data_dir)],
        stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "PYTHONPATH": os.getcwd(),
             "DMQ_TEST_FAULT_MARKER": str(pc.root / f"fault-{node_id}")})
    logf.close()
    wait_port(node.port)


def _assert_exits_with_one_critical_line(pc: ProcessCluster, node_id: int, task: str) -> None:
    node = pc.nodes[node_id]
    assert node.proc is not None
    try:
        rc = node.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"node {node_id} lingers with a dead {task}:\n{node.log_text()[-2000:]}")
    text = node.log_text()
    assert rc == 70, text[-2000:]
    critical = [line for line in text.splitlines() if "CRITICAL" in line]
    assert len(critical) == 1, critical
    assert f"{task} died: RuntimeError: injected fault" in critical[0], critical


def test_controller_whose_raft_loop_dies_exits_instead_of_lingering() -> None:
    # issue #25 item 2: after "CRITICAL raft pump died" the process stayed up, reported
    # LEADER and answered NODE_SHUTTING_DOWN until someone restarted it
    with ProcessCluster(controllers=1) as pc:
        _start_faulty(pc, 1)
        wait_for(lambda: (raft_status(pc.nodes[1].port) or {}).get("role") == "LEADER", 10,
                 "the controller leads")
        (pc.root / "fault-1").touch()
        # any metadata write now makes the state machine fail under the Raft pump
        request_raw(pc.nodes[1].port, [ApiKey.INIT_PRODUCER_ID, 0, 1, "abuse", {}],
                    timeout_s=15)
        _assert_exits_with_one_critical_line(pc, 1, "raft task raft-1-pump")


def test_broker_whose_metadata_loop_dies_exits_instead_of_serving_blind() -> None:
    with ProcessCluster(controllers=1, brokers=1, settings=SETTINGS) as pc:
        pc.start(1)
        _start_faulty(pc, 101)
        asyncio.run(ensure_topic(pc.bootstrap, "before", 1, 1, timeout_s=30))
        (pc.root / "fault-101").touch()
        # the next metadata change reaches the broker's metadata loop, which now fails. Any
        # record does: one the controller writes on its own (a broker heartbeat's change)
        # can get there first, the broker is then gone and "after" is refused for want of
        # a broker, so the topic is only the trigger, its outcome is not the point
        node = pc.nodes[101]
        assert node.proc is not None
        if node.proc.poll() is None:
            try:
                asyncio.run(ensure_topic(pc.bootstrap, "after", 1, 1, timeout_s=30))
            except InvalidReplicationFactorError:
                pass
        _assert_exits_with_one_critical_line(pc, 101, "broker task broker-101-metadata")
