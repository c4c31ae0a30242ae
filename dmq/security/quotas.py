"""Client quotas: per-principal produce and fetch byte rates (Kafka's
`producer_byte_rate` / `consumer_byte_rate` of the `user` entity).

Where they live: in the metadata, as cluster-wide dynamic configs (DYNAMIC_CONFIG
records, dmq/metadata/records.py), so they reach every broker's image, survive
snapshots and need no record type of their own:

    quota.producer.byte.rate            the default of every user (Kafka's <default>)
    quota.consumer.byte.rate
    quota.producer.byte.rate:<user>     one user's own (overrides the default)
    quota.consumer.byte.rate:<user>

Values are whole bytes/s >= 1; no entry: no limit. A user's quota is looked up key by
key: its own entry, else the default. The user of a principal `User:<name>` is
`<name>` (a SASL user, a certificate subject, ANONYMOUS); nodes (`node:<id>`) are never
throttled.

Enforcement (`QuotaManager`) is per broker, as Kafka's: each broker lets a user have
its quota. A token bucket per (user, produce|fetch) refilled at the quota and holding
at most one second of it (Kafka's quota sample window); each request takes its record
bytes at once (a produce: the request's; a fetch: the answer's), never counted per
record, and may put the bucket into debt. The throttle time is the debt divided by the
rate: the delay after which the rate over the window is back at the quota (Kafka's
`(rate - quota) / quota * window`). Buckets are kept for at most `MAX_TRACKED` users
(least recently used dropped first; a dropped one starts again with a full bucket).

Pure and clock-free: time comes in as arguments. It never does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

PRODUCER_BYTE_RATE = "producer_byte_rate"
CONSUMER_BYTE_RATE = "consumer_byte_rate"
QUOTA_KEYS = (PRODUCER_BYTE_RATE, CONSUMER_BYTE_RATE)
# quota key -> its dynamic config key (the default's; a user's appends ":<user>")
CONFIG_KEYS = {PRODUCER_BYTE_RATE: "quota.producer.byte.rate",
               CONSUMER_BYTE_RATE: "quota.consumer.byte.rate"}
_QUOTA_OF_CONFIG = {v: k for k, v in CONFIG_KEYS.items()}
PRODUCE = "produce"
FETCH = "fetch"
KIND_KEYS = {PRODUCE: PRODUCER_BYTE_RATE, FETCH: CONSUMER_BYTE_RATE}

BURST_MS = 1000  # a bucket holds this much time of its rate (Kafka's sample window)
MAX_THROTTLE_MS = 10_000  # one response is never held longer (the debt stays)
MAX_TRACKED = 10_000  # users with a bucket, per kind
MAX_USER_BYTES = 512


def config_key(quota_key: str, user: str | None) -> str:
    """The dynamic config key of `quota_key` for `user` (None: the default)."""
    base = CONFIG_KEYS[quota_key]
    return base if user is None else f"{base}:{user}"


def parse_config_key(key: str) -> tuple[str, str | None] | None:
    """(quota key, user | None for the default) of a quota's dynamic config key; None
    for a key that is not a quota's."""
    base, sep, user = key.partition(":")
    quota_key = _QUOTA_OF_CONFIG.get(base)
    if quota_key is None:
        return None
    if not sep:
        return quota_key, None
    return quota_key, user


def is_quota_config(key: str) -> bool:
    return key.startswith("quota.")


def check_user(user: str) -> str:
    if not user or len(user.encode()) > MAX_USER_BYTES:
        raise ValueError(f"a quota's user name is 1 to {MAX_USER_BYTES} bytes")
    return user


def check_rate(value: str | float | int) -> str:
    """A byte rate as stored: a whole number >= 1 (Kafka's quotas are doubles; byte rates
    are whole)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"a byte rate is a number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number) or number < 1:
        raise ValueError(f"a byte rate is a whole number of bytes/s >= 1, got {value!r}")
    if number > 2**63 - 1:
        raise ValueError("a byte rate is at most 2^63-1")
    return str(int(number))


def entries(configs: Mapping[str, str]) -> dict[str | None, dict[str, int]]:
    """Every quota entry of a set of dynamic configs: {user | None (default): {quota
    key: bytes/s}}."""
    out: dict[str | None, dict[str, int]] = {}
    for key, value in configs.items():
        if not is_quota_config(key):
            continue
        parsed = parse_config_key(key)
        if parsed is None:
            continue
        try:
            rate = int(value)
        except ValueError:
            continue
        out.setdefault(parsed[1], {})[parsed[0]] = rate
    return out


def user_of(principal: str) -> str | None:
    """The quota user of a principal; None for a node (never throttled)."""
    if principal.startswith("node:"):
        return None
    return principal[5:] if principal.startswith("User:") else principal


@dataclass
class _Bucket:
    tokens: float
    at_ms: int
    throttle_ms_total: int = 0
    throttled_requests: int = 0
    muted_until_ms: int = 0


@dataclass
class QuotaManager:
    """A broker's quota enforcement; `configs` is the image's dynamic configs (parsed
    again only when another mapping object comes)."""

    max_tracked: int = MAX_TRACKED
    _configs: Mapping[str, str] | None = None
    _entries: dict[str | None, dict[str, int]] = field(default_factory=dict)
    _buckets: dict[str, dict[str, _Bucket]] = field(
        default_factory=lambda: {PRODUCE: {}, FETCH: {}})
    # kind -> throttle ms of users no longer tracked
    dropped_throttle_ms: dict[str, int] = field(
        default_factory=lambda: {PRODUCE: 0, FETCH: 0})

    def update(self, configs: Mapping[str, str]) -> None:
        if configs is self._configs:
            return
        self._configs = configs
        self._entries = entries(configs)

    @property
    def active(self) -> bool:
        """Some quota is set."""
        return bool(self._entries)

    def rate(self, user: str, kind: str) -> int:
        """bytes/s of `user` for `kind` (0: no limit)."""
        key = KIND_KEYS[kind]
        own = self._entries.get(user)
        if own is not None and key in own:
            return own[key]
        default = self._entries.get(None)
        return default.get(key, 0) if default is not None else 0

    def record(self, principal: str, kind: str, size: int, now_ms: int) -> int:
        """Take `size` bytes of `principal`'s `kind` quota at `now_ms`; the throttle
        time in ms (0: within the quota; -1: the principal has no quota)."""
        user = user_of(principal)
        if user is None or not self._entries:
            return -1
        rate = self.rate(user, kind)
        if rate <= 0:
            return -1
        buckets = self._buckets[kind]
        capacity = rate * BURST_MS / 1000
        b = buckets.pop(user, None)  # popped and put back: the dict's order is LRU
        if b is None:
            b = _Bucket(capacity, now_ms)
            if len(buckets) >= self.max_tracked:
                oldest = next(iter(buckets))
                self.dropped_throttle_ms[kind] += buckets.pop(oldest).throttle_ms_total
        elif now_ms > b.at_ms:
            b.tokens = min(capacity, b.tokens + (now_ms - b.at_ms) * rate / 1000)
            b.at_ms = now_ms
        buckets[user] = b
        b.tokens = min(b.tokens, capacity) - size  # a lowered quota cuts the burst
        if b.tokens >= 0:
            return 0
        throttle_ms = min(MAX_THROTTLE_MS, math.ceil(-b.tokens * 1000 / rate))
        b.throttle_ms_total += throttle_ms
        b.throttled_requests += 1
        return throttle_ms

    def mute(self, principal: str, kind: str, now_ms: int, throttle_ms: int) -> int:
        """For a client that throttles itself after a throttled answer (Kafka's
        KIP-219), while the broker mutes it: how long to hold back the answer of a
        request sent at `now_ms` (what is left of an earlier throttle, 0: none), and
        from then on the principal is muted until `now_ms` + `throttle_ms`. Call
        right after `record` returned `throttle_ms`."""
        user = user_of(principal)
        b = self._buckets[kind].get(user) if user is not None else None
        if b is None:
            return 0
        hold_ms = max(0, min(b.muted_until_ms - now_ms, throttle_ms))
        b.muted_until_ms = max(b.muted_until_ms, now_ms + throttle_ms)
        return hold_ms

    def throttle_stats(self) -> list[tuple[str, str, int, int]]:
        """[(kind, user, throttle ms total, throttled requests)] of tracked users that
        were throttled."""
        return [(kind, user, b.throttle_ms_total, b.throttled_requests)
                for kind, buckets in self._buckets.items()
                for user, b in list(buckets.items()) if b.throttled_requests]


__all__ = [
    "CONFIG_KEYS",
    "CONSUMER_BYTE_RATE",
    "FETCH",
    "PRODUCE",
    "PRODUCER_BYTE_RATE",
    "QUOTA_KEYS",
    "QuotaManager",
    "check_rate",
    "check_user",
    "config_key",
    "entries",
    "is_quota_config",
    "parse_config_key",
    "user_of",
]
