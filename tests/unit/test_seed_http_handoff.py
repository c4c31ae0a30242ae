"""HTTP on the node's protocol port: the protocol server hands HTTP connections to the
node's aiohttp application (dmq/ops/http.py), which answers them with keep-alive,
caps how many it holds, and closes them on stop; frames on the same port are
unaffected. In one process, on an ephemeral loopback port."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from dmq.config import parse_config
from dmq.ops.http import HttpServer, http_handoff
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import Connection
from dmq.protocol.server import ProtocolServer


async def _hello(request: web.Request) -> web.Response:
    return web.json_response({"hello": request.path})


async def _start(max_connections: int = 256) -> tuple[ProtocolServer, HttpServer]:
    server = ProtocolServer(host="127.0.0.1", port=0, node_id=7)
    http = HttpServer("127.0.0.1", None, 7, render_metrics=lambda: b"",
                      readiness=lambda: (True, {}),
                      routes=[("GET", "/api/v1/hello", _hello)],
                      max_connections=max_connections)
    server.http_handoff = http.handoff
    await http.start()
    await server.start()
    return server, http


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
               path: str) -> tuple[bytes, bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    return head, await asyncio.wait_for(reader.readexactly(length), 5)


async def test_http_and_frames_share_the_port_with_keep_alive_and_a_cap() -> None:
    server, http = await _start(max_connections=2)
    held = []
    try:
        # two keep-alive connections, two requests each
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
            held.append((reader, writer))
            for _ in range(2):
                head, body = await _get(reader, writer, "/api/v1/hello")
                assert head.startswith(b"HTTP/1.1 200") and json.loads(body) == {
                    "hello": "/api/v1/hello"}
        assert server.connection_count == 0  # handed over: not the protocol server's
        # a third is refused with a reason while two are held
        reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503")
        assert b"too many HTTP connections to this node (limit 2)" in answer
        assert http.refused_connections == 1
        # frames on the very same port
        conn = await Connection.open("127.0.0.1", server.bound_port)
        try:
            versions = await conn.request(ApiKey.API_VERSIONS, {})
            assert versions["apis"]
        finally:
            await conn.close()
        # stop closes the connections it was handed
        await http.stop()
        for reader, _ in held:
            assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        for _, writer in held:
            writer.close()
        await http.stop()
        await server.close(100)


async def test_http_before_start_or_after_stop_is_closed_not_decoded_as_frames() -> None:
    server = ProtocolServer(host="127.0.0.1", port=0, node_id=7)
    http = HttpServer("127.0.0.1", None, 7, render_metrics=lambda: b"",
                      readiness=lambda: (True, {}))
    server.http_handoff = http.handoff
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.bound_port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        assert server.stats_violations == 0
    finally:
        await server.close(100)


def test_the_handoff_is_off_when_asked_or_when_frames_could_look_like_http() -> None:
    http = HttpServer("127.0.0.1", None, 7, render_metrics=lambda: b"",
                      readiness=lambda: (True, {}))
    base = {"controllers": [{"id": 1, "port": 9091}]}
    assert http_handoff(parse_config(base), http) == http.handoff
    off = parse_config({**base, "settings": {"http.on.node.port": False}})
    assert http_handoff(off, http) is None
    huge = parse_config({**base, "settings": {"max.frame.bytes": 0x44454C45}})  # "DELE"
    assert http_handoff(huge, http) is None
