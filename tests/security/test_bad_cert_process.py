"""A node whose certificate comes from another CA cannot join a secure cluster (real
processes, set up as `dmq dev --secure` does: TLS on every listener and link, client
certificates requested, SASL SCRAM and the authorizer on). Controllers 1 and 2 and
brokers 101 and 102 hold certificates of the cluster's CA; controller 3 and broker 103
hold certificates of the right names from another CA (they still trust the cluster's).

Broker 103 never registers and controller 3 never joins the Raft quorum: every node
refuses their handshakes and they refuse the healthy nodes' certificate checks of
theirs. Both sides log each kind of attempt with its reason (the refusing node: the
certificate is not signed by its CA; the refused node: the listener wants a client
certificate signed by its CA; the Raft leader: the peer's certificate does not verify).
Meanwhile the healthy nodes keep serving: a topic replicated on 101 and 102 takes
writes and reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmq.cli.dev import ensure_topic, secure_setup
from dmq.protocol.api import ApiKey
from dmq.protocol.connection import request_once
from dmq.security.certs import CA
from dmq.security.tls import client_context
from tests.security.support import foreign_certificate, produce_then_consume
from tests.support.broker_wire import FAST, logs_on_failure
from tests.support.procs import ProcessCluster
from tests.support.waiting import async_wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

BAD_CONTROLLER, BAD_BROKER = 3, 103
# what each side says (dmq.security.tls, dmq.protocol.connection, dmq.raft.node,
# dmq.broker.lifecycle)
REFUSING = ("refused a connection: TLS handshake failed: unable to get local issuer "
            "certificate (client certificate missing or not signed by ssl.ca.location)")
REFUSED = "does the listener require a client certificate signed by its CA?"
UNVERIFIED = "failed: unable to get local issuer certificate"


async def test_nodes_with_a_certificate_of_another_ca_cannot_join(tmp_path: Path) -> None:
    root = tmp_path / "cluster"
    sec = secure_setup(root / "security", [1, 2, 3, 101, 102, 103], "127.0.0.1")
    other = CA(tmp_path / "other-ca", name="other-ca")
    for node_id in (BAD_CONTROLLER, BAD_BROKER):
        foreign_certificate(sec.cafile.parent, f"node-{node_id}", other)
    with ProcessCluster(controllers=3, brokers=3, settings={**FAST, **sec.settings},
                        root=root) as pc:
        pc.start()
        healthy = [1, 2, 101, 102]
        bootstrap = ",".join(f"127.0.0.1:{pc.nodes[n].port}" for n in healthy)
        logs = {n: pc.nodes[n].log_text for n in pc.nodes}
        with logs_on_failure(pc), sec.client.applied():
            await ensure_topic(bootstrap, "served", 1, 2, 60)  # on 101 and 102
            leader = (await request_once("127.0.0.1", pc.nodes[1].port,
                                         ApiKey.RAFT_STATUS, {}))["leader_id"]
            assert leader in (1, 2)

            # both sides of each refused link say why, more than once for the broker
            def said() -> bool:
                return (all(REFUSING in logs[n]() for n in (1, 2))
                        and logs[BAD_BROKER]().count(
                            f"broker={BAD_BROKER} registration failed") >= 2
                        and REFUSED in logs[BAD_BROKER]()
                        and all(f"node={BAD_CONTROLLER} cannot reach raft peer {n}: "
                                f"refused:" in logs[BAD_CONTROLLER]() for n in (1, 2))
                        and REFUSED in logs[BAD_CONTROLLER]()
                        and f"node={leader} cannot reach raft peer {BAD_CONTROLLER}: "
                            f"refused: [NETWORK_EXCEPTION] TLS handshake with 127.0.0.1:"
                            f"{pc.nodes[BAD_CONTROLLER].port} {UNVERIFIED}" in logs[leader]())

            await async_wait_until(said, 30, "the refusals logged on both sides",
                                   interval_s=0.2)

            # meanwhile the healthy nodes serve
            values = [b"v%d" % i for i in range(20)]
            assert await produce_then_consume(bootstrap, "served", values) == values

            # 103 never registered; 3 never got a Raft entry (the leader's view, and 3's)
            cluster = await request_once("127.0.0.1", pc.nodes[leader].port,
                                         ApiKey.DESCRIBE_CLUSTER, {})
            assert sorted(b["broker_id"] for b in cluster["brokers"]) == [101, 102]
            raft = await request_once("127.0.0.1", pc.nodes[leader].port,
                                      ApiKey.RAFT_STATUS, {})
            assert raft["role"] == "LEADER" and raft["commit_index"] > 0
            assert raft["peers"][BAD_CONTROLLER] == 0, raft
            # (only a client trusting the other CA can talk to 3)
            own = await request_once("127.0.0.1", pc.nodes[BAD_CONTROLLER].port,
                                     ApiKey.RAFT_STATUS, {},
                                     ssl=client_context(str(other.cafile)))
            assert own["commit_index"] == 0 and own["leader_id"] in (0, None), own
            assert own["role"] != "LEADER", own
        # refused, not crashed
        assert all(n.alive for n in pc.nodes.values()), pc.dump_logs()
