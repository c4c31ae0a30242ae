"""The cluster most Kafka-client test modules run against: one combined node and two
brokers, each with a Kafka listener; one per module that asks for `cluster` (a module
needing another shape defines its own `cluster` fixture, which takes precedence)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kafka.support import kafka_cluster
from tests.support.procs import ProcessCluster


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[ProcessCluster, dict[int, int]]]:
    with kafka_cluster(brokers=2, combined=True) as c:
        yield c
