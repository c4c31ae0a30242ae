"""Finding and talking to the active controller, for brokers and clients.

`find_controller` asks every known address in parallel with a Metadata request for no
topics (every controller and every broker answers it) and takes the first answer that
names the controller with its address; when none does, it retries with exponential
backoff and jitter until its deadline.

`ControllerChannel` keeps one connection to the active controller and routes requests
to it: an answer NOT_CONTROLLER naming the leader re-routes to that leader at once; a
lost connection or an answer without a hint re-runs discovery. Every await has a
timeout and the whole request is bounded by its `timeout_ms` A controller named from
elsewhere (`set_controller`: a ControllerChanged notice) ends a discovery or a retry's
backoff in progress, so a broker reaches a new controller as soon as it announces
itself.

A controller can also stop answering without closing its connection (paused, cut off
by a partition): a request would then wait out its whole timeout although a new
controller is active a second later. So a request still waiting after
`watch_after_ms` (clients set it; brokers learn of a new controller by ControllerChanged
pushes instead) asks every known address who the controller is, every
`watch_interval_ms`, while it waits. When a node names another controller in a term
at least as new (`maybe_switch`), the channel switches to it and re-sends the waiting
request there. Requests to the controller are safe to repeat: reads, producer-id
allocation (a repeat wastes one id) and idempotent writes; a repeated topic creation or
deletion answers TOPIC_ALREADY_EXISTS / UNKNOWN_TOPIC_OR_PARTITION, as it would after
a lost connection.

Owns no background task: what a request starts (probes, a request left for a new
controller) ends with it, and `close` waits for dropped connections to close. It never
imports anything above `dmq.protocol`.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any

from dmq.protocol.api import ApiKey
from dmq.protocol.connection import TLS_REQUIRED_HINT, Connection
from dmq.protocol.errors import (
    DmqError,
    ErrorCode,
    NetworkError,
    NotControllerError,
    RequestTimedOutError,
    error_for,
)

log = logging.getLogger("dmq.metadata.discovery")

# a node refused this client's credentials: asking again cannot change the answer
SASL_REFUSALS = frozenset({ErrorCode.SASL_AUTHENTICATION_FAILED,
                           ErrorCode.UNSUPPORTED_SASL_MECHANISM, ErrorCode.ILLEGAL_SASL_STATE})


def refused(exc: DmqError) -> bool:
    """The node refused this client as it is: its SASL login (or the lack of one), or
    its plaintext connection to a TLS listener. Retrying does not help; the client's
    security settings must change."""
    return exc.code in SASL_REFUSALS or (isinstance(exc, NetworkError)
                                         and TLS_REQUIRED_HINT in exc.message)


# the `data` of the NetworkError `find_controller` gives up with when every node closed
# this client's plaintext connections unanswered, round after round (TLS listeners)
PLAINTEXT_REFUSED = "plaintext refused"


@dataclass(frozen=True, slots=True)
class ControllerAddress:
    node_id: int
    host: str
    port: int
    term: int = -1

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def parse_bootstrap(bootstrap: str | list[str] | tuple[str, ...]) -> list[tuple[str, int]]:
    """"h:p,h:p" or ["h:p", ...] -> [(h, p), ...] (duplicates dropped, order kept)."""
    items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    out: list[tuple[str, int]] = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"bootstrap address must be HOST:PORT, got {item!r}")
        addr = (host, int(port))
        if addr not in out:
            out.append(addr)
    if not out:
        raise ValueError("no bootstrap address given")
    return out


async def probe(host: str, port: int, timeout_ms: int,
                client_id: str = "dmq-discovery") -> ControllerAddress | None:
    """Ask one node who the controller is; None when it does not know or is down."""
    return (await _probe(host, port, timeout_ms, client_id))[0]


def connect_security(security: Any) -> dict[str, Any]:
    """`Connection.open`'s `ssl` and `sasl` from a client's security (an object with
    `ssl` and `sasl` attributes, `dmq.security.client_config.ClientSecurity`); none
    given: the connection falls back to the context's (`client_tls`, `client_sasl`)."""
    if security is None:
        return {}
    return {"ssl": security.ssl, "sasl": security.sasl}


async def _probe(host: str, port: int, timeout_ms: int, client_id: str, security: Any = None
                 ) -> tuple[ControllerAddress | None, DmqError | None]:
    """`probe`, plus why it found nothing: the connect or request error (a
    `NetworkError` when the node could not be reached at all), or None when the node
    answered without knowing the controller."""
    try:
        conn = await Connection.open(host, port, connect_timeout_ms=timeout_ms,
                                     client_id=client_id, **connect_security(security))
    except DmqError as exc:
        return None, exc
    try:
        body = await conn.request(ApiKey.METADATA, {"topics": []}, timeout_ms=timeout_ms)
    except DmqError as exc:
        if exc.leader is not None:
            return ControllerAddress(*exc.leader), None
        return None, exc
    finally:
        await conn.close()
    ctl = body.get("controller") if isinstance(body, dict) else None
    if isinstance(ctl, list) and len(ctl) == 3 and ctl[0] >= 0:
        return ControllerAddress(int(ctl[0]), str(ctl[1]), int(ctl[2]),
                                 int(body.get("controller_term", -1))), None
    return None, None


def backoff_ms(attempt: int, initial_ms: int, max_ms: int, rng: random.Random) -> float:
    """Exponential backoff with full jitter in [base/2, base]."""
    base = min(max_ms, initial_ms * (1 << min(attempt, 20)))
    return base / 2 + rng.random() * base / 2


async def find_controller(addresses: list[tuple[str, int]], timeout_ms: int = 10_000, *,
                          probe_timeout_ms: int = 1000, initial_backoff_ms: int = 50,
                          max_backoff_ms: int = 1000, rng: random.Random | None = None,
                          client_id: str = "dmq-discovery", security: Any = None
                          ) -> ControllerAddress:
    """The active controller as named by the first node that knows it (asked over
    `security`'s TLS and SASL when given: see `connect_security`).

    Raises, after `timeout_ms`, `NetworkError` when no address could be reached at all
    (naming each one's cause, e.g. connection refused), else `NotControllerError`
    (nodes answered, none knew an active controller)."""
    rng = rng or random.Random()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_ms / 1000
    attempt = 0
    refused_rounds = 0
    while True:
        remaining_ms = int((deadline - loop.time()) * 1000)
        tasks = [asyncio.ensure_future(_probe(h, p, max(1, min(probe_timeout_ms, remaining_ms)),
                                              client_id, security)) for h, p in addresses]
        found: ControllerAddress | None = None
        try:
            for fut in asyncio.as_completed(tasks):
                result, _why = await fut
                if result is not None:
                    found = result
                    break
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if found is not None:
            return found
        refusals = [t.result()[1] for t in tasks if t.done() and not t.cancelled()]
        if len(refusals) == len(tasks) and all(w is not None and refused(w) for w in refusals):
            # every node refused this client: say so now, not after `timeout_ms` (a
            # plaintext refusal twice in a row: a node closing connections while it
            # stops looks the same once)
            refused_rounds += 1
            if refused_rounds >= 2 or all(w is not None and w.code in SASL_REFUSALS
                                          for w in refusals):
                first = refusals[0]
                assert first is not None
                causes = "; ".join(
                    w.message if w and w.message.startswith(f"{h}:{p}") else
                    f"{h}:{p}: {w.message if w else ''}"
                    for (h, p), w in zip(addresses, refusals, strict=True))
                raise error_for(first.code, causes, data=None if first.code in SASL_REFUSALS
                                else PLAINTEXT_REFUSED)
        else:
            refused_rounds = 0
        delay = backoff_ms(attempt, initial_backoff_ms, max_backoff_ms, rng) / 1000
        attempt += 1
        if loop.time() + delay >= deadline:
            whys = [t.result()[1] if t.done() and not t.cancelled() else None for t in tasks]
            causes = "; ".join(f"{h}:{p}: {why.message if why else 'no controller known'}"
                               for (h, p), why in zip(addresses, whys, strict=True))
            if whys and all(isinstance(why, NetworkError) for why in whys):
                raise NetworkError(f"cannot reach any node to find the active controller: "
                                   f"{causes}")
            raise NotControllerError(
                f"no active controller found via {', '.join(f'{h}:{p}' for h, p in addresses)} "
                f"within {timeout_ms} ms ({causes})")
        await asyncio.sleep(delay)


def _gave_up(api_key: ApiKey, timeout_ms: int, last: DmqError) -> DmqError:
    """The error of a request that ran out of time: the last error's code, naming the
    whole time spent and the last cause (not just the last attempt's share of it)."""
    return error_for(last.code, f"{api_key.name}: no answer in {timeout_ms} ms; last error: "
                                f"{last.message}", leader=last.leader, data=last.data)


class ControllerChannel:
    """Requests to the active controller, following it across failovers."""

    def __init__(self, addresses: list[tuple[str, int]], *, client_id: str = "dmq",
                 rng: random.Random | None = None, discovery_timeout_ms: int = 5000,
                 max_hops: int = 5, node_id: int | None = None,
                 watch_after_ms: int | None = None, watch_interval_ms: int = 250,
                 security: Any = None) -> None:
        self.addresses = list(addresses)
        self.security = security  # a client's TLS and SASL (see `connect_security`)
        self.client_id = client_id
        self.node_id = node_id  # a cluster node's channel identifies as that node
        self.rng = rng or random.Random()
        self.discovery_timeout_ms = discovery_timeout_ms
        self.max_hops = max_hops
        self.watch_after_ms = watch_after_ms
        self.watch_interval_ms = watch_interval_ms
        self.controller: ControllerAddress | None = None
        self._conn: Connection | None = None
        self._closing: set[asyncio.Task[None]] = set()  # dropped connections closing
        self._lock = asyncio.Lock()
        # resolved by set_controller: waits it cuts short (discovery, retry backoff)
        self._told: set[asyncio.Future[None]] = set()

    def set_controller(self, ctl: ControllerAddress) -> None:
        """Switch to a controller learnt elsewhere (a ControllerChanged notice)."""
        if self.controller != ctl:
            if self.controller is None or (ctl.node_id, ctl.host, ctl.port) != (
                    self.controller.node_id, self.controller.host, self.controller.port):
                self._drop()
            self.controller = ctl
            for fut in self._told:
                if not fut.done():
                    fut.set_result(None)

    def maybe_switch(self, ctl: ControllerAddress) -> bool:
        """Switch to `ctl`, named by some node as the active controller, when it is
        another node than the current one and its term is not older (an unknown term,
        -1, counts as not older). True when switched."""
        cur = self.controller
        if cur is None or ctl.node_id == cur.node_id:
            return False
        if cur.term >= 0 and 0 <= ctl.term < cur.term:
            return False  # a lagging node naming an earlier controller
        log.info("active controller moved from %d (term %d) to %d (term %d)", cur.node_id,
                 cur.term, ctl.node_id, ctl.term)
        self.set_controller(ctl)
        return True

    async def _watch(self, req: asyncio.Future[Any], target: ControllerAddress,
                     deadline: float) -> bool:
        """While `req` waits on `target`, ask every address who the controller is (each
        on its own, every `watch_interval_ms`, so a paused node delays no other); True
        as soon as one names a newer controller (the channel has switched to it), False
        when `req` finished first or the deadline passed."""
        loop = asyncio.get_running_loop()
        switched: asyncio.Future[bool] = loop.create_future()

        async def watch_one(host: str, port: int) -> None:
            while not switched.done() and self.controller == target:
                remaining_ms = int((deadline - loop.time()) * 1000)
                if remaining_ms <= 0:
                    return
                found, _why = await _probe(host, port, max(1, min(1000, remaining_ms)),
                                           self.client_id, self.security)
                if found is not None and self.controller == target and \
                        self.maybe_switch(found):
                    switched.set_result(True)
                    return
                await asyncio.sleep(self.watch_interval_ms / 1000)

        tasks = [asyncio.ensure_future(watch_one(h, p)) for h, p in self.addresses]
        try:
            await asyncio.wait([req, switched], timeout=max(0.0, deadline - loop.time()),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return switched.done() and not req.done()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            task = asyncio.ensure_future(conn.close())  # bounded: Connection.close
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def invalidate(self) -> None:
        self._drop()
        self.controller = None

    async def _connection(self, timeout_ms: int) -> Connection:
        async with self._lock:
            if self._conn is not None and not self._conn.closed:
                return self._conn
            if self.controller is None:
                self.controller = await self._discover(timeout_ms)
            ctl = self.controller
            try:
                self._conn = await Connection.open(ctl.host, ctl.port, client_id=self.client_id,
                                                   connect_timeout_ms=min(timeout_ms, 2000),
                                                   node_id=self.node_id,
                                                   **connect_security(self.security))
            except DmqError:
                self.controller = None
                raise
            return self._conn

    async def _discover(self, timeout_ms: int) -> ControllerAddress:
        """`find_controller`, cut short when `set_controller` names the controller
        meanwhile (a new controller's ControllerChanged notice comes while discovery is
        backing off between rounds of probes that found none)."""
        find = asyncio.ensure_future(find_controller(
            self.addresses, min(timeout_ms, self.discovery_timeout_ms), rng=self.rng,
            client_id=self.client_id, security=self.security))
        told = self._told_future()
        either: list[asyncio.Future[Any]] = [find, told]
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._told.discard(told)
            told.cancel()
            find.cancel()
            await asyncio.gather(find, return_exceptions=True)
        if told.done() and not told.cancelled() and self.controller is not None:
            return self.controller
        if find.cancelled():  # told, then invalidated again before we looked
            raise NotControllerError("controller discovery interrupted; retrying")
        return find.result()

    def _told_future(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._told.add(fut)
        return fut

    async def _backoff(self, delay_s: float) -> None:
        """Sleep `delay_s` before a retry, less if `set_controller` names a controller
        meanwhile: the retry then goes there at once."""
        told = self._told_future()
        try:
            await asyncio.wait([told], timeout=delay_s)
        finally:
            self._told.discard(told)
            told.cancel()

    async def request(self, api_key: ApiKey, body: Any, timeout_ms: int = 10_000) -> Any:
        """Send to the active controller; retry retriable errors until `timeout_ms`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        attempt = 0
        last: DmqError | None = None
        while True:
            remaining_ms = int((deadline - loop.time()) * 1000)
            if remaining_ms <= 0:
                if last is not None:
                    raise _gave_up(api_key, timeout_ms, last)
                raise RequestTimedOutError(f"{api_key.name}: no answer in {timeout_ms} ms")
            target = self.controller
            try:
                conn = await self._connection(remaining_ms)
                target = self.controller
                if self.watch_after_ms is None or target is None:
                    return await conn.request(api_key, body, timeout_ms=remaining_ms)
                req = asyncio.ensure_future(conn.request(api_key, body,
                                                         timeout_ms=remaining_ms))
                try:
                    done, _ = await asyncio.wait([req], timeout=self.watch_after_ms / 1000)
                    if not done and await self._watch(req, target, deadline):
                        log.info("%s re-sent to the new controller %d", api_key.name,
                                 self.controller.node_id if self.controller else -1)
                        attempt += 1
                        continue
                    return await req
                finally:
                    if not req.done():  # abandoned for a new controller, or cancelled
                        req.cancel()
                        await asyncio.gather(req, return_exceptions=True)
            except DmqError as exc:
                last = exc
                if exc.data == PLAINTEXT_REFUSED or exc.code in SASL_REFUSALS:
                    raise  # the client's security settings are wrong: no retry helps
                if self.controller is not None and self.controller != target:
                    continue  # switched to a new controller meanwhile: go there now
                if exc.code is ErrorCode.NOT_CONTROLLER and exc.leader is not None \
                        and attempt < self.max_hops:
                    ctl = ControllerAddress(*exc.leader)
                    if self.controller is None or ctl.node_id != self.controller.node_id:
                        self.set_controller(ctl)
                        attempt += 1
                        continue
                if isinstance(exc, NetworkError) or exc.code in (
                        ErrorCode.NOT_CONTROLLER, ErrorCode.REQUEST_TIMED_OUT):
                    self.invalidate()
                elif not exc.retriable:
                    raise
            delay = backoff_ms(attempt, 50, 1000, self.rng) / 1000
            attempt += 1
            if loop.time() + delay >= deadline:
                assert last is not None
                raise _gave_up(api_key, timeout_ms, last)
            await self._backoff(delay)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


__all__ = [
    "ControllerAddress",
    "ControllerChannel",
    "backoff_ms",
    "find_controller",
    "parse_bootstrap",
    "probe",
    "refused",
]
