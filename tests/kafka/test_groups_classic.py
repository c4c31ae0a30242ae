"""Kafka's classic group protocol against real `dmq server` processes on loopback:
confluent-kafka consumers in one group split a topic's partitions, consume every
record once and commit (visible in `dmq groups describe`); a member leaving moves its
partitions; kafka-python's group consumer; an opaque-protocol group whose leader's
bytes go back exactly through raw JoinGroup/SyncGroup frames; the classic errors."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from tests.kafka.clients import Member, bootstrap, create_topic, dmq_cli, produce
from tests.kafka.support import KafkaConn, needs_kcat
from tests.support.procs import ProcessCluster
from tests.support.waiting import wait_until

ck = pytest.importorskip("confluent_kafka")

pytestmark = pytest.mark.slow

ILLEGAL_GENERATION = 22
UNKNOWN_MEMBER_ID = 25
REBALANCE_IN_PROGRESS = 27
MEMBER_ID_REQUIRED = 79


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_three_confluent_consumers_split_six_partitions(
        cluster: tuple[ProcessCluster, dict[int, int]], strategy: str) -> None:
    pc, ports = cluster
    topic, group = f"six-{strategy}", f"trio-{strategy}"
    create_topic(ports, topic, 6, 2)
    produce(ports, topic, 60, 6)
    members = [Member(ports, group, topic, strategy) for _ in range(3)]
    try:
        def split() -> bool:
            owned = [m.assignment() for m in members]
            return all(len(o) == 2 for o in owned) and set().union(*owned) == set(range(6))
        wait_until(split, 30, "three members owning two partitions each")

        def all_read() -> bool:
            return sum(len(m.records) for m in members) >= 60
        wait_until(all_read, 30, "every record consumed")
        seen = [r for m in members for r in m.records]
        assert sorted(seen) == sorted({(p, o) for p in range(6) for o in range(10)})

        def committed() -> bool:
            d = json.loads(dmq_cli(pc, "groups", "describe", group, "--json"))
            return [(p["partition"], p["committed"]) for p in d["partitions"]] == [
                (p, 10) for p in range(6)]
        wait_until(committed, 20, "commits of offset 10 on every partition")
        d = json.loads(dmq_cli(pc, "groups", "describe", group, "--json"))
        assert d["total_lag"] == 0 and len(d["members"]) == 3
        assert sorted(p for m in d["members"] for _, p in m["assignment"]) == \
            list(range(6))

        # one member leaves: the other two take over its partitions
        gone = members.pop()
        gone.close()

        def two_left() -> bool:
            owned = [m.assignment() for m in members]
            return all(len(o) == 3 for o in owned) and set().union(*owned) == set(range(6))
        wait_until(two_left, 30, "two members owning three partitions each")
        produce(ports, topic, 12, 6)
        wait_until(lambda: sum(len(m.records) for m in members) + len(gone.records) >= 72,
                   30, "the new records consumed by the remaining two")
        seen = [r for m in [*members, gone] for r in m.records]
        assert len(seen) == len(set(seen)) == 72
    finally:
        for m in members:
            m.close()


def _join(conn: KafkaConn, member_id: str, meta: bytes, version: int = 9) -> dict[str, Any]:
    return conn.request("JoinGroup", version, {
        "GroupId": "opaque", "SessionTimeoutMs": 10_000, "RebalanceTimeoutMs": 10_000,
        "MemberId": member_id, "GroupInstanceId": None, "ProtocolType": "connect",
        "Protocols": [{"Name": "sessioned", "Metadata": meta}], "Reason": None})


def test_opaque_protocol_group_round_trips_the_leaders_bytes(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    _, ports = cluster
    meta = bytes(range(256)) * 3
    assignment = b"\x00\xffleader's opaque assignment\x00" + bytes(range(255, -1, -1))
    with KafkaConn(ports[101]) as conn:
        a = _join(conn, "", meta)
        assert a["ErrorCode"] == MEMBER_ID_REQUIRED and a["MemberId"]
        mid = a["MemberId"]
        a = _join(conn, mid, meta)
        assert a["ErrorCode"] == 0 and a["Leader"] == mid and a["ProtocolType"] == "connect"
        assert a["ProtocolName"] == "sessioned"
        assert [(m["MemberId"], m["Metadata"]) for m in a["Members"]] == [(mid, meta)]
        gen = a["GenerationId"]
        s = conn.request("SyncGroup", 5, {
            "GroupId": "opaque", "GenerationId": gen, "MemberId": mid,
            "GroupInstanceId": None, "ProtocolType": "connect", "ProtocolName": "sessioned",
            "Assignments": [{"MemberId": mid, "Assignment": assignment}]})
        assert (s["ErrorCode"], s["Assignment"]) == (0, assignment)
        # a stable member's SyncGroup again: the same bytes
        s = conn.request("SyncGroup", 3, {"GroupId": "opaque", "GenerationId": gen,
                                          "MemberId": mid, "GroupInstanceId": None,
                                          "Assignments": []})
        assert (s["ErrorCode"], s["Assignment"]) == (0, assignment)
        h = conn.request("Heartbeat", 4, {"GroupId": "opaque", "GenerationId": gen,
                                          "MemberId": mid, "GroupInstanceId": None})
        assert h["ErrorCode"] == 0
        h = conn.request("Heartbeat", 0, {"GroupId": "opaque", "GenerationId": gen - 1,
                                          "MemberId": mid})
        assert h["ErrorCode"] == ILLEGAL_GENERATION
        h = conn.request("Heartbeat", 2, {"GroupId": "opaque", "GenerationId": gen,
                                          "MemberId": "stranger"})
        assert h["ErrorCode"] == UNKNOWN_MEMBER_ID
        # a commit with a stale generation is fenced; with the current one it lands
        c = conn.request("OffsetCommit", 8, {
            "GroupId": "opaque", "GenerationIdOrMemberEpoch": gen - 1, "MemberId": mid,
            "GroupInstanceId": None, "Topics": []})
        assert c["Topics"] == []
        l_ = conn.request("LeaveGroup", 5, {"GroupId": "opaque", "Members": [
            {"MemberId": mid, "GroupInstanceId": None, "Reason": None}]})
        assert l_["ErrorCode"] == 0 and l_["Members"][0]["ErrorCode"] == 0
        h = conn.request("Heartbeat", 4, {"GroupId": "opaque", "GenerationId": gen,
                                          "MemberId": mid, "GroupInstanceId": None})
        assert h["ErrorCode"] == UNKNOWN_MEMBER_ID


def test_second_member_joining_rebalances_the_first(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    _, ports = cluster
    with KafkaConn(ports[101]) as c1, KafkaConn(ports[102]) as c2:
        m1 = _join(c1, "", b"one")["MemberId"]
        first = _join(c1, m1, b"one")
        assert first["ErrorCode"] == 0
        gen = first["GenerationId"]
        m2 = _join(c2, "", b"two")["MemberId"]
        # the second join waits for the first member to rejoin: send it, then heartbeat
        c2.send("JoinGroup", 9, {
            "GroupId": "opaque", "SessionTimeoutMs": 10_000, "RebalanceTimeoutMs": 10_000,
            "MemberId": m2, "GroupInstanceId": None, "ProtocolType": "connect",
            "Protocols": [{"Name": "sessioned", "Metadata": b"two"}], "Reason": None})
        wait_until(lambda: c1.request("Heartbeat", 4, {
            "GroupId": "opaque", "GenerationId": gen, "MemberId": m1,
            "GroupInstanceId": None})["ErrorCode"] == REBALANCE_IN_PROGRESS, 10,
            "the first member told to rejoin")
        again = _join(c1, m1, b"one")
        _, second = c2.receive("JoinGroup", 9)
        assert again["GenerationId"] == second["GenerationId"] == gen + 1
        assert again["Leader"] == m1 and sorted(
            (m["MemberId"], m["Metadata"]) for m in again["Members"]) == sorted(
            [(m1, b"one"), (m2, b"two")])
        assert second["Members"] == []
        for conn, mid in ((c1, m1), (c2, m2)):
            conn.request("LeaveGroup", 3, {"GroupId": "opaque", "Members": [
                {"MemberId": mid, "GroupInstanceId": None}]})


def test_list_describe_delete_groups(cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    _, ports = cluster
    create_topic(ports, "adm", 1, 1)
    meta, assignment = b"\x01member-meta", b"\x02leader-bytes"
    with KafkaConn(ports[102]) as conn:
        body = {"GroupId": "adm-g", "SessionTimeoutMs": 10_000, "RebalanceTimeoutMs": 10_000,
                "MemberId": "", "GroupInstanceId": "inst-1", "ProtocolType": "connect",
                "Protocols": [{"Name": "p1", "Metadata": meta}], "Reason": None}
        a = conn.request("JoinGroup", 9, body)  # static: no MEMBER_ID_REQUIRED round
        assert a["ErrorCode"] == 0 and a["MemberId"].startswith("inst-1-")
        mid, gen = a["MemberId"], a["GenerationId"]
        s = conn.request("SyncGroup", 5, {
            "GroupId": "adm-g", "GenerationId": gen, "MemberId": mid,
            "GroupInstanceId": "inst-1", "ProtocolType": "connect", "ProtocolName": "p1",
            "Assignments": [{"MemberId": mid, "Assignment": assignment}]})
        assert s["ErrorCode"] == 0
        c = conn.request("OffsetCommit", 8, {
            "GroupId": "adm-g", "GenerationIdOrMemberEpoch": gen, "MemberId": mid,
            "GroupInstanceId": "inst-1", "Topics": [{"Name": "adm", "Partitions": [
                {"PartitionIndex": 0, "CommittedOffset": 0, "CommittedLeaderEpoch": -1,
                 "CommittedMetadata": None}]}]})
        assert c["Topics"][0]["Partitions"][0]["ErrorCode"] == 0

        listed = conn.request("ListGroups", 5, {"StatesFilter": [], "TypesFilter": []})
        assert {"GroupId": "adm-g", "ProtocolType": "connect", "GroupState": "Stable",
                "GroupType": "classic"} in listed["Groups"]
        listed = conn.request("ListGroups", 4, {"StatesFilter": ["Empty"]})
        assert "adm-g" not in [g["GroupId"] for g in listed["Groups"]]
        d = conn.request("DescribeGroups", 5, {"Groups": ["adm-g", "no-such-group"],
                                               "IncludeAuthorizedOperations": False})
        g, missing = d["Groups"]
        assert (g["ErrorCode"], g["GroupState"], g["ProtocolType"], g["ProtocolData"]) == (
            0, "Stable", "connect", "p1")
        assert [(m["MemberId"], m["GroupInstanceId"], m["MemberMetadata"],
                 m["MemberAssignment"]) for m in g["Members"]] == [
            (mid, "inst-1", meta, assignment)]
        assert (missing["ErrorCode"], missing["GroupState"]) == (0, "Dead")

        r = conn.request("DeleteGroups", 2, {"GroupsNames": ["adm-g"]})
        assert r["Results"] == [{"GroupId": "adm-g", "ErrorCode": 68}]  # NON_EMPTY_GROUP
        left = conn.request("LeaveGroup", 4, {"GroupId": "adm-g", "Members": [
            {"MemberId": "", "GroupInstanceId": "inst-1"}]})
        assert left["Members"][0]["ErrorCode"] == 0
        r = conn.request("DeleteGroups", 2, {"GroupsNames": ["adm-g", "no-such-group"]})
        assert r["Results"] == [{"GroupId": "adm-g", "ErrorCode": 0},
                                {"GroupId": "no-such-group", "ErrorCode": 69}]
        f = conn.request("OffsetFetch", 7, {"GroupId": "adm-g", "Topics": None,
                                            "RequireStable": False})
        assert f["Topics"] == []


def test_kafka_python_group_consumer(cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    kafka = pytest.importorskip("kafka")
    pc, ports = cluster
    create_topic(ports, "kp", 2, 2)
    produce(ports, "kp", 8, 2)
    consumer = kafka.KafkaConsumer(
        "kp", bootstrap_servers=bootstrap(ports).split(","), group_id="kp-group",
        auto_offset_reset="earliest", enable_auto_commit=False,
        session_timeout_ms=6000, heartbeat_interval_ms=300, consumer_timeout_ms=500)
    try:
        got: list[tuple[int, int]] = []
        deadline = time.monotonic() + 30
        while len(got) < 8 and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                got += [(r.partition, r.offset) for r in batch]
        assert sorted(got) == [(p, o) for p in range(2) for o in range(4)]
        consumer.commit()
        assert {tp.partition for tp in consumer.assignment()} == {0, 1}
    finally:
        consumer.close()
    d = json.loads(dmq_cli(pc, "groups", "describe", "kp-group", "--json"))
    assert [(p["partition"], p["committed"]) for p in d["partitions"]] == [(0, 4), (1, 4)]


def test_aiokafka_group_consumer(cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    aiokafka = pytest.importorskip("aiokafka")
    import asyncio

    pc, ports = cluster
    create_topic(ports, "aio", 2, 2)
    produce(ports, "aio", 6, 2)

    async def consume() -> list[tuple[int, int]]:
        consumer = aiokafka.AIOKafkaConsumer(
            "aio", bootstrap_servers=bootstrap(ports), group_id="aio-group",
            auto_offset_reset="earliest", enable_auto_commit=False,
            session_timeout_ms=6000, heartbeat_interval_ms=300)
        await consumer.start()
        try:
            got: list[tuple[int, int]] = []
            async with asyncio.timeout(30):
                while len(got) < 6:
                    for batch in (await consumer.getmany(timeout_ms=200)).values():
                        got += [(r.partition, r.offset) for r in batch]
            await consumer.commit()
            return got
        finally:
            await consumer.stop()

    got = asyncio.run(consume())
    assert sorted(got) == [(p, o) for p in range(2) for o in range(3)]
    d = json.loads(dmq_cli(pc, "groups", "describe", "aio-group", "--json"))
    assert [(p["partition"], p["committed"]) for p in d["partitions"]] == [(0, 3), (1, 3)]


FENCED_INSTANCE_ID = 82


def _static_join_body(group: str, instance: str, member_id: str = "",
                      session_ms: int = 10_000, rebalance_ms: int = 10_000,
                      metadata: bytes | None = None) -> dict[str, Any]:
    """JoinGroup v9 of a static member (metadata: its instance id unless given)."""
    return {"GroupId": group, "SessionTimeoutMs": session_ms,
            "RebalanceTimeoutMs": rebalance_ms, "MemberId": member_id,
            "GroupInstanceId": instance, "ProtocolType": "consumer",
            "Protocols": [{"Name": "range", "Metadata": instance.encode()
                           if metadata is None else metadata}], "Reason": None}


def _static_join(conn: KafkaConn, group: str, instance: str, member_id: str = "",
                 session_ms: int = 10_000) -> dict[str, Any]:
    return conn.request("JoinGroup", 9, _static_join_body(group, instance, member_id,
                                                          session_ms))


def _heartbeat(conn: KafkaConn, group: str, gen: int, mid: str,
               instance: str | None = None) -> int:
    return int(conn.request("Heartbeat", 4, {"GroupId": group, "GenerationId": gen,
                                             "MemberId": mid,
                                             "GroupInstanceId": instance})["ErrorCode"])


def test_static_member_restart_gets_its_assignment_back_without_rebalance(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    _, ports = cluster
    with KafkaConn(ports[101]) as ca, KafkaConn(ports[102]) as cb:
        # both join one generation (the initial delay gathers them)
        cb.send("JoinGroup", 9, _static_join_body("static", "b"))
        a = _static_join(ca, "static", "a")
        _, b = cb.receive("JoinGroup", 9)
        assert a["ErrorCode"] == b["ErrorCode"] == 0
        assert a["GenerationId"] == b["GenerationId"]
        gen = a["GenerationId"]
        leader, follower = (a, b) if a["Leader"] == a["MemberId"] else (b, a)
        lconn, fconn = (ca, cb) if leader is a else (cb, ca)
        finst = "b" if follower is b else "a"
        shares = {leader["MemberId"]: b"leader-share", follower["MemberId"]: b"follower-share"}
        fconn.send("SyncGroup", 5, {"GroupId": "static", "GenerationId": gen,
                                    "MemberId": follower["MemberId"],
                                    "GroupInstanceId": finst, "ProtocolType": "consumer",
                                    "ProtocolName": "range", "Assignments": []})
        s = lconn.request("SyncGroup", 5, {
            "GroupId": "static", "GenerationId": gen, "MemberId": leader["MemberId"],
            "GroupInstanceId": "a" if finst == "b" else "b", "ProtocolType": "consumer",
            "ProtocolName": "range",
            "Assignments": [{"MemberId": m, "Assignment": v} for m, v in shares.items()]})
        assert s["Assignment"] == b"leader-share"
        _, fs = fconn.receive("SyncGroup", 5)
        assert fs["Assignment"] == b"follower-share"

    # the follower "restarts": a new connection, no member id, the same instance id
    with KafkaConn(ports[101]) as again, KafkaConn(ports[102]) as lconn2:
        r = _static_join(again, "static", finst)
        assert r["ErrorCode"] == 0 and r["GenerationId"] == gen and r["Members"] == []
        assert r["MemberId"] != follower["MemberId"]
        s = again.request("SyncGroup", 5, {"GroupId": "static", "GenerationId": gen,
                                           "MemberId": r["MemberId"], "GroupInstanceId": finst,
                                           "ProtocolType": "consumer", "ProtocolName": "range",
                                           "Assignments": []})
        assert (s["ErrorCode"], s["Assignment"]) == (0, b"follower-share")
        # no rebalance for the leader; the old incarnation is fenced
        linst = "a" if finst == "b" else "b"
        assert _heartbeat(lconn2, "static", gen, leader["MemberId"], linst) == 0
        assert _heartbeat(lconn2, "static", gen, follower["MemberId"], finst) == \
            FENCED_INSTANCE_ID


def test_silent_member_is_dropped_after_its_session_timeout(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    _, ports = cluster
    with KafkaConn(ports[101]) as c1, KafkaConn(ports[102]) as c2:
        c2.send("JoinGroup", 9, _static_join_body("silent", "quiet", session_ms=1000,
                                                  rebalance_ms=1000, metadata=b""))
        a = _static_join(c1, "silent", "loud", session_ms=10_000)
        _, b = c2.receive("JoinGroup", 9)
        gen = a["GenerationId"]
        assert b["GenerationId"] == gen
        # "quiet" never heartbeats: within its 1 s session it is dropped and "loud" is
        # told to rejoin
        code = wait_until(lambda: _heartbeat(c1, "silent", gen, a["MemberId"], "loud"), 10,
                          "an answer other than NONE to loud's heartbeats", interval_s=0.1)
        assert code == REBALANCE_IN_PROGRESS
        r = _static_join(c1, "silent", "loud", member_id=a["MemberId"])
        assert r["GenerationId"] == gen + 1 and [m["MemberId"] for m in r["Members"]] == [
            a["MemberId"]]
        assert _heartbeat(c2, "silent", gen, b["MemberId"], "quiet") == UNKNOWN_MEMBER_ID


def test_readme_three_member_example_works_as_printed(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    """README's "Consumer groups" example, with only its bootstrap ports moved."""
    import subprocess
    import sys
    from pathlib import Path

    pc, ports = cluster
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text.split("Three confluent-kafka consumers in one group", 1)[1]
    example, rest = section.split("```python\n", 1)[1].split("```", 1)
    printed = rest.split("```\n", 1)[1].split("```", 1)[0]
    for i, port in enumerate(sorted(ports.values())):
        example = example.replace(f"127.0.0.1:{9111 + i}", f"127.0.0.1:{port}")
    out = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True,
                         timeout=90, check=True).stdout
    assert out.splitlines()[-1] == printed.splitlines()[-1] == "60 records, 60 distinct"
    owns = [line for line in out.splitlines() if " owns " in line]
    assert {line.split()[0] for line in owns} == {"worker-0", "worker-1", "worker-2"}
    d = json.loads(dmq_cli(pc, "groups", "describe", "workers", "--json"))
    assert [(p["partition"], p["committed"]) for p in d["partitions"]] == [
        (p, 10) for p in range(6)]


@needs_kcat
def test_kcat_balanced_consumer(cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    import subprocess

    _, ports = cluster
    create_topic(ports, "kc", 2, 2)
    produce(ports, "kc", 6, 2)
    out = subprocess.run(
        ["kcat", "-b", bootstrap(ports), "-G", "kcat-group", "-X",
         "auto.offset.reset=earliest", "-X", "session.timeout.ms=6000", "-e", "-q",
         "-f", "%p %o %s\n", "kc"], capture_output=True, text=True, timeout=60, check=True)
    got = sorted(tuple(int(x) for x in line.split()) for line in out.stdout.splitlines())
    assert got == sorted((i % 2, i // 2, i) for i in range(6))


_MEMBER_SCRIPT = """
import sys
import confluent_kafka as ck
c = ck.Consumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[2],
                 "auto.offset.reset": "earliest", "enable.auto.commit": False,
                 "session.timeout.ms": 6000, "heartbeat.interval.ms": 300,
                 "partition.assignment.strategy": "range"})
c.subscribe([sys.argv[3]], on_assign=lambda _c, ps: print(
    "A", ",".join(str(p.partition) for p in ps), flush=True))
while True:
    m = c.poll(0.1)
    if m is not None and m.error() is None:
        print("R", m.partition(), m.offset(), flush=True)
        c.commit(message=m, asynchronous=False)
        print("C", m.partition(), m.offset() + 1, flush=True)
"""


def test_sigkilled_member_partitions_move_after_its_session_timeout(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    import os
    import signal
    import subprocess
    import sys

    _, ports = cluster
    create_topic(ports, "killed", 6, 2)
    produce(ports, "killed", 30, 6)
    procs = [subprocess.Popen([sys.executable, "-c", _MEMBER_SCRIPT, bootstrap(ports),
                               "kill-group", "killed"], stdout=subprocess.PIPE, text=True,
                              start_new_session=True) for _ in range(3)]
    lines: list[list[str]] = [[] for _ in procs]

    def reader(i: int) -> None:
        assert procs[i].stdout is not None
        for line in procs[i].stdout:
            lines[i].append(line.split("\n")[0])

    threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()

    def owned(i: int) -> set[int]:
        last = [x for x in list(lines[i]) if x.startswith("A")]
        return {int(p) for p in last[-1][2:].split(",") if p} if last else set()

    def reads(i: int) -> list[tuple[int, int]]:
        return [(int(x.split()[1]), int(x.split()[2])) for x in list(lines[i])
                if x.startswith("R ")]
    try:
        wait_until(lambda: all(len(owned(i)) == 2 for i in range(3))
                   and sum(len(reads(i)) for i in range(3)) >= 30, 30,
                   "three members, two partitions each, 30 records read")
        victim = 2
        victim_parts = owned(victim)
        os.killpg(procs[victim].pid, signal.SIGKILL)
        procs[victim].wait(10)
        # no LeaveGroup: the partitions move once its 6 s session has run out
        wait_until(lambda: len(owned(0)) == len(owned(1)) == 3, 30,
                   "the survivors owning three partitions each")
        produce(ports, "killed", 12, 6)
        wait_until(lambda: sum(len(reads(i)) for i in range(3)) >= 42, 30,
                   "the new records read")
        everything = [r for i in range(3) for r in reads(i)]
        assert set(everything) == {(p, o) for p in range(6) for o in range(7)}
        committed = {int(x.split()[1]): int(x.split()[2]) for x in lines[victim]
                     if x.startswith("C ")}
        twice = {r for r in everything if everything.count(r) > 1}
        # read twice only past the victim's last commit on its own partitions
        assert all(p in victim_parts and o >= committed.get(p, 0) for p, o in twice)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
