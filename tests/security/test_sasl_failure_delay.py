"""The hold on failed SASL attempts per source address (`SaslAuthority.failure_delay`,
capped by `sasl.failure.delay.max.ms`): it doubles up to exactly the cap and never past
it however the failures are spread in time, one address's failures do not hold back
another's, and the table of tracked addresses is bounded, dropping the address idle
longest first. The time the books read is a manual clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from dmq.config import ConfigError, parse_config
from dmq.security import sasl
from dmq.security.sasl import FIRST_FAILURE_DELAY_S, MAX_TRACKED_ADDRESSES, SaslAuthority
from dmq.security.scram import CredentialStore, make_credential


class ManualTime:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> ManualTime:
    t = ManualTime()
    monkeypatch.setattr(sasl.time, "monotonic", t)
    return t


def authority(tmp_path: Path, cap_ms: int) -> SaslAuthority:
    """An authority made as a node makes it, from its settings."""
    users = tmp_path / "users.json"
    CredentialStore({"alice": {"SCRAM-SHA-256": make_credential("pw-123456")}}).save(users)
    config = parse_config({"controllers": [{"id": 1, "host": "127.0.0.1", "port": 1}],
                           "brokers": [], "settings": {
                               "sasl.enabled.mechanisms": "SCRAM-SHA-256",
                               "sasl.credentials.file": str(users),
                               "sasl.failure.delay.max.ms": cap_ms}})
    auth = SaslAuthority.from_config(config, 1)
    assert auth is not None
    return auth


def fail(auth: SaslAuthority, host: str) -> float:
    """One failed attempt from `host`, booked as the servers book it: the hold."""
    auth.note_failure(host, "mallory", "bad proof")
    return auth.failure_delay(host)


@pytest.mark.parametrize(("cap_ms", "expected"), [
    (750, [0.1, 0.2, 0.4, 0.75]),  # a cap between two doublings is reached exactly
    (800, [0.1, 0.2, 0.4, 0.8]),  # a cap on a doubling
    (30, [0.03]),  # a cap below the first hold holds every attempt for the cap
    (0, [0.0]),
])
def test_the_hold_doubles_up_to_exactly_the_cap_and_never_past_it(
        tmp_path: Path, clock: ManualTime, cap_ms: int, expected: list[float]) -> None:
    auth = authority(tmp_path, cap_ms)
    assert auth.max_failure_delay_s == cap_ms / 1000
    holds = []
    for i in range(2000):  # far past the doubling that would overflow a float
        holds.append(fail(auth, "10.0.0.1"))
        clock.now += 0.001 if i % 2 else 3600.0  # bursts and hours apart alike
    assert holds[:len(expected)] == pytest.approx(expected, abs=0, rel=1e-12)
    assert holds[len(expected):] == [cap_ms / 1000] * (2000 - len(expected))
    assert max(holds) == cap_ms / 1000
    assert holds == sorted(holds)  # never shorter while the failures go on


def test_a_negative_cap_is_refused_naming_the_setting(tmp_path: Path) -> None:
    """(It held nothing: every failed attempt was answered at once.)"""
    with pytest.raises(ConfigError, match=r"sasl.failure.delay.max.ms must be >= 0, got -1"):
        authority(tmp_path, -1)


def test_one_address_failures_do_not_hold_back_another(tmp_path: Path,
                                                      clock: ManualTime) -> None:
    auth = authority(tmp_path, 5000)
    for _ in range(50):
        fail(auth, "10.0.0.1")
    assert fail(auth, "10.0.0.2") == FIRST_FAILURE_DELAY_S
    assert fail(auth, "10.0.0.1") == 5.0  # still held at the cap
    assert fail(auth, "10.0.0.2") == 2 * FIRST_FAILURE_DELAY_S  # its own count
    auth.note_success("10.0.0.1")  # a success clears that address alone
    assert fail(auth, "10.0.0.1") == FIRST_FAILURE_DELAY_S
    assert fail(auth, "10.0.0.2") == 4 * FIRST_FAILURE_DELAY_S


def test_the_tracked_addresses_are_bounded_and_the_longest_idle_goes_first(
        tmp_path: Path, clock: ManualTime) -> None:
    """A flood of one-off failures from new addresses keeps the table at
    `MAX_TRACKED_ADDRESSES`, and does not reset the hold of an address that is still
    failing (it was the first one tracked, not the one idle longest)."""
    auth = authority(tmp_path, 5000)
    for _ in range(10):
        fail(auth, "192.0.2.1")  # a guesser, held at the cap from now on
    for i in range(2 * MAX_TRACKED_ADDRESSES):
        host = f"2001:db8::{i:x}"
        fail(auth, host)
        clock.now += 0.01
        if i % 100 == 0:
            assert fail(auth, "192.0.2.1") == 5.0  # keeps failing: kept, still held
        assert len(auth._failures) <= MAX_TRACKED_ADDRESSES
    assert len(auth._failures) == MAX_TRACKED_ADDRESSES
    assert "192.0.2.1" in auth._failures
    # the one-off addresses seen first are gone: a new failure there starts over
    assert "2001:db8::0" not in auth._failures
    assert fail(auth, "2001:db8::0") == FIRST_FAILURE_DELAY_S
    assert len(auth._failures) == MAX_TRACKED_ADDRESSES
