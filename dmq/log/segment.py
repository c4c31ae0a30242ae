"""One log segment: a `.log` file of whole batches plus its two indexes.

Works on the files `<base_offset:020d>.log/.index/.timeindex` of one segment:
appends already-stamped batches, reads whole batches by position, scans batch
headers, recovers the file after a crash (length, magic, CRC, offset order) and
truncates it. It decodes no record, picks no offset and does not decide when to
roll: `PartitionLog` does that.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence

from crc32c import crc32c

from dmq.log.batch import (
    CRC_START,
    HEADER_SIZE,
    HEADER_STRUCT,
    LOG_OVERHEAD,
    MAGIC,
    MIN_BATCH_LENGTH,
    NO_SEQUENCE,
    BatchHeader,
    Buffer,
)
from dmq.log.index import OFFSET_ENTRY_SIZE, TIME_ENTRY_SIZE, OffsetIndex, TimeIndex
from dmq.log.producer_state import ProducerStateManager

log = logging.getLogger("dmq.log")

LOG_SUFFIX = ".log"
INDEX_SUFFIX = ".index"
TIMEINDEX_SUFFIX = ".timeindex"
_SCAN_CHUNK_BYTES = 1 << 20  # recovery: whole batches are needed for the CRC
_WALK_CHUNK_BYTES = 8192  # header-only walks: about one index interval of headers


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}"


class ScanResult:
    """Outcome of scanning a segment file: where the valid prefix ends and why, and
    what the scan collected for the log (see `LogSegment.recover`)."""

    __slots__ = ("batches", "corrupt_reason", "epoch_rises", "epochs_from", "stopped", "torn",
                 "valid_bytes")

    def __init__(self) -> None:
        self.valid_bytes = 0
        self.batches = 0  # valid batches kept
        self.corrupt_reason: str | None = None
        self.torn = False
        self.stopped = False  # the scan reached the file end or a bad batch
        # (leader epoch, base offset) of each rise among the batches ending at or after
        # `epochs_from` (None: not collected)
        self.epochs_from: int | None = None
        self.epoch_rises: list[tuple[int, int]] = []


class LogSegment:
    """A segment file with its sparse indexes. Not thread-safe; the log serialises calls."""

    def __init__(self, directory: str, base_offset: int, index_max_bytes: int,
                 index_interval_bytes: int, active: bool, created_ms: int,
                 name_suffix: str = "") -> None:
        """`name_suffix` opens the files under temporary names (`<base>.log<suffix>`,
        ...): the cleaner builds a replacement segment so, then `rename_files` gives it
        the real names."""
        self.directory = directory
        self.base_offset = base_offset
        self.index_interval_bytes = index_interval_bytes
        self.index_max_bytes = index_max_bytes
        stem = os.path.join(directory, segment_name(base_offset))
        self.path = stem + LOG_SUFFIX + name_suffix
        self.index_path = stem + INDEX_SUFFIX + name_suffix
        self.timeindex_path = stem + TIMEINDEX_SUFFIX + name_suffix
        if not os.path.exists(self.path):
            # A new segment: index files left by a crash mid-delete describe old data.
            for stale in (self.index_path, self.timeindex_path):
                if os.path.exists(stale):
                    os.unlink(stale)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._fd_closed = False
        # Called after `fd` reopened a released descriptor (the log bounds how many an
        # inactive segment of it may hold, see `release_fd`).
        self.on_reopen: Callable[[LogSegment], None] | None = None
        self.size_bytes = os.fstat(self._fd).st_size
        self.active = active
        self.indexes_existed = os.path.exists(self.index_path) and os.path.exists(
            self.timeindex_path)
        try:  # (an index file that cannot be opened: release what is open)
            self.index = OffsetIndex(self.index_path, base_offset, index_max_bytes, active)
            try:
                # As many time-index slots as offset-index slots (its entries are 12
                # bytes, not 8): a time-index entry is only ever added with an
                # offset-index entry, so the roll on a full offset index also keeps the
                # time index from dropping a new maximum.
                self.time_index = TimeIndex(
                    self.timeindex_path, base_offset,
                    index_max_bytes // OFFSET_ENTRY_SIZE * TIME_ENTRY_SIZE, active)
            except BaseException:
                self.index.discard()
                raise
        except BaseException:
            os.close(self._fd)
            raise
        self.next_offset = base_offset
        self.max_timestamp = -1
        self.offset_of_max_timestamp = base_offset
        self.created_ms = created_ms
        self.first_append_ms: int | None = None
        self.bytes_since_index = 0
        self.unflushed = False
        # Where the last read stopped: a sequential reader's next offset starts there.
        self.read_hint_offset = -1
        self.read_hint_position = 0

    # ---------------------------------------------------------------- loading

    def load_trusted(self) -> bool:
        """Load indexes and walk headers after the last index entry. False: needs recovery."""
        if not self.indexes_existed:
            return False
        if not (self.index.load() and self.time_index.load()):
            return False
        last = self.time_index.last_entry
        if last is not None:
            self.max_timestamp, self.offset_of_max_timestamp = last
        start_offset, start_pos = self.index.lookup(2**63 - 1)
        if start_pos > self.size_bytes:
            return False
        end = start_pos
        next_offset = start_offset
        for h in self._walk(start_pos):
            end = h.position + h.batch_length + LOG_OVERHEAD
            next_offset = h.base_offset + h.last_offset_delta + 1
            if h.max_timestamp > self.max_timestamp:
                self.max_timestamp = h.max_timestamp
                self.offset_of_max_timestamp = h.base_offset
        if end != self.size_bytes:
            return False
        self.next_offset = next_offset
        if not (self.index.sane_for(self.size_bytes or 1, next_offset)
                and self.time_index.sane_for(next_offset)):
            return False
        self.bytes_since_index = self.size_bytes - self.index.lookup(2**63 - 1)[1]
        return True

    def recover(self, expected_base: int | None, epochs_from: int | None = None,
                producers: ProducerStateManager | None = None) -> ScanResult:
        """Scan the whole file, keep the valid prefix, truncate the rest, rebuild indexes.

        A batch is valid when its length, magic, record count and CRC check out and its
        base offset is not below the previous batch's next offset (or `expected_base`).
        Sizes are not checked against `max_message_bytes`: lowering that setting must
        never make recovery cut data that was valid when written.

        The same pass collects what the log needs from these headers, so that it does
        not walk them again: with `epochs_from`, the rises of the leader epoch among the
        valid batches ending at or after it (`ScanResult.epoch_rises`); with
        `producers`, the idempotent batches (`ProducerStateManager.update`).
        """
        res = ScanResult()
        res.epochs_from = epochs_from
        self.read_hint_offset = -1
        # Rebuilt in memory: an active segment's index files are emptied and mapped when
        # the append path adds an entry (and a sync writes them with a `pwrite` until
        # then), not for every log on open (a write into pages that may be under
        # writeback, an allocation and a mapping each: ~1 ms of wall time per file).
        self.index.wipe(mapped=False, deferred=True)
        self.time_index.wipe(mapped=False, deferred=True)
        self.max_timestamp = -1
        self.offset_of_max_timestamp = self.base_offset
        self.bytes_since_index = 0
        self.next_offset = self.base_offset
        prev_next = self.base_offset if expected_base is None else max(
            expected_base, self.base_offset)
        position = 0
        while True:
            raw, end, prev_next = self._scan_chunk(position, prev_next, res)
            if raw:
                self._index_scanned(raw, position, res, epochs_from, producers)
            position = end
            if res.stopped:
                break
        res.valid_bytes = position
        self.next_offset = prev_next if res.batches else self.base_offset
        if res.valid_bytes < self.size_bytes:
            if res.corrupt_reason is None:
                res.torn = True
                log.info("truncating torn tail of %s at position %d (%d bytes)", self.path,
                         res.valid_bytes, self.size_bytes - res.valid_bytes)
            else:
                log.error("corrupt batch in %s at position %d: %s; cutting %d bytes",
                          self.path, res.valid_bytes, res.corrupt_reason,
                          self.size_bytes - res.valid_bytes)
            os.ftruncate(self.fd, res.valid_bytes)
            self.size_bytes = res.valid_bytes
        self.indexes_existed = True
        if self.active:
            self.index.reopen_writable(self.index.entries)
            self.time_index.reopen_writable(self.time_index.entries)
        else:
            self.index.trim()
            self.time_index.trim()
        return res

    def _scan_chunk(self, position: int, prev_next: int,
                    res: ScanResult) -> tuple[list[tuple[int, ...]], int, int]:
        """Validate the whole batches of one read from `position` (a batch start): their
        raw header tuples (the 13 fields; the batches are contiguous from `position`),
        the position and next offset after the last valid one. Sets `res.stopped` at the
        file end or at the first bad batch (with `res.corrupt_reason`; none for a torn
        tail). One `unpack_from` and one CRC per batch, no object per batch beyond its
        tuple."""
        file_end = self.size_bytes
        out: list[tuple[int, ...]] = []
        if position >= file_end:
            res.stopped = True
            return out, position, prev_next
        buf = os.pread(self.fd, min(_SCAN_CHUNK_BYTES, file_end - position), position)
        mv = memoryview(buf)
        n = len(buf)
        unpack = HEADER_STRUCT.unpack_from
        append = out.append
        rel = 0
        reason: str | None = None
        while True:
            if n - rel < HEADER_SIZE:
                if position + rel + HEADER_SIZE > file_end or n < HEADER_SIZE:
                    res.stopped = True  # a torn header (or the file end)
                break  # the next header is in the next read
            t = unpack(buf, rel)
            end = rel + t[1] + LOG_OVERHEAD
            if (t[3] == MAGIC and t[1] >= MIN_BATCH_LENGTH and end <= n and t[12] >= 1
                    and t[6] >= t[12] - 1 and t[0] >= prev_next
                    and crc32c(mv[rel + CRC_START : end]) == t[4]):
                append(t)  # the common case: every check at once
                prev_next = t[0] + t[6] + 1
                rel = end
                continue
            # one of them failed, or the batch does not end in this read: which one
            if t[3] != MAGIC or t[1] < MIN_BATCH_LENGTH:
                reason = f"bad magic {t[3]}" if t[3] != MAGIC else f"bad batch_length {t[1]}"
                break
            if position + end > file_end:
                res.stopped = True  # a torn batch
                break
            if t[12] < 1 or t[6] < t[12] - 1:
                reason = "inconsistent record count"
                break
            if end > n:
                if rel:
                    break  # the batch is in the next read
                crc = self._crc_of_large_batch(position, end)  # (rel is 0) bounded memory
            else:
                crc = crc32c(mv[rel + CRC_START : end])
            if crc != t[4]:
                reason = "CRC mismatch"
                break
            if t[0] < prev_next:
                reason = f"batch base offset {t[0]} does not follow {prev_next - 1}"
                break
            append(t)  # a batch larger than a read
            prev_next = t[0] + t[6] + 1
            rel = end
        if reason is not None:
            res.corrupt_reason = reason
            res.stopped = True
        position += rel
        if position >= file_end:
            res.stopped = True
        return out, position, prev_next

    def _index_scanned(self, raw: list[tuple[int, ...]], position: int, res: ScanResult,
                       epochs_from: int | None,
                       producers: ProducerStateManager | None) -> None:
        """Index the batches one scan read validated (contiguous from `position`) and
        note what `recover` collects."""
        res.batches += len(raw)
        interval = self.index_interval_bytes
        since = self.bytes_since_index
        max_seen = self.max_timestamp
        max_at = self.offset_of_max_timestamp
        index_append = self.index.append
        time_append = self.time_index.maybe_append
        pos = position
        for t in raw:
            size = t[1] + LOG_OVERHEAD
            if since > interval:
                index_append(t[0], pos)
                time_append(t[8] if t[8] > max_seen else max_seen,
                            t[0] if t[8] > max_seen else max_at)
                since = 0
            since += size
            pos += size
            if t[8] > max_seen:
                max_seen, max_at = t[8], t[0]
        self.bytes_since_index = since
        self.max_timestamp = max_seen
        self.offset_of_max_timestamp = max_at
        if epochs_from is not None:
            rises = res.epoch_rises
            latest = rises[-1][0] if rises else -1
            for t in raw:
                if t[2] > latest and t[0] + t[6] >= epochs_from:
                    latest = t[2]
                    rises.append((latest, t[0]))
        if producers is not None:
            update = producers.update
            for t in raw:
                if t[9] >= 0:  # BatchHeader.last_sequence's rule: none without a base
                    last_seq = NO_SEQUENCE if t[11] < 0 else (t[11] + t[6]) & 0x7FFFFFFF
                    update(t[9], t[10], t[11], last_seq, t[0], t[0] + t[6], t[8])

    def _walk(self, position: int) -> Iterator[BatchHeader]:
        """Yield headers of the file from `position` (no CRC check: `recover` checked
        them); stop at a torn or malformed batch."""
        file_end = self.size_bytes
        unpack = HEADER_STRUCT.unpack_from
        pos = position
        buf = b""
        buf_start = pos
        while pos < file_end:
            rel = pos - buf_start
            if len(buf) - rel < HEADER_SIZE:
                buf = os.pread(self.fd, min(_WALK_CHUNK_BYTES, file_end - pos), pos)
                buf_start, rel = pos, 0
                if len(buf) < HEADER_SIZE:
                    return  # torn header
            h = BatchHeader._make((*unpack(buf, rel), pos))
            size = h.batch_length + LOG_OVERHEAD
            if (h.magic != MAGIC or h.batch_length < MIN_BATCH_LENGTH or pos + size > file_end
                    or h.record_count < 1 or h.last_offset_delta < h.record_count - 1):
                return
            yield h
            pos += size

    def _crc_of_large_batch(self, position: int, size: int) -> int:
        crc = 0
        pos = position + CRC_START
        end = position + size
        while pos < end:
            data = os.pread(self.fd, min(_SCAN_CHUNK_BYTES, end - pos), pos)
            if not data:
                return -1  # the file shrank: never equal to a stored u32 CRC
            crc = crc32c(data, crc)
            pos += len(data)
        return crc

    def headers(self, position: int = 0) -> Iterator[BatchHeader]:
        """Headers of the batches from `position` (a batch start) to the end, no CRC check."""
        return self._walk(position)

    # ---------------------------------------------------------------- writing

    def _index_batch(self, base_offset: int, position: int, size: int, max_ts: int) -> None:
        if self.bytes_since_index > self.index_interval_bytes:
            self.index.append(base_offset, position)
            if max_ts > self.max_timestamp:
                self.time_index.maybe_append(max_ts, base_offset)
            else:
                self.time_index.maybe_append(self.max_timestamp, self.offset_of_max_timestamp)
            self.bytes_since_index = 0
        self.bytes_since_index += size
        if max_ts > self.max_timestamp:
            self.max_timestamp = max_ts
            self.offset_of_max_timestamp = base_offset

    def append_batch(self, stamp: bytes, body: memoryview, size: int, base: int,
                     max_ts: int, next_offset: int) -> None:
        """Write one batch, its restamped first 16 bytes + the rest, with one `writev`,
        and keep the indexes (the leader's hot path)."""
        start = self.size_bytes
        written = os.writev(self.fd, (stamp, body))
        if written != size:
            self._finish_short_write((stamp, body), written, start)
        if self.bytes_since_index > self.index_interval_bytes:
            self.index.append(base, start)
            if max_ts > self.max_timestamp:
                self.max_timestamp = max_ts
                self.offset_of_max_timestamp = base
            stamps = self.time_index._timestamps  # noqa: SLF001
            if not stamps or self.max_timestamp > stamps[-1]:
                self.time_index.maybe_append(self.max_timestamp, self.offset_of_max_timestamp)
            self.bytes_since_index = size
        else:
            self.bytes_since_index += size
            if max_ts > self.max_timestamp:
                self.max_timestamp = max_ts
                self.offset_of_max_timestamp = base
        self.size_bytes = start + size
        self.next_offset = next_offset
        self.unflushed = True

    def _finish_short_write(self, iov: Sequence[Buffer], written: int, start: int) -> None:
        """After a short write (full disk, signal): writing the rest either finishes it or
        fails with the real errno (ENOSPC); then undo so the file holds whole batches."""
        try:
            rest = memoryview(b"".join(iov))[written:]
            while rest:
                n = os.write(self.fd, rest)
                if n <= 0:
                    raise OSError(f"no progress writing {self.path}")
                rest = rest[n:]
        except BaseException:
            os.ftruncate(self.fd, start)
            raise

    def append_stamped(self, mv: memoryview, raw: Sequence[tuple[int, ...]],
                       next_offset: int) -> None:
        """Write a follower's buffer of validated, stamped batches (`raw`: their header
        tuples with positions, as `validate_raw` gives) with one `writev`."""
        start = self.size_bytes
        size = len(mv)
        written = os.writev(self.fd, (mv,))
        if written != size:
            self._finish_short_write((mv,), written, start)
        interval = self.index_interval_bytes
        since = self.bytes_since_index
        max_seen = self.max_timestamp
        max_at = self.offset_of_max_timestamp
        index_append = self.index.append
        stamps = self.time_index._timestamps  # noqa: SLF001
        for t in raw:
            if t[8] > max_seen:
                max_seen, max_at = t[8], t[0]
            if since > interval:
                index_append(t[0], start + t[13])
                if not stamps or max_seen > stamps[-1]:
                    self.time_index.maybe_append(max_seen, max_at)
                since = 0
            since += t[1] + LOG_OVERHEAD
        self.bytes_since_index = since
        self.max_timestamp = max_seen
        self.offset_of_max_timestamp = max_at
        self.size_bytes = start + size
        self.next_offset = next_offset
        self.unflushed = True

    # ---------------------------------------------------------------- reading

    def find(self, offset: int) -> BatchHeader | None:
        """Header (with absolute position) of the first batch whose last offset >= `offset`."""
        _, pos = self.index.lookup(offset)
        for h in self._walk(pos):
            if h.base_offset + h.last_offset_delta >= offset:
                return h
        return None

    def read(self, position: int, size: int) -> bytes:
        return os.pread(self.fd, size, position)

    def find_by_timestamp(self, timestamp: int) -> BatchHeader | None:
        """First batch whose max timestamp >= `timestamp`, or None."""
        if self.max_timestamp < timestamp:
            return None
        start = self.time_index.lookup(timestamp)
        _, pos = self.index.lookup(start)
        for h in self._walk(pos):
            if h.max_timestamp >= timestamp:
                return h
        return None

    # ---------------------------------------------------------------- lifecycle

    def truncate_to(self, offset: int) -> int:
        """Remove batches whose last offset >= `offset`; returns bytes removed."""
        self.read_hint_offset = -1
        h = self.find(offset)
        if h is None:
            return 0
        removed = self.size_bytes - h.position
        os.ftruncate(self.fd, h.position)
        self.size_bytes = h.position
        self.index.truncate_to(h.base_offset)
        self.time_index.truncate_to(h.base_offset)
        self.next_offset = h.base_offset
        # Recompute the tail statistics from the last index point.
        self.max_timestamp = -1
        self.offset_of_max_timestamp = self.base_offset
        last = self.time_index.last_entry
        if last is not None:
            self.max_timestamp, self.offset_of_max_timestamp = last
        _, pos = self.index.lookup(2**63 - 1)
        if h.position == 0:
            self.next_offset = self.base_offset
        for t in self._walk(pos):
            self.next_offset = t.base_offset + t.last_offset_delta + 1
            if t.max_timestamp > self.max_timestamp:
                self.max_timestamp = t.max_timestamp
                self.offset_of_max_timestamp = t.base_offset
        self.bytes_since_index = self.size_bytes - pos
        if self.size_bytes == 0:
            self.next_offset = self.base_offset
        return removed

    def rename_files(self, log_path: str | None) -> None:
        """Give the index files their real names (and the `.log`, unless `log_path` is
        None: the caller renamed it); the open descriptor stays valid."""
        stem = os.path.join(self.directory, segment_name(self.base_offset))
        for index, final in ((self.index, stem + INDEX_SUFFIX),
                             (self.time_index, stem + TIMEINDEX_SUFFIX)):
            os.replace(index.path, final)
            index.path = final
        self.index_path, self.timeindex_path = stem + INDEX_SUFFIX, stem + TIMEINDEX_SUFFIX
        if log_path is not None:
            os.replace(self.path, log_path)
        self.path = stem + LOG_SUFFIX

    # ---------------------------------------------------------------- descriptor

    @property
    def fd(self) -> int:
        """The `.log` file's descriptor, reopened here if `release_fd` closed it (a
        generator must read it anew for each call: it may be released meanwhile).
        After `close_fd` it is -1, and any use fails with EBADF."""
        fd = self._fd
        if fd < 0 and not self._fd_closed:
            fd = self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND)
            if self.on_reopen is not None:
                self.on_reopen(self)
        return fd

    @property
    def fd_closed(self) -> bool:
        """True once `close_fd` ran: the segment was closed, deleted or abandoned."""
        return self._fd_closed

    def release_fd(self) -> None:
        """Close the descriptor of an inactive segment until its next use (a closed
        segment is read rarely; one descriptor per segment would not scale)."""
        if self._fd >= 0 and not self.active:
            os.close(self._fd)
            self._fd = -1

    def close_fd(self) -> None:
        """Close the descriptor for good (close, delete, abandon)."""
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = -1
        self._fd_closed = True

    def make_inactive(self) -> None:
        """On roll: unmap the indexes and trim them to their entries."""
        self.index.trim()
        self.time_index.trim()
        self.active = False

    def make_active(self) -> None:
        if not self.active:
            self.index.reopen_writable(self.index.entries)
            self.time_index.reopen_writable(self.time_index.entries)
            self.active = True

    def flush(self) -> None:
        os.fdatasync(self.fd)
        self.index.flush()
        self.time_index.flush()
        self.unflushed = False

    def close(self) -> None:
        if self.active:
            self.index.trim()
            self.time_index.trim()
        self.index.close()
        self.time_index.close()
        self.close_fd()

    def delete(self) -> None:
        self.index.close()
        self.time_index.close()
        self.close_fd()
        for p in (self.path, self.index_path, self.timeindex_path):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def rebuild_indexes_from(self, headers: Sequence[BatchHeader]) -> None:
        self.index.reset()
        self.time_index.reset()
        self.max_timestamp = -1
        self.offset_of_max_timestamp = self.base_offset
        self.bytes_since_index = 0
        for h in headers:
            self._index_batch(h.base_offset, h.position, h.batch_length + LOG_OVERHEAD,
                              h.max_timestamp)
        self.next_offset = headers[-1].next_offset if headers else self.base_offset
