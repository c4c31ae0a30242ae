from __future__ import annotations

import json
from pathlib import Path

import pytest

from dmq.config import ConfigError, load_config, parse_config
from dmq.node import parse_roles, resolve_node

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_toml_and_seed_json_describe_the_same_cluster() -> None:
    toml = load_config(ROOT / "config" / "cluster.toml")
    seed = load_config(ROOT / "config" / "services.json")
    assert [(n.node_id, n.port) for n in toml.controllers] == [(1, 9091), (2, 9092), (3, 9093)]
    assert [(n.node_id, n.port) for n in toml.brokers] == [(101, 8081), (102, 8082), (103, 8083)]
    assert toml.controllers == seed.controllers and toml.brokers == seed.brokers


def test_defaults_and_overrides() -> None:
    cfg = parse_config({"controllers": [{"id": 1, "port": 9000}],
                        "settings": {"broker.session.timeout.ms": "30000"}})
    assert cfg.get("broker.session.timeout.ms") == 30000
    assert cfg.get("broker.heartbeat.interval.ms") == 1000
    cfg2 = cfg.with_settings({"broker.heartbeat.interval.ms": "5000"})
    assert cfg2.get("broker.heartbeat.interval.ms") == 5000


@pytest.mark.parametrize("data, match", [
    ({}, "at least one controller"),
    ({"controllers": [{"id": 1, "port": 1}, {"id": 1, "port": 2}]}, "listed twice"),
    ({"controllers": [{"id": 1, "port": 70000}]}, "out of range"),
    ({"controllers": [{"id": "x", "port": 1}]}, "integer id"),
    ({"controllers": [{"id": 1, "port": 1}], "settings": {"nope": 1}}, "unknown setting"),
    ({"controllers": [{"id": 1, "port": 1}], "settings": {"num.partitions": "many"}}, "integer"),
])
def test_bad_configs_are_refused_with_a_reason(data, match) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_config(data)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(ConfigError, match="top level"):
        load_config(bad)


def test_roles_must_match_the_config() -> None:
    cfg = load_config(ROOT / "config" / "cluster.toml")
    assert parse_roles("broker,controller") == ("broker", "controller")
    with pytest.raises(ConfigError):
        parse_roles("leader")
    with pytest.raises(ConfigError, match="not listed among the controllers"):
        resolve_node(cfg, 101, ("controller",), None)
    with pytest.raises(ConfigError, match="not listed among the brokers"):
        resolve_node(cfg, 1, ("broker",), None)
    assert resolve_node(cfg, 1, ("broker", "controller"), None).node_id == 1


def test_readme_lists_every_setting_with_its_default() -> None:
    from dmq.config import SETTINGS

    readme = (ROOT / "README.md").read_text()
    for key, setting in SETTINGS.items():
        default = str(setting.default).lower() if isinstance(setting.default, bool) \
            else str(setting.default)
        assert f"| `{key}` | {default} |" in readme, key
