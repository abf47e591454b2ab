"""One sending cycle against a scripted delivery, on the test's own thread: the orderings
that exactly-once rests on (every batch registered before the first is sent, batches let go
of as they are sent, a late answer ignored after abandon), and the driver that runs it on
the caller's thread (uWSGI without threads). No server, no thread, no sleep."""

from __future__ import annotations

import threading
from typing import Callable

from segops_fast._batching import Batch
from segops_fast._buffer import EventBuffer
from segops_fast._cycle import Cycle
from segops_fast._delivery import REASON_SHUTDOWN_DEADLINE, Attempted, Deadline, GivenUp
from segops_fast._encoding import Record, encode_event
from segops_fast._flush_requests import FlushRequests
from segops_fast._inline import InlineSender
from segops_fast._ledger import Ledger
from segops_fast._locks import OwnedLock
from segops_fast._schedule import SendSchedule
from segops_fast._stats import DeliveryCounters

#: Small enough that every few events make a batch of their own.
MAX_BATCH_BYTES = 200
#: The inline sender's batch.
BATCH_SIZE = 4


class _ScriptedDelivery:
    """Acknowledges every batch, after calling ``during`` as if the request were under way."""

    def __init__(self) -> None:
        self.during: Callable[[Batch], None] = lambda batch: None

    def attempt_batch(self, batch: Batch) -> Attempted:
        self.during(batch)
        return Attempted(acknowledged=[(len(batch), 100)])


class _Cycle:
    def __init__(self) -> None:
        self.lock = OwnedLock()
        self.buffer = EventBuffer(1000, 1000, lambda: None)
        self.counters = DeliveryCounters()
        self.delivery = _ScriptedDelivery()
        self.deadline = Deadline()
        self.given_up: list[GivenUp] = []
        self.errors: list[BaseException] = []
        self.ledger = Ledger(
            self.lock, self.buffer, SendSchedule(1.0, guard=self.lock), self.counters
        )
        self.cycle = Cycle(
            ledger=self.ledger,
            requests=FlushRequests(self.lock, outage_patience=30.0),
            buffer=self.buffer,
            delivery=self.delivery,  # type: ignore[arg-type]
            counters=self.counters,
            guard=self.lock,
            wake=threading.Event(),
            deadline=self.deadline,
            flush_interval=1.0,
            max_batch_bytes=MAX_BATCH_BYTES,
            max_in_flight=1,
            on_given_up=self.given_up.append,
            report_error=self.errors.append,
        )

    def track(self, count: int) -> None:
        for number in range(count):
            assert self.buffer.append(_event(number))

    def inline(self) -> InlineSender:
        return InlineSender(
            cycle=self.cycle,
            buffer=self.buffer,
            batch_size=BATCH_SIZE,
            flush_interval=3600.0,
            deadline=self.deadline,
        )

    def sent(self) -> int:
        return self.counters.snapshot(self.buffer.taken, len(self.buffer)).sent


def _event(number: int) -> Record:
    return encode_event("u", "e", None, {"i": number}, 10_000)


def test_every_batch_is_registered_before_the_first_is_sent() -> None:
    held = _Cycle()
    held.track(10)
    unfinished_at_each_send: list[list[int]] = []
    held.delivery.during = lambda batch: unfinished_at_each_send.append(
        [unfinished.first for unfinished in held.ledger.unfinished()]
    )
    request = held.cycle.open_request()
    assert request is not None
    assert held.cycle.run(final=False)
    # At the first send every batch of the cycle is already in flight: no gap a flush
    # could mistake for finished events.
    everything = unfinished_at_each_send[0]
    assert len(everything) > 1
    assert unfinished_at_each_send == [everything[index:] for index in range(len(everything))]
    assert request.wait(0)
    assert request.error is None
    stats = held.counters.snapshot(held.buffer.taken, len(held.buffer))
    assert (stats.sent, stats.queued) == (10, 0)


def test_batches_are_let_go_of_as_they_are_sent() -> None:
    held = _Cycle()
    held.track(10)
    with held.lock:
        records, first = held.ledger.take()
    batches = [Batch(records[index : index + 2], "key", first + index) for index in (0, 2, 4)]
    left_at_each_send: list[int] = []
    held.delivery.during = lambda batch: left_at_each_send.append(len(batches))
    held.cycle._dispatch(batches)
    assert left_at_each_send == [2, 1, 0]
    assert batches == []


def test_an_answer_that_comes_after_abandon_is_ignored() -> None:
    held = _Cycle()
    held.track(6)
    held.deadline.set(0.0)
    # The shutdown deadline passes while the first request is under way.
    held.delivery.during = lambda batch: held.cycle.surrender.abandon() and None
    assert not held.cycle.run(final=True)
    stats = held.counters.snapshot(held.buffer.taken, len(held.buffer))
    # The server acknowledged it, but it had been given up already: dropped, never sent.
    assert (stats.sent, stats.dropped, stats.queued) == (0, 6, 0)
    assert held.cycle.surrender.given_up_at_deadline == 6
    assert {part.reason for part in held.given_up} == {REASON_SHUTDOWN_DEADLINE}
    assert sum(len(part.events) for part in held.given_up) == 6
    # A second abandon gives up nothing more and reports the same count.
    assert held.cycle.surrender.abandon() == 6
    assert len(held.given_up) == len({part.first for part in held.given_up})


def test_the_inline_sender_sends_a_due_batch_from_the_appending_thread() -> None:
    held = _Cycle()
    inline = held.inline()
    senders: list[bool] = []
    held.delivery.during = lambda batch: senders.append(inline.is_own_thread)
    for number in range(BATCH_SIZE - 1):
        assert inline.append(_event(number))
    assert held.sent() == 0, "not due before batch_size events wait"
    assert not inline.is_own_thread
    assert inline.append(_event(BATCH_SIZE))
    assert held.sent() == BATCH_SIZE
    # While it sent, this thread was the sending one: its callbacks may not flush.
    assert senders
    assert all(senders)
    assert not inline.is_own_thread


def test_an_event_tracked_while_the_inline_sender_sends_waits_for_the_next_send() -> None:
    held = _Cycle()
    inline = held.inline()
    held.track(BATCH_SIZE - 1)
    tracked_while_sending: list[bool] = []

    def track_a_batch_from_a_callback(batch: Batch) -> None:
        if not tracked_while_sending:
            tracked_while_sending.extend(inline.append(_event(99)) for _ in range(BATCH_SIZE))

    held.delivery.during = track_a_batch_from_a_callback
    assert inline.append(_event(BATCH_SIZE))
    # A whole batch, due, but not sent from inside the send under way: it stays queued.
    assert tracked_while_sending == [True] * BATCH_SIZE
    assert (held.sent(), len(held.buffer)) == (BATCH_SIZE, BATCH_SIZE)
    inline.drain(final=False)
    assert (held.sent(), len(held.buffer)) == (2 * BATCH_SIZE, 0)
