"""tests/support/waiting.py: what a wait returns, what it swallows, and what it says
when the deadline passes."""

from __future__ import annotations

import itertools

import pytest

from tests.support.waiting import async_wait_until, wait_until


def test_returns_the_first_true_value() -> None:
    n = itertools.count()
    assert wait_until(lambda: next(n) >= 3 and "ready", 5, "three tries", interval_s=0) == "ready"


def test_names_what_and_the_last_value_after_the_deadline() -> None:
    with pytest.raises(AssertionError, match=r"not within 0.05 s: the flag \(last: 0\)"):
        wait_until(lambda: 0, 0.05, "the flag", interval_s=0.01)


def test_ignored_errors_count_as_not_yet_and_others_propagate() -> None:
    tries = itertools.count()

    def flaky() -> bool:
        if next(tries) < 2:
            raise OSError("refused")
        return True

    assert wait_until(flaky, 5, "a listener", interval_s=0, ignore=(OSError,))
    with pytest.raises(AssertionError, match=r"last: OSError\('refused'\)"):
        wait_until(lambda: (_ for _ in ()).throw(OSError("refused")), 0.05, "x",
                   interval_s=0.01, ignore=(OSError,))
    with pytest.raises(KeyError):
        wait_until(lambda: {}["missing"], 5, "x", ignore=(OSError,))


def test_what_may_be_computed_when_the_time_is_up() -> None:
    seen = []
    with pytest.raises(AssertionError, match=r"the port; tried 1, 2, 3"):
        wait_until(lambda: seen.append(len(seen) + 1), 0.05,
                   lambda: "the port; tried " + ", ".join(map(str, seen[:3])), interval_s=0.01)


def test_tried_once_even_with_no_time() -> None:
    assert wait_until(lambda: 7, 0, "at once") == 7


async def test_async_takes_a_coroutine_or_a_plain_predicate() -> None:
    n = itertools.count()

    async def ready() -> int:
        return next(n) >= 2 and 42

    assert await async_wait_until(ready, 5, "two tries", interval_s=0) == 42
    assert await async_wait_until(lambda: "plain", 5, "plain") == "plain"
    with pytest.raises(AssertionError, match=r"not within 0.05 s: never \(last: None\)"):
        await async_wait_until(lambda: None, 0.05, "never", interval_s=0.01)
    with pytest.raises(AssertionError, match="ValueError"):
        async def bad() -> bool:
            raise ValueError("not yet")
        await async_wait_until(bad, 0.05, "bad", interval_s=0.01, ignore=(ValueError,))
