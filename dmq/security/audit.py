"""The `dmq.audit` logger and the rate limit of its refusal lines.

Every change of users, credentials, tokens and ACLs is one audit line, always. A
refused request is one too, but a client looping on a refused request must not flood
the log: `DenialLog` writes the first refusal of each (principal, operation, resource)
at once, then at most one line per `every_s` (1 s) for that key, carrying the count of
the refusals held back since its previous line ("... (37 more denials suppressed in
the last 1.0 s)"). It tracks at most `max_keys` keys, least recently refused first
out; a key leaving with refusals held back gets a line with their count, so none goes
uncounted. Held-back refusals of a key that is never refused again are reported when
the key leaves (`flush` reports them all). Allowed requests never come here.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable

audit = logging.getLogger("dmq.audit")

DENIAL_EVERY_S = 1.0
MAX_DENIAL_KEYS = 4096

DenialKey = tuple[str, str, str, str]  # principal, operation, resource type, resource name


class _Slot:
    __slots__ = ("api", "held", "last", "node_id")

    def __init__(self, last: float, node_id: int | str, api: str) -> None:
        self.last = last  # when the key's last line was written
        self.held = 0  # refusals held back since
        self.node_id = node_id
        self.api = api


class DenialLog:
    """Rate-limited `DENIED` audit lines, per (principal, operation, resource)."""

    __slots__ = ("_clock", "_keys", "_logger", "every_s", "max_keys", "suppressed_total")

    def __init__(self, logger: logging.Logger = audit, *, every_s: float = DENIAL_EVERY_S,
                 max_keys: int = MAX_DENIAL_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._logger = logger
        self._clock = clock
        self.every_s = every_s
        self.max_keys = max_keys
        self._keys: OrderedDict[DenialKey, _Slot] = OrderedDict()  # least recent first
        self.suppressed_total = 0  # refusals held back so far (all keys)

    def __len__(self) -> int:
        return len(self._keys)

    def denied(self, node_id: int | str, principal: str, operation: str,
               resource_type: str, name: str, api: str = "") -> None:
        """A refusal: its line now, or counted towards the key's next line."""
        now = self._clock()
        key = (principal, operation, resource_type, name)
        slot = self._keys.get(key)
        if slot is None:
            if len(self._keys) >= self.max_keys:
                old_key, old = self._keys.popitem(last=False)
                if old.held:
                    self._held_line(old_key, old, now)
            self._keys[key] = _Slot(now, node_id, api)
            self._line(node_id, key, api, "")
            return
        self._keys.move_to_end(key)
        if now - slot.last < self.every_s:
            slot.held += 1
            self.suppressed_total += 1
            return
        held, span = slot.held, now - slot.last
        slot.last, slot.held, slot.node_id, slot.api = now, 0, node_id, api
        # this refusal's line, with the count of those held back since the last one
        self._line(node_id, key, api, f" ({held} more denials suppressed in the last "
                                      f"{span:.1f} s)" if held else "")

    def flush(self) -> None:
        """A line for every key with refusals held back (at shutdown, or on demand)."""
        now = self._clock()
        for key, slot in self._keys.items():
            if slot.held:
                self._held_line(key, slot, now)
                slot.last, slot.held = now, 0

    def _held_line(self, key: DenialKey, slot: _Slot, now: float) -> None:
        """Only the count held back (no new refusal: eviction, flush)."""
        self._line(slot.node_id, key, slot.api, f": {slot.held} more denials suppressed in "
                                                f"the last {now - slot.last:.1f} s")

    def _line(self, node_id: int | str, key: DenialKey, api: str, tail: str) -> None:
        principal, operation, resource_type, name = key
        self._logger.info("node=%s DENIED principal=%s operation=%s resource=%s:%s api=%s%s",
                          node_id, principal, operation, resource_type, name, api or "-", tail)


__all__ = ["DENIAL_EVERY_S", "MAX_DENIAL_KEYS", "DenialLog", "audit"]
