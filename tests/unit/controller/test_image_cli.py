"""The Metadata answer built from an image parses back into the same image for
clients; the CLI finds its bootstrap in a config file."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from dmq.cli.common import resolve_bootstrap
from dmq.metadata.image import FENCED, image_from_metadata, metadata_body
from dmq.protocol.errors import ErrorCode
from tests.unit.controller.helpers import Harness


def test_metadata_body_round_trip() -> None:
    h = Harness()
    for b in (1, 2, 3):
        h.add_broker(b)
    h.create("t", 4, 2)
    h.commit(h.planner.fence_broker(3))
    img = h.state.image(2, 7, ("127.0.0.1", 9092))
    body = metadata_body(img, None)
    assert body["controller"] == [2, "127.0.0.1", 9092] and body["controller_term"] == 7
    assert [b[0] for b in body["brokers"]] == [1, 2]  # fenced brokers are not listed
    back = image_from_metadata(body)
    assert back.controller_id == 2 and back.controller_address == ("127.0.0.1", 9092)
    for p, info in img.topics["t"].partitions.items():
        q = back.partition("t", p)
        assert q is not None and (q.leader, q.replicas, q.isr, q.leader_epoch) == (
            info.leader, info.replicas, info.isr, info.leader_epoch)
    named = metadata_body(img, ["t", "missing", "creating"], {"creating": 5})
    assert [t["error"] for t in named["topics"]] == [
        0, ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, ErrorCode.LEADER_NOT_AVAILABLE]
    assert img.brokers[3].state == FENCED and metadata_body(img, [])["topics"] == []
    assert sum(len(img.partitions_of(b)) for b in (1, 2, 3)) == 8


def test_bootstrap_from_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[controllers]]\nid = 1\nhost = "h1"\nport = 1\n'
                   '[[controllers]]\nid = 2\nhost = "h2"\nport = 2\n')
    assert resolve_bootstrap("x:9", str(cfg)) == "x:9"
    assert resolve_bootstrap(None, str(cfg)) == "h1:1,h2:2"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(click.UsageError):
        resolve_bootstrap(None, None)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "cluster.toml").write_text(cfg.read_text())
    assert resolve_bootstrap(None, None) == "h1:1,h2:2"
