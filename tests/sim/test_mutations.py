"""Proof that the checks can fail: broken cores must be caught within a seed budget.

Each mutant removes one safety rule (see tests/sim/mutants.py). The hunt runs the
simulator over seeds 0, 1, 2, ... with `hunting_config` and stops at the first
violation. Measured over 300 seeds with that configuration: the vote-log-check mutant
is caught on 287, the earlier-term-commit mutant on 17, the unpersisted-vote mutant
on 9 (first catches at seeds 0, 11 and 3); the real core on none. Over the 300 seeds
of the CI run itself (`config_for_seed`, one seed in five hunting): 197, 2 and 3.
"""

from __future__ import annotations

import pytest

from dmq.raft.core import RaftCore
from tests.sim.mutants import MUTANTS
from tests.sim.simulator import Violation, hunting_config, run_seed

SEED_BUDGET = 300


def hunt(core_factory: type[RaftCore]) -> tuple[int, str]:
    for seed in range(SEED_BUDGET):
        try:
            run_seed(seed, hunting_config(seed), core_factory)
        except Violation as violation:
            return seed, str(violation)
    raise AssertionError(f"{core_factory.__name__} survived {SEED_BUDGET} seeds")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("vote_without_log_check", ("overwritten", "leader completeness", "state machine")),
        ("commit_earlier_term", ("overwritten", "leader completeness", "committed entry")),
        ("vote_not_persisted", ("election safety",)),
    ],
)
def test_simulator_catches_mutant(name: str, expected: tuple[str, ...]) -> None:
    seed, message = hunt(MUTANTS[name])
    assert message.startswith(f"seed={seed} step="), message
    assert any(word in message for word in expected), message


def test_real_core_survives_the_hunting_configuration() -> None:
    for seed in range(40):
        run_seed(seed, hunting_config(seed))
