"""`BrokerService`: the broker role of a node.

Owns the wiring of the broker role: the `BrokerLifecycle` (registration, heartbeats,
metadata images, the route to the active controller), the `ReplicaManager` fed by
those images, and the data-path handlers on the node's server. Start order: recover
logs on disk, then register (so the broker is only unfenced once it can serve), then
replicate. Stop order (SIGTERM): controlled shutdown (leadership moves away, bounded),
stop fetchers, answer parked requests, close logs cleanly, stop the lifecycle.

It holds no replication logic of its own.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from dmq.broker.handlers import DataPlane
from dmq.broker.replica_manager import ReplicaManager
from dmq.metadata.image import MetadataImage
from dmq.metadata.records import AccessControlEntry
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import DmqError
from dmq.security.acl import Authorizer
from dmq.services import Service

if TYPE_CHECKING:
    from dmq.services import ServiceContext

log = logging.getLogger("dmq.broker")

MIN_CONTROLLED_SHUTDOWN_MS = 2000
UNMOVABLE_SHUTDOWN_MS = 500


class BrokerService(Service):
    def __init__(self, ctx: ServiceContext) -> None:
        from dmq.broker.lifecycle import BrokerLifecycle

        self.config = ctx.config
        self.broker_id = ctx.node_id
        self.clock = ctx.clock
        address = ctx.spec.address
        self.lifecycle = BrokerLifecycle(self.config, self.broker_id, address.host, address.port,
                                         address.rack, on_image=self._on_image, clock=self.clock,
                                         rng=ctx.rng, on_fatal=ctx.fatal)
        self.replicas = ReplicaManager(self.config, self.broker_id, ctx.spec.data_dir,
                                       self.lifecycle.controller_request,
                                       lambda: int(self.lifecycle.broker_epoch),
                                       clock=self.clock)
        self.lifecycle.on_metadata_error = self._metadata_error
        self.lifecycle.reassignment_progress = self.replicas.reassignment_progress
        self.replicas.on_fatal = ctx.fatal
        self.data_plane = DataPlane(self.replicas, self.lifecycle.controller_request,
                                    bool(self.config.get("auto.create.topics.enable")))
        authorizer = Authorizer.from_config(self.config, self._acls, self.broker_id)
        self.data_plane.authorizer = authorizer if authorizer.enabled else None
        # In combined mode the controller answers METADATA itself.
        self.data_plane.register(ctx.server, metadata="controller" not in ctx.spec.roles)
        if "controller" not in ctx.spec.roles:
            ctx.server.register(ApiKey.CONTROLLER_CHANGED, self._controller_changed)
        self._started = False

    def _acls(self) -> frozenset[AccessControlEntry]:
        image = self.replicas.image
        return image.acls if image is not None else frozenset()

    def _controller_changed(self, ctx: Any, body: Any) -> Any:
        result = self.lifecycle.handle_controller_changed(body)
        return {} if result is None else result

    def _metadata_error(self, error: str | None) -> None:
        self.replicas.metadata_error = error  # not serving from a stale image meanwhile

    def _on_image(self, image: MetadataImage) -> None:
        if not self._started:
            return
        try:
            self.replicas.apply_image(image)
        except Exception:
            log.exception("broker=%d failed to apply metadata image %d", self.broker_id,
                          image.version)

    async def start(self) -> None:
        await self.replicas.load_logs()
        self.replicas.start()
        self._started = True
        await self.lifecycle.start()
        if self.replicas.image is None:
            self._on_image(self.lifecycle.image)

    async def stop(self) -> None:
        if self._started:
            try:
                # bounded by the node's shutdown grace: without a controller we still exit;
                # leaderships with no other in-sync replica cannot move, so only announce
                timeout_ms = max(int(self.config.get("shutdown.grace.ms")),
                                 MIN_CONTROLLED_SHUTDOWN_MS)
                if not self.replicas.has_movable_leadership():
                    timeout_ms = UNMOVABLE_SHUTDOWN_MS
                if not await self.lifecycle.controlled_shutdown(timeout_ms):
                    log.warning("broker=%d leadership not moved away in %d ms; stopping anyway",
                                self.broker_id, timeout_ms)
            except (DmqError, OSError, TimeoutError) as exc:
                log.warning("broker=%d controlled shutdown incomplete: %s", self.broker_id, exc)
        self._started = False
        if self.data_plane.authorizer is not None:
            self.data_plane.authorizer.denials.flush()  # the counts still held back
        await self.replicas.stop()
        await self.lifecycle.stop()

    def info(self) -> dict[str, Any]:
        return {"broker": {"broker_id": self.broker_id,
                           "broker_epoch": self.lifecycle.broker_epoch,
                           "fenced": self.lifecycle.is_fenced,
                           **self.replicas.info()}}

    def ready(self) -> tuple[bool, str]:
        if not self._started:
            return False, "starting"
        if self.lifecycle.is_fenced:
            return False, "fenced"
        if self.replicas.image_error is not None:
            return False, self.replicas.image_error
        if self.replicas.metadata_error is not None:
            return False, self.replicas.metadata_error
        return True, ""

    def metrics(self) -> list[Any]:
        lab = {"node": str(self.broker_id)}
        info = self.replicas.info()
        return [
            ("dmq_broker_partitions", "gauge", "partition replicas hosted",
             [(lab, float(info["partitions"]))]),
            ("dmq_broker_leaders", "gauge", "partitions led", [(lab, float(info["leaders"]))]),
            ("dmq_broker_under_replicated_partitions", "gauge",
             "led partitions whose ISR is smaller than the replica set",
             [(lab, float(info["under_replicated"]))]),
            ("dmq_broker_failed_logs", "gauge",
             "partition logs closed by a storage failure (served again after a restart)",
             [(lab, float(info["failed_logs"]))]),
            ("dmq_broker_unavailable_partitions", "gauge",
             "partitions assigned here whose log cannot be opened now (retried)",
             [(lab, float(info["unavailable_partitions"]))]),
            ("dmq_broker_isr_shrinks", "counter", "ISR shrinks proposed",
             [(lab, float(self.replicas.stats_isr_shrinks))]),
            ("dmq_broker_isr_expands", "counter", "ISR expansions proposed",
             [(lab, float(self.replicas.stats_isr_expands))]),
            ("dmq_broker_replication_throttled_rate", "gauge",
             "follower.replication.throttled.rate in force, bytes/s (0: no limit)",
             [(lab, float(self.replicas.fetchers.throttle.rate))]),
            ("dmq_broker_replication_throttled_bytes", "counter",
             "bytes fetched for replicas being added by a reassignment (throttled)",
             [(lab, float(self.replicas.fetchers.throttle.stats_throttled_bytes))]),
            ("dmq_broker_leader_replication_throttled_rate", "gauge",
             "leader.replication.throttled.rate in force, bytes/s (0: no limit)",
             [(lab, float(self.replicas.leader_throttle.rate))]),
            ("dmq_broker_leader_replication_throttled_bytes", "counter",
             "bytes sent as leader to replicas being added by a reassignment (throttled)",
             [(lab, float(self.replicas.leader_throttle.stats_throttled_bytes))]),
            ("dmq_broker_produce_requests", "counter", "produce requests",
             [(lab, float(self.data_plane.stats_produce_requests))]),
            ("dmq_broker_fetch_requests", "counter", "fetch requests",
             [(lab, float(self.data_plane.stats_fetch_requests))]),
            *self._quota_metrics(lab),
            *self._partition_metrics(lab),
        ]

    def _quota_metrics(self, lab: dict[str, str]) -> list[Any]:
        """Throttle time per principal and kind (produce, fetch) of the client quotas
        (labels bounded by the users the quota manager tracks, throttled ones only)."""
        quotas = self.data_plane.quotas
        stats = quotas.throttle_stats()
        time_rows: list[Any] = [({**lab, "kind": kind, "principal": "(dropped)"}, float(ms))
                                for kind, ms in quotas.dropped_throttle_ms.items() if ms]
        count_rows: list[Any] = []
        for kind, user, ms, n in stats:
            row_lab = {**lab, "kind": kind, "principal": f"User:{user}"}
            time_rows.append((row_lab, float(ms)))
            count_rows.append((row_lab, float(n)))
        return [
            ("dmq_broker_quota_throttle_time_ms", "counter",
             "ms answers were held back by client quotas, per principal and kind",
             time_rows),
            ("dmq_broker_quota_throttled_requests", "counter",
             "requests over a client quota, per principal and kind", count_rows),
        ]

    def _partition_metrics(self, lab: dict[str, str]) -> list[Any]:
        """Per topic and per partition figures, computed at scrape time from plain
        counters the data path keeps (labels are bounded by the partitions hosted)."""
        per_topic: dict[str, list[int]] = {}
        size, segments, lag = [], [], []
        offline = 0
        image = self.replicas.image
        for part in list(self.replicas.partitions.values()):
            t = per_topic.setdefault(part.topic, [0, 0, 0, 0])
            t[0] += part.bytes_in
            t[1] += part.records_in
            t[2] += part.bytes_out
            t[3] += part.records_out
            plab = {**lab, "topic": part.topic, "partition": str(part.partition)}
            size.append((plab, float(part.log.size_bytes)))
            segments.append((plab, float(part.log.segment_count)))
            if part.is_leader:
                leo = part.log_end_offset
                for f in part.followers.values():
                    behind = leo - f.log_end_offset if f.log_end_offset >= 0 else leo
                    lag.append(({**plab, "follower": str(f.broker_id)}, float(max(0, behind))))
            if image is not None:
                info = image.partition(part.topic, part.partition)
                if info is not None and info.leader < 0:
                    offline += 1
        topics = sorted(per_topic.items())
        return [
            ("dmq_broker_bytes_in", "counter", "record batch bytes appended as leader, by topic",
             [({**lab, "topic": k}, float(v[0])) for k, v in topics]),
            ("dmq_broker_records_in", "counter", "records appended as leader, by topic",
             [({**lab, "topic": k}, float(v[1])) for k, v in topics]),
            ("dmq_broker_bytes_out", "counter", "record bytes sent to consumers, by topic",
             [({**lab, "topic": k}, float(v[2])) for k, v in topics]),
            ("dmq_broker_records_out", "counter", "records sent to consumers (from each "
             "fetch offset), by topic", [({**lab, "topic": k}, float(v[3])) for k, v in topics]),
            ("dmq_broker_offline_partitions", "gauge", "hosted partitions with no leader",
             [(lab, float(offline))]),
            ("dmq_log_size_bytes", "gauge", "bytes of each partition log", size),
            ("dmq_log_segments", "gauge", "segments of each partition log", segments),
            ("dmq_replication_lag_records", "gauge",
             "leader log end offset minus each follower's, for partitions led here", lag),
        ]
