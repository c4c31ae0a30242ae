"""Assignor properties: complete, disjoint, balanced within one, sticky."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmq.controller.assignor import (
    MemberSpec,
    UnknownAssignorError,
    get_assignor,
    range_assign,
    uniform_assign,
)


def _all_partitions(counts: dict[str, int], topics: set[str]) -> set[tuple[str, int]]:
    return {(t, p) for t in topics for p in range(counts.get(t, 0))}


def _check_valid(members: dict[str, MemberSpec], counts: dict[str, int],
                 result: dict[str, frozenset[tuple[str, int]]]) -> None:
    assert set(result) == set(members)
    seen: set[tuple[str, int]] = set()
    for member_id, tps in result.items():
        assert not (seen & tps), "a partition is assigned twice"
        seen |= tps
        for topic, p in tps:
            assert topic in members[member_id].topics
            assert 0 <= p < counts[topic]
    subscribed = set().union(*(m.topics for m in members.values())) if members else set()
    assert seen == _all_partitions(counts, subscribed), "assignment is incomplete"
    by_subscription: dict[frozenset[str], list[int]] = {}
    for member_id, spec in members.items():
        by_subscription.setdefault(spec.topics, []).append(len(result[member_id]))
    for sizes in by_subscription.values():
        assert max(sizes) - min(sizes) <= 1, f"unbalanced: {sizes}"


def _moves(before: dict[str, frozenset[tuple[str, int]]],
           after: dict[str, frozenset[tuple[str, int]]]) -> int:
    owner_before = {tp: m for m, tps in before.items() for tp in tps}
    owner_after = {tp: m for m, tps in after.items() for tp in tps}
    return sum(1 for tp, m in owner_before.items()
               if tp in owner_after and owner_after[tp] != m)


def _with_current(members: dict[str, frozenset[str]],
                  current: dict[str, frozenset[tuple[str, int]]]) -> dict[str, MemberSpec]:
    return {m: MemberSpec(topics, current.get(m, frozenset())) for m, topics in members.items()}


topic_counts = st.dictionaries(st.sampled_from(["a", "b", "c", "d"]),
                               st.integers(min_value=0, max_value=40), min_size=1)


@settings(max_examples=300, deadline=None)
@given(counts=topic_counts, n_members=st.integers(min_value=1, max_value=30),
       change=st.sampled_from(["join", "leave"]), data=st.data())
def test_uniform_homogeneous_is_complete_balanced_and_sticky(counts, n_members, change, data):
    topics = frozenset(counts)
    ids = [f"m{i:02d}" for i in range(n_members)]
    members = {m: topics for m in ids}
    first = uniform_assign(_with_current(members, {}), counts)
    _check_valid(_with_current(members, {}), counts, first)
    # a repeat with the result as the current assignment changes nothing
    again = uniform_assign(_with_current(members, first), counts)
    assert again == first

    after_members = dict(members)
    if change == "join":
        after_members["new"] = topics
    else:
        if n_members == 1:
            return
        gone = data.draw(st.sampled_from(ids))
        del after_members[gone]
    specs = _with_current(after_members, first)
    second = uniform_assign(specs, counts)
    _check_valid(specs, counts, second)
    total = sum(counts.values())
    bound = math.ceil(total / len(after_members)) + 1
    assert _moves(first, second) <= bound


@settings(max_examples=300, deadline=None)
@given(counts=topic_counts,
       subs=st.lists(st.frozensets(st.sampled_from(["a", "b", "c", "d", "zz"]), min_size=1),
                     min_size=1, max_size=12),
       data=st.data())
def test_uniform_heterogeneous_is_complete_disjoint_and_balanced_per_subscription(
        counts, subs, data):
    members = {f"m{i:02d}": s for i, s in enumerate(subs)}
    first = uniform_assign(_with_current(members, {}), counts)
    _check_valid(_with_current(members, {}), counts, first)
    # start again from a random (possibly invalid, overlapping) current assignment
    every = sorted({(t, p) for t, n in counts.items() for p in range(n + 2)})
    current = {m: frozenset(data.draw(st.lists(st.sampled_from(every), max_size=10)))
               for m in members} if every else {}
    specs = _with_current(members, current)
    _check_valid(specs, counts, uniform_assign(specs, counts))


def test_uniform_keeps_partitions_in_place_when_a_member_joins():
    counts = {"t": 6}
    two = {"a": frozenset({"t"}), "b": frozenset({"t"})}
    first = uniform_assign(_with_current(two, {}), counts)
    assert sorted(len(v) for v in first.values()) == [3, 3]
    three = {**two, "c": frozenset({"t"})}
    second = uniform_assign(_with_current(three, first), counts)
    assert sorted(len(v) for v in second.values()) == [2, 2, 2]
    assert second["a"] <= first["a"] and second["b"] <= first["b"]
    assert _moves(first, second) == 2


def test_uniform_is_deterministic():
    members = {f"m{i}": MemberSpec(frozenset({"x", "y"})) for i in range(7)}
    counts = {"x": 13, "y": 5}
    assert uniform_assign(members, counts) == uniform_assign(dict(reversed(
        list(members.items()))), counts)


def test_uniform_scales_to_fifty_members_on_five_hundred_partitions():
    counts = {"t": 500}
    members = {f"m{i:02d}": frozenset({"t"}) for i in range(50)}
    first = uniform_assign(_with_current(members, {}), counts)
    members["late"] = frozenset({"t"})
    second = uniform_assign(_with_current(members, first), counts)
    _check_valid(_with_current(members, first), counts, second)
    assert _moves(first, second) <= math.ceil(500 / 51)


def test_range_splits_each_topic_into_contiguous_ranges():
    members = {"a": MemberSpec(frozenset({"t", "u"})), "b": MemberSpec(frozenset({"t"}))}
    result = range_assign(members, {"t": 5, "u": 2})
    assert result["a"] == {("t", 0), ("t", 1), ("t", 2), ("u", 0), ("u", 1)}
    assert result["b"] == {("t", 3), ("t", 4)}


def test_unknown_assignor_is_a_typed_error():
    assert get_assignor(None) is uniform_assign
    assert get_assignor("range") is range_assign
    with pytest.raises(UnknownAssignorError):
        get_assignor("roundrobin")
