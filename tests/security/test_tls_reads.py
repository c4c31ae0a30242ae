"""TLS connections of dmq's protocol read as buffered protocols: the TLS layer decrypts
into one reused buffer (the listener's, shared by its connections; one per client
connection) instead of a bytes object per TLS record; and they write a large frame in
pieces of at most 256 KiB (`tls_pieces`). Frames of every size, split over reads and
TLS records, arrive intact on two connections at once, and one connection's bytes
never show up in another's."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st

from dmq.protocol import connection as connection_module
from dmq.protocol import server as server_module
from dmq.protocol.api import ApiKey
from dmq.protocol.codec import tls_pieces
from dmq.protocol.connection import Connection
from dmq.protocol.server import ProtocolServer, RequestContext
from dmq.security.certs import CA
from dmq.security.tls import TlsSettings, client_context

SIZES = (1, 100, 16 * 1024 - 7, 16 * 1024 + 3, 100 * 1024, 256 * 1024 + 1, 1024 * 1024,
         3 * 1024 * 1024 + 5)


LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}  # nodes run on uvloop


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_frames_of_every_size_cross_tls_intact_through_the_reused_buffers(
        tmp_path: Path, loop: str) -> None:
    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(asyncio.wait_for(_round_trips(tmp_path), 60))


async def _round_trips(tmp_path: Path) -> None:
    ca = CA(tmp_path)
    ca.issue("node-1")
    tls = TlsSettings(str(tmp_path / "node-1.pem"), str(tmp_path / "node-1.key"),
                      str(ca.cafile))
    server = ProtocolServer(host="127.0.0.1", port=0, node_id=1)
    server.ssl = tls.server_context()

    async def echo(ctx: RequestContext, body: Any) -> Any:
        return {"echo": body["v"], "n": len(body["v"])}

    server.register(ApiKey.METADATA, echo)
    await server.start()
    ctx = client_context(str(ca.cafile), check_hostname=False)
    conns = [await Connection.open("127.0.0.1", server.bound_port, ssl=ctx) for _ in range(2)]
    try:
        async def one(c: Connection, tag: int, size: int) -> None:
            value = bytes([tag]) * 8 + os.urandom(size)
            answer = await c.request(ApiKey.METADATA, {"v": value})
            assert answer["n"] == len(value) and answer["echo"] == value

        # the two connections pipeline frames of every size at once, each its own bytes
        await asyncio.gather(*(one(c, i, size) for _ in range(3) for i, c in enumerate(conns)
                               for size in SIZES))
        # both ends of a TLS connection read through the buffered protocols
        for c in conns:
            assert c._transport is not None
            assert isinstance(c._transport.get_protocol(), connection_module._TlsClientProtocol)
        assert len(server._connections) == 2
        for sc in server._connections:
            assert sc.transport is not None
            assert isinstance(sc.transport.get_protocol(), server_module._TlsConnection)
    finally:
        for c in conns:
            await c.close()
        await server.close()


async def test_a_plaintext_listener_keeps_the_plain_protocol() -> None:
    server = ProtocolServer(host="127.0.0.1", port=0, node_id=1)
    await server.start()
    conn = await Connection.open("127.0.0.1", server.bound_port)
    try:
        assert (await conn.request(ApiKey.API_VERSIONS, {}))["node_id"] == 1
        assert conn._transport is not None
        assert type(conn._transport.get_protocol()) is connection_module._ClientProtocol
        (sc,) = server._connections
        assert type(sc.transport.get_protocol()) is server_module._PlainConnection  # type: ignore[union-attr]
    finally:
        await conn.close()
        await server.close()


@given(st.lists(st.integers(0, 3000), max_size=12), st.integers(1, 700),
       st.booleans())
def test_tls_pieces_regroup_without_copying(sizes: list[int], piece: int,
                                            views: bool) -> None:
    parts: list[bytes | memoryview] = []
    for i, n in enumerate(sizes):
        b = bytes([i % 256]) * n
        parts.append(memoryview(b) if views else b)
    groups = tls_pieces(parts, piece)
    flat = [p for g in groups for p in g]
    assert b"".join(flat) == b"".join(parts)
    totals = [sum(memoryview(p).nbytes for p in g) for g in groups]
    assert all(t == piece for t in totals[:-1]) and (not totals or 0 <= totals[-1] <= piece)
    # a buffer that had to be cut is passed on as views of itself
    originals = {id(p.obj if isinstance(p, memoryview) else p) for p in parts}
    for p in flat:
        if isinstance(p, memoryview):
            assert id(p.obj) in originals
