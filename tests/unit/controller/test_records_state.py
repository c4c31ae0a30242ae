"""Records round-trip; the state applies them deterministically, snapshots and restores."""

from __future__ import annotations

import msgpack
import pytest

from dmq.controller.state_machine import MetadataStateMachine
from dmq.metadata.image import FENCED, NO_LEADER, ONLINE
from dmq.metadata.records import (
    NO_CHANGE,
    AccessControlEntry,
    AddPartitions,
    BrokerShuttingDown,
    ClusterId,
    CreateTopic,
    FenceBroker,
    MalformedRecordError,
    OffsetCommit,
    PartitionChange,
    PartitionReassign,
    ProducerIds,
    RecordType,
    RegisterBroker,
    RemoveAccessControlEntry,
    RemoveTopic,
    RemoveUserScramCredential,
    RevokeToken,
    TopicConfig,
    UnfenceBroker,
    UnregisterBroker,
    UserScramCredential,
    decode_batch,
    decode_batch_wire,
    encode_batch,
)
from dmq.metadata.state import MetadataState

ALL = [
    RegisterBroker(1, "h", 1, None, "inc"), RegisterBroker(2, "h", 2, "r1", "inc2"),
    FenceBroker(1, 5), UnfenceBroker(1, 5), BrokerShuttingDown(1, 5),
    CreateTopic("t", "id", {"retention.ms": "5"}, ((1, 2), (2, 1))),
    AddPartitions("t", "id", 2, ((1, 2),)), RemoveTopic("t", "id"),
    PartitionChange("t", 0, 3, NO_CHANGE, (1,)), PartitionChange("t", 0, 3, 2, None),
    TopicConfig("t", "k", None), TopicConfig("t", "k", "v"), ProducerIds(1, 2000),
    OffsetCommit("g", 123, (("t", 0, 5, None), ("t", 1, 6, "md"))),
    RegisterBroker(3, "h", 3, None, "inc3", "kh", 9092),
    PartitionReassign("t", 0, 4, (3, 1, 2), (3,), (2,)),
    PartitionReassign("t", 0, 5, (3, 1), (), (), 3, (3, 1)),
    UnregisterBroker(2, 7),
    ClusterId("AAAAAAAAAAAAAAAAAAAAAA"),
    AccessControlEntry("topic", "t", "literal", "User:a", "*", "Read", "allow"),
    RemoveAccessControlEntry(AccessControlEntry("group", "g", "prefixed", "User:*", "*",
                                                "Read", "deny")),
]
# users and HTTP tokens
ALL += [
    UserScramCredential("alice", "SCRAM-SHA-256", b"salt" * 4, 4096, b"k" * 32, b"v" * 32),
    RemoveUserScramCredential("alice", "SCRAM-SHA-512"),
    RevokeToken("token-id", 2_000, 1_000),
]


def test_every_record_round_trips() -> None:
    assert decode_batch(encode_batch(ALL)) == ALL
    assert {r.TYPE for r in ALL} == set(RecordType)  # a sample of every type


def test_malformed_entries_are_typed_errors() -> None:
    with pytest.raises(MalformedRecordError):
        decode_batch(b"\xc1")
    with pytest.raises(MalformedRecordError):
        decode_batch(msgpack.packb({"a": 1}))
    with pytest.raises(MalformedRecordError):
        decode_batch(msgpack.packb([[99, 1]]))
    with pytest.raises(MalformedRecordError):
        decode_batch(msgpack.packb([[1]]))


def _apply(state: MetadataState, index: int, recs: list) -> None:
    state.apply_entry(index, decode_batch_wire(encode_batch(recs)))


def test_apply_brokers_topics_and_partition_changes() -> None:
    s = MetadataState(history_entries=10)
    _apply(s, 1, [RegisterBroker(1, "h", 11, None, "a"), RegisterBroker(2, "h", 12, None, "b")])
    assert s.brokers[1].broker_epoch == 1 and s.brokers[1].state == FENCED
    _apply(s, 2, [UnfenceBroker(1, 1), UnfenceBroker(2, 1), UnfenceBroker(3, 1)])
    assert s.skipped_records == 1 and s.brokers[2].state == ONLINE
    _apply(s, 3, [CreateTopic("t", "tid", {}, ((1, 2), (2, 1)))])
    img3 = s.image()
    p = img3.partition("t", 1)
    assert p is not None
    assert (p.leader, p.isr, p.leader_epoch, p.partition_epoch) == (2, (2, 1), 0, 0)
    # a leader change bumps both epochs; an ISR change only the partition epoch
    _apply(s, 4, [PartitionChange("t", 1, 0, 1, (1,)), PartitionChange("t", 0, 0, NO_CHANGE, (1,))])
    p1, p0 = s.image().partition("t", 1), s.image().partition("t", 0)
    assert (p1.leader, p1.leader_epoch, p1.partition_epoch, p1.isr) == (1, 1, 1, (1,))
    assert (p0.leader, p0.leader_epoch, p0.partition_epoch, p0.isr) == (1, 0, 1, (1,))
    # an image published earlier never changes (copy on write)
    assert img3.partition("t", 1).leader == 2 and img3.version == 3
    # a change planned against an old partition epoch is skipped
    _apply(s, 5, [PartitionChange("t", 1, 0, 2, None)])
    assert s.image().partition("t", 1).leader == 1 and s.skipped_records == 2
    _apply(s, 6, [AddPartitions("t", "tid", 2, ((2, 1),)), TopicConfig("t", "retention.ms", "9")])
    assert len(s.topics["t"].partitions) == 3 and s.image().topic_config("t", "retention.ms") == "9"
    _apply(s, 7, [TopicConfig("t", "retention.ms", None), ProducerIds(1, 5000)])
    assert s.image().topic_config("t", "retention.ms") is None and s.next_producer_id == 5000
    _apply(s, 8, [RemoveTopic("t", "tid")])
    assert "t" not in s.image().topics and s.version == 8


def test_records_since_and_history_floor() -> None:
    s = MetadataState(history_entries=3)
    for i in range(1, 6):
        _apply(s, i, [RegisterBroker(i, "h", i, None, "x")])
    assert s.records_since(0, 100) is None  # too far behind: snapshot
    recs = s.records_since(3, 100)
    assert [r[0] for r in recs] == [4, 5]
    assert s.records_since(5, 100) == []
    assert [r[0] for r in s.records_since(2, 1)] == [3]


def test_snapshot_restore_round_trip() -> None:
    s = MetadataState()
    _apply(s, 1, [RegisterBroker(1, "h", 11, "r", "a")])
    _apply(s, 2, [UnfenceBroker(1, 1), CreateTopic("t", "tid", {"cleanup.policy": "compact"},
                                                     ((1,), (1,)))])
    _apply(s, 3, [OffsetCommit("g", 9, (("t", 0, 42, "m"),)), ProducerIds(1, 3000),
                  PartitionChange("t", 0, 0, NO_LEADER, None)])
    snap = s.to_snapshot()
    r = MetadataState()
    r.restore(msgpack.unpackb(msgpack.packb(snap), strict_map_key=False))
    assert r.to_snapshot() == snap
    assert r.image().partition("t", 0).leader == NO_LEADER
    assert r.offsets_of("g") == {("t", 0): (42, "m", 9)}
    assert "offsets" not in s.to_snapshot(include_offsets=False)
    with pytest.raises(ValueError):
        r.restore({"v": 99})


def test_snapshot_restore_keeps_reassignments_and_kafka_listeners() -> None:
    """The fields added to broker and partition rows survive a snapshot in its wire form
    (msgpack), and a broker forgotten by UNREGISTER_BROKER stays forgotten."""
    s = MetadataState()
    _apply(s, 1, [RegisterBroker(1, "h", 11, None, "a", "kh", 9092),
                  RegisterBroker(2, "h", 12, None, "b"), RegisterBroker(3, "h", 13, None, "c")])
    _apply(s, 2, [CreateTopic("t", "tid", {}, ((1, 2), (1, 2)))])
    _apply(s, 3, [PartitionReassign("t", 0, 0, (3, 1, 2), (3,), (2,)),
                  PartitionReassign("t", 1, 0, (1, 3), (), (), NO_CHANGE, None)])
    _apply(s, 4, [UnregisterBroker(2, 1)])
    snap = msgpack.unpackb(msgpack.packb(s.to_snapshot()), strict_map_key=False)
    r = MetadataState()
    r.restore(snap)
    assert r.to_snapshot() == s.to_snapshot()
    assert r.brokers == s.brokers and 2 not in r.brokers
    assert (r.brokers[1].kafka_host, r.brokers[1].kafka_port) == ("kh", 9092)
    moving, done = r.topics["t"].partitions[0], r.topics["t"].partitions[1]
    assert moving == s.topics["t"].partitions[0]
    assert (moving.replicas, moving.adding, moving.removing) == ((3, 1, 2), (3,), (2,))
    assert (done.replicas, done.adding, done.removing, done.isr) == ((1, 3), (), (), (1,))


def test_unregister_is_skipped_for_a_broker_that_registered_again() -> None:
    """UNREGISTER_BROKER names the broker epoch it was planned at: a broker that came
    back (registered again, a new epoch) before the record applied is kept, and an id
    not registered at all is skipped."""
    s = MetadataState()
    _apply(s, 1, [RegisterBroker(1, "h", 11, None, "a")])
    planned = UnregisterBroker(1, s.brokers[1].broker_epoch)
    _apply(s, 2, [RegisterBroker(1, "h", 11, None, "a2")])  # it came back
    _apply(s, 3, [planned, UnregisterBroker(9, 1)])
    assert s.skipped_records == 2
    assert s.brokers[1].broker_epoch == 2 and s.incarnations[1] == "a2"
    _apply(s, 4, [UnregisterBroker(1, 2)])
    assert 1 not in s.brokers and 1 not in s.incarnations and 1 not in s.broker_changed_at


class _E:
    def __init__(self, index: int, data: bytes) -> None:
        self.index, self.data = index, data


def test_state_machine_apply_snapshot_restore_and_listeners() -> None:
    sm = MetadataStateMachine()
    seen: list[int] = []
    sm.add_listener(seen.append)
    sm.apply([_E(1, b""), _E(2, encode_batch([RegisterBroker(1, "h", 1, None, "a")])),
              _E(3, b"\xc1")])
    assert sm.applied_index == 3 and seen == [3] and 1 in sm.state.brokers
    sm.apply([_E(2, b"")])  # already applied: ignored
    snap = sm.snapshot()
    other = MetadataStateMachine()
    other.restore(snap)
    assert other.state.to_snapshot() == sm.state.to_snapshot()
    other.restore(b"")
    assert other.state.version == 0 and not other.state.brokers


def test_offset_deletion_removes_entries_and_empty_groups() -> None:
    s = MetadataState()
    _apply(s, 1, [OffsetCommit("g", 9, (("t", 0, 42, "m"), ("t", 1, 7, None)))])
    _apply(s, 2, [OffsetCommit("g", 10, (("t", 0, -1, None),))])
    assert s.offsets_of("g") == {("t", 1): (7, None, 9)}
    _apply(s, 3, [OffsetCommit("g", 11, (("t", 1, -1, None),))])
    assert "g" not in s.offsets  # no tombstones left in the state or its snapshots
    assert "g" not in s.to_snapshot()["offsets"]
