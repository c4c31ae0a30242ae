"""Kafka's consumer group protocol (KIP-848) against real `dmq server` processes on
loopback: confluent-kafka consumers with `group.protocol=consumer` split a topic through
ConsumerGroupHeartbeat, each record read once, partitions moving when a member joins
or leaves, committed offsets (committed with the member epoch) surviving the group; a
librdkafka member and a dmq-protocol member sharing one group; a classic JoinGroup into
such a group refused; ConsumerGroupDescribe through the AdminClient; the heartbeat's
errors through raw frames."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import uuid
from typing import Any

import pytest

from dmq.client.consumer import Consumer as DmqConsumer
from tests.kafka.clients import bootstrap, create_topic, dmq_cli, produce
from tests.kafka.support import KafkaConn
from tests.support.procs import ProcessCluster
from tests.support.waiting import wait_until

ck = pytest.importorskip("confluent_kafka")
from confluent_kafka.admin import AdminClient  # noqa: E402

pytestmark = pytest.mark.slow

INCONSISTENT_GROUP_PROTOCOL = 23
UNKNOWN_MEMBER_ID = 25
INVALID_REQUEST = 42
GROUP_ID_NOT_FOUND = 69
FENCED_MEMBER_EPOCH = 110
UNRELEASED_INSTANCE_ID = 111
UNSUPPORTED_ASSIGNOR = 112
INVALID_REGULAR_EXPRESSION = 130


class ConsumerMember:
    """One confluent-kafka consumer of the consumer group protocol polling on its own
    thread, committing each record synchronously."""

    def __init__(self, ports: dict[int, int], group: str, topic: str) -> None:
        self.consumer = ck.Consumer({
            "bootstrap.servers": bootstrap(ports), "group.id": group,
            "group.protocol": "consumer", "auto.offset.reset": "earliest",
            "enable.auto.commit": False})
        self.records: list[tuple[int, int]] = []
        self.lock = threading.Lock()
        self.owned: set[int] = set()
        self.commit_errors: list[int] = []
        self.consumer.subscribe([topic], on_assign=self._assigned, on_revoke=self._revoked)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            msg = self.consumer.poll(0.1)
            if msg is not None and msg.error() is None:
                with self.lock:
                    self.records.append((msg.partition(), msg.offset()))
                try:
                    self.consumer.commit(message=msg, asynchronous=False)
                except ck.KafkaException as exc:
                    self.commit_errors.append(exc.args[0].code())
        self.consumer.close()

    # the consumer protocol's rebalances are incremental: partitions added, removed
    def _assigned(self, consumer: Any, partitions: list[Any]) -> None:
        with self.lock:
            self.owned |= {tp.partition for tp in partitions}

    def _revoked(self, consumer: Any, partitions: list[Any]) -> None:
        with self.lock:
            self.owned -= {tp.partition for tp in partitions}

    def assignment(self) -> set[int]:
        with self.lock:
            return set(self.owned)

    def read(self) -> list[tuple[int, int]]:
        with self.lock:
            return list(self.records)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(20)
        assert not self.thread.is_alive(), "the consumer did not close"


class DmqMember:
    """dmq's own consumer (GroupMembership over dmq's protocol) in a group, on a thread
    with its own event loop."""

    def __init__(self, pc: ProcessCluster, group: str, topic: str) -> None:
        self.bootstrap, self.group, self.topic = pc.bootstrap, group, topic
        self.lock = threading.Lock()
        self.owned: set[int] = set()
        self.records: list[tuple[int, int]] = []
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._thread, daemon=True)
        self.thread.start()

    def _thread(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - reported by close()
            self.error = exc

    async def _run(self) -> None:
        consumer = DmqConsumer(self.bootstrap, group_id=self.group,
                               auto_offset_reset="earliest", heartbeat_interval_ms=250)
        await consumer.start()
        try:
            consumer.subscribe([self.topic])
            while not self.stop.is_set():
                got = await consumer.getmany(timeout_ms=100)
                with self.lock:
                    self.records += [(tp.partition, r.offset)
                                     for tp, recs in got.items() for r in recs]
                    self.owned = {tp.partition for tp in consumer.assignment()}
                if got:
                    await consumer.commit()
        finally:
            await consumer.close()

    def assignment(self) -> set[int]:
        with self.lock:
            return set(self.owned)

    def read(self) -> list[tuple[int, int]]:
        with self.lock:
            return list(self.records)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(20)
        assert self.error is None, self.error


def _split(members: list[Any], partitions: int) -> bool:
    owned = [m.assignment() for m in members]
    every = [p for o in owned for p in o]
    return all(owned) and sorted(every) == list(range(partitions))


def _committed(pc: ProcessCluster, group: str) -> dict[str, Any]:
    return json.loads(dmq_cli(pc, "groups", "describe", group, "--json"))  # type: ignore[no-any-return]


def test_consumer_protocol_members_split_move_and_keep_offsets(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    pc, ports = cluster
    topic, group = "kip848-four", "kip848-split"
    create_topic(ports, topic, 4, 2)
    produce(ports, topic, 40, 4)
    members = [ConsumerMember(ports, group, topic) for _ in range(2)]
    third: ConsumerMember | None = None
    try:
        wait_until(lambda: _split(members, 4) and all(len(m.assignment()) == 2
                                                      for m in members),
                   30, lambda: f"two members owning two partitions each: "
                               f"{[m.assignment() for m in members]}")
        wait_until(lambda: sum(len(m.read()) for m in members) >= 40, 30,
                   "every record consumed")
        seen = [r for m in members for r in m.read()]
        assert sorted(set(seen)) == sorted((p, o) for p in range(4) for o in range(10))
        assert len(seen) == len(set(seen)) or any(m.commit_errors for m in members)

        def lag_zero() -> bool:
            d = _committed(pc, group)
            return d["total_lag"] == 0 and [(p["partition"], p["committed"])
                                            for p in d["partitions"]] == [
                (p, 10) for p in range(4)]
        wait_until(lag_zero, 20, "commits of offset 10 on every partition, lag 0")
        d = _committed(pc, group)
        assert len(d["members"]) == 2
        assert sorted(p for m in d["members"] for _, p in m["assignment"]) == list(range(4))

        # a third member joins: partitions move to it, none is owned twice
        third = ConsumerMember(ports, group, topic)
        trio = [*members, third]
        wait_until(lambda: _split(trio, 4), 30,
                   lambda: f"three members sharing four partitions: "
                           f"{[m.assignment() for m in trio]}")
        produce(ports, topic, 12, 4)
        wait_until(lambda: sum(len(m.read()) for m in trio) >= 52, 30,
                   "the new records consumed by the three")

        # it leaves again: the two others take its partitions over
        third.close()
        wait_until(lambda: _split(members, 4), 30,
                   lambda: f"two members owning all four partitions again: "
                           f"{[m.assignment() for m in members]}")
        produce(ports, topic, 12, 4)
        wait_until(lambda: sum(len(m.read()) for m in trio) >= 64, 30,
                   "the newest records consumed by the remaining two")
        seen = [r for m in trio for r in m.read()]
        assert sorted(set(seen)) == sorted((p, o) for p in range(4) for o in range(16))
        # a record is read twice only after a refused commit (STALE_MEMBER_EPOCH: a
        # commit racing the answer that moved the member's epoch, as in Kafka)
        refused = [c for m in trio for c in m.commit_errors]
        assert len(seen) == len(set(seen)) or refused, "a record was read twice"
        wait_until(lambda: _committed(pc, group)["total_lag"] == 0, 20, "lag 0")
    finally:
        for m in members:
            m.close()
        if third is not None and third.thread.is_alive():
            third.close()

    # everyone left: a new member continues where the group stopped
    produce(ports, topic, 8, 4)
    late = ConsumerMember(ports, group, topic)
    try:
        wait_until(lambda: len(late.read()) >= 8, 30, "the records after the commits")
        # a partition read from before its commit would show its older records first
        assert sorted(late.read()[:8]) == sorted((p, o) for p in range(4) for o in (16, 17))
    finally:
        late.close()


def test_librdkafka_and_dmq_members_share_a_group(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    pc, ports = cluster
    topic, group = "kip848-mixed", "kip848-mixed"
    create_topic(ports, topic, 4, 2)
    kafka_member = ConsumerMember(ports, group, topic)
    dmq_member = DmqMember(pc, group, topic)
    both: list[Any] = [kafka_member, dmq_member]
    try:
        wait_until(lambda: _split(both, 4), 30,
                   lambda: f"both members owning partitions: "
                           f"{[m.assignment() for m in both]}")
        produce(ports, topic, 40, 4)
        wait_until(lambda: sum(len(m.read()) for m in both) >= 40, 30,
                   "every record consumed by the two")
        for m in both:  # each read exactly the partitions it owns
            assert {p for p, _ in m.read()} == m.assignment()
        seen = [r for m in both for r in m.read()]
        assert sorted(seen) == sorted((p, o) for p in range(4) for o in range(10))
        d = _committed(pc, group)
        assert len(d["members"]) == 2
        wait_until(lambda: _committed(pc, group)["total_lag"] == 0, 20, "lag 0")

        # the dmq member leaves: the Kafka member takes every partition
        both.pop().close()
        wait_until(lambda: kafka_member.assignment() == set(range(4)), 30,
                   lambda: f"the Kafka member owning all: {kafka_member.assignment()}")
    finally:
        kafka_member.close()
        if dmq_member.thread.is_alive():
            dmq_member.close()


def _heartbeat(conn: KafkaConn, group: str, member: str, epoch: int, *,
               topics: list[str] | None = None, version: int = 1,
               **extra: Any) -> dict[str, Any]:
    body = {"GroupId": group, "MemberId": member, "MemberEpoch": epoch,
            "RebalanceTimeoutMs": 30_000 if epoch == 0 else -1,
            "SubscribedTopicNames": topics, "TopicPartitions": [] if epoch == 0 else None,
            **extra}
    return conn.request("ConsumerGroupHeartbeat", version, body)


def test_classic_and_consumer_protocol_groups_exclude_each_other(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    _pc, ports = cluster
    topic = "kip848-kinds"
    create_topic(ports, topic, 2, 1)
    port = next(iter(ports.values()))
    member = str(uuid.uuid4())
    with KafkaConn(port) as conn:
        joined = _heartbeat(conn, "kip848-kind", member, 0, topics=[topic])
        assert joined["ErrorCode"] == 0 and joined["MemberEpoch"] > 0
        # a classic JoinGroup into it: Kafka's INCONSISTENT_GROUP_PROTOCOL
        join = conn.request("JoinGroup", 9, {
            "GroupId": "kip848-kind", "SessionTimeoutMs": 10_000,
            "RebalanceTimeoutMs": 10_000, "MemberId": "", "GroupInstanceId": None,
            "ProtocolType": "consumer", "Protocols": [{"Name": "range", "Metadata": b""}],
            "Reason": None})
        assert join["ErrorCode"] == INCONSISTENT_GROUP_PROTOCOL
        left = _heartbeat(conn, "kip848-kind", member, -1)
        assert left["ErrorCode"] == 0 and left["MemberEpoch"] == -1

    # the other way round: a consumer-protocol member into a classic group
    classic = ck.Consumer({"bootstrap.servers": bootstrap(ports), "group.id": "kip848-old",
                           "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
                           "heartbeat.interval.ms": 300})
    classic.subscribe([topic])
    try:
        wait_until(lambda: classic.poll(0.1) is None and len(classic.assignment()) == 2, 30,
                   "the classic member's assignment")
        with KafkaConn(port) as conn:
            refused = _heartbeat(conn, "kip848-old", str(uuid.uuid4()), 0, topics=[topic])
            assert refused["ErrorCode"] == GROUP_ID_NOT_FOUND, refused
            described = conn.request("ConsumerGroupDescribe", 1, {
                "GroupIds": ["kip848-old"], "IncludeAuthorizedOperations": False})
            assert described["Groups"][0]["ErrorCode"] == GROUP_ID_NOT_FOUND
    finally:
        classic.close()


def test_heartbeat_errors(cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    _pc, ports = cluster
    topic = "kip848-errors"
    create_topic(ports, topic, 2, 1)
    port = next(iter(ports.values()))
    member = str(uuid.uuid4())
    with KafkaConn(port) as conn:
        joined = _heartbeat(conn, "kip848-err", member, 0, topics=[topic])
        epoch = joined["MemberEpoch"]
        assert joined["MemberId"] == member  # v1: the member chose its id (KIP-1082)
        parts = joined["Assignment"]["TopicPartitions"]
        md = conn.request("Metadata", 12, {"Topics": [{"Name": topic}],
                                           "AllowAutoTopicCreation": False})
        assert [bytes(tp["TopicId"]) for tp in parts] == [bytes(md["Topics"][0]["TopicId"])]
        assert sorted(parts[0]["Partitions"]) == [0, 1]
        # unchanged since the last answer: no assignment sent
        again = _heartbeat(conn, "kip848-err", member, epoch, TopicPartitions=parts)
        assert again["ErrorCode"] == 0 and again["Assignment"] is None
        # an epoch from the future: fenced
        fenced = _heartbeat(conn, "kip848-err", member, epoch + 5)
        assert fenced["ErrorCode"] == FENCED_MEMBER_EPOCH, fenced
        # (a positive epoch from an unknown member may be adopted in the window after
        # a coordinator starts, dmq's failover rule; leaving is never)
        unknown = _heartbeat(conn, "kip848-err", "nobody", -1)
        assert unknown["ErrorCode"] == UNKNOWN_MEMBER_ID
        no_such = _heartbeat(conn, "kip848-err", str(uuid.uuid4()), 0, topics=[topic],
                             ServerAssignor="sticky-nonsense")
        assert no_such["ErrorCode"] == UNSUPPORTED_ASSIGNOR, no_such
        # Kafka's request checks: v1 members name themselves; a join needs its fields
        assert _heartbeat(conn, "kip848-err", "", 0, topics=[topic])["ErrorCode"] == \
            INVALID_REQUEST
        bad = conn.request("ConsumerGroupHeartbeat", 1, {
            "GroupId": "kip848-err", "MemberId": "x", "MemberEpoch": 0,
            "RebalanceTimeoutMs": -1, "SubscribedTopicNames": [topic],
            "TopicPartitions": []})
        assert bad["ErrorCode"] == INVALID_REQUEST and "RebalanceTimeoutMs" in \
            bad["ErrorMessage"]
        # static members: an instance id held by a live member is not released;
        # after its static leave (-2) the new member takes its place and epoch
        x, y = str(uuid.uuid4()), str(uuid.uuid4())
        first = _heartbeat(conn, "kip848-static", x, 0, topics=[topic], InstanceId="i-1")
        assert first["ErrorCode"] == 0
        held = _heartbeat(conn, "kip848-static", y, 0, topics=[topic], InstanceId="i-1")
        assert held["ErrorCode"] == UNRELEASED_INSTANCE_ID, held
        assert _heartbeat(conn, "kip848-static", x, -2, InstanceId="i-1")["ErrorCode"] == 0
        back = _heartbeat(conn, "kip848-static", y, 0, topics=[topic], InstanceId="i-1")
        assert back["ErrorCode"] == 0 and back["MemberEpoch"] == first["MemberEpoch"]
        assert back["Assignment"] == first["Assignment"]
        assert _heartbeat(conn, "kip848-static", y, -1)["ErrorCode"] == 0
        # v0: the coordinator names the member
        v0 = _heartbeat(conn, "kip848-err-v0", "", 0, topics=[topic], version=0)
        assert v0["ErrorCode"] == 0 and v0["MemberId"]
        for group, m in (("kip848-err", member), ("kip848-err-v0", v0["MemberId"])):
            assert _heartbeat(conn, group, m, -1)["ErrorCode"] == 0
        versions = {k["ApiKey"]: (k["MinVersion"], k["MaxVersion"])
                    for k in conn.request("ApiVersions", 3, {
                        "ClientSoftwareName": "t", "ClientSoftwareVersion": "1"})["ApiKeys"]}
        assert versions[68] == (0, 1) and versions[69] == (0, 1) and versions[47] == (0, 0)


def test_describe_consumer_groups(cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    pc, ports = cluster
    topic, group = "kip848-describe", "kip848-describe"
    create_topic(ports, topic, 2, 1)
    member = ConsumerMember(ports, group, topic)
    try:
        wait_until(lambda: member.assignment() == {0, 1}, 30, "the member's assignment")
        admin = AdminClient({"bootstrap.servers": bootstrap(ports)})

        def described() -> Any:
            d = admin.describe_consumer_groups([group])[group].result(10)
            return d if d.members and d.members[0].assignment.topic_partitions else None
        d = wait_until(described, 20, "a described member with its assignment")
        assert d.group_id == group and str(d.state).endswith("STABLE")
        assert str(d.type).endswith("CONSUMER"), d.type
        assert len(d.members) == 1
        got = sorted((tp.topic, tp.partition) for tp in d.members[0].assignment.topic_partitions)
        assert got == [(topic, 0), (topic, 1)]
        assert d.partition_assignor == "uniform"

        with KafkaConn(next(iter(ports.values()))) as conn:
            raw = conn.request("ConsumerGroupDescribe", 1, {
                "GroupIds": [group, "kip848-nobody"], "IncludeAuthorizedOperations": False})
        g, missing = raw["Groups"]
        assert g["ErrorCode"] == 0 and g["GroupState"] == "Stable"
        assert g["GroupEpoch"] == g["AssignmentEpoch"] >= 1
        m = g["Members"][0]
        assert m["SubscribedTopicNames"] == [topic] and m["MemberType"] == 1
        assert m["Assignment"] == m["TargetAssignment"]
        assert m["Assignment"]["TopicPartitions"][0]["TopicName"] == topic
        assert missing["ErrorCode"] == GROUP_ID_NOT_FOUND
        listed = dmq_cli(pc, "groups", "list")
        assert group in listed
    finally:
        member.close()


def test_consumer_protocol_group_survives_a_controller_failover() -> None:
    from tests.kafka.support import kafka_cluster
    from tests.kafka.test_groups_failover import active_controller, committed

    # a new coordinator hands partitions out again after its first session timeout:
    # shorter than the 10 s default here, with heartbeats well inside it
    with kafka_cluster(controllers=3, brokers=2,
                       settings={"group.session.timeout.ms": 4000,
                                 "group.heartbeat.interval.ms": 500}) as (pc, ports):
        topic, group = "kip848-fo", "kip848-fo"
        create_topic(ports, topic, 4, 2)
        produce(ports, topic, 20, 4)
        members = [ConsumerMember(ports, group, topic) for _ in range(2)]

        def seen() -> set[tuple[int, int]]:
            return {r for m in members for r in m.read()}
        try:
            wait_until(lambda: len(seen()) >= 20, 30, "the first 20 records read")
            wait_until(lambda: committed(pc, group) == [(p, 5) for p in range(4)], 30,
                       "commits at 5")
            pc.kill(active_controller(pc), signal.SIGKILL)
            produce(ports, topic, 8, 4)
            wait_until(lambda: len(seen()) >= 28, 60,
                       "the next 8 records read after the failover")
            assert seen() == {(p, o) for p in range(4) for o in range(7)}
            wait_until(lambda: committed(pc, group) == [(p, 7) for p in range(4)], 30,
                       "commits at 7 on the new controller")
            wait_until(lambda: _split(members, 4), 30,
                       lambda: f"the group owning every partition again: "
                               f"{[m.assignment() for m in members]}")
        finally:
            for m in members:
                m.close()


def test_regex_subscription(cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    _pc, ports = cluster
    for name in ("kip848-re-a", "kip848-re-b", "kip848-other"):
        create_topic(ports, name, 2, 1)
    consumer = ck.Consumer({"bootstrap.servers": bootstrap(ports), "group.id": "kip848-re",
                            "group.protocol": "consumer", "auto.offset.reset": "earliest"})
    consumer.subscribe(["^kip848-re-.*"])
    try:
        def assigned() -> set[tuple[str, int]]:
            consumer.poll(0.1)
            return {(tp.topic, tp.partition) for tp in consumer.assignment()}
        wait_until(lambda: assigned() == {(t, p) for t in ("kip848-re-a", "kip848-re-b")
                                          for p in (0, 1)}, 30,
                   lambda: f"the matching topics' partitions: {assigned()}")
    finally:
        consumer.close()
    with KafkaConn(next(iter(ports.values()))) as conn:
        bad = _heartbeat(conn, "kip848-re-bad", str(uuid.uuid4()), 0,
                         SubscribedTopicRegex="(unclosed")
        assert bad["ErrorCode"] == INVALID_REGULAR_EXPRESSION, bad
