"""Every event taken from the buffer, until it is finished: numbering and the in-flight set.

This module owns the numbers events get as they are taken from the buffer, the batches
taken and not finished (in a request, about to be, or held back in the send schedule),
the finished watermark, surrender at the deadline, and keeping the buffer's bound counting
what is held. It keeps no lock and starts no thread: its state (and the send schedule's) is
guarded by the pipeline's lock, which the cycle and the drivers hold around every call
(checked with ``SEGOPS_FAST_DEBUG_LOCKS=1``, see ``_locks.py``). It does not
own sending, flush requests, or telling anyone about events given up.

Numbering
---------
Events are numbered in the order they were taken from the buffer. A flush is done when
every event numbered below its target is *finished* (acknowledged or given up); the
finished watermark is the lowest number still in flight or held back. Taken events not
finished yet still count against the buffer's bound.

The ledger's part in exactly-once
---------------------------------
* Every batch is registered before the first is sent (``Ledger.register()``): a flush
  asked for meanwhile must never see a gap and think later events finished.
* ``Ledger.surrender()`` empties the in-flight set, so an answer that comes later for a
  batch given up is ignored (``Ledger.finish()`` returns False): no event is both
  dropped and sent.
* Between ``Ledger.take()`` and ``Ledger.register()`` one entry stands for everything
  taken, so the events are never unaccounted for while they are cut into batches.
"""

from __future__ import annotations

import time

from ._batching import Batch, assemble_batches
from ._buffer import EventBuffer
from ._encoding import Record
from ._locks import PipelineLock, lock_held
from ._schedule import SendSchedule
from ._stats import DeliveryCounters


def cut(records: list[Record], first: int, max_batch_bytes: int) -> list[Batch]:
    """The batches of ``records`` (taken together, numbered from ``first``), in order."""
    if not records:
        return []
    batches = list(assemble_batches(records, max_batch_bytes))
    for batch in batches:
        batch.first = first
        first += len(batch)
    return batches


class Ledger:
    """The events taken and not finished. Guarded by the pipeline's lock."""

    def __init__(
        self,
        guard: PipelineLock,
        buffer: EventBuffer,
        schedule: SendSchedule,
        counters: DeliveryCounters,
    ) -> None:
        self._guard = guard
        self._buffer = buffer
        #: The batches held back; guarded by the same lock.
        self.schedule = schedule
        self._counters = counters
        #: First event number -> each batch taken and not finished (sent, being sent, or
        #: about to be); right after a take, one stands for everything taken.
        self._in_flight: dict[int, Batch] = {}
        #: The number the next event taken from the buffer gets.
        self.next_number = 0
        #: When (``time.monotonic()``) events were last taken; None before the first take.
        #: Whatever is in the buffer now arrived after it.
        self.last_take: float | None = None

    @lock_held
    def take(self) -> tuple[list[Record], int]:
        """Take everything waiting in the buffer; the records and the number of the first.

        The events count as unfinished from this moment: until their batches are
        registered, one entry for all of them stands in the in-flight set, so no flush can
        think them done.
        """
        first = self.next_number
        records = self._buffer.take()
        if records:
            self._counters.taken(len(records))
            self._in_flight[first] = Batch(records, "", first)
            self.next_number += len(records)
            self.count_held()
            self.last_take = time.monotonic()
        return records, first

    @lock_held
    def register(self, batches: list[Batch]) -> None:
        """Mark ``batches`` in flight, before the first of them is sent (this also replaces
        the entry that stood for all the records since they were taken)."""
        for batch in batches:
            self._in_flight[batch.first] = batch

    @lock_held
    def take_due(self, now: float) -> list[Batch]:
        """The retries due and the batches waiting for the API, registered in flight at
        once: unfinished without a gap, a flush asked for now must still wait for them."""
        due = self.schedule.take_due(now, unsent_too=True)
        self.register(due)
        return due

    @lock_held
    def forget(self, batch: Batch) -> None:
        """``batch`` leaves the in-flight set unsent (the caller holds it back)."""
        del self._in_flight[batch.first]

    @lock_held
    def finish(self, batch: Batch) -> bool:
        """An attempt at ``batch`` came back: True, or False if it was given up while under
        way (then it is settled already and the answer must be ignored)."""
        if self._in_flight.get(batch.first) is not batch:
            return False
        del self._in_flight[batch.first]
        return True

    @lock_held
    def count_held(self) -> None:
        """Events taken but not finished still count against the queue bound, so that the
        buffer and the requests together never hold more than ``max_queue_size`` (an
        outage must not let a second full queue build up behind the retries)."""
        held = sum(len(batch) for batch in self._in_flight.values())
        self._buffer.hold(held + self.schedule.held_events())

    @lock_held
    def take_held(self) -> list[Batch]:
        """Remove and return the batches held back (waiting for the API or a retry)."""
        held = self.schedule.take_all()
        self.count_held()
        return held

    @lock_held
    def surrender(self) -> list[Batch]:
        """Remove and return, oldest first, every batch not finished: in flight, held
        back, and whatever still waits in the buffer. An answer that comes later for one
        of them is ignored (see ``finish()``)."""
        unanswered = list(self._in_flight.values())
        held = self.schedule.take_all()
        self._in_flight.clear()
        waiting, first = self.take()
        if waiting:
            held.append(self._in_flight.pop(first))
        self.count_held()
        return sorted([*unanswered, *held], key=lambda batch: batch.first)

    def busy(self) -> bool:
        """True while a batch is in flight."""
        return bool(self._in_flight)

    def has_work(self) -> bool:
        """True while batches are held back or events wait in the buffer."""
        return bool(self.schedule or len(self._buffer))

    def watermark(self) -> int:
        """Every event numbered below this is finished."""
        waiting = [*self._in_flight, *(batch.first for batch in self.schedule)]
        return min(waiting) if waiting else self.next_number

    def unfinished(self) -> list[Batch]:
        """The batches in flight and held back, oldest first."""
        return sorted([*self._in_flight.values(), *self.schedule], key=lambda batch: batch.first)
