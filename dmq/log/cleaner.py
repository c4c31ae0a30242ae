"""Log compaction (`cleanup_policy=compact`): rewriting closed segments.

Rewrites closed segments so that only the newest record per key survives, drops
tombstones (value None) older than `delete_retention_ms`, merges runs of small cleaned
segments into one (within `segment_bytes`, the index capacity and u32 relative
offsets), and replaces the files crash-safely:

1. write the cleaned (merged) data to `<first base>.log.cleaned` and
   `<first base>.swap-end` (the offset the replaced segments end at), fsync both;
2. rename `.cleaned` to `<first base>.log.swap` (the commit point), fsync the folder;
3. delete the old segments' files (indexes first; the first segment's `.log` stays),
   rename `.swap` over `<first base>.log`, delete `.swap-end`;
4. open the new segment, rebuild its indexes from the headers of what was written,
   and only then replace the old segments in memory.

A failure before the commit point removes that pass's files; after it, the log is
failed (closed: reads and writes raise) and the files are left for the next open:
`dmq.log.recovery.sweep_replacement_files` finishes a committed swap and undoes an
unfinished one. The cleaner never touches the active segment or anything at or above
the high watermark it is given, keeps every offset (gaps are fine) and keeps keyless
records. This is the only place besides clients that decodes records.

The cleaner works on a log through `CleanableLog`, the part of `PartitionLog`'s public
interface meant for it (see there); it never imports the log's module.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from dmq.clock import Clock
from dmq.log.batch import (
    ATTR_CODEC_MASK,
    ATTR_TIMESTAMP_TYPE,
    HEADER_SIZE,
    LOG_OVERHEAD,
    BatchHeader,
    Record,
    decode_records,
    encode_batch,
    read_header,
    validate_batches,
)
from dmq.log.checkpoint import fsync_dir
from dmq.log.codecs import codec_available
from dmq.log.config import LogConfig
from dmq.log.errors import (
    CorruptRecordError,
    InvalidRecordError,
    LogClosedError,
    LogError,
    LogStorageError,
)
from dmq.log.index import OFFSET_ENTRY_SIZE
from dmq.log.recovery import CLEANED_SUFFIX, END_SUFFIX, SWAP_SUFFIX, unlink_quietly
from dmq.log.segment import LOG_SUFFIX, LogSegment

log = logging.getLogger("dmq.log")

_MAX_RELATIVE_OFFSET = 0xFFFFFFFF


class CleanResult(NamedTuple):
    segments_rewritten: int
    records_kept: int
    records_removed: int
    bytes_before: int
    bytes_after: int


_NOTHING = CleanResult(0, 0, 0, 0, 0)


class CleanableLog(Protocol):
    """What compaction uses of a log; `PartitionLog` implements it.

    - `directory`, `config`, `clock`, `fsync_enabled`: where the files are, the
      settings, time and whether to fsync;
    - `segments`: a snapshot of the segments, oldest first (the last is active);
    - `locked(check_open=True)`: a context holding the log's lock (appends, reads,
      truncation and retention wait meanwhile), raising the log's closed error on
      entry if `check_open` and the log is closed. Every use of a segment's descriptor
      and every change of the segment list happens in it;
    - `truncations`: a counter that grows with every truncation (a closed segment
      changes only by truncation, which may cut and refill it, or by retention, which
      deletes it);
    - `replace_segments(old, new)` (in `locked()`): swap a cleaned segment, whose files
      are in place, in for consecutive old ones;
    - `fail(reason)`: close the log after a storage failure only a reopen resolves;
    - `closed`: whether it is closed (or failed);
    - `cleaner_state` and `undecodable_batches`: what the cleaner remembers of the log
      between passes (the last pass's segments and pending tombstones, to skip a log
      with nothing new; base offsets of batches reported as undecodable, to say so once);
    - `clean(...)`: what `LogCleaner` calls: `clean_log` if the log's cleanup policy
      includes compact, else nothing.
    """

    @property
    def directory(self) -> str: ...
    @property
    def config(self) -> LogConfig: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def fsync_enabled(self) -> bool: ...
    @property
    def segments(self) -> list[LogSegment]: ...
    @property
    def truncations(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def undecodable_batches(self) -> set[int]: ...

    cleaner_state: tuple[tuple[tuple[int, int], ...], int] | None

    def locked(self, check_open: bool = True) -> AbstractContextManager[None]: ...
    def replace_segments(self, old: list[LogSegment], new: LogSegment) -> None: ...
    def fail(self, reason: str) -> None: ...
    def clean(self, now_ms: int | None = None, max_offset: int | None = None,
              cancelled: Callable[[], bool] | None = None) -> CleanResult: ...


def _segment_batches(fd: int, size: int) -> Iterator[tuple[BatchHeader, bytes]]:
    """The batches of a closed segment's first `size` bytes, read through `fd`."""
    pos = 0
    while pos < size:
        head = os.pread(fd, HEADER_SIZE, pos)
        if len(head) < HEADER_SIZE:
            raise LogError(f"segment changed under the cleaner at position {pos}")
        h = read_header(head, 0)
        total = h.batch_length + LOG_OVERHEAD
        data = head + os.pread(fd, total - HEADER_SIZE, pos + HEADER_SIZE)
        if len(data) != total:
            raise LogError(f"segment changed under the cleaner at position {pos}")
        yield h, data
        pos += total


def _decoded(plog: CleanableLog, data: bytes, h: BatchHeader) -> list[Record] | None:
    """The batch's records, or None for a batch that passed its CRC but does not decode
    (stored before leaders checked records): the cleaner keeps such a batch whole and
    says so once per batch, rather than failing every pass on it."""
    try:
        return decode_records(data, h)
    except (CorruptRecordError, InvalidRecordError) as exc:  # incl. an unknown codec
        if h.base_offset not in plog.undecodable_batches:
            plog.undecodable_batches.add(h.base_offset)
            log.warning("cleaning %s: keeping undecodable batch at offset %d as it is: %s",
                        plog.directory, h.base_offset, exc)
        return None


def _dup_as_picked(plog: CleanableLog, seg: LogSegment, truncations: int) -> int | None:
    """A duplicate of `seg`'s descriptor, for reading it without the log's lock, or None
    if the segment is no longer as the pass picked it (retention deleted it, or a
    truncation may have cut and refilled it: the pass ends, the next one starts over).
    One segment at a time: a pass over thousands of closed segments (segment.bytes of
    a few bytes) holds one duplicate, not one per segment."""
    with plog.locked():
        if plog.truncations != truncations or seg.fd_closed:
            return None
        return os.dup(seg.fd)


def _record_ts(h: BatchHeader, r: Record) -> int:
    return h.max_timestamp if h.attributes & ATTR_TIMESTAMP_TYPE else r.timestamp


class _Rewrite(NamedTuple):
    """Consecutive closed segments cleaned (and merged) into `<first>.log.cleaned`,
    waiting to be swapped in."""

    members: list[tuple[LogSegment, int]]  # each with its size when it was read
    cleaned_path: str
    end_path: str  # `<first>.swap-end`: where the replaced segments end
    segment: LogSegment  # the replacement, open and indexed under `.cleaned` names


class _Picked(NamedTuple):
    """The closed segments a pass cleans, as they were when it picked them."""

    segments: list[LogSegment]
    sizes: list[int]
    next_offsets: list[int]
    truncations: int  # the log's count when they were picked
    now: int  # wall clock ms


@dataclass
class _Totals:
    kept: int = 0  # records
    removed: int = 0
    tombstones: int = 0  # kept
    before: int = 0  # bytes
    after: int = 0


@dataclass
class _Group:
    """Consecutive cleaned segments to be written as one: within a segment's bytes and
    index capacity, and u32 relative offsets from the first one's base."""

    members: list[tuple[LogSegment, int]] = field(default_factory=list)  # with sizes read
    batches: list[bytes] = field(default_factory=list)
    size: int = 0
    changed: bool = False  # a record of some member was removed
    end: int = 0  # the last member's next offset

    def fits(self, batches: list[bytes], size: int, next_offset: int, max_size: int,
             max_batches: int) -> bool:
        return not self.members or (
            self.size + size <= max_size
            and len(self.batches) + len(batches) <= max_batches
            and next_offset - self.members[0][0].base_offset <= _MAX_RELATIVE_OFFSET)

    def add(self, seg: LogSegment, seg_size: int, next_offset: int, batches: list[bytes],
            size: int, changed: bool) -> None:
        self.members.append((seg, seg_size))
        self.batches.extend(batches)
        self.size += size
        self.changed = self.changed or changed
        self.end = next_offset


class _Swapped(NamedTuple):
    segments: int  # old segments replaced
    complete: bool  # every rewrite swapped in
    truncated: bool  # stopped by a truncation since the pick


def clean_log(plog: CleanableLog, now_ms: int | None = None,
              max_offset: int | None = None,
              cancelled: Callable[[], bool] | None = None) -> CleanResult:
    """Compact the closed segments of `plog` in place, those wholly below `max_offset`
    (the high watermark: a newer value that is not committed yet may still be truncated
    away, and must not cost the committed one its place).

    The log's lock is held only to pick the segments, to duplicate each one's
    descriptor as it is read (one at a time, `_dup_as_picked`), and once per rewritten
    group to swap it in: reading, decoding and writing `.cleaned` files happen without
    it, so appends and reads of the partition go on meanwhile. A closed segment changes
    only by retention (it goes) or truncation (which may reopen, cut and refill it);
    a duplicated descriptor keeps what is being read readable, a segment gone or
    truncated before it is read ends the pass, and the swap goes ahead only if no
    truncation happened since the segments were picked and its segments are still
    there as read. `cancelled()` (the cleaner stopping) abandons the pass between
    segments.

    Steps: `_pick` the segments; `_latest_offsets` reads them once for the newest
    offset of each key; `_write_groups` reads them again, keeps what survives and
    writes each group of segments that changed (or merge) to `.cleaned` files;
    `_swap_in_groups` swaps those in one group at a time; `_remember` notes what the
    pass saw, so that the next one may skip a log with nothing new.
    """
    picked = _pick(plog, now_ms, max_offset)
    if picked is None:
        return _NOTHING
    rewrites: list[_Rewrite] = []
    try:
        latest = _latest_offsets(plog, picked, cancelled)
        totals = None if latest is None else _write_groups(plog, picked, latest, rewrites,
                                                          cancelled)
    except BaseException:
        _discard_rewrites(rewrites)
        if plog.closed:  # closed (and maybe deleted) meanwhile: not a cleaning failure
            raise LogClosedError(f"log {plog.directory} closed while cleaning") from None
        raise
    if totals is None:  # cancelled, or a segment no longer as picked
        _discard_rewrites(rewrites)
        return _NOTHING
    swapped = _swap_in_groups(plog, picked.truncations, rewrites)
    if swapped.truncated:
        return CleanResult(swapped.segments, 0, 0, 0, 0)
    _remember(plog, picked, totals.tombstones, swapped.complete)
    return CleanResult(swapped.segments, totals.kept, totals.removed, totals.before,
                       totals.after)


def _pick(plog: CleanableLog, now_ms: int | None, max_offset: int | None) -> _Picked | None:
    """The closed segments to clean: a prefix, each older than `min_compaction_lag_ms`
    and wholly below `max_offset`; None if there are none, or if they are as the last
    pass left them and it kept no tombstone (nothing new to do)."""
    cfg = plog.config
    with plog.locked():
        now = plog.clock.wall_ms() if now_ms is None else now_ms
        cleanable: list[LogSegment] = []
        for seg in plog.segments[:-1]:
            if seg.size_bytes and now - seg.max_timestamp < cfg.min_compaction_lag_ms:
                break
            if max_offset is not None and seg.next_offset > max_offset:
                break
            cleanable.append(seg)
        if not cleanable:
            return None
        signature = tuple((s.base_offset, s.size_bytes) for s in cleanable)
        last = plog.cleaner_state
        if last is not None and last[0] == signature and not last[1]:
            return None
        return _Picked(cleanable, [s.size_bytes for s in cleanable],
                       [s.next_offset for s in cleanable], plog.truncations, now)


def _latest_offsets(plog: CleanableLog, picked: _Picked,
                    cancelled: Callable[[], bool] | None) -> dict[Any, int] | None:
    """The newest offset of each key in the picked segments; None if the pass ends."""
    latest: dict[Any, int] = {}
    for seg, size in zip(picked.segments, picked.sizes, strict=True):
        if cancelled is not None and cancelled():
            return None
        fd = _dup_as_picked(plog, seg, picked.truncations)
        if fd is None:
            return None
        try:
            for h, data in _segment_batches(fd, size):
                for r in _decoded(plog, data, h) or ():
                    if r.key is not None:
                        latest[r.key] = r.offset
        finally:
            os.close(fd)
    return latest


def _write_groups(plog: CleanableLog, picked: _Picked, latest: dict[Any, int],
                  rewrites: list[_Rewrite],
                  cancelled: Callable[[], bool] | None) -> _Totals | None:
    """Clean each picked segment and group consecutive ones (see `_Group`); a group of
    several segments, or of one that changed, is written as a `_Rewrite` appended to
    `rewrites`. None if the pass ends (the caller discards `rewrites`)."""
    cfg = plog.config
    max_batches = cfg.segment_index_bytes // OFFSET_ENTRY_SIZE  # one index entry each
    horizon = picked.now - cfg.delete_retention_ms
    totals = _Totals()
    group = _Group()
    for seg, size, nxt in zip(picked.segments, picked.sizes, picked.next_offsets,
                              strict=True):
        fd = None if cancelled is not None and cancelled() else _dup_as_picked(
            plog, seg, picked.truncations)
        if fd is None:
            return None
        try:
            out, changed = _clean_segment(plog, fd, size, latest, horizon, totals)
        finally:
            os.close(fd)
        totals.before += size
        out_bytes = sum(len(b) for b in out)
        if not group.fits(out, out_bytes, nxt, cfg.segment_bytes, max_batches):
            totals.after += _write_group(plog, group, rewrites)
            group = _Group()
        group.add(seg, size, nxt, out, out_bytes, changed)
    totals.after += _write_group(plog, group, rewrites)
    return totals


def _clean_segment(plog: CleanableLog, fd: int, size: int, latest: dict[Any, int],
                   horizon: int, totals: _Totals) -> tuple[list[bytes], bool]:
    """The batches of one segment with what survives (records not newest for their key
    and tombstones at or before `horizon` go), and whether anything went. Unchanged
    batches are kept as they are, changed ones rebuilt (`_rebatch`)."""
    out: list[bytes] = []
    changed = False
    for h, data in _segment_batches(fd, size):
        records = _decoded(plog, data, h)
        if records is None:  # undecodable: kept as it is, its keys unknown
            out.append(data)
            continue
        keep = [r for r in records if r.key is None or (
            latest[r.key] == r.offset
            and not (r.value is None and _record_ts(h, r) <= horizon))]
        totals.kept += len(keep)
        totals.removed += len(records) - len(keep)
        totals.tombstones += sum(1 for r in keep if r.value is None)
        if len(keep) == len(records):
            out.append(data)
            continue
        changed = True
        out.extend(_rebatch(h, keep))
    return out, changed


def _write_group(plog: CleanableLog, group: _Group, rewrites: list[_Rewrite]) -> int:
    """Write the group if it merges or changed anything; its bytes after cleaning."""
    if len(group.members) > 1 or group.changed:
        rw = _write_cleaned(plog, group.members, group.batches, group.end)
        rewrites.append(rw)
        return rw.segment.size_bytes
    return sum(size for _, size in group.members)


def _swap_in_groups(plog: CleanableLog, truncations: int,
                    rewrites: list[_Rewrite]) -> _Swapped:
    """Swap the rewrites in, in order, one per hold of the log's lock (the loop thread
    waits less). Stops at a truncation since the pick (`latest` may name records that
    are gone, or were replaced by a new leader's: nothing may be dropped on its word;
    the log's cleaner state is forgotten and the next pass tries again), or at a group
    some of whose segments retention deleted (a later group may drop a tombstone whose
    older values this one still holds). The rewrites not swapped in are discarded."""
    done = 0
    pending = list(rewrites)
    try:
        while pending:
            rw = pending[0]
            with plog.locked():
                if plog.truncations != truncations:
                    log.info("cleaning %s stopped: the log was truncated meanwhile",
                             plog.directory)
                    plog.cleaner_state = None
                    return _Swapped(done, False, True)
                current = {id(s): s.size_bytes for s in plog.segments[:-1] if not s.active}
                if not all(current.get(id(seg)) == size for seg, size in rw.members):
                    return _Swapped(done, False, False)
                _swap_in(plog, rw)
                done += len(rw.members)
                pending.pop(0)
    except _SwapCommitted as exc:
        # the swap is on disk but not in memory: the log is failed (closed) and the
        # open-time sweep finishes the swap; its files must stay
        pending.pop(0)
        raise LogStorageError(f"cleaning {plog.directory}: {exc.__cause__}") from exc.__cause__
    finally:
        _discard_rewrites(pending)  # the rewrites not committed
    return _Swapped(done, True, False)


def _remember(plog: CleanableLog, picked: _Picked, tombstones: int, complete: bool) -> None:
    """Note the closed segments up to the last one picked, as they are now, and the
    tombstones kept, for `_pick` of the next pass; after an incomplete pass, nothing."""
    with plog.locked(check_open=False):
        last_base = picked.segments[-1].base_offset
        plog.cleaner_state = (tuple((s.base_offset, s.size_bytes) for s in plog.segments[:-1]
                                    if s.base_offset <= last_base), tombstones) if complete \
            else None


class _SwapCommitted(Exception):
    """`_swap_in` failed after its commit point (cause attached)."""


def _discard_rewrites(rewrites: list[_Rewrite]) -> None:
    """Close and delete the files of rewrites that were not committed (their `.cleaned`
    was never renamed to `.swap`); never call it for a committed one."""
    for rw in rewrites:
        seg = rw.segment
        _close_segment(seg)
        for path in (rw.cleaned_path, rw.end_path, seg.index_path, seg.timeindex_path):
            unlink_quietly(path)


class LogCleaner:
    """Background compaction: one thread cleaning registered logs in turn.

    `run_once()` is the whole job (tests and callers with their own scheduler use it);
    `start()` runs it every `interval_ms` on a daemon thread until `stop()`. A failing
    log is logged and skipped, never fatal to the others. A clean holds that log's lock
    only to pick segments and to swap rewritten ones in (see `clean_log`).
    """

    def __init__(self, interval_ms: int = 15_000) -> None:
        self.interval_ms = interval_ms
        self._logs: dict[str, tuple[CleanableLog, Callable[[], int] | None]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, plog: CleanableLog, upto: Callable[[], int] | None = None) -> None:
        """Clean `plog` on every pass; `upto()` gives its high watermark (see `clean_log`)."""
        with self._lock:
            self._logs[plog.directory] = (plog, upto)

    def remove(self, plog: CleanableLog) -> None:
        """Stop cleaning `plog` (not a newer log registered for the same folder)."""
        with self._lock:
            entry = self._logs.get(plog.directory)
            if entry is not None and entry[0] is plog:
                del self._logs[plog.directory]

    def run_once(self, now_ms: int | None = None) -> dict[str, CleanResult]:
        with self._lock:
            logs = list(self._logs.values())
        out: dict[str, CleanResult] = {}
        for plog, upto in logs:
            if self._stop.is_set():
                break
            try:
                res = plog.clean(now_ms, None if upto is None else upto(), self._stop.is_set)
            except LogClosedError:
                self.remove(plog)
                continue
            except Exception:  # one bad log must not stop the others
                if plog.closed:  # failed (reported once by the log itself) or closed
                    self.remove(plog)
                else:
                    log.exception("cleaning %s failed", plog.directory)
                continue
            if res.segments_rewritten:
                out[plog.directory] = res
                log.info("cleaned %s: %s", plog.directory, res)
        return out

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="dmq-log-cleaner",
                                            daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float | None = None) -> bool:
        """Stop the thread; False if it is still busy after `timeout_s` (it then ends
        its pass on its own: a log closed meanwhile makes the pass stop, and files it
        leaves behind are swept on the next open)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                return False
            self._thread = None
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval_ms / 1000):
            self.run_once()


def _rebatch(h: BatchHeader, keep: list[Record]) -> Iterator[bytes]:
    """Runs of consecutive offsets become batches that keep the original header fields."""
    run: list[Record] = []
    for r in keep:
        if run and r.offset != run[-1].offset + 1:
            yield _encode_run(h, run)
            run = []
        run.append(r)
    if run:
        yield _encode_run(h, run)


def _encode_run(h: BatchHeader, run: list[Record]) -> bytes:
    base_ts = run[0].timestamp
    rows = [[r.timestamp - base_ts, r.key, r.value, r.headers] for r in run]
    delta = run[0].offset - h.base_offset
    seq = -1 if h.base_sequence < 0 else (h.base_sequence + delta) & 0x7FFFFFFF
    max_ts = h.max_timestamp if h.attributes & ATTR_TIMESTAMP_TYPE else max(
        r.timestamp for r in run)
    # a Kafka client's batch is rewritten dmq-native (encode_batch marks it), with its
    # codec when this build can write it (snappy it cannot: then uncompressed)
    attributes = h.attributes
    if not codec_available(attributes & ATTR_CODEC_MASK):
        attributes &= ~ATTR_CODEC_MASK
    return encode_batch(rows, run[0].offset, base_ts, max_ts, attributes, h.producer_id,
                        h.producer_epoch, seq, h.partition_leader_epoch)


def _write_cleaned(plog: CleanableLog, members: list[tuple[LogSegment, int]],
                   batches: list[bytes], end_offset: int) -> _Rewrite:
    """Write and fsync `<first>.log.cleaned` and `<first>.swap-end` (the offset the
    replaced segments end at, for the sweep: every swap carries its own, so an end file
    left by an earlier failed pass is overwritten before this one commits), and open the
    replacement segment on them with its indexes built (`<first>.index.cleaned`, ...),
    so the swap under the lock is renames only. No lock needed: nothing else uses these
    names. On failure every file is removed."""
    first = members[0][0]
    cleaned = first.path + CLEANED_SUFFIX
    end_path = first.path[: -len(LOG_SUFFIX)] + END_SUFFIX
    data = b"".join(batches)
    headers = validate_batches(data) if data else []  # what we wrote, CRCs included
    new: LogSegment | None = None
    try:
        _write_file(cleaned, data, plog.fsync_enabled)
        _write_file(end_path, b"%d\n" % end_offset, plog.fsync_enabled)
        cfg = plog.config
        new = LogSegment(plog.directory, first.base_offset, cfg.segment_index_bytes,
                         cfg.index_interval_bytes, False, first.created_ms,
                         name_suffix=CLEANED_SUFFIX)
        if new.size_bytes != len(data):
            raise LogError(f"cleaned segment {cleaned} has the wrong size")
        new.rebuild_indexes_from(headers)
        new.make_inactive()
        new.release_fd()  # reopened on use: a pass may leave many rewrites pending
    except BaseException:
        if new is not None:
            _close_segment(new)
        for path in (cleaned, end_path, first.index_path + CLEANED_SUFFIX,
                     first.timeindex_path + CLEANED_SUFFIX):
            unlink_quietly(path)
        raise
    return _Rewrite(members, cleaned, end_path, new)


def _close_segment(seg: LogSegment) -> None:
    """Release a segment's descriptor without syncing anything."""
    seg.index.discard()
    seg.time_index.discard()
    seg.close_fd()


def _write_file(path: str, data: bytes, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def _swap_in(plog: CleanableLog, rw: _Rewrite) -> LogSegment:
    """Replace the old segments by the cleaned one (with the log's lock held).

    On disk: commit (rename to `.swap`), delete the old segments' files, rename `.swap`
    over `<first>.log` and the replacement's indexes to their names. In memory the old
    segments stay whole (their descriptors still read the unlinked files, their indexes
    are in memory) until the files are in place, so a failure past the commit point
    leaves the log
    consistent in memory; it is then failed (closed) and the open-time sweep finishes
    the swap on disk (indexes left under `.cleaned` names are dropped and rebuilt)."""
    first = rw.members[0][0]
    new = rw.segment
    directory = plog.directory
    sync = plog.fsync_enabled
    log_path = first.path
    swap = log_path + SWAP_SUFFIX
    os.replace(rw.cleaned_path, swap)
    try:
        if sync:
            fsync_dir(directory)  # commit point: from here the sweep finishes the swap
        for seg, _ in rw.members:
            for p in (seg.index_path, seg.timeindex_path) if seg is first else (
                    seg.index_path, seg.timeindex_path, seg.path):
                unlink_quietly(p)
        os.replace(swap, log_path)
        new.rename_files(None)
        if sync:
            fsync_dir(directory)
        unlink_quietly(rw.end_path)
    except BaseException as exc:
        _close_segment(new)
        plog.fail(f"segment swap of {log_path} failed after its commit point: {exc}")
        raise _SwapCommitted() from exc
    plog.replace_segments([seg for seg, _ in rw.members], new)
    for seg, _ in rw.members:
        _close_segment(seg)
    return new
