"""The chaos workload through the brokers' Kafka listeners: confluent-kafka (librdkafka)
idempotent acks=all producers and a classic consumer group with manual commits,
recording into a `History` of its own the checker reads like the dmq workload's.

Producer `k<i>` sends values `k<i>:<seq>` to partition `seq % partitions`; its thread
produces and polls (delivery reports run on it). A delivery report without an error
is an acknowledgement: its (partition, offset) goes into `acked`; one with an error
(or none by the end) makes the record indeterminate. librdkafka queues every
`produce` (a full queue is waited out, never a refusal), so nothing is `failed`.

The group's members (`kc<i>`, one thread each) read, add every record to `consumed`,
and commit the next offsets of what they read asynchronously, one commit in flight per
member: its answer (the `on_commit` callback, served by the member's own `consume`
calls) is awaited up to `COMMIT_ANSWER_S` while the member keeps reading, and the
offsets an acknowledged commit reports go to `commits` under `<group>/<member>`. A
commit not answered by then counts as indeterminate (`unanswered commit`, never
recorded as acknowledged) and the member starts over as a new consumer of the group
(the old one is closed on a thread of its own and its callbacks are ignored). A
synchronous `commit()` could hang for good after the controller leader was cut from
the brokers (as in confluent-kafka-python #1801; the thread dump showed the member in
`commit` and its heartbeats had stopped too), leaving a member that read nothing more.
Offsets read from partitions a rebalance takes away are not committed by this member
any more (its `on_revoke`/`on_lost`). A
poller thread asks the group's committed offsets (OffsetFetch through a listener, by a
consumer of the group that never joins it) and appends what changed under `<group>`.
librdkafka learns a restarted broker's new Kafka port from metadata; the bootstrap
list is every broker's port at start. `properties`: more client properties for every
client (a secure cluster's SASL_SSL login as the workload principal).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from tests.chaos.checker import History, RecordId
from tests.chaos.workload import parse_record

log = logging.getLogger("tests.chaos.kafka")

GROUP = "chaos-kafka-group"
MESSAGE_TIMEOUT_MS = 30_000
# how long a member waits for its commit's answer before counting the commit as
# indeterminate (librdkafka's own requests time out after socket.timeout.ms, 10 s)
COMMIT_ANSWER_S = 15.0


def _ck() -> Any:
    import confluent_kafka  # only runs that ask for this workload need it

    return confluent_kafka


class KafkaWorkload:
    def __init__(self, bootstrap: str, topic: str, partitions: int,
                 note: Callable[[str], None], rng: random.Random, producers: int = 2,
                 consumers: int = 2, rate_per_s: float = 100.0, group: str = GROUP,
                 properties: dict[str, str] | None = None) -> None:
        self.bootstrap = bootstrap
        self.properties = dict(properties or {})
        self.topic = topic
        self.partitions = partitions
        self.note = note
        self.rng = rng
        self.n_producers = producers
        self.n_consumers = consumers
        self.rate_per_s = rate_per_s
        self.group = group
        self.history = History()
        self.lock = threading.Lock()  # guards history, pending, failures, errors
        self.producing = threading.Event()
        self.consuming = threading.Event()
        self._pending: dict[RecordId, float] = {}  # rid -> time of produce()
        self.failures: list[tuple[RecordId, float, float, float, str]] = []
        self.errors: dict[str, int] = {}
        self.consumer_errors: dict[str, int] = {}
        self.last_delivery: dict[str, float] = {}
        self._producers: list[threading.Thread] = []
        self._others: list[threading.Thread] = []
        self.died: list[str] = []

    def _common(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap, "logger": log,
                "socket.timeout.ms": 10_000, "topic.metadata.refresh.interval.ms": 5000,
                "reconnect.backoff.max.ms": 1000, **self.properties}

    # ---- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self.producing.set()
        self.consuming.set()
        for i in range(self.n_producers):
            t = self._thread(self._produce, f"k{i}")
            self._producers.append(t)
        for i in range(self.n_consumers):
            self._others.append(self._thread(self._consume, f"kc{i}"))
        self._others.append(self._thread(self._poll_commits, "commits"))

    def _thread(self, target: Callable[[str], None], name: str) -> threading.Thread:
        def guarded() -> None:
            try:
                target(name)
            except Exception as exc:  # a workload bug must not hide: note it loudly
                self.died.append(f"{name}: {exc!r}")
                self.note(f"kafka workload thread {name} died: {exc!r}")
                raise

        t = threading.Thread(target=guarded, name=f"chaos kafka {name}", daemon=True)
        t.start()
        return t

    def stop_producing(self, timeout_s: float = 40.0) -> None:
        """Stop sending; each producer flushes (bounded); what stays unresolved is
        indeterminate. Blocking: run it in a thread."""
        self.producing.clear()
        for t in self._producers:
            t.join(timeout_s + 5)
        now = time.monotonic()
        with self.lock:
            for rid, sent in self._pending.items():
                self.history.indeterminate.add(rid)
                self.failures.append((rid, sent, now, MESSAGE_TIMEOUT_MS / 1000,
                                      "unresolved when producing stopped"))
            if self._pending:
                self.note(f"kafka: {len(self._pending)} records unresolved when producing "
                          "stopped")
            self._pending.clear()

    def undelivered(self) -> int:
        with self.lock:
            return sum(1 for rid in self.history.acked if rid not in self.history.consumed)

    def stop(self) -> None:
        """Blocking: run it in a thread."""
        self.producing.clear()
        self.consuming.clear()
        for t in self._producers + self._others:
            t.join(30)

    # ---- producers -----------------------------------------------------------------
    def _produce(self, name: str) -> None:
        ck = _ck()
        fatal: list[str] = []  # an idempotence failure librdkafka cannot recover from

        def on_error(err: Any) -> None:
            if err.fatal():
                fatal.append(str(err))

        producer = ck.Producer({**self._common(), "client.id": f"chaos-{name}",
                                "error_cb": on_error,
                                "enable.idempotence": True, "acks": "all",
                                "linger.ms": 5, "message.timeout.ms": MESSAGE_TIMEOUT_MS,
                                "request.timeout.ms": 5000, "retry.backoff.max.ms": 500})

        def report(err: Any, msg: Any) -> None:
            rid = parse_record(msg.value())
            if rid is None:
                return
            with self.lock:
                sent = self._pending.pop(rid, None)
                if sent is None:
                    return
                if err is None:
                    self.history.acked[rid] = ((msg.topic(), msg.partition()), msg.offset())
                else:
                    self.history.indeterminate.add(rid)
                    key = f"{err.name()}{' (fatal)' if err.fatal() else ''}"
                    self.errors[key] = self.errors.get(key, 0) + 1
                    self.failures.append((rid, sent, time.monotonic(),
                                          MESSAGE_TIMEOUT_MS / 1000, str(err)))

        interval = self.n_producers / self.rate_per_s
        seq = 0
        next_at = time.monotonic()
        while self.producing.is_set():
            rid = (name, seq)
            value = f"{name}:{seq}".encode()
            with self.lock:
                self.history.attempted += 1
                self._pending[rid] = time.monotonic()
            while True:
                try:
                    producer.produce(self.topic, value=value, key=name.encode(),
                                     partition=seq % self.partitions, on_delivery=report)
                    break
                except BufferError:  # local queue full: serve reports, then again
                    producer.poll(0.1)
            seq += 1
            next_at += interval
            while True:  # serve delivery reports until the next send is due
                wait = next_at - time.monotonic()
                producer.poll(max(0.0, min(wait, 0.1)))
                if wait <= 0:
                    break
            if fatal:
                self.note(f"kafka producer {name}: fatal error {fatal[0]}; it stops")
                break
        left = producer.flush(MESSAGE_TIMEOUT_MS / 1000 + 5)
        if left:
            self.note(f"kafka producer {name}: {left} records not flushed")

    # ---- the group -----------------------------------------------------------------
    def _consume(self, name: str) -> None:
        ck = _ck()
        key = f"{self.group}/{name}"
        # (error, partitions) of the commits answered; appended by `on_commit`, which
        # librdkafka calls on this thread from within `consume`
        answers: list[tuple[Any, list[Any]]] = []
        uncommitted: dict[tuple[str, int], int] = {}  # next offsets read, not yet committed

        incarnation = [0]  # the callbacks of a consumer given up on are ignored

        def join() -> Any:
            incarnation[0] += 1
            mine = incarnation[0]

            def on_commit(err: Any, parts: list[Any]) -> None:
                if incarnation[0] == mine:
                    answers.append((err, parts))

            def taken_away(_consumer: Any, parts: list[Any]) -> None:
                if incarnation[0] == mine:
                    for tp in parts:  # the partition's next owner commits it now
                        uncommitted.pop((tp.topic, tp.partition), None)

            consumer = ck.Consumer({
                **self._common(), "client.id": f"chaos-{name}", "group.id": self.group,
                "auto.offset.reset": "earliest", "enable.auto.commit": False,
                "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
                "fetch.wait.max.ms": 300, "on_commit": on_commit})
            consumer.subscribe([self.topic], on_revoke=taken_away, on_lost=taken_away)
            return consumer

        consumer = join()
        in_flight: dict[tuple[str, int], int] | None = None  # the commit awaited
        sent_at = 0.0
        try:
            while self.consuming.is_set():
                msgs = consumer.consume(num_messages=500, timeout=0.3)
                read = False
                for msg in msgs:
                    if msg.error() is not None:
                        self._count(self.consumer_errors, msg.error().name())
                        continue
                    rid = parse_record(msg.value())
                    with self.lock:
                        if rid is not None:
                            self.history.consumed.add(rid)
                    uncommitted[(msg.topic(), msg.partition())] = msg.offset() + 1
                    read = True
                if read:
                    self.last_delivery[name] = time.monotonic()
                while answers:
                    err, parts = answers.pop(0)
                    offsets = {(tp.topic, tp.partition): tp.offset for tp in parts or []}
                    # one commit in flight: an answer is its (a failed one may not name
                    # the same offsets)
                    if in_flight is None or (err is None and offsets != in_flight):
                        self._count(self.consumer_errors, "unexpected commit answer")
                        continue
                    in_flight = None
                    self._record_commit(key, err, parts or [])
                if in_flight is not None and time.monotonic() - sent_at > COMMIT_ANSWER_S:
                    # a member whose commit never completes may have stopped taking
                    # part in the group (its heartbeats had stopped in the hangs seen):
                    # it leaves (closed on a thread of its own, as close may hang too)
                    # and joins again as a new consumer; what it read and did not
                    # commit is read again by the partitions' next owners.
                    self._count(self.consumer_errors, "unanswered commit")
                    self.note(f"kafka member {name}: a commit unanswered after "
                              f"{COMMIT_ANSWER_S:.0f} s counts as indeterminate; the "
                              "member rejoins as a new consumer")
                    incarnation[0] += 1
                    threading.Thread(target=consumer.close, daemon=True,
                                     name=f"chaos kafka {name} close").start()
                    answers.clear()
                    uncommitted.clear()
                    in_flight = None
                    consumer = join()
                    continue
                if in_flight is not None or not uncommitted:
                    continue
                offsets, uncommitted = uncommitted, {}
                try:
                    consumer.commit(offsets=[ck.TopicPartition(t, p, o)
                                             for (t, p), o in offsets.items()],
                                    asynchronous=True)
                except ck.KafkaException as exc:  # refused at once (no assignment, closing)
                    self._count(self.consumer_errors, exc.args[0].name())
                    continue
                in_flight, sent_at = offsets, time.monotonic()
        finally:
            consumer.close()

    def _record_commit(self, key: str, err: Any, parts: list[Any]) -> None:
        """An answered commit: the offsets it acknowledges go to `commits` in the order
        of the answers."""
        with self.lock:
            if err is not None and not any(tp.error is not None for tp in parts):
                self._count_locked(self.consumer_errors, err.name())
            for tp in parts:
                if tp.error is not None:
                    self._count_locked(self.consumer_errors, tp.error.name())
                elif err is None and tp.offset >= 0:
                    self.history.commits[(key, (tp.topic, tp.partition))].append(tp.offset)

    def _poll_commits(self, name: str) -> None:
        ck = _ck()
        looker = ck.Consumer({**self._common(), "client.id": "chaos-commit-poller",
                              "group.id": self.group, "enable.auto.commit": False})
        tps = [ck.TopicPartition(self.topic, p) for p in range(self.partitions)]
        last_note = time.monotonic()
        try:
            while self.consuming.is_set():
                time.sleep(0.5)
                if time.monotonic() - last_note > 10:
                    last_note = time.monotonic()
                    with self.lock:
                        acked, consumed = len(self.history.acked), len(self.history.consumed)
                    idle = {n: round(last_note - t, 1) for n, t in self.last_delivery.items()}
                    self.note(f"kafka progress: acked {acked}, delivered {consumed}, "
                              f"members idle for {idle}")
                try:
                    got = looker.committed(tps, timeout=3)
                except ck.KafkaException as exc:
                    self._count(self.consumer_errors, f"OffsetFetch {exc.args[0].name()}")
                    continue
                with self.lock:
                    for tp in got:
                        if tp.error is None and tp.offset >= 0:
                            seen = self.history.commits[(self.group, (tp.topic, tp.partition))]
                            if not seen or seen[-1] != tp.offset:
                                seen.append(tp.offset)
        finally:
            looker.close()

    def _count(self, where: dict[str, int], what: str) -> None:
        with self.lock:
            self._count_locked(where, what)

    @staticmethod
    def _count_locked(where: dict[str, int], what: str) -> None:
        where[what] = where.get(what, 0) + 1
