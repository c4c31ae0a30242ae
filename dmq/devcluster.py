"""`dmq dev`: a whole local cluster as child processes of one command.

Writes a config into the data folder, starts every node with `dmq server`, waits until
each answers ApiVersions, streams the nodes' log lines prefixed with their id (or sends
them to files), and stops every child cleanly (SIGTERM, then SIGKILL after a grace
period) when asked to stop. With one controller and one broker it runs a single
combined-mode node.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dmq.aio import wait_for
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import request_once
from dmq.protocol.errors import DmqError


@dataclass
class DevNode:
    node_id: int
    role: str
    port: int
    proc: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None


@dataclass
class DevCluster:
    data_dir: Path
    controllers: int = 3
    brokers: int = 3
    base_port: int = 9091  # controllers listen from here
    host: str = "127.0.0.1"
    quiet: bool = False
    http_base_port: int | None = None  # a separate HTTP port per node, same offsets as ports
    broker_base_port: int | None = None  # brokers listen from here (None: base_port + 10)
    settings: dict[str, object] = field(default_factory=dict)
    echo: Callable[[str], None] = print
    nodes: list[DevNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.controllers < 1 or self.brokers < 0:
            raise ValueError("need at least one controller")
        if self.controllers == 1 and self.brokers == 1:
            self.nodes = [DevNode(1, "controller,broker", self.base_port)]
        else:
            self.nodes = [DevNode(i + 1, "controller", self.base_port + i)
                          for i in range(self.controllers)]
            brokers_from = (self.broker_base_port if self.broker_base_port is not None
                            else self.base_port + 10)
            self.nodes += [DevNode(101 + i, "broker", brokers_from + i)
                           for i in range(self.brokers)]

    @property
    def config_path(self) -> Path:
        return self.data_dir / "cluster.toml"

    @property
    def bootstrap(self) -> str:
        return ",".join(f"{self.host}:{n.port}" for n in self.nodes)

    def write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = []
        for n in self.nodes:
            section = "controllers" if "controller" in n.role else "brokers"
            lines += [f"[[{section}]]", f"id = {n.node_id}", f'host = "{self.host}"',
                      f"port = {n.port}"]
            http_port = self.http_port(n)
            if http_port is not None:
                lines.append(f"http_port = {http_port}")
            lines.append("")
        rf = min(3, max(1, self.brokers))
        settings: dict[str, object] = {"default.replication.factor": rf,
                                       "min.insync.replicas": min(2, rf), "num.partitions": 3}
        settings.update(self.settings)
        lines.append("[settings]")
        for k, v in settings.items():
            val = str(v).lower() if isinstance(v, bool) else (f'"{v}"' if isinstance(v, str) else v)
            lines.append(f'"{k}" = {val}')
        self.config_path.write_text("\n".join(lines) + "\n")

    def http_port(self, n: DevNode) -> int | None:
        """The node's separate HTTP port: controllers from `http_base_port`, brokers from
        `http_base_port + 10` (HTTP is served on every node's own port as well)."""
        if self.http_base_port is None:
            return None
        index = self.nodes.index(n)
        controllers = sum(1 for m in self.nodes if "controller" in m.role)
        return self.http_base_port + (index if index < controllers else 10 + index - controllers)

    def check_ports_free(self) -> None:
        """Refuse to start when ports of the layout are taken, naming each with its
        node, rather than let those nodes die with a bind error among the others."""
        taken = []
        for n in self.nodes:
            for port, what in ((n.port, "port"), (self.http_port(n), "HTTP port")):
                if port is None:
                    continue
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        s.bind((self.host, port))
                    except OSError as exc:
                        taken.append(f"{what} {port} of node {n.node_id} ({n.role}): "
                                     f"{exc.strerror}")
        if taken:
            raise RuntimeError(
                f"ports not free on {self.host}: {'; '.join(taken)}. Stop what holds them "
                f"(another `dmq dev`?) or choose other ports with --base-port N (controllers "
                f"from N, brokers from N+10) or --broker-base-port M")

    async def start(self, timeout_s: float = 30.0) -> None:
        self.check_ports_free()
        self.write_config()
        for n in self.nodes:
            await self._spawn(n)
        await self.wait_healthy(timeout_s)

    async def _spawn(self, n: DevNode) -> None:
        node_dir = self.data_dir / f"node-{n.node_id}"
        args = [sys.executable, "-m", "dmq", "server", "--role", n.role, "--node-id",
                str(n.node_id), "--config", str(self.config_path), "--data-dir", str(node_dir)]
        if self.quiet:
            logf = open(self.data_dir / f"node-{n.node_id}.log", "ab")
            n.proc = await asyncio.create_subprocess_exec(*args, stdout=logf,
                                                          stderr=asyncio.subprocess.STDOUT)
            logf.close()
        else:
            n.proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                          stderr=asyncio.subprocess.STDOUT)
            n.pump = asyncio.create_task(self._pump(n))

    async def _pump(self, n: DevNode) -> None:
        assert n.proc is not None and n.proc.stdout is not None
        prefix = f"[{n.node_id:>3}] "
        while True:
            line = await n.proc.stdout.readline()
            if not line:
                return
            self.echo(prefix + line.decode(errors="replace").rstrip())

    async def wait_healthy(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for n in self.nodes:
            while True:
                if n.proc is not None and n.proc.returncode is not None:
                    raise RuntimeError(f"node {n.node_id} exited with {n.proc.returncode}")
                try:
                    await request_once(self.host, n.port, ApiKey.API_VERSIONS, {},
                                       timeout_ms=1000)
                    break
                except DmqError:
                    if loop.time() > deadline:
                        raise RuntimeError(f"node {n.node_id} not answering after "
                                           f"{timeout_s}s") from None
                    await asyncio.sleep(0.1)

    async def stop(self, grace_s: float = 10.0) -> None:
        for n in self.nodes:
            if n.proc is not None and n.proc.returncode is None:
                n.proc.send_signal(signal.SIGTERM)
        for n in self.nodes:
            if n.proc is None:
                continue
            try:
                await wait_for(n.proc.wait(), grace_s)
            except TimeoutError:
                n.proc.kill()
                await n.proc.wait()
            if n.pump is not None:
                try:
                    await wait_for(n.pump, 2)
                except TimeoutError:
                    n.pump.cancel()

    def pids(self) -> list[int]:
        return [n.proc.pid for n in self.nodes if n.proc is not None]


def default_data_dir() -> Path:
    return Path(os.environ.get("DMQ_DEV_DIR", "dmq-dev-data"))


SMOKE_TOPIC = "hello"
SMOKE_MESSAGE = "hello from dmq"


async def ensure_topic(bootstrap: str, name: str, partitions: int, replication_factor: int,
                       timeout_s: float = 30.0) -> bool:
    """Create a topic on a cluster that may still be starting: waits for the active
    controller and retries while too few brokers have registered. True when created,
    False when it already existed; raises the last error after `timeout_s`."""
    from dmq.client.admin import Admin
    from dmq.protocol.errors import ErrorCode

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with Admin(bootstrap) as admin:
        await admin.wait_for_controller(int(timeout_s * 1000))
        while True:
            try:
                await admin.create_topic(name, partitions, replication_factor)
                return True
            except DmqError as exc:
                if exc.code is ErrorCode.TOPIC_ALREADY_EXISTS:
                    return False
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.2)  # brokers still registering


async def smoke_check(cluster: DevCluster, timeout_s: float = 30.0) -> list[str]:
    """Prove a message goes through: create a topic (waiting for brokers to register),
    produce one record with acks=all, consume it back. Returns the lines to print,
    ending with example console-tool commands. Raises when any step fails."""
    from dmq.client.consumer import Consumer
    from dmq.client.producer import Producer
    from dmq.client.records import TopicPartition

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    rf = min(3, max(1, cluster.brokers))
    if await ensure_topic(cluster.bootstrap, SMOKE_TOPIC, 1, rf, timeout_s):
        created = f"created topic {SMOKE_TOPIC!r} (1 partition, replication factor {rf})"
    else:
        created = f"topic {SMOKE_TOPIC!r} already exists"
    remaining_ms = max(5000, int((deadline - loop.time()) * 1000))
    async with Producer(cluster.bootstrap, max_block_ms=remaining_ms,
                        request_timeout_ms=remaining_ms, linger_ms=0) as producer:
        md = await producer.send_and_wait(SMOKE_TOPIC, SMOKE_MESSAGE.encode())
    async with Consumer(cluster.bootstrap, request_timeout_ms=remaining_ms) as consumer:
        tp = TopicPartition(SMOKE_TOPIC, md.partition)
        consumer.assign([tp])
        consumer.seek(tp, md.offset)
        got = await consumer.getmany(timeout_ms=remaining_ms, max_records=1)
    records = got.get(tp, [])
    if not records or records[0].value != SMOKE_MESSAGE.encode():
        raise RuntimeError(f"smoke check: produced {SMOKE_MESSAGE!r} at offset {md.offset} "
                           f"but read back {records[:1]!r}")
    r = records[0]
    any_node = f"{cluster.host}:{cluster.nodes[0].port}"  # any one node bootstraps a client
    return [
        created,
        f"produced {SMOKE_MESSAGE!r} to {md.topic}-{md.partition} at offset {md.offset}",
        f"consumed {r.value.decode()!r} from {r.topic}-{r.partition} at offset {r.offset}",
        "try it:",
        f"  echo 'my first message' | dmq-produce --bootstrap {any_node} --topic {SMOKE_TOPIC}",
        f"  dmq-consume --bootstrap {any_node} --topic {SMOKE_TOPIC} --from-beginning",
    ]
