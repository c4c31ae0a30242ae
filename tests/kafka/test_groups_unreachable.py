"""Group requests while the active controller cannot be reached: a broker's Kafka
listener answers COORDINATOR_NOT_AVAILABLE (Kafka clients then look the coordinator up
again and retry) instead of holding the request, and serves again once a controller
is back, with the committed offsets intact. Real `dmq server` processes: one
controller, one broker."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator

import pytest

from dmq.kafka.groups import GROUP_ROUTE_TIMEOUT_MS
from tests.kafka.support import KafkaConn, kafka_cluster
from tests.support.procs import ProcessCluster
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow

COORDINATOR_NOT_AVAILABLE = 15


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[ProcessCluster, dict[int, int]]]:
    with kafka_cluster(brokers=1) as c:
        yield c


def _commit(conn: KafkaConn, offset: int) -> int:
    a = conn.request("OffsetCommit", 8, {
        "GroupId": "g", "GenerationIdOrMemberEpoch": -1, "MemberId": "",
        "GroupInstanceId": None, "Topics": [{"Name": "t", "Partitions": [
            {"PartitionIndex": 0, "CommittedOffset": offset, "CommittedLeaderEpoch": -1,
             "CommittedMetadata": None}]}]})
    return int(a["Topics"][0]["Partitions"][0]["ErrorCode"])


def test_group_requests_answer_coordinator_not_available_without_a_controller(
        cluster: tuple[ProcessCluster, dict[int, int]]) -> None:
    pc, ports = cluster
    port = next(iter(ports.values()))
    controller = pc.controller_ids[0]
    # each answer comes once the broker's controller route gives up (it retries a
    # failover up to GROUP_ROUTE_TIMEOUT_MS): bounded, never held
    with KafkaConn(port, timeout_s=30) as conn:
        # the topic: auto-created by a Metadata request
        wait_until(lambda: conn.request("Metadata", 12, {
            "Topics": [{"Name": "t"}], "AllowAutoTopicCreation": True})["Topics"][0][
                "ErrorCode"] == 0, 20, "topic t created", interval_s=0.1)
        assert _commit(conn, 5) == 0

        pc.kill(controller, signal.SIGKILL)
        t0 = time.monotonic()
        assert _commit(conn, 6) == COORDINATOR_NOT_AVAILABLE
        # answered once the route's bound ran out, not held: the bound is the feature
        # here, so it stays, as a generous sanity bound (10 s of slack for a loaded
        # machine; a held request waits for the 30 s of the connection's timeout)
        assert time.monotonic() - t0 < GROUP_ROUTE_TIMEOUT_MS / 1000 + 10
        # the other group requests, the consumer group protocol (KIP-848) and
        # OffsetDelete alike: sent together (each waits out its route's bound; the
        # answers come back in request order)
        requests = [
            ("OffsetFetch", 8, {"Groups": [{"GroupId": "g", "Topics": None}],
                                "RequireStable": False}),
            ("Heartbeat", 4, {"GroupId": "g2", "GenerationId": 1, "MemberId": "m",
                              "GroupInstanceId": None}),
            ("ConsumerGroupHeartbeat", 1, {
                "GroupId": "g3", "MemberId": "m", "MemberEpoch": 0,
                "RebalanceTimeoutMs": 5000, "SubscribedTopicNames": ["t"],
                "TopicPartitions": []}),
            ("ConsumerGroupDescribe", 1, {"GroupIds": ["g3"],
                                          "IncludeAuthorizedOperations": False}),
            ("OffsetDelete", 0, {"GroupId": "g", "Topics": [
                {"Name": "t", "Partitions": [{"PartitionIndex": 0}]}]})]
        sent = [conn.send(name, version, body) for name, version, body in requests]
        answers = {}
        for cid, (name, version, _body) in zip(sent, requests, strict=True):
            got, answers[name] = conn.receive(name, version)
            assert got == cid
        assert answers["OffsetFetch"]["Groups"][0]["ErrorCode"] == COORDINATOR_NOT_AVAILABLE
        assert answers["Heartbeat"]["ErrorCode"] == COORDINATOR_NOT_AVAILABLE
        assert answers["ConsumerGroupHeartbeat"]["ErrorCode"] == COORDINATOR_NOT_AVAILABLE
        assert answers["ConsumerGroupDescribe"]["Groups"][0]["ErrorCode"] == \
            COORDINATOR_NOT_AVAILABLE
        assert answers["OffsetDelete"]["ErrorCode"] == COORDINATOR_NOT_AVAILABLE

        # the controller restarts: commits are served again and the old one survived
        pc.start(controller)
        wait_until(lambda: _commit(conn, 7) == 0, 30, "a commit served again",
                   interval_s=0)
        f = conn.request("OffsetFetch", 8, {"Groups": [
            {"GroupId": "g", "Topics": None}], "RequireStable": False})
        assert [p["CommittedOffset"] for t in f["Groups"][0]["Topics"]
                for p in t["Partitions"]] == [7]
