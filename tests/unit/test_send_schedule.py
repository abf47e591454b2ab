"""SendSchedule: the batches held back, and when each is due."""

from __future__ import annotations

from segops_fast._batching import Batch
from segops_fast._schedule import SendSchedule

from .fakes import batch

INTERVAL = 0.5


def _retrying(first: int, at: float, count: int = 2) -> Batch:
    held = batch(count, f"k{first}", first)
    held.retry_at = at
    return held


def test_an_empty_schedule_holds_nothing_and_nothing_is_due() -> None:
    schedule = SendSchedule(INTERVAL)
    assert not schedule
    assert schedule.held_events() == 0
    assert schedule.seconds_until_retry(100.0) is None
    assert schedule.seconds_until_unsent_due(0.0) == 0.0
    assert schedule.seconds_paused(0.0) == 0.0
    assert schedule.take_due(100.0, unsent_too=True) == []
    assert not schedule.waiting_for_api
    assert schedule.unavailable_error is None


def test_retries_are_due_at_their_own_time_oldest_first() -> None:
    schedule = SendSchedule(INTERVAL)
    late, early, middle = _retrying(10, 30.0), _retrying(0, 10.0), _retrying(5, 20.0, 5)
    schedule.retry_later([late, early])
    schedule.retry_later([middle])
    assert schedule.held_events() == 9
    assert schedule.seconds_until_retry(4.0) == 6.0
    assert schedule.take_due(9.9, unsent_too=False) == []
    assert schedule.take_due(20.0, unsent_too=False) == [early, middle]
    assert schedule.seconds_until_retry(25.0) == 5.0
    assert schedule.seconds_until_retry(31.0) == 0.0
    assert schedule.take_due(31.0, unsent_too=False) == [late]
    assert not schedule


def test_batches_the_api_could_not_take_wait_together_and_come_first() -> None:
    schedule = SendSchedule(INTERVAL)
    error = ConnectionRefusedError("refused")
    second, first = batch(2, "b", 2), batch(2, "a", 0)
    schedule.hold_unsent([second], error, now=100.0)
    schedule.hold_unsent([first], error, now=101.0)
    assert schedule.waiting_for_api
    assert schedule.unavailable_error is error
    # Tried again one flush_interval after the last failure.
    assert schedule.seconds_until_unsent_due(101.0) == INTERVAL
    assert schedule.seconds_until_unsent_due(200.0) == 0.0
    # Not taken with the retries unless asked.
    assert schedule.take_due(200.0, unsent_too=False) == []
    retry = _retrying(4, 150.0)
    schedule.retry_later([retry])
    assert schedule.take_due(200.0, unsent_too=True) == [first, second, retry]
    assert not schedule.waiting_for_api
    assert schedule.unavailable_error is None
    assert not schedule
    # The API fails again: held again, alone.
    third = batch(1, "c", 4)
    schedule.hold_unsent([third], error, now=300.0)
    assert schedule.take_due(400.0, unsent_too=True) == [third]


def test_it_holds_something_while_either_kind_of_batch_waits() -> None:
    retrying, unsent = SendSchedule(INTERVAL), SendSchedule(INTERVAL)
    retrying.retry_later([_retrying(0, 10.0)])
    unsent.hold_unsent([batch(1)], OSError("down"), now=0.0)
    assert retrying
    assert unsent
    assert not retrying.waiting_for_api
    assert unsent.waiting_for_api


def test_a_pause_only_ever_grows() -> None:
    schedule = SendSchedule(INTERVAL)
    assert schedule.seconds_paused(0.0) == 0.0
    schedule.pause_until(10.0)
    schedule.pause_until(5.0)
    assert schedule.resume_at == 10.0
    assert schedule.seconds_paused(4.0) == 6.0
    assert schedule.seconds_paused(12.0) == 0.0


def test_take_all_empties_it_oldest_first() -> None:
    schedule = SendSchedule(INTERVAL)
    unsent, retry = batch(3, "u", 10), _retrying(0, 50.0)
    schedule.hold_unsent([unsent], OSError("down"), now=0.0)
    schedule.retry_later([retry])
    assert sorted(held.first for held in schedule) == [0, 10]
    assert schedule.held_events() == 5
    assert schedule.take_all() == [retry, unsent]
    assert not schedule
    assert schedule.held_events() == 0
