"""`LogConfig`: per-partition log settings, Kafka's topic configs in snake_case.

Defines the names, units and defaults of every log setting and validates them. It
reads no file or environment variable; the broker builds it from topic configs.
"""

from __future__ import annotations

from dataclasses import dataclass

CLEANUP_DELETE = "delete"
CLEANUP_COMPACT = "compact"
_CLEANUP_POLICIES = frozenset({"delete", "compact", "compact,delete", "delete,compact"})
TIMESTAMP_TYPES = frozenset({"CreateTime", "LogAppendTime"})


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Settings of one partition log. `None` means "no limit" where Kafka uses -1/MAX."""

    segment_bytes: int = 1 << 30
    segment_ms: int = 7 * 24 * 3600 * 1000
    segment_index_bytes: int = 10 * 1024 * 1024
    index_interval_bytes: int = 4096
    retention_ms: int | None = 7 * 24 * 3600 * 1000
    retention_bytes: int | None = None
    cleanup_policy: str = CLEANUP_DELETE
    delete_retention_ms: int = 24 * 3600 * 1000
    min_compaction_lag_ms: int = 0
    # Flush policy: None/None relies on replication and the OS page cache (Kafka's
    # default); flush_messages=1 fsyncs every append.
    flush_messages: int | None = None
    flush_ms: int | None = None
    max_message_bytes: int = 1024 * 1024 + 12
    message_timestamp_type: str = "CreateTime"
    max_producer_batches: int = 5
    # Producer state is rebuilt only from segments with data newer than this; older
    # producers are forgotten (and accepted again at any sequence), as in Kafka.
    producer_id_expiration_ms: int = 24 * 3600 * 1000

    def __post_init__(self) -> None:
        if not 64 <= self.segment_bytes <= 2**31 - 1:  # index positions are u32
            raise ValueError("segment_bytes must be in [64, 2**31 - 1]")
        if self.segment_ms <= 0:
            raise ValueError("segment_ms must be > 0")
        if self.segment_index_bytes < 16:
            raise ValueError("segment_index_bytes must be >= 16")
        if self.index_interval_bytes < 0:
            raise ValueError("index_interval_bytes must be >= 0")
        if self.cleanup_policy not in _CLEANUP_POLICIES:
            raise ValueError(f"cleanup_policy must be one of {sorted(_CLEANUP_POLICIES)}")
        if self.flush_messages is not None and self.flush_messages < 1:
            raise ValueError("flush_messages must be >= 1 or None")
        if self.flush_ms is not None and self.flush_ms < 0:
            raise ValueError("flush_ms must be >= 0 or None")
        if self.max_message_bytes < 61:
            raise ValueError("max_message_bytes must be >= 61")
        if self.message_timestamp_type not in TIMESTAMP_TYPES:
            raise ValueError(f"message_timestamp_type must be one of {sorted(TIMESTAMP_TYPES)}")
        if self.max_producer_batches < 1:
            raise ValueError("max_producer_batches must be >= 1")

    @property
    def compact(self) -> bool:
        return CLEANUP_COMPACT in self.cleanup_policy

    @property
    def delete(self) -> bool:
        return CLEANUP_DELETE in self.cleanup_policy
