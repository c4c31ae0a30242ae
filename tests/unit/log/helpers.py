"""Shared helpers for the log tests: batch factories and a full-scan consistency check."""

from __future__ import annotations

import os

from dmq.log import PartitionLog, iter_records, validate_batches
from dmq.log.batch import build_batch
from dmq.log.segment import LogSegment


def batch(n: int = 3, ts: int = 1_700_000_000_000, key: bytes | None = b"k",
          value_size: int = 20, seed: int = 0, **kw: int) -> bytes:
    return build_batch([(key, bytes([(seed + i) % 256]) * value_size) for i in range(n)],
                       timestamp_ms=ts, **kw)


def read_all(plog: PartitionLog, max_offset: int | None = None) -> list[tuple[int, bytes | None]]:
    """Every (offset, value) readable from the log start, by repeated reads."""
    out: list[tuple[int, bytes | None]] = []
    offset = plog.log_start_offset
    end = plog.log_end_offset if max_offset is None else max_offset
    while offset < end:
        data = plog.read(offset, 4096, max_offset)
        if len(data) == 0:
            break
        headers = validate_batches(data)  # what read returns must always be valid
        out.extend((r.offset, r.value) for r in iter_records(data) if r.offset >= offset)
        offset = headers[-1].next_offset
    return out


def check_segment_consistent(seg: LogSegment) -> list[tuple[int, int]]:
    """Full scan of the .log agrees with the in-memory indexes; returns (base, last)."""
    with open(seg.path, "rb") as f:
        data = f.read()
    assert len(data) == seg.size_bytes
    headers = validate_batches(data) if data else []
    starts = {h.position: h.base_offset for h in headers}
    for off, pos in zip(seg.index._offsets, seg.index._positions, strict=True):
        assert starts.get(pos) == off, (seg.path, off, pos)
    if headers:
        assert seg.next_offset == headers[-1].next_offset
        assert seg.max_timestamp == max(h.max_timestamp for h in headers)
    else:
        assert seg.next_offset == seg.base_offset
    return [(h.base_offset, h.last_offset) for h in headers]


def check_log_consistent(plog: PartitionLog) -> None:
    prev = -1
    for seg in plog.segments:
        assert os.path.exists(seg.path)
        for base, last in check_segment_consistent(seg):
            assert base > prev
            prev = last
    if prev >= 0:  # compaction may have removed the last records before the log end
        if plog.config.compact:
            assert plog.log_end_offset >= prev + 1
        else:
            assert plog.log_end_offset == prev + 1
