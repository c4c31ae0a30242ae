"""Shared pieces of the Kafka-client tests: a real cluster whose brokers run Kafka
listeners on free ports (`kafka.port = 0`, the ports read from each node's log line),
and a raw Kafka connection that puts exactly the bytes of a test on the wire."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from dmq.cli.dev import probe_port_range
from dmq.kafka.codec import decode_response, encode_request
from tests.support.procs import ProcessCluster
from tests.support.waiting import wait_until

T = TypeVar("T")
_LISTENER = re.compile(r"node (\d+): Kafka listener on [\d.]+:(\d+)")

needs_kcat = pytest.mark.skipif(shutil.which("kcat") is None,
                                reason="kcat is not installed (Debian package kcat; "
                                       ".ci/run installs it when run as root)")


def kafka_ports(pc: ProcessCluster, timeout_s: float = 20.0) -> dict[int, int]:
    """node id -> Kafka port of every broker node, from their logs."""
    want = set(pc.broker_ids)
    found: dict[int, int] = {}

    def listening() -> dict[int, int] | None:
        found.clear()
        for nid in want:
            for m in _LISTENER.finditer(pc.nodes[nid].log_text()):
                found[int(m.group(1))] = int(m.group(2))
        return dict(found) if set(found) == want else None

    return wait_until(listening, timeout_s,
                      lambda: f"Kafka listeners up: {found}\n{pc.dump_logs()}")


def wait_metadata_brokers(port: int, count: int, timeout_s: float = 20.0) -> dict[str, Any]:
    """Wait until a Kafka Metadata answer names `count` brokers; return it."""
    def answer() -> dict[str, Any] | None:
        with KafkaConn(port) as conn:
            body: dict[str, Any] = conn.request("Metadata", 12, {"Topics": None})
        return body if len(body["Brokers"]) == count else None

    return wait_until(answer, timeout_s, f"Metadata naming {count} brokers", interval_s=0.1,
                      ignore=(OSError,))


@contextmanager
def kafka_cluster(controllers: int = 1, brokers: int = 0, combined: bool = False,
                  settings: dict[str, Any] | None = None
                  ) -> Iterator[tuple[ProcessCluster, dict[int, int]]]:
    """A started cluster whose brokers run Kafka listeners: (cluster, node id -> Kafka
    port), once a Kafka Metadata answer names every broker."""
    with ProcessCluster(controllers=controllers, brokers=brokers, combined=combined,
                        settings={"kafka.port": 0, **(settings or {})}) as pc:
        pc.start()
        ports = kafka_ports(pc)
        wait_metadata_brokers(next(iter(ports.values())), len(ports))
        yield pc, ports


def consume_partition(port: int, topic: str, count: int, convert: Callable[[Any], T],
                      timeout_s: float = 30.0) -> list[T]:
    """`convert` of each record of partition 0 of `topic` from offset 0, read by a
    confluent-kafka consumer (no group) until `count` arrived or `timeout_s` passed."""
    import confluent_kafka as ck

    consumer = ck.Consumer({"bootstrap.servers": f"127.0.0.1:{port}", "group.id": "unused",
                            "enable.auto.commit": False})
    consumer.assign([ck.TopicPartition(topic, 0, 0)])
    got: list[T] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None:
                assert msg.error() is None, msg.error()
                got.append(convert(msg))
    finally:
        consumer.close()
    return got


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


def free_block(offsets: tuple[int, ...]) -> int:
    """A base port such that base + each offset is free right now (for `dmq dev`, whose
    layout is fixed offsets from its base port)."""
    rng = random.Random()
    low, high = probe_port_range()
    for _ in range(100):
        base = rng.randrange(low, high - max(offsets))
        try:
            for off in offsets:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", base + off))
            return base
        except OSError:
            continue
    raise AssertionError("no free port block")


def start_dev(tmp_path: Path, base: int, brokers: int, timeout_s: float = 60.0,
              extra: tuple[str, ...] = ()) -> tuple[subprocess.Popen[str], list[str]]:
    """`dmq dev` (with `extra` options) with one controller and `brokers` brokers from
    `base`; returns the process and the lines it printed up to "Ctrl-C stops"."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dmq", "dev", "--controllers", "1", "--brokers", str(brokers),
         "--base-port", str(base), "--quiet", "--data-dir", str(tmp_path / "dev"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("Ctrl-C stops"):
            break
    return proc, lines


def stop_dev(proc: subprocess.Popen[str]) -> None:
    """Kill `dmq dev` and its nodes (its own process group: started in a new session).
    Its graceful Ctrl-C path is tested elsewhere; here it would only cost seconds."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=10)
