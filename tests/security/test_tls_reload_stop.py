"""`Node.stop()` while the TLS certificate reloader is at work (`CertificateReloader`,
run by the `ssl.reload.interval.ms` timer task and by SIGHUP): the stop ends cleanly,
with no error logged and no task left pending, and no reload is applied once the stop
has begun (a SIGHUP during or after it, a timer tick).

A node with the controller role alone, in this process with TLS on a free loopback
port (its start is what wires the reloader): about a second per test."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from dmq.config import parse_config
from dmq.node import Node, resolve_node
from dmq.security.certs import CA
from tests.support.procs import free_ports
from tests.support.waiting import until

pytestmark = pytest.mark.timeout(60)


def renew(ca: CA, live: tuple[Path, Path], cn: str) -> None:
    """New certificate and key files over the live ones, as a renewal writes them."""
    for src, dst in zip(ca.issue(cn), live, strict=True):
        shutil.copyfile(src, dst.with_suffix(".tmp"))
        os.replace(dst.with_suffix(".tmp"), dst)


class Problems:
    """Errors the loop reports (a task's exception never retrieved, a callback that
    raised) and ERROR records of any logger, while it is installed."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self.loop_errors: list[dict[str, Any]] = []
        self._caplog = caplog
        caplog.set_level(logging.INFO)

    def install(self) -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: self.loop_errors.append(context))

    def check(self) -> None:
        errors = [r.getMessage() for r in self._caplog.records if r.levelno >= logging.ERROR]
        assert errors == [] and self.loop_errors == []


@contextlib.asynccontextmanager
async def tls_node(tmp_path: Path, interval_ms: int) -> AsyncIterator[tuple[Node, CA,
                                                                          tuple[Path, Path]]]:
    ca = CA(tmp_path / "pki")
    live = ca.issue("node-1")
    (port,) = free_ports(1)
    config = parse_config({
        "controllers": [{"id": 1, "host": "127.0.0.1", "port": port}], "brokers": [],
        "settings": {"raft.tick.ms": 20, "ssl.certificate.location": str(live[0]),
                     "ssl.key.location": str(live[1]), "ssl.ca.location": str(ca.cafile),
                     "ssl.reload.interval.ms": interval_ms}})
    node = Node(config, resolve_node(config, 1, ("controller",), tmp_path / "n1"))
    await node.start()
    try:
        yield node, ca, live
    finally:
        if not node._stopped.is_set():  # (the test's own stop failed)
            await node.stop()


def pending_reload_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name() == "tls-reload" and not t.done()]


async def test_stop_requested_while_the_timer_loads_the_scratch_context_ends_cleanly(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The timer's check is loading renewed files into its scratch context when the
    stop is asked for: that load ends (it runs on the loop, nothing can cut into it),
    then the stop cancels the timer task at its sleep and awaits it."""
    problems = Problems(caplog)
    problems.install()
    async with tls_node(tmp_path, interval_ms=20) as (node, ca, live):
        reloader = node.tls_reloader
        task = node._tls_reload_task
        assert reloader is not None and task is not None and not task.done()
        loop = asyncio.get_running_loop()
        stopping: list[asyncio.Task[None]] = []
        real = ssl.create_default_context

        def scratch_load(*args: Any, **kwargs: Any) -> ssl.SSLContext:
            # the reloader's scratch context (the node makes no other context now)
            if not stopping and args and args[0] is ssl.Purpose.CLIENT_AUTH:
                stopping.append(loop.create_task(node.stop()))  # SIGTERM: the CLI's stop
            return real(*args, **kwargs)

        monkeypatch.setattr(ssl, "create_default_context", scratch_load)
        renew(ca, live, "node-1-renewed")
        await until(lambda: stopping, "the timer's check to load the renewed files")
        await asyncio.wait_for(stopping[0], 10)  # (a bound, not a timing assertion)
        monkeypatch.undo()

        assert task.cancelled()  # ended at its sleep by the stop, not by an error
        assert node._tls_reload_task is None and pending_reload_tasks() == []
        assert reloader.reloads == 1 and reloader.refusals == 0  # begun before the stop
        # renewed again after the stop: neither SIGHUP nor a timer tick loads them
        renew(ca, live, "node-1-after-stop")
        assert node.reload_tls() is None
        assert reloader.reloads == 1 and reloader.refusals == 0
    problems.check()


async def test_a_sighup_during_or_after_stop_applies_no_reload(
        tmp_path: Path, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGHUP is handled by the loop until it closes (`dmq server` installs
    `node.reload_tls` as its handler): one that arrives while the node stops (here while
    its listener closes), or after, must not load files into the contexts of a node
    going away."""
    problems = Problems(caplog)
    problems.install()
    loop = asyncio.get_running_loop()
    answers: list[bool | None] = []
    async with tls_node(tmp_path, interval_ms=60_000) as (node, ca, live):
        reloader = node.tls_reloader
        task = node._tls_reload_task
        assert reloader is not None and task is not None
        loop.add_signal_handler(signal.SIGHUP, lambda: answers.append(node.reload_tls()))
        try:
            renew(ca, live, "node-1-renewed")
            os.kill(os.getpid(), signal.SIGHUP)  # while running: loaded
            await until(lambda: answers, "the SIGHUP to be handled")
            assert answers == [True] and reloader.reloads == 1

            real_close = node.server.close

            async def close_with_sighup(grace_ms: int = 5000) -> None:
                renew(ca, live, "node-1-during-stop")
                os.kill(os.getpid(), signal.SIGHUP)
                await until(lambda: len(answers) == 2, "the SIGHUP during the stop")
                await real_close(grace_ms)

            monkeypatch.setattr(node.server, "close", close_with_sighup)
            await asyncio.wait_for(node.stop(), 10)
            assert answers == [True, None]
            renew(ca, live, "node-1-after-stop")
            os.kill(os.getpid(), signal.SIGHUP)
            await until(lambda: len(answers) == 3, "the SIGHUP after the stop")
            assert answers == [True, None, None]
            assert reloader.reloads == 1 and reloader.refusals == 0
            assert task.cancelled() and pending_reload_tasks() == []
        finally:
            loop.remove_signal_handler(signal.SIGHUP)
    problems.check()
