from __future__ import annotations

import errno
import os

import pytest

import dmq.log.index as index_module
from dmq.log.index import OffsetIndex, TimeIndex, _in_place_devices, _overwrites_in_place


def test_offset_index_lookup_trim_reload(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "x.index")
    idx = OffsetIndex(path, 100, 1024, True)
    assert idx.capacity_entries == 128
    assert idx.lookup(150) == (100, 0)
    for i in range(1, 11):
        idx.append(100 + i * 10, i * 1000)
    idx.append(150, 99999)  # out of order: ignored
    assert idx.lookup(99) == (100, 0)
    assert idx.lookup(110) == (110, 1000)
    assert idx.lookup(119) == (110, 1000)
    assert idx.lookup(10**9) == (200, 10000)
    assert idx.floor_by_position(4500) == (140, 4000)
    idx.truncate_to(150)
    assert idx.entries == 4 and idx.lookup(10**9) == (140, 4000)
    idx.trim()
    assert os.path.getsize(path) == 4 * 8
    idx.close()
    again = OffsetIndex(path, 100, 1024, False)
    assert again.load() and again.entries == 4 and again.lookup(145) == (140, 4000)
    again.close()
    # reopening writable keeps entries and treats the zero tail as free space
    w = OffsetIndex(path, 100, 1024, True)
    assert w.load() and w.entries == 4
    w.append(160, 5000)
    w.close()
    r = OffsetIndex(path, 100, 1024, True)
    assert r.load() and r.entries == 5
    r.close()


def test_offset_index_sanity_check_fails_on_garbage(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "y.index")
    with open(path, "wb") as f:
        f.write(b"\x00\x00\x00\x05\x00\x00\x00\x09" + b"\x00\x00\x00\x03\x00\x00\x00\x01")
    idx = OffsetIndex(path, 0, 1024, False)
    assert not idx.load()
    idx.close()


def test_time_index(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "z.timeindex")
    ti = TimeIndex(path, 0, 120, True)
    ti.maybe_append(100, 5)
    ti.maybe_append(90, 7)  # not a new max: ignored
    ti.maybe_append(200, 9)
    assert ti.entries == 2
    assert ti.lookup(50) == 0
    assert ti.lookup(100) == 0  # a batch before offset 5 may also have ts 100
    assert ti.lookup(150) == 5
    assert ti.lookup(10**6) == 9
    ti.trim()
    ti.close()
    again = TimeIndex(path, 0, 120, False)
    assert again.load() and again.last_entry == (200, 9)
    again.close()


def _first_hole(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE)
    finally:
        os.close(fd)


def _mapped(path: str) -> bool:
    with open("/proc/self/maps") as f:
        return any(line.rstrip("\n").endswith(" " + path) for line in f)


def test_an_active_index_grows_allocated_and_mapped_in_steps(tmp_path: object) -> None:
    """Nothing is allocated before the first entry; the file then grows by doubling
    from one page, each step allocated before it is mapped (no hole below the mapped
    size), and trimming unmaps it and cuts it to its entries."""
    path = os.path.join(os.path.realpath(str(tmp_path)), "g.index")
    idx = OffsetIndex(path, 0, 1 << 20, True)
    assert idx.capacity_entries == (1 << 20) // 8 and os.path.getsize(path) == 0
    sizes = []
    for i in range(1, 3000):
        idx.append(i, i * 100)
        if os.path.getsize(path) not in sizes:
            sizes.append(os.path.getsize(path))
            assert _first_hole(path) >= sizes[-1]  # all of it allocated
    assert sizes == [4096, 8192, 16384, 32768]
    assert _mapped(path) == _overwrites_in_place(os.path.dirname(path))
    with open(path, "rb") as f:  # stored as appended, no sync needed
        assert f.read(16) == bytes([0, 0, 0, 1, 0, 0, 0, 100, 0, 0, 0, 2, 0, 0, 0, 200])
    idx.truncate_to(2000)  # zeroes the dropped entries in the mapping
    idx.trim()
    assert os.path.getsize(path) == 1999 * 8 and not _mapped(path)
    idx.close()
    again = OffsetIndex(path, 0, 1 << 20, False)
    assert again.load() and again.entries == 1999 and again.lookup(10**6) == (1999, 199900)
    again.close()


def test_a_sparse_file_left_by_an_older_version_is_allocated_before_it_is_mapped(
        tmp_path: object) -> None:
    """An active index preallocated sparse (ftruncate to the full size): reopened
    writable, it is read with pread; the first new entry allocates the holes of the
    region it maps."""
    path = os.path.join(os.path.realpath(str(tmp_path)), "s.index")
    with open(path, "wb") as f:
        f.write(b"".join(bytes([0, 0, 0, i, 0, 0, 0, i]) for i in range(1, 4)))
    os.truncate(path, 256 * 1024)
    idx = OffsetIndex(path, 0, 256 * 1024, True)
    assert idx.load() and idx.entries == 3 and not _mapped(path)
    for i in range(4, 1101):
        idx.append(i, i)
    # mapped: 16 KiB (1100 entries in 8800 bytes), its untouched pages allocated too
    assert _first_hole(path) >= 16384
    assert _mapped(path) == _overwrites_in_place(os.path.dirname(path))
    idx.trim()
    assert os.path.getsize(path) == 1100 * 8
    idx.close()


def test_an_index_on_a_file_system_that_does_not_overwrite_in_place_is_not_mapped(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """(btrfs, ZFS, NFS, overlayfs: a store into a mapped page may need new blocks.)
    Entries stay in memory and each sync writes them with one pwrite."""
    directory = os.path.realpath(str(tmp_path))
    monkeypatch.setitem(_in_place_devices, os.stat(directory).st_dev, False)
    path = os.path.join(directory, "p.index")
    idx = OffsetIndex(path, 0, 1 << 20, True)
    for i in range(1, 1001):
        idx.append(i, i)
    assert os.path.getsize(path) == 0 and not _mapped(path)
    idx.flush()
    assert os.path.getsize(path) == 8000 and not _mapped(path)
    idx.truncate_to(501)
    idx.trim()
    assert os.path.getsize(path) == 500 * 8
    idx.close()
    again = OffsetIndex(path, 0, 1 << 20, False)
    assert again.load() and again.entries == 500
    again.close()


@pytest.mark.skipif(not index_module._MAPPINGS_HOLD_FDS,
                    reason="from Python 3.13 a mapping holds no descriptor: not rationed")
def test_mappings_past_the_descriptor_budget_write_with_pwrite(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before Python 3.13 each mapping keeps a duplicate descriptor: at most a quarter of
    the open files limit are mapped (10,000 partitions held 30,000 descriptors, past a
    20,000 limit, and their logs failed to open after a restart). An index past the
    budget is written with pwrite at its syncs and reads back the same."""
    directory = os.path.realpath(str(tmp_path))
    if not _overwrites_in_place(directory):
        pytest.skip("indexes on this file system are never mapped")
    held = index_module._mappings_held
    monkeypatch.setattr(index_module, "_mapping_budget", lambda: held + 1)
    fds_before = len(os.listdir("/proc/self/fd"))
    first = OffsetIndex(os.path.join(directory, "a.index"), 0, 1 << 20, True)
    second = OffsetIndex(os.path.join(directory, "b.index"), 0, 1 << 20, True)
    for i in range(1, 101):
        first.append(i, i * 10)
        second.append(i, i * 10)
    second.sync()
    assert _mapped(first.path) and not _mapped(second.path)
    assert first.mapped_writes and not second.mapped_writes
    assert os.path.getsize(second.path) == 100 * 8  # the sync's pwrite
    assert len(os.listdir("/proc/self/fd")) == fds_before + 1  # the one mapping's
    first.close()
    assert index_module._mappings_held == held  # given back
    third = OffsetIndex(os.path.join(directory, "c.index"), 0, 1 << 20, True)
    third.append(1, 10)
    assert _mapped(third.path)  # room again
    for idx in (second, third):
        idx.close()
    again = OffsetIndex(second.path, 0, 1 << 20, False)
    assert again.load() and again.entries == 100 and again.lookup(50) == (50, 500)
    again.close()
    assert index_module._mappings_held == held


def test_a_wiped_index_keeps_no_stale_entry_whether_or_not_it_is_closed(
        tmp_path: object) -> None:
    """`wipe` (before a rebuild after a crash) zeroes a small file in place rather than
    truncating it: the rebuilt entries are all a reader finds, after a trim (a roll cuts
    the file to them) and without one (the zeros end the entries)."""
    for trimmed in (True, False):
        path = os.path.join(str(tmp_path), f"w-{trimmed}.index")
        idx = OffsetIndex(path, 0, 1 << 20, True)
        for i in range(1, 11):
            idx.append(i * 10, i * 100)
        idx.trim()
        idx.close()
        assert os.path.getsize(path) == 10 * 8
        w = OffsetIndex(path, 0, 1 << 20, True)
        assert w.load() and w.entries == 10
        w.wipe()
        assert w.entries == 0
        for i in range(1, 4):
            w.append(i * 7, i * 50)
        w.sync()
        if trimmed:  # as a roll does
            w.trim()
            assert os.path.getsize(path) == 3 * 8
        r = OffsetIndex(path, 0, 1 << 20, False)
        assert r.load() and r.entries == 3 and r.lookup(10**9) == (21, 150)
        r.close()
        w.close()


def test_a_wipe_whose_zeroing_fails_truncates_instead(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk (ENOSPC from the zeroing pwrite, as on a copy-on-write file system)
    must not fail the log's recovery: the wipe falls back to a truncate, which needs no
    space, and the rebuilt entries are all a reader finds."""
    import errno

    path = os.path.join(str(tmp_path), "f.index")
    idx = OffsetIndex(path, 0, 1 << 20, True)
    for i in range(1, 11):
        idx.append(i * 10, i * 100)
    idx.trim()
    idx.close()
    w = OffsetIndex(path, 0, 1 << 20, True)
    assert w.load() and w.entries == 10

    def full(*_a: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(index_module.os, "pwrite", full)
    w.wipe()
    monkeypatch.undo()
    assert os.path.getsize(path) == 0
    w.append(7, 50)
    w.sync()
    r = OffsetIndex(path, 0, 1 << 20, False)
    assert r.load() and r.entries == 1
    r.close()
    w.close()


def test_a_mapping_whose_file_cannot_be_opened_gives_its_budget_back(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of descriptors when an index is first mapped: the entry stays in memory for
    the next sync and the mapping budget taken for it is given back (it was kept, so after enough
    such failures no index was ever mapped again)."""
    directory = os.path.realpath(str(tmp_path))
    if not _overwrites_in_place(directory):
        pytest.skip("indexes on this file system are never mapped")
    held = index_module._mappings_held
    idx = OffsetIndex(os.path.join(directory, "a.index"), 0, 1 << 20, True)
    real_open = os.open

    def no_descriptors(path: str, flags: int, *a: object) -> int:
        if path == idx.path and flags == os.O_RDWR:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, flags, *a)

    monkeypatch.setattr(index_module.os, "open", no_descriptors)
    idx.append(1, 10)  # the append path keeps the entry in memory (never fails)
    assert not _mapped(idx.path)
    assert index_module._mappings_held == held
    monkeypatch.setattr(index_module.os, "open", real_open)
    idx.close()  # written by its sync
    again = OffsetIndex(idx.path, 0, 1 << 20, False)
    assert again.load() and again.lookup(1) == (1, 10)
