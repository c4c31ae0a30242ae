"""MetadataState: cluster metadata as applied from committed metadata records.

Every controller holds one, fed by the Raft apply loop; every broker holds one, fed by
MetadataFetch. Applying is deterministic and never fails on a record it cannot use: a
record that no longer fits the state (a topic deleted meanwhile, a partition epoch that
moved) is skipped and counted, identically everywhere. It never does I/O, never reads a
clock and never imports asyncio.

Copy-on-write: brokers and topics are stored as the frozen `image` classes. A topic's
partition dict is copied the first time an entry changes it after an image was
published, so publishing (`image()`) only copies the two top-level dicts.

Each published image carries the changes since the image published before it
(`ImageChanges`): the partitions and brokers the applied records touched, so that a
broker applies only those to its replicas.

Snapshot format (msgpack map, version 1)::

    {"v": 1, "version": last applied index,
     "brokers": [[id, host, port, rack, epoch, state, incarnation_id, changed_at
                  [, kafka_host, kafka_port]], ...],
     "topics": [[name, topic_id, {configs},
                 [[partition, [replicas], leader, leader_epoch, [isr], partition_epoch
                   [, [adding], [removing]] (only while a reassignment is in progress)
                  ]]]],
     "next_producer_id": int,
     "cluster_id": str (absent until the CLUSTER_ID record),
     "offsets": {group: [[topic, partition, offset, metadata, commit_ms], ...]},
     "users": [[user, [[mechanism, salt, iterations, stored_key, server_key], ...]]]
              ([] for a deleted user; absent when there are none),
     "revoked_tokens": [[token_id, expires_ms], ...] (absent when there are none)}

"offsets" is absent in the broker-facing snapshot of MetadataFetch; users and revoked
tokens are in both (brokers check logins and tokens themselves).

Users: `users` maps a name to its credentials by mechanism (the USER_SCRAM_CREDENTIAL
records themselves); an empty map is a deleted user. Like a topic's partitions, the
dict is copied the first time an entry changes it after an image shared it (so a
published image never sees it change, and an entry of many user records copies it
once); likewise `revoked_tokens` (token id -> expiry in ms).
     "acls": [[resource_type, resource_name, pattern_type, principal, host, operation,
               permission], ...] (absent while there is none)}

"offsets" is absent in the broker-facing snapshot of MetadataFetch; "acls" is in both.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from dataclasses import replace
from typing import Any

from dmq.metadata.image import (
    FENCED,
    NO_LEADER,
    ONLINE,
    SHUTTING_DOWN,
    BrokerInfo,
    ImageChanges,
    MetadataImage,
    PartitionInfo,
    TopicInfo,
)
from dmq.metadata.records import (
    NO_CHANGE,
    AccessControlEntry,
    AddPartitions,
    ClusterId,
    CreateTopic,
    OffsetCommit,
    PartitionChange,
    PartitionReassign,
    ProducerIds,
    Record,
    RecordType,
    RegisterBroker,
    RemoveAccessControlEntry,
    RemoveTopic,
    RemoveUserScramCredential,
    RevokeToken,
    TopicConfig,
    UserScramCredential,
    acl_entry,
    record_from_wire,
)

log = logging.getLogger("dmq.metadata.state")

SNAPSHOT_FORMAT = 1
FIRST_PRODUCER_ID = 1000


class MetadataState:
    def __init__(self, *, keep_offsets: bool = True, history_entries: int = 0) -> None:
        self.version = 0
        self.brokers: dict[int, BrokerInfo] = {}
        self.incarnations: dict[int, str] = {}
        # version of the entry that last changed each broker's registration or state: a
        # fenced broker is unfenced only once it has seen that entry
        self.broker_changed_at: dict[int, int] = {}
        self.topics: dict[str, TopicInfo] = {}
        self.topic_names_by_id: dict[str, str] = {}
        # partitions with a reassignment in progress (adding or removing replicas): the
        # controller checks these often, so it does not walk every partition to find them
        self.reassigning: set[tuple[str, int]] = set()
        self.next_producer_id = FIRST_PRODUCER_ID
        self.cluster_id: str | None = None  # set once, by the CLUSTER_ID record
        # group -> (topic, partition) -> (offset, metadata, commit_ms)
        self.offsets: dict[str, dict[tuple[str, int], tuple[int, str | None, int]]] = {}
        self.keep_offsets = keep_offsets
        # users and revoked HTTP tokens (see the module doc: replaced, never changed)
        self.users: dict[str, dict[str, UserScramCredential]] = {}
        self.revoked_tokens: dict[str, int] = {}
        self._users_shared = False  # an image holds `users` / `revoked_tokens`
        # every ACL; replaced (never changed in place) so images share it by identity
        self.acls: frozenset[AccessControlEntry] = frozenset()
        self.skipped_records = 0
        # recent entries for MetadataFetch deltas: (index, wire records)
        self.history: deque[tuple[int, list[list[Any]]]] = deque(maxlen=history_entries or 1)
        self.keep_history = history_entries > 0
        self.history_floor = 0  # deltas are available for versions >= this
        self._owned: set[str] = set()  # topics whose partition dict no image shares yet
        self._image: MetadataImage | None = None
        # what changed since the last published image (see ImageChanges); the base is
        # None after a restore: the next image has no changes to offer (all is new)
        self._changed_topics: dict[str, set[int] | None] = {}
        self._changed_brokers: set[int] = set()
        self._changed_acls = False
        self._changes_base: weakref.ref[MetadataImage] | None = None
        self._apply = {
            RecordType.REGISTER_BROKER: self._register_broker,
            RecordType.FENCE_BROKER: self._fence_broker,
            RecordType.UNFENCE_BROKER: self._unfence_broker,
            RecordType.BROKER_SHUTTING_DOWN: self._broker_shutting_down,
            RecordType.CREATE_TOPIC: self._create_topic,
            RecordType.ADD_PARTITIONS: self._add_partitions,
            RecordType.REMOVE_TOPIC: self._remove_topic,
            RecordType.PARTITION_CHANGE: self._partition_change,
            RecordType.TOPIC_CONFIG: self._topic_config,
            RecordType.PRODUCER_IDS: self._producer_ids,
            RecordType.OFFSET_COMMIT: self._offset_commit,
            RecordType.PARTITION_REASSIGN: self._partition_reassign,
            RecordType.UNREGISTER_BROKER: self._unregister_broker,
            RecordType.CLUSTER_ID: self._cluster_id,
            RecordType.ACCESS_CONTROL_ENTRY: self._add_acl,
            RecordType.REMOVE_ACCESS_CONTROL_ENTRY: self._remove_acl,
        }
        self._apply.update({
            RecordType.USER_SCRAM_CREDENTIAL: self._user_scram_credential,
            RecordType.REMOVE_USER_SCRAM_CREDENTIAL: self._remove_user_scram_credential,
            RecordType.REVOKE_TOKEN: self._revoke_token,
        })

    # applying ---------------------------------------------------------------------------
    def apply_entry(self, index: int, wire_records: list[list[Any]]) -> None:
        """Apply one committed entry's records (wire form); the version becomes `index`."""
        assert index > self.version, f"entry {index} applied after {self.version}"
        for wire in wire_records:
            self.apply_record(record_from_wire(wire), index)
        self.advance_to(index)
        if self.keep_history and wire_records:
            self.history.append((index, wire_records))
            if len(self.history) == self.history.maxlen:
                self.history_floor = self.history[0][0] - 1

    def advance_to(self, index: int) -> None:
        """An entry without metadata records (a Raft no-op) still moves the version."""
        if index > self.version:
            self.version = index
            self._image = None

    def apply_record(self, rec: Record, index: int) -> None:
        self._image = None
        self._apply[rec.TYPE](rec, index)

    def _skip(self, rec: Record, why: str) -> None:
        self.skipped_records += 1
        log.warning("skipping metadata record %s: %s", rec, why)

    def _register_broker(self, rec: Any, index: int) -> None:
        r: RegisterBroker = rec
        self.brokers[r.broker_id] = BrokerInfo(r.broker_id, r.host, r.port, r.rack, index, FENCED,
                                               r.kafka_host, r.kafka_port)
        self.incarnations[r.broker_id] = r.incarnation_id
        self.broker_changed_at[r.broker_id] = index
        self._broker_changed(r.broker_id)

    def _set_broker_state(self, broker_id: int, epoch: int, state: str, rec: Record,
                          index: int) -> None:
        b = self.brokers.get(broker_id)
        if b is None or b.broker_epoch != epoch:
            self._skip(rec, "unknown broker or stale broker epoch")
            return
        self.brokers[broker_id] = replace(b, state=state)
        self.broker_changed_at[broker_id] = index
        self._broker_changed(broker_id)

    def _unregister_broker(self, rec: Any, index: int) -> None:
        b = self.brokers.get(rec.broker_id)
        if b is None or b.broker_epoch != rec.broker_epoch:
            self._skip(rec, "unknown broker or stale broker epoch")
            return
        del self.brokers[rec.broker_id]
        self.incarnations.pop(rec.broker_id, None)
        self.broker_changed_at.pop(rec.broker_id, None)
        self._broker_changed(rec.broker_id)

    def _fence_broker(self, rec: Any, index: int) -> None:
        self._set_broker_state(rec.broker_id, rec.broker_epoch, FENCED, rec, index)

    def _unfence_broker(self, rec: Any, index: int) -> None:
        self._set_broker_state(rec.broker_id, rec.broker_epoch, ONLINE, rec, index)

    def _broker_shutting_down(self, rec: Any, index: int) -> None:
        self._set_broker_state(rec.broker_id, rec.broker_epoch, SHUTTING_DOWN, rec, index)

    def _create_topic(self, rec: Any, index: int) -> None:
        r: CreateTopic = rec
        if r.name in self.topics or r.topic_id in self.topic_names_by_id:
            self._skip(rec, "topic exists")
            return
        parts = {p: PartitionInfo(r.name, p, reps, reps[0] if reps else NO_LEADER, 0, reps, 0)
                 for p, reps in enumerate(r.assignments)}
        self.topics[r.name] = TopicInfo(r.name, r.topic_id, parts, dict(r.configs))
        self.topic_names_by_id[r.topic_id] = r.name
        self._owned.add(r.name)
        self._topic_changed(r.name)

    def _add_partitions(self, rec: Any, index: int) -> None:
        r: AddPartitions = rec
        t = self.topics.get(r.name)
        if t is None or t.topic_id != r.topic_id or r.first_partition != len(t.partitions):
            self._skip(rec, "topic gone or partition count moved")
            return
        parts = self._own_partitions(t)
        for i, reps in enumerate(r.assignments):
            p = r.first_partition + i
            parts[p] = PartitionInfo(r.name, p, reps, reps[0] if reps else NO_LEADER, 0, reps, 0)
            self._changed(r.name, p)

    def _remove_topic(self, rec: Any, index: int) -> None:
        r: RemoveTopic = rec
        t = self.topics.get(r.name)
        if t is None or t.topic_id != r.topic_id:
            self._skip(rec, "topic gone")
            return
        del self.topics[r.name]
        self.topic_names_by_id.pop(r.topic_id, None)
        self._owned.discard(r.name)
        self._topic_changed(r.name)
        for p in t.partitions:
            self.reassigning.discard((r.name, p))

    # what changed since the last published image --------------------------------------
    def _tracking(self) -> bool:
        """Changes are kept only while the image they would start from is alive: when
        nobody holds it (a controller's images, read and dropped), no reader can use
        them, and a state that publishes no more keeps nothing growing."""
        base = self._changes_base
        if base is None:
            return False
        if base() is None:
            self._changes_base = None
            self._changed_topics = {}
            self._changed_brokers = set()
            self._changed_acls = False
            return False
        return True

    def _broker_changed(self, broker_id: int) -> None:
        if self._tracking():
            self._changed_brokers.add(broker_id)

    def _topic_changed(self, topic: str) -> None:
        if self._tracking():
            self._changed_topics[topic] = None

    def _changed(self, topic: str, partition: int) -> None:
        if not self._tracking():
            return
        if topic not in self._changed_topics:
            self._changed_topics[topic] = {partition}
        else:
            parts = self._changed_topics[topic]
            if parts is not None:  # None: the whole topic changed already
                parts.add(partition)

    def _own_partitions(self, t: TopicInfo) -> dict[int, PartitionInfo]:
        """The topic's partition dict, copied first if a published image shares it."""
        if t.name not in self._owned:
            t = replace(t, partitions=dict(t.partitions))
            self.topics[t.name] = t
            self._owned.add(t.name)
        return t.partitions

    def _partition_to_change(self, rec: PartitionChange | PartitionReassign
                             ) -> tuple[TopicInfo, PartitionInfo] | None:
        """The topic and partition a change applies to; None (the record skipped) when
        the partition is unknown or its epoch is not the one the change was planned at."""
        t = self.topics.get(rec.topic)
        p = None if t is None else t.partitions.get(rec.partition)
        if t is None or p is None:
            self._skip(rec, "unknown partition")
            return None
        if p.partition_epoch != rec.partition_epoch:
            self._skip(rec, f"partition epoch is {p.partition_epoch}")
            return None
        return t, p

    def _partition_change(self, rec: Any, index: int) -> None:
        r: PartitionChange = rec
        found = self._partition_to_change(r)
        if found is None:
            return
        t, p = found
        leader, leader_epoch = _leader_after(p, r.leader)
        isr = p.isr if r.isr is None else r.isr
        self._own_partitions(t)[r.partition] = PartitionInfo(
            p.topic, p.partition, p.replicas, leader, leader_epoch, isr, p.partition_epoch + 1,
            p.adding, p.removing)
        self._changed(r.topic, r.partition)

    def _partition_reassign(self, rec: Any, index: int) -> None:
        r: PartitionReassign = rec
        found = self._partition_to_change(r)
        if found is None:
            return
        t, p = found
        leader, leader_epoch = _leader_after(p, r.leader)
        isr = tuple(b for b in (p.isr if r.isr is None else r.isr) if b in r.replicas)
        if not isr:  # the ISR never becomes empty (see the planner)
            isr = p.isr
        self._own_partitions(t)[r.partition] = PartitionInfo(
            p.topic, p.partition, r.replicas, leader, leader_epoch, isr, p.partition_epoch + 1,
            r.adding, r.removing)
        self._changed(r.topic, r.partition)
        if r.adding or r.removing:
            self.reassigning.add((r.topic, r.partition))
        else:
            self.reassigning.discard((r.topic, r.partition))

    def _topic_config(self, rec: Any, index: int) -> None:
        r: TopicConfig = rec
        t = self.topics.get(r.name)
        if t is None:
            self._skip(rec, "unknown topic")
            return
        configs = dict(t.configs)
        if r.value is None:
            configs.pop(r.key, None)
        else:
            configs[r.key] = r.value
        self.topics[r.name] = replace(t, configs=configs)
        self._topic_changed(r.name)

    def _cluster_id(self, rec: Any, index: int) -> None:
        r: ClusterId = rec
        if self.cluster_id is not None:
            if r.cluster_id != self.cluster_id:
                self._skip(rec, f"the cluster id is {self.cluster_id} for good")
            return
        self.cluster_id = r.cluster_id

    def _add_acl(self, rec: Any, index: int) -> None:
        r: AccessControlEntry = rec
        if r in self.acls:
            self._skip(rec, "the ACL exists")
            return
        self.acls = self.acls | {r}
        self._acls_changed()

    def _remove_acl(self, rec: Any, index: int) -> None:
        r: RemoveAccessControlEntry = rec
        if r.entry not in self.acls:
            self._skip(rec, "no such ACL")
            return
        self.acls = self.acls - {r.entry}
        self._acls_changed()

    def _acls_changed(self) -> None:
        if self._tracking():
            self._changed_acls = True

    def _producer_ids(self, rec: Any, index: int) -> None:
        r: ProducerIds = rec
        if r.next_producer_id <= self.next_producer_id:
            self._skip(rec, "producer id block would go backwards")
            return
        self.next_producer_id = r.next_producer_id

    def _offset_commit(self, rec: Any, index: int) -> None:
        if not self.keep_offsets:
            return
        r: OffsetCommit = rec
        group = self.offsets.setdefault(r.group, {})
        for topic, partition, offset, metadata in r.offsets:
            if offset < 0:
                # a deletion (group delete, offsets retention): drop the entry instead of
                # keeping a tombstone in the state and every snapshot
                group.pop((topic, partition), None)
            else:
                group[(topic, partition)] = (offset, metadata, r.commit_ms)
        if not group:
            del self.offsets[r.group]

    # users and HTTP tokens ----------------------------------------------------------------
    def _own_users(self) -> None:
        """Copy the users and revocations first if a published image shares them."""
        if self._users_shared:
            self.users = dict(self.users)
            self.revoked_tokens = dict(self.revoked_tokens)
            self._users_shared = False

    def _user_scram_credential(self, rec: Any, index: int) -> None:
        r: UserScramCredential = rec
        self._own_users()
        self.users[r.user] = {**self.users.get(r.user, {}), r.mechanism: r}

    def _remove_user_scram_credential(self, rec: Any, index: int) -> None:
        r: RemoveUserScramCredential = rec
        self._own_users()
        # an empty map: deleted, and kept as such
        self.users[r.user] = {m: c for m, c in self.users.get(r.user, {}).items()
                              if m != r.mechanism}

    def _revoke_token(self, rec: Any, index: int) -> None:
        r: RevokeToken = rec
        self._own_users()
        revoked = self.revoked_tokens
        for token_id in [t for t, exp in revoked.items() if exp <= r.now_ms]:
            del revoked[token_id]
        if r.expires_ms > r.now_ms:
            revoked[r.token_id] = r.expires_ms

    # reading ----------------------------------------------------------------------------
    def image(self, controller_id: int = NO_LEADER, controller_term: int = -1,
              controller_address: tuple[str, int] | None = None) -> MetadataImage:
        img = self._image
        if (img is None or img.controller_id != controller_id
                or img.controller_term != controller_term
                or img.controller_address != controller_address):
            brokers, topics = dict(self.brokers), dict(self.topics)
            changes = None
            if self._changes_base is not None:
                changes = ImageChanges(
                    {t: None if ps is None else frozenset(ps)
                     for t, ps in self._changed_topics.items()},
                    frozenset(self._changed_brokers), self._changes_base, topics, brokers,
                    self._changed_acls)
            img = MetadataImage(self.version, controller_id, brokers, topics, controller_term,
                                controller_address, changes, self.cluster_id,
                                acls=self.acls, users=self.users,
                                revoked_tokens=self.revoked_tokens)
            self._users_shared = True
            self._owned.clear()
            self._changed_topics = {}
            self._changed_brokers = set()
            self._changed_acls = False
            self._changes_base = weakref.ref(img)
            self._image = img
        return img

    def records_since(self, version: int, max_entries: int) -> list[list[Any]] | None:
        """[[index, [record, ...]], ...] for entries after `version`, or None when the
        history does not reach back that far (the caller sends a snapshot)."""
        if not self.keep_history or version < self.history_floor:
            return None
        out: list[list[Any]] = []
        for index, recs in reversed(self.history):
            if index <= version:
                break
            out.append([index, recs])
        out.reverse()
        return out[:max_entries]

    def offsets_of(self, group: str) -> dict[tuple[str, int], tuple[int, str | None, int]]:
        return dict(self.offsets.get(group, {}))

    # snapshot ---------------------------------------------------------------------------
    def to_snapshot(self, *, include_offsets: bool = True) -> dict[str, Any]:
        brokers = [[b.broker_id, b.host, b.port, b.rack, b.broker_epoch, b.state,
                    self.incarnations.get(b.broker_id, ""),
                    self.broker_changed_at.get(b.broker_id, b.broker_epoch),
                    *([b.kafka_host, b.kafka_port] if b.kafka_port >= 0 else [])]
                   for _, b in sorted(self.brokers.items())]
        topics = [[t.name, t.topic_id, dict(t.configs),
                   [[p.partition, list(p.replicas), p.leader, p.leader_epoch, list(p.isr),
                     p.partition_epoch, *([list(p.adding), list(p.removing)]
                                          if p.adding or p.removing else [])]
                    for _, p in sorted(t.partitions.items())]]
                  for _, t in sorted(self.topics.items())]
        snap: dict[str, Any] = {"v": SNAPSHOT_FORMAT, "version": self.version,
                                "brokers": brokers, "topics": topics,
                                "next_producer_id": self.next_producer_id}
        if self.cluster_id is not None:
            snap["cluster_id"] = self.cluster_id
        if self.users:
            snap["users"] = [[u, [[m, c.salt, c.iterations, c.stored_key, c.server_key]
                                  for m, c in sorted(creds.items())]]
                             for u, creds in sorted(self.users.items())]
        if self.revoked_tokens:
            snap["revoked_tokens"] = [[t, exp] for t, exp in sorted(self.revoked_tokens.items())]
        if self.acls:
            snap["acls"] = sorted(e.fields() for e in self.acls)
        if include_offsets:
            snap["offsets"] = {g: [[t, p, o, md, ts] for (t, p), (o, md, ts) in sorted(
                offs.items())] for g, offs in sorted(self.offsets.items())}
        return snap

    def restore(self, snap: dict[str, Any]) -> None:
        """Replace the whole state with a snapshot's (history restarts from it)."""
        if snap.get("v") != SNAPSHOT_FORMAT:
            raise ValueError(f"unsupported metadata snapshot format {snap.get('v')!r}")
        self.version = int(snap["version"])
        self.brokers = {}
        self.incarnations = {}
        self.broker_changed_at = {}
        for bid, host, port, rack, epoch, state, inc, changed_at, *kafka in snap["brokers"]:
            self.brokers[bid] = BrokerInfo(bid, host, port, rack, epoch, state,
                                           *(kafka[:2] if len(kafka) >= 2 else ()))
            self.incarnations[bid] = inc
            self.broker_changed_at[bid] = changed_at
        self.topics = {}
        self.topic_names_by_id = {}
        for name, tid, configs, parts in snap["topics"]:
            pmap = {p: PartitionInfo(name, p, tuple(reps), leader, le, tuple(isr), pe,
                                     *((tuple(mv[0]), tuple(mv[1])) if mv else ()))
                    for p, reps, leader, le, isr, pe, *mv in parts}
            self.topics[name] = TopicInfo(name, tid, pmap, dict(configs))
            self.topic_names_by_id[tid] = name
        self.reassigning = {(p.topic, p.partition) for t in self.topics.values()
                            for p in t.partitions.values() if p.adding or p.removing}
        self.next_producer_id = int(snap["next_producer_id"])
        cluster_id = snap.get("cluster_id")
        self.cluster_id = cluster_id if isinstance(cluster_id, str) and cluster_id else None
        self.users = {u: {m: UserScramCredential(u, m, salt, int(it), sk, vk)
                          for m, salt, it, sk, vk in creds}
                      for u, creds in snap.get("users", [])}
        self.revoked_tokens = {t: int(exp) for t, exp in snap.get("revoked_tokens", [])}
        self._users_shared = False
        self.acls = frozenset(acl_entry(f) for f in snap.get("acls", ()))
        self.offsets = {}
        if self.keep_offsets:
            for g, rows in snap.get("offsets", {}).items():
                self.offsets[g] = {(t, p): (o, md, ts) for t, p, o, md, ts in rows}
        self.history.clear()
        self.history_floor = self.version
        self._owned = set(self.topics)
        self._image = None
        self._changed_topics = {}
        self._changed_brokers = set()
        self._changed_acls = False
        self._changes_base = None


def _leader_after(p: PartitionInfo, leader: int) -> tuple[int, int]:
    """(leader, leader epoch) of `p` once a record names `leader` (NO_CHANGE: keep the
    current one): the leader epoch moves only when the leader does."""
    if leader == NO_CHANGE or leader == p.leader:
        return p.leader, p.leader_epoch
    return leader, p.leader_epoch + 1


__all__ = ["FIRST_PRODUCER_ID", "MetadataState"]
