"""Cluster configuration: topology and settings, from TOML or the seed's JSON.

Native format (TOML)::

    [[controllers]]
    id = 1
    host = "127.0.0.1"
    port = 9091

    [[brokers]]
    id = 101
    host = "127.0.0.1"
    port = 8081

    [settings]
    "broker.session.timeout.ms" = 6000      # any key of SETTINGS below

The seed's `services.json` is accepted as is: its lists ``metadata-services`` (the
controllers) and ``storage-services`` (the brokers) of ``{"id", "host", "port",
"url"}``, either wrapped in ``{"services": {...}}`` as the seed ships it or at the top
level. A node's ``url`` must be http(s) and name its port (its host may be another
name for the same machine); the seed's other sections
(``controller``, ``metadata``) configure its own implementation and are ignored. Every
setting has a documented default in `SETTINGS`; a CLI flag `--set key=value`
overrides the file.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """The configuration file or a flag is invalid; the message says where."""


@dataclass(frozen=True, slots=True)
class Setting:
    default: Any
    doc: str


# Every tunable, with its default. Kafka's names where Kafka has the setting.
SETTINGS: dict[str, Setting] = {
    "max.frame.bytes": Setting(100 * 1024 * 1024, "largest frame a node accepts"),
    "max.in.flight.requests.per.connection": Setting(
        1024, "unanswered requests after which a node stops reading a connection"),
    "socket.send.buffer.high.bytes": Setting(
        64 * 1024 * 1024, "buffered response bytes after which a node stops reading"),
    "http.on.node.port": Setting(
        True, "serve HTTP (REST, /metrics, /healthz) on the node's protocol port too"),
    "max.connections": Setting(4096, "open connections a node accepts; more are closed"),
    "max.connections.per.ip": Setting(1024, "open connections a node accepts from one address"),
    "connections.max.idle.ms": Setting(
        600_000, "a connection silent this long with no request in flight is closed (-1: never)"),
    "queued.max.request.bytes": Setting(
        256 * 1024 * 1024, "node-wide memory for requests being received; past it, "
        "connections wait unread"),
    "kafka.port": Setting(
        -1, "Kafka listener port of broker nodes (-1: off; 0: any free port)"),
    "ssl.certificate.location": Setting(
        "", "PEM certificate of this node: when set, every listener and inter-node link "
        "is TLS"),
    "ssl.key.location": Setting("", "PEM private key of the certificate (empty: in the "
                                "certificate file)"),
    "ssl.ca.location": Setting("", "PEM CA bundle peers and clients are verified against"),
    "ssl.client.auth": Setting(
        "none", "client certificates: none, requested or required (mTLS; a node must "
        "then prove its id)"),
    "ssl.endpoint.identification.algorithm": Setting(
        "https", "https: a node checks a peer's certificate names the host it dialled; "
        "empty: no check"),
    "ssl.node.cn.format": Setting(
        "node-{id}", "under mTLS, the certificate common name a node must have to "
        "identify as node {id}"),
    "ssl.reload.interval.ms": Setting(
        30_000, "how often a TLS node checks its certificate, key and CA files for changes "
        "and loads renewed ones for new connections (0: only on SIGHUP)"),
    "sasl.enabled.mechanisms": Setting(
        "", "SASL mechanisms the Kafka listener requires (SCRAM-SHA-256, SCRAM-SHA-512, "
        "PLAIN; empty: no authentication)"),
    "sasl.credentials.file": Setting(
        "", "JSON file of users' salted SCRAM credentials (python -m dmq.security.scram)"),
    "sasl.protocol.listener": Setting(
        False, "require SASL on dmq's own protocol port too (needs TLS with client "
        "certificates: nodes prove themselves by certificate)"),
    "sasl.failure.delay.max.ms": Setting(
        5000, "longest hold of the answer to a failed authentication (it doubles from 100 ms "
        "per failure from one address)"),
    "sasl.plain.allow.plaintext": Setting(
        False, "offer PLAIN on a listener without TLS (passwords in the clear)"),
    "http.token.ttl.ms": Setting(
        3_600_000, "lifetime of an HTTP bearer token (POST /api/v1/auth/login)"),
    "http.token.secret": Setting(
        "", "file of a secret mixed into HTTP token signing keys (same on every node; "
        "empty: keys come from the users' credentials alone)"),
    "authorizer.enabled": Setting(
        False, "enforce the ACLs kept in the metadata: a request no ACL allows is refused"),
    "authorizer.super.users": Setting(
        "", "principals allowed everything, ';'-separated (e.g. User:admin;User:ops)"),
    "shutdown.grace.ms": Setting(5000, "time given to in-flight requests on shutdown"),
    "raft.tick.ms": Setting(10, "length of one Raft tick"),
    "raft.election.timeout.ticks": Setting(
        50, "election timeout in ticks (randomized in [t, 2t))"),
    "raft.heartbeat.ticks": Setting(10, "leader heartbeat interval in ticks"),
    "raft.leader.loss.timeout.ticks": Setting(
        10, "when a follower's connection to the leader closes (its process died), it "
        "campaigns within N ticks of its turn (voters left take turns by id) instead of "
        "after the election timeout (0: off; at most the election timeout)"),
    "raft.snapshot.interval.entries": Setting(
        10_000, "applied entries between controller snapshots"),
    "broker.heartbeat.interval.ms": Setting(1000, "broker heartbeat interval"),
    "broker.session.timeout.ms": Setting(6000, "broker fenced after this long without heartbeat"),
    "auto.create.topics.enable": Setting(True, "create unknown topics on first metadata request"),
    "num.partitions": Setting(1, "partitions of an auto-created topic"),
    "default.replication.factor": Setting(1, "replication factor of an auto-created topic"),
    "min.insync.replicas": Setting(1, "default min.insync.replicas of a topic"),
    "unclean.leader.election.enable": Setting(False, "allow an out-of-sync leader"),
    "auto.leader.rebalance.enable": Setting(True, "move leadership back to preferred replicas"),
    "leader.imbalance.per.broker.percentage": Setting(
        10, "the balancer moves leadership back to a broker once more than this percentage "
        "of the partitions it is the preferred leader of are led elsewhere"),
    "leader.imbalance.check.interval.seconds": Setting(
        30, "how often the active controller's balancer checks leader imbalance"),
    "replica.lag.time.max.ms": Setting(10_000, "follower dropped from ISR after this lag"),
    "replica.fetch.wait.max.ms": Setting(500, "follower fetch long-poll time"),
    "replica.fetch.max.bytes": Setting(8 * 1024 * 1024, "follower fetch size per request"),
    "follower.replication.throttled.rate": Setting(
        -1, "bytes/s a broker's fetchers copy for replicas being added by a reassignment "
        "(-1: no limit); a dynamic value, the broker's own or cluster-wide "
        "(`dmq partitions reassign --throttle`), overrides it"),
    "leader.replication.throttled.rate": Setting(
        -1, "bytes/s a broker sends, as partition leader, to replicas being added by a "
        "reassignment (-1: no limit); a dynamic value, the broker's own or cluster-wide "
        "(`dmq partitions reassign --throttle`), overrides it"),
    "message.max.bytes": Setting(8 * 1024 * 1024, "largest record batch accepted"),
    "log.segment.bytes": Setting(1024 * 1024 * 1024, "segment roll size"),
    "log.segment.ms": Setting(7 * 24 * 3600 * 1000, "segment roll age"),
    "log.index.interval.bytes": Setting(4096, "bytes between offset index entries"),
    "log.retention.ms": Setting(7 * 24 * 3600 * 1000, "delete segments older than this (-1: keep)"),
    "log.retention.bytes": Setting(-1, "delete old segments past this size (-1: no limit)"),
    "log.flush.messages": Setting(-1, "fsync after this many messages (-1: leave to the OS)"),
    "log.flush.ms": Setting(-1, "fsync at least this often (-1: leave to the OS)"),
    "log.cleanup.policy": Setting("delete", "delete, compact, or compact,delete"),
    "log.retention.check.interval.ms": Setting(
        5000, "how often a broker applies retention, time-based rolls and flush.ms"),
    "num.recovery.threads.per.data.dir": Setting(
        1, "threads a starting broker opens (and recovers) its partition logs with"),
    "log.cleaner.enable": Setting(True, "run the log cleaner (compaction) on brokers"),
    "log.cleaner.backoff.ms": Setting(15_000, "pause between passes of the log cleaner"),
    "log.cleaner.delete.retention.ms": Setting(
        24 * 3600 * 1000, "tombstones of compacted topics kept this long"),
    "log.cleaner.min.compaction.lag.ms": Setting(
        0, "records younger than this are not compacted"),
    "log.message.timestamp.type": Setting(
        "CreateTime", "CreateTime (the producer's) or LogAppendTime (the broker's)"),
    "group.session.timeout.ms": Setting(10_000, "consumer fenced after this long silent"),
    "group.heartbeat.interval.ms": Setting(1000, "consumer heartbeat interval"),
    "offsets.retention.ms": Setting(7 * 24 * 3600 * 1000, "offsets of an empty group kept"),
    # resource limits: what one request, one topic or one broker may take
    "max.partitions.per.topic": Setting(10_000, "partitions one topic may have"),
    "max.topics.per.request": Setting(1000, "topics one CreateTopics request may create"),
    "max.partitions.per.request": Setting(
        10_000, "partitions one CreateTopics/CreatePartitions request may add"),
    "max.partitions.per.cluster": Setting(100_000, "partitions of all topics together"),
    "max.partition.replicas.per.broker": Setting(
        4000, "partition replicas one broker may host (each holds open file descriptors)"),
    "offset.metadata.max.bytes": Setting(
        4096, "largest metadata string of a committed offset (UTF-8 bytes)"),
}


@dataclass(frozen=True, slots=True)
class NodeAddress:
    node_id: int
    host: str
    port: int
    rack: str | None = None
    http_port: int | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ClusterConfig:
    controllers: tuple[NodeAddress, ...]
    brokers: tuple[NodeAddress, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = "<memory>"

    def get(self, key: str) -> Any:
        if key in self.settings:
            return self.settings[key]
        return SETTINGS[key].default

    def node(self, node_id: int) -> NodeAddress | None:
        for n in (*self.controllers, *self.brokers):
            if n.node_id == node_id:
                return n
        return None

    def is_controller(self, node_id: int) -> bool:
        return any(n.node_id == node_id for n in self.controllers)

    def is_broker(self, node_id: int) -> bool:
        return any(n.node_id == node_id for n in self.brokers)

    def with_settings(self, overrides: dict[str, Any]) -> ClusterConfig:
        merged = dict(self.settings)
        merged.update(_validate_settings(overrides, "override"))
        return ClusterConfig(self.controllers, self.brokers, merged, self.source)


def _coerce(key: str, value: Any, where: str) -> Any:
    default = SETTINGS[key].default
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {key} must be an integer, got {value!r}") from None
    return str(value)


def _validate_settings(raw: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in _flatten(raw).items():
        if key not in SETTINGS:
            raise ConfigError(f"{where}: unknown setting {key!r}")
        out[key] = _coerce(key, value, where)
    return out


def _flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in raw.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _nodes(raw: Any, where: str) -> tuple[NodeAddress, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: expected a list of nodes")
    nodes = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ConfigError(f"{where}[{i}]: expected a table with id, host, port")
        try:
            node_id = int(item.get("id", item.get("node_id", item.get("nodeId"))))  # type: ignore[arg-type]
            host = str(item.get("host", "127.0.0.1"))
            port = int(item["port"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{where}[{i}]: needs integer id and port, got {item!r}") from None
        if not 0 < port < 65536:
            raise ConfigError(f"{where}[{i}]: port {port} out of range")
        url = item.get("url")
        if url is not None:
            _check_url(url, host, port, f"{where}[{i}]")
        http = item.get("http_port", item.get("httpPort"))
        nodes.append(NodeAddress(node_id, host, port, item.get("rack"),
                                 int(http) if http is not None else None))
    return tuple(nodes)


def _check_url(url: Any, host: str, port: int, where: str) -> None:
    """The seed gives each node a `url` beside host and port; dmq serves HTTP on the
    node's port, so the url must name that same port (a different one would say the
    node is somewhere it is not)."""
    from urllib.parse import urlsplit

    if not isinstance(url, str):
        raise ConfigError(f"{where}: url must be a string, got {url!r}")
    try:
        parts = urlsplit(url)
        url_port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{where}: bad url {url!r}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{where}: url {url!r} must be http://HOST:PORT")
    if url_port is not None and url_port != port:
        raise ConfigError(f"{where}: url {url!r} names port {url_port} but the node's port "
                          f"is {port}")


def parse_config(data: dict[str, Any], source: str = "<memory>") -> ClusterConfig:
    services = data.get("services")
    if isinstance(services, dict) and ("metadata-services" in services
                                       or "storage-services" in services):
        data = {**data, **services}  # the seed's file as shipped: {"services": {...}, ...}
    if "metadata-services" in data or "storage-services" in data:
        controllers = _nodes(data.get("metadata-services"), f"{source}: metadata-services")
        brokers = _nodes(data.get("storage-services"), f"{source}: storage-services")
    else:
        controllers = _nodes(data.get("controllers"), f"{source}: controllers")
        brokers = _nodes(data.get("brokers"), f"{source}: brokers")
    if not controllers:
        raise ConfigError(f"{source}: at least one controller is required")
    ids = [n.node_id for n in (*controllers, *brokers)]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"{source}: node ids listed twice: {dupes}")
    addrs = [n.address for n in (*controllers, *brokers)]
    dup_addrs = sorted({a for a in addrs if addrs.count(a) > 1})
    if dup_addrs:
        raise ConfigError(f"{source}: addresses listed twice: {dup_addrs}")
    settings = _validate_settings(data.get("settings") or {}, f"{source}: settings")
    return ClusterConfig(controllers, brokers, settings, source)


def load_config(path: str | Path) -> ClusterConfig:
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc.strerror}") from None
    try:
        if p.suffix == ".json":
            data = json.loads(text)
        else:
            data = tomllib.loads(text.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'TOML'}: "
                          f"{exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a table/object")
    return parse_config(data, str(p))


def parse_override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"expected key=value, got {text!r}")
    return key.strip(), value.strip()
