"""Kafka API handlers of a broker: Kafka requests in, calls on dmq's broker out.

Owns the translation between Kafka's message shapes (dicts keyed by the field names
of Kafka's definitions, see `dmq.kafka.codec`) and the broker's own entry points: the
data path (`DataPlane.produce/fetch/list_offsets`, the same calls dmq's protocol
makes, so produce validation, idempotence, acks and long polls behave alike) and the
route to the active controller (`controller_request`, as dmq's brokers forward).
Controller-only requests (CreateTopics, DeleteTopics, InitProducerId) are forwarded
there, as KRaft brokers forward them; Metadata therefore names this broker as the
"controller", so admin clients send those requests to a broker.

Record batches pass through as bytes in both directions: a Kafka producer's batches
are stored byte for byte, a fetch returns the stored bytes, except batches written by
dmq's own client, which are converted to Kafka records (`dmq.kafka.records`).

It must never decode records and never import the network layer.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from dmq.aio import wait_for
from dmq.broker.errors import message_of
from dmq.config import SETTINGS
from dmq.controller.cluster_id import quorum_cluster_id
from dmq.controller.validation import effective_topic_configs
from dmq.kafka.acls import AclApis
from dmq.kafka.errors import forward_error_code, kafka_code
from dmq.kafka.groups import GroupApis
from dmq.kafka.quotas import QuotaApis
from dmq.kafka.records import is_dmq_native, kafka_view
from dmq.kafka.server import NO_RESPONSE, Api, api_ranges
from dmq.kafka.topic_ids import TopicNames, topic_uuid
from dmq.metadata.image import FENCED, MetadataImage
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import DmqError, ErrorCode
from dmq.protocol.server import NO_RESPONSE as DMQ_NO_RESPONSE
from dmq.security.acl import (
    ALTER,
    ALTER_CONFIGS,
    CLUSTER_NAME,
    CREATE,
    DELETE,
    DESCRIBE_CONFIGS,
    IDEMPOTENT_WRITE,
    TOPIC,
    Authorizer,
)
from dmq.security.users import MECHANISM_NAMES, MECHANISM_NUMBERS

if TYPE_CHECKING:
    from dmq.broker.handlers import DataPlane
    from dmq.config import ClusterConfig
    from dmq.kafka.codec import RequestHeader

log = logging.getLogger("dmq.kafka")

# Kafka error codes used here that dmq's ErrorCode does not name.
INVALID_REQUEST = 42
FETCH_SESSION_ID_NOT_FOUND = 70
INVALID_FETCH_SESSION_EPOCH = 71
# from these versions on a client backs off by the ThrottleTimeMs it reads (KIP-219)
CLIENT_THROTTLES_PRODUCE = 6
CLIENT_THROTTLES_FETCH = 8
UNSUPPORTED_ENDPOINT_TYPE = 119
RESOURCE_TOPIC = 2
RESOURCE_BROKER = 4
CONFIG_SOURCE_DYNAMIC_TOPIC = 1
CONFIG_SOURCE_STATIC_BROKER = 4
CONFIG_SOURCE_DEFAULT = 5

NO_AUTHORIZED_OPERATIONS = -2147483648
ROUTE_SLACK_S = 0.25  # past a forward's own deadline, before `bounded` ends it
_NO_CONTEXT: Any = None  # the data plane's handlers do not read their request context
ControllerRequest = Callable[[ApiKey, Any, int], Awaitable[Any]]


def bounded(request: ControllerRequest) -> ControllerRequest:
    """`request` with each call ended (TimeoutError) once its `timeout_ms` has passed.
    The route's own deadline does not cover waiting for its connection, which another
    caller may hold while it looks for a controller for up to its own, longer,
    timeout; a Kafka client must be answered within the bound each handler chose."""
    async def call(key: ApiKey, body: Any, timeout_ms: int) -> Any:
        return await wait_for(request(key, body, timeout_ms), timeout_ms / 1000 + ROUTE_SLACK_S)
    return call


class KafkaApis(GroupApis, AclApis, QuotaApis):
    """The handlers, bound to one broker's data plane and controller route."""

    def __init__(self, config: ClusterConfig, broker_id: int, data_plane: DataPlane,
                 image: Callable[[], MetadataImage | None],
                 controller_request: ControllerRequest) -> None:
        self.config = config
        self.broker_id = broker_id
        self.data_plane = data_plane
        self._image = image
        self._controller_request = bounded(controller_request)
        self.topic_names = TopicNames()
        self._quorum_cluster_id = quorum_cluster_id(config)
        self.auto_create = bool(config.get("auto.create.topics.enable"))
        self.apis: list[Api] = []
        # (key, min, max) of APIs the listener answers itself (SASL), for ApiVersions
        self.listener_apis: list[tuple[int, int, int]] = []

    @property
    def cluster_id(self) -> str:
        """The id kept in the metadata log (dmq.controller.cluster_id); until this
        broker's image has it, the quorum-derived id the first controller will keep
        for a cluster that existed before ids were kept."""
        image = self._image()
        if image is not None and image.cluster_id is not None:
            return image.cluster_id
        return self._quorum_cluster_id

    def table(self) -> list[Api]:
        return [
            Api(0, "Produce", 3, 9, self.produce),
            Api(1, "Fetch", 4, 12, self.fetch),
            Api(2, "ListOffsets", 1, 7, self.list_offsets),
            Api(3, "Metadata", 1, 12, self.metadata),
            Api(21, "DeleteRecords", 0, 2, self.delete_records),
            Api(18, "ApiVersions", 0, 3, self.api_versions),
            Api(19, "CreateTopics", 2, 7, self.create_topics),
            Api(20, "DeleteTopics", 1, 6, self.delete_topics),
            Api(22, "InitProducerId", 0, 4, self.init_producer_id),
            Api(23, "OffsetForLeaderEpoch", 2, 4, self.offset_for_leader_epoch),
            Api(32, "DescribeConfigs", 1, 4, self.describe_configs),
            Api(33, "AlterConfigs", 0, 2, self.alter_configs),
            Api(37, "CreatePartitions", 0, 3, self.create_partitions),
            Api(44, "IncrementalAlterConfigs", 0, 1, self.incremental_alter_configs),
            Api(60, "DescribeCluster", 0, 1, self.describe_cluster),
            *self.group_table(),
            *self.user_table(),
            *self.acl_table(),
            *self.quota_table(),
        ]

    # ------------------------------------------------------------------ users (KIP-554)

    def user_table(self) -> list[Api]:
        return [
            Api(50, "DescribeUserScramCredentials", 0, 0, self.describe_user_scram_credentials),
            Api(51, "AlterUserScramCredentials", 0, 0, self.alter_user_scram_credentials),
        ]

    async def describe_user_scram_credentials(self, header: RequestHeader,
                                              body: dict[str, Any]) -> Any:
        wanted = body.get("Users")
        names = [u["Name"] for u in wanted] if wanted else None
        try:
            resp = await self._controller_request(
                ApiKey.DESCRIBE_USER_SCRAM_CREDENTIALS, {"users": names}, 15_000)
        except (DmqError, OSError, TimeoutError) as exc:
            return {"ErrorCode": forward_error_code(exc), "ErrorMessage": message_of(exc),
                    "Results": []}
        return {"ErrorCode": 0, "ErrorMessage": None, "Results": [
            {"User": user, "ErrorCode": kafka_code(code), "ErrorMessage": msg,
             "CredentialInfos": [{"Mechanism": MECHANISM_NUMBERS.get(m, 0), "Iterations": i}
                                 for m, i in creds]}
            for user, code, msg, creds in resp["results"]]}

    async def alter_user_scram_credentials(self, header: RequestHeader,
                                           body: dict[str, Any]) -> Any:
        unknown: dict[str, str] = {}

        def mech(user: str, n: int) -> str:
            name = MECHANISM_NAMES.get(n)
            if name is None:
                unknown[user] = f"unknown SCRAM mechanism {n}"
                return ""
            return name

        deletions = [[d["Name"], mech(d["Name"], d["Mechanism"])] for d in body["Deletions"]]
        upsertions = [[u["Name"], mech(u["Name"], u["Mechanism"]), u["Iterations"],
                       bytes(u["Salt"] or b""), bytes(u["SaltedPassword"] or b"")]
                      for u in body["Upsertions"]]
        results: dict[str, tuple[int, str | None]] = {
            user: (int(ErrorCode.UNSUPPORTED_SASL_MECHANISM), why)
            for user, why in unknown.items()}
        request = {"deletions": [d for d in deletions if d[0] not in results],
                   "upsertions": [u for u in upsertions if u[0] not in results]}
        if request["deletions"] or request["upsertions"]:
            try:
                resp = await self._controller_request(
                    ApiKey.ALTER_USER_SCRAM_CREDENTIALS, request, 15_000)
                for user, code, msg in resp["results"]:
                    results[user] = (kafka_code(code), msg)
            except (DmqError, OSError, TimeoutError) as exc:
                for row in [*request["deletions"], *request["upsertions"]]:
                    results[row[0]] = (forward_error_code(exc), message_of(exc))
        return {"Results": [{"User": user, "ErrorCode": code, "ErrorMessage": msg}
                            for user, (code, msg) in results.items()]}

    # ------------------------------------------------------------------ ACLs

    @property
    def authorizer(self) -> Authorizer | None:
        """The broker's (its data plane's: both answer from the same image)."""
        return getattr(self.data_plane, "authorizer", None)  # no data plane in some tests

    def _may(self, header: RequestHeader, operation: str, topic: str, api: str) -> bool:
        authz = self.authorizer
        return authz is None or authz.check(header.principal, operation, TOPIC, topic, api)

    def _may_create(self, header: RequestHeader, topic: str) -> bool:
        authz = self.authorizer
        return authz is None or authz.may_create_topic(header.principal, topic, "CreateTopics")

    # ------------------------------------------------------------------ ApiVersions

    def api_versions(self, header: RequestHeader, body: dict[str, Any]) -> Any:
        return {"ErrorCode": 0, "ApiKeys": api_ranges(self.table(), self.listener_apis)}

    # ------------------------------------------------------------------ Metadata

    def metadata(self, header: RequestHeader, body: dict[str, Any]) -> Any:
        image = self._image()
        wanted = body.get("Topics")
        names = None if wanted is None else [t["Name"] for t in wanted if t.get("Name")]
        unknown_ids: list[bytes] = []
        if wanted is not None and image is not None:
            # v10+: topics asked for by id (a KIP-848 consumer learns its assignment
            # by topic id)
            by_id = self.topic_names.lookup(image)
            for t in wanted:
                tid = bytes(t.get("TopicId") or bytes(16))
                if t.get("Name") or tid == bytes(16):
                    continue
                if tid in by_id:
                    assert names is not None
                    names.append(by_id[tid])
                else:
                    unknown_ids.append(tid)
        refused: dict[str, int] = {}
        authz = self.authorizer
        if authz is not None:
            names, refused = authz.metadata_view(header.principal, names,
                                                 image.topics if image is not None else ())
        if (image is not None and names and body.get("AllowAutoTopicCreation", True)
                and self.auto_create):
            unknown = [n for n in names if n not in image.topics and n not in refused]
            # the controller hears this broker (a node) ask, not the client: check here
            refused |= {n: int(ErrorCode.TOPIC_AUTHORIZATION_FAILED) for n in unknown
                        if authz is not None
                        and not authz.may_create_topic(header.principal, n, "Metadata")}
            unknown = [n for n in unknown if n not in refused]
            if unknown:
                return self._auto_create_then_answer(names, unknown, refused)
        answer = self._metadata_answer(image, names, set(), refused)
        no_name = None if header.api_version >= 12 else ""  # nullable from v12
        answer["Topics"] += [{"ErrorCode": int(ErrorCode.UNKNOWN_TOPIC_ID), "Name": no_name,
                              "TopicId": tid, "Partitions": []} for tid in unknown_ids]
        return answer

    async def _auto_create_then_answer(self, names: list[str], unknown: list[str],
                                       refused: dict[str, int]) -> dict[str, Any]:
        """dmq creates topics on the controller when a Metadata asks for them; answer
        from this broker's image (LEADER_NOT_AVAILABLE until it has the topic: Kafka
        clients retry that)."""
        creating: set[str] = set()
        try:
            await self._controller_request(
                ApiKey.METADATA, {"topics": unknown, "allow_auto_create": True}, 5000)
            creating = set(unknown)
        except (DmqError, OSError, TimeoutError) as exc:
            log.info("broker=%d Kafka metadata: auto-creating %s failed: %s", self.broker_id,
                     unknown, exc)
        return self._metadata_answer(self._image(), names, creating, refused)

    def _metadata_answer(self, image: MetadataImage | None, names: list[str] | None,
                         creating: set[str], refused: dict[str, int] | None = None
                         ) -> dict[str, Any]:
        brokers: list[dict[str, Any]] = []
        topics: list[dict[str, Any]] = []
        if image is not None:
            brokers = [{"NodeId": b.broker_id, "Host": b.kafka_host or b.host,
                        "Port": b.kafka_port, "Rack": b.rack}
                       for _, b in sorted(image.brokers.items())
                       if b.state != FENCED and b.kafka_port >= 0]
            for name in (sorted(image.topics) if names is None else names):
                t = image.topics.get(name)
                if refused and name in refused:
                    topics.append({"ErrorCode": refused[name], "Name": name, "Partitions": []})
                    continue
                if t is None:
                    code = (ErrorCode.LEADER_NOT_AVAILABLE if name in creating
                            else ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
                    topics.append({"ErrorCode": int(code), "Name": name, "Partitions": []})
                    continue
                parts = []
                for p in sorted(t.partitions):
                    pi = t.partitions[p]
                    parts.append({
                        "ErrorCode": 0 if pi.leader >= 0 else int(ErrorCode.LEADER_NOT_AVAILABLE),
                        "PartitionIndex": p, "LeaderId": pi.leader,
                        "LeaderEpoch": pi.leader_epoch, "ReplicaNodes": list(pi.replicas),
                        "IsrNodes": list(pi.isr),
                        "OfflineReplicas": [r for r in pi.replicas
                                            if r not in image.brokers
                                            or image.brokers[r].state == FENCED]})
                topics.append({"ErrorCode": 0, "Name": name, "TopicId": topic_uuid(t.topic_id),
                               "IsInternal": False, "Partitions": parts,
                               "TopicAuthorizedOperations": NO_AUTHORIZED_OPERATIONS})
        elif names:
            topics = [{"ErrorCode": int(ErrorCode.LEADER_NOT_AVAILABLE), "Name": n,
                       "Partitions": []} for n in names]
        # Controller-only requests are forwarded by any broker: name ourselves.
        return {"Brokers": brokers, "ClusterId": self.cluster_id, "ControllerId": self.broker_id,
                "Topics": topics, "ClusterAuthorizedOperations": NO_AUTHORIZED_OPERATIONS}

    # ------------------------------------------------------------------ Produce

    def produce(self, header: RequestHeader, body: dict[str, Any]) -> Any:
        acks = body["Acks"]
        if body.get("TransactionalId") is not None:
            return self._produce_refused(body, INVALID_REQUEST,
                                         "transactions are not supported by dmq yet")
        if acks not in (0, 1, -1):
            return self._produce_refused(body, int(ErrorCode.INVALID_REQUIRED_ACKS),
                                         f"acks must be 0, 1 or -1, got {acks}")
        topics = [[t["Name"], [[p["Index"], -1, p["Records"] if p["Records"] is not None
                                else b""] for p in t["PartitionData"]]]
                  for t in body["TopicData"]]
        result = self.data_plane.produce(
            _NO_CONTEXT, {"acks": acks, "timeout_ms": body["TimeoutMs"], "topics": topics},
            kafka_listener=True, principal=header.principal,
            client_throttles=header.api_version >= CLIENT_THROTTLES_PRODUCE)
        if result is DMQ_NO_RESPONSE or acks == 0:
            return NO_RESPONSE
        if isinstance(result, dict):
            return _produce_answer(result)
        return _after(result, _produce_answer)

    @staticmethod
    def _produce_refused(body: dict[str, Any], code: int, msg: str) -> Any:
        if body["Acks"] == 0:
            return NO_RESPONSE
        return {"Responses": [
            {"Name": t["Name"], "PartitionResponses": [
                {"Index": p["Index"], "ErrorCode": code, "BaseOffset": -1,
                 "LogAppendTimeMs": -1, "LogStartOffset": -1, "ErrorMessage": msg}
                for p in t["PartitionData"]]} for t in body["TopicData"]]}

    # ------------------------------------------------------------------ Fetch

    def fetch(self, header: RequestHeader, body: dict[str, Any]) -> Any:
        session_id = body.get("SessionId", 0)
        session_epoch = body.get("SessionEpoch", -1)
        if session_id != 0 or session_epoch not in (-1, 0):
            # No incremental fetch sessions: a client that asks gets a full fetch next.
            code = FETCH_SESSION_ID_NOT_FOUND if session_id else INVALID_FETCH_SESSION_EPOCH
            return {"ErrorCode": code, "SessionId": 0, "Responses": []}
        topics = [[t["Topic"], [[p["Partition"], p["FetchOffset"], p.get("CurrentLeaderEpoch", -1),
                                 p["PartitionMaxBytes"]] for p in t["Partitions"]]]
                  for t in body["Topics"]]
        request = {"replica_id": -1, "max_wait_ms": max(body["MaxWaitMs"], 0),
                   "min_bytes": body["MinBytes"], "max_bytes": body.get("MaxBytes", 0x7FFFFFFF),
                   "topics": topics}
        result = self.data_plane.fetch(
            _NO_CONTEXT, request, principal=header.principal,
            client_throttles=header.api_version >= CLIENT_THROTTLES_FETCH)
        if isinstance(result, dict):
            return _fetch_answer(result)
        return _after(result, _fetch_answer)

    # ------------------------------------------------------------------ ListOffsets

    def list_offsets(self, header: RequestHeader, body: dict[str, Any]) -> Any:
        topics = []
        refused: set[tuple[str, int]] = set()
        for t in body["Topics"]:
            rows = []
            for p in t["Partitions"]:
                if p["Timestamp"] < -2:  # -3 (max timestamp) and below: not supported
                    refused.add((t["Name"], p["PartitionIndex"]))
                    continue
                rows.append([p["PartitionIndex"], p["Timestamp"]])
            topics.append([t["Name"], rows])
        result = self.data_plane.list_offsets(_NO_CONTEXT, {"topics": topics},
                                              principal=header.principal)
        out = []
        for (name, rows), t in zip(result["topics"], body["Topics"], strict=True):
            parts = [{"PartitionIndex": p, "ErrorCode": kafka_code(err), "Timestamp": ts,
                      "Offset": off, "LeaderEpoch": -1} for p, err, ts, off in rows]
            parts += [{"PartitionIndex": p["PartitionIndex"], "ErrorCode": INVALID_REQUEST,
                       "Timestamp": -1, "Offset": -1, "LeaderEpoch": -1}
                      for p in t["Partitions"] if (name, p["PartitionIndex"]) in refused]
            out.append({"Name": name, "Partitions": parts})
        return {"Topics": out}

    def delete_records(self, header: RequestHeader, body: dict[str, Any]) -> Any:
        """Sent by clients to each partition's leader (offset -1: the high watermark).
        The answer comes once the leader's log start moved; followers follow it on
        their next fetch (Kafka also waits for them, up to TimeoutMs)."""
        topics = [[t["Name"], [[p["PartitionIndex"], p["Offset"]] for p in t["Partitions"]]]
                  for t in body["Topics"]]
        result = self.data_plane.delete_records(_NO_CONTEXT, {"topics": topics},
                                                principal=header.principal)
        return {"ThrottleTimeMs": 0, "Topics": [
            {"Name": name, "Partitions": [
                {"PartitionIndex": p, "LowWatermark": low, "ErrorCode": kafka_code(err)}
                for p, err, low in rows]}
            for name, rows in result["topics"]]}

    # ------------------------------------------------------------------ admin (forwarded)

    async def create_topics(self, header: RequestHeader, body: dict[str, Any]) -> Any:
        results: dict[str, dict[str, Any]] = {}
        request = []
        for t in body["Topics"]:
            name = t["Name"]
            if t.get("Assignments"):
                results[name] = _no_manual_assignments(name)
                continue
            if not self._may_create(header, name):
                results[name] = _refused(name, header.principal, CREATE)
                continue
            partitions = t["NumPartitions"]
            rf = t["ReplicationFactor"]
            request.append({
                "name": name,
                "partitions": partitions if partitions > 0 else
                int(self.config.get("num.partitions")),
                "replication_factor": rf if rf > 0 else
                int(self.config.get("default.replication.factor")),
                "configs": {c["Name"]: c["Value"] for c in t.get("Configs", [])
                            if c["Value"] is not None}})

        def row(r: dict[str, Any]) -> dict[str, Any]:
            return {"Name": r["name"], "ErrorCode": kafka_code(r.get("error", 0)),
                    "ErrorMessage": r.get("msg"),
                    "TopicId": topic_uuid(r["id"]) if r.get("id") else bytes(16),
                    "NumPartitions": r.get("partitions", -1),
                    "ReplicationFactor": r.get("replication_factor", -1), "Configs": None}

        await self._forward_topics(ApiKey.CREATE_TOPICS, body, request, results, row)
        return {"Topics": _per_topic(body, results)}

    async def _forward_topics(self, key: ApiKey, body: dict[str, Any],
                              request: list[dict[str, Any]],
                              results: dict[str, dict[str, Any]],
                              row: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        """CreateTopics and CreatePartitions: forward the `request` rows with the body's
        TimeoutMs and ValidateOnly; each answered topic's `row` goes into `results`, or
        on failure each asked topic gets the error."""
        if not request:
            return
        timeout_ms = max(int(body["TimeoutMs"]), 0)
        try:
            resp = await self._controller_request(
                key, {"topics": request, "timeout_ms": timeout_ms,
                      "validate_only": bool(body["ValidateOnly"])}, timeout_ms + 5000)
            for r in resp["topics"]:
                results[r["name"]] = row(r)
        except (DmqError, OSError, TimeoutError) as exc:
            code = forward_error_code(exc)
            for r in request:
                results[r["name"]] = {"Name": r["name"], "ErrorCode": code,
                                      "ErrorMessage": message_of(exc)}

    async def delete_topics(self, header: RequestHeader, body: dict[str, Any]) -> dict[str, Any]:
        names = list(body.get("TopicNames") or [])
        by_id: dict[str, bytes] = {}
        image = self._image()
        for t in body.get("Topics") or []:
            name = t.get("Name")
            if name is None and image is not None:
                for info in image.topics.values():
                    if topic_uuid(info.topic_id) == t["TopicId"]:
                        name = info.name
            if name is None:
                continue
            names.append(name)
            by_id[name] = t["TopicId"]
        timeout_ms = max(int(body["TimeoutMs"]), 0)
        out: list[dict[str, Any]] = []
        for name in [n for n in names if not self._may(header, DELETE, n, "DeleteTopics")]:
            names.remove(name)
            out.append({**_refused(name, header.principal, DELETE),
                        "TopicId": by_id.get(name, bytes(16))})
        if not names:
            return {"Responses": out}
        try:
            resp = await self._controller_request(
                ApiKey.DELETE_TOPICS, {"topics": names, "timeout_ms": timeout_ms},
                timeout_ms + 5000)
            for r in resp["topics"]:
                out.append({"Name": r["name"], "TopicId": by_id.get(r["name"], bytes(16)),
                            "ErrorCode": kafka_code(r.get("error", 0)),
                            "ErrorMessage": r.get("msg")})
        except (DmqError, OSError, TimeoutError) as exc:
            code = forward_error_code(exc)
            out += [{"Name": n, "TopicId": by_id.get(n, bytes(16)), "ErrorCode": code,
                     "ErrorMessage": message_of(exc)} for n in names]
        return {"Responses": out}

    def init_producer_id(self, header: RequestHeader, body: dict[str, Any]) -> Any:
        if body.get("TransactionalId") is not None:
            return {"ErrorCode": INVALID_REQUEST, "ProducerId": -1, "ProducerEpoch": -1}
        authz = self.authorizer
        if authz is not None and not authz.check(header.principal, IDEMPOTENT_WRITE,
                                                 "cluster", CLUSTER_NAME, "InitProducerId"):
            return {"ErrorCode": int(ErrorCode.CLUSTER_AUTHORIZATION_FAILED), "ProducerId": -1,
                    "ProducerEpoch": -1}
        return self._init_producer_id()

    async def _init_producer_id(self) -> dict[str, Any]:
        """Producer ids come from the same allocator as dmq's producers' (a fresh id
        also answers an epoch bump: its sequences start over)."""
        try:
            resp = await self._controller_request(ApiKey.INIT_PRODUCER_ID, {}, 10_000)
        except (DmqError, OSError, TimeoutError) as exc:
            code = forward_error_code(exc)
            if code in (int(ErrorCode.NOT_CONTROLLER), int(ErrorCode.REQUEST_TIMED_OUT)):
                code = int(ErrorCode.COORDINATOR_NOT_AVAILABLE)  # retriable for the client
            return {"ErrorCode": code, "ProducerId": -1, "ProducerEpoch": -1}
        return {"ErrorCode": 0, "ProducerId": resp["producer_id"],
                "ProducerEpoch": resp["producer_epoch"]}


    # ------------------------------------------------------------------ more APIs

    def offset_for_leader_epoch(self, header: RequestHeader, body: dict[str, Any]) -> Any:
        topics = [[t["Topic"], [[p["Partition"], p.get("CurrentLeaderEpoch", -1),
                                 p["LeaderEpoch"]] for p in t["Partitions"]]]
                  for t in body["Topics"]]
        result = self.data_plane.offset_for_leader_epoch(
            _NO_CONTEXT, {"topics": topics, "replica_id": -1}, principal=header.principal)
        return {"Topics": [
            {"Topic": topic, "Partitions": [
                {"ErrorCode": kafka_code(err), "Partition": p, "LeaderEpoch": epoch,
                 "EndOffset": end} for p, err, epoch, end in rows]}
            for topic, rows in result["topics"]]}

    def describe_configs(self, header: RequestHeader, body: dict[str, Any]) -> Any:
        """Answered from this broker's image and the cluster settings (configs change
        through dmq's admin API; Kafka's AlterConfigs is not served yet)."""
        image = self._image()
        out = []
        for res in body["Resources"]:
            rtype, name, keys = res["ResourceType"], res["ResourceName"], \
                res["ConfigurationKeys"]
            entry: dict[str, Any] = {"ErrorCode": 0, "ErrorMessage": None,
                                     "ResourceType": rtype, "ResourceName": name,
                                     "Configs": []}
            if rtype == RESOURCE_TOPIC:
                t = image.topics.get(name) if image is not None else None
                if not self._may(header, DESCRIBE_CONFIGS, name, "DescribeConfigs"):
                    entry["ErrorCode"] = int(ErrorCode.TOPIC_AUTHORIZATION_FAILED)
                    entry["ErrorMessage"] = f"{header.principal} may not DescribeConfigs {name!r}"
                elif t is None:
                    entry["ErrorCode"] = int(ErrorCode.UNKNOWN_TOPIC_OR_PARTITION)
                    entry["ErrorMessage"] = f"topic {name!r} does not exist"
                else:
                    for k, v in sorted(effective_topic_configs(t.configs,
                                                               self.config.get).items()):
                        source = (CONFIG_SOURCE_DYNAMIC_TOPIC if k in t.configs
                                  else CONFIG_SOURCE_DEFAULT)
                        entry["Configs"].append(_config_entry(k, v, source, False))
            elif rtype == RESOURCE_BROKER and self.authorizer is not None and \
                    not self.authorizer.check(header.principal, DESCRIBE_CONFIGS, "cluster",
                                              CLUSTER_NAME, "DescribeConfigs"):
                entry["ErrorCode"] = int(ErrorCode.CLUSTER_AUTHORIZATION_FAILED)
                entry["ErrorMessage"] = f"{header.principal} may not DescribeConfigs the cluster"
            elif rtype == RESOURCE_BROKER and name in ("", str(self.broker_id)):
                for k in sorted(SETTINGS):
                    source = (CONFIG_SOURCE_STATIC_BROKER if k in self.config.settings
                              else CONFIG_SOURCE_DEFAULT)
                    entry["Configs"].append(_config_entry(k, self.config.get(k), source, True))
            else:
                entry["ErrorCode"] = INVALID_REQUEST
                entry["ErrorMessage"] = (f"resource type {rtype} {name!r} not served (topics, "
                                         f"and this broker as {self.broker_id})")
            if keys is not None:
                entry["Configs"] = [c for c in entry["Configs"] if c["Name"] in keys]
            out.append(entry)
        return {"Results": out}

    def alter_configs(self, header: RequestHeader, body: dict[str, Any]) -> Any:
        """Kafka's AlterConfigs replaces a topic's whole set: a config it does not name
        goes back to the cluster default."""
        image = self._image()
        changes: dict[str, dict[str, str | None]] = {}
        for res in body["Resources"]:
            if res["ResourceType"] != RESOURCE_TOPIC:
                continue
            t = image.topics.get(res["ResourceName"]) if image is not None else None
            new: dict[str, str | None] = {k: None for k in (t.configs if t else {})}
            new.update({c["Name"]: c["Value"] for c in res["Configs"]})
            changes[res["ResourceName"]] = new
        return self._alter(body, changes, self._alter_refused(header, changes))

    def incremental_alter_configs(self, header: RequestHeader, body: dict[str, Any]) -> Any:
        """Operations 0 SET, 1 DELETE (back to the default), 2 APPEND and 3 SUBTRACT
        (on list values such as cleanup.policy, from the effective value)."""
        image = self._image()
        changes: dict[str, dict[str, str | None]] = {}
        refused: dict[str, Any] = {}
        for res in body["Resources"]:
            if res["ResourceType"] != RESOURCE_TOPIC:
                continue
            t = image.topics.get(res["ResourceName"]) if image is not None else None
            effective = effective_topic_configs(t.configs if t else {}, self.config.get)
            new: dict[str, str | None] = {}
            for c in res["Configs"]:
                op, key, value = c["ConfigOperation"], c["Name"], c["Value"]
                items = [x for x in str(new.get(key, effective.get(key)) or "").split(",") if x]
                if op == 0:
                    new[key] = value
                elif op == 1:
                    new[key] = None
                elif op == 2:
                    new[key] = ",".join(items + [v for v in (value or "").split(",")
                                                 if v and v not in items])
                elif op == 3:
                    drop = set((value or "").split(","))
                    new[key] = ",".join(x for x in items if x not in drop)
                else:
                    refused[res["ResourceName"]] = f"unknown config operation {op} on {key}"
            changes[res["ResourceName"]] = new
        return self._alter(body, changes, refused | self._alter_refused(header, changes))

    def _alter_refused(self, header: RequestHeader, changes: dict[str, Any]
                       ) -> dict[str, Any]:
        return {n: (int(ErrorCode.TOPIC_AUTHORIZATION_FAILED),
                    f"{header.principal} may not AlterConfigs {n!r}")
                for n in changes if not self._may(header, ALTER_CONFIGS, n, "AlterConfigs")}

    async def _alter(self, body: dict[str, Any], changes: dict[str, dict[str, str | None]],
                     refused: dict[str, Any] | None = None) -> dict[str, Any]:
        results: dict[str, tuple[int, str | None]] = {
            name: why if isinstance(why, tuple) else (INVALID_REQUEST, why)
            for name, why in (refused or {}).items()}
        request: list[dict[str, Any]] = [{"name": n, "configs": c} for n, c in changes.items()
                                         if n not in results]
        if request:
            try:
                resp = await self._controller_request(
                    ApiKey.ALTER_CONFIGS, {"topics": request,
                                           "validate_only": bool(body["ValidateOnly"])}, 15_000)
                for r in resp["topics"]:
                    results[r["name"]] = (kafka_code(r.get("error", 0)), r.get("msg"))
            except (DmqError, OSError, TimeoutError) as exc:
                code = forward_error_code(exc)
                for r in request:
                    results[r["name"]] = (code, message_of(exc))
        out = []
        for res in body["Resources"]:
            name, rtype = res["ResourceName"], res["ResourceType"]
            msg: str | None
            if rtype != RESOURCE_TOPIC:
                code, msg = INVALID_REQUEST, f"resource type {rtype}: only topic configs change"
            else:
                code, msg = results.get(name, (int(ErrorCode.UNKNOWN_SERVER_ERROR), None))
            out.append({"ErrorCode": code, "ErrorMessage": msg, "ResourceType": rtype,
                        "ResourceName": name})
        return {"Responses": out}

    async def create_partitions(self, header: RequestHeader, body: dict[str, Any]) -> Any:
        results: dict[str, dict[str, Any]] = {}
        request = []
        for t in body["Topics"]:
            if t.get("Assignments"):
                results[t["Name"]] = _no_manual_assignments(t["Name"])
            elif not self._may(header, ALTER, t["Name"], "CreatePartitions"):
                results[t["Name"]] = _refused(t["Name"], header.principal, ALTER)
            else:
                request.append({"name": t["Name"], "count": t["Count"]})

        def row(r: dict[str, Any]) -> dict[str, Any]:
            return {"Name": r["name"], "ErrorCode": kafka_code(r.get("error", 0)),
                    "ErrorMessage": r.get("msg")}

        await self._forward_topics(ApiKey.CREATE_PARTITIONS, body, request, results, row)
        return {"Results": _per_topic(body, results)}

    def describe_cluster(self, header: RequestHeader, body: dict[str, Any]) -> Any:
        if body.get("EndpointType", 1) != 1:
            return {"ErrorCode": UNSUPPORTED_ENDPOINT_TYPE, "EndpointType": body["EndpointType"],
                    "ErrorMessage": "only broker endpoints are described",
                    "ClusterId": self.cluster_id, "ControllerId": -1, "Brokers": []}
        md = self._metadata_answer(self._image(), [], set())
        return {"ErrorCode": 0, "EndpointType": 1, "ClusterId": self.cluster_id,
                "ControllerId": self.broker_id,
                "Brokers": [{"BrokerId": b["NodeId"], "Host": b["Host"], "Port": b["Port"],
                             "Rack": b["Rack"]} for b in md["Brokers"]],
                "ClusterAuthorizedOperations": NO_AUTHORIZED_OPERATIONS}


def _refused(name: str, principal: str, operation: str) -> dict[str, Any]:
    return {"Name": name, "ErrorCode": int(ErrorCode.TOPIC_AUTHORIZATION_FAILED),
            "ErrorMessage": f"{principal} may not {operation} topic {name!r}"}


def _no_manual_assignments(name: str) -> dict[str, Any]:
    return {"Name": name, "ErrorCode": INVALID_REQUEST,
            "ErrorMessage": "manual replica assignments are not supported"}


def _per_topic(body: dict[str, Any], results: dict[str, dict[str, Any]]
               ) -> list[dict[str, Any]]:
    """A row per asked topic, in the request's order (UNKNOWN_SERVER_ERROR for one the
    controller did not answer)."""
    unknown = int(ErrorCode.UNKNOWN_SERVER_ERROR)
    return [results.get(t["Name"], {"Name": t["Name"], "ErrorCode": unknown})
            for t in body["Topics"]]


def _config_entry(name: str, value: Any, source: int, read_only: bool) -> dict[str, Any]:
    text = value if isinstance(value, str) or value is None else (
        str(value).lower() if isinstance(value, bool) else str(value))
    return {"Name": name, "Value": text, "ReadOnly": read_only, "ConfigSource": source,
            "IsSensitive": False, "Synonyms": [], "ConfigType": 0, "Documentation": None}


async def _after(pending: Awaitable[Any], convert: Callable[[Any], Any]) -> Any:
    return convert(await pending)


def _produce_answer(result: dict[str, Any]) -> dict[str, Any]:
    return {"ThrottleTimeMs": result.get("throttle_time_ms", 0), "Responses": [
        {"Name": topic, "PartitionResponses": [
            {"Index": p, "ErrorCode": kafka_code(err or 0), "BaseOffset": base,
             "LogAppendTimeMs": -1, "LogStartOffset": start, "ErrorMessage": msg}
            for p, err, base, start, msg in rows]}
        for topic, rows in result["topics"]]}


def _fetch_answer(result: dict[str, Any]) -> dict[str, Any]:
    return {"ThrottleTimeMs": result.get("throttle_time_ms", 0), "ErrorCode": 0,
            "SessionId": 0, "Responses": [
        {"Topic": topic, "Partitions": [
            {"PartitionIndex": p, "ErrorCode": kafka_code(err), "HighWatermark": hw,
             "LastStableOffset": hw, "LogStartOffset": start, "AbortedTransactions": None,
             "PreferredReadReplica": -1, "Records": kafka_view(data, is_dmq_native)}
            for p, err, hw, start, _leo, data in rows]}
        for topic, rows in result["topics"]]}


__all__ = ["KafkaApis", "kafka_code", "topic_uuid"]
