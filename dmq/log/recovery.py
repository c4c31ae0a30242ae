"""Opening a partition folder: sweep, trust or scan each segment, cut after damage.

Decides what survives a crash. First `sweep_replacement_files` finishes or undoes
the file replacements of a compaction pass the crash interrupted (the protocol is in
`dmq.log.cleaner`; the names of its files are defined here): it deletes `.cleaned`,
`.deleted` and `.tmp` leftovers (an unfinished clean loses nothing: the old segments
are intact), finishes any `.swap` (complete by construction: it is the commit point),
deleting the segments that start inside the range its `.swap-end` gives, and deletes
`.swap-end` files with no `.swap` (a pass undone, or finished). Then segments wholly
before the recovery point of an unclean shutdown (or all of them after a clean one) are
trusted if their indexes pass a sanity check; every other segment is scanned batch by
batch (length, magic, CRC, offset order) and cut after its last valid batch. Once
anything is cut, every later segment is deleted: nothing after damage is ever served.
It never decides offsets of new data and leaves the leader-epoch and producer state to
the log.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import NamedTuple

from dmq.log.checkpoint import fsync_dir, read_entries
from dmq.log.config import LogConfig
from dmq.log.errors import LogError
from dmq.log.producer_state import ProducerStateManager
from dmq.log.segment import (
    INDEX_SUFFIX,
    LOG_SUFFIX,
    TIMEINDEX_SUFFIX,
    LogSegment,
    ScanResult,
    segment_name,
)

log = logging.getLogger("dmq.log")

META_FILE = "meta.checkpoint"
# The files of a segment replacement by the cleaner (`dmq.log.cleaner`), swept on open.
CLEANED_SUFFIX = ".cleaned"  # `<base>.log.cleaned` (and its indexes): being written
SWAP_SUFFIX = ".swap"  # `<base>.log.swap`: written and committed, to be renamed over `.log`
DELETED_SUFFIX = ".deleted"
END_SUFFIX = ".swap-end"  # `<base>.swap-end`: where the segments merged into <base> ended


class LoadedSegments(NamedTuple):
    segments: list[LogSegment]
    log_start_offset: int
    cut: bool  # recovery removed data (a torn tail, corruption or a gap)
    clean: bool  # the meta checkpoint recorded a clean shutdown
    recovery_point: int  # the meta checkpoint's (0 without one)
    meta: dict[str, int]  # the meta checkpoint as read ({} if missing or malformed)
    created: bool  # the folder had no segment: its first one was created (not fsynced)
    # base offset -> what the scan of each recovered segment collected: the leader-epoch
    # rises from the recovery point on and its idempotent producers' batches
    scans: dict[int, tuple[ScanResult, ProducerStateManager]]


def read_meta(directory: str) -> dict[str, int]:
    """recovery_point, log_start_offset, clean_shutdown; {} if missing or malformed."""
    meta: dict[str, int] = {}
    for row in read_entries(os.path.join(directory, META_FILE)) or ():
        try:
            meta[row[0]] = int(row[1])
        except (IndexError, ValueError):
            return {}
    return meta


def load_segments(directory: str, config: LogConfig,
                  new_segment: Callable[[int, bool], LogSegment],
                  fsync_enabled: bool) -> LoadedSegments:
    sweep_replacement_files(directory, fsync_enabled)
    meta = read_meta(directory)
    clean = meta.get("clean_shutdown") == 1
    recovery_point = meta.get("recovery_point", 0)
    log_start = meta.get("log_start_offset", 0)
    found = sorted(segment_bases(directory))
    bases = found or [log_start]
    segs: list[LogSegment] = []
    recovered: list[LogSegment] = []
    scans: dict[int, tuple[ScanResult, ProducerStateManager]] = {}
    prev_next: int | None = None
    cut = False
    for i, base in enumerate(bases):
        if cut:
            delete_segment_files(directory, base)
            continue
        if prev_next is not None and base < prev_next:
            log.error("segment %d overlaps the previous one ending at %d; cutting the rest",
                      base, prev_next)
            delete_segment_files(directory, base)
            cut = True
            continue
        seg = new_segment(base, i == len(bases) - 1)
        next_base = bases[i + 1] if i + 1 < len(bases) else None
        scan = not clean and (next_base is None or next_base > recovery_point)
        if scan or not seg.load_trusted():
            producers = ProducerStateManager(config.max_producer_batches)
            res = seg.recover(prev_next, recovery_point, producers)
            scans[base] = (res, producers)
            if res.corrupt_reason is not None or res.torn:
                cut = True
            elif (scan and next_base is not None and not config.compact
                  and seg.next_offset != next_base):
                # Past the recovery point nothing but follower replication of a compacted
                # log leaves gaps between segments; here a gap means lost data. (Before
                # it, a segment is only rescanned for its indexes, and a cleaned segment
                # may end before the next one starts.)
                log.error("segment %s ends at %d but the next starts at %d; cutting the rest",
                          seg.path, seg.next_offset, next_base)
                cut = True
            recovered.append(seg)
        segs.append(seg)
        prev_next = seg.next_offset
    if not segs[-1].active:
        segs[-1].make_active()
    for seg in recovered:
        seg.unflushed = True
        if fsync_enabled and (cut or seg is not segs[-1]):
            seg.flush()
    if fsync_enabled and cut:
        fsync_dir(directory)  # the segments deleted after the cut
    end = segs[-1].next_offset
    return LoadedSegments(segs, min(max(log_start, segs[0].base_offset), end), cut, clean,
                          recovery_point, meta, not found, scans)


def segment_bases(directory: str) -> list[int]:
    out = []
    for name in os.listdir(directory):
        if name.endswith(LOG_SUFFIX) and len(name) == 20 + len(LOG_SUFFIX):
            try:
                out.append(int(name[:20]))
            except ValueError:
                continue
    return out


def delete_segment_files(directory: str, base: int) -> None:
    for suffix in (LOG_SUFFIX, INDEX_SUFFIX, TIMEINDEX_SUFFIX):
        unlink_quietly(os.path.join(directory, segment_name(base) + suffix))


def sweep_replacement_files(directory: str, sync: bool = True) -> None:
    """Undo unfinished cleans and finish committed ones (see the module docstring); the
    folder is fsynced if anything was removed or renamed."""
    names = sorted(os.listdir(directory))
    changed = False
    for name in names:
        path = os.path.join(directory, name)
        if name.endswith((CLEANED_SUFFIX, DELETED_SUFFIX, ".tmp")):
            log.warning("removing leftover %s", path)
            os.unlink(path)
            changed = True
        elif name.endswith(LOG_SUFFIX + SWAP_SUFFIX):
            changed = True
            stem = path[: -len(LOG_SUFFIX + SWAP_SUFFIX)]
            log.warning("finishing interrupted segment swap %s", path)
            end = _read_end(stem + END_SUFFIX)
            if end is not None:  # a merge: the segments it replaced go too
                base = int(os.path.basename(stem))
                for other in names:
                    if (other.endswith(LOG_SUFFIX) and len(other) == 20 + len(LOG_SUFFIX)
                            and other[:20].isdigit() and base < int(other[:20]) < end):
                        for suffix in (INDEX_SUFFIX, TIMEINDEX_SUFFIX, LOG_SUFFIX):
                            unlink_quietly(os.path.join(directory, other[:20] + suffix))
            for suffix in (INDEX_SUFFIX, TIMEINDEX_SUFFIX):
                unlink_quietly(stem + suffix)
            os.replace(path, stem + LOG_SUFFIX)
            unlink_quietly(stem + END_SUFFIX)
    for name in names:  # an end file with no swap: a merge undone, or finished
        if name.endswith(END_SUFFIX):
            unlink_quietly(os.path.join(directory, name))
            changed = True
    if sync and changed:
        fsync_dir(directory)


def _read_end(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            return int(f.read().strip())
    except FileNotFoundError:
        return None
    except ValueError:  # written and fsynced before the commit point: cannot be torn
        raise LogError(f"unreadable merge end file {path}") from None


def unlink_quietly(path: str) -> None:
    """Delete `path` if it exists."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
