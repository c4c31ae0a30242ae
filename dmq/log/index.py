"""Sparse offset and time indexes of one segment; the active segment's are memory-mapped
over fully allocated blocks, never over a hole.

Reads and writes the `.index` and `.timeindex` files. Indexes are derived data: they
can always be rebuilt from the `.log` file, so they are never fsynced on the append
path and a failed sanity check on open just means "rebuild". This module never reads
the `.log` file itself (the segment does that).

Format: `.index` entries are 8 bytes: relative offset u32 | file position u32
(big-endian), one per `index_interval_bytes` of log, keyed by the base offset of the
batch that starts at that position. `.timeindex` entries are 12 bytes: timestamp i64 |
relative offset u32, appended when a batch raises the segment's max timestamp at an
index point. A real entry is never all zero, so a reader stops at the first all-zero
entry (the allocated tail of an active segment's file, or what a full disk kept from
being written). A closed segment's files hold exactly their entries.

Writing: each entry goes to an in-memory `array` mirror (lookups bisect it: a few
hundred nanoseconds) and, while the segment is active, is stored into the file's
shared mapping at once (one `pack_into` per entry, one entry per index interval of
log, never per record), as Kafka's indexes are; `sync` (flush, roll, close) only
copies entries a failed growth left behind, and `flush` is an `msync`. The mapping
only ever covers blocks that `posix_fallocate` has reserved: the file grows by
doubling from one page up to `_GROW_CHUNK_BYTES` at a time, allocated first and mapped
after, so no store and no fault ever lands in a hole (on a full disk, or on tmpfs for
any touch, a fault in a hole is a SIGBUS that kills the process; that is why the
indexes were once written with `pwrite` only). A failed allocation (ENOSPC) is an
`OSError` instead: the append goes on, the entries stay in memory, a warning says so,
and the next sync tries again; the file keeps a prefix, which is still a correct
(sparser) index. Nothing is reserved up front: a file is only as large as its entries
rounded up to the next growth step (preallocating the whole file reserved
`segment_index_bytes` per index of every active segment).

Allocated blocks are only enough on file systems that overwrite them in place (ext4,
XFS, tmpfs: `_IN_PLACE_FS_TYPES`); elsewhere (btrfs, ZFS, NFS, overlayfs) a store into
a mapped page may still need new space, so indexes there are never mapped: entries
stay in memory until a sync writes them with one `pwrite`, which fails with ENOSPC
instead. So are indexes made writable only to be rebuilt or cut (recovery, cleaning,
truncation into a closed segment before it becomes the active one).

Reading: every file is loaded with `pread`, never through a mapping (an older version
left active indexes sparse, and a read fault in a hole of tmpfs is a SIGBUS too).
Closed segments' indexes are then served from the mirror alone: no mapping and no
descriptor. A mapping costs a descriptor before Python 3.13 (`mmap` keeps a duplicate),
so a log holds two for its active segment's indexes and none for closed segments'; such
mappings are rationed to a quarter of the open files limit, and active indexes past it
are written with `pwrite` (see `_take_mapping`).
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import resource
import struct
import sys
import threading
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import Any

log = logging.getLogger("dmq.log")

_OFFSET_ENTRY = struct.Struct(">II")
_TIME_ENTRY = struct.Struct(">qI")
OFFSET_ENTRY_SIZE = _OFFSET_ENTRY.size
TIME_ENTRY_SIZE = _TIME_ENTRY.size
_pack_offset_into = _OFFSET_ENTRY.pack_into
_pack_time_into = _TIME_ENTRY.pack_into


_READ_CHUNK_ENTRIES = 8192  # entries read per pread when loading
_PAGE_BYTES = mmap.PAGESIZE
# The largest growth step of a mapped file: one allocation and remap per 64 KiB of
# entries (8192 offset entries, about 32 MiB of log at the default interval).
_GROW_CHUNK_BYTES = 64 * 1024
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NO_FALLOCATE = (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)
# Python 3.13 can map without keeping a duplicate of the descriptor.
_MMAP_KWARGS: dict[str, Any] = {"trackfd": False} if sys.version_info >= (3, 13) else {}
# Before it, every mapping holds a descriptor, so mappings are rationed: at most a
# quarter of the open files limit at once (`_mapping_budget`); an active index past the
# budget is written with `pwrite` at each sync instead, as on file systems that do not
# overwrite in place. (Unrationed, 10,000 partitions held 30,000 descriptors, past a
# 20,000 limit: logs then failed to open after a restart.)
_MAPPINGS_HOLD_FDS = not _MMAP_KWARGS
_WIPE_IN_PLACE_BYTES = 64 * 1024  # `wipe` zeroes files up to this size instead
_mappings_lock = threading.Lock()
_mappings_held = 0
_budget_warned = False


def _mapping_budget() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 30 if soft == resource.RLIM_INFINITY else soft // 4


def _take_mapping(path: str) -> bool:
    """Count one more mapping that holds a descriptor; False past the budget."""
    global _mappings_held, _budget_warned
    if not _MAPPINGS_HOLD_FDS:
        return True
    with _mappings_lock:
        budget = _mapping_budget()
        if _mappings_held >= budget:
            if not _budget_warned:
                _budget_warned = True
                log.warning("%d index mappings hold a descriptor each (Python < 3.13), a "
                            "quarter of the open files limit: %s and further active indexes "
                            "are written with pwrite at each sync", _mappings_held, path)
            return False
        _mappings_held += 1
        return True


def _give_back_mapping() -> None:
    global _mappings_held
    if _MAPPINGS_HOLD_FDS:
        with _mappings_lock:
            _mappings_held -= 1
# `statfs` f_type of the file systems that overwrite allocated blocks in place, so that
# a store into a mapped page of them never needs new space: ext2/3/4, XFS, tmpfs. On
# copy-on-write ones (btrfs, ZFS, bcachefs) a store into a written page may need new
# blocks and fault with SIGBUS on a full disk whatever was allocated; on network and
# stacked ones (NFS, overlayfs) it is not known: those write with `pwrite`.
_IN_PLACE_FS_TYPES = frozenset({0xEF53, 0x58465342, 0x01021994})
_in_place_devices: dict[int, bool] = {}
_libc: Any = None


def _statfs_type(directory: str) -> int | None:
    """f_type of statfs(2) for `directory` (None if it cannot be read)."""
    global _libc
    import ctypes

    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)  # once: each CDLL builds classes
    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type comes first
    if _libc.statfs(os.fsencode(directory), buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _overwrites_in_place(directory: str) -> bool:
    """Whether `directory` is on a file system of `_IN_PLACE_FS_TYPES` (cached per
    device: a broker's thousands of partition folders share one or a few)."""
    if sys.platform != "linux" or not hasattr(os, "posix_fallocate"):
        return False
    try:
        device = os.stat(directory).st_dev
    except OSError:
        return False
    known = _in_place_devices.get(device)
    if known is None:
        known = _statfs_type(directory) in _IN_PLACE_FS_TYPES
        _in_place_devices[device] = known
    return known


class _EntryFile:
    """A file of fixed-size entries; `capacity_entries` counts the slots it may hold.

    While `mapped_writes` (the active segment), `_mm` maps the first `_mapped_bytes` of
    the file, all of them allocated. Closed (`close`/`discard`), it writes nothing more
    until `reopen_writable`."""

    entry_size = 8

    def __init__(self, path: str, max_bytes: int, writable: bool) -> None:
        self.path = path
        self._max_entries = max(1, max_bytes // self.entry_size)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        self._mm: mmap.mmap | None = None
        self._mapped_bytes = 0
        # Entries the append path may store straight into the mapping: the mapped ones,
        # while no entry lags behind in memory only (else 0).
        self._store_limit = 0
        self.writable = writable
        self._mappable = _overwrites_in_place(os.path.dirname(os.path.abspath(path)))
        self.mapped_writes = writable and self._mappable
        self.capacity_entries = (max(self._max_entries, size // self.entry_size) if writable
                                 else size // self.entry_size)
        self._open = True
        self._unflushed = False
        self._wipe_pending = False  # a deferred `wipe` not done yet

    def _map_at_least(self, nbytes: int) -> bool:
        """Make the mapping cover `nbytes`: allocate the blocks, then map them. False if
        the file system cannot reserve blocks (the file is then written with `pwrite`);
        `OSError` (ENOSPC) if there is no room, the mapping unchanged."""
        if nbytes <= self._mapped_bytes:
            return True
        if not self.mapped_writes:
            return False
        if self._mm is None and not _take_mapping(self.path):
            self.mapped_writes = False
            return False
        old = self._mapped_bytes
        step = min(max(old, _PAGE_BYTES), _GROW_CHUNK_BYTES)
        new = -(-max(nbytes, old + step) // _PAGE_BYTES) * _PAGE_BYTES
        new = max(nbytes, min(new, self.capacity_entries * self.entry_size))
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:
            if self._mm is None:
                _give_back_mapping()  # (EMFILE: the case the budget is for)
            raise
        try:
            try:  # from `old`: a hole below it (a sparse older file) is allocated too
                os.posix_fallocate(fd, old, new - old)
                mm = mmap.mmap(fd, new, **_MMAP_KWARGS)
            except OSError as exc:
                if self._mm is None:
                    _give_back_mapping()  # taken above for this first mapping
                if exc.errno not in _NO_FALLOCATE:
                    raise
                self._unmap()
                self.mapped_writes = False
                return False
        finally:
            os.close(fd)
        if self._mm is not None:
            self._mm.close()
        self._mm, self._mapped_bytes = mm, new
        return True

    def _unmap(self) -> None:
        if self._mm is not None:
            self._mm.close()  # dirty pages stay in the page cache and are written back
            self._mm = None
            _give_back_mapping()
        self._mapped_bytes = self._store_limit = 0

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
        """Unmap and shrink the file to exactly `entries` entries (on roll and close)."""
        self._unmap()
        size = entries * self.entry_size
        os.truncate(self.path, size)
        self._wipe_pending = False  # (cut to the entries written since)
        self.capacity_entries = entries
        self.writable = self.mapped_writes = False

    def reopen_writable(self, entries: int, mapped: bool = True) -> None:
        """Make a trimmed file writable again; `mapped` for the active segment (else its
        entries are written with `pwrite` when synced). Nothing is allocated here."""
        self.capacity_entries = max(self._max_entries, entries,
                                    os.path.getsize(self.path) // self.entry_size)
        self.writable = True
        self.mapped_writes = mapped and self._mappable
        self._open = True

    def wipe(self, mapped: bool | None = None, deferred: bool = False) -> None:
        """Empty the file (before a rebuild from the log: entries of a damaged file past
        the rebuilt ones must not survive). A file of at most `_WIPE_IN_PLACE_BYTES` is
        overwritten with zeros, which a reader takes for its end, instead of truncated:
        a truncate is a metadata change of the file system (~120 us each on ext4 here,
        two per log after a crash), a small pwrite only dirties a page. `mapped`: whether
        the rebuilt entries are stored through a mapping (None: as before).

        `deferred`: the file is emptied just before entries are first written to it
        (`sync`, the append path) or cut by `trim`, not now: after a crash the pages of
        freshly written indexes are often still being written back, and a write into
        such a page waits for it (~1 ms per file; 10,000 logs have 20,000). Until then
        the file keeps its old entries, which nothing reads: only trimmed files (closed
        segments, a clean shutdown) are ever loaded, and an unclean open rebuilds an
        active segment's indexes again."""
        if mapped is None:
            mapped = self.mapped_writes
        self._unmap()
        if deferred:
            self._wipe_pending = True
        else:
            self._wipe_file()
        self.reopen_writable(0, mapped)

    def _wipe_file(self) -> None:
        """The file operation of `wipe` (the file must not be mapped)."""
        fd = os.open(self.path, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            zeroed = False
            if 0 < size <= _WIPE_IN_PLACE_BYTES:
                try:  # on a copy-on-write file system even this may need new blocks
                    zeroed = os.pwrite(fd, bytes(size), 0) == size
                except OSError:
                    zeroed = False
            if size and not zeroed:
                os.ftruncate(fd, 0)  # needs no space
        finally:
            os.close(fd)
        self._wipe_pending = False

    def flush(self) -> None:
        if self._unflushed:
            if self._mm is not None:
                self._mm.flush()
            else:
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self._unflushed = False

    def close(self) -> None:
        self._unmap()
        self._open = False

    def discard(self) -> None:
        """Stop without writing pending entries (crash simulation; what was stored in
        the mapping stays, as after a crash of the process)."""
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
        self._synced = 0  # entries [0, _synced) are in the file
        self._synced_at_flush = 0
        self._store_failed = False  # the mapping could not grow: wait for `sync`

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

    def _pack(self, start: int, stop: int) -> bytes:
        pack, encode = self._entry.pack, self._encode
        return b"".join([pack(*encode(i)) for i in range(start, stop)])

    def _store_pending(self) -> None:
        """On the append path, once the mapping ran out: grow it and store the entries
        not yet in the file. Any failure keeps them in memory until the next `sync`
        (which reports what it cannot fix): an append never fails for its index."""
        n, size = len(self._cols[0]), self._entry.size
        self._store_failed = True
        try:
            if self._wipe_pending:
                self._wipe_file()
            if not self._map_at_least(n * size):
                return  # written with `pwrite` by the next sync
        except OSError as exc:
            log.warning("index %s cannot grow (%s): %d entries stay in memory until the "
                        "next sync (flush, roll, close)", self.path, exc, n - self._synced)
            return
        mm = self._mm
        assert mm is not None
        mm[self._synced * size:n * size] = self._pack(self._synced, n)
        self._synced = n
        self._store_limit = self._mapped_bytes // size
        self._store_failed = False

    def sync(self) -> None:
        """Write entries not yet in the file: into the mapping (grown first if needed),
        or with one `pwrite` for a file that is not mapped (or not yet).

        A full disk is not an error here: the file keeps the prefix it has (a sparser
        index is still a correct one, and the reader stops at the unwritten zeros) and
        the entries stay in memory for the next sync."""
        self._store_failed = False
        n = len(self._cols[0])
        if not (self._open and self.writable) or self._synced >= n:
            return  # (a trimmed file holds what it will hold)
        size = self._entry.size
        try:
            if self._wipe_pending:
                self._wipe_file()
            # (a file not mapped yet is mapped by the append path once an entry needs
            # it, not by a sync: see `LogSegment.recover`)
            if self._mm is not None and self._map_at_least(n * size):
                mm = self._mm
                assert mm is not None
                mm[self._synced * size:n * size] = self._pack(self._synced, n)
                self._store_limit = self._mapped_bytes // size
            else:
                self._pwrite(self._pack(self._synced, n), self._synced * size)
        except OSError as exc:
            if exc.errno not in _DISK_FULL:
                raise
            log.warning("disk full: %d index entries of %s stay in memory only",
                        n - self._synced, self.path)
            return
        self._synced = n

    def _truncate_entries(self, keep: int) -> None:
        for col in self._cols:
            del col[keep:]
        if not self.writable:
            self.reopen_writable(keep, mapped=False)  # the segment makes itself active
        size = self._entry.size
        if self._open and self._synced > keep:
            if self._mm is not None and self._synced * size <= self._mapped_bytes:
                self._mm[keep * size:self._synced * size] = bytes((self._synced - keep) * size)
                self._unflushed = True
            else:  # not mapped: cutting the file needs no disk space
                self._unmap()
                os.truncate(self.path, keep * size)
        self._synced = min(self._synced, keep)
        self._store_limit = self._mapped_bytes // size if self._synced == keep else 0

    def reset(self) -> None:
        self._truncate_entries(0)

    def wipe(self, mapped: bool | None = None, deferred: bool = False) -> None:
        for col in self._cols:
            del col[:]
        self._synced = 0
        super().wipe(mapped, deferred)

    def flush(self) -> None:
        self.sync()
        if self._synced != self._synced_at_flush:  # (the append path stored entries)
            self._unflushed = True
            self._synced_at_flush = self._synced
        super().flush()

    def trim(self, entries: int | None = None) -> None:
        """Sync, unmap and cut the file to its entries; those a full disk kept in memory
        are not in the file, which stays free of holes (a sparser index)."""
        self.sync()
        n = len(self._cols[0]) if entries is None else entries
        super().trim(min(n, self._synced))

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
        """Add an entry (stored in the mapping of an active segment's file, else in
        memory until `sync`); offsets and positions must increase."""
        offsets = self._offsets
        if offsets and (offset <= offsets[-1] or position <= self._positions[-1]):
            return  # never out of order; a later entry is as good
        n = len(offsets)
        if n >= self.capacity_entries or not self.writable:
            return  # full (the log rolls first); a sparser index is still correct
        offsets.append(offset)
        self._positions.append(position)
        if n < self._store_limit:  # (a positive limit implies a mapping)
            _pack_offset_into(self._mm, n << 3,  # type: ignore[arg-type]
                              offset - self.base_offset, position)
            self._synced = n + 1
        elif self.mapped_writes and not self._store_failed:
            self._store_pending()

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
        """Add an entry if `timestamp` is a new maximum (stored like `OffsetIndex.append`)."""
        ts = self._timestamps
        if ts and (timestamp <= ts[-1] or offset < self._offsets[-1]):
            return
        n = len(ts)
        if n >= self.capacity_entries or not self.writable:
            return  # sized like the offset index, whose fullness rolls the segment first
        ts.append(timestamp)
        self._offsets.append(offset)
        if n < self._store_limit:  # (a positive limit implies a mapping)
            _pack_time_into(self._mm, n * 12,  # type: ignore[arg-type]
                            timestamp, offset - self.base_offset)
            self._synced = n + 1
        elif self.mapped_writes and not self._store_failed:
            self._store_pending()

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
