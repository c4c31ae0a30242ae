"""Certificate rotation without a restart, on a real `dmq server`: the node's
certificate is replaced on disk by one with another serial; after SIGHUP (and, on a
second node, after `ssl.reload.interval.ms` alone) new connections are served with the
new certificate while a connection opened before keeps working; files that do not load
are refused with one warning and the node keeps serving with what it had."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
from pathlib import Path

import pytest

from dmq.protocol.api import ApiKey
from dmq.protocol.connection import Connection
from dmq.security.certs import CA
from dmq.security.tls import client_context
from tests.support.broker_wire import FAST, logs_on_failure
from tests.support.procs import ProcessCluster
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def served_certificate(port: int, cafile: Path) -> bytes:
    """The DER certificate a new TLS connection to the port is served."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        cert = tls.getpeercert(binary_form=True)
    assert cert is not None
    return cert


def replace(src: tuple[Path, Path], dst: tuple[Path, Path]) -> None:
    """Put a new certificate and key in place the way a renewal should: written
    beside the old files, then renamed over them."""
    for new, old in zip(src, dst, strict=True):
        tmp = old.with_suffix(".tmp")
        shutil.copyfile(new, tmp)
        os.replace(tmp, old)


@pytest.mark.parametrize("trigger", ["sighup", "interval"])
async def test_a_renewed_certificate_is_served_to_new_connections(
        tmp_path: Path, trigger: str) -> None:
    ca = CA(tmp_path / "pki")
    live = ca.issue("node-1")
    settings = {**FAST, "ssl.certificate.location": str(live[0]),
                "ssl.key.location": str(live[1]), "ssl.ca.location": str(ca.cafile),
                # with "sighup" the timer is off: only the signal can reload
                "ssl.reload.interval.ms": 0 if trigger == "sighup" else 200}
    with ProcessCluster(controllers=1, combined=True, settings=settings) as pc:
        pc.start()
        node = pc.nodes[1]
        with logs_on_failure(pc):
            before = served_certificate(node.port, ca.cafile)
            old_conn = await Connection.open("127.0.0.1", node.port,
                                             ssl=client_context(str(ca.cafile)))
            try:
                await old_conn.request(ApiKey.API_VERSIONS, {})
                # a set that does not load: a key of another certificate
                stray = ca.issue("stray")
                shutil.copyfile(live[0], tmp_path / "keep.pem")
                replace((live[0], stray[1]), live)
                if trigger == "sighup":
                    pc.signal(1, signal.SIGHUP)
                wait_until(lambda: "were not loaded" in node.log_text(), 20,
                           "the refused files warned")
                assert served_certificate(node.port, ca.cafile) == before
                # a renewal: another certificate of the same name, its own key
                renewed = ca.issue("node-1-renewed")
                replace(renewed, live)
                if trigger == "sighup":
                    pc.signal(1, signal.SIGHUP)
                wait_until(lambda: served_certificate(node.port, ca.cafile) != before, 20,
                           "the renewed certificate served")
                assert served_certificate(node.port, ca.cafile) == \
                    ssl.PEM_cert_to_DER_cert(renewed[0].read_text())
                # the connection opened before goes on with what it agreed on
                await old_conn.request(ApiKey.API_VERSIONS, {})
            finally:
                await old_conn.close()
            assert "TLS: loaded certificate" in node.log_text()
            assert node.alive
