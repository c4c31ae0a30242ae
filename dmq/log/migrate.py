"""Record-format version of a partition folder, and the in-place migration of logs
written before the dmq-native mark.

Format 1 (no `log-format` file: every dmq before the mark): dmq-native batches with
attribute bit 7 clear and the old codec numbers in bits 0-2 (1 zstd, 2 lz4). Format 2
(`log-format` holds `record_format 2`): bit 7 (`ATTR_DMQ_NATIVE`) marks dmq-native
batches, an unmarked batch holds Kafka records, codecs use Kafka's numbers (3 lz4,
4 zstd). The version is per partition folder and is never guessed from batches: a
folder without the file is format 1, whatever its batches look like. A new folder
gets the file before its first append, so a format-2 log always has it.

`ensure_current_format` runs first thing when a `PartitionLog` opens, before recovery:

1. recovery's sweep of compaction files (`dmq.log.recovery.sweep_replacement_files`),
   so only final `.log` files are left (a `.swap` is finished into its `.log`,
   `.cleaned` deleted);
2. every batch of every segment, walked by its length fields, gets the mark set and
   its codec mapped (1 -> 4, 2 -> 3), and its CRC-32C recomputed (it covers the
   attributes): the 4 CRC bytes and the 2 attribute bytes are adjacent (positions
   17-22), so each batch is one 6-byte `pwrite`; records, sizes, offsets and
   positions do not move, so indexes stay valid; each segment is fsynced;
3. the `log-format` file is written (temp, fsync, rename, fsync folder).

Before recovery, because recovery checks CRCs: a power loss could tear one batch's
6-byte patch, and recovery would cut the log at that batch. Migration repairs such a
batch (its CRC matches the old attributes with the mark already set, or the new ones
with the mark not yet set) and stops at a torn tail (a batch running past the end of
the file), leaving it to recovery to cut. Rerunning is safe: no format-1 batch ever had
bit 7 set (it was reserved and checked to be zero), so a marked batch of an unfinished
migration is one already migrated and is skipped after a CRC check. A batch whose CRC
matches neither form is left as it is (logged): recovery cuts it where it scans, as
it would have before. An `OSError` leaves the log unopened (`LogStorageError` naming
the file) and the version unwritten: the next open resumes. One-way: a dmq from
before the mark cannot read a migrated folder.

Only partition logs hold record batches; Raft storage (`dmq.raft.storage`) keeps its
own entry framing and needs no migration.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from typing import NamedTuple

from crc32c import crc32c

from dmq.log.batch import (
    ATTR_CODEC_MASK,
    ATTR_DMQ_NATIVE,
    CRC_START,
    HEADER_SIZE,
    HEADER_STRUCT,
    LOG_OVERHEAD,
    MAGIC,
    MIN_BATCH_LENGTH,
)
from dmq.log.checkpoint import read_entries, write_entries
from dmq.log.codecs import CODEC_LZ4, CODEC_NONE, CODEC_ZSTD
from dmq.log.errors import LogStorageError
from dmq.log.recovery import segment_bases, sweep_replacement_files
from dmq.log.segment import LOG_SUFFIX, segment_name

log = logging.getLogger("dmq.log")

FORMAT_FILE = "log-format"
CURRENT_FORMAT = 2
# format-1 codec numbers -> Kafka's
OLD_TO_NEW_CODEC = {CODEC_NONE: CODEC_NONE, 1: CODEC_ZSTD, 2: CODEC_LZ4}
NEW_TO_OLD_CODEC = {v: k for k, v in OLD_TO_NEW_CODEC.items()}
_OLD_KNOWN_MASK = 0x3F  # format 1's attribute bits; bits 6 and up were zero
_CRC_POS = 17  # the crc field; the attributes follow it at CRC_START (21)
_PATCH = struct.Struct(">Ih")  # crc, attributes: bytes 17-22 of a batch
_ATTR = struct.Struct(">h")
_CHUNK = 1 << 20


class MigrationResult(NamedTuple):
    segments: int
    batches: int  # migrated by this run
    already: int  # found marked (an earlier, interrupted run)
    damaged: int  # CRC matches neither form: left as they are
    bytes: int
    seconds: float


def read_format(directory: str) -> int | None:
    """The folder's record format, or None without a `log-format` file (format 1).

    A file that exists but does not parse is refused: treating it as format 1 would
    mark Kafka batches as dmq-native."""
    path = os.path.join(directory, FORMAT_FILE)
    if not os.path.exists(path):
        return None
    rows = read_entries(path)
    try:
        version = dict((r[0], r[1]) for r in rows or ())["record_format"]
        return int(version)
    except (KeyError, IndexError, ValueError):
        raise LogStorageError(f"unreadable record format file {path}: refusing to open the "
                              f"log (restore the file; `record_format 2` if the folder was "
                              f"written by this dmq)") from None


def write_format(directory: str, sync: bool = True) -> None:
    write_entries(os.path.join(directory, FORMAT_FILE),
                  [("record_format", CURRENT_FORMAT)], sync)


def ensure_current_format(directory: str, sync: bool = True) -> MigrationResult | None:
    """Bring the folder to the current record format; the result if it had to (also
    for a new empty folder: zero batches), None if it already was."""
    version = read_format(directory)
    if version == CURRENT_FORMAT:
        return None
    if version is not None and version > CURRENT_FORMAT:
        raise LogStorageError(
            f"log {directory} has record format {version}, newer than this dmq's "
            f"{CURRENT_FORMAT}: it was written by a newer version")
    t0 = time.monotonic()
    try:
        bases = sorted(segment_bases(directory))
        if bases:  # (a new folder has nothing to sweep: a `.swap` comes with its `.log`)
            sweep_replacement_files(directory, sync)
            bases = sorted(segment_bases(directory))
    except OSError as exc:
        raise LogStorageError(f"cannot migrate log {directory} to record format "
                              f"{CURRENT_FORMAT}: {exc}") from exc
    batches = already = damaged = size = 0
    for base in bases:
        path = os.path.join(directory, segment_name(base) + LOG_SUFFIX)
        try:
            n, a, d, s = migrate_segment(path, sync)
        except OSError as exc:
            raise LogStorageError(
                f"cannot migrate segment {path} to record format {CURRENT_FORMAT}: {exc}; "
                f"the log stays unopened and is migrated on its next open") from exc
        batches += n
        already += a
        damaged += d
        size += s
    try:
        write_format(directory, sync)
    except OSError as exc:
        raise LogStorageError(f"cannot write {os.path.join(directory, FORMAT_FILE)}: "
                              f"{exc}; the log stays unopened") from exc
    res = MigrationResult(len(bases), batches, already, damaged, size,
                          time.monotonic() - t0)
    if batches or already or damaged:
        log.info("migrated log %s to record format %d: %d batches (%d already done, "
                 "%d damaged left as they are) in %d segments, %.1f MiB in %.0f ms",
                 directory, CURRENT_FORMAT, batches, already, damaged, len(bases),
                 size / 2**20, res.seconds * 1000)
    return res


def migrate_segment(path: str, sync: bool = True) -> tuple[int, int, int, int]:
    """Patch every batch of one `.log` file in place: (migrated, already marked,
    damaged, bytes walked). Stops at a torn tail (recovery cuts it)."""
    fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        migrated = already = damaged = 0
        buf = b""
        start = pos = 0
        unpack = HEADER_STRUCT.unpack_from
        while size - pos >= HEADER_SIZE:
            if pos + HEADER_SIZE > start + len(buf):
                buf, start = os.pread(fd, _CHUNK, pos), pos
            t = unpack(buf, pos - start)
            end = pos + t[1] + LOG_OVERHEAD
            if t[3] != MAGIC or t[1] < MIN_BATCH_LENGTH or end > size:
                break  # torn tail or damage: recovery's business
            if end > start + len(buf):
                buf, start = os.pread(fd, max(_CHUNK, end - pos), pos), pos
                if end > start + len(buf):
                    break
            patch = _patch(memoryview(buf)[pos - start + CRC_START + 2 : end - start],
                           t[4], t[5])
            if patch is None:
                damaged += 1
                log.warning("%s: batch at position %d (offset %d) fails its CRC in both "
                            "record formats; left as it is", path, pos, t[0])
            elif patch:
                os.pwrite(fd, patch, pos + _CRC_POS)
                migrated += 1
            else:
                already += 1
            pos = end
        if sync and migrated:
            os.fsync(fd)
        return migrated, already, damaged, pos
    finally:
        os.close(fd)


def new_attributes(old: int) -> int | None:
    """Format-1 attributes -> format 2; None if they cannot be format 1's."""
    codec = OLD_TO_NEW_CODEC.get(old & ATTR_CODEC_MASK)
    if codec is None or old & ~_OLD_KNOWN_MASK or old < 0:
        return None
    return (old & ~ATTR_CODEC_MASK) | codec | ATTR_DMQ_NATIVE


def old_attributes(new: int) -> int | None:
    """Format-2 dmq-native attributes -> format 1 (the inverse of `new_attributes`)."""
    codec = NEW_TO_OLD_CODEC.get(new & ATTR_CODEC_MASK)
    if codec is None or not new & ATTR_DMQ_NATIVE or new & ~(_OLD_KNOWN_MASK | ATTR_DMQ_NATIVE):
        return None
    return (new & ~(ATTR_CODEC_MASK | ATTR_DMQ_NATIVE)) | codec


def _crc(rest: memoryview, attributes: int) -> int:
    return crc32c(rest, crc32c(_ATTR.pack(attributes)))


def _patch(rest: memoryview, crc: int, attributes: int) -> bytes | None:
    """The 6 bytes (crc, attributes) to write at position 17, b"" if the batch is
    already migrated, None if its CRC matches neither form. `rest` is the batch after
    its attributes."""
    if attributes & ATTR_DMQ_NATIVE:
        if _crc(rest, attributes) == crc:
            return b""
        old = old_attributes(attributes)
        if old is not None and _crc(rest, old) == crc:  # torn patch: the CRC is missing
            return _PATCH.pack(_crc(rest, attributes), attributes)
        return None
    new = new_attributes(attributes)
    if new is None:
        return None
    new_crc = _crc(rest, new)
    if new_crc == crc or _crc(rest, attributes) == crc:  # == crc: torn, attributes missing
        return _PATCH.pack(new_crc, new)
    return None


__all__ = ["CURRENT_FORMAT", "FORMAT_FILE", "MigrationResult", "ensure_current_format",
           "migrate_segment", "read_format", "write_format"]
