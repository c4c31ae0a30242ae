"""Server-side partition assignors for consumer groups (pure functions).

The group coordinator calls an assignor whenever the group epoch moves; the result is
the group's *target* assignment. Members then converge towards it through the
revocation protocol in `dmq.controller.group_coordinator`. Assignors never look at
time, sockets or randomness: the same input always yields the same output, on every
controller.

Input: for each member, the topics it subscribes to and the partitions it holds in the
previous target assignment; the partition count of every topic that exists.
Output: member -> frozenset of (topic, partition).

Two assignors:

- ``uniform`` (default), a sticky assignor. Guarantees: complete (every partition of a
  topic with at least one subscriber is assigned), disjoint, members with identical
  subscriptions hold counts within one of each other, and sticky: a partition stays
  with its previous owner unless balance requires moving it. From a balanced state one
  member joining or leaving moves at most ceil(P / N) partitions (N members after the
  change). Algorithm: keep every still-valid previous holding; hand each unowned
  partition (fewest eligible members first) to its least-loaded eligible member; then
  repeatedly move one partition from a member to an eligible member holding at least
  two fewer, until no such pair is left (each move lowers the sum of squared counts,
  so this terminates).
- ``range``: per topic, subscribers sorted by id take contiguous ranges, the first
  ``P mod n`` one extra partition. Not sticky; balanced per topic, not across topics.

This module must never import asyncio or read a clock.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass

TopicPartition = tuple[str, int]
Assignment = dict[str, frozenset[TopicPartition]]


@dataclass(frozen=True, slots=True)
class MemberSpec:
    """What the assignor knows of one member."""

    topics: frozenset[str]
    current: frozenset[TopicPartition] = frozenset()


class UnknownAssignorError(ValueError):
    """The name is not one of `ASSIGNORS`."""


def uniform_assign(members: Mapping[str, MemberSpec],
                   partition_counts: Mapping[str, int]) -> Assignment:
    """The sticky, balanced assignment (see the module docstring)."""
    if not members:
        return {}
    subscribers: dict[str, list[str]] = {}
    for member_id in sorted(members):
        for topic in members[member_id].topics:
            if partition_counts.get(topic, 0) > 0:
                subscribers.setdefault(topic, []).append(member_id)

    owned: dict[str, set[TopicPartition]] = {m: set() for m in members}
    taken: set[TopicPartition] = set()
    # Keep valid previous holdings; a partition claimed twice (a corrupt input) stays
    # with the member that sorts first.
    for member_id in sorted(members):
        spec = members[member_id]
        for tp in sorted(spec.current):
            topic, partition = tp
            if (topic in spec.topics and 0 <= partition < partition_counts.get(topic, 0)
                    and tp not in taken):
                owned[member_id].add(tp)
                taken.add(tp)

    # Unowned partitions: most constrained first, each to its least-loaded subscriber.
    unowned = [(len(subs), topic, p) for topic, subs in subscribers.items()
               for p in range(partition_counts[topic]) if (topic, p) not in taken]
    unowned.sort()
    homogeneous = len({frozenset(members[m].topics & subscribers.keys()) for m in members}) == 1
    if homogeneous:
        # One heap serves every partition: all members are eligible for all of them.
        heap = [(len(owned[m]), m) for m in owned]
        heapq.heapify(heap)
        for _, topic, p in unowned:
            count, member_id = heapq.heappop(heap)
            owned[member_id].add((topic, p))
            heapq.heappush(heap, (count + 1, member_id))
    else:
        for _, topic, p in unowned:
            best = min(subscribers[topic], key=lambda m: (len(owned[m]), m))
            owned[best].add((topic, p))

    _rebalance(members, owned, subscribers)
    return {m: frozenset(tps) for m, tps in owned.items()}


def _rebalance(members: Mapping[str, MemberSpec], owned: dict[str, set[TopicPartition]],
               subscribers: Mapping[str, list[str]]) -> None:
    """Move partitions from heavy to light members until no eligible move helps."""
    by_topic: dict[str, dict[str, list[int]]] = {m: {} for m in owned}
    for member_id, tps in owned.items():
        for topic, p in sorted(tps):
            by_topic[member_id].setdefault(topic, []).append(p)
    order = sorted(owned)
    while True:
        counts = {m: len(owned[m]) for m in order}
        light_first = sorted(order, key=lambda m: (counts[m], m))
        heavy_first = sorted(order, key=lambda m: (-counts[m], m))
        moved = False
        for light in light_first:
            light_topics = members[light].topics
            for heavy in heavy_first:
                if counts[heavy] <= counts[light] + 1:
                    break
                found = next((t for t in sorted(by_topic[heavy])
                              if t in light_topics and by_topic[heavy][t]), None)
                if found is None:
                    continue
                topic = found
                partition = by_topic[heavy][topic].pop()
                if not by_topic[heavy][topic]:
                    del by_topic[heavy][topic]
                by_topic[light].setdefault(topic, []).append(partition)
                owned[heavy].discard((topic, partition))
                owned[light].add((topic, partition))
                moved = True
                break
            if moved:
                break
        if not moved:
            return


def range_assign(members: Mapping[str, MemberSpec],
                 partition_counts: Mapping[str, int]) -> Assignment:
    """Kafka's range assignment, topic by topic."""
    owned: dict[str, set[TopicPartition]] = {m: set() for m in members}
    topics = sorted({t for spec in members.values() for t in spec.topics})
    for topic in topics:
        count = partition_counts.get(topic, 0)
        subs = sorted(m for m, spec in members.items() if topic in spec.topics)
        if count <= 0 or not subs:
            continue
        base, extra = divmod(count, len(subs))
        start = 0
        for i, member_id in enumerate(subs):
            n = base + (1 if i < extra else 0)
            owned[member_id].update((topic, p) for p in range(start, start + n))
            start += n
    return {m: frozenset(tps) for m, tps in owned.items()}


Assignor = Callable[[Mapping[str, MemberSpec], Mapping[str, int]], Assignment]

ASSIGNORS: dict[str, Assignor] = {"uniform": uniform_assign, "range": range_assign}
DEFAULT_ASSIGNOR = "uniform"


def get_assignor(name: str | None) -> Assignor:
    try:
        return ASSIGNORS[name or DEFAULT_ASSIGNOR]
    except KeyError:
        raise UnknownAssignorError(
            f"unknown assignor {name!r}; known: {', '.join(sorted(ASSIGNORS))}") from None


__all__ = [
    "ASSIGNORS",
    "DEFAULT_ASSIGNOR",
    "Assignment",
    "Assignor",
    "MemberSpec",
    "TopicPartition",
    "UnknownAssignorError",
    "get_assignor",
    "range_assign",
    "uniform_assign",
]
