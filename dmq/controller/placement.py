"""Replica placement for new partitions, after Kafka's `assignReplicasToBrokers`.

The first replica of partition p is broker (start + p) mod n, so preferred leaders are
spread within ±1 across the brokers; the other replicas follow at a shift that changes
every n partitions, so followers are spread too. `start` and the initial shift are
random (from the injected `random.Random`). When every broker has a rack and there is
more than one rack, brokers are ordered rack-alternated and each replica goes to a
rack that has none yet while such a rack exists.

`decommission_moves` places the replicas of a broker being emptied: each goes to the
online broker with the fewest replicas that the partition does not use, on a rack the
partition's other replicas do not use when there is one.

Pure: no I/O, no global randomness.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence

from dmq.metadata.image import PartitionInfo
from dmq.protocol.errors import InvalidReplicationFactorError


def _replica_index(first: int, shift: int, j: int, n: int) -> int:
    return (first + 1 + (shift + j) % (n - 1)) % n


def rack_alternated(brokers: Sequence[tuple[int, str]]) -> list[int]:
    """Broker ids ordered so that consecutive ones are on different racks
    (racks in name order, brokers of a rack in id order)."""
    by_rack: dict[str, list[int]] = {}
    for bid, rack in sorted(brokers):
        by_rack.setdefault(rack, []).append(bid)
    racks = sorted(by_rack)
    out: list[int] = []
    i = 0
    while len(out) < len(brokers):
        for rack in racks:
            if i < len(by_rack[rack]):
                out.append(by_rack[rack][i])
        i += 1
    return out


def assign_replicas(brokers: Sequence[tuple[int, str | None]], partitions: int,
                    replication_factor: int, rng: random.Random,
                    first_partition: int = 0) -> list[tuple[int, ...]]:
    """Replica lists for `partitions` new partitions numbered from `first_partition`.
    `brokers` are the eligible (ONLINE) brokers as (id, rack|None)."""
    n = len(brokers)
    if replication_factor < 1:
        raise InvalidReplicationFactorError(
            f"replication factor must be at least 1, got {replication_factor}")
    if replication_factor > n:
        raise InvalidReplicationFactorError(
            f"replication factor {replication_factor} is larger than the {n} available "
            f"broker(s)")
    if partitions <= 0:
        return []
    racks = {r for _, r in brokers}
    rack_aware = None not in racks and len(racks) > 1
    if rack_aware:
        rack_of = {b: r for b, r in brokers if r is not None}
        ordered = rack_alternated([(b, r) for b, r in brokers if r is not None])
        return _assign_rack_aware(ordered, rack_of, partitions, replication_factor, rng,
                                  first_partition, len(racks))
    ordered = sorted(b for b, _ in brokers)
    start = rng.randrange(n)
    shift = rng.randrange(n)
    out: list[tuple[int, ...]] = []
    for p in range(first_partition, first_partition + partitions):
        if p > 0 and p % n == 0:
            shift += 1
        first = (p + start) % n
        reps = [ordered[first]]
        reps += [ordered[_replica_index(first, shift, j, n)] for j in range(replication_factor - 1)]
        out.append(tuple(reps))
    return out


def _assign_rack_aware(ordered: list[int], rack_of: dict[int, str], partitions: int,
                       replication_factor: int, rng: random.Random, first_partition: int,
                       num_racks: int) -> list[tuple[int, ...]]:
    n = len(ordered)
    start = rng.randrange(n)
    shift = rng.randrange(n)
    out: list[tuple[int, ...]] = []
    for p in range(first_partition, first_partition + partitions):
        if p > 0 and p % n == 0:
            shift += 1
        first = (p + start) % n
        leader = ordered[first]
        reps = [leader]
        used_racks = {rack_of[leader]}
        used = {leader}
        k = 0
        while len(reps) < replication_factor:
            b = ordered[_replica_index(first, shift * num_racks, k, n)]
            k += 1
            rack_ok = rack_of[b] not in used_racks or len(used_racks) == num_racks
            if b not in used and rack_ok:
                reps.append(b)
                used.add(b)
                used_racks.add(rack_of[b])
            elif k > 4 * n * n:  # cannot happen with distinct brokers; a guard, not logic
                raise AssertionError("rack-aware placement did not converge")
        out.append(tuple(reps))
    return out


def decommission_moves(broker_id: int, partitions: Iterable[PartitionInfo],
                       online: Iterable[int], counts: dict[int, int],
                       rack_of: dict[int, str | None]
                       ) -> tuple[list[tuple[str, int, list[int]]], list[tuple[str, int, str]],
                                  int]:
    """The reassignments that take every replica off `broker_id`: (moves as (topic,
    partition, target), partitions that cannot move with why, partitions already moving
    off it). A partition with a reassignment in progress keeps that move's target with
    the broker replaced (its listed replicas include those leaving, which must not
    become part of the target); one already dropping the broker needs no new move, so
    asking again changes nothing. `counts`: replicas per broker, the load to even out."""
    load = {b: counts.get(b, 0) for b in online if b != broker_id}
    moves: list[tuple[str, int, list[int]]] = []
    stuck: list[tuple[str, int, str]] = []
    moving = 0
    for p in sorted(partitions, key=lambda p: (p.topic, p.partition)):
        target = [r for r in p.replicas if r not in p.removing]
        if broker_id not in target:
            moving += broker_id in p.replicas
            continue
        racks = {rack_of.get(r) for r in target if r != broker_id} - {None}
        spare = sorted((b for b in load if b not in p.replicas),
                       key=lambda b: (rack_of.get(b) in racks, load[b], b))
        if not spare:
            stuck.append((p.topic, p.partition,
                          f"{p.topic}-{p.partition}: no online broker outside replicas "
                          f"{list(p.replicas)} to take broker {broker_id}'s replica"))
            continue
        load[spare[0]] += 1
        moves.append((p.topic, p.partition,
                      [spare[0] if r == broker_id else r for r in target]))
    return moves, stuck, moving


__all__ = ["assign_replicas", "decommission_moves", "rack_alternated"]
