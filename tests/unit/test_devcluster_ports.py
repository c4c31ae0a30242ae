"""`free_base_port`: a base at which a dev cluster's whole layout is free, Kafka
listener ports included (`dmq dev --base-port B` puts them at B + 20)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from dmq.cli import dev
from dmq.cli.dev import KAFKA_PORT_OFFSET, free_base_port


def _held(port: int) -> socket.socket | None:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return None  # held by someone else already: taken either way
    s.listen()
    return s


def _bases(monkeypatch: pytest.MonkeyPatch, *bases: int) -> None:
    it: Iterator[int] = iter(bases)
    monkeypatch.setattr(dev.random, "randrange", lambda *_a: next(it))


def _free_bases(count: int) -> list[int]:
    """Bases (multiples of 100) whose ports base..base + 22 are all free right now."""
    found = []
    for base in range(40000, 60000, 100):
        if not any(_held_now(p) for p in range(base, base + KAFKA_PORT_OFFSET + 3)):
            found.append(base)
            if len(found) == count:
                return found
    pytest.skip("no free port ranges here")


@pytest.mark.parametrize("offset", [0, 2, 10, 12, KAFKA_PORT_OFFSET, KAFKA_PORT_OFFSET + 2])
def test_a_base_with_any_port_of_the_layout_taken_is_passed_over(
        monkeypatch: pytest.MonkeyPatch, offset: int) -> None:
    first, second = _free_bases(2)
    holder = _held(first + offset)
    try:
        _bases(monkeypatch, first, second)
        assert free_base_port(3, 3, kafka=True) == second
    finally:
        if holder is not None:
            holder.close()


def test_kafka_ports_are_not_checked_without_kafka(monkeypatch: pytest.MonkeyPatch) -> None:
    (base,) = _free_bases(1)
    holder = _held(base + KAFKA_PORT_OFFSET)
    try:
        _bases(monkeypatch, base)
        assert free_base_port(3, 3) == base
    finally:
        if holder is not None:
            holder.close()


def _held_now(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def test_probe_range_comes_from_the_environment_when_set(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DMQ_PROBE_PORTS", "21000-25000")
    assert dev.probe_port_range() == (21000, 25000)
    seen = {free_base_port(1, 1) for _ in range(20)}
    assert all(21000 <= b and b + 100 <= 25000 and b % 100 == 0 for b in seen), seen
    for bad in ("25000-21000", "x-y", "80-90", "21000"):
        monkeypatch.setenv("DMQ_PROBE_PORTS", bad)
        with pytest.raises(ValueError, match="DMQ_PROBE_PORTS"):
            dev.probe_port_range()


def test_probe_range_stays_below_the_ephemeral_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DMQ_PROBE_PORTS", raising=False)
    monkeypatch.setattr(dev, "ephemeral_port_range", lambda: (32768, 60999))
    assert dev.probe_port_range() == (10000, 32768)


def test_worker_windows_split_the_range_without_overlap() -> None:
    from tests.conftest import worker_port_window

    windows = [worker_port_window(f"gw{i}", 3, 10000, 32768) for i in range(3)]
    assert windows[0][0] == 10000 and windows[-1][1] <= 32768
    for (_, high), (low, _) in zip(windows, windows[1:], strict=False):
        assert high <= low
    with pytest.raises(ValueError):
        worker_port_window("gw3", 3, 10000, 32768)
