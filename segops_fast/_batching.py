"""Cutting buffered events into request bodies.

This module owns the shape of a batch request: ``{"events": [...]}`` built by joining the
events' stored JSON (no event is serialized a second time), each body at most
``max_batch_bytes``, each batch with its own ``Idempotency-Key``. It does not own
sending, retrying or what happens to a batch that fails.
"""

from __future__ import annotations

import uuid
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from itertools import accumulate

from ._encoding import RENDERED_TIMESTAMP_BYTES, Record, render_event, render_events

_BODY_OPEN = b'{"events":['
_BODY_CLOSE = b"]}"
_ENVELOPE_BYTES = len(_BODY_OPEN) + len(_BODY_CLOSE)
#: An event's opening brace and its comma, and with a timestamp rendered, that too.
_UNSTAMPED_COST = 2
_STAMPED_COST = 2 + RENDERED_TIMESTAMP_BYTES


class Batch:
    """Events bound for one request, with the key every attempt of that request carries."""

    __slots__ = (
        "first",
        "idempotency_key",
        "last_error",
        "maybe_stored",
        "records",
        "retries",
        "retry_at",
    )

    def __init__(self, records: list[Record], idempotency_key: str, first: int = 0) -> None:
        self.records = records
        self.idempotency_key = idempotency_key
        #: The number of its first event, in the order events were taken from the buffer.
        self.first = first
        #: An attempt went unanswered: the server may have stored it. Such a batch is
        #: retried until an answer comes, however many retries that takes.
        self.maybe_stored = False
        #: Retries spent so far, and when (``time.monotonic()``) the next one is due.
        self.retries = 0
        self.retry_at = 0.0
        #: Why its last attempt failed, if one did: the cause a later give-up reports.
        self.last_error: BaseException | None = None

    def render_body(self) -> bytes:
        """The request body. Built when it is about to be sent, and not kept: while the API
        is down, the batches waiting behind a retry would otherwise hold every event twice,
        once as a record and once in a body (measured: 14 MB more for a full queue)."""
        parts = [_BODY_OPEN]
        render_events(parts, self.records)
        parts.append(_BODY_CLOSE)
        return b"".join(parts)

    def __len__(self) -> int:
        return len(self.records)

    def events(self) -> list[bytes]:
        """Each event's complete JSON object, in the order tracked (for dead letters)."""
        return [render_event(record) for record in self.records]

    def halves(self) -> tuple[Batch, Batch]:
        """Two batches of half the events each, for a server that refused this one as too large.

        The halves' keys derive from this batch's key, so a split replayed after a crash
        carries the same keys again.
        """
        middle = len(self.records) // 2
        return (
            Batch(self.records[:middle], f"{self.idempotency_key}.0", self.first),
            Batch(self.records[middle:], f"{self.idempotency_key}.1", self.first + middle),
        )


def new_idempotency_key() -> str:
    return uuid.uuid4().hex


def assemble_batches(records: Sequence[Record], max_batch_bytes: int) -> Iterator[Batch]:
    """Batches of ``records``, in order, each body at most ``max_batch_bytes`` long.

    An event is never split, so one event larger than ``max_batch_bytes`` travels alone;
    ``max_event_bytes`` (checked at ``track()``) keeps that from happening with the defaults.
    The cut points come from running totals of the events' sizes, found by bisection: a
    loop over the events in Python cost a quarter of a microsecond each, on the thread
    that competes with ``track()`` for the GIL.
    """
    # What each event adds to a body: its rendered JSON and the comma after it.
    costs = (
        len(fields) + (_UNSTAMPED_COST if stamp is None else _STAMPED_COST)
        for stamp, fields in records
    )
    totals = list(accumulate(costs, initial=0))
    # A body of events start..end-1 is the envelope plus their costs less the last comma.
    room = max_batch_bytes - _ENVELOPE_BYTES + 1
    start = 0
    while start < len(records):
        end = max(start + 1, bisect_right(totals, totals[start] + room) - 1)
        yield Batch(list(records[start:end]), new_idempotency_key())
        start = end
