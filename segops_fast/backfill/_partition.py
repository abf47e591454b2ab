"""The partition API: send any iterable of events from inside a task of a distributed engine.

This module owns :func:`send_events`: one call, one stream, bounded memory (a few batches)
and bounded concurrency, a :class:`Summary` at the end. Keys are derived from ``source``,
each event's position in the iterable and the batch's content, so a task that an engine
(Spark, Dask, Ray) runs again after a failure sends the same batches under the same
Idempotency-Keys, and the server stores each event once. It creates nothing at import and
keeps nothing between calls, so it is safe in forked or spawned workers. It does not
checkpoint: the engine's retry of the task is the resume.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from .._delivery import GivenUp
from .._errors import InvalidEventError, SegOpsApiError
from .._options import (
    DEFAULT_BACKOFF_BASE,
    DEFAULT_BACKOFF_CAP,
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_EVENT_BYTES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
)
from ._api_key import api_key_from_environment
from ._engine import DEFAULT_CONCURRENCY, SendSettings, Settled, StreamSender, batch_events_for
from ._worker import encode_input_event


@dataclass(frozen=True)
class Summary:
    """What one backfill did."""

    #: Events the server acknowledged.
    sent: int
    #: Events refused by the server, or still failing after every retry.
    failed: int
    #: Events that were not valid events (never sent).
    invalid: int
    #: Seconds from the first event read to the last acknowledged.
    elapsed: float

    @property
    def events_per_second(self) -> float:
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0


def send_events(
    events: Iterable[Any],
    *,
    api_url: str,
    api_key: str | None = None,
    source: str = "",
    concurrency: int = DEFAULT_CONCURRENCY,
    batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    rate: float | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_retries: int = DEFAULT_MAX_RETRIES,
    backoff_base: float = DEFAULT_BACKOFF_BASE,
    backoff_cap: float = DEFAULT_BACKOFF_CAP,
    ca_certs: str | None = None,
    on_failed: Callable[[list[dict[str, Any]], str], None] | None = None,
    on_invalid: Callable[[Any, str], None] | None = None,
) -> Summary:
    """Send ``events`` (dicts or :class:`~segops_fast.Event`), in order; return a summary.

    ``source`` names this input (a partition id, a file name) and goes into every batch's
    Idempotency-Key: two different inputs must have different sources. ``on_failed``
    receives the events given up (refused, or retries exhausted) with the reason;
    ``on_invalid`` each event that is not valid, with what is wrong with it. Invalid
    settings raise ``ValueError``. While the API cannot be reached, it waits; when TLS or
    the proxy refuses the connection, or the API refuses the key (401, 403), it raises
    :class:`~segops_fast.SegOpsApiError` at once.

    Without ``api_key``, the key is read from ``SEGOPS_API_KEY``, or from the file that
    ``SEGOPS_API_KEY_FILE`` names, in this process's environment: a task on a cluster
    finds it there, rather than in the task's arguments. ``ca_certs`` is a PEM bundle of
    the CAs to trust instead of the system's. Under a ``rate``, batches hold at most a
    hundredth of a second's events, so that the events, not the batches, are paced.
    """
    settings = SendSettings(
        api_url=api_url,
        api_key=api_key_from_environment() if api_key is None else api_key,
        concurrency=concurrency,
        batch_bytes=batch_bytes,
        rate=rate,
        timeout=timeout,
        max_retries=max_retries,
        backoff_base=backoff_base,
        backoff_cap=backoff_cap,
        ca_certs=ca_certs,
        batch_events=batch_events_for(rate),
    )
    settings.check()
    totals = {"sent": 0, "failed": 0}

    def count(settled: Settled) -> None:
        totals["sent"] += settled.sent
        totals["failed"] += settled.failed

    def hand_over(given_up: GivenUp, end: int) -> None:
        if on_failed is not None:
            on_failed([orjson.loads(event) for event in given_up.events], given_up.reason)

    began = time.monotonic()
    sender = StreamSender(settings, source=source, start=0, on_failed=hand_over, on_settled=count)
    invalid = 0
    position = 0
    try:
        for position, event in enumerate(events, 1):
            try:
                record = encode_input_event(event, DEFAULT_MAX_EVENT_BYTES)
            except InvalidEventError as error:
                invalid += 1
                if on_invalid is not None:
                    on_invalid(event, str(error))
                sender.pass_over(position)
                continue
            sender.add(record, position)
    except BaseException:
        # Interrupted (or the iterable failed): requests under way end, nothing new starts.
        sender.stop()
        raise
    finally:
        sender.finish()
    if sender.stop_cause is not None:
        # TLS, the proxy or the key refused: waiting would never end.
        raise SegOpsApiError(
            sender.stop_cause.message, undelivered=position - sum(totals.values()) - invalid
        )
    return Summary(totals["sent"], totals["failed"], invalid, time.monotonic() - began)
