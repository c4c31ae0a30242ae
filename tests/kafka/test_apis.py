"""Kafka handlers' answers that need no broker: error-code mapping and the requests
refused before reaching the data path."""

from __future__ import annotations

from typing import Any

from dmq.config import ClusterConfig, NodeAddress
from dmq.kafka.apis import KafkaApis, kafka_code
from dmq.kafka.codec import RequestHeader
from dmq.kafka.server import NO_RESPONSE
from dmq.metadata.image import EMPTY_IMAGE
from dmq.protocol.errors import ErrorCode

HEADER = RequestHeader(0, 9, 1, "t")


def apis() -> KafkaApis:
    config = ClusterConfig((NodeAddress(1, "c", 1),), ())
    return KafkaApis(config, 7, None, lambda: EMPTY_IMAGE, None)  # type: ignore[arg-type]


def produce_body(acks: int, transactional_id: str | None = None) -> dict[str, Any]:
    return {"TransactionalId": transactional_id, "Acks": acks, "TimeoutMs": 100,
            "TopicData": [{"Name": "t", "PartitionData": [{"Index": 0, "Records": b""}]}]}


def test_dmq_only_codes_map_to_the_nearest_kafka_code() -> None:
    assert kafka_code(ErrorCode.NODE_SHUTTING_DOWN) == 6  # NOT_LEADER_OR_FOLLOWER
    assert kafka_code(ErrorCode.BROKER_FENCED) == 6
    assert kafka_code(ErrorCode.RAFT_NOT_READY) == 41  # NOT_CONTROLLER
    assert kafka_code(ErrorCode.FRAME_TOO_LARGE) == 10  # MESSAGE_TOO_LARGE
    assert kafka_code(1999) == -1  # unknown: UNKNOWN_SERVER_ERROR
    assert kafka_code(ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER) == 45  # shared: unchanged


def test_transactional_produce_is_refused_per_partition() -> None:
    answer = apis().produce(HEADER, produce_body(-1, "tx"))
    part = answer["Responses"][0]["PartitionResponses"][0]
    assert part["ErrorCode"] == 42 and "transactions" in part["ErrorMessage"]
    assert apis().produce(HEADER, produce_body(0, "tx")) is NO_RESPONSE


def test_bad_acks_are_refused() -> None:
    answer = apis().produce(HEADER, produce_body(2))
    assert answer["Responses"][0]["PartitionResponses"][0]["ErrorCode"] == 21


def test_incremental_fetch_sessions_are_declined() -> None:
    body = {"SessionId": 5, "SessionEpoch": 3, "Topics": []}
    assert apis().fetch(HEADER, body)["ErrorCode"] == 70  # FETCH_SESSION_ID_NOT_FOUND
    body = {"SessionId": 0, "SessionEpoch": 3, "Topics": []}
    assert apis().fetch(HEADER, body)["ErrorCode"] == 71  # INVALID_FETCH_SESSION_EPOCH


def test_transactional_init_producer_id_is_refused() -> None:
    answer = apis().init_producer_id(HEADER, {"TransactionalId": "tx"})
    assert answer == {"ErrorCode": 42, "ProducerId": -1, "ProducerEpoch": -1}


def test_describe_cluster_of_controllers_is_unsupported() -> None:
    assert apis().describe_cluster(HEADER, {"EndpointType": 2})["ErrorCode"] == 119


async def test_forwarded_topic_requests_answer_every_topic_asked() -> None:
    """CreateTopics and CreatePartitions: a manual assignment is refused, a topic the
    controller did not answer is UNKNOWN_SERVER_ERROR, an unreachable controller is
    REQUEST_TIMED_OUT for each forwarded topic, and the rows keep the request's order."""
    asked: list[Any] = []

    async def answers_a(key: Any, body: Any, timeout_ms: int) -> Any:
        asked.append((key, body, timeout_ms))
        return {"topics": [{"name": "a", "error": 0, "partitions": 3}]}

    async def unreachable(key: Any, body: Any, timeout_ms: int) -> Any:
        raise TimeoutError

    config = ClusterConfig((NodeAddress(1, "c", 1),), ())
    k = KafkaApis(config, 7, None, lambda: EMPTY_IMAGE, answers_a)  # type: ignore[arg-type]
    create = {"Topics": [
        {"Name": "m", "Assignments": [{"PartitionIndex": 0, "BrokerIds": [1]}]},
        {"Name": "b", "NumPartitions": 1, "ReplicationFactor": 1, "Configs": []},
        {"Name": "a", "NumPartitions": 3, "ReplicationFactor": 1, "Configs": []}],
        "TimeoutMs": 100, "ValidateOnly": False}
    got = await k.create_topics(HEADER, create)
    assert [(t["Name"], t["ErrorCode"]) for t in got["Topics"]] == [
        ("m", 42), ("b", int(ErrorCode.UNKNOWN_SERVER_ERROR)), ("a", 0)]
    assert got["Topics"][2]["NumPartitions"] == 3
    assert [r["name"] for r in asked[0][1]["topics"]] == ["b", "a"]
    assert asked[0][1]["timeout_ms"] == 100 and asked[0][2] == 5100
    grow = {"Topics": [{"Name": "a", "Count": 4, "Assignments": None}], "TimeoutMs": 0,
            "ValidateOnly": True}
    got = await k.create_partitions(HEADER, grow)
    assert got["Results"] == [{"Name": "a", "ErrorCode": 0, "ErrorMessage": None}]
    assert asked[1][1] == {"topics": [{"name": "a", "count": 4}], "timeout_ms": 0,
                           "validate_only": True}
    down = KafkaApis(config, 7, None, lambda: EMPTY_IMAGE, unreachable)  # type: ignore[arg-type]
    for answer, rows in ((await down.create_topics(HEADER, create), "Topics"),
                         (await down.create_partitions(HEADER, grow), "Results")):
        codes = {t["Name"]: t["ErrorCode"] for t in answer[rows]}
        assert all(c == int(ErrorCode.REQUEST_TIMED_OUT) for n, c in codes.items() if n != "m")
