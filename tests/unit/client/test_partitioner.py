"""Key hashing is a compatibility contract; sticky partitioning fills one batch at a time."""

from __future__ import annotations

import random

import pytest
from crc32c import crc32c

from dmq.client.partitioner import (
    KeyPartitioner,
    StickyPartitioner,
    murmur2,
    murmur2_partition,
    partition_for_key,
)

# Kafka's own test vectors for Utils.murmur2 (UtilsTest.testMurmur2), as Java ints
KAFKA_MURMUR2_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}

# keys of every tail length, empty, binary, long, non-ASCII UTF-8
KEY_TABLE = [b"", b"a", b"ab", b"abc", b"abcd", b"user-1", b"user-2", b"order-12345",
             b"\x00", b"\xff\xfe\xfd", bytes(range(256)), b"k" * 1000,
             "clé-ünïcode".encode(), *(b"key-%d" % i for i in range(200))]


def test_murmur2_matches_kafka_known_vectors() -> None:
    for key, java_int in KAFKA_MURMUR2_VECTORS.items():
        assert murmur2(key) == java_int & 0xFFFFFFFF, key


def test_default_placement_is_kafkas_golden_values() -> None:
    # golden values: changing them breaks every deployed producer's key placement
    assert partition_for_key(b"user-1", 3) == 2
    assert partition_for_key(b"foobar", 3) == (-790332482 & 0x7FFFFFFF) % 3 == 0
    assert [partition_for_key(b"k%d" % i, 10) for i in range(8)] == [5, 7, 3, 6, 0, 4, 5, 8]


def test_murmur2_placement_matches_a_kafka_client_library() -> None:
    kafka_default = pytest.importorskip(
        "kafka.partitioner.default",
        reason="kafka-python (the test extra) computes Kafka's placement independently")
    for key in KEY_TABLE:
        assert murmur2(key) == kafka_default.murmur2(key), key
        for n in (1, 3, 7, 12, 100):
            # Kafka's DefaultPartitioner: toPositive(murmur2(key)) % n
            expected = (kafka_default.murmur2(key) & 0x7FFFFFFF) % n
            assert murmur2_partition(key, n) == expected, (key, n)
            assert partition_for_key(key, n) == expected
            assert KeyPartitioner().partition(key, n) == expected


def test_crc32c_stays_available_by_name() -> None:
    assert crc32c(b"user-1") == 0x14CCC4AC
    assert partition_for_key(b"user-1", 3, "crc32c") == 1
    assert partition_for_key(b"", 7, "crc32c") == 0
    kp = KeyPartitioner("crc32c")
    assert [kp.partition(b"k%d" % i, 10) for i in range(8)] == [
        crc32c(b"k%d" % i) % 10 for i in range(8)]
    with pytest.raises(ValueError, match="murmur2, crc32c"):
        KeyPartitioner("random")
    with pytest.raises(ValueError, match="murmur2, crc32c"):
        partition_for_key(b"k", 3, "md5")


def test_key_cache_is_bounded_and_gives_the_same_answers() -> None:
    kp = KeyPartitioner(cache_size=16)
    for rnd in range(3):
        for key in KEY_TABLE:
            assert kp.partition(key, 12) == murmur2_partition(key, 12), (rnd, key)
            assert len(kp._cache) <= 16
    # bytes-like keys hash as their bytes; a str key is a clear error
    assert kp.partition(bytearray(b"user-1"), 3) == kp.partition(memoryview(b"user-1"), 3) == 2
    with pytest.raises(TypeError, match="key_serializer"):
        kp.partition("user-1", 3)  # type: ignore[arg-type]


def test_key_cache_is_bounded_in_bytes_too() -> None:
    """Keys may be up to a request in size: the cache holds at most `cache_bytes` of
    them (a count bound alone would keep thousands of large keys alive), and a key
    larger than that is hashed without being kept."""
    kp = KeyPartitioner(cache_size=4096, cache_bytes=64 * 1024)
    keys = [bytes([i]) * 16_384 for i in range(40)]
    for rnd in range(2):
        for key in keys:
            assert kp.partition(key, 7) == murmur2_partition(key, 7), (rnd, key[:1])
            assert sum(map(len, kp._cache)) <= 64 * 1024
    huge = b"h" * (65 * 1024)
    assert kp.partition(huge, 7) == murmur2_partition(huge, 7)
    assert huge not in kp._cache
    assert kp.partition(b"small", 7) == murmur2_partition(b"small", 7)
    assert b"small" in kp._cache


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
