"""The link-fault mechanism itself: a cut link drops exactly the traffic of one node's
processes to another node's port, and healing restores it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.chaos.network import LinkFaults, available
from tests.support.procs import ProcessCluster

ok, why = available()
pytestmark = [pytest.mark.chaos, pytest.mark.skipif(not ok, reason=why)]

PROBE = """
import asyncio, sys
from dmq.protocol.connection import request_once
try:
    asyncio.run(request_once("127.0.0.1", int(sys.argv[1]), 18, {}, timeout_ms=700))
    print("ok")
except Exception as e:
    print(type(e).__name__)
"""


def probe_as(gid: int, port: int) -> str:
    import os

    def drop() -> None:
        os.setgroups([])
        os.setgid(gid)

    r = subprocess.run([sys.executable, "-c", PROBE, str(port)], capture_output=True,
                       text=True, preexec_fn=drop, timeout=30, check=False)
    return r.stdout.strip()


def test_cut_and_heal_links_between_node_groups() -> None:
    gids = {1: 41001, 2: 41002, 3: 41003}
    with ProcessCluster(controllers=3, node_gids=gids) as cluster:
        cluster.start()
        ports = {n: p.port for n, p in cluster.nodes.items()}
        faults = LinkFaults(gids, ports)
        try:
            assert probe_as(gids[1], ports[2]) == "ok"
            faults.cut(1, 2, both=False)
            assert probe_as(gids[1], ports[2]) != "ok"  # 1 -> 2 is cut
            assert probe_as(gids[2], ports[1]) == "ok"  # 2 -> 1 is not
            assert probe_as(gids[1], ports[3]) == "ok"
            faults.isolate(3)
            assert probe_as(gids[3], ports[1]) != "ok" and probe_as(gids[2], ports[3]) != "ok"
            faults.heal_all()
            assert probe_as(gids[1], ports[2]) == "ok" and probe_as(gids[3], ports[1]) == "ok"
        finally:
            faults.close()
