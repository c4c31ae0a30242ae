"""dmq.log: record batches, segments, indexes, the partition log, retention and compaction.

Public names only; no logic here.
"""

from dmq.log.batch import (
    HEADER_SIZE,
    MAGIC,
    BatchBuilder,
    BatchHeader,
    Record,
    build_batch,
    decode_records,
    iter_headers,
    iter_records,
    read_header,
    stamp_batch,
    validate_batches,
)
from dmq.log.checkpoint import OffsetCheckpointFile
from dmq.log.cleaner import CleanableLog, CleanResult, LogCleaner, clean_log
from dmq.log.codecs import CODEC_LZ4, CODEC_NONE, CODEC_ZSTD, codec_available
from dmq.log.config import LogConfig
from dmq.log.epoch_cache import (
    UNDEFINED_EPOCH,
    UNDEFINED_OFFSET,
    CheckpointFlusher,
    LeaderEpochCache,
)
from dmq.log.errors import (
    CorruptRecordError,
    InvalidProducerEpochError,
    InvalidRecordError,
    LogClosedError,
    LogDiskFullError,
    LogError,
    LogStorageError,
    OffsetOutOfRangeError,
    OutOfOrderSequenceError,
    RecordTooLargeError,
    UnexpectedAppendOffsetError,
    UnsupportedCompressionError,
)
from dmq.log.partition_log import LogAppendInfo, PartitionLog
from dmq.log.producer_state import BatchMetadata, ProducerStateManager

__all__ = [
    "CODEC_LZ4",
    "CODEC_NONE",
    "CODEC_ZSTD",
    "HEADER_SIZE",
    "MAGIC",
    "UNDEFINED_EPOCH",
    "UNDEFINED_OFFSET",
    "BatchBuilder",
    "BatchHeader",
    "BatchMetadata",
    "CleanResult",
    "CleanableLog",
    "CorruptRecordError",
    "InvalidProducerEpochError",
    "InvalidRecordError",
    "CheckpointFlusher",
    "LeaderEpochCache",
    "LogAppendInfo",
    "LogCleaner",
    "LogClosedError",
    "LogConfig",
    "LogError",
    "LogDiskFullError",
    "LogStorageError",
    "OffsetCheckpointFile",
    "OffsetOutOfRangeError",
    "OutOfOrderSequenceError",
    "PartitionLog",
    "ProducerStateManager",
    "Record",
    "RecordTooLargeError",
    "UnexpectedAppendOffsetError",
    "UnsupportedCompressionError",
    "build_batch",
    "clean_log",
    "codec_available",
    "decode_records",
    "iter_headers",
    "iter_records",
    "read_header",
    "stamp_batch",
    "validate_batches",
]
