"""`dmq dev`: a whole local cluster as child processes of one command.

Writes a config into the data folder, starts every node with `dmq server`, waits until
each answers ApiVersions, streams the nodes' log lines prefixed with their id (or sends
them to files), and stops every child cleanly (SIGTERM, then SIGKILL after a grace
period) when asked to stop. With one controller and one broker it runs a single
combined-mode node. On Linux the nodes also get SIGTERM from the kernel when the
`dmq dev` process dies without stopping them (SIGKILL, a crash): no node outlives it.

`dmq dev --secure` (`secure_setup`) makes a throwaway CA and node certificates in the
data folder and turns on TLS on every listener and link, SASL SCRAM on the Kafka
listener and dmq's protocol, HTTP logins and the authorizer, with one superuser
`admin` whose password is new at every start and written to
`<data-dir>/admin.properties` (mode 0600, Kafka client properties).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import random
import secrets
import shlex
import shutil
import signal
import socket
import sys
import sysconfig
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from dmq.aio import wait_for
from dmq.cli.common import install_uvloop
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import request_once
from dmq.protocol.errors import DmqError

TAIL_LINES = 12  # log lines shown when a node exits unexpectedly
KAFKA_PORT_OFFSET = 20  # `dmq dev`: the brokers' Kafka listeners from base port + 20
HTTP_PORT_OFFSET = 30  # `dmq dev --secure`: HTTP ports from base port + 30 (brokers + 40)
SECURE_ADMIN = "admin"
SECURE_MECHANISM = "SCRAM-SHA-256"
PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal a child gets when its parent dies


def die_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get SIGTERM when the process that starts it
    dies (Linux `prctl(PR_SET_PDEATHSIG)`; the setting survives exec), or None where
    that does not exist. A child whose parent died before the call exits at once."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec
        if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def log_tail(path: Path, start: int = 0) -> list[str]:
    """The last non-blank lines (at most TAIL_LINES) a node wrote to its log file since
    byte `start` (the file's size when that run of the node began)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()[-64 * 1024:]
    except OSError as exc:
        return [f"(cannot read {path}: {exc})"]
    lines = data.decode(errors="replace").splitlines()
    return [line.rstrip() for line in lines if line.strip()][-TAIL_LINES:]


@dataclass
class DevNode:
    node_id: int
    role: str
    port: int
    proc: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None
    log_path: Path | None = None  # --quiet: where its output goes
    log_start: int = 0  # the log file's size when this run of the node started
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=TAIL_LINES))

    def last_lines(self) -> list[str]:
        """The node's last output lines of this run (from its log file when quiet)."""
        if self.log_path is None:
            return list(self.recent)
        return log_tail(self.log_path, self.log_start)

    def exit_report(self) -> str:
        """Why it exited, as far as its output says: its return code and last lines."""
        assert self.proc is not None
        rc = self.proc.returncode
        how = f"was killed by signal {-rc}" if rc is not None and rc < 0 else f"exited with {rc}"
        lines = self.last_lines()
        where = f" ({self.log_path})" if self.log_path is not None else ""
        if not lines:
            return f"node {self.node_id} {how}; it wrote no output{where}"
        return (f"node {self.node_id} {how}; its last output lines{where}:\n"
                + "\n".join(f"  {line}" for line in lines))


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
    kafka_base_port: int | None = None  # brokers' Kafka listeners from here (None: off)
    settings: dict[str, object] = field(default_factory=dict)
    echo: Callable[[str], None] = print
    # the TLS and SASL of this process's own connections to the nodes (--secure): a
    # dmq.security.client_config.ClientSecurity
    security: Any = None
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

    def kafka_port(self, n: DevNode) -> int | None:
        """The Kafka listener port of a broker node: `kafka_base_port` + its index among
        the brokers (None: not a broker, or Kafka listeners off)."""
        if self.kafka_base_port is None or "broker" not in n.role:
            return None
        brokers = [m for m in self.nodes if "broker" in m.role]
        return self.kafka_base_port + brokers.index(n)

    @property
    def kafka_bootstrap(self) -> str | None:
        ports = [p for p in (self.kafka_port(n) for n in self.nodes) if p is not None]
        return ",".join(f"{self.host}:{p}" for p in ports) if ports else None

    def taken_ports(self) -> list[str]:
        """Every port of the layout (node, HTTP and Kafka ports) that cannot be bound on
        `host` now, each named with its node."""
        taken = []
        for n in self.nodes:
            for port, what in ((n.port, "port"), (self.http_port(n), "HTTP port"),
                               (self.kafka_port(n), "Kafka port")):
                if port is None:
                    continue
                with socket.socket() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        s.bind((self.host, port))
                    except OSError as exc:
                        taken.append(f"{what} {port} of node {n.node_id} ({n.role}): "
                                     f"{exc.strerror}")
        return taken

    def check_ports_free(self) -> None:
        """Refuse to start when ports of the layout are taken, naming each with its
        node, rather than let those nodes die with a bind error among the others."""
        taken = self.taken_ports()
        if taken:
            raise RuntimeError(
                f"ports not free on {self.host}: {'; '.join(taken)}. Stop what holds them "
                f"(another `dmq dev`?) or choose other ports with --base-port N (controllers "
                f"from N, brokers from N+10, their Kafka listeners from "
                f"N+{KAFKA_PORT_OFFSET}) or --broker-base-port M")

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
        kafka_port = self.kafka_port(n)
        if kafka_port is not None:
            args += ["--kafka-port", str(kafka_port)]
        # Each node in its own session: a terminal's Ctrl-C reaches only this
        # process, which stops the brokers before the controllers (`stop`); the nodes
        # still die with it (`die_with_parent`).
        if self.quiet:
            n.log_path = self.data_dir / f"node-{n.node_id}.log"
            with open(n.log_path, "ab") as logf:  # the child keeps its own copy
                n.log_start = logf.tell()
                n.proc = await asyncio.create_subprocess_exec(
                    *args, stdout=logf, stderr=asyncio.subprocess.STDOUT,
                    preexec_fn=die_with_parent(), start_new_session=True)
        else:
            n.proc = await asyncio.create_subprocess_exec(
                *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                preexec_fn=die_with_parent(), start_new_session=True)
            n.pump = asyncio.create_task(self._pump(n))

    async def _pump(self, n: DevNode) -> None:
        assert n.proc is not None and n.proc.stdout is not None
        prefix = f"[{n.node_id:>3}] "
        while True:
            line = await n.proc.stdout.readline()
            if not line:
                return
            text = line.decode(errors="replace").rstrip()
            n.recent.append(text)
            self.echo(prefix + text)

    async def wait_healthy(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for n in self.nodes:
            while True:
                if n.proc is not None and n.proc.returncode is not None:
                    await self._drain(n)
                    raise RuntimeError(n.exit_report())
                try:
                    await request_once(self.host, n.port, ApiKey.API_VERSIONS, {},
                                       timeout_ms=1000, ssl=self.security and self.security.ssl)
                    break
                except DmqError:
                    if loop.time() > deadline:
                        raise RuntimeError(f"node {n.node_id} not answering after "
                                           f"{timeout_s}s") from None
                    await asyncio.sleep(0.1)

    async def _drain(self, n: DevNode) -> None:
        """Let the pump print (and remember) what an exited node wrote last."""
        if n.pump is not None:
            try:
                await wait_for(asyncio.shield(n.pump), 2)
            except TimeoutError:
                pass

    async def wait_for_exit(self) -> DevNode:
        """Return the first running node that exits (to report a death while running:
        its `exit_report()` says why)."""
        waits = {asyncio.ensure_future(n.proc.wait()): n for n in self.nodes
                 if n.proc is not None and n.proc.returncode is None}
        if not waits:
            raise RuntimeError("no node is running")
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        node = waits[next(iter(done))]
        await self._drain(node)
        return node

    async def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM the brokers, then the controllers (as `dmq cluster stop` and Kafka do:
        a broker's controlled shutdown needs an active controller; stopped together, a
        broker waited out its controlled-shutdown timeout and Ctrl-C took ~11 s)."""
        brokers = [n for n in self.nodes if n.role == "broker"]
        for wave in (brokers, [n for n in self.nodes if n.role != "broker"]):
            for n in wave:
                if n.proc is not None and n.proc.returncode is None:
                    n.proc.send_signal(signal.SIGTERM)
            for n in wave:
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


def ephemeral_port_range() -> tuple[int, int]:
    """The range the kernel picks outgoing connections' local ports from (Linux's
    default where it cannot be read)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def probe_port_range() -> tuple[int, int]:
    """Where `free_base_port` and the test suite's port pickers look for free ports:
    from 10000 up to the kernel's ephemeral range (a port in that range that is free
    now can be taken as the local port of any outgoing connection before its server
    binds it), or `$DMQ_PROBE_PORTS` ("LOW-HIGH"), which a test run with several
    workers sets to a separate window per worker so two of them never pick the same
    port between probing it and binding it."""
    window = os.environ.get("DMQ_PROBE_PORTS")
    if window:
        low_s, _, high_s = window.partition("-")
        try:
            low, high = int(low_s), int(high_s)
        except ValueError:
            raise ValueError(f"DMQ_PROBE_PORTS={window!r}: want LOW-HIGH") from None
        if not 1024 <= low < high <= 65535:
            raise ValueError(f"DMQ_PROBE_PORTS={window!r}: want 1024 <= LOW < HIGH <= 65535")
        return low, high
    ephemeral_low, _ = ephemeral_port_range()
    return 10000, ephemeral_low if ephemeral_low > 11000 else 65535


def free_base_port(controllers: int = 3, brokers: int = 3, kafka: bool = False,
                   host: str = "127.0.0.1") -> int:
    """A base port (a multiple of 100 inside `probe_port_range()`) at which every port
    of a `DevCluster(controllers, brokers, base)` is free, and with `kafka` its brokers'
    Kafka listeners at base + KAFKA_PORT_OFFSET as well (`dmq dev --base-port base` has
    them): for tests and benchmarks that start dev clusters beside whatever else runs
    here."""
    low, high = probe_port_range()
    first = -(-low // 100) * 100
    last = high - 100
    if last < first:
        raise RuntimeError(f"no room for a port block of 100 in {low}-{high}")
    for _ in range(200):
        base = random.randrange(first, last + 1, 100)
        layout = DevCluster(Path(), controllers, brokers, base, host=host,
                            kafka_base_port=base + KAFKA_PORT_OFFSET if kafka else None)
        if not layout.taken_ports():
            return base
    raise RuntimeError("no free port range found")


def default_data_dir() -> Path:
    return Path(os.environ.get("DMQ_DEV_DIR", "dmq-dev-data"))


SMOKE_TOPIC = "hello"
SMOKE_MESSAGE = "hello from dmq"


async def ensure_topic(bootstrap: str, name: str, partitions: int, replication_factor: int,
                       timeout_s: float = 30.0, configs: dict[str, str] | None = None,
                       security: Any = None) -> bool:
    """Create a topic (with `configs`) on a cluster that may still be starting: waits
    for the active controller and retries while too few brokers have registered. True
    when created, False when it already existed; raises the last error after
    `timeout_s`. `security`: the admin client's TLS and SASL (a ClientSecurity)."""
    from dmq.client.admin import Admin
    from dmq.protocol.errors import ErrorCode

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    async with Admin(bootstrap, security=security) as admin:
        await admin.wait_for_controller(int(timeout_s * 1000))
        while True:
            try:
                await admin.create_topic(name, partitions, replication_factor, configs)
                return True
            except DmqError as exc:
                if exc.code is ErrorCode.TOPIC_ALREADY_EXISTS:
                    return False
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.2)  # brokers still registering


async def smoke_check(cluster: DevCluster, timeout_s: float = 30.0,
                      command_config: Path | None = None) -> list[str]:
    """Prove a message goes through: create a topic (waiting for brokers to register),
    produce one record with acks=all, consume it back, all with `cluster.security`.
    Returns the lines to print, ending with example console-tool commands (with
    `--command-config command_config` when given). Raises when any step fails."""
    from dmq.client.consumer import Consumer
    from dmq.client.producer import Producer
    from dmq.client.records import TopicPartition

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    rf = min(3, max(1, cluster.brokers))
    security = cluster.security
    if await ensure_topic(cluster.bootstrap, SMOKE_TOPIC, 1, rf, timeout_s,
                          security=security):
        created = f"created topic {SMOKE_TOPIC!r} (1 partition, replication factor {rf})"
    else:
        created = f"topic {SMOKE_TOPIC!r} already exists"
    remaining_ms = max(5000, int((deadline - loop.time()) * 1000))
    async with Producer(cluster.bootstrap, max_block_ms=remaining_ms,
                        request_timeout_ms=remaining_ms, linger_ms=0,
                        security=security) as producer:
        md = await producer.send_and_wait(SMOKE_TOPIC, SMOKE_MESSAGE.encode())
    async with Consumer(cluster.bootstrap, request_timeout_ms=remaining_ms,
                        security=security) as consumer:
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
    produce_cmd = console_command("dmq-produce")
    consume_cmd = console_command("dmq-consume")
    secured = "" if command_config is None else \
        f" --command-config {shlex.quote(str(command_config))}"
    lines = [] if command_config is None else [
        f"  {console_command('dmq')} topics list --bootstrap {any_node}{secured}"]
    return [
        created,
        f"produced {SMOKE_MESSAGE!r} to {md.topic}-{md.partition} at offset {md.offset}",
        f"consumed {r.value.decode()!r} from {r.topic}-{r.partition} at offset {r.offset}",
        "try it:",
        *lines,
        f"  echo 'my first message' | {produce_cmd} --bootstrap {any_node} "
        f"--topic {SMOKE_TOPIC}{secured}",
        f"  {consume_cmd} --bootstrap {any_node} --topic {SMOKE_TOPIC} --from-beginning"
        f"{secured}",
    ]


class SecureSetupError(Exception):
    """`dmq dev --secure` cannot prepare its certificates (one line: why)."""


@dataclass
class DevSecurity:
    """What `secure_setup` made: the nodes' settings, the admin's password and client
    properties file, and the client security of `dmq dev` itself (as that admin)."""

    settings: dict[str, object]
    password: str
    properties: Path
    cafile: Path
    client: Any  # dmq.security.client_config.ClientSecurity

    def commands(self, cluster: DevCluster) -> list[str]:
        """The kcat and curl lines for this cluster (`smoke_check` prints the rest)."""
        ca = shlex.quote(str(self.cafile))
        lines = []
        if cluster.kafka_bootstrap is not None:
            lines.append(f"  kcat -b {cluster.kafka_bootstrap} -X security.protocol=SASL_SSL "
                         f"-X sasl.mechanism={SECURE_MECHANISM} -X sasl.username={SECURE_ADMIN} "
                         f"-X sasl.password={shlex.quote(self.password)} "
                         f"-X ssl.ca.location={ca} -L")
        http = cluster.http_port(cluster.nodes[0])
        if http is not None:
            lines.append(f"  curl --cacert {ca} -u "
                         f"{shlex.quote(f'{SECURE_ADMIN}:{self.password}')} "
                         f"https://{cluster.host}:{http}/api/v1/metadata/brokers")
        return lines


def secure_setup(data_dir: Path, node_ids: list[int], host: str) -> DevSecurity:
    """A throwaway CA and a certificate per node under `<data_dir>/certs`, the user
    `admin` with a new random password (its salted credentials in
    `<data_dir>/users.json`, the bootstrap users file), `<data_dir>/admin.properties`
    (mode 0600) and the node settings: TLS on every listener and link (clients need no
    certificate; nodes present theirs), SASL SCRAM on the Kafka listener, dmq's protocol
    and HTTP, the authorizer on with `admin` as its superuser."""
    try:
        from dmq.security.certs import CA
    except ImportError as exc:
        raise SecureSetupError(f"--secure needs the {exc.name or 'cryptography'} package "
                               f"(the security extra): pip install 'dmq[security]'") from None
    from dmq.security.client_config import ClientSecurity
    from dmq.security.scram import CredentialStore, make_credential

    data_dir = data_dir.resolve()
    certs = data_dir / "certs"
    ca = CA(certs, name="dmq-dev-ca", days=30)
    hosts = tuple(dict.fromkeys((host, "127.0.0.1", "localhost")))
    for node_id in node_ids:
        ca.issue(f"node-{node_id}", hosts)
    password = secrets.token_urlsafe(18)
    users = data_dir / "users.json"
    CredentialStore({SECURE_ADMIN: {m: make_credential(password, m)
                                    for m in ("SCRAM-SHA-256", "SCRAM-SHA-512")}}).save(users)
    props = {"security.protocol": "SASL_SSL", "sasl.mechanism": SECURE_MECHANISM,
             "sasl.username": SECURE_ADMIN, "sasl.password": password,
             "ssl.ca.location": str(ca.cafile)}
    path = data_dir / "admin.properties"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an older file keeps its mode through O_CREAT
    with os.fdopen(fd, "w") as f:
        f.write("# dmq dev --secure: the superuser of this cluster (a new password at every "
                "start)\n" + "".join(f"{k}={v}\n" for k, v in props.items()))
    settings: dict[str, object] = {
        "ssl.certificate.location": str(certs / "node-{id}.pem"),
        "ssl.key.location": str(certs / "node-{id}.key"),
        "ssl.ca.location": str(ca.cafile),
        "ssl.client.auth": "requested",
        "sasl.enabled.mechanisms": "SCRAM-SHA-256,SCRAM-SHA-512",
        "sasl.credentials.file": str(users),
        "sasl.protocol.listener": True,
        "authorizer.enabled": True,
        "authorizer.super.users": f"User:{SECURE_ADMIN}",
    }
    return DevSecurity(settings, password, path, ca.cafile,
                       ClientSecurity.from_properties(props, str(path)))


def console_command(name: str) -> str:
    """How to run this installation's console script `name` from the shell that started
    this process: the bare name when that shell's PATH finds this very script, else
    its absolute path, shell-quoted (after `.venv/bin/dmq dev` the scripts are in
    `.venv/bin` but not on PATH, and the user's second terminal may be elsewhere)."""
    folders = []
    if sys.argv and sys.argv[0]:
        folders.append(Path(os.path.abspath(sys.argv[0])).parent)  # the `dmq` that runs
    folders.append(Path(os.path.abspath(sys.executable)).parent)
    folders.append(Path(sysconfig.get_path("scripts")))
    for folder in folders:
        script = folder / name
        if not (script.is_file() and os.access(script, os.X_OK)):
            continue
        found = shutil.which(name)
        if found is not None and os.path.samefile(found, script):
            return name
        return shlex.quote(str(script))
    return name  # not installed as a script here: the best guess is the bare name


@click.command()
@click.option("--controllers", default=3, show_default=True, help="number of controllers")
@click.option("--brokers", default=3, show_default=True, help="number of brokers")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="where node data and the generated config go (default ./dmq-dev-data)")
@click.option("--base-port", default=None, type=int,
              help="controllers listen from here (default 9091, the seed's layout); the "
                   "brokers' Kafka listeners from here + 20")
@click.option("--broker-base-port", default=None, type=int,
              help="brokers listen from here (default 8081 as in the seed; base+10 when "
                   "--base-port is given)")
@click.option("--quiet", is_flag=True, help="write node logs to files instead of the terminal")
@click.option("--check", is_flag=True,
              help="start, verify the cluster end to end, stop, and exit (0 when healthy)")
@click.option("--http-base-port", type=int, default=None,
              help="serve HTTP (/metrics, /healthz, REST) from this port, same offsets as "
                   "--base-port (default: off; with --secure, --base-port + 30)")
@click.option("--secure", is_flag=True,
              help="TLS everywhere (a throwaway CA in the data folder), SASL SCRAM logins "
                   "and ACLs, with a superuser admin whose new password goes to "
                   "<data-dir>/admin.properties (needs the security extra)")
def dev(controllers: int, brokers: int, data_dir: str | None, base_port: int | None,
        broker_base_port: int | None, quiet: bool, check: bool,
        http_base_port: int | None, secure: bool) -> None:
    """Start a whole local cluster as child processes; Ctrl-C stops it."""
    install_uvloop()
    if base_port is None:
        base_port = 9091
        if broker_base_port is None:
            broker_base_port = 8081
    if secure and http_base_port is None:
        http_base_port = base_port + HTTP_PORT_OFFSET  # a SASL protocol port serves no HTTP
    cluster = DevCluster(Path(data_dir) if data_dir else default_data_dir(), controllers,
                         brokers, base_port, quiet=quiet or check, echo=click.echo,
                         http_base_port=http_base_port, broker_base_port=broker_base_port,
                         kafka_base_port=base_port + KAFKA_PORT_OFFSET)
    security: DevSecurity | None = None
    if secure:
        try:
            cluster.check_ports_free()
            security = secure_setup(cluster.data_dir, [n.node_id for n in cluster.nodes],
                                    cluster.host)
        except (SecureSetupError, RuntimeError, OSError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        cluster.settings.update(security.settings)
        cluster.security = security.client

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await cluster.start()
            click.echo(f"dmq dev: {len(cluster.nodes)} node(s) up, data in {cluster.data_dir}")
            click.echo(f"bootstrap: {cluster.bootstrap}")
            if cluster.kafka_bootstrap is not None and security is None:
                click.echo(f"Kafka clients: {cluster.kafka_bootstrap}  (e.g. kcat -b "
                           f"{cluster.kafka_bootstrap} -L)")
            elif cluster.kafka_bootstrap is not None:
                click.echo(f"Kafka clients: {cluster.kafka_bootstrap}  (SASL_SSL)")
            if http_base_port is not None:
                scheme = "https" if security is not None else "http"
                click.echo("http: " + ", ".join(
                    f"node {n.node_id} {scheme}://{cluster.host}:{cluster.http_port(n)}"
                    for n in cluster.nodes))
            if security is not None:
                click.echo(f"secure: TLS on every listener and link (CA {security.cafile}), "
                           f"SASL {SECURE_MECHANISM} logins, ACLs enforced")
                click.echo(f"superuser: {SECURE_ADMIN}, password {security.password} (new at "
                           f"every start; client properties in {security.properties})")
            lines = await smoke_check(
                cluster, command_config=None if security is None else security.properties)
            for line in lines:
                click.echo(line)
            if security is not None:
                for line in security.commands(cluster):
                    click.echo(line)
            if check:
                return 0
            click.echo("Ctrl-C stops the cluster.")
            stopping = asyncio.ensure_future(stop.wait())
            try:
                while not stop.is_set():
                    died = asyncio.ensure_future(cluster.wait_for_exit())
                    await asyncio.wait([stopping, died], return_when=asyncio.FIRST_COMPLETED)
                    if not died.done():
                        died.cancel()
                    elif died.exception() is None:  # a node died: say why, keep the rest
                        click.echo(f"error: {died.result().exit_report()}", err=True)
                    else:  # no node left running
                        return 1
            finally:
                stopping.cancel()
            return 0
        except Exception as exc:
            click.echo(f"error: {exc}", err=True)
            return 1
        finally:
            click.echo("stopping the cluster...")
            await cluster.stop()
            click.echo("stopped.")

    sys.exit(asyncio.run(run()))
