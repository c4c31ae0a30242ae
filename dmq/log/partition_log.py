"""`PartitionLog`: the replicated log of one partition, a folder of segments.

Keeps the offsets (log start, log end, recovery point); appends from leaders and
followers, reads whole batches, rolls, truncates, applies retention and the flush
policy, recovers on open, and keeps the leader-epoch cache and producer state.
Compaction lives in `dmq.log.cleaner` and works through the cleaner hooks at the
bottom of this class (`dmq.log.cleaner.CleanableLog`). The high watermark is kept by
the broker, not here; `read(max_offset=hw)` bounds reads.

It decodes no record into Python objects on replicate or read paths: per batch
work only (header unpack, CRC, stamping), bytes move with `writev`/`pread`. A leader
append also checks each client batch against its records (`check_client_batch`: one
C-level unpack and a few C-level passes per batch, no per-record Python code). Calls
are serialised by one lock so the cleaner may run in a worker thread (`locked()`);
everything else is synchronous and meant to be called from the broker's event loop.

Folder layout::

    00000000000000000000.log / .index / .timeindex   segments, named by base offset
    meta.checkpoint            recovery_point, log_start_offset, clean_shutdown
    leader-epoch-checkpoint    epoch -> start offset
    log-format                 record format version (`dmq.log.migrate`)

Descriptors: the active segment keeps its `.log` open; a closed segment releases its
descriptor and reopens it when read, and at most `MAX_IDLE_SEGMENT_FDS` closed segments
of a log hold one at a time. Closed segments' index files hold none; the active
segment's two memory-mapped indexes hold one each before Python 3.13 (see
`dmq.log.index`).

Crash safety: data is written with one `writev` per append; flushes advance the
recovery point; on open (`dmq.log.recovery`) the segments past the recovery point of an
unclean shutdown are scanned batch by batch and cut after the last valid batch, and
later segments are deleted. File replacement by the cleaner goes through `.cleaned` ->
`.swap` -> final, finished or undone on open (`dmq.log.recovery`). Opening a log that
needs no repair does no fsync: the meta checkpoint is written only when its rows change,
and a log opened after a clean shutdown stays marked clean on disk until its first
change, which first writes it unclean (`_mark_unclean`). The leader-epoch checkpoint is
written in the background and made durable before each meta checkpoint; an unclean open
takes the epochs past the recovery point from the batch headers (`dmq.log.epoch_cache`).

Offsets and reads: `append_as_leader` assigns offsets from the log end; batches are
atomic (truncation inside a batch removes the whole batch); `read` returns whole
batches starting with the one containing the asked offset, bounded by `max_bytes`
(at least one batch) and by `max_offset` (exclusive: only batches whose last offset is
below it, so `read(..., max_offset=high_watermark)` never exposes uncommitted data).
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from operator import itemgetter
from typing import NamedTuple

from crc32c import crc32c

from dmq.clock import Clock, SystemClock
from dmq.log.batch import (
    ATTR_KNOWN_MASK,
    CRC_START,
    HEADER_SIZE,
    HEADER_STRUCT,
    LOG_OVERHEAD,
    MAGIC,
    MIN_BATCH_LENGTH,
    STAMP_STRUCT,
    BatchHeader,
    Buffer,
    check_client_batch,
    validate_raw,
    with_log_append_time,
)
from dmq.log.checkpoint import fsync_dir, write_entries
from dmq.log.cleaner import CleanResult, clean_log
from dmq.log.config import LogConfig
from dmq.log.epoch_cache import FILE_NAME as EPOCH_FILE
from dmq.log.epoch_cache import (
    UNDEFINED_EPOCH,
    CheckpointFlusher,
    LeaderEpochCache,
    default_flusher,
)
from dmq.log.errors import (
    CorruptRecordError,
    LogClosedError,
    LogDiskFullError,
    LogError,
    LogStorageError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    RecordTooLargeError,
    UnexpectedAppendOffsetError,
)
from dmq.log.migrate import MigrationResult, ensure_current_format
from dmq.log.producer_state import ProducerStateManager
from dmq.log.recovery import META_FILE, LoadedSegments, load_segments
from dmq.log.segment import LogSegment, ScanResult

log = logging.getLogger("dmq.log")

_MAX_RELATIVE_OFFSET = 0xFFFFFFFF
# Closed segments of one log that may hold an open `.log` descriptor at once (each read
# of another one reopens it: one `open`, a few microseconds).
MAX_IDLE_SEGMENT_FDS = 4
_READ_PREFIX = struct.Struct(">qi11xi")  # base, length, last_offset_delta
_STAMP_PACK = STAMP_STRUCT.pack
_HEADER_UNPACK = HEADER_STRUCT.unpack_from
_new_tuple = tuple.__new__  # builds a NamedTuple without its Python-level __new__
# Fields of a raw header tuple (`validate_raw`), for C-speed folds over a fetch's batches.
_EPOCH_OF, _MAX_TS_OF, _PRODUCER_OF, _RECORDS_OF = (itemgetter(i) for i in (2, 8, 9, 12))


class LogAppendInfo(NamedTuple):
    """What an append did. For a duplicate idempotent batch nothing was written and the
    offsets are those of the original batch."""

    base_offset: int
    last_offset: int
    max_timestamp: int
    log_append_time_ms: int
    record_count: int
    size_bytes: int
    duplicate: bool


class PartitionLog:
    """One partition's log. Open with `PartitionLog.open(directory, config, clock)`.

    `fsync_enabled=False` skips every fsync (data, checkpoints, folder): a process crash
    is still recovered from, a power loss may not be. Meant for tests and tools.
    `epoch_flusher` writes the leader-epoch checkpoint in the background (default: the
    process's shared one, `dmq.log.epoch_cache.default_flusher`).
    """

    def __init__(self, directory: str, config: LogConfig | None = None,
                 clock: Clock | None = None, *, fsync_enabled: bool = True,
                 epoch_flusher: CheckpointFlusher | None = None) -> None:
        self.directory = directory
        self._config = config if config is not None else LogConfig()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.fsync_enabled = fsync_enabled
        self._lock = threading.RLock()
        self._segments: list[LogSegment] = []
        self._bases: list[int] = []
        self._log_start_offset = 0
        self._log_end_offset = 0
        self._recovery_point = 0
        self._unflushed_messages = 0
        self._last_flush_ms = self.clock.monotonic_ms()
        self._closed = False
        # The meta checkpoint's rows as last read or written (None: unknown), so that a
        # write that would change nothing is skipped; and whether it says clean shutdown
        # (then the first change of the log writes it unclean first: `_mark_unclean`).
        self._meta_on_disk: tuple[tuple[str, int], ...] | None = None
        self._clean_on_disk = False
        # (closed segments as (base, size), tombstones kept) after the last clean: lets
        # the cleaner skip a log with nothing new to do.
        self.cleaner_state: tuple[tuple[tuple[int, int], ...], int] | None = None
        self.truncations = 0  # truncations so far (a closed segment may be reopened by one)
        self.failure: str | None = None  # why `fail` closed it (its files stay open)
        # base offsets of stored batches that do not decode, reported once by the cleaner
        self.undecodable_batches: set[int] = set()
        self.producer_state = ProducerStateManager(self._config.max_producer_batches)
        # Closed segments whose `.log` descriptor a read reopened, oldest first: at most
        # `MAX_IDLE_SEGMENT_FDS` hold one (a segment.bytes of 64 made one per segment).
        self._reopened: OrderedDict[int, LogSegment] = OrderedDict()
        self._copy_config()
        try:
            os.makedirs(directory, exist_ok=True)
            self.epoch_cache = LeaderEpochCache(
                os.path.join(directory, EPOCH_FILE), sync=fsync_enabled,
                flusher=epoch_flusher if epoch_flusher is not None else default_flusher())
            self._latest_epoch = self.epoch_cache.latest_epoch
            self._load()
        except OSError as exc:
            raise LogStorageError(f"cannot open log {directory}: {exc}") from exc

    @property
    def config(self) -> LogConfig:
        return self._config

    @config.setter
    def config(self, config: LogConfig) -> None:
        """A new config (the topic's configs were altered) applies from the next call."""
        with self._lock:
            self._config = config
            self._copy_config()

    def _copy_config(self) -> None:
        """Hot-path copies of config fields (attribute lookups on a frozen dataclass)."""
        cfg = self._config
        self._max_message_bytes = cfg.max_message_bytes
        self._segment_bytes = cfg.segment_bytes
        self._segment_ms = cfg.segment_ms
        self._flush_messages = cfg.flush_messages
        self._flush_ms = cfg.flush_ms
        self._log_append_time = cfg.message_timestamp_type == "LogAppendTime"

    @classmethod
    def open(cls, directory: str, config: LogConfig | None = None,
             clock: Clock | None = None, *, fsync_enabled: bool = True,
             epoch_flusher: CheckpointFlusher | None = None) -> PartitionLog:
        return cls(directory, config, clock, fsync_enabled=fsync_enabled,
                   epoch_flusher=epoch_flusher)

    # ------------------------------------------------------------------ properties

    @property
    def log_start_offset(self) -> int:
        return self._log_start_offset

    @property
    def log_end_offset(self) -> int:
        return self._log_end_offset

    @property
    def recovery_point(self) -> int:
        return self._recovery_point

    @property
    def size_bytes(self) -> int:
        return sum(s.size_bytes for s in self._segments)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    @property
    def segments(self) -> list[LogSegment]:
        """Snapshot of the segments, oldest first (for tools, tests and the cleaner)."""
        return list(self._segments)

    @property
    def latest_epoch(self) -> int:
        return self.epoch_cache.latest_epoch

    def end_offset_for_epoch(self, epoch: int) -> tuple[int, int]:
        """KIP-101 query a follower sends after a leader change: (epoch, end offset)."""
        with self._lock:
            return self.epoch_cache.end_offset_for_epoch(epoch, self._log_end_offset)

    # ------------------------------------------------------------------ appends

    def append_as_leader(self, buf: Buffer, leader_epoch: int) -> LogAppendInfo:
        """Validate client batches, assign offsets from the log end, stamp `leader_epoch`.

        Raises `CorruptRecordError` (length/magic/CRC), `InvalidRecordError` (a header
        that disagrees with the records, or records readers could not decode: see
        `check_client_batch`), `RecordTooLargeError`, `OutOfOrderSequenceError` or
        `InvalidProducerEpochError`; nothing is written then.
        If a batch duplicates a recent idempotent batch, nothing is written and the
        original batch's offsets come back with `duplicate=True` (Kafka's behaviour).
        """
        mv = buf if type(buf) is memoryview else memoryview(buf)
        size = len(mv)
        if size < HEADER_SIZE or self._log_append_time:
            return self._append_many_as_leader(mv, leader_epoch)
        t = _HEADER_UNPACK(mv, 0)
        if t[1] + LOG_OVERHEAD != size:
            return self._append_many_as_leader(mv, leader_epoch)
        # One batch per call, the common case: everything inlined (the hot path).
        if (t[3] != MAGIC or t[1] < MIN_BATCH_LENGTH or t[12] < 1 or t[6] < t[12] - 1
                or t[5] & ~ATTR_KNOWN_MASK):
            validate_raw(mv)  # raises with the precise reason
        if crc32c(mv[CRC_START:]) != t[4]:
            raise CorruptRecordError("CRC mismatch in batch at position 0")
        if size > self._max_message_bytes:
            raise RecordTooLargeError(f"batch of {size} bytes > {self._max_message_bytes}")
        check_client_batch(mv, (*t, 0))
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if self._clean_on_disk:
                self._mark_unclean()
            base = self._log_end_offset
            if t[9] >= 0:
                dup = self._check_producer(t, {})
                if dup is not None:
                    return dup
            nxt = base + t[6] + 1
            seg = self._segments[-1]
            if nxt - seg.base_offset > _MAX_RELATIVE_OFFSET:
                seg = self._roll(base)
            elif seg.size_bytes and (
                    seg.size_bytes + size > self._segment_bytes
                    or len(seg.index._offsets) + 1 >= seg.index.capacity_entries  # noqa: SLF001
                    or (seg.first_append_ms is not None
                        and self.clock.monotonic_ms() - seg.first_append_ms
                        >= self._segment_ms)):
                seg = self._roll(base)
            try:
                seg.append_batch(_STAMP_PACK(base, t[1], leader_epoch), mv[16:], size, base,
                                 t[8], nxt)
            except OSError as exc:
                raise self._append_failed(seg.path, exc) from exc
            if seg.first_append_ms is None:
                seg.first_append_ms = self.clock.monotonic_ms()
            self._log_end_offset = nxt
            if leader_epoch > self._latest_epoch:
                self.epoch_cache.assign(leader_epoch, base)
                self._latest_epoch = self.epoch_cache.latest_epoch
            if t[9] >= 0:
                self.producer_state.update(t[9], t[10], t[11], (t[11] + t[6]) & 0x7FFFFFFF,
                                           base, nxt - 1, t[8])
            self._unflushed_messages += t[12]
            if self._flush_messages is not None or self._flush_ms is not None:
                self._maybe_flush_after_append()
            return _new_tuple(LogAppendInfo, (base, nxt - 1, t[8], -1, t[12], size, False))

    def _append_many_as_leader(self, mv: memoryview, leader_epoch: int) -> LogAppendInfo:
        """Several batches in one call, or LogAppendTime: stamp a copy, then write it as
        a follower's buffer is written."""
        raw = validate_raw(mv)
        max_bytes = self._max_message_bytes
        for t in raw:
            if t[1] + LOG_OVERHEAD > max_bytes:
                raise RecordTooLargeError(f"batch of {t[1] + LOG_OVERHEAD} bytes > {max_bytes}")
            check_client_batch(mv, t)
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if self._clean_on_disk:
                self._mark_unclean()
            base = offset = self._log_end_offset
            pending: dict[int, tuple[int, int]] | None = None
            out = bytearray(mv)
            now_ms = self.clock.wall_ms() if self._log_append_time else -1
            for t in raw:
                size = t[1] + LOG_OVERHEAD
                if t[9] >= 0:
                    if pending is None:
                        pending = {}
                    dup = self._check_producer(t, pending)
                    if dup is not None:
                        return dup
                pos = t[13]
                STAMP_STRUCT.pack_into(out, pos, offset, t[1], leader_epoch)
                if now_ms >= 0:
                    out[pos + 16 : pos + size] = with_log_append_time(
                        out[pos + 16 : pos + size], now_ms)
                offset += t[6] + 1
            stamped_mv = memoryview(out)
            stamped = validate_raw(stamped_mv, check_crc=False)  # headers as written
            self._write_stamped(stamped_mv, stamped, offset)
            if leader_epoch > self._latest_epoch:
                self.epoch_cache.assign(leader_epoch, base)
                self._latest_epoch = self.epoch_cache.latest_epoch
            if pending is not None:
                self._update_producers(stamped)
            records = sum(map(_RECORDS_OF, stamped))
            self._unflushed_messages += records
            if self._flush_messages is not None or self._flush_ms is not None:
                self._maybe_flush_after_append()
            return _new_tuple(LogAppendInfo, (base, offset - 1, max(map(_MAX_TS_OF, stamped)),
                                              now_ms, records, len(out), False))

    def append_as_follower(self, buf: Buffer) -> LogAppendInfo:
        """Append batches copied from the leader, offsets and epochs already stamped.

        Offsets must increase and start at or after the log end (gaps are allowed:
        compacted leaders have them); otherwise `UnexpectedAppendOffsetError`.
        """
        mv = buf if type(buf) is memoryview else memoryview(buf)
        raw = validate_raw(mv)
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if self._clean_on_disk:
                self._mark_unclean()
            expected = self._log_end_offset
            for t in raw:
                if t[0] < expected:
                    raise UnexpectedAppendOffsetError(
                        f"follower batch at offset {t[0]}, expected >= {expected}")
                expected = t[0] + t[6] + 1
            first = raw[0][0]
            self._write_stamped(mv, raw, expected)
            if max(map(_EPOCH_OF, raw)) > self._latest_epoch:
                cache = self.epoch_cache
                for t in raw:
                    if t[2] > self._latest_epoch:
                        cache.assign(t[2], t[0])
                        self._latest_epoch = cache.latest_epoch
            if max(map(_PRODUCER_OF, raw)) >= 0:
                self._update_producers(raw)
            records = sum(map(_RECORDS_OF, raw))
            self._unflushed_messages += records
            if self._flush_messages is not None or self._flush_ms is not None:
                self._maybe_flush_after_append()
            return LogAppendInfo(first, expected - 1, max(map(_MAX_TS_OF, raw)), -1, records,
                                 len(mv), False)

    def _update_producers(self, raw: list[tuple[int, ...]]) -> None:
        """Record the written batches (stamped header tuples) of idempotent producers."""
        update = self.producer_state.update
        for t in raw:
            if t[9] >= 0:
                update(t[9], t[10], t[11], (t[11] + t[6]) & 0x7FFFFFFF, t[0], t[0] + t[6], t[8])

    def _check_producer(self, t: tuple[int, ...],
                        pending: dict[int, tuple[int, int]]) -> LogAppendInfo | None:
        pid, epoch, first_seq = t[9], t[10], t[11]
        last_seq = (first_seq + t[6]) & 0x7FFFFFFF
        seen = pending.get(pid)
        if seen is None:
            dup = self.producer_state.check(pid, epoch, first_seq, last_seq)
            if dup is not None:
                return LogAppendInfo(dup.base_offset, dup.last_offset, dup.max_timestamp, -1,
                                     dup.last_offset - dup.base_offset + 1, 0, True)
        elif epoch != seen[0] or first_seq != (seen[1] + 1) & 0x7FFFFFFF:
            raise OutOfOrderSequenceError(
                f"producer {pid}: batches in one append are not consecutive")
        pending[pid] = (epoch, last_seq)
        return None

    def _write_stamped(self, mv: memoryview, raw: list[tuple[int, ...]],
                       next_offset: int) -> None:
        """Write validated, stamped batches (`raw`: their header tuples), rolling first
        if the active segment is full or old."""
        base = raw[0][0]
        seg = self._segments[-1]
        used = seg.size_bytes
        if (used + len(mv) > self._segment_bytes and used) or (
                next_offset - 1 - seg.base_offset > _MAX_RELATIVE_OFFSET) or (
                len(seg.index._offsets) + len(raw)  # noqa: SLF001
                >= seg.index.capacity_entries and used) or (
                seg.first_append_ms is not None
                and self.clock.monotonic_ms() - seg.first_append_ms >= self._segment_ms):
            seg = self._roll(base)
        try:
            seg.append_stamped(mv, raw, next_offset)
        except OSError as exc:
            raise self._append_failed(seg.path, exc) from exc
        if seg.first_append_ms is None:
            seg.first_append_ms = self.clock.monotonic_ms()
        self._log_end_offset = next_offset

    def _append_failed(self, path: str, exc: OSError) -> LogStorageError:
        """The error for a failed segment append. The segment undoes partial writes, so
        a full disk leaves the log consistent and open (the next append may succeed once
        space returns); any other failure closes it."""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return LogDiskFullError(f"disk full: append to {path} refused: {exc}")
        self.fail(f"append to {path} failed: {exc}")
        return LogStorageError(f"append to {path} failed: {exc}")

    def _maybe_flush_after_append(self) -> None:
        if self._flush_messages is not None and self._unflushed_messages >= self._flush_messages:
            self._flush_data()
        elif self._flush_ms is not None:
            self.maybe_flush()

    # ------------------------------------------------------------------ reads

    def read(self, offset: int, max_bytes: int, max_offset: int | None = None,
             min_one_batch: bool = True) -> memoryview:
        """Whole batches from the batch containing `offset`, up to `max_bytes`
        (`read_span` without the end offset)."""
        return self.read_span(offset, max_bytes, max_offset, min_one_batch)[0]

    def read_span(self, offset: int, max_bytes: int, max_offset: int | None = None,
                  min_one_batch: bool = True) -> tuple[memoryview, int]:
        """Whole batches from the batch containing `offset`, up to `max_bytes`, and the
        offset after the last of them (`offset` when none: the read walks the batch
        headers to its cut anyway, so the end costs nothing more).

        Returns at least one batch when `min_one_batch` (even if it exceeds
        `max_bytes`), never crossing a segment end. With `max_offset` (the high
        watermark, exclusive) only batches whose last offset < `max_offset` are
        returned. An offset at the log end (or at `max_offset`) gives empty bytes; one
        below the log start or past the log end raises `OffsetOutOfRangeError`.
        """
        with self._lock:
            self._check_open()
            leo = self._log_end_offset
            if offset < self._log_start_offset or offset > leo:
                raise OffsetOutOfRangeError(
                    f"offset {offset} outside [{self._log_start_offset}, {leo}]")
            limit = leo if max_offset is None or max_offset > leo else max_offset
            if offset >= limit:
                return memoryview(b""), offset
            segs = self._segments
            i = max(0, bisect_right(self._bases, offset) - 1)
            n = len(segs)
            while i < n:
                seg = segs[i]
                if (seg.read_hint_offset == offset
                        and seg.read_hint_position < seg.size_bytes):
                    start = seg.read_hint_position  # a sequential reader: no header lookup
                else:
                    try:  # (a closed segment may reopen its descriptor here)
                        h = seg.find(offset)
                    except OSError as exc:
                        raise LogStorageError(f"read of {seg.path} failed: {exc}") from exc
                    if h is None:
                        i += 1
                        continue
                    start = h.position
                data, end = self._read_from(seg, start, max_bytes, limit, min_one_batch)
                return data, end if data else offset
            return memoryview(b""), offset

    def bytes_from(self, offset: int) -> int:
        """Bytes of the log from `offset` to its end (the whole log for an offset below
        its start or unknown, -1): from the offset index entry at or before `offset`, so
        at most `index.interval.bytes` more than exact. No disk read."""
        with self._lock:
            if self._closed or offset >= self._log_end_offset:
                return 0
            segs = self._segments
            if offset <= self._log_start_offset:
                return sum(seg.size_bytes for seg in segs)
            i = max(0, bisect_right(self._bases, offset) - 1)
            first = segs[i]
            position = first.index.lookup(offset)[1]
            return first.size_bytes - position + sum(seg.size_bytes for seg in segs[i + 1:])

    def _read_from(self, seg: LogSegment, start: int, max_bytes: int, limit: int,
                   min_one_batch: bool) -> tuple[memoryview, int]:
        """Read from the batch starting at `start` and cut to whole batches < `limit`;
        with the offset after the last batch read."""
        want = min(max_bytes if max_bytes > HEADER_SIZE else HEADER_SIZE,
                   seg.size_bytes - start)
        try:
            data = seg.read(start, want)
            got = len(data)
            if got < HEADER_SIZE:
                raise LogStorageError(f"short read of {seg.path} at {start}")
            base, length, delta = _READ_PREFIX.unpack_from(data, 0)
            first_size = length + LOG_OVERHEAD
            if base + delta >= limit or (first_size > max_bytes and not min_one_batch):
                return memoryview(b""), -1
            if first_size > got:  # the first batch alone is larger than max_bytes
                data = seg.read(start, first_size)
                got = len(data)
                if got < first_size:
                    raise LogStorageError(f"short read of {seg.path} at {start}")
        except OSError as exc:
            raise LogStorageError(f"read of {seg.path} failed: {exc}") from exc
        end_abs = start + got
        if end_abs == seg.size_bytes and limit >= seg.next_offset:
            seg.read_hint_offset, seg.read_hint_position = seg.next_offset, end_abs
            # the whole tail of the segment: all whole batches
            return memoryview(data), seg.next_offset
        # Jump close to the cut with the index, then walk the remaining few headers.
        e_off, e_pos = seg.index.floor_by_position(end_abs)
        if e_off >= limit:
            e_off, e_pos = seg.index.lookup(limit - 1)
        cut = first_size
        next_offset = base + delta + 1
        pos = e_pos - start
        if pos > cut:
            cut = pos  # the batch at an index point below the cut is whole and < limit
            next_offset = e_off
        unpack = _READ_PREFIX.unpack_from
        pos = cut
        while got - pos >= 27:
            base, length, delta = unpack(data, pos)
            nxt = pos + length + LOG_OVERHEAD
            if nxt > got or base + delta >= limit:
                break
            cut = pos = nxt
            next_offset = base + delta + 1
        seg.read_hint_offset, seg.read_hint_position = next_offset, start + cut
        mv = memoryview(data)
        return (mv if cut == got else mv[:cut]), next_offset

    def offset_for_timestamp(self, timestamp_ms: int) -> tuple[int, int] | None:
        """(offset, max timestamp) of the first batch whose max timestamp >= `timestamp_ms`.

        Batch granularity: the broker never decodes records, so the answer is the base
        offset of that batch (clients skip earlier records of the batch themselves).
        """
        with self._lock:
            self._check_open()
            for seg in self._segments:
                try:
                    h = seg.find_by_timestamp(timestamp_ms)
                except OSError as exc:
                    raise LogStorageError(f"read of {seg.path} failed: {exc}") from exc
                if h is not None:
                    return max(h.base_offset, self._log_start_offset), h.max_timestamp
            return None

    # ------------------------------------------------------------------ roll / flush

    def roll(self) -> LogSegment:
        with self._lock:
            self._check_open()
            if self._segments[-1].size_bytes == 0:
                return self._segments[-1]
            return self._roll(self._log_end_offset)

    def _roll(self, base_offset: int) -> LogSegment:
        if self._clean_on_disk:
            self._mark_unclean()
        old = self._segments[-1]
        if old.size_bytes == 0 and old.base_offset == base_offset:
            return old
        try:  # first: a failure (no room or descriptor for its files) changes nothing
            seg = self._new_segment(base_offset, active=True)
        except OSError as exc:
            raise self._append_failed(f"new segment {base_offset}", exc) from exc
        if old.size_bytes == 0:
            old.delete()
            self._segments.pop()
            self._bases.pop()
        else:
            try:
                if self.fsync_enabled:
                    old.flush()
                old.make_inactive()
            except OSError as exc:
                seg.delete()
                raise self._append_failed(old.path, exc) from exc
            self._release_fd(old)
        self._segments.append(seg)
        self._bases.append(base_offset)
        if all(not s.unflushed for s in self._segments[:-1]) or not self.fsync_enabled:
            self._recovery_point = max(self._recovery_point, base_offset)
            self._write_meta(clean=False, required=False)
        return seg

    def _new_segment(self, base_offset: int, active: bool) -> LogSegment:
        cfg = self.config
        seg = LogSegment(self.directory, base_offset, cfg.segment_index_bytes,
                         cfg.index_interval_bytes, active, self.clock.monotonic_ms())
        seg.on_reopen = self._on_segment_reopen
        return seg

    def _on_segment_reopen(self, seg: LogSegment) -> None:
        """A closed segment reopened its descriptor: release the oldest such beyond the
        bound (under the log's lock, like every use of a segment's descriptor)."""
        reopened = self._reopened
        reopened[id(seg)] = seg
        while len(reopened) > MAX_IDLE_SEGMENT_FDS:
            _, oldest = reopened.popitem(last=False)
            oldest.release_fd()

    def _release_fd(self, seg: LogSegment) -> None:
        self._reopened.pop(id(seg), None)
        seg.release_fd()

    def _flush_data(self) -> None:
        """fsync segments with unflushed data and move the recovery point (in memory)."""
        try:
            for seg in self._segments:
                if seg.unflushed:
                    if self.fsync_enabled:
                        seg.flush()
                    seg.unflushed = False
        except OSError as exc:
            self._closed = True
            raise LogStorageError(f"flush failed: {exc}") from exc
        self._recovery_point = self._log_end_offset
        self._unflushed_messages = 0
        self._last_flush_ms = self.clock.monotonic_ms()

    def flush(self) -> None:
        """fsync everything and persist the recovery point."""
        with self._lock:
            self._check_open()
            self._flush_data()
            self._write_meta(clean=False)

    def maybe_flush(self) -> bool:
        """Flush if `flush_ms` has passed since the last flush; call it periodically."""
        with self._lock:
            cfg = self.config
            if self._closed or cfg.flush_ms is None or self._unflushed_messages == 0:
                return False
            if self.clock.monotonic_ms() - self._last_flush_ms < cfg.flush_ms:
                return False
            self.flush()
            return True

    def maybe_roll_by_time(self) -> bool:
        """Roll an idle active segment older than `segment_ms` (call periodically)."""
        with self._lock:
            seg = self._segments[-1]
            first = seg.first_append_ms
            if first is None or seg.size_bytes == 0:
                return False
            if self.clock.monotonic_ms() - first < self.config.segment_ms:
                return False
            self._roll(self._log_end_offset)
            return True

    # ------------------------------------------------------------------ truncation

    def truncate_to(self, offset: int) -> None:
        """Drop every batch whose last offset >= `offset` (follower divergence).

        Batches are atomic: if `offset` falls inside a batch the whole batch goes and the
        log end becomes that batch's base offset.
        """
        with self._lock:
            self._check_open()
            if offset >= self._log_end_offset:
                return
            if self._clean_on_disk:
                self._mark_unclean()
            self.truncations += 1  # before any change: the cleaner must see even a failed one
            if offset <= self._segments[0].base_offset:
                self._truncate_fully(offset)
                return
            while len(self._segments) > 1 and self._segments[-1].base_offset >= offset:
                self._segments.pop().delete()
                self._bases.pop()
            seg = self._segments[-1]
            seg.make_active()
            seg.truncate_to(offset)
            self._after_truncate(seg.next_offset)

    def truncate_fully_and_start_at(self, offset: int) -> None:
        """Delete everything; the log restarts empty at `offset` (e.g. follower too far behind)."""
        with self._lock:
            self._check_open()
            self._truncate_fully(offset)

    def _truncate_fully(self, offset: int) -> None:
        if self._clean_on_disk:
            self._mark_unclean()
        self.truncations += 1
        for seg in self._segments:
            seg.delete()
        self._segments = [self._new_segment(offset, active=True)]
        self._bases = [offset]
        self._log_start_offset = offset
        self.epoch_cache.clear()
        self._latest_epoch = self.epoch_cache.latest_epoch
        self._after_truncate(offset)

    def _after_truncate(self, new_end: int) -> None:
        self.truncations += 1  # the cleaner aborts a pass that began before this
        if self.fsync_enabled:
            # A truncation that a crash undid would bring a divergent tail back.
            try:
                self._segments[-1].flush()
                fsync_dir(self.directory)
            except OSError as exc:
                self._closed = True
                raise LogStorageError(f"truncation flush failed: {exc}") from exc
        self._log_end_offset = new_end
        self._log_start_offset = min(self._log_start_offset, new_end)
        self._recovery_point = min(self._recovery_point, new_end)
        self.epoch_cache.truncate_from_end(new_end)
        self._latest_epoch = self.epoch_cache.latest_epoch
        self.producer_state.rebuild(self._all_headers())
        self._write_meta(clean=False)

    def _all_headers(self) -> Iterator[BatchHeader]:
        """Headers to rebuild producer state from: segments holding unexpired producers."""
        horizon = self.clock.wall_ms() - self.config.producer_id_expiration_ms
        for seg in self._segments:
            if seg.max_timestamp >= horizon or seg is self._segments[-1]:
                yield from seg.headers(0)

    # ------------------------------------------------------------------ retention

    def maybe_increment_log_start_offset(self, offset: int) -> bool:
        """Advance the log start (DeleteRecords / follower sync); deletes whole segments."""
        with self._lock:
            self._check_open()
            if offset <= self._log_start_offset:
                return False
            if offset > self._log_end_offset:
                raise OffsetOutOfRangeError(
                    f"log start {offset} beyond log end {self._log_end_offset}")
            if self._clean_on_disk:
                self._mark_unclean()
            self._log_start_offset = offset
            while len(self._segments) > 1 and self._segments[1].base_offset <= offset:
                self._delete_oldest_segment()
            self.epoch_cache.truncate_from_start(offset)
            self._latest_epoch = self.epoch_cache.latest_epoch
            self._write_meta(clean=False)
            return True

    def delete_old_segments(self) -> int:
        """Apply `retention_ms` / `retention_bytes` to closed segments; returns how many went."""
        with self._lock:
            self._check_open()
            cfg = self.config
            if not cfg.delete:
                return 0
            deleted = 0
            now = self.clock.wall_ms()
            if cfg.retention_ms is not None:
                while len(self._segments) > 1 and (
                        self._segments[0].size_bytes == 0
                        or now - self._segments[0].max_timestamp > cfg.retention_ms):
                    self._delete_oldest_segment()
                    deleted += 1
            if cfg.retention_bytes is not None:
                total = self.size_bytes
                while (len(self._segments) > 1
                       and total - self._segments[0].size_bytes >= cfg.retention_bytes):
                    total -= self._segments[0].size_bytes
                    self._delete_oldest_segment()
                    deleted += 1
            if deleted:
                new_start = max(self._log_start_offset, self._segments[0].base_offset)
                self._log_start_offset = new_start
                self.epoch_cache.truncate_from_start(new_start)
                self._latest_epoch = self.epoch_cache.latest_epoch
                self._write_meta(clean=False)
            return deleted

    def _delete_oldest_segment(self) -> None:
        if self._clean_on_disk:
            self._mark_unclean()
        seg = self._segments.pop(0)
        self._bases.pop(0)
        seg.delete()
        self._log_start_offset = max(self._log_start_offset, self._segments[0].base_offset)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Flush, trim the indexes and mark the shutdown clean (no scan on next open).
        A failed log (see `fail`) only releases its files: its next open recovers."""
        with self._lock:
            if self.failure is not None:
                self.abandon()
                return
            if self._closed:
                return
            try:
                self._flush_data()
                for seg in self._segments:
                    seg.close()
                self.epoch_cache.flush()  # a clean open trusts the whole file
                self._write_meta(clean=True)
            except OSError as exc:
                raise LogStorageError(f"close of {self.directory} failed: {exc}") from exc
            finally:
                self._closed = True

    def delete(self) -> None:
        """Close and remove the whole partition folder (topic deletion, reassignment)."""
        import shutil

        with self._lock:
            self.epoch_cache.discard()
            for seg in self._segments:
                seg.delete()
            self._closed = True
            shutil.rmtree(self.directory, ignore_errors=True)

    def abandon(self) -> None:
        """Close file handles without flushing or marking a clean shutdown (crash tests,
        failed logs, logs about to be deleted). Idempotent."""
        with self._lock:
            self.epoch_cache.discard()  # nothing is written after a crash
            for seg in self._segments:
                seg.index.discard()
                seg.time_index.discard()
                seg.close_fd()
            self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise self._closed_error()

    def _closed_error(self) -> LogError:
        if self.failure is not None:  # the broker answers STORAGE_ERROR, not NOT_LEADER
            return LogStorageError(f"log {self.directory} failed ({self.failure}); "
                                   f"reopening it (a broker restart) recovers it")
        return LogClosedError(f"log {self.directory} is closed")

    def _meta_rows(self, clean: bool) -> tuple[tuple[str, int], ...]:
        return (("recovery_point", self._recovery_point),
                ("log_start_offset", self._log_start_offset),
                ("clean_shutdown", 1 if clean else 0))

    def _write_meta(self, clean: bool, required: bool = True) -> None:
        """Persist the meta checkpoint, unless the file already holds these rows. The
        leader-epoch file is made durable first: the next open trusts its entries below
        the recovery point written here. Not `required` (a roll's recovery point: the
        old file, replaced atomically or not at all, is only more conservative), a full
        disk is logged and the log stays open; any other failure closes it."""
        rows = self._meta_rows(clean)
        if rows == self._meta_on_disk:
            return
        try:
            self.epoch_cache.flush()
            self._meta_on_disk = None  # unknown until the write succeeds
            write_entries(os.path.join(self.directory, META_FILE), rows, self.fsync_enabled)
        except OSError as exc:
            if not required and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                log.warning("disk full: %s keeps its previous meta checkpoint: %s",
                            self.directory, exc)
                return
            self._closed = True
            raise LogStorageError(f"checkpoint write failed: {exc}") from exc
        self._meta_on_disk = rows
        self._clean_on_disk = clean

    def _mark_unclean(self) -> None:
        """Before the first change of a log opened after a clean shutdown: write the meta
        checkpoint unclean (an open trusts a clean log's tail without a scan, so a crash
        after this change must not find it clean). A full disk raises
        `LogDiskFullError` and changes nothing; any other failure closes the log."""
        self._write_meta(clean=False, required=False)
        if self._clean_on_disk:  # not written: the disk is full
            raise LogDiskFullError(f"disk full: {self.directory} cannot record that it "
                                   f"is open for writing; nothing was changed")

    # ------------------------------------------------------------------ loading

    def _load(self) -> None:
        # before recovery, whose CRC checks need migrated batches (`dmq.log.migrate`)
        self.migration: MigrationResult | None = ensure_current_format(
            self.directory, self.fsync_enabled)
        loaded = load_segments(self.directory, self.config, self._new_segment,
                               self.fsync_enabled)
        segs = loaded.segments
        if segs[-1].size_bytes:
            # segment_ms counts from the first batch's timestamp (Kafka's rolling-based
            # timestamp), carried into this process's monotonic clock; a timestamp from
            # the future counts as now. Restarts must not keep a quiet segment from ever
            # rolling (and so from ever expiring).
            first = next(segs[-1].headers(0), None)
            age = 0 if first is None or first.max_timestamp < 0 else (
                self.clock.wall_ms() - first.max_timestamp)
            segs[-1].first_append_ms = self.clock.monotonic_ms() - min(
                max(age, 0), self._segment_ms)
        self._segments = segs
        self._bases = [s.base_offset for s in segs]
        end = self._log_end_offset = segs[-1].next_offset
        self._log_start_offset = loaded.log_start_offset
        if loaded.clean or loaded.cut:  # (a cut: recovery fsynced what it repaired)
            self._recovery_point = end
        else:
            # Nothing cut: the active segment was scanned but not fsynced (it is marked
            # unflushed); everything before it is durable. The next flush moves it on.
            self._recovery_point = max(min(loaded.recovery_point, end), segs[-1].base_offset)
        self._load_epochs(loaded)
        for seg in segs[:-1]:  # closed segments hold no descriptor until read
            self._release_fd(seg)
        self._load_producers(loaded)
        meta = loaded.meta
        if len(meta) == 3:
            self._meta_on_disk = tuple((k, meta.get(k, -1)) for k, _ in self._meta_rows(False))
        if loaded.clean and self._meta_on_disk == self._meta_rows(clean=True):
            # Left clean on disk until the first change (`_mark_unclean`): an open of an
            # unchanged log writes nothing.
            self._clean_on_disk = True
        elif self._meta_on_disk != self._meta_rows(clean=False):
            self._write_meta(clean=False)  # (its folder fsync also keeps a new segment)
        elif loaded.created and self.fsync_enabled:
            fsync_dir(self.directory)
        if not self.epoch_cache.file_intact:
            # (entries re-assigned from the tail need no write now: the next meta
            # checkpoint writes them first, and until then an open assigns them again;
            # a restart after a crash leaves the flusher no pass over every log)
            self.epoch_cache.schedule_flush()

    def _load_producers(self, loaded: LoadedSegments) -> None:
        """`producer_state.rebuild(self._all_headers())`, taking the recovered segments'
        batches from their recovery scan instead of walking their headers again."""
        state = self.producer_state
        state.clear()
        horizon = self.clock.wall_ms() - self.config.producer_id_expiration_ms
        last = self._segments[-1]
        for seg in self._segments:
            if seg.max_timestamp < horizon and seg is not last:
                continue
            scan = loaded.scans.get(seg.base_offset)
            if scan is not None:
                state.merge(scan[1])
                continue
            for h in seg.headers(0):
                if h.producer_id >= 0:
                    state.update_from_header(h, h.base_offset)

    def _load_epochs(self, loaded: LoadedSegments) -> None:
        """Make the leader-epoch cache agree with the loaded log (writes deferred: the
        caller's meta write or the flusher writes the file). The file is trusted below
        the recovery point of the meta checkpoint (it was fsynced before that was
        written) and after a clean shutdown; from the recovery point on, the epochs of
        the batch headers are assigned again, and everything is rebuilt from them if the
        file is missing or damaged."""
        cache = self.epoch_cache
        cache.defer_writes(True)
        try:
            rebuild_from: int | None = None
            if not cache.file_intact:
                if cache.entries or any(s.size_bytes for s in self._segments):
                    log.info("%s: rebuilding the leader epoch cache from the log",
                             self.directory)
                    cache.rebuild([])
                    rebuild_from = self._segments[0].base_offset
            elif loaded.clean:
                rebuild_from = None
            else:
                # Truncations were fsynced before they returned, so the file holds no
                # entry of truncated-away data; it may lack the latest additions, which
                # the headers give back (an epoch with batches replaces, as `assign`
                # does, the entries starting at or after its first batch).
                rebuild_from = min(loaded.recovery_point, self._log_end_offset)
            if rebuild_from is not None:
                for epoch, start in self._epochs_in_log(rebuild_from, loaded.scans):
                    cache.assign(epoch, start)
            # An epoch may legitimately start at the log end (its batches were all
            # deleted by a log start move); only a recovery that cut data invalidates
            # such an entry.
            cache.truncate_from_end(self._log_end_offset + (0 if loaded.cut else 1))
            cache.truncate_from_start(self._log_start_offset)
        finally:
            cache.defer_writes(False)
        self._latest_epoch = cache.latest_epoch

    def _epochs_in_log(self, offset: int,
                       scans: dict[int, tuple[ScanResult, ProducerStateManager]]
                       ) -> Iterator[tuple[int, int]]:
        """(epoch, first offset) of each epoch rise in the batch headers of batches that
        end at or after `offset` (no CRC check: recovery checked the unflushed part).
        A segment whose recovery scan collected the rises from `offset` (or from before
        its start) gives those without a walk: each rise of the log is one of them, and
        those that are not rises of the log are below an epoch already given."""
        latest = UNDEFINED_EPOCH
        for seg in self._segments:
            if seg.next_offset <= offset or seg.size_bytes == 0:
                continue
            scan = scans.get(seg.base_offset)
            if scan is not None and (frm := scan[0].epochs_from) is not None and (
                    frm == offset or seg.base_offset >= max(frm, offset)):
                for epoch, start in scan[0].epoch_rises:
                    if epoch > latest:
                        latest = epoch
                        yield epoch, start
                continue
            position = seg.index.lookup(offset)[1] if offset > seg.base_offset else 0
            for h in seg.headers(position):
                if h.base_offset + h.last_offset_delta < offset:
                    continue
                if h.partition_leader_epoch > latest:
                    latest = h.partition_leader_epoch
                    yield latest, h.base_offset

    # ------------------------------------------------------------------ cleaner hooks
    # With `directory`, `config`, `clock`, `fsync_enabled`, `segments`, `closed`,
    # `truncations`, `cleaner_state` and `undecodable_batches`, these make up
    # `dmq.log.cleaner.CleanableLog`: all the cleaner uses of the log.

    @contextmanager
    def locked(self, check_open: bool = True) -> Iterator[None]:
        """Hold the log's lock (every other call waits); if `check_open`, raise the
        closed (or failed) log's error first. For the cleaner: only it works on a log
        from another thread, and every use of a segment's descriptor and every change
        of the segment list must be under the lock."""
        with self._lock:
            if check_open and self._closed:
                raise self._closed_error()
            yield

    def clean(self, now_ms: int | None = None, max_offset: int | None = None,
              cancelled: Callable[[], bool] | None = None) -> CleanResult:
        """Compact closed segments below `max_offset` (the high watermark; no-op unless
        `cleanup_policy` includes compact); see `dmq.log.cleaner.clean_log`."""
        if not self.config.compact:
            return CleanResult(0, 0, 0, 0, 0)
        with self._lock:
            if self._clean_on_disk and not self._closed:
                self._mark_unclean()
        return clean_log(self, now_ms, max_offset, cancelled)

    def fail(self, reason: str) -> None:
        """Close the log after a storage failure that left files in a state only a
        reopen resolves (reads and writes then raise `LogStorageError`; `close()` then
        releases the files without marking a clean shutdown)."""
        with self._lock:
            if not self._closed:
                log.error("log %s failed: %s", self.directory, reason)
                self.failure = reason
            self._closed = True

    def replace_segments(self, old: list[LogSegment], new: LogSegment) -> None:
        """Swap a cleaned segment, its files in place, in for consecutive old ones (by
        the cleaner, in `locked()`)."""
        i = self._segments.index(old[0])
        assert self._segments[i : i + len(old)] == old
        self._segments[i : i + len(old)] = [new]
        self._bases[i : i + len(old)] = [new.base_offset]
        for seg in old:
            self._reopened.pop(id(seg), None)
        new.on_reopen = self._on_segment_reopen
        self._release_fd(new)


__all__ = ["CorruptRecordError", "LogAppendInfo", "PartitionLog"]
