"""What each replica of a partition holds, read from real nodes' REST status."""

from __future__ import annotations

import json
import urllib.request

from tests.support.procs import ProcessCluster


def replica_log_starts(pc: ProcessCluster, topic: str, partition: int) -> list[int]:
    """The log start of each replica of the partition (sorted), from every broker's
    REST replication status (served on the node port)."""
    starts = []
    for nid in pc.broker_ids:
        url = f"http://127.0.0.1:{pc.nodes[nid].port}/api/v1/storage/replication/status"
        with urllib.request.urlopen(url, timeout=5) as res:
            rows = json.load(res)["partitions"]
        starts += [r["logStartOffset"] for r in rows
                   if r["topic"] == topic and r["partition"] == partition]
    return sorted(starts)
