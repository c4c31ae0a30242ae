"""Request handlers of the broker's data path: PRODUCE, FETCH, LIST_OFFSETS,
OFFSET_FOR_LEADER_EPOCH and the broker's METADATA (answered from the local image).

Owns turning requests into calls on `Partition`s and the shapes of the answers
declared in `dmq/protocol/api.py`. Handlers are plain functions that answer at once
when they can, and return a coroutine only to wait (acks=all, long-poll fetch, an
answer held back by a client quota, `dmq.security.quotas`): the server calls them in
arrival order, so a produce appends before anything awaits and produce order on a
connection is kept.

It must never decode records: a produce validates headers and CRCs and stamps
offsets (in `dmq.log`), a fetch moves bytes. Waiting uses futures completed by the
partitions and one timer per request; there is no polling loop.

A replica fetcher's FETCH may belong to a fetch session (`dmq.broker.fetch_session`):
then the request lists only what changed, the answer only what is new, and the long
poll waits on the session, which its partitions mark when they have news.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from dmq.broker.errors import error_code_of, message_of
from dmq.broker.fetch_session import HW_NEWS_LINGER_MS, FetchSession, SessionPartition
from dmq.broker.partition import Partition, ProduceWaiter
from dmq.broker.throttle import ThrottledAnswer
from dmq.log.batch import all_dmq_native, any_producer_id
from dmq.log.errors import LogError, OffsetOutOfRangeError
from dmq.metadata.image import metadata_body
from dmq.protocol.api import ApiKey
from dmq.protocol.codec import VECTORED_MIN_BYTES, VectoredBody
from dmq.protocol.errors import (
    ClusterAuthorizationFailedError,
    DmqError,
    ErrorCode,
    InvalidRecordError,
    InvalidRequiredAcksError,
    LeaderNotAvailableError,
    NotLeaderOrFollowerError,
    PolicyViolationError,
    UnknownTopicOrPartitionError,
)
from dmq.protocol.server import NO_RESPONSE, RequestContext
from dmq.security.acl import (
    CLUSTER,
    CLUSTER_NAME,
    DELETE,
    DESCRIBE,
    IDEMPOTENT_WRITE,
    READ,
    TOPIC,
    WRITE,
    Authorizer,
    connection_principal,
)
from dmq.security.quotas import FETCH, PRODUCE, QuotaManager

if TYPE_CHECKING:
    from dmq.broker.replica_manager import ReplicaManager
    from dmq.log.partition_log import PartitionLog

log = logging.getLogger("dmq.broker.handlers")

LATEST = -1
EARLIEST = -2
_EMPTY = b""


def _record_bytes(answer: dict[str, Any]) -> int:
    """The record bytes of a fetch answer (counted per partition, never per record)."""
    size = 0
    for _, rows in answer["topics"]:
        for row in rows:
            size += len(row[5])
    return size


def _held_back(part: Partition, replica_id: int, offset: int) -> bool:
    """Records at `offset` for `replica_id` fall under the leader's replication
    throttle: it is a replica being added, not caught up, and there is something to
    send. The one test for counting the answer's shares and for reading under them."""
    return bool(part.adding) and part.catching_up(replica_id) and \
        offset < part.log.log_end_offset


def _throttled_read(shares: ThrottledAnswer, plog: PartitionLog, offset: int,
                    limit: int, total: int) -> Any:
    """What a leader sends a replica being added (not in sync yet) from `offset`, under
    its replication throttle (`leader.replication.throttled.rate`): None (held back)
    until the bucket holds a quantum, then at most this partition's share of it (the
    answer's throttled partitions share the quantum; a first batch of the answer whole
    even when larger: the bucket goes into debt), charged for what was read. Once per
    partition of an answer, never per record."""
    if limit <= 0 and total > 0:
        return _EMPTY  # no room left in this answer: the next one
    reserved = shares.take()
    if not reserved:
        return None
    data: Any = _EMPTY
    try:
        data = plog.read(offset, max(1, min(limit, reserved)), None,
                         min_one_batch=total == 0)
    finally:
        shares.settle(reserved, len(data))
    return data


def _resolver(fut: asyncio.Future[None]) -> Callable[[], None]:
    def resolve() -> None:
        if not fut.done():
            fut.set_result(None)

    return resolve


_TOPIC_REFUSED = int(ErrorCode.TOPIC_AUTHORIZATION_FAILED)
_NO_TOPICS: set[str] = set()
_EXEMPT = "node:checked"  # a request part the ACLs were already checked for
_UNRESOLVED = "?"  # `_refused`: find the subject


class DataPlane:
    """The handlers, bound to one replica manager."""

    def __init__(self, replicas: ReplicaManager,
                 controller_request: Any = None, auto_create: bool = False) -> None:
        self.replicas = replicas
        self.clock = replicas.clock
        self._controller_request = controller_request
        self._auto_create = auto_create
        self.stats_produce_requests = 0
        self.stats_fetch_requests = 0
        # replica fetches, and the partitions they listed (a session lists changes only)
        self.stats_replica_fetch_requests = 0
        self.stats_replica_fetch_partitions = 0
        self._storage_warned_ms = -1e18  # a refused write is logged at most every 10 s
        # ACLs (dmq.security.acl), from the broker's image; None: everything allowed
        self.authorizer: Authorizer | None = None
        # client quotas (dmq.security.quotas), from the image's dynamic configs
        self.quotas = QuotaManager()

    def register(self, server: Any, metadata: bool = True) -> None:
        server.register(ApiKey.PRODUCE, self.produce)
        server.register(ApiKey.FETCH, self.fetch)
        server.register(ApiKey.LIST_OFFSETS, self.list_offsets)
        server.register(ApiKey.OFFSET_FOR_LEADER_EPOCH, self.offset_for_leader_epoch)
        server.register(ApiKey.DELETE_RECORDS, self.delete_records)
        if metadata:
            server.register(ApiKey.METADATA, self.metadata)

    # ------------------------------------------------------------------ lookup

    def _partition(self, topic: str, p: int) -> Partition:
        if self.replicas.degraded:  # a log that cannot be opened, an image not applied
            self.replicas.check_serving(topic, p)
        part = self.replicas.get_partition(topic, p)
        if part is not None and not part.deleted:
            return part
        image = self.replicas.image
        info = image.partition(topic, p) if image is not None else None
        if info is None:
            raise UnknownTopicOrPartitionError(f"{topic}-{p} is unknown to this broker")
        if info.leader < 0:
            raise LeaderNotAvailableError(f"{topic}-{p} has no leader")
        raise NotLeaderOrFollowerError(f"{topic}-{p}: {self.replicas.leader_hint(info.leader)}")

    def _leader_msg(self, part: Partition, exc: Exception) -> str:
        if isinstance(exc, NotLeaderOrFollowerError):
            return f"{part.name}: {self.replicas.leader_hint(part.leader_id)}"
        return message_of(exc)

    # ------------------------------------------------------------------ ACLs

    def _principal(self, ctx: RequestContext | None, principal: str | None) -> str:
        if principal is not None:  # the Kafka listener's connection's
            return principal
        return connection_principal(ctx.connection if ctx is not None else None)

    def _subject(self, ctx: RequestContext | None, principal: str | None) -> str | None:
        """The principal whose requests are checked; None when nothing is (no
        authorizer, a superuser, a node)."""
        authz = self.authorizer
        if authz is None or not authz.enabled:
            return None
        who = self._principal(ctx, principal)
        return None if authz.exempt(who) else who

    def _refused(self, ctx: RequestContext | None, principal: str | None,
                 topics: list[list[Any]], operation: str, api: str,
                 who: str | None = _UNRESOLVED) -> set[str]:
        """The topics of a request the principal may not `operation` (one check per
        topic, cached by the authorizer; nothing at all without an authorizer)."""
        if who == _UNRESOLVED:
            who = self._subject(ctx, principal)
        authz = self.authorizer
        if who is None or authz is None:
            return _NO_TOPICS
        return {t for t, _ in topics if not authz.check(who, operation, TOPIC, t, api)}

    def _may_write_idempotently(self, who: str | None) -> bool:
        authz = self.authorizer
        return who is None or authz is None or authz.check(
            who, IDEMPOTENT_WRITE, CLUSTER, CLUSTER_NAME, "Produce")

    # ------------------------------------------------------------------ quotas

    def _quotas_active(self) -> bool:
        """Some client quota is set (read from the current image)."""
        image = self.replicas.image
        if image is None:
            return False
        self.quotas.update(image.dynamic_configs)
        return self.quotas.active

    def _quota_throttled(self, ctx: RequestContext | None, principal: str | None,
                         kind: str, size: int, result: Any, client_throttles: bool) -> Any:
        """Take `size` bytes of the principal's `kind` quota and answer `result`
        accordingly: untouched without a quota; else with its `throttle_time_ms`,
        and, over the quota, held back.

        As Kafka: a client that does not throttle itself (dmq's own, a Kafka client of a
        version before KIP-219) gets its answer held back by the whole throttle time,
        and waits for it before sending more; one that does (`client_throttles`) gets
        its answer at once and waits the throttle time itself, while Kafka mutes its
        channel meanwhile: an answer to a request sent during that time is held back
        until it ends, and reports only the throttle time left after it."""
        who = self._principal(ctx, principal)
        now = self.clock.monotonic_ms()
        throttle_ms = self.quotas.record(who, kind, size, now)
        if throttle_ms < 0 or result is NO_RESPONSE:
            return result
        hold_ms = throttle_ms
        if client_throttles:
            hold_ms = self.quotas.mute(who, kind, now, throttle_ms)
            throttle_ms = max(0, throttle_ms - hold_ms)
        if isinstance(result, dict):
            result["throttle_time_ms"] = throttle_ms
            if hold_ms <= 0:
                return result

        async def later() -> Any:
            answer = await result if not isinstance(result, dict) else result
            answer["throttle_time_ms"] = throttle_ms
            if hold_ms > 0:
                await self.clock.sleep(hold_ms)
            return answer

        return later()

    def _fetch_throttled(self, ctx: RequestContext | None, principal: str | None,
                         result: Any, client_throttles: bool) -> Any:
        """A consumer's fetch answer, its record bytes counted against its quota once
        it is known (`_quota_throttled`)."""
        if isinstance(result, dict):
            return self._quota_throttled(ctx, principal, FETCH, _record_bytes(result),
                                         result, client_throttles)

        async def later() -> Any:
            answer = await result
            if not self._quotas_active():
                return answer
            out = self._quota_throttled(ctx, principal, FETCH, _record_bytes(answer),
                                        answer, client_throttles)
            return out if isinstance(out, dict) else await out

        return later()

    # ------------------------------------------------------------------ produce

    def produce(self, ctx: RequestContext | None, body: dict[str, Any], *,
                kafka_listener: bool = False, principal: str | None = None,
                client_throttles: bool = False) -> Any:
        """dmq's PRODUCE; the Kafka listener's Produce too (`kafka_listener`, with the
        connection's `principal`), whose batches hold Kafka records, where dmq's own
        protocol takes dmq-native ones only. Over the principal's producer quota the
        records are still appended, and the answer is throttled (`_quota_throttled`;
        `client_throttles`: a Kafka client that backs off by itself, KIP-219)."""
        result = self._produce(ctx, body, kafka_listener, principal)
        if not self._quotas_active():
            return result
        size = 0
        for _, parts in body["topics"]:
            for part in parts:
                size += len(part[2])
        return self._quota_throttled(ctx, principal, PRODUCE, size, result, client_throttles)

    def _produce(self, ctx: RequestContext | None, body: dict[str, Any],
                 kafka_listener: bool, principal: str | None) -> Any:
        acks = body["acks"]
        if acks not in (0, 1, -1):
            raise InvalidRequiredAcksError(f"acks must be 0, 1 or -1, got {acks}")
        self.stats_produce_requests += 1
        waiter: ProduceWaiter | None = None
        out: list[list[Any]] = []
        who = self._subject(ctx, principal)
        refused = self._refused(ctx, principal, body["topics"], WRITE, "Produce", who)
        # batches naming a producer id need IdempotentWrite on the cluster (checked once)
        idempotent_ok: bool | None = True if who is None else None
        for topic, parts in body["topics"]:
            if refused and topic in refused:
                out.append([topic, [[p, _TOPIC_REFUSED, -1, -1, f"not authorized to Write "
                                     f"topic {topic!r}"] for p, _, _ in parts]])
                continue
            rows: list[list[Any]] = []
            for p, leader_epoch, records in parts:
                row: list[Any] = [p, 0, -1, -1, None]
                part: Partition | None = None
                try:
                    part = self._partition(topic, p)
                    part.check_leader(leader_epoch)
                    if idempotent_ok is not True and any_producer_id(records):
                        if idempotent_ok is None:
                            idempotent_ok = self._may_write_idempotently(who)
                        if not idempotent_ok:
                            raise ClusterAuthorizationFailedError(
                                f"{who} may not IdempotentWrite on the cluster (a batch "
                                f"names a producer id)")
                    if not kafka_listener and not all_dmq_native(records):
                        raise InvalidRecordError(
                            f"{topic}-{p}: a batch without the dmq-native mark (attribute "
                            f"bit 7) on dmq's own protocol: a dmq client older than this "
                            f"broker? Upgrade it; Kafka clients write through the Kafka "
                            f"listener")
                    info = part.append_as_leader(records, acks)
                    row[2] = info.base_offset
                    row[3] = part.log.log_start_offset
                    if acks == -1 and part.high_watermark <= info.last_offset:
                        if waiter is None:
                            waiter = ProduceWaiter(asyncio.get_running_loop().create_future())
                        row[1] = None
                        part.park_produce(waiter, row, info.last_offset + 1)
                        waiter.rows.append(row)
                except (DmqError, LogError) as exc:
                    row[1] = int(error_code_of(exc))
                    row[4] = self._leader_msg(part, exc) if part is not None else message_of(exc)
                    if row[1] == ErrorCode.STORAGE_ERROR and \
                            self.clock.monotonic_ms() - self._storage_warned_ms >= 10_000:
                        self._storage_warned_ms = self.clock.monotonic_ms()
                        log.warning("broker=%d produce to %s-%d refused with STORAGE_ERROR: %s "
                                    "(further refusals within 10 s not logged)",
                                    self.replicas.broker_id, topic, p, row[4])
                rows.append(row)
            out.append([topic, rows])
        if acks == 0:
            return NO_RESPONSE
        response = {"topics": out}
        if waiter is None:
            return response
        return self._await_acks(waiter, response, body["timeout_ms"])

    async def _await_acks(self, waiter: ProduceWaiter, response: dict[str, Any],
                          timeout_ms: int) -> dict[str, Any]:
        def expire() -> None:
            for row in waiter.rows:
                if row[1] is None:
                    row[1] = int(ErrorCode.REQUEST_TIMED_OUT)
                    row[4] = f"high watermark did not reach the batch in {timeout_ms} ms"
            waiter.finish()

        timer = self.clock.call_later(max(timeout_ms, 0), expire)
        try:
            await waiter.future
        finally:
            timer.cancel()
            waiter.done = True
        return response

    # ------------------------------------------------------------------ fetch

    def fetch(self, ctx: RequestContext | None, body: dict[str, Any], *,
              principal: str | None = None, client_throttles: bool = False) -> Any:
        """A FETCH; a consumer's answer counts against its consumer quota and is
        throttled when over it (`_quota_throttled`)."""
        result = self._fetch(ctx, body, principal)
        if body["replica_id"] < 0 and self._quotas_active():
            return self._fetch_throttled(ctx, principal, result, client_throttles)
        return result

    def _fetch(self, ctx: RequestContext | None, body: dict[str, Any],
               principal: str | None = None) -> Any:
        replica_id = body["replica_id"]
        follower = replica_id >= 0
        if not follower:  # a replica's fetch comes from a node (INTER_NODE_APIS)
            refused = self._refused(ctx, principal, body["topics"], READ, "Fetch")
            if refused:
                return self._fetch_some(ctx, body, refused)
        self.stats_fetch_requests += 1
        if follower:
            self.stats_replica_fetch_requests += 1
            self.stats_replica_fetch_partitions += sum(len(parts) for _, parts in body["topics"])
            if body.get("session_id", -1) >= 0:
                return self._session_fetch(body, replica_id)
        wanted: list[tuple[str, int, int, int, int]] = [
            (topic, p, offset, epoch, pmax)
            for topic, parts in body["topics"] for p, offset, epoch, pmax in parts]
        if follower:
            self._note_follower_fetch(wanted, replica_id)
        response, total, stop, parts, sent, held = self._read(wanted, replica_id,
                                                              body["max_bytes"])
        if (stop or total >= body["min_bytes"] or body["max_wait_ms"] <= 0 or not parts
                or self._hw_news(parts, replica_id)):
            return self._answer(response, parts, replica_id, sent)
        # Park now, before returning: the coroutine runs later, and a wake-up between
        # now and then must not be missed.
        return self._long_poll(wanted, replica_id, body, parts, self._park(parts, follower),
                               held)

    def _fetch_some(self, ctx: RequestContext | None, body: dict[str, Any],
                    refused: set[str]) -> Any:
        """A consumer's fetch naming topics it may not Read: those are answered
        TOPIC_AUTHORIZATION_FAILED, the others as usual."""
        denied = [[t, [[p[0], _TOPIC_REFUSED, -1, -1, -1, _EMPTY] for p in parts]]
                  for t, parts in body["topics"] if t in refused]
        rest = [tp for tp in body["topics"] if tp[0] not in refused]
        if not rest:
            return {"topics": denied}
        result = self._fetch(ctx, {**body, "topics": rest}, principal=_EXEMPT)
        if isinstance(result, dict):
            result["topics"] = list(result["topics"]) + denied
            return result

        async def later() -> Any:
            answer = await result
            answer["topics"] = list(answer["topics"]) + denied
            return answer

        return later()

    @staticmethod
    def _park(parts: list[Partition], follower: bool) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for part in parts:
            part.add_waiter(fut, follower)
        return fut

    @staticmethod
    def _hw_news(parts: list[Partition], replica_id: int) -> bool:
        """A follower has not been told the current HW of some partition yet."""
        return replica_id >= 0 and any(p.hw_news_for(replica_id) for p in parts)

    def _answer(self, response: dict[str, Any], parts: list[Partition], replica_id: int,
                sent: list[tuple[Partition, int, int]]) -> dict[str, Any]:
        if replica_id >= 0:
            for p in parts:
                p.note_hw_sent(replica_id)
        else:  # what consumers are sent, counted per partition (never per record)
            for part, nbytes, nrecords in sent:
                part.bytes_out += nbytes
                part.records_out += nrecords
        return response

    def _note_follower_fetch(self, wanted: list[tuple[str, int, int, int, int]],
                             replica_id: int) -> None:
        """A follower's fetch offsets are its log end offsets: tell the partitions."""
        for topic, p, offset, epoch, _ in wanted:
            part = self.replicas.get_partition(topic, p)
            if part is not None and part.is_leader and epoch in (-1, part.leader_epoch):
                self.replicas.on_follower_fetch(part, replica_id, offset)

    def _read(self, wanted: list[tuple[str, int, int, int, int]], replica_id: int,
              max_bytes: int) -> tuple[dict[str, Any], int, bool, list[Partition],
                                       list[tuple[Partition, int, int]], bool]:
        """One pass over the asked partitions: (response, bytes, any error, partitions,
        for a consumer each partition's bytes and records read (the records from the
        fetch offset to the end of the last batch, which the log read finds anyway), and
        whether the leader's replication throttle held any back)."""
        follower = replica_id >= 0
        sent: list[tuple[Partition, int, int]] = []
        throttle = self.replicas.leader_throttle
        shares = None
        if follower and throttle.rate:
            shares = ThrottledAnswer(throttle, self._catching_up(
                ((t, p, offset) for t, p, offset, _, _ in wanted), replica_id))
        total = 0
        big_bytes = 0
        errors = False
        parts: list[Partition] = []
        out: dict[str, list[list[Any]]] = {}
        for topic, p, offset, epoch, pmax in wanted:
            rows = out.setdefault(topic, [])
            part: Partition | None = None
            try:
                part = self._partition(topic, p)
                part.check_leader(epoch)
                if follower and replica_id not in part.replicas:
                    raise NotLeaderOrFollowerError(
                        f"{part.name}: broker {replica_id} is not a replica")
                plog = part.log
                hw = part.high_watermark
                limit = min(pmax, max_bytes - total)
                if shares is not None and _held_back(part, replica_id, offset):
                    data: Any = _throttled_read(shares, plog, offset, limit, total)
                    data = _EMPTY if data is None else data
                elif limit <= 0 and total > 0:
                    data = _EMPTY
                elif follower:
                    data = plog.read(offset, max(limit, 1), None, min_one_batch=total == 0)
                else:
                    data, end = plog.read_span(offset, max(limit, 1), hw,
                                               min_one_batch=total == 0)
                    if data:
                        sent.append((part, len(data), end - offset))
                size = len(data)
                total += size
                if size >= VECTORED_MIN_BYTES:
                    big_bytes += size
                parts.append(part)
                rows.append([p, 0, hw, plog.log_start_offset, plog.log_end_offset, data])
            except OffsetOutOfRangeError as exc:
                errors = True
                assert part is not None
                rows.append([p, int(ErrorCode.OFFSET_OUT_OF_RANGE), part.high_watermark,
                             part.log.log_start_offset, part.log.log_end_offset, _EMPTY])
                del exc
            except (DmqError, LogError) as exc:
                errors = True
                hw = part.high_watermark if part is not None else -1
                rows.append([p, int(error_code_of(exc)), hw, -1, -1, _EMPTY])
        held = False
        if shares is not None:
            shares.close()
            held = shares.held
        topics = [[t, r] for t, r in out.items()]
        # Large record data goes to the socket by reference instead of being copied into
        # the frame, when it outweighs the per-row cost of packing that way (~1 us a row).
        # Safe because log reads are views of bytes from pread, never changed afterwards.
        if big_bytes and big_bytes >= 1024 * len(wanted):
            return VectoredBody(topics=topics), total, errors, parts, sent, held
        return {"topics": topics}, total, errors, parts, sent, held

    async def _long_poll(self, wanted: list[tuple[str, int, int, int, int]], replica_id: int,
                         body: dict[str, Any], parts: list[Partition],
                         fut: asyncio.Future[None], held: bool) -> dict[str, Any]:
        """Wait for data or `max_wait_ms`. Consumers wake on HW moves; followers on appends
        and on HW moves they have not been told of (so follower HWs track the leader's),
        and when the leader's replication throttle refills if it `held` a partition."""
        follower = replica_id >= 0
        deadline = self.clock.monotonic_ms() + body["max_wait_ms"]
        min_bytes = body["min_bytes"]
        while True:
            remaining = deadline - self.clock.monotonic_ms()
            if held:
                remaining = min(remaining, self.replicas.leader_throttle.wait_ms())
            timer = self.clock.call_later(max(remaining, 0), _resolver(fut))
            try:
                await fut
            finally:
                timer.cancel()
                for part in parts:
                    part.remove_waiter(fut, follower)
            if follower:
                self._note_follower_fetch(wanted, replica_id)
            response, total, stop, parts, sent, held = self._read(wanted, replica_id,
                                                                  body["max_bytes"])
            if (stop or total >= min_bytes or self.clock.monotonic_ms() >= deadline
                    or not parts or self._hw_news(parts, replica_id)):
                return self._answer(response, parts, replica_id, sent)
            fut = self._park(parts, follower)

    # ------------------------------------------------------------------ fetch sessions

    def _session_fetch(self, body: dict[str, Any], replica_id: int) -> Any:
        """A replica fetch in a session: apply what it lists and forgets, then answer the
        partitions with news (its listed ones and those marked since the last answer),
        or wait on the session for news until `max_wait_ms`."""
        cache = self.replicas.fetch_sessions
        now = self.clock.monotonic_ms()
        session_id = body["session_id"]
        if session_id == 0:
            session = cache.create(replica_id, now)
        else:
            found = cache.get(session_id)
            if found is None or found.replica_id != replica_id:
                return {"topics": [], "session_id": 0,
                        "error": int(ErrorCode.FETCH_SESSION_ID_NOT_FOUND)}
            if body["session_epoch"] != found.epoch + 1:
                cache.remove(found)
                return {"topics": [], "session_id": 0,
                        "error": int(ErrorCode.INVALID_FETCH_SESSION_EPOCH)}
            session = found
            session.epoch += 1
        session.last_request_ms = now
        session.quiet_reported = False
        session.max_wait_ms = max(body["max_wait_ms"], 0)
        if session.waiter is not None and not session.waiter.done():
            session.waiter.set_result(None)  # an older request of the session: superseded
        session.waiter = None
        for topic, ps in body["forgotten"]:
            for p in ps:
                session.forget((topic, p))
        listed: list[tuple[str, int]] = []
        for topic, parts in body["topics"]:
            for p, offset, epoch, pmax in parts:
                key = (topic, p)
                old = session.partitions.get(key)
                entry = SessionPartition(session, offset, epoch, pmax)
                if old is not None:
                    old.active = False
                    entry.hw, entry.log_start = old.hw, old.log_start
                session.partitions[key] = entry
                listed.append(key)
                part = self.replicas.get_partition(topic, p)
                if part is not None and not part.deleted:
                    session.watch(key, part)
                    if part.is_leader and epoch in (-1, part.leader_epoch):
                        self.replicas.on_follower_fetch(part, replica_id, offset, entry)
        candidates = session.dirty
        session.dirty = {}
        candidates.update(dict.fromkeys(listed))
        due = session.hw_due_ms
        topics, total, news, held = self._read_session(
            session, candidates, replica_id, body["max_bytes"],
            session.max_wait_ms <= 0 or (due is not None and now >= due))
        if news or session.max_wait_ms <= 0:
            return self._session_answer(session, topics, total)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        session.waiter = fut
        return self._session_poll(session, fut, body["max_bytes"], now + session.max_wait_ms,
                                  held)

    async def _session_poll(self, session: FetchSession, fut: asyncio.Future[None],
                            max_bytes: int, deadline: int, held: bool) -> Any:
        """Wait on the session for news until `deadline`; a partition the leader's
        replication throttle `held` back is tried again when the throttle refills, and
        high watermark news held back (`HW_NEWS_LINGER_MS`) is answered when due."""
        while True:
            now = self.clock.monotonic_ms()
            wait_ms = deadline - now
            if held:
                wait_ms = min(wait_ms, self.replicas.leader_throttle.wait_ms())
            if session.hw_due_ms is not None:
                wait_ms = min(wait_ms, session.hw_due_ms - now)
            timer = self.clock.call_later(max(wait_ms, 0), _resolver(fut))
            try:
                await fut
            finally:
                timer.cancel()
            if session.waiter is not fut or not session.alive:
                # superseded by a newer request of the session, or the session ended:
                # whoever sent this one no longer reads the answer
                return {"topics": [], "session_id": session.id}
            candidates = session.dirty
            session.dirty = {}
            now = self.clock.monotonic_ms()
            due = session.hw_due_ms
            topics, total, news, held = self._read_session(
                session, candidates, session.replica_id, max_bytes,
                now >= deadline or (due is not None and now >= due))
            if news or now >= deadline:
                session.waiter = None
                return self._session_answer(session, topics, total)
            fut = asyncio.get_running_loop().create_future()
            session.waiter = fut

    @staticmethod
    def _session_answer(session: FetchSession, topics: list[list[Any]], total: int) -> Any:
        if total >= VECTORED_MIN_BYTES:
            return VectoredBody(topics=topics, session_id=session.id)
        return {"topics": topics, "session_id": session.id}

    def _read_session(self, session: FetchSession, candidates: dict[tuple[str, int], None],
                      replica_id: int, max_bytes: int, hw_due: bool
                      ) -> tuple[list[list[Any]], int, bool, bool]:
        """Rows for the candidates with news: records, an error, or a high watermark or
        log start offset the follower was not sent yet. A partition left without room
        in `max_bytes`, or held back by the leader's replication throttle (its last
        return value), stays marked for the next answer. A high watermark alone is
        news only with other news, or when `hw_due`: until then it stays marked and the
        session's `hw_due_ms` says when it is due (`HW_NEWS_LINGER_MS`)."""
        throttle = self.replicas.leader_throttle
        entries = session.partitions
        shares = None
        if throttle.rate:
            shares = ThrottledAnswer(throttle, self._catching_up(
                ((k[0], k[1], e.offset) for k in candidates
                 if (e := entries.get(k)) is not None), replica_id))
        total = 0
        out: dict[str, list[list[Any]]] = {}
        hw_only: list[tuple[str, SessionPartition, int, list[Any]]] = []
        for key in candidates:
            entry = entries.get(key)
            if entry is None:
                continue
            topic, p = key
            part: Partition | None = None
            try:
                part = self._partition(topic, p)
                part.check_leader(entry.epoch)
                if replica_id not in part.replicas:
                    raise NotLeaderOrFollowerError(
                        f"{part.name}: broker {replica_id} is not a replica")
                plog = part.log
                hw = part.high_watermark
                start = plog.log_start_offset
                leo = plog.log_end_offset
                data: Any = _EMPTY
                if entry.offset != leo:
                    limit = min(entry.max_bytes, max_bytes - total)
                    if shares is not None and _held_back(part, replica_id, entry.offset):
                        data = _throttled_read(shares, plog, entry.offset, limit, total)
                        data = _EMPTY if data is None else data
                    elif limit > 0 or total == 0:
                        data = plog.read(entry.offset, max(limit, 1), None,
                                         min_one_batch=total == 0)
                size = len(data)
                if not size and entry.offset < leo:
                    session.dirty[key] = None  # no room left in this answer: the next one
                if not size and start == entry.log_start:
                    if hw != entry.hw:
                        hw_only.append((topic, entry, hw, [p, 0, hw, start, leo, _EMPTY]))
                    continue
                entry.hw = hw
                entry.log_start = start
                total += size
                row = [p, 0, hw, start, leo, data]
            except OffsetOutOfRangeError:
                assert part is not None
                row = [p, int(ErrorCode.OFFSET_OUT_OF_RANGE), part.high_watermark,
                       part.log.log_start_offset, part.log.log_end_offset, _EMPTY]
            except (DmqError, LogError) as exc:
                row = [p, int(error_code_of(exc)),
                       part.high_watermark if part is not None else -1, -1, -1, _EMPTY]
            out.setdefault(topic, []).append(row)
        held = False
        if shares is not None:
            shares.close()
            held = shares.held
        if hw_only:
            if out or hw_due:
                for topic, entry, hw, row in hw_only:
                    entry.hw = hw
                    out.setdefault(topic, []).append(row)
            else:  # held back: records may come to carry it
                for topic, _, _, row in hw_only:
                    session.dirty[(topic, row[0])] = None
                if session.hw_due_ms is None:
                    session.hw_due_ms = self.clock.monotonic_ms() + min(
                        HW_NEWS_LINGER_MS, session.max_wait_ms)
                return [[t, r] for t, r in out.items()], total, False, held
        session.hw_due_ms = None
        return [[t, r] for t, r in out.items()], total, bool(out), held

    def _catching_up(self, asked: Iterable[tuple[str, int, int]], replica_id: int) -> int:
        """How many of the asked (topic, partition, fetch offset) have records to send
        to `replica_id` under the leader's replication throttle: they share its quantum
        in one answer. Looked at only while a throttle rate is set."""
        n = 0
        get = self.replicas.get_partition
        for topic, p, offset in asked:
            part = get(topic, p)
            if part is not None and _held_back(part, replica_id, offset):
                n += 1
        return n

    # ------------------------------------------------------------------ offsets

    def list_offsets(self, ctx: RequestContext | None, body: dict[str, Any], *,
                     principal: str | None = None) -> Any:
        out = []
        refused = self._refused(ctx, principal, body["topics"], DESCRIBE, "ListOffsets")
        for topic, parts in body["topics"]:
            if refused and topic in refused:
                out.append([topic, [[p, _TOPIC_REFUSED, -1, -1] for p, _ in parts]])
                continue
            rows = []
            for p, timestamp in parts:
                try:
                    part = self._partition(topic, p)
                    part.check_leader(-1)
                    hw = part.high_watermark
                    if timestamp == EARLIEST:
                        rows.append([p, 0, -1, part.log.log_start_offset])
                    elif timestamp == LATEST:
                        rows.append([p, 0, -1, hw])
                    else:
                        found = part.log.offset_for_timestamp(timestamp)
                        if found is None or found[0] >= hw:
                            rows.append([p, 0, -1, -1])
                        else:
                            rows.append([p, 0, found[1], found[0]])
                except (DmqError, LogError) as exc:
                    rows.append([p, int(error_code_of(exc)), -1, -1])
            out.append([topic, rows])
        return {"topics": out}

    def delete_records(self, ctx: RequestContext | None, body: dict[str, Any], *,
                       principal: str | None = None) -> Any:
        """Move each partition's log start up to the offset given (-1: the high
        watermark), as Kafka's DeleteRecords: on the leader, whole segments below it
        are deleted; followers follow the leader's log start on their next fetch. An
        offset past the high watermark is OFFSET_OUT_OF_RANGE; a topic without
        cleanup.policy delete is POLICY_VIOLATION. Answers [partition, error, low
        watermark] with the leader's new log start."""
        out = []
        refused = self._refused(ctx, principal, body["topics"], DELETE, "DeleteRecords")
        for topic, parts in body["topics"]:
            if refused and topic in refused:
                out.append([topic, [[p, _TOPIC_REFUSED, -1] for p, _ in parts]])
                continue
            rows = []
            for p, offset in parts:
                try:
                    part = self._partition(topic, p)
                    part.check_leader(-1)
                    if not part.log.config.delete:
                        raise PolicyViolationError(
                            f"{topic} has cleanup.policy compact: records are not deleted "
                            "by offset")
                    hw = part.high_watermark
                    target = hw if offset == LATEST else offset
                    if target < 0 or target > hw:
                        raise OffsetOutOfRangeError(
                            f"{topic}-{p}: {offset} is outside [0, {hw}] (the high watermark)")
                    if part.log.maybe_increment_log_start_offset(target):
                        part.note_log_start_moved()  # followers' fetch sessions hear it
                    rows.append([p, 0, part.log.log_start_offset])
                except (DmqError, LogError) as exc:
                    rows.append([p, int(error_code_of(exc)), -1])
            out.append([topic, rows])
        return {"topics": out}

    def offset_for_leader_epoch(self, ctx: RequestContext | None, body: dict[str, Any], *,
                                principal: str | None = None) -> Any:
        out = []
        refused = self._refused(ctx, principal, body["topics"], DESCRIBE,
                                "OffsetForLeaderEpoch")
        for topic, parts in body["topics"]:
            if refused and topic in refused:
                out.append([topic, [[p, _TOPIC_REFUSED, -1, -1] for p, _, _ in parts]])
                continue
            rows = []
            for p, current_epoch, epoch in parts:
                try:
                    part = self._partition(topic, p)
                    part.check_leader(current_epoch)
                    found_epoch, end_offset = part.log.end_offset_for_epoch(epoch)
                    rows.append([p, 0, found_epoch, end_offset])
                except (DmqError, LogError) as exc:
                    rows.append([p, int(error_code_of(exc)), -1, -1])
            out.append([topic, rows])
        return {"topics": out}

    # ------------------------------------------------------------------ metadata

    def metadata(self, ctx: RequestContext, body: dict[str, Any]) -> Any:
        image = self.replicas.image
        topics = body.get("topics")
        if image is None:
            raise LeaderNotAvailableError("broker has no metadata yet")
        refused: dict[str, int] = {}
        authz = self.authorizer
        who = connection_principal(ctx.connection) if authz is not None else ""
        if authz is not None:
            topics, refused = authz.metadata_view(who, topics, image.topics)
        unknown = [t for t in topics or () if t not in image.topics and t not in refused]
        if (unknown and body.get("allow_auto_create") and self._auto_create
                and self._controller_request is not None):
            # the controller hears this broker (a node) ask, not the client: check here
            cannot = {t: _TOPIC_REFUSED for t in unknown if authz is not None
                      and not authz.may_create_topic(who, t, "Metadata")}
            if not cannot:
                return self._forward_metadata(body)
            refused |= cannot
        return metadata_body(image, topics, refused)

    async def _forward_metadata(self, body: dict[str, Any]) -> Any:
        """Auto-creation happens on the controller; ask it, answer with its view."""
        assert self._controller_request is not None
        return await self._controller_request(ApiKey.METADATA, body, 5000)
