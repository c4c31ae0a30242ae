"""Per-partition error codes of the broker's data path.

Whole-request errors are raised as `DmqError`s and the protocol server turns them
into codes. Per-partition results carry their code inside the response body, so the
broker needs one place that maps the log layer's exceptions (which know nothing of
wire codes) to `ErrorCode`s; it is this module and nothing else.
"""

from __future__ import annotations

from dmq.log.errors import (
    CorruptRecordError,
    InvalidProducerEpochError,
    InvalidRecordError,
    LogClosedError,
    LogError,
    LogStorageError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    RecordTooLargeError,
)
from dmq.protocol.errors import DmqError, ErrorCode

_LOG_ERRORS: tuple[tuple[type[LogError], ErrorCode], ...] = (
    (CorruptRecordError, ErrorCode.CORRUPT_MESSAGE),
    (RecordTooLargeError, ErrorCode.MESSAGE_TOO_LARGE),
    (OutOfOrderSequenceError, ErrorCode.OUT_OF_ORDER_SEQUENCE_NUMBER),
    (InvalidProducerEpochError, ErrorCode.INVALID_PRODUCER_EPOCH),
    (OffsetOutOfRangeError, ErrorCode.OFFSET_OUT_OF_RANGE),
    (InvalidRecordError, ErrorCode.INVALID_RECORD),
    # A closed log belongs to a partition being deleted or a broker shutting down:
    # the client should look for the partition elsewhere.
    (LogClosedError, ErrorCode.NOT_LEADER_OR_FOLLOWER),
    (LogStorageError, ErrorCode.STORAGE_ERROR),
)


def error_code_of(exc: Exception) -> ErrorCode:
    """The wire code for an exception raised while serving one partition."""
    if isinstance(exc, DmqError):
        return exc.code
    for cls, code in _LOG_ERRORS:
        if isinstance(exc, cls):
            return code
    return ErrorCode.UNKNOWN_SERVER_ERROR


def message_of(exc: Exception) -> str:
    return exc.message if isinstance(exc, DmqError) else str(exc)
