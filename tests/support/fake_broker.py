"""A broker as the controller sees it, without logs: its lifecycle (registration,
heartbeats, image) and a protocol server taking ControllerChanged notices."""

from __future__ import annotations

import time
from typing import Any

from dmq.broker.lifecycle import BrokerLifecycle
from dmq.config import ClusterConfig
from dmq.metadata.image import MetadataImage
from dmq.protocol.api import ApiKey
from dmq.protocol.server import ProtocolServer


class FakeBroker:
    """A broker's lifecycle plus a server that takes ControllerChanged notices."""

    def __init__(self, config: ClusterConfig, broker_id: int) -> None:
        addr = config.node(broker_id)
        assert addr is not None
        self.config = config
        self.broker_id = broker_id
        self.images: list[tuple[float, MetadataImage]] = []
        self.server = ProtocolServer(host=addr.host, port=addr.port, node_id=broker_id)
        self.lifecycle = self._new_lifecycle()
        self.server.register(ApiKey.CONTROLLER_CHANGED, self._changed)

    def _new_lifecycle(self) -> BrokerLifecycle:
        addr = self.config.node(self.broker_id)
        assert addr is not None
        return BrokerLifecycle(self.config, self.broker_id, addr.host, addr.port, None,
                               on_image=lambda img: self.images.append((time.monotonic(), img)))

    async def _changed(self, ctx: Any, body: Any) -> Any:
        return self.lifecycle.handle_controller_changed(body)

    async def start(self) -> None:
        await self.server.start()
        await self.lifecycle.start()

    async def kill(self) -> None:
        """Stop heartbeating without a controlled shutdown (like kill -9)."""
        await self.lifecycle.stop()
        await self.server.close(100)

    async def restart(self) -> None:
        self.lifecycle = self._new_lifecycle()
        await self.start()
