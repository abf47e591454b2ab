"""What one request tracks, through which client: the row the app server was started for.

This module owns the rows of the app-overhead benchmark and the per-request work of each.
The row and the workload come from the environment (:data:`ROW_VARIABLE`,
:data:`EVENTS_VARIABLE`, :data:`INGEST_URL_VARIABLE`), read once when the app is imported
in the worker. Each request tracks that many events, every one distinct (a number per
event, and the worker's id), through the row's client with its own default settings,
built by ``bench/harness/clients.py``.

The rows:

* ``none``: no analytics; the request does no tracking work at all.
* ``floor``: an empty function with track()'s signature, called once per event.
* ``essence``: what any client must do per event and nothing more: build the event's
  dict, ``orjson.dumps`` it, read the clock, append to a bounded deque. Nothing is sent.
* ``segops_fast``, ``segops 0.2.2``, ``segment 2.4.0``, ``posthog 7.91.1``: the clients.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from typing import Callable

import orjson
from harness.clients import BUILDERS, NO_OP, SEGOPS_FAST, Client, keywords, segops_fast_with

ROW_VARIABLE = "SEGOPS_BENCH_ROW"
EVENTS_VARIABLE = "SEGOPS_BENCH_EVENTS_PER_REQUEST"
INGEST_URL_VARIABLE = "SEGOPS_BENCH_INGEST_URL"
#: Where the segops_fast row writes the CPU time of its delivery steps at exit, when set
#: (``bench/app_profile.py``; see :mod:`apps.flusher_profile`).
FLUSHER_PROFILE_VARIABLE = "SEGOPS_BENCH_FLUSHER_PROFILE"

#: The path that answers how many events the worker has tracked, tracking none itself.
TRACKED_PATH = "/_tracked"
#: The path that answers once the app is loaded, tracking nothing.
READY_PATH = "/_ready"

#: As many events as segops_fast queues by default (``max_queue_size``).
ESSENCE_QUEUE_BOUND = 100_000

NONE = "none"
FLOOR = "floor"
ESSENCE = "essence"
SEGOPS = "segops 0.2.2"
SEGMENT = "segment 2.4.0"
POSTHOG = "posthog 7.91.1"


def _essence(url: str) -> Client:
    """The work any in-process analytics client does per event, and nothing more."""
    # Bounded like segops_fast's queue: nothing ever drains it, and memory must not grow.
    queue: deque[tuple[int, bytes]] = deque(maxlen=ESSENCE_QUEUE_BOUND)
    append, dumps, clock = queue.append, orjson.dumps, time.time_ns

    def track(
        event: object = None,
        *,
        user_id: object = None,
        event_type: object = None,
        occurred_at: object = None,
        payload: object = None,
    ) -> None:
        append((clock(), dumps({"user_id": user_id, "event_type": event_type, "payload": payload})))

    return Client(track, keywords, lambda: None, lambda: None)


#: More than any profiling run tracks: the held row's queue never fills or wakes its flusher.
_HELD_EVENTS = 5_000_000


#: segops_fast sending nothing until the process exits: what track() alone costs an app,
#: without the flusher's work on the same CPU (``bench/app_profile.py``).
_segops_fast_held = segops_fast_with(
    batch_size=_HELD_EVENTS, max_queue_size=_HELD_EVENTS, flush_interval=3600.0
)


#: Each row but ``none``: how its client is built, given the ingest server's URL.
CLIENT_ROWS: dict[str, Callable[[str], Client]] = {
    FLOOR: BUILDERS[NO_OP],
    ESSENCE: _essence,
    SEGOPS_FAST: BUILDERS[SEGOPS_FAST],
    SEGOPS: BUILDERS["segops 0.2.2"],
    SEGMENT: BUILDERS["segment-analytics-python 2.4.0"],
    POSTHOG: BUILDERS["posthog 7.91.1"],
}
ROWS = (NONE, *CLIENT_ROWS)
#: Rows for profiling only, not compared with the peers.
SEGOPS_FAST_HELD = "segops_fast, held"
PROFILE_ROWS: dict[str, Callable[[str], Client]] = {SEGOPS_FAST_HELD: _segops_fast_held}
#: The rows whose clients store events at the ingest server.
DELIVERING_ROWS = (SEGOPS_FAST, SEGOPS, SEGMENT, POSTHOG)
#: The clients whose documentation says to shut them down before the process exits:
#: segops 0.2.2's thread is a daemon and it registers no atexit hook; Segment's atexit
#: hook stops its thread without flushing ("you'll still need to call flush()");
#: PostHog's makes "only a short best-effort flush" (1 s). segops_fast needs nothing:
#: it shuts itself down at exit, which is part of what it promises.
SHUT_DOWN_AT_EXIT = (SEGOPS, SEGMENT, POSTHOG)
#: Under uvicorn, whose worker ends by raising the SIGTERM it caught again (so no atexit
#: hook runs), segops_fast's README asks the app's lifespan to shut the client down too.
SHUT_DOWN_IN_LIFESPAN = (SEGOPS_FAST, *SHUT_DOWN_AT_EXIT)


class RequestTracker:
    """The tracking work of one request, for one row; safe to call from many threads."""

    def __init__(self, row: str, events_per_request: int, ingest_url: str) -> None:
        builders = {**CLIENT_ROWS, **PROFILE_ROWS}
        if row != NONE and row not in builders:
            raise ValueError(f"{ROW_VARIABLE} must be one of {(NONE, *builders)}, got {row!r}")
        self.row = row
        self.events_per_request = events_per_request
        self._client = None if row == NONE else builders[row](ingest_url)
        # next() on a count is atomic under the GIL: every event gets a number of its own.
        self._numbers = itertools.count()
        self._pid = os.getpid()

    @property
    def tracks(self) -> bool:
        """False for ``none``: the app then calls nothing per request."""
        return self._client is not None

    def track_request(self) -> None:
        assert self._client is not None
        send, numbers, pid = self._client.send, self._numbers, self._pid
        for _ in range(self.events_per_request):
            number = next(numbers)
            send(f"user-{number % 1000}", "page_view", {"path": "/home", "i": number, "pid": pid})

    def tracked(self) -> int:
        """How many events were tracked so far. Takes a number no event will use: call it
        once tracking has stopped."""
        return next(self._numbers)

    def shutdown_at_exit(self) -> None:
        """What the row's client documentation asks of a process that is about to exit."""
        if self._client is not None and self.row in SHUT_DOWN_AT_EXIT:
            self._client.shutdown()

    def shutdown_in_lifespan(self) -> None:
        """What the row's client documentation asks of an ASGI app's lifespan shutdown."""
        if self._client is not None and self.row in SHUT_DOWN_IN_LIFESPAN:
            self._client.shutdown()


def from_environment() -> RequestTracker:
    profile = os.environ.get(FLUSHER_PROFILE_VARIABLE)
    if profile and os.environ[ROW_VARIABLE] == SEGOPS_FAST:
        from apps.flusher_profile import install  # noqa: PLC0415

        install(profile)
    return RequestTracker(
        os.environ[ROW_VARIABLE],
        int(os.environ[EVENTS_VARIABLE]),
        os.environ[INGEST_URL_VARIABLE],
    )
