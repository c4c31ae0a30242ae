"""The producer's sender: one background task that drains the accumulator by broker.

What it owns: the loop that picks ready batches (full, lingered long enough, flushed,
or due for retry) and groups them by leader broker, at most `max_in_flight` produce
requests outstanding per broker, connecting to brokers, retrying retriable failures
with metadata refresh and backoff until `delivery_timeout_ms`, resolving each batch's
future, and the idempotent producer's id and epoch: sequence numbers are fixed when a
batch is first sent (`ProducerBatch.seal`) and, after a sequenced batch failed for
good, a new producer id is taken once nothing is in flight and every partition
restarts at sequence 0.

It never appends records (the `Producer` façade does, into the `RecordAccumulator`)
and reads time only from the injected clock.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from dmq.client.accumulator import PartitionQueue, ProducerBatch, RecordAccumulator
from dmq.client.cluster import ClusterClient
from dmq.clock import Clock, Waker, wait_for_ms
from dmq.protocol.api import ApiKey
from dmq.protocol.codec import VectoredBody
from dmq.protocol.connection import Connection
from dmq.protocol.errors import (
    DmqError,
    ErrorCode,
    NetworkError,
    RequestTimedOutError,
    error_for,
)

log = logging.getLogger("dmq.client.producer")

_RESET_NONE, _RESET_NEEDED, _RESET_RUNNING = 0, 1, 2


class Sender:
    """Drains `accumulator` to the brokers `cluster` knows; see the module docstring."""

    def __init__(self, accumulator: RecordAccumulator, cluster: ClusterClient, clock: Clock,
                 *, acks: int, idempotent: bool, linger_ms: int, batch_size: int,
                 max_in_flight: int, max_request_size: int, request_timeout_ms: int,
                 delivery_timeout_ms: int) -> None:
        self.acc = accumulator
        self.cluster = cluster
        self.clock = clock
        self.acks = acks
        self.idempotent = idempotent
        self.linger_ms = linger_ms
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.max_request_size = max_request_size
        self.request_timeout_ms = request_timeout_ms
        self.delivery_timeout_ms = delivery_timeout_ms
        self.producer_id = -1
        self.producer_epoch = -1
        self._reset_state = _RESET_NONE
        self._node_in_flight: dict[int, int] = {}
        self._requests: set[asyncio.Task[None]] = set()
        self._connecting: dict[int, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._waker = Waker(clock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False  # after close: failures are final, nothing is retried
        self._metadata_wanted = False
        self._sent_any = False

    # ---- lifecycle ---------------------------------------------------------------------
    async def init_producer_id(self) -> None:
        body = await self.cluster.controller_request(ApiKey.INIT_PRODUCER_ID, {})
        self.producer_id = int(body["producer_id"])
        self.producer_epoch = int(body["producer_epoch"])
        log.debug("producer id %d epoch %d", self.producer_id, self.producer_epoch)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name="dmq-producer-sender")

    async def close(self, timeout_ms: float) -> None:
        """Send what is accumulated (the accumulator is closing) and wait for the
        answers up to `timeout_ms`; then fail what is left and stop."""
        task = self._task
        if task is not None:
            self.acc.flushing += 1
            self.wakeup()
            try:
                await wait_for_ms(self.clock, asyncio.shield(task), timeout_ms)
            except TimeoutError:
                task.cancel()
                self.fail_all(RequestTimedOutError("producer closed before delivery"))
            except Exception:
                log.exception("producer sender failed")
        self._stopped = True
        if self._requests:
            await asyncio.wait(list(self._requests), timeout=1.0)

    def wakeup(self) -> None:
        self._waker.wake()

    async def _run(self) -> None:
        acc = self.acc
        while True:
            try:
                self._sent_any = False
                wait_ms = self._send_ready()
                while self._sent_any:  # more may be ready with in-flight room left
                    self._sent_any = False
                    wait_ms = self._send_ready()
            except Exception:
                log.exception("producer sender step failed")
                wait_ms = 100.0
            if acc.closing and not acc.incomplete:
                return
            self.cluster.maybe_refresh_stale()
            if self._metadata_wanted:
                self._metadata_wanted = False
                self.cluster.request_update()
                wait_ms = min(wait_ms if wait_ms is not None else 1e9,
                              float(self.cluster.retry_backoff_ms))
            await self._waker.sleep(wait_ms)

    # ---- draining ----------------------------------------------------------------------
    def _send_ready(self) -> float | None:
        """One sender step: expire, pick ready batches per leader, send. Returns how long
        the sender may sleep (ms) before something becomes ready on its own.

        Queues are visited oldest first (`RecordAccumulator.pending`), so with many
        partitions the batches that waited longest go first and have grown the most; the
        scan stops once every broker's request is full or its in-flight limit reached
        (not a walk of every partition per request)."""
        acc = self.acc
        now = self.clock.monotonic_ms()
        linger = self.linger_ms
        force = acc.flushing > 0 or acc.closing
        wait_ms: float | None = None
        by_node: dict[int, list[PartitionQueue]] = {}
        # bytes left in the request being built for each node seen; -1: nothing more
        # for it this step (in-flight limit, no connection yet, or its request is full)
        room: dict[int, int] = {}
        closed_nodes = 0
        all_nodes = max(1, len(self.cluster.brokers))
        max_request = self.max_request_size
        done_queues = []
        for pq in acc.pending:
            batches = pq.batches
            while batches and now - batches[0].created_ms >= self.delivery_timeout_ms:
                b = batches.popleft()
                if pq.open is b:
                    pq.open = None
                self.fail(b, self._expired(b))
            if not batches:
                done_queues.append(pq)
                continue
            first = batches[0]
            if first.sealed is not None:
                if pq.in_flight:
                    continue  # retry mode: one request at a time for this partition
                if first.retry_at_ms > now:
                    wait_ms = _min(wait_ms, first.retry_at_ms - now)
                    continue
            elif not (force or first is not pq.open or
                      first.reserved_bytes >= self.batch_size):
                due = first.created_ms + linger - now
                if due > 0:
                    wait_ms = _min(wait_ms, due)
                    continue
            if pq.in_flight >= (self.max_in_flight if pq.confirmed else 1):
                continue
            if first.sealed is None and len(pq.window) >= self.max_in_flight:
                continue  # an older batch's answer is still out (`PartitionQueue.window`)
            if first.sealed is None and self._reset_state:
                continue  # new batches wait for the new producer id
            leader, _epoch = self.cluster.leader_for(pq.topic, pq.partition)
            if leader < 0:
                self._metadata_wanted = True
                continue
            left = room.get(leader)
            if left is None:
                left = max_request if self._can_send_to(leader) else -1
                room[leader] = left
                if left < 0:
                    closed_nodes += 1
            if left < 0:
                if closed_nodes >= all_nodes:
                    break
                continue
            size = first.size_bytes
            if size > left and leader in by_node:
                room[leader] = -1  # this request is full: the rest waits for the next one
                closed_nodes += 1
                if closed_nodes >= all_nodes:
                    break
                continue
            room[leader] = left - size
            by_node.setdefault(leader, []).append(pq)
        pending = acc.pending
        for pq in done_queues:
            pending.pop(pq, None)
        for node, queues in by_node.items():
            conn = self.cluster.cached_connection(node)
            if conn is None:
                self._maybe_connect(node)
                continue
            self._send_to(node, conn, queues)
        if self._reset_state:
            self._maybe_reset_producer_id()
        return wait_ms

    def _can_send_to(self, node: int) -> bool:
        """Room for one more request to `node` (connecting to it if needed)."""
        if self._node_in_flight.get(node, 0) >= self.max_in_flight:
            return False
        if self.cluster.cached_connection(node) is None:
            self._maybe_connect(node)
            return False
        return True

    def _maybe_connect(self, node: int) -> None:
        if node in self._connecting:
            return

        async def connect() -> None:
            try:
                await self.cluster.node_connection(node)
            except DmqError as exc:
                log.info("cannot connect to broker %d: %s", node, exc)
                self._metadata_wanted = True
                await self.clock.sleep(self.cluster.backoff_ms(1))
            finally:
                self._connecting.pop(node, None)
                self.wakeup()

        assert self._loop is not None
        self._connecting[node] = self._loop.create_task(connect())

    def _send_to(self, node: int, conn: Connection, queues: list[PartitionQueue]) -> None:
        total = 0
        topics: dict[str, list[list[Any]]] = {}
        batches: list[ProducerBatch] = []
        pending = self.acc.pending
        for pq in queues:
            b = pq.batches[0]
            if b.sealed is None:
                size = b.builder.estimated_size_bytes
                if batches and total + size > self.max_request_size:
                    continue
                seq = -1
                if self.idempotent:
                    seq = pq.next_sequence
                    pq.next_sequence = (seq + b.record_count) & 0x7FFFFFFF
                data = b.seal(self.producer_id, self.producer_epoch, seq)
                if seq >= 0:
                    pq.window.append(b)
            else:
                data = b.sealed
                if batches and total + len(data) > self.max_request_size:
                    continue
            total += len(data)
            pq.batches.popleft()
            if pq.open is b:
                pq.open = None
            # what is left of this queue is younger than the rest: to the back of the line
            pending.pop(pq, None)
            if pq.batches:
                pending[pq] = None
            pq.in_flight += 1
            b.attempts += 1
            _epoch = self.cluster.leader_for(pq.topic, pq.partition)[1]
            topics.setdefault(pq.topic, []).append([pq.partition, _epoch, data])
            batches.append(b)
        if not batches:
            return
        self._sent_any = True
        # a VectoredBody: the batches go to the socket by reference (as raw sections to
        # a broker that reads the raw form), never copied into the request
        body = VectoredBody(acks=self.acks, timeout_ms=self.request_timeout_ms,
                            topics=[[t, ps] for t, ps in topics.items()])
        if self.acks == 0:
            try:
                conn.send_oneway(ApiKey.PRODUCE, body)
            except DmqError as exc:
                for b in batches:
                    self._retry_or_fail(b, exc)
                return
            for b in batches:
                self._complete(b, -1)
            return
        self._node_in_flight[node] = self._node_in_flight.get(node, 0) + 1
        self._spawn(self._produce(node, conn, body, batches))

    def _spawn(self, coro: Any) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def _produce(self, node: int, conn: Connection, body: VectoredBody,
                       batches: list[ProducerBatch]) -> None:
        try:
            resp = await conn.request(ApiKey.PRODUCE, body, timeout_ms=self.request_timeout_ms)
        except DmqError as exc:
            if exc.refresh_metadata or isinstance(exc, NetworkError):
                self._metadata_wanted = True
            for b in batches:
                self._retry_or_fail(b, exc)
        except Exception as exc:  # a bug; fail the batches rather than hang them
            log.exception("produce to node %d failed", node)
            for b in batches:
                self.fail(b, exc)
        else:
            results: dict[tuple[str, int], list[Any]] = {}
            for topic, parts in resp.get("topics", []):
                for p in parts:
                    results[(topic, p[0])] = p
            for b in batches:
                r = results.get((b.topic, b.partition))
                if r is None:
                    self._retry_or_fail(b, error_for(ErrorCode.UNKNOWN_SERVER_ERROR,
                                                     "partition missing from produce response"))
                elif r[1] == 0:
                    self._complete(b, int(r[2]))
                else:
                    err = error_for(r[1], r[4] if len(r) > 4 else None)
                    if err.refresh_metadata:
                        self._metadata_wanted = True
                    self._retry_or_fail(b, err)
        finally:
            self._node_in_flight[node] -= 1
            self.wakeup()

    # ---- outcomes ----------------------------------------------------------------------
    def _complete(self, b: ProducerBatch, base_offset: int) -> None:
        b.queue.in_flight -= 1
        b.queue.confirmed = True
        b.queue.settle(b)
        self.acc.release(b)
        if not b.future.done():
            b.future.set_result(base_offset)

    def _retry_or_fail(self, b: ProducerBatch, exc: DmqError) -> None:
        pq = b.queue
        pq.in_flight -= 1
        now = self.clock.monotonic_ms()
        retriable = exc.retriable
        if exc.code is ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER:
            # an earlier batch of this partition failed and is being resent: our turn
            # comes after it
            retriable = pq.in_flight > 0 or pq.retrying
        b.last_error = exc
        if retriable and now - b.created_ms < self.delivery_timeout_ms and not self._stopped:
            log.debug("retrying %r after %s", b, exc)
            b.retry_at_ms = now + int(self.cluster.backoff_ms(b.attempts))
            pq.requeue(b)
            self.acc.pending[pq] = None
        elif retriable and not self._stopped:
            self.fail(b, self._expired(b))  # names `exc` as the last error
        else:
            self.fail(b, exc)

    def _expired(self, b: ProducerBatch) -> DmqError:
        """The error of a batch past its delivery timeout, naming the last error a
        broker answered it with (the cause an operator needs: NOT_ENOUGH_REPLICAS, a
        full disk, no leader, ...)."""
        last = f"; last error: {b.last_error}" if b.last_error is not None else \
            ("; never sent (no leader known for the partition, or no connection)"
             if b.attempts == 0 else "")
        return RequestTimedOutError(
            f"{b.topic}-{b.partition}: {b.record_count} record(s) not delivered within "
            f"delivery_timeout_ms={self.delivery_timeout_ms} after {b.attempts} "
            f"attempt(s){last}")

    def fail(self, b: ProducerBatch, exc: BaseException) -> None:
        if b.base_sequence >= 0:
            # its sequence range is now a gap the broker will never see filled
            self._reset_state = self._reset_state or _RESET_NEEDED
            b.queue.settle(b)
        self.acc.release(b)
        if not b.future.done():
            b.future.set_exception(exc)
            b.future.exception()  # mark retrieved: the owner of a handle may never await it

    def fail_all(self, exc: BaseException) -> None:
        for pq in list(self.acc.pending):
            while pq.batches:
                self.fail(pq.batches.popleft(), exc)
            pq.open = None
        for b in list(self.acc.incomplete):
            self.fail(b, exc)

    # ---- producer id -------------------------------------------------------------------
    def _maybe_reset_producer_id(self) -> None:
        """After a sequenced batch failed for good: once nothing is in flight or waiting
        for retry, take a new producer id and restart every partition at sequence 0."""
        if self._reset_state != _RESET_NEEDED:
            return
        if any(pq.in_flight or pq.retrying for pq in self.acc.pending) or \
                any(self._node_in_flight.values()):
            return
        self._reset_state = _RESET_RUNNING

        async def reset() -> None:
            try:
                await self.init_producer_id()
                for parts in self.acc.queues.values():
                    for pq in parts.values():
                        pq.next_sequence = 0
                        pq.confirmed = False
                        pq.window.clear()  # every batch in it was settled (nothing in flight)
                self._reset_state = _RESET_NONE
            except DmqError as exc:
                log.warning("cannot renew producer id: %s", exc)
                self._reset_state = _RESET_NEEDED
                await self.clock.sleep(self.cluster.backoff_ms(3))
            finally:
                self.wakeup()

        self._spawn(reset())


def _min(a: float | None, b: float) -> float:
    return b if a is None or b < a else a


__all__ = ["Sender"]
