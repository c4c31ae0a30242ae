"""`dmq cluster start`: which nodes of a config it runs, in which role."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmq.cli.launch import LaunchedNode, nodes_of
from dmq.config import ConfigError, load_config

CONFIG = Path(__file__).resolve().parents[2] / "config"


def test_the_seed_services_json_runs_its_metadata_services_as_controllers() -> None:
    nodes = nodes_of(load_config(CONFIG / "services.json"))
    assert [(n.node_id, n.role, n.port) for n in nodes] == [
        (1, "controller", 9091), (2, "controller", 9092), (3, "controller", 9093),
        (101, "broker", 8081), (102, "broker", 8082), (103, "broker", 8083)]


def test_a_config_without_brokers_runs_its_controllers_in_combined_mode() -> None:
    assert nodes_of(load_config(CONFIG / "single.toml")) == [
        LaunchedNode(1, "controller,broker", "127.0.0.1", 9091)]


def test_only_the_nodes_asked_for_and_an_unknown_one_is_named() -> None:
    config = load_config(CONFIG / "services.json")
    assert [n.node_id for n in nodes_of(config, [2, 101])] == [2, 101]
    with pytest.raises(ConfigError, match="node.s. 7 not in"):
        nodes_of(config, [7, 1])
