"""Shared pieces of the Kafka-client tests: a real cluster whose brokers run Kafka
listeners on free ports (`kafka.port = 0`, the ports read from each node's log line),
and a raw Kafka connection that puts exactly the bytes of a test on the wire."""

from __future__ import annotations

import re
import shutil
import socket
import struct
import time
from typing import Any

import pytest

from dmq.kafka.codec import decode_response, encode_request
from tests.support.procs import ProcessCluster

_LISTENER = re.compile(r"node (\d+): Kafka listener on [\d.]+:(\d+)")

needs_kcat = pytest.mark.skipif(shutil.which("kcat") is None,
                                reason="kcat is not installed (Debian package kcat; "
                                       ".ci/run installs it when run as root)")


def kafka_ports(pc: ProcessCluster, timeout_s: float = 20.0) -> dict[int, int]:
    """node id -> Kafka port of every broker node, from their logs."""
    deadline = time.monotonic() + timeout_s
    want = set(pc.broker_ids)
    while True:
        found: dict[int, int] = {}
        for nid in want:
            for m in _LISTENER.finditer(pc.nodes[nid].log_text()):
                found[int(m.group(1))] = int(m.group(2))
        if set(found) == want:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"Kafka listeners not up: {found}\n{pc.dump_logs()}")
        time.sleep(0.05)


def wait_metadata_brokers(port: int, count: int, timeout_s: float = 20.0) -> dict[str, Any]:
    """Wait until a Kafka Metadata answer names `count` brokers; return it."""
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            with KafkaConn(port) as conn:
                body = conn.request("Metadata", 12, {"Topics": None})
            if len(body["Brokers"]) == count:
                return body
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"Metadata never named {count} brokers: {body}")


class KafkaConn:
    """One raw Kafka connection."""

    def __init__(self, port: int, timeout_s: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
        self.correlation_id = 0

    def __enter__(self) -> KafkaConn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, name: str, version: int, body: dict[str, Any]) -> int:
        self.correlation_id += 1
        self.sock.sendall(encode_request(name, version, self.correlation_id, "test", body))
        return self.correlation_id

    def read_frame(self) -> bytes | None:
        """The next answer without its size, or None when the broker closed."""
        head = self._exactly(4)
        if head is None:
            return None
        (n,) = struct.unpack(">i", head)
        return self._exactly(n)

    def _exactly(self, n: int) -> bytes | None:
        data = b""
        while len(data) < n:
            try:
                chunk = self.sock.recv(n - len(data))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def receive(self, name: str, version: int) -> tuple[int, dict[str, Any]]:
        frame = self.read_frame()
        assert frame is not None, "the broker closed the connection"
        return decode_response(name, version, frame)

    def request(self, name: str, version: int, body: dict[str, Any]) -> dict[str, Any]:
        cid = self.send(name, version, body)
        got, answer = self.receive(name, version)
        assert got == cid
        return answer

    def closed_by_peer(self) -> bool:
        """True once the broker closes the connection (reads until EOF or reset; the
        socket timeout bounds the wait)."""
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
