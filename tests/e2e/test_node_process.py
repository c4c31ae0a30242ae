"""A real `dmq server` process: answers ApiVersions, survives every kind of bad input
over real sockets, and exits 0 on SIGTERM."""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys

import msgpack
import pytest

from dmq.protocol.api import ApiKey
from dmq.protocol.codec import FrameDecoder, decode_response, encode_request
from dmq.protocol.errors import ErrorCode
from tests.support.procs import ProcessCluster, free_ports
from tests.support.raw_frames import api_versions_ok, roundtrip


def _error_code(out: bytes) -> tuple[int, int]:
    (frame,) = FrameDecoder().feed(out)
    cid, code, _ = decode_response(frame)
    return cid, code


@pytest.fixture
def node():
    with ProcessCluster(controllers=1, settings={"max.frame.bytes": 1 << 20}) as cluster:
        cluster.start()
        yield cluster


def test_node_survives_bad_input_and_exits_cleanly(node: ProcessCluster) -> None:
    port = node.nodes[1].port
    assert api_versions_ok(port)

    # a length prefix above the limit: connection closed
    assert roundtrip(port, struct.pack(">I", (1 << 20) + 1)) == b""
    # a length of 0: connection closed
    assert roundtrip(port, struct.pack(">I", 0)) == b""
    # bytes that are not msgpack: connection closed
    assert roundtrip(port, struct.pack(">I", 4) + b"\xc1\xc1\xc1\xc1") == b""
    # msgpack of the wrong shape, correlation id readable: error response
    payload = msgpack.packb([18, 0, 77, "t"])
    assert _error_code(roundtrip(port, struct.pack(">I", len(payload)) + payload)) == (
        77, ErrorCode.INVALID_REQUEST)
    # a body of the wrong type
    assert _error_code(roundtrip(port, encode_request(ApiKey.API_VERSIONS, 0, 5, "t", 12))) == (
        5, ErrorCode.INVALID_REQUEST)
    # an unknown API key
    assert _error_code(roundtrip(port, encode_request(4242, 0, 9, "t", {}))) == (
        9, ErrorCode.UNKNOWN_API_KEY)
    # an unsupported version
    assert _error_code(roundtrip(port, encode_request(ApiKey.API_VERSIONS, 99, 10, "t", {}))) == (
        10, ErrorCode.UNSUPPORTED_VERSION)
    # a frame cut off mid-way, then a disconnect
    frame = encode_request(ApiKey.API_VERSIONS, 0, 11, "t", {"client_software": "x" * 100})
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(frame[: len(frame) // 2])
    # 1000 connections opened and dropped
    for _ in range(1000):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
    assert api_versions_ok(port)
    assert node.nodes[1].alive

    node.signal(1, signal.SIGTERM)
    assert node.nodes[1].proc is not None
    assert node.nodes[1].proc.wait(timeout=15) == 0
    log = node.nodes[1].log_text()
    assert "protocol violation" in log and "unknown api key" in log
    assert "node 1 stopped" in log


def test_wrong_port_and_bad_config_fail_with_a_clear_message(tmp_path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[[controllers]]\nid = 1\nhost = "127.0.0.1"\nport = {port}\n')
    try:
        r = subprocess.run([sys.executable, "-m", "dmq", "server", "--role", "controller",
                            "--node-id", "1", "--config", str(cfg), "--data-dir",
                            str(tmp_path / "d")], capture_output=True, text=True, timeout=30)
        assert r.returncode == 1 and "cannot listen" in r.stderr
    finally:
        busy.close()
    r = subprocess.run([sys.executable, "-m", "dmq", "server", "--role", "broker", "--node-id",
                        "1", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "not listed among the brokers" in r.stderr
    r = subprocess.run([sys.executable, "-m", "dmq", "server", "--role", "controller",
                        "--node-id", "1", "--config", str(tmp_path / "nope.toml")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "cannot read config" in r.stderr


def test_seed_services_json_is_accepted(tmp_path) -> None:
    (port,) = free_ports(1)
    cfg = tmp_path / "services.json"
    cfg.write_text(f'{{"metadata-services": [{{"id": 1, "host": "127.0.0.1", "port": {port}}}],'
                   ' "storage-services": []}')
    proc = subprocess.Popen([sys.executable, "-m", "dmq", "server", "--role", "controller,broker",
                             "--node-id", "1", "--config", str(cfg), "--data-dir",
                             str(tmp_path / "d")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        from tests.support.procs import wait_port

        wait_port(port)
        assert api_versions_ok(port)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
