"""Small checkpoint files written atomically (temp file, fsync, rename, fsync dir).

Reads and writes the text format of the log's checkpoint files: the per-partition
`meta` checkpoint (recovery point, log start offset, clean-shutdown flag), the
leader-epoch file, and a generic `OffsetCheckpointFile` the broker may use for high
watermarks.
Format: a version line `0`, an entry-count line, then one entry per line with
space-separated fields (Kafka's format). Fields are printable ASCII without spaces:
`write_entries` refuses any other field (it would split or hide a row), and
`OffsetCheckpointFile` percent-escapes the names it stores (a legal topic name has
nothing to escape, so files stay readable both ways). A meta or epoch file that fails
to parse reads as absent, which makes the caller recover conservatively; the offset
checkpoint is read row by row (a bad row is skipped with a log line, the good rows are
kept). Reading never raises.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import quote, unquote

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


# A field as written: printable ASCII, no space (the separator), at least one char.
_FIELD_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F))
# What OffsetCheckpointFile leaves unescaped in a name: the field chars but '%'.
_NAME_SAFE = "".join(sorted(_FIELD_CHARS - {"%"}))


def _check_field(field: str, path: str) -> str:
    if not field or not _FIELD_CHARS.issuperset(field):
        raise ValueError(f"checkpoint {path}: field {field!r} is empty or has a space, a "
                         f"control or a non-ASCII character")
    return field


def write_entries(path: str, entries: Iterable[Sequence[object]], sync: bool = True) -> None:
    """Write rows of fields atomically; `ValueError` (nothing written) for a field that
    is not printable ASCII without spaces."""
    rows = [" ".join(_check_field(str(f), path) for f in e) for e in entries]
    text = f"{VERSION}\n{len(rows)}\n" + "".join(r + "\n" for r in rows)
    write_atomic(path, text.encode(), sync)


def _read_rows(path: str) -> tuple[int, list[list[str]]] | None:
    """(declared count, rows after the header), or None if unreadable or the header is bad."""
    try:
        with open(path, "rb") as f:
            lines = f.read().decode("ascii", "replace").split("\n")
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("unreadable checkpoint %s: %s", path, exc)
        return None
    try:
        if int(lines[0]) != VERSION:
            raise ValueError(f"version {lines[0]}")
        count = int(lines[1])
    except (ValueError, IndexError) as exc:
        log.warning("malformed checkpoint %s (%s); ignoring it", path, exc)
        return None
    return count, [line.split(" ") for line in lines[2:] if line]


def read_entries(path: str) -> list[list[str]] | None:
    """Entries of a checkpoint file, or None if it is missing or malformed (any row)."""
    got = _read_rows(path)
    if got is None:
        return None
    count, rows = got
    if len(rows) != count or any(not all(_FIELD_CHARS.issuperset(f) and f for f in r)
                                 for r in rows):
        log.warning("malformed checkpoint %s (%d rows, %d declared); ignoring it", path,
                    len(rows), count)
        return None
    return rows


class OffsetCheckpointFile:
    """A map of name -> offset persisted atomically (e.g. the broker's HW checkpoint)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, offsets: Mapping[str, int]) -> None:
        """Names are percent-escaped where they hold anything but printable ASCII
        without spaces or '%' (a legal topic name never does)."""
        write_entries(self.path, sorted((quote(name, safe=_NAME_SAFE), int(offset))
                                        for name, offset in offsets.items()))

    def read(self) -> dict[str, int]:
        """Row by row: a row that does not parse is skipped with a log line, the others
        are kept (one bad row must not cost every partition its checkpoint)."""
        got = _read_rows(self.path)
        if got is None:
            return {}
        count, rows = got
        if len(rows) != count:
            log.warning("checkpoint %s declares %d rows, holds %d; reading them one by one",
                        self.path, count, len(rows))
        out: dict[str, int] = {}
        for row in rows:
            try:
                if len(row) != 2 or not _FIELD_CHARS.issuperset(row[0]):
                    raise ValueError
                out[unquote(row[0], errors="strict")] = int(row[1])
            except ValueError:  # (UnicodeDecodeError is one)
                log.warning("skipping bad row %r in %s", " ".join(row), self.path)
        return out
