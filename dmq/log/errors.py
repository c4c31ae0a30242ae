"""Typed errors raised by the log layer.

The exception classes of `dmq.log`. They carry no wire error codes: the protocol
layer maps these classes to its permanent `ErrorCode` numbers (the intended mapping is
written next to each class). Corrupt input, bad offsets and misbehaving producers are
operating errors and always surface as one of these classes, never as a crash, an
`AssertionError` or a bare `struct.error`.
"""

from __future__ import annotations


class LogError(Exception):
    """Base class of every operating error raised by `dmq.log`."""

    retriable: bool = False


class CorruptRecordError(LogError):
    """Bytes that are not a valid batch: bad length, magic or CRC (CORRUPT_MESSAGE)."""

    retriable = True


class InvalidRecordError(LogError):
    """A well-formed batch that the log refuses (INVALID_RECORD)."""


class UnexpectedAppendOffsetError(InvalidRecordError):
    """A follower append whose offsets do not continue the log (INVALID_RECORD)."""


class RecordTooLargeError(LogError):
    """A batch larger than `max_message_bytes` (MESSAGE_TOO_LARGE)."""


class UnsupportedCompressionError(InvalidRecordError):
    """A codec bit this build cannot decode (UNSUPPORTED_COMPRESSION_TYPE)."""


class OffsetOutOfRangeError(LogError):
    """The asked offset is below the log start or above the log end (OFFSET_OUT_OF_RANGE)."""


class OutOfOrderSequenceError(LogError):
    """An idempotent batch whose sequence leaves a gap (OUT_OF_ORDER_SEQUENCE_NUMBER)."""


class InvalidProducerEpochError(LogError):
    """A batch from an older producer epoch: the producer is fenced (INVALID_PRODUCER_EPOCH)."""


class LogStorageError(LogError):
    """The disk failed under the log (KAFKA_STORAGE_ERROR); the log is unusable until reopened."""

    retriable = True


class LogDiskFullError(LogStorageError):
    """An append found the disk full (ENOSPC/EDQUOT). The segment undid the partial
    write, so the log stays open: it refuses this append and takes the next one once
    space returns."""


class LogClosedError(LogError):
    """The log was closed (or failed) and accepts no more calls (KAFKA_STORAGE_ERROR)."""

    retriable = True
