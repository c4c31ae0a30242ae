"""Log compaction (`cleanup_policy=compact`) and the startup sweep of its files.

Owns rewriting closed segments so that only the newest record per key survives,
dropping tombstones (value None) older than `delete_retention_ms`, and the crash-safe
file replacement protocol:

1. write the cleaned segment to `<base>.log.cleaned` and fsync it;
2. rename it to `<base>.log.swap` (the commit point) and fsync the folder;
3. delete the old segment's `.index`/`.timeindex`, rename `.swap` over `.log`;
4. rebuild the indexes from the new file.

`sweep_replacement_files` runs on every open: it deletes `.cleaned`, `.deleted` and
`.tmp` leftovers (an unfinished clean loses nothing: the old segment is intact) and
finishes steps 3-4 for any `.swap` (complete by construction). The cleaner never
touches the active segment, keeps every offset (gaps are fine) and keeps keyless
records. This is the only place besides clients that decodes records.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from dmq.log.batch import (
    ATTR_TIMESTAMP_TYPE,
    LOG_OVERHEAD,
    BatchHeader,
    Record,
    decode_records,
    encode_batch,
)
from dmq.log.checkpoint import fsync_dir
from dmq.log.errors import LogClosedError, LogError
from dmq.log.segment import INDEX_SUFFIX, LOG_SUFFIX, TIMEINDEX_SUFFIX, LogSegment

if TYPE_CHECKING:
    from dmq.log.partition_log import PartitionLog

log = logging.getLogger("dmq.log")

CLEANED_SUFFIX = ".cleaned"
SWAP_SUFFIX = ".swap"
DELETED_SUFFIX = ".deleted"


class CleanResult(NamedTuple):
    segments_rewritten: int
    records_kept: int
    records_removed: int
    bytes_before: int
    bytes_after: int


def sweep_replacement_files(directory: str, sync: bool = True) -> None:
    """Undo unfinished cleans and finish committed ones (see the module docstring)."""
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if name.endswith((CLEANED_SUFFIX, DELETED_SUFFIX, ".tmp")):
            log.warning("removing leftover %s", path)
            os.unlink(path)
        elif name.endswith(LOG_SUFFIX + SWAP_SUFFIX):
            stem = path[: -len(LOG_SUFFIX + SWAP_SUFFIX)]
            log.warning("finishing interrupted segment swap %s", path)
            for suffix in (INDEX_SUFFIX, TIMEINDEX_SUFFIX):
                try:
                    os.unlink(stem + suffix)
                except FileNotFoundError:
                    pass
            os.replace(path, stem + LOG_SUFFIX)
    if sync:
        fsync_dir(directory)


def _segment_batches(seg: LogSegment) -> Iterator[tuple[BatchHeader, bytes]]:
    for h in seg.headers(0):
        size = h.batch_length + LOG_OVERHEAD
        data = seg.read(h.position, size)
        yield h._replace(position=0), data


def _record_ts(h: BatchHeader, r: Record) -> int:
    return h.max_timestamp if h.attributes & ATTR_TIMESTAMP_TYPE else r.timestamp


def clean_log(plog: PartitionLog, now_ms: int | None = None) -> CleanResult:
    """Compact the closed segments of `plog` in place. Holds the log's lock throughout."""
    cfg = plog.config
    with plog._lock:  # noqa: SLF001 - the cleaner is the log's friend
        plog._check_open()  # noqa: SLF001
        now = plog.clock.wall_ms() if now_ms is None else now_ms
        closed = plog.segments[:-1]
        cleanable: list[LogSegment] = []
        for seg in closed:  # respect min_compaction_lag_ms: a prefix of closed segments
            if seg.size_bytes and now - seg.max_timestamp < cfg.min_compaction_lag_ms:
                break
            cleanable.append(seg)
        if not cleanable:
            return CleanResult(0, 0, 0, 0, 0)
        signature = tuple((s.base_offset, s.size_bytes) for s in cleanable)
        last = plog.cleaner_state
        if last is not None and last[0] == signature and not last[1]:
            return CleanResult(0, 0, 0, 0, 0)  # nothing new closed, no tombstone pending
        latest: dict[Any, int] = {}
        for seg in cleanable:
            for h, data in _segment_batches(seg):
                for r in decode_records(data, h):
                    if r.key is not None:
                        latest[r.key] = r.offset
        horizon = now - cfg.delete_retention_ms
        kept_total = removed_total = before = after = rewritten = tombstones = 0
        done: list[LogSegment] = []
        for seg in cleanable:
            out: list[bytes] = []
            changed = False
            for h, data in _segment_batches(seg):
                records = decode_records(data, h)
                keep = [r for r in records if r.key is None or (
                    latest[r.key] == r.offset
                    and not (r.value is None and _record_ts(h, r) <= horizon))]
                kept_total += len(keep)
                removed_total += len(records) - len(keep)
                tombstones += sum(1 for r in keep if r.value is None)
                if len(keep) == len(records):
                    out.append(data)
                    continue
                changed = True
                out.extend(_rebatch(h, keep))
            before += seg.size_bytes
            if not changed:
                after += seg.size_bytes
                done.append(seg)
                continue
            new_seg = _swap_in(plog, seg, out)
            after += new_seg.size_bytes
            rewritten += 1
            done.append(new_seg)
        plog.cleaner_state = (tuple((s.base_offset, s.size_bytes) for s in done), tombstones)
        return CleanResult(rewritten, kept_total, removed_total, before, after)


class LogCleaner:
    """Owner of background compaction: one thread cleaning registered logs in turn.

    `run_once()` is the whole job (tests and callers with their own scheduler use it);
    `start()` runs it every `interval_ms` on a daemon thread until `stop()`. A failing
    log is logged and skipped, never fatal to the others. Each clean holds that log's
    lock, so appends to it wait while it runs.
    """

    def __init__(self, interval_ms: int = 15_000) -> None:
        self.interval_ms = interval_ms
        self._logs: dict[str, PartitionLog] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, plog: PartitionLog) -> None:
        with self._lock:
            self._logs[plog.directory] = plog

    def remove(self, plog: PartitionLog) -> None:
        with self._lock:
            self._logs.pop(plog.directory, None)

    def run_once(self, now_ms: int | None = None) -> dict[str, CleanResult]:
        with self._lock:
            logs = list(self._logs.values())
        out: dict[str, CleanResult] = {}
        for plog in logs:
            if self._stop.is_set():
                break
            try:
                res = plog.clean(now_ms)
            except LogClosedError:
                self.remove(plog)
                continue
            except Exception:  # one bad log must not stop the others
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

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

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
    return encode_batch(rows, run[0].offset, base_ts, max_ts, h.attributes, h.producer_id,
                        h.producer_epoch, seq, h.partition_leader_epoch)


def _swap_in(plog: PartitionLog, old: LogSegment, batches: list[bytes]) -> LogSegment:
    directory = plog.directory
    sync = plog.fsync_enabled
    log_path = old.path
    cleaned = log_path + CLEANED_SUFFIX
    swap = log_path + SWAP_SUFFIX
    fd = os.open(cleaned, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        if batches:
            os.writev(fd, batches)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(cleaned, swap)
    if sync:
        fsync_dir(directory)  # commit point: from here the sweep finishes the swap
    old.index.close()
    old.time_index.close()
    os.close(old.fd)
    old.fd = -1
    for p in (old.index_path, old.timeindex_path):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass
    os.replace(swap, log_path)
    if sync:
        fsync_dir(directory)
    cfg = plog.config
    new = LogSegment(directory, old.base_offset, cfg.segment_index_bytes,
                     cfg.index_interval_bytes, False, old.created_ms)
    res = new.recover(None)
    if res.corrupt_reason is not None or res.torn:  # we just wrote it: a bug or a bad disk
        raise LogError(f"cleaned segment {log_path} failed verification")
    plog.replace_segment(old, new)
    return new
