from __future__ import annotations

import os

from dmq.log.index import OffsetIndex, TimeIndex


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
