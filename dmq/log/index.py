"""Sparse offset and time indexes of one segment, mmap'd and preallocated.

Owns the `.index` and `.timeindex` files. Indexes are derived data: they can always
be rebuilt from the `.log` file, so they are never fsynced on the append path and a
failed sanity check on open just means "rebuild". This module must never read the
`.log` file itself (the segment does that).

Entries are appended to in-memory arrays on the append path and copied into the
mapping by `sync()` (on flush, roll and close), so an append never takes a page fault
on a shared mapping (which can stall behind writeback). That is safe because indexes
of segments past the recovery point are rebuilt on an unclean start anyway.

`.index` entries are 8 bytes: relative offset u32 | file position u32 (big-endian),
one per `index_interval_bytes` of log, keyed by the base offset of the batch that
starts at that position. `.timeindex` entries are 12 bytes: timestamp i64 |
relative offset u32, appended when a batch raises the segment's max timestamp at an
index point. Both files are preallocated to `segment_index_bytes` while the segment is
active and trimmed to their entries when it rolls or closes. Lookups bisect an
in-memory `array` mirror of the entries, so they cost a few hundred nanoseconds.
"""

from __future__ import annotations

import mmap
import os
import struct
from array import array
from bisect import bisect_left, bisect_right

_OFFSET_ENTRY = struct.Struct(">II")
_TIME_ENTRY = struct.Struct(">qI")
OFFSET_ENTRY_SIZE = _OFFSET_ENTRY.size
TIME_ENTRY_SIZE = _TIME_ENTRY.size


class _MappedFile:
    """A preallocated file mapped read-write; `entries` counts used slots."""

    entry_size = 8

    def __init__(self, path: str, max_bytes: int, writable: bool) -> None:
        self.path = path
        self._max_entries = max(1, max_bytes // self.entry_size)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._file_bytes = os.fstat(fd).st_size
            self._mm: mmap.mmap | None = None
            if writable:
                alloc = self._max_entries * self.entry_size
                if self._file_bytes < alloc:
                    os.ftruncate(fd, alloc)
                self._file_bytes = max(self._file_bytes, alloc)
            if self._file_bytes > 0:
                self._mm = mmap.mmap(fd, self._file_bytes)
        finally:
            os.close(fd)
        self.writable = writable

    @property
    def _file_bytes(self) -> int:
        return self._size_bytes

    @_file_bytes.setter
    def _file_bytes(self, value: int) -> None:
        self._size_bytes = value
        self.capacity_entries = value // self.entry_size

    def trim(self, entries: int) -> None:
        """Shrink the file to exactly `entries` entries (on roll and close)."""
        size = entries * self.entry_size
        if self._mm is not None:
            self._mm.flush()
            self._mm.close()
            self._mm = None
        os.truncate(self.path, size)
        self._file_bytes = size
        if size > 0:
            fd = os.open(self.path, os.O_RDWR)
            try:
                self._mm = mmap.mmap(fd, size)
            finally:
                os.close(fd)
        self.writable = False

    def reopen_writable(self, entries: int) -> None:
        """Grow a trimmed file back to its preallocated size (after truncation)."""
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        alloc = max(max(self._max_entries, entries) * self.entry_size,
                    os.path.getsize(self.path))
        os.truncate(self.path, alloc)
        self._file_bytes = alloc
        fd = os.open(self.path, os.O_RDWR)
        try:
            self._mm = mmap.mmap(fd, alloc)
        finally:
            os.close(fd)
        self.writable = True

    def flush(self) -> None:
        if self._mm is not None:
            self._mm.flush()

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def discard(self) -> None:
        """Drop the mapping without copying pending entries in (crash simulation)."""
        _MappedFile.close(self)


class OffsetIndex(_MappedFile):
    """Sparse map of offset -> file position for one segment."""

    entry_size = OFFSET_ENTRY_SIZE

    def __init__(self, path: str, base_offset: int, max_bytes: int, writable: bool) -> None:
        super().__init__(path, max_bytes, writable)
        self.base_offset = base_offset
        self._offsets = array("Q")
        self._positions = array("Q")
        self._synced = 0

    def load(self) -> bool:
        """Read entries from the file; False if they fail the sanity check (then rebuild)."""
        self._offsets = array("Q")
        self._positions = array("Q")
        mm = self._mm
        if mm is None:
            return True
        prev_rel = -1
        prev_pos = -1
        for i in range(len(mm) // OFFSET_ENTRY_SIZE):
            rel, pos = _OFFSET_ENTRY.unpack_from(mm, i * OFFSET_ENTRY_SIZE)
            if rel == 0 and pos == 0:
                break  # preallocated zero tail (position 0 is never indexed)
            if rel <= prev_rel or pos <= prev_pos:
                return False
            self._offsets.append(self.base_offset + rel)
            self._positions.append(pos)
            prev_rel, prev_pos = rel, pos
        self._synced = len(self._offsets)
        return True

    def sane_for(self, log_size_bytes: int, next_offset: int) -> bool:
        if self._positions and self._positions[-1] >= log_size_bytes:
            return False
        return not (self._offsets and self._offsets[-1] >= max(next_offset, self.base_offset + 1))

    @property
    def entries(self) -> int:
        return len(self._offsets)

    @property
    def is_full(self) -> bool:
        return len(self._offsets) >= self.capacity_entries

    def append(self, offset: int, position: int) -> None:
        """Add an entry (in memory until `sync`); offsets and positions must increase."""
        offsets = self._offsets
        if offsets and (offset <= offsets[-1] or position <= self._positions[-1]):
            return  # never out of order; a later entry is as good
        if len(offsets) >= self.capacity_entries or not self.writable:
            return  # full (the log rolls first); a sparser index is still correct
        offsets.append(offset)
        self._positions.append(position)

    def sync(self) -> None:
        """Copy entries added since the last sync into the mapped file."""
        mm = self._mm
        n = len(self._offsets)
        if mm is None or self._synced >= n:
            return
        base = self.base_offset
        pack = _OFFSET_ENTRY.pack_into
        for i in range(self._synced, n):
            pack(mm, i * OFFSET_ENTRY_SIZE, self._offsets[i] - base, self._positions[i])
        self._synced = n

    def lookup(self, offset: int) -> tuple[int, int]:
        """Largest entry with entry offset <= `offset` -> (offset, position); else (base, 0)."""
        i = bisect_right(self._offsets, offset)
        if i == 0:
            return self.base_offset, 0
        return self._offsets[i - 1], self._positions[i - 1]

    def floor_by_position(self, position: int) -> tuple[int, int]:
        """Largest entry with entry position <= `position` -> (offset, position)."""
        i = bisect_right(self._positions, position)
        if i == 0:
            return self.base_offset, 0
        return self._offsets[i - 1], self._positions[i - 1]

    def truncate_to(self, offset: int) -> None:
        """Drop entries whose offset is >= `offset`."""
        keep = bisect_left(self._offsets, offset)
        self._truncate_entries(keep)

    def _truncate_entries(self, keep: int) -> None:
        del self._offsets[keep:]
        del self._positions[keep:]
        if not self.writable:
            self.reopen_writable(keep)
        if self._mm is not None and self._synced > keep:
            end = keep * OFFSET_ENTRY_SIZE
            self._mm[end : self._synced * OFFSET_ENTRY_SIZE] = bytes(
                (self._synced - keep) * OFFSET_ENTRY_SIZE)
        self._synced = min(self._synced, keep)

    def flush(self) -> None:
        self.sync()
        super().flush()

    def trim(self, entries: int | None = None) -> None:
        self.sync()
        super().trim(len(self._offsets) if entries is None else entries)

    def close(self) -> None:
        self.sync()
        super().close()

    def reset(self) -> None:
        self._truncate_entries(0)


class TimeIndex(_MappedFile):
    """Sparse map of max timestamp so far -> offset for one segment."""

    entry_size = TIME_ENTRY_SIZE

    def __init__(self, path: str, base_offset: int, max_bytes: int, writable: bool) -> None:
        super().__init__(path, max_bytes, writable)
        self.base_offset = base_offset
        self._timestamps = array("q")
        self._offsets = array("Q")
        self._synced = 0

    def load(self) -> bool:
        self._timestamps = array("q")
        self._offsets = array("Q")
        mm = self._mm
        if mm is None:
            return True
        prev_ts = -(2**63)
        prev_rel = -1
        for i in range(len(mm) // TIME_ENTRY_SIZE):
            ts, rel = _TIME_ENTRY.unpack_from(mm, i * TIME_ENTRY_SIZE)
            if ts == 0 and rel == 0:
                break  # preallocated zero tail
            if ts <= prev_ts or rel < prev_rel:
                return False
            self._timestamps.append(ts)
            self._offsets.append(self.base_offset + rel)
            prev_ts, prev_rel = ts, rel
        self._synced = len(self._offsets)
        return True

    def sane_for(self, next_offset: int) -> bool:
        return not (self._offsets and self._offsets[-1] >= max(next_offset, self.base_offset + 1))

    @property
    def entries(self) -> int:
        return len(self._offsets)

    @property
    def is_full(self) -> bool:
        return len(self._offsets) >= self.capacity_entries

    @property
    def last_entry(self) -> tuple[int, int] | None:
        if not self._offsets:
            return None
        return self._timestamps[-1], self._offsets[-1]

    def maybe_append(self, timestamp: int, offset: int) -> None:
        """Add an entry if `timestamp` is a new maximum (in memory until `sync`)."""
        ts = self._timestamps
        if ts and (timestamp <= ts[-1] or offset < self._offsets[-1]):
            return
        if len(ts) >= self.capacity_entries or not self.writable:
            return  # the segment rolls on a full offset index first; losing one is harmless
        ts.append(timestamp)
        self._offsets.append(offset)

    def sync(self) -> None:
        mm = self._mm
        n = len(self._offsets)
        if mm is None or self._synced >= n:
            return
        base = self.base_offset
        pack = _TIME_ENTRY.pack_into
        for i in range(self._synced, n):
            pack(mm, i * TIME_ENTRY_SIZE, self._timestamps[i], self._offsets[i] - base)
        self._synced = n

    def flush(self) -> None:
        self.sync()
        super().flush()

    def close(self) -> None:
        self.sync()
        super().close()

    def lookup(self, timestamp: int) -> int:
        """Offset from which to scan for the first batch with max timestamp >= `timestamp`.

        That is the offset of the largest entry with entry timestamp < `timestamp` (every
        batch up to it has a smaller max timestamp), else the segment base.
        """
        i = bisect_left(self._timestamps, timestamp)
        if i == 0:
            return self.base_offset
        return self._offsets[i - 1]

    def truncate_to(self, offset: int) -> None:
        keep = bisect_left(self._offsets, offset)
        del self._timestamps[keep:]
        del self._offsets[keep:]
        if not self.writable:
            self.reopen_writable(keep)
        if self._mm is not None and self._synced > keep:
            end = keep * TIME_ENTRY_SIZE
            self._mm[end : self._synced * TIME_ENTRY_SIZE] = bytes(
                (self._synced - keep) * TIME_ENTRY_SIZE)
        self._synced = min(self._synced, keep)

    def trim(self, entries: int | None = None) -> None:
        self.sync()
        super().trim(len(self._offsets) if entries is None else entries)

    def reset(self) -> None:
        self.truncate_to(-1)
