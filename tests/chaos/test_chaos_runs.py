"""The bounded chaos run of CI: for a fixed seed, a real 3+4 cluster under the workload
while the nemesis injects every fault kind once (in a seeded order, on seeded nodes),
then heal, settle, read back, check. CI runs seed 1 with security on (TLS on every
listener and link, SASL SCRAM, the ACL authorizer; the workloads as a principal with
only the ACLs they need: about a minute); `pytest -m soak tests/chaos` adds seeds 1-4
in plaintext and seeds 2-4 secured, and the long run is `python -m tests.chaos`. The
Kafka-client run does the same through the brokers' Kafka listeners with confluent-kafka
(`kafka_workload.py`) under a fixed list of faults."""

from __future__ import annotations

import pytest

from tests.chaos.nemesis import KINDS
from tests.chaos.network import available
from tests.chaos.run import KAFKA_TOPIC, TOPIC, run_chaos

ok, why = available()
pytestmark = [pytest.mark.chaos, pytest.mark.skipif(not ok, reason=why),
              pytest.mark.timeout(240)]


def _have_confluent() -> bool:
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return False
    return True


# CI: seed 1 secured (one run: CI time); by hand (-m soak): plaintext 1-4, secured 2-4
RUNS = [pytest.param(1, True, id="1-secure"),
        *(pytest.param(s, False, id=f"{s}-plaintext", marks=pytest.mark.soak)
          for s in (1, 2, 3, 4)),
        *(pytest.param(s, True, id=f"{s}-secure", marks=pytest.mark.soak) for s in (2, 3, 4))]


@pytest.mark.parametrize(("seed", "secure"), RUNS)
async def test_every_fault_kind_nothing_acknowledged_lost(seed: int, secure: bool) -> None:
    """Both workloads at once on one cluster (dmq's client, and confluent-kafka through
    the Kafka listeners when it is installed), each on its own topic, under every fault
    kind; the checker looks at both histories (one run instead of two: CI time).
    `secure`: every client and node connection is TLS and authenticated (SCRAM, node
    certificates), every request authorized; the workloads run as `chaos`, which may
    only produce to and consume its two topics with its two groups."""
    kafka = _have_confluent()
    result = await run_chaos(seed, duration_s=0, min_faults=len(KINDS),
                             kafka_workload=kafka, secure=secure)
    print("\n" + result.report())
    assert result.fault_counts().keys() == set(KINDS), result.faults
    topics = {tp[0] for tp, _ in result.history.acked.values()}
    assert topics == ({TOPIC, KAFKA_TOPIC} if kafka else {TOPIC}), topics
    assert len(result.history.acked) > 1000, "the workload barely ran"
    assert any(key[1][0] == KAFKA_TOPIC for key in result.history.commits) or not kafka, \
        "the Kafka group committed nothing"
    assert result.ok, result.report()
    assert not result.needless, result.report()


# the group coordinator runs on the active controller (brokers' listeners forward to
# it): its kill and its cut from the brokers are in too; kill and pause twice, on
# seeded nodes
KAFKA_KINDS = ["kill-broker", "pause", "partition-node", "kill-controller-leader",
               "partition-controller-from-brokers", "pause", "kill-broker"]


@pytest.mark.soak  # CI runs the Kafka workload in the every-fault-kind run above
async def test_kafka_clients_nothing_acknowledged_lost() -> None:
    """The Kafka-client workload alone (confluent-kafka idempotent acks=all producers, a
    classic group of 2 committing by hand, through the brokers' Kafka listeners) under
    broker kills -9, pauses, an isolated node, a controller leader kill -9 and its cut
    from the brokers: every acknowledged record read back once at its offset, in order,
    delivered to the group; committed offsets never go back."""
    pytest.importorskip("confluent_kafka")
    result = await run_chaos(1, duration_s=0, kinds=KAFKA_KINDS, dmq_workload=False,
                             kafka_workload=True)
    print("\n" + result.report())
    assert len(result.faults) == len(KAFKA_KINDS), result.faults
    assert len(result.history.acked) > 1000, "the workload barely ran"
    assert result.history.commits, "the group committed nothing"
    assert result.ok, result.report()
    assert not result.needless, result.report()
