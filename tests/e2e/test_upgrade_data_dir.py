"""A `dmq server` started on a data folder written by the previous record format (no
dmq-native mark, codecs 1 zstd / 2 lz4) migrates its partition logs at startup and
serves every record to dmq's consumer unchanged.

The folder is what the previous dmq left: the node writes the records (every codec and
a compacted topic), stops, and its partition logs are turned back into format 1
offline (mark cleared, codec numbers mapped back, CRCs recomputed, `log-format`
removed: `downgrade_folder`, checked byte for byte against the previous encoder's
output in the unit tests)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from dmq.cli.dev import ensure_topic
from dmq.client import Consumer, Producer, TopicPartition
from dmq.log.batch import ATTR_DMQ_NATIVE, decode_records, iter_headers
from dmq.log.errors import LogError
from dmq.log.migrate import CURRENT_FORMAT, read_format
from tests.support.old_format import downgrade_folder
from tests.support.procs import ProcessCluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

TOPICS = {"up-none": ({}, None), "up-zstd": ({}, "zstd"), "up-lz4": ({}, "lz4"),
          "up-compact": ({"cleanup.policy": "compact"}, "zstd")}
PER_PARTITION = 300


async def _consume_all(bootstrap: str, topic: str, ends: dict[int, int]) -> list[tuple]:
    out: list[tuple] = []
    async with Consumer(bootstrap, auto_offset_reset="earliest") as c:
        tps = [TopicPartition(topic, p) for p in ends]
        c.assign(tps)
        for tp in tps:
            await c.seek_to_beginning(tp)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(out) < sum(ends.values()):
            assert loop.time() < deadline, f"{topic}: {len(out)} of {sum(ends.values())}"
            got = await c.getmany(timeout_ms=2000)
            for tp, recs in got.items():
                out += [(tp.partition, r.offset, r.key, r.value, r.headers, r.timestamp)
                        for r in recs]
    return sorted(out)


async def test_broker_migrates_a_previous_format_data_folder_and_serves_it() -> None:
    with ProcessCluster(controllers=1, combined=True,
                        settings={"auto.create.topics.enable": False}) as pc:
        pc.start()
        b = pc.bootstrap
        written: dict[str, list[tuple]] = {}
        for topic, (configs, compression) in TOPICS.items():
            await ensure_topic(b, topic, 2, 1, 30, configs)
            async with Producer(b, linger_ms=5, compression_type=compression) as p:
                sent = []
                for i in range(PER_PARTITION * 2):
                    h = await p.send(topic, b"value-%d-" % i * (1 + i % 7),
                                     key=b"key-%d" % i, partition=i % 2,
                                     headers=[("n", b"%d" % i)], timestamp_ms=1_000 + i)
                    sent.append((i, h))
                await p.flush()
            written[topic] = sorted(
                (i % 2, h.result().offset, b"key-%d" % i, b"value-%d-" % i * (1 + i % 7),
                 (("n", b"%d" % i),), 1_000 + i) for i, h in sent)
        node = pc.controller_ids[0]
        pc.kill(node, signal.SIGTERM)  # a clean stop: what an upgrade does

        folders = [d for d in Path(pc.nodes[node].data_dir).rglob("up-*-[0-9]")
                   if d.is_dir()]
        assert len(folders) == 2 * len(TOPICS)
        for d in folders:
            assert downgrade_folder(d) > 0
            seg = sorted(d.glob("*.log"))[0].read_bytes()
            first = next(iter_headers(seg))
            assert not first.attributes & ATTR_DMQ_NATIVE
            with pytest.raises(LogError):  # unreadable as it is (lz4 reads as snappy)
                decode_records(seg, first)

        pc.start(node)
        for topic, expected in written.items():
            ends = {0: PER_PARTITION, 1: PER_PARTITION}
            assert await _consume_all(b, topic, ends) == expected, topic
        for d in folders:
            assert read_format(str(d)) == CURRENT_FORMAT
            for seg in d.glob("*.log"):
                assert all(h.attributes & ATTR_DMQ_NATIVE
                           for h in iter_headers(seg.read_bytes()))
        text = pc.nodes[node].log_text()
        assert text.count("to record format 2:") == len(folders), text[-3000:]
        assert f"migrated {len(folders)} partition logs to record format 2" in text
