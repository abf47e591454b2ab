"""on_full="block": producers waiting for room in the buffer are woken when room comes.

Threads, but no server: each producer blocks in ``EventBuffer.wait_for_room`` and the
consumer's side (taking events, or finishing events it held) must wake every one of them.
"""

from __future__ import annotations

import threading

from segops_fast._buffer import EventBuffer

from .conftest import DEADLINE_MARGIN_SECONDS, wait_until
from .unit.fakes import records


def _full_buffer() -> EventBuffer:
    buffer = EventBuffer(2, 10, lambda: None)
    for event in records(2):
        assert buffer.append(event)
    return buffer


def _waiting_producers(
    buffer: EventBuffer, count: int
) -> tuple[list[threading.Thread], list[bool]]:
    answers: list[bool] = []

    def wait() -> None:
        # No timeout: only a wake-up lets it return (daemon, should that never come).
        answers.append(buffer.wait_for_room(None))

    producers = [threading.Thread(target=wait, daemon=True) for _ in range(count)]
    for producer in producers:
        producer.start()
    wait_until(lambda: buffer._producers_waiting_for_room == count)
    return producers, answers


def _join(producers: list[threading.Thread]) -> None:
    for producer in producers:
        producer.join(DEADLINE_MARGIN_SECONDS * 4)
        assert not producer.is_alive()


def test_taking_events_wakes_every_producer_waiting_for_room() -> None:
    buffer = _full_buffer()
    producers, answers = _waiting_producers(buffer, 2)
    buffer.take()
    _join(producers)
    assert answers == [True, True]
    assert buffer._producers_waiting_for_room == 0


def test_finishing_held_events_wakes_every_producer_waiting_for_room() -> None:
    buffer = EventBuffer(2, 10, lambda: None)
    buffer.hold(2)
    producers, answers = _waiting_producers(buffer, 2)
    buffer.hold(0)
    _join(producers)
    assert answers == [True, True]


def test_closing_wakes_producers_waiting_for_room() -> None:
    buffer = _full_buffer()
    producers, answers = _waiting_producers(buffer, 1)
    buffer.close()
    _join(producers)
    assert answers == [True]
