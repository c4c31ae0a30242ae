"""What the security process tests share."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from dmq.client import Consumer, Producer, TopicPartition
from dmq.security.certs import CA
from dmq.security.scram import CredentialStore, make_credential
from tests.support.broker_wire import FAST


def tls_sasl_settings(root: Path, node_ids: tuple[int, ...], users: dict[str, str],
                      mechanism: str, **extra: Any) -> tuple[CA, dict[str, Any]]:
    """A CA under `root`/pki with a certificate per node, a credentials file of `users`
    (name -> password) for `mechanism`, and the cluster settings of TLS on every
    listener and link (client certificates requested: nodes prove themselves by theirs)
    with SASL on dmq's protocol port, plus `extra`."""
    ca = CA(root / "pki")
    for n in node_ids:
        ca.issue(f"node-{n}")
    users_file = root / "users.json"
    CredentialStore({u: {mechanism: make_credential(p, mechanism)}
                     for u, p in users.items()}).save(users_file)
    settings = {**FAST, "ssl.certificate.location": str(ca.dir / "node-{id}.pem"),
                "ssl.key.location": str(ca.dir / "node-{id}.key"),
                "ssl.ca.location": str(ca.cafile), "ssl.client.auth": "requested",
                "sasl.enabled.mechanisms": mechanism,
                "sasl.credentials.file": str(users_file), "sasl.protocol.listener": True,
                **extra}
    return ca, settings


async def produce_then_consume(bootstrap: str, topic: str, values: list[bytes]) -> list[bytes]:
    """Send `values` one by one (acks=all) to partition 0 of `topic`, then read that
    partition from the start until as many records came back; return what was read.
    Connections use the TLS and SASL defaults in force (`client_tls`, `client_sasl`)."""
    async with Producer(bootstrap, acks=-1, linger_ms=0) as p:
        for v in values:
            await p.send_and_wait(topic, v)
    async with Consumer(bootstrap, auto_offset_reset="earliest") as c:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        got: list[bytes] = []
        while len(got) < len(values):
            batch = await c.getmany(timeout_ms=10_000)
            assert batch, f"stalled after {len(got)} records"
            got += [r.value for r in batch[tp]]
    return got


def foreign_certificate(certs: Path, cn: str, other: CA) -> None:
    """Put a certificate for `cn` issued by `other` (another CA) in place of `cn`'s own
    in `certs` (`<cn>.pem` and `<cn>.key`, as `CA.issue` names them): the node keeps
    its name and its trust in the cluster's CA, but no node of the cluster trusts it."""
    cert, key = other.issue(cn)
    shutil.copyfile(cert, certs / f"{cn}.pem")
    shutil.copyfile(key, certs / f"{cn}.key")
