"""`ReplicationThrottle`: the bytes/s limit of a broker's catch-up replication.

As Kafka's `follower.replication.throttled.rate`: the follower fetches of throttled
replicas (this broker's replicas being added by a reassignment and not yet in sync)
take at most `rate` bytes/s together, over every leader this broker fetches from; the
fetches of in-sync replicas never wait for it. Enforced on the follower side, per
fetch and never per record: a throttled partition is listed in a fetch only when the
bucket holds a quantum (a tenth of a second of the rate, at most
`replica.fetch.max.bytes`), with that quantum as its size limit, reserved when the
request is sent; the bytes that came back settle the reservation (a leader returns a
first batch whole even when it is larger, so the bucket may go into debt, which later
fetches wait out). Until the bucket refills the partition is left out of the fetch
session, so the leader holds nothing for it.

The leader side (`leader.replication.throttled.rate`) is another bucket of this class,
the replica manager's `leader_throttle`, taken by the fetch handlers
(`dmq.broker.handlers._throttled_read`): a leader puts records for replicas being
added (not in sync yet) into a fetch answer only when the bucket holds a quantum; the
throttled partitions of the answer that have records to send share that quantum
(`ThrottledAnswer`: `reserve(k)` for k of them, as a follower's fetch does), each
settled with the bytes read; otherwise they are left out of that answer and tried
again when the bucket refills.

Token bucket, time from the injected monotonic clock in ms; the bucket holds at most
one quantum, so the long-run rate is `rate` and a burst is at most one quantum over it.
It never does I/O.
"""

from __future__ import annotations

from collections.abc import Callable

# a throttled fetch asks for this share of a second of the rate
QUANTUM_PER_S = 10
MIN_QUANTUM_BYTES = 1024


class ReplicationThrottle:
    def __init__(self, now_ms: Callable[[], int], max_fetch_bytes: int) -> None:
        self._now_ms = now_ms
        self.max_fetch_bytes = max_fetch_bytes
        self.rate = 0  # bytes/s; 0: no limit
        self.quantum = max_fetch_bytes
        self._tokens = 0.0
        self._at_ms = now_ms()
        self.stats_throttled_bytes = 0

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def set_rate(self, rate: int) -> None:
        """Bytes/s (<= 0: no limit). A new rate starts with a full quantum."""
        rate = max(0, rate)
        if rate == self.rate:
            return
        self.rate = rate
        if rate:
            self.quantum = max(MIN_QUANTUM_BYTES,
                               min(self.max_fetch_bytes, rate // QUANTUM_PER_S))
            self._tokens = float(self.quantum)
            self._at_ms = self._now_ms()

    def _refill(self) -> float:
        now = self._now_ms()
        if now > self._at_ms:
            self._tokens = min(float(self.quantum),
                               self._tokens + (now - self._at_ms) * self.rate / 1000)
            self._at_ms = now
        return self._tokens

    def ready(self) -> bool:
        """A throttled partition may be listed in a fetch now."""
        return not self.rate or self._refill() >= self.quantum

    def wait_ms(self) -> int:
        """How long until `ready` (0: now)."""
        if not self.rate:
            return 0
        missing = self.quantum - self._refill()
        return 0 if missing <= 0 else int(missing * 1000 / self.rate) + 1

    def reserve(self, partitions: int) -> int:
        """Reserve the size limit of each of `partitions` throttled partitions listed
        in one fetch: the quantum shared between them."""
        if not self.rate:
            return self.max_fetch_bytes
        self._refill()
        share = max(1, self.quantum // max(1, partitions))
        self._tokens -= share * partitions
        return share

    def settle(self, reserved: int, used: int) -> None:
        """A throttled partition's fetch answered `used` bytes of the `reserved`
        (0 used: the reservation is given back, e.g. the partition was forgotten)."""
        self.stats_throttled_bytes += used
        if self.rate:
            self._refill()
            self._tokens += reserved - used


class ThrottledAnswer:
    """One fetch answer's use of a bucket: the `wanting` throttled partitions it has
    records for share one reservation (`reserve(wanting)`), taken when the first of
    them is read, so every one of them gets its share of the quantum in the same
    answer; each is settled with what it read, and the shares of those not read come
    back with `close`. Per partition of an answer, never per record."""

    __slots__ = ("_left", "_share", "_throttle", "_wanting", "held")

    def __init__(self, throttle: ReplicationThrottle, wanting: int) -> None:
        self._throttle = throttle
        self._wanting = max(1, wanting)
        self._share = 0
        self._left = 0
        self.held = False  # a partition was left out for want of a quantum

    def take(self) -> int:
        """The size limit of the next throttled partition read; 0: held back (the
        bucket holds no quantum, or the reservation is used up)."""
        if not self._share:
            if self.held or not self._throttle.ready():
                self.held = True
                return 0
            self._share = self._throttle.reserve(self._wanting)
            self._left = self._wanting
        if self._left <= 0:
            self.held = True
            return 0
        self._left -= 1
        return self._share

    def settle(self, reserved: int, used: int) -> None:
        self._throttle.settle(reserved, used)

    def close(self) -> None:
        """The answer is complete: the shares nobody read come back."""
        if self._left > 0:
            self._throttle.settle(self._share * self._left, 0)
            self._left = 0
