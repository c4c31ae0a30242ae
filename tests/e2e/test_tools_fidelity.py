"""The console tools and `dmq dev` as a new user meets them: real processes, exact argv
bytes, exit codes and what is printed.

- dmq-produce counts every record's outcome: records spread over partitions of which
  some have a dead leader must make it exit 1 saying how many were not acknowledged;
- dmq-consume's seed formats (text, hex, base64) and binary-safe json;
- no traceback on bad input (non-UTF-8 argv, offsets out of range, empty group);
- `dmq dev --quiet` says why a node died (a taken port);
- `dmq dev`'s "try it" lines run as printed in a shell whose PATH lacks the venv.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmq.cli.dev import ensure_topic, free_base_port
from dmq.client.admin import Admin
from dmq.client.consumer import Consumer
from dmq.client.producer import Producer
from dmq.client.records import TopicPartition
from tests.support.procs import ProcessCluster
from tests.support.tools import run_tool as run
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.slow


def one_line_error(r: subprocess.CompletedProcess[bytes], code: int, text: str) -> None:
    err = r.stderr.decode(errors="replace")
    assert r.returncode == code, err
    assert "Traceback" not in err, err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert text in err, err


@pytest.fixture(scope="module")
def node() -> Iterator[ProcessCluster]:
    with ProcessCluster(controllers=1, combined=True,
                        settings={"auto.create.topics.enable": False}) as pc:
        pc.start()
        yield pc


# ---- dmq-produce: every record's outcome counts ---------------------------------------
async def _wait_brokers(bootstrap: str, n: int, timeout_s: float = 30) -> None:
    async with Admin(bootstrap) as admin:
        status: dict = {}

        async def online() -> bool:
            nonlocal status
            status = await admin.cluster_status()
            return sum(b["state"] == "ONLINE" for b in status["brokers"]) >= n

        await async_wait_until(online, timeout_s, lambda: f"{n} brokers ONLINE: {status}",
                               interval_s=0.1)


async def _leaders(bootstrap: str, topic: str) -> dict[int, int]:
    async with Admin(bootstrap) as admin:
        info = (await admin.describe_topics([topic]))[topic]
    return {p: info.partitions[p].leader for p in info.partitions}


async def _readable(bootstrap: str, topic: str, partitions: list[int]) -> int:
    """How many records the given partitions hold (end offset minus start)."""
    async with Consumer(bootstrap) as consumer:
        tps = [TopicPartition(topic, p) for p in partitions]
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
    return sum(ends[tp] - starts[tp] for tp in tps)


async def _partition_of_keys(bootstrap: str, topic: str, n: int) -> dict[bytes, int]:
    """Where the producer's default partitioner puts keys key-0..key-<n-1> (learned by
    sending them: whatever the default partitioner is, dmq-produce uses the same)."""
    async with Producer(bootstrap, acks=1) as producer:
        handles = {b"key-%d" % i: await producer.send(topic, b"", key=b"key-%d" % i)
                   for i in range(n)}
        return {k: (await h).partition for k, h in handles.items()}


def _input_hiding_failures(where: dict[bytes, int], live: set[int], total: int) -> bytes:
    """`total` keyed lines over every partition, with a live partition's record at each
    1024th line and at the last line (where the old tool sampled outcomes)."""
    live_keys = [k for k, p in where.items() if p in live]
    dead_keys = [k for k, p in where.items() if p not in live]
    out = []
    for i in range(1, total + 1):
        pool = live_keys if i % 1024 == 0 or i == total or i % 2 else dead_keys
        out.append(pool[i % len(pool)] + b":value %d\n" % i)
    return b"".join(out)


async def test_produce_counts_records_of_partitions_whose_leader_is_dead() -> None:
    """4 partitions, RF 1, on 2 brokers (placement spreads first replicas 2 and 2); one
    broker is killed. Keyed lines alternate between the dead broker's partitions and
    the live ones: the former fail after --delivery-timeout-ms, the others are
    acknowledged. The tool must exit 1 and name exactly how many were not
    acknowledged, both for a small input (delivered line by line) and a bulk one (over
    1024 records), also when the last record and every 1024th are acknowledged."""
    with ProcessCluster(controllers=1, brokers=2,
                        settings={"auto.create.topics.enable": False,
                                  "min.insync.replicas": 1}) as pc:
        pc.start()
        b = pc.bootstrap
        await _wait_brokers(b, 2)
        await ensure_topic(b, "split", 4, 1)
        leaders = await _leaders(b, "split")
        dead = leaders[0]
        live_parts = [p for p, lead in leaders.items() if lead != dead]
        assert 0 < len(live_parts) < 4, leaders
        where = await _partition_of_keys(b, "split", 200)
        assert set(where.values()) == set(leaders), where
        pc.kill(dead)
        survivor = ",".join(f"127.0.0.1:{n.port}" for n in pc.nodes.values()
                            if n.node_id != dead)
        before = await _readable(survivor, "split", live_parts)
        for total in (300, 3000):
            r = run("produce", "-b", survivor, "-t", "split", "--key-separator", ":",
                    "--request-timeout-ms", "1000", "--delivery-timeout-ms", "2500",
                    stdin=_input_hiding_failures(where, set(live_parts), total))
            err = r.stderr.decode()
            assert r.returncode == 1, err
            assert "Traceback" not in err, err
            m = re.search(r"error: ([\d,]+) of ([\d,]+) records were not acknowledged "
                          r"\(first error: \S", err)
            assert m is not None, err
            failed, sent = (int(g.replace(",", "")) for g in m.groups())
            assert sent == total, err
            acked = await _readable(survivor, "split", live_parts) - before
            before += acked
            assert failed == total - acked, (err, acked)
            assert 0 < failed < total, err


def test_produce_timeouts_are_separate_and_checked(node: ProcessCluster) -> None:
    one_line_error(run("produce", "-b", node.bootstrap, "-t", "x", "--request-timeout-ms",
                       "10000", "--delivery-timeout-ms", "5000"), 2,
                   "--delivery-timeout-ms (5000) must be at least --linger-ms + "
                   "--request-timeout-ms (5 + 10000 = 10005)")
    r = run("produce", "--help")
    out = r.stdout.decode()
    for option in ("--timeout-ms", "--request-timeout-ms", "--delivery-timeout-ms"):
        assert option in out, out


# ---- argv bytes that are not UTF-8 -----------------------------------------------------
async def test_non_utf8_header_value_and_key_separator_are_taken_as_bytes(
        node: ProcessCluster) -> None:
    b = node.bootstrap
    await ensure_topic(b, "rawargs", 1, 1)
    r = run("produce", "-b", b, "-t", "rawargs", "--header", b"h=\xff\xfe",
            "--key-separator", b"\xff", stdin=b"k\xffv\n")
    assert r.returncode == 0, r.stderr
    assert b"produced 1 records" in r.stderr
    r = run("consume", "-b", b, "-t", "rawargs", "--from-beginning", "--max-messages", "1",
            "--format", "json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)
    assert (row["key"], row["value"], row["headers"]) == ("k", "v", [["h", {"base64": "//4="}]])


def test_bad_input_gets_one_line_never_a_traceback(node: ProcessCluster) -> None:
    b = node.bootstrap
    one_line_error(run("produce", "-b", b, "-t", "x", "--header", b"\xff=v"), 2,
                   "a --header key must be UTF-8 text, got the bytes b'\\xff'")
    one_line_error(run("produce", "-b", b, "-t", b"t\xff"), 2, "--topic must be UTF-8")
    one_line_error(run("consume", "-b", b"h\xff:1", "-t", "x"), 2, "--bootstrap must be UTF-8")
    one_line_error(run("consume", "-b", b, "-t", "x", "--group", b"g\xff"), 2,
                   "--group must be UTF-8")
    one_line_error(run("consume", "-b", b, "-t", "x", "--group", ""), 2,
                   "--group must not be empty")
    one_line_error(run("consume", "-b", b, "-t", "x", "--partition", "0", "--offset",
                       str(2**64)), 2, "--offset must be a number from 0 to")
    one_line_error(run("produce", "-b", b, "-t", "x", "--partition", "-1"), 2,
                   "--partition must be 0 or more")
    one_line_error(run("produce", "-b", "127.0.0.1:99999", "-t", "x"), 2,
                   "--bootstrap: bad bootstrap address '127.0.0.1:99999'")
    one_line_error(run("consume", "-b", "", "-t", "x"), 2,
                   "--bootstrap: bootstrap needs at least one HOST:PORT")


# ---- dmq-consume formats ---------------------------------------------------------------
async def test_consume_formats_text_hex_base64_and_binary_json(node: ProcessCluster) -> None:
    b = node.bootstrap
    await ensure_topic(b, "formats", 1, 1)
    values = [b"plain", b"\x00\xff\x80bin", "h\u00e9llo".encode(), None]
    async with Producer(b) as producer:
        for i, v in enumerate(values):
            await producer.send("formats", v, key=b"\xfe\x01" if i == 1 else b"k%d" % i,
                                headers=[("raw", b"\xc3")])
        await producer.flush()

    def consume(fmt: str) -> list[str]:
        r = run("consume", "-b", b, "-t", "formats", "--from-beginning", "--max-messages",
                str(len(values)), "--format", fmt)
        assert r.returncode == 0, r.stderr
        return r.stdout.decode().splitlines()

    assert consume("hex") == ["706c61696e", "00ff8062696e", "68c3a96c6c6f", "null"]
    assert consume("base64") == ["cGxhaW4=", "AP+AYmlu", "aMOpbGxv", "null"]
    assert consume("text") == ["plain", "\x00\ufffd\ufffdbin", "h\u00e9llo", "null"]
    assert consume("value") == consume("text")
    rows = [json.loads(line) for line in consume("json")]
    assert [(r["key"], r["value"]) for r in rows] == [
        ("k0", "plain"), ({"base64": "/gE="}, {"base64": "AP+AYmlu"}),
        ("k2", "h\u00e9llo"), ("k3", None)]
    assert all(r["headers"] == [["raw", {"base64": "ww=="}]] for r in rows)


# ---- dmq dev ----------------------------------------------------------------------------
def test_dev_quiet_says_why_a_node_died(tmp_path: Path) -> None:
    """A node that cannot start (its data folder is a file): it exits at once, and
    --quiet must still show its reason. (A taken port is refused before any node
    starts, naming the port: tests/e2e/test_seed_fidelity.py.)"""
    (tmp_path / "node-1").write_text("not a folder")
    port = free_base_port(1, 1, kafka=True)  # the node and its Kafka port at +20
    r = subprocess.run([sys.executable, "-m", "dmq", "dev", "--quiet", "--controllers",
                        "1", "--brokers", "1", "--base-port", str(port), "--data-dir",
                        str(tmp_path)], capture_output=True, timeout=60)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "node 1 exited with 2; its last output lines" in err, err
    assert "is a file" in err, err
    assert str(tmp_path / "node-1.log") in err, err


def _venv_script(name: str) -> Path:
    script = Path(sys.executable).parent / name
    if not script.is_file():
        pytest.skip(f"{name} is not installed next to {sys.executable}")
    return script


def _path_without(folder: Path) -> str:
    keep = [p for p in os.environ.get("PATH", "").split(os.pathsep)
            if p and Path(p).resolve() != folder.resolve() and not (Path(p) / "dmq").exists()]
    return os.pathsep.join(keep)


def test_dev_try_it_lines_run_as_printed_without_the_venv_on_path(tmp_path: Path) -> None:
    """A new user's `.venv/bin/dmq dev` in a shell without the venv on PATH: the printed
    dmq-produce/dmq-consume lines must work pasted into that shell. Then a node killed
    while the cluster runs is reported with its exit reason."""
    dmq = _venv_script("dmq")
    env = dict(os.environ, PATH=_path_without(dmq.parent))
    assert shutil.which("dmq-produce", path=env["PATH"]) is None
    port = free_base_port(1, 1, kafka=True)  # the node and its Kafka port at +20
    proc = subprocess.Popen([str(dmq), "dev", "--quiet", "--controllers", "1", "--brokers",
                             "1", "--base-port", str(port), "--data-dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=tmp_path, start_new_session=True)
    lines: queue.Queue[tuple[str, str]] = queue.Queue()

    def pump(stream: str) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        for raw in (proc.stdout if stream == "out" else proc.stderr):
            lines.put((stream, raw.decode(errors="replace").rstrip("\n")))
        lines.put((stream, ""))

    for s in ("out", "err"):
        threading.Thread(target=pump, args=(s,), daemon=True).start()

    def read_until(pred: object, timeout_s: float = 60) -> list[str]:
        seen = []
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                _, line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"timed out; output so far: {seen}") from None
            seen.append(line)
            if pred(line):  # type: ignore[operator]
                return seen

    try:
        out = read_until(lambda line: "Ctrl-C stops the cluster." in line)
        tries = [line.strip() for line in out[out.index("try it:") + 1:]
                 if line.startswith("  ")]
        assert len(tries) == 2, out
        produce_line, consume_line = tries
        assert str(dmq.parent / "dmq-produce") in produce_line, produce_line
        home = tmp_path / "elsewhere"  # a second terminal opened in another folder
        home.mkdir()
        r = subprocess.run(["bash", "-c", produce_line], env=env, cwd=home,
                           capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        r = subprocess.run(["bash", "-c", consume_line + " --max-messages 2"], env=env,
                           cwd=home, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert r.stdout.decode().splitlines() == ["hello from dmq", "my first message"]
        # a node that dies while the cluster runs is reported with its reason
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) == 1, children
        os.kill(int(children[0]), signal.SIGKILL)
        read_until(lambda line: "node 1 was killed by signal 9" in line)
        assert proc.wait(timeout=30) == 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
