"""The bounded chaos run of CI: for a fixed seed, a real 3+3 cluster under the workload
while the nemesis injects every fault kind once (in a seeded order, on seeded nodes),
then heal, settle, read back, check. CI runs seed 1 (about a minute); more seeds run
with `pytest -m soak tests/chaos`, and the long run is `python -m tests.chaos`."""

from __future__ import annotations

import pytest

from tests.chaos.nemesis import KINDS
from tests.chaos.network import available
from tests.chaos.run import run_chaos

ok, why = available()
pytestmark = [pytest.mark.chaos, pytest.mark.skipif(not ok, reason=why),
              pytest.mark.timeout(240)]


@pytest.mark.parametrize("seed", [1, *(pytest.param(s, marks=pytest.mark.soak)
                                       for s in (2, 3, 4))])
async def test_every_fault_kind_nothing_acknowledged_lost(seed: int) -> None:
    result = await run_chaos(seed, duration_s=0, min_faults=len(KINDS))
    print("\n" + result.report())
    assert result.fault_counts().keys() == set(KINDS), result.faults
    assert len(result.history.acked) > 1000, "the workload barely ran"
    assert result.ok, result.report()
    assert not result.needless, result.report()
