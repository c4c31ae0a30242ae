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
