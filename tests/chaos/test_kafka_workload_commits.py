"""The Kafka-client workload's group member with a commit that is never answered (a
confluent-kafka commit that hangs after the controller leader was cut from the brokers):
the member does not block on it, records it nowhere, rejoins as a new consumer and goes
on reading and committing; an answer the old consumer gives later is ignored. Driven
with a stand-in for confluent_kafka, no cluster."""

from __future__ import annotations

import random
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from tests.chaos import kafka_workload as kw
from tests.support.waiting import wait_until


class _TP:
    def __init__(self, topic: str, partition: int, offset: int = -1001) -> None:
        self.topic, self.partition, self.offset, self.error = topic, partition, offset, None


class _Msg:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return f"k0:{self._offset}".encode()

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class _Consumer:
    """The first one reads offsets 0-4 and never answers its commit (until closed,
    when it answers it after all); the next ones read 3-6 and answer every commit."""

    made: list[_Consumer] = []

    def __init__(self, conf: dict[str, Any]) -> None:
        self.on_commit = conf["on_commit"]
        self.first = not _Consumer.made
        self.to_read = list(range(5) if self.first else range(3, 7))
        self.commits: list[list[_TP]] = []
        self.answered = 0
        self.closed = threading.Event()
        _Consumer.made.append(self)

    def subscribe(self, topics: list[str], **_callbacks: Any) -> None:
        pass

    def consume(self, num_messages: int, timeout: float) -> list[_Msg]:
        time.sleep(0.005)
        if not self.first:
            for parts in self.commits[self.answered:]:
                self.answered += 1
                self.on_commit(None, parts)
        msgs, self.to_read = [_Msg(o) for o in self.to_read], []
        return msgs

    def commit(self, offsets: list[_TP], asynchronous: bool) -> None:
        assert asynchronous, "a synchronous commit may hang the member for good"
        self.commits.append(offsets)

    def close(self) -> None:
        for parts in self.commits:  # the stuck commit's answer, now: too late
            self.on_commit(None, parts)
        self.closed.set()


class _KafkaError(Exception):
    pass


def test_a_member_whose_commit_is_never_answered_rejoins_and_goes_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _Consumer.made = []
    fake = SimpleNamespace(Consumer=_Consumer, TopicPartition=_TP, KafkaException=_KafkaError)
    monkeypatch.setattr(kw, "_ck", lambda: fake)
    monkeypatch.setattr(kw, "COMMIT_ANSWER_S", 0.2)
    notes: list[str] = []
    w = kw.KafkaWorkload("127.0.0.1:1", "t", 1, notes.append, random.Random(1), consumers=1)
    w.consuming.set()
    member = threading.Thread(target=w._consume, args=("kc0",), daemon=True)
    member.start()
    key = (f"{kw.GROUP}/kc0", ("t", 0))
    try:
        wait_until(lambda: w.history.commits.get(key), 10, "an answered commit")
        wait_until(lambda: _Consumer.made[0].closed.is_set(), 10, "the stuck consumer closed")
    finally:
        w.consuming.clear()
        member.join(10)
    assert not member.is_alive()
    assert [len(c.commits) for c in _Consumer.made] == [1, 1]
    assert [tp.offset for tp in _Consumer.made[0].commits[0]] == [5]
    # only the new consumer's answered commit; the stuck one (offset 5) counts as
    # indeterminate, and its late answer is ignored
    assert w.history.commits[key] == [7]
    assert w.consumer_errors == {"unanswered commit": 1}
    assert w.history.consumed == {("k0", s) for s in range(7)}
    assert any("unanswered" in n for n in notes), notes
