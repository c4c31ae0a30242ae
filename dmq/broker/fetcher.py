"""Follower replication: one `ReplicaFetcher` per source leader broker.

Owns the pull side of replication. A fetcher keeps one connection to its leader and
long-polls FETCH for every partition this broker follows there, sending each
partition's log end offset (its fetch offset) and the leader epoch it knows, and
appends what comes back with the offsets as given. Before the first fetch of a
partition after a leader change it asks OFFSET_FOR_LEADER_EPOCH for the end offset of
its latest epoch and truncates the divergent tail (KIP-101, with KIP-279's loop when
the leader does not know that epoch).

Fetches go through an incremental fetch session (KIP-227, leader side in
`dmq.broker.fetch_session`): the first request lists every partition and opens the
session; later ones list only partitions whose fetch offset or leader epoch changed
(and those to forget), and the leader answers only partitions with news, as soon as
one has some or when the wait ends. So an idle fetcher costs one small request per
`replica.fetch.wait.max.ms` whatever the number of partitions, and the fetcher itself
only looks at partitions that changed (`_pending`). A partition answered with an
error is forgotten while it waits out its backoff and listed again after it (the
leader does not look at it again by itself). Any failure of a request, an unknown
session or an epoch out of sequence falls back to a full request; a leader that
answers without a session id (an older dmq) is sent full requests throughout.

Replicas being added by a reassignment and not yet in sync are *throttled*: their
fetches share the broker's `ReplicationThrottle` (`follower.replication.throttled.rate`,
see `dmq.broker.throttle`): such a partition is listed only when the bucket holds a
quantum, with the quantum as its size limit, and is left out of the session
(`_held`) while the bucket refills. In-sync partitions never wait for it.

It must never decide roles: the replica manager adds and removes partitions as images
arrive. A response for a partition that was removed or re-added meanwhile is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from dmq.aio import wait_for
from dmq.broker.errors import error_code_of
from dmq.broker.partition import Partition
from dmq.broker.throttle import ReplicationThrottle
from dmq.clock import Clock
from dmq.config import ClusterConfig
from dmq.log.errors import LogError
from dmq.metadata.image import BrokerInfo
from dmq.protocol.api import ApiKey
from dmq.protocol.codec import VectoredBody
from dmq.protocol.connection import Connection
from dmq.protocol.errors import DmqError, ErrorCode

# spawn(coroutine, name): run a task owned by the broker
Spawn = Callable[[Coroutine[Any, Any, None], str], None]
# on_fatal(task name, exception): an essential task ended while the broker runs
OnFatal = Callable[[str, BaseException | None], None]

log = logging.getLogger("dmq.broker.fetcher")

RETRY_BACKOFF_MS = 100
MAX_BACKOFF_MS = 1000
FENCED_BACKOFF_MS = 500
REQUEST_MARGIN_MS = 10_000
MAX_TRUNCATION_ROUNDS = 8
# the fetch offset of a session entry the leader answered with an error: differs from
# every log end offset, so the next request lists the partition (or forgets it)
STALE = -1


class FetchState:
    """One followed partition inside a fetcher."""

    __slots__ = ("delayed_until_ms", "leader_epoch", "partition", "reserved", "throttled",
                 "truncating")

    def __init__(self, partition: Partition, throttled: bool = False) -> None:
        self.partition = partition
        self.leader_epoch = partition.leader_epoch
        self.truncating = True
        self.delayed_until_ms = 0
        self.throttled = throttled  # a replica being added, not in sync yet
        self.reserved = 0  # bytes of the throttle this partition's session entry holds


Key = tuple[str, int]


class ReplicaFetcher:
    """Pulls every partition this broker follows on one leader broker."""

    def __init__(self, broker_id: int, clock: Clock, leader: BrokerInfo, config: ClusterConfig,
                 on_fatal: OnFatal, throttle: ReplicationThrottle | None = None) -> None:
        self.broker_id = broker_id
        self.leader_id = leader.broker_id
        self.host = leader.host
        self.port = leader.port
        self.clock = clock
        self._on_fatal = on_fatal
        self.max_wait_ms = int(config.get("replica.fetch.wait.max.ms"))
        self.max_bytes = int(config.get("replica.fetch.max.bytes"))
        self.throttle = throttle if throttle is not None else ReplicationThrottle(
            clock.monotonic_ms, self.max_bytes)
        self.partitions: dict[Key, FetchState] = {}
        self._changed = asyncio.Event()
        self._conn: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._rotation = 0
        # partitions that may differ from what the leader's session holds for them
        self._pending: set[Key] = set()
        self._truncating: set[Key] = set()
        self._delayed: set[Key] = set()
        # throttled partitions left out of fetches until the throttle's bucket refills
        self._held: set[Key] = set()
        # the session: its id (0: none, the next request is full), its epoch, and per
        # partition what the leader knows (fetch offset, leader epoch, the state sent)
        self._session_id = 0
        self._session_epoch = 0
        self._known: dict[Key, tuple[int, int, FetchState]] = {}
        self.stats_fetches = 0
        self.stats_full_fetches = 0
        self.stats_partitions_sent = 0  # partition entries listed or forgotten in requests
        self.stats_bytes = 0

    # ------------------------------------------------------------------ control

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"fetcher-{self.broker_id}-from-{self.leader_id}")
        self._task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        # _run survives every error of a fetch; if it still ends while it should run,
        # its partitions would never catch up: that is the broker's end (crash-only)
        if not task.cancelled() and not self._stopping:
            self._on_fatal(task.get_name(), task.exception())

    async def stop(self) -> None:
        self._stopping = True
        self._changed.set()
        if self._conn is not None:
            await self._conn.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await wait_for(self._task, 2.0)

    def add(self, partition: Partition, throttled: bool = False) -> None:
        tp = (partition.topic, partition.partition)
        old = self.partitions.get(tp)
        if old is not None:
            self._settle(old, 0)
        self.partitions[tp] = FetchState(partition, throttled)
        self._truncating.add(tp)
        self._delayed.discard(tp)
        self._held.discard(tp)
        self._pending.add(tp)
        self._changed.set()

    def remove(self, tp: Key) -> None:
        state = self.partitions.pop(tp, None)
        if state is not None:
            self._settle(state, 0)
            self._truncating.discard(tp)
            self._delayed.discard(tp)
            self._held.discard(tp)
            self._pending.add(tp)  # the leader's session forgets it with the next request

    def set_throttled(self, tp: Key, throttled: bool) -> None:
        """The partition's replica here became (or stopped being) one being added."""
        s = self.partitions.get(tp)
        if s is None or s.throttled == throttled:
            return
        s.throttled = throttled
        self._settle(s, 0)
        self._held.discard(tp)
        self._pending.add(tp)
        self._changed.set()

    def throttle_changed(self) -> None:
        """The rate changed: partitions held for the bucket are looked at again."""
        if self._held:
            self._pending |= self._held
            self._held = set()
            self._changed.set()

    def _settle(self, state: FetchState, used: int) -> None:
        if state.reserved:
            self.throttle.settle(state.reserved, used)
            state.reserved = 0

    def _set_truncating(self, tp: Key, state: FetchState) -> None:
        state.truncating = True
        self._truncating.add(tp)
        self._pending.add(tp)

    def _delay(self, tp: Key, state: FetchState, until_ms: int) -> None:
        state.delayed_until_ms = until_ms
        self._delayed.add(tp)
        self._pending.add(tp)

    def _stale(self, tp: Key) -> None:
        """The leader answered an error for `tp`: its session entry is not one in
        service, and nothing on the leader looks at it again (a partition it did not
        have when listed is not even watched). The next request lists `tp` again, or
        forgets it while it waits out a backoff; never neither, also when the backoff
        is already over (under load the next request comes later than it)."""
        entry = self._known.get(tp)
        if entry is not None:
            self._known[tp] = (STALE, entry[1], entry[2])

    def _reset_session(self) -> None:
        """The next request is a full one, opening a new session."""
        self._session_id = 0
        self._session_epoch = 0
        self._known = {}
        self._pending = set(self.partitions)
        self._held = set()
        for s in self.partitions.values():
            self._settle(s, 0)

    # ------------------------------------------------------------------ loop

    async def _run(self) -> None:
        backoff_ms = RETRY_BACKOFF_MS
        while not self._stopping:
            if not self.partitions and not self._known:
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                conn = await self._connection()
                if self._truncating:
                    await self._truncate(conn)
                sent = await self._fetch(conn)
                backoff_ms = RETRY_BACKOFF_MS
                if not sent:
                    await self._sleep(self._next_ready_in_ms())
            except asyncio.CancelledError:
                raise
            except (DmqError, OSError) as exc:
                if self._stopping:
                    return
                log.info("broker=%d fetcher from %d: %s; retrying in %d ms", self.broker_id,
                         self.leader_id, exc, backoff_ms)
                await self._drop_connection()
                await self._sleep(backoff_ms)
                backoff_ms = min(backoff_ms * 2, MAX_BACKOFF_MS)
            except Exception:
                log.exception("broker=%d fetcher from %d failed; restarting it", self.broker_id,
                              self.leader_id)
                await self._drop_connection()
                await self._sleep(MAX_BACKOFF_MS)

    async def _sleep(self, ms: int) -> None:
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await wait_for(self._changed.wait(), max(ms, 1) / 1000)

    def _next_ready_in_ms(self) -> int:
        now = self.clock.monotonic_ms()
        waits = [s.delayed_until_ms for tp in self._delayed
                 if (s := self.partitions.get(tp)) is not None]
        if self._held:
            waits.append(now + self.throttle.wait_ms())
        if not waits:
            return MAX_BACKOFF_MS
        return max(1, min(waits) - now)

    async def _connection(self) -> Connection:
        if self._conn is None or self._conn.closed:
            self._reset_session()
            self._conn = await Connection.open(self.host, self.port,
                                               client_id=f"replica-{self.broker_id}",
                                               node_id=self.broker_id)
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._reset_session()
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    def _release_delays(self) -> None:
        """Partitions whose delay is over are fetched again."""
        if not self._delayed:
            return
        now = self.clock.monotonic_ms()
        for tp in [tp for tp in self._delayed
                   if (s := self.partitions.get(tp)) is None or s.delayed_until_ms <= now]:
            self._delayed.discard(tp)
            self._pending.add(tp)

    def _release_held(self) -> None:
        """Throttled partitions are fetched again once the bucket holds a quantum."""
        if self._held and self.throttle.ready():
            self._pending |= self._held
            self._held = set()

    def _wanted(self, tp: Key) -> tuple[int, int, FetchState] | None:
        """What the leader should fetch for `tp` now, or None (not fetched)."""
        s = self.partitions.get(tp)
        if s is None or s.truncating or tp in self._delayed:
            return None
        if s.throttled and not s.reserved and not self.throttle.ready():
            self._held.add(tp)
            return None
        return (s.partition.log.log_end_offset, s.leader_epoch, s)

    # ------------------------------------------------------------------ truncation

    async def _truncate(self, conn: Connection) -> None:
        """OffsetForLeaderEpoch for every partition that just got a new leader."""
        for _ in range(MAX_TRUNCATION_ROUNDS):
            now = self.clock.monotonic_ms()
            todo = [(tp, s) for tp in self._truncating
                    if (s := self.partitions.get(tp)) is not None and s.delayed_until_ms <= now]
            if not todo:
                return
            asked: dict[Key, tuple[FetchState, int]] = {}
            by_topic: dict[str, list[list[int]]] = {}
            for tp, s in todo:
                plog = s.partition.log
                epoch = plog.latest_epoch
                if epoch < 0:
                    # Nothing written under any epoch: nothing can diverge.
                    self._truncated(tp, s)
                    continue
                asked[tp] = (s, epoch)
                by_topic.setdefault(tp[0], []).append([tp[1], s.leader_epoch, epoch])
            if not asked:
                return
            resp = await conn.request(
                ApiKey.OFFSET_FOR_LEADER_EPOCH,
                {"replica_id": self.broker_id, "topics": [[t, r] for t, r in by_topic.items()]},
                timeout_ms=REQUEST_MARGIN_MS)
            again = False
            for topic, rows in resp["topics"]:
                for p, err, leader_epoch, end_offset in rows:
                    entry = asked.get((topic, p))
                    if entry is None or self.partitions.get((topic, p)) is not entry[0]:
                        continue
                    state, asked_epoch = entry
                    if err != ErrorCode.NONE:
                        self._on_partition_error((topic, p), state, err)
                        continue
                    again |= self._apply_epoch_answer(state, asked_epoch, leader_epoch,
                                                      end_offset)
                    if not state.truncating:
                        self._truncated((topic, p), state)
            if not again:
                return

    def _truncated(self, tp: Key, state: FetchState) -> None:
        state.truncating = False
        self._truncating.discard(tp)
        self._pending.add(tp)

    def _apply_epoch_answer(self, state: FetchState, asked_epoch: int, leader_epoch: int,
                            end_offset: int) -> bool:
        """Truncate after an OffsetForLeaderEpoch answer; True if another round is needed."""
        part = state.partition
        plog = part.log
        if leader_epoch < 0 or end_offset < 0:
            # The leader cannot answer for our epochs (its cache starts later): fall back
            # to the high watermark, as Kafka does.
            part.truncate_to(part.high_watermark)
            state.truncating = False
            return False
        if leader_epoch == asked_epoch:
            part.truncate_to(min(end_offset, plog.log_end_offset))
            state.truncating = False
            return False
        # The leader knows only an older epoch: cut to where that epoch ends for us and for
        # it, then ask again with our (now older) latest epoch.
        our_epoch, our_end = plog.end_offset_for_epoch(leader_epoch)
        cut = min(end_offset, our_end if our_end >= 0 else plog.log_end_offset)
        part.truncate_to(cut)
        if our_epoch == leader_epoch or plog.latest_epoch <= leader_epoch:
            state.truncating = False
            return False
        return True

    # ------------------------------------------------------------------ fetch

    async def _fetch(self, conn: Connection) -> bool:
        """One FETCH: full (a new session, or the leader keeps none) or incremental.
        False if there was nothing to fetch."""
        self._release_delays()
        self._release_held()
        full = self._session_id == 0
        if full:
            wanted = {tp: w for tp in self.partitions if (w := self._wanted(tp)) is not None}
            if not wanted:
                return False
            items = list(wanted.items())
            # Rotate the order: the leader fills the response in request order up to
            # max_bytes, so a fixed order would starve the last partitions during catch-up.
            self._rotation = (self._rotation + 1) % len(items)
            listed = items[self._rotation:] + items[:self._rotation]
            forgotten: list[Key] = []
            known = wanted
        else:
            # changed in place: a failed request resets the session anyway
            known = self._known
            listed = []
            forgotten = []
            for tp in self._pending:
                w = self._wanted(tp)
                old = known.get(tp)
                if w is None:
                    if old is not None:
                        del known[tp]
                        forgotten.append(tp)
                        self._settle(old[2], 0)
                elif old is None or old[0] != w[0] or old[1] != w[1] or old[2] is not w[2]:
                    known[tp] = w
                    listed.append((tp, w))
            if not known and not forgotten:
                self._pending = set()
                return False
        fresh = [st for _, (_, _, st) in listed if st.throttled and not st.reserved]
        if fresh and self.throttle.enabled:
            share = self.throttle.reserve(len(fresh))
            for st in fresh:
                st.reserved = share
        by_topic: dict[str, list[list[int]]] = {}
        for tp, (offset, epoch, st) in listed:
            by_topic.setdefault(tp[0], []).append(
                [tp[1], offset, epoch, st.reserved or self.max_bytes])
        gone: dict[str, list[int]] = {}
        for tp in forgotten:
            gone.setdefault(tp[0], []).append(tp[1])
        # a partition waiting out an error backoff is fetched again when it ends, not
        # when a long-poll over the others happens to end
        wait_ms = min(self.max_wait_ms, self._next_ready_in_ms()) \
            if self._delayed or self._held else self.max_wait_ms
        body = {"replica_id": self.broker_id, "max_wait_ms": wait_ms, "min_bytes": 1,
                "max_bytes": self.max_bytes, "topics": [[t, r] for t, r in by_topic.items()],
                "session_id": self._session_id,
                "session_epoch": 0 if full else self._session_epoch + 1,
                "forgotten": [[t, ps] for t, ps in gone.items()]}
        self.stats_partitions_sent += len(listed) + len(forgotten)
        pending, self._pending = self._pending, set()
        try:
            # a VectoredBody asks for the raw form: the records arrive as views of the
            # received frame and go to the segment's writev uncopied
            resp = await conn.request(ApiKey.FETCH, VectoredBody(body),
                                      timeout_ms=self.max_wait_ms + REQUEST_MARGIN_MS)
        except BaseException:
            self._pending |= pending
            raise
        self.stats_fetches += 1
        if full:
            self.stats_full_fetches += 1
        err = resp.get("error", 0)
        if err:
            # the leader lost the session (restarted, evicted it) or we are out of step
            log.info("broker=%d fetcher from %d: session %d: %s; sending a full fetch",
                     self.broker_id, self.leader_id, self._session_id, _code_name(err))
            self._reset_session()
            return True
        session_id = resp.get("session_id", 0)
        if full:
            self._session_epoch = 0
        else:
            self._session_epoch += 1
        if session_id and (full or session_id == self._session_id):
            self._session_id = session_id
            self._known = known
        else:
            # no session (a leader that keeps none): every request is a full one
            self._session_id = 0
            self._known = {}
        self._apply_response(resp, known)
        return True

    def _apply_response(self, resp: Any, known: dict[Key, tuple[int, int, FetchState]]) -> None:
        for topic, rows in resp["topics"]:
            for p, err, hw, log_start, leo, records in rows:
                tp = (topic, p)
                entry = known.get(tp)
                if entry is None:
                    continue
                offset, _, state = entry
                if self.partitions.get(tp) is not state or state.truncating:
                    continue  # removed or re-added while the fetch was in flight
                if state.reserved and (len(records) or err != ErrorCode.NONE):
                    self._settle(state, len(records))
                part = state.partition
                if part.log.log_end_offset != offset:
                    self._pending.add(tp)  # tell the leader where we are
                    continue
                if err != ErrorCode.NONE:
                    self._on_partition_error(tp, state, err, leader_leo=leo,
                                             leader_start=log_start)
                    continue
                try:
                    part.append_as_follower(records, hw, log_start)
                except (LogError, DmqError) as exc:
                    code = error_code_of(exc)
                    log.warning("broker=%d %s: follower append at %d failed: %s (%s)",
                                self.broker_id, part.name, offset, exc, code.name)
                    self._set_truncating(tp, state)
                    self._delay(tp, state, self.clock.monotonic_ms() + RETRY_BACKOFF_MS)
                    continue
                if len(records):
                    self.stats_bytes += len(records)
                    self._pending.add(tp)

    def _on_partition_error(self, tp: Key, state: FetchState, err: int, leader_leo: int = -1,
                            leader_start: int = -1) -> None:
        part = state.partition
        now = self.clock.monotonic_ms()
        self._pending.add(tp)
        self._stale(tp)
        if err == ErrorCode.OFFSET_OUT_OF_RANGE:
            leo = part.log.log_end_offset
            if leader_leo >= 0 and leo > leader_leo:
                # Only after an unclean election: the leader has less than we do.
                part.truncate_to(leader_leo)
            elif leader_start > leo:
                part.truncate_fully_and_start_at(leader_start)
            else:
                self._delay(tp, state, now + RETRY_BACKOFF_MS)
            return
        if err == ErrorCode.FENCED_LEADER_EPOCH:
            # Our image is older than the leader's: wait for the image to re-add us.
            self._delay(tp, state, now + FENCED_BACKOFF_MS)
            return
        self._delay(tp, state, now + RETRY_BACKOFF_MS)
        if err not in (ErrorCode.UNKNOWN_LEADER_EPOCH, ErrorCode.NOT_LEADER_OR_FOLLOWER,
                       ErrorCode.UNKNOWN_TOPIC_OR_PARTITION):
            log.info("broker=%d %s: fetch error %s from leader %d", self.broker_id, part.name,
                     _code_name(err), self.leader_id)


class FetcherManager:
    """The fetchers of one broker, one per source leader broker. It is handed what it
    needs of the broker (its id, clock, a way to run a task it owns, and whom to tell
    when a fetcher dies), not the replica manager itself."""

    def __init__(self, broker_id: int, clock: Clock, config: ClusterConfig, spawn: Spawn,
                 on_fatal: OnFatal) -> None:
        self.broker_id = broker_id
        self.clock = clock
        self.config = config
        self._spawn = spawn
        self._on_fatal = on_fatal
        self.fetchers: dict[int, ReplicaFetcher] = {}
        self._owner: dict[tuple[str, int], int] = {}
        # one bucket for every fetcher: the rate is the broker's
        self.throttle = ReplicationThrottle(clock.monotonic_ms,
                                            int(config.get("replica.fetch.max.bytes")))
        self.set_throttle_rate(int(config.get("follower.replication.throttled.rate")))

    def set_throttle_rate(self, rate: int) -> None:
        """`follower.replication.throttled.rate` in bytes/s (<= 0: no limit)."""
        if max(rate, 0) != self.throttle.rate:
            self.throttle.set_rate(rate)
            for f in self.fetchers.values():
                f.throttle_changed()

    def add_partition(self, partition: Partition, leader: BrokerInfo, force: bool,
                      throttled: bool = False) -> None:
        """Follow `partition` on `leader`; `throttled`: it is a replica being added by a
        reassignment, not in sync yet (its catch-up takes the throttle)."""
        tp = (partition.topic, partition.partition)
        fetcher = self.fetchers.get(leader.broker_id)
        if fetcher is not None and (fetcher.host, fetcher.port) != (leader.host, leader.port):
            moved = list(fetcher.partitions.values())
            self._retire(leader.broker_id)
            fetcher = None
            for s in moved:
                self._owner.pop((s.partition.topic, s.partition.partition), None)
                if (s.partition.topic, s.partition.partition) != tp:
                    self.add_partition(s.partition, leader, force=True,
                                       throttled=s.throttled)
            # the fetcher at the new address the others went to (a second one would
            # replace it here and leave it fetching, untracked)
            fetcher = self.fetchers.get(leader.broker_id)
        owner = self._owner.get(tp)
        if owner == leader.broker_id and fetcher is not None:
            state = fetcher.partitions.get(tp)
            if not force and state is not None and state.leader_epoch == partition.leader_epoch:
                fetcher.set_throttled(tp, throttled)
                return
            # same leader, new epoch: the fetcher takes the new state (truncation first);
            # removing it first would stop the fetcher if it was its only partition,
            # and the partition would be added to a fetcher that is ending
            fetcher.add(partition, throttled)
            return
        self.remove_partition(tp)
        if fetcher is None:
            fetcher = ReplicaFetcher(self.broker_id, self.clock, leader, self.config,
                                     self._on_fatal, self.throttle)
            self.fetchers[leader.broker_id] = fetcher
            fetcher.start()
        fetcher.add(partition, throttled)
        self._owner[tp] = leader.broker_id

    def remove_partition(self, tp: tuple[str, int]) -> None:
        owner = self._owner.pop(tp, None)
        if owner is None:
            return
        fetcher = self.fetchers.get(owner)
        if fetcher is not None:
            fetcher.remove(tp)
            if not fetcher.partitions:
                self._retire(owner)

    def _retire(self, leader_id: int) -> None:
        fetcher = self.fetchers.pop(leader_id, None)
        if fetcher is not None:
            self._spawn(fetcher.stop(), f"stop-fetcher-{leader_id}")

    async def stop(self) -> None:
        fetchers, self.fetchers = list(self.fetchers.values()), {}
        self._owner.clear()
        await asyncio.gather(*(f.stop() for f in fetchers), return_exceptions=True)

    def info(self) -> dict[str, Any]:
        return {str(k): len(f.partitions) for k, f in self.fetchers.items()}


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return str(code)
