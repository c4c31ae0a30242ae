"""Validation of topic names and topic configs, and the cluster defaults behind them.

Topic config keys are Kafka's. A topic stores only the configs set on it; every other
key reads as the cluster default named in `TOPIC_CONFIG_DEFAULTS` (a setting of
`dmq.config.SETTINGS`, or a fixed value). Errors are the typed wire errors, so a
handler can put them in its per-topic answer as they are.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dmq.protocol.errors import InvalidConfigError, InvalidTopicError
from dmq.security.quotas import (
    CONFIG_KEYS,
    check_rate,
    check_user,
    is_quota_config,
    parse_config_key,
)

MAX_TOPIC_NAME_CHARS = 249
# matched whole with fullmatch: a "$" would also match before a final newline ("nl\n")
_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]+")


def validate_topic_name(name: str) -> None:
    """Kafka's rules: [a-zA-Z0-9._-], 1..249 chars, not "." or ".."."""
    if not name:
        raise InvalidTopicError("topic name is empty")
    if len(name) > MAX_TOPIC_NAME_CHARS:
        raise InvalidTopicError(f"topic name is {len(name)} chars; at most "
                                f"{MAX_TOPIC_NAME_CHARS} allowed")
    if name in (".", ".."):
        raise InvalidTopicError(f"topic name cannot be {name!r}")
    if not _TOPIC_NAME.fullmatch(name):
        raise InvalidTopicError(f"topic name {name!r} has characters outside [a-zA-Z0-9._-]")


def _long(minimum: int, allow_minus_one: bool = False,
          maximum: int = 2**63 - 1) -> Callable[[str], str]:
    def check(value: str) -> str:
        try:
            n = int(value)
        except ValueError:
            raise ValueError("must be an integer") from None
        if n < minimum and not (allow_minus_one and n == -1):
            extra = " or -1" if allow_minus_one else ""
            raise ValueError(f"must be at least {minimum}{extra}")
        if n > maximum:
            raise ValueError(f"must be at most {maximum}")
        return str(n)
    return check


def _timestamp_type(value: str) -> str:
    if value not in ("CreateTime", "LogAppendTime"):
        raise ValueError("must be CreateTime or LogAppendTime")
    return value


def _bool(value: str) -> str:
    v = value.strip().lower()
    if v not in ("true", "false"):
        raise ValueError("must be true or false")
    return v


def _cleanup_policy(value: str) -> str:
    parts = sorted({p.strip() for p in value.split(",")})
    if not parts or any(p not in ("delete", "compact") for p in parts):
        raise ValueError("must be delete, compact, or compact,delete")
    return ",".join(parts)


# key -> value checker (returns the normalised value or raises ValueError)
TOPIC_CONFIG_CHECKS: dict[str, Callable[[str], str]] = {
    "min.insync.replicas": _long(1),
    "unclean.leader.election.enable": _bool,
    "retention.ms": _long(0, allow_minus_one=True),
    "retention.bytes": _long(0, allow_minus_one=True),
    # a segment holds at least one batch header; file positions in the index are u32
    "segment.bytes": _long(64, maximum=2**31 - 1),
    "segment.ms": _long(1),
    "cleanup.policy": _cleanup_policy,
    "delete.retention.ms": _long(0),
    "min.compaction.lag.ms": _long(0),
    "max.message.bytes": _long(61),  # a batch header is 61 bytes
    "message.timestamp.type": _timestamp_type,
    "flush.messages": _long(1, allow_minus_one=True),
    "flush.ms": _long(0, allow_minus_one=True),
}

# topic config key -> cluster setting it defaults to, or ("=", fixed value)
TOPIC_CONFIG_DEFAULTS: dict[str, str | tuple[str, str]] = {
    "min.insync.replicas": "min.insync.replicas",
    "unclean.leader.election.enable": "unclean.leader.election.enable",
    "retention.ms": "log.retention.ms",
    "retention.bytes": "log.retention.bytes",
    "segment.bytes": "log.segment.bytes",
    "segment.ms": "log.segment.ms",
    "cleanup.policy": "log.cleanup.policy",
    "delete.retention.ms": "log.cleaner.delete.retention.ms",
    "min.compaction.lag.ms": "log.cleaner.min.compaction.lag.ms",
    "max.message.bytes": "message.max.bytes",
    "message.timestamp.type": "log.message.timestamp.type",
    "flush.messages": "log.flush.messages",
    "flush.ms": "log.flush.ms",
}
assert set(TOPIC_CONFIG_CHECKS) == set(TOPIC_CONFIG_DEFAULTS)


def validate_topic_config(key: str, value: str) -> str:
    """The normalised value, or InvalidConfigError naming the key."""
    check = TOPIC_CONFIG_CHECKS.get(key)
    if check is None:
        raise InvalidConfigError(f"unknown topic config {key!r}; known: "
                                 f"{', '.join(sorted(TOPIC_CONFIG_CHECKS))}")
    return _checked(key, value, check)


def _checked(key: str, value: object, check: Callable[[str], str]) -> str:
    """`check(value)`, or InvalidConfigError naming the key and the value."""
    if not isinstance(value, str):
        raise InvalidConfigError(f"{key}: value must be a string")
    try:
        return check(value)
    except ValueError as exc:
        raise InvalidConfigError(f"{key}={value!r}: {exc}") from None


# Cluster-wide dynamic broker configs (DYNAMIC_CONFIG records): key -> value checker.
# Each overrides the static setting of the same name (dmq.config.SETTINGS) on every
# broker, read from the metadata image, without a restart.
DYNAMIC_CONFIG_CHECKS: dict[str, Callable[[str], str]] = {
    # bytes/s a broker's fetchers copy for replicas being added by a reassignment
    "follower.replication.throttled.rate": _long(1),
    # bytes/s a partition leader sends to its replicas being added by a reassignment
    "leader.replication.throttled.rate": _long(1),
}
# of these, the ones that may also be set for one broker (key `KEY:ID`, Kafka's broker
# entity), over the cluster-wide value
PER_BROKER_CONFIGS = frozenset(DYNAMIC_CONFIG_CHECKS)
MAX_BROKER_ID = 2**31 - 1


def _per_broker_check(key: str) -> Callable[[str], str] | None:
    """The checker of a `KEY:ID` key (KEY for broker ID alone); None if `key` is not one;
    InvalidConfigError for a bad broker id."""
    base, sep, broker = key.partition(":")
    if not sep or base not in PER_BROKER_CONFIGS:
        return None
    # written as the broker's own key reads it (no sign, no leading zero, ASCII digits)
    if not (broker.isascii() and broker.isdigit() and str(int(broker)) == broker
            and int(broker) <= MAX_BROKER_ID):
        raise InvalidConfigError(f"{key!r}: the broker id after ':' must be a whole number "
                                 f"from 0 to {MAX_BROKER_ID}, without leading zeros")
    return DYNAMIC_CONFIG_CHECKS[base]


def validate_dynamic_config(key: str, value: str | None) -> str | None:
    """The normalised value (None: back to the static setting), or InvalidConfigError."""
    check = DYNAMIC_CONFIG_CHECKS.get(key) or _per_broker_check(key)
    if check is None and is_quota_config(key):  # client quotas (dmq.security.quotas)
        parsed = parse_config_key(key)
        if parsed is None or (parsed[1] is not None and not parsed[1]):
            raise InvalidConfigError(
                f"unknown quota config {key!r}; known: "
                f"{', '.join(f'{k}[:<user>]' for k in sorted(CONFIG_KEYS.values()))}")
        if parsed[1] is not None:
            try:
                check_user(parsed[1])
            except ValueError as exc:
                raise InvalidConfigError(f"{key!r}: {exc}") from None
        check = check_rate
    if check is None:
        raise InvalidConfigError(f"unknown dynamic broker config {key!r}; known: "
                                 f"{', '.join(sorted(DYNAMIC_CONFIG_CHECKS))} (each also "
                                 "as KEY:BROKER_ID for one broker)")
    if value is None:
        return None
    return _checked(key, value, check)


def validate_topic_configs(configs: dict[str, str]) -> dict[str, str]:
    return {k: validate_topic_config(k, v) for k, v in configs.items()}


def default_topic_configs(get_setting: Callable[[str], Any]) -> dict[str, str]:
    """Every topic config key with the cluster default value, as strings."""
    out: dict[str, str] = {}
    for key, src in TOPIC_CONFIG_DEFAULTS.items():
        if isinstance(src, tuple):
            out[key] = src[1]
        else:
            v = get_setting(src)
            out[key] = str(v).lower() if isinstance(v, bool) else str(v)
    return out


def effective_topic_configs(configs: dict[str, str],
                            get_setting: Callable[[str], Any]) -> dict[str, str]:
    out = default_topic_configs(get_setting)
    out.update(configs)
    return out


@dataclass(frozen=True, slots=True)
class PartitionLimits:
    """The bounds on partition creation (settings of `dmq.config.SETTINGS`), checked
    before any placement work: a request past them is refused whole, a topic past them
    gets its own error."""

    per_topic: int
    topics_per_request: int
    per_request: int
    per_cluster: int
    replicas_per_broker: int

    @classmethod
    def from_settings(cls, get_setting: Callable[[str], Any]) -> PartitionLimits:
        return cls(int(get_setting("max.partitions.per.topic")),
                   int(get_setting("max.topics.per.request")),
                   int(get_setting("max.partitions.per.request")),
                   int(get_setting("max.partitions.per.cluster")),
                   int(get_setting("max.partition.replicas.per.broker")))


__all__ = [
    "DYNAMIC_CONFIG_CHECKS",
    "MAX_TOPIC_NAME_CHARS",
    "PER_BROKER_CONFIGS",
    "PartitionLimits",
    "TOPIC_CONFIG_CHECKS",
    "TOPIC_CONFIG_DEFAULTS",
    "default_topic_configs",
    "effective_topic_configs",
    "validate_dynamic_config",
    "validate_topic_config",
    "validate_topic_configs",
    "validate_topic_name",
]
