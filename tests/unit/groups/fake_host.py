"""A fake controller for group tests: one always-active node whose proposals apply
at once, served by a real ProtocolServer on an ephemeral port."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from dmq.clock import SystemClock
from dmq.config import SETTINGS
from dmq.controller.group_service import GroupService, register_group_handlers
from dmq.metadata.records import CreateTopic, records_to_wire
from dmq.metadata.state import MetadataState
from dmq.protocol.api import ApiKey
from dmq.protocol.errors import DmqError, NotControllerError
from dmq.protocol.server import ProtocolServer


@dataclass(frozen=True)
class Heartbeat:
    """A ConsumerGroupHeartbeat the fake controller answered: the coordinator's term
    then, the request and the answer (or the error it raised)."""

    term: int | None
    request: dict[str, Any]
    answer: dict[str, Any] | None
    error: DmqError | None = None


class FakeHost:
    def __init__(self, topics: dict[str, int] | None = None, **settings: Any) -> None:
        self.clock = SystemClock()
        self.heartbeats: list[Heartbeat] = []  # answered by `start_fake_controller`'s server
        # added to the member epoch of the next heartbeat that arrives (a member whose
        # epoch went wrong, without racing the member's own update from an answer)
        self.skew_next_epoch = 0
        self.state = MetadataState()
        self.term: int | None = 1
        self.index = 0
        self.proposals: list[list[Any]] = []
        self.settings = {k.replace("_", "."): v for k, v in settings.items()}
        for name, count in (topics or {"t": 6}).items():
            self.apply([CreateTopic(name, f"id-{name}", {}, tuple((101,) for _ in range(count)))])

    def apply(self, records: list[Any]) -> None:
        self.index += 1
        self.state.apply_entry(self.index, records_to_wire(records))

    def active_term(self) -> int | None:
        return self.term

    def not_active_error(self) -> Exception:
        return NotControllerError("not me", leader=(2, "127.0.0.1", 9))

    def setting(self, key: str) -> Any:
        return self.settings.get(key, SETTINGS[key].default)

    async def propose(self, records: list[Any]) -> None:
        await asyncio.sleep(0.005)  # a quorum round trip
        self.proposals.append(records)
        self.apply(records)


async def start_fake_controller(host: FakeHost) -> tuple[ProtocolServer, GroupService]:
    server = ProtocolServer(host="127.0.0.1", port=0, node_id=1)
    svc = register_group_handlers(server, host=host)

    def heartbeat(ctx: Any, body: dict[str, Any]) -> dict[str, Any]:
        if host.skew_next_epoch:
            body = {**body, "member_epoch": body["member_epoch"] + host.skew_next_epoch}
            host.skew_next_epoch = 0
        try:
            answer = svc.heartbeat(ctx, body)
        except DmqError as exc:
            host.heartbeats.append(Heartbeat(host.term, body, None, exc))
            raise
        host.heartbeats.append(Heartbeat(host.term, body, answer))
        return answer

    server._handlers[ApiKey.CONSUMER_GROUP_HEARTBEAT] = heartbeat  # noqa: SLF001

    def metadata(ctx: Any, body: Any) -> Any:
        return {"controller": [1, "127.0.0.1", server.bound_port], "controller_term": 1,
                "brokers": [], "topics": []}

    server.register(ApiKey.METADATA, metadata)
    await server.start()
    return server, svc
