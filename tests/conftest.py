"""Suite-wide setup.

With several pytest-xdist workers (`pytest -n 2`, the README's test command), each
worker probes for free ports only inside its own window of the range below the
kernel's ephemeral ports (`DMQ_PROBE_PORTS`, read by `dmq.cli.dev.probe_port_range`
and inherited by every process a test starts), so two workers never pick the same
port between probing it and binding it.
"""

from __future__ import annotations

import os

import pytest

from dmq.cli.dev import probe_port_range


def worker_port_window(worker: str, count: int, low: int, high: int) -> tuple[int, int]:
    """The slice of `low`-`high` that worker `gwN` of `count` probes in."""
    index = int(worker.removeprefix("gw"))
    if not 0 <= index < count:
        raise ValueError(f"worker {worker} outside a count of {count}")
    width = (high - low) // count
    return low + index * width, low + (index + 1) * width


def pytest_configure(config: pytest.Config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if worker and count and "DMQ_PROBE_PORTS" not in os.environ:
        low, high = worker_port_window(worker, int(count), *probe_port_range())
        os.environ["DMQ_PROBE_PORTS"] = f"{low}-{high}"
