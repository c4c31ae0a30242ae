"""Key hashing is a compatibility contract; sticky partitioning fills one batch at a time."""

from __future__ import annotations

import random

from crc32c import crc32c

from dmq.client.partitioner import StickyPartitioner, partition_for_key


def test_key_hash_is_crc32c_mod_partitions_golden_values() -> None:
    # golden values: changing them breaks every deployed producer's key placement
    assert crc32c(b"user-1") == 0x14CCC4AC
    assert partition_for_key(b"user-1", 3) == 1
    assert partition_for_key(b"", 7) == 0
    assert [partition_for_key(b"k%d" % i, 10) for i in range(8)] == [
        crc32c(b"k%d" % i) % 10 for i in range(8)]


def test_same_key_same_partition_and_spread() -> None:
    counts = [0] * 8
    for i in range(8000):
        p = partition_for_key(b"key-%d" % i, 8)
        assert p == partition_for_key(b"key-%d" % i, 8)
        counts[p] += 1
    assert min(counts) > 800  # roughly uniform


def test_sticky_stays_until_batch_completes_then_moves() -> None:
    s = StickyPartitioner(random.Random(1))
    first = s.partition("t", 4)
    assert all(s.partition("t", 4) == first for _ in range(100))
    nxt = s.on_new_batch("t", first, 4)
    assert nxt != first
    assert s.partition("t", 4) == nxt
    # a stale notification about another partition changes nothing
    assert s.on_new_batch("t", first, 4) == nxt
    # prefers partitions with a leader when told which
    assert s.on_new_batch("t", nxt, 4, available=[2]) in (2, nxt)


def test_sticky_single_partition() -> None:
    s = StickyPartitioner(random.Random(2))
    assert s.partition("t", 1) == 0
    assert s.on_new_batch("t", 0, 1) == 0
