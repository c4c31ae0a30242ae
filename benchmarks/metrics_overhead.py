"""Cost of Prometheus scraping under a full-speed produce load.

    python benchmarks/metrics_overhead.py [--records 300000] [--rounds 3]

Starts one combined-mode node with HTTP on, then runs `produce_perf.py` (100 B,
acks=1) alternately without and with a scraper that GETs /metrics every second, and
prints the median records/s of each and the ratio. Alternating (ABAB...) spreads the
machine's background noise over both sides.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def produce(bootstrap: str, topic: str, records: int) -> float:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "produce_perf.py"), "--bootstrap", bootstrap,
         "--topic", topic, "--num-records", str(records), "--record-size", "100", "--acks", "1",
         "--runs", "1"], capture_output=True, text=True, timeout=600, check=True).stdout
    rates = re.findall(r"([\d,]+(?:\.\d+)?) records/s", out) or re.findall(
        r"([\d,]+) rec/s", out)
    if not rates:
        raise RuntimeError(f"no rate in output:\n{out}")
    return float(rates[-1].replace(",", ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--records", type=int, default=300_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dmq-metrics-bench-"))
    port, http = _free_port(), _free_port()
    (root / "c.toml").write_text(f'[[controllers]]\nid = 1\nhost = "127.0.0.1"\nport = {port}\n')
    node = subprocess.Popen([sys.executable, "-m", "dmq", "server", "--role", "controller,broker",
                             "--node-id", "1", "--config", str(root / "c.toml"), "--data-dir",
                             str(root / "d"), "--http-port", str(http)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(f"http://127.0.0.1:{http}/readyz")
        bootstrap = f"127.0.0.1:{port}"
        produce(bootstrap, "warmup", 20_000)
        without, with_scrape = [], []
        scrapes = 0
        for i in range(args.rounds):
            without.append(produce(bootstrap, f"m{i}a", args.records))
            stop = threading.Event()

            def scraper(stop: threading.Event = stop) -> None:
                nonlocal scrapes
                while not stop.wait(1.0):
                    urllib.request.urlopen(f"http://127.0.0.1:{http}/metrics", timeout=5).read()
                    scrapes += 1

            t = threading.Thread(target=scraper)
            t.start()
            try:
                with_scrape.append(produce(bootstrap, f"m{i}b", args.records))
            finally:
                stop.set()
                t.join()
        a, b = statistics.median(without), statistics.median(with_scrape)
        print(f"produce 100 B acks=1, {args.records} records, medians of {args.rounds}")
        runs_a = ", ".join(f"{x:,.0f}" for x in without)
        runs_b = ", ".join(f"{x:,.0f}" for x in with_scrape)
        print(f"  without scraping: {a:,.0f} records/s  (runs {runs_a})")
        print(f"  scraping 1/s:     {b:,.0f} records/s  (runs {runs_b}; {scrapes} scrapes)")
        print(f"  ratio: {b / a:.3f}  (cost {100 * (1 - b / a):+.1f}%)")
    finally:
        node.terminate()
        try:
            node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
