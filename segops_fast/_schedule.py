"""When batches that could not go out at once are due again.

This module owns the batches that wait outside the buffer, and the times they wait for:

* a batch answered 429 or 5xx (or not answered) waits for its own retry time; meanwhile
  newer batches go out, so one batch's backoff delays nobody else's events;
* a ``Retry-After`` from the server pauses all sending until it ends;
* while the API cannot be reached (or no session token can be had), the batches in hand
  wait together and are tried again once per ``flush_interval``, before anything newer.

It keeps no lock and starts no thread: its state is guarded by the pipeline's lock, which
the cycle and the drivers hold around every mutating call (checked with
``SEGOPS_FAST_DEBUG_LOCKS=1``, see ``_locks.py``). It does not own sending,
the buffer, or flush requests.
"""

from __future__ import annotations

from collections.abc import Iterator

from ._batching import Batch
from ._locks import PipelineLock, lock_held


class SendSchedule:
    """The batches held back, and when the next of them is due. Guarded by the pipeline's
    lock."""

    def __init__(
        self, unreachable_retry_interval: float, *, guard: PipelineLock | None = None
    ) -> None:
        #: The pipeline's lock; None for a schedule used alone (a unit test's).
        self._guard = guard
        self._unreachable_retry_interval = unreachable_retry_interval
        #: Batches waiting for their next attempt, each until its ``retry_at``.
        self._retrying: list[Batch] = []
        #: Batches waiting for the API to be reachable, oldest first.
        self._unsent: list[Batch] = []
        #: Why the API could not be reached on the last attempt; None while it can be.
        self.unavailable_error: BaseException | None = None
        #: When (``time.monotonic()``) the unsent batches are tried again.
        self._unsent_due_at = 0.0
        #: Nothing is sent before this moment: the server asked so.
        self.resume_at = 0.0

    # -- holding batches back ------------------------------------------------------------------

    @lock_held
    def retry_later(self, batches: list[Batch]) -> None:
        """Hold ``batches`` until each one's ``retry_at``."""
        self._retrying.extend(batches)

    @lock_held
    def hold_unsent(self, batches: list[Batch], error: BaseException, now: float) -> None:
        """The API could not be reached: hold ``batches`` until the next try."""
        self._unsent.extend(batches)
        self._unsent.sort(key=lambda batch: batch.first)
        self.unavailable_error = error
        self._unsent_due_at = now + self._unreachable_retry_interval

    @lock_held
    def pause_until(self, moment: float) -> None:
        self.resume_at = max(self.resume_at, moment)

    # -- what is due -----------------------------------------------------------------------------

    @property
    def waiting_for_api(self) -> bool:
        return bool(self._unsent)

    @lock_held
    def take_due(self, now: float, *, unsent_too: bool) -> list[Batch]:
        """Remove and return, oldest first, the retries due by ``now`` and, if
        ``unsent_too``, every batch waiting for the API."""
        due = [batch for batch in self._retrying if batch.retry_at <= now]
        if due:
            self._retrying = [batch for batch in self._retrying if batch.retry_at > now]
        if unsent_too and self._unsent:
            due += self._unsent
            self._unsent = []
            self.unavailable_error = None
        return sorted(due, key=lambda batch: batch.first)

    def seconds_until_retry(self, now: float) -> float | None:
        """How long until the next retry is due (0.0: now); None if none waits."""
        if not self._retrying:
            return None
        return max(0.0, min(batch.retry_at for batch in self._retrying) - now)

    def seconds_until_unsent_due(self, now: float) -> float:
        return max(0.0, self._unsent_due_at - now)

    def seconds_paused(self, now: float) -> float:
        return max(0.0, self.resume_at - now)

    # -- what is held ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Batch]:
        yield from self._unsent
        yield from self._retrying

    def held_events(self) -> int:
        return sum(len(batch) for batch in self)

    def __bool__(self) -> bool:
        return bool(self._unsent or self._retrying)

    @lock_held
    def take_all(self) -> list[Batch]:
        """Remove and return every held batch, oldest first."""
        held = sorted(self, key=lambda batch: batch.first)
        self._unsent = []
        self._retrying = []
        return held
