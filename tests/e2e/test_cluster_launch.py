"""Local clusters run from the command line, with real processes:

- `dmq cluster start` / `dmq cluster stop` (what bin/cluster-start and bin/cluster-stop
  call): every node of a seed-style services.json in the background with pid files,
  refused while running, stopped by pid file; a stale pid file is not signalled.
- `dmq dev` killed with SIGKILL: on Linux its nodes die with it (PR_SET_PDEATHSIG).

Every process started is killed by PID at the end, whatever happened.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmq.cli.dev import free_base_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow


def _dmq(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dmq", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _running(pid: int) -> bool:
    """Alive and not a zombie (a reparented node may wait a moment to be reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        if not _running(pid):
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def started_pids() -> Iterator[list[int]]:
    """PIDs a test saw started; each still running at the end is killed."""
    pids: list[int] = []
    yield pids
    _kill_all(pids)


def _services_json(path: Path, controller_port: int, broker_port: int) -> Path:
    path.write_text(json.dumps({"services": {
        "metadata-services": [{"id": 1, "host": "127.0.0.1", "port": controller_port,
                               "url": f"http://127.0.0.1:{controller_port}"}],
        "storage-services": [{"id": 101, "host": "127.0.0.1", "port": broker_port,
                              "url": f"http://127.0.0.1:{broker_port}"}]},
        "controller": {"electionTimeoutMs": 5000}}))
    return path


def test_cluster_start_and_stop_the_nodes_of_a_services_json(
        tmp_path: Path, started_pids: list[int]) -> None:
    base = free_base_port(1, 2)  # the layout's ports base and base + 10 are free
    config = _services_json(tmp_path / "services.json", base, base + 10)
    data = tmp_path / "data"

    out = _dmq("cluster", "start", "--config", str(config), "--data-dir", str(data))
    pids = {n: int(p.read_text()) for n in (1, 101)
            if (p := data / f"node-{n}.pid").exists()}
    started_pids += pids.values()
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 node(s) up" in out.stdout, out.stdout
    assert f"127.0.0.1:{base},127.0.0.1:{base + 10}" in out.stdout, out.stdout
    assert sorted(pids) == [1, 101] and all(_running(p) for p in pids.values())
    assert "started node 1 (controller)" in out.stdout
    assert "started node 101 (broker)" in out.stdout
    # the command has exited; the cluster it started works: the broker registers
    wait_until(lambda: '"broker_id": 101' in _dmq(
        "cluster", "status", "--config", str(config), "--json", "--timeout-ms", "3000").stdout,
        30, "broker 101 registered")

    again = _dmq("cluster", "start", "--config", str(config), "--data-dir", str(data))
    assert again.returncode == 1
    assert f"already running: node 1 (pid {pids[1]})" in again.stderr, again.stderr
    assert all(_running(p) for p in pids.values())

    stop = _dmq("cluster", "stop", "--data-dir", str(data))
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert f"stopped node 1 (pid {pids[1]})" in stop.stdout, stop.stdout
    assert f"stopped node 101 (pid {pids[101]})" in stop.stdout, stop.stdout
    # the broker first: its controlled shutdown needs the controller
    assert stop.stdout.index("stopped node 101") < stop.stdout.index("stopped node 1 ")
    wait_until(lambda: not any(_running(p) for p in pids.values()), 10, "nodes gone")
    assert not list(data.glob("*.pid"))

    none = _dmq("cluster", "stop", "--data-dir", str(data))
    assert none.returncode == 1 and "no running node found" in none.stderr, none.stderr


def test_cluster_stop_does_not_signal_the_process_of_a_stale_pid_file(
        tmp_path: Path, started_pids: list[int]) -> None:
    """The node is gone and its pid now belongs to another program: stop removes the
    pid file and leaves that program alone."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started_pids.append(other.pid)
    try:
        (tmp_path / "node-1.pid").write_text(f"{other.pid}\n")
        out = _dmq("cluster", "stop", "--data-dir", str(tmp_path), "--grace-ms", "500")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "node 1: not running (stale pid file removed)" in out.stdout, out.stdout
        assert not (tmp_path / "node-1.pid").exists()
        assert other.poll() is None, "a process that is no dmq node was signalled"
    finally:
        other.kill()
        other.wait()


def test_cluster_start_names_a_node_that_cannot_start_and_stops_the_others(
        tmp_path: Path, started_pids: list[int]) -> None:
    base = free_base_port(1, 2)
    config = _services_json(tmp_path / "services.json", base, base + 10)
    data = tmp_path / "data"
    data.mkdir()
    (data / "node-101").write_text("not a folder")  # the broker cannot use its data dir
    out = _dmq("cluster", "start", "--config", str(config), "--data-dir", str(data))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "node 101 exited with 2; its last output lines" in out.stderr, out.stderr
    pid = int(out.stdout.split("started node 1 (controller)")[1].split("pid ")[1].split(",")[0])
    started_pids.append(pid)
    wait_until(lambda: not _running(pid), 15, "the controller started first is stopped")
    assert not list(data.glob("*.pid"))


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux")
def test_dev_killed_with_sigkill_leaves_no_node_running(tmp_path: Path) -> None:
    base = free_base_port(1, 1, kafka=True)
    proc = subprocess.Popen([sys.executable, "-m", "dmq", "dev", "--quiet", "--controllers", "1",
                             "--brokers", "1", "--base-port", str(base), "--data-dir",
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            lines.put(raw.decode(errors="replace"))
        lines.put("")

    threading.Thread(target=pump, daemon=True).start()
    nodes: list[int] = []
    try:
        seen = []
        deadline = time.monotonic() + 60
        while not any("node(s) up" in line for line in seen):
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            assert line, "dmq dev ended early:\n" + "".join(seen)
            seen.append(line)
        nodes = _children(proc.pid)
        assert len(nodes) == 1, nodes
        assert _running(nodes[0])
        proc.kill()  # SIGKILL: dmq dev runs no cleanup of its own
        proc.wait(timeout=10)
        wait_until(lambda: not _running(nodes[0]), 20, "the node dies with dmq dev")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        _kill_all(nodes)


def test_bin_cluster_start_and_stop_pass_their_options_on(
        tmp_path: Path, started_pids: list[int]) -> None:
    """bin/cluster-start and bin/cluster-stop are `dmq cluster start|stop` with the
    repository's services.json and dmq-data as defaults that the options given win
    over (here a one-node TOML config, run in combined mode, and a temporary folder)."""
    root = Path(__file__).resolve().parents[2]
    port = free_base_port(1, 1)
    config = tmp_path / "single.toml"
    config.write_text(f'[[controllers]]\nid = 1\nhost = "127.0.0.1"\nport = {port}\n\n'
                      '[settings]\n"default.replication.factor" = 1\n')
    data = tmp_path / "data"
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent),
                                                 os.environ.get("PATH", "")]))

    def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(root / "bin" / script), *args], capture_output=True,
                              text=True, timeout=60, env=env, stdin=subprocess.DEVNULL)

    out = run("cluster-start", "--config", str(config), "--data-dir", str(data))
    pid_file = data / "node-1.pid"
    if pid_file.exists():
        started_pids.append(int(pid_file.read_text()))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "started node 1 (controller,broker)" in out.stdout, out.stdout
    assert f"1 node(s) up; bootstrap: 127.0.0.1:{port}" in out.stdout, out.stdout
    stop = run("cluster-stop", "--data-dir", str(data))
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert f"stopped node 1 (pid {started_pids[0]})" in stop.stdout, stop.stdout
    wait_until(lambda: not _running(started_pids[0]), 10, "node 1 gone")
