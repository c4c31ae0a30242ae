"""The client's view of the cluster: a metadata cache and one connection per node.

Owns: the bootstrap address list, the cached METADATA answer (brokers, topics,
partition leaders and epochs, the active controller id), one multiplexed
`Connection` per node address, and the rules for refreshing metadata (on demand, when
a caller reports a stale-metadata error, and at most once per `retry_backoff_ms`
while refreshes keep being asked for). Requests go to any node: brokers answer
METADATA from their metadata image, controllers from the committed state.

It must never hold per-record state or retry data-path requests itself: the producer
and consumer decide what to retry; this module only tells them where to send.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dmq.clock import Clock, SystemClock
from dmq.metadata.discovery import ControllerAddress, ControllerChannel, connect_security
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import Connection
from dmq.protocol.errors import (
    DmqError,
    ErrorCode,
    NetworkError,
    RequestTimedOutError,
    UnknownTopicOrPartitionError,
    error_for,
)

if TYPE_CHECKING:
    from dmq.security.client_config import ClientSecurity

log = logging.getLogger("dmq.client.cluster")

# a controller request still unanswered after this long makes the client ask the other
# nodes whether the controller moved (a paused controller never closes its connection)
CONTROLLER_WATCH_AFTER_MS = 500
# a node silent this long on a request any node can answer: ask the next one as well
NODE_HEDGE_AFTER_MS = 500


def parse_bootstrap(bootstrap: str | Sequence[str] | Sequence[tuple[str, int]]
                    ) -> list[tuple[str, int]]:
    """`"h1:p1,h2:p2"`, a list of `"h:p"` strings, or a list of (host, port) pairs."""
    items: list[Any] = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    out: list[tuple[str, int]] = []
    for item in items:
        if isinstance(item, tuple):
            out.append((str(item[0]), int(item[1])))
            continue
        text = str(item).strip()
        if not text:
            continue
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"bad bootstrap address {text!r}: expected HOST:PORT")
        out.append((host.strip("[]"), int(port)))
    if not out:
        raise ValueError("bootstrap needs at least one HOST:PORT")
    return out


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    partition: int
    leader: int  # -1: no leader right now
    leader_epoch: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]
    error: int


@dataclass(slots=True)
class TopicInfo:
    name: str
    topic_id: Any
    error: int
    partitions: list[PartitionInfo] = field(default_factory=list)
    # partitions that currently have a leader (the sticky partitioner prefers them)
    available: list[int] = field(default_factory=list)


class ClusterClient:
    """Metadata cache and connection pool shared by a producer or consumer."""

    def __init__(self, bootstrap: str | Sequence[str] | Sequence[tuple[str, int]], *,
                 client_id: str = "dmq-client", request_timeout_ms: int = 30_000,
                 connect_timeout_ms: int = 5_000, retry_backoff_ms: int = 100,
                 retry_backoff_max_ms: int = 1_000, metadata_max_age_ms: int = 300_000,
                 allow_auto_create: bool = False, rng: random.Random | None = None,
                 clock: Clock | None = None, security: ClientSecurity | None = None) -> None:
        self.bootstrap = parse_bootstrap(bootstrap)
        self.security = security  # TLS and SASL of every connection (None: the context's)
        self.client_id = client_id
        self.request_timeout_ms = request_timeout_ms
        self.connect_timeout_ms = connect_timeout_ms
        self.retry_backoff_ms = retry_backoff_ms
        self.retry_backoff_max_ms = retry_backoff_max_ms
        self.metadata_max_age_ms = metadata_max_age_ms
        self.allow_auto_create = allow_auto_create
        self._rng = rng or random.Random()
        self.clock = clock or SystemClock()
        self.brokers: dict[int, tuple[str, int]] = {}
        self.topics: dict[str, TopicInfo] = {}
        self.controller_id = -1
        self.metadata_version = -1
        self._wanted_topics: set[str] = set()
        self._conns: dict[tuple[str, int], Connection] = {}
        self._connecting: dict[tuple[str, int], asyncio.Future[Connection]] = {}
        self._refresh: asyncio.Future[None] | None = None
        self._last_refresh_ms = -1 << 62
        self.refreshed_at_ms = -1 << 62  # clock time of the last metadata answer applied
        self.controller = ControllerChannel(self.bootstrap, client_id=client_id, rng=self._rng,
                                            watch_after_ms=CONTROLLER_WATCH_AFTER_MS,
                                            security=security)
        self._closed = False
        self._bg: set[asyncio.Task[None]] = set()

    # ---- connections ----------------------------------------------------------------
    async def connection(self, address: tuple[str, int]) -> Connection:
        """The one connection to `address`, opened on first use (concurrent callers
        share the same attempt)."""
        conn = self._conns.get(address)
        if conn is not None and not conn.closed:
            return conn
        if self._closed:
            raise NetworkError("client is closed")
        pending = self._connecting.get(address)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Connection] = loop.create_future()
        self._connecting[address] = fut
        try:
            conn = await Connection.open(address[0], address[1], client_id=self.client_id,
                                         connect_timeout_ms=self.connect_timeout_ms,
                                         raw_frames=True, **connect_security(self.security))
        except BaseException as exc:
            fut.set_exception(exc if isinstance(exc, Exception) else NetworkError("cancelled"))
            fut.exception()  # retrieved: concurrent waiters re-raise it themselves
            raise
        finally:
            self._connecting.pop(address, None)
        if self._closed:
            await conn.close()
            raise NetworkError("client is closed")
        self._conns[address] = conn
        fut.set_result(conn)
        return conn

    async def node_connection(self, node_id: int) -> Connection:
        addr = self.brokers.get(node_id)
        if addr is None:
            raise error_for(ErrorCode.BROKER_NOT_AVAILABLE, f"node {node_id} is not in metadata")
        return await self.connection(addr)

    def cached_connection(self, node_id: int) -> Connection | None:
        """The open connection to a broker, if any (no await on the hot path)."""
        addr = self.brokers.get(node_id)
        if addr is None:
            return None
        conn = self._conns.get(addr)
        return conn if conn is not None and not conn.closed else None

    def _candidate_addresses(self) -> list[tuple[str, int]]:
        known = list(self.brokers.values())
        self._rng.shuffle(known)
        boot = list(self.bootstrap)
        self._rng.shuffle(boot)
        # open connections first: no connect cost
        seen: list[tuple[str, int]] = []
        for a in [*(a for a in known + boot if a in self._conns and not self._conns[a].closed),
                  *known, *boot]:
            if a not in seen:
                seen.append(a)
        return seen

    async def any_request(self, api_key: ApiKey, body: Any, *,
                          timeout_ms: int | None = None) -> Any:
        """Send to the first node that answers, trying every known address once.

        Any retriable error from one node (unreachable, timed out, restarting without
        metadata yet, shutting down, fenced, ...) moves on to the next address: another
        node may well answer. A node still silent after `NODE_HEDGE_AFTER_MS` (paused,
        cut off: its connection stays open) gets company: the next address is asked
        too, and the first answer wins, so one silent node never costs the whole
        request timeout. For requests that are safe to repeat (METADATA). A
        non-retriable error is the answer and is raised. When every node failed, the
        error names the last node's cause: a `NetworkError` when none could be reached,
        else the last node's own error."""
        timeout = timeout_ms or self.request_timeout_ms
        loop = asyncio.get_running_loop()
        candidates = iter(self._candidate_addresses())
        asking: dict[asyncio.Task[Any], tuple[str, int]] = {}
        last: DmqError | None = None
        last_addr = ""
        tried = 0

        async def ask(addr: tuple[str, int]) -> Any:
            conn = await self.connection(addr)
            return await conn.request(api_key, body, timeout_ms=timeout)

        def ask_next() -> None:
            nonlocal tried
            addr = next(candidates, None)
            if addr is not None:
                tried += 1
                asking[loop.create_task(ask(addr))] = addr

        ask_next()
        try:
            while asking:
                # network time, as the connection's request timeouts: not the clock
                done, _ = await asyncio.wait(asking, timeout=NODE_HEDGE_AFTER_MS / 1000,
                                             return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    ask_next()  # the nodes asked so far are silent: ask one more
                    continue
                for task in done:
                    addr = asking.pop(task)
                    exc = task.exception()
                    if exc is None:
                        return task.result()
                    if not isinstance(exc, DmqError) or not (
                            exc.retriable or exc.code is ErrorCode.UNKNOWN_API_KEY):
                        raise exc
                    log.debug("%s to %s:%d failed, trying the next node: %s", api_key.name,
                              addr[0], addr[1], exc)
                    last, last_addr = exc, f"{addr[0]}:{addr[1]}"
                    ask_next()
        finally:
            for task in asking:
                task.cancel()
            if asking:
                await asyncio.gather(*asking, return_exceptions=True)
        addrs = ",".join(f"{h}:{p}" for h, p in self.bootstrap)
        if last is None or isinstance(last, (NetworkError, RequestTimedOutError)):
            raise NetworkError(f"no node reachable (bootstrap {addrs}): {last}")
        raise error_for(last.code, f"no node could answer {api_key.name} ({tried} tried, "
                                   f"bootstrap {addrs}); last, from {last_addr}: {last.message}")

    async def controller_request(self, api_key: ApiKey, body: Any, *,
                                 timeout_ms: int | None = None) -> Any:
        """Send to the active controller (found and followed by
        `dmq.metadata.discovery.ControllerChannel`: parallel probes, NOT_CONTROLLER
        hints, backoff)."""
        return await self.controller.request(api_key, body,
                                             timeout_ms=timeout_ms or self.request_timeout_ms)

    def backoff_ms(self, attempt: int) -> float:
        """Exponential backoff with +-20% jitter, capped at `retry_backoff_max_ms`."""
        base: float = min(self.retry_backoff_max_ms,
                          self.retry_backoff_ms * (2 ** max(0, attempt - 1)))
        return base * (0.8 + 0.4 * self._rng.random())

    # ---- metadata ----------------------------------------------------------------------
    def want_topics(self, topics: Iterable[str]) -> None:
        self._wanted_topics.update(topics)

    async def refresh(self, topics: Iterable[str] | None = None, *,
                      force: bool = True) -> None:
        """Fetch metadata for the wanted topics (plus `topics`). Concurrent callers share
        one request; without `force`, a refresh younger than `retry_backoff_ms` is
        reused."""
        if topics:
            self._wanted_topics.update(topics)
        loop = asyncio.get_running_loop()
        if self._refresh is not None:
            await asyncio.shield(self._refresh)
            return
        age_ms = self.clock.monotonic_ms() - self._last_refresh_ms
        if not force and age_ms < self.retry_backoff_ms:
            return
        if age_ms < self.retry_backoff_ms:
            await self.clock.sleep(self.retry_backoff_ms - age_ms)
            if self._refresh is not None:
                await asyncio.shield(self._refresh)
                return
        fut: asyncio.Future[None] = loop.create_future()
        self._refresh = fut
        try:
            body = await self.any_request(
                ApiKey.METADATA, {"topics": sorted(self._wanted_topics),
                                  "allow_auto_create": self.allow_auto_create})
            self.apply_metadata(body)
            self.refreshed_at_ms = self.clock.monotonic_ms()
            fut.set_result(None)
        except BaseException as exc:
            fut.set_exception(exc if isinstance(exc, Exception) else NetworkError("cancelled"))
            fut.exception()
            raise
        finally:
            self._last_refresh_ms = self.clock.monotonic_ms()
            self._refresh = None

    def request_update(self) -> None:
        """Ask for a refresh soon without waiting for it (from sync callbacks)."""
        if self._refresh is None and not self._closed:
            loop = asyncio.get_running_loop()
            task = loop.create_task(self._quiet_refresh())
            self._bg.add(task)
            task.add_done_callback(self._bg.discard)

    def maybe_refresh_stale(self) -> None:
        """Refresh in the background when the cache is older than `metadata_max_age_ms`
        (picks up new partitions and moved leaders nobody has hit an error on yet). One
        attempt per period: every attempt, answered or not, restarts the age."""
        if self.clock.monotonic_ms() - self._last_refresh_ms > self.metadata_max_age_ms:
            self.request_update()

    async def _quiet_refresh(self) -> None:
        try:
            await self.refresh(force=False)
        except DmqError as exc:
            log.debug("background metadata refresh failed: %s", exc)

    def apply_metadata(self, body: dict[str, Any]) -> None:
        version = body.get("version", -1)
        if version is not None and 0 <= version < self.metadata_version:
            return  # an older image than the one we hold (a lagging broker)
        self.metadata_version = version if version is not None else -1
        self.controller_id = body.get("controller_id", -1)
        ctl = body.get("controller")
        if isinstance(ctl, list) and len(ctl) == 3 and int(ctl[0]) >= 0:
            # a newer controller named here: requests waiting on the old one move there
            self.controller.maybe_switch(ControllerAddress(
                int(ctl[0]), str(ctl[1]), int(ctl[2]), int(body.get("controller_term", -1))))
        self.brokers = {int(b[0]): (str(b[1]), int(b[2])) for b in body.get("brokers", [])}
        for t in body.get("topics", []):
            name = t["name"]
            parts = sorted((PartitionInfo(int(p[0]), int(p[1]), int(p[2]), tuple(p[3]),
                                          tuple(p[4]), int(p[5]))
                            for p in t.get("partitions") or []),
                           key=lambda p: p.partition)
            if t.get("error", 0) and not parts:
                self.topics.pop(name, None)
                self.topics[name] = TopicInfo(name, t.get("id"), int(t["error"]), [], [])
                continue
            self.topics[name] = TopicInfo(
                name, t.get("id"), int(t.get("error", 0)), parts,
                [p.partition for p in parts if p.leader >= 0 and p.leader in self.brokers])

    def topic(self, name: str) -> TopicInfo | None:
        info = self.topics.get(name)
        if info is None or info.error or not info.partitions:
            return None
        return info

    def missing_reason(self, topic: str, partition: int) -> str | None:
        """Why the cached metadata says `topic`-`partition` does not exist, or None (it
        exists, or nothing is known about the topic yet)."""
        info = self.topics.get(topic)
        if info is None:
            return None
        n = len(info.partitions)
        if not n:
            if info.error in (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, ErrorCode.INVALID_TOPIC):
                return f"topic {topic!r} does not exist"
            return None
        if not 0 <= partition < n:
            return f"topic {topic!r} has {n} partition(s), numbered 0 to {n - 1}"
        return None

    def leader_for(self, topic: str, partition: int) -> tuple[int, int]:
        """(leader node id, leader epoch) or (-1, -1) when unknown."""
        info = self.topics.get(topic)
        if info is None or partition >= len(info.partitions):
            return -1, -1
        p = info.partitions[partition]
        if p.leader < 0 or p.leader not in self.brokers:
            return -1, p.leader_epoch
        return p.leader, p.leader_epoch

    async def wait_for_topic(self, topic: str, timeout_ms: int) -> TopicInfo:
        """Metadata of `topic`, refreshing until it has partitions or `timeout_ms`
        passes (then the topic's own error, e.g. UNKNOWN_TOPIC_OR_PARTITION)."""
        info = self.topic(topic)
        if info is not None:
            return info
        self._wanted_topics.add(topic)
        clock = self.clock
        deadline = clock.monotonic_ms() + timeout_ms
        attempt = 0
        while True:
            try:
                await self.refresh([topic], force=attempt == 0)
            except DmqError as exc:
                # no node could answer right now (restarting, unreachable): a retriable
                # condition, retried until the deadline like a topic not there yet
                if not exc.retriable or clock.monotonic_ms() >= deadline:
                    raise
                log.debug("metadata for %r not available yet: %s", topic, exc)
            info = self.topic(topic)
            if info is not None:
                return info
            known = self.topics.get(topic)
            if known is not None and known.error == ErrorCode.TOPIC_AUTHORIZATION_FAILED:
                # the ACLs will not change by waiting: say so now
                raise error_for(known.error, f"topic {topic!r}: not authorized to "
                                             f"describe it")
            attempt += 1
            if clock.monotonic_ms() >= deadline:
                known = self.topics.get(topic)
                if known is not None and known.error:
                    raise error_for(known.error, f"topic {topic!r}: "
                                    f"{ErrorCode(known.error).name.lower()}")
                raise UnknownTopicOrPartitionError(
                    f"topic {topic!r} not present in metadata after {timeout_ms} ms")
            await clock.sleep(min(self.backoff_ms(attempt),
                                  max(0, deadline - clock.monotonic_ms())))

    async def close(self) -> None:
        self._closed = True
        for t in list(self._bg):
            t.cancel()
        conns, self._conns = list(self._conns.values()), {}
        await asyncio.gather(self.controller.close(), *(c.close() for c in conns),
                             return_exceptions=True)


__all__ = ["ClusterClient", "PartitionInfo", "TopicInfo", "parse_bootstrap"]
