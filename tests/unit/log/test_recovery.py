"""Crash and corruption: reopening always succeeds and holds exactly the valid prefix."""

from __future__ import annotations

import os
import random
import shutil

import pytest

from dmq.clock import ManualClock
from dmq.log import LogConfig, PartitionLog, validate_batches
from dmq.log.recovery import META_FILE
from tests.unit.log.helpers import batch, check_log_consistent, read_all

CFG = LogConfig(segment_bytes=2048, index_interval_bytes=100, segment_index_bytes=512)


def build(path: str, n: int, cfg: LogConfig = CFG) -> list[tuple[int, int, int]]:
    """A log of n batches, left as after a crash. Returns (base, last, size) per batch."""
    plog = PartitionLog.open(path, cfg, ManualClock(), fsync_enabled=False)
    out = []
    for i in range(n):
        info = plog.append_as_leader(batch(1 + i % 4, seed=i, value_size=10 + i % 50), 1)
        out.append((info.base_offset, info.last_offset, info.size_bytes))
    plog.abandon()
    return out


def reopen(path: str, cfg: LogConfig = CFG) -> PartitionLog:
    return PartitionLog.open(path, cfg, ManualClock(), fsync_enabled=False)


def expect_prefix(plog: PartitionLog, batches: list[tuple[int, int, int]], keep: int) -> None:
    check_log_consistent(plog)
    expected_end = batches[keep - 1][1] + 1 if keep else 0
    assert plog.log_end_offset == expected_end
    assert [o for o, _ in read_all(plog)] == list(range(expected_end))


def last_segment(path: str) -> str:
    return os.path.join(path, sorted(n for n in os.listdir(path) if n.endswith(".log"))[-1])


def test_cut_active_segment_at_every_byte_of_last_batch(tmp_path: object) -> None:
    src = os.path.join(str(tmp_path), "src")
    batches = build(src, 12)
    seg = last_segment(src)
    size = os.path.getsize(seg)
    last_size = batches[-1][2]
    for cut in range(size - last_size, size + 1):
        work = os.path.join(str(tmp_path), "w")
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work)
        os.truncate(os.path.join(work, os.path.basename(seg)), cut)
        plog = reopen(work)
        expect_prefix(plog, batches, len(batches) - (cut < size))
        # the log keeps working after recovery
        plog.append_as_leader(batch(1), 2)
        plog.close()


def test_cut_large_log_at_random_offsets(tmp_path: object) -> None:
    src = os.path.join(str(tmp_path), "src")
    batches = build(src, 150)
    rnd = random.Random(11)
    names = sorted(n for n in os.listdir(src) if n.endswith(".log"))
    for _ in range(15):
        work = os.path.join(str(tmp_path), "w")
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work)
        os.unlink(os.path.join(work, META_FILE))  # no recovery point: scan everything
        name = rnd.choice(names)
        path = os.path.join(work, name)
        cut = rnd.randrange(0, os.path.getsize(path) + 1)
        os.truncate(path, cut)
        base = int(name[:20])
        # valid prefix: every batch of earlier segments and those of this one ending <= cut
        keep, pos = 0, 0
        for i, (b, _, size) in enumerate(batches):
            if b < base:
                keep = i + 1
                continue
            if pos + size <= cut:
                pos += size
                keep = i + 1
            else:
                break
        plog = reopen(work)
        expect_prefix(plog, batches, keep)
        plog.close()


@pytest.mark.parametrize("seed", range(4))
def test_bit_flips_cut_at_the_flipped_batch(tmp_path: object, seed: int) -> None:
    src = os.path.join(str(tmp_path), "src")
    batches = build(src, 60)
    rnd = random.Random(seed)
    for _ in range(10):
        work = os.path.join(str(tmp_path), "w")
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(src, work)
        os.unlink(os.path.join(work, META_FILE))
        victim = rnd.randrange(len(batches))
        # find the victim's segment and position
        names = sorted(n for n in os.listdir(work) if n.endswith(".log"))
        seg_name = [n for n in names if int(n[:20]) <= batches[victim][0]][-1]
        pos = sum(s for b, _, s in batches if int(seg_name[:20]) <= b < batches[victim][0])
        size = batches[victim][2]
        # any byte but base_offset and partition_leader_epoch (outside the CRC by design)
        byte = rnd.choice([*range(8, 12), *range(16, size)])
        path = os.path.join(work, seg_name)
        with open(path, "r+b") as f:
            f.seek(pos + byte)
            old = f.read(1)[0]
            f.seek(pos + byte)
            f.write(bytes([old ^ (1 << rnd.randrange(8))]))
        plog = reopen(work)
        expect_prefix(plog, batches, victim)
        plog.close()


def test_bit_flip_in_active_segment_detected_with_checkpoint(tmp_path: object) -> None:
    path = str(tmp_path)
    batches = build(path, 30)
    seg = last_segment(path)
    with open(seg, "r+b") as f:
        f.seek(os.path.getsize(seg) - 3)
        b = f.read(1)[0]
        f.seek(os.path.getsize(seg) - 3)
        f.write(bytes([b ^ 0x10]))
    plog = reopen(path)
    expect_prefix(plog, batches, len(batches) - 1)
    plog.close()


@pytest.mark.parametrize("which", ["first", "active", "all"])
def test_deleted_or_garbage_index_is_rebuilt(tmp_path: object, which: str) -> None:
    path = str(tmp_path)
    plog = PartitionLog.open(path, CFG, ManualClock(), fsync_enabled=False)
    for i in range(80):
        plog.append_as_leader(batch(2, seed=i), 1)
    before = read_all(plog)
    plog.close()  # clean shutdown: nothing would be scanned without the damage
    idx = sorted(n for n in os.listdir(path) if n.endswith((".index", ".timeindex")))
    victims = {"first": idx[:2], "active": idx[-2:], "all": idx}[which]
    for n in victims:
        os.unlink(os.path.join(path, n))
    if which == "first":  # and garbage in another one
        with open(os.path.join(path, idx[2]), "wb") as f:
            f.write(b"\xff" * 24)
    plog = reopen(path)
    assert read_all(plog) == before
    check_log_consistent(plog)
    for seg in plog.segments:
        assert os.path.exists(seg.index_path) and os.path.exists(seg.timeindex_path)
    plog.close()


def test_rebuilt_index_keeps_nothing_of_the_damaged_file(tmp_path: object) -> None:
    """A damaged active index is rebuilt into a wiped file: stale entries past the
    rebuilt ones (which a later unclean open could take for real ones) are gone."""
    import struct

    path = str(tmp_path)
    plog = PartitionLog.open(path, CFG, ManualClock(), fsync_enabled=False)
    for i in range(6):
        plog.append_as_leader(batch(2, seed=i), 1)
    active = plog.segments[-1]
    plog.close()
    size = os.path.getsize(active.index_path)
    garbage = bytearray(max(size, 4096))
    struct.pack_into(">II", garbage, 0, 9, 9000)
    struct.pack_into(">II", garbage, 8, 1, 10)  # decreasing: fails the sanity check
    for k in range(2, len(garbage) // 8):
        struct.pack_into(">II", garbage, 8 * k, 100 + k, 100_000 + k)  # plausible entries
    with open(active.index_path, "wb") as f:
        f.write(garbage)
    plog = reopen(path)
    seg = plog.segments[-1]
    n = seg.index.entries
    seg.index.flush()
    with open(seg.index_path, "rb") as f:
        content = f.read()
    assert not any(content[8 * n :])
    check_log_consistent(plog)
    plog.close()


def test_overlapping_or_stray_files_are_handled(tmp_path: object) -> None:
    path = str(tmp_path)
    batches = build(path, 40)
    with open(os.path.join(path, "not-a-segment.log"), "wb") as f:
        f.write(b"x")
    with open(os.path.join(path, META_FILE), "wb") as f:
        f.write(b"garbage\n")
    plog = reopen(path)
    expect_prefix(plog, batches, len(batches))
    plog.close()


def test_reads_never_return_corrupt_batches_after_recovery(tmp_path: object) -> None:
    path = str(tmp_path)
    build(path, 50)
    seg = last_segment(path)
    with open(seg, "ab") as f:
        f.write(os.urandom(300))  # garbage after the last batch
    plog = reopen(path)
    off = plog.log_start_offset
    while off < plog.log_end_offset:
        data = plog.read(off, 333)
        off = validate_batches(data)[-1].next_offset
    plog.close()


def test_stale_index_of_a_deleted_segment_is_not_reused(tmp_path: object) -> None:
    path = str(tmp_path)
    plog = reopen(path)
    for i in range(40):
        plog.append_as_leader(batch(2, seed=i), 1)
    plog.close()
    bases = sorted(int(n[:20]) for n in os.listdir(path) if n.endswith(".log"))
    victim = bases[1]
    # a crash between unlinking a .log and its indexes leaves orphans behind
    os.unlink(os.path.join(path, f"{victim:020d}.log"))
    for n in sorted(os.listdir(path)):
        if n.endswith(".log") and int(n[:20]) > victim:
            os.unlink(os.path.join(path, n))
    plog = reopen(path)
    assert plog.log_end_offset == victim
    for i in range(40):  # re-creates a segment at the same base offset
        plog.append_as_leader(batch(3, seed=i, value_size=7), 2)
    check_log_consistent(plog)
    plog.close()
    plog = reopen(path)
    check_log_consistent(plog)
    assert len(read_all(plog)) == plog.log_end_offset
    plog.close()


def test_large_batches_recover_and_lower_max_message_bytes_cuts_nothing(
        tmp_path: object) -> None:
    path = str(tmp_path)
    big_cfg = LogConfig(max_message_bytes=4 << 20)
    plog = PartitionLog.open(path, big_cfg, ManualClock(), fsync_enabled=False)
    for i in range(3):
        plog.append_as_leader(batch(2, seed=i, value_size=1_500_000), 1)  # ~3 MB each
    plog.append_as_leader(batch(1), 1)
    plog.abandon()
    small = LogConfig(max_message_bytes=1000)
    plog = reopen(path, small)
    assert plog.log_end_offset == 7
    check_log_consistent(plog)
    plog.abandon()
    seg = last_segment(path)
    size = os.path.getsize(seg)
    with open(seg, "r+b") as f:  # flip a bit deep inside the third big batch
        f.seek(size - 200_000)
        b = f.read(1)[0]
        f.seek(size - 200_000)
        f.write(bytes([b ^ 4]))
    plog = reopen(path, small)
    assert plog.log_end_offset == 4
    check_log_consistent(plog)
    plog.close()
