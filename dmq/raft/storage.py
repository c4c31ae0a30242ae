"""Durable Raft storage: the log file, the hard-state file and snapshot files.

`RaftStorage` is the protocol the driver uses; `FileStorage` keeps it on disk and
`MemoryStorage` in memory (for the simulator and unit tests). Storage never decides
anything about Raft: it stores what the core's `Ready` says, in the order the core's
contract gives, and gives it back after a restart.

Directory layout of `FileStorage`::

    raft.log                      entries, appended; rewritten only by compaction
    hardstate                     the current hard state, replaced atomically
    snapshot-<index 20 digits>.snap   newest valid one wins; older ones are removed
    *.tmp                         half-written replacements, swept on open

Log record (big-endian)::

    length u32 | crc u32 | payload (length bytes)
    payload = msgpack [term, index, kind, data]
    crc     = CRC-32C of payload

Recovery reads records from the start. A record that runs past the end of the file,
or a bad last record, is a torn write: the file is truncated before it, silently. A
bad record followed by more bytes is corruption in the middle: `CorruptStorageError`
is raised, because dropping acknowledged entries silently could break Raft's safety.
Records whose indexes are not contiguous are corruption too.

Hard-state and snapshot files are ``crc u32 | payload`` (payload msgpack
``[term, vote, commit]`` or ``[index, term, data]``), written to ``<name>.tmp``,
fsynced, renamed over the final name, then the directory is fsynced. So a hard state
is always either the old or the new one: term and vote are never lost.

Every `persist()` returns only after fsync: that is what lets the driver send the
messages of the same Ready afterwards.

The commit index in the stored hard state is a lower bound. A change of term or vote
is always written (and synced) before `persist()` returns; a change of the commit
index alone is written only once it has moved `commit_write_interval` entries (and on
`close()`), because each hard-state write costs three fsyncs and Raft needs no durable
commit index for safety: after a restart a node learns the commit index again from
the leader (or, alone, by committing its new term's no-op).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Sequence
from typing import Protocol

import crc32c
import msgpack  # type: ignore[import-untyped]

from dmq.log.checkpoint import fsync_dir
from dmq.raft.core import PersistentState
from dmq.raft.messages import EMPTY_HARD_STATE, MAX_WIRE_INT, Entry, HardState, Snapshot
from dmq.types import NodeId, RaftIndex, Term

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">II")
_CRC = struct.Struct(">I")
LOG_NAME = "raft.log"
HARD_STATE_NAME = "hardstate"


class CorruptStorageError(Exception):
    """Stored Raft state fails its checksum or structure in a way a crash cannot explain."""


class RaftStorage(Protocol):
    def load(self) -> PersistentState: ...

    def persist(
        self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None
    ) -> None:
        """Store a Ready durably: snapshot, then entries (truncating from the first
        one's index), then hard state. Returns after everything is synced."""
        ...

    def compact(self, snapshot: Snapshot) -> None:
        """Store a locally taken snapshot durably, then drop log entries it covers."""
        ...


def _apply_snapshot_to_entries(entries: list[Entry], snapshot: Snapshot) -> list[Entry]:
    """Entries kept after `snapshot`: the suffix if the log agrees with it, else none."""
    if not entries or entries[-1].index < snapshot.index:
        return []
    first = entries[0].index
    if snapshot.index < first:
        return entries if first == snapshot.index + 1 else []
    at = snapshot.index - first
    if entries[at].term != snapshot.term:
        return []
    return entries[at + 1 :]


def _must_write(new: HardState, stored: HardState, interval: int) -> bool:
    return (new.term != stored.term or new.vote != stored.vote
            or new.commit - stored.commit >= interval)


class MemoryStorage:
    """In-memory storage: everything persisted is "durable" until the object is dropped.
    `commit_write_interval` mimics FileStorage's lazy commit index (0: always stored)."""

    def __init__(self, commit_write_interval: int = 0) -> None:
        self.commit_write_interval = commit_write_interval
        self.hard_state = EMPTY_HARD_STATE
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []

    def load(self) -> PersistentState:
        return PersistentState(self.hard_state, self.snapshot, tuple(self.entries))

    def first_index(self) -> int:
        return self.snapshot.index + 1 if self.snapshot is not None else 1

    def last_index(self) -> int:
        if self.entries:
            return self.entries[-1].index
        return self.snapshot.index if self.snapshot is not None else 0

    def persist(
        self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None
    ) -> None:
        if snapshot is not None:
            self.entries = _apply_snapshot_to_entries(self.entries, snapshot)
            self.snapshot = snapshot
        if entries:
            self.append(entries)
        if hard_state is not None and _must_write(hard_state, self.hard_state,
                                                  self.commit_write_interval):
            self.hard_state = hard_state

    def append(self, entries: Sequence[Entry]) -> None:
        first = entries[0].index
        keep = first - self.first_index()
        assert 0 <= keep <= len(self.entries), "entries must continue the stored log"
        del self.entries[keep:]
        self.entries.extend(entries)

    def compact(self, snapshot: Snapshot) -> None:
        self.entries = _apply_snapshot_to_entries(self.entries, snapshot)
        self.snapshot = snapshot


def _write_atomically(directory: str, name: str, payload: bytes) -> None:
    tmp = os.path.join(directory, name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(_CRC.pack(crc32c.crc32c(payload)) + payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(directory, name))
    fsync_dir(directory)


def _read_checked(path: str) -> bytes:
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < _CRC.size or _CRC.unpack_from(raw)[0] != crc32c.crc32c(raw[_CRC.size :]):
        raise CorruptStorageError(f"{path}: checksum mismatch")
    return raw[_CRC.size :]


def encode_record(entry: Entry) -> bytes:
    payload: bytes = msgpack.packb(entry.to_wire(), use_bin_type=True)
    return _HEADER.pack(len(payload), crc32c.crc32c(payload)) + payload


class FileStorage:
    """Raft storage in one directory; see the module docstring for the format."""

    def __init__(self, directory: str, fsync: bool = True,
                 commit_write_interval: int = 1000) -> None:
        self.directory = directory
        self._fsync = fsync
        self.commit_write_interval = commit_write_interval
        os.makedirs(directory, exist_ok=True)
        for name in os.listdir(directory):
            if name.endswith(".tmp"):
                os.unlink(os.path.join(directory, name))
        self._log_path = os.path.join(directory, LOG_NAME)
        self.hard_state = self._load_hard_state()  # what is on disk
        self._latest_hard_state = self.hard_state  # may be ahead by its commit index
        self.snapshot = self._load_snapshot()
        entries, positions = self._recover_log()
        self.entries: list[Entry] = entries
        self._positions: list[int] = positions  # file offset of each entry's record
        created = not os.path.exists(self._log_path)
        self._log = open(self._log_path, "ab")
        if created:
            fsync_dir(directory)  # else synced appends could vanish with the file name
        if self.snapshot is not None:
            # A crash between writing a snapshot and rewriting the log leaves entries
            # the snapshot covers (or contradicts); drop them now.
            kept = _apply_snapshot_to_entries(self.entries, self.snapshot)
            if len(kept) != len(self.entries) or (kept and kept[0] is not self.entries[0]):
                self._rewrite_log(kept)

    def close(self) -> None:
        if self._latest_hard_state != self.hard_state:
            self._write_hard_state(self._latest_hard_state)
        self._log.close()

    # -- loading ------------------------------------------------------------------

    def _load_hard_state(self) -> HardState:
        path = os.path.join(self.directory, HARD_STATE_NAME)
        if not os.path.exists(path):
            return EMPTY_HARD_STATE
        term, vote, commit = msgpack.unpackb(_read_checked(path))
        if not all(type(v) is int and 0 <= v <= MAX_WIRE_INT for v in (term, vote, commit)):
            # older versions adopted any term a message carried (up to 2**64-1), from
            # which no election can follow: say so rather than fail on every campaign
            raise CorruptStorageError(
                f"{path}: hard state (term {term}, vote {vote}, commit {commit}) is out of "
                f"the range 0..2**63-1; this node cannot take part in elections with it")
        return HardState(Term(term), NodeId(vote), RaftIndex(commit))

    def _snapshot_names(self) -> list[str]:
        return sorted(n for n in os.listdir(self.directory)
                      if n.startswith("snapshot-") and n.endswith(".snap"))

    def _load_snapshot(self) -> Snapshot | None:
        for name in reversed(self._snapshot_names()):
            try:
                index, term, data = msgpack.unpackb(
                    _read_checked(os.path.join(self.directory, name)))
            except (CorruptStorageError, ValueError) as exc:
                log.error("ignoring unreadable raft snapshot %s: %s", name, exc)
                continue
            return Snapshot(RaftIndex(index), Term(term), data)
        return None

    def _recover_log(self) -> tuple[list[Entry], list[int]]:
        if not os.path.exists(self._log_path):
            return [], []
        with open(self._log_path, "rb") as f:
            raw = f.read()
        entries: list[Entry] = []
        positions: list[int] = []
        pos = 0
        size = len(raw)
        while pos < size:
            if pos + _HEADER.size > size:
                break  # torn header
            length, crc = _HEADER.unpack_from(raw, pos)
            end = pos + _HEADER.size + length
            if end > size:
                break  # torn payload
            payload = raw[pos + _HEADER.size : end]
            if crc32c.crc32c(payload) != crc:
                if end == size:
                    break  # the last record was half written
                raise CorruptStorageError(
                    f"{self._log_path}: CRC mismatch at byte {pos} with data after it")
            entry = Entry.from_wire(msgpack.unpackb(payload))
            if entries and entry.index != entries[-1].index + 1:
                raise CorruptStorageError(
                    f"{self._log_path}: index {entry.index} after {entries[-1].index}")
            entries.append(entry)
            positions.append(pos)
            pos = end
        if pos < size:
            log.info("truncating torn raft log tail at byte %d of %d", pos, size)
            with open(self._log_path, "r+b") as f:
                f.truncate(pos)
                f.flush()
                os.fsync(f.fileno())
        return entries, positions

    def load(self) -> PersistentState:
        return PersistentState(self.hard_state, self.snapshot, tuple(self.entries))

    # -- writing ------------------------------------------------------------------

    def _sync(self, f: int) -> None:
        if self._fsync:
            os.fsync(f)

    def persist(
        self, hard_state: HardState | None, entries: Sequence[Entry], snapshot: Snapshot | None
    ) -> None:
        if snapshot is not None:
            self._save_snapshot(snapshot)
            self._rewrite_log(_apply_snapshot_to_entries(self.entries, snapshot))
        if entries:
            self._append(entries)
        if hard_state is not None:
            self._latest_hard_state = hard_state
            if _must_write(hard_state, self.hard_state, self.commit_write_interval):
                self._write_hard_state(hard_state)

    def _write_hard_state(self, hard_state: HardState) -> None:
        _write_atomically(self.directory, HARD_STATE_NAME, msgpack.packb(
            [hard_state.term, hard_state.vote, hard_state.commit]))
        self.hard_state = hard_state

    def compact(self, snapshot: Snapshot) -> None:
        self._save_snapshot(snapshot)
        self._rewrite_log(_apply_snapshot_to_entries(self.entries, snapshot))

    def _first_index(self) -> int:
        if self.entries:
            return self.entries[0].index
        return self.snapshot.index + 1 if self.snapshot is not None else 1

    def _append(self, entries: Sequence[Entry]) -> None:
        keep = entries[0].index - self._first_index()
        assert 0 <= keep <= len(self.entries), "entries must continue the stored log"
        if keep < len(self.entries):
            self._log.flush()
            self._log.truncate(self._positions[keep])
            del self.entries[keep:]
            del self._positions[keep:]
        pos = self._log.seek(0, os.SEEK_END)
        chunks = []
        for entry in entries:
            record = encode_record(entry)
            self.entries.append(entry)
            self._positions.append(pos)
            pos += len(record)
            chunks.append(record)
        self._log.write(b"".join(chunks))
        self._log.flush()
        self._sync(self._log.fileno())

    def _save_snapshot(self, snapshot: Snapshot) -> None:
        name = f"snapshot-{snapshot.index:020d}.snap"
        _write_atomically(self.directory, name, msgpack.packb(
            [snapshot.index, snapshot.term, snapshot.data], use_bin_type=True))
        self.snapshot = snapshot
        for old in self._snapshot_names():
            if old != name:
                os.unlink(os.path.join(self.directory, old))

    def _rewrite_log(self, entries: list[Entry]) -> None:
        """Replace raft.log by `entries` through a temp file and an atomic rename."""
        tmp = self._log_path + ".tmp"
        positions = []
        pos = 0
        with open(tmp, "wb") as f:
            for entry in entries:
                record = encode_record(entry)
                positions.append(pos)
                pos += len(record)
                f.write(record)
            f.flush()
            self._sync(f.fileno())
        self._log.close()
        os.replace(tmp, self._log_path)
        fsync_dir(self.directory)
        self._log = open(self._log_path, "ab")
        self.entries = list(entries)
        self._positions = positions
