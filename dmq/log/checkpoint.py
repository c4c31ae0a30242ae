"""Small checkpoint files written atomically (temp file, fsync, rename, fsync dir).

Owns the text format of the log's checkpoint files: the per-partition `meta`
checkpoint (recovery point, log start offset, clean-shutdown flag), the leader-epoch
file, and a generic `OffsetCheckpointFile` the broker may use for high watermarks.
Format: a version line `0`, an entry-count line, then one entry per line with
space-separated fields (Kafka's format). A file that fails to parse reads as absent,
which makes the caller recover conservatively; it never raises.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence

log = logging.getLogger("dmq.log")
VERSION = 0


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, sync: bool = True) -> None:
    """Replace `path` with `data` atomically; `sync=False` skips the fsyncs (tests only)."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync:
        fsync_dir(os.path.dirname(path) or ".")


def write_entries(path: str, entries: Iterable[Sequence[object]], sync: bool = True) -> None:
    rows = [" ".join(str(f) for f in e) for e in entries]
    text = f"{VERSION}\n{len(rows)}\n" + "".join(r + "\n" for r in rows)
    write_atomic(path, text.encode(), sync)


def read_entries(path: str) -> list[list[str]] | None:
    """Entries of a checkpoint file, or None if it is missing or malformed."""
    try:
        with open(path, encoding="ascii") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("unreadable checkpoint %s: %s", path, exc)
        return None
    try:
        if int(lines[0]) != VERSION:
            raise ValueError(f"version {lines[0]}")
        count = int(lines[1])
        rows = [line.split() for line in lines[2 : 2 + count]]
        if len(rows) != count or any(not r for r in rows):
            raise ValueError("short file")
        return rows
    except (ValueError, IndexError) as exc:
        log.warning("malformed checkpoint %s (%s); ignoring it", path, exc)
        return None


class OffsetCheckpointFile:
    """A map of name -> offset persisted atomically (e.g. the broker's HW checkpoint)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, offsets: Mapping[str, int]) -> None:
        write_entries(self.path, sorted(offsets.items()))

    def read(self) -> dict[str, int]:
        rows = read_entries(self.path)
        out: dict[str, int] = {}
        for row in rows or ():
            try:
                out[row[0]] = int(row[1])
            except (IndexError, ValueError):
                log.warning("bad row %r in %s", row, self.path)
                return {}
        return out
