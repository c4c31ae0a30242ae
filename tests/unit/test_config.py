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
    # config/services.json is the seed's own file, byte for byte (hosts "localhost")
    assert [(n.node_id, n.port) for n in seed.controllers] == [(1, 9091), (2, 9092), (3, 9093)]
    assert [(n.node_id, n.port) for n in seed.brokers] == [(101, 8081), (102, 8082), (103, 8083)]
    assert {n.host for n in (*seed.controllers, *seed.brokers)} == {"localhost"}
    assert json.loads((ROOT / "config" / "services.json").read_text()) == \
        json.loads(SEED_CONFIGURATION_SECTION)


# The two services.json texts of the seed's README, exactly as printed there: the quick
# start's (two brokers) and the "Configuration" section's (three brokers, plus sections
# that configure the seed's own implementation).
SEED_QUICK_START = """{
  "services": {
    "metadata-services": [
      {"id": 1, "host": "localhost", "port": 9091, "url": "http://localhost:9091"},
      {"id": 2, "host": "localhost", "port": 9092, "url": "http://localhost:9092"},
      {"id": 3, "host": "localhost", "port": 9093, "url": "http://localhost:9093"}
    ],
    "storage-services": [
      {"id": 101, "host": "localhost", "port": 8081, "url": "http://localhost:8081"},
      {"id": 102, "host": "localhost", "port": 8082, "url": "http://localhost:8082"}
    ]
  }
}
"""

SEED_CONFIGURATION_SECTION = """{
  "services": {
    "metadata-services": [
      {"id": 1, "host": "localhost", "port": 9091, "url": "http://localhost:9091"},
      {"id": 2, "host": "localhost", "port": 9092, "url": "http://localhost:9092"},
      {"id": 3, "host": "localhost", "port": 9093, "url": "http://localhost:9093"}
    ],
    "storage-services": [
      {"id": 101, "host": "localhost", "port": 8081, "url": "http://localhost:8081"},
      {"id": 102, "host": "localhost", "port": 8082, "url": "http://localhost:8082"},
      {"id": 103, "host": "localhost", "port": 8083, "url": "http://localhost:8083"}
    ]
  },
  "controller": {
    "electionTimeoutMs": 5000
  },
  "metadata": {
    "sync": {
      "syncTimeoutMs": 30000
    }
  }
}
"""


@pytest.mark.parametrize("text, brokers", [(SEED_QUICK_START, [101, 102]),
                                           (SEED_CONFIGURATION_SECTION, [101, 102, 103])])
def test_the_seed_readme_services_json_is_accepted_as_printed(tmp_path: Path, text: str,
                                                              brokers: list[int]) -> None:
    path = tmp_path / "services.json"
    path.write_text(text)
    cfg = load_config(path)
    assert [(n.node_id, n.host, n.port) for n in cfg.controllers] == [
        (1, "localhost", 9091), (2, "localhost", 9092), (3, "localhost", 9093)]
    assert [n.node_id for n in cfg.brokers] == brokers
    assert [n.port for n in cfg.brokers] == [8081, 8082, 8083][:len(brokers)]
    assert cfg.settings == {}  # the seed's own "controller"/"metadata" sections are not dmq's
    assert resolve_node(cfg, 101, ("broker",), None).address.port == 8081
    # the unwrapped form is still accepted, with or without urls
    unwrapped = json.loads(text)["services"]
    assert parse_config(unwrapped).controllers == cfg.controllers
    for lst in unwrapped.values():
        for node in lst:
            del node["url"]
    assert parse_config(unwrapped).brokers == cfg.brokers


@pytest.mark.parametrize("url, match", [
    ("http://localhost:9999", "names port 9999 but the node's port is 9091"),
    ("localhost:9091", "must be http://HOST:PORT"),
    (9091, "url must be a string"),
    ("http://localhost:notaport", "bad url"),
])
def test_a_seed_url_that_contradicts_the_node_is_refused(url: object, match: str) -> None:
    data = {"services": {"metadata-services": [
        {"id": 1, "host": "localhost", "port": 9091, "url": url}]}}
    with pytest.raises(ConfigError, match=match):
        parse_config(data)


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
