"""A broker's advertised Kafka listener travels in its registration record, the
metadata snapshot and the image; records and snapshots without it (written before it
existed) still load, and the Kafka Metadata answer names only brokers that have one."""

from __future__ import annotations

import random

from dmq.config import SETTINGS, ClusterConfig, NodeAddress
from dmq.controller.cluster_id import new_cluster_id, quorum_cluster_id
from dmq.controller.planner import Planner
from dmq.kafka.apis import KafkaApis
from dmq.metadata.image import ONLINE
from dmq.metadata.records import (
    ClusterId,
    MalformedRecordError,
    RegisterBroker,
    UnfenceBroker,
    decode_batch,
    encode_batch,
    record_from_wire,
)
from dmq.metadata.state import MetadataState


def test_register_broker_with_kafka_address_round_trips() -> None:
    rec = RegisterBroker(7, "h", 9000, "r", "inc", "kh", 9020)
    assert decode_batch(encode_batch([rec])) == [rec]
    plain = RegisterBroker(8, "h", 9001, None, "inc")
    assert plain.to_wire() == [1, 8, "h", 9001, None, "inc"]  # unchanged wire form
    assert decode_batch(encode_batch([plain])) == [plain]


def test_snapshot_keeps_kafka_address_and_loads_old_rows() -> None:
    state = MetadataState()
    state.apply_record(RegisterBroker(7, "h", 9000, None, "inc", "kh", 9020), 3)
    state.apply_record(RegisterBroker(8, "h", 9001, None, "inc2"), 4)
    snap = state.to_snapshot()
    assert len(snap["brokers"][1]) == 8  # a broker without Kafka: the old row shape
    again = MetadataState()
    again.restore(snap)
    assert (again.brokers[7].kafka_host, again.brokers[7].kafka_port) == ("kh", 9020)
    assert (again.brokers[8].kafka_host, again.brokers[8].kafka_port) == (None, -1)


def test_reregistration_with_a_new_kafka_port_is_recorded() -> None:
    state = MetadataState()
    planner = Planner(state, lambda key: SETTINGS[key].default, random.Random(1))
    recs = planner.register_broker(7, "h", 9000, None, "inc", "h", 9020)
    for i, r in enumerate(recs):
        state.apply_record(r, 10 + i)
    assert planner.register_broker(7, "h", 9000, None, "inc", "h", 9020) == []
    assert planner.register_broker(7, "h", 9000, None, "inc", "h", 9021) != []


def test_metadata_names_only_brokers_with_a_kafka_listener() -> None:
    state = MetadataState()
    state.apply_record(RegisterBroker(7, "h", 9000, "r1", "inc", "kh", 9020), 3)
    state.apply_record(RegisterBroker(8, "h", 9001, None, "inc2"), 4)
    state.apply_record(UnfenceBroker(7, 3), 5)
    state.apply_record(UnfenceBroker(8, 4), 6)
    image = state.image(1)
    assert image.brokers[7].state == ONLINE
    config = ClusterConfig((NodeAddress(1, "c", 1),), ())
    apis = KafkaApis(config, 7, None, lambda: image, None)  # type: ignore[arg-type]
    answer = apis._metadata_answer(image, None, set())
    assert answer["Brokers"] == [{"NodeId": 7, "Host": "kh", "Port": 9020, "Rack": "r1"}]
    assert answer["ControllerId"] == 7  # controller-only requests are forwarded by brokers
    # before the image has the kept id: the quorum-derived one
    assert answer["ClusterId"] == quorum_cluster_id(config)
    state.apply_record(ClusterId("kept-id-0123456789abcd"), 7)
    image = state.image(1)
    assert apis._metadata_answer(image, None, set())["ClusterId"] == "kept-id-0123456789abcd"


def test_cluster_id_is_stable_and_kafka_shaped() -> None:
    a = ClusterConfig((NodeAddress(1, "c", 1), NodeAddress(2, "c", 2)), ())
    b = ClusterConfig((NodeAddress(2, "c", 2), NodeAddress(1, "c", 1)), ())
    assert quorum_cluster_id(a) == quorum_cluster_id(b)
    assert len(quorum_cluster_id(a)) == 22
    assert quorum_cluster_id(a) != quorum_cluster_id(
        ClusterConfig((NodeAddress(1, "c", 3),), ()))


def test_the_first_cluster_id_stays_and_survives_a_snapshot() -> None:
    state = MetadataState()
    assert state.image(1).cluster_id is None
    rec = ClusterId("first-id-0123456789abc")
    assert decode_batch(encode_batch([rec])) == [rec]
    state.apply_record(rec, 2)
    state.apply_record(ClusterId("second-id-0123456789ab"), 3)  # a later one is skipped
    assert state.cluster_id == "first-id-0123456789abc" and state.skipped_records == 1
    assert state.image(1).cluster_id == "first-id-0123456789abc"
    again = MetadataState()
    again.restore(state.to_snapshot(include_offsets=False))
    assert again.cluster_id == "first-id-0123456789abc"
    old = state.to_snapshot()
    del old["cluster_id"]  # a snapshot written before ids were kept
    again.restore(old)
    assert again.cluster_id is None
    for bad in ([14, ""], [14, 7], [14]):
        try:
            record_from_wire(bad)
        except MalformedRecordError:
            continue
        raise AssertionError(f"{bad} was accepted")


def test_a_new_cluster_gets_a_random_id_and_an_existing_one_keeps_what_clients_saw() -> None:
    config = ClusterConfig((NodeAddress(1, "c", 1),), ())
    empty = MetadataState()
    ids = {new_cluster_id(empty, config) for _ in range(3)}
    assert len(ids) == 3 and all(len(i) == 22 for i in ids)
    assert quorum_cluster_id(config) not in ids
    existing = MetadataState()
    existing.apply_record(RegisterBroker(7, "h", 9000, None, "inc"), 3)
    assert new_cluster_id(existing, config) == quorum_cluster_id(config)
