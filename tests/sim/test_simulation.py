"""The Raft simulator in CI: many seeds with faults, zero invariant violations."""

from __future__ import annotations

import pytest

from tests.sim.simulator import SimConfig, Simulation, config_for_seed, run_seed

CI_SEEDS = 300
CI_STEPS = 2000
SOAK_SEEDS = 10_000


@pytest.mark.parametrize("block", range(10))
def test_seeds_with_faults(block: int) -> None:
    # 10 blocks of 30 seeds: CI_SEEDS seeds x CI_STEPS steps in total.
    per_block = CI_SEEDS // 10
    for seed in range(block * per_block, (block + 1) * per_block):
        sim = run_seed(seed, config_for_seed(seed, CI_STEPS))
        assert sim.liveness_done_at is not None


def test_same_seed_replays_exactly() -> None:
    a = run_seed(1234, config_for_seed(1234, 600))
    b = run_seed(1234, config_for_seed(1234, 600))
    assert a.stats == b.stats
    assert a.sm_hashes == b.sm_hashes
    assert a.committed_term == b.committed_term


def test_faults_really_happen() -> None:
    totals: dict[str, int] = {}
    for seed in range(20):
        sim = run_seed(seed, config_for_seed(seed, CI_STEPS))
        for key, value in sim.stats.items():
            totals[key] = totals.get(key, 0) + value
    for key in ("crashes", "torn", "snapshots_installed", "reads", "elections", "commits",
                "leader_loss_hints"):
        assert totals[key] > 0, (key, totals)


def test_wire_roundtrip_and_five_nodes() -> None:
    sim = run_seed(7, SimConfig(nodes=5, steps=1000, wire_roundtrip=True))
    assert sim.max_committed > 50


@pytest.mark.soak
@pytest.mark.parametrize("block", range(100))
def test_soak_ten_thousand_seeds(block: int) -> None:
    # By hand: pytest -m soak (100 blocks of 100 seeds, 2000 steps each).
    per_block = SOAK_SEEDS // 100
    for seed in range(block * per_block, (block + 1) * per_block):
        run_seed(seed, config_for_seed(seed, CI_STEPS))


def test_simulation_api_steps() -> None:
    sim = Simulation(5, SimConfig(nodes=3, steps=100))
    for _ in range(100):
        sim.step()
    assert sim.now == 100
