"""The one-pass recovery scan (`LogSegment.recover`): what it keeps and what it collects
for the log (index, leader-epoch rises, idempotent producers) is what separate walks of
the recovered headers give, also where batches straddle the scan's reads."""

from __future__ import annotations

import os
import random
import shutil
import struct

import pytest

import dmq.log.index as index_module
import dmq.log.segment as segment
from dmq.clock import ManualClock
from dmq.log import LogConfig, PartitionLog, validate_batches
from dmq.log.batch import build_batch
from dmq.log.producer_state import ProducerStateManager
from dmq.log.recovery import META_FILE
from tests.unit.log.helpers import batch, check_log_consistent, read_all

CFG = LogConfig(segment_bytes=4096, index_interval_bytes=100, segment_index_bytes=512)


def reopen(path: str, cfg: LogConfig = CFG) -> PartitionLog:
    return PartitionLog.open(path, cfg, ManualClock(), fsync_enabled=False)


def producer_snapshot(state: ProducerStateManager) -> dict[int, tuple[int, list[tuple[int, ...]]]]:
    out = {}
    for pid in range(-1, 64):
        e = state.entry(pid)
        if e is not None:
            out[pid] = (e.epoch, [tuple(b) for b in e.batches])
    return out


def walked_state(plog: PartitionLog) -> tuple[dict[int, tuple[int, list[tuple[int, ...]]]],
                                              list[tuple[int, int]]]:
    """Producer state and leader epochs as separate walks of every header give them."""
    state = ProducerStateManager(plog.config.max_producer_batches)
    state.rebuild(h for seg in plog.segments for h in seg.headers(0))
    epochs: list[tuple[int, int]] = []
    for seg in plog.segments:
        for h in seg.headers(0):
            if not epochs or h.partition_leader_epoch > epochs[-1][0]:
                epochs.append((h.partition_leader_epoch, h.base_offset))
    return producer_snapshot(state), epochs


def build_mixed(path: str, n: int, seed: int, flush_at: int | None = None) -> None:
    """Idempotent and plain batches of several producers (epoch bumps included) under
    rising leader epochs, left as after a crash (optionally flushed at batch `flush_at`)."""
    rnd = random.Random(seed)
    plog = PartitionLog.open(path, CFG, ManualClock(), fsync_enabled=False)
    seqs: dict[tuple[int, int], int] = {}
    pepochs = {pid: 0 for pid in range(1, 5)}
    leader_epoch = 1
    for i in range(n):
        if rnd.random() < 0.05:
            leader_epoch += 1
        count = rnd.randint(1, 4)
        pid = rnd.choice([-1, 1, 2, 3, 4])
        if pid < 0:
            buf = batch(count, seed=i, value_size=rnd.randint(5, 60))
        else:
            if rnd.random() < 0.05:
                pepochs[pid] += 1
            key = (pid, pepochs[pid])
            seq = seqs.get(key, 0)
            seqs[key] = seq + count
            buf = build_batch([(b"k", bytes(rnd.randint(5, 60)))] * count,
                              timestamp_ms=1_700_000_000_000 + i, producer_id=pid,
                              producer_epoch=pepochs[pid], base_sequence=seq)
        plog.append_as_leader(buf, leader_epoch)
        if flush_at is not None and i == flush_at:
            plog.flush()
    assert plog.segment_count > 3
    plog.abandon()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("meta", ["kept", "deleted", "flushed"])
def test_unclean_open_collects_what_header_walks_give(tmp_path: object, seed: int,
                                                     meta: str) -> None:
    path = str(tmp_path)
    build_mixed(path, 200, seed, flush_at=120 if meta == "flushed" else None)
    if meta == "deleted":  # no recovery point: every segment is scanned
        os.unlink(os.path.join(path, META_FILE))
    plog = reopen(path)
    check_log_consistent(plog)
    producers, epochs = walked_state(plog)
    assert producer_snapshot(plog.producer_state) == producers
    assert plog.epoch_cache.entries == epochs
    plog.close()


def test_producer_state_merge_equals_updates_in_order() -> None:
    rnd = random.Random(5)
    for _ in range(300):
        batches = [(rnd.choice([1, 2, 3]), rnd.randint(0, 3), rnd.randint(0, 50))
                   for _ in range(rnd.randint(0, 40))]
        cut = rnd.randint(0, len(batches))
        whole = ProducerStateManager(3)
        first, later = ProducerStateManager(3), ProducerStateManager(3)
        for i, (pid, epoch, seq) in enumerate(batches):
            args = (pid, epoch, seq, seq, i, i, i)
            whole.update(*args)
            (first if i < cut else later).update(*args)
        first.merge(later)
        assert producer_snapshot(first) == producer_snapshot(whole)


# Reads far smaller than batches and segments: batches straddle every read boundary.
@pytest.mark.parametrize("chunk", [61, 97, 256, 1000])
def test_scan_reads_of_any_size_cut_exactly_after_the_last_valid_batch(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    monkeypatch.setattr(segment, "_SCAN_CHUNK_BYTES", chunk)
    src = os.path.join(str(tmp_path), "src")
    plog = PartitionLog.open(src, CFG, ManualClock(), fsync_enabled=False)
    for i in range(60):  # some batches larger than a read
        plog.append_as_leader(batch(1 + i % 4, seed=i, value_size=10 + (i * 37) % 300), 1)
    plog.abandon()
    names = sorted(n for n in os.listdir(src) if n.endswith(".log"))
    rnd = random.Random(chunk)
    for trial in range(12):
        work = os.path.join(str(tmp_path), f"w{trial}")
        shutil.copytree(src, work)
        os.unlink(os.path.join(work, META_FILE))  # no recovery point: scan every segment
        name = rnd.choice(names)
        seg_path = os.path.join(work, name)
        with open(seg_path, "rb") as f:
            headers = validate_batches(f.read())
        if trial % 2:  # a torn tail
            cut = rnd.randrange(0, os.path.getsize(seg_path) + 1)
            os.truncate(seg_path, cut)
            kept = [h for h in headers if h.position + h.size_bytes <= cut]
        else:  # a flipped bit inside the CRC'd part of one batch
            h = rnd.choice(headers)
            byte = h.position + rnd.randrange(21, h.size_bytes)
            with open(seg_path, "r+b") as f:
                f.seek(byte)
                old = f.read(1)[0]
                f.seek(byte)
                f.write(bytes([old ^ 0x04]))
            kept = [k for k in headers if k.position < h.position]
        expected_end = kept[-1].next_offset if kept else int(name[:20])
        log = reopen(work)
        check_log_consistent(log)
        assert log.log_end_offset == expected_end
        assert [o for o, _ in read_all(log)] == list(range(expected_end))
        log.close()


def _mapped(path: str) -> bool:
    with open("/proc/self/maps") as f:
        return any(line.rstrip("\n").endswith(" " + path) for line in f)


@pytest.mark.parametrize("then", ["flush", "append", "crash", "close"])
def test_an_unclean_open_maps_no_index_until_an_entry_needs_it(tmp_path: object,
                                                              then: str) -> None:
    """Opening a log after a crash rebuilds its active indexes in memory and neither
    writes nor maps their files (a write into pages under writeback, an allocation and a
    mapping per file, for thousands of logs); a sync empties the file and writes the
    entries with a pwrite, the append path does so and maps the file when it adds an
    entry; nothing of the old entries is left past the new ones then, and whatever
    comes next the files agree with the log."""
    path = os.path.realpath(str(tmp_path))
    if not index_module._overwrites_in_place(path):
        pytest.skip("indexes on this file system are never mapped")
    cfg = LogConfig(segment_bytes=1 << 20, index_interval_bytes=100)
    plog = PartitionLog.open(path, cfg, ManualClock(), fsync_enabled=False)
    for i in range(40):
        plog.append_as_leader(batch(2, seed=i), 1)
    plog.abandon()
    index_path = os.path.join(path, "00000000000000000000.index")
    with open(index_path, "r+b") as f:  # entries past the ones a rebuild gives
        old = f.read()
        f.seek(len(old))
        f.write(b"".join(struct.pack(">II", 10_000 + k, 100_000 + k) for k in range(50)))
        f.seek(0)
        before = f.read()
    plog = PartitionLog.open(path, cfg, ManualClock(), fsync_enabled=then == "flush")
    seg = plog.segments[-1]
    entries = seg.index.entries
    assert entries > 5 and seg.time_index.entries > 0
    assert not _mapped(seg.index.path) and not _mapped(seg.timeindex_path)
    with open(index_path, "rb") as f:
        assert f.read() == before  # not written by the open
    if then == "flush":
        plog.flush()  # the sync writes them without a mapping
        assert not _mapped(seg.index.path)
        assert os.path.getsize(seg.index.path) >= entries * 8
        again = index_module.OffsetIndex(seg.index.path, 0, 1 << 20, False)
        assert again.load() and again.entries == entries
        again.close()
    elif then == "append":
        while seg.index.entries == entries:
            plog.append_as_leader(batch(2), 1)
        assert _mapped(seg.index.path)
        again = index_module.OffsetIndex(seg.index.path, 0, 1 << 20, False)
        assert again.load() and again.entries == entries + 1  # all stored, old and new
        again.close()
    if then in ("flush", "append"):
        with open(index_path, "rb") as f:
            assert not any(f.read()[8 * seg.index.entries:])  # no stale entry left
    elif then == "crash":
        plog.append_as_leader(batch(2), 1)
    end = plog.log_end_offset
    if then == "close":
        plog.close()
    else:
        plog.abandon()
    reopened = PartitionLog.open(path, cfg, ManualClock(), fsync_enabled=False)
    check_log_consistent(reopened)
    assert reopened.log_end_offset == end
    assert [o for o, _ in read_all(reopened)] == list(range(end))
    reopened.close()


def test_a_producer_batch_without_a_sequence_recovers_as_a_header_walk_gives_it(
        tmp_path: object) -> None:
    """A batch naming a producer id but no base sequence (-1): its last sequence is
    none (-1) after an unclean open too, as BatchHeader.last_sequence has it (the scan
    computed 0x7FFFFFFF, so the recovered state differed from a clean open's)."""
    path = str(tmp_path)
    plog = PartitionLog.open(path, CFG, ManualClock(), fsync_enabled=False)
    plog.append_as_leader(build_batch([(b"k", b"v")] * 3, timestamp_ms=1_700_000_000_000,
                                      producer_id=9, producer_epoch=0, base_sequence=-1), 1)
    plog.append_as_leader(batch(2, seed=1), 1)
    plog.abandon()
    plog = reopen(path)
    producers, _ = walked_state(plog)
    assert producer_snapshot(plog.producer_state) == producers
    assert producers[9][1][0][1] == -1  # (first_seq, last_seq, ...): no sequence
    plog.close()
