"""The broker counters behind the console's topic rates: records and bytes sent to
consumers per partition (fetches by replicas are not counted), on an in-process broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmq.log.batch import iter_headers
from tests.support.inproc_broker import (
    batch,
    fetch,
    produce,
    started_brokers,
)

pytestmark = pytest.mark.timeout(60)


async def test_consumer_fetches_count_records_and_bytes_out_replica_fetches_do_not(
        tmp_path: Path) -> None:
    async with started_brokers(tmp_path, (1,)) as (ctl, (b,)):
        await ctl.create_topic("t", [[1]])
        conn = await b.connect()
        for i in range(3):  # batches of offsets 0-4, 5-9, 10-14
            row = await produce(conn, "t", 0, batch([b"v%d-%d" % (i, j) for j in range(5)]))
            assert row[1] == 0, row
        part = b.partition("t")
        assert (part.records_out, part.bytes_out) == (0, 0)
        row = await fetch(conn, "t", 0, 7)  # from inside the second batch
        data = bytes(row[5])
        assert [h.base_offset for h in iter_headers(data)] == [5, 10]
        # offsets 7..14 go to the consumer (it skips 5 and 6 of the first batch itself)
        assert (part.records_out, part.bytes_out) == (8, len(data))
        row = await fetch(conn, "t", 0, 15)  # at the end: nothing sent
        assert not row[5] and part.records_out == 8
        # one byte of room: the first batch alone (a fetch always gets one)
        row = await fetch(conn, "t", 0, 0, max_bytes=1, partition_max_bytes=1)
        assert [h.base_offset for h in iter_headers(bytes(row[5]))] == [0]
        assert part.records_out == 13
        await fetch(conn, "t", 0, 0, replica_id=2)  # not a replica: refused, not counted
        assert part.records_out == 13
        await conn.close()

