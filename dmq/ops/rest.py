"""The seed system's REST paths, served by every node's HTTP listener.

The handlers speak to their own node over the native protocol (one loopback
connection), so the JSON is built from exactly what clients see: controller paths
from DESCRIBE_CLUSTER / METADATA / RAFT_STATUS / CREATE_TOPICS, record paths from
PRODUCE (acks=all, forwarded to the partition leader) and FETCH (up to the high
watermark). Field names and values follow the seed's README (camelCase; a broker's
`status` is ONLINE or OFFLINE, `controllerUrl` a URL, a Raft `state` LEADER, FOLLOWER or
CANDIDATE); dmq's own finer values are extra fields (`state`, `controllerAddress`,
`raftRole`). Replication status reads the local broker's partitions directly.

Every input is checked before it reaches the protocol: bodies are bounded in size
(`MAX_BODY_BYTES`) and nesting (`MAX_JSON_DEPTH`), integers are range-checked, keys and
values must be strings (or null), text must be valid Unicode. Each refusal is a 4xx
JSON error naming the field and the limit. Records that the log cannot decode are
reported with their offsets, never as a 500.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from dmq.log.batch import batch_crc_ok, build_batch, decode_records, iter_headers
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import Connection
from dmq.protocol.errors import DmqError, ErrorCode, NetworkError, NotControllerError
from dmq.security.acl import DESCRIBE, READ, TOPIC, WRITE
from dmq.security.http_acl import HttpAcl
from dmq.services import Service

if TYPE_CHECKING:
    from dmq.services import NodeSpec

log = logging.getLogger("dmq.ops.rest")

TIMEOUT_MS = 10_000
MAX_LIMIT = 10_000
LEADER_WAIT_S = 5.0
_LEADER_MOVING = (ErrorCode.NOT_LEADER_OR_FOLLOWER, ErrorCode.LEADER_NOT_AVAILABLE)
MAX_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 32
I32_MAX = 2**31 - 1
I64_MAX = 2**63 - 1
REPLICATION_FACTOR_MAX = 2**15 - 1  # Kafka's int16


class BadRequest(Exception):
    """A request the REST layer refuses before any protocol call: status and reason."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _guarded(handler: Handler) -> Handler:
    """The handler, with a `BadRequest` (and text that is not valid Unicode, wherever
    it turns up, e.g. in a path) answered as its JSON 4xx error."""
    @functools.wraps(handler)
    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadRequest as exc:
            return _error(exc.status, str(exc), "INVALID_REQUEST")
        except UnicodeEncodeError as exc:
            return _error(400, f"text is not valid Unicode ({exc.reason}: "
                               f"{exc.object[exc.start:exc.end]!r})", "INVALID_REQUEST")
    return guarded


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, bounded in size and nesting."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BadRequest(f"body exceeds {MAX_BODY_BYTES} bytes", 413) from None
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"body exceeds {MAX_BODY_BYTES} bytes", 413)
    try:
        body = json.loads(raw)
    except RecursionError:
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body must be JSON: {exc}") from None
    if _depth(body) > MAX_JSON_DEPTH:
        raise BadRequest(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, walked without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        elif not isinstance(v, list):
            continue
        deepest = max(deepest, d)
        if d > MAX_JSON_DEPTH:
            return d
        stack.extend((x, d + 1) for x in v)
    return deepest


_JSON_KIND = {dict: "an object", list: "an array", bool: "a boolean", int: "a number",
              float: "a number", type(None): "null"}


def int_field(value: Any, name: str, lo: int, hi: int) -> int:
    """An integer within [lo, hi] (JSON booleans are not integers)."""
    if type(value) is not int:
        raise BadRequest(f"{name} must be an integer, got {json.dumps(value)[:64]}")
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def int_param(text: str | None, name: str, lo: int, hi: int, default: int) -> int:
    """An integer query or path parameter within [lo, hi]."""
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {text[:64]!r}") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be in [{lo}, {hi}], got {text[:64]}")
    return value


def text_field(value: Any, name: str, *, nullable: bool) -> bytes | None:
    """A record key or value: a JSON string (stored as UTF-8) or, if allowed, null.
    Any other JSON type is refused rather than stored as its Python repr."""
    if value is None and nullable:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string{' or null' if nullable else ''}, got "
                         f"{_JSON_KIND.get(type(value), type(value).__name__)}")
    try:
        return value.encode()
    except UnicodeEncodeError as exc:
        raise BadRequest(f"{name} is not valid Unicode ({exc.reason} at character "
                         f"{exc.start})") from None


def _text(b: bytes | None) -> str | None:
    if b is None:
        return None
    try:
        return b.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(b).decode()


def _error(status: int, message: str, code: str | None = None, **headers: str) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if code:
        body["code"] = code
    return web.json_response(body, status=status, headers=headers or None)


def _no_leader(topic: str, partition: int) -> web.Response:
    return _error(404, f"{topic}-{partition} does not exist or has no leader",
                  "UNKNOWN_TOPIC_OR_PARTITION")


def _from_dmq_error(exc: DmqError) -> web.Response:
    status = {
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION: 404,
        ErrorCode.TOPIC_ALREADY_EXISTS: 409,
        ErrorCode.INVALID_TOPIC: 400, ErrorCode.INVALID_PARTITIONS: 400,
        ErrorCode.INVALID_REPLICATION_FACTOR: 400, ErrorCode.INVALID_CONFIG: 400,
        ErrorCode.INVALID_REQUEST: 400, ErrorCode.MESSAGE_TOO_LARGE: 413,
        ErrorCode.OFFSET_OUT_OF_RANGE: 416,
        # refusals of what the request asks for (a limit, a policy): the client's to fix
        ErrorCode.POLICY_VIOLATION: 400, ErrorCode.CORRUPT_MESSAGE: 400,
        ErrorCode.INVALID_RECORD: 400, ErrorCode.RECORD_LIST_TOO_LARGE: 413,
        ErrorCode.OFFSET_METADATA_TOO_LARGE: 400, ErrorCode.INVALID_GROUP_ID: 400,
        ErrorCode.CLUSTER_AUTHORIZATION_FAILED: 403,
    }.get(exc.code, 503 if exc.retriable else 500)
    return _error(status, exc.message, exc.code.name)


class Replicas(Protocol):
    """What replication status reads of the local broker's replica manager."""

    @property
    def partitions(self) -> Mapping[tuple[str, int], Any]: ...


class RestApi(Service):
    """The REST paths of one node. `replicas` is the local broker's (None on a node
    without the broker role): replication status reads it directly."""

    def __init__(self, spec: NodeSpec, replicas: Replicas | None = None,
                 acl: HttpAcl | None = None) -> None:
        self.spec = spec
        self.replicas = replicas
        self.acl = acl if acl is not None else HttpAcl(None)
        self._conns: dict[tuple[str, int], Connection] = {}

    def http_routes(self) -> list[tuple[str, str, Any]]:
        return self.routes()

    async def stop(self) -> None:
        await self.close()

    def routes(self) -> list[tuple[str, str, Any]]:
        roles = self.spec.roles
        out: list[tuple[str, str, Any]] = [("GET", "/api/v1/auth/me", self.acl.me)]
        if "controller" in roles:
            out += [
                ("GET", "/api/v1/metadata/controller", self.controller),
                ("GET", "/api/v1/metadata/cluster", self.cluster),
                ("GET", "/api/v1/metadata/brokers", self.brokers),
                ("GET", "/api/v1/metadata/brokers/{broker_id}", self.broker),
                ("GET", "/api/v1/metadata/topics", self.topics),
                ("GET", "/api/v1/metadata/topics/{name}", self.topic),
                ("POST", "/api/v1/metadata/topics", self.create_topic),
                ("GET", "/api/v1/raft/status", self.raft_status),
                # the seed's node-to-node endpoints: dmq does these over its protocol
                ("POST", "/api/v1/metadata/brokers", self.internal),
                ("POST", "/api/v1/metadata/heartbeat/{broker_id}", self.internal),
                ("POST", "/api/v1/raft/request-vote", self.internal),
                ("POST", "/api/v1/raft/append-entries", self.internal),
            ]
        if "broker" in roles:
            out += [
                ("GET", "/api/v1/storage/replication/status", self.replication_status),
                ("POST", "/api/v1/storage/topics/{topic}/partitions/{partition}", self.produce),
                ("GET", "/api/v1/storage/topics/{topic}/partitions/{partition}", self.fetch),
            ]
        return [(method, path, _guarded(handler)) for method, path, handler in out]

    async def close(self) -> None:
        for conn in self._conns.values():
            await conn.close()
        self._conns.clear()

    async def _call(self, key: ApiKey, body: Any, host: str | None = None,
                    port: int | None = None) -> Any:
        addr = (host or self.spec.address.host, port or self.spec.address.port)
        conn = self._conns.get(addr)
        if conn is None or conn.closed:
            conn = await Connection.open(*addr, client_id="dmq-rest")
            other = self._conns.get(addr)
            if other is not None and not other.closed:
                # a concurrent request opened one meanwhile: use it, close this one
                await conn.close()
                conn = other
            else:
                self._conns[addr] = conn
        return await conn.request(key, body, timeout_ms=TIMEOUT_MS)

    # ---- controller paths -------------------------------------------------------------
    async def _describe(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(ApiKey.DESCRIBE_CLUSTER, {})
        return result

    async def _describe_active(self) -> dict[str, Any]:
        """DESCRIBE_CLUSTER as the active controller answers it: only it knows when
        each broker last heartbeated. Falls back to this node's answer."""
        d = await self._describe()
        if d.get("active"):
            return d
        for c in d.get("controllers", []):
            if c.get("node_id") == d.get("controller_id"):
                try:
                    active: dict[str, Any] = await self._call(
                        ApiKey.DESCRIBE_CLUSTER, {}, c["host"], c["port"])
                except DmqError as exc:
                    log.info("node=%d active controller not reachable for REST: %s",
                             self.spec.node_id, exc)
                    return d
                return active
        return d

    @staticmethod
    def _broker_json(b: dict[str, Any], now_ms: int) -> dict[str, Any]:
        ago = b.get("last_heartbeat_ms_ago")
        return {"brokerId": b["broker_id"], "host": b["host"], "port": b["port"],
                "rack": b.get("rack"),
                # the seed's two values; dmq's own (ONLINE/FENCED/SHUTTING_DOWN) in `state`
                "status": "ONLINE" if b["state"] == "ONLINE" else "OFFLINE",
                "state": b["state"], "brokerEpoch": b.get("broker_epoch"),
                "lastHeartbeat": now_ms - ago if isinstance(ago, int) and ago >= 0 else None}

    @staticmethod
    def _controller_json(d: dict[str, Any]) -> dict[str, Any]:
        cid = d.get("controller_id", -1)
        url = address = None
        for c in d.get("controllers", []):
            if c.get("node_id") == cid:
                address = f"{c['host']}:{c['port']}"
                url = f"http://{address}"  # HTTP is served on the node's own port
        return {"controllerId": cid, "controllerUrl": url, "controllerAddress": address,
                "controllerTerm": d.get("controller_term"),
                "timestamp": int(time.time() * 1000)}

    @staticmethod
    def _topic_json(t: dict[str, Any]) -> dict[str, Any]:
        parts = sorted(t.get("partitions") or [], key=lambda p: p[0])
        return {
            "topicName": t["name"], "topicId": t.get("id"), "numPartitions": len(parts),
            "replicationFactor": len(parts[0][3]) if parts else 0,
            "partitions": [{"partitionId": p[0], "leader": p[1], "leaderEpoch": p[2],
                            "replicas": p[3], "isr": p[4]} for p in parts],
        }

    async def controller(self, request: web.Request) -> web.Response:
        self.acl.require_cluster(request, DESCRIBE)
        try:
            d = await self._describe()
        except DmqError as exc:
            return _from_dmq_error(exc)
        return web.json_response(self._controller_json(d))

    async def cluster(self, request: web.Request) -> web.Response:
        self.acl.require_cluster(request, DESCRIBE)
        try:
            d = await self._describe_active()
            md = await self._call(ApiKey.METADATA, {"topics": None})
        except DmqError as exc:
            return _from_dmq_error(exc)
        now_ms = int(time.time() * 1000)
        topics = self._visible(request, md)
        controllers = d.get("controllers", [])
        return web.json_response({
            "version": d.get("metadata_version"), "controllerLeaderId": d.get("controller_id"),
            "controllerTerm": d.get("controller_term"),
            "brokers": [self._broker_json(b, now_ms) for b in d.get("brokers", [])],
            "topics": topics, "totalTopics": len(topics),
            "totalPartitions": sum(t["numPartitions"] for t in topics),
            "controllerInfo": self._controller_json(d),
            "activeMetadataNodes": [
                {"nodeId": c["node_id"], "host": c["host"], "port": c["port"],
                 "url": f"http://{c['host']}:{c['port']}", "state": c.get("role")}
                for c in controllers if c.get("role") != "UNREACHABLE"],
            "controllers": controllers, "timestamp": now_ms,
            # partition reassignments in progress (dmq partitions reassign)
            "reassignments": d.get("reassignments", [])})

    async def brokers(self, request: web.Request) -> web.Response:
        self.acl.require_cluster(request, DESCRIBE)
        try:
            d = await self._describe_active()
        except DmqError as exc:
            return _from_dmq_error(exc)
        now_ms = int(time.time() * 1000)
        return web.json_response([self._broker_json(b, now_ms) for b in d.get("brokers", [])])

    async def broker(self, request: web.Request) -> web.Response:
        broker_id = int_param(request.match_info["broker_id"], "broker id", 0, I32_MAX, 0)
        self.acl.require_cluster(request, DESCRIBE)
        try:
            d = await self._describe_active()
        except DmqError as exc:
            return _from_dmq_error(exc)
        for b in d.get("brokers", []):
            if b["broker_id"] == broker_id:
                return web.json_response(self._broker_json(b, int(time.time() * 1000)))
        return _error(404, f"broker {broker_id} is not registered")

    async def topics(self, request: web.Request) -> web.Response:
        try:
            md = await self._call(ApiKey.METADATA, {"topics": None})
        except DmqError as exc:
            return _from_dmq_error(exc)
        return web.json_response(self._visible(request, md))

    def _visible(self, request: web.Request, md: dict[str, Any]) -> list[dict[str, Any]]:
        """The topics of a METADATA answer the principal may Describe, as JSON."""
        ok = self.acl.visible_topics(request, [t["name"] for t in md.get("topics", [])])
        return [self._topic_json(t) for t in md.get("topics", [])
                if not t.get("error") and t["name"] in ok]

    async def topic(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.acl.require(request, DESCRIBE, TOPIC, name)
        try:
            md = await self._call(ApiKey.METADATA, {"topics": [name],
                                                    "allow_auto_create": False})
        except DmqError as exc:
            return _from_dmq_error(exc)
        for t in md.get("topics", []):
            if t["name"] == name and not t.get("error"):
                return web.json_response(self._topic_json(t))
        return _error(404, f"topic {name!r} does not exist", "UNKNOWN_TOPIC_OR_PARTITION")

    async def _maybe_wait_visible(self, name: str, timeout_s: float = 2.0) -> None:
        """Read-your-writes on this node: the controller answered once the topic was
        committed, but this node (a follower controller, a broker) learns of it with its
        next metadata update; a GET that follows the POST here must not 404. Bounded:
        after `timeout_s` the 201 goes out anyway."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            try:
                md = await self._call(ApiKey.METADATA, {"topics": [name],
                                                        "allow_auto_create": False})
            except DmqError:
                return
            if any(t["name"] == name and not t.get("error") for t in md.get("topics", [])):
                return
            await asyncio.sleep(0.02)

    async def create_topic(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        name = body.get("topicName")
        if not isinstance(name, str):
            raise BadRequest("topicName (a string) is required")
        text_field(name, "topicName", nullable=False)
        self.acl.require_create_topic(request, name)
        parts = int_field(body.get("numPartitions", 1), "numPartitions", 1, I32_MAX)
        rf = int_field(body.get("replicationFactor", 1), "replicationFactor", 1,
                       REPLICATION_FACTOR_MAX)
        configs = body.get("configs") or {}
        if not isinstance(configs, dict):
            raise BadRequest("configs must be an object of strings")
        for k, v in configs.items():
            if not isinstance(v, str) and type(v) is not int:
                raise BadRequest(f"config {k!r} must be a string or an integer, got "
                                 f"{_JSON_KIND.get(type(v), type(v).__name__)}")
            text_field(k, "config name", nullable=False)
            text_field(str(v), f"config {k!r}", nullable=False)
        req = {"topics": [{"name": name, "partitions": parts, "replication_factor": rf,
                           "configs": {k: str(v) for k, v in configs.items()}}]}
        try:
            try:
                result = await self._call(ApiKey.CREATE_TOPICS, req)
            except NotControllerError as exc:
                if not exc.leader:
                    raise
                # the seed answers 503 on a follower; its own quick start posts to any
                # controller, so a follower hands the creation to the active one
                result = await self._call(ApiKey.CREATE_TOPICS, req, exc.leader[1],
                                          exc.leader[2])
        except NotControllerError as exc:
            headers = {"X-Controller-Leader": str(exc.leader[0])} if exc.leader else {}
            return _error(503, "no active controller to create the topic", exc.code.name,
                          **headers)
        except DmqError as exc:
            return _from_dmq_error(exc)
        (t,) = result["topics"]
        if t.get("error"):
            return _from_dmq_error(_cls(t["error"])(t.get("msg")))
        await self._maybe_wait_visible(name)
        return web.json_response({"topicName": name, "topicId": t.get("id"),
                                  "numPartitions": parts, "replicationFactor": rf}, status=201)

    async def raft_status(self, request: web.Request) -> web.Response:
        self.acl.require_cluster(request, DESCRIBE)
        try:
            s = await self._call(ApiKey.RAFT_STATUS, {})
        except DmqError as exc:
            return _from_dmq_error(exc)
        role = str(s.get("role", "")).upper()
        return web.json_response({
            "nodeId": s.get("node_id"), "currentTerm": s.get("term"),
            "state": "CANDIDATE" if role == "PRE_CANDIDATE" else role, "raftRole": role,
            "isLeader": role == "LEADER", "leaderId": s.get("leader_id"),
            "commitIndex": s.get("commit_index"), "lastApplied": s.get("last_applied"),
            "lastLogIndex": s.get("last_log_index"), "peers": s.get("peers")})

    async def internal(self, request: web.Request) -> web.Response:
        return _error(501, f"{request.method} {request.path} is one of the seed's node-to-node "
                           "endpoints; dmq brokers register, heartbeat and vote over the native "
                           "protocol (start a broker with `dmq server --role broker`)",
                      "UNSUPPORTED")

    # ---- broker paths -----------------------------------------------------------------
    async def replication_status(self, request: web.Request) -> web.Response:
        self.acl.require_cluster(request, DESCRIBE)
        replicas = self.replicas
        if replicas is None:
            return _error(503, "broker not started")
        out = []
        for part in list(replicas.partitions.values()):
            i = part.info()
            out.append({"topic": i["topic"], "partition": i["partition"],
                        "role": "LEADER" if part.is_leader else "FOLLOWER",
                        "leader": i["leader"], "leaderEpoch": i["leader_epoch"], "isr": i["isr"],
                        "highWatermark": i["high_watermark"], "logEndOffset": i["log_end_offset"],
                        "logStartOffset": i["log_start_offset"]})
        out.sort(key=lambda r: (r["topic"], r["partition"]))
        return web.json_response({"brokerId": self.spec.node_id, "partitions": out})

    async def _leader_of(self, topic: str, partition: int) -> tuple[str, int] | None:
        md = await self._call(ApiKey.METADATA, {"topics": [topic], "allow_auto_create": False})
        brokers = {b[0]: (b[1], b[2]) for b in md.get("brokers", [])}
        for t in md.get("topics", []):
            if t["name"] != topic or t.get("error"):
                continue
            for p in t.get("partitions", []):
                if p[0] == partition:
                    return brokers.get(p[1])
        return None

    @staticmethod
    def _tp(request: web.Request) -> tuple[str, int]:
        topic = request.match_info["topic"]
        text_field(topic, "topic", nullable=False)
        return topic, int_param(request.match_info["partition"], "partition", 0, I32_MAX, 0)

    async def produce(self, request: web.Request) -> web.Response:
        topic, partition = self._tp(request)
        self.acl.require(request, WRITE, TOPIC, topic)
        body = await json_body(request)
        if "value" not in body:
            raise BadRequest("body must be a JSON object with a value (and optional key, "
                             "timestamp)")
        key = text_field(body.get("key"), "key", nullable=True)
        value = text_field(body["value"], "value", nullable=True)
        ts = body.get("timestamp")
        ts = int(time.time() * 1000) if ts is None else int_field(ts, "timestamp (ms)", 0,
                                                                    I64_MAX)
        batch = build_batch([(key, value)], timestamp_ms=ts)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEADER_WAIT_S
        while True:
            try:
                leader = await self._leader_of(topic, partition)
                if leader is None:
                    return _no_leader(topic, partition)
                result = await self._call(ApiKey.PRODUCE, {
                    "acks": -1, "timeout_ms": TIMEOUT_MS,
                    "topics": [[topic, [[partition, -1, batch]]]]}, *leader)
            except DmqError as exc:
                return _from_dmq_error(exc)
            (_, parts), = result["topics"]
            (_, error, base_offset, _, msg), = parts
            # refused before any append while leadership moves (or is still being taken
            # up after a topic's creation): safe to send again, as a client would
            if error in _LEADER_MOVING and loop.time() < deadline:
                await asyncio.sleep(0.1)
                continue
            if error:
                return _from_dmq_error(_cls(error)(msg))
            break
        return web.json_response({"topic": topic, "partition": partition, "offset": base_offset,
                                  "timestamp": ts})

    async def fetch(self, request: web.Request) -> web.Response:
        topic, partition = self._tp(request)
        self.acl.require(request, READ, TOPIC, topic)
        offset = int_param(request.query.get("offset"), "offset", 0, I64_MAX, 0)
        limit = int_param(request.query.get("limit"), "limit", 1, MAX_LIMIT, 100)
        try:
            leader = await self._leader_of(topic, partition)
            if leader is None:
                return _no_leader(topic, partition)
            result = await self._call(ApiKey.FETCH, {
                "max_wait_ms": 0, "min_bytes": 0, "max_bytes": 4 * 1024 * 1024,
                "topics": [[topic, [[partition, offset, -1, 4 * 1024 * 1024]]]]}, *leader)
        except (DmqError, NetworkError) as exc:
            return _from_dmq_error(exc)
        (_, parts), = result["topics"]
        (_, error, hw, _log_start, _leo, records), = parts
        if error:
            return _from_dmq_error(_cls(error)())
        out, bad = records_json(records or b"", offset, hw, limit)
        answer: dict[str, Any] = {"topic": topic, "partition": partition,
                                  "highWatermark": hw, "records": out}
        if bad is None:
            return web.json_response(answer)
        if out:  # the records before the undecodable ones, and what stopped the read
            return web.json_response({**answer, "error": bad})
        return web.json_response({**answer, **bad}, status=422)


def records_json(buf: bytes | memoryview, offset: int, high_watermark: int, limit: int
                 ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The records of a FETCH answer from `offset` below the high watermark, at most
    `limit`, as JSON; and, when a batch cannot be decoded, what stopped the read: its
    offsets, the reason and `nextOffset` (where reading can resume)."""
    out: list[dict[str, Any]] = []
    for h in iter_headers(buf):
        last = h.base_offset + h.last_offset_delta
        if last < offset:
            continue
        if h.base_offset >= high_watermark or len(out) >= limit:
            break
        try:
            if not batch_crc_ok(buf, h.position):
                raise ValueError("CRC mismatch")
            decoded = []
            for r in decode_records(buf, h):
                if not (r.key is None or isinstance(r.key, bytes)) or not (
                        r.value is None or isinstance(r.value, bytes)):
                    raise ValueError(f"record {r.offset} has a key or value that is not bytes")
                decoded.append(r)
        except Exception as exc:  # noqa: BLE001 - any decode failure is this batch's problem
            return out, {"error": f"records at offsets {h.base_offset}..{last} cannot be "
                                  f"decoded: {exc}", "code": "CORRUPT_MESSAGE",
                         "offset": h.base_offset, "lastOffset": last, "nextOffset": last + 1}
        for r in decoded:
            if r.offset < offset or r.offset >= high_watermark:
                continue
            out.append({"offset": r.offset, "timestamp": r.timestamp, "key": _text(r.key),
                        "value": _text(r.value)})
            if len(out) >= limit:
                break
    return out, None


def _cls(code: int) -> type[DmqError]:
    from dmq.protocol.errors import error_for

    return type(error_for(code))
