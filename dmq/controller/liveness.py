"""Broker sessions as seen by the active controller (soft state, not replicated).

The active controller notes when each broker last heartbeated. A broker silent for
`session_timeout_ms` is expired and gets fenced. A newly active controller does not
know when brokers last beat, so it starts every session fresh (a full grace period)
rather than fence the whole cluster on a failover. Pure: time comes from the clock.
"""

from __future__ import annotations

from collections.abc import Iterable

from dmq.clock import Clock


class BrokerSessions:
    def __init__(self, clock: Clock, session_timeout_ms: int) -> None:
        self.clock = clock
        self.session_timeout_ms = session_timeout_ms
        self._last_ms: dict[int, int] = {}
        self._last_wall_ms: dict[int, int] = {}

    def reset(self, broker_ids: Iterable[int]) -> None:
        """Start a grace period for every broker (on becoming the active controller)."""
        now = self.clock.monotonic_ms()
        self._last_ms = {b: now for b in broker_ids}
        self._last_wall_ms = {}

    def touch(self, broker_id: int) -> None:
        self._last_ms[broker_id] = self.clock.monotonic_ms()
        self._last_wall_ms[broker_id] = self.clock.wall_ms()

    def forget(self, broker_id: int) -> None:
        self._last_ms.pop(broker_id, None)
        self._last_wall_ms.pop(broker_id, None)

    def expired(self, broker_ids: Iterable[int]) -> list[int]:
        """The brokers among `broker_ids` whose session ran out. A broker never seen
        since the reset starts its grace period now."""
        now = self.clock.monotonic_ms()
        out = []
        for b in broker_ids:
            last = self._last_ms.setdefault(b, now)
            if now - last > self.session_timeout_ms:
                out.append(b)
        return sorted(out)

    def ms_since_heartbeat(self, broker_id: int) -> int:
        """-1 when this controller has not seen a heartbeat from the broker."""
        if broker_id not in self._last_wall_ms:
            return -1
        return max(0, self.clock.monotonic_ms() - self._last_ms[broker_id])


__all__ = ["BrokerSessions"]
