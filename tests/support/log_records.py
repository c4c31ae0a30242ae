"""Reading back what a partition log holds, record by record, for log tests that
compare it with a model."""

from __future__ import annotations

from dmq.log import PartitionLog, iter_records


def records_of(plog: PartitionLog) -> list[tuple[int, bytes | None, bytes | None]]:
    out = []
    offset = plog.log_start_offset
    while offset < plog.log_end_offset:
        data = plog.read(offset, 10_000)
        if not len(data):
            break
        recs = list(iter_records(data))
        out.extend((r.offset, r.key, r.value) for r in recs if r.offset >= offset)
        offset = recs[-1].offset + 1
    return out
