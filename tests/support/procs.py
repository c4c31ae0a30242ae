"""Real `dmq server` processes for end-to-end tests.

`ProcessCluster` writes a config with free loopback ports into a temporary folder,
starts nodes as child processes, and always kills what it started (by PID) and removes
its folder, even when the test fails.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dmq.cli.dev import probe_port_range
from tests.support.waiting import wait_until


def _drop_to_gid(gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)


def free_ports(n: int) -> list[int]:
    """`n` distinct ports free on 127.0.0.1 now, inside `probe_port_range()`: below the
    kernel's ephemeral range (a port the kernel hands out, bind to 0, is one it may also
    give any outgoing connection as its local port before the test's server binds it),
    and in this test worker's own window when several run at once."""
    low, top = probe_port_range()
    socks: list[socket.socket] = []
    try:
        for _ in range(n * 100):
            if len(socks) == n:
                break
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", random.randrange(low, top)))
            except OSError:
                s.close()
                continue
            socks.append(s)
        if len(socks) < n:
            raise RuntimeError(f"no {n} free ports found below {top}")
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_port(port: int, timeout_s: float = 15.0, host: str = "127.0.0.1") -> None:
    def listening() -> bool:
        with socket.create_connection((host, port), timeout=0.2):
            return True

    try:
        wait_until(listening, timeout_s, f"{host}:{port} listening", interval_s=0.02,
                   ignore=(OSError,))
    except AssertionError:
        raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s}s") from None


def run_group(cmd: list[str], timeout: float, text: bool = False,
              **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    """`subprocess.run(cmd, capture_output=True, timeout=timeout, ...)` for a command
    that starts processes of its own (`dmq dev`, benchmarks/run_all.py): it runs in a
    new session, and whatever of that session is still alive when it exits, or when it
    is killed at the timeout, is killed with it (by its process group, the child's
    PID). Output goes through temporary files, so a leftover process holding the
    command's stdout cannot keep the call waiting."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True, **kwargs)

        def captured(f: Any) -> Any:
            f.seek(0)
            data = f.read()
            return data.decode(errors="replace") if text else data

        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            _kill_group(proc.pid)
            proc.wait()
            exc.output, exc.stderr = captured(out), captured(err)
            raise
        finally:
            _kill_group(proc.pid)
            proc.wait()
        return subprocess.CompletedProcess(cmd, proc.returncode, captured(out), captured(err))


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:  # nothing left in it
        pass


def toml_config(controllers: list[tuple[int, int]], brokers: list[tuple[int, int]],
                settings: dict[str, Any] | None = None) -> str:
    lines: list[str] = []
    for section, nodes in (("controllers", controllers), ("brokers", brokers)):
        for node_id, port in nodes:
            lines += [f"[[{section}]]", f"id = {node_id}", 'host = "127.0.0.1"',
                      f"port = {port}", ""]
    if settings:
        lines.append("[settings]")
        for k, v in settings.items():
            val = str(v).lower() if isinstance(v, bool) else (f'"{v}"' if isinstance(v, str) else v)
            lines.append(f'"{k}" = {val}')
    return "\n".join(lines) + "\n"


@dataclass
class NodeProc:
    node_id: int
    role: str
    port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    http_port: int | None = None
    kafka_port: int | None = None  # a fixed Kafka listener port (kept across restarts)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class ProcessCluster:
    """A cluster of real processes. Use as a context manager."""

    controllers: int = 1
    brokers: int = 0
    combined: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    http: bool = False
    # gid given to each node process (by node id), so iptables owner rules can tell
    # the nodes' traffic apart on loopback (tests/chaos); None: run with ours
    node_gids: dict[int, int] | None = None
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dmq-test-")))
    nodes: dict[int, NodeProc] = field(default_factory=dict)

    def __post_init__(self) -> None:
        ports = free_ports(self.controllers + self.brokers)
        ctl = [(i + 1, ports[i]) for i in range(self.controllers)]
        brk = [(101 + i, ports[self.controllers + i]) for i in range(self.brokers)]
        self.config_path = self.root / "cluster.toml"
        self.config_path.write_text(toml_config(ctl, brk, self.settings))
        role_c = "controller,broker" if self.combined else "controller"
        for node_id, port in ctl:
            self.nodes[node_id] = NodeProc(node_id, role_c, port, self.root / f"node-{node_id}",
                                           self.root / f"node-{node_id}.log")
        for node_id, port in brk:
            self.nodes[node_id] = NodeProc(node_id, "broker", port, self.root / f"node-{node_id}",
                                           self.root / f"node-{node_id}.log")
        if self.http:
            for n, hp in zip(self.nodes.values(), free_ports(len(self.nodes)), strict=True):
                n.http_port = hp

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes.values())

    @property
    def controller_ids(self) -> list[int]:
        return [n.node_id for n in self.nodes.values() if "controller" in n.role]

    @property
    def broker_ids(self) -> list[int]:
        return [n.node_id for n in self.nodes.values() if "broker" in n.role]

    def start(self, node_id: int | None = None, wait: bool = True) -> None:
        targets = [self.nodes[node_id]] if node_id is not None else list(self.nodes.values())
        for n in targets:
            if n.alive:
                continue
            logf = open(n.log_path, "ab")  # noqa: SIM115 - closed right after Popen
            gid = self.node_gids.get(n.node_id) if self.node_gids else None
            n.proc = subprocess.Popen(
                [sys.executable, "-m", "dmq.cli", "server", "--role", n.role, "--node-id",
                 str(n.node_id), "--config", str(self.config_path), "--data-dir", str(n.data_dir),
                 *(["--http-port", str(n.http_port)] if n.http_port else []),
                 *(["--kafka-port", str(n.kafka_port)] if n.kafka_port else [])],
                stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=(lambda g=gid: _drop_to_gid(g)) if gid is not None else None)
            logf.close()
        if wait:
            for n in targets:
                wait_port(n.port)

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        n = self.nodes[node_id]
        if n.proc is not None and n.proc.poll() is None:
            n.proc.send_signal(sig)
            if sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT):
                n.proc.wait(timeout=30)

    def signal(self, node_id: int, sig: int) -> None:
        n = self.nodes[node_id]
        if n.proc is not None and n.proc.poll() is None:
            n.proc.send_signal(sig)

    def stop_all(self) -> None:
        for n in self.nodes.values():
            if n.proc is not None and n.proc.poll() is None:
                try:
                    n.proc.send_signal(signal.SIGCONT)
                    n.proc.kill()
                    n.proc.wait(timeout=10)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass

    def dump_logs(self) -> str:
        return "\n".join(f"===== node {n.node_id} =====\n{n.log_text()[-4000:]}"
                         for n in self.nodes.values())

    def __enter__(self) -> ProcessCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        if exc[0] is not None and os.environ.get("DMQ_TEST_KEEP_LOGS"):
            print(self.dump_logs())
        shutil.rmtree(self.root, ignore_errors=True)
