"""dmq-consume's output formats and dmq-produce's per-batch delivery tally: pure, no
network (the tally is fed real `RecordHandle`s of real accumulator batches)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable

import pytest

from dmq.cli.tools import FORMATS, DeliveryTally, ToolError, format_record, produce
from dmq.client.accumulator import (
    BatchSegment,
    ManyHandle,
    PartitionQueue,
    ProducerBatch,
    RecordHandle,
)
from dmq.client.partitioner import partition_for_key
from dmq.client.records import ConsumerRecord
from dmq.log.batch import BatchBuilder
from dmq.protocol.errors import RequestTimedOutError
from tests.support.fake_cluster import FakeCluster


def rec(key: object, value: object, headers: tuple[tuple[str, bytes], ...] = ()
        ) -> ConsumerRecord:
    return ConsumerRecord("t", 0, 7, 1_700_000_000_000, 0, key, value, headers)


BINARY = bytes(range(256))


@pytest.mark.parametrize("value", [b"", b"text", "h\u00e9llo".encode(), BINARY,
                                   b"\xed\xa0\x80", None])
def test_every_format_gives_one_line_and_json_round_trips(value: bytes | None) -> None:
    r = rec(value, value, (("h", value or b""),))
    for fmt in FORMATS:
        line = format_record(r, fmt)
        if fmt in ("text", "value", "key-value"):
            continue  # the value itself may hold newlines in text form
        assert "\n" not in line and line.isascii(), (fmt, line)
    row = json.loads(format_record(r, "json"))

    def back(x: object) -> bytes | None:
        if x is None:
            return None
        if isinstance(x, dict):
            assert list(x) == ["base64"]
            return base64.b64decode(x["base64"])
        assert isinstance(x, str)
        return x.encode()

    assert back(row["key"]) == value
    assert back(row["value"]) == value
    assert back(row["headers"][0][1]) == (value or b"")
    assert (row["topic"], row["partition"], row["offset"]) == ("t", 0, 7)


def test_hex_base64_text() -> None:
    r = rec(b"k", b"\x00\xffA")
    assert format_record(r, "hex") == "00ff41"
    assert format_record(r, "base64") == "AP9B"
    assert format_record(r, "text") == format_record(r, "value") == "\x00\ufffdA"
    assert format_record(r, "key-value") == "k\t\x00\ufffdA"
    n = rec(None, None)
    assert [format_record(n, f) for f in ("text", "hex", "base64", "key-value")] == [
        "null", "null", "null", "null\tnull"]
    assert json.loads(format_record(n, "json"))["value"] is None


def test_values_that_are_not_bytes_do_not_break_any_format() -> None:
    """A record written by another client may hold text or another msgpack value."""
    for value in ("str \udcff", 42, 1.5, True, ("a", 1), {"a": b"x"}):
        r = rec(value, value, ((f"k{value!s}", b"v"),))
        for fmt in FORMATS:
            assert isinstance(format_record(r, fmt), str)
        json.loads(format_record(r, "json"))


async def test_tally_counts_every_record_of_every_batch() -> None:
    """Three batches on three partitions, 5/3/4 records; the middle one fails: every
    one of its records counts as failed, with one callback per batch."""
    loop = asyncio.get_running_loop()
    batches = [ProducerBatch(PartitionQueue("t", p), BatchBuilder(), 0, loop.create_future())
               for p in range(3)]
    tally = DeliveryTally()
    counts = [5, 3, 4]
    for i in range(max(counts)):  # records interleaved over the partitions
        for b, n in zip(batches, counts, strict=True):
            if i < n:
                tally.add(RecordHandle(b, b.builder.append(0, None, b"v"), 0))
    assert all(len(b.future._callbacks or ()) == 1 for b in batches)  # type: ignore[attr-defined]
    batches[0].future.set_result(0)
    err = RequestTimedOutError("t-1: not delivered")
    batches[1].future.set_exception(err)
    await asyncio.sleep(0)
    assert (tally.acknowledged, tally.failed) == (5, 3)
    loop.call_later(0.01, batches[2].future.set_result, 5)
    await tally.wait_all(10_000)
    assert (tally.acknowledged, tally.failed, tally.first_error) == (9, 3, err)
    await asyncio.sleep(0)  # the batches' own callbacks run after wait_all settled them
    assert (tally.acknowledged, tally.failed) == (9, 3)


async def test_tally_counts_a_batch_without_outcome_as_failed_after_its_bound() -> None:
    loop = asyncio.get_running_loop()
    b = ProducerBatch(PartitionQueue("t", 0), BatchBuilder(), 0, loop.create_future())
    tally = DeliveryTally()
    for _ in range(3):
        tally.add(RecordHandle(b, b.builder.append(0, None, b"v"), 0))
    await tally.wait_all(1)
    assert (tally.acknowledged, tally.failed) == (0, 3)
    assert "3 record(s) had no outcome after 1 ms" in str(tally.first_error)
    b.future.set_result(0)  # too late: counted once, as failed
    await asyncio.sleep(0)
    assert (tally.acknowledged, tally.failed) == (0, 3)


async def test_tally_counts_send_many_segments_per_batch() -> None:
    """`add_many` counts each segment's records; segments of two calls sharing one batch
    (and a `send` record in it) make one callback for that batch."""
    loop = asyncio.get_running_loop()
    b0, b1 = (ProducerBatch(PartitionQueue("t", p), BatchBuilder(), 0, loop.create_future())
              for p in range(2))
    first, second = ManyHandle("t", 0), ManyHandle("t", 0)
    first.segments += [BatchSegment(b0, 0, 4, range(4)), BatchSegment(b1, 0, 2, range(4, 6))]
    second.segments.append(BatchSegment(b1, 2, 3, range(3)))
    tally = DeliveryTally()
    tally.add_many(first)
    tally.add_many(second)
    tally.add(RecordHandle(b1, b1.builder.append(0, None, b"v"), 0))
    assert len(b0.future._callbacks or ()) == len(b1.future._callbacks or ()) == 1  # type: ignore[attr-defined]
    b0.future.set_result(0)
    b1.future.set_exception(RequestTimedOutError("t-1: not delivered"))
    await tally.wait_all(10_000)
    assert (tally.acknowledged, tally.failed) == (4, 6)


def _chunks(*chunks: bytes) -> Callable[[], bytes]:
    it = iter(chunks)
    return lambda: next(it, b"")


async def test_produce_keyed_lines_place_keys_and_stop_at_a_line_without_separator() -> None:
    """Keyed lines land where their keys place them, in order; a line without the
    separator stops the tool there, after the lines before it were delivered."""
    fake = await FakeCluster(1).start()
    fake.create_topic("t", 3)
    try:
        keys = [b"k%d" % i for i in range(40)]
        text = b"".join(b"%s:v%d\r\n" % (k, i) for i, k in enumerate(keys))
        records, _ = await produce(fake.bootstrap, "t", "all", ":", [("h", b"1")],
                                   _chunks(text[:101], text[101:]), echo=lambda s: None)
        assert records == 40
        placed: dict[int, list[bytes]] = {p: [] for p in range(3)}
        for i, k in enumerate(keys):
            placed[partition_for_key(k, 3)].append(b"v%d" % i)
        assert {p: [v for _o, v in fake.records("t", p)] for p in range(3)} == placed
        with pytest.raises(ToolError, match="line 3 has no key separator ':'; 2 records "
                                            "before it were sent"):
            await produce(fake.bootstrap, "t", "all", ":", [], _chunks(b"a:x\nb:y\nbad\nc:z\n"),
                          echo=lambda s: None)
        assert [v for p in range(3) for _o, v in fake.records("t", p)].count(b"z") == 0
        assert sum(len(fake.records("t", p)) for p in range(3)) == 42
    finally:
        await fake.stop()
