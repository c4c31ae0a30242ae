"""tests/support/procs.run_group: what a command under test leaves running (a dev
cluster's nodes, a benchmark's servers) is stopped with it, at its end and at the
timeout."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support.procs import run_group
from tests.support.waiting import wait_until


def _gone(pid: int, timeout_s: float = 5) -> bool:
    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a killed child of ours stays a zombie until reaped (here: by init)
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    return wait_until(gone, timeout_s, f"process {pid} gone")


def test_what_the_command_left_running_is_killed_when_it_exits() -> None:
    r = run_group(["bash", "-c", "sleep 300 & echo $!"], timeout=30, text=True)
    assert r.returncode == 0, r.stderr
    assert _gone(int(r.stdout.strip()))


def test_the_command_and_its_children_are_killed_at_the_timeout() -> None:
    with pytest.raises(subprocess.TimeoutExpired) as err:
        run_group(["bash", "-c", "sleep 300 & echo $!; wait"], timeout=1, text=True)
    assert _gone(int(str(err.value.output).strip()))
