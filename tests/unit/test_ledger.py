"""The ledger of events taken: numbering, the finished watermark and surrender, with no
server and no thread."""

from __future__ import annotations

import pytest

from segops_fast._batching import Batch
from segops_fast._buffer import EventBuffer
from segops_fast._encoding import Record
from segops_fast._ledger import Ledger, cut
from segops_fast._locks import OwnedLock
from segops_fast._schedule import SendSchedule
from segops_fast._stats import DeliveryCounters

CAPACITY = 20


def _record(number: int) -> Record:
    return (None, b'"user_id":"u","event_type":"e","payload":{"i":%d}' % number)


class _Ledger:
    """A ledger over a real buffer and schedule, its lock held around each call."""

    def __init__(self) -> None:
        self.lock = OwnedLock()
        self.buffer = EventBuffer(CAPACITY, batch_size=5, on_batch_ready=lambda: None)
        self.schedule = SendSchedule(1.0, guard=self.lock)
        self.counters = DeliveryCounters()
        self.ledger = Ledger(self.lock, self.buffer, self.schedule, self.counters)

    def track(self, count: int) -> None:
        for number in range(count):
            assert self.buffer.append(_record(number))

    def take_in_batches(self, *sizes: int) -> list[Batch]:
        """Take what waits and register it as batches of ``sizes`` events."""
        with self.lock:
            records, first = self.ledger.take()
        assert len(records) == sum(sizes)
        batches = []
        for size in sizes:
            batches.append(Batch(records[:size], "key", first))
            records, first = records[size:], first + size
        with self.lock:
            self.ledger.register(batches)
        return batches

    def finish(self, batch: Batch) -> bool:
        with self.lock:
            return self.ledger.finish(batch)

    def watermark(self) -> int:
        with self.lock:
            return self.ledger.watermark()


def test_events_are_numbered_in_the_order_they_are_taken() -> None:
    held = _Ledger()
    held.track(3)
    first = held.take_in_batches(3)
    held.track(2)
    second = held.take_in_batches(2)
    assert [batch.first for batch in (*first, *second)] == [0, 3]
    assert held.ledger.next_number == 5
    assert held.counters.snapshot(held.buffer.taken, len(held.buffer)).queued == 5


def test_taken_events_are_unfinished_before_their_batches_exist() -> None:
    held = _Ledger()
    held.track(4)
    with held.lock:
        records, first = held.ledger.take()
    # One entry stands for all four until the batches are registered.
    assert (len(records), first) == (4, 0)
    assert held.watermark() == 0
    assert held.ledger.busy()


def test_the_watermark_stops_at_the_oldest_unfinished_batch() -> None:
    held = _Ledger()
    held.track(9)
    first, middle, last = held.take_in_batches(3, 3, 3)
    assert held.finish(middle)
    assert held.watermark() == 0, "an earlier batch is still in flight: a gap is not done"
    assert held.finish(first)
    assert held.watermark() == 6
    assert held.finish(last)
    assert held.watermark() == 9


def test_a_batch_held_for_a_retry_keeps_the_watermark_below_it() -> None:
    held = _Ledger()
    held.track(6)
    retried, later = held.take_in_batches(3, 3)
    with held.lock:
        assert held.ledger.finish(retried)
        held.schedule.retry_later([retried])
    assert held.finish(later)
    assert held.watermark() == 0
    with held.lock:
        due = held.ledger.take_due(now=retried.retry_at)
    # Back in flight at once: a flush asked for now still waits for it.
    assert due == [retried]
    assert held.watermark() == 0
    assert held.finish(retried)
    assert held.watermark() == 6


def test_a_batch_unsent_while_the_api_is_down_keeps_the_watermark_below_it() -> None:
    held = _Ledger()
    held.track(4)
    (unsent,) = held.take_in_batches(4)
    with held.lock:
        held.ledger.forget(unsent)
        held.schedule.hold_unsent([unsent], ConnectionError("refused"), now=0.0)
    assert not held.ledger.busy()
    assert held.watermark() == 0
    assert held.ledger.has_work()


def test_events_held_count_against_the_buffers_bound_until_finished() -> None:
    held = _Ledger()
    held.track(15)
    (batch,) = held.take_in_batches(15)
    accepted = sum(held.buffer.append(_record(number)) for number in range(10))
    assert accepted == CAPACITY - 15
    assert held.finish(batch)
    with held.lock:
        held.ledger.count_held()
    assert held.buffer.append(_record(99))


def test_surrender_after_partial_settles_takes_everything_unfinished_once() -> None:
    held = _Ledger()
    held.track(9)
    acknowledged, retried, under_way = held.take_in_batches(3, 3, 3)
    with held.lock:
        assert held.ledger.finish(acknowledged)
        assert held.ledger.finish(retried)
        held.schedule.retry_later([retried])
    held.track(2)  # still in the buffer
    with held.lock:
        surrendered = held.ledger.surrender()
    assert [(batch.first, len(batch)) for batch in surrendered] == [(3, 3), (6, 3), (9, 2)]
    assert not held.ledger.busy()
    assert not held.ledger.has_work()
    assert held.watermark() == 11
    # The request under way answers late: ignored, so nothing is both dropped and sent.
    assert not held.finish(under_way)
    # Nothing is held any more: the whole bound is free again.
    assert sum(held.buffer.append(_record(number)) for number in range(CAPACITY)) == CAPACITY


def test_cut_numbers_batches_on_from_the_first_record() -> None:
    records = [_record(number) for number in range(5)]
    batches = cut(records, 40, max_batch_bytes=200)
    assert len(batches) > 1
    assert [batch.first for batch in batches] == [
        40 + sum(len(batch) for batch in batches[:index]) for index in range(len(batches))
    ]
    assert sum(len(batch) for batch in batches) == 5
    assert cut([], 7, max_batch_bytes=200) == []


@pytest.mark.parametrize("size", [1, 3])
def test_take_held_empties_the_schedule(size: int) -> None:
    held = _Ledger()
    held.track(size)
    batches = held.take_in_batches(size)
    with held.lock:
        held.ledger.forget(batches[0])
        held.schedule.retry_later(batches)
        assert held.ledger.take_held() == batches
    assert not held.ledger.has_work()
    assert held.watermark() == size
