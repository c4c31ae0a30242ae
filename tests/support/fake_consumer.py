"""A stand-in for the consumer side of a group membership (the `PartitionsOwner`
the membership drives), for group tests that need no real consumer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

TP = tuple[str, int]


class FakeConsumer:
    """Positions advance as if records were consumed; records the callbacks."""

    def __init__(self) -> None:
        self.positions: dict[TP, int] = {}
        self.started: list[dict[TP, int | None]] = []
        self.stopped: list[set[TP]] = []

    def start_partitions(self, committed: Mapping[TP, int | None]) -> None:
        self.started.append(dict(committed))
        for tp, off in committed.items():
            self.positions[tp] = off or 0

    def stop_partitions(self, tps: Iterable[TP]) -> None:
        tps = set(tps)
        self.stopped.append(tps)
        for tp in tps:
            self.positions.pop(tp, None)

    def consumed_positions(self, tps: Iterable[TP]) -> dict[TP, int]:
        return {tp: self.positions[tp] for tp in tps if tp in self.positions}

    def consume(self, n: int = 1) -> None:
        for tp in self.positions:
            self.positions[tp] += n
