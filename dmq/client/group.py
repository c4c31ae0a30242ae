"""The consumer side of a consumer group: membership, reconciliation, commits.

`GroupMembership` owns one background task, the heartbeat loop, which runs
independently of the application's consumption: long processing between records does
not stop heartbeats (as long as the application awaits rather than blocks the loop).
It speaks the KIP-848-style protocol of `dmq.controller.group_coordinator`:

- join with epoch 0 and the subscription; keep alive with the member epoch and the
  partitions owned; leave with epoch -1 (-2 for a static member, whose partitions the
  coordinator keeps for its restart);
- when an answer's assignment differs from what is owned, reconcile *before* the next
  heartbeat: revoked partitions stop delivering records, their consumed positions are
  committed (with auto-commit on), ``on_partitions_revoked`` gets exactly the revoked
  set, then the shrunken ownership is confirmed at once with a heartbeat; added
  partitions start at their committed offsets and ``on_partitions_assigned`` gets
  exactly the added set;
- UNKNOWN_MEMBER_ID / FENCED_MEMBER_EPOCH mean the coordinator dropped us: the
  partitions are lost (``on_partitions_lost``, no commit) and the member rejoins;
- ``max_poll_interval_ms`` without the application polling: the member leaves the group
  (its partitions are lost) and rejoins at the next poll.

The consumer plugs in through `PartitionsOwner` (start/stop fetching partitions, the
consumed positions), which `dmq.client.consumer.Consumer` implements; the membership
never touches the consumer's state otherwise. Every request has a timeout; commits are
serialized so that they reach the coordinator, and so the Raft log, in order. Time
(heartbeat intervals, backoffs, the poll and auto-commit intervals) comes from the
injected clock.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dmq.client.cluster import CONTROLLER_WATCH_AFTER_MS
from dmq.client.records import PartitionKey
from dmq.clock import Clock, SystemClock, wait_for_ms
from dmq.metadata.discovery import ControllerChannel
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import (
    DmqError,
    ErrorCode,
    FencedMemberEpochError,
    StaleMemberEpochError,
    UnknownMemberIdError,
    error_for,
)

log = logging.getLogger("dmq.client.group")

JOIN_EPOCH = 0
LEAVE_EPOCH = -1
STATIC_LEAVE_EPOCH = -2
_LOST = (ErrorCode.UNKNOWN_MEMBER_ID, ErrorCode.FENCED_MEMBER_EPOCH)
_FATAL = (ErrorCode.FENCED_INSTANCE_ID, ErrorCode.INVALID_REQUEST,
          ErrorCode.INVALID_SESSION_TIMEOUT)


class PartitionsOwner(Protocol):
    """What the membership manager needs from the consumer (`Consumer` implements it)."""

    def start_partitions(self, committed: Mapping[PartitionKey, int | None]) -> None:
        """Begin fetching these partitions; None: no committed offset (reset policy)."""
        ...

    def stop_partitions(self, tps: Iterable[PartitionKey]) -> None:
        """Stop fetching and delivering these partitions; drop their buffered records."""
        ...

    def consumed_positions(self, tps: Iterable[PartitionKey]) -> dict[PartitionKey, int]:
        """The next offset to deliver for each partition that has a position."""
        ...


class RebalanceListener:
    """Override what you need; methods may be plain or `async def`."""

    def on_partitions_revoked(self, revoked: set[PartitionKey]) -> Any:
        return None

    def on_partitions_assigned(self, assigned: set[PartitionKey]) -> Any:
        return None

    def on_partitions_lost(self, lost: set[PartitionKey]) -> Any:
        """Partitions taken away without a chance to commit (fenced, session lost).
        Defaults to `on_partitions_revoked`, as in Kafka."""
        return self.on_partitions_revoked(lost)


class GroupFatalError(DmqError):
    """Membership cannot go on (another process took our static instance id, or the
    subscription is invalid); raised by the consumer's next poll."""


def _wire_owned(tps: Iterable[PartitionKey]) -> list[list[Any]]:
    by_topic: dict[str, list[int]] = {}
    for t, p in sorted(tps):
        by_topic.setdefault(t, []).append(p)
    return [[t, ps] for t, ps in sorted(by_topic.items())]


async def _call(fn: Any, arg: set[PartitionKey]) -> None:
    result = fn(arg)
    if inspect.isawaitable(result):
        await result


class GroupMembership:
    def __init__(self, controller: ControllerChannel | Sequence[tuple[str, int]],
                 group_id: str, owner: PartitionsOwner, *,
                 topics: Iterable[str] | None = None, pattern: str | None = None,
                 instance_id: str | None = None, listener: RebalanceListener | None = None,
                 session_timeout_ms: int = 10_000, rebalance_timeout_ms: int = 60_000,
                 heartbeat_interval_ms: int = 1000, max_poll_interval_ms: int = 300_000,
                 enable_auto_commit: bool = True, auto_commit_interval_ms: int = 5000,
                 assignor: str | None = None, request_timeout_ms: int = 5000,
                 client_id: str = "dmq-consumer", clock: Clock | None = None,
                 security: Any = None) -> None:
        """`security`: the TLS and SASL of its own controller channel (a
        `dmq.security.client_config.ClientSecurity`; None: the context's)."""
        if not group_id:
            raise ValueError("group_id must not be empty")
        if topics is None and pattern is None:
            raise ValueError("subscribe to topics or a pattern")
        # requests go to the active controller and follow it across failovers
        self._own_channel = not isinstance(controller, ControllerChannel)
        self.channel = controller if isinstance(controller, ControllerChannel) else \
            ControllerChannel(list(controller), client_id=client_id,
                              watch_after_ms=CONTROLLER_WATCH_AFTER_MS, security=security)
        self.group_id = group_id
        self.owner = owner
        self.topics = sorted(set(topics or ()))
        self.pattern = pattern
        self.instance_id = instance_id
        self.listener = listener or RebalanceListener()
        self.session_timeout_ms = session_timeout_ms
        self.rebalance_timeout_ms = rebalance_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.max_poll_interval_ms = max_poll_interval_ms
        self.enable_auto_commit = enable_auto_commit
        self.auto_commit_interval_ms = auto_commit_interval_ms
        self.assignor = assignor
        self.request_timeout_ms = request_timeout_ms
        self.clock = clock or SystemClock()

        self.member_id = ""
        self.member_epoch = JOIN_EPOCH
        self.owned: set[PartitionKey] = set()
        self.fatal_error: DmqError | None = None
        self.rebalances = 0  # assignment changes applied (for tests and metrics)
        self._send_subscription = True
        self._last_poll_ms = self.clock.monotonic_ms()
        self._poll_expired = False
        self._next_commit_ms = self.clock.monotonic_ms() + auto_commit_interval_ms
        self._committed: dict[PartitionKey, int] = {}  # last offsets we committed
        self._commit_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._assigned_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._reconciler: asyncio.Task[None] | None = None
        self._target: set[PartitionKey] | None = None  # the coordinator's latest answer
        self._closing = False

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"dmq-group-{self.group_id}")

    def subscribe(self, topics: Iterable[str] | None = None, pattern: str | None = None) -> None:
        """Change the subscription; it reaches the coordinator with the next heartbeat."""
        self.topics = sorted(set(topics or ()))
        self.pattern = pattern
        self._send_subscription = True
        self._wake.set()

    def note_poll(self) -> None:
        """The application asked for records (resets the max.poll.interval clock;
        the first poll starts the membership)."""
        if self._task is None and not self._closing:
            self.start()
        self._last_poll_ms = self.clock.monotonic_ms()
        if self._poll_expired:
            self._poll_expired = False
            self._wake.set()
        if self.fatal_error is not None:
            raise self.fatal_error

    async def wait_for_assignment(self, timeout_ms: int) -> bool:
        try:
            await wait_for_ms(self.clock, self._assigned_event.wait(), timeout_ms)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        """Commit (with auto-commit on), revoke, leave the group, stop the loop."""
        if self._closing:
            return
        self._closing = True
        reconciler = self._reconciler
        self._stop_reconciling()
        for task in (self._task, reconciler):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self.member_epoch > 0:
            try:
                await self._revoke(set(self.owned))
            except Exception as exc:  # leaving must still be attempted
                log.warning("group=%s revoke on close failed: %s", self.group_id, exc)
            try:
                await self._request(ApiKey.CONSUMER_GROUP_HEARTBEAT, {
                    "group_id": self.group_id, "member_id": self.member_id,
                    "member_epoch": STATIC_LEAVE_EPOCH if self.instance_id else LEAVE_EPOCH,
                    "instance_id": self.instance_id}, timeout_ms=self.request_timeout_ms)
            except DmqError as exc:
                log.info("group=%s leave not acknowledged: %s", self.group_id, exc)
        self.member_epoch = LEAVE_EPOCH
        if self._own_channel:
            await self.channel.close()

    # ---- the heartbeat loop -----------------------------------------------------------
    async def _run(self) -> None:
        failures = 0
        while not self._closing:
            delay_ms = self.heartbeat_interval_ms
            self._wake.clear()  # a wake-up during this heartbeat sends the next one at once
            try:
                if self._check_poll_interval():
                    await self._leave_for_stale_poll()
                if not self._poll_expired:
                    delay_ms = await self._heartbeat()
                    failures = 0
                    await self._maybe_auto_commit()
            except asyncio.CancelledError:
                raise
            except DmqError as exc:
                failures += 1
                delay_ms = self._on_error(exc, failures)
            except Exception:
                failures += 1
                log.exception("group=%s heartbeat loop error", self.group_id)
                delay_ms = min(5000, 100 * 2 ** min(failures, 6))
            if delay_ms > 0:
                try:
                    await wait_for_ms(self.clock, self._wake.wait(), delay_ms)
                except TimeoutError:
                    pass

    def _on_error(self, exc: DmqError, failures: int) -> int:
        if exc.code in _LOST:
            log.info("group=%s member %s dropped by the coordinator (%s); rejoining",
                     self.group_id, self.member_id, exc.code.name)
            self._lose_partitions()
            self.member_epoch = JOIN_EPOCH
            self._send_subscription = True
            return 0
        if exc.code in _FATAL:
            log.error("group=%s cannot stay in the group: %s", self.group_id, exc)
            self.fatal_error = GroupFatalError(str(exc))
            self._lose_partitions()
            self._closing = True
            return 0
        # coordinator moving, not ready, unreachable, or our static instance id still
        # held by our previous incarnation: back off and try again
        log.debug("group=%s heartbeat failed (%s), retry %d", self.group_id, exc, failures)
        return int(min(self.heartbeat_interval_ms, 50 * 2 ** min(failures, 5)))

    def _check_poll_interval(self) -> bool:
        if self._poll_expired or self.member_epoch <= 0:
            return False
        idle_ms = self.clock.monotonic_ms() - self._last_poll_ms
        return idle_ms > self.max_poll_interval_ms

    async def _leave_for_stale_poll(self) -> None:
        log.warning("group=%s no poll for more than max_poll_interval_ms=%d: leaving the "
                    "group until the application polls again", self.group_id,
                    self.max_poll_interval_ms)
        self._poll_expired = True
        self._lose_partitions()
        try:
            await self._request(ApiKey.CONSUMER_GROUP_HEARTBEAT, {
                "group_id": self.group_id, "member_id": self.member_id,
                "member_epoch": LEAVE_EPOCH}, timeout_ms=self.request_timeout_ms)
        finally:
            self.member_epoch = JOIN_EPOCH
            self._send_subscription = True

    async def _request(self, key: ApiKey, body: dict[str, Any], timeout_ms: int) -> Any:
        return await self.channel.request(key, body, timeout_ms=timeout_ms)

    async def _heartbeat(self) -> int:
        body: dict[str, Any] = {
            "group_id": self.group_id, "member_id": self.member_id,
            "member_epoch": self.member_epoch, "instance_id": self.instance_id,
            "rebalance_timeout_ms": self.rebalance_timeout_ms,
            "session_timeout_ms": self.session_timeout_ms,
            "owned": _wire_owned(self.owned)}
        if self._send_subscription or self.member_epoch == JOIN_EPOCH:
            body.update(topics=self.topics if self.pattern is None or self.topics else None,
                        pattern=self.pattern, assignor=self.assignor)
        # a heartbeat must come back well within the session, or the next one is late
        timeout_ms = max(500, min(self.request_timeout_ms, self.session_timeout_ms // 2))
        res = await self._request(ApiKey.CONSUMER_GROUP_HEARTBEAT, body, timeout_ms)
        self._send_subscription = False
        if res["member_id"] != self.member_id:
            log.info("group=%s joined as member %s", self.group_id, res["member_id"])
        self.member_id = res["member_id"]
        self.member_epoch = res["member_epoch"]
        interval = int(res.get("heartbeat_interval_ms") or self.heartbeat_interval_ms)
        if res.get("assignment") is None:
            return interval
        target = {(t, p) for t, ps in res["assignment"] for p in ps}
        self._target = target
        if target == self.owned:
            self._assigned_event.set()
        elif self._reconciler is None or self._reconciler.done():
            # reconcile beside the heartbeats: slow commits or callbacks do not stop them
            self._reconciler = asyncio.get_running_loop().create_task(
                self._reconcile(), name=f"dmq-group-{self.group_id}-reconcile")
        return interval

    # ---- reconciliation ------------------------------------------------------------------
    async def _reconcile(self) -> None:
        """Move `owned` to the latest target: revoke first, then assign; then wake the
        heartbeat loop so the coordinator learns at once."""
        failures = 0
        while not self._closing and self._target is not None and self._target != self.owned:
            target = self._target
            try:
                revoked = self.owned - target
                if revoked:
                    await self._revoke(revoked)
                added = target - self.owned
                if added:
                    await self._assign(added)
                self.rebalances += 1
                failures = 0
            except DmqError as exc:
                failures += 1
                log.warning("group=%s reconciling failed (%s), retry %d", self.group_id, exc,
                            failures)
                await self.clock.sleep(min(1000, 50 * 2 ** min(failures, 5)))
            except Exception:
                log.exception("group=%s reconciling failed", self.group_id)
                await self.clock.sleep(1000)
            self._wake.set()
        if self._target is not None and self._target == self.owned:
            self._assigned_event.set()

    def _stop_reconciling(self) -> None:
        task, self._reconciler = self._reconciler, None
        self._target = None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()
    async def _revoke(self, revoked: set[PartitionKey]) -> None:
        if not revoked:
            return
        # positions read and delivery stopped with no await between: nothing more is
        # delivered from these partitions after the positions we commit
        positions = self.owner.consumed_positions(revoked)
        self.owner.stop_partitions(revoked)
        if self.enable_auto_commit:
            try:
                await self.commit(positions)
            except DmqError as exc:
                log.warning("group=%s commit before revoking %d partitions failed: %s",
                            self.group_id, len(revoked), exc)
        try:
            await _call(self.listener.on_partitions_revoked, set(revoked))
        except Exception:
            log.exception("group=%s on_partitions_revoked failed", self.group_id)
        self.owned -= revoked
        for tp in revoked:
            self._committed.pop(tp, None)
        log.info("group=%s revoked %d partitions: %s", self.group_id, len(revoked),
                 sorted(revoked)[:20])

    async def _assign(self, added: set[PartitionKey]) -> None:
        committed = await self.fetch_committed(added)
        self.owned |= added
        for tp, offset in committed.items():
            if offset is not None:
                self._committed[tp] = offset
        self.owner.start_partitions(committed)
        try:
            await _call(self.listener.on_partitions_assigned, set(added))
        except Exception:
            log.exception("group=%s on_partitions_assigned failed", self.group_id)
        log.info("group=%s assigned %d partitions: %s", self.group_id, len(added),
                 sorted(added)[:20])

    def _lose_partitions(self) -> None:
        self._stop_reconciling()
        lost, self.owned = set(self.owned), set()
        self._committed.clear()
        self._assigned_event.clear()
        if not lost:
            return
        self.owner.stop_partitions(lost)
        try:
            result = self.listener.on_partitions_lost(lost)
            if inspect.isawaitable(result):
                asyncio.ensure_future(result).add_done_callback(_log_callback_failure)
        except Exception:
            log.exception("group=%s on_partitions_lost failed", self.group_id)

    # ---- offsets ---------------------------------------------------------------------------
    async def fetch_committed(self, tps: Iterable[PartitionKey]
                              ) -> dict[PartitionKey, int | None]:
        async def request(key: ApiKey, body: dict[str, Any]) -> Any:
            return await self._request(key, body, timeout_ms=self.request_timeout_ms)

        return await _fetch_committed(request, self.group_id, tps)

    async def commit(self, offsets: Mapping[PartitionKey, int] | None = None,
                     metadata: str | None = None) -> dict[PartitionKey, int]:
        """Commit `offsets` (default: consumed positions of every owned partition).
        Only partitions this member owns are committed; unchanged ones are skipped.
        Returns what was committed. Raises the coordinator's error (e.g.
        UNKNOWN_MEMBER_ID after the member was fenced)."""
        async with self._commit_lock:
            if offsets is None:
                offsets = self.owner.consumed_positions(self.owned)
            todo = {tp: o for tp, o in offsets.items()
                    if tp in self.owned and self._committed.get(tp) != o}
            if not todo or self.member_epoch <= 0:
                return {}
            for attempt in range(3):
                body = {"group_id": self.group_id, "member_id": self.member_id,
                        "member_epoch": self.member_epoch,
                        "topics": [[t, [[p, todo[(t, p)], metadata] for p in ps]]
                                   for t, ps in _wire_owned(todo)]}
                try:
                    res = await self._request(ApiKey.OFFSET_COMMIT, body,
                                              timeout_ms=self.request_timeout_ms)
                    break
                except StaleMemberEpochError:
                    # our epoch just moved with a heartbeat answer: retry with the new one
                    if attempt == 2:
                        raise
                    await self.clock.sleep(50)
                except (UnknownMemberIdError, FencedMemberEpochError):
                    raise
            done: dict[PartitionKey, int] = {}
            for topic, rows in res["topics"]:
                for partition, error in rows:
                    if error == 0:
                        done[(topic, partition)] = todo[(topic, partition)]
                        self._committed[(topic, partition)] = todo[(topic, partition)]
                    else:
                        log.warning("group=%s commit %s-%d refused: %s", self.group_id, topic,
                                    partition, ErrorCode(error).name)
            return done

    async def _maybe_auto_commit(self) -> None:
        if not self.enable_auto_commit or not self.owned:
            return
        now = self.clock.monotonic_ms()
        if now < self._next_commit_ms:
            return
        self._next_commit_ms = now + self.auto_commit_interval_ms
        try:
            await self.commit()
        except DmqError as exc:
            log.warning("group=%s auto-commit failed: %s", self.group_id, exc)


@dataclass(frozen=True, slots=True)
class GroupConfig:
    """The group settings of a `Consumer` (Kafka's names, snake_case)."""

    group_instance_id: str | None = None
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1000
    rebalance_timeout_ms: int = 60_000
    max_poll_interval_ms: int = 300_000
    enable_auto_commit: bool = True
    auto_commit_interval_ms: int = 5000
    assignor: str | None = None


class GroupOffsets:
    """A group's offsets from outside the group: what an `assign()` consumer with a
    `group_id` (or a tool) commits and reads. Commits carry member "" and epoch -1, so
    the coordinator accepts them only while the group has no members. Each call finds
    the active controller afresh: this is for occasional commits, not a hot path."""

    def __init__(self, addresses: Sequence[tuple[str, int]], group_id: str, *,
                 client_id: str = "dmq-consumer", request_timeout_ms: int = 30_000,
                 positions: Callable[[], Mapping[PartitionKey, int]] | None = None,
                 security: Any = None) -> None:
        self.addresses = list(addresses)
        self.security = security  # TLS and SASL of its requests (None: the context's)
        self.group_id = group_id
        self.client_id = client_id
        self.request_timeout_ms = request_timeout_ms
        self.positions = positions  # () -> {tp: consumed position}, for commit(None)

    async def _request(self, key: ApiKey, body: dict[str, Any]) -> Any:
        channel = ControllerChannel(self.addresses, client_id=self.client_id,
                                    watch_after_ms=CONTROLLER_WATCH_AFTER_MS,
                                    security=self.security)
        try:
            return await channel.request(key, body, timeout_ms=self.request_timeout_ms)
        finally:
            await channel.close()

    async def commit(self, offsets: Mapping[PartitionKey, int] | None = None,
                     metadata: str | None = None) -> dict[PartitionKey, int]:
        if offsets is None:
            offsets = self.positions() if self.positions is not None else {}
        todo = {(t, p): o for (t, p), o in offsets.items()}
        if not todo:
            return {}
        res = await self._request(ApiKey.OFFSET_COMMIT, {
            "group_id": self.group_id, "member_id": "", "member_epoch": LEAVE_EPOCH,
            "topics": [[t, [[p, todo[(t, p)], metadata] for p in ps]]
                       for t, ps in _wire_owned(todo)]})
        done = {}
        for topic, rows in res["topics"]:
            for partition, error in rows:
                if error:
                    raise error_for(error, f"commit {topic}-{partition}")
                done[(topic, partition)] = todo[(topic, partition)]
        return done

    async def fetch_committed(self, tps: Iterable[PartitionKey]
                              ) -> dict[PartitionKey, int | None]:
        return await _fetch_committed(self._request, self.group_id, tps)


async def _fetch_committed(request: Callable[[ApiKey, dict[str, Any]], Awaitable[Any]],
                           group_id: str, tps: Iterable[PartitionKey]
                           ) -> dict[PartitionKey, int | None]:
    tps = [(t, p) for t, p in tps]
    res = await request(ApiKey.OFFSET_FETCH, {"group_id": group_id,
                                              "topics": _wire_owned(tps)})
    out: dict[PartitionKey, int | None] = {tp: None for tp in tps}
    for topic, rows in res["topics"]:
        for partition, offset, _metadata, _error in rows:
            out[(topic, partition)] = offset if offset >= 0 else None
    return out


def _log_callback_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("rebalance callback failed", exc_info=fut.exception())


__all__ = [
    "GroupConfig",
    "GroupFatalError",
    "GroupMembership",
    "GroupOffsets",
    "PartitionsOwner",
    "RebalanceListener",
]
