"""The Raft state machine of the controller quorum: committed entries in, metadata out.

`MetadataStateMachine` is what `dmq.raft` applies committed entries to
(`apply(entries)`, `snapshot()`, `restore(snapshot)`). Each entry's data is one batch
of metadata records (`dmq.metadata.records`); no-op entries only move the version.
After each apply it calls its listeners (the controller service wakes MetadataFetch
long-polls and publishes the new image). It never does I/O and never imports asyncio.

A snapshot is the msgpack of `MetadataState.to_snapshot()`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import msgpack  # type: ignore[import-untyped]

from dmq.metadata.records import MalformedRecordError, decode_batch_wire
from dmq.metadata.state import MetadataState

log = logging.getLogger("dmq.controller.state_machine")

DEFAULT_HISTORY_ENTRIES = 10_000


class MetadataStateMachine:
    def __init__(self, history_entries: int = DEFAULT_HISTORY_ENTRIES) -> None:
        self.state = MetadataState(keep_offsets=True, history_entries=history_entries)
        self._listeners: list[Callable[[int], None]] = []

    @property
    def applied_index(self) -> int:
        return self.state.version

    def add_listener(self, fn: Callable[[int], None]) -> None:
        """`fn(version)` runs after every apply and restore."""
        self._listeners.append(fn)

    def _notify(self) -> None:
        for fn in self._listeners:
            try:
                fn(self.state.version)
            except Exception:  # a listener's bug must not stop the apply loop
                log.exception("metadata listener failed")

    def apply(self, entries: Iterable[Any]) -> None:
        """Apply committed entries in order. Each has `.index` and `.data` (bytes);
        empty data (a Raft no-op) only advances the version."""
        changed = False
        for entry in entries:
            index = int(entry.index)
            if index <= self.state.version:
                continue  # already covered by a restored snapshot
            data = entry.data
            if not data:
                self.state.advance_to(index)
                changed = True
                continue
            try:
                wire = decode_batch_wire(data)
            except MalformedRecordError:
                # every replica sees the same bytes and skips them the same way
                log.error("metadata entry %d does not decode; skipped", index)
                self.state.advance_to(index)
                continue
            self.state.apply_entry(index, wire)
            changed = True
        if changed:
            self._notify()

    def snapshot(self) -> bytes:
        data: bytes = msgpack.packb(self.state.to_snapshot(), use_bin_type=True)
        return data

    def restore(self, snapshot: Any) -> None:
        """From snapshot bytes, or an object with `.data` (a Raft `Snapshot`). Empty
        data means the empty state."""
        raw = isinstance(snapshot, (bytes, bytearray, memoryview))
        data = snapshot if raw else snapshot.data
        if not data:
            self.state.restore(MetadataState().to_snapshot())
        else:
            self.state.restore(msgpack.unpackb(data, raw=False, strict_map_key=False))
        index = None if raw else getattr(snapshot, "index", None)
        if index is not None and int(index) > self.state.version:
            self.state.advance_to(int(index))
        self._notify()


__all__ = ["MetadataStateMachine"]
