"""The console's last hour: a ring of samples the node takes every few seconds.

Every `SAMPLE_INTERVAL_S` the sampler reads each registered broker's `/metrics` over
HTTP (the broker's HTTP port when the config gives one, else its own protocol port,
which serves HTTP too; HTTPS with the node's TLS context when TLS is on) and keeps, per
sample, the rates since the previous one: per broker and per topic, records and bytes
in (appended as leader) and out (sent to consumers; replication is not counted) per
second. It also keeps the
total lag of up to `MAX_GROUPS` consumer groups, and the latest log size of every
partition (from the partition leader's `dmq_log_size_bytes`).

Bounded memory: the history is a `Ring` of `RING_SAMPLES` slots (an hour at 5 s) with
one array of 8-byte floats per series, so it costs 720 x 8 bytes = 5.6 KiB per series
whatever the values. Series: 4 per broker (at most `MAX_BROKERS`), 4 per topic (at most
`MAX_TOPICS`) and one per group (at most `MAX_GROUPS`): at the caps 1156 series, about
6.5 MB; 3 brokers, 10 topics and 5 groups take 57 series, about 330 KB. A series that
has had no value for an hour (a deleted topic, a broker gone) is dropped.

The sampler runs only while someone looks: it starts with the first console request
and stops after `IDLE_STOP_S` without one (its history stays until the next start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from array import array
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

from dmq.client.admin_groups import LATEST
from dmq.protocol.connection import DEFAULT_TLS

if TYPE_CHECKING:
    from dmq.client.admin import Admin
    from dmq.client.admin_groups import GroupAdmin
    from dmq.config import ClusterConfig

log = logging.getLogger("dmq.ops.console")

SAMPLE_INTERVAL_S = 5.0
RING_SAMPLES = 720  # an hour at SAMPLE_INTERVAL_S
IDLE_STOP_S = 3600.0
MAX_TOPICS = 200
MAX_BROKERS = 64
MAX_GROUPS = 100
SCRAPE_TIMEOUT_S = 2.0
MAX_SCRAPE_BYTES = 8 * 1024 * 1024

_WANTED = ("dmq_broker_bytes_in_total", "dmq_broker_records_in_total",
           "dmq_broker_bytes_out_total", "dmq_broker_records_out_total",
           "dmq_log_size_bytes")
_COUNTERS = _WANTED[:4]  # in the order of _METRICS
_METRICS = ("bytesIn", "recordsIn", "bytesOut", "recordsOut")
_NAMES = {"bytesIn": "bytesInPerSec", "recordsIn": "recordsInPerSec",
          "bytesOut": "bytesOutPerSec", "recordsOut": "recordsOutPerSec"}
_LINE = re.compile(r'^([a-z_]+)\{([^}]*)\} (\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The samples of the metric names the console reads, from Prometheus text."""
    out: dict[str, list[tuple[dict[str, str], float]]] = {n: [] for n in _WANTED}
    for line in text.splitlines():
        if not line.startswith(_WANTED):
            continue
        m = _LINE.match(line)
        if m is None or m.group(1) not in out:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out[m.group(1)].append((dict(_LABEL.findall(m.group(2))), value))
    return out


class Ring:
    """Samples over time: a circular array of times and one circular array of floats
    per series (NaN where a series had no value), at most `max_series` series."""

    def __init__(self, size: int, max_series: int) -> None:
        self.size = size
        self.max_series = max_series
        self.times = array("d", [0.0]) * size
        self.series: dict[tuple[str, ...], array[float]] = {}
        self._last: dict[tuple[str, ...], int] = {}  # sample number of the last value
        self.count = 0  # samples appended so far

    def append(self, t_ms: float, values: dict[tuple[str, ...], float]) -> None:
        slot = self.count % self.size
        self.times[slot] = t_ms
        for arr in self.series.values():
            arr[slot] = math.nan
        for key, v in values.items():
            found = self.series.get(key)
            if found is None:
                if len(self.series) >= self.max_series:
                    continue
                found = self.series[key] = array("d", [math.nan]) * self.size
            found[slot] = v
            self._last[key] = self.count
        self.count += 1
        for key in [k for k, n in self._last.items() if self.count - n > self.size]:
            self.series.pop(key, None)
            self._last.pop(key, None)

    def _order(self) -> list[int]:
        n = min(self.count, self.size)
        first = self.count - n
        return [(first + i) % self.size for i in range(n)]

    def time_list(self) -> list[int]:
        return [int(self.times[i]) for i in self._order()]

    def values(self, key: tuple[str, ...]) -> list[float | None]:
        arr = self.series.get(key)
        if arr is None:
            return [None] * min(self.count, self.size)
        return [None if math.isnan(arr[i]) else arr[i] for i in self._order()]

    def latest(self, key: tuple[str, ...]) -> float | None:
        arr = self.series.get(key)
        if arr is None or not self.count:
            return None
        v = arr[(self.count - 1) % self.size]
        return None if math.isnan(v) else v

    def keys(self, kind: str) -> list[tuple[str, ...]]:
        return sorted(k for k in self.series if k[0] == kind)


class ClusterReader(Protocol):
    """What the sampler reads the cluster with: the console's config and clients."""

    config: ClusterConfig
    admin: Admin
    groups: GroupAdmin


class Sampler:
    def __init__(self, console: ClusterReader) -> None:
        self.console = console
        n = len(_METRICS)
        self.ring = Ring(RING_SAMPLES, n * MAX_BROKERS + n * MAX_TOPICS + MAX_GROUPS)
        self.last_sample_ms: int | None = None
        self._prev: dict[int, tuple[float, dict[tuple[int, str], float]]] = {}
        self._sizes: dict[tuple[str, int], float] = {}
        self.unread: dict[int, str] = {}  # brokers whose last scrape failed: why
        self._lag_by_topic: dict[str, dict[str, int]] = {}  # latest: group -> topic -> lag
        self._last_touch = 0.0
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None

    def touch(self) -> None:
        """A console request: keep sampling (start if stopped)."""
        self._last_touch = time.monotonic()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        try:
            while time.monotonic() - self._last_touch < IDLE_STOP_S:
                started = time.monotonic()
                try:
                    await self.sample()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a failed sample is skipped
                    log.info("console sample failed: %s", exc)
                await asyncio.sleep(max(0.5, SAMPLE_INTERVAL_S - (time.monotonic() - started)))
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None

    # ---- one sample ---------------------------------------------------------------
    def _http_address(self, broker_id: int, host: str, port: int) -> tuple[str, int]:
        """The broker's HTTP port from the cluster config, else its node port (which
        hands HTTP over unless it is a SASL port or `http.on.node.port` is off)."""
        config = self.console.config
        addr = config.node(broker_id)
        if addr is not None and addr.http_port:
            return addr.host, addr.http_port
        if not config.get("http.on.node.port") or (
                config.get("sasl.protocol.listener")
                and str(config.get("sasl.enabled.mechanisms")).strip()):
            raise OSError("its http_port is not in the cluster config and its node port "
                          "serves no HTTP (sasl.protocol.listener or http.on.node.port off)")
        return host, port

    async def _scrape(self, broker_id: int, host: str, port: int) -> str:
        host, port = self._http_address(broker_id, host, port)
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT_S))
        tls = DEFAULT_TLS.get()  # the node's own client context when TLS is on
        url = f"{'https' if tls is not None else 'http'}://{host}:{port}/metrics"
        async with self._session.get(url, ssl=tls if tls is not None else True) as resp:
            if resp.status != 200:
                raise OSError(f"/metrics answered {resp.status}")
            raw = await resp.content.read(MAX_SCRAPE_BYTES)
            return raw.decode(errors="replace")

    async def sample(self) -> None:
        image = await self.console.admin.metadata(None)
        brokers = sorted(image.brokers.values(), key=lambda b: b.broker_id)[:MAX_BROKERS]
        texts = await asyncio.gather(*(self._scrape(b.broker_id, b.host, b.port)
                                       for b in brokers), return_exceptions=True)
        now = time.monotonic()
        per_broker: dict[str, list[float]] = {}
        per_topic: dict[str, list[float]] = {}
        sizes: dict[tuple[str, int], float] = {}
        for b, text in zip(brokers, texts, strict=True):
            if not isinstance(text, str):
                self._prev.pop(b.broker_id, None)  # down: its next rates start afresh
                why = str(text) if isinstance(text, OSError) and str(text) else \
                    f"{type(text).__name__}: {text}"
                if b.broker_id not in self.unread:  # logged once until it is read again
                    log.info("console: cannot read broker %d's /metrics: %s", b.broker_id,
                             why[:300])
                self.unread[b.broker_id] = why[:300]
                continue
            self.unread.pop(b.broker_id, None)
            m = parse_metrics(text)
            counters: dict[tuple[int, str], float] = {}  # (metric index, topic)
            for i, name in enumerate(_COUNTERS):
                for lab, v in m[name]:
                    counters[(i, lab.get("topic", ""))] = v
            for lab, v in m["dmq_log_size_bytes"]:
                try:
                    tp = (lab["topic"], int(lab["partition"]))
                except (KeyError, ValueError):
                    continue
                p = image.partition(*tp)
                if p is not None and p.leader == b.broker_id:
                    sizes[tp] = v
            prev = self._prev.get(b.broker_id)
            self._prev[b.broker_id] = (now, counters)
            if prev is None:
                continue
            dt = max(0.001, now - prev[0])
            tot = [0.0] * len(_METRICS)
            for (i, topic), v in counters.items():
                rate = max(0.0, v - prev[1].get((i, topic), 0.0)) / dt
                tot[i] += rate
                if topic in per_topic or len(per_topic) < MAX_TOPICS:
                    per_topic.setdefault(topic, [0.0] * len(_METRICS))[i] += rate
            per_broker[str(b.broker_id)] = tot
        self._sizes = sizes
        groups = await self._group_lags()
        self._lag_by_topic = groups
        self.last_sample_ms = int(time.time() * 1000)
        values: dict[tuple[str, ...], float] = {}
        for kind, rows in (("b", per_broker), ("t", per_topic)):
            for name, row in rows.items():
                for metric, v in zip(_METRICS, row, strict=True):
                    values[(kind, name, metric)] = v
        for gid, per_topic_lag in groups.items():
            values[("g", gid)] = float(sum(per_topic_lag.values()))
        self.ring.append(self.last_sample_ms, values)

    async def _group_lags(self) -> dict[str, dict[str, int]]:
        """Lag of each group (at most `MAX_GROUPS`) per topic: the log end offset minus
        the committed offset (0 when none), over every partition of the topics the group
        has committed offsets for. One OFFSET_FETCH per group, then one METADATA and
        one LIST_OFFSETS per leader for all of them together."""
        groups = self.console.groups
        listing = await groups.list_groups()
        ids = sorted(g.group_id for g in listing)[:MAX_GROUPS]
        committed: dict[str, dict[tuple[str, int], int]] = {}
        for gid in ids:
            try:
                committed[gid] = await groups.committed_offsets(gid)
            except Exception:  # noqa: BLE001 - a group that went away is left out
                continue
        topics = sorted({t for offs in committed.values() for t, _ in offs})
        if not topics:
            return {gid: {} for gid in committed}
        image = await self.console.admin.metadata(topics)
        tps = [(t, p) for t in topics if t in image.topics for p in image.topics[t].partitions]
        ends = await groups.list_offsets(tps, LATEST, image)
        out: dict[str, dict[str, int]] = {}
        for gid, offs in committed.items():
            mine = {t for t, _ in offs}
            per: dict[str, int] = dict.fromkeys(sorted(mine), 0)
            for tp, end in ends.items():
                if tp[0] in mine:
                    per[tp[0]] += max(0, end - offs.get(tp, 0))
            out[gid] = per
        return out

    # ---- reads ------------------------------------------------------------------------
    def latest_topics(self) -> dict[str, dict[str, float | None]]:
        out: dict[str, dict[str, float | None]] = {}
        for key in self.ring.keys("t"):
            _, topic, metric = key
            out.setdefault(topic, {})[_NAMES[metric]] = self.ring.latest(key)
        return out

    def latest_group_topic_lag(self) -> dict[str, dict[str, int]]:
        """The last sample's lag of each group, per topic."""
        return self._lag_by_topic

    def topic_sizes(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for (t, _), v in self._sizes.items():
            out[t] = out.get(t, 0.0) + v
        return out

    def partition_sizes(self) -> dict[tuple[str, int], float]:
        return dict(self._sizes)

    def group_history(self, gid: str) -> list[list[int]]:
        return [[t, int(v)] for t, v in zip(self.ring.time_list(), self.ring.values(("g", gid)),
                                            strict=True) if v is not None]

    def series(self) -> dict[str, Any]:
        """The ring as chart series: times, and per broker and per topic the three rates."""
        out: dict[str, Any] = {"times": self.ring.time_list(),
                               "intervalSeconds": SAMPLE_INTERVAL_S, "brokers": {}, "topics": {},
                               "unread": {str(k): v for k, v in sorted(self.unread.items())}}
        for kind, name in (("b", "brokers"), ("t", "topics")):
            for key in self.ring.keys(kind):
                out[name].setdefault(key[1], {})[key[2]] = self.ring.values(key)
        return out
