"""`Partition`: one replica of one partition on this broker, leader or follower.

Owns the replication state of a partition: role, leader epoch, partition epoch,
replica set and ISR as last accepted by the controller, the in-flight ISR proposal,
the high watermark, and (as leader) each follower's log end offset and fetch times.
It also owns the waiters parked on the partition: acks=all produces waiting for the
high watermark, and long-poll fetches waiting for new data or a high watermark move.

Rules (Kafka's ReplicationUtils / Partition.scala, simplified):
- HW = min LEO over the *maximal* ISR (accepted ISR plus a pending expansion), never
  moving backwards. Followers with an unknown LEO (none fetched yet in this epoch) hold
  the HW where it is.
- A follower is caught up when its fetch offset reaches the leader's LEO at the time
  of a fetch; `last_caught_up_ms` is the last moment it was. ISR members not caught up
  for `replica.lag.time.max.ms` are proposed for removal; a non-member whose LEO reaches
  the HW (and the start of the current leader epoch) is proposed for addition.
- A follower fetching through a fetch session (dmq.broker.fetch_session) lists a
  partition only when its fetch offset changes; every request of the session counts as
  a fetch of the others at their last offsets, so such a follower is caught up as of
  the session's last request while its offset is the leader's LEO (credited lazily:
  nothing walks the partitions of an idle session).
- One ISR proposal in flight at a time. The accepted ISR changes only when the
  controller accepts (AlterPartition answer or a newer image).
- min.insync.replicas is checked against the accepted ISR before appending.

It never touches sockets or timers: the replica manager sends AlterPartition, runs the
timers and hands in the time. Waiters are futures completed here, never awaited here.
Events the replica manager tracks (a partition whose ISR may need a look, a high
watermark that moved) go to its `listener`; news for followers' fetch sessions to the
sessions in `watchers`.
"""

from __future__ import annotations

import heapq
import logging
from asyncio import Future
from collections.abc import Callable
from typing import Any, Protocol

from dmq.log.batch import Buffer
from dmq.log.partition_log import LogAppendInfo, PartitionLog
from dmq.protocol.errors import (
    ErrorCode,
    FencedLeaderEpochError,
    NotEnoughReplicasError,
    NotLeaderOrFollowerError,
    UnknownLeaderEpochError,
)

log = logging.getLogger("dmq.broker")

NO_LEADER = -1
UNKNOWN_OFFSET = -1


class PartitionListener(Protocol):
    """What the replica manager wants to hear of a partition."""

    def watch_isr(self, part: Partition) -> None:
        """The ISR of `part` may need a look (appends, role and ISR changes)."""

    def hw_moved(self, part: Partition) -> None:
        """The high watermark of `part` changed (the checkpoint is due)."""


class ReplicaState:
    """The leader's view of one follower."""

    __slots__ = ("broker_id", "last_caught_up_ms", "last_fetch_leader_leo", "last_fetch_ms",
                 "last_sent_hw", "log_end_offset", "session_entry")

    def __init__(self, broker_id: int, now_ms: int) -> None:
        self.broker_id = broker_id
        self.log_end_offset = UNKNOWN_OFFSET
        self.last_fetch_ms = now_ms
        self.last_fetch_leader_leo = UNKNOWN_OFFSET
        self.last_sent_hw = UNKNOWN_OFFSET  # the HW in the last fetch answer it got
        # An ISR member starts as caught up at election time, as in Kafka: it gets a
        # whole lag period to fetch before it can be dropped.
        self.last_caught_up_ms = now_ms
        # its fetch session's entry for this partition (a SessionPartition), when the
        # last fetch listing this partition came through a session
        self.session_entry: Any = None

    def caught_up_ms(self, leader_leo: int) -> int:
        """`last_caught_up_ms`, with the credit of its fetch session: every request of
        the session fetches this partition at `log_end_offset`, caught up while that is
        the leader's LEO (which only grows: it was at each of those requests)."""
        e = self.session_entry
        if e is not None and e.active and self.log_end_offset >= leader_leo:
            t: int = e.session.last_request_ms
            if t > self.last_caught_up_ms:
                return t
        return self.last_caught_up_ms

    def last_heard_ms(self) -> int:
        """When it last fetched this partition (its session's requests count)."""
        e = self.session_entry
        if e is not None and e.active:
            return max(self.last_fetch_ms, int(e.session.last_request_ms))
        return self.last_fetch_ms


class ProduceWaiter:
    """One acks=all produce request waiting on the high watermark of its partitions.

    `rows` are the response rows ([partition, error, base_offset, log_start, msg]);
    `remaining` counts rows still waiting. The future completes when it reaches 0.
    """

    __slots__ = ("done", "future", "remaining", "rows")

    def __init__(self, future: Future[None]) -> None:
        self.future = future
        self.rows: list[list[Any]] = []
        self.remaining = 0
        self.done = False

    def complete_row(self, row: list[Any], error: ErrorCode, msg: str | None = None) -> None:
        if self.done or row[1] is not None:
            return
        row[1] = int(error)
        if msg is not None:
            row[4] = msg
        self.remaining -= 1
        if self.remaining <= 0:
            self.finish()

    def finish(self) -> None:
        if not self.done:
            self.done = True
            if not self.future.done():
                self.future.set_result(None)


class Partition:
    """Replica of (topic, partition) on broker `broker_id`."""

    def __init__(self, topic: str, partition: int, topic_id: str, log_: PartitionLog,
                 broker_id: int, now_ms: Callable[[], int], high_watermark: int = 0) -> None:
        self.topic = topic
        self.partition = partition
        self.topic_id = topic_id
        self.log = log_
        self.broker_id = broker_id
        self._now_ms = now_ms
        self.leader_id = NO_LEADER
        self.leader_epoch = -1
        self.partition_epoch = -1
        self.replicas: tuple[int, ...] = ()
        self.isr: tuple[int, ...] = ()
        self.pending_isr: tuple[int, ...] | None = None
        self.isr_retry_at_ms = 0  # no new proposal before this (after a refusal)
        self.min_insync_replicas = 1
        self.leader_epoch_start_offset = 0
        self.high_watermark = min(max(high_watermark, log_.log_start_offset), log_.log_end_offset)
        self.followers: dict[int, ReplicaState] = {}
        # led here: the replicas a reassignment in progress is adding (while one is not
        # in the ISR, what it fetches takes the leader's replication throttle)
        self.adding: tuple[int, ...] = ()
        self.deleted = False
        self.listener: PartitionListener | None = None
        # follower broker id -> its fetch session (FetchSession.mark(key, wake))
        self.watchers: dict[int, Any] = {}
        # plain counters read by the metrics scrape (per batch, never per record)
        self.bytes_in = 0
        self.records_in = 0
        self.bytes_out = 0
        self.records_out = 0
        # waiters
        self._data_waiters: set[Future[None]] = set()   # follower fetches: LEO moves
        self._hw_waiters: set[Future[None]] = set()     # consumer fetches: HW moves
        self._acks: list[tuple[int, int, ProduceWaiter, list[Any]]] = []  # heap by offset
        self._acks_seq = 0


    def catching_up(self, replica_id: int) -> bool:
        """`replica_id` is being added by a reassignment and is not in sync yet: what
        the leader's replication throttle applies to (in-sync followers never)."""
        return replica_id in self.adding and replica_id not in self.isr
    def __repr__(self) -> str:
        return (f"Partition({self.topic}-{self.partition} leader={self.leader_id} "
                f"epoch={self.leader_epoch} isr={self.isr} hw={self.high_watermark} "
                f"leo={self.log.log_end_offset})")

    @property
    def name(self) -> str:
        return f"{self.topic}-{self.partition}"

    @property
    def is_leader(self) -> bool:
        return self.leader_id == self.broker_id and not self.deleted

    @property
    def log_end_offset(self) -> int:
        return self.log.log_end_offset

    @property
    def maximal_isr(self) -> tuple[int, ...]:
        if self.pending_isr is None:
            return self.isr
        return tuple(sorted(set(self.isr) | set(self.pending_isr)))

    # ------------------------------------------------------------------ role changes

    def make_leader(self, leader_epoch: int, partition_epoch: int, replicas: tuple[int, ...],
                    isr: tuple[int, ...]) -> bool:
        """Apply a leader assignment from the image. True if this is a new leadership
        (new epoch or role change), False for an ISR/replica update within the epoch."""
        now = self._now_ms()
        new_term = not self.is_leader or leader_epoch != self.leader_epoch
        if not new_term and partition_epoch <= self.partition_epoch:
            return False
        self.replicas = tuple(replicas)
        if new_term:
            self.leader_id = self.broker_id
            self.leader_epoch = leader_epoch
            self.partition_epoch = partition_epoch
            self.isr = tuple(isr)
            self.pending_isr = None
            self.leader_epoch_start_offset = self.log.log_end_offset
            # KIP-101: the epoch starts at our LEO even before anything is appended in it,
            # so OffsetForLeaderEpoch answers followers correctly at once.
            self.log.epoch_cache.assign(leader_epoch, self.log.log_end_offset)
            self.followers = {b: ReplicaState(b, now) for b in self.replicas
                              if b != self.broker_id}
            log.info("broker=%d %s: leader at epoch %d, isr=%s, leo=%d, hw=%d", self.broker_id,
                     self.name, leader_epoch, self.isr, self.log_end_offset, self.high_watermark)
        else:
            self.partition_epoch = partition_epoch
            self.isr = tuple(isr)
            self.pending_isr = None
            for b in self.replicas:
                if b != self.broker_id and b not in self.followers:
                    self.followers[b] = ReplicaState(b, now)
            for b in list(self.followers):
                if b not in self.replicas:
                    del self.followers[b]
        self.maybe_advance_high_watermark()
        self._complete_acks()
        if self.listener is not None:
            self.listener.watch_isr(self)
        return new_term

    def make_follower(self, leader_id: int, leader_epoch: int, partition_epoch: int,
                      replicas: tuple[int, ...], isr: tuple[int, ...]) -> bool:
        """Apply a follower assignment. True when the leader or epoch changed (the
        fetcher must truncate against the new leader before fetching)."""
        changed = (self.leader_id != leader_id or leader_epoch != self.leader_epoch
                   or self.leader_id == self.broker_id)
        was_leader = self.leader_id == self.broker_id
        self.leader_id = leader_id
        self.leader_epoch = leader_epoch
        self.partition_epoch = partition_epoch
        self.replicas = tuple(replicas)
        self.isr = tuple(isr)
        self.pending_isr = None
        self.followers = {}
        if changed:
            log.info("broker=%d %s: follower of %d at epoch %d (leo=%d hw=%d)%s",
                     self.broker_id, self.name, leader_id, leader_epoch, self.log_end_offset,
                     self.high_watermark, " (was leader)" if was_leader else "")
            self.fail_waiters(ErrorCode.NOT_LEADER_OR_FOLLOWER)
        return changed

    def fail_waiters(self, error: ErrorCode) -> None:
        """Answer every parked produce with `error` and wake every parked fetch."""
        acks, self._acks = self._acks, []
        for _, _, waiter, row in acks:
            waiter.complete_row(row, error)
        self._wake(self._data_waiters)
        self._wake(self._hw_waiters)
        self._tell_sessions(True)

    # ------------------------------------------------------------------ checks

    def check_leader(self, current_leader_epoch: int = -1) -> None:
        """Raise unless this replica leads at `current_leader_epoch` (-1: unchecked)."""
        if current_leader_epoch >= 0:
            if current_leader_epoch < self.leader_epoch:
                raise FencedLeaderEpochError(
                    f"{self.name}: epoch {current_leader_epoch} < current {self.leader_epoch}")
            if current_leader_epoch > self.leader_epoch:
                raise UnknownLeaderEpochError(
                    f"{self.name}: epoch {current_leader_epoch} > known {self.leader_epoch}")
        if not self.is_leader:
            raise NotLeaderOrFollowerError(f"{self.name}: leader is {self.leader_id}")

    # ------------------------------------------------------------------ leader: produce

    def append_as_leader(self, records: Buffer, required_acks: int) -> LogAppendInfo:
        """Check min ISR (acks=all), append, and move the HW if the ISR is just us."""
        if required_acks == -1 and len(self.isr) < self.min_insync_replicas:
            raise NotEnoughReplicasError(
                f"{self.name}: isr {list(self.isr)} smaller than min.insync.replicas "
                f"{self.min_insync_replicas}")
        followers = self.followers
        if followers:
            # followers caught up until now stop being so: keep the credit their fetch
            # sessions gave them up to this moment
            leo = self.log.log_end_offset
            for st in followers.values():
                if st.session_entry is not None:
                    st.last_caught_up_ms = st.caught_up_ms(leo)
        info = self.log.append_as_leader(records, self.leader_epoch)
        if not info.duplicate:
            self.bytes_in += info.size_bytes
            self.records_in += info.record_count
            self._wake(self._data_waiters)
            if self.watchers:
                self._tell_sessions(True)
            if self.listener is not None:
                self.listener.watch_isr(self)
            self.maybe_advance_high_watermark()
        return info

    def park_produce(self, waiter: ProduceWaiter, row: list[Any], required_offset: int) -> bool:
        """Park an acks=all row until HW >= `required_offset`. False if already satisfied."""
        if self.high_watermark >= required_offset:
            return False
        self._acks_seq += 1
        heapq.heappush(self._acks, (required_offset, self._acks_seq, waiter, row))
        waiter.remaining += 1
        return True

    def _complete_acks(self) -> None:
        acks = self._acks
        hw = self.high_watermark
        while acks and (acks[0][0] <= hw or acks[0][2].done):
            _, _, waiter, row = heapq.heappop(acks)
            if len(self.isr) < self.min_insync_replicas:
                waiter.complete_row(row, ErrorCode.NOT_ENOUGH_REPLICAS_AFTER_APPEND)
            else:
                waiter.complete_row(row, ErrorCode.NONE)

    # ------------------------------------------------------------------ leader: followers

    def update_follower_fetch(self, replica_id: int, fetch_offset: int,
                              session_entry: Any = None) -> bool:
        """Record a follower fetch at `fetch_offset` (its LEO), through the fetch session
        entry `session_entry` if any. Returns True if the HW moved."""
        st = self.followers.get(replica_id)
        if st is None:
            return False
        st.session_entry = session_entry
        now = self._now_ms()
        leo = self.log.log_end_offset
        if fetch_offset >= leo:
            st.last_caught_up_ms = now
        elif fetch_offset >= st.last_fetch_leader_leo >= 0:
            st.last_caught_up_ms = max(st.last_caught_up_ms, st.last_fetch_ms)
        st.log_end_offset = fetch_offset
        st.last_fetch_ms = now
        st.last_fetch_leader_leo = leo
        return self.maybe_advance_high_watermark()

    def maybe_advance_high_watermark(self) -> bool:
        if not self.is_leader:
            return False
        new_hw = self.log.log_end_offset
        followers = self.followers
        for b in self.maximal_isr:
            if b == self.broker_id:
                continue
            st = followers.get(b)
            if st is None or st.log_end_offset < 0:
                return False
            if st.log_end_offset < new_hw:
                new_hw = st.log_end_offset
        if new_hw <= self.high_watermark:
            return False
        self.high_watermark = new_hw
        self._wake(self._hw_waiters)
        caught_up = new_hw == self.log.log_end_offset
        if caught_up:
            # Everything is replicated: tell parked followers the HW now rather than at
            # their next long-poll timeout. (Under load the HW trails the LEO and the
            # next append carries it; waking them on every move would double fetches.)
            self._wake(self._data_waiters)
        if self.watchers:
            self._tell_sessions(caught_up)
        if self.listener is not None:
            self.listener.hw_moved(self)
        self._complete_acks()
        return True

    def _tell_sessions(self, wake: bool) -> None:
        """News for the followers' fetch sessions (`wake`: answer a parked one now)."""
        if self.watchers:
            key = (self.topic, self.partition)
            for session in list(self.watchers.values()):
                session.mark(key, wake)

    def note_log_start_moved(self) -> None:
        """Retention moved the log start: followers learn it with their next answer."""
        self._tell_sessions(False)

    def hw_news_for(self, replica_id: int) -> bool:
        st = self.followers.get(replica_id)
        return st is not None and self.high_watermark > st.last_sent_hw

    def note_hw_sent(self, replica_id: int) -> None:
        st = self.followers.get(replica_id)
        if st is not None:
            st.last_sent_hw = self.high_watermark

    def isr_expansion(self, lag_time_max_ms: int | None = None) -> tuple[int, ...] | None:
        """A new ISR adding caught-up followers, or None (also while a proposal is pending).
        With `lag_time_max_ms`, only followers that fetched within that time: a follower
        that went silent at the end of an idle log looks caught up forever."""
        now = self._now_ms()
        if not self.is_leader or self.pending_isr is not None or now < self.isr_retry_at_ms:
            return None
        add = [b for b, st in self.followers.items()
               if b not in self.isr and st.log_end_offset >= self.high_watermark
               and st.log_end_offset >= self.leader_epoch_start_offset
               and (lag_time_max_ms is None or now - st.last_heard_ms() <= lag_time_max_ms)]
        if not add:
            return None
        return tuple(sorted((*self.isr, *add)))

    def isr_shrink(self, lag_time_max_ms: int) -> tuple[int, ...] | None:
        """A new ISR without followers lagging longer than `lag_time_max_ms`, or None."""
        now = self._now_ms()
        if not self.is_leader or self.pending_isr is not None or now < self.isr_retry_at_ms:
            return None
        leo = self.log.log_end_offset
        out = [b for b in self.isr if b != self.broker_id and (
            (st := self.followers.get(b)) is None
            or now - st.caught_up_ms(leo) > lag_time_max_ms)]
        if not out:
            return None
        return tuple(b for b in self.isr if b not in out)

    def isr_settled(self, now_ms: int, grace_ms: int) -> bool:
        """True if nothing but an event can change this ISR: every ISR follower fetches
        through a live fetch session that requested within its long-poll + `grace_ms`
        and is at our LEO (so its credit grows with every request), no proposal is in
        flight, and no follower outside the ISR has caught up (it would be added)."""
        if not self.is_leader:
            return True
        if self.pending_isr is not None:
            return False
        leo = self.log.log_end_offset
        for b, st in self.followers.items():
            e = st.session_entry
            live = (e is not None and e.active and now_ms - e.session.last_request_ms
                    <= e.session.max_wait_ms + grace_ms)
            if b in self.isr:
                if not live or st.log_end_offset < leo:
                    return False
            elif live and st.log_end_offset >= self.high_watermark:
                return False
        return all(b == self.broker_id or b in self.followers for b in self.isr)

    def propose_isr(self, new_isr: tuple[int, ...]) -> None:
        self.pending_isr = new_isr

    def apply_isr(self, leader_epoch: int, partition_epoch: int, isr: tuple[int, ...]) -> None:
        """The controller accepted an ISR (AlterPartition answer)."""
        if leader_epoch != self.leader_epoch or partition_epoch < self.partition_epoch:
            self.pending_isr = None
            return
        old = self.isr
        self.isr = tuple(isr)
        self.partition_epoch = partition_epoch
        self.pending_isr = None
        if old != self.isr:
            log.info("broker=%d %s: isr %s -> %s (partition epoch %d)", self.broker_id, self.name,
                     list(old), list(self.isr), partition_epoch)
        self.maybe_advance_high_watermark()
        self._complete_acks()
        if self.listener is not None:
            self.listener.watch_isr(self)

    def clear_pending_isr(self, retry_after_ms: int = 0) -> None:
        """The proposal failed or was refused: forget it, propose again after a pause."""
        self.pending_isr = None
        self.isr_retry_at_ms = self._now_ms() + retry_after_ms
        if self.listener is not None:
            self.listener.watch_isr(self)

    # ------------------------------------------------------------------ follower side

    def append_as_follower(self, records: Buffer, leader_hw: int, leader_log_start: int) -> None:
        if len(records):
            self.log.append_as_follower(records)
            self._wake(self._data_waiters)
        self.update_follower_hw(leader_hw, leader_log_start)

    def update_follower_hw(self, leader_hw: int, leader_log_start: int) -> None:
        leo = self.log.log_end_offset
        new_hw = min(leader_hw, leo)
        if new_hw > self.high_watermark:
            self.high_watermark = new_hw
            self._wake(self._hw_waiters)
            if self.listener is not None:
                self.listener.hw_moved(self)
        if self.log.log_start_offset < leader_log_start <= leo:
            self.log.maybe_increment_log_start_offset(leader_log_start)

    def truncate_to(self, offset: int) -> None:
        if offset < self.log.log_end_offset:
            log.info("broker=%d %s: truncating from %d to %d", self.broker_id, self.name,
                     self.log.log_end_offset, offset)
            self.log.truncate_to(offset)
        if self.high_watermark > self.log.log_end_offset:
            self.high_watermark = self.log.log_end_offset
            if self.listener is not None:
                self.listener.hw_moved(self)

    def truncate_fully_and_start_at(self, offset: int) -> None:
        log.info("broker=%d %s: log restarts at %d", self.broker_id, self.name, offset)
        self.log.truncate_fully_and_start_at(offset)
        self.high_watermark = offset
        if self.listener is not None:
            self.listener.hw_moved(self)

    # ------------------------------------------------------------------ waiters

    def add_waiter(self, future: Future[None], follower: bool) -> None:
        (self._data_waiters if follower else self._hw_waiters).add(future)

    def remove_waiter(self, future: Future[None], follower: bool) -> None:
        (self._data_waiters if follower else self._hw_waiters).discard(future)

    @staticmethod
    def _wake(waiters: set[Future[None]]) -> None:
        if waiters:
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
            waiters.clear()

    def info(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "leader": self.leader_id,
                "leader_epoch": self.leader_epoch, "isr": list(self.isr),
                "high_watermark": self.high_watermark, "log_end_offset": self.log_end_offset,
                "log_start_offset": self.log.log_start_offset}
