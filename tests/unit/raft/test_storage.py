"""Durable Raft storage: round trips, torn tails, CRC corruption, hard state, snapshots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dmq.raft.messages import Entry, EntryKind, HardState, Snapshot
from dmq.raft.storage import (
    HARD_STATE_NAME,
    LOG_NAME,
    CorruptStorageError,
    FileStorage,
    MemoryStorage,
    encode_record,
)
from dmq.types import NodeId, RaftIndex, Term


def entry(index: int, term: int, data: bytes = b"") -> Entry:
    return Entry(Term(term), RaftIndex(index), EntryKind.NORMAL, data or b"e%d" % index)


def hs(term: int, vote: int, commit: int) -> HardState:
    return HardState(Term(term), NodeId(vote), RaftIndex(commit))


def reopen(storage: FileStorage) -> FileStorage:
    storage.close()
    return FileStorage(storage.directory)


def test_round_trip(tmp_path: Path) -> None:
    s = FileStorage(str(tmp_path))
    assert s.load().hard_state == hs(0, 0, 0) and s.load().entries == ()
    s.persist(hs(3, 2, 4), [entry(i, 1) for i in range(1, 6)], None)
    s = reopen(s)
    state = s.load()
    assert state.hard_state == hs(3, 2, 4)
    assert state.entries == tuple(entry(i, 1) for i in range(1, 6))
    s.close()


def test_conflicting_append_truncates_the_suffix(tmp_path: Path) -> None:
    s = FileStorage(str(tmp_path))
    s.persist(None, [entry(i, 1) for i in range(1, 8)], None)
    s.persist(None, [entry(4, 2, b"new4"), entry(5, 2, b"new5")], None)
    s.persist(None, [entry(6, 2)], None)
    s = reopen(s)
    got = s.load().entries
    assert [(e.index, e.term) for e in got] == [(1, 1), (2, 1), (3, 1), (4, 2), (5, 2), (6, 2)]
    assert got[3].data == b"new4"
    s.close()


@pytest.mark.parametrize("cut", [1, 4, 7, 8, 9, 15])
def test_torn_tail_is_truncated_silently(tmp_path: Path, cut: int) -> None:
    s = FileStorage(str(tmp_path))
    s.persist(hs(1, 1, 0), [entry(i, 1) for i in range(1, 4)], None)
    s.close()
    path = tmp_path / LOG_NAME
    last = encode_record(entry(3, 1))
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size - len(last) + min(cut, len(last) - 1))
    s = FileStorage(str(tmp_path))
    assert [e.index for e in s.load().entries] == [1, 2]
    assert path.stat().st_size == size - len(last)  # the torn bytes are gone
    s.persist(None, [entry(3, 2)], None)  # and appending goes on from there
    s = reopen(s)
    assert [(e.index, e.term) for e in s.load().entries] == [(1, 1), (2, 1), (3, 2)]
    s.close()


def test_garbage_last_record_is_a_torn_write(tmp_path: Path) -> None:
    s = FileStorage(str(tmp_path))
    s.persist(None, [entry(i, 1) for i in range(1, 4)], None)
    s.close()
    path = tmp_path / LOG_NAME
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # last record's payload half-written
    path.write_bytes(bytes(data))
    s = FileStorage(str(tmp_path))
    assert [e.index for e in s.load().entries] == [1, 2]
    s.close()


def test_crc_corruption_in_the_middle_is_detected(tmp_path: Path) -> None:
    s = FileStorage(str(tmp_path))
    s.persist(None, [entry(i, 1, b"payload-%d" % i) for i in range(1, 6)], None)
    s.close()
    path = tmp_path / LOG_NAME
    data = bytearray(path.read_bytes())
    data[len(encode_record(entry(1, 1, b"payload-1"))) + 12] ^= 0x01  # inside record 2
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptStorageError, match="CRC"):
        FileStorage(str(tmp_path))


def test_hard_state_is_replaced_atomically_and_never_lost(tmp_path: Path) -> None:
    s = FileStorage(str(tmp_path))
    s.persist(hs(5, 3, 0), [], None)
    s.close()
    # A crash in the middle of the next write leaves a half-written temp file.
    (tmp_path / (HARD_STATE_NAME + ".tmp")).write_bytes(b"\x00\x01garbage")
    s = FileStorage(str(tmp_path))
    assert s.load().hard_state == hs(5, 3, 0)
    assert not (tmp_path / (HARD_STATE_NAME + ".tmp")).exists()  # swept
    s.persist(hs(6, 0, 0), [], None)
    s = reopen(s)
    assert s.load().hard_state == hs(6, 0, 0)
    s.close()


def test_corrupt_hard_state_is_an_error_not_a_reset(tmp_path: Path) -> None:
    s = FileStorage(str(tmp_path))
    s.persist(hs(5, 3, 0), [], None)
    s.close()
    path = tmp_path / HARD_STATE_NAME
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptStorageError):
        FileStorage(str(tmp_path))


def test_compaction_keeps_the_suffix(tmp_path: Path) -> None:
    s = FileStorage(str(tmp_path))
    s.persist(hs(2, 1, 8), [entry(i, 1 if i < 5 else 2) for i in range(1, 10)], None)
    s.compact(Snapshot(RaftIndex(6), Term(2), b"image"))
    s.persist(None, [entry(10, 2)], None)
    s = reopen(s)
    state = s.load()
    assert state.snapshot == Snapshot(RaftIndex(6), Term(2), b"image")
    assert [e.index for e in state.entries] == [7, 8, 9, 10]
    assert len([n for n in os.listdir(tmp_path) if n.endswith(".snap")]) == 1
    s.close()


def test_installed_snapshot_replaces_a_conflicting_log(tmp_path: Path) -> None:
    s = FileStorage(str(tmp_path))
    s.persist(None, [entry(i, 1) for i in range(1, 5)], None)
    s.persist(hs(3, 0, 20), [], Snapshot(RaftIndex(20), Term(3), b"leader image"))
    s.persist(None, [entry(21, 3)], None)
    s = reopen(s)
    state = s.load()
    assert state.snapshot is not None and state.snapshot.index == 20
    assert [e.index for e in state.entries] == [21]
    s.close()


def test_crash_between_snapshot_and_log_rewrite(tmp_path: Path) -> None:
    s = FileStorage(str(tmp_path))
    s.persist(None, [entry(i, 1) for i in range(1, 5)], None)
    s.close()
    # Write the snapshot file exactly as storage does, but "crash" before the log rewrite.
    s2 = FileStorage(str(tmp_path / "other"))
    s2.compact(Snapshot(RaftIndex(9), Term(4), b"img"))
    s2.close()
    snap_name = next(n for n in os.listdir(tmp_path / "other") if n.endswith(".snap"))
    os.replace(tmp_path / "other" / snap_name, tmp_path / snap_name)
    s = FileStorage(str(tmp_path))
    state = s.load()
    assert state.snapshot is not None and state.snapshot.index == 9
    assert state.entries == ()  # entries 1..4 are covered by the snapshot
    s.close()


def test_memory_storage_matches_the_contract() -> None:
    m = MemoryStorage()
    m.persist(hs(1, 1, 0), [entry(i, 1) for i in range(1, 6)], None)
    m.persist(None, [entry(3, 2)], None)
    assert [(e.index, e.term) for e in m.load().entries] == [(1, 1), (2, 1), (3, 2)]
    m.compact(Snapshot(RaftIndex(2), Term(1), b"s"))
    assert [e.index for e in m.load().entries] == [3]
    m.persist(None, [], Snapshot(RaftIndex(10), Term(5), b"t"))
    assert m.load().entries == () and m.last_index() == 10


def test_full_cluster_restart_keeps_committed_entries(tmp_path: Path) -> None:
    # The failure that other Python Raft libraries had: commit, stop every node, restart.
    from tests.unit.raft.harness import Cluster

    c = Cluster(3)
    for node in c.ids:
        c.storage[node] = FileStorage(str(tmp_path / str(node)))  # type: ignore[assignment]
        c.start(node)
    leader = c.elect(NodeId(1))
    _, index = leader.propose(b"precious")
    c.settle()
    assert leader.commit >= index
    term = leader.term
    for node in c.ids:
        c.storage[node].close()  # type: ignore[attr-defined]
        c.storage[node] = FileStorage(str(tmp_path / str(node)))  # type: ignore[assignment]
        restarted = c.start(node)
        assert restarted.term == term
        assert restarted.log.term_at(index) == term
        c.applied[node] = []
    c.tick(40)
    new = c.leader()
    assert new is not None and new.term > term
    for node in c.ids:
        assert b"precious" in [e.data for e in c.applied[node]]
        c.storage[node].close()  # type: ignore[attr-defined]


def test_commit_alone_is_written_lazily_but_term_and_vote_at_once(tmp_path: Path) -> None:
    s = FileStorage(str(tmp_path), commit_write_interval=10)
    s.persist(hs(2, 1, 0), [entry(i, 2) for i in range(1, 30)], None)
    s.persist(hs(2, 1, 5), [], None)  # commit moved by 5 < 10: not written yet
    s.persist(hs(3, 0, 6), [], None)  # a new term: written at once, with the commit
    s.persist(hs(3, 0, 9), [], None)
    s2 = FileStorage(str(tmp_path))  # what a crash right now would find
    assert s2.load().hard_state == hs(3, 0, 6)
    s2.close()
    s.persist(hs(3, 0, 16), [], None)  # moved by 10: written
    assert FileStorage(str(tmp_path)).load().hard_state == hs(3, 0, 16)
    s.persist(hs(3, 0, 17), [], None)
    s.close()  # a clean close writes the latest
    assert FileStorage(str(tmp_path)).load().hard_state == hs(3, 0, 17)


def test_a_stored_term_past_64_bits_is_a_clear_error(tmp_path: Path) -> None:
    # issue #25 item 1: older versions adopted and stored term 2**64-1 from a forged
    # message; such a node could never campaign again (2**64 does not fit the wire)
    s = FileStorage(str(tmp_path))
    s.persist(hs(2**64 - 1, 0, 0), [], None)
    s.close()
    with pytest.raises(CorruptStorageError, match=r"out of the range 0\.\.2\*\*63-1"):
        FileStorage(str(tmp_path))
