"""Which partition a record goes to.

Keyed records, default (``partitioner="murmur2"``): Kafka's default partitioner,
``partition = (murmur2(key_bytes) & 0x7FFFFFFF) % num_partitions``, where `murmur2` is
Kafka's `Utils.murmur2` (MurmurHash2, 32-bit, seed 0x9747B28C) of the key *after*
serialization. Every Kafka client places keys this way, so a key written by dmq's
client and by a Kafka client to the same topic lands on the same partition and keeps
its order. Example: murmur2(b"foobar") == 0xD0E47BBE (-790332482 as a Java int), so
with 3 partitions key b"foobar" goes to partition 0x50E47BBE % 3 == 0.

Keyed records, ``partitioner="crc32c"``: ``partition = crc32c(key_bytes) %
num_partitions`` (CRC-32C, Castagnoli, as computed by the `crc32c` package), dmq's
placement before murmur2 became the default. Keep it for topics written that way
whose readers rely on where a key is. Example: crc32c(b"user-1") == 0x14CCC4AC, so with
3 partitions key b"user-1" goes to partition 1.

Both are compatibility contracts: the same key maps to the same partition in every dmq
version, process and language, as long as the topic's partition count does not
change. murmur2 is pure Python here (~1 us for a short key against ~0.1 us for the C
CRC-32C), so `KeyPartitioner` keeps the hashes of recently seen keys in a bounded
cache: repeated keys (the common case: user ids, device ids) cost one dict lookup.

Keyless records: sticky partitioning (Kafka's KIP-480). All keyless records of a topic
go to one partition until the batch being filled there is handed to the sender; then
a new partition is picked at random (from those with a leader when any has one), so
batches fill up quickly instead of spreading one record per partition.

Pure: no asyncio, randomness injected.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

from crc32c import crc32c

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF
_WORDS = [struct.Struct(f"<{n}I") for n in range(64)]  # the common short keys

PARTITIONERS = ("murmur2", "crc32c")
DEFAULT_PARTITIONER = "murmur2"


def murmur2(data: bytes) -> int:
    """Kafka's `Utils.murmur2` of `data`, as an unsigned 32-bit integer (Java returns
    the same bits as a signed int)."""
    length = len(data)
    h = _SEED ^ length
    n = length >> 2
    if n:
        words = (_WORDS[n] if n < 64 else struct.Struct(f"<{n}I")).unpack_from(data)
        for k in words:
            k = (k * _M) & _MASK
            k = ((k ^ (k >> 24)) * _M) & _MASK
            h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        i = n << 2
        if tail == 3:
            h ^= data[i + 2] << 16
        if tail >= 2:
            h ^= data[i + 1] << 8
        h = ((h ^ data[i]) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    return h ^ (h >> 15)


def murmur2_partition(key: bytes, num_partitions: int) -> int:
    """Kafka's default placement: `toPositive(murmur2(key)) % num_partitions`."""
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions


def crc32c_partition(key: bytes, num_partitions: int) -> int:
    """dmq's earlier placement: CRC-32C of the key bytes, modulo the partition count."""
    return crc32c(key) % num_partitions


def partition_for_key(key: bytes, num_partitions: int,
                      partitioner: str = DEFAULT_PARTITIONER) -> int:
    """The partition of a keyed record (uncached; the producer uses `KeyPartitioner`)."""
    if partitioner == "murmur2":
        return murmur2_partition(_key_bytes(key), num_partitions)
    if partitioner == "crc32c":
        return crc32c_partition(key, num_partitions)
    raise ValueError(f"partitioner must be one of {', '.join(PARTITIONERS)}, "
                     f"got {partitioner!r}")


def _key_bytes(key: bytes) -> bytes:
    if type(key) is bytes:
        return key
    if isinstance(key, str):
        raise TypeError("a record key must be bytes after serialization, got str "
                        "(set key_serializer)")
    return bytes(key)  # bytearray, memoryview


class KeyPartitioner:
    """Keyed placement with a bounded cache of key hashes (murmur2) for the producer's
    hot path. The cache holds at most `cache_size` keys of at most `cache_bytes` in all
    (a key may be as large as a request) and is emptied when either is reached: a bound
    on memory without per-lookup bookkeeping (only a miss counts bytes). A key larger
    than `cache_bytes` is hashed each time."""

    __slots__ = ("_cache", "_cached_bytes", "cache_bytes", "cache_size", "name")

    def __init__(self, partitioner: str = DEFAULT_PARTITIONER, cache_size: int = 4096,
                 cache_bytes: int = 1 << 20) -> None:
        if partitioner not in PARTITIONERS:
            raise ValueError(f"partitioner must be one of {', '.join(PARTITIONERS)}, "
                             f"got {partitioner!r}")
        self.name = partitioner
        self.cache_size = cache_size
        self.cache_bytes = cache_bytes
        self._cache: dict[bytes, int] = {}
        self._cached_bytes = 0

    def partition(self, key: bytes, num_partitions: int) -> int:
        if type(key) is not bytes:
            key = _key_bytes(key)  # bytearray, memoryview: cached as their bytes
        h = self._cache.get(key)
        if h is None:
            if self.name == "crc32c":
                return crc32c(key) % num_partitions  # C speed: nothing to cache
            h = murmur2(key) & 0x7FFFFFFF
            size = len(key)
            if size <= self.cache_bytes:
                cache = self._cache
                if len(cache) >= self.cache_size or \
                        self._cached_bytes + size > self.cache_bytes:
                    cache.clear()
                    self._cached_bytes = 0
                cache[key] = h
                self._cached_bytes += size
        return h % num_partitions


class StickyPartitioner:
    """Per-topic sticky choice for keyless records."""

    __slots__ = ("_rng", "_sticky", "current")

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        # topic -> its sticky partition; read directly by the producer's hot path
        self._sticky: dict[str, int] = {}
        self.current = self._sticky

    def partition(self, topic: str, num_partitions: int) -> int:
        p = self._sticky.get(topic)
        if p is None or p >= num_partitions:
            p = self._rng.randrange(num_partitions)
            self._sticky[topic] = p
        return p

    def on_new_batch(self, topic: str, previous: int, num_partitions: int,
                     available: Sequence[int] = ()) -> int:
        """The batch on `previous` was completed: move to another partition."""
        if self._sticky.get(topic) != previous:
            return self._sticky.get(topic, previous)
        choices = [p for p in available if p != previous] if available else \
            [p for p in range(num_partitions) if p != previous]
        p = self._rng.choice(choices) if choices else previous
        self._sticky[topic] = p
        return p


__all__ = [
    "DEFAULT_PARTITIONER",
    "PARTITIONERS",
    "KeyPartitioner",
    "StickyPartitioner",
    "crc32c_partition",
    "murmur2",
    "murmur2_partition",
    "partition_for_key",
]
