"""The long chaos run by hand: `python -m tests.chaos --duration 600 --seed 7`
(`--secure`: TLS, SASL SCRAM and ACLs on; `--kafka`: the confluent-kafka workload too).

Needs root (iptables owner rules cut links between nodes). Prints the summary (and, on
failure, the seed and a timeline); exits 1 when the checker found anomalies.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from tests.chaos.network import available
from tests.chaos.run import run_chaos


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    ap.add_argument("--duration", type=float, default=600, help="seconds of faults")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rate", type=float, default=150, help="records per second (total)")
    ap.add_argument("--secure", action="store_true",
                    help="TLS on every listener and link, SASL SCRAM, the ACL authorizer; "
                    "the workloads run as a non-superuser with only the ACLs they need")
    ap.add_argument("--kafka", action="store_true",
                    help="run the confluent-kafka workload too (through the Kafka listeners)")
    ap.add_argument("--timeline", action="store_true", help="print the timeline even when clean")
    args = ap.parse_args()
    ok, why = available()
    if not ok:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(run_chaos(args.seed, args.duration, rate_per_s=args.rate,
                                   kafka_workload=args.kafka, secure=args.secure))
    print(result.report(timeline_on_success=args.timeline))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
