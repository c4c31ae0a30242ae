"""A process killed before any file operation of a compaction pass loses nothing.

The pass (merges and single rewrites, fsync on) runs in a forked child that exits with
`os._exit` right before its N-th file operation (open, write, fsync, rename, unlink,
folder fsync), for every N; the parent then reopens the log (the open-time sweep
finishes or undoes the swap) and checks it holds exactly what a reader may see:
nothing lost, duplicated, resurrected or cut, no leftover files.
"""

from __future__ import annotations

import os
import shutil
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dmq.clock import ManualClock
from dmq.log import LogConfig, PartitionLog, build_batch, cleaner
from dmq.log import segment as segment_module
from tests.support.log_records import records_of
from tests.unit.log.helpers import check_log_consistent

CFG = LogConfig(segment_bytes=700, index_interval_bytes=64, cleanup_policy="compact",
                delete_retention_ms=1_000, segment_index_bytes=512)
NOW_MS = 100_000  # every tombstone is past delete_retention_ms
_WRAPPED = ("open", "write", "fsync", "replace", "unlink")

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")


def _build(path: str) -> None:
    plog = PartitionLog.open(path, CFG, ManualClock(), fsync_enabled=True)
    for i in range(60):
        key = b"k%d" % (i % 7)
        value = None if i % 11 == 3 else b"v%d-" % i * 3
        recs = [(key, value)] if i % 5 else [(key, value), (None, b"nokey%d" % i)]
        plog.append_as_leader(build_batch(recs, timestamp_ms=0), 1)
        if i % 9 == 8:
            plog.roll()
    plog.append_as_leader(build_batch([(b"tail", b"t")], timestamp_ms=0), 1)
    plog.close()


class _Counter:
    """Counts file operations; exits the process right before operation `crash_at`."""

    def __init__(self, crash_at: int | None) -> None:
        self.crash_at = crash_at
        self.count = 0

    def tick(self) -> None:
        if self.count == self.crash_at:
            os._exit(0)
        self.count += 1

    def os_namespace(self) -> types.SimpleNamespace:
        ns = types.SimpleNamespace(**{k: getattr(os, k) for k in dir(os)
                                      if not k.startswith("__")})
        for name in _WRAPPED:
            real = getattr(os, name)

            def wrapped(*args: Any, _real: Callable[..., Any] = real, **kw: Any) -> Any:
                self.tick()
                return _real(*args, **kw)

            setattr(ns, name, wrapped)
        return ns


def _clean_counting(path: str, counter: _Counter) -> None:
    ns = counter.os_namespace()
    real_fsync_dir = cleaner.fsync_dir

    def fsync_dir(d: str) -> None:
        counter.tick()
        real_fsync_dir(d)

    cleaner.os, segment_module.os = ns, ns  # type: ignore[assignment]
    cleaner.fsync_dir = fsync_dir  # type: ignore[assignment]
    try:
        plog = PartitionLog.open(path, CFG, ManualClock(), fsync_enabled=True)
        plog.clean(now_ms=NOW_MS)
        plog.close()
    finally:
        cleaner.os, segment_module.os = os, os  # type: ignore[assignment]
        cleaner.fsync_dir = real_fsync_dir  # type: ignore[assignment]


def _newest(records: list[tuple[int, bytes | None, bytes | None]]) -> dict[bytes, bytes | None]:
    out: dict[bytes, bytes | None] = {}
    for _, k, v in records:
        if k is not None:
            out[k] = v
    return out


def test_a_crash_before_any_file_operation_of_a_pass_loses_nothing(tmp_path: Path) -> None:
    template = str(tmp_path / "template")
    _build(template)
    plog = PartitionLog.open(template, CFG, ManualClock(), fsync_enabled=True)
    before = records_of(plog)
    leo = plog.log_end_offset
    plog.close()
    full = str(tmp_path / "full")
    shutil.copytree(template, full)
    counter = _Counter(None)
    _clean_counting(full, counter)
    plog = PartitionLog.open(full, CFG, ManualClock(), fsync_enabled=True)
    after = records_of(plog)
    merged = plog.segment_count
    plog.close()
    assert counter.count > 30 and len(after) < len(before) and merged < 5
    newest = {k: v for k, v in _newest(before).items() if v is not None}
    for n in range(counter.count):
        path = str(tmp_path / f"crash-{n}")
        shutil.copytree(template, path)
        pid = os.fork()
        if pid == 0:  # the child: clean, dying right before operation n
            try:
                _clean_counting(path, _Counter(n))
            finally:
                os._exit(3)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, f"operation {n} was never reached"
        plog = PartitionLog.open(path, CFG, ManualClock(), fsync_enabled=True)
        got = records_of(plog)
        where = f"crash before operation {n}"
        assert plog.log_end_offset == leo, where
        assert set(after) <= set(got) <= set(before), where  # nothing lost or invented
        assert len(got) == len(set(got)), where
        assert {k: v for k, v in _newest(got).items() if v is not None} == newest, where
        assert not [f for f in os.listdir(path)
                    if f.endswith((".cleaned", ".swap", ".swap-end"))], where
        check_log_consistent(plog)
        plog.close()
        shutil.rmtree(path)
