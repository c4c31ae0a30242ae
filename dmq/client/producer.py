"""The asyncio `Producer`: a public façade over the accumulator and one sender task.

Usage::

    async with Producer("127.0.0.1:9091") as p:
        md = await p.send_and_wait("events", b"hello", key=b"user-1")
        handle = await p.send("events", b"world")   # returns at once (or waits for
        ...                                          # buffer space); the handle is
        md = await handle                            # awaitable: RecordMetadata

What it owns: the public API, settings checks, serialization, partition choice
(`dmq.client.partitioner`: keys placed as Kafka's default partitioner does, murmur2,
or `partitioner="crc32c"`), appending records to the `RecordAccumulator`
(`accumulator.py`) and buffer-memory backpressure. The `Sender` (`sender.py`), one
background task, drains ready batches per leader broker, keeps at most
`max_in_flight` produce requests outstanding per broker, retries retriable failures
with metadata refresh and backoff until `delivery_timeout_ms`, resolves one future
per batch and renews the producer id (below). Time comes from the injected clock.

Idempotence (default with acks="all"): a producer id from the active controller
(INIT_PRODUCER_ID), per-partition sequence numbers fixed when a batch is first sent,
retried batches resent byte for byte so the broker drops duplicates, and order kept
across retries (a partition with a batch awaiting retry sends one request at a
time, earliest sequence first). A batch that fails for good after its sequence was
fixed leaves a gap the broker would refuse forever; the producer then takes a new
producer id once nothing is in flight and restarts every partition at sequence 0.

Delivery guarantees, as in Kafka: an awaited handle that resolves was acknowledged
per `acks`; one that raises may or may not have been written (a timeout cannot know).
With idempotence a retried record is written at most once. Retriable errors are
retried until `delivery_timeout_ms`, never surfaced before; the timeout's error names
the last error a broker answered. A record that can never be sent (above
`max_request_size` or a node's frame limit) is refused by `send` at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate, repeat
from operator import add
from typing import TYPE_CHECKING, Any

from dmq.client.accumulator import (
    BatchMetadata,
    BatchSegment,
    ManyHandle,
    PartitionQueue,
    RecordAccumulator,
    RecordHandle,
)
from dmq.client.cluster import ClusterClient
from dmq.client.errors import IllegalStateError, ProducerClosedError, WouldBlockError
from dmq.client.partitioner import DEFAULT_PARTITIONER, KeyPartitioner, StickyPartitioner
from dmq.client.records import RecordMetadata, TopicPartition
from dmq.client.sender import Sender
from dmq.clock import Clock, SystemClock, wait_for_ms
from dmq.log.batch import HEADER_SIZE
from dmq.log.codecs import CODEC_LZ4, CODEC_NONE, CODEC_ZSTD, codec_available
from dmq.protocol.codec import DEFAULT_MAX_FRAME_BYTES
from dmq.protocol.errors import (
    MessageTooLargeError,
    RequestTimedOutError,
    UnknownTopicOrPartitionError,
)

if TYPE_CHECKING:
    from dmq.security.client_config import ClientSecurity

log = logging.getLogger("dmq.client.producer")

COMPRESSION = {"none": CODEC_NONE, None: CODEC_NONE, "zstd": CODEC_ZSTD, "lz4": CODEC_LZ4}
_RECORD_OVERHEAD = 12  # msgpack array header, timestamp delta, nil markers (estimate)
_REQUEST_OVERHEAD = 4096  # a produce request's frame beside its batch bytes (generous)
DEFAULT_DELIVERY_TIMEOUT_MS = 120_000

Serializer = Callable[[Any], bytes | None]


def parse_acks(acks: int | str) -> int:
    """0, 1, or -1/"all"; anything else is a ValueError."""
    if acks in ("all", -1, "-1"):
        return -1
    if acks in (0, 1, "0", "1"):
        return int(acks)
    raise ValueError(f"acks must be 0, 1 or 'all', got {acks!r}")


class Producer:
    """Asynchronous producer. Start with `await start()` or `async with`."""

    def __init__(self, bootstrap: str | Sequence[str], *, client_id: str = "dmq-producer",
                 acks: int | str = "all", enable_idempotence: bool | None = None,
                 linger_ms: int = 5, batch_size: int = 65_536,
                 buffer_memory: int = 32 * 1024 * 1024, max_in_flight: int = 5,
                 max_request_size: int = 1024 * 1024, compression_type: str | None = None,
                 request_timeout_ms: int = 30_000, delivery_timeout_ms: int | None = None,
                 max_block_ms: int = 60_000, retry_backoff_ms: int = 100,
                 retry_backoff_max_ms: int = 1_000, metadata_max_age_ms: int = 300_000,
                 key_serializer: Serializer | None = None,
                 value_serializer: Serializer | None = None,
                 allow_auto_create_topics: bool = True,
                 partitioner: str = DEFAULT_PARTITIONER,
                 clock: Clock | None = None, rng: random.Random | None = None,
                 security: ClientSecurity | None = None) -> None:
        """`security`: TLS and SASL of its connections (`ClientSecurity.from_file` of
        Kafka client properties); None: those of the context (`ClientSecurity.applied`)."""
        self.acks = parse_acks(acks)
        if enable_idempotence is None:
            enable_idempotence = self.acks == -1
        if enable_idempotence and self.acks != -1:
            raise ValueError("enable_idempotence requires acks='all'")
        if enable_idempotence and not 1 <= max_in_flight <= 5:
            raise ValueError("with idempotence max_in_flight must be 1..5 (the broker "
                             "remembers the last 5 batches per producer)")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if compression_type not in COMPRESSION:
            raise ValueError(f"compression_type must be none, zstd or lz4, "
                             f"got {compression_type!r}")
        self.codec = COMPRESSION[compression_type]
        if not codec_available(self.codec):
            raise ValueError(f"compression {compression_type} needs its package installed "
                             f"(pip install 'dmq[compression]')")
        if linger_ms < 0 or batch_size < 1 or buffer_memory < batch_size:
            raise ValueError("need linger_ms >= 0, batch_size >= 1, buffer_memory >= batch_size")
        if delivery_timeout_ms is None:
            delivery_timeout_ms = DEFAULT_DELIVERY_TIMEOUT_MS
            if delivery_timeout_ms < linger_ms + request_timeout_ms:
                log.warning("delivery_timeout_ms raised from its default %d to linger_ms + "
                            "request_timeout_ms = %d", delivery_timeout_ms,
                            linger_ms + request_timeout_ms)
                delivery_timeout_ms = linger_ms + request_timeout_ms
        elif delivery_timeout_ms < linger_ms + request_timeout_ms:
            # Kafka's producer refuses this combination too: a batch could expire before
            # its first request was even answered
            raise ValueError(f"delivery_timeout_ms={delivery_timeout_ms} must be at least "
                             f"linger_ms + request_timeout_ms = {linger_ms} + "
                             f"{request_timeout_ms} = {linger_ms + request_timeout_ms}")
        if max_request_size < 1:
            raise ValueError("max_request_size must be at least 1")
        self.idempotent = enable_idempotence
        self.linger_ms = linger_ms
        self.batch_size = batch_size
        self.buffer_memory = buffer_memory
        self.max_in_flight = max_in_flight
        self.max_request_size = max_request_size
        self.request_timeout_ms = request_timeout_ms
        self.delivery_timeout_ms = delivery_timeout_ms
        self.max_block_ms = max_block_ms
        self.key_serializer = key_serializer
        self.value_serializer = value_serializer
        self._clock = clock or SystemClock()
        self._wall_ms = self._clock.wall_ms
        # a record must fit one batch in one request frame: the smaller of what we may
        # send (max_request_size) and what any node reads (max.frame.bytes, less room
        # for the request envelope)
        if max_request_size <= DEFAULT_MAX_FRAME_BYTES - _REQUEST_OVERHEAD:
            self._record_limit = (max_request_size, f"max_request_size={max_request_size}")
        else:
            self._record_limit = (DEFAULT_MAX_FRAME_BYTES - _REQUEST_OVERHEAD,
                                  f"the largest request a node accepts (max.frame.bytes="
                                  f"{DEFAULT_MAX_FRAME_BYTES}, less {_REQUEST_OVERHEAD} bytes "
                                  f"of request envelope)")
        self._max_record_bytes = self._record_limit[0] - HEADER_SIZE
        self._rng = rng or random.Random()
        self.cluster = ClusterClient(bootstrap, client_id=client_id,
                                     request_timeout_ms=request_timeout_ms,
                                     retry_backoff_ms=retry_backoff_ms,
                                     retry_backoff_max_ms=retry_backoff_max_ms,
                                     metadata_max_age_ms=metadata_max_age_ms,
                                     allow_auto_create=allow_auto_create_topics,
                                     rng=self._rng, clock=self._clock, security=security)
        self._sticky = StickyPartitioner(self._rng)
        self._keyed = KeyPartitioner(partitioner)
        self._key_partition = self._keyed.partition
        self._sticky_current = self._sticky.current
        self._batch_filled = False  # set by _append when a record closed a full batch
        self._acc = RecordAccumulator(self.codec, buffer_memory)
        self._queues = self._acc.queues  # the same dict, one lookup less per record
        self._sender = Sender(self._acc, self.cluster, self._clock, acks=self.acks,
                              idempotent=enable_idempotence, linger_ms=linger_ms,
                              batch_size=batch_size, max_in_flight=max_in_flight,
                              max_request_size=max_request_size,
                              request_timeout_ms=request_timeout_ms,
                              delivery_timeout_ms=delivery_timeout_ms)
        self._wakeup = self._acc.wakeup = self._sender.wakeup
        self._started = False
        self._accepting = False  # started and not closing: the one flag `send` checks
        self._closing = False
        self._closed = False

    # ---- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Connect (bootstrap metadata) and, with idempotence, get a producer id.
        Raises `NetworkError` when no bootstrap node answers."""
        if self._started:
            return
        self._acc.start()
        try:
            await self.cluster.refresh()
            if self.idempotent:
                await self._sender.init_producer_id()
        except BaseException:
            await self.cluster.close()
            raise
        self._started = True
        self._accepting = True
        self._sender.start()

    @property
    def producer_id(self) -> int:
        return self._sender.producer_id

    async def __aenter__(self) -> Producer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, timeout_ms: int | None = None) -> None:
        """Send everything accumulated, wait for the answers (bounded by the delivery
        timeout, or `timeout_ms`), then close connections. Later sends raise
        `ProducerClosedError`."""
        if self._closed:
            return
        self._closing = self._acc.closing = True
        self._accepting = False
        await self._sender.close(timeout_ms if timeout_ms is not None
                                 else self.delivery_timeout_ms)
        self._closed = True
        await self.cluster.close()

    # ---- sending -----------------------------------------------------------------------
    async def send(self, topic: str, value: Any = None, key: Any = None,
                   partition: int | None = None,
                   headers: Iterable[tuple[str, bytes]] | None = None,
                   timestamp_ms: int | None = None) -> RecordHandle:
        """Append a record; returns an awaitable handle (→ `RecordMetadata`).

        Waits only for metadata of a topic seen for the first time and for buffer space
        when `buffer_memory` is full (both bounded by `max_block_ms`).
        """
        key, value, hdrs, size = self._prepare(key, value, headers)
        handle = self._append(topic, key, value, partition, hdrs, size, timestamp_ms, True)
        while handle is None:  # something to wait for first
            if self._acc.buffered_bytes + size > self.buffer_memory:
                await self._wait_for_buffer(size)
            parts = self._queues.get(topic)
            if parts is None:
                parts = await self._topic_queues(topic)
            if partition is not None and partition not in parts:
                await self._grown_queue(topic, partition)
            handle = self._append(topic, key, value, partition, hdrs, size, timestamp_ms,
                                  False)
        if self._batch_filled:
            self._batch_filled = False
            # let the sender ship the full batch now rather than after the burst
            await asyncio.sleep(0)
        return handle

    def send_nowait(self, topic: str, value: Any = None, key: Any = None,
                    partition: int | None = None,
                    headers: Iterable[tuple[str, bytes]] | None = None,
                    timestamp_ms: int | None = None) -> RecordHandle:
        """`send` for tight loops: the same append, without a coroutine per record.

        Raises `WouldBlockError` (a `BufferError`) instead of waiting, when
        `buffer_memory` is full or the topic's metadata is not known yet; then `await
        send(...)` the record, which waits. Nothing is sent until the caller's loop
        yields to the event loop (any `await` that suspends), so yield now and then.
        """
        key, value, hdrs, size = self._prepare(key, value, headers)
        handle = self._append(topic, key, value, partition, hdrs, size, timestamp_ms, True)
        if handle is None:
            raise WouldBlockError(
                f"cannot append to {topic!r} without waiting (buffer full or metadata not "
                f"known yet): await send() instead")
        self._batch_filled = False
        return handle

    # ---- the batch API -----------------------------------------------------------------
    async def send_many(self, topic: str, values: Sequence[Any],
                        keys: Sequence[Any] | None = None, partition: int | None = None,
                        headers: Iterable[tuple[str, bytes]] | None = None,
                        timestamp_ms: int | None = None) -> ManyHandle:
        """Append many records in one call; returns one awaitable `ManyHandle`.

        `values` (and `keys`, the same length, or None) are sequences; `headers` go on
        every record; all records share one timestamp. Records are placed as `send`
        places them (explicit `partition`, murmur2/crc32c of each key, or the sticky
        partition, moved when a batch fills), split into batches of `batch_size`, and
        kept in call order within each partition. No Python code runs per record
        beyond the serializers (if any) and, for keys, the key partitioner: sizes,
        splitting, grouping by partition and the batch's records are C-level
        (`map`, `accumulate`, `bisect`, `sorted`, `zip`). Waits, like `send`, for
        topic metadata and for `buffer_memory` space (a call larger than the free
        buffer goes in parts as space frees up; each part is appended whole).

        When such a wait fails after some parts were appended (no space within
        `max_block_ms`, the producer closing), those records are sent as usual: the
        error's `handle` attribute is the `ManyHandle` of the records appended so far
        (its segments' positions say which), so their outcome is not lost.
        """
        if not self._accepting:
            self._check_accepting()
        keys, values, hdrs, sizes = self._prepare_many(keys, values, headers, partition)
        parts = self._queues.get(topic)
        if parts is None:
            parts = await self._topic_queues(topic)
        if partition is not None and partition not in parts:
            await self._grown_queue(topic, partition)
        ts = timestamp_ms if timestamp_ms is not None else self._wall_ms()
        handle = ManyHandle(topic, ts)
        cum = list(accumulate(sizes, initial=0))
        n = len(values)
        start = 0
        while start < n:
            free = self.buffer_memory - self._acc.buffered_bytes
            end = bisect_right(cum, cum[start] + free, start) - 1
            if not self._accepting or (end <= start and self._acc.buffered_bytes):
                try:
                    if not self._accepting:
                        self._check_accepting()
                    await self._wait_for_buffer(sizes[start])
                except Exception as exc:
                    if handle.segments:
                        exc.handle = handle  # type: ignore[attr-defined]
                    raise
                continue
            end = max(end, start + 1)
            whole = start == 0 and end == n
            self._append_many(topic, parts, None if keys is None else
                              (keys if whole else keys[start:end]),
                              values if whole else values[start:end],
                              sizes if whole else sizes[start:end],
                              partition, hdrs, ts, handle, start)
            start = end
            if self._batch_filled:
                self._batch_filled = False
                await asyncio.sleep(0)  # let the sender ship the full batches now
        return handle

    def send_many_nowait(self, topic: str, values: Sequence[Any],
                         keys: Sequence[Any] | None = None, partition: int | None = None,
                         headers: Iterable[tuple[str, bytes]] | None = None,
                         timestamp_ms: int | None = None) -> ManyHandle:
        """`send_many` without waiting, for tight loops: appends every record or none.

        Raises `WouldBlockError` (nothing appended) when the records do not fit the
        free `buffer_memory` or the topic's metadata (or the explicit partition) is not
        known yet; then `await send_many(...)`, which waits. Nothing is sent until the
        caller yields to the event loop.
        """
        if not self._accepting:
            self._check_accepting()
        keys, values, hdrs, sizes = self._prepare_many(keys, values, headers, partition)
        parts = self._queues.get(topic)
        total = sum(sizes)
        if parts is None or (partition is not None and partition not in parts) or \
                self._acc.buffered_bytes + total > self.buffer_memory:
            raise WouldBlockError(
                f"cannot append {len(values)} records to {topic!r} without waiting (buffer "
                f"full or metadata not known yet): await send_many() instead")
        ts = timestamp_ms if timestamp_ms is not None else self._wall_ms()
        handle = ManyHandle(topic, ts)
        self._append_many(topic, parts, keys, values, sizes, partition, hdrs, ts, handle, 0)
        self._batch_filled = False
        return handle

    def _check_accepting(self) -> None:
        if self._closing or self._closed:
            raise ProducerClosedError("producer is closed")
        raise IllegalStateError("producer not started: use `async with` or start()")

    def _prepare_many(self, keys: Sequence[Any] | None, values: Sequence[Any],
                      headers: Iterable[tuple[str, bytes]] | None, partition: int | None
                      ) -> tuple[Sequence[Any] | None, Sequence[Any],
                                 list[tuple[str, bytes]] | None, list[int]]:
        """Serialized keys and values, the shared headers, and each record's size
        estimate (as `_prepare` makes it), checked against the record limit; keys must
        be all set unless `partition` places the records. Every check is made here,
        before any record of the call is appended."""
        if isinstance(values, (bytes, bytearray, memoryview, str)):
            raise TypeError(f"send_many takes a sequence of values, not one "
                            f"{type(values).__name__} value: send_many(topic, [value])")
        if self.value_serializer is not None:
            values = list(map(self.value_serializer, values))
        elif not isinstance(values, (list, tuple)):
            values = list(values)
        n = len(values)
        if keys is not None:
            if self.key_serializer is not None:
                keys = list(map(self.key_serializer, keys))
            elif not isinstance(keys, (list, tuple)):
                keys = list(keys)
            if len(keys) != n:
                raise ValueError(f"send_many: {len(keys)} keys for {n} values")
        hdrs: list[tuple[str, bytes]] | None = None
        overhead = _RECORD_OVERHEAD
        if headers:
            hdrs = list(headers)
            overhead += sum(len(k) + len(v) + 4 for k, v in hdrs)
        if None in values:  # tombstones: the only case with Python code per record
            sizes = [overhead + (len(v) if v else 0) for v in values]
        else:
            sizes = list(map(add, map(len, values), repeat(overhead, n)))
        if keys is not None:
            if None in keys:
                if partition is None:
                    raise ValueError("send_many: keys must be all set or keys=None (records "
                                     "without a key go to the sticky partition)")
                sizes = list(map(add, sizes, [len(k) if k else 0 for k in keys]))
            else:
                sizes = list(map(add, sizes, map(len, keys)))
        if n and max(sizes) > self._max_record_bytes:
            raise MessageTooLargeError(
                f"a record of {max(sizes)} bytes can never be sent: the limit is "
                f"{self._max_record_bytes} bytes, from {self._record_limit[1]}")
        return keys, values, hdrs, sizes

    def _append_many(self, topic: str, parts: dict[int, PartitionQueue],
                     keys: Sequence[Any] | None, values: Sequence[Any], sizes: list[int],
                     partition: int | None, hdrs: list[tuple[str, bytes]] | None, ts: int,
                     handle: ManyHandle, offset: int) -> None:
        """Append records already known to fit the buffer: to one partition, to the
        sticky partition, or grouped by each key's partition (a stable C-level sort of
        the positions by partition keeps call order within a partition)."""
        n = len(values)
        if not n:
            return
        if partition is not None:
            self._fill(topic, parts, parts[partition], False, keys, values, sizes, hdrs, ts,
                       handle, range(offset, offset + n))
            return
        if keys is None:
            p = self._sticky_current.get(topic)
            if p is None or p not in parts:
                p = self._sticky.partition(topic, len(parts))
            self._fill(topic, parts, parts[p], True, None, values, sizes, hdrs, ts, handle,
                       range(offset, offset + n))
            return
        chosen = list(map(self._key_partition, keys, repeat(len(parts), n)))
        distinct = set(chosen)
        if len(distinct) == 1:
            self._fill(topic, parts, parts[chosen[0]], False, keys, values, sizes, hdrs, ts,
                       handle, range(offset, offset + n))
            return
        order = sorted(range(n), key=chosen.__getitem__)
        by_part = sorted(chosen)
        for p in sorted(distinct):
            idx = order[bisect_left(by_part, p):bisect_right(by_part, p)]
            self._fill(topic, parts, parts[p], False, list(map(keys.__getitem__, idx)),
                       list(map(values.__getitem__, idx)), list(map(sizes.__getitem__, idx)),
                       hdrs, ts, handle, list(map(add, idx, repeat(offset, len(idx))))
                       if offset else idx)

    def _fill(self, topic: str, parts: dict[int, PartitionQueue], pq: PartitionQueue,
              sticky: bool, keys: Sequence[Any] | None, values: Sequence[Any],
              sizes: list[int], hdrs: list[tuple[str, bytes]] | None, ts: int,
              handle: ManyHandle, positions: Sequence[int]) -> None:
        """Records of one partition into its open batch and new ones of `batch_size`
        (Python work per batch, not per record)."""
        n = len(values)
        cum = list(accumulate(sizes, initial=0))
        batch_size = self.batch_size
        i = 0
        while i < n:
            batch = pq.open
            if batch is None or batch.reserved_bytes + sizes[i] > batch_size:
                full = batch is not None
                if full and sticky:
                    # KIP-480, as in `_append`: move the sticky partition on a full batch
                    pq = parts.get(self._sticky.on_new_batch(topic, pq.partition,
                                                             len(parts))) or pq
                    batch = pq.open
                if batch is None or batch.reserved_bytes + sizes[i] > batch_size:
                    batch = self._acc.new_batch(pq, self._clock.monotonic_ms())
                if full:
                    self._wakeup()
                    self._batch_filled = True
            j = bisect_right(cum, cum[i] + batch_size - batch.reserved_bytes, i) - 1
            if j <= i:
                j = i + 1  # a new batch takes at least one record
            elif j > n:
                j = n
            whole = i == 0 and j == n
            index = batch.builder.extend(
                ts, None if keys is None else (keys if whole else keys[i:j]),
                values if whole else values[i:j], hdrs)
            size = cum[j] - cum[i]
            batch.reserved_bytes += size
            self._acc.buffered_bytes += size
            handle.segments.append(BatchSegment(batch, index, j - i, positions[i:j]))
            i = j


    def _prepare(self, key: Any, value: Any, headers: Iterable[tuple[str, bytes]] | None
                 ) -> tuple[Any, Any, list[tuple[str, bytes]] | None, int]:
        """Serialized key and value, headers as a list, and the record's size estimate."""
        if not self._accepting:
            if self._closing:
                raise ProducerClosedError("producer is closed")
            raise IllegalStateError("producer not started: use `async with` or start()")
        if self.key_serializer is not None:
            key = self.key_serializer(key)
        if self.value_serializer is not None:
            value = self.value_serializer(value)
        size = _RECORD_OVERHEAD + (len(key) if key else 0) + (len(value) if value else 0)
        hdrs: list[tuple[str, bytes]] | None = None
        if headers:
            hdrs = list(headers)
            size += sum(len(k) + len(v) + 4 for k, v in hdrs)
        if size > self._max_record_bytes:
            raise MessageTooLargeError(f"record of {size} bytes can never be sent: the limit "
                                       f"is {self._max_record_bytes} bytes, from "
                                       f"{self._record_limit[1]}")
        return key, value, hdrs, size

    def _append(self, topic: str, key: Any, value: Any, partition: int | None,
                hdrs: list[tuple[str, bytes]] | None, size: int, timestamp_ms: int | None,
                check_buffer: bool) -> RecordHandle | None:
        """Append a prepared record to its partition's open batch (or a new one); None
        when that needs waiting first (buffer space, topic metadata, a new partition).
        Sets `_batch_filled` when a full batch was closed by this record."""
        acc = self._acc
        if check_buffer and acc.buffered_bytes + size > self.buffer_memory:
            return None
        parts = self._queues.get(topic)
        if parts is None:
            return None
        sticky = False
        if partition is None:
            if key is None:
                partition = self._sticky_current.get(topic)
                if partition is None or partition not in parts:
                    partition = self._sticky.partition(topic, len(parts))
                sticky = True
            else:
                partition = self._key_partition(key, len(parts))
        pq = parts.get(partition)
        if pq is None:
            return None
        ts = timestamp_ms if timestamp_ms is not None else self._wall_ms()
        batch = pq.open
        if batch is not None and batch.reserved_bytes + size <= self.batch_size:
            index = batch.builder.append(ts, key, value, hdrs)
            batch.reserved_bytes += size
            acc.buffered_bytes += size
            return RecordHandle(batch, index, ts)
        full = batch is not None
        if full and sticky:
            # KIP-480: a keyless record that would open a new batch moves the topic's
            # sticky partition instead, so each batch fills before the next one starts
            partition = self._sticky.on_new_batch(topic, partition, len(parts))
            pq = parts.get(partition) or pq
            batch = pq.open
            if batch is not None and batch.reserved_bytes + size <= self.batch_size:
                index = batch.builder.append(ts, key, value, hdrs)
                batch.reserved_bytes += size
                acc.buffered_bytes += size
                self._wakeup()
                return RecordHandle(batch, index, ts)
        batch = acc.new_batch(pq, self._clock.monotonic_ms())
        index = batch.builder.append(ts, key, value, hdrs)
        batch.reserved_bytes += size
        acc.buffered_bytes += size
        if full:
            self._wakeup()
            self._batch_filled = True
        return RecordHandle(batch, index, ts)

    async def _topic_queues(self, topic: str) -> dict[int, PartitionQueue]:
        """The partition queues of a topic seen for the first time (waits for its
        metadata up to `max_block_ms`). The partition count used for key hashing is
        the one known here; a topic that grows is picked up for explicit partitions."""
        info = self.cluster.topic(topic) or await self.cluster.wait_for_topic(
            topic, self.max_block_ms)
        parts = self._queues.get(topic)
        if parts is None:
            parts = self._queues[topic] = {p.partition: PartitionQueue(topic, p.partition)
                                           for p in info.partitions}
        return parts

    async def _grown_queue(self, topic: str, partition: int) -> PartitionQueue:
        info = self.cluster.topic(topic)
        if info is None or partition >= len(info.partitions):
            await self.cluster.refresh([topic])
            info = self.cluster.topic(topic)
        if info is None or not 0 <= partition < len(info.partitions):
            n = len(info.partitions) if info is not None else 0
            raise UnknownTopicOrPartitionError(
                f"topic {topic!r} has {n} partitions; no partition {partition}")
        parts = self._queues[topic]
        pq = parts.get(partition)
        if pq is None:
            pq = parts[partition] = PartitionQueue(topic, partition)
        return pq

    async def send_and_wait(self, topic: str, value: Any = None, key: Any = None,
                            partition: int | None = None,
                            headers: Iterable[tuple[str, bytes]] | None = None,
                            timestamp_ms: int | None = None) -> RecordMetadata:
        """Send one record and wait for its acknowledgement."""
        handle = await self.send(topic, value, key, partition, headers, timestamp_ms)
        return await handle

    async def flush(self, timeout_ms: int | None = None) -> None:
        """Send everything accumulated now (ignoring linger) and wait until every batch
        sent so far is answered. Errors stay with their handles."""
        if not self._started:
            return
        pending = list(self._acc.incomplete)
        if not pending:
            return
        self._acc.flushing += 1
        self._wakeup()
        try:
            await wait_for_ms(self._clock, asyncio.wait([b.future for b in pending]),
                              timeout_ms)
        except TimeoutError:
            pass  # errors and late answers stay with their handles
        finally:
            self._acc.flushing -= 1

    async def partitions_for(self, topic: str) -> list[int]:
        info = self.cluster.topic(topic) or await self.cluster.wait_for_topic(
            topic, self.max_block_ms)
        return [p.partition for p in info.partitions]

    async def _wait_for_buffer(self, size: int) -> None:
        acc = self._acc
        assert acc.buffer_free is not None
        clock = self._clock
        deadline = clock.monotonic_ms() + self.max_block_ms
        acc.flushing += 1  # a full buffer should drain now, not after linger
        self._wakeup()
        try:
            while acc.buffered_bytes + size > self.buffer_memory and acc.buffered_bytes:
                acc.buffer_free.clear()
                remaining = deadline - clock.monotonic_ms()
                if remaining <= 0:
                    raise RequestTimedOutError(
                        f"buffer_memory ({self.buffer_memory} bytes) still full after "
                        f"max_block_ms={self.max_block_ms}")
                try:
                    await wait_for_ms(clock, acc.buffer_free.wait(), remaining)
                except TimeoutError:
                    pass
                if self._closing:
                    raise ProducerClosedError("producer is closed")
        finally:
            acc.flushing -= 1

    # ---- introspection -----------------------------------------------------------------
    @property
    def buffered_bytes(self) -> int:
        return self._acc.buffered_bytes

    def pending_partitions(self) -> list[TopicPartition]:
        return [TopicPartition(pq.topic, pq.partition) for pq in self._acc.pending]


__all__ = ["BatchMetadata", "ManyHandle", "Producer", "RecordHandle", "parse_acks"]
