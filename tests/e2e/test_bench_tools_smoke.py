"""The protocol and Raft benchmarks run end to end (tiny counts). Speed is not checked
here; benchmarks report figures, tests only prove the tools work."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(script: str, *args: str) -> str:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                       capture_output=True, text=True, timeout=240, cwd=ROOT, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_protocol_bench_quick() -> None:
    out = run("protocol_bench.py", "--quick", "--runs", "1")
    assert re.search(r"64 in flight\s+[\d,]+\s+[\d,]+\s+[\d.]+", out), out


def test_raft_bench_quick() -> None:
    out = run("raft_bench.py", "--quick")
    assert re.search(r"100 in flight:\s+[\d,]+", out), out
    assert re.search(r"kill -9 leader -> new leader commits \(2 trials\): median \d+ ms", out), out


def test_tls_transport_bench_quick() -> None:
    out = run("tls_transport_bench.py", "--mb", "4", "--rounds", "1")
    for mode in ("plaintext", "sslproto", "sslsocket"):
        assert re.search(rf"^{mode}\s+[\d.]+\s+[\d.]+$", out, re.M), out
