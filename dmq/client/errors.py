"""Client errors: every wire error class of `dmq.protocol.errors`, re-exported, plus
the few local-misuse errors that have no wire code.

Wire errors carry `.code`, `.retriable` and `.refresh_metadata`; the client retries on
`retriable` and refreshes its metadata on `refresh_metadata`. Local misuse (using a
closed producer, a bad argument) raises `IllegalStateError` or `ValueError` at once:
they are the caller's bug, not a cluster condition.
"""

from __future__ import annotations

from dmq.protocol import errors as _wire
from dmq.protocol.errors import *  # noqa: F403 - the re-export is this module's purpose
from dmq.protocol.errors import DmqError, ErrorCode, error_for


class IllegalStateError(RuntimeError):
    """A call the client cannot accept in its current state (closed, not started)."""


class ProducerClosedError(IllegalStateError):
    """`send` on a producer that is closing or closed."""


class WouldBlockError(BufferError):
    """`Producer.send_nowait` could not append without waiting (buffer full, or the
    topic's metadata not known yet); `await send()` the record instead."""


class ConsumerStoppedError(IllegalStateError):
    """A call on a consumer that has been closed."""


class NoOffsetForPartitionError(IllegalStateError):
    """No position for a partition and `auto_offset_reset="none"`."""


WIRE_ERRORS: dict[str, type[DmqError]] = {
    name: obj for name, obj in vars(_wire).items()
    if isinstance(obj, type) and issubclass(obj, DmqError)
}

__all__ = [
    "ConsumerStoppedError",
    "DmqError",
    "ErrorCode",
    "IllegalStateError",
    "NoOffsetForPartitionError",
    "ProducerClosedError",
    "WouldBlockError",
    "error_for",
    *WIRE_ERRORS,
]
