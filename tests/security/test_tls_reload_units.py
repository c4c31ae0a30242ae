"""CertificateReloader without a node: it loads changed files into every live context,
refuses files that do not load, and loads again at the next check when a live context
failed after the scratch load (the files changed once more in between)."""

from __future__ import annotations

import os
import shutil
import ssl
from pathlib import Path
from typing import Any

from dmq.security.certs import CA
from dmq.security.tls import CertificateReloader, TlsSettings


class Context:
    """Records the loads; fails the next `fail` certificate loads."""

    def __init__(self, fail: int = 0) -> None:
        self.loaded: list[tuple[str, str]] = []
        self.fail = fail

    def load_verify_locations(self, cafile: str) -> None:
        pass

    def load_cert_chain(self, certfile: str, keyfile: str) -> None:
        if self.fail:
            self.fail -= 1
            raise ssl.SSLError("the key changed under the load")
        self.loaded.append((certfile, keyfile))


def _renew(ca: CA, live: tuple[Path, Path], cn: str) -> None:
    new = ca.issue(cn)
    for src, dst in zip(new, live, strict=True):
        shutil.copyfile(src, dst.with_suffix(".tmp"))
        os.replace(dst.with_suffix(".tmp"), dst)


def test_changed_files_reach_every_context_and_a_failed_live_load_is_retried(
        tmp_path: Path) -> None:
    ca = CA(tmp_path)
    live = ca.issue("node-1")
    settings = TlsSettings(str(live[0]), str(live[1]), str(ca.cafile))
    server, client = Context(), Context(fail=1)
    contexts: Any = (server, client)
    r = CertificateReloader(settings, contexts)
    assert r.check() is None  # nothing changed

    _renew(ca, live, "node-1-b")
    assert r.check() is False  # the client context failed after the scratch load
    assert r.check() is True  # no file changed since, and still loaded again
    assert client.loaded == [(str(live[0]), str(live[1]))]
    assert r.check() is None

    live[1].write_text("not a key")
    assert r.check() is False  # refused by the scratch load: no context touched
    assert len(server.loaded) == 2 and len(client.loaded) == 1
    assert r.refusals == 2 and r.reloads == 1
