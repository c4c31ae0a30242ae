"""Large follower appends check every batch's CRC: any flipped bit leaves the log as it was."""

from __future__ import annotations

import shutil
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dmq.clock import ManualClock
from dmq.log import CorruptRecordError, LogConfig, PartitionLog, stamp_batch, validate_batches
from dmq.log.batch import build_batch
from tests.property.log._settings import LOG_SETTINGS

CFG = LogConfig(max_message_bytes=1 << 21)


def _buffer(sizes: list[int], first_offset: int) -> bytes:
    parts, offset = [], first_offset
    for i, size in enumerate(sizes):
        b = bytearray(build_batch([(b"k", bytes([i % 251]) * size)]))
        stamp_batch(b, 0, offset, 1)
        offset += 1
        parts.append(bytes(b))
    return b"".join(parts)


@settings(LOG_SETTINGS, max_examples=15)
@given(st.lists(st.sampled_from([0, 100, 5_000, 90_000, 300_000]), min_size=1, max_size=8),
       st.one_of(st.none(), st.floats(0, 1)))
def test_checked_follower_append(sizes: list[int], flip_at: float | None) -> None:
    d = tempfile.mkdtemp(prefix="dmq-log-cw-")
    try:
        plog = PartitionLog.open(d, CFG, ManualClock(), fsync_enabled=False)
        plog.append_as_follower(_buffer([10], 0))
        buf = _buffer(sizes, 1)
        if flip_at is None:
            plog.append_as_follower(buf)
            assert plog.log_end_offset == 1 + len(sizes)
            assert bytes(plog.read(1, 1 << 24)) == buf
        else:
            headers = validate_batches(buf)
            # any bit the CRC covers
            candidates = [p for h in headers for p in range(h.position + 21,
                                                            h.position + h.size_bytes)]
            pos = candidates[min(len(candidates) - 1, int(flip_at * len(candidates)))]
            bad = bytearray(buf)
            bad[pos] ^= 0x01
            size_before = plog.size_bytes
            with pytest.raises(CorruptRecordError):
                plog.append_as_follower(bytes(bad))
            assert (plog.log_end_offset, plog.size_bytes) == (1, size_before)
        plog.abandon()
        again = PartitionLog.open(d, CFG, ManualClock(), fsync_enabled=False)
        assert again.log_end_offset == (1 + len(sizes) if flip_at is None else 1)
        again.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
