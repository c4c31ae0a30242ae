"""Partition folders written before the dmq-native mark (record format 1) are migrated in
place when a log opens (`dmq.log.migrate`): every record reads back identical, for
every codec and for compacted logs, after a crash at any point of the migration, with
the cleaner's leftovers and torn tails; a format-2 folder is never touched again."""

from __future__ import annotations

import errno
import os
import random
import shutil
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crc32c import crc32c

from dmq.clock import ManualClock
from dmq.log import LogConfig, PartitionLog, iter_records
from dmq.log import migrate as migrate_module
from dmq.log.batch import (
    ATTR_DMQ_NATIVE,
    BatchBuilder,
    Record,
    build_batch,
    decode_records,
    iter_headers,
    read_header,
)
from dmq.log.codecs import CODEC_LZ4, CODEC_NONE, CODEC_ZSTD, codec_available
from dmq.log.errors import CorruptRecordError, LogStorageError
from dmq.log.migrate import (
    CURRENT_FORMAT,
    FORMAT_FILE,
    ensure_current_format,
    read_format,
)
from tests.support.old_format import downgrade_folder, old_batch
from tests.unit.log.helpers import check_log_consistent

CODECS = [pytest.param(CODEC_NONE, id="none"),
          pytest.param(CODEC_ZSTD, id="zstd", marks=pytest.mark.skipif(
              not codec_available(CODEC_ZSTD), reason="zstandard not installed")),
          pytest.param(CODEC_LZ4, id="lz4", marks=pytest.mark.skipif(
              not codec_available(CODEC_LZ4), reason="lz4 not installed"))]
CFG = LogConfig(segment_bytes=4096, index_interval_bytes=256)
TS = 1_700_000_000_000

# What the encoder of record format 1 (dmq/log/batch.py before the mark) wrote for
# build_batch([(b"k1", b"v1"), (None, b"v2")], timestamp_ms=1_700_000_000_000).
PREVIOUS_ENCODER_BATCH = bytes.fromhex(
    "000000000000000000000045ffffffff02d9ca96110000000000010000018bcfe568000000018bcfe568"
    "00ffffffffffffffffffffffffffff00000002929400c4026b31c4027631909400c0c402763290")


# ---------------------------------------------------------------- format-1 helpers


def all_records(plog: PartitionLog) -> list[Record]:
    out: list[Record] = []
    offset = plog.log_start_offset
    while offset < plog.log_end_offset:
        data = plog.read(offset, 1 << 20)
        if not len(data):
            break
        recs = [r for r in iter_records(data) if r.offset >= offset]
        out.extend(recs)
        offset = recs[-1].offset + 1 if recs else read_header(data).next_offset
    return out


def build_log(path: str, codecs: list[int], batches: int = 60, compact: bool = False,
              close: bool = True) -> list[Record]:
    """A log of `batches` dmq-native batches cycling through `codecs` (headers, keyless
    records, tombstones, timestamps), closed; returns what it holds."""
    cfg = LogConfig(segment_bytes=4096, index_interval_bytes=256,
                    cleanup_policy="compact" if compact else "delete",
                    delete_retention_ms=10**12)
    plog = PartitionLog.open(path, cfg, ManualClock(), fsync_enabled=False)
    for i in range(batches):
        b = BatchBuilder(codecs[i % len(codecs)])
        for j in range(1 + i % 4):
            key = None if j == 3 else b"key-%d" % ((i * 3 + j) % 11)
            value = None if (i + j) % 13 == 5 and key is not None else b"value-%d-%d-" % (
                i, j) * (1 + i % 5)
            b.append(TS + i * 10 + j, key, value, [("h", b"%d" % i)] if j % 2 else None)
        plog.append_as_leader(b.seal(), 1 + i // 20)
    if compact:
        plog.clean(now_ms=TS, max_offset=plog.log_end_offset)
    expected = all_records(plog)
    if close:
        plog.close()
    else:
        plog.abandon()
    return expected


def open_log(path: str, compact: bool = False) -> PartitionLog:
    cfg = LogConfig(segment_bytes=4096, index_interval_bytes=256,
                    cleanup_policy="compact" if compact else "delete",
                    delete_retention_ms=10**12)
    return PartitionLog.open(path, cfg, ManualClock(), fsync_enabled=False)


def batch_attributes(path: str) -> list[int]:
    out = []
    for name in sorted(os.listdir(path)):
        if name.endswith(".log"):
            with open(os.path.join(path, name), "rb") as f:
                out.extend(h.attributes for h in iter_headers(f.read()))
    return out


# ---------------------------------------------------------------- the helpers are right

def test_downgraded_batch_is_what_the_previous_encoder_wrote() -> None:
    assert old_batch([(b"k1", b"v1"), (None, b"v2")], timestamp_ms=TS) == \
        PREVIOUS_ENCODER_BATCH


@pytest.mark.parametrize("codec,old", [(CODEC_ZSTD, 1), (CODEC_LZ4, 2)])
def test_downgraded_compressed_batch_has_the_previous_codec_numbers(codec: int,
                                                                    old: int) -> None:
    if not codec_available(codec):
        pytest.skip("codec not installed")
    new = build_batch([(b"k1", b"v1" * 40)], timestamp_ms=TS, codec=codec)
    b = old_batch([(b"k1", b"v1" * 40)], codec=codec, timestamp_ms=TS)
    assert read_header(b).attributes == old
    assert b[23:] == new[23:] and b[:17] == new[:17]


def test_previous_format_is_unreadable_without_migration() -> None:
    with pytest.raises(CorruptRecordError, match="dmq-native mark"):
        decode_records(PREVIOUS_ENCODER_BATCH)


# ---------------------------------------------------------------- migration at open

@pytest.mark.parametrize("compact", [False, True], ids=["delete", "compact"])
@pytest.mark.parametrize("codec", CODECS)
def test_old_log_is_migrated_at_open_and_reads_back_identical(tmp_path: Path, codec: int,
                                                             compact: bool) -> None:
    path = str(tmp_path / "t-0")
    expected = build_log(path, [codec], compact=compact)
    batches = downgrade_folder(path)
    assert not any(a & ATTR_DMQ_NATIVE for a in batch_attributes(path))
    index_files = {n: (tmp_path / "t-0" / n).read_bytes() for n in os.listdir(path)
                   if n.endswith((".index", ".timeindex"))}
    plog = open_log(path, compact)
    assert plog.migration is not None
    assert (plog.migration.batches, plog.migration.already, plog.migration.damaged) == (
        batches, 0, 0)
    assert read_format(path) == CURRENT_FORMAT
    assert all(a & ATTR_DMQ_NATIVE for a in batch_attributes(path))
    assert all_records(plog) == expected
    check_log_consistent(plog)
    if compact:  # the cleaner decodes migrated batches
        plog.clean(now_ms=TS, max_offset=plog.log_end_offset)
        assert all_records(plog) == expected
    plog.close()
    for name, data in index_files.items():  # offsets and positions did not move
        assert (tmp_path / "t-0" / name).read_bytes() == data
    plog = open_log(path, compact)
    assert plog.migration is None  # format 2: never walked again
    assert all_records(plog) == expected
    plog.close()


def test_mixed_codecs_unclean_shutdown(tmp_path: Path) -> None:
    codecs = [c.values[0] for c in CODECS if codec_available(c.values[0])]
    path = str(tmp_path / "t-0")
    expected = build_log(path, codecs, batches=90, close=False)
    downgrade_folder(path)
    plog = open_log(path)
    assert all_records(plog) == expected
    check_log_consistent(plog)
    plog.close()


def test_new_log_gets_the_current_format_and_kafka_batches_stay_untouched(
        tmp_path: Path) -> None:
    path = str(tmp_path / "t-0")
    plog = open_log(path)
    assert read_format(path) == CURRENT_FORMAT
    assert plog.migration is not None and plog.migration.batches == 0
    # an unmarked batch in a format-2 log is a Kafka batch: reopening never marks it
    plog.append_as_leader(old_batch([(b"k", b"v")]), 1)
    plog.close()
    before = (tmp_path / "t-0" / ("0" * 20 + ".log")).read_bytes()
    open_log(path).close()
    assert (tmp_path / "t-0" / ("0" * 20 + ".log")).read_bytes() == before


def test_unreadable_or_newer_format_file_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "t-0")
    build_log(path, [CODEC_NONE], batches=5)
    fmt = tmp_path / "t-0" / FORMAT_FILE
    fmt.write_text("garbage")
    with pytest.raises(LogStorageError, match="unreadable record format file"):
        open_log(path)
    fmt.write_text("0\n1\nrecord_format 3\n")
    with pytest.raises(LogStorageError, match="newer than this dmq"):
        open_log(path)


def test_cleaner_leftovers_are_swept_before_migration(tmp_path: Path) -> None:
    """A committed swap (`.log.swap`) in the previous format is finished into its `.log`
    first, then migrated; an uncommitted `.cleaned` is dropped."""
    path = str(tmp_path / "t-0")
    expected = build_log(path, [CODEC_NONE], batches=40)
    downgrade_folder(path)
    first = tmp_path / "t-0" / ("0" * 20 + ".log")
    shutil.copy(first, str(first) + ".swap")  # a single-segment rewrite, committed
    (tmp_path / "t-0" / ("0" * 20 + ".log.cleaned")).write_bytes(b"half-written")
    plog = open_log(path)
    assert all_records(plog) == expected
    assert not [n for n in os.listdir(path) if n.endswith((".swap", ".cleaned"))]
    check_log_consistent(plog)
    plog.close()


def test_torn_tail_is_left_to_recovery(tmp_path: Path) -> None:
    path = str(tmp_path / "t-0")
    expected = build_log(path, [CODEC_NONE], batches=30, close=False)
    downgrade_folder(path)
    last = sorted(n for n in os.listdir(path) if n.endswith(".log"))[-1]
    with open(os.path.join(path, last), "ab") as f:
        f.write(old_batch([(b"torn", b"x" * 100)])[:70])
    plog = open_log(path)
    assert all_records(plog) == expected
    assert plog.log_end_offset == expected[-1].offset + 1
    plog.close()


def test_torn_patches_are_repaired_and_damaged_batches_left(tmp_path: Path) -> None:
    """A power loss may land a batch's new attributes without its new CRC or the
    reverse: both are finished. A batch whose CRC matches neither is left as it is
    (recovery of the unclean log cuts it, as it would have without migration)."""
    path = str(tmp_path / "t-0")
    expected = build_log(path, [CODEC_NONE], batches=12, close=False)
    total = downgrade_folder(path)
    seg = tmp_path / "t-0" / ("0" * 20 + ".log")
    data = bytearray(seg.read_bytes())
    heads = list(iter_headers(data))
    assert len(heads) >= 4
    marked = bytearray(data[heads[0].position:heads[0].position + heads[0].size_bytes])
    marked[22] |= ATTR_DMQ_NATIVE  # attributes written, CRC not
    data[heads[0].position:heads[0].position + heads[0].size_bytes] = marked
    new = bytearray(data[heads[1].position:heads[1].position + heads[1].size_bytes])
    new[22] |= ATTR_DMQ_NATIVE
    new[17:21] = crc32c(bytes(new[21:])).to_bytes(4, "big")
    data[heads[1].position + 17:heads[1].position + 21] = new[17:21]  # CRC, no attributes
    data[heads[3].position + 70] ^= 0xFF  # damage in batch 3's records
    seg.write_bytes(data)
    res = ensure_current_format(path, sync=False)
    assert res is not None and res.damaged == 1
    assert res.batches == total - 1
    plog = open_log(path)
    assert all_records(plog) == [r for r in expected if r.offset < heads[3].base_offset]
    plog.close()


def test_io_error_leaves_the_log_unopened_and_the_next_open_finishes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(tmp_path / "t-0")
    expected = build_log(path, [CODEC_NONE], batches=40)
    downgrade_folder(path)
    real = os.pwrite
    calls = [0]

    def failing(fd: int, data: bytes, pos: int) -> int:
        calls[0] += 1
        if calls[0] == 7:
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, data, pos)

    monkeypatch.setattr(migrate_module.os, "pwrite", failing)
    with pytest.raises(LogStorageError, match=r"cannot migrate segment .*\.log to record "
                                              r"format 2: \[Errno 5\]"):
        open_log(path)
    assert read_format(path) is None  # never marked as new while half-migrated
    monkeypatch.setattr(migrate_module.os, "pwrite", real)
    plog = open_log(path)
    assert plog.migration is not None and plog.migration.already == 6
    assert all_records(plog) == expected
    plog.close()


# ---------------------------------------------------------------- crash at any point

_WRAPPED = ("pwrite", "fsync", "replace")


def _migrate_until(path: str, crash_at: int) -> None:
    """In a forked child: the migration with fsync on, exiting right before its
    `crash_at`-th pwrite/fsync/rename (the process dies, the page cache keeps what
    was written)."""
    count = [0]
    ns = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os) if not k.startswith("__")})
    for name in _WRAPPED:
        real = getattr(os, name)

        def wrapped(*args: Any, _real: Callable[..., Any] = real) -> Any:
            if count[0] == crash_at:
                os._exit(0)
            count[0] += 1
            return _real(*args)

        setattr(ns, name, wrapped)
    migrate_module.os = ns  # type: ignore[assignment]
    from dmq.log import checkpoint
    checkpoint.os = ns  # type: ignore[attr-defined]
    ensure_current_format(path, sync=True)
    os._exit(3)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_crash_at_random_points_of_the_migration_then_reopen(tmp_path: Path) -> None:
    src = str(tmp_path / "src")
    codecs = [c.values[0] for c in CODECS if codec_available(c.values[0])]
    expected = build_log(src, codecs, batches=50)
    total = downgrade_folder(src)
    ops = total + len([n for n in os.listdir(src) if n.endswith(".log")]) + 2
    seed = int(time.time())
    points = sorted({0, 1, total - 1, total, ops - 1, ops + 5,
                     *random.Random(seed).sample(range(ops), 10)})
    statuses = set()
    for crash_at in points:
        path = str(tmp_path / f"crash-{crash_at}")
        shutil.copytree(src, path)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            try:
                _migrate_until(path, crash_at)
            finally:
                os._exit(1)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) in (0, 3), (crash_at, seed)
        statuses.add(os.WEXITSTATUS(status))
        plog = open_log(path)
        assert all_records(plog) == expected, (crash_at, seed)
        assert all(a & ATTR_DMQ_NATIVE for a in batch_attributes(path)), (crash_at, seed)
        check_log_consistent(plog)
        plog.close()
    assert statuses == {0, 3}  # crashed midway, and ran to its end past the last point


# ---------------------------------------------------------------- rate

def migration_rate(root: str, total_mib: int = 100, batch_kib: int = 16,
                   cold: bool = False) -> str:
    """Build a `total_mib` format-1 log of `batch_kib` batches and time its migration
    (fsync on); `cold`: its pages dropped from the page cache first (as after a reboot).
    Run: .venv/bin/python -m tests.unit.log.test_format_migration"""
    path = os.path.join(root, f"bench-{int(cold)}")
    plog = PartitionLog.open(path, LogConfig(), ManualClock(), fsync_enabled=False)
    value = os.urandom(batch_kib * 1024 - 200)
    n = total_mib * 1024 // batch_kib
    for i in range(n):
        plog.append_as_leader(build_batch([(b"k%d" % i, value)], timestamp_ms=TS), 1)
    plog.close()
    downgrade_folder(path)
    os.sync()
    if cold:
        for name in os.listdir(path):
            fd = os.open(os.path.join(path, name), os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
    res = ensure_current_format(path, sync=True)
    assert res is not None and res.batches == n
    return (f"{'cold' if cold else 'warm'} page cache: {res.batches} batches, "
            f"{res.bytes / 2**20:.1f} MiB in {res.seconds:.2f} s: "
            f"{res.bytes / 2**20 / res.seconds:.0f} MiB/s, "
            f"{res.batches / res.seconds:.0f} batches/s")


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", ".")) as d:
        print(migration_rate(d))
        print(migration_rate(d, cold=True))
