"""`dmq dev` turns Kafka listeners on at base port + 20 and prints a kcat command that
works as printed."""

from __future__ import annotations

import random
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.kafka.support import needs_kcat

pytestmark = pytest.mark.slow


def _free_block() -> int:
    """A base port whose layout (controller at base, brokers at base+10.., Kafka at
    base+20..) is free right now."""
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(20000, 60000)
        try:
            for port in (base, base + 10, base + 11, base + 20, base + 21):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise AssertionError("no free port block")


@needs_kcat
def test_dev_prints_a_kcat_command_that_works(tmp_path: Path) -> None:
    base = _free_block()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dmq", "dev", "--controllers", "1", "--brokers", "2",
         "--base-port", str(base), "--quiet", "--data-dir", str(tmp_path / "dev")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Ctrl-C stops"):
                break
        kafka = [x for x in lines if x.startswith("Kafka clients:")]
        assert kafka, "".join(lines)
        assert kafka[0].split()[2] == f"127.0.0.1:{base + 20},127.0.0.1:{base + 21}"
        command = re.search(r"\(e\.g\. (kcat .*)\)", kafka[0])
        assert command is not None
        out = subprocess.run(shlex.split(command.group(1)), capture_output=True, text=True,
                             timeout=30, check=True).stdout
        assert " 2 brokers:" in out
        assert f"broker 101 at 127.0.0.1:{base + 20}" in out
        assert f"broker 102 at 127.0.0.1:{base + 21}" in out
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
