"""dmq-produce and dmq-consume as a user runs them: real processes, stdin/stdout, exit
codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from dmq.cli.dev import ensure_topic
from tests.support.procs import ProcessCluster, free_ports
from tests.support.tools import run_tool as run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def node() -> Iterator[ProcessCluster]:
    with ProcessCluster(controllers=1, combined=True,
                        settings={"auto.create.topics.enable": False}) as pc:
        pc.start()
        yield pc


async def test_produce_then_consume_lines_keys_headers(node: ProcessCluster) -> None:
    b = node.bootstrap
    await ensure_topic(b, "lines", 1, 1)
    r = run("produce", "--bootstrap", b, "--topic", "lines", stdin=b"one\ntwo\nthree\n")
    assert r.returncode == 0, r.stderr
    assert b"produced 3 records" in r.stderr
    r = run("produce", "-b", b, "-t", "lines", "--key-separator", ":", "--header", "src=test",
            "--acks", "1", stdin=b"k1:v1\nk2:v2")
    assert r.returncode == 0, r.stderr
    r = run("consume", "-b", b, "-t", "lines", "--from-beginning", "--max-messages", "5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().splitlines() == ["one", "two", "three", "v1", "v2"]
    assert b"processed a total of 5 messages" in r.stderr
    r = run("consume", "-b", b, "-t", "lines", "--partition", "0", "--offset", "3",
            "--format", "json", "--timeout-ms", "1000")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.decode().splitlines()]
    assert [(x["offset"], x["key"], x["value"], x["headers"]) for x in rows] == [
        (3, "k1", "v1", [["src", "test"]]), (4, "k2", "v2", [["src", "test"]])]
    r = run("consume", "-b", b, "-t", "lines", "--partition", "0", "--offset", "3",
            "--format", "key-value", "--max-messages", "1")
    assert r.stdout.decode() == "k1\tv1\n"


async def test_produce_from_file_and_group_consume(node: ProcessCluster, tmp_path: object
                                                   ) -> None:
    from pathlib import Path

    b = node.bootstrap
    await ensure_topic(b, "filed", 2, 1)
    path = Path(str(tmp_path)) / "in.txt"
    path.write_text("".join(f"line {i}\n" for i in range(1000)))
    r = run("produce", "-b", b, "-t", "filed", "--file", str(path))
    assert r.returncode == 0, r.stderr
    assert b"produced 1,000 records" in r.stderr
    r = run("consume", "-b", b, "-t", "filed", "--group", "g", "--from-beginning",
            "--max-messages", "1000", timeout=60)
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.decode().splitlines()) == sorted(f"line {i}" for i in range(1000))


def test_errors_are_one_line_and_non_zero(node: ProcessCluster) -> None:
    b = node.bootstrap
    (dead,) = free_ports(1)
    cases = [
        (run("consume", "-b", f"127.0.0.1:{dead}", "-t", "x"), 1, "no node reachable"),
        (run("produce", "-b", f"127.0.0.1:{dead}", "-t", "x", stdin=b"a\n"), 1,
         "no node reachable"),
        (run("consume", "-b", b, "-t", "missing", "--timeout-ms", "100"), 1,
         "UNKNOWN_TOPIC_OR_PARTITION"),
        (run("produce", "-b", b, "-t", "missing", "--timeout-ms", "500", stdin=b"a\n"), 1,
         "UNKNOWN_TOPIC_OR_PARTITION"),
        (run("produce", "-b", b), 2, "--topic"),
        (run("produce", "-b", b, "-t", "x", "--acks", "2"), 2, "acks"),
        (run("consume", "-b", b, "-t", "x", "--offset", "5"), 2, "--partition"),
        (run("consume", "-b", "nonsense", "-t", "x"), 2, "HOST:PORT"),
    ]
    for r, code, text in cases:
        err = r.stderr.decode()
        assert r.returncode == code, err
        assert text in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert err.startswith("error: ")


def test_dmq_dev_check_round_trips_hello(tmp_path: object) -> None:
    """The README quick start's proof: `dmq dev --check` sends a message through."""
    (port,) = free_ports(1)
    r = subprocess.run([sys.executable, "-m", "dmq", "dev", "--check", "--controllers", "1",
                        "--brokers", "1", "--base-port", str(port), "--data-dir",
                        str(tmp_path)], capture_output=True, timeout=90)
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert "produced 'hello from dmq'" in out
    assert "consumed 'hello from dmq'" in out
    assert "dmq-consume --bootstrap" in out
