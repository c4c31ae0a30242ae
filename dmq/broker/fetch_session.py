"""Leader side of incremental fetch sessions of replica fetchers (as Kafka's KIP-227).

A follower fetches every partition it follows on this broker with one long-poll. With
a session, the leader keeps what the follower last said of each partition (fetch
offset, leader epoch, size limit) and what it last answered (high watermark, log start
offset), so an idle request lists nothing and an idle answer holds nothing: the cost of
an idle follower is one small request per long-poll, whatever the partition count.

Owns the sessions of this broker (one per follower broker, at most `max_sessions`) and
each session's dirty set: partitions whose log end offset, high watermark or state
moved since they were last answered. A leader `Partition` marks the sessions of its
followers (`Partition.watchers`), so a parked session request wakes on news of any of
its partitions without anything walking them.

It must never decide what a follower is owed beyond what it asked: reading, errors and
the ISR bookkeeping stay in the handlers and `Partition`.
"""

from __future__ import annotations

import asyncio
import random
from collections import OrderedDict
from typing import Any

MAX_FETCH_SESSIONS = 1000
# A session request whose only news is a high watermark (no records, no error, no log
# start) is held this long for records to carry it: a follower's fetch that advances
# the HW (its acknowledgement of a batch) and the other followers' parked fetches are
# not answered HW-only each time; under acks=all load the next batch comes first and
# carries the HW. Idle, followers learn it this much later. At most the long poll.
HW_NEWS_LINGER_MS = 5

Key = tuple[str, int]


class SessionPartition:
    """One partition of a session: the follower's side and what it was last sent."""

    __slots__ = ("active", "epoch", "hw", "log_start", "max_bytes", "offset", "session")

    def __init__(self, session: FetchSession, offset: int, epoch: int, max_bytes: int) -> None:
        self.session = session
        self.offset = offset
        self.epoch = epoch
        self.max_bytes = max_bytes
        self.hw = -1          # -1: never answered, so the first answer carries it
        self.log_start = -1
        self.active = True    # False once forgotten or its session closed


class FetchSession:
    """The state one follower's fetcher keeps on this leader."""

    __slots__ = ("alive", "dirty", "epoch", "hw_due_ms", "id", "last_request_ms",
                 "max_wait_ms", "partitions", "quiet_reported", "replica_id", "waiter",
                 "watched")

    def __init__(self, session_id: int, replica_id: int, now_ms: int) -> None:
        self.id = session_id
        self.replica_id = replica_id
        self.epoch = 0
        self.alive = True
        self.partitions: dict[Key, SessionPartition] = {}
        # partitions to read at the next answer (insertion order: oldest news first)
        self.dirty: dict[Key, None] = {}
        self.waiter: asyncio.Future[None] | None = None
        self.last_request_ms = now_ms
        self.max_wait_ms = 0
        self.quiet_reported = False
        self.watched: dict[Key, Any] = {}  # key -> the Partition whose watcher we are
        # when high watermark news held back (HW_NEWS_LINGER_MS) is answered anyway
        # (None: none held)
        self.hw_due_ms: int | None = None

    def mark(self, key: Key, wake: bool = True) -> None:
        """News of a partition of this session (called by the leader `Partition`)."""
        if self.alive and key in self.partitions:
            self.dirty[key] = None
            if wake:
                waiter = self.waiter
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)

    def watch(self, key: Key, part: Any) -> None:
        """Be told of `part`'s news: its log end offset, HW, role (one session per
        follower broker, so this replaces a previous session of the same follower)."""
        if self.watched.get(key) is not part:
            self.watched[key] = part
            part.watchers[self.replica_id] = self

    def forget(self, key: Key) -> None:
        entry = self.partitions.pop(key, None)
        if entry is not None:
            entry.active = False
        self.dirty.pop(key, None)
        part = self.watched.pop(key, None)
        if part is not None and part.watchers.get(self.replica_id) is self:
            del part.watchers[self.replica_id]

    def close(self) -> list[Key]:
        """End the session; returns its partitions (their followers lose the credit of
        the session's requests: the ISR check must look at them)."""
        self.alive = False
        keys = list(self.partitions)
        for key in keys:
            self.forget(key)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return keys


class FetchSessionCache:
    """Every fetch session of this broker: one per follower broker, bounded."""

    def __init__(self, max_sessions: int = MAX_FETCH_SESSIONS) -> None:
        self.max_sessions = max_sessions
        self.sessions: OrderedDict[int, FetchSession] = OrderedDict()  # least recent first
        self.by_replica: dict[int, FetchSession] = {}
        # ids start at a random point, so a session id of a previous run of this broker
        # is almost surely unknown rather than taken by another follower
        self._next_id = random.randrange(1, 1 << 30)
        self.stats_created = 0
        self.stats_evicted = 0
        self.closed_keys: list[Key] = []  # partitions of closed sessions, for the ISR check

    def create(self, replica_id: int, now_ms: int) -> FetchSession:
        """A new session for `replica_id`, ending its previous one; beyond
        `max_sessions` the least recently used session is evicted (its follower gets
        FETCH_SESSION_ID_NOT_FOUND and starts over with a full fetch)."""
        old = self.by_replica.pop(replica_id, None)
        if old is not None:
            del self.sessions[old.id]
            self._close(old)
        while len(self.sessions) >= max(self.max_sessions, 1):
            _, victim = self.sessions.popitem(last=False)
            self.by_replica.pop(victim.replica_id, None)
            self.stats_evicted += 1
            self._close(victim)
        self._next_id = self._next_id % ((1 << 31) - 1) + 1
        session = FetchSession(self._next_id, replica_id, now_ms)
        self.sessions[session.id] = session
        self.by_replica[replica_id] = session
        self.stats_created += 1
        return session

    def get(self, session_id: int) -> FetchSession | None:
        session = self.sessions.get(session_id)
        if session is not None:
            self.sessions.move_to_end(session_id)
        return session

    def remove(self, session: FetchSession) -> None:
        if self.sessions.get(session.id) is session:
            del self.sessions[session.id]
        if self.by_replica.get(session.replica_id) is session:
            del self.by_replica[session.replica_id]
        self._close(session)

    def _close(self, session: FetchSession) -> None:
        self.closed_keys.extend(session.close())

    def gone_quiet(self, now_ms: int, grace_ms: int) -> list[FetchSession]:
        """Sessions with no request for longer than their long-poll plus `grace_ms`,
        each reported once until it speaks again (their followers may be lagging)."""
        out = []
        for s in self.sessions.values():
            if not s.quiet_reported and now_ms - s.last_request_ms > s.max_wait_ms + grace_ms:
                s.quiet_reported = True
                out.append(s)
        return out

    def clear(self) -> None:
        for s in list(self.sessions.values()):
            self.remove(s)
        self.closed_keys.clear()
