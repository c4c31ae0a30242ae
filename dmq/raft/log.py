"""The core's in-memory view of its Raft log: a snapshot boundary plus entries after it.

It owns index arithmetic, term lookups, conflict-free appends and truncation, and the
bookkeeping of which suffix is not yet durable (`unstable_from`). It never does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from dmq.raft.messages import Entry, Snapshot
from dmq.types import RaftIndex, Term


class RaftLog:
    __slots__ = ("snap_index", "snap_term", "snapshot", "entries", "unstable_from")

    def __init__(self, snapshot: Snapshot | None, entries: Sequence[Entry]) -> None:
        self.snapshot = snapshot
        self.snap_index = snapshot.index if snapshot is not None else RaftIndex(0)
        self.snap_term = snapshot.term if snapshot is not None else Term(0)
        self.entries: list[Entry] = list(entries)
        for offset, entry in enumerate(self.entries):
            assert entry.index == self.snap_index + 1 + offset, "entries must be contiguous"
        # Entries with index >= unstable_from have not been handed to storage yet.
        self.unstable_from = self.last_index() + 1

    def last_index(self) -> int:
        return self.snap_index + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.snap_term

    def term_at(self, index: int) -> int | None:
        """Term of the entry at `index`; None if compacted away or past the end."""
        offset = index - self.snap_index
        if offset == 0:
            return self.snap_term
        if offset < 0 or offset > len(self.entries):
            return None
        return self.entries[offset - 1].term

    def slice(self, lo: int, hi: int, max_bytes: int) -> list[Entry]:
        """Entries lo..hi inclusive, at least one, stopping once max_bytes is passed."""
        start = lo - self.snap_index - 1
        assert start >= 0, "slice below the snapshot"
        out = self.entries[start : hi - self.snap_index]
        size = 0
        for i, entry in enumerate(out):
            size += len(entry.data) + 16
            if size > max_bytes and i > 0:
                return out[:i]
        return out

    def entries_from(self, index: int) -> list[Entry]:
        return self.entries[index - self.snap_index - 1 :]

    def append(self, entry: Entry) -> None:
        self.entries.append(entry)

    def merge(self, entries: Sequence[Entry], committed: int) -> None:
        """Append leader entries, truncating our suffix at the first conflicting term."""
        for k, entry in enumerate(entries):
            existing = self.term_at(entry.index)
            if existing is None and entry.index <= self.snap_index:
                continue  # covered by our snapshot, so committed and matching
            if existing != entry.term:
                assert entry.index > committed, "a leader asked to overwrite a committed entry"
                del self.entries[entry.index - self.snap_index - 1 :]
                self.entries.extend(entries[k:])
                self.unstable_from = min(self.unstable_from, entry.index)
                return

    def first_index_of_term_before(self, index: int, floor: int) -> int:
        """First index of the run of entries with the same term as `index`, not below floor+1."""
        term = self.term_at(index)
        while index - 1 > floor and self.term_at(index - 1) == term:
            index -= 1
        return index

    def last_index_of_term(self, term: int, below_or_at: int) -> int | None:
        index = min(below_or_at, self.last_index())
        while index >= self.snap_index:
            t = self.term_at(index)
            if t is None or t < term:
                return None
            if t == term:
                return index
            index -= 1
        return None

    def compact(self, snapshot: Snapshot) -> None:
        """Drop entries covered by a locally taken snapshot (they are applied)."""
        assert snapshot.index > self.snap_index
        assert self.term_at(snapshot.index) == snapshot.term
        del self.entries[: snapshot.index - self.snap_index]
        self.snapshot = snapshot
        self.snap_index = snapshot.index
        self.snap_term = snapshot.term

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        self.entries = []
        self.snapshot = snapshot
        self.snap_index = snapshot.index
        self.snap_term = snapshot.term
        self.unstable_from = snapshot.index + 1
