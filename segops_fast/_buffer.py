"""The bounded buffer between the threads that track events and the one that sends them.

This module owns the queue of encoded events, its bound, and the decision of when the
consumer must be told that a batch is waiting. It does not own the consumer thread, the
full-queue policy (the client applies it when :meth:`EventBuffer.append` refuses), or
what is sent.

Why a ``collections.deque`` is the ring
---------------------------------------
A ring buffer's point is that producers and the consumer never wait for each other. In
CPython, ``deque.append`` and ``deque.popleft`` are single C calls that never release the
GIL, so each is atomic with respect to every other thread: many producers may append
while one consumer pops from the other end, with no lock of ours. The deque is stored as
a ring of fixed 64-slot blocks, so neither end ever moves the elements.

Under free-threaded CPython (3.13t and later, no GIL) the deque stays safe: each deque
method runs inside the object's own critical section (PEP 703), a short per-object mutex
held only for the pointer update and never while Python code runs. There is no lock a
thread can hold across a call, so no convoys and nothing a fork can inherit locked.

The bound is checked before appending, without a lock, so concurrent producers can
overshoot it by at most one event each: the bound holds to within the number of producer
threads. That is the price of never taking a lock on the hot path, and it is a fixed,
small number of extra events. A home-made ring of slots and indices would need a lock or
an atomic compare-and-swap that Python does not offer, and would be slower than the deque.

Waking the consumer
-------------------
Producers must not signal the consumer on every event: ``Event.set`` takes a lock and
wakes a thread. Instead :attr:`_attention_at` holds the queue length at which a producer
should leave the fast path. While the consumer lingers over waiting events it is
``batch_size - 1``, so the producer whose event completes a batch wakes it, once; while
the consumer is idle it is 0, so the next event wakes it (and starts its linger). The
consumer re-arms it before it sleeps again. While the consumer is busy it is the
high-water mark, half the capacity. A race between a producer and the re-arming
consumer can delay the wake by one event, never lose events: the consumer's first sleep
after arming is bounded by the flush interval.

Above the high-water mark
-------------------------
With the GIL, threads take turns in 5 ms slices: four producer threads in a tight loop
leave the consumer a fifth of the interpreter, and a burst fills the buffer faster than
it can be emptied (measured: 60,000 of 200,000 events dropped). So a producer that finds
the buffer more than half full yields the GIL once (``time.sleep(0)``) after appending,
letting the consumer run. In normal operation the buffer is nearly empty and this costs
nothing; in a burst it turns drops into a short slowdown of the producers (the demo's
track() p99 rises to about 100 us while none of its 200,000 events is dropped).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from ._encoding import Record


class EventBuffer:
    """A bounded multi-producer, single-consumer queue of encoded events."""

    def __init__(self, capacity: int, batch_size: int, on_batch_ready: Callable[[], None]) -> None:
        self._queue: deque[Record] = deque()
        #: The bound on events here plus events taken and not yet finished.
        self._bound = capacity
        #: Room for events here: the bound less what the consumer holds.
        self._capacity = capacity
        self._high_water = capacity // 2
        self._batch_size = batch_size
        self._on_batch_ready = on_batch_ready
        # Zero sends the very first event down the slow path: it starts the consumer.
        self._attention_at = 0
        #: How many records the consumer has taken, ever; only the consumer writes it.
        self.taken = 0
        self._closed = False
        self._room = threading.Condition(threading.Lock())
        self._producers_waiting_for_room = 0

    def __len__(self) -> int:
        return len(self._queue)

    def append(self, record: Record) -> bool:
        """Add ``record`` unless the buffer is full or closed; never blocks."""
        queue = self._queue
        if len(queue) < self._attention_at:
            queue.append(record)
            return True
        if len(queue) >= self._capacity:
            return False
        # An armed threshold, the initial zero, or the high-water mark led here.
        queue.append(record)
        self._attention_at = self._high_water
        self._on_batch_ready()
        if len(queue) > self._high_water:
            # Releases the GIL, so that the consumer waiting for it runs now.
            time.sleep(0)
        return True

    def wait_for_room(self, timeout: float | None) -> bool:
        """Block until the buffer is below its bound or closed (True), or ``timeout`` passes."""
        with self._room:
            self._producers_waiting_for_room += 1
            try:
                return self._room.wait_for(
                    lambda: self._closed or len(self._queue) < self._capacity, timeout
                )
            finally:
                self._producers_waiting_for_room -= 1

    def arm(self, *, first_event: bool) -> None:
        """Consumer, before sleeping: have the producer that completes a batch wake it, or
        with ``first_event``, the producer of the next event (the consumer is idle)."""
        self._attention_at = 0 if first_event else min(self._batch_size - 1, self._high_water)

    def disarm(self) -> None:
        """Consumer, once awake: producers stay on the fast path until the high-water mark."""
        self._attention_at = self._high_water

    def hold(self, events: int) -> None:
        """Consumer: ``events`` taken earlier are not finished; they count against the bound.

        The fast path of :meth:`append` never looks at the capacity, only at
        :attr:`_attention_at`, so that threshold is kept at or below the capacity.
        """
        if self._closed:
            return
        capacity = max(0, self._bound - events)
        grew = capacity > self._capacity
        self._capacity = capacity
        self._high_water = min(self._bound // 2, capacity)
        self._attention_at = min(self._attention_at, self._high_water)
        if grew and self._producers_waiting_for_room:
            with self._room:
                self._room.notify_all()

    def take(self) -> list[Record]:
        """Consumer only: remove and return everything waiting, oldest first."""
        queue = self._queue
        popleft = queue.popleft
        records = [popleft() for _ in range(len(queue))]
        self.taken += len(records)
        if records and self._producers_waiting_for_room:
            with self._room:
                self._room.notify_all()
        return records

    def close(self) -> None:
        """Refuse every later append; what is already queued stays for the consumer."""
        self._capacity = 0
        self._high_water = 0
        self._attention_at = 0
        with self._room:
            self._closed = True
            self._room.notify_all()
