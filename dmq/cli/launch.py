"""`dmq cluster start` and `dmq cluster stop`: the nodes of a cluster config as
background processes, as the seed's operators ran them (one process per entry of
`config/services.json`: its metadata services as controllers, its storage services as
brokers), without a terminal per node.

`start` launches `dmq server` for every node of the config (or those named with
`--node`) in a session of its own, its output appended to `DATA_DIR/node-<id>.log`, its
data in `DATA_DIR/node-<id>` and its pid in `DATA_DIR/node-<id>.pid`; it waits until
each answers ApiVersions and returns, the nodes keep running. A node listed in both
lists, or every controller of a config that lists no broker, runs in combined mode.
`stop` sends SIGTERM to the nodes of the pid files, the brokers first and the
controllers once the brokers are gone, waits for each to exit (SIGKILL after the grace
period) and removes the pid files. A pid file whose process is gone,
or is no longer that dmq node (its pid reused), is stale: it is removed, nothing is
signalled.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from dmq.cli.common import fail, install_uvloop
from dmq.cli.dev import log_tail
from dmq.config import ClusterConfig, ConfigError, load_config
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import request_once
from dmq.protocol.errors import DmqError

DEFAULT_CONFIG = "config/services.json"
DEFAULT_DATA_DIR = "dmq-data"


@dataclass(frozen=True)
class LaunchedNode:
    node_id: int
    role: str  # as `dmq server --role` takes it
    host: str
    port: int
    pid: int = 0


def nodes_of(config: ClusterConfig, only: Sequence[int] = ()) -> list[LaunchedNode]:
    """The nodes of `config` with the role each runs, those of `only` when given."""
    roles: dict[int, set[str]] = {}
    for n in config.controllers:
        roles.setdefault(n.node_id, set()).add("controller")
    for n in config.brokers:
        roles.setdefault(n.node_id, set()).add("broker")
    if not config.brokers:
        for r in roles.values():
            r.add("broker")
    unknown = sorted(set(only) - set(roles))
    if unknown:
        raise ConfigError(f"node(s) {', '.join(map(str, unknown))} not in {config.source}")
    out = []
    for node_id, r in roles.items():
        if only and node_id not in only:
            continue
        address = config.node(node_id)
        assert address is not None
        role = ",".join(x for x in ("controller", "broker") if x in r)
        out.append(LaunchedNode(node_id, role, address.host, address.port))
    return out


def pid_path(data_dir: Path, node_id: int) -> Path:
    return data_dir / f"node-{node_id}.pid"


def log_path(data_dir: Path, node_id: int) -> Path:
    return data_dir / f"node-{node_id}.log"


def running_pid(data_dir: Path, node_id: int) -> int | None:
    """The pid of the pid file when that process is still this dmq node, else None."""
    try:
        pid = int(pid_path(data_dir, node_id).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _is_node_process(pid, node_id) else None


def _is_node_process(pid: int, node_id: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process: the pid was reused
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc here: trust the pid file
    if _state(pid) == "Z":
        return False
    return b"server" in args and b"--node-id" in args and str(node_id).encode() in args


def _role(pid: int) -> str:
    """The `--role` of a running `dmq server` ("" when it cannot be read)."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return ""
    i = args.index(b"--role") if b"--role" in args else -2
    return args[i + 1].decode(errors="replace") if 0 <= i < len(args) - 1 else ""


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rpartition(")")[2].split()[0]


async def start_nodes(config_path: Path, data_dir: Path, only: Sequence[int] = (),
                      timeout_s: float = 30.0,
                      echo: Callable[[str], None] = print) -> list[LaunchedNode]:
    """Start the nodes of the config at `config_path` detached, and wait until each
    answers. Refuses a node whose pid file names a running node; when a node exits or
    does not answer in time, stops the nodes started here and raises RuntimeError
    naming it with its last log lines."""
    config = load_config(config_path)
    nodes = nodes_of(config, only)
    running = [f"node {n.node_id} (pid {pid})" for n in nodes
               if (pid := running_pid(data_dir, n.node_id)) is not None]
    if running:
        raise RuntimeError(f"already running: {', '.join(running)}; `dmq cluster stop "
                           f"--data-dir {data_dir}` stops them")
    data_dir.mkdir(parents=True, exist_ok=True)
    started: list[tuple[LaunchedNode, subprocess.Popen[bytes], int]] = []
    try:
        for n in nodes:
            log = log_path(data_dir, n.node_id)
            with open(log, "ab") as logf:  # the child keeps its own copy
                start = logf.tell()
                proc = subprocess.Popen(
                    [sys.executable, "-m", "dmq", "server", "--role", n.role, "--node-id",
                     str(n.node_id), "--config", str(config_path.resolve()), "--data-dir",
                     str((data_dir / f"node-{n.node_id}").resolve())],
                    stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                    start_new_session=True)  # not stopped by the terminal's Ctrl-C
            pid_path(data_dir, n.node_id).write_text(f"{proc.pid}\n")
            started.append((n, proc, start))
            echo(f"started node {n.node_id} ({n.role}) on {n.host}:{n.port}, pid {proc.pid}, "
                 f"log {log}")
        await _wait_answering(started, data_dir, timeout_s, _probe_tls(config))
    except BaseException:
        stop_processes([(n.node_id, p.pid) for n, p, _ in started], 10.0, echo)
        for n, _, _ in started:
            pid_path(data_dir, n.node_id).unlink(missing_ok=True)
        raise
    return [LaunchedNode(n.node_id, n.role, n.host, n.port, p.pid) for n, p, _ in started]


def _probe_tls(config: ClusterConfig) -> Any:
    """The TLS client context to ask the nodes of a TLS config whether they answer
    (verifying them against its CA; ApiVersions needs no login), else None."""
    if not config.get("ssl.certificate.location"):
        return None
    from dmq.security.tls import client_context

    try:
        return client_context(config.get("ssl.ca.location") or None, check_hostname=config.get(
            "ssl.endpoint.identification.algorithm") == "https")
    except Exception as exc:  # noqa: BLE001 - OSError, SSLError: the node will say so too
        raise RuntimeError(f"ssl.ca.location: {exc}") from None


async def _wait_answering(started: list[tuple[LaunchedNode, subprocess.Popen[bytes], int]],
                          data_dir: Path, timeout_s: float, tls: Any = None) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    for n, proc, start in started:
        while True:
            rc = proc.poll()
            if rc is not None:
                how = f"was killed by signal {-rc}" if rc < 0 else f"exited with {rc}"
                log = log_path(data_dir, n.node_id)
                raise RuntimeError(f"node {n.node_id} {how}; its last output lines ({log}):\n"
                                   + "\n".join(f"  {line}" for line in log_tail(log, start)))
            try:
                await request_once(n.host, n.port, ApiKey.API_VERSIONS, {}, timeout_ms=1000,
                                   ssl=tls)
                break
            except DmqError:
                if loop.time() > deadline:
                    raise RuntimeError(f"node {n.node_id} not answering on {n.host}:{n.port} "
                                       f"after {timeout_s:g}s; its log: "
                                       f"{log_path(data_dir, n.node_id)}") from None
                await asyncio.sleep(0.1)


def stop_processes(nodes: Sequence[tuple[int, int]], grace_s: float,
                   echo: Callable[[str], None] = print) -> None:
    """SIGTERM each (node id, pid), wait up to `grace_s` for all to exit, SIGKILL the
    rest. A child of this process is reaped; another process is waited for by polling."""
    for _node_id, pid in nodes:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    for node_id, pid in nodes:
        how = "stopped"
        while _alive(pid):
            if time.monotonic() > deadline:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    break
                how = f"killed (still running after {grace_s:g}s)"
                deadline = time.monotonic() + grace_s  # bounded: SIGKILL cannot be ignored
            time.sleep(0.05)
        echo(f"{how} node {node_id} (pid {pid})")


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # our child: reap it
        return done == 0
    except ChildProcessError:
        pass  # not our child
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _state(pid) != "Z"


def stop_nodes(data_dir: Path, only: Sequence[int] = (), grace_s: float = 10.0,
               echo: Callable[[str], None] = print) -> int:
    """Stop the nodes of the pid files in `data_dir` (those of `only` when given) and
    remove their pid files; returns how many were running."""
    ids = sorted(int(p.name[len("node-"):-len(".pid")]) for p in data_dir.glob("node-*.pid")
                 if p.name[len("node-"):-len(".pid")].isdigit())
    if only:
        ids = [i for i in ids if i in only]
    targets = []
    for node_id in ids:
        pid = running_pid(data_dir, node_id)
        if pid is None:
            echo(f"node {node_id}: not running (stale pid file removed)")
            pid_path(data_dir, node_id).unlink(missing_ok=True)
        else:
            targets.append((node_id, pid))
    # brokers first, as Kafka stops a cluster: their controlled shutdown (moving their
    # leaderships away) needs the controller, which then stops last
    brokers = [t for t in targets if _role(t[1]) == "broker"]
    for wave in (brokers, [t for t in targets if t not in brokers]):
        stop_processes(wave, grace_s, echo)
        for node_id, _ in wave:
            pid_path(data_dir, node_id).unlink(missing_ok=True)
    return len(targets)


@click.command("start")
@click.option("--config", "config_path", default=DEFAULT_CONFIG, show_default=True,
              type=click.Path(dir_okay=False),
              help="cluster config: the seed's services.json, or TOML")
@click.option("--data-dir", default=DEFAULT_DATA_DIR, show_default=True,
              type=click.Path(file_okay=False),
              help="node data in DIR/node-<id>, logs in DIR/node-<id>.log, pids in "
                   "DIR/node-<id>.pid")
@click.option("--node", "only", type=int, multiple=True, metavar="ID",
              help="start only this node (repeatable; default: every node of the config)")
@click.option("--timeout-ms", default=30_000, show_default=True,
              help="how long to wait for the nodes to answer")
def cluster_start(config_path: str, data_dir: str, only: tuple[int, ...],
                  timeout_ms: int) -> None:
    """Start the nodes of a cluster config in the background."""
    install_uvloop()
    try:
        nodes = asyncio.run(start_nodes(Path(config_path), Path(data_dir), only,
                                        timeout_ms / 1000, click.echo))
    except (ConfigError, RuntimeError, OSError) as exc:
        fail(str(exc))
    click.echo(f"{len(nodes)} node(s) up; bootstrap: "
               + ",".join(f"{n.host}:{n.port}" for n in nodes))
    click.echo(f"`dmq cluster stop --data-dir {data_dir}` stops them")


@click.command("stop")
@click.option("--data-dir", default=DEFAULT_DATA_DIR, show_default=True,
              type=click.Path(file_okay=False), help="as given to `dmq cluster start`")
@click.option("--node", "only", type=int, multiple=True, metavar="ID",
              help="stop only this node (repeatable; default: every node started there)")
@click.option("--grace-ms", default=10_000, show_default=True,
              help="SIGKILL a node still running this long after SIGTERM")
def cluster_stop(data_dir: str, only: tuple[int, ...], grace_ms: int) -> None:
    """Stop the nodes started by `dmq cluster start` (SIGTERM, then SIGKILL)."""
    if stop_nodes(Path(data_dir), only, grace_ms / 1000, click.echo) == 0:
        fail(f"no running node found in {data_dir}")
