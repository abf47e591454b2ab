"""The partition API on Dask: every partition of a bag sent by :func:`send_events` in a task.

This module owns :func:`send_bag`: one task per partition, each with its own ``source``
(``"{source}/{partition number}"``, so that a task Dask runs again after its worker died
sends its batches under the same Idempotency-Keys), and bringing back to the caller what
happened inside the workers: the counts, summed into one :class:`Summary`, and the events
that were invalid or failed, handed to ``on_invalid`` and ``on_failed`` in the caller's
process rather than lost in a worker's. It imports Dask only when called.

It takes no API key: a task's arguments are in the task graph, which any client of the
scheduler can read, so each worker reads the key from its own environment
(``SEGOPS_API_KEY``, or the file ``SEGOPS_API_KEY_FILE`` names), as :func:`send_events`
does without ``api_key``.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._partition import Summary, send_events

if TYPE_CHECKING:
    from dask.bag import Bag

OnFailed = Callable[[list[dict[str, Any]], str], None]
OnInvalid = Callable[[Any, str], None]


@dataclass
class PartitionResult:
    """What one partition's task sends back: its summary, and the events to hand over."""

    summary: Summary
    invalid: list[tuple[Any, str]] = field(default_factory=list)
    failed: list[tuple[list[dict[str, Any]], str]] = field(default_factory=list)


def send_partition(events: Iterable[Any], source: str, options: dict[str, Any]) -> PartitionResult:
    """A task: send one partition, keeping its invalid and failed events for the caller."""
    result = PartitionResult(Summary(0, 0, 0, 0.0))
    result.summary = send_events(
        events,
        source=source,
        on_invalid=lambda event, reason: result.invalid.append((event, reason)),
        on_failed=lambda events, reason: result.failed.append((events, reason)),
        **options,
    )
    return result


def send_bag(
    bag: Bag,
    *,
    api_url: str,
    source: str,
    on_failed: OnFailed | None = None,
    on_invalid: OnInvalid | None = None,
    **options: Any,
) -> Summary:
    """Send every partition of ``bag`` (of event dicts or :class:`~segops_fast.Event`) as a
    task on Dask's current scheduler (a ``distributed.Client`` if one is open); return the
    summed :class:`Summary` (``elapsed``: the whole computation's wall time).

    ``source`` names the bag; partition ``n`` is sent as ``f"{source}/{n}"``, so the bag
    must be partitioned the same way when it is sent again. ``options`` are
    :func:`send_events`'s (``concurrency``, ``batch_bytes``, ``rate`` per partition, ...).
    ``on_invalid`` and ``on_failed`` are called here, after the tasks, with what each
    partition gave up: a partition's invalid and failed events travel back with its result.

    The workers read the API key from their own environment: set ``SEGOPS_API_KEY``, or
    ``SEGOPS_API_KEY_FILE`` to a file that holds it, where each worker starts.
    """
    import dask  # noqa: PLC0415 (the dask extra: imported only when used)

    if "api_key" in options:
        raise TypeError(
            "send_bag takes no api_key: it would travel in the task graph, which any client "
            "of the scheduler can read; set SEGOPS_API_KEY (or SEGOPS_API_KEY_FILE) in the "
            "workers' environment instead"
        )
    arguments = {"api_url": api_url, **options}
    # A misspelled option fails here, not in every task.
    inspect.signature(send_events).bind([], **arguments)
    began = time.monotonic()
    tasks = [
        dask.delayed(send_partition)(partition, f"{source}/{number}", arguments)
        for number, partition in enumerate(bag.to_delayed())
    ]
    results: tuple[PartitionResult, ...] = dask.compute(*tasks)
    if on_invalid is not None:
        for event, reason in (pair for result in results for pair in result.invalid):
            on_invalid(event, reason)
    if on_failed is not None:
        for events, reason in (pair for result in results for pair in result.failed):
            on_failed(events, reason)
    return Summary(
        sent=sum(result.summary.sent for result in results),
        failed=sum(result.summary.failed for result in results),
        invalid=sum(result.summary.invalid for result in results),
        elapsed=time.monotonic() - began,
    )
