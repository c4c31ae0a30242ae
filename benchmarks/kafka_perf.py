"""Kafka-client cases of the suite (issue 17): dmq brokers' Kafka listener driven by
librdkafka, side by side with Redis Streams driven by its own C client.

    .venv/bin/python benchmarks/kafka_perf.py            # = run_all.py --only <the kafka cases>
    .venv/bin/python benchmarks/kafka_perf.py --quick --runs 5 --kafka-driver confluent

The drivers (the fastest librdkafka paths here, measured: see benchmarks/README.md):
  kcat        `kcat -P -l FILE` (librdkafka 2.0) reads a prepared file of N lines of
              100 B and produces each line as one record (-z none, linger.ms 5,
              batch.size 1 MB); `kcat -C -e -c N` consumes from offset 0 into a file
              whose size is checked. Default when kcat is installed.
  confluent   confluent-kafka's Producer, `produce()` + `poll(0)` in a tight loop, then
              `flush()`; Consumer.consume(num_messages=10000) from offset 0.
Times are wall clock from the start of the client to its end (connection and metadata
included). Every produce run is checked: the partition's end offset must have moved by
exactly N. CPU per record is read from /proc for the dmq node processes and for
redis-server, and from the rusage of the reaped client process (kcat,
redis-benchmark), or this process's own CPU time for the confluent driver. The note of
each dmq row also gives how long the node processes were runnable but waiting for a CPU
(schedstat), per second of the run: on a shared machine that, not the broker's own
CPU, is what moves records/s.

Redis: `redis-server` on 127.0.0.1 at a free port, no persistence (`--save ''
--appendonly no`), started and stopped here by PID; `redis-benchmark -P 1000 -c 1 -n N
XADD s * f <100 B>` (Debian redis-tools), and for reads `XRANGE s - + COUNT 1000` (one
request returns 1000 records; records/s = requests/s x 1000).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

KAFKA_CASES = ("kafka-100B-acks1", "kafka-100B-acksall", "kafka-consume-100B")
RECORD = 100
RUN_TIMEOUT_S = 120.0
# librdkafka stops fetching for fetch.queue.backoff.ms / fetch.error.backoff.ms (1 s /
# 500 ms) whenever its local queue passes queued.min.messages (100,000) or
# queued.max.messages.kbytes (64 MiB): with the defaults a fast reader of 100 B records
# spends most of its time in that backoff ("Fetch backoff for 1000ms: Local: Queue full").
FETCH_QUEUE = ("queued.min.messages=10000000", "queued.max.messages.kbytes=2097151")


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def pid_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pids_cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            total += pid_cpu_s(pid)
    return total


def pids_wait_s(pids: list[int]) -> float:
    """Seconds the processes' threads spent runnable but waiting for a CPU
    (/proc/PID/task/*/schedstat, second field; 0 where the kernel keeps no schedstats)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def driver_name(wanted: str) -> str:
    if wanted == "auto":
        return "kcat" if shutil.which("kcat") else "confluent"
    if wanted == "kcat" and not shutil.which("kcat"):
        raise RuntimeError("kcat not installed (Debian: apt-get install kcat)")
    return wanted


def records_file(folder: Path, n: int, size: int = RECORD) -> Path:
    """N lines of `size` bytes (the newline is the delimiter, not part of the record)."""
    path = folder / f"records-{n}-{size}.txt"
    if not path.exists() or path.stat().st_size != n * (size + 1):
        line = b"x" * size + b"\n"
        with open(path, "wb") as f:
            chunk = line * 10_000
            for _ in range(n // 10_000):
                f.write(chunk)
            f.write(line * (n % 10_000))
    return path


def _run_client(cmd: list[str], timeout_s: float, stdout: int | IO[Any] = subprocess.DEVNULL
                ) -> tuple[float, float]:
    """Run a client to its end: (wall seconds, its CPU seconds from rusage)."""
    c0 = children_cpu_s()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=stdout, stderr=subprocess.PIPE, timeout=timeout_s)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: "
                           f"{proc.stderr.decode(errors='replace')[-500:]}")
    return dt, children_cpu_s() - c0


def produce_once(driver: str, bootstrap: str, topic: str, n: int, acks: str, data: Path,
                 node_pids: list[int], timeout_s: float = RUN_TIMEOUT_S) -> dict[str, float]:
    """Produce N records of 100 B to partition 0 of `topic` through the Kafka listener."""
    b0, w0 = pids_cpu_s(node_pids), pids_wait_s(node_pids)
    if driver == "kcat":
        path = records_file(data, n)
        dt, client = _run_client(
            ["kcat", "-P", "-b", bootstrap, "-t", topic, "-p", "0", "-z", "none", "-l",
             "-X", f"acks={acks}", "-X", "linger.ms=5", "-X", "batch.size=1000000",
             "-X", "queue.buffering.max.messages=2000000",
             "-X", "queue.buffering.max.kbytes=2097151", str(path)], timeout_s)
    else:
        import confluent_kafka as ck

        p0 = time.process_time()
        t0 = time.perf_counter()
        producer = ck.Producer({"bootstrap.servers": bootstrap, "acks": acks,
                                "linger.ms": 5, "batch.size": 1_000_000,
                                "compression.type": "none",
                                "queue.buffering.max.messages": 2_000_000,
                                "queue.buffering.max.kbytes": 2_097_151})
        failed: list[str] = []

        def on_error(err: object, _msg: object) -> None:
            if err is not None and len(failed) < 5:
                failed.append(str(err))

        value = b"x" * RECORD
        produce, poll = producer.produce, producer.poll
        deadline = time.monotonic() + timeout_s
        for _ in range(n):
            try:
                produce(topic, value, partition=0, on_delivery=on_error)
            except BufferError:  # queue full: let librdkafka drain, then retry once
                while True:
                    poll(0.005)
                    try:
                        produce(topic, value, partition=0, on_delivery=on_error)
                        break
                    except BufferError:
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"not done within {timeout_s:.0f}s") from None
            poll(0)
        left = producer.flush(max(1.0, deadline - time.monotonic()))
        dt = time.perf_counter() - t0
        client = time.process_time() - p0
        if left or failed:
            raise RuntimeError(f"{left} records not delivered; errors: {failed}")
    nodes, wait = pids_cpu_s(node_pids) - b0, pids_wait_s(node_pids) - w0
    return {"records_s": n / dt, "mb_s": n * RECORD / dt / 1e6, "seconds": dt,
            "client_us": client / n * 1e6, "nodes_us": nodes / n * 1e6,
            "nodes_wait": wait / dt}


def consume_once(driver: str, bootstrap: str, topic: str, n: int, data: Path,
                 node_pids: list[int], timeout_s: float = RUN_TIMEOUT_S) -> dict[str, float]:
    """Read the first N records of partition 0 of `topic` (it holds at least N)."""
    b0, w0 = pids_cpu_s(node_pids), pids_wait_s(node_pids)
    if driver == "kcat":
        out = data / "consumed.txt"
        with open(out, "wb") as f:
            dt, client = _run_client(
                ["kcat", "-C", "-b", bootstrap, "-t", topic, "-p", "0", "-o", "beginning",
                 "-e", "-q", "-c", str(n), "-f", "%s\n", *(f"-X{x}" for x in FETCH_QUEUE)],
                timeout_s, stdout=f)
        got = out.stat().st_size // (RECORD + 1)
        out.unlink()
    else:
        import confluent_kafka as ck

        p0 = time.process_time()
        t0 = time.perf_counter()
        consumer = ck.Consumer({"bootstrap.servers": bootstrap, "group.id": "kafka-perf",
                                "enable.auto.commit": False, "fetch.max.bytes": 52_428_800,
                                "max.partition.fetch.bytes": 10_485_760,
                                **dict(x.split("=") for x in FETCH_QUEUE)})
        consumer.assign([ck.TopicPartition(topic, 0, 0)])
        got = 0
        deadline = time.monotonic() + timeout_s
        try:
            while got < n and time.monotonic() < deadline:
                for m in consumer.consume(num_messages=min(10_000, n - got), timeout=1.0):
                    if m.error() is None:
                        got += 1
        finally:
            consumer.close()
        dt = time.perf_counter() - t0
        client = time.process_time() - p0
    if got != n:
        raise RuntimeError(f"consumed {got} records, expected {n}")
    nodes, wait = pids_cpu_s(node_pids) - b0, pids_wait_s(node_pids) - w0
    return {"records_s": n / dt, "mb_s": n * RECORD / dt / 1e6, "seconds": dt,
            "client_us": client / n * 1e6, "nodes_us": nodes / n * 1e6,
            "nodes_wait": wait / dt}


# ---------------------------------------------------------------------------- redis


@contextlib.contextmanager
def redis_server(server: str, folder: Path) -> Iterator[tuple[int, int]]:
    """(port, pid) of a redis-server on 127.0.0.1 with no persistence; stopped by PID."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    log = open(folder / "redis.log", "wb")  # noqa: SIM115 - closed right away
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--dir",
                             str(folder), "--save", "", "--appendonly", "no",
                             "--protected-mode", "yes", "--daemonize", "no"],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: "
                                       f"{(folder / 'redis.log').read_text()[-500:]}") from None
                time.sleep(0.05)
        yield port, proc.pid
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def redis_call(port: int, *args: str) -> bytes:
    """One command over RESP on a fresh connection; its raw reply."""
    req = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(req.encode())
        return s.recv(4096)


def redis_cmd(bench: str, port: int, n: int, pipeline: int, *command: str) -> list[str]:
    return [bench, "-h", "127.0.0.1", "-p", str(port), "-P", str(pipeline), "-c", "1",
            "-n", str(n), "--csv", *command]


def redis_once(bench: str, port: int, server_pid: int, n: int, pipeline: int,
               command: list[str], per_request: int = 1,
               timeout_s: float = RUN_TIMEOUT_S) -> dict[str, float]:
    """One redis-benchmark run of N requests; records/s = requests/s x per_request."""
    if command[0].upper() == "XADD":
        redis_call(port, "DEL", command[1])  # every run starts from an empty stream
    b0 = pids_cpu_s([server_pid])
    buf = tempfile.TemporaryFile()
    dt, client = _run_client(redis_cmd(bench, port, n, pipeline, *command), timeout_s,
                             stdout=buf)
    buf.seek(0)
    rows = list(csv.DictReader(io.StringIO(buf.read().decode())))
    buf.close()
    if not rows:
        raise RuntimeError("redis-benchmark printed no result")
    rps = float(rows[-1]["rps"]) * per_request
    records = n * per_request
    server = pids_cpu_s([server_pid]) - b0
    return {"records_s": rps, "mb_s": rps * RECORD / 1e6, "seconds": dt,
            "p50": float(rows[-1].get("p50_latency_ms") or "nan"),
            "p99": float(rows[-1].get("p99_latency_ms") or "nan"),
            "client_us": client / records * 1e6, "nodes_us": server / records * 1e6}


def main(argv: list[str] | None = None) -> int:
    import run_all

    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--only" or a.startswith("--only=") for a in args):
        args += ["--only", ",".join(KAFKA_CASES)]
    return run_all.main(args)


if __name__ == "__main__":
    sys.exit(main())
