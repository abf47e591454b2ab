"""Deadline (when sending must give up) and RetryPolicy (how long to wait before a retry)."""

from __future__ import annotations

import email.utils
import time

import pytest

from segops_fast import _delivery
from segops_fast._delivery import Deadline, RetryPolicy

# -- Deadline -------------------------------------------------------------------------------


def test_without_a_deadline_nothing_has_passed_and_nothing_is_left_to_count() -> None:
    deadline = Deadline()
    assert not deadline.passed()
    assert deadline.remaining() is None
    assert deadline.time_left() is None
    # A zero wait returns at once, not passed.
    assert deadline.sleep(0.0) is False


def test_a_deadline_counts_down_from_when_it_was_set() -> None:
    deadline = Deadline()
    before = time.monotonic()
    deadline.set(30.0)
    remaining = deadline.remaining()
    assert remaining is not None
    assert 30.0 - (time.monotonic() - before) <= remaining <= 30.0
    assert not deadline.passed()


def test_a_deadline_of_zero_has_passed() -> None:
    deadline = Deadline()
    deadline.set(0.0)
    assert deadline.remaining() == 0.0
    assert deadline.passed()
    assert deadline.remaining() == 0.0


def test_expiring_it_now_passes_it_but_keeps_the_time_that_was_set() -> None:
    deadline = Deadline()
    deadline.set(30.0)
    deadline.expire_now()
    assert deadline.passed()
    assert deadline.remaining() == 0.0
    # The requests under way may still use the time that was set.
    time_left = deadline.time_left()
    assert time_left is not None
    assert 29.0 < time_left <= 30.0


def test_no_time_is_left_once_the_moment_set_has_come() -> None:
    deadline = Deadline()
    deadline.set(0.0)
    assert deadline.time_left() == 0.0


def test_a_wait_that_would_outlast_the_deadline_gives_up_at_once() -> None:
    deadline = Deadline()
    deadline.set(60.0)
    began = time.monotonic()
    assert deadline.sleep(3600.0) is True
    # Gave up instead of waiting (a minute at least had it waited for the deadline); the
    # deadline itself has not passed: other threads may finish what they have under way.
    assert time.monotonic() - began < 60.0
    assert not deadline.passed()


def test_a_wait_ends_at_once_when_the_deadline_is_expired() -> None:
    deadline = Deadline()
    deadline.expire_now()
    assert deadline.sleep(3600.0) is True


# -- RetryPolicy --------------------------------------------------------------------------------


@pytest.fixture
def widest_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Full jitter draws from [0, window]: always the top, so the window shows."""
    monkeypatch.setattr(_delivery.random, "uniform", lambda low, high: high)


@pytest.mark.usefixtures("widest_jitter")
def test_the_backoff_window_doubles_from_the_base_up_to_the_cap() -> None:
    policy = RetryPolicy(10, 0.5, 30.0)
    assert [policy.delay(attempt, None) for attempt in range(8)] == [
        0.5,
        1.0,
        2.0,
        4.0,
        8.0,
        16.0,
        30.0,
        30.0,
    ]
    # A huge attempt number does not overflow the float.
    assert policy.delay(10_000, None) == 30.0


def test_the_wait_is_drawn_from_the_whole_window(monkeypatch: pytest.MonkeyPatch) -> None:
    drawn: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return low

    monkeypatch.setattr(_delivery.random, "uniform", uniform)
    assert RetryPolicy(5, 0.25, 30.0).delay(2, None) == 0.0
    assert drawn == [(0.0, 1.0)]


@pytest.mark.usefixtures("widest_jitter")
def test_retry_after_replaces_the_backoff_up_to_the_cap() -> None:
    policy = RetryPolicy(5, 0.5, 30.0)
    assert policy.delay(0, "7") == 7.0
    assert policy.delay(0, "2.5") == 2.5
    assert policy.delay(4, "0") == 0.0
    assert policy.delay(0, "3600") == 30.0
    # Not a number nor a date: the backoff applies.
    assert policy.delay(1, "soon") == 1.0
    assert policy.delay(1, "") == 1.0


def test_retry_after_as_an_http_date() -> None:
    policy = RetryPolicy(5, 0.5, 60.0)
    ahead = policy.asked_delay(email.utils.formatdate(time.time() + 20, usegmt=True))
    assert ahead is not None
    assert 18.9 <= ahead <= 20.0
    assert policy.asked_delay(email.utils.formatdate(time.time() - 20, usegmt=True)) == 0.0
    assert policy.asked_delay(email.utils.formatdate(time.time() + 3600, usegmt=True)) == 60.0


def test_asked_delay_is_none_without_a_usable_retry_after() -> None:
    policy = RetryPolicy(5, 0.5, 30.0)
    assert policy.asked_delay(None) is None
    assert policy.asked_delay("") is None
    assert policy.asked_delay("later") is None
    # A server's header is not trusted to mean "now" when it makes no sense.
    assert policy.asked_delay("-5") is None
    assert policy.asked_delay("nan") is None
    assert policy.asked_delay("inf") is None


def test_longest_wait_is_the_sum_of_the_capped_windows() -> None:
    assert RetryPolicy(5, 0.5, 30.0).longest_wait() == 0.5 + 1 + 2 + 4 + 8
    assert RetryPolicy(8, 0.5, 4.0).longest_wait() == 0.5 + 1 + 2 + 4 * 5
    assert RetryPolicy(0, 0.5, 30.0).longest_wait() == 0.0
    assert RetryPolicy(100, 1.0, 2.0).longest_wait() == 1.0 + 2.0 * 99
