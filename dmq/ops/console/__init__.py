"""The operator web console: static pages at `/` and `/ui/...`, and the JSON they read
under `/ui/api/...`, served by every node's HTTP server.

The pages are plain HTML, CSS and ES modules shipped as package data (no build step);
the chart library is vendored under `static/vendor/` with its licence. The JSON is
built with dmq's own clients, pointed at the cluster's controllers: `Admin` for the
metadata image, topics and configs, `GroupAdmin` for groups, offsets and lag; records
are read with FETCH from the partition leader and written with the `Producer`.

Figures no controller keeps (log sizes, bytes and records in and out) come from the
brokers' own `/metrics`, read by a `Sampler` every `SAMPLE_INTERVAL_S` seconds into a
bounded ring (`history.py`). The sampler starts with the first console request on a
node and stops after `IDLE_STOP_S` without one, so a node nobody looks at does no work.

Security follows the node: with SASL users the HTTP port asks for a login (see
`dmq.security.http_auth`); with the authorizer on, every handler checks the operation
its dmq-protocol equivalent needs (`dmq.security.http_acl`) and lists show only what the
user may Describe (a group's offsets only for such topics). `/ui/api/security` (and the
overview's "security") tells what this node runs with: TLS, SASL mechanisms, HTTP login
and the authorizer; the banner on every page says it, or that security is off.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from dmq.client.admin import Admin
from dmq.client.admin_groups import EARLIEST, LATEST, GroupAdmin
from dmq.log.batch import batch_crc_ok, decode_records, iter_headers
from dmq.ops.console.history import Sampler
from dmq.ops.rest import BadRequest, int_field, int_param, json_body
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import Connection
from dmq.protocol.errors import DmqError, ErrorCode, NetworkError
from dmq.security.acl import (
    ALTER,
    ALTER_CONFIGS,
    DELETE,
    DESCRIBE,
    GROUP,
    READ,
    TOPIC,
    WRITE,
)
from dmq.security.http_acl import HttpAcl
from dmq.services import Service

if TYPE_CHECKING:
    from dmq.config import ClusterConfig

log = logging.getLogger("dmq.ops.console")

TIMEOUT_MS = 8_000
MAX_NAME_CHARS = 249  # Kafka's topic name limit
MAX_PARTITIONS = 10_000  # per request from the console; the CLI can go further
MAX_RF = 32
MAX_BROWSE = 500  # records per page
MAX_FETCH_BYTES = 4 * 1024 * 1024
MAX_TEXT_BYTES = 256 * 1024  # key, value or all headers of a test record
MAX_HEADERS = 64
MAX_CONFIGS = 64
I32_MAX = 2**31 - 1
I64_MAX = 2**63 - 1
_LEGAL = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")

_STATUS = {
    ErrorCode.UNKNOWN_TOPIC_OR_PARTITION: 404, ErrorCode.TOPIC_ALREADY_EXISTS: 409,
    ErrorCode.INVALID_TOPIC: 400, ErrorCode.INVALID_PARTITIONS: 400,
    ErrorCode.INVALID_REPLICATION_FACTOR: 400, ErrorCode.INVALID_CONFIG: 400,
    ErrorCode.INVALID_REQUEST: 400, ErrorCode.MESSAGE_TOO_LARGE: 413,
    ErrorCode.OFFSET_OUT_OF_RANGE: 416, ErrorCode.GROUP_ID_NOT_FOUND: 404,
    ErrorCode.NON_EMPTY_GROUP: 409,
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _err(status: int, message: str, code: str = "INVALID_REQUEST") -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


def _answered(handler: Handler) -> Handler:
    """Every failure as a JSON error with a message for the page: refused input as
    4xx, a cluster error under its own name, an unreachable node as 503; anything else
    is logged and answered 500 with its one-line reason (never a traceback)."""
    @functools.wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadRequest as exc:
            return _err(exc.status, str(exc))
        except UnicodeError as exc:
            return _err(400, f"text is not valid Unicode ({exc})")
        except DmqError as exc:
            code = exc.code
            status = _STATUS.get(code, 503 if exc.retriable else 409)
            return _err(status, exc.message or code.name.lower().replace("_", " "), code.name)
        except (TimeoutError, NetworkError, OSError) as exc:
            return _err(503, f"the cluster did not answer: {exc or type(exc).__name__}",
                        "UNAVAILABLE")
        except web.HTTPException:
            raise
        except Exception as exc:  # noqa: BLE001 - the page gets a reason, the log the trace
            log.exception("console %s %s failed", request.method, request.path)
            return _err(500, f"internal error: {type(exc).__name__}: {exc}"[:300],
                        "INTERNAL")
    return wrapped


def topic_name(value: Any) -> str:
    """A topic name as the console accepts it: 1..249 of [a-zA-Z0-9._-], not . or .."""
    if not isinstance(value, str) or not value.strip():
        raise BadRequest("topic name is required")
    if len(value) > MAX_NAME_CHARS:
        raise BadRequest(f"topic name is {len(value)} characters; at most {MAX_NAME_CHARS}")
    bad = sorted(set(value) - _LEGAL)
    if bad:
        raise BadRequest(f"topic name may hold only letters, digits, '.', '_' and '-' "
                         f"(not {''.join(bad)[:20]!r})")
    if value in (".", ".."):
        raise BadRequest("topic name cannot be '.' or '..'")
    return value


def _count(value: Any, name: str, lo: int, hi: int) -> int:
    """An integer from a form: a JSON number or a numeric string, within [lo, hi]."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise BadRequest(f"{name} is required")
        try:
            value = int(text)
        except ValueError:
            raise BadRequest(f"{name} must be a whole number, got {text[:40]!r}") from None
    if value is None:
        raise BadRequest(f"{name} is required")
    return int_field(value, name, lo, hi)


def _text_bytes(value: Any, name: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be text")
    raw = value.encode()
    if len(raw) > MAX_TEXT_BYTES:
        raise BadRequest(f"{name} is {len(raw)} bytes; at most {MAX_TEXT_BYTES}")
    return raw


def _b64(b: bytes | None) -> str | None:
    return None if b is None else base64.b64encode(b).decode()


def security_of(config: ClusterConfig) -> dict[str, Any]:
    """What a node's configuration turns on (as `dmq.node.Node.start` reads it): TLS on
    every listener and link, SASL mechanisms (the Kafka listener; dmq's port too with
    `sasl.protocol.listener`), HTTP logins (SASL's users) and the authorizer."""
    tls = bool(str(config.get("ssl.certificate.location")).strip())
    mechs = [m.strip().upper() for m in str(config.get("sasl.enabled.mechanisms")).split(",")
             if m.strip()]
    authorizer = bool(config.get("authorizer.enabled"))
    return {"enabled": tls or bool(mechs) or authorizer, "tls": tls,
            "clientAuth": str(config.get("ssl.client.auth")) if tls else "none",
            "saslMechanisms": mechs,
            "saslOnProtocolPort": bool(mechs) and bool(config.get("sasl.protocol.listener")),
            "httpLogin": bool(mechs), "authorizer": authorizer}


class Console(Service):
    """The console's routes on one node: a service of every node, after the REST
    paths (its `/` and `/ui/{path}` routes come last)."""

    def __init__(self, config: ClusterConfig, node_id: int, acl: HttpAcl | None = None) -> None:
        self.config = config
        self.node_id = node_id
        self.acl = acl if acl is not None else HttpAcl(None)
        self.bootstrap = [f"{c.host}:{c.port}" for c in config.controllers]
        self.admin = Admin(self.bootstrap, client_id="dmq-console",
                           request_timeout_ms=TIMEOUT_MS)
        self.groups = GroupAdmin(self.admin, client_id="dmq-console")
        self.sampler = Sampler(self)
        self.security = security_of(config)
        self._producer: Any = None
        self._producer_lock = asyncio.Lock()
        self._static = resources.files("dmq.ops.console") / "static"

    def routes(self) -> list[tuple[str, str, Handler]]:
        api: list[tuple[str, str, Handler]] = [
            ("GET", "/ui/api/overview", self.overview),
            ("GET", "/ui/api/security", self.security_info),
            ("GET", "/ui/api/topics", self.topics),
            ("POST", "/ui/api/topics", self.create_topic),
            ("GET", "/ui/api/topics/{name}", self.topic),
            ("DELETE", "/ui/api/topics/{name}", self.delete_topic),
            ("POST", "/ui/api/topics/{name}/partitions", self.add_partitions),
            ("POST", "/ui/api/topics/{name}/configs", self.alter_configs),
            ("GET", "/ui/api/topics/{name}/records", self.browse),
            ("POST", "/ui/api/topics/{name}/records", self.produce),
            ("GET", "/ui/api/groups", self.list_groups),
            ("GET", "/ui/api/groups/{group}", self.group),
            ("POST", "/ui/api/groups/{group}/reset", self.reset_group),
            ("GET", "/ui/api/throughput", self.throughput),
        ]
        api += [("GET", "/", self.index), ("GET", "/ui", self.index),
                ("GET", "/ui/", self.index), ("GET", "/ui/{path:.*}", self.static)]
        return [(m, p, _answered(h)) for m, p, h in api]

    def http_routes(self) -> list[tuple[str, str, Handler]]:
        return self.routes()

    async def stop(self) -> None:
        await self.close()

    async def close(self) -> None:
        await self.sampler.stop()
        if self._producer is not None:
            await self._producer.close(timeout_ms=1000)
        await self.groups.close()
        await self.admin.close()

    # ---- static files -------------------------------------------------------------
    async def index(self, request: web.Request) -> web.StreamResponse:
        return self._file("index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        if path.startswith("api/"):
            return _err(404, f"no console endpoint {request.path}", "NOT_FOUND")
        parts = [p for p in path.split("/") if p]
        if "\0" in path:
            raise BadRequest("a path cannot hold a NUL character")
        if not parts or any(p in (".", "..") or p.startswith(".") for p in parts):
            return self._file("index.html")  # a page address: the single page app routes it
        return self._file(*parts)

    _TYPES = {"html": "text/html", "js": "text/javascript", "css": "text/css",
              "svg": "image/svg+xml", "png": "image/png", "txt": "text/plain",
              "json": "application/json", "md": "text/markdown"}

    def _file(self, *parts: str) -> web.Response:
        node = self._static.joinpath(*parts)
        if not node.is_file():
            if "." not in parts[-1]:
                node = self._static / "index.html"
            else:
                return web.Response(status=404, text="not found")
        ext = parts[-1].rsplit(".", 1)[-1] if "." in parts[-1] else "html"
        ctype = self._TYPES.get(ext, "application/octet-stream")
        return web.Response(body=node.read_bytes(), headers={
            "Content-Type": ctype + ("; charset=utf-8" if ctype.startswith("text") else ""),
            "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    # ---- cluster --------------------------------------------------------------------
    async def security_info(self, request: web.Request) -> web.Response:
        """This node's security settings (no cluster data: open to every logged-in user)."""
        return web.json_response(self.security)

    async def overview(self, request: web.Request) -> web.Response:
        self.acl.require_cluster(request, DESCRIBE)
        self.sampler.touch()
        d = await self.admin.describe_cluster(timeout_ms=TIMEOUT_MS)
        image = await self.admin.metadata(None)
        visible = self.acl.visible_topics(request, list(image.topics))
        led: dict[int, int] = {}
        hosted: dict[int, int] = {}
        under, offline = [], []
        for t in image.topics.values():
            for p in t.partitions.values():
                if p.leader >= 0:
                    led[p.leader] = led.get(p.leader, 0) + 1
                for r in p.replicas:
                    hosted[r] = hosted.get(r, 0) + 1
                if t.name not in visible:  # counted for the brokers, never named
                    continue
                row = {"topic": t.name, "partition": p.partition, "leader": p.leader,
                       "replicas": list(p.replicas), "isr": list(p.isr)}
                if p.leader < 0:
                    offline.append(row)
                elif len(p.isr) < len(p.replicas):
                    under.append(row)
        now_ms = int(time.time() * 1000)
        brokers = []
        for b in d.get("brokers", []):
            ago = b.get("last_heartbeat_ms_ago")
            brokers.append({
                "id": b["broker_id"], "host": b["host"], "port": b["port"],
                "rack": b.get("rack"), "state": b["state"],
                "lastHeartbeatMsAgo": ago if isinstance(ago, int) and ago >= 0 else None,
                "lastHeartbeat": now_ms - ago if isinstance(ago, int) and ago >= 0 else None,
                "leaders": led.get(b["broker_id"], 0),
                "partitions": hosted.get(b["broker_id"], 0)})
        controllers = [{"id": c["node_id"], "host": c.get("host"), "port": c.get("port"),
                        "role": c.get("role"), "term": c.get("term"),
                        "commitIndex": c.get("commit_index"),
                        "lastApplied": c.get("last_applied"),
                        "active": c["node_id"] == d.get("controller_id")}
                       for c in d.get("controllers", [])]
        return web.json_response({
            "nodeId": self.node_id, "security": self.security,
            "controllerId": d.get("controller_id"), "controllerTerm": d.get("controller_term"),
            "metadataVersion": d.get("metadata_version"), "controllers": controllers,
            "brokers": brokers, "topics": len(visible),
            "partitions": sum(len(t.partitions) for n, t in image.topics.items()
                              if n in visible),
            "underReplicated": under, "offline": offline, "timestamp": now_ms})

    # ---- topics -----------------------------------------------------------------------
    async def topics(self, request: web.Request) -> web.Response:
        self.sampler.touch()
        image = await self.admin.metadata(None)
        latest = self.sampler.latest_topics()
        sizes = self.sampler.topic_sizes()
        out = []
        visible = self.acl.visible_topics(request, list(image.topics))
        for name, t in sorted(image.topics.items()):
            if name not in visible:
                continue
            parts = list(t.partitions.values())
            rates = latest.get(name, {})
            out.append({
                "name": name, "partitions": len(parts),
                "replicationFactor": len(parts[0].replicas) if parts else 0,
                "underReplicated": sum(1 for p in parts if 0 <= p.leader and
                                       len(p.isr) < len(p.replicas)),
                "offline": sum(1 for p in parts if p.leader < 0),
                "sizeBytes": sizes.get(name), **rates,
                "may": self.acl.topic_rights(request, name)})
        return web.json_response({"topics": out, "sampledAt": self.sampler.last_sample_ms})

    async def topic(self, request: web.Request) -> web.Response:
        self.sampler.touch()
        name = topic_name(request.match_info["name"])
        self.acl.require(request, DESCRIBE, TOPIC, name)
        may = self.acl.topic_rights(request, name)
        info = (await self.admin.describe_topics([name]))[name]
        configs = (await self.admin.describe_configs([name]))[name] \
            if may["describeConfigs"] else {}
        tps = [(name, p) for p in sorted(info.partitions)]
        image = await self.admin.metadata([name])
        starts, ends = await asyncio.gather(self.groups.list_offsets(tps, EARLIEST, image),
                                            self.groups.list_offsets(tps, LATEST, image))
        sizes = self.sampler.partition_sizes()
        parts = []
        for p in sorted(info.partitions):
            pi = info.partitions[p]
            parts.append({"partition": p, "leader": pi.leader, "replicas": list(pi.replicas),
                          "isr": list(pi.isr), "logStartOffset": starts.get((name, p)),
                          "highWatermark": ends.get((name, p)),
                          "sizeBytes": sizes.get((name, p))})
        return web.json_response({"name": name, "id": str(info.topic_id), "partitions": parts,
                                  "configs": configs, "overrides": dict(info.configs),
                                  "rates": self.sampler.latest_topics().get(name, {}),
                                  "may": may})

    async def create_topic(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        name = topic_name(body.get("name"))
        self.acl.require_create_topic(request, name)
        parts = _count(body.get("partitions"), "partitions", 1, MAX_PARTITIONS)
        rf = _count(body.get("replicationFactor"), "replication factor", 1, MAX_RF)
        configs = self._configs(body.get("configs") or {}, allow_null=False)
        topic_id = await self.admin.create_topic(name, parts, rf,
                                                 {k: v for k, v in configs.items() if v})
        return web.json_response({"name": name, "id": str(topic_id), "partitions": parts,
                                  "replicationFactor": rf}, status=201)

    @staticmethod
    def _configs(raw: Any, *, allow_null: bool) -> dict[str, str | None]:
        if not isinstance(raw, dict):
            raise BadRequest("configs must be an object of name: value")
        if len(raw) > MAX_CONFIGS:
            raise BadRequest(f"{len(raw)} configs; at most {MAX_CONFIGS} at once")
        out: dict[str, str | None] = {}
        for k, v in raw.items():
            k = k.strip()
            if not k or len(k) > 200:
                raise BadRequest("a config name is empty or longer than 200 characters")
            if v is None and allow_null:
                out[k] = None
                continue
            if type(v) is int:
                v = str(v)
            if not isinstance(v, str) or not v.strip():
                raise BadRequest(f"config {k!r} needs a value")
            if len(v) > 1000:
                raise BadRequest(f"config {k!r} value is longer than 1000 characters")
            out[k] = v.strip()
        return out

    async def delete_topic(self, request: web.Request) -> web.Response:
        name = topic_name(request.match_info["name"])
        if request.query.get("confirm") != name:
            raise BadRequest("to delete a topic, confirm with its exact name")
        self.acl.require(request, DELETE, TOPIC, name)
        err = (await self.admin.delete_topics([name]))[name]
        if err is not None:
            raise err
        return web.json_response({"deleted": name})

    async def add_partitions(self, request: web.Request) -> web.Response:
        name = topic_name(request.match_info["name"])
        self.acl.require(request, ALTER, TOPIC, name)
        body = await json_body(request)
        total = _count(body.get("count"), "new total partition count", 1, MAX_PARTITIONS)
        err = (await self.admin.create_partitions({name: total}))[name]
        if err is not None:
            raise err
        return web.json_response({"name": name, "partitions": total})

    async def alter_configs(self, request: web.Request) -> web.Response:
        name = topic_name(request.match_info["name"])
        self.acl.require(request, ALTER_CONFIGS, TOPIC, name)
        body = await json_body(request)
        configs = self._configs(body.get("configs"), allow_null=True)
        if not configs:
            raise BadRequest("no config to change")
        err = (await self.admin.alter_configs({name: configs}))[name]
        if err is not None:
            raise err
        return web.json_response({"name": name, "configs": configs})

    # ---- records ----------------------------------------------------------------------
    async def _leader(self, topic: str, partition: int) -> tuple[str, int]:
        image = await self.admin.metadata([topic])
        t = image.topics.get(topic)
        if t is None:
            raise BadRequest(f"topic {topic!r} does not exist", 404)
        p = t.partitions.get(partition)
        if p is None:
            raise BadRequest(f"topic {topic!r} has partitions 0..{len(t.partitions) - 1}; "
                             f"there is no partition {partition}", 404)
        b = image.brokers.get(p.leader)
        if b is None:
            raise BadRequest(f"{topic}-{partition} has no leader right now", 503)
        return b.host, b.port

    async def browse(self, request: web.Request) -> web.Response:
        topic = topic_name(request.match_info["name"])
        self.acl.require(request, READ, TOPIC, topic)
        q = request.query
        partition = int_param(q.get("partition") or None, "partition", 0, I32_MAX, 0)
        count = int_param(q.get("count") or None, "count", 1, MAX_BROWSE, 50)
        mode = q.get("mode", "newest")
        host, port = await self._leader(topic, partition)
        tp = (topic, partition)
        image = await self.admin.metadata([topic])
        starts, ends = await asyncio.gather(self.groups.list_offsets([tp], EARLIEST, image),
                                            self.groups.list_offsets([tp], LATEST, image))
        lo, hi = starts.get(tp, 0), ends.get(tp, 0)
        if mode == "newest":
            start = max(lo, hi - count)
        elif mode == "offset":
            start = int_param(q.get("offset") or None, "offset", 0, I64_MAX, lo)
        elif mode == "timestamp":
            ts = int_param(q.get("timestamp") or None, "timestamp (ms)", 0, I64_MAX, -1)
            if ts < 0:
                raise BadRequest("timestamp (ms since the epoch) is required")
            at = await self.groups.list_offsets([tp], ts, image)
            start = at.get(tp, hi)
            if start < 0:
                start = hi
        else:
            raise BadRequest("mode must be newest, offset or timestamp")
        records: list[dict[str, Any]] = []
        note = None
        if start < lo:
            note = f"offset {start} is before the log start {lo}; showing from {lo}"
            start = lo
        if start < hi:
            records, note2 = await self._fetch(host, port, topic, partition, start, hi, count)
            note = note or note2
        return web.json_response({"topic": topic, "partition": partition,
                                  "logStartOffset": lo, "highWatermark": hi,
                                  "from": start, "records": records, "note": note})

    async def _fetch(self, host: str, port: int, topic: str, partition: int, start: int,
                     hw: int, count: int) -> tuple[list[dict[str, Any]], str | None]:
        conn = await Connection.open(host, port, client_id="dmq-console",
                                     connect_timeout_ms=3000)
        try:
            res = await conn.request(ApiKey.FETCH, {
                "max_wait_ms": 0, "min_bytes": 0, "max_bytes": MAX_FETCH_BYTES,
                "topics": [[topic, [[partition, start, -1, MAX_FETCH_BYTES]]]]},
                timeout_ms=TIMEOUT_MS)
        finally:
            await conn.close()
        (_, parts), = res["topics"]
        (_, error, _hw, _ls, _leo, buf), = parts
        if error:
            raise _dmq_error(error)
        out: list[dict[str, Any]] = []
        buf = buf or b""
        for h in iter_headers(buf):
            if h.base_offset + h.last_offset_delta < start:
                continue
            if h.base_offset >= hw or len(out) >= count:
                break
            if not batch_crc_ok(buf, h.position):
                return out, f"the batch at offset {h.base_offset} fails its CRC check"
            for r in decode_records(buf, h):
                if start <= r.offset < hw and len(out) < count:
                    out.append({"offset": r.offset, "timestamp": r.timestamp,
                                "key": _b64(r.key), "value": _b64(r.value),
                                "headers": [[k, _b64(v)] for k, v in r.headers]})
        return out, None

    async def produce(self, request: web.Request) -> web.Response:
        topic = topic_name(request.match_info["name"])
        self.acl.require(request, WRITE, TOPIC, topic)
        body = await json_body(request)
        partition = body.get("partition")
        if partition is not None and partition != "":
            partition = _count(partition, "partition", 0, I32_MAX)
        else:
            partition = None
        key = _text_bytes(body.get("key") or None, "key")
        value = _text_bytes(body.get("value"), "value")
        raw_headers = body.get("headers") or []
        if not isinstance(raw_headers, list) or len(raw_headers) > MAX_HEADERS:
            raise BadRequest(f"headers must be a list of [name, value], at most {MAX_HEADERS}")
        headers = []
        for h in raw_headers:
            if (not isinstance(h, list) or len(h) != 2 or not isinstance(h[0], str)
                    or not h[0].strip()):
                raise BadRequest("each header needs a name and a value")
            headers.append((h[0].strip(), _text_bytes(h[1], f"header {h[0]!r}") or b""))
        image = await self.admin.metadata([topic])
        t = image.topics.get(topic)
        if t is None:
            raise BadRequest(f"topic {topic!r} does not exist", 404)
        if partition is not None and partition not in t.partitions:
            raise BadRequest(f"topic {topic!r} has partitions 0..{len(t.partitions) - 1}; "
                             f"there is no partition {partition}", 404)
        producer = await self._get_producer()
        handle = await producer.send(topic, value, key, partition=partition,
                                     headers=headers or None)
        meta = await asyncio.wait_for(handle, TIMEOUT_MS / 1000)
        return web.json_response({"topic": topic, "partition": meta.partition,
                                  "offset": meta.offset}, status=201)

    async def _get_producer(self) -> Any:
        async with self._producer_lock:
            if self._producer is None:
                from dmq.client.producer import Producer

                bootstrap = self.bootstrap + [f"{b.host}:{b.port}"
                                              for b in self.config.brokers]
                p = Producer(bootstrap, client_id="dmq-console", linger_ms=0,
                             allow_auto_create_topics=False, max_block_ms=TIMEOUT_MS,
                             delivery_timeout_ms=TIMEOUT_MS, request_timeout_ms=TIMEOUT_MS)
                await p.start()
                self._producer = p
            return self._producer

    # ---- groups -----------------------------------------------------------------------
    async def list_groups(self, request: web.Request) -> web.Response:
        self.sampler.touch()
        groups = await self.groups.list_groups()
        lags = self.sampler.latest_group_topic_lag()
        visible = self.acl.visible_topics(request, sorted({t for per in lags.values()
                                                           for t in per}))

        def lag(gid: str) -> int | None:  # over the topics the user may Describe
            per = lags.get(gid)
            return None if per is None else sum(v for t, v in per.items() if t in visible)

        return web.json_response({"groups": [
            {"id": g.group_id, "state": g.state, "members": g.members,
             "lag": lag(g.group_id), "may": self.acl.group_rights(request, g.group_id)}
            for g in sorted(groups, key=lambda g: g.group_id)
            if self.acl.allowed(request, DESCRIBE, GROUP, g.group_id)]})

    async def group(self, request: web.Request) -> web.Response:
        self.sampler.touch()
        gid = request.match_info["group"]
        if not gid.strip():
            raise BadRequest("group id is required")
        self.acl.require(request, DESCRIBE, GROUP, gid)
        d = await self.groups.describe_group(gid)
        # offsets and assignments only of the topics the user may Describe (as
        # OffsetFetch and Metadata filter them); the sampled history is the lag over all
        # the group's topics, so it is shown only when none is hidden
        topics = {p.topic for p in d.partitions} | {t for m in d.members
                                                    for t, _ in m.assignment}
        visible = self.acl.visible_topics(request, sorted(topics))
        parts = [p for p in d.partitions if p.topic in visible]
        total = sum(p.lag or 0 for p in parts)
        hidden = len(topics - visible)
        history = [] if hidden else self.sampler.group_history(gid)
        return web.json_response({
            "id": d.group_id, "state": d.state, "epoch": d.epoch, "assignor": d.assignor,
            "members": [{"id": m.member_id, "instanceId": m.instance_id,
                         "clientId": m.client_id, "host": m.host,
                         "assignment": sorted([t, p] for t, p in m.assignment
                                              if t in visible)}
                        for m in d.members],
            "partitions": [{"topic": p.topic, "partition": p.partition,
                            "committed": p.committed, "logEndOffset": p.log_end_offset,
                            "lag": p.lag, "owner": p.owner} for p in parts],
            "totalLag": total, "hiddenTopics": hidden,
            "lagHistory": history + [[int(time.time() * 1000), total]],
            "may": self.acl.group_rights(request, gid)})

    async def reset_group(self, request: web.Request) -> web.Response:
        gid = request.match_info["group"]
        body = await json_body(request)
        topic = topic_name(body.get("topic"))
        # as OffsetCommit: Read on the group and on the topic
        self.acl.require(request, READ, GROUP, gid)
        self.acl.require(request, READ, TOPIC, topic)
        to = body.get("to")
        value = body.get("value")
        if to in ("earliest", "latest"):
            result = await self.groups.reset_offsets(gid, topic, to=to)
        elif to == "offset":
            result = await self.groups.reset_offsets(
                gid, topic, to=_count(value, "offset", 0, I64_MAX))
        elif to == "timestamp":
            result = await self.groups.reset_offsets_to_time(
                gid, topic, _count(value, "timestamp (ms)", 0, I64_MAX))
        else:
            raise BadRequest("reset to must be earliest, latest, offset or timestamp")
        return web.json_response({"group": gid, "topic": topic, "offsets": [
            {"partition": p, "offset": off} for (_, p), off in sorted(result.items())]})

    # ---- throughput -------------------------------------------------------------------
    async def throughput(self, request: web.Request) -> web.Response:
        self.acl.require_cluster(request, DESCRIBE)
        self.sampler.touch()
        series = self.sampler.series()
        visible = self.acl.visible_topics(request, list(series["topics"]))
        series["topics"] = {t: v for t, v in series["topics"].items() if t in visible}
        return web.json_response(series)


def _dmq_error(code: int) -> DmqError:
    from dmq.protocol.errors import error_for

    return error_for(code)


__all__ = ["Console"]
