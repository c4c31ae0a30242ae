"""The seed system's REST paths, served by every node's HTTP listener.

The handlers speak to their own node over the native protocol (one loopback
connection), so the JSON is built from exactly what clients see: controller paths
from DESCRIBE_CLUSTER / METADATA / RAFT_STATUS / CREATE_TOPICS, record paths from
PRODUCE (acks=all, forwarded to the partition leader) and FETCH (up to the high
watermark). Field names follow the seed (camelCase). Replication status reads the
local broker's partitions directly.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from dmq.log.batch import build_batch, iter_records
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import Connection
from dmq.protocol.errors import DmqError, ErrorCode, NetworkError, NotControllerError

if TYPE_CHECKING:
    from dmq.node import Node

log = logging.getLogger("dmq.ops.rest")

TIMEOUT_MS = 10_000
MAX_LIMIT = 10_000


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


def _from_dmq_error(exc: DmqError) -> web.Response:
    status = {
        ErrorCode.UNKNOWN_TOPIC_OR_PARTITION: 404,
        ErrorCode.TOPIC_ALREADY_EXISTS: 409,
        ErrorCode.INVALID_TOPIC: 400, ErrorCode.INVALID_PARTITIONS: 400,
        ErrorCode.INVALID_REPLICATION_FACTOR: 400, ErrorCode.INVALID_CONFIG: 400,
        ErrorCode.INVALID_REQUEST: 400, ErrorCode.MESSAGE_TOO_LARGE: 413,
        ErrorCode.OFFSET_OUT_OF_RANGE: 416,
    }.get(exc.code, 503 if exc.retriable else 500)
    return _error(status, exc.message, exc.code.name)


class RestApi:
    def __init__(self, node: Node) -> None:
        self.node = node
        self._conns: dict[tuple[str, int], Connection] = {}

    def routes(self) -> list[tuple[str, str, Any]]:
        roles = self.node.spec.roles
        out: list[tuple[str, str, Any]] = []
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
            ]
        if "broker" in roles:
            out += [
                ("GET", "/api/v1/storage/replication/status", self.replication_status),
                ("POST", "/api/v1/storage/topics/{topic}/partitions/{partition}", self.produce),
                ("GET", "/api/v1/storage/topics/{topic}/partitions/{partition}", self.fetch),
            ]
        return out

    async def close(self) -> None:
        for conn in self._conns.values():
            await conn.close()
        self._conns.clear()

    async def _call(self, key: ApiKey, body: Any, host: str | None = None,
                    port: int | None = None) -> Any:
        addr = (host or self.node.spec.address.host, port or self.node.spec.address.port)
        conn = self._conns.get(addr)
        if conn is None or conn.closed:
            conn = await Connection.open(*addr, client_id="dmq-rest")
            self._conns[addr] = conn
        return await conn.request(key, body, timeout_ms=TIMEOUT_MS)

    # ---- controller paths -------------------------------------------------------------
    async def _describe(self) -> dict[str, Any]:
        result: dict[str, Any] = await self._call(ApiKey.DESCRIBE_CLUSTER, {})
        return result

    @staticmethod
    def _broker_json(b: dict[str, Any], now_ms: int) -> dict[str, Any]:
        ago = b.get("last_heartbeat_ms_ago")
        return {"brokerId": b["broker_id"], "host": b["host"], "port": b["port"],
                "rack": b.get("rack"), "status": b["state"], "brokerEpoch": b.get("broker_epoch"),
                "lastHeartbeat": now_ms - ago if isinstance(ago, int) and ago >= 0 else None}

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
        try:
            d = await self._describe()
        except DmqError as exc:
            return _from_dmq_error(exc)
        cid = d.get("controller_id", -1)
        url = None
        for c in d.get("controllers", []):
            if c.get("node_id") == cid:
                url = f"{c['host']}:{c['port']}"
        return web.json_response({"controllerId": cid, "controllerUrl": url,
                                  "controllerTerm": d.get("controller_term"),
                                  "timestamp": int(time.time() * 1000)})

    async def cluster(self, request: web.Request) -> web.Response:
        try:
            d = await self._describe()
            md = await self._call(ApiKey.METADATA, {"topics": None})
        except DmqError as exc:
            return _from_dmq_error(exc)
        now_ms = int(time.time() * 1000)
        topics = [self._topic_json(t) for t in md.get("topics", []) if not t.get("error")]
        return web.json_response({
            "version": d.get("metadata_version"), "controllerLeaderId": d.get("controller_id"),
            "controllerTerm": d.get("controller_term"),
            "brokers": [self._broker_json(b, now_ms) for b in d.get("brokers", [])],
            "topics": topics, "totalTopics": len(topics),
            "totalPartitions": sum(t["numPartitions"] for t in topics),
            "controllers": d.get("controllers", []), "timestamp": now_ms})

    async def brokers(self, request: web.Request) -> web.Response:
        try:
            d = await self._describe()
        except DmqError as exc:
            return _from_dmq_error(exc)
        now_ms = int(time.time() * 1000)
        return web.json_response([self._broker_json(b, now_ms) for b in d.get("brokers", [])])

    async def broker(self, request: web.Request) -> web.Response:
        try:
            broker_id = int(request.match_info["broker_id"])
        except ValueError:
            return _error(400, "broker id must be an integer")
        try:
            d = await self._describe()
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
        return web.json_response([self._topic_json(t) for t in md.get("topics", [])
                                  if not t.get("error")])

    async def topic(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            md = await self._call(ApiKey.METADATA, {"topics": [name],
                                                    "allow_auto_create": False})
        except DmqError as exc:
            return _from_dmq_error(exc)
        for t in md.get("topics", []):
            if t["name"] == name and not t.get("error"):
                return web.json_response(self._topic_json(t))
        return _error(404, f"topic {name!r} does not exist", "UNKNOWN_TOPIC_OR_PARTITION")

    async def create_topic(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body must be JSON")
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object")
        name = body.get("topicName")
        parts = body.get("numPartitions", 1)
        rf = body.get("replicationFactor", 1)
        if not isinstance(name, str) or type(parts) is not int or type(rf) is not int:
            return _error(400, "topicName (string), numPartitions and replicationFactor "
                               "(integers) are required")
        configs = body.get("configs") or {}
        if not isinstance(configs, dict):
            return _error(400, "configs must be an object of strings")
        try:
            result = await self._call(ApiKey.CREATE_TOPICS, {"topics": [
                {"name": name, "partitions": parts, "replication_factor": rf,
                 "configs": {str(k): str(v) for k, v in configs.items()}}]})
        except NotControllerError as exc:
            leader = f"{exc.leader[1]}:{exc.leader[2]}" if exc.leader else ""
            return _error(503, "this controller is not the leader", exc.code.name,
                          **{"X-Controller-Leader": leader})
        except DmqError as exc:
            return _from_dmq_error(exc)
        (t,) = result["topics"]
        if t.get("error"):
            return _from_dmq_error(_cls(t["error"])(t.get("msg")))
        return web.json_response({"topicName": name, "topicId": t.get("id"),
                                  "numPartitions": parts, "replicationFactor": rf}, status=201)

    async def raft_status(self, request: web.Request) -> web.Response:
        try:
            s = await self._call(ApiKey.RAFT_STATUS, {})
        except DmqError as exc:
            return _from_dmq_error(exc)
        role = str(s.get("role", "")).upper()
        return web.json_response({
            "nodeId": s.get("node_id"), "currentTerm": s.get("term"), "state": role,
            "isLeader": role == "LEADER", "leaderId": s.get("leader_id"),
            "commitIndex": s.get("commit_index"), "lastApplied": s.get("last_applied"),
            "lastLogIndex": s.get("last_log_index"), "peers": s.get("peers")})

    # ---- broker paths -----------------------------------------------------------------
    def _replicas(self) -> Any:
        for svc in self.node.services:
            if hasattr(svc, "replicas"):
                return svc.replicas
        return None

    async def replication_status(self, request: web.Request) -> web.Response:
        replicas = self._replicas()
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
        return web.json_response({"brokerId": self.node.spec.node_id, "partitions": out})

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
    def _tp(request: web.Request) -> tuple[str, int] | web.Response:
        try:
            return request.match_info["topic"], int(request.match_info["partition"])
        except ValueError:
            return _error(400, "partition must be an integer")

    async def produce(self, request: web.Request) -> web.Response:
        tp = self._tp(request)
        if isinstance(tp, web.Response):
            return tp
        topic, partition = tp
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body must be JSON with key and value")
        if not isinstance(body, dict) or "value" not in body:
            return _error(400, "body must be a JSON object with a value")
        key, value = body.get("key"), body.get("value")
        ts = body.get("timestamp", int(time.time() * 1000))
        if type(ts) is not int:
            return _error(400, "timestamp must be an integer (ms)")
        batch = build_batch([(_encode(key), _encode(value))], timestamp_ms=ts)
        try:
            leader = await self._leader_of(topic, partition)
            if leader is None:
                return _error(404, f"{topic}-{partition} does not exist or has no leader",
                              "UNKNOWN_TOPIC_OR_PARTITION")
            result = await self._call(ApiKey.PRODUCE, {
                "acks": -1, "timeout_ms": TIMEOUT_MS,
                "topics": [[topic, [[partition, -1, batch]]]]}, *leader)
        except DmqError as exc:
            return _from_dmq_error(exc)
        (_, parts), = result["topics"]
        (_, error, base_offset, _, msg), = parts
        if error:
            return _from_dmq_error(_cls(error)(msg))
        return web.json_response({"topic": topic, "partition": partition, "offset": base_offset,
                                  "timestamp": ts})

    async def fetch(self, request: web.Request) -> web.Response:
        tp = self._tp(request)
        if isinstance(tp, web.Response):
            return tp
        topic, partition = tp
        try:
            offset = int(request.query.get("offset", "0"))
            limit = min(MAX_LIMIT, int(request.query.get("limit", "100")))
        except ValueError:
            return _error(400, "offset and limit must be integers")
        if offset < 0 or limit <= 0:
            return _error(400, "offset must be >= 0 and limit > 0")
        try:
            leader = await self._leader_of(topic, partition)
            if leader is None:
                return _error(404, f"{topic}-{partition} does not exist or has no leader",
                              "UNKNOWN_TOPIC_OR_PARTITION")
            result = await self._call(ApiKey.FETCH, {
                "max_wait_ms": 0, "min_bytes": 0, "max_bytes": 4 * 1024 * 1024,
                "topics": [[topic, [[partition, offset, -1, 4 * 1024 * 1024]]]]}, *leader)
        except (DmqError, NetworkError) as exc:
            return _from_dmq_error(exc)
        (_, parts), = result["topics"]
        (_, error, hw, _log_start, _leo, records), = parts
        if error:
            return _from_dmq_error(_cls(error)())
        out = []
        for r in iter_records(records or b""):
            if r.offset < offset or r.offset >= hw:
                continue
            out.append({"offset": r.offset, "timestamp": r.timestamp, "key": _text(r.key),
                        "value": _text(r.value)})
            if len(out) >= limit:
                break
        return web.json_response({"topic": topic, "partition": partition, "highWatermark": hw,
                                  "records": out})


def _encode(v: Any) -> bytes | None:
    return None if v is None else (v if isinstance(v, str) else str(v)).encode()


def _cls(code: int) -> type[DmqError]:
    from dmq.protocol.errors import error_for

    return type(error_for(code))
