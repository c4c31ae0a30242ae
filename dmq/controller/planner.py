"""The controller's decisions: given the applied metadata state and a request, which
records to write and what to answer.

Every method is pure (no I/O, no clock, randomness only from the injected
`random.Random`) and changes nothing: it returns records for the service to propose
through Raft. The service serializes writes, so a plan is always made against the state
its records will be applied to; the state still skips a record that no longer fits.

Leadership rules (Kafka's, KRaft flavour):
- a leader is chosen in replica order among ISR members that are ONLINE (never a
  FENCED or SHUTTING_DOWN broker); the preferred leader is the first replica;
- fencing a broker removes it from every ISR and moves every leadership it held; the
  ISR never becomes empty: its last member stays, with leader -1 (offline), so the
  partition comes back cleanly when that broker does;
- an offline partition gets an out-of-sync leader (any ONLINE replica, ISR = [it]) only
  when `unclean.leader.election.enable` is on for its topic (or cluster-wide);
- a leader change bumps the leader epoch; every change bumps the partition epoch.

Reassignment (Kafka's KIP-455): starting one writes replicas = target + the old ones,
with `adding` and `removing`; the leader adds the new replicas to the ISR as they catch
up; once every target replica is in the ISR the active controller writes the target
alone (ISR cut to it, leadership moved to an online in-sync target replica if the leader
leaves). A cancel goes back to the original replicas. Brokers drop (and delete) the
replicas they are no longer assigned.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from dmq.controller.placement import assign_replicas, decommission_moves
from dmq.controller.validation import (
    TOPIC_CONFIG_CHECKS,
    PartitionLimits,
    validate_dynamic_config,
    validate_topic_config,
    validate_topic_name,
)
from dmq.metadata.image import FENCED, NO_LEADER, ONLINE, SHUTTING_DOWN, PartitionInfo
from dmq.metadata.records import (
    NO_CHANGE,
    AddPartitions,
    BrokerShuttingDown,
    CreateTopic,
    DynamicConfig,
    FenceBroker,
    OffsetCommit,
    PartitionChange,
    PartitionReassign,
    ProducerIds,
    Record,
    RegisterBroker,
    RemoveTopic,
    TopicConfig,
    UnfenceBroker,
    UnregisterBroker,
)
from dmq.metadata.state import MetadataState
from dmq.protocol.errors import (
    BrokerFencedError,
    BrokerIdNotRegisteredError,
    DmqError,
    ErrorCode,
    FencedLeaderEpochError,
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidReplicaAssignmentError,
    InvalidReplicationFactorError,
    InvalidRequestError,
    NoReassignmentInProgressError,
    NotLeaderOrFollowerError,
    PolicyViolationError,
    StaleBrokerEpochError,
    TopicAlreadyExistsError,
    UnknownLeaderEpochError,
    UnknownTopicOrPartitionError,
)
from dmq.security.quotas import QUOTA_KEYS, check_rate, check_user, config_key

PRODUCER_ID_BLOCK = 1000

GetSetting = Callable[[str], Any]


def topic_result(name: str, exc: DmqError | None = None, **extra: Any) -> dict[str, Any]:
    if exc is None:
        return {"name": name, "error": 0, "msg": None, **extra}
    return {"name": name, "error": int(exc.code), "msg": exc.message, **extra}


class Planner:
    def __init__(self, state: MetadataState, get_setting: GetSetting,
                 rng: random.Random | None = None) -> None:
        self.state = state
        self.get_setting = get_setting
        self.rng = rng or random.Random()
        self._counts: dict[int, int] = {}
        self._counts_version = -1  # the metadata version `_counts` was computed at

    # helpers ----------------------------------------------------------------------------
    def _online(self, exclude: Iterable[int] = (), include: Iterable[int] = ()) -> set[int]:
        out = {b.broker_id for b in self.state.brokers.values() if b.state == ONLINE}
        out.update(include)
        out.difference_update(exclude)
        return out

    def unclean_enabled(self, topic: str) -> bool:
        t = self.state.topics.get(topic)
        v = None if t is None else t.configs.get("unclean.leader.election.enable")
        if v is None:
            return bool(self.get_setting("unclean.leader.election.enable"))
        return v == "true"

    @staticmethod
    def choose_leader(p: PartitionInfo, isr: tuple[int, ...], eligible: set[int]) -> int:
        for r in p.replicas:
            if r in isr and r in eligible:
                return r
        return NO_LEADER

    def _elect(self, p: PartitionInfo, isr: tuple[int, ...],
               eligible: set[int]) -> tuple[int, tuple[int, ...]]:
        """Leader and ISR for a partition whose leader must be (re)chosen."""
        leader = self.choose_leader(p, isr, eligible)
        if leader == NO_LEADER and self.unclean_enabled(p.topic):
            for r in p.replicas:
                if r in eligible:
                    return r, (r,)
        return leader, isr

    def check_broker(self, broker_id: int, broker_epoch: int) -> None:
        b = self.state.brokers.get(broker_id)
        if b is None:
            raise BrokerIdNotRegisteredError(f"broker {broker_id} is not registered")
        if b.broker_epoch != broker_epoch:
            raise StaleBrokerEpochError(f"broker {broker_id} epoch {broker_epoch} is not the "
                                        f"registered epoch {b.broker_epoch}")

    def _all_partitions(self) -> Iterable[PartitionInfo]:
        for t in self.state.topics.values():
            yield from t.partitions.values()

    # broker lifecycle --------------------------------------------------------------------
    def _remove_broker(self, broker_id: int) -> list[Record]:
        """Changes that take `broker_id` out of every ISR and leadership (fencing)."""
        eligible = self._online(exclude=(broker_id,))
        out: list[Record] = []
        for p in self._all_partitions():
            if broker_id not in p.isr and p.leader != broker_id:
                continue
            others = tuple(r for r in p.isr if r != broker_id)
            leader = p.leader
            isr = others or p.isr  # the ISR keeps its last member
            if p.leader == broker_id:
                leader, isr = self._elect(p, others, eligible)
                if leader == NO_LEADER:
                    isr = others or p.isr
            if leader != p.leader or isr != p.isr:
                out.append(PartitionChange(p.topic, p.partition, p.partition_epoch,
                                           leader if leader != p.leader else NO_CHANGE,
                                           isr if isr != p.isr else None))
        return out

    def register_broker(self, broker_id: int, host: str, port: int, rack: str | None,
                        incarnation_id: str, kafka_host: str | None = None,
                        kafka_port: int = -1) -> list[Record]:
        """A same-incarnation re-registration changes nothing; a new incarnation (the
        broker restarted) fences the old registration's leaderships first."""
        old = self.state.brokers.get(broker_id)
        if old is not None and self.state.incarnations.get(broker_id) == incarnation_id \
                and (old.host, old.port, old.rack, old.kafka_host, old.kafka_port) \
                == (host, port, rack, kafka_host, kafka_port):
            return []
        out: list[Record] = []
        if old is not None:
            out += self._remove_broker(broker_id)
        out.append(RegisterBroker(broker_id, host, port, rack, incarnation_id, kafka_host,
                                  kafka_port))
        return out

    def fence_broker(self, broker_id: int) -> list[Record]:
        b = self.state.brokers.get(broker_id)
        if b is None or b.state == FENCED:
            return []
        return [FenceBroker(broker_id, b.broker_epoch), *self._remove_broker(broker_id)]

    def unfence_broker(self, broker_id: int) -> list[Record]:
        """UNFENCE, then lead every offline partition that can now have a leader."""
        b = self.state.brokers.get(broker_id)
        if b is None or b.state != FENCED:
            return []
        return [UnfenceBroker(broker_id, b.broker_epoch),
                *self.elect_offline_leaders(include=(broker_id,))]

    def elect_offline_leaders(self, include: Iterable[int] = (),
                              topic: str | None = None) -> list[Record]:
        eligible = self._online(include=include)
        out: list[Record] = []
        topics = ([self.state.topics[topic]] if topic in self.state.topics else []) \
            if topic is not None else list(self.state.topics.values())
        for t in topics:
            for p in t.partitions.values():
                if p.leader != NO_LEADER:
                    continue
                leader, isr = self._elect(p, p.isr, eligible)
                if leader != NO_LEADER:
                    out.append(PartitionChange(p.topic, p.partition, p.partition_epoch, leader,
                                               isr if isr != p.isr else None))
        return out

    def controlled_shutdown(self, broker_id: int) -> list[Record]:
        """SHUTTING_DOWN, move each leadership to another ISR member, leave the ISRs.
        Partitions with no other in-sync replica stay led by the broker."""
        b = self.state.brokers.get(broker_id)
        if b is None:
            return []
        out: list[Record] = []
        if b.state != SHUTTING_DOWN:
            out.append(BrokerShuttingDown(broker_id, b.broker_epoch))
        eligible = self._online(exclude=(broker_id,))
        for p in self._all_partitions():
            if broker_id not in p.isr:
                continue
            others = tuple(r for r in p.isr if r != broker_id)
            if p.leader == broker_id:
                leader = self.choose_leader(p, others, eligible)
                if leader != NO_LEADER:
                    out.append(PartitionChange(p.topic, p.partition, p.partition_epoch, leader,
                                               others))
            elif others and p.leader != NO_LEADER:
                out.append(PartitionChange(p.topic, p.partition, p.partition_epoch, NO_CHANGE,
                                           others))
        return out

    def unregister_broker(self, broker_id: int) -> list[Record]:
        """Forget a broker that will never return. Refused while any partition lists
        it as a replica (decommission it first): its data would be forgotten with it."""
        b = self.state.brokers.get(broker_id)
        if b is None:  # (BROKER_ID_NOT_REGISTERED is retriable: clients would wait)
            raise InvalidRequestError(f"broker {broker_id} is not registered")
        hosted = [f"{p.topic}-{p.partition}" for p in self._all_partitions()
                  if broker_id in p.replicas]
        if hosted:
            raise InvalidRequestError(
                f"broker {broker_id} still hosts {len(hosted)} partition replica(s) "
                f"({', '.join(hosted[:5])}{', ...' if len(hosted) > 5 else ''}); "
                f"decommission it first (dmq brokers decommission {broker_id})")
        return [UnregisterBroker(broker_id, b.broker_epoch)]

    def leaderships(self, broker_id: int) -> int:
        return sum(1 for p in self._all_partitions() if p.leader == broker_id)

    def unmovable_leaderships(self, broker_id: int) -> int:
        """Partitions the broker leads with no other ONLINE in-sync replica to take over."""
        eligible = self._online(exclude=(broker_id,))
        return sum(1 for p in self._all_partitions() if p.leader == broker_id
                   and self.choose_leader(p, p.isr, eligible) == NO_LEADER)

    def preferred_leader_elections(self, max_changes: int = 1000,
                                   imbalance_percentage: int = 0) -> list[Record]:
        """The automatic balancer's step (`auto.leader.rebalance.enable`). As Kafka's, per
        broker: of the partitions it is the preferred leader of (first replica), the
        share it does not lead; when that share is over `imbalance_percentage`
        (`leader.imbalance.per.broker.percentage`), leadership of those partitions moves
        back to it where it is an online in-sync replica. Partitions being reassigned
        are left alone (their replica order is the reassignment's business)."""
        preferred: dict[int, int] = {}
        missed: dict[int, int] = {}
        for t in self.state.topics.values():
            for p in t.partitions.values():
                if not p.replicas or p.adding or p.removing:
                    continue
                pref = p.replicas[0]
                preferred[pref] = preferred.get(pref, 0) + 1
                if p.leader != pref:
                    missed[pref] = missed.get(pref, 0) + 1
        over = {b for b, n in missed.items() if n * 100 > imbalance_percentage * preferred[b]}
        if not over:
            return []
        records: list[Record] = [
            r for r in self.elect_preferred_leaders()[0]
            if isinstance(r, PartitionChange) and r.leader in over
            and not self.state.topics[r.topic].partitions[r.partition].adding
            and not self.state.topics[r.topic].partitions[r.partition].removing]
        return records[:max_changes]

    def elect_preferred_leaders(self, topic: str | None = None
                                ) -> tuple[list[Record], list[list[Any]]]:
        """Preferred leader election on demand (for one topic or all). Returns the
        records and [[topic, partition, error code, message|nil], ...] for every
        partition not led by its preferred replica (moved, or why not)."""
        if topic is not None and topic not in self.state.topics:
            raise UnknownTopicOrPartitionError(f"topic {topic!r} does not exist")
        online = self._online()
        records: list[Record] = []
        results: list[list[Any]] = []
        topics = [self.state.topics[topic]] if topic is not None else \
            [t for _, t in sorted(self.state.topics.items())]
        for t in topics:
            for _, p in sorted(t.partitions.items()):
                if not p.replicas or p.leader == p.replicas[0]:
                    continue
                pref = p.replicas[0]
                if pref not in online or pref not in p.isr:
                    results.append([p.topic, p.partition,
                                    int(ErrorCode.PREFERRED_LEADER_NOT_AVAILABLE),
                                    f"preferred leader {pref} is not an online in-sync replica "
                                    f"(isr {list(p.isr)})"])
                    continue
                records.append(PartitionChange(p.topic, p.partition, p.partition_epoch, pref))
                results.append([p.topic, p.partition, 0, None])
        return records, results

    # reassignment (KIP-455) --------------------------------------------------------------
    def _check_target(self, p: PartitionInfo, replicas: Any) -> tuple[int, ...]:
        if not isinstance(replicas, (list, tuple)) or not replicas:
            raise InvalidReplicaAssignmentError(
                f"{p.topic}-{p.partition}: the target replica list must not be empty")
        target = tuple(int(r) for r in replicas)
        if len(set(target)) != len(target):
            raise InvalidReplicaAssignmentError(
                f"{p.topic}-{p.partition}: duplicate broker in target replicas {list(target)}")
        unknown = [r for r in target if r not in self.state.brokers]
        if unknown:
            raise InvalidReplicaAssignmentError(
                f"{p.topic}-{p.partition}: brokers {unknown} are not registered")
        return target

    def reassign_partitions(self, moves: list[list[Any]]
                            ) -> tuple[list[Record], list[list[Any]]]:
        """moves: [[topic, partition, [replica, ...] | nil (cancel)], ...]. Starts (or
        replaces, or cancels) a reassignment per partition. Returns the records and
        [[topic, partition, error code, message|nil], ...]."""
        records: list[Record] = []
        results: list[list[Any]] = []
        seen: set[tuple[str, int]] = set()
        counts = self.replica_counts()
        cap = PartitionLimits.from_settings(self.get_setting).replicas_per_broker
        for topic, partition, replicas in moves:
            try:
                t = self.state.topics.get(topic)
                p = None if t is None else t.partitions.get(partition)
                if p is None:
                    raise UnknownTopicOrPartitionError(f"{topic}-{partition} does not exist")
                if (topic, partition) in seen:
                    raise InvalidRequestError(f"{topic}-{partition} is listed more than once")
                seen.add((topic, partition))
                rec = self._cancel_one(p) if replicas is None else \
                    self._start_one(p, self._check_target(p, replicas))
                if isinstance(rec, PartitionReassign):
                    added = [r for r in rec.replicas if r not in p.replicas]
                    full = [r for r in added if counts.get(r, 0) + 1 > cap]
                    if full:
                        raise PolicyViolationError(
                            f"{topic}-{partition}: broker(s) {full} would host more than "
                            f"{cap} partition replicas (max.partition.replicas.per.broker)")
                    for r in added:
                        counts[r] = counts.get(r, 0) + 1
                if rec is not None:
                    records.append(rec)
                results.append([topic, partition, 0, None])
            except DmqError as exc:
                results.append([topic, partition, int(exc.code), exc.message])
        return records, results

    def _start_one(self, p: PartitionInfo, target: tuple[int, ...]) -> Record | None:
        # a new target replaces one in progress: start again from the original replicas
        # (those already added stay while they are in the new target)
        base = p.original_replicas if (p.adding or p.removing) else p.replicas
        current = tuple(dict.fromkeys((*base, *(r for r in p.adding if r in target))))
        if target == p.replicas and not p.adding and not p.removing:
            return None
        replicas = tuple(dict.fromkeys((*target, *current)))
        adding = tuple(r for r in target if r not in base)
        removing = tuple(r for r in current if r not in target)
        if not adding and not removing:
            # only the order changes (the preferred leader): no data to move
            return PartitionReassign(p.topic, p.partition, p.partition_epoch, target)
        leader = NO_CHANGE
        if p.leader != NO_LEADER and p.leader not in replicas:
            # the leader was a replica being added that the new target drops
            online = self._online()
            leader = next((r for r in replicas if r in p.isr and r in online), NO_LEADER)
        return PartitionReassign(p.topic, p.partition, p.partition_epoch, replicas, adding,
                                 removing, leader)

    def _cancel_one(self, p: PartitionInfo) -> Record:
        if not p.adding and not p.removing:
            raise NoReassignmentInProgressError(
                f"{p.topic}-{p.partition}: no reassignment in progress")
        original = p.original_replicas
        if not any(r in p.isr for r in original):
            raise InvalidRequestError(
                f"{p.topic}-{p.partition}: cannot cancel: none of the original replicas "
                f"{list(original)} is in sync (isr {list(p.isr)}); their data would be lost. "
                f"Give a new target instead")
        return self._finish(p, original)

    def _finish(self, p: PartitionInfo, replicas: tuple[int, ...]) -> Record:
        """The record ending a reassignment with `replicas`: leadership moves to an
        online in-sync member of them if the leader is not one."""
        isr = tuple(r for r in p.isr if r in replicas)
        leader = NO_CHANGE
        if p.leader not in replicas:
            online = self._online()
            leader = next((r for r in replicas if r in isr and r in online), NO_LEADER)
        return PartitionReassign(p.topic, p.partition, p.partition_epoch, replicas, (), (),
                                 leader, isr)

    def reassignment_steps(self) -> list[Record]:
        """Complete every reassignment whose target replicas are all in the ISR and that
        has an online in-sync leader to hand over to."""
        online = self._online()
        out: list[Record] = []
        for p in self.reassignments():
            target = p.target_replicas
            if any(r not in p.isr for r in target):
                continue
            if p.leader not in target and not any(r in online for r in target):
                continue
            out.append(self._finish(p, target))
        return out

    def decommission_broker(self, broker_id: int) -> tuple[list[Record], dict[str, Any]]:
        """Reassignments that move every replica off a broker, alive or dead
        (`decommission_moves`), planned on the applied state and written as one batch:
        started all together or not at all; asked again, it starts only what is
        missing. Returns the records and {"partitions": [[topic, partition, error code,
        message|nil]] for the moves started or refused, "moving": partitions already
        moving off the broker}."""
        if broker_id not in self.state.brokers:
            raise BrokerIdNotRegisteredError(f"broker {broker_id} is not registered")
        moves, stuck, moving = decommission_moves(
            broker_id, self._all_partitions(), sorted(self._online()), self.replica_counts(),
            {b.broker_id: b.rack for b in self.state.brokers.values()})
        records, results = self.reassign_partitions([[t, p, r] for t, p, r in moves])
        results += [[t, p, int(ErrorCode.INVALID_REPLICA_ASSIGNMENT), msg]
                    for t, p, msg in stuck]
        return records, {"partitions": results, "moving": moving}

    def reassignments(self) -> list[PartitionInfo]:
        """The partitions with a reassignment in progress, by topic and partition."""
        return [self.state.topics[t].partitions[p] for t, p in sorted(self.state.reassigning)]

    # topics ----------------------------------------------------------------------------
    def _new_topic_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _placement_brokers(self) -> list[tuple[int, str | None]]:
        return sorted((b.broker_id, b.rack) for b in self.state.brokers.values()
                      if b.state == ONLINE)

    def _partition_count(self) -> int:
        return sum(len(t.partitions) for t in self.state.topics.values())

    def replica_counts(self) -> dict[int, int]:
        """Partition replicas assigned to each broker id (computed once per metadata
        version: a create request reads it, it does not walk every partition again).
        Every applied entry advances the version, so the version alone says whether the
        counts are current (a count of topics or partitions would miss a reassignment)."""
        if self.state.version != self._counts_version:
            counts: dict[int, int] = {}
            for p in self._all_partitions():
                for r in p.replicas:
                    counts[r] = counts.get(r, 0) + 1
            self._counts, self._counts_version = counts, self.state.version
        return dict(self._counts)

    @staticmethod
    def _request_error(topics: int, partitions: int,
                       limits: PartitionLimits) -> DmqError | None:
        """A request past the per-request bounds is refused whole, before placement."""
        if topics > limits.topics_per_request:
            return InvalidRequestError(
                f"the request names {topics} topics; at most {limits.topics_per_request} "
                f"per request (max.topics.per.request)")
        if partitions > limits.per_request:
            return InvalidRequestError(
                f"the request adds {partitions} partitions; at most {limits.per_request} "
                f"per request (max.partitions.per.request)")
        return None

    @staticmethod
    def _check_cluster_room(name: str, partitions: int, cluster_total: int,
                            limits: PartitionLimits) -> None:
        if cluster_total + partitions > limits.per_cluster:
            raise PolicyViolationError(
                f"topic {name!r}: {partitions} more partitions would make "
                f"{cluster_total + partitions} in the cluster; at most {limits.per_cluster} "
                f"(max.partitions.per.cluster)")

    @staticmethod
    def _check_broker_room(name: str, partitions: int, rf: int, counts: dict[int, int],
                           brokers: list[tuple[int, str | None]], limits: PartitionLimits,
                           assignments: list[tuple[int, ...]] | None = None) -> None:
        """Refuse when placing these replicas would put a broker past
        `max.partition.replicas.per.broker`: before placement (not enough room on the
        online brokers together), then on the placement itself."""
        cap = limits.replicas_per_broker
        room = sum(max(0, cap - counts.get(b, 0)) for b, _ in brokers)
        if assignments is None:
            over = partitions * rf > room
            worst, total = -1, 0
        else:
            added: dict[int, int] = {}
            for reps in assignments:
                for r in reps:
                    added[r] = added.get(r, 0) + 1
            worst, total = max(((b, counts.get(b, 0) + n) for b, n in added.items()),
                               key=lambda bn: bn[1], default=(-1, 0))
            over = total > cap
        if over:
            where = f"broker {worst} would host {total}" if worst >= 0 else \
                f"the {len(brokers)} online broker(s) have room for {room} more"
            raise PolicyViolationError(
                f"topic {name!r}: {partitions} partition(s) x {rf} replica(s) do not fit: "
                f"{where}; at most {cap} partition replicas per broker "
                f"(max.partition.replicas.per.broker)")
        if assignments is not None:
            for reps in assignments:
                for r in reps:
                    counts[r] = counts.get(r, 0) + 1

    def create_topics(self, topics: list[dict[str, Any]],
                      validate_only: bool = False) -> tuple[list[Record], list[dict[str, Any]]]:
        records: list[Record] = []
        results: list[dict[str, Any]] = []
        names = [t["name"] for t in topics]
        brokers = self._placement_brokers()
        limits = PartitionLimits.from_settings(self.get_setting)
        default_partitions = int(self.get_setting("num.partitions"))
        asked = sum(max(0, default_partitions if t["partitions"] == -1 else t["partitions"])
                    for t in topics)
        refused = self._request_error(len(topics), asked, limits)
        if refused is not None:
            return [], [topic_result(name, refused, id=None) for name in names]
        counts = self.replica_counts()
        cluster_total = self._partition_count()
        for t in topics:
            name = t["name"]
            try:
                if names.count(name) > 1:
                    raise InvalidRequestError(f"topic {name!r} is listed more than once")
                validate_topic_name(name)
                if name in self.state.topics:
                    raise TopicAlreadyExistsError(f"topic {name!r} already exists")
                partitions = t["partitions"]
                if partitions == -1:
                    partitions = default_partitions
                if not 0 < partitions <= limits.per_topic:
                    raise InvalidPartitionsError(
                        f"partitions must be between 1 and {limits.per_topic} "
                        f"(max.partitions.per.topic), got {t['partitions']}")
                rf = t["replication_factor"]
                if rf == -1:
                    rf = int(self.get_setting("default.replication.factor"))
                if rf < 1:
                    raise InvalidReplicationFactorError(
                        f"replication factor must be at least 1, got {rf}")
                if rf > len(brokers):
                    raise InvalidReplicationFactorError(
                        f"replication factor {rf} is larger than the {len(brokers)} available "
                        f"broker(s)")
                configs = {k: validate_topic_config(k, v)
                           for k, v in (t.get("configs") or {}).items()}
                self._check_cluster_room(name, partitions, cluster_total, limits)
                self._check_broker_room(name, partitions, rf, counts, brokers, limits)
                assignments = assign_replicas(brokers, partitions, rf, self.rng)
                self._check_broker_room(name, partitions, rf, counts, brokers, limits,
                                        assignments)
            except DmqError as exc:
                results.append(topic_result(name, exc, id=None))
                continue
            cluster_total += partitions
            topic_id = self._new_topic_id()
            records.append(CreateTopic(name, topic_id, configs, tuple(assignments)))
            results.append(topic_result(name, id=topic_id, partitions=partitions,
                                        replication_factor=rf))
        return ([] if validate_only else records), results

    def delete_topics(self, names: list[str]) -> tuple[list[Record], list[dict[str, Any]]]:
        records: list[Record] = []
        results = []
        seen: set[str] = set()
        for name in names:
            t = self.state.topics.get(name)
            if t is None:
                results.append(topic_result(name, UnknownTopicOrPartitionError(
                    f"topic {name!r} does not exist")))
                continue
            if name not in seen:
                records.append(RemoveTopic(name, t.topic_id))
                seen.add(name)
            results.append(topic_result(name))
        return records, results

    def create_partitions(self, topics: list[dict[str, Any]], validate_only: bool = False
                          ) -> tuple[list[Record], list[dict[str, Any]]]:
        records: list[Record] = []
        results = []
        brokers = self._placement_brokers()
        names = [t["name"] for t in topics]
        limits = PartitionLimits.from_settings(self.get_setting)
        asked = 0
        for req in topics:
            known = self.state.topics.get(req["name"])
            if known is not None:
                asked += max(0, req["count"] - len(known.partitions))
        refused = self._request_error(len(topics), asked, limits)
        if refused is not None:
            return [], [topic_result(name, refused) for name in names]
        counts = self.replica_counts()
        cluster_total = self._partition_count()
        for req in topics:
            name = req["name"]
            try:
                if names.count(name) > 1:
                    raise InvalidRequestError(f"topic {name!r} is listed more than once")
                t = self.state.topics.get(name)
                if t is None:
                    raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
                current = len(t.partitions)
                count = req["count"]
                if count <= current:
                    raise InvalidPartitionsError(
                        f"topic {name!r} has {current} partitions; the new count {count} must "
                        f"be larger")
                if count > limits.per_topic:
                    raise InvalidPartitionsError(
                        f"at most {limits.per_topic} partitions per topic "
                        f"(max.partitions.per.topic), got {count}")
                added = count - current
                rf = t.replication_factor
                self._check_cluster_room(name, added, cluster_total, limits)
                self._check_broker_room(name, added, rf, counts, brokers, limits)
                assignments = assign_replicas(brokers, added, rf, self.rng,
                                              first_partition=current)
                self._check_broker_room(name, added, rf, counts, brokers, limits, assignments)
            except DmqError as exc:
                results.append(topic_result(name, exc))
                continue
            cluster_total += added
            records.append(AddPartitions(name, t.topic_id, current, tuple(assignments)))
            results.append(topic_result(name))
        return ([] if validate_only else records), results

    def alter_configs(self, topics: list[dict[str, Any]], validate_only: bool = False
                      ) -> tuple[list[Record], list[dict[str, Any]]]:
        records: list[Record] = []
        results = []
        for req in topics:
            name = req["name"]
            try:
                if name not in self.state.topics:
                    raise UnknownTopicOrPartitionError(f"topic {name!r} does not exist")
                recs: list[Record] = []
                for key, value in req["configs"].items():
                    if value is None:
                        if key not in TOPIC_CONFIG_CHECKS:
                            raise InvalidConfigError(f"unknown topic config {key!r}")
                        recs.append(TopicConfig(name, key, None))
                    else:
                        recs.append(TopicConfig(name, key, validate_topic_config(key, value)))
            except DmqError as exc:
                results.append(topic_result(name, exc))
                continue
            records += recs
            results.append(topic_result(name))
        return ([] if validate_only else records), results

    def alter_dynamic_configs(self, configs: dict[str, str | None],
                              validate_only: bool = False
                              ) -> tuple[list[Record], dict[str, Any]]:
        """Cluster-wide dynamic broker configs: set (value) or back to the static setting
        (None). All or nothing: one bad key refuses the lot."""
        try:
            records: list[Record] = [DynamicConfig(k, validate_dynamic_config(k, v))
                                     for k, v in sorted(configs.items())]
        except DmqError as exc:
            return [], {"error": int(exc.code), "msg": exc.message}
        return ([] if validate_only else records), {"error": 0, "msg": None}

    def alter_client_quotas(self, entries: list[list[Any]], validate_only: bool = False
                            ) -> tuple[list[Record], list[list[Any]]]:
        """Client quotas (dmq.security.quotas): per entry [user | None (the default),
        {quota key: bytes/s | None (removed)}], all or nothing per entry. Returns the
        records and [[user, error, msg]] per entry."""
        records: list[Record] = []
        results: list[list[Any]] = []
        for user, quotas in entries:
            try:
                if user is not None:
                    check_user(user)
                recs: list[Record] = []
                for key, value in sorted(quotas.items()):
                    if key not in QUOTA_KEYS:
                        raise ValueError(f"unknown quota {key!r}; known: "
                                         f"{', '.join(QUOTA_KEYS)}")
                    recs.append(DynamicConfig(config_key(key, user),
                                              None if value is None else check_rate(value)))
            except ValueError as exc:
                who = "the default user" if user is None else f"user {user!r}"
                results.append([user, int(ErrorCode.INVALID_REQUEST), f"{who}: {exc}"])
                continue
            records += recs
            results.append([user, 0, None])
        return ([] if validate_only else records), results

    # partitions -------------------------------------------------------------------------
    def alter_partition(self, broker_id: int, broker_epoch: int,
                        topics: list[list[Any]]) -> tuple[list[Record], list[list[Any]]]:
        """ISR changes from a partition leader. Returns the records and, per topic,
        [[partition, error], ...] (errors as codes, 0 when accepted or unchanged)."""
        self.check_broker(broker_id, broker_epoch)
        records: list[Record] = []
        results: list[list[Any]] = []
        for topic, parts in topics:
            t = self.state.topics.get(topic)
            res = []
            for partition, leader_epoch, partition_epoch, new_isr in parts:
                try:
                    p = None if t is None else t.partitions.get(partition)
                    if p is None:
                        raise UnknownTopicOrPartitionError(f"{topic}-{partition} does not exist")
                    rec = self._alter_one(p, broker_id, leader_epoch, partition_epoch,
                                          tuple(new_isr))
                    if rec is not None:
                        records.append(rec)
                    res.append([partition, 0, None])
                except DmqError as exc:
                    res.append([partition, int(exc.code), exc.message])
            results.append([topic, res])
        return records, results

    def _alter_one(self, p: PartitionInfo, broker_id: int, leader_epoch: int,
                   partition_epoch: int, new_isr: tuple[int, ...]) -> PartitionChange | None:
        if p.leader != broker_id:
            raise NotLeaderOrFollowerError(
                f"{p.topic}-{p.partition}: broker {broker_id} is not the leader ({p.leader})")
        if leader_epoch < p.leader_epoch:
            raise FencedLeaderEpochError(
                f"{p.topic}-{p.partition}: leader epoch {leader_epoch} < {p.leader_epoch}")
        if leader_epoch > p.leader_epoch:
            raise UnknownLeaderEpochError(
                f"{p.topic}-{p.partition}: leader epoch {leader_epoch} > {p.leader_epoch}")
        if partition_epoch != p.partition_epoch:
            # Kafka answers INVALID_UPDATE_VERSION here; dmq has no such code yet
            raise FencedLeaderEpochError(
                f"{p.topic}-{p.partition}: stale partition epoch {partition_epoch} "
                f"(current {p.partition_epoch})")
        if len(set(new_isr)) != len(new_isr) or broker_id not in new_isr:
            raise InvalidRequestError(
                f"{p.topic}-{p.partition}: ISR {list(new_isr)} must hold the leader once")
        stray = [r for r in new_isr if r not in p.replicas]
        if stray:
            raise InvalidRequestError(
                f"{p.topic}-{p.partition}: {stray} are not replicas {list(p.replicas)}")
        online = self._online()
        added = [r for r in new_isr if r not in p.isr and r not in online]
        if added:
            raise BrokerFencedError(
                f"{p.topic}-{p.partition}: cannot add {added} to the ISR: not ONLINE")
        if new_isr == p.isr:
            return None
        return PartitionChange(p.topic, p.partition, p.partition_epoch, NO_CHANGE, new_isr)

    # producer ids and offsets -------------------------------------------------------------
    def allocate_producer_ids(self, broker_id: int, count: int = PRODUCER_ID_BLOCK
                              ) -> tuple[list[Record], int]:
        first = self.state.next_producer_id
        return [ProducerIds(broker_id, first + count)], first

    def commit_offsets(self, group: str, offsets: list[list[Any]], commit_ms: int,
                       max_metadata_bytes: int | None = None
                       ) -> tuple[list[Record], list[list[Any]]]:
        """offsets: [[topic, [[partition, offset, metadata], ...]], ...]. Returns records
        and [[topic, [[partition, error], ...]], ...]. A metadata string longer than
        `max_metadata_bytes` (UTF-8) is refused for its partition, as Kafka's
        `offset.metadata.max.bytes` does."""
        accepted: list[tuple[str, int, int, str | None]] = []
        results = []
        for topic, parts in offsets:
            t = self.state.topics.get(topic)
            res = []
            for partition, offset, metadata in parts:
                if max_metadata_bytes is not None and metadata is not None and (
                        len(metadata) > max_metadata_bytes
                        or len(metadata.encode()) > max_metadata_bytes):
                    res.append([partition, int(ErrorCode.OFFSET_METADATA_TOO_LARGE)])
                elif t is None or partition not in t.partitions:
                    res.append([partition, int(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)])
                elif offset < 0:
                    res.append([partition, int(ErrorCode.OFFSET_OUT_OF_RANGE)])
                else:
                    accepted.append((topic, partition, offset, metadata))
                    res.append([partition, 0])
            results.append([topic, res])
        records: list[Record] = [OffsetCommit(group, commit_ms, tuple(accepted))] \
            if accepted else []
        return records, results


__all__ = ["PRODUCER_ID_BLOCK", "Planner", "topic_result"]
