"""The protocol server's TLS listener in one process: a client that opens TCP to it
and never starts (or never finishes) the TLS handshake is closed after the handshake
timeout, without ever counting as a connection; a TLS client is served meanwhile."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from dmq.protocol import server as server_module
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import Connection
from dmq.protocol.server import ProtocolServer
from dmq.security.certs import CA
from dmq.security.tls import TlsSettings, client_context


async def _closed_within(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), timeout_s) == b""
    except ConnectionResetError:
        return True


async def test_a_client_that_never_does_the_handshake_is_closed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_module, "TLS_HANDSHAKE_TIMEOUT_S", 0.5)
    ca = CA(tmp_path)
    ca.issue("node-1")
    tls = TlsSettings(str(tmp_path / "node-1.pem"), str(tmp_path / "node-1.key"),
                      str(ca.cafile))
    server = ProtocolServer(host="127.0.0.1", port=0, node_id=1)
    server.ssl = tls.server_context()
    await server.start()
    opened: list[Any] = []
    try:
        silent_r, silent_w = await asyncio.open_connection("127.0.0.1", server.bound_port)
        opened.append(silent_w)
        # a half handshake: the first bytes of a ClientHello record, then nothing
        half_r, half_w = await asyncio.open_connection("127.0.0.1", server.bound_port)
        opened.append(half_w)
        half_w.write(b"\x16\x03\x01\x02\x00\x01")
        await half_w.drain()
        # a real TLS client is served while they hang
        good = await Connection.open("127.0.0.1", server.bound_port,
                                     ssl=client_context(str(ca.cafile), check_hostname=False))
        assert (await good.request(ApiKey.API_VERSIONS, {}))["node_id"] == 1
        assert server.connection_count == 1  # the handshaking ones are not counted
        assert await _closed_within(silent_r, 5)
        assert await _closed_within(half_r, 5)
        assert not good.closed
        await good.close()
    finally:
        for w in opened:
            w.close()
        await server.close()
