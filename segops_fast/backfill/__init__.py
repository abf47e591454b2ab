"""Backfills: sending events that already happened, in bulk, exactly once.

    from segops_fast.backfill import send_events

    summary = send_events(events, api_url="https://api.segops.ai", api_key="sk_...")

:func:`send_events` sends any iterable of events, for example one partition of a Spark,
Dask or Ray dataset; :func:`send_bag` sends every partition of a Dask bag, each in a task;
``segops-fast send`` sends JSON Lines files from the command line, on several cores or a
Dask cluster, with dead letters and a checkpoint to resume from.
"""

from ._dask import send_bag
from ._partition import Summary, send_events

__all__ = ["Summary", "send_bag", "send_events"]
