"""The benchmark suite works end to end: `benchmarks/run_all.py --smoke` starts real
dmq clusters, runs every dmq case with tiny counts and prints its table. Checks the
shape of the output and that the numbers are numbers; never how fast anything is."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests.support.procs import run_group

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NUMBER = re.compile(r"^[0-9][0-9,]*(\.[0-9]+)?$")


def test_run_all_smoke_prints_a_table_with_numbers() -> None:
    # every case but the Kafka-client ones (the next test runs those)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from kafka_perf import KAFKA_CASES
        from run_all import CASE_NAMES
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    cases = ",".join(c for c in CASE_NAMES if c not in KAFKA_CASES)
    proc = run_group([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--smoke",
                      "--only", cases], timeout=150, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "machine:" in out and "python " in out
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("case "))
    for col in ("system", "records/s", "MB/s", "p50 ms", "p99 ms", "dmq/peer"):
        assert col in lines[header]
    rows = {}
    for line in lines[header + 2:]:
        if not line.strip():
            break
        fields = line.split()
        rows.setdefault(fields[0], []).append(line)
    for case in ("produce-100B-acks1", "produce-100B-acksall", "produce-1KiB-acks1",
                 "consume-100B", "produce-100KiB-acks1", "e2e-10k/s-acksall",
                 "partitions-1", "partitions-10", "tls-produce-100B", "tls-produce-100KiB",
                 "tls-consume-100B", "tls-consume-100KiB"):
        assert case in rows, f"{case} missing from:\n{out}"
        dmq_row = next(r for r in rows[case] if " dmq " in f" {r} ")
        # fixed-width columns: case 24, system 30, records/s 12, MB/s 9
        records_s, mb_s = dmq_row[54:66].strip(), dmq_row[66:75].strip()
        assert NUMBER.match(records_s) and NUMBER.match(mb_s), dmq_row
        assert float(records_s.replace(",", "")) > 0, dmq_row
    # issue 19: plaintext and TLS side by side, the TLS row with its ratio to plaintext
    for case in ("tls-produce-100KiB", "tls-consume-100KiB"):
        plain, tls = rows[case]
        assert "plaintext" in plain and " tls " in f" {tls} ", rows[case]
        assert NUMBER.match(tls[103:113].strip()), tls  # dmq/peer: 10 wide after p99.9
    assert "issue 19 targets" in out
    rss = [r for c, rs in rows.items() if c.startswith("rss-") for r in rs]
    assert rss and all(re.search(r"RSS [0-9]+ MB", r) for r in rss), out
    assert "issue 11 targets" in out


def test_kafka_cases_smoke_produce_and_consume_through_the_kafka_listener() -> None:
    """The issue-17 cases: a librdkafka client (kcat if installed, else confluent-kafka)
    produces to and consumes from a 1-node cluster's Kafka listener; each run checks
    that the log grew by exactly the records sent and that every record came back."""
    proc = run_group([sys.executable, str(ROOT / "benchmarks" / "run_all.py"), "--smoke",
                      "--only", "kafka-100B-acks1,kafka-consume-100B"],
                     timeout=90, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("case "))
    rows = {line.split()[0]: line for line in lines[header + 2:] if " dmq " in line}
    for case, note in (("kafka-100B-acks1", "stored count checked"),
                       ("kafka-consume-100B", "count checked")):
        assert case in rows, f"{case} missing from:\n{out}"
        row = rows[case]
        records_s, mb_s = row[54:66].strip(), row[66:75].strip()
        assert NUMBER.match(records_s) and NUMBER.match(mb_s), row
        assert float(records_s.replace(",", "")) > 0, row
        assert re.search(r" [0-9]+\.[0-9]+\+[0-9]+\.[0-9]+ ", row), row  # cpu client+broker
        assert note in row, row
    assert "issue 17 targets" in out and "Kafka client, 100 B acks=1 RF=1" in out
