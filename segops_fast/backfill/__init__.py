"""Backfills: sending events that already happened, in bulk, exactly once.

    from segops_fast.backfill import send_events

    summary = send_events(events, api_url="https://api.segops.ai", api_key="sk_...")

:func:`send_events` sends any iterable of events, for example one partition of a Spark,
Dask or Ray dataset; ``segops-fast send`` sends JSON Lines files from the command line,
on several cores, with dead letters and a checkpoint to resume from.
"""

from ._partition import Summary, send_events

__all__ = ["Summary", "send_events"]
