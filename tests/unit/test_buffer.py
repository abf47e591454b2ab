"""EventBuffer: the bound, the order, and when the consumer is woken (called directly, on one
thread: the producers' and the consumer's sides in turn)."""

from __future__ import annotations

import pytest

from segops_fast import _buffer
from segops_fast._buffer import EventBuffer

from .fakes import records


class Buffer:
    """An EventBuffer and the count of times it woke its consumer."""

    def __init__(self, capacity: int, batch_size: int = 10) -> None:
        self.wakes = 0
        self.buffer = EventBuffer(capacity, batch_size, self._woken)

    def _woken(self) -> None:
        self.wakes += 1


def test_events_come_out_in_the_order_they_went_in_and_are_counted_taken() -> None:
    held = Buffer(100)
    events = records(5)
    assert all(held.buffer.append(event) for event in events)
    assert len(held.buffer) == 5
    assert held.buffer.take() == events
    assert (len(held.buffer), held.buffer.taken) == (0, 5)
    assert held.buffer.take() == []
    assert held.buffer.taken == 5


def test_an_append_beyond_the_bound_is_refused_and_the_taken_ones_free_room() -> None:
    held = Buffer(4)
    assert [held.buffer.append(event) for event in records(6)] == [True] * 4 + [False] * 2
    held.buffer.take()
    assert held.buffer.append(records(1)[0])


def test_events_taken_and_not_finished_still_count_against_the_bound() -> None:
    held = Buffer(4)
    for event in records(3):
        held.buffer.append(event)
    held.buffer.take()
    held.buffer.hold(3)
    assert [held.buffer.append(event) for event in records(2)] == [True, False]
    # Finished: the room comes back.
    held.buffer.hold(0)
    assert held.buffer.append(records(1)[0])


def test_the_first_event_wakes_the_idle_consumer_and_the_next_ones_do_not() -> None:
    held = Buffer(100, batch_size=10)
    for event in records(5):
        held.buffer.append(event)
    assert held.wakes == 1


def test_a_lingering_consumer_is_woken_once_by_the_event_that_completes_a_batch() -> None:
    held = Buffer(100, batch_size=10)
    held.buffer.append(records(1)[0])
    held.buffer.arm(first_event=False)
    for event in records(8):
        held.buffer.append(event)
    assert held.wakes == 1
    held.buffer.append(records(1)[0])  # the tenth
    assert held.wakes == 2
    held.buffer.append(records(1)[0])
    assert held.wakes == 2


def test_an_idle_consumer_armed_for_the_first_event_is_woken_by_it() -> None:
    held = Buffer(100, batch_size=10)
    held.buffer.append(records(1)[0])
    held.buffer.take()
    held.buffer.arm(first_event=True)
    held.buffer.append(records(1)[0])
    assert held.wakes == 2


def test_a_busy_consumer_is_woken_again_past_the_high_water_mark() -> None:
    held = Buffer(20, batch_size=10)
    held.buffer.append(records(1)[0])
    held.buffer.disarm()
    for event in records(9):
        held.buffer.append(event)
    assert held.wakes == 1
    held.buffer.append(records(1)[0])  # the eleventh, past half of 20
    assert held.wakes == 2


def test_a_closed_empty_buffer_refuses_the_next_append() -> None:
    held = Buffer(100)
    held.buffer.close()
    assert not held.buffer.append(records(1)[0])
    assert len(held.buffer) == 0


def test_holding_as_many_events_as_the_bound_leaves_no_room() -> None:
    held = Buffer(4)
    held.buffer.hold(4)
    assert not held.buffer.append(records(1)[0])
    held.buffer.hold(6)
    assert not held.buffer.append(records(1)[0])


@pytest.mark.parametrize("after_holding", [False, True])
def test_the_high_water_mark_is_half_the_bound(after_holding: bool) -> None:
    held = Buffer(21, batch_size=100)
    if after_holding:
        held.buffer.hold(0)
    held.buffer.append(records(1)[0])
    held.buffer.disarm()
    for event in records(9):
        held.buffer.append(event)
    assert held.wakes == 1
    held.buffer.append(records(1)[0])  # the eleventh, past half of 21 (10)
    assert held.wakes == 2


def test_a_producer_past_the_high_water_mark_yields_once_to_the_consumer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(_buffer.time, "sleep", sleeps.append)
    held = Buffer(20, batch_size=10)
    held.buffer.arm(first_event=False)
    for event in records(10):
        held.buffer.append(event)
    # Half full: the tenth event woke the consumer, and nobody yielded.
    assert (held.wakes, sleeps) == (1, [])
    held.buffer.append(records(1)[0])
    assert sleeps == [0]


def test_a_closed_buffer_refuses_every_append_and_keeps_what_it_had() -> None:
    held = Buffer(100)
    events = records(2)
    for event in events:
        held.buffer.append(event)
    held.buffer.close()
    assert not held.buffer.append(records(1)[0])
    held.buffer.hold(0)  # after close, holding changes nothing
    assert not held.buffer.append(records(1)[0])
    assert held.buffer.take() == events


def test_waiting_for_room_answers_at_once_when_there_is_room_or_none_will_come() -> None:
    held = Buffer(2)
    assert held.buffer.wait_for_room(0.0)
    for event in records(2):
        held.buffer.append(event)
    assert not held.buffer.wait_for_room(0.0)
    held.buffer.close()
    assert held.buffer.wait_for_room(0.0)
