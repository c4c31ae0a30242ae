"""Shared pieces of the peer benchmarks: result rows, percentiles, temporary server
processes that are always stopped, and installing the peers when they are missing."""

from __future__ import annotations

import contextlib
import importlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Result:
    system: str
    case: str
    records: int
    record_bytes: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.records * self.record_bytes / self.seconds / 1e6 if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


def median_result(results: list[Result]) -> Result:
    """The run with the median throughput (so its latencies stay consistent)."""
    ordered = sorted(results, key=lambda r: r.records_per_s)
    return ordered[len(ordered) // 2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} not listening after {timeout_s}s")


def ensure_binary(name: str, apt_package: str) -> str:
    path = shutil.which(name) or shutil.which(f"/usr/sbin/{name}")
    if path is None:
        print(f"installing {apt_package} ...", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", apt_package], check=True,
                       stdout=subprocess.DEVNULL, timeout=600)
        path = shutil.which(name) or shutil.which(f"/usr/sbin/{name}")
    if path is None:
        raise RuntimeError(f"{name} not found after installing {apt_package}")
    return path


def ensure_module(module: str, pip_name: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError:
        print(f"installing {pip_name} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", pip_name], check=True,
                       timeout=600)


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def server_procs(commands: list[list[str]], ports: list[int], logdir: Path) -> Iterator[None]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, cmd in enumerate(commands):
            log = open(logdir / f"server-{i}.log", "wb")  # noqa: SIM115 - closed right away
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
            log.close()
        for port in ports:
            wait_port(port)
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def print_table(rows: list[Result], title: str) -> None:
    print(title)
    print(f"{'system':<26}{'case':<34}{'records/s':>12}{'MB/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for r in rows:
        print(f"{r.system:<26}{r.case:<34}{r.records_per_s:>12,.0f}{r.mb_per_s:>9.1f}"
              f"{r.pct(50):>9.2f}{r.pct(99):>9.2f}")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
