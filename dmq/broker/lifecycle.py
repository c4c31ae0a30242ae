"""The broker side of the cluster lifecycle: registration, heartbeats, the local
metadata image, and the route to the active controller.

`BrokerLifecycle` registers the broker with the active controller (a new incarnation id
per process, so a restart is told apart from a retry), then runs two loops it owns:

- heartbeat: every `broker.heartbeat.interval.ms`, carrying the broker epoch and the
  metadata version it has applied; the answer says whether the broker is fenced and
  whether it may shut down. A stale epoch or unknown registration re-registers. A
  broker that has not had a heartbeat answered for a session timeout counts itself
  fenced.
- metadata: a MetadataFetch long-poll from its version; the answer is the committed
  records since then or a snapshot. Each change yields a new `MetadataImage`, handed
  to `on_image`.

Both follow the active controller: NOT_CONTROLLER answers re-route to the named
leader, lost connections re-run discovery, and a ControllerChanged notice (pushed by a
newly elected controller) switches at once. Notices older than the newest term seen are
ignored. It never touches partition data.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from dmq.aio import wait_for
from dmq.clock import Clock, SystemClock
from dmq.config import ClusterConfig
from dmq.metadata.discovery import ControllerAddress, ControllerChannel, backoff_ms
from dmq.metadata.image import EMPTY_IMAGE, MetadataImage
from dmq.metadata.state import MetadataState
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import DmqError, ErrorCode

log = logging.getLogger("dmq.broker.lifecycle")

OnImage = Callable[[MetadataImage], Awaitable[None] | None]
FETCH_MAX_WAIT_MS = 500
STARTUP_TIMEOUT_MS = 15_000


class BrokerLifecycle:
    def __init__(self, config: ClusterConfig, broker_id: int, host: str, port: int,
                 rack: str | None, on_image: OnImage, clock: Clock | None = None,
                 rng: random.Random | None = None, incarnation_id: str | None = None,
                 startup_timeout_ms: int = STARTUP_TIMEOUT_MS,
                 on_fatal: Callable[[str, BaseException], None] | None = None,
                 kafka_address: tuple[str, int] | None = None) -> None:
        """`on_fatal(what, exc)` is called if the registration/heartbeat or metadata
        loop dies: without them the broker serves blind (crash-only, see dmq.node)."""
        self.config = config
        self.broker_id = broker_id
        self.host = host
        self.port = port
        self.rack = rack
        self.kafka_address = kafka_address  # advertised Kafka listener, set before start()
        self.on_image = on_image
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.incarnation_id = incarnation_id or uuid.uuid4().hex
        self.startup_timeout_ms = startup_timeout_ms
        self.on_fatal = on_fatal
        self.heartbeat_interval_ms = int(config.get("broker.heartbeat.interval.ms"))
        self.session_timeout_ms = int(config.get("broker.session.timeout.ms"))
        self.channel = ControllerChannel([(c.host, c.port) for c in config.controllers],
                                         client_id=f"broker-{broker_id}", rng=self.rng,
                                         node_id=broker_id)
        self.state = MetadataState(keep_offsets=False)
        self._image: MetadataImage = EMPTY_IMAGE
        self._broker_epoch = -1
        self._fenced_by_controller = True
        self._should_shutdown = False
        self._last_heartbeat_ok_ms: int | None = None
        self._controller_term = -1
        self._heartbeat_controller = -1  # the controller that answered the last heartbeat
        self._registered = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._heartbeat_now = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self.stats_heartbeats = 0
        self.stats_images = 0
        # set while fetched metadata does not apply (the broker is then not ready);
        # `on_metadata_error` hears each change of it
        self.metadata_error: str | None = None
        self.on_metadata_error: Callable[[str | None], None] | None = None
        # [[topic, partition, bytes left]] of reassignments led here, sent with each
        # heartbeat (wired by the broker service to its replica manager)
        self.reassignment_progress: Callable[[], list[list[Any]]] | None = None

    # public properties ----------------------------------------------------------------
    @property
    def image(self) -> MetadataImage:
        return self._image

    @property
    def broker_epoch(self) -> int:
        return self._broker_epoch

    @property
    def is_fenced(self) -> bool:
        if self._fenced_by_controller or self._last_heartbeat_ok_ms is None:
            return True
        return self.clock.monotonic_ms() - self._last_heartbeat_ok_ms > self.session_timeout_ms

    @property
    def should_shutdown(self) -> bool:
        return self._should_shutdown

    @property
    def controller(self) -> ControllerAddress | None:
        return self.channel.controller

    # lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Register, load the first image, then heartbeat and long-poll in the
        background. Waits at most `startup_timeout_ms` for the first two steps; if the
        controllers are not reachable by then the loops keep trying."""
        self._tasks.append(self._essential(self._run(), f"broker-{self.broker_id}"))
        try:
            await wait_for(self._caught_up.wait(), self.startup_timeout_ms / 1000)
        except TimeoutError:
            log.warning("broker=%d not registered with a controller after %d ms; still "
                        "trying", self.broker_id, self.startup_timeout_ms)

    async def stop(self) -> None:
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.channel.close()

    def _essential(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._essential_done)
        return task

    def _essential_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopping:
            return
        exc = task.exception() or RuntimeError("returned while the broker ran")
        if self.on_fatal is not None:
            self.on_fatal(f"broker task {task.get_name()}", exc)
        else:
            log.critical("broker=%d task %s died", self.broker_id, task.get_name(),
                         exc_info=exc)

    async def _run(self) -> None:
        await self._register()
        self._tasks.append(self._essential(self._metadata_loop(),
                                           f"broker-{self.broker_id}-metadata"))
        await self._heartbeat_loop()

    async def _register(self) -> None:
        attempt = 0
        while not self._stopping:
            body = {"broker_id": self.broker_id, "host": self.host, "port": self.port,
                    "incarnation_id": self.incarnation_id, "rack": self.rack}
            if self.kafka_address is not None:
                body["kafka_host"], body["kafka_port"] = self.kafka_address
            try:
                resp = await self.channel.request(ApiKey.BROKER_REGISTRATION, body,
                                                  timeout_ms=self.session_timeout_ms)
            except DmqError as exc:
                log.info("broker=%d registration failed (%s); retrying", self.broker_id, exc)
                await self.clock.sleep(backoff_ms(attempt, 100, 2000, self.rng))
                attempt += 1
                continue
            self._broker_epoch = int(resp["broker_epoch"])
            self._fenced_by_controller = True
            self._registered.set()
            log.info("broker=%d registered with controller %s: broker_epoch=%d",
                     self.broker_id, self.channel.controller, self._broker_epoch)
            return

    # heartbeats -------------------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while not self._stopping:
            self._heartbeat_now.clear()
            await self._heartbeat_once()
            try:
                await wait_for(self._heartbeat_now.wait(),
                                       self.heartbeat_interval_ms / 1000)
            except TimeoutError:
                pass

    async def _heartbeat_once(self, want_shutdown: bool = False) -> dict[str, Any] | None:
        body: dict[str, Any] = {"broker_id": self.broker_id,
                                "broker_epoch": self._broker_epoch,
                                "metadata_version": self.state.version,
                                "want_shutdown": want_shutdown}
        if self.reassignment_progress is not None:
            body["reassigning"] = self.reassignment_progress()
        try:
            resp = await self.channel.request(
                ApiKey.BROKER_HEARTBEAT, body,
                timeout_ms=max(self.heartbeat_interval_ms, self.session_timeout_ms // 2))
        except DmqError as exc:
            if exc.code in (ErrorCode.STALE_BROKER_EPOCH, ErrorCode.BROKER_ID_NOT_REGISTERED):
                log.warning("broker=%d heartbeat refused (%s); registering again",
                            self.broker_id, exc)
                await self._register()
            else:
                log.info("broker=%d heartbeat failed: %s", self.broker_id, exc)
            return None
        self.stats_heartbeats += 1
        was_fenced = self._fenced_by_controller
        self._fenced_by_controller = bool(resp["is_fenced"])
        self._should_shutdown = bool(resp.get("should_shutdown"))
        self._last_heartbeat_ok_ms = self.clock.monotonic_ms()
        ctl = self.channel.controller
        if ctl is not None and ctl.node_id != self._heartbeat_controller:
            self._heartbeat_controller = ctl.node_id
            log.info("broker=%d heartbeat answered by controller %d (term %d)", self.broker_id,
                     ctl.node_id, self._controller_term)
        if was_fenced != self._fenced_by_controller:
            log.info("broker=%d is now %s", self.broker_id,
                     "FENCED" if self._fenced_by_controller else "unfenced")
        return dict(resp)

    # metadata ---------------------------------------------------------------------------
    async def _metadata_loop(self) -> None:
        attempt = 0
        while not self._stopping:
            body = {"broker_id": self.broker_id, "version": self.state.version,
                    "max_wait_ms": FETCH_MAX_WAIT_MS}
            try:
                resp = await self.channel.request(ApiKey.METADATA_FETCH, body,
                                                  timeout_ms=FETCH_MAX_WAIT_MS + 3000)
            except DmqError as exc:
                log.info("broker=%d metadata fetch failed: %s", self.broker_id, exc)
                await self.clock.sleep(backoff_ms(attempt, 50, 1000, self.rng))
                attempt += 1
                continue
            try:
                await self._apply_fetch(resp)
            except Exception as exc:  # noqa: BLE001 - the follower must outlive a bad fetch
                # the local state may be half-changed: start over from a snapshot, and
                # say so (the broker is not ready) until one applies
                if self.metadata_error is None:
                    log.exception("broker=%d metadata at version %d does not apply; "
                                  "fetching a snapshot", self.broker_id, self.state.version)
                self._set_metadata_error(f"metadata does not apply: {exc!r}")
                self.state = MetadataState(keep_offsets=False)
                await self.clock.sleep(backoff_ms(attempt, 100, 5000, self.rng))
                attempt += 1
                continue
            attempt = 0
            if self.metadata_error is not None:
                log.info("broker=%d metadata applies again at version %d", self.broker_id,
                         self.state.version)
                self._set_metadata_error(None)

    def _set_metadata_error(self, error: str | None) -> None:
        self.metadata_error = error
        if self.on_metadata_error is not None:
            self.on_metadata_error(error)

    async def _apply_fetch(self, resp: dict[str, Any]) -> None:
        before = self.state.version
        if resp.get("snapshot") is not None:
            self.state.restore(resp["snapshot"])
        for index, recs in resp.get("records") or ():
            if index > self.state.version:
                self.state.apply_entry(index, recs)
        self.state.advance_to(int(resp.get("version", 0)))
        term = int(resp.get("controller_term", -1))
        if term > self._controller_term:
            self._controller_term = term
        changed = self.state.version != before or self._image is EMPTY_IMAGE
        if changed:
            await self._publish()
        if not self._caught_up.is_set():
            self._caught_up.set()
            self._heartbeat_now.set()
        elif self._fenced_by_controller and self._broker_epoch >= 0 and \
                self.state.version >= self.state.broker_changed_at.get(self.broker_id, 0):
            self._heartbeat_now.set()  # caught up: ask to be unfenced now, not next beat

    async def _publish(self) -> None:
        ctl = self.channel.controller
        image = self.state.image(ctl.node_id if ctl else -1, self._controller_term,
                                 (ctl.host, ctl.port) if ctl else None)
        self._image = image
        self.stats_images += 1
        try:
            result = self.on_image(image)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("broker=%d on_image failed for version %d", self.broker_id,
                          image.version)

    # controller routing -----------------------------------------------------------------
    async def controller_request(self, api_key: ApiKey, body: Any, timeout_ms: int) -> Any:
        """Send a request to the active controller (following failovers); returns the
        answer body or raises the error."""
        return await self.channel.request(api_key, body, timeout_ms=timeout_ms)

    def handle_controller_changed(self, body: dict[str, Any]) -> dict[str, Any]:
        """A newly elected controller announces itself. Older terms are ignored."""
        term = int(body["term"])
        if term < self._controller_term:
            log.info("broker=%d ignoring ControllerChanged from %s for old term %d < %d",
                     self.broker_id, body.get("controller_id"), term, self._controller_term)
            return {}
        self._controller_term = term
        ctl = ControllerAddress(int(body["controller_id"]), str(body["host"]),
                                int(body["port"]), term)
        log.info("broker=%d controller is now %d at %s (term %d)", self.broker_id,
                 ctl.node_id, ctl.address, term)
        self.channel.set_controller(ctl)
        self._heartbeat_now.set()
        return {}

    async def controlled_shutdown(self, timeout_ms: int) -> bool:
        """Ask the controller to move every leadership away; True once none is left
        (or the broker never registered), False when `timeout_ms` ran out first or the
        leaderships left have no other in-sync replica to go to."""
        if self._broker_epoch < 0:
            return True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        while True:
            remaining = int((deadline - loop.time()) * 1000)
            if remaining <= 0:
                return False
            try:
                resp = await self.channel.request(
                    ApiKey.CONTROLLED_SHUTDOWN,
                    {"broker_id": self.broker_id, "broker_epoch": self._broker_epoch},
                    timeout_ms=remaining)
                left = int(resp["remaining_leaderships"])
                if left == 0:
                    log.info("broker=%d controlled shutdown: no leaderships left",
                             self.broker_id)
                    return True
                if left == int(resp.get("unmovable_leaderships", -1)):
                    # no other in-sync replica can take these: waiting will not help
                    log.info("broker=%d controlled shutdown: %d leaderships have no other "
                             "in-sync replica", self.broker_id, left)
                    return False
                log.info("broker=%d controlled shutdown: %d leaderships left", self.broker_id,
                         left)
            except DmqError as exc:
                log.info("broker=%d controlled shutdown request failed: %s", self.broker_id,
                         exc)
                if not exc.retriable:
                    return False
            await asyncio.sleep(min(0.2, max(0.0, deadline - loop.time())))

    def info(self) -> dict[str, Any]:
        ctl = self.channel.controller
        return {"broker_epoch": self._broker_epoch, "fenced": self.is_fenced,
                "metadata_version": self.state.version,
                "controller_id": ctl.node_id if ctl else -1}


__all__ = ["BrokerLifecycle"]
