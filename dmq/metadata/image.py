"""MetadataImage: the immutable read model of cluster metadata.

Controllers publish one after every applied metadata entry; brokers and clients build
theirs from MetadataFetch / Metadata answers. Everything here is frozen: a reader may
keep an image as long as it likes, it never changes under it. An image is cheap to
publish because unchanged `TopicInfo` objects are shared between versions (only the
dicts of brokers and topics are copied).

An image published by a `MetadataState` carries what changed since the image that
state published before it (`ImageChanges`, Kafka's metadata delta): a reader that
applied that previous image walks only the changed partitions (`image_changes`), not
every partition of the cluster, on each metadata change.

This module also owns the wire form of a Metadata answer (`metadata_body`), so that
controllers and brokers answer it identically, and its parsing (`image_from_metadata`)
for clients.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dmq.metadata.records import AccessControlEntry, UserScramCredential
from dmq.protocol.errors import ErrorCode

ONLINE = "ONLINE"
FENCED = "FENCED"
SHUTTING_DOWN = "SHUTTING_DOWN"
BROKER_STATES = (ONLINE, FENCED, SHUTTING_DOWN)
NO_LEADER = -1


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    broker_id: int
    host: str
    port: int
    rack: str | None
    broker_epoch: int
    state: str  # "ONLINE" | "FENCED" | "SHUTTING_DOWN"
    kafka_host: str | None = None  # the broker's advertised Kafka listener, if it runs one
    kafka_port: int = -1

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    topic: str
    partition: int
    replicas: tuple[int, ...]
    leader: int  # -1: none (offline)
    leader_epoch: int
    isr: tuple[int, ...]
    partition_epoch: int
    # a reassignment in progress (KIP-455): replicas being added / to be removed
    adding: tuple[int, ...] = ()
    removing: tuple[int, ...] = ()

    @property
    def target_replicas(self) -> tuple[int, ...]:
        """The replica set once the reassignment in progress (if any) completes."""
        return tuple(r for r in self.replicas if r not in self.removing)

    @property
    def original_replicas(self) -> tuple[int, ...]:
        """The replica set the reassignment in progress (if any) started from."""
        return tuple(r for r in self.replicas if r not in self.adding)


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    topic_id: str
    partitions: dict[int, PartitionInfo]
    configs: dict[str, str]  # explicitly set topic configs only; defaults are the cluster's

    @property
    def replication_factor(self) -> int:
        p0 = self.partitions.get(0)
        return len(p0.replicas) if p0 is not None else 0


@dataclass(frozen=True, slots=True)
class ImageChanges:
    """What changed from one image to the next: every partition that differs is in
    `topics` (a partition changed and changed back may be listed too).

    topics: topic name -> the partition numbers that changed, or None when the whole
    topic may have changed (created, deleted, re-created, its configs altered).
    brokers: ids of brokers registered, unregistered, or whose state changed.
    acls: whether the ACL set changed.
    """
    topics: Mapping[str, frozenset[int] | None]
    brokers: frozenset[int]
    # the image these changes start from (weak: an image must not keep the chain of
    # every image before it alive) and the dicts of the image they lead to
    _base: weakref.ref[MetadataImage] | None = field(default=None, compare=False,
                                                     repr=False)
    _topics_of: dict[str, TopicInfo] | None = field(default=None, compare=False, repr=False)
    _brokers_of: dict[int, BrokerInfo] | None = field(default=None, compare=False,
                                                      repr=False)
    acls: bool = False

    @property
    def empty(self) -> bool:
        return not self.topics and not self.brokers and not self.acls

    def leads_from(self, old: MetadataImage, new: MetadataImage) -> bool:
        """True if these are exactly the changes from `old` to `new`."""
        return (self._base is not None and self._base() is old
                and self._topics_of is new.topics and self._brokers_of is new.brokers)


NO_CHANGES = ImageChanges({}, frozenset())


@dataclass(frozen=True, slots=True, weakref_slot=True)
class MetadataImage:
    version: int  # Raft index of the last applied metadata entry
    controller_id: int  # -1: unknown
    brokers: dict[int, BrokerInfo]
    topics: dict[str, TopicInfo]
    controller_term: int = -1
    controller_address: tuple[str, int] | None = field(default=None)
    # set by MetadataState: the changes since the image it published before this one
    # (read them with `image_changes`, which checks that they apply)
    changes: ImageChanges | None = field(default=None, compare=False, repr=False)
    # the cluster's id, kept in Raft metadata from the first active controller on;
    # None before that record (and in images built from a Metadata answer without it)
    cluster_id: str | None = None
    # users (name -> mechanism -> credential; an empty map: deleted) and revoked HTTP
    # tokens (id -> expiry ms), shared with the state that published the image: it
    # replaces these dicts on a change, never changes them (dmq.metadata.state)
    users: Mapping[str, Mapping[str, UserScramCredential]] = field(default_factory=dict)
    revoked_tokens: Mapping[str, int] = field(default_factory=dict)
    # every ACL (dmq.security.acl enforces them); the same frozenset object from one
    # image to the next while the set does not change, so readers may cache by identity
    acls: frozenset[AccessControlEntry] = frozenset()
    # cluster-wide dynamic broker configs (DYNAMIC_CONFIG records: key -> value), over
    # the static settings of the config file; never changed in place
    dynamic_configs: Mapping[str, str] = field(default_factory=dict)

    def broker_config(self, key: str, broker_id: int) -> str | None:
        """A dynamic broker config as it applies to one broker: its own value (Kafka's
        broker entity, key `KEY:ID`, see `broker_config_key`) over the cluster-wide one
        (`KEY`, Kafka's --entity-default); None: neither is set (the static setting)."""
        own = self.dynamic_configs.get(broker_config_key(key, broker_id))
        return own if own is not None else self.dynamic_configs.get(key)

    def partition(self, topic: str, p: int) -> PartitionInfo | None:
        t = self.topics.get(topic)
        return None if t is None else t.partitions.get(p)

    def topic_config(self, topic: str, key: str) -> str | None:
        t = self.topics.get(topic)
        return None if t is None else t.configs.get(key)

    def partitions_of(self, broker_id: int) -> list[PartitionInfo]:
        """Every partition with a replica on the broker."""
        return [p for t in self.topics.values() for p in t.partitions.values()
                if broker_id in p.replicas]


def broker_config_key(key: str, broker_id: int) -> str:
    """The DYNAMIC_CONFIG key of `key`'s value for one broker (over the cluster-wide
    value, stored under `key` itself)."""
    return f"{key}:{broker_id}"


EMPTY_IMAGE = MetadataImage(0, NO_LEADER, {}, {})


def image_changes(old: MetadataImage | None, new: MetadataImage) -> ImageChanges | None:
    """What changed from `old` to `new`; None when `old` is None (everything is new).

    The changes `new` carries when they start from `old` (the usual case: each image
    of a `MetadataState` after the one before it), costing nothing; otherwise a
    comparison of the two images that skips every topic and partition object they
    share (a state shares unchanged ones between versions), so it walks only the
    topics that changed."""
    if old is None:
        return None
    if new is old:
        return NO_CHANGES
    ch = new.changes
    if ch is not None and ch.leads_from(old, new):
        return ch
    return _diff(old, new)


def _diff(old: MetadataImage, new: MetadataImage) -> ImageChanges:
    brokers = frozenset(b for b in old.brokers.keys() | new.brokers.keys()
                        if old.brokers.get(b) != new.brokers.get(b))
    topics: dict[str, frozenset[int] | None] = {}
    for name in old.topics.keys() | new.topics.keys():
        ot, nt = old.topics.get(name), new.topics.get(name)
        if ot is nt:
            continue
        if ot is None or nt is None or ot.topic_id != nt.topic_id or ot.configs != nt.configs:
            topics[name] = None
            continue
        op, np_ = ot.partitions, nt.partitions
        if op is np_:
            continue
        parts = frozenset(p for p in op.keys() | np_.keys()
                          if (a := op.get(p)) is not (b := np_.get(p)) and a != b)
        if parts:
            topics[name] = parts
    return ImageChanges(topics, brokers, acls=old.acls != new.acls)


# Metadata answer rows per partition dict. An image's dicts never change once it is
# published (a MetadataState copies a topic's dict before changing it again), so the
# rows of a topic are built once per version of that topic, not once per request: a
# client asking for a 10,000-partition topic costs a lookup. The entry holds its dict,
# so the id cannot be reused while cached.
_ROWS_CACHE_MAX = 64
_rows_cache: dict[int, tuple[dict[int, PartitionInfo], list[list[Any]]]] = {}


def _partition_rows(partitions: dict[int, PartitionInfo]) -> list[list[Any]]:
    hit = _rows_cache.get(id(partitions))
    if hit is not None and hit[0] is partitions:
        return hit[1]
    rows = []
    for p in sorted(partitions):
        pi = partitions[p]
        err = ErrorCode.NONE if pi.leader >= 0 else ErrorCode.LEADER_NOT_AVAILABLE
        rows.append([p, pi.leader, pi.leader_epoch, list(pi.replicas), list(pi.isr), int(err)])
    if len(partitions) >= 100:  # small topics cost less to build than to keep
        if len(_rows_cache) >= _ROWS_CACHE_MAX:
            _rows_cache.clear()
        _rows_cache[id(partitions)] = (partitions, rows)
    return rows


def metadata_body(image: MetadataImage, topics: Iterable[str] | None,
                  topic_errors: dict[str, int] | None = None) -> dict[str, Any]:
    """The answer to a Metadata request (see dmq/protocol/api.py). `topics` None means
    every topic; a named topic that is unknown gets UNKNOWN_TOPIC_OR_PARTITION unless
    `topic_errors` names another code for it (e.g. LEADER_NOT_AVAILABLE while it is
    being auto-created); a topic `topic_errors` names is answered with that error even
    when it exists (TOPIC_AUTHORIZATION_FAILED). Only ONLINE and SHUTTING_DOWN brokers
    are listed: a client never needs a fenced broker's address."""
    errors = topic_errors or {}
    names = sorted(image.topics) if topics is None else list(dict.fromkeys(topics))
    out_topics: list[dict[str, Any]] = []
    for name in names:
        t = image.topics.get(name)
        if t is None or name in errors:
            out_topics.append({"name": name, "id": None, "partitions": [],
                               "error": int(errors.get(
                                   name, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION))})
            continue
        out_topics.append({"name": name, "id": t.topic_id, "error": 0,
                           "partitions": _partition_rows(t.partitions)})
    brokers = [[b.broker_id, b.host, b.port, b.rack] for _, b in sorted(image.brokers.items())
               if b.state != FENCED]
    body: dict[str, Any] = {"controller_id": image.controller_id, "version": image.version,
                            "brokers": brokers, "topics": out_topics,
                            "controller_term": image.controller_term}
    if image.controller_address is not None and image.controller_id >= 0:
        body["controller"] = [image.controller_id, *image.controller_address]
    if image.cluster_id is not None:
        body["cluster_id"] = image.cluster_id
    return body


def image_from_metadata(body: dict[str, Any]) -> MetadataImage:
    """A (partial) image from a Metadata answer, for clients. Broker epochs and the
    partition epoch are not in that answer and read as -1; brokers are all ONLINE."""
    brokers = {int(b[0]): BrokerInfo(int(b[0]), b[1], int(b[2]), b[3], -1, ONLINE)
               for b in body.get("brokers", [])}
    topics: dict[str, TopicInfo] = {}
    for t in body.get("topics", []):
        if t.get("error", 0) != 0:
            continue
        parts = {int(p[0]): PartitionInfo(t["name"], int(p[0]), tuple(p[3]), int(p[1]),
                                          int(p[2]), tuple(p[4]), -1)
                 for p in t["partitions"]}
        topics[t["name"]] = TopicInfo(t["name"], t.get("id") or "", parts, {})
    ctl = body.get("controller")
    return MetadataImage(int(body.get("version", 0)), int(body.get("controller_id", -1)),
                         brokers, topics, int(body.get("controller_term", -1)),
                         (ctl[1], int(ctl[2])) if ctl else None,
                         cluster_id=body.get("cluster_id") or None)


__all__ = [
    "BROKER_STATES",
    "EMPTY_IMAGE",
    "FENCED",
    "NO_CHANGES",
    "NO_LEADER",
    "ONLINE",
    "SHUTTING_DOWN",
    "BrokerInfo",
    "ImageChanges",
    "MetadataImage",
    "PartitionInfo",
    "TopicInfo",
    "broker_config_key",
    "image_changes",
    "image_from_metadata",
    "metadata_body",
]
