"""Each image a MetadataState publishes says what changed since the one before
(`ImageChanges`), so that a broker applies only those partitions: the changes must
name every partition and broker that differs (else a broker would miss a change) and
only the ones a record touched (else a change would cost a walk of every partition)."""

from __future__ import annotations

import gc

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dmq.metadata.image import ImageChanges, MetadataImage, image_changes, metadata_body
from dmq.metadata.records import NO_CHANGE, PartitionChange
from dmq.metadata.state import MetadataState
from tests.unit.controller.helpers import BROKERS, Harness, apply_op

OPS = st.lists(st.tuples(st.sampled_from(["create", "fence", "return", "shutdown", "shrink",
                                          "expand", "prefer", "grow", "delete", "unclean",
                                          "config"]),
                         st.integers(0, 3), st.integers(0, 7), st.booleans()), max_size=40)


def value_diff(old: MetadataImage, new: MetadataImage
               ) -> tuple[dict[str, set[int] | None], set[int]]:
    """What differs between two images, by brute force over everything."""
    brokers = {b for b in old.brokers.keys() | new.brokers.keys()
               if old.brokers.get(b) != new.brokers.get(b)}
    topics: dict[str, set[int] | None] = {}
    for name in old.topics.keys() | new.topics.keys():
        ot, nt = old.topics.get(name), new.topics.get(name)
        if ot is None or nt is None or (ot.topic_id, ot.configs) != (nt.topic_id, nt.configs):
            topics[name] = None
            continue
        parts = {p for p in ot.partitions.keys() | nt.partitions.keys()
                 if ot.partitions.get(p) != nt.partitions.get(p)}
        if parts:
            topics[name] = parts
    return topics, brokers


def assert_covers(ch: ImageChanges, old: MetadataImage, new: MetadataImage) -> None:
    """Every difference is named; every named partition is a new object (touched)."""
    topics, brokers = value_diff(old, new)
    assert brokers <= ch.brokers
    for name, parts in topics.items():
        assert name in ch.topics, (name, parts)
        listed = ch.topics[name]
        if parts is None:
            assert listed is None, name
        elif listed is not None:
            assert parts <= listed, (name, parts, listed)
    for name, listed in ch.topics.items():
        ot, nt = old.topics.get(name), new.topics.get(name)
        if listed is None or ot is None or nt is None:
            continue
        for p in listed:
            assert ot.partitions.get(p) is not nt.partitions.get(p), (name, p)


def publish(state: MetadataState, prev: MetadataImage | None) -> MetadataImage:
    new = state.image()
    ch = image_changes(prev, new)
    if prev is None:
        assert ch is None
    else:
        assert ch is not None
        if new is not prev:  # an image after the first one carries its changes
            assert new.changes is not None and ch is new.changes
        assert_covers(ch, prev, new)
    return new


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS, st.integers(0, 2**32))
def test_published_changes_name_every_difference(ops: list, seed: int) -> None:
    """Random controller decisions, images published at random points, on the
    controller and on a broker-side state fed by deltas."""
    h = Harness(seed=seed)
    for b in BROKERS:
        h.add_broker(b)
    follower = MetadataState(keep_offsets=False)
    follower.restore(h.state.to_snapshot(include_offsets=False))
    ctl_img = publish(h.state, None)
    f_img = publish(follower, None)
    first = ctl_img
    for op, a, b, publish_now in ops:
        if op == "config":
            names = sorted(h.state.topics)
            if names:
                h.commit(h.planner.alter_configs([{"name": names[b % len(names)], "configs": {
                    "retention.ms": str(1000 + a)}}])[0])
        else:
            apply_op(h, op, a, b)
        if not publish_now:
            continue
        ctl_img = publish(h.state, ctl_img)
        recs = h.state.records_since(follower.version, 1000)
        assert recs is not None
        for index, wire in recs:
            follower.apply_entry(index, wire)
        follower.advance_to(h.state.version)
        f_img = publish(follower, f_img)
        assert f_img.topics == ctl_img.topics and f_img.brokers == ctl_img.brokers
    # images further apart: compared, not taken from the newest image
    last = publish(h.state, ctl_img)
    ch = image_changes(first, last)
    assert ch is not None
    if ch is last.changes:  # nothing published in between
        assert_covers(ch, first, last)
    else:  # compared: exactly the differences
        topics, brokers = value_diff(first, last)
        assert ch.brokers == brokers
        assert dict(ch.topics) == {t: None if p is None else frozenset(p)
                                   for t, p in topics.items()}


def big_topic(partitions: int) -> Harness:
    h = Harness({"max.partition.replicas.per.broker": partitions + 100})
    for b in (1, 2, 3):
        h.add_broker(b)
    h.create("big", partitions, 3)
    return h


def test_one_partition_change_names_that_partition_only() -> None:
    h = big_topic(10_000)
    before = h.state.image()
    p = h.state.topics["big"].partitions[1234]
    h.commit([PartitionChange("big", 1234, p.partition_epoch, NO_CHANGE, (p.leader,))])
    after = h.state.image()
    ch = image_changes(before, after)
    assert after.changes is ch
    assert dict(ch.topics) == {"big": frozenset({1234})} and not ch.brokers
    # unchanged partitions are shared between the two images (nothing rebuilt)
    assert after.topics["big"].partitions[0] is before.topics["big"].partitions[0]


def test_created_deleted_or_configured_topic_is_named_whole() -> None:
    h = big_topic(10)
    img = h.state.image()
    h.commit(h.planner.alter_configs([{"name": "big", "configs": {"retention.ms": "5"}}])[0])
    img2 = h.state.image()
    assert dict(img2.changes.topics) == {"big": None}  # type: ignore[union-attr]
    h.create("other", 2, 1)
    h.commit(h.planner.delete_topics(["big"])[0])
    img3 = h.state.image()
    assert dict(img3.changes.topics) == {"other": None, "big": None}  # type: ignore[union-attr]
    assert_covers(image_changes(img, img3), img, img3)  # type: ignore[arg-type]


def test_fencing_names_the_broker() -> None:
    h = big_topic(10)
    img = h.state.image()
    h.commit(h.planner.fence_broker(2))
    ch = image_changes(img, h.state.image())
    assert ch is not None and ch.brokers == {2}
    assert set(ch.topics["big"] or ()) == {
        p.partition for p in img.topics["big"].partitions.values() if 2 in p.isr}


def test_after_a_restore_the_next_image_offers_no_changes() -> None:
    h = big_topic(10)
    old = h.state.image()
    s = MetadataState()
    s.restore(h.state.to_snapshot())
    img = s.image()
    assert img.changes is None
    ch = image_changes(old, img)  # compared instead
    assert ch is not None and ch.empty


def test_changes_are_not_used_for_another_base_and_keep_no_image_alive() -> None:
    h = big_topic(10)
    a = h.state.image()
    p = h.state.topics["big"].partitions[0]
    h.commit([PartitionChange("big", 0, p.partition_epoch, NO_CHANGE, (p.leader,))])
    b = h.state.image()
    p = h.state.topics["big"].partitions[1]
    h.commit([PartitionChange("big", 1, p.partition_epoch, NO_CHANGE, (p.leader,))])
    c = h.state.image()
    # c's own changes start from b: from a, the two images are compared
    ch = image_changes(a, c)
    assert ch is not c.changes and dict(ch.topics) == {"big": frozenset({0, 1})}  # type: ignore[union-attr]
    assert image_changes(c, c) is not None and image_changes(c, c).empty  # type: ignore[union-attr]
    del a, b
    gc.collect()
    assert c.changes is not None and c.changes._base is not None
    assert c.changes._base() is None  # the previous image is not kept alive by c


def test_metadata_answer_rows_built_once_per_version_of_a_topic() -> None:
    """A Metadata answer for a big topic reuses the rows built for the same version of
    that topic (nothing walks its partitions per request) and never serves stale rows."""
    from dmq.metadata import image as image_module

    def fresh(img: MetadataImage) -> dict:
        image_module._rows_cache.clear()
        return metadata_body(img, None)

    h = big_topic(2000)
    h.create("small", 3, 1)
    img = h.state.image()
    first = metadata_body(img, ["big"])
    again = metadata_body(img, ["big"])
    assert again["topics"][0]["partitions"] is first["topics"][0]["partitions"]
    p = h.state.topics["big"].partitions[5]
    h.commit([PartitionChange("big", 5, p.partition_epoch, NO_CHANGE, (p.leader,))])
    h.commit(h.planner.fence_broker(3))
    img2 = h.state.image()
    body = metadata_body(img2, None)
    assert body["topics"][0]["partitions"][5][4] == [p.leader]
    assert body == fresh(img2)
    assert metadata_body(img, ["big"]) == first  # the older image still answers as it did
    h.commit(h.planner.unfence_broker(3))
    img3 = h.state.image()
    assert metadata_body(img3, None) == fresh(img3)


def test_changes_are_kept_only_while_their_base_image_is_held() -> None:
    """A state whose images nobody holds (a controller's, read and dropped) keeps no
    changes growing: topics created and deleted by the thousand leave nothing behind."""
    h = big_topic(10)
    h.state.image()  # published, then dropped
    gc.collect()
    for i in range(2000):
        h.create(f"tmp{i}", 1, 1)
        h.commit(h.planner.delete_topics([f"tmp{i}"])[0])
    assert h.state._changed_topics == {} and h.state._changed_brokers == set()
    img = h.state.image()
    assert img.changes is None  # readers compare instead
    h.create("kept", 1, 1)
    assert dict(h.state.image().changes.topics) == {"kept": None}  # type: ignore[union-attr]
    assert img is not None
