"""Sparse offset and time indexes of one segment, preallocated, read and written with
`pread`/`pwrite`.

Owns the `.index` and `.timeindex` files. Indexes are derived data: they can always
be rebuilt from the `.log` file, so they are never fsynced on the append path and a
failed sanity check on open just means "rebuild". This module must never read the
`.log` file itself (the segment does that).

Entries are appended to in-memory arrays on the append path and written to the file
by `sync()` (on flush, roll and close) with one `pwrite`, so an append never touches
the file. That is safe because indexes of segments past the recovery point are
rebuilt on an unclean start anyway.

The files are not mapped (they were, once): a store into a hole of a mapped file on a
full disk, or on tmpfs any touch of one, is a SIGBUS that kills the process, where a
`pwrite` fails with ENOSPC, an error the log reports. Nor do they keep a descriptor
open: each sync opens, writes and closes (a few microseconds, on flush and roll only),
so a segment costs one descriptor, its `.log`, and no memory mapping.

`.index` entries are 8 bytes: relative offset u32 | file position u32 (big-endian),
one per `index_interval_bytes` of log, keyed by the base offset of the batch that
starts at that position. `.timeindex` entries are 12 bytes: timestamp i64 |
relative offset u32, appended when a batch raises the segment's max timestamp at an
index point. Both files are preallocated (sparse) to `segment_index_bytes` while the
segment is active and trimmed to their entries when it rolls or closes; a reader stops
at the first all-zero entry. Lookups bisect an in-memory `array` mirror of the
entries, so they cost a few hundred nanoseconds.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator

log = logging.getLogger("dmq.log")

_OFFSET_ENTRY = struct.Struct(">II")
_TIME_ENTRY = struct.Struct(">qI")
OFFSET_ENTRY_SIZE = _OFFSET_ENTRY.size
TIME_ENTRY_SIZE = _TIME_ENTRY.size


_READ_CHUNK_ENTRIES = 8192  # entries read per pread when loading


class _EntryFile:
    """A preallocated file of fixed-size entries; `capacity_entries` counts its slots.
    Closed (`close`/`discard`), it writes nothing more until `reopen_writable`."""

    entry_size = 8

    def __init__(self, path: str, max_bytes: int, writable: bool) -> None:
        self.path = path
        self._max_entries = max(1, max_bytes // self.entry_size)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if writable:
                alloc = self._max_entries * self.entry_size
                if size < alloc:
                    os.ftruncate(fd, alloc)
                size = max(size, alloc)
        finally:
            os.close(fd)
        self._file_bytes = size
        self.writable = writable
        self._open = True
        self._unflushed = False

    @property
    def _file_bytes(self) -> int:
        return self._size_bytes

    @_file_bytes.setter
    def _file_bytes(self, value: int) -> None:
        self._size_bytes = value
        self.capacity_entries = value // self.entry_size

    def _pwrite(self, data: bytes, position: int) -> None:
        fd = os.open(self.path, os.O_WRONLY)
        try:
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, position)
                view, position = view[n:], position + n
        finally:
            os.close(fd)
        self._unflushed = True

    def _chunks(self) -> Iterator[bytes]:
        """The file's bytes from the start, in whole entries, chunk by chunk."""
        chunk = _READ_CHUNK_ENTRIES * self.entry_size
        fd = os.open(self.path, os.O_RDONLY)
        try:
            position = 0
            while True:
                data = os.pread(fd, chunk, position)
                usable = len(data) - len(data) % self.entry_size
                if usable <= 0:
                    return
                yield data[:usable] if usable < len(data) else data
                position += usable
        finally:
            os.close(fd)

    def trim(self, entries: int) -> None:
        """Shrink the file to exactly `entries` entries (on roll and close)."""
        size = entries * self.entry_size
        os.truncate(self.path, size)
        self._file_bytes = size
        self.writable = False

    def reopen_writable(self, entries: int) -> None:
        """Grow a trimmed file back to its preallocated size (after truncation)."""
        alloc = max(max(self._max_entries, entries) * self.entry_size,
                    os.path.getsize(self.path))
        os.truncate(self.path, alloc)
        self._file_bytes = alloc
        self.writable = True
        self._open = True

    def wipe(self) -> None:
        """Empty the file and preallocate it again, all zero (before a rebuild from the
        log: entries of a damaged file past the rebuilt ones must not survive)."""
        _EntryFile.close(self)
        os.truncate(self.path, 0)
        self.reopen_writable(0)

    def flush(self) -> None:
        if self._unflushed:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._unflushed = False

    def close(self) -> None:
        self._open = False

    def discard(self) -> None:
        """Stop without writing pending entries (crash simulation)."""
        _EntryFile.close(self)


class _SparseIndex(_EntryFile):
    """Entries of two increasing columns, kept in `array`s (`_cols`) and written to the
    file by `sync`. Subclasses name the columns and say which one is an offset
    stored relative to the segment base, and which must strictly increase."""

    _entry: struct.Struct
    _typecodes: tuple[str, str]
    _relative: int  # the column stored as (offset - base_offset) u32
    _strict: tuple[bool, bool]  # a column that must strictly increase (else non-decreasing)

    def __init__(self, path: str, base_offset: int, max_bytes: int, writable: bool) -> None:
        super().__init__(path, max_bytes, writable)
        self.base_offset = base_offset
        self._cols = (array(self._typecodes[0]), array(self._typecodes[1]))
        self._synced = 0

    def _encode(self, i: int) -> tuple[int, int]:
        a, b = self._cols[0][i], self._cols[1][i]
        return (a - self.base_offset, b) if self._relative == 0 else (a, b - self.base_offset)

    def load(self) -> bool:
        """Read entries from the file; False if they fail the sanity check (then rebuild)."""
        first, second = self._cols
        del first[:], second[:]
        self._synced = 0
        base = self.base_offset
        strict0, strict1 = self._strict
        prev0 = prev1 = -(2**63)
        for data in self._chunks():
            for a, b in self._entry.iter_unpack(data):
                if a == 0 and b == 0:
                    self._synced = len(first)
                    return True  # preallocated zero tail (a real entry is never all zero)
                if (a < prev0 or b < prev1 or (strict0 and a == prev0)
                        or (strict1 and b == prev1)):
                    del first[:], second[:]
                    return False
                first.append(a + base if self._relative == 0 else a)
                second.append(b + base if self._relative == 1 else b)
                prev0, prev1 = a, b
        self._synced = len(first)
        return True

    @property
    def entries(self) -> int:
        return len(self._cols[0])

    def sync(self) -> None:
        """Write entries added since the last sync to the file (one `pwrite`).

        A full disk is not an error here: the file keeps the prefix it has (a sparser
        index is still a correct one, and the reader stops at the unwritten zeros) and
        the entries stay in memory for the next sync."""
        n = len(self._cols[0])
        if not self._open or self._synced >= n:
            return
        pack, encode = self._entry.pack, self._encode
        data = b"".join([pack(*encode(i)) for i in range(self._synced, n)])
        try:
            self._pwrite(data, self._synced * self._entry.size)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.warning("disk full: %d index entries of %s stay in memory only",
                        n - self._synced, self.path)
            return
        self._synced = n

    def _truncate_entries(self, keep: int) -> None:
        for col in self._cols:
            del col[keep:]
        if not self.writable:
            self.reopen_writable(keep)
        size = self._entry.size
        if self._open and self._synced > keep:
            self._pwrite(bytes((self._synced - keep) * size), keep * size)
        self._synced = min(self._synced, keep)

    def reset(self) -> None:
        self._truncate_entries(0)

    def wipe(self) -> None:
        for col in self._cols:
            del col[:]
        self._synced = 0
        super().wipe()

    def flush(self) -> None:
        self.sync()
        super().flush()

    def trim(self, entries: int | None = None) -> None:
        self.sync()
        super().trim(len(self._cols[0]) if entries is None else entries)

    def close(self) -> None:
        self.sync()
        super().close()


class OffsetIndex(_SparseIndex):
    """Sparse map of offset -> file position for one segment."""

    entry_size = OFFSET_ENTRY_SIZE
    _entry = _OFFSET_ENTRY
    _typecodes = ("Q", "Q")
    _relative = 0
    _strict = (True, True)

    def __init__(self, path: str, base_offset: int, max_bytes: int, writable: bool) -> None:
        super().__init__(path, base_offset, max_bytes, writable)
        self._offsets, self._positions = self._cols  # the same arrays, named

    def sane_for(self, log_size_bytes: int, next_offset: int) -> bool:
        if self._positions and self._positions[-1] >= log_size_bytes:
            return False
        return not (self._offsets and self._offsets[-1] >= max(next_offset, self.base_offset + 1))

    def append(self, offset: int, position: int) -> None:
        """Add an entry (in memory until `sync`); offsets and positions must increase."""
        offsets = self._offsets
        if offsets and (offset <= offsets[-1] or position <= self._positions[-1]):
            return  # never out of order; a later entry is as good
        if len(offsets) >= self.capacity_entries or not self.writable:
            return  # full (the log rolls first); a sparser index is still correct
        offsets.append(offset)
        self._positions.append(position)

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
        self._truncate_entries(bisect_left(self._offsets, offset))


class TimeIndex(_SparseIndex):
    """Sparse map of max timestamp so far -> offset for one segment."""

    entry_size = TIME_ENTRY_SIZE
    _entry = _TIME_ENTRY
    _typecodes = ("q", "Q")
    _relative = 1
    _strict = (True, False)

    def __init__(self, path: str, base_offset: int, max_bytes: int, writable: bool) -> None:
        super().__init__(path, base_offset, max_bytes, writable)
        self._timestamps, self._offsets = self._cols  # the same arrays, named

    def sane_for(self, next_offset: int) -> bool:
        return not (self._offsets and self._offsets[-1] >= max(next_offset, self.base_offset + 1))

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
            return  # sized like the offset index, whose fullness rolls the segment first
        ts.append(timestamp)
        self._offsets.append(offset)

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
        """Drop entries whose offset is >= `offset`."""
        self._truncate_entries(bisect_left(self._offsets, offset))
