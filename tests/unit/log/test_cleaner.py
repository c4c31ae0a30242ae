"""Compaction keeps exactly the newest record per key (model check), across restarts."""

from __future__ import annotations

import dataclasses
import os
import random

import pytest

from dmq.clock import ManualClock
from dmq.log import LogConfig, LogStorageError, PartitionLog, build_batch, cleaner, iter_records
from dmq.log.batch import BatchBuilder
from tests.support.log_records import records_of
from tests.unit.log.helpers import check_log_consistent

CFG = LogConfig(segment_bytes=700, index_interval_bytes=64, cleanup_policy="compact",
                delete_retention_ms=5_000, segment_index_bytes=512)


class Model:
    """All appended records; `present` is what compaction has not removed yet."""

    def __init__(self) -> None:
        self.records: dict[int, tuple[bytes | None, bytes | None, int]] = {}
        self.present: set[int] = set()

    def append(self, base: int, recs: list[tuple[bytes | None, bytes | None]], ts: int) -> None:
        for i, (k, v) in enumerate(recs):
            self.records[base + i] = (k, v, ts)
            self.present.add(base + i)

    def clean(self, closed_end: int, now: int, delete_retention_ms: int) -> None:
        latest: dict[bytes, int] = {}
        for off in sorted(o for o in self.present if o < closed_end):
            k = self.records[off][0]
            if k is not None:
                latest[k] = off
        for off in [o for o in self.present if o < closed_end]:
            k, v, ts = self.records[off]
            if k is None:
                continue
            if latest[k] != off or (v is None and ts <= now - delete_retention_ms):
                self.present.discard(off)

    def expected(self) -> list[tuple[int, bytes | None, bytes | None]]:
        return [(o, self.records[o][0], self.records[o][1]) for o in sorted(self.present)]


@pytest.mark.parametrize("seed", range(6))
def test_compaction_matches_model_across_restarts(tmp_path: object, seed: int) -> None:
    rnd = random.Random(seed)
    clock = ManualClock()
    path = str(tmp_path)
    plog = PartitionLog.open(path, CFG, clock, fsync_enabled=False)
    model = Model()
    keys = [b"k%d" % i for i in range(rnd.randint(2, 12))]
    for _ in range(rnd.randint(80, 200)):
        op = rnd.random()
        if op < 0.75:
            recs = [(rnd.choice([*keys, None]) if rnd.random() < 0.95 else None,
                     None if rnd.random() < 0.15 else os.urandom(rnd.randint(0, 30)))
                    for _ in range(rnd.randint(1, 5))]
            # keyless tombstones make no sense; give them a value
            recs = [(k, v if k is not None or v is not None else b"x") for k, v in recs]
            ts = clock.wall_ms()
            info = plog.append_as_leader(build_batch(recs, timestamp_ms=ts), 1)
            model.append(info.base_offset, recs, ts)
        elif op < 0.85:
            closed_end = plog.segments[-1].base_offset
            plog.clean()
            model.clean(closed_end, clock.wall_ms(), CFG.delete_retention_ms)
        elif op < 0.9:
            plog.roll()
        elif op < 0.95:
            plog.close()
            plog = PartitionLog.open(path, CFG, clock, fsync_enabled=False)
        else:
            plog.abandon()  # crash: nothing flushed on purpose
            plog = PartitionLog.open(path, CFG, clock, fsync_enabled=False)
        clock.advance(rnd.randint(0, 2000))
        assert records_of(plog) == model.expected()
    check_log_consistent(plog)
    # the user-level property: the newest value of every key is what a reader ends with
    last_seen: dict[bytes, bytes | None] = {}
    for _, k, v in records_of(plog):
        if k is not None:
            last_seen[k] = v
    newest: dict[bytes, tuple[bytes | None, int]] = {}
    for off in sorted(model.records):
        k, v, ts = model.records[off]
        if k is not None:
            newest[k] = (v, ts)
    for k, (v, _ts) in newest.items():
        if v is not None:
            assert last_seen[k] == v
        else:
            assert last_seen.get(k) is None
    plog.close()


def test_tombstones_expire_and_offsets_are_kept(tmp_path: object) -> None:
    clock = ManualClock()
    plog = PartitionLog.open(str(tmp_path), CFG, clock, fsync_enabled=False)
    ts = clock.wall_ms()
    plog.append_as_leader(build_batch([(b"a", b"1"), (b"b", b"1"), (b"a", b"2")], ts), 1)
    plog.append_as_leader(build_batch([(b"b", None), (None, b"keyless")], ts), 1)
    plog.roll()
    plog.append_as_leader(build_batch([(b"c", b"1")], ts), 1)
    res = plog.clean()
    assert res.records_removed == 2 and res.segments_rewritten == 1
    assert records_of(plog) == [(2, b"a", b"2"), (3, b"b", None), (4, None, b"keyless"),
                                (5, b"c", b"1")]
    clock.advance(CFG.delete_retention_ms)
    plog.clean()
    assert records_of(plog) == [(2, b"a", b"2"), (4, None, b"keyless"), (5, b"c", b"1")]
    assert plog.log_end_offset == 6
    check_log_consistent(plog)
    plog.close()


def test_min_compaction_lag_and_active_segment_untouched(tmp_path: object) -> None:
    clock = ManualClock()
    cfg = LogConfig(cleanup_policy="compact", min_compaction_lag_ms=1000)
    plog = PartitionLog.open(str(tmp_path), cfg, clock, fsync_enabled=False)
    ts = clock.wall_ms()
    plog.append_as_leader(build_batch([(b"a", b"1"), (b"a", b"2")], ts), 1)
    assert plog.clean().segments_rewritten == 0  # only the active segment exists
    plog.roll()
    assert plog.clean().segments_rewritten == 0  # too young
    clock.advance(1000)
    assert plog.clean().segments_rewritten == 1
    assert records_of(plog) == [(1, b"a", b"2")]
    plog.close()


def test_idempotent_fields_survive_rebatching(tmp_path: object) -> None:
    clock = ManualClock()
    plog = PartitionLog.open(str(tmp_path), CFG, clock, fsync_enabled=False)
    b = BatchBuilder(producer_id=5, producer_epoch=1, base_sequence=10)
    for k in (b"a", b"b", b"b", b"c", b"b"):  # keeps offsets 0, 3, 4
        b.append(clock.wall_ms(), k, b"v")
    plog.append_as_leader(b.seal(), 3)
    plog.roll()
    plog.clean()
    from dmq.log import validate_batches

    hs = validate_batches(plog.read(0, 10_000))
    assert [(h.base_offset, h.base_sequence, h.producer_id, h.partition_leader_epoch)
            for h in hs] == [(0, 10, 5, 3), (3, 13, 5, 3)]
    assert [h.record_count for h in hs] == [1, 2]
    plog.close()


def crash_during_clean(tmp_path: object, fail_at_replace: int) -> tuple[str, list, list]:
    """Make the cleaner die at its n-th os.replace; returns (path, before, after-clean)."""

    path = str(tmp_path)
    clock = ManualClock()
    plog = PartitionLog.open(path, CFG, clock, fsync_enabled=False)
    ts = clock.wall_ms()
    for i in range(30):
        plog.append_as_leader(build_batch([(b"k%d" % (i % 3), b"v%d" % i)], ts), 1)
    plog.roll()
    before = records_of(plog)
    model = Model()
    for off, k, v in before:
        model.append(off, [(k, v)], ts)
    model.clean(plog.segments[-1].base_offset, clock.wall_ms(), CFG.delete_retention_ms)
    calls = [0]
    real = os.replace

    def failing(src: str, dst: str) -> None:
        calls[0] += 1
        if calls[0] == fail_at_replace:
            raise OSError("simulated crash")
        real(src, dst)

    real_unlink = cleaner.unlink_quietly
    cleaner.os.replace = failing  # type: ignore[assignment]
    cleaner.unlink_quietly = lambda path: None  # a crash cleans nothing up
    try:
        # before the commit point the OSError itself; after it, the log is failed
        with pytest.raises((OSError, LogStorageError)):
            plog.clean()
    finally:
        cleaner.os.replace = real  # type: ignore[assignment]
        cleaner.unlink_quietly = real_unlink
    plog.abandon()
    return path, before, model.expected()


def test_crash_before_commit_point_leaves_cleaned_file_which_is_swept(tmp_path: object) -> None:
    path, before, _ = crash_during_clean(tmp_path, 1)
    assert any(n.endswith(".cleaned") for n in os.listdir(path))
    plog = PartitionLog.open(path, CFG, ManualClock(), fsync_enabled=False)
    assert not any(n.endswith((".cleaned", ".swap")) for n in os.listdir(path))
    assert records_of(plog) == before
    check_log_consistent(plog)
    plog.close()


def test_crash_after_commit_point_finishes_the_swap(tmp_path: object) -> None:
    path, before, after = crash_during_clean(tmp_path, 2)
    assert any(n.endswith(".swap") for n in os.listdir(path))
    plog = PartitionLog.open(path, CFG, ManualClock(), fsync_enabled=False)
    assert not any(n.endswith((".cleaned", ".swap")) for n in os.listdir(path))
    # the first segment was swapped in, the rest not yet cleaned: nothing newest is lost
    got = records_of(plog)
    assert set(after) <= set(got) <= set(before) and got != before
    check_log_consistent(plog)
    plog.clean()
    assert records_of(plog) == after
    check_log_consistent(plog)
    plog.close()


def test_half_written_cleaned_file_is_ignored(tmp_path: object) -> None:
    path = str(tmp_path)
    plog = PartitionLog.open(path, CFG, ManualClock(), fsync_enabled=False)
    for i in range(20):
        plog.append_as_leader(build_batch([(b"k", b"%d" % i)]), 1)
    before = records_of(plog)
    plog.abandon()
    with open(os.path.join(path, "00000000000000000000.log.cleaned"), "wb") as f:
        f.write(os.urandom(100))
    plog = PartitionLog.open(path, CFG, ManualClock(), fsync_enabled=False)
    assert records_of(plog) == before
    plog.close()


def test_follower_replicates_compacted_log_with_gaps(tmp_path: object) -> None:
    clock = ManualClock()
    leader = PartitionLog.open(os.path.join(str(tmp_path), "l"), CFG, clock,
                               fsync_enabled=False)
    for i in range(60):
        leader.append_as_leader(build_batch([(b"k%d" % (i % 4), b"v%d" % i)]), 1)
    leader.roll()
    leader.clean()
    follower = PartitionLog.open(os.path.join(str(tmp_path), "f"), CFG, clock,
                                 fsync_enabled=False)
    offset = 0
    while offset < leader.log_end_offset:
        data = leader.read(offset, 300)
        if not len(data):
            break
        info = follower.append_as_follower(data)
        offset = info.last_offset + 1
    assert records_of(follower) == records_of(leader)
    follower.abandon()
    follower = PartitionLog.open(os.path.join(str(tmp_path), "f"), CFG, clock,
                                 fsync_enabled=False)
    assert records_of(follower) == records_of(leader)
    check_log_consistent(follower)
    # a read at an offset inside a gap starts at the next surviving batch
    first = records_of(leader)[0][0]
    assert first > 0
    assert list(iter_records(leader.read(0, 100)))[0].offset == first
    leader.close()
    follower.close()


def test_log_cleaner_owner_runs_and_skips_clean_logs(tmp_path: object) -> None:
    from dmq.log import LogCleaner

    clock = ManualClock()
    logs = []
    for name, policy in (("a", "compact"), ("b", "delete"), ("c", "compact,delete")):
        cfg = LogConfig(cleanup_policy=policy)
        plog = PartitionLog.open(os.path.join(str(tmp_path), name), cfg, clock,
                                 fsync_enabled=False)
        for i in range(10):
            plog.append_as_leader(build_batch([(b"k", b"%d" % i)]), 1)
        plog.roll()
        logs.append(plog)
    cleaner = LogCleaner(interval_ms=10)
    for plog in logs:
        cleaner.add(plog)
    done = cleaner.run_once()
    assert sorted(os.path.basename(d) for d in done) == ["a", "c"]
    assert cleaner.run_once() == {}  # nothing new: skipped cheaply
    logs[2].close()  # a closed log is dropped, not fatal
    assert cleaner.run_once() == {}
    logs[0].append_as_leader(build_batch([(b"k", b"new")]), 1)
    logs[0].roll()
    assert list(cleaner.run_once()) == [logs[0].directory]
    assert records_of(logs[0]) == [(10, b"k", b"new")]
    cleaner.start()  # the thread owner starts and stops cleanly (no timing asserted)
    cleaner.stop()
    assert cleaner._thread is None
    for plog in logs[:2]:
        plog.close()


def _compactable(path: str, clock: ManualClock, *, n: int = 120, keys: int = 3,
                 fsync: bool = False, tail: int = 0,
                 clean_model: bool = True) -> tuple[PartitionLog, Model]:
    """`n` records cycling over `keys` keys in small closed segments, then `tail`
    records of other keys in the active segment. With `clean_model` the model already
    says what a full clean of the closed range leaves."""
    plog = PartitionLog.open(path, CFG, clock, fsync_enabled=fsync)
    model = Model()
    ts = clock.wall_ms()
    for i in range(n):
        recs = [(b"k%d" % (i % keys), b"v%d" % i)]
        model.append(plog.append_as_leader(build_batch(recs, ts), 1).base_offset, recs, ts)
    plog.roll()
    assert plog.segment_count > 4
    if clean_model:
        model.clean(plog.segments[-1].base_offset, clock.wall_ms(), CFG.delete_retention_ms)
    for i in range(tail):
        recs = [(b"tail%d" % i, b"t")]
        model.append(plog.append_as_leader(build_batch(recs, ts), 1).base_offset, recs, ts)
    if tail:
        plog.flush()
    return plog, model


def _log_with_history(path: str, clock: ManualClock) -> tuple[PartitionLog, Model]:
    return _compactable(path, clock, n=60, keys=4, clean_model=False)


def _during_write(monkeypatch: pytest.MonkeyPatch, action: object) -> None:
    """Run `action` from another thread while the cleaner writes its first `.cleaned`."""
    import threading

    real = cleaner._write_cleaned  # noqa: SLF001
    ran = [False]

    def hooked(*args: object) -> object:
        if not ran[0]:
            ran[0] = True
            t = threading.Thread(target=action)  # type: ignore[arg-type]
            t.start()
            t.join(10)
            assert not t.is_alive(), "the log was locked while the cleaner rewrote segments"
        return real(*args)

    monkeypatch.setattr(cleaner, "_write_cleaned", hooked)


def test_appends_and_reads_go_on_while_segments_are_rewritten(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock()
    plog, model = _log_with_history(str(tmp_path), clock)
    closed_end = plog.segments[-1].base_offset
    seen: list[int] = []

    def produce_and_read() -> None:
        recs = [(b"k1", b"during")]
        info = plog.append_as_leader(build_batch(recs, timestamp_ms=clock.wall_ms()), 1)
        model.append(info.base_offset, recs, clock.wall_ms())
        seen.append(len(plog.read(0, 10_000)))

    _during_write(monkeypatch, produce_and_read)
    res = plog.clean()
    assert res.segments_rewritten > 0 and seen and seen[0] > 0
    model.clean(closed_end, clock.wall_ms(), CFG.delete_retention_ms)
    assert records_of(plog) == model.expected()
    check_log_consistent(plog)
    plog.close()


def test_retention_during_a_clean_drops_only_what_it_deleted(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = ManualClock()
    plog, model = _log_with_history(str(tmp_path), clock)
    closed_end = plog.segments[-1].base_offset
    second = plog.segments[1].base_offset

    def delete_first_segment() -> None:
        assert plog.maybe_increment_log_start_offset(second)

    _during_write(monkeypatch, delete_first_segment)
    plog.clean()  # its merged group lost a member meanwhile: swapped in next time, or not
    model.present = {o for o in model.present if o >= second}
    assert set(records_of(plog)) >= set(model.expected())
    monkeypatch.undo()
    plog.clean()
    model.clean(closed_end, clock.wall_ms(), CFG.delete_retention_ms)
    assert records_of(plog) == model.expected()
    check_log_consistent(plog)
    plog.close()


def test_truncation_into_the_cleaned_range_cancels_the_clean(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """The newest value of a key read by the cleaner is truncated away meanwhile: its
    older values must survive, so nothing read before the truncation may be dropped."""
    clock = ManualClock()
    plog, model = _log_with_history(str(tmp_path), clock)
    cut = plog.segments[-2].base_offset  # inside the closed range the cleaner reads

    def truncate() -> None:
        plog.truncate_to(cut)

    _during_write(monkeypatch, truncate)
    res = plog.clean()
    assert res.segments_rewritten == 0
    model.present = {o for o in model.present if o < cut}
    assert records_of(plog) == model.expected()
    assert not any(n.endswith((".cleaned", ".swap")) for n in os.listdir(str(tmp_path)))
    check_log_consistent(plog)
    monkeypatch.undo()
    plog.roll()
    closed_end = plog.segments[-1].base_offset
    plog.clean()
    model.clean(closed_end, clock.wall_ms(), CFG.delete_retention_ms)
    assert records_of(plog) == model.expected()
    plog.close()


def test_nothing_above_the_high_watermark_decides_what_is_dropped(tmp_path: object) -> None:
    """A newer value of a key that is not committed yet may be truncated away (leader
    change); the committed value it would supersede must still be there then."""
    path = str(tmp_path)
    clock = ManualClock()
    plog = PartitionLog.open(path, CFG, clock, fsync_enabled=False)
    ts = clock.wall_ms()
    for i in range(20):
        plog.append_as_leader(build_batch([(b"k", b"committed-%d" % i)], ts), 1)
    plog.roll()
    hw = plog.log_end_offset
    for i in range(20):
        plog.append_as_leader(build_batch([(b"k", b"uncommitted-%d" % i)], ts), 1)
    plog.roll()
    plog.clean(max_offset=hw)
    values = [v for _, k, v in records_of(plog) if k == b"k"]
    assert b"committed-19" in values and values[-1] == b"uncommitted-19"
    plog.truncate_to(hw)  # the uncommitted tail goes, as after a leader change
    assert [v for _, _, v in records_of(plog)][-1] == b"committed-19"
    plog.roll()
    plog.clean(max_offset=plog.log_end_offset)
    assert [v for _, _, v in records_of(plog)] == [b"committed-19"]
    check_log_consistent(plog)
    plog.close()


@pytest.mark.parametrize("reopen_policy", ["compact", "delete"])
def test_a_cleaned_segment_ending_in_a_gap_is_not_damage(tmp_path: object,
                                                          reopen_policy: str) -> None:
    """After a clean, a segment may end before the next one starts. A rescan of it (its
    index lost, e.g. by a power cut: indexes are never fsynced) must not take that gap
    for lost data and cut everything after it, whatever policy the log is reopened with."""
    path = str(tmp_path)
    clock = ManualClock()
    plog = PartitionLog.open(path, CFG, clock, fsync_enabled=False)
    ts = clock.wall_ms()
    for i in range(40):
        plog.append_as_leader(build_batch([(b"k%d" % (i % 2), b"v%d" % i)], ts), 1)
    plog.append_as_leader(build_batch([(b"k0", None)], ts), 1)  # the closed range ends
    plog.roll()                                                  # in a tombstone
    clock.advance(CFG.delete_retention_ms + 1)
    plog.clean()  # drops the expired tombstone: the cleaned segment ends before the next
    segs = plog.segments
    gaps = [a for a, b in zip(segs, segs[1:], strict=False) if a.next_offset != b.base_offset]
    assert gaps, "the test needs a segment that ends in a gap"
    for i in range(5):  # and data after the gap, in the active segment
        plog.append_as_leader(build_batch([(b"k2", b"after-%d" % i)], clock.wall_ms()), 1)
    before = records_of(plog)
    victim = gaps[0].index_path
    plog.close()
    with open(victim, "wb") as f:
        f.write(b"\xff" * 16)  # fails the sanity check: the segment is rescanned
    cfg = dataclasses.replace(CFG, cleanup_policy=reopen_policy)
    plog = PartitionLog.open(path, cfg, clock, fsync_enabled=False)
    assert records_of(plog) == before
    check_log_consistent(plog)
    plog.close()


def test_small_cleaned_segments_are_merged(tmp_path: object) -> None:
    clock = ManualClock()
    plog, model = _compactable(str(tmp_path), clock)
    n = plog.segment_count
    assert n > 10
    plog.clean()
    assert plog.segment_count == 2  # one merged segment + the active one
    assert all(s.size_bytes <= CFG.segment_bytes for s in plog.segments)
    assert records_of(plog) == model.expected()
    check_log_consistent(plog)
    plog.close()
    plog = PartitionLog.open(str(tmp_path), CFG, clock, fsync_enabled=False)
    assert plog.segment_count == 2 and records_of(plog) == model.expected()
    plog.close()


def test_merge_group_respects_segment_bytes(tmp_path: object) -> None:
    clock = ManualClock()
    path = str(tmp_path)
    plog = PartitionLog.open(path, CFG, clock, fsync_enabled=False)
    for i in range(60):  # distinct keys: nothing is removed, small segments are merged
        plog.append_as_leader(build_batch([(b"key-%d" % i, b"v" * 40)], clock.wall_ms()), 1)
    plog.roll()
    before = records_of(plog)
    plog.clean()
    assert all(s.size_bytes <= CFG.segment_bytes for s in plog.segments)
    assert 2 < plog.segment_count < 12
    assert records_of(plog) == before
    check_log_consistent(plog)
    plog.close()


def test_crash_right_after_a_merge_commits_is_finished_on_open(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """`.swap` and `.swap-end` written, no old segment deleted yet: the sweep deletes
    the merged ones (else they would overlap the merged segment and recovery would cut)."""
    clock = ManualClock()
    path = str(tmp_path)
    plog, model = _compactable(path, clock, tail=3)  # tail: data past the merged range
    calls = [0]
    real = os.replace

    def replace(src: str, dst: str) -> None:
        calls[0] += 1
        if calls[0] == 2:  # the swap -> .log rename
            raise OSError("simulated crash")
        real(src, dst)

    monkeypatch.setattr(cleaner.os, "replace", replace)
    monkeypatch.setattr(cleaner, "unlink_quietly", lambda p: None)  # a crash deletes nothing
    with pytest.raises(LogStorageError):
        plog.clean()
    monkeypatch.undo()
    names = os.listdir(path)
    assert any(n.endswith(".swap") for n in names) and any(n.endswith(".swap-end") for n in names)
    assert sum(n.endswith(".log") for n in names) > 10  # the merged ones are all still there
    plog.abandon()
    plog = PartitionLog.open(path, CFG, clock, fsync_enabled=False)
    names = os.listdir(path)
    assert not any(n.endswith((".swap", ".swap-end", ".cleaned")) for n in names)
    assert records_of(plog) == model.expected()
    check_log_consistent(plog)
    plog.close()


def test_a_leftover_merge_end_file_is_removed(tmp_path: object) -> None:
    clock = ManualClock()
    path = str(tmp_path)
    plog, _ = _compactable(path, clock)
    before = records_of(plog)
    plog.close()
    with open(os.path.join(path, "00000000000000000000.swap-end"), "w") as f:
        f.write("99\n")  # a merge that never reached its commit point
    plog = PartitionLog.open(path, CFG, clock, fsync_enabled=False)
    assert not any(n.endswith(".swap-end") for n in os.listdir(path))
    assert records_of(plog) == before
    plog.close()


def test_a_log_closed_during_a_clean_ends_the_pass_quietly(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from dmq.log import LogClosedError

    clock = ManualClock()
    path = str(tmp_path)
    plog, model = _log_with_history(path, clock)
    _during_write(monkeypatch, plog.close)
    with pytest.raises(LogClosedError):
        plog.clean()
    assert not any(n.endswith((".cleaned", ".swap", ".swap-end")) for n in os.listdir(path))
    monkeypatch.undo()
    plog = PartitionLog.open(path, CFG, clock, fsync_enabled=False)
    assert records_of(plog) == model.expected()  # nothing cleaned, nothing lost
    plog.close()
    cleaner_owner = cleaner.LogCleaner()
    cleaner_owner.add(plog)
    assert cleaner_owner.run_once() == {}  # a closed log is dropped, not an error


@pytest.mark.parametrize("where", ["fsync after commit", "rename over .log", "index renames"])
def test_a_failure_after_the_commit_point_fails_the_log_and_reopening_finishes(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """I/O errors past the commit point: the committed swap's files stay (its end file
    included), the log is failed (closed) rather than left with half-swapped segments,
    and a reopen finishes the swap with nothing lost."""
    import errno

    clock = ManualClock()
    path = str(tmp_path)
    plog, model = _compactable(path, clock, fsync=True, tail=5)
    calls = [0]

    def eio(*args: object) -> None:
        raise OSError(errno.EIO, f"simulated EIO ({where})")

    if where == "fsync after commit":
        monkeypatch.setattr(cleaner, "fsync_dir", eio)
    elif where == "rename over .log":
        real_replace = os.replace

        def replace(src: str, dst: str) -> None:
            calls[0] += 1
            if calls[0] == 2:
                eio()
            real_replace(src, dst)

        monkeypatch.setattr(cleaner.os, "replace", replace)
    else:
        monkeypatch.setattr(cleaner.LogSegment, "rename_files", eio)
    with pytest.raises(LogStorageError):
        plog.clean()
    monkeypatch.undo()
    assert plog.closed and plog.failure is not None
    with pytest.raises(LogStorageError, match="failed"):  # STORAGE_ERROR on the wire
        plog.read(0, 1000)
    plog.abandon()
    plog = PartitionLog.open(path, CFG, clock, fsync_enabled=True)
    assert not any(n.endswith((".swap", ".swap-end", ".cleaned")) for n in os.listdir(path))
    assert records_of(plog) == model.expected()
    check_log_consistent(plog)
    plog.close()


def test_a_failure_building_the_replacement_leaves_nothing_behind(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    clock = ManualClock()
    path = str(tmp_path)
    plog, model = _compactable(path, clock, fsync=False, tail=5)

    def eio(*args: object) -> None:
        raise OSError(errno.EIO, "simulated EIO")

    monkeypatch.setattr(cleaner.LogSegment, "rebuild_indexes_from", eio)
    with pytest.raises(OSError):
        plog.clean()
    monkeypatch.undo()
    assert not plog.closed
    assert not any(n.endswith((".swap", ".swap-end", ".cleaned")) for n in os.listdir(path))
    plog.clean()
    assert records_of(plog) == model.expected()
    plog.close()


@pytest.mark.parametrize("err", ["EIO", "ENOSPC"])
def test_a_failed_write_of_the_cleaned_files_leaves_none_behind(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch, err: str) -> None:
    """Else a stale `.swap-end` could be taken for a later pass's (deleting segments
    that were never merged). A full disk is the common case; the log stays open."""
    import errno

    clock = ManualClock()
    path = str(tmp_path)
    plog, model = _compactable(path, clock, fsync=True, tail=5)
    real = cleaner._write_file  # noqa: SLF001

    def failing(p: str, data: bytes, sync: bool) -> None:
        real(p, data, sync)
        if p.endswith(".swap-end"):
            raise OSError(getattr(errno, err), f"simulated {err}")

    monkeypatch.setattr(cleaner, "_write_file", failing)
    with pytest.raises(OSError):
        plog.clean()
    monkeypatch.undo()
    assert not any(n.endswith((".swap", ".swap-end", ".cleaned")) for n in os.listdir(path))
    assert not plog.closed
    plog.clean()
    assert records_of(plog) == model.expected()
    plog.close()


def test_a_truncated_and_refilled_segment_is_not_swapped_back(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """After an unclean leader change a closed segment may be cut, refilled with a new
    leader's batches of the same sizes and rolled again while the cleaner reads it: same
    object, same size. The cleaner must not swap the old data back in."""
    clock = ManualClock()
    path = str(tmp_path)
    plog = PartitionLog.open(path, CFG, clock, fsync_enabled=False)
    for i in range(60):
        plog.append_as_leader(build_batch([(b"x%02d" % (i % 8), b"old-%03d" % i)],
                                          clock.wall_ms()), 1)
    plog.roll()
    victim = plog.segments[-2]
    size, base, nxt = victim.size_bytes, victim.base_offset, victim.next_offset

    def unclean_leader_change() -> None:
        plog.truncate_to(base + 1)
        for off in range(base + 1, nxt):
            plog.append_as_follower(build_batch([(b"x%02d" % (off % 8), b"NEW-%03d" % off)],
                                                clock.wall_ms(), base_offset=off,
                                                partition_leader_epoch=2))
        assert victim.size_bytes == size
        plog.roll()

    _during_write(monkeypatch, unclean_leader_change)
    plog.clean()
    monkeypatch.undo()
    values = {o: v for o, _, v in records_of(plog)}
    assert [values[o] for o in range(base + 1, nxt)] == [b"NEW-%03d" % o
                                                         for o in range(base + 1, nxt)]
    check_log_consistent(plog)
    plog.close()


def test_cleaner_remove_leaves_a_newer_log_of_the_same_folder(tmp_path: object) -> None:
    clock = ManualClock()
    owner = cleaner.LogCleaner()
    old = PartitionLog.open(str(tmp_path), CFG, clock, fsync_enabled=False)
    owner.add(old)
    old.close()
    new = PartitionLog.open(str(tmp_path), CFG, clock, fsync_enabled=False)
    owner.add(new)  # the partition re-created while a pass still held the old log
    owner.remove(old)
    assert [p for p, _ in owner._logs.values()] == [new]  # noqa: SLF001
    new.close()


def test_a_stopping_cleaner_abandons_its_pass(tmp_path: object) -> None:
    clock = ManualClock()
    path = str(tmp_path)
    plog, model = _compactable(path, clock, fsync=False, tail=5)
    before = records_of(plog)
    res = plog.clean(cancelled=lambda: True)
    assert res.segments_rewritten == 0 and records_of(plog) == before
    assert not any(n.endswith((".swap", ".swap-end", ".cleaned")) for n in os.listdir(path))
    plog.clean()
    assert records_of(plog) == model.expected()
    plog.close()


def test_a_skipped_group_stops_the_pass_so_no_deleted_key_comes_back(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retention takes the first segment of group 1 during a pass; group 2 would drop an
    expired tombstone of K while group 1's other segment still holds an older K. The
    pass must stop at the skipped group, or K comes back."""
    cfg = LogConfig(segment_bytes=600, index_interval_bytes=64, cleanup_policy="compact",
                    delete_retention_ms=1_000, segment_index_bytes=512)
    plog = PartitionLog.open(str(tmp_path), cfg, ManualClock(), fsync_enabled=False)

    def app(recs: list[tuple[bytes | None, bytes | None]]) -> None:
        plog.append_as_leader(build_batch(recs, timestamp_ms=0), 1)

    app([(None, b"a" * 100)])
    plog.roll()                                          # A: keyless filler
    app([(b"K", b"old")])
    app([(None, b"b" * 50)])
    plog.roll()                                          # B: K=old
    app([(b"K", None)])
    app([(None, b"c" * 400)])
    plog.roll()                                          # C: tombstone of K
    app([(None, b"d")])                                  # D: active

    def keyed() -> list[tuple[int, bytes | None, bytes | None]]:
        return [r for r in records_of(plog) if r[1] is not None]

    real = cleaner._write_cleaned  # noqa: SLF001
    fired: list[bool] = []

    def hooked(*args: object) -> object:
        if not fired:  # retention (or DeleteRecords) meanwhile
            fired.append(plog.maybe_increment_log_start_offset(plog.segments[1].base_offset))
        return real(*args)

    monkeypatch.setattr(cleaner, "_write_cleaned", hooked)
    plog.clean(now_ms=100_000)
    monkeypatch.undo()
    assert fired == [True]
    k_values = [v for _, k, v in keyed() if k == b"K"]
    assert not k_values or k_values[-1] is None  # K stays deleted (its tombstone last)
    plog.clean(now_ms=100_000)
    assert keyed() == []
    plog.close()


def test_a_failed_log_releases_its_files_on_close(
        tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    clock = ManualClock()
    path = str(tmp_path)
    plog, model = _compactable(path, clock, fsync=False, tail=5)
    plog.close()
    baseline = open_fds()
    plog = PartitionLog.open(path, CFG, clock, fsync_enabled=False)

    def eio(*args: object) -> None:
        raise OSError(errno.EIO, "simulated EIO")

    monkeypatch.setattr(cleaner.LogSegment, "rename_files", eio)
    with pytest.raises(LogStorageError):
        plog.clean()
    monkeypatch.undo()
    assert plog.closed
    plog.close()
    assert open_fds() == baseline
    plog = PartitionLog.open(path, CFG, clock, fsync_enabled=False)
    assert records_of(plog) == model.expected()
    plog.close()


def test_stopping_a_busy_cleaner_is_bounded(tmp_path: object,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    clock = ManualClock()
    plog, model = _compactable(str(tmp_path), clock)
    entered, release = threading.Event(), threading.Event()
    real = cleaner._segment_batches  # noqa: SLF001

    def slow(fd: int, size: int):  # type: ignore[no-untyped-def]
        entered.set()
        release.wait(10)  # one very long segment
        return real(fd, size)

    monkeypatch.setattr(cleaner, "_segment_batches", slow)
    owner = cleaner.LogCleaner(interval_ms=1)
    owner.add(plog)
    owner.start()
    assert entered.wait(10)
    # False: it gave up after its timeout while the pass is still held inside the long
    # segment (a stop that waited for the thread would return True once the segment's
    # 10 s wait ran out)
    assert owner.stop(timeout_s=0.2) is False
    assert not release.is_set() and owner._thread is not None and owner._thread.is_alive()
    plog.close()  # the pass then ends on the closed log, its files removed
    release.set()
    assert owner.stop(timeout_s=10) is True
    assert not any(n.endswith((".cleaned", ".swap", ".swap-end"))
                   for n in os.listdir(str(tmp_path)))
    plog = PartitionLog.open(str(tmp_path), CFG, clock, fsync_enabled=False)
    assert set(records_of(plog)) >= set(model.expected())
    plog.close()


def test_an_unreadable_merge_end_file_stops_the_open_with_a_clear_error(
        tmp_path: object) -> None:
    """A committed swap whose end file cannot be read: guessing which segments it
    replaced could delete data, so the open refuses and says which file."""
    from dmq.log import LogError

    clock = ManualClock()
    path = str(tmp_path)
    plog, _ = _compactable(path, clock)
    plog.close()
    stem = os.path.join(path, "00000000000000000000")
    os.rename(stem + ".log", stem + ".log.swap")
    with open(stem + ".swap-end", "w") as f:
        f.write("not a number\n")
    with pytest.raises(LogError, match="swap-end"):
        PartitionLog.open(path, CFG, clock, fsync_enabled=False)
    assert os.path.exists(stem + ".log.swap")  # nothing touched
